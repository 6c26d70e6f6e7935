//! Avro binary payloads: a JSON payload written as an Avro datum (no container header: the
//! registry knows the version, hence the writer schema) and read back as JSON, optionally
//! resolved into another (the latest) version's reader schema.
//!
//! JSON ↔ Avro, by the Avro schema:
//!
//! | Avro | JSON written | JSON read |
//! |---|---|---|
//! | `null` | `null` | `null` |
//! | `boolean` | `true`/`false` | same |
//! | `int`, `long` | an integer in range (never truncated) | integer |
//! | `float`, `double` | any number | number |
//! | `string`, `uuid` | string (`uuid`: a UUID's text) | string |
//! | `enum` | one of the symbols | the symbol |
//! | `array` | array | array |
//! | `map` | object | object |
//! | `record` | object with the record's fields; a missing field takes its default, or `null` when its type is a union with `null`; a field the record does not have is refused | object |
//! | `["null", T]` | `null`/absent, or a T | T, and an absent field for `null` inside a record |
//! | `date`, `time-*`, `timestamp-*` | the underlying int/long | integer |
//!
//! `bytes`, `fixed`, `decimal` and `duration` have no JSON form here and are refused, as are
//! NaN and infinities. An optional field holding `null` reads back as absent: Avro does not
//! tell "absent" from `null`, and the JSON Schema of such a field accepts absence.

use std::collections::HashMap;

use apache_avro::schema::{Name, ResolvedSchema};
use apache_avro::types::Value as Avro;
use apache_avro::Schema;
use serde_json::{Map, Number, Value};

use crate::compat::field_path;
use crate::error::SchemaError;

/// A parsed Avro schema, kept with its text in Avro's Parsing Canonical Form.
#[derive(Debug, Clone)]
pub struct AvroSchema {
    schema: Schema,
    canonical: String,
}

impl AvroSchema {
    pub fn parse(text: &str) -> Result<AvroSchema, String> {
        let schema = Schema::parse_str(text).map_err(|e| e.to_string())?;
        // Named references must resolve now, not at the first encode.
        ResolvedSchema::try_from(&schema).map_err(|e| e.to_string())?;
        let canonical = schema.canonical_form();
        Ok(AvroSchema { schema, canonical })
    }

    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Avro's Parsing Canonical Form: equal for schemas that read and write alike.
    pub fn canonical_form(&self) -> &str {
        &self.canonical
    }
}

/// `payload` as an Avro datum of `schema`.
pub fn encode(schema: &AvroSchema, payload: &Value) -> Result<Vec<u8>, SchemaError> {
    let resolved =
        ResolvedSchema::try_from(&schema.schema).map_err(|e| SchemaError::AvroEncode {
            path: "$".into(),
            reason: e.to_string(),
        })?;
    let names: HashMap<&Name, &Schema> = resolved
        .get_names()
        .iter()
        .map(|(name, schema)| (name, *schema))
        .collect();
    let value = to_avro(&names, &schema.schema, payload, "$")?;
    apache_avro::to_avro_datum(&schema.schema, value).map_err(|e| SchemaError::AvroEncode {
        path: "$".into(),
        reason: e.to_string(),
    })
}

/// Reads a datum written with `writer`; resolved into `reader` (Avro's schema resolution:
/// defaults for fields the writer lacked, writer-only fields dropped, promotions) when given.
pub fn decode(
    writer: &AvroSchema,
    reader: Option<&AvroSchema>,
    bytes: &[u8],
) -> Result<Value, SchemaError> {
    let mut input = bytes;
    let value = apache_avro::from_avro_datum(&writer.schema, &mut input, reader.map(|r| &r.schema))
        .map_err(|e| SchemaError::AvroDecode {
            reason: e.to_string(),
        })?;
    if !input.is_empty() {
        return Err(SchemaError::AvroDecode {
            reason: format!("{} byte(s) left after the datum", input.len()),
        });
    }
    to_json(value, "$")
}

fn encode_error(path: &str, reason: impl Into<String>) -> SchemaError {
    SchemaError::AvroEncode {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

fn to_avro(
    names: &HashMap<&Name, &Schema>,
    schema: &Schema,
    json: &Value,
    path: &str,
) -> Result<Avro, SchemaError> {
    let mismatch = |expected: &str| {
        encode_error(
            path,
            format!(
                "expected {expected}, found {}",
                tidemark_store::validate::json_kind(json)
            ),
        )
    };
    Ok(match schema {
        Schema::Ref { name } => {
            let target = names
                .get(name)
                .ok_or_else(|| encode_error(path, format!("unknown named type {name}")))?;
            return to_avro(names, target, json, path);
        }
        Schema::Null => match json {
            Value::Null => Avro::Null,
            _ => return Err(mismatch("null")),
        },
        Schema::Boolean => Avro::Boolean(json.as_bool().ok_or_else(|| mismatch("a boolean"))?),
        Schema::Int | Schema::Date | Schema::TimeMillis => {
            let n = json.as_i64().ok_or_else(|| mismatch("an integer"))?;
            let n = i32::try_from(n)
                .map_err(|_| encode_error(path, format!("{n} does not fit in an Avro int")))?;
            match schema {
                Schema::Date => Avro::Date(n),
                Schema::TimeMillis => Avro::TimeMillis(n),
                _ => Avro::Int(n),
            }
        }
        Schema::Long
        | Schema::TimeMicros
        | Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::TimestampNanos
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos => {
            let n = json
                .as_i64()
                .ok_or_else(|| mismatch("an integer that fits in a long"))?;
            match schema {
                Schema::TimeMicros => Avro::TimeMicros(n),
                Schema::TimestampMillis => Avro::TimestampMillis(n),
                Schema::TimestampMicros => Avro::TimestampMicros(n),
                Schema::TimestampNanos => Avro::TimestampNanos(n),
                Schema::LocalTimestampMillis => Avro::LocalTimestampMillis(n),
                Schema::LocalTimestampMicros => Avro::LocalTimestampMicros(n),
                Schema::LocalTimestampNanos => Avro::LocalTimestampNanos(n),
                _ => Avro::Long(n),
            }
        }
        Schema::Float => Avro::Float(json.as_f64().ok_or_else(|| mismatch("a number"))? as f32),
        Schema::Double => Avro::Double(json.as_f64().ok_or_else(|| mismatch("a number"))?),
        Schema::String => Avro::String(
            json.as_str()
                .ok_or_else(|| mismatch("a string"))?
                .to_owned(),
        ),
        Schema::Uuid => {
            let text = json.as_str().ok_or_else(|| mismatch("a UUID string"))?;
            Avro::Uuid(text.parse().map_err(|_| encode_error(path, "not a UUID"))?)
        }
        Schema::Enum(e) => {
            let symbol = json.as_str().ok_or_else(|| mismatch("an enum symbol"))?;
            let index = e.symbols.iter().position(|s| s == symbol).ok_or_else(|| {
                encode_error(
                    path,
                    format!("'{symbol}' is not one of {}", e.symbols.join(", ")),
                )
            })?;
            Avro::Enum(index as u32, symbol.to_owned())
        }
        Schema::Array(array) => {
            let items = json.as_array().ok_or_else(|| mismatch("an array"))?;
            Avro::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| to_avro(names, &array.items, item, &format!("{path}[{i}]")))
                    .collect::<Result<_, _>>()?,
            )
        }
        Schema::Map(map) => {
            let object = json.as_object().ok_or_else(|| mismatch("an object"))?;
            Avro::Map(
                object
                    .iter()
                    .map(|(k, v)| {
                        Ok((
                            k.clone(),
                            to_avro(names, &map.types, v, &field_path(path, k))?,
                        ))
                    })
                    .collect::<Result<_, SchemaError>>()?,
            )
        }
        Schema::Union(union) => {
            let mut reasons = Vec::new();
            for (index, branch) in union.variants().iter().enumerate() {
                match to_avro(names, branch, json, path) {
                    Ok(value) => return Ok(Avro::Union(index as u32, Box::new(value))),
                    Err(error) => reasons.push(error.to_string()),
                }
            }
            return Err(encode_error(
                path,
                format!("matches no branch of the union ({})", reasons.join("; ")),
            ));
        }
        Schema::Record(record) => {
            let object = json.as_object().ok_or_else(|| mismatch("an object"))?;
            if let Some(unknown) = object
                .keys()
                .find(|k| !record.fields.iter().any(|f| &f.name == *k))
            {
                return Err(encode_error(
                    &field_path(path, unknown),
                    format!("record {} has no such field", record.name),
                ));
            }
            let mut fields = Vec::with_capacity(record.fields.len());
            for field in &record.fields {
                let field_at = field_path(path, &field.name);
                let value = match object.get(&field.name) {
                    Some(value) => to_avro(names, &field.schema, value, &field_at)?,
                    None => match (&field.default, &field.schema) {
                        (Some(default), _) => to_avro(names, &field.schema, default, &field_at)?,
                        (None, Schema::Union(union)) if union.is_nullable() => {
                            to_avro(names, &field.schema, &Value::Null, &field_at)?
                        }
                        _ => return Err(encode_error(&field_at, "required by the Avro schema")),
                    },
                };
                fields.push((field.name.clone(), value));
            }
            Avro::Record(fields)
        }
        Schema::Bytes
        | Schema::Fixed(_)
        | Schema::Decimal(_)
        | Schema::BigDecimal
        | Schema::Duration => {
            return Err(encode_error(
                path,
                "bytes, fixed, decimal and duration have no JSON form here",
            ))
        }
    })
}

fn decode_error(path: &str, reason: &str) -> SchemaError {
    SchemaError::AvroDecode {
        reason: format!("{path}: {reason}"),
    }
}

fn float(path: &str, x: f64) -> Result<Value, SchemaError> {
    Number::from_f64(x)
        .map(Value::Number)
        .ok_or_else(|| decode_error(path, "NaN and infinities have no JSON form"))
}

fn to_json(value: Avro, path: &str) -> Result<Value, SchemaError> {
    Ok(match value {
        Avro::Null => Value::Null,
        Avro::Boolean(b) => Value::Bool(b),
        Avro::Int(n) | Avro::Date(n) | Avro::TimeMillis(n) => Value::from(n),
        Avro::Long(n)
        | Avro::TimeMicros(n)
        | Avro::TimestampMillis(n)
        | Avro::TimestampMicros(n)
        | Avro::TimestampNanos(n)
        | Avro::LocalTimestampMillis(n)
        | Avro::LocalTimestampMicros(n)
        | Avro::LocalTimestampNanos(n) => Value::from(n),
        Avro::Float(x) => float(path, f64::from(x))?,
        Avro::Double(x) => float(path, x)?,
        Avro::String(s) | Avro::Enum(_, s) => Value::String(s),
        Avro::Uuid(u) => Value::String(u.to_string()),
        Avro::Union(_, inner) => to_json(*inner, path)?,
        Avro::Array(items) => Value::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| to_json(item, &format!("{path}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        Avro::Map(entries) => {
            let mut object = Map::new();
            let mut entries: Vec<(String, Avro)> = entries.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            for (key, value) in entries {
                let at = field_path(path, &key);
                object.insert(key, to_json(value, &at)?);
            }
            Value::Object(object)
        }
        Avro::Record(fields) => {
            let mut object = Map::new();
            for (name, value) in fields {
                // An optional field holding null reads as absent (see the module doc).
                if matches!(&value, Avro::Union(_, inner) if **inner == Avro::Null) {
                    continue;
                }
                let at = field_path(path, &name);
                object.insert(name, to_json(value, &at)?);
            }
            Value::Object(object)
        }
        Avro::Bytes(_)
        | Avro::Fixed(..)
        | Avro::Decimal(_)
        | Avro::BigDecimal(_)
        | Avro::Duration(_) => {
            return Err(decode_error(
                path,
                "bytes, fixed, decimal and duration have no JSON form here",
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const V1: &str = r#"{
        "type": "record", "name": "OrderPlaced", "namespace": "shop",
        "fields": [
            {"name": "order_id", "type": "string"},
            {"name": "customer", "type": {"type": "record", "name": "Customer", "fields": [
                {"name": "id", "type": "long"},
                {"name": "email", "type": ["null", "string"], "default": null}
            ]}},
            {"name": "status", "type": {"type": "enum", "name": "Status", "symbols": ["NEW", "PAID"]}},
            {"name": "total", "type": "double"},
            {"name": "quantity", "type": "int"},
            {"name": "lines", "type": {"type": "array", "items": {"type": "record", "name": "Line",
                "fields": [{"name": "sku", "type": "string"}, {"name": "qty", "type": "int"}]}}},
            {"name": "tags", "type": {"type": "map", "values": "string"}},
            {"name": "billing", "type": ["null", "Customer"], "default": null},
            {"name": "placed_at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {"name": "request", "type": {"type": "string", "logicalType": "uuid"}}
        ]
    }"#;

    /// V1 with a symbol added to `status`, `quantity` removed, `lines[].qty` widened to
    /// `long`, and a `channel` field with a default.
    fn v2() -> String {
        let mut schema: Value = serde_json::from_str(V1).unwrap();
        let fields = schema["fields"].as_array_mut().unwrap();
        fields.retain(|field| field["name"] != "quantity");
        for field in fields.iter_mut() {
            match field["name"].as_str() {
                Some("status") => field["type"]["symbols"] = json!(["NEW", "PAID", "SHIPPED"]),
                Some("lines") => field["type"]["items"]["fields"][1]["type"] = json!("long"),
                _ => {}
            }
        }
        fields.push(json!({"name": "channel", "type": "string", "default": "web"}));
        schema.to_string()
    }

    fn order() -> Value {
        json!({
            "order_id": "o-17",
            "customer": {"id": 9_000_000_000_i64, "email": "ada@example.com"},
            "status": "PAID",
            "total": 12.5,
            "quantity": 3,
            "lines": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 2}],
            "tags": {"gift": "yes", "rush": "no"},
            "billing": {"id": 1},
            "placed_at": 1_700_000_000_000_i64,
            "request": "6f1c2a4e-3b5d-4c7e-9f10-2a3b4c5d6e7f"
        })
    }

    #[test]
    fn a_json_payload_round_trips_through_avro() {
        let schema = AvroSchema::parse(V1).unwrap();
        let bytes = encode(&schema, &order()).unwrap();
        let text_len = serde_json::to_vec(&order()).unwrap().len();
        assert!(
            bytes.len() * 2 < text_len,
            "{} bytes of Avro for {text_len} of JSON",
            bytes.len()
        );
        assert_eq!(decode(&schema, None, &bytes).unwrap(), order());
    }

    #[test]
    fn an_absent_optional_field_and_null_read_back_as_absent() {
        let schema = AvroSchema::parse(V1).unwrap();
        let mut explicit_null = order();
        explicit_null["customer"]["email"] = Value::Null;
        explicit_null["billing"] = Value::Null;
        let mut absent = order();
        absent["customer"].as_object_mut().unwrap().remove("email");
        absent.as_object_mut().unwrap().remove("billing");
        let from_null = decode(&schema, None, &encode(&schema, &explicit_null).unwrap()).unwrap();
        let from_absent = decode(&schema, None, &encode(&schema, &absent).unwrap()).unwrap();
        assert_eq!(from_null, absent);
        assert_eq!(from_absent, absent);
    }

    #[test]
    fn the_writer_schema_resolves_into_the_reader_schema() {
        let v1 = AvroSchema::parse(V1).unwrap();
        let v2 = AvroSchema::parse(&v2()).unwrap();
        let bytes = encode(&v1, &order()).unwrap();
        let read = decode(&v1, Some(&v2), &bytes).unwrap();
        let mut expected = order();
        expected.as_object_mut().unwrap().remove("quantity");
        expected["channel"] = json!("web");
        assert_eq!(read, expected);
    }

    #[test]
    fn payloads_that_do_not_fit_are_refused_with_their_path() {
        let schema = AvroSchema::parse(V1).unwrap();
        let cases = [
            ("/quantity", json!(5_000_000_000_i64), "$.quantity"),
            ("/status", json!("LOST"), "$.status"),
            ("/lines/1/qty", json!("two"), "$.lines[1].qty"),
            ("/total", json!("12.5"), "$.total"),
        ];
        for (pointer, value, path) in cases {
            let mut payload = order();
            *payload.pointer_mut(pointer).unwrap() = value;
            match encode(&schema, &payload) {
                Err(SchemaError::AvroEncode { path: at, .. }) => assert_eq!(at, path, "{pointer}"),
                other => panic!("{pointer}: {other:?}"),
            }
        }
        let mut unknown = order();
        unknown["coupon"] = json!("X");
        assert!(matches!(
            encode(&schema, &unknown),
            Err(SchemaError::AvroEncode { path, .. }) if path == "$.coupon"
        ));
        let mut missing = order();
        missing.as_object_mut().unwrap().remove("order_id");
        let error = encode(&schema, &missing).unwrap_err();
        assert_eq!(error.code(), "SCHEMA_VIOLATION");
        assert!(error.to_string().contains("$.order_id"), "{error}");
    }

    #[test]
    fn corrupt_or_trailing_bytes_are_refused() {
        let schema = AvroSchema::parse(V1).unwrap();
        let mut bytes = encode(&schema, &order()).unwrap();
        bytes.push(0);
        let error = decode(&schema, None, &bytes).unwrap_err();
        assert_eq!(error.code(), "PAYLOAD_UNREADABLE");
        bytes.truncate(5);
        assert!(decode(&schema, None, &bytes).is_err());
    }

    #[test]
    fn invalid_schemas_are_refused() {
        assert!(AvroSchema::parse("{\"type\": \"record\"}").is_err());
        assert!(AvroSchema::parse("not json").is_err());
        let canonical =
            AvroSchema::parse(r#"{"type":"record","name":"A","doc":"x","fields":[]}"#).unwrap();
        assert_eq!(
            canonical.canonical_form(),
            r#"{"name":"A","type":"record","fields":[]}"#
        );
    }
}
