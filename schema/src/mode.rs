//! The registry's policies: compatibility mode per event type, validation mode, and what
//! happens to event types without a schema. Each has one spelling, used in SQL and on the wire.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::SchemaError;

/// Which earlier versions a new version must stay compatible with, and in which direction
/// (Confluent Schema Registry's compatibility types).
///
/// *Backward*: the new schema can read data written with the earlier one (upgrade readers
/// first). *Forward*: the earlier schema can read data written with the new one (upgrade
/// writers first). *Full*: both. The plain modes compare with the latest version only; the
/// transitive ones with every registered version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CompatibilityMode {
    #[default]
    Backward,
    BackwardTransitive,
    Forward,
    ForwardTransitive,
    Full,
    FullTransitive,
    None,
}

/// Which way data flows in one comparison between two schema versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// The new schema reads data written with the earlier one.
    Backward,
    /// The earlier schema reads data written with the new one.
    Forward,
}

impl CompatibilityMode {
    pub const ALL: [CompatibilityMode; 7] = [
        CompatibilityMode::Backward,
        CompatibilityMode::BackwardTransitive,
        CompatibilityMode::Forward,
        CompatibilityMode::ForwardTransitive,
        CompatibilityMode::Full,
        CompatibilityMode::FullTransitive,
        CompatibilityMode::None,
    ];

    /// The spelling stored in `schema_subjects.compatibility` and used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            CompatibilityMode::Backward => "BACKWARD",
            CompatibilityMode::BackwardTransitive => "BACKWARD_TRANSITIVE",
            CompatibilityMode::Forward => "FORWARD",
            CompatibilityMode::ForwardTransitive => "FORWARD_TRANSITIVE",
            CompatibilityMode::Full => "FULL",
            CompatibilityMode::FullTransitive => "FULL_TRANSITIVE",
            CompatibilityMode::None => "NONE",
        }
    }

    /// The directions a new version is checked in.
    pub fn directions(self) -> &'static [Direction] {
        match self {
            CompatibilityMode::Backward | CompatibilityMode::BackwardTransitive => {
                &[Direction::Backward]
            }
            CompatibilityMode::Forward | CompatibilityMode::ForwardTransitive => {
                &[Direction::Forward]
            }
            CompatibilityMode::Full | CompatibilityMode::FullTransitive => {
                &[Direction::Backward, Direction::Forward]
            }
            CompatibilityMode::None => &[],
        }
    }

    /// Whether a new version is compared with every earlier version, not only the latest.
    pub fn is_transitive(self) -> bool {
        matches!(
            self,
            CompatibilityMode::BackwardTransitive
                | CompatibilityMode::ForwardTransitive
                | CompatibilityMode::FullTransitive
        )
    }
}

/// What the append path does with an event of a type that has schemas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ValidationMode {
    /// No validation.
    #[default]
    Off,
    /// Validate, log violations, append anyway.
    Warn,
    /// Refuse an event that does not match the version it claims (`SCHEMA_VIOLATION`).
    Enforce,
}

impl ValidationMode {
    pub const ALL: [ValidationMode; 3] = [
        ValidationMode::Off,
        ValidationMode::Warn,
        ValidationMode::Enforce,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ValidationMode::Off => "OFF",
            ValidationMode::Warn => "WARN",
            ValidationMode::Enforce => "ENFORCE",
        }
    }
}

/// What the append path does with an event whose type has no registered schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UnregisteredPolicy {
    /// Append it unchecked.
    #[default]
    Allow,
    /// Refuse it (`SCHEMA_NOT_FOUND`).
    Refuse,
}

impl UnregisteredPolicy {
    pub const ALL: [UnregisteredPolicy; 2] =
        [UnregisteredPolicy::Allow, UnregisteredPolicy::Refuse];

    pub fn as_str(self) -> &'static str {
        match self {
            UnregisteredPolicy::Allow => "ALLOW",
            UnregisteredPolicy::Refuse => "REFUSE",
        }
    }
}

macro_rules! spelled {
    ($ty:ty, $what:literal) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = SchemaError;

            /// Case-insensitive; `-` may stand for `_`.
            fn from_str(s: &str) -> Result<Self, SchemaError> {
                let wanted = s.trim().replace('-', "_");
                Self::ALL
                    .into_iter()
                    .find(|m| m.as_str().eq_ignore_ascii_case(&wanted))
                    .ok_or_else(|| SchemaError::InvalidSetting {
                        what: $what,
                        value: s.to_owned(),
                        allowed: Self::ALL.iter().map(|m| m.as_str()).collect(),
                    })
            }
        }
    };
}

spelled!(CompatibilityMode, "compatibility mode");
spelled!(ValidationMode, "validation mode");
spelled!(UnregisteredPolicy, "unregistered-type policy");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_parses_back() {
        for mode in CompatibilityMode::ALL {
            assert_eq!(mode.as_str().parse::<CompatibilityMode>().unwrap(), mode);
            let json = serde_json::to_value(mode).unwrap();
            assert_eq!(json, serde_json::json!(mode.as_str()));
        }
        for mode in ValidationMode::ALL {
            assert_eq!(mode.to_string().parse::<ValidationMode>().unwrap(), mode);
            assert_eq!(
                serde_json::to_value(mode).unwrap(),
                serde_json::json!(mode.as_str())
            );
        }
        for policy in UnregisteredPolicy::ALL {
            assert_eq!(
                policy.to_string().parse::<UnregisteredPolicy>().unwrap(),
                policy
            );
        }
        assert_eq!(
            "full-transitive".parse::<CompatibilityMode>().unwrap(),
            CompatibilityMode::FullTransitive
        );
    }

    #[test]
    fn an_unknown_spelling_names_the_allowed_ones() {
        let error = "SIDEWAYS".parse::<CompatibilityMode>().unwrap_err();
        assert_eq!(error.code(), "BAD_INPUT");
        assert!(error.to_string().contains("BACKWARD_TRANSITIVE"), "{error}");
    }

    #[test]
    fn directions_and_transitivity_follow_the_mode() {
        use CompatibilityMode as M;
        assert_eq!(M::Backward.directions(), &[Direction::Backward]);
        assert_eq!(M::ForwardTransitive.directions(), &[Direction::Forward]);
        assert_eq!(
            M::Full.directions(),
            &[Direction::Backward, Direction::Forward]
        );
        assert!(M::None.directions().is_empty());
        assert!(M::FullTransitive.is_transitive() && !M::Full.is_transitive());
        assert_eq!(M::default(), M::Backward);
    }
}
