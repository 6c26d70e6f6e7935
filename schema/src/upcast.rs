//! Upcasting on read: the log keeps each event as written, readers see the latest version.
//!
//! An upcaster takes one event type's payload from version n to n + 1. [`Upcasters`] holds
//! them per type and applies the chain n → n + 1 → ... → latest in order; a payload already
//! at the target version is returned unchanged. Steps are either Rust ([`Upcaster`], or a
//! closure through [`Upcasters::register_fn`]) or declarative ([`DeclarativeUpcast`]: rename,
//! add with a default, remove), which serialise to JSON so the registry can store them with
//! the version they upcast from.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Takes payloads of one event type from version `source_version()` to the next.
pub trait Upcaster: Send + Sync {
    fn event_type(&self) -> &str;
    fn source_version(&self) -> i32;
    /// The payload at the next version; `Err` says why this payload cannot be upcast.
    fn upcast(&self, payload: Value) -> Result<Value, String>;
}

/// One declarative change from a version to the next. Paths are field names joined by `.`
/// (`customer.email`); the objects on the way must exist, except that `AddField` and
/// `RenameField` create missing parent objects of their target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum DeclarativeUpcast {
    /// Moves the value at `from` to `to`; nothing when `from` is absent.
    RenameField { from: String, to: String },
    /// Sets `path` to `default` when absent; a present value is kept.
    AddField { path: String, default: Value },
    /// Removes `path` when present.
    RemoveField { path: String },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpcastError {
    #[error(
        "'{event_type}' has no upcaster from version {from_version} to {}, needed to read \
         version {written} as version {target}; register one (Rust or declarative)",
        from_version + 1
    )]
    MissingStep {
        event_type: String,
        from_version: i32,
        written: i32,
        target: i32,
    },

    #[error(
        "an event of '{event_type}' is at version {written}, newer than version {target} this \
         reader knows; upgrade the reader (upcasters only go forward)"
    )]
    NewerThanTarget {
        event_type: String,
        written: i32,
        target: i32,
    },

    #[error("upcasting '{event_type}' from version {from_version} failed: {reason}")]
    StepFailed {
        event_type: String,
        from_version: i32,
        reason: String,
    },

    #[error("'{event_type}' already has an upcaster from version {from_version}")]
    Duplicate {
        event_type: String,
        from_version: i32,
    },

    #[error("schema versions start at 1; {version} is not one")]
    InvalidVersion { version: i32 },
}

#[derive(Clone)]
enum Step {
    Rust(Arc<dyn Upcaster>),
    Declarative(Vec<DeclarativeUpcast>),
}

impl fmt::Debug for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Rust(upcaster) => write!(
                f,
                "Rust({} v{})",
                upcaster.event_type(),
                upcaster.source_version()
            ),
            Step::Declarative(changes) => f.debug_tuple("Declarative").field(changes).finish(),
        }
    }
}

struct FnUpcaster<F> {
    event_type: String,
    from_version: i32,
    f: F,
}

impl<F> Upcaster for FnUpcaster<F>
where
    F: Fn(Value) -> Result<Value, String> + Send + Sync,
{
    fn event_type(&self) -> &str {
        &self.event_type
    }

    fn source_version(&self) -> i32 {
        self.from_version
    }

    fn upcast(&self, payload: Value) -> Result<Value, String> {
        (self.f)(payload)
    }
}

/// Upcasters per event type, keyed by the version each one starts from.
#[derive(Debug, Clone, Default)]
pub struct Upcasters {
    steps: HashMap<String, BTreeMap<i32, Step>>,
}

impl Upcasters {
    pub fn new() -> Upcasters {
        Upcasters::default()
    }

    pub fn register(&mut self, upcaster: impl Upcaster + 'static) -> Result<(), UpcastError> {
        let event_type = upcaster.event_type().to_owned();
        let from_version = upcaster.source_version();
        self.insert(event_type, from_version, Step::Rust(Arc::new(upcaster)))
    }

    /// Registers `f` as the upcaster of `event_type` from `from_version` to the next.
    pub fn register_fn(
        &mut self,
        event_type: impl Into<String>,
        from_version: i32,
        f: impl Fn(Value) -> Result<Value, String> + Send + Sync + 'static,
    ) -> Result<(), UpcastError> {
        let event_type = event_type.into();
        let upcaster = FnUpcaster {
            event_type: event_type.clone(),
            from_version,
            f,
        };
        self.insert(event_type, from_version, Step::Rust(Arc::new(upcaster)))
    }

    pub fn register_declarative(
        &mut self,
        event_type: impl Into<String>,
        from_version: i32,
        changes: Vec<DeclarativeUpcast>,
    ) -> Result<(), UpcastError> {
        self.insert(event_type.into(), from_version, Step::Declarative(changes))
    }

    fn insert(
        &mut self,
        event_type: String,
        from_version: i32,
        step: Step,
    ) -> Result<(), UpcastError> {
        if from_version < 1 {
            return Err(UpcastError::InvalidVersion {
                version: from_version,
            });
        }
        let steps = self.steps.entry(event_type.clone()).or_default();
        if steps.contains_key(&from_version) {
            return Err(UpcastError::Duplicate {
                event_type,
                from_version,
            });
        }
        steps.insert(from_version, step);
        Ok(())
    }

    /// Whether `event_type` has an upcaster from `from_version`.
    pub fn has_step(&self, event_type: &str, from_version: i32) -> bool {
        self.steps
            .get(event_type)
            .is_some_and(|steps| steps.contains_key(&from_version))
    }

    /// `payload`, written as version `written` of `event_type`, upcast to version `target`
    /// by applying each step in order. Unchanged when `written == target`.
    pub fn upcast(
        &self,
        event_type: &str,
        written: i32,
        target: i32,
        payload: Value,
    ) -> Result<Value, UpcastError> {
        upcast_layered(&[self], event_type, written, target, payload)
    }

    fn step(&self, event_type: &str, from_version: i32) -> Option<&Step> {
        self.steps.get(event_type)?.get(&from_version)
    }
}

/// Like [`Upcasters::upcast`] over several sets: each step comes from the first set that has
/// it (the registry puts the application's Rust upcasters before its stored declarative ones).
pub fn upcast_layered(
    layers: &[&Upcasters],
    event_type: &str,
    written: i32,
    target: i32,
    payload: Value,
) -> Result<Value, UpcastError> {
    if written < 1 {
        return Err(UpcastError::InvalidVersion { version: written });
    }
    if written > target {
        return Err(UpcastError::NewerThanTarget {
            event_type: event_type.to_owned(),
            written,
            target,
        });
    }
    // The whole chain first, so that a gap is reported without running any step.
    let mut chain = Vec::with_capacity((target - written) as usize);
    for from_version in written..target {
        let step = layers
            .iter()
            .find_map(|layer| layer.step(event_type, from_version))
            .ok_or_else(|| UpcastError::MissingStep {
                event_type: event_type.to_owned(),
                from_version,
                written,
                target,
            })?;
        chain.push((from_version, step));
    }
    let mut payload = payload;
    for (from_version, step) in chain {
        let failed = |reason: String| UpcastError::StepFailed {
            event_type: event_type.to_owned(),
            from_version,
            reason,
        };
        payload = match step {
            Step::Rust(upcaster) => upcaster.upcast(payload).map_err(failed)?,
            Step::Declarative(changes) => apply_all(changes, payload).map_err(failed)?,
        };
    }
    Ok(payload)
}

/// Applies declarative changes in order.
pub fn apply_all(changes: &[DeclarativeUpcast], mut payload: Value) -> Result<Value, String> {
    for change in changes {
        change.apply(&mut payload)?;
    }
    Ok(payload)
}

impl DeclarativeUpcast {
    pub fn apply(&self, payload: &mut Value) -> Result<(), String> {
        match self {
            DeclarativeUpcast::RenameField { from, to } => {
                let (from_parent, from_name) = split(from)?;
                let Some(parent) = find_object(payload, &from_parent, false)? else {
                    return Ok(());
                };
                let Some(value) = parent.remove(from_name) else {
                    return Ok(());
                };
                let (to_parent, to_name) = split(to)?;
                let target = find_object(payload, &to_parent, true)?.expect("created on the way");
                if target.contains_key(to_name) {
                    return Err(format!(
                        "cannot rename '{from}' to '{to}': '{to}' is already present"
                    ));
                }
                target.insert(to_name.to_owned(), value);
                Ok(())
            }
            DeclarativeUpcast::AddField { path, default } => {
                let (parent, name) = split(path)?;
                let target = find_object(payload, &parent, true)?.expect("created on the way");
                target
                    .entry(name.to_owned())
                    .or_insert_with(|| default.clone());
                Ok(())
            }
            DeclarativeUpcast::RemoveField { path } => {
                let (parent, name) = split(path)?;
                if let Some(target) = find_object(payload, &parent, false)? {
                    target.remove(name);
                }
                Ok(())
            }
        }
    }
}

fn split(path: &str) -> Result<(Vec<&str>, &str), String> {
    let mut segments: Vec<&str> = path.split('.').collect();
    if segments.iter().any(|s| s.is_empty()) {
        return Err(format!(
            "'{path}' is not a field path (names joined by '.')"
        ));
    }
    let last = segments.pop().expect("split yields at least one segment");
    Ok((segments, last))
}

/// The object at `parents` inside `payload`; missing objects are created when `create`, else
/// `None`. A non-object on the way is an error.
fn find_object<'v>(
    payload: &'v mut Value,
    parents: &[&str],
    create: bool,
) -> Result<Option<&'v mut Map<String, Value>>, String> {
    let mut current = payload;
    for (depth, name) in parents.iter().enumerate() {
        let Value::Object(map) = current else {
            return Err(format!("'{}' is not an object", parents[..depth].join(".")));
        };
        if !map.contains_key(*name) {
            if !create {
                return Ok(None);
            }
            map.insert((*name).to_owned(), Value::Object(Map::new()));
        }
        current = map.get_mut(*name).expect("present or inserted");
    }
    match current {
        Value::Object(map) => Ok(Some(map)),
        _ if parents.is_empty() => Err("the payload is not an object".into()),
        _ => Err(format!("'{}' is not an object", parents.join("."))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct SplitName;

    impl Upcaster for SplitName {
        fn event_type(&self) -> &str {
            "CustomerRegistered"
        }

        fn source_version(&self) -> i32 {
            2
        }

        fn upcast(&self, mut payload: Value) -> Result<Value, String> {
            let full = payload["full_name"]
                .as_str()
                .ok_or("full_name is not a string")?
                .to_owned();
            let (first, last) = full.split_once(' ').unwrap_or((&full, ""));
            let map = payload.as_object_mut().ok_or("not an object")?;
            map.remove("full_name");
            map.insert("first_name".into(), json!(first));
            map.insert("last_name".into(), json!(last));
            Ok(payload)
        }
    }

    /// v1 → v2 declarative (rename name → full_name, add country), v2 → v3 in Rust, v3 → v4
    /// a closure that records the order it ran in.
    fn chain() -> Upcasters {
        let mut upcasters = Upcasters::new();
        upcasters
            .register_declarative(
                "CustomerRegistered",
                1,
                vec![
                    DeclarativeUpcast::RenameField {
                        from: "name".into(),
                        to: "full_name".into(),
                    },
                    DeclarativeUpcast::AddField {
                        path: "address.country".into(),
                        default: json!("NL"),
                    },
                ],
            )
            .unwrap();
        upcasters.register(SplitName).unwrap();
        upcasters
            .register_fn("CustomerRegistered", 3, |mut payload| {
                // Sees v3's fields: proves v2 → v3 ran before.
                let first = payload["first_name"].clone();
                payload["greeting"] = json!(format!("Hello {}", first.as_str().unwrap_or("?")));
                Ok(payload)
            })
            .unwrap();
        upcasters
    }

    #[test]
    fn the_chain_applies_every_step_in_order() {
        let v1 = json!({"name": "Ada Lovelace", "address": {"city": "London"}});
        let latest = chain().upcast("CustomerRegistered", 1, 4, v1).unwrap();
        assert_eq!(
            latest,
            json!({
                "first_name": "Ada",
                "last_name": "Lovelace",
                "address": {"city": "London", "country": "NL"},
                "greeting": "Hello Ada"
            })
        );
    }

    #[test]
    fn a_payload_at_the_target_version_is_unchanged() {
        let v4 = json!({"first_name": "Ada", "greeting": "hi", "name": "kept"});
        let upcasters = chain();
        assert_eq!(
            upcasters
                .upcast("CustomerRegistered", 4, 4, v4.clone())
                .unwrap(),
            v4
        );
        // Upcasting the result again to the same target changes nothing either.
        let once = upcasters
            .upcast(
                "CustomerRegistered",
                2,
                4,
                json!({"full_name": "Grace Hopper"}),
            )
            .unwrap();
        let twice = upcasters
            .upcast("CustomerRegistered", 4, 4, once.clone())
            .unwrap();
        assert_eq!(once, twice);
        // A type without upcasters at its only version.
        assert_eq!(
            upcasters.upcast("Other", 1, 1, json!({"a": 1})).unwrap(),
            json!({"a": 1})
        );
    }

    #[test]
    fn a_gap_in_the_chain_is_named_before_any_step_runs() {
        let mut upcasters = Upcasters::new();
        upcasters
            .register_fn("T", 1, |_| panic!("must not run when the chain has a gap"))
            .unwrap();
        upcasters.register_fn("T", 3, Ok).unwrap();
        let error = upcasters.upcast("T", 1, 4, json!({})).unwrap_err();
        assert_eq!(
            error,
            UpcastError::MissingStep {
                event_type: "T".into(),
                from_version: 2,
                written: 1,
                target: 4
            }
        );
        assert!(error.to_string().contains("from version 2 to 3"), "{error}");
    }

    #[test]
    fn newer_events_duplicates_and_failures_are_errors() {
        let mut upcasters = chain();
        assert!(matches!(
            upcasters.upcast("CustomerRegistered", 5, 4, json!({})),
            Err(UpcastError::NewerThanTarget {
                written: 5,
                target: 4,
                ..
            })
        ));
        assert!(matches!(
            upcasters.register_fn("CustomerRegistered", 2, Ok),
            Err(UpcastError::Duplicate {
                from_version: 2,
                ..
            })
        ));
        assert!(matches!(
            upcasters.register_fn("CustomerRegistered", 0, Ok),
            Err(UpcastError::InvalidVersion { version: 0 })
        ));
        let error = upcasters
            .upcast("CustomerRegistered", 2, 3, json!({"full_name": 42}))
            .unwrap_err();
        assert!(
            matches!(
                error,
                UpcastError::StepFailed {
                    from_version: 2,
                    ..
                }
            ),
            "{error}"
        );
    }

    #[test]
    fn declarative_changes_handle_nested_paths_and_absent_fields() {
        let changes = vec![
            DeclarativeUpcast::RenameField {
                from: "customer.mail".into(),
                to: "contact.email".into(),
            },
            DeclarativeUpcast::RemoveField {
                path: "customer.legacy".into(),
            },
            DeclarativeUpcast::AddField {
                path: "customer.tier".into(),
                default: json!("basic"),
            },
            DeclarativeUpcast::AddField {
                path: "present".into(),
                default: json!("default"),
            },
            DeclarativeUpcast::RemoveField {
                path: "absent.deeper".into(),
            },
        ];
        let before = json!({"customer": {"mail": "a@b", "legacy": 1}, "present": "kept"});
        let after = apply_all(&changes, before).unwrap();
        assert_eq!(
            after,
            json!({
                "customer": {"tier": "basic"},
                "contact": {"email": "a@b"},
                "present": "kept"
            })
        );
        // A second application changes nothing: the renamed field is gone, the rest present.
        assert_eq!(apply_all(&changes, after.clone()).unwrap(), after);
    }

    #[test]
    fn declarative_changes_refuse_what_they_cannot_do() {
        let rename = DeclarativeUpcast::RenameField {
            from: "a".into(),
            to: "b".into(),
        };
        assert!(apply_all(&[rename], json!({"a": 1, "b": 2}))
            .unwrap_err()
            .contains("already present"));
        let add = DeclarativeUpcast::AddField {
            path: "a.b".into(),
            default: json!(1),
        };
        assert!(apply_all(std::slice::from_ref(&add), json!({"a": 5}))
            .unwrap_err()
            .contains("'a' is not an object"));
        assert!(apply_all(&[add], json!([1])).is_err());
        let bad = DeclarativeUpcast::RemoveField {
            path: "a..b".into(),
        };
        assert!(apply_all(&[bad], json!({})).is_err());
    }

    #[test]
    fn declarative_changes_serialise_for_the_registry() {
        let changes = vec![
            DeclarativeUpcast::RenameField {
                from: "name".into(),
                to: "full_name".into(),
            },
            DeclarativeUpcast::AddField {
                path: "country".into(),
                default: json!("NL"),
            },
            DeclarativeUpcast::RemoveField {
                path: "legacy".into(),
            },
        ];
        let stored = serde_json::to_value(&changes).unwrap();
        assert_eq!(
            stored,
            json!([
                {"op": "rename_field", "from": "name", "to": "full_name"},
                {"op": "add_field", "path": "country", "default": "NL"},
                {"op": "remove_field", "path": "legacy"}
            ])
        );
        let back: Vec<DeclarativeUpcast> = serde_json::from_value(stored).unwrap();
        assert_eq!(back, changes);
    }

    #[test]
    fn layers_take_each_step_from_the_first_set_that_has_it() {
        let mut rust = Upcasters::new();
        rust.register_fn("A", 2, |mut p| {
            p["by"] = json!("rust");
            Ok(p)
        })
        .unwrap();
        let mut stored = Upcasters::new();
        for from_version in [1, 2] {
            stored
                .register_declarative(
                    "A",
                    from_version,
                    vec![DeclarativeUpcast::AddField {
                        path: format!("step{from_version}"),
                        default: json!("declarative"),
                    }],
                )
                .unwrap();
        }
        let read = upcast_layered(&[&rust, &stored], "A", 1, 3, json!({})).unwrap();
        assert_eq!(read, json!({"step1": "declarative", "by": "rust"}));
        assert!(matches!(
            upcast_layered(&[&rust], "A", 1, 3, json!({})),
            Err(UpcastError::MissingStep {
                from_version: 1,
                ..
            })
        ));
    }
}
