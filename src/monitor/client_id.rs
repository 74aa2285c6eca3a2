//! Validation of the client-chosen id in `/ws/{client_id}`: refused before the upgrade when
//! empty, longer than the configured limit, or containing control characters; any other
//! Unicode is accepted and stays data (rendered as text everywhere).

/// Why a client id was refused; the message is returned to the client in the JSON error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidClientId {
    #[error("client_id must not be empty")]
    Empty,
    #[error("client_id must be at most {max} characters, got {len}")]
    TooLong { max: usize, len: usize },
    #[error("client_id must not contain control characters")]
    ControlCharacter,
}

/// Checks `id` against the rules; `max_chars` counts Unicode scalar values.
pub fn validate(id: &str, max_chars: usize) -> Result<(), InvalidClientId> {
    if id.is_empty() {
        return Err(InvalidClientId::Empty);
    }
    let len = id.chars().count();
    if len > max_chars {
        return Err(InvalidClientId::TooLong {
            max: max_chars,
            len,
        });
    }
    if id.chars().any(char::is_control) {
        return Err(InvalidClientId::ControlCharacter);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_and_unicode_ids() {
        for id in [
            "alice",
            "Zoë",
            "用户",
            "<img src=x>",
            "a b",
            &"x".repeat(64),
        ] {
            assert_eq!(validate(id, 64), Ok(()), "{id:?}");
        }
    }

    #[test]
    fn refuses_empty_long_and_control_ids() {
        assert_eq!(validate("", 64), Err(InvalidClientId::Empty));
        assert!(matches!(
            validate(&"é".repeat(65), 64),
            Err(InvalidClientId::TooLong { len: 65, .. })
        ));
        for id in [
            "a\nb",
            "tab\t",
            "nul\0",
            "esc\u{1b}[31m",
            "del\u{7f}",
            "c1\u{85}",
        ] {
            assert_eq!(
                validate(id, 64),
                Err(InvalidClientId::ControlCharacter),
                "{id:?}"
            );
        }
    }
}
