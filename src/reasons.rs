//! The bounded vocabulary of why a connection ended ([`CloseReason`]), who ended it
//! ([`Initiator`]), and why an upgrade was refused before a connection existed ([`RejectReason`]).
//!
//! These names are used identically as metric labels, span attributes, log fields, `/ws-stats`
//! keys and dashboard columns, so they are defined here once and nowhere else.

use serde::Serialize;

/// Who ended a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Initiator {
    /// The client sent a close frame.
    Client,
    /// The server decided to close (policy, error, operator, shutdown).
    Server,
    /// The transport ended without a closing handshake (EOF, reset).
    Network,
}

impl Initiator {
    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Initiator::Client => "client",
            Initiator::Server => "server",
            Initiator::Network => "network",
        }
    }
}

macro_rules! close_reasons {
    ($( $(#[$doc:meta])* $variant:ident = $name:literal, $initiator:ident, $code:expr; )+) => {
        /// Why a connection ended. One bounded set; see the README's close-codes table.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
        #[serde(rename_all = "snake_case")]
        pub enum CloseReason { $( $(#[$doc])* $variant, )+ }

        impl CloseReason {
            /// Every reason, in documentation order.
            pub const ALL: &'static [CloseReason] = &[$(CloseReason::$variant,)+];

            /// The label value (`snake_case`), also sent as the close frame's reason text.
            pub const fn as_str(self) -> &'static str {
                match self { $(CloseReason::$variant => $name,)+ }
            }

            /// Who ends the connection for this reason.
            pub const fn initiator(self) -> Initiator {
                match self { $(CloseReason::$variant => Initiator::$initiator,)+ }
            }

            /// The close code the server sends for this reason; `None` when the server sends
            /// none (the client closed first, or the transport is already gone).
            pub const fn server_code(self) -> Option<u16> {
                match self { $(CloseReason::$variant => $code,)+ }
            }
        }
    };
}

close_reasons! {
    /// The client sent a close frame; the server echoes the client's code.
    ClientClosed = "client_closed", Client, None;
    /// EOF or connection reset without a close frame.
    ClientGone = "client_gone", Network, None;
    /// The client broke the WebSocket protocol (bad framing, unmasked frame, ...).
    ClientProtocolError = "client_protocol_error", Server, Some(1002);
    /// A text frame that is not valid UTF-8.
    InvalidPayload = "invalid_payload", Server, Some(1007);
    /// A binary frame: the chat speaks text only.
    UnsupportedData = "unsupported_data", Server, Some(1003);
    /// A message or frame over `websocket.max_message_size`.
    MessageTooBig = "message_too_big", Server, Some(1009);
    /// The outbound queue overflowed: the client does not read fast enough.
    SlowConsumer = "slow_consumer", Server, Some(1008);
    /// The client kept exceeding its message rate limit.
    RateLimited = "rate_limited", Server, Some(1008);
    /// No pong arrived in time after a ping.
    PingTimeout = "ping_timeout", Server, Some(4001);
    /// No chat message for the idle close period.
    IdleTimeout = "idle_timeout", Server, Some(4000);
    /// An operator closed the connection through the API or dashboard.
    AdminKick = "admin_kick", Server, Some(4003);
    /// The server is shutting down.
    ServerShutdown = "server_shutdown", Server, Some(1001);
    /// A server bug (including a panic in the connection's task).
    InternalError = "internal_error", Server, Some(1011);
}

impl CloseReason {
    /// Position in [`CloseReason::ALL`], used to index per-reason counters.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Whether this is an orderly end: the connection span ends with status ERROR for every
    /// other reason.
    pub fn is_normal(self) -> bool {
        matches!(
            self,
            CloseReason::ClientClosed
                | CloseReason::AdminKick
                | CloseReason::ServerShutdown
                | CloseReason::IdleTimeout
        )
    }

    /// Whether this reason says something about a peer that is still there: it did not read
    /// (`slow_consumer`), did not answer a ping (`ping_timeout`) or said nothing
    /// (`idle_timeout`). Such a close is recorded only if the socket shows no EOF or reset
    /// first; a peer already gone is `client_gone`, whichever timer or queue noticed it first.
    pub const fn describes_a_live_peer(self) -> bool {
        matches!(
            self,
            CloseReason::SlowConsumer | CloseReason::PingTimeout | CloseReason::IdleTimeout
        )
    }

    /// The `error.type` counted by `websocket.server.errors`, for reasons that are errors
    /// (bad input or a server bug); policy closes and vanished clients are not.
    pub const fn error_type(self) -> Option<&'static str> {
        match self {
            CloseReason::ClientProtocolError => Some("protocol_error"),
            CloseReason::InvalidPayload => Some("invalid_utf8"),
            CloseReason::UnsupportedData => Some("unsupported_data"),
            CloseReason::MessageTooBig => Some("message_too_big"),
            CloseReason::InternalError => Some("internal"),
            _ => None,
        }
    }
}

macro_rules! reject_reasons {
    ($( $(#[$doc:meta])* $variant:ident = $name:literal, $status:literal; )+) => {
        /// Why an upgrade request was refused before a connection existed.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
        #[serde(rename_all = "snake_case")]
        pub enum RejectReason { $( $(#[$doc])* $variant, )+ }

        impl RejectReason {
            /// Every reason, in documentation order.
            pub const ALL: &'static [RejectReason] = &[$(RejectReason::$variant,)+];

            /// The label value.
            pub const fn as_str(self) -> &'static str {
                match self { $(RejectReason::$variant => $name,)+ }
            }

            /// The HTTP status the refusal carries.
            pub const fn status(self) -> u16 {
                match self { $(RejectReason::$variant => $status,)+ }
            }
        }
    };
}

reject_reasons! {
    /// `client_id` empty, too long, or containing control characters.
    InvalidClientId = "invalid_client_id", 400;
    /// The request is not a valid WebSocket upgrade.
    BadUpgrade = "bad_upgrade", 400;
    /// The `Origin` header is not allowed.
    OriginNotAllowed = "origin_not_allowed", 403;
    /// Missing or wrong credentials.
    Unauthorized = "unauthorized", 401;
    /// Too many connections from this address.
    PerIpLimit = "per_ip_limit", 429;
    /// The server is at its global connection cap.
    GlobalLimit = "global_limit", 503;
    /// The server is shutting down.
    ShuttingDown = "shutting_down", 503;
    /// One address already holds `server.max_http_connections_per_ip` connections that have
    /// not upgraded (answered before any request is read).
    PerIpHttpLimit = "per_ip_http_limit", 429;
}

impl RejectReason {
    /// Position in [`RejectReason::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_match_positions_in_all() {
        for (i, r) in CloseReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i, "{}", r.as_str());
        }
        for (i, r) in RejectReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i, "{}", r.as_str());
        }
    }

    #[test]
    fn serde_names_equal_label_values() {
        for r in CloseReason::ALL {
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
        for r in RejectReason::ALL {
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
    }

    #[test]
    fn only_client_closed_and_client_gone_send_no_code() {
        let silent: Vec<_> = CloseReason::ALL
            .iter()
            .filter(|r| r.server_code().is_none())
            .map(|r| r.as_str())
            .collect();
        assert_eq!(silent, ["client_closed", "client_gone"]);
    }
}
