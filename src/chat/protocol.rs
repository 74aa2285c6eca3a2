//! The chat's wire texts, exactly as the tutorial's clients expect them.

/// The reply the sender alone receives.
pub fn personal_reply(text: &str) -> String {
    format!("You sent: {text}")
}

/// What every connected client, the sender included, receives.
pub fn says(client_id: &str, text: &str) -> String {
    format!("Client #{client_id} says: {text}")
}

/// What the remaining clients receive when a client leaves.
pub fn left(client_id: &str) -> String {
    format!("Client #{client_id} left the chat")
}

/// The one warning an idle connection receives before it is closed.
pub fn idle_warning(closes_in: std::time::Duration) -> String {
    format!(
        "Server: you have been idle; this connection closes in {} s unless you send a message",
        closes_in.as_secs()
    )
}

/// Sent once per episode when messages are dropped by the rate limit.
pub fn rate_limited(per_second: f64) -> String {
    format!("Server: rate limit exceeded ({per_second} messages/s); messages are being dropped")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_match_the_tutorial() {
        assert_eq!(personal_reply("hi"), "You sent: hi");
        assert_eq!(says("alice", "hi"), "Client #alice says: hi");
        assert_eq!(left("alice"), "Client #alice left the chat");
    }
}
