//! `Int64`: the GraphQL scalar of positions, stream versions, cursors and counts.
//!
//! GraphQL's `Int` is 32-bit by its specification, and schema-aware clients refuse a position
//! above 2^31 - 1. `Int64` serialises as a JSON number (exact for every value a log reaches:
//! JavaScript's `Number` is exact up to 2^53) and accepts, as input, a JSON number or a
//! decimal string, so clients that keep 64-bit integers as strings can send them as they are.

use async_graphql::{InputValueError, InputValueResult, Scalar, ScalarType, Value};

/// A signed 64-bit integer (positions, versions, cursors, counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Int64(pub i64);

/// The description shown in the SDL and in GraphiQL.
const DESCRIPTION: &str =
    "A signed 64-bit integer: positions, stream versions, cursors and counts. \
Serialised as a JSON number; accepted as a JSON number or a decimal string.";

#[Scalar(name = "Int64", use_type_description)]
impl ScalarType for Int64 {
    fn parse(value: Value) -> InputValueResult<Self> {
        match &value {
            Value::Number(number) => number.as_i64().map(Int64).ok_or_else(|| {
                InputValueError::custom(format!(
                    "{number} is not a whole number between -2^63 and 2^63 - 1"
                ))
            }),
            Value::String(text) => text.trim().parse::<i64>().map(Int64).map_err(|_| {
                InputValueError::custom(format!(
                    "\"{text}\" is not a decimal whole number between -2^63 and 2^63 - 1"
                ))
            }),
            _ => Err(InputValueError::expected_type(value)),
        }
    }

    fn is_valid(value: &Value) -> bool {
        match value {
            Value::Number(number) => number.is_i64(),
            Value::String(text) => text.trim().parse::<i64>().is_ok(),
            _ => false,
        }
    }

    fn to_value(&self) -> Value {
        Value::Number(self.0.into())
    }
}

impl async_graphql::Description for Int64 {
    fn description() -> &'static str {
        DESCRIPTION
    }
}

impl From<i64> for Int64 {
    fn from(value: i64) -> Self {
        Int64(value)
    }
}

impl From<Int64> for i64 {
    fn from(value: Int64) -> Self {
        value.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_numbers_and_decimal_strings_beyond_32_bits() {
        let big = 5_000_000_000_i64;
        assert_eq!(Int64::parse(Value::Number(big.into())).unwrap(), Int64(big));
        assert_eq!(
            Int64::parse(Value::String(big.to_string())).unwrap(),
            Int64(big)
        );
        assert_eq!(Int64(big).to_value(), Value::Number(big.into()));
    }

    #[test]
    fn refuses_fractions_words_and_overflow() {
        let fraction = serde_json::Number::from_f64(1.5).unwrap();
        assert!(Int64::parse(Value::Number(fraction)).is_err());
        assert!(Int64::parse(Value::String("twelve".into())).is_err());
        assert!(Int64::parse(Value::String("9223372036854775808".into())).is_err());
        assert!(Int64::parse(Value::Boolean(true)).is_err());
    }
}
