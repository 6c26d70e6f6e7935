//! What a window computes: the [`WindowFold`] trait (init, add, merge, output) and the
//! built-in [`Aggregate`]s (count, sum, min, max, average over a numeric field).
//!
//! Accumulators serialise to JSON so the engine can keep them in Postgres. Floating-point
//! parts are written as strings: serde_json's default number parsing may be one ulp off,
//! which would make a restored accumulator differ from the one that was saved.

use super::field::FieldPath;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::cmp::Ordering;
use std::fmt::Debug;

/// A fold over the events of one window.
///
/// `extract` reads what the fold needs from an event's value once and may refuse the event;
/// `add` and `merge` cannot fail, so an event is applied to all its windows or to none.
/// `merge` combines two windows' accumulators when a session absorbs another; for results
/// to be independent of how sessions were merged it should be associative and commutative
/// (up to float rounding), like the built-ins.
pub trait WindowFold: Send + Sync + 'static {
    /// What `extract` reads from one event.
    type Input;
    /// The state of one window. Serialised into the operator's state.
    type Acc: Clone + Debug + PartialEq + Serialize + DeserializeOwned + Send + Sync;

    fn extract(&self, value: &Value) -> Result<Self::Input, FoldError>;
    fn init(&self) -> Self::Acc;
    fn add(&self, acc: &mut Self::Acc, input: &Self::Input);
    fn merge(&self, acc: &mut Self::Acc, other: Self::Acc);
    /// The window's result as written to the read model.
    fn output(&self, acc: &Self::Acc) -> Value;
}

/// An event a fold cannot use. The lane parks it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FoldError {
    #[error("the field '{path}' is absent or null")]
    MissingField { path: FieldPath },
    #[error("the field '{path}' is {value}, not a number")]
    NotANumber { path: FieldPath, value: String },
    /// A refusal from a user fold.
    #[error("{0}")]
    Refused(String),
}

/// The built-in aggregates. All share [`NumericAcc`], so the stored state has one shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "fn", content = "field", rename_all = "snake_case")]
pub enum Aggregate {
    /// The number of events; reads no field.
    Count,
    /// The sum: an integer while every value is an integer (exact, in 128 bits), otherwise a
    /// float. `0` for no values.
    Sum(FieldPath),
    /// The smallest value, as it appeared in the events.
    Min(FieldPath),
    /// The largest value.
    Max(FieldPath),
    /// The mean as a float.
    Average(FieldPath),
}

impl Aggregate {
    fn field(&self) -> Option<&FieldPath> {
        match self {
            Aggregate::Count => None,
            Aggregate::Sum(path)
            | Aggregate::Min(path)
            | Aggregate::Max(path)
            | Aggregate::Average(path) => Some(path),
        }
    }
}

/// A JSON number kept as it came: integers exactly, other numbers as `f64`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Num {
    Int(i64),
    Float(#[serde(with = "exact_f64")] f64),
}

impl Num {
    fn of(n: &serde_json::Number) -> Num {
        match n.as_i64() {
            Some(i) => Num::Int(i),
            // u64 above i64::MAX, or a fraction/exponent.
            None => Num::Float(n.as_f64().unwrap_or(f64::NAN)),
        }
    }

    fn as_f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
        }
    }

    fn cmp(self, other: Num) -> Ordering {
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => a.cmp(&b),
            (a, b) => a.as_f64().total_cmp(&b.as_f64()),
        }
    }

    fn to_json(self) -> Value {
        match self {
            Num::Int(i) => Value::from(i),
            Num::Float(f) => float_json(f),
        }
    }
}

/// A sum that stays exact while its terms are integers.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct ExactSum {
    #[serde(with = "i128_string")]
    pub ints: i128,
    #[serde(with = "exact_f64")]
    pub floats: f64,
    pub any_float: bool,
}

impl ExactSum {
    fn add(&mut self, n: Num) {
        match n {
            Num::Int(i) => self.ints += i128::from(i),
            Num::Float(f) => {
                self.floats += f;
                self.any_float = true;
            }
        }
    }

    fn merge(&mut self, other: ExactSum) {
        self.ints += other.ints;
        self.floats += other.floats;
        self.any_float |= other.any_float;
    }

    fn total(&self) -> f64 {
        self.ints as f64 + self.floats
    }

    fn to_json(self) -> Value {
        if self.any_float {
            float_json(self.total())
        } else {
            match i64::try_from(self.ints) {
                Ok(i) => Value::from(i),
                Err(_) => float_json(self.ints as f64),
            }
        }
    }
}

/// The accumulator of every built-in [`Aggregate`]: count, sum, min and max of the values.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct NumericAcc {
    /// Events added (for [`Aggregate::Count`]) or values added (for the others).
    pub count: u64,
    pub sum: ExactSum,
    pub min: Option<Num>,
    pub max: Option<Num>,
}

impl WindowFold for Aggregate {
    type Input = Option<Num>;
    type Acc = NumericAcc;

    fn extract(&self, value: &Value) -> Result<Option<Num>, FoldError> {
        let Some(path) = self.field() else {
            return Ok(None);
        };
        match path.lookup(value) {
            None | Some(Value::Null) => Err(FoldError::MissingField { path: path.clone() }),
            Some(Value::Number(n)) => Ok(Some(Num::of(n))),
            Some(other) => Err(FoldError::NotANumber {
                path: path.clone(),
                value: other.to_string(),
            }),
        }
    }

    fn init(&self) -> NumericAcc {
        NumericAcc::default()
    }

    fn add(&self, acc: &mut NumericAcc, input: &Option<Num>) {
        acc.count += 1;
        if let Some(n) = *input {
            acc.sum.add(n);
            acc.min = Some(match acc.min {
                Some(m) if m.cmp(n) != Ordering::Greater => m,
                _ => n,
            });
            acc.max = Some(match acc.max {
                Some(m) if m.cmp(n) != Ordering::Less => m,
                _ => n,
            });
        }
    }

    fn merge(&self, acc: &mut NumericAcc, other: NumericAcc) {
        acc.count += other.count;
        acc.sum.merge(other.sum);
        acc.min = pick(acc.min, other.min, Ordering::Greater);
        acc.max = pick(acc.max, other.max, Ordering::Less);
    }

    fn output(&self, acc: &NumericAcc) -> Value {
        match self {
            Aggregate::Count => Value::from(acc.count),
            Aggregate::Sum(_) => acc.sum.to_json(),
            Aggregate::Min(_) => acc.min.map_or(Value::Null, Num::to_json),
            Aggregate::Max(_) => acc.max.map_or(Value::Null, Num::to_json),
            Aggregate::Average(_) if acc.count == 0 => Value::Null,
            Aggregate::Average(_) => float_json(acc.sum.total() / acc.count as f64),
        }
    }
}

/// `a` unless `b` is strictly better (`a.cmp(b) == replace_when`).
fn pick(a: Option<Num>, b: Option<Num>, replace_when: Ordering) -> Option<Num> {
    match (a, b) {
        (Some(x), Some(y)) if x.cmp(y) == replace_when => Some(y),
        (Some(x), _) => Some(x),
        (None, y) => y,
    }
}

/// A float as JSON; `null` for the infinities an overflowing sum can reach.
fn float_json(f: f64) -> Value {
    serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
}

/// `f64` as its shortest round-trip decimal string, parsed back exactly by `str::parse`.
mod exact_f64 {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(value)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(D::Error::custom)
    }
}

/// `i128` as a decimal string: JSON numbers (and `serde_json::Value`) stop at 64 bits.
mod i128_string {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &i128, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(value)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i128, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fold(agg: &Aggregate, values: &[Value]) -> NumericAcc {
        let mut acc = agg.init();
        for v in values {
            let input = agg.extract(v).unwrap();
            agg.add(&mut acc, &input);
        }
        acc
    }

    fn amounts(xs: &[Value]) -> Vec<Value> {
        xs.iter().map(|x| json!({ "amount": x })).collect()
    }

    #[test]
    fn builtins_over_integers() {
        let path = FieldPath::field("amount");
        let values = amounts(&[json!(5), json!(-3), json!(12), json!(7)]);
        let out = |agg: Aggregate| agg.output(&fold(&agg, &values));
        assert_eq!(out(Aggregate::Count), json!(4));
        assert_eq!(out(Aggregate::Sum(path.clone())), json!(21));
        assert_eq!(out(Aggregate::Min(path.clone())), json!(-3));
        assert_eq!(out(Aggregate::Max(path.clone())), json!(12));
        assert_eq!(out(Aggregate::Average(path.clone())), json!(5.25));
        let empty = Aggregate::Sum(path.clone());
        assert_eq!(empty.output(&empty.init()), json!(0));
        assert_eq!(
            Aggregate::Average(path.clone()).output(&NumericAcc::default()),
            Value::Null
        );
        assert_eq!(
            Aggregate::Min(path).output(&NumericAcc::default()),
            Value::Null
        );
    }

    #[test]
    fn integer_sums_stay_exact_beyond_64_bits_and_floats_mix_in() {
        let path = FieldPath::field("amount");
        let sum = Aggregate::Sum(path.clone());
        let big = fold(
            &sum,
            &amounts(&[json!(i64::MAX), json!(i64::MAX), json!(-i64::MAX)]),
        );
        assert_eq!(sum.output(&big), json!(i64::MAX));
        let mixed = fold(&sum, &amounts(&[json!(1), json!(0.5), json!(u64::MAX)]));
        assert_eq!(sum.output(&mixed), json!(1.5 + u64::MAX as f64));
        let max = Aggregate::Max(path);
        assert_eq!(
            max.output(&fold(&max, &amounts(&[json!(2), json!(2.5), json!(1)]))),
            json!(2.5)
        );
    }

    #[test]
    fn merge_equals_folding_everything() {
        let path = FieldPath::field("amount");
        let values = amounts(
            &(0..40)
                .map(|i| json!((i * 37) % 23 - 11))
                .collect::<Vec<_>>(),
        );
        for agg in [
            Aggregate::Count,
            Aggregate::Sum(path.clone()),
            Aggregate::Min(path.clone()),
            Aggregate::Max(path.clone()),
            Aggregate::Average(path.clone()),
        ] {
            let whole = fold(&agg, &values);
            let mut left = fold(&agg, &values[..13]);
            agg.merge(&mut left, fold(&agg, &values[13..]));
            assert_eq!(left, whole, "{agg:?}");
            let mut empty = agg.init();
            agg.merge(&mut empty, whole.clone());
            assert_eq!(empty, whole, "{agg:?}");
        }
    }

    #[test]
    fn unusable_values_are_refused() {
        let sum = Aggregate::Sum(FieldPath::field("amount"));
        assert!(matches!(
            sum.extract(&json!({})),
            Err(FoldError::MissingField { .. })
        ));
        assert!(matches!(
            sum.extract(&json!({"amount": null})),
            Err(FoldError::MissingField { .. })
        ));
        assert!(matches!(
            sum.extract(&json!({"amount": "12"})),
            Err(FoldError::NotANumber { .. })
        ));
        assert_eq!(Aggregate::Count.extract(&json!("anything")), Ok(None));
    }

    #[test]
    fn accumulators_round_trip_exactly() {
        let sum = Aggregate::Sum(FieldPath::field("amount"));
        let acc = fold(
            &sum,
            &amounts(&[
                json!(0.1),
                json!(0.2),
                json!(1e-300),
                json!(7),
                json!(i64::MIN),
            ]),
        );
        let text = serde_json::to_string(&acc).unwrap();
        let back: NumericAcc = serde_json::from_str(&text).unwrap();
        assert_eq!(back, acc);
        assert_eq!(back.sum.floats.to_bits(), acc.sum.floats.to_bits());
        // Through serde_json::Value as well (what a jsonb column goes through).
        let value = serde_json::to_value(&acc).unwrap();
        assert_eq!(serde_json::from_value::<NumericAcc>(value).unwrap(), acc);
        let aggregates = serde_json::to_value(&sum).unwrap();
        assert_eq!(aggregates, json!({"fn": "sum", "field": "/amount"}));
        assert_eq!(
            serde_json::to_value(&Aggregate::Count).unwrap(),
            json!({"fn": "count"})
        );
    }
}
