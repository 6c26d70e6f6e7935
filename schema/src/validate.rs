//! Compiled JSON Schema validators, cached per (event type, version), and the violations
//! they report (the field's path and the keyword broken).
//!
//! A registered version never changes (version numbers are never reused), so a compiled
//! validator stays right for as long as its version exists; the cache only forgets versions
//! on request (`ValidatorCache::clear`, after deletions).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use jsonschema::paths::LocationSegment;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::compat::field_path;

/// At most this many violations are reported per payload: enough to fix it, bounded in size.
pub const MAX_VIOLATIONS: usize = 20;

/// One way a payload breaks its schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// JSON path of the offending value (`$`, `$.customer.email`, `$.lines[2]`).
    pub path: String,
    /// The JSON Schema keyword that failed (`required`, `type`, `enum`, ...).
    pub keyword: String,
    /// What is wrong, without the payload's values (they may be personal data).
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} [{}]", self.path, self.message, self.keyword)
    }
}

/// A JSON Schema compiled once, for validating many payloads.
pub struct CompiledSchema {
    validator: jsonschema::Validator,
}

impl fmt::Debug for CompiledSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompiledSchema").finish_non_exhaustive()
    }
}

impl CompiledSchema {
    /// Compiles `schema` (its draft taken from `$schema`, 2020-12 by default). Remote `$ref`s
    /// are not fetched: a schema that needs one is refused.
    pub fn compile(schema: &Value) -> Result<CompiledSchema, String> {
        jsonschema::validator_for(schema)
            .map(|validator| CompiledSchema { validator })
            .map_err(|error| error.to_string())
    }

    pub fn is_valid(&self, payload: &Value) -> bool {
        self.validator.is_valid(payload)
    }

    /// The payload's violations, at most [`MAX_VIOLATIONS`]; empty when it is valid.
    pub fn violations(&self, payload: &Value) -> Vec<Violation> {
        // The boolean check is much cheaper than collecting errors, and most payloads pass.
        if self.validator.is_valid(payload) {
            return Vec::new();
        }
        self.validator
            .iter_errors(payload)
            .take(MAX_VIOLATIONS)
            .map(|error| Violation {
                path: json_path(error.instance_path()),
                keyword: error.kind().keyword().to_owned(),
                message: error.masked().to_string(),
            })
            .collect()
    }
}

fn json_path(location: &jsonschema::paths::Location) -> String {
    let mut path = String::from("$");
    for segment in location.iter() {
        match segment {
            LocationSegment::Property(name) => path = field_path(&path, &name),
            LocationSegment::Index(index) => path.push_str(&format!("[{index}]")),
        }
    }
    path
}

/// Compiled validators by event type and version, shared by every appending task.
#[derive(Debug, Default)]
pub struct ValidatorCache {
    by_type: RwLock<HashMap<String, HashMap<i32, Arc<CompiledSchema>>>>,
}

impl ValidatorCache {
    pub fn new() -> ValidatorCache {
        ValidatorCache::default()
    }

    pub fn get(&self, event_type: &str, version: i32) -> Option<Arc<CompiledSchema>> {
        let by_type = self.by_type.read().unwrap_or_else(|e| e.into_inner());
        by_type.get(event_type)?.get(&version).cloned()
    }

    /// The cached validator, or `schema` compiled and cached. Two tasks may compile the same
    /// version at once; both results are equal and the first one stored is kept.
    pub fn get_or_compile(
        &self,
        event_type: &str,
        version: i32,
        schema: &Value,
    ) -> Result<Arc<CompiledSchema>, String> {
        if let Some(found) = self.get(event_type, version) {
            return Ok(found);
        }
        let compiled = Arc::new(CompiledSchema::compile(schema)?);
        let mut by_type = self.by_type.write().unwrap_or_else(|e| e.into_inner());
        Ok(by_type
            .entry(event_type.to_owned())
            .or_default()
            .entry(version)
            .or_insert(compiled)
            .clone())
    }

    /// Forgets every validator (after a version was deleted somewhere).
    pub fn clear(&self) {
        self.by_type
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    pub fn len(&self) -> usize {
        let by_type = self.by_type.read().unwrap_or_else(|e| e.into_inner());
        by_type.values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn order_placed() -> Value {
        json!({
            "type": "object",
            "properties": {
                "order_id": {"type": "string"},
                "total": {"type": "number", "minimum": 0},
                "status": {"enum": ["new", "paid"]},
                "lines": {"type": "array", "items": {
                    "type": "object",
                    "properties": {"sku": {"type": "string"}, "qty": {"type": "integer"}},
                    "required": ["sku", "qty"]
                }},
                "customer": {"type": "object", "properties": {"e-mail": {"type": "string"}}}
            },
            "required": ["order_id", "total"],
            "additionalProperties": false
        })
    }

    #[test]
    fn a_valid_payload_has_no_violations() {
        let compiled = CompiledSchema::compile(&order_placed()).unwrap();
        let payload = json!({"order_id": "o-1", "total": 12.5, "lines": [{"sku": "a", "qty": 2}]});
        assert!(compiled.is_valid(&payload));
        assert!(compiled.violations(&payload).is_empty());
    }

    #[test]
    fn violations_name_the_path_and_the_keyword() {
        let compiled = CompiledSchema::compile(&order_placed()).unwrap();
        let payload = json!({
            "total": -1,
            "status": "lost",
            "lines": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": "two"}],
            "customer": {"e-mail": 7},
            "coupon": "X"
        });
        let mut found: Vec<(String, String)> = compiled
            .violations(&payload)
            .into_iter()
            .map(|v| (v.path, v.keyword))
            .collect();
        found.sort();
        let mut expected: Vec<(String, String)> = [
            ("$", "required"),
            ("$", "additionalProperties"),
            ("$.total", "minimum"),
            ("$.status", "enum"),
            ("$.lines[1].qty", "type"),
            ("$.customer['e-mail']", "type"),
        ]
        .into_iter()
        .map(|(p, k)| (p.to_owned(), k.to_owned()))
        .collect();
        expected.sort();
        assert_eq!(found, expected);
    }

    #[test]
    fn messages_do_not_repeat_the_payload_values() {
        let compiled = CompiledSchema::compile(&order_placed()).unwrap();
        let payload = json!({"order_id": "o-1", "total": "secret-amount-4711"});
        let violations = compiled.violations(&payload);
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(
            !violations[0].message.contains("secret-amount-4711"),
            "{violations:?}"
        );
    }

    #[test]
    fn an_invalid_schema_does_not_compile() {
        let error = CompiledSchema::compile(&json!({"type": "no-such-type"})).unwrap_err();
        assert!(!error.is_empty());
        let remote = json!({"$ref": "https://example.invalid/schema.json"});
        assert!(CompiledSchema::compile(&remote).is_err());
    }

    #[test]
    fn the_cache_compiles_each_version_once() {
        let cache = ValidatorCache::new();
        let first = cache
            .get_or_compile("OrderPlaced", 1, &order_placed())
            .unwrap();
        // A different schema under the same key is not compiled: versions never change.
        let again = cache
            .get_or_compile("OrderPlaced", 1, &json!(false))
            .unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        cache
            .get_or_compile("OrderPlaced", 2, &json!(true))
            .unwrap();
        assert_eq!(cache.len(), 2);
        assert!(cache.get("OrderPlaced", 3).is_none());
        cache.clear();
        assert!(cache.is_empty());
    }
}
