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
