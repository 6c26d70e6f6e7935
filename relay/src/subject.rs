//! How an event is named on the broker: its subject `<prefix>.<category>.<type>` with each
//! token escaped so it is a valid NATS token, and header values that are safe to send.
//!
//! Token mapping (injective, so two different categories never share a subject): ASCII
//! letters, digits, `_` and `-` are kept; every other byte (a space, `.`, `*`, `>`, `%`,
//! non-ASCII UTF-8) becomes `%XX`, its value in upper-case hex; an empty name becomes `%`.
//! So category `order items` of type `Item.Added` is `prefix.order%20items.Item%2EAdded`.

/// One subject token for `name`.
pub fn token(name: &str) -> String {
    if name.is_empty() {
        return "%".to_string();
    }
    let mut token = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-' {
            token.push(byte as char);
        } else {
            token.push_str(&format!("%{byte:02X}"));
        }
    }
    token
}

/// The subject of an event of `category` and `event_type` under `prefix`.
pub fn subject(prefix: &str, category: &str, event_type: &str) -> String {
    format!("{prefix}.{}.{}", token(category), token(event_type))
}

/// Checks a subject prefix: one or more dot-separated tokens, none empty, no wildcard,
/// no whitespace.
pub fn check_prefix(prefix: &str) -> Result<(), String> {
    let valid = !prefix.is_empty()
        && prefix.split('.').all(|token| {
            !token.is_empty()
                && token
                    .chars()
                    .all(|c| !c.is_whitespace() && !c.is_control() && c != '*' && c != '>')
        });
    if valid {
        Ok(())
    } else {
        Err(format!(
            "the subject prefix '{prefix}' must be dot-separated non-empty tokens without spaces, '*' or '>' (e.g. 'tidemark' or 'shop.events')"
        ))
    }
}

/// A header value: bytes outside printable ASCII, and `%`, become `%XX`, so a stream id
/// with a line break (which would end the header) or non-ASCII text is sent intact.
pub fn header_value(text: &str) -> String {
    let mut value = String::with_capacity(text.len());
    for byte in text.bytes() {
        if (0x20..0x7f).contains(&byte) && byte != b'%' {
            value.push(byte as char);
        } else {
            value.push_str(&format!("%{byte:02X}"));
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_keep_plain_names_and_escape_everything_a_subject_cannot_hold() {
        assert_eq!(token("account"), "account");
        assert_eq!(token("Money_Deposited-v2"), "Money_Deposited-v2");
        assert_eq!(token("order items"), "order%20items");
        assert_eq!(token("a.b*c>d"), "a%2Eb%2Ac%3Ed");
        assert_eq!(token("50%"), "50%25");
        assert_eq!(token("café"), "caf%C3%A9");
        assert_eq!(token(""), "%");
        assert_eq!(
            subject("shop.events", "order items", "Item.Added"),
            "shop.events.order%20items.Item%2EAdded"
        );
    }

    #[test]
    fn the_mapping_is_injective_on_names_that_look_alike() {
        let names = ["a.b", "a%2Eb", "a_b", "a b", "", "%", "%25"];
        let tokens: std::collections::BTreeSet<String> = names.iter().map(|n| token(n)).collect();
        assert_eq!(tokens.len(), names.len(), "{tokens:?}");
    }

    #[test]
    fn prefixes_are_checked() {
        assert!(check_prefix("tidemark").is_ok());
        assert!(check_prefix("shop.events").is_ok());
        for bad in ["", "a..b", "a.*", "a.>", "has space", ".a", "a."] {
            assert!(check_prefix(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn header_values_cannot_break_the_header() {
        assert_eq!(header_value("account-1"), "account-1");
        assert_eq!(header_value("a\r\nb"), "a%0D%0Ab");
        assert_eq!(header_value("100%"), "100%25");
        assert_eq!(header_value("é"), "%C3%A9");
    }
}
