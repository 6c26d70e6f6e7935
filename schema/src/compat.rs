//! Compatibility between schema versions: a pure checker for the JSON Schema subset events
//! use, an Avro checker on top of apache-avro's, and the mode-level check of a new version
//! against the registered ones.
//!
//! Every comparison is "can a schema *read* what another one *wrote*": data valid under the
//! writer schema must be valid under the reader schema. `BACKWARD` reads the earlier
//! versions' data with the new schema; `FORWARD` reads the new schema's data with the earlier
//! ones (Confluent's definitions; the rules per change follow Confluent's JSON Schema checker,
//! including its open/closed content models, see `docs/schema-evolution.md`).
//!
//! Supported keywords: `type` (one or a list, `"null"` for nullable), `enum`, `const`,
//! `properties`, `required`, `additionalProperties` (open `true`/absent, closed `false`,
//! partially open with a schema), `items` (one schema), `anyOf`/`oneOf`, local `$ref`, the
//! numeric and length bounds, `pattern`, `format`, `multipleOf`, `uniqueItems`, and
//! annotations (`default`, `title`, `description`, ...). Any other keyword that the reader
//! has and the writer has not, or with a different value, is reported as
//! [`Incompatibility::UnsupportedChange`]: the checker never calls compatible what it cannot
//! prove.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::mode::{CompatibilityMode, Direction};

/// A JSON value's type, as JSON Schema's `type` keyword names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JsonType {
    Null,
    Boolean,
    Integer,
    Number,
    String,
    Array,
    Object,
}

impl JsonType {
    fn parse(name: &str) -> Option<JsonType> {
        Some(match name {
            "null" => JsonType::Null,
            "boolean" => JsonType::Boolean,
            "integer" => JsonType::Integer,
            "number" => JsonType::Number,
            "string" => JsonType::String,
            "array" => JsonType::Array,
            "object" => JsonType::Object,
            _ => return None,
        })
    }

    fn of(value: &Value) -> JsonType {
        match value {
            Value::Null => JsonType::Null,
            Value::Bool(_) => JsonType::Boolean,
            Value::Number(n) if n.is_i64() || n.is_u64() => JsonType::Integer,
            Value::Number(_) => JsonType::Number,
            Value::String(_) => JsonType::String,
            Value::Array(_) => JsonType::Array,
            Value::Object(_) => JsonType::Object,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JsonType::Null => "null",
            JsonType::Boolean => "boolean",
            JsonType::Integer => "integer",
            JsonType::Number => "number",
            JsonType::String => "string",
            JsonType::Array => "array",
            JsonType::Object => "object",
        }
    }

    /// Whether a reader declaring `self` accepts values of type `written`.
    fn accepts(self, written: JsonType) -> bool {
        self == written || (self == JsonType::Number && written == JsonType::Integer)
    }
}

/// One rule a change breaks, at `path`: the JSON path of the field in the data (`$` is the
/// payload, `.name` a property, `[*]` any array item, `.*` any additional property).
///
/// Rules are stated from the reader's side: in a `FORWARD` check the reader is the earlier
/// version, so removing a required field from the new schema shows as
/// `RequiredFieldAdded` (the earlier reader requires a field the new writer may omit).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Incompatibility {
    /// The reader requires a field the writer does not have, and the reader gives no default.
    RequiredFieldAdded { path: String },
    /// The writer has the field as optional; the reader requires it, with no default.
    FieldMadeRequired { path: String },
    /// The writer's object is open (any extra field, of any type, may be present); the reader
    /// declares a field of that name with a schema, which such data may not match.
    FieldAddedToOpenModel { path: String },
    /// The writer has the field; the reader's object is closed and does not declare it.
    FieldRemovedFromClosedModel { path: String },
    /// A field that one side declares is only covered by the other side's
    /// `additionalProperties` schema, which does not accept it.
    FieldNotCoveredByPartiallyOpenModel { path: String },
    /// The reader accepts none of the types the writer may write (`from` empty: any type).
    TypeChanged {
        path: String,
        from: Vec<JsonType>,
        to: Vec<JsonType>,
    },
    /// The reader accepts some but not all of the writer's types (e.g. `null` dropped).
    TypeNarrowed {
        path: String,
        from: Vec<JsonType>,
        to: Vec<JsonType>,
    },
    /// The reader's `enum` lacks values the writer allows.
    EnumValuesRemoved { path: String, values: Vec<Value> },
    /// The reader restricts the field to an `enum`; the writer did not.
    EnumAdded { path: String },
    /// The writer allows extra fields (open or partially open); the reader refuses some.
    AdditionalPropertiesRestricted { path: String },
    /// A bound or format became stricter (or appeared) in the reader.
    ConstraintTightened {
        path: String,
        keyword: String,
        from: Option<Value>,
        to: Option<Value>,
    },
    /// A keyword outside the supported subset differs, so compatibility cannot be proven.
    UnsupportedChange { path: String, keyword: String },
    /// The reader's Avro schema cannot read the writer's (apache-avro's resolution rules).
    AvroIncompatible { path: String, reason: String },
}

impl Incompatibility {
    pub fn path(&self) -> &str {
        match self {
            Incompatibility::RequiredFieldAdded { path }
            | Incompatibility::FieldMadeRequired { path }
            | Incompatibility::FieldAddedToOpenModel { path }
            | Incompatibility::FieldRemovedFromClosedModel { path }
            | Incompatibility::FieldNotCoveredByPartiallyOpenModel { path }
            | Incompatibility::TypeChanged { path, .. }
            | Incompatibility::TypeNarrowed { path, .. }
            | Incompatibility::EnumValuesRemoved { path, .. }
            | Incompatibility::EnumAdded { path }
            | Incompatibility::AdditionalPropertiesRestricted { path }
            | Incompatibility::ConstraintTightened { path, .. }
            | Incompatibility::UnsupportedChange { path, .. }
            | Incompatibility::AvroIncompatible { path, .. } => path,
        }
    }

    /// The rule's stable name, as serialised (`REQUIRED_FIELD_ADDED`, ...).
    pub fn rule(&self) -> &'static str {
        match self {
            Incompatibility::RequiredFieldAdded { .. } => "REQUIRED_FIELD_ADDED",
            Incompatibility::FieldMadeRequired { .. } => "FIELD_MADE_REQUIRED",
            Incompatibility::FieldAddedToOpenModel { .. } => "FIELD_ADDED_TO_OPEN_MODEL",
            Incompatibility::FieldRemovedFromClosedModel { .. } => {
                "FIELD_REMOVED_FROM_CLOSED_MODEL"
            }
            Incompatibility::FieldNotCoveredByPartiallyOpenModel { .. } => {
                "FIELD_NOT_COVERED_BY_PARTIALLY_OPEN_MODEL"
            }
            Incompatibility::TypeChanged { .. } => "TYPE_CHANGED",
            Incompatibility::TypeNarrowed { .. } => "TYPE_NARROWED",
            Incompatibility::EnumValuesRemoved { .. } => "ENUM_VALUES_REMOVED",
            Incompatibility::EnumAdded { .. } => "ENUM_ADDED",
            Incompatibility::AdditionalPropertiesRestricted { .. } => {
                "ADDITIONAL_PROPERTIES_RESTRICTED"
            }
            Incompatibility::ConstraintTightened { .. } => "CONSTRAINT_TIGHTENED",
            Incompatibility::UnsupportedChange { .. } => "UNSUPPORTED_CHANGE",
            Incompatibility::AvroIncompatible { .. } => "AVRO_INCOMPATIBLE",
        }
    }
}

fn type_list(types: &[JsonType]) -> String {
    if types.is_empty() {
        return "any type".into();
    }
    types
        .iter()
        .map(|t| t.as_str())
        .collect::<Vec<_>>()
        .join("|")
}

fn show(value: &Option<Value>) -> String {
    value
        .as_ref()
        .map_or_else(|| "none".into(), |v| v.to_string())
}

impl fmt::Display for Incompatibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Incompatibility::RequiredFieldAdded { path } => write!(
                f,
                "{path}: the reader requires this field, data of the writer may lack it, and \
                 the reader gives no default"
            ),
            Incompatibility::FieldMadeRequired { path } => write!(
                f,
                "{path}: the field is optional for the writer but required by the reader, with \
                 no default"
            ),
            Incompatibility::FieldAddedToOpenModel { path } => write!(
                f,
                "{path}: the writer's object is open, so its data may already hold this field \
                 with any value, which the reader's schema for it may refuse (close the \
                 writer's object with additionalProperties: false first)"
            ),
            Incompatibility::FieldRemovedFromClosedModel { path } => write!(
                f,
                "{path}: the writer may write this field, and the reader's object is closed \
                 and no longer declares it"
            ),
            Incompatibility::FieldNotCoveredByPartiallyOpenModel { path } => write!(
                f,
                "{path}: the field is only covered by an additionalProperties schema that does \
                 not accept it"
            ),
            Incompatibility::TypeChanged { path, from, to } => write!(
                f,
                "{path}: the type changed from {} to {}",
                type_list(from),
                type_list(to)
            ),
            Incompatibility::TypeNarrowed { path, from, to } => write!(
                f,
                "{path}: the type narrowed from {} to {}",
                type_list(from),
                type_list(to)
            ),
            Incompatibility::EnumValuesRemoved { path, values } => write!(
                f,
                "{path}: the reader's enum lacks {}",
                values
                    .iter()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Incompatibility::EnumAdded { path } => write!(
                f,
                "{path}: the reader restricts the field to an enum the writer did not have"
            ),
            Incompatibility::AdditionalPropertiesRestricted { path } => write!(
                f,
                "{path}: the writer allows extra fields that the reader's additionalProperties \
                 refuses"
            ),
            Incompatibility::ConstraintTightened {
                path,
                keyword,
                from,
                to,
            } => write!(
                f,
                "{path}: '{keyword}' is stricter for the reader ({} instead of {})",
                show(to),
                show(from)
            ),
            Incompatibility::UnsupportedChange { path, keyword } => write!(
                f,
                "{path}: '{keyword}' changed, and the checker cannot prove such a change \
                 compatible"
            ),
            Incompatibility::AvroIncompatible { path, reason } => {
                write!(f, "{path}: the Avro schemas do not resolve: {reason}")
            }
        }
    }
}

/// One incompatibility of a candidate schema with one registered version, in one direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// The registered version compared with.
    pub version: i32,
    pub direction: Direction,
    pub incompatibility: Incompatibility,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reading = match self.direction {
            Direction::Backward => {
                format!("the new schema reading data of version {}", self.version)
            }
            Direction::Forward => {
                format!("version {} reading data of the new schema", self.version)
            }
        };
        write!(
            f,
            "{} [{}, {reading}]",
            self.incompatibility,
            self.incompatibility.rule()
        )
    }
}

/// Checks `candidate` against the registered versions (`history`, ascending by version) as
/// `mode` asks, with `can_read(reader, writer)` as the rule for one pair.
pub fn check_with<S>(
    mode: CompatibilityMode,
    candidate: &S,
    history: &[(i32, &S)],
    can_read: impl Fn(&S, &S) -> Vec<Incompatibility>,
) -> Vec<Finding> {
    let compared: &[(i32, &S)] = if mode.is_transitive() {
        history
    } else {
        history.last().map_or(&[], std::slice::from_ref)
    };
    let mut findings = Vec::new();
    for &(version, earlier) in compared.iter().rev() {
        for &direction in mode.directions() {
            let found = match direction {
                Direction::Backward => can_read(candidate, earlier),
                Direction::Forward => can_read(earlier, candidate),
            };
            findings.extend(found.into_iter().map(|incompatibility| Finding {
                version,
                direction,
                incompatibility,
            }));
        }
    }
    findings
}

/// Checks a JSON Schema against the registered ones (ascending by version).
pub fn check_json(
    mode: CompatibilityMode,
    candidate: &Value,
    history: &[(i32, &Value)],
) -> Vec<Finding> {
    check_with(mode, candidate, history, can_read_json)
}

/// Checks an Avro schema against the registered ones (ascending by version).
pub fn check_avro(
    mode: CompatibilityMode,
    candidate: &apache_avro::Schema,
    history: &[(i32, &apache_avro::Schema)],
) -> Vec<Finding> {
    check_with(mode, candidate, history, can_read_avro)
}

/// Every reason why data valid under `writer` may not be valid under `reader`.
pub fn can_read_json(reader: &Value, writer: &Value) -> Vec<Incompatibility> {
    let mut checker = Checker {
        reader_root: reader,
        writer_root: writer,
        refs: Vec::new(),
    };
    let mut out = Vec::new();
    checker.compare("$", reader, writer, &mut out);
    out
}

/// Every reason why Avro data written with `writer` cannot be resolved into `reader`.
pub fn can_read_avro(
    reader: &apache_avro::Schema,
    writer: &apache_avro::Schema,
) -> Vec<Incompatibility> {
    use apache_avro::error::CompatibilityError as E;
    match apache_avro::schema_compatibility::SchemaCompatibility::can_read(writer, reader) {
        Ok(()) => Vec::new(),
        Err(error) => {
            let mut path = String::from("$");
            let mut error = &error;
            while let E::FieldTypeMismatch(field, inner) = error {
                path.push('.');
                path.push_str(field);
                error = inner;
            }
            vec![match error {
                E::MissingDefaultValue(field) => Incompatibility::RequiredFieldAdded {
                    path: format!("{path}.{field}"),
                },
                other => Incompatibility::AvroIncompatible {
                    path,
                    reason: other.to_string(),
                },
            }]
        }
    }
}

/// Keywords that never restrict which data is valid.
const ANNOTATIONS: &[&str] = &[
    "$schema",
    "$id",
    "$comment",
    "$defs",
    "definitions",
    "$anchor",
    "title",
    "description",
    "default",
    "examples",
    "readOnly",
    "writeOnly",
    "deprecated",
    "contentEncoding",
    "contentMediaType",
];

/// Keywords this checker compares by their meaning.
const UNDERSTOOD: &[&str] = &[
    "type",
    "enum",
    "const",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "anyOf",
    "oneOf",
    "$ref",
    "maxLength",
    "maximum",
    "exclusiveMaximum",
    "maxItems",
    "maxProperties",
    "minLength",
    "minimum",
    "exclusiveMinimum",
    "minItems",
    "minProperties",
    "uniqueItems",
    "pattern",
    "format",
    "multipleOf",
];

/// Bounds that a reader tightens by lowering them.
const UPPER_BOUNDS: &[&str] = &[
    "maxLength",
    "maximum",
    "exclusiveMaximum",
    "maxItems",
    "maxProperties",
];

/// Bounds that a reader tightens by raising them.
const LOWER_BOUNDS: &[&str] = &[
    "minLength",
    "minimum",
    "exclusiveMinimum",
    "minItems",
    "minProperties",
];

/// Keywords whose any change (or appearance in the reader) tightens.
const EXACT_CONSTRAINTS: &[&str] = &["pattern", "format", "multipleOf"];

/// An object's content model: which fields beyond `properties` its data may hold.
enum ContentModel<'a> {
    /// Any extra field, any value (`additionalProperties` absent or `true`).
    Open,
    /// No extra field (`additionalProperties: false`).
    Closed,
    /// Extra fields matching this schema.
    Partial(&'a Value),
}

/// How deep `$ref`s and unions may nest before the checker gives up on proving anything.
const MAX_DEPTH: usize = 64;

struct Checker<'a> {
    reader_root: &'a Value,
    writer_root: &'a Value,
    /// The pairs of `$ref`s being compared, outermost first: meeting a pair again means a
    /// recursive schema, taken as compatible at that point (the rest of the walk decides).
    refs: Vec<(Option<String>, Option<String>)>,
}

impl Checker<'_> {
    fn compare(
        &mut self,
        path: &str,
        reader: &Value,
        writer: &Value,
        out: &mut Vec<Incompatibility>,
    ) {
        if self.refs.len() > MAX_DEPTH {
            out.push(Incompatibility::UnsupportedChange {
                path: path.into(),
                keyword: "$ref".into(),
            });
            return;
        }
        let (reader, reader_ref) = match resolve(self.reader_root, reader) {
            Ok(resolved) => resolved,
            Err(keyword) => {
                if reader != writer {
                    out.push(Incompatibility::UnsupportedChange {
                        path: path.into(),
                        keyword,
                    });
                }
                return;
            }
        };
        let (writer, writer_ref) = match resolve(self.writer_root, writer) {
            Ok(resolved) => resolved,
            Err(keyword) => {
                out.push(Incompatibility::UnsupportedChange {
                    path: path.into(),
                    keyword,
                });
                return;
            }
        };
        if reader_ref.is_some() || writer_ref.is_some() {
            let pair = (reader_ref, writer_ref);
            if self.refs.contains(&pair) {
                return;
            }
            self.refs.push(pair);
            self.compare_resolved(path, &reader, &writer, out);
            self.refs.pop();
        } else {
            self.compare_resolved(path, &reader, &writer, out);
        }
    }

    fn compare_resolved(
        &mut self,
        path: &str,
        reader: &Value,
        writer: &Value,
        out: &mut Vec<Incompatibility>,
    ) {
        // `false` writes nothing; `true` (or `{}`) reads everything.
        if writer == &Value::Bool(false) || is_unconstrained(reader) {
            return;
        }
        if reader == &Value::Bool(false) {
            out.push(Incompatibility::TypeChanged {
                path: path.into(),
                from: types_of(writer)
                    .map(|t| t.into_iter().collect())
                    .unwrap_or_default(),
                to: Vec::new(),
            });
            return;
        }
        let empty = serde_json::Map::new();
        let r = reader.as_object().unwrap_or(&empty);
        let w = writer.as_object().unwrap_or(&empty);

        if let Some(branches) = union_branches(w) {
            // Every writer branch must be readable by the reader.
            for branch in &branches {
                self.compare(path, reader, branch, out);
            }
            return;
        }
        if let Some(branches) = union_branches(r) {
            // Each of the writer's types must be readable by some reader branch.
            for part in split_by_type(writer) {
                // No branch reads it: report the closest one, preferring a branch of the
                // same type (its complaints say more than "type changed").
                let mut best: Option<((bool, usize), Vec<Incompatibility>)> = None;
                for branch in &branches {
                    let mut found = Vec::new();
                    self.compare(path, branch, &part, &mut found);
                    let retyped = found.iter().any(
                        |i| matches!(i, Incompatibility::TypeChanged { path: p, .. } if p == path),
                    );
                    let score = (retyped, found.len());
                    if best.as_ref().is_none_or(|(b, _)| score < *b) {
                        best = Some((score, found));
                    }
                }
                out.extend(best.map(|(_, found)| found).unwrap_or_default());
            }
            return;
        }

        for (keyword, value) in r {
            let keyword = keyword.as_str();
            if ANNOTATIONS.contains(&keyword) || UNDERSTOOD.contains(&keyword) {
                continue;
            }
            if w.get(keyword) != Some(value) {
                out.push(Incompatibility::UnsupportedChange {
                    path: path.into(),
                    keyword: keyword.into(),
                });
            }
        }

        let reader_types = types_of(reader);
        let writer_types = types_of(writer);
        let mut shared: Option<BTreeSet<JsonType>> = writer_types.clone();
        if let Some(reader_types) = &reader_types {
            let from: Vec<JsonType> = writer_types.iter().flatten().copied().collect();
            let to: Vec<JsonType> = reader_types.iter().copied().collect();
            match &writer_types {
                None => out.push(Incompatibility::TypeNarrowed {
                    path: path.into(),
                    from,
                    to,
                }),
                Some(written) => {
                    let readable: BTreeSet<JsonType> = written
                        .iter()
                        .copied()
                        .filter(|w| reader_types.iter().any(|r| r.accepts(*w)))
                        .collect();
                    // An integer reader still reads the integral numbers a number writer wrote.
                    let partly = written.contains(&JsonType::Number)
                        && !readable.contains(&JsonType::Number)
                        && reader_types.contains(&JsonType::Integer);
                    if readable.is_empty() && !partly {
                        out.push(Incompatibility::TypeChanged {
                            path: path.into(),
                            from,
                            to,
                        });
                        return;
                    }
                    if readable.len() < written.len() {
                        out.push(Incompatibility::TypeNarrowed {
                            path: path.into(),
                            from,
                            to,
                        });
                    }
                    shared = Some(readable);
                }
            }
        }
        let may_be = |t: JsonType| shared.as_ref().is_none_or(|s| s.contains(&t));

        compare_enums(path, r, w, out);
        compare_constraints(path, r, w, out);
        if may_be(JsonType::Object) {
            self.compare_objects(path, r, w, out);
        }
        if may_be(JsonType::Array) {
            self.compare_items(path, r, w, out);
        }
    }

    fn compare_objects(
        &mut self,
        path: &str,
        r: &serde_json::Map<String, Value>,
        w: &serde_json::Map<String, Value>,
        out: &mut Vec<Incompatibility>,
    ) {
        let empty = serde_json::Map::new();
        let reader_props = r
            .get("properties")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let writer_props = w
            .get("properties")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let reader_model = content_model(r);
        let writer_model = content_model(w);
        let names: BTreeSet<&String> = reader_props.keys().chain(writer_props.keys()).collect();

        for name in names {
            let field = field_path(path, name);
            match (reader_props.get(name), writer_props.get(name)) {
                (Some(read), Some(written)) => self.compare(&field, read, written, out),
                (None, Some(written)) => match reader_model {
                    ContentModel::Open => {}
                    ContentModel::Closed => {
                        if written != &Value::Bool(false) {
                            out.push(Incompatibility::FieldRemovedFromClosedModel { path: field });
                        }
                    }
                    ContentModel::Partial(extra) => {
                        if !self.reads(&field, extra, written) {
                            out.push(Incompatibility::FieldNotCoveredByPartiallyOpenModel {
                                path: field,
                            });
                        }
                    }
                },
                (Some(read), None) => match writer_model {
                    ContentModel::Closed => {}
                    ContentModel::Open => {
                        if !is_unconstrained(read) {
                            out.push(Incompatibility::FieldAddedToOpenModel { path: field });
                        }
                    }
                    ContentModel::Partial(extra) => {
                        if !self.reads(&field, read, extra) {
                            out.push(Incompatibility::FieldNotCoveredByPartiallyOpenModel {
                                path: field,
                            });
                        }
                    }
                },
                (None, None) => unreachable!("names come from either side"),
            }
        }

        let reader_required = required_of(r);
        let writer_required = required_of(w);
        for name in reader_required.difference(&writer_required) {
            let has_default = reader_props
                .get(*name)
                .and_then(Value::as_object)
                .is_some_and(|p| p.contains_key("default"));
            if has_default {
                continue;
            }
            let field = field_path(path, name);
            if writer_props.contains_key(*name) {
                out.push(Incompatibility::FieldMadeRequired { path: field });
            } else {
                out.push(Incompatibility::RequiredFieldAdded { path: field });
            }
        }

        let extra_path = format!("{path}.*");
        match (writer_model, reader_model) {
            (ContentModel::Closed, _) | (_, ContentModel::Open) => {}
            (ContentModel::Open, _) | (ContentModel::Partial(_), ContentModel::Closed) => {
                out.push(Incompatibility::AdditionalPropertiesRestricted { path: extra_path });
            }
            (ContentModel::Partial(written), ContentModel::Partial(read)) => {
                self.compare(&extra_path, read, written, out);
            }
        }
    }

    fn compare_items(
        &mut self,
        path: &str,
        r: &serde_json::Map<String, Value>,
        w: &serde_json::Map<String, Value>,
        out: &mut Vec<Incompatibility>,
    ) {
        let Some(read) = r.get("items") else {
            return;
        };
        let items_path = format!("{path}[*]");
        if read.is_array() || w.get("items").is_some_and(Value::is_array) {
            // Tuple form (draft 4-7): outside the supported subset.
            if w.get("items") != Some(read) {
                out.push(Incompatibility::UnsupportedChange {
                    path: items_path,
                    keyword: "items".into(),
                });
            }
            return;
        }
        let unconstrained = Value::Bool(true);
        let written = w.get("items").unwrap_or(&unconstrained);
        self.compare(&items_path, read, written, out);
    }

    /// Whether `reader` reads everything `writer` writes.
    fn reads(&mut self, path: &str, reader: &Value, writer: &Value) -> bool {
        let mut found = Vec::new();
        self.compare(path, reader, writer, &mut found);
        found.is_empty()
    }
}

/// `true`, `{}` or a schema of annotations only: accepts every value.
fn is_unconstrained(schema: &Value) -> bool {
    match schema {
        Value::Bool(b) => *b,
        Value::Object(map) => map.keys().all(|k| ANNOTATIONS.contains(&k.as_str())),
        _ => false,
    }
}

/// Follows a local `$ref` (`#/$defs/x`, `#/definitions/x`, `#`) to its target, with the
/// referring schema's other keywords laid over it. `Err` names what cannot be followed.
fn resolve(root: &Value, schema: &Value) -> Result<(Value, Option<String>), String> {
    let Some(reference) = schema.get("$ref") else {
        return Ok((schema.clone(), None));
    };
    let Some(pointer) = reference.as_str().and_then(|r| r.strip_prefix('#')) else {
        return Err("$ref".into());
    };
    let Some(target) = root.pointer(pointer) else {
        return Err("$ref".into());
    };
    let mut merged = match target {
        Value::Object(map) => map.clone(),
        Value::Bool(true) => serde_json::Map::new(),
        other => return Ok((other.clone(), Some(pointer.to_owned()))),
    };
    if let Some(siblings) = schema.as_object() {
        for (key, value) in siblings {
            if key != "$ref" {
                merged.insert(key.clone(), value.clone());
            }
        }
    }
    Ok((Value::Object(merged), Some(pointer.to_owned())))
}

/// The branches of an `anyOf`/`oneOf`, each with the schema's other keywords laid over it.
fn union_branches(schema: &serde_json::Map<String, Value>) -> Option<Vec<Value>> {
    let keyword = ["anyOf", "oneOf"]
        .into_iter()
        .find(|k| schema.get(*k).is_some_and(Value::is_array))?;
    let branches = schema[keyword].as_array()?;
    let siblings: Vec<(&String, &Value)> = schema
        .iter()
        .filter(|(k, _)| k.as_str() != keyword)
        .collect();
    Some(
        branches
            .iter()
            .map(|branch| match branch {
                Value::Bool(false) => Value::Bool(false),
                Value::Object(map) => {
                    let mut merged = map.clone();
                    for (k, v) in &siblings {
                        merged.entry(k.to_string()).or_insert_with(|| (*v).clone());
                    }
                    Value::Object(merged)
                }
                _ => Value::Object(
                    siblings
                        .iter()
                        .map(|(k, v)| (k.to_string(), (*v).clone()))
                        .collect(),
                ),
            })
            .collect(),
    )
}

/// A schema with several types as one schema per type, so that each can meet a different
/// branch of a reader's union.
fn split_by_type(schema: &Value) -> Vec<Value> {
    match types_of(schema) {
        Some(types) if types.len() > 1 => types
            .into_iter()
            .map(|t| {
                let mut part = schema.as_object().cloned().unwrap_or_default();
                part.insert("type".into(), Value::String(t.as_str().into()));
                if let Some(Value::Array(values)) = part.get("enum").cloned() {
                    let kept: Vec<Value> = values
                        .into_iter()
                        .filter(|v| t.accepts(JsonType::of(v)))
                        .collect();
                    part.insert("enum".into(), Value::Array(kept));
                }
                Value::Object(part)
            })
            .collect(),
        _ => vec![schema.clone()],
    }
}

/// The types a schema allows: from `type`, else from `enum`/`const`; `None` is any type.
fn types_of(schema: &Value) -> Option<BTreeSet<JsonType>> {
    let map = schema.as_object()?;
    match map.get("type") {
        Some(Value::String(name)) => return Some(JsonType::parse(name).into_iter().collect()),
        Some(Value::Array(names)) => {
            return Some(
                names
                    .iter()
                    .filter_map(Value::as_str)
                    .filter_map(JsonType::parse)
                    .collect(),
            )
        }
        _ => {}
    }
    enum_values(map).map(|values| values.iter().map(JsonType::of).collect())
}

fn enum_values(map: &serde_json::Map<String, Value>) -> Option<Vec<Value>> {
    if let Some(value) = map.get("const") {
        return Some(vec![value.clone()]);
    }
    map.get("enum").and_then(Value::as_array).cloned()
}

fn compare_enums(
    path: &str,
    r: &serde_json::Map<String, Value>,
    w: &serde_json::Map<String, Value>,
    out: &mut Vec<Incompatibility>,
) {
    let Some(readable) = enum_values(r) else {
        return;
    };
    match enum_values(w) {
        None => out.push(Incompatibility::EnumAdded { path: path.into() }),
        Some(written) => {
            let missing: Vec<Value> = written
                .into_iter()
                .filter(|v| !readable.contains(v))
                .collect();
            if !missing.is_empty() {
                out.push(Incompatibility::EnumValuesRemoved {
                    path: path.into(),
                    values: missing,
                });
            }
        }
    }
}

fn compare_constraints(
    path: &str,
    r: &serde_json::Map<String, Value>,
    w: &serde_json::Map<String, Value>,
    out: &mut Vec<Incompatibility>,
) {
    let mut tightened = |keyword: &str| {
        out.push(Incompatibility::ConstraintTightened {
            path: path.into(),
            keyword: keyword.into(),
            from: w.get(keyword).cloned(),
            to: r.get(keyword).cloned(),
        })
    };
    for &keyword in UPPER_BOUNDS {
        if let Some(read) = r.get(keyword).and_then(Value::as_f64) {
            match w.get(keyword).and_then(Value::as_f64) {
                Some(written) if written <= read => {}
                _ => tightened(keyword),
            }
        }
    }
    for &keyword in LOWER_BOUNDS {
        if let Some(read) = r.get(keyword).and_then(Value::as_f64) {
            match w.get(keyword).and_then(Value::as_f64) {
                Some(written) if written >= read => {}
                _ => tightened(keyword),
            }
        }
    }
    for &keyword in EXACT_CONSTRAINTS {
        if let Some(read) = r.get(keyword) {
            if w.get(keyword) != Some(read) {
                tightened(keyword);
            }
        }
    }
    if r.get("uniqueItems") == Some(&Value::Bool(true))
        && w.get("uniqueItems") != Some(&Value::Bool(true))
    {
        tightened("uniqueItems");
    }
}

fn content_model(schema: &serde_json::Map<String, Value>) -> ContentModel<'_> {
    match schema.get("additionalProperties") {
        None | Some(Value::Bool(true)) => ContentModel::Open,
        Some(Value::Bool(false)) => ContentModel::Closed,
        Some(extra) if is_unconstrained(extra) => ContentModel::Open,
        Some(extra) => ContentModel::Partial(extra),
    }
}

fn required_of(schema: &serde_json::Map<String, Value>) -> BTreeSet<&String> {
    let mut names = BTreeSet::new();
    for name in schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Value::String(name) = name {
            names.insert(name);
        }
    }
    names
}

/// `$.name`, or `$['odd name']` when the name is not a plain identifier.
pub(crate) fn field_path(parent: &str, name: &str) -> String {
    let plain = !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if plain {
        format!("{parent}.{name}")
    } else {
        format!(
            "{parent}[{}]",
            serde_json::to_string(name)
                .unwrap_or_default()
                .replace('"', "'")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The rules broken when `reader` reads `writer`'s data, with their paths, sorted.
    fn rules(reader: &Value, writer: &Value) -> Vec<(String, String)> {
        let mut found: Vec<(String, String)> = can_read_json(reader, writer)
            .iter()
            .map(|i| (i.rule().to_owned(), i.path().to_owned()))
            .collect();
        found.sort();
        found
    }

    fn expect(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut expected: Vec<(String, String)> = pairs
            .iter()
            .map(|(r, p)| ((*r).to_owned(), (*p).to_owned()))
            .collect();
        expected.sort();
        expected
    }

    fn object(closed: bool, properties: Value, required: &[&str]) -> Value {
        let mut schema = json!({"type": "object", "properties": properties, "required": required});
        if closed {
            schema["additionalProperties"] = json!(false);
        }
        schema
    }

    /// v1 of the matrix: `id` required, `note` optional.
    fn v1(closed: bool) -> Value {
        object(
            closed,
            json!({"id": {"type": "string"}, "note": {"type": "integer"}}),
            &["id"],
        )
    }

    struct Case {
        change: &'static str,
        closed: bool,
        new: Value,
        /// Rules broken when the new schema reads v1's data.
        backward: &'static [(&'static str, &'static str)],
        /// Rules broken when v1 reads the new schema's data.
        forward: &'static [(&'static str, &'static str)],
    }

    /// The changes of Confluent's compatibility table, in both content models. For JSON
    /// Schema, Confluent's checker makes the content model decide: adding a field is
    /// backward compatible only to a closed object (old data cannot hold it), removing one
    /// only from an open object (new readers still accept it); forward is the mirror image.
    fn matrix() -> Vec<Case> {
        let both = json!({"id": {"type": "string"}, "note": {"type": "integer"}, "extra": {"type": "string"}});
        // Adding `extra` without making old data invalid: only the content model decides.
        let extra_added: [ByModel; 2] = [
            (&[], &[("FIELD_ADDED_TO_OPEN_MODEL", "$.extra")]),
            (&[("FIELD_REMOVED_FROM_CLOSED_MODEL", "$.extra")], &[]),
        ];
        let mut cases = Vec::new();
        for closed in [true, false] {
            let case = |change, new, [backward, forward]: [ByModel; 2]| Case {
                change,
                closed,
                new,
                backward: if closed { backward.0 } else { backward.1 },
                forward: if closed { forward.0 } else { forward.1 },
            };
            cases.push(case(
                "add optional field",
                object(closed, both.clone(), &["id"]),
                extra_added,
            ));
            cases.push(case(
                "add required field",
                object(closed, both.clone(), &["id", "extra"]),
                [
                    (
                        &[("REQUIRED_FIELD_ADDED", "$.extra")],
                        &[
                            ("FIELD_ADDED_TO_OPEN_MODEL", "$.extra"),
                            ("REQUIRED_FIELD_ADDED", "$.extra"),
                        ],
                    ),
                    extra_added[1],
                ],
            ));
            cases.push(case(
                "add required field with default",
                object(
                    closed,
                    json!({"id": {"type": "string"}, "note": {"type": "integer"},
                           "extra": {"type": "string", "default": "none"}}),
                    &["id", "extra"],
                ),
                extra_added,
            ));
            cases.push(case(
                "remove optional field",
                object(closed, json!({"id": {"type": "string"}}), &["id"]),
                [
                    (&[("FIELD_REMOVED_FROM_CLOSED_MODEL", "$.note")], &[]),
                    (&[], &[("FIELD_ADDED_TO_OPEN_MODEL", "$.note")]),
                ],
            ));
            cases.push(case(
                "remove required field",
                object(closed, json!({"note": {"type": "integer"}}), &[]),
                [
                    (&[("FIELD_REMOVED_FROM_CLOSED_MODEL", "$.id")], &[]),
                    (
                        &[("REQUIRED_FIELD_ADDED", "$.id")],
                        &[
                            ("FIELD_ADDED_TO_OPEN_MODEL", "$.id"),
                            ("REQUIRED_FIELD_ADDED", "$.id"),
                        ],
                    ),
                ],
            ));
            cases.push(case(
                "change type",
                object(
                    closed,
                    json!({"id": {"type": "string"}, "note": {"type": "string"}}),
                    &["id"],
                ),
                [
                    same(&[("TYPE_CHANGED", "$.note")]),
                    same(&[("TYPE_CHANGED", "$.note")]),
                ],
            ));
            cases.push(case(
                "widen integer to number",
                object(
                    closed,
                    json!({"id": {"type": "string"}, "note": {"type": "number"}}),
                    &["id"],
                ),
                [same(&[]), same(&[("TYPE_NARROWED", "$.note")])],
            ));
            cases.push(case(
                "make nullable",
                object(
                    closed,
                    json!({"id": {"type": ["string", "null"]}, "note": {"type": "integer"}}),
                    &["id"],
                ),
                [same(&[]), same(&[("TYPE_NARROWED", "$.id")])],
            ));
            cases.push(case(
                "rename required field",
                object(
                    closed,
                    json!({"identifier": {"type": "string"}, "note": {"type": "integer"}}),
                    &["identifier"],
                ),
                [
                    (
                        &[
                            ("FIELD_REMOVED_FROM_CLOSED_MODEL", "$.id"),
                            ("REQUIRED_FIELD_ADDED", "$.identifier"),
                        ],
                        &[
                            ("FIELD_ADDED_TO_OPEN_MODEL", "$.identifier"),
                            ("REQUIRED_FIELD_ADDED", "$.identifier"),
                        ],
                    ),
                    (
                        &[
                            ("FIELD_REMOVED_FROM_CLOSED_MODEL", "$.identifier"),
                            ("REQUIRED_FIELD_ADDED", "$.id"),
                        ],
                        &[
                            ("FIELD_ADDED_TO_OPEN_MODEL", "$.id"),
                            ("REQUIRED_FIELD_ADDED", "$.id"),
                        ],
                    ),
                ],
            ));
            cases.push(case(
                "make optional field required",
                object(
                    closed,
                    json!({"id": {"type": "string"}, "note": {"type": "integer"}}),
                    &["id", "note"],
                ),
                [same(&[("FIELD_MADE_REQUIRED", "$.note")]), same(&[])],
            ));
        }
        cases
    }

    /// Rules broken in one direction: `(closed model, open model)`.
    type ByModel = (Rules, Rules);
    type Rules = &'static [(&'static str, &'static str)];

    /// The same rules whatever the content model.
    fn same(rules: Rules) -> ByModel {
        (rules, rules)
    }

    #[test]
    fn the_change_matrix_in_both_directions() {
        for case in matrix() {
            let old = v1(case.closed);
            let model = if case.closed { "closed" } else { "open" };
            assert_eq!(
                rules(&case.new, &old),
                expect(case.backward),
                "backward: {} ({model})",
                case.change
            );
            assert_eq!(
                rules(&old, &case.new),
                expect(case.forward),
                "forward: {} ({model})",
                case.change
            );
        }
    }

    #[test]
    fn each_mode_checks_its_directions_against_the_latest_version() {
        for case in matrix() {
            let old = v1(case.closed);
            for mode in CompatibilityMode::ALL {
                let findings = check_json(mode, &case.new, &[(1, &old)]);
                let mut expected: Vec<(Direction, &str, &str)> = Vec::new();
                for &direction in mode.directions() {
                    let rules = match direction {
                        Direction::Backward => case.backward,
                        Direction::Forward => case.forward,
                    };
                    expected.extend(rules.iter().map(|(r, p)| (direction, *r, *p)));
                }
                let mut found: Vec<(Direction, &str, &str)> = findings
                    .iter()
                    .map(|f| {
                        (
                            f.direction,
                            f.incompatibility.rule(),
                            f.incompatibility.path(),
                        )
                    })
                    .collect();
                found.sort_by_key(|(d, r, p)| (*d as u8, *r, *p));
                expected.sort_by_key(|(d, r, p)| (*d as u8, *r, *p));
                assert_eq!(found, expected, "{mode}: {}", case.change);
                assert!(findings.iter().all(|f| f.version == 1));
            }
        }
    }

    /// v1 had `note` as an integer; v2 dropped it (registered under a mode that allowed it);
    /// v3 brings `note` back as a string. Only the transitive modes see the clash with v1.
    #[test]
    fn transitive_modes_compare_with_every_earlier_version() {
        let v1 = v1(true);
        let v2_closed = object(true, json!({"id": {"type": "string"}}), &["id"]);
        let v2_open = object(false, json!({"id": {"type": "string"}}), &["id"]);
        let v3 = object(
            true,
            json!({"id": {"type": "string"}, "note": {"type": "string"}}),
            &["id"],
        );
        let rules_of = |findings: Vec<Finding>| -> Vec<(i32, Direction, &'static str)> {
            let mut found: Vec<_> = findings
                .iter()
                .map(|f| (f.version, f.direction, f.incompatibility.rule()))
                .collect();
            found.sort_by_key(|(v, d, r)| (*v, *d as u8, *r));
            found
        };

        let history = [(1, &v1), (2, &v2_closed)];
        assert!(check_json(CompatibilityMode::Backward, &v3, &history).is_empty());
        assert_eq!(
            rules_of(check_json(
                CompatibilityMode::BackwardTransitive,
                &v3,
                &history
            )),
            vec![(1, Direction::Backward, "TYPE_CHANGED")]
        );

        let history = [(1, &v1), (2, &v2_open)];
        assert!(check_json(CompatibilityMode::Forward, &v3, &history).is_empty());
        assert_eq!(
            rules_of(check_json(
                CompatibilityMode::ForwardTransitive,
                &v3,
                &history
            )),
            vec![(1, Direction::Forward, "TYPE_CHANGED")]
        );
        assert_eq!(
            rules_of(check_json(CompatibilityMode::Full, &v3, &history)),
            vec![
                (2, Direction::Backward, "ADDITIONAL_PROPERTIES_RESTRICTED"),
                (2, Direction::Backward, "FIELD_ADDED_TO_OPEN_MODEL"),
            ]
        );
        assert_eq!(
            rules_of(check_json(CompatibilityMode::FullTransitive, &v3, &history)),
            vec![
                (1, Direction::Backward, "TYPE_CHANGED"),
                (1, Direction::Forward, "TYPE_CHANGED"),
                (2, Direction::Backward, "ADDITIONAL_PROPERTIES_RESTRICTED"),
                (2, Direction::Backward, "FIELD_ADDED_TO_OPEN_MODEL"),
            ]
        );
        assert!(check_json(CompatibilityMode::None, &v3, &history).is_empty());
        assert!(check_json(CompatibilityMode::FullTransitive, &v3, &[]).is_empty());
    }

    #[test]
    fn nested_objects_and_arrays_report_the_field_path() {
        let old = json!({
            "type": "object",
            "properties": {
                "address": {"type": "object", "properties": {"zip": {"type": "string"}},
                            "additionalProperties": false},
                "lines": {"type": "array", "items": {"type": "object",
                          "properties": {"qty": {"type": "integer"}}, "additionalProperties": false}}
            }
        });
        let new = json!({
            "type": "object",
            "properties": {
                "address": {"type": "object", "properties": {"zip": {"type": "integer"}},
                            "additionalProperties": false},
                "lines": {"type": "array", "items": {"type": "object",
                          "properties": {"qty": {"type": "integer"}, "sku": {"type": "string"}},
                          "required": ["sku"], "additionalProperties": false}}
            }
        });
        assert_eq!(
            rules(&new, &old),
            expect(&[
                ("TYPE_CHANGED", "$.address.zip"),
                ("REQUIRED_FIELD_ADDED", "$.lines[*].sku")
            ])
        );
        let sentence = can_read_json(&new, &old)
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            sentence.contains("$.address.zip: the type changed from string to integer"),
            "{sentence}"
        );
    }

    #[test]
    fn enums_may_grow_for_readers_but_not_shrink() {
        let small = json!({"enum": ["new", "paid"]});
        let large = json!({"enum": ["new", "paid", "shipped"]});
        assert!(rules(&large, &small).is_empty());
        assert_eq!(
            can_read_json(&small, &large),
            vec![Incompatibility::EnumValuesRemoved {
                path: "$".into(),
                values: vec![json!("shipped")]
            }]
        );
        assert_eq!(
            rules(&small, &json!({"type": "string"})),
            expect(&[("ENUM_ADDED", "$")])
        );
        assert!(rules(&json!({"type": "string"}), &small).is_empty());
        assert!(rules(&large, &json!({"const": "paid"})).is_empty());
    }

    #[test]
    fn additional_properties_open_closed_and_partial() {
        let open = json!({"type": "object"});
        let closed = json!({"type": "object", "additionalProperties": false});
        let strings = json!({"type": "object", "additionalProperties": {"type": "string"}});
        let text = json!({"type": "object", "additionalProperties": {"type": ["string", "null"]}});
        assert!(rules(&open, &closed).is_empty());
        assert!(rules(&strings, &closed).is_empty());
        assert_eq!(
            rules(&closed, &open),
            expect(&[("ADDITIONAL_PROPERTIES_RESTRICTED", "$.*")])
        );
        assert_eq!(
            rules(&strings, &open),
            expect(&[("ADDITIONAL_PROPERTIES_RESTRICTED", "$.*")])
        );
        assert!(rules(&text, &strings).is_empty());
        assert_eq!(rules(&strings, &text), expect(&[("TYPE_NARROWED", "$.*")]));

        // A field moved out of `properties` stays readable when the extra schema covers it.
        let declared = json!({"type": "object", "properties": {"tag": {"type": "string"}},
                              "additionalProperties": {"type": "string"}});
        assert!(rules(&strings, &declared).is_empty());
        let number = json!({"type": "object", "properties": {"tag": {"type": "number"}},
                            "additionalProperties": {"type": "string"}});
        assert_eq!(
            rules(&strings, &number),
            expect(&[("FIELD_NOT_COVERED_BY_PARTIALLY_OPEN_MODEL", "$.tag")])
        );
    }

    #[test]
    fn unions_with_null_in_either_spelling() {
        let list = json!({"type": ["string", "null"]});
        let any_of = json!({"anyOf": [{"type": "string"}, {"type": "null"}]});
        let string = json!({"type": "string"});
        assert!(rules(&list, &any_of).is_empty());
        assert!(rules(&any_of, &list).is_empty());
        assert!(rules(&any_of, &string).is_empty());
        assert_eq!(rules(&string, &any_of), expect(&[("TYPE_CHANGED", "$")]));
        let one_of = json!({"oneOf": [{"type": "integer"}, {"type": "string", "maxLength": 3}]});
        assert_eq!(
            rules(&one_of, &json!({"type": "string"})),
            expect(&[("CONSTRAINT_TIGHTENED", "$")])
        );
    }

    #[test]
    fn local_references_are_followed_even_when_recursive() {
        let tree = |value_type: &str| {
            json!({
                "$defs": {"node": {"type": "object", "properties": {
                    "value": {"type": value_type},
                    "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}
                }}},
                "$ref": "#/$defs/node"
            })
        };
        assert!(rules(&tree("number"), &tree("integer")).is_empty());
        assert_eq!(
            rules(&tree("integer"), &tree("number")),
            expect(&[("TYPE_NARROWED", "$.value")])
        );
        let remote = json!({"$ref": "https://example.invalid/s.json"});
        assert_eq!(
            rules(&remote, &json!({})),
            expect(&[("UNSUPPORTED_CHANGE", "$")])
        );
    }

    #[test]
    fn bounds_and_unknown_keywords() {
        let short = json!({"type": "string", "maxLength": 10});
        let long = json!({"type": "string", "maxLength": 20});
        assert!(rules(&long, &short).is_empty());
        assert_eq!(
            can_read_json(&short, &long),
            vec![Incompatibility::ConstraintTightened {
                path: "$".into(),
                keyword: "maxLength".into(),
                from: Some(json!(20)),
                to: Some(json!(10))
            }]
        );
        assert_eq!(
            rules(
                &json!({"type": "integer", "minimum": 1}),
                &json!({"type": "integer"})
            ),
            expect(&[("CONSTRAINT_TIGHTENED", "$")])
        );
        let guarded = json!({"type": "object", "not": {"required": ["x"]}});
        assert_eq!(
            rules(&guarded, &json!({"type": "object"})),
            expect(&[("UNSUPPORTED_CHANGE", "$")])
        );
        assert!(rules(&guarded, &guarded).is_empty());
        // Dropping a keyword the checker does not know only loosens the reader.
        assert!(rules(&json!({"type": "object"}), &guarded).is_empty());
        // Annotations never matter.
        let described = json!({"type": "string", "description": "x", "default": "y", "title": "t"});
        assert!(rules(&json!({"type": "string"}), &described).is_empty());
        assert!(rules(&described, &json!({"type": "string"})).is_empty());
    }

    #[test]
    fn findings_say_which_version_and_direction_in_words() {
        let old = v1(true);
        let new = object(true, json!({"id": {"type": "string"}}), &["id"]);
        let findings = check_json(CompatibilityMode::Full, &new, &[(7, &old)]);
        assert_eq!(findings.len(), 1);
        let text = findings[0].to_string();
        assert!(text.contains("$.note"), "{text}");
        assert!(text.contains("FIELD_REMOVED_FROM_CLOSED_MODEL"), "{text}");
        assert!(
            text.contains("the new schema reading data of version 7"),
            "{text}"
        );
        let json = serde_json::to_value(&findings[0]).unwrap();
        assert_eq!(
            json["incompatibility"]["rule"],
            "FIELD_REMOVED_FROM_CLOSED_MODEL"
        );
        assert_eq!(json["incompatibility"]["path"], "$.note");
        assert_eq!(json["direction"], "backward");
    }

    fn avro(text: &str) -> apache_avro::Schema {
        apache_avro::Schema::parse_str(text).unwrap()
    }

    #[test]
    fn avro_follows_avro_resolution_rules() {
        let v1 = avro(r#"{"type":"record","name":"E","fields":[{"name":"id","type":"string"}]}"#);
        let with_default = avro(
            r#"{"type":"record","name":"E","fields":[{"name":"id","type":"string"},
                {"name":"note","type":["null","string"],"default":null}]}"#,
        );
        let without_default = avro(
            r#"{"type":"record","name":"E","fields":[{"name":"id","type":"string"},
                {"name":"note","type":"string"}]}"#,
        );
        let retyped = avro(r#"{"type":"record","name":"E","fields":[{"name":"id","type":"int"}]}"#);

        // Adding a field with a default: fully compatible, as in Confluent's table.
        assert!(check_avro(
            CompatibilityMode::FullTransitive,
            &with_default,
            &[(1, &v1)]
        )
        .is_empty());
        // Adding one without: backward incompatible, forward compatible.
        let found = check_avro(CompatibilityMode::Full, &without_default, &[(1, &v1)]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].direction, Direction::Backward);
        assert_eq!(
            found[0].incompatibility,
            Incompatibility::RequiredFieldAdded {
                path: "$.note".into()
            }
        );
        // Removing it again is the mirror image.
        let found = check_avro(CompatibilityMode::Forward, &v1, &[(1, &without_default)]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].incompatibility.path(), "$.note");
        // Changing a type names the field.
        let found = check_avro(CompatibilityMode::Backward, &retyped, &[(1, &v1)]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].incompatibility.rule(), "AVRO_INCOMPATIBLE");
        assert_eq!(found[0].incompatibility.path(), "$.id");
    }
}
