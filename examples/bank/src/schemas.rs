//! How the bank's events evolve: `MoneyDeposited` v1 was `{amount}`; v2 adds the
//! `currency` of the deposit. The log keeps v1 deposits as written; an upcaster gives them
//! the currency every deposit had before v2 ([`DEFAULT_CURRENCY`]), so the account aggregate
//! and the read models only ever see v2.
//!
//! The schemas are registered when the bank starts ([`register`] on the app builder); the
//! registry refuses a v2 that v1 data could not be read with (mode `BACKWARD`).

use serde_json::{json, Value};
use tidemark_api::TidemarkAppBuilder;
use tidemark_schema::{SchemaDefinition, Upcasters};

/// The currency of every deposit written before `MoneyDeposited` v2.
pub const DEFAULT_CURRENCY: &str = "EUR";

/// The schema version of `MoneyDeposited` this code writes.
pub const MONEY_DEPOSITED_VERSION: i32 = 2;

/// `MoneyDeposited` v1: an amount in cents.
pub fn money_deposited_v1() -> SchemaDefinition {
    SchemaDefinition::json(json!({
        "type": "object",
        "properties": {"amount": {"type": "integer"}},
        "required": ["amount"],
        "additionalProperties": false
    }))
}

/// `MoneyDeposited` v2: the amount and its currency (ISO 4217), defaulting to
/// [`DEFAULT_CURRENCY`] for v1 data.
pub fn money_deposited_v2() -> SchemaDefinition {
    SchemaDefinition::json(json!({
        "type": "object",
        "properties": {
            "amount": {"type": "integer"},
            "currency": {"type": "string", "pattern": "^[A-Z]{3}$", "default": DEFAULT_CURRENCY}
        },
        "required": ["amount", "currency"],
        "additionalProperties": false
    }))
}

/// `MoneyDeposited` v1 → v2: a deposit without a currency was in [`DEFAULT_CURRENCY`].
pub fn money_deposited_v1_to_v2(mut payload: Value) -> Result<Value, String> {
    let Some(fields) = payload.as_object_mut() else {
        return Err("a MoneyDeposited payload is a JSON object".into());
    };
    fields
        .entry("currency")
        .or_insert_with(|| Value::from(DEFAULT_CURRENCY));
    Ok(payload)
}

/// The bank's Rust upcasters.
pub fn upcasters() -> Upcasters {
    let mut upcasters = Upcasters::new();
    // Only a second upcaster for the same step is refused; this is the first.
    upcasters
        .register_fn("MoneyDeposited", 1, money_deposited_v1_to_v2)
        .expect("the bank has one upcaster per step");
    upcasters
}

/// Adds the bank's schemas, in version order, and its upcasters to an app builder.
pub fn register<Q, M, S>(builder: TidemarkAppBuilder<Q, M, S>) -> TidemarkAppBuilder<Q, M, S> {
    builder
        .schema("MoneyDeposited", money_deposited_v1())
        .schema("MoneyDeposited", money_deposited_v2())
        .upcasters(upcasters())
}
