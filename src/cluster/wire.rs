//! What nodes say to each other through Redis: JSON messages on pub/sub channels, and the
//! presence value each node keeps under its own expiring key. Every name is under the
//! configured prefix, so several clusters can share one Redis.

use serde::{Deserialize, Serialize};

/// Largest payload accepted from Redis (bytes); larger ones are counted as decode errors.
pub const MAX_PAYLOAD: usize = 8 * 1024 * 1024;

/// Redis names of one cluster.
#[derive(Debug, Clone)]
pub struct Names {
    prefix: String,
}

impl Names {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }
    /// The channel every node publishes its chat messages on and subscribes to.
    pub fn chat(&self) -> String {
        format!("{}:chat", self.prefix)
    }
    /// A node's own channel for requests and replies.
    pub fn control(&self, node: &str) -> String {
        format!("{}:ctl:{node}", self.prefix)
    }
    /// A node's presence key.
    pub fn presence(&self, node: &str) -> String {
        format!("{}:node:{node}", self.prefix)
    }
    /// The pattern matching every presence key.
    pub fn presence_pattern(&self) -> String {
        format!("{}:node:*", self.prefix)
    }
}

/// One message on a channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Wire {
    /// A chat text, exactly as clients receive it, published by `node`.
    Chat {
        node: String,
        /// The publishing process's start (unix ms): a restarted node starts a new sequence.
        epoch: u64,
        /// 1, 2, 3… per epoch: a gap is a message this node missed.
        seq: u64,
        /// When the message was published (unix ns, the publisher's clock).
        sent_at: u64,
        text: String,
        /// W3C trace context of the publish span, when the message is traced.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        traceparent: Option<String>,
        /// A leave notice: the receiving node holds it once in its leave log (absent, false,
        /// from nodes that do not send it).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        leave: bool,
    },
    /// A connections-API request for the node owning the channel.
    Request { node: String, id: u64, op: Op },
    /// The answer to request `id`, as the HTTP status and JSON body the owner would serve.
    Reply {
        node: String,
        id: u64,
        status: u16,
        body: serde_json::Value,
    },
}

/// [`Wire::Chat`] as the publisher writes it: the same JSON, borrowing the queued text instead
/// of copying it into an owned message first.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename = "chat")]
pub struct ChatOut<'a> {
    pub node: &'a str,
    pub epoch: u64,
    pub seq: u64,
    pub sent_at: u64,
    pub text: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub leave: bool,
}

/// A connections-API operation served by another node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// `GET /api/v1/connections?{query}` there.
    List { query: String },
    /// `GET /api/v1/connections/{connection_id}` there.
    Show { connection_id: String },
    /// `DELETE /api/v1/connections/{connection_id}` there, on behalf of `who` at `address`.
    Kick {
        connection_id: String,
        who: String,
        address: String,
    },
}

/// The bytes every [`Wire::Chat`] from `node` in `epoch` begins with, as serialized (the tag,
/// the node, the epoch): a node with the same id but another epoch is someone else.
pub fn chat_prefix(node: &str, epoch: u64) -> Vec<u8> {
    let mut prefix = br#"{"type":"chat","node":"#.to_vec();
    prefix.extend(serde_json::to_vec(node).expect("strings serialize"));
    prefix.extend(format!(r#","epoch":{epoch},"#).as_bytes());
    prefix
}

/// What a node publishes about itself under its presence key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: String,
    pub address: String,
    pub version: String,
    /// RFC 3339.
    pub started_at: String,
    /// When this value was written (unix ms).
    pub heartbeat_unix_ms: u64,
    pub active_connections: u64,
    pub total_connections: u64,
    pub messages_received: u64,
    pub messages_sent: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_unknown_types_are_errors() {
        let chat = Wire::Chat {
            node: "a".into(),
            epoch: 1,
            seq: 2,
            sent_at: 3,
            text: "Client #x says: \"hi\" \u{1F600}".into(),
            traceparent: None,
            leave: false,
        };
        let json = serde_json::to_string(&chat).unwrap();
        assert!(!json.contains("traceparent") && !json.contains("leave"));
        // What the publisher writes, borrowing the text, is the very same JSON.
        for (traceparent, leave) in [
            (None, false),
            (
                Some("00-0123456789abcdef0123456789abcdef-0123456789abcdef-01"),
                false,
            ),
            (None, true),
        ] {
            let owned = Wire::Chat {
                node: "a".into(),
                epoch: 1,
                seq: 2,
                sent_at: 3,
                text: "Client #x says: \"hi\" \u{1F600}".into(),
                traceparent: traceparent.map(str::to_owned),
                leave,
            };
            let borrowed = ChatOut {
                node: "a",
                epoch: 1,
                seq: 2,
                sent_at: 3,
                text: "Client #x says: \"hi\" \u{1F600}",
                traceparent,
                leave,
            };
            let json = serde_json::to_string(&owned).unwrap();
            assert_eq!(serde_json::from_str::<Wire>(&json).unwrap(), owned);
            assert_eq!(
                serde_json::to_string(&borrowed).unwrap(),
                serde_json::to_string(&owned).unwrap()
            );
        }
        assert!(json.as_bytes().starts_with(&chat_prefix("a", 1)));
        assert!(!json.as_bytes().starts_with(&chat_prefix("ab", 1)));
        assert!(!json.as_bytes().starts_with(&chat_prefix("a", 11)));
        assert_eq!(serde_json::from_str::<Wire>(&json).unwrap(), chat);
        let kick = Wire::Request {
            node: "a".into(),
            id: 9,
            op: Op::Kick {
                connection_id: "c".into(),
                who: "ops".into(),
                address: "127.0.0.1".into(),
            },
        };
        let json = serde_json::to_string(&kick).unwrap();
        assert_eq!(serde_json::from_str::<Wire>(&json).unwrap(), kick);
        assert!(serde_json::from_str::<Wire>(r#"{"type":"nope"}"#).is_err());
    }

    #[test]
    fn names_live_under_the_prefix() {
        let n = Names::new("p");
        assert_eq!(n.chat(), "p:chat");
        assert_eq!(n.control("b"), "p:ctl:b");
        assert_eq!(n.presence("b"), "p:node:b");
        assert_eq!(n.presence_pattern(), "p:node:*");
    }
}
