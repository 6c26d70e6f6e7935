//! [`FieldPath`]: a JSON pointer (RFC 6901) into an event's payload or metadata, checked
//! when configured so that a typo fails at start-up instead of on every event.

use super::WindowingError;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;

/// A validated JSON pointer such as `/amount` or `/order/lines/0/price`; `""` is the whole
/// document.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FieldPath(String);

impl FieldPath {
    /// Checks `pointer`: empty, or `/`-separated tokens where `~` only appears as `~0` or `~1`.
    pub fn parse(pointer: impl Into<String>) -> Result<Self, WindowingError> {
        let path = pointer.into();
        if !path.is_empty() && !path.starts_with('/') {
            return Err(WindowingError::InvalidFieldPath {
                path,
                reason: "it must be empty or start with '/'",
            });
        }
        let mut chars = path.chars();
        while let Some(c) = chars.next() {
            if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
                return Err(WindowingError::InvalidFieldPath {
                    path,
                    reason: "'~' must be followed by '0' or '1'",
                });
            }
        }
        Ok(FieldPath(path))
    }

    /// The pointer to a top-level field named `name` (escaping `~` and `/`).
    pub fn field(name: &str) -> Self {
        FieldPath(format!("/{}", name.replace('~', "~0").replace('/', "~1")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The value at this path in `document`, if any.
    pub fn lookup<'v>(&self, document: &'v Value) -> Option<&'v Value> {
        document.pointer(&self.0)
    }
}

impl TryFrom<String> for FieldPath {
    type Error = WindowingError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        FieldPath::parse(value)
    }
}

impl From<FieldPath> for String {
    fn from(path: FieldPath) -> String {
        path.0
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pointers_are_checked_and_looked_up() {
        let doc = json!({"a": {"b": [10, 20]}, "x/y": 1, "t~": 2});
        assert_eq!(
            FieldPath::parse("/a/b/1").unwrap().lookup(&doc),
            Some(&json!(20))
        );
        assert_eq!(FieldPath::parse("").unwrap().lookup(&doc), Some(&doc));
        assert_eq!(FieldPath::field("x/y").lookup(&doc), Some(&json!(1)));
        assert_eq!(FieldPath::field("t~").lookup(&doc), Some(&json!(2)));
        assert_eq!(FieldPath::parse("/missing").unwrap().lookup(&doc), None);
        assert!(matches!(
            FieldPath::parse("amount"),
            Err(WindowingError::InvalidFieldPath { .. })
        ));
        assert!(FieldPath::parse("/a~2").is_err());
        assert!(FieldPath::parse("/a~").is_err());
    }

    #[test]
    fn serde_validates() {
        let path: FieldPath = serde_json::from_value(json!("/amount")).unwrap();
        assert_eq!(serde_json::to_value(&path).unwrap(), json!("/amount"));
        assert!(serde_json::from_value::<FieldPath>(json!("amount")).is_err());
    }
}
