//! `tidemark schemas ...`: the schema registry from schema files. A schema file holds a
//! JSON Schema; an Avro schema and a declarative upcast from the previous version come in
//! files of their own (`--avro`, `--upcast`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use clap::Subcommand;
use tidemark_schema::{
    CompatibilityMode, DeclarativeUpcast, Registry, RegistryOptions, SchemaDefinition,
    ValidationMode,
};
use tidemark_store::EventStore;

#[derive(Debug, Subcommand)]
pub enum SchemasCommand {
    /// Register FILE (a JSON Schema) as the next version of EVENT_TYPE. Registering the
    /// same schema again answers with its version; one that breaks the type's
    /// compatibility mode is refused with every incompatibility listed.
    Register {
        event_type: String,
        file: PathBuf,
        /// An Avro schema for binary payloads of this version.
        #[arg(long)]
        avro: Option<PathBuf>,
        /// A JSON array of declarative changes from the previous version to this one, e.g.
        /// [{"op": "add_field", "path": "currency", "default": "EUR"}].
        #[arg(long)]
        upcast: Option<PathBuf>,
    },
    /// Check FILE against the registered versions of EVENT_TYPE without registering it
    /// ("would this break?"). Exits with an error when it is incompatible.
    Check {
        event_type: String,
        file: PathBuf,
        #[arg(long)]
        avro: Option<PathBuf>,
    },
    /// List the event types with schemas, their modes and versions; with EVENT_TYPE, print
    /// its latest version (or --schema-version N) as JSON.
    List {
        event_type: Option<String>,
        #[arg(long, requires = "event_type")]
        schema_version: Option<i32>,
    },
    /// Set EVENT_TYPE's compatibility mode, validation mode and/or storage encoding
    /// (`default`: follow the server-wide default again; JSON for the encoding).
    Set {
        event_type: String,
        /// BACKWARD, BACKWARD_TRANSITIVE, FORWARD, FORWARD_TRANSITIVE, FULL,
        /// FULL_TRANSITIVE, NONE or default.
        #[arg(long)]
        compatibility: Option<String>,
        /// OFF, WARN, ENFORCE or default.
        #[arg(long)]
        validation: Option<String>,
        /// How appends that do not ask for an encoding store payloads: AVRO (compact, needs
        /// Avro schemas on the versions), JSON or default (JSON).
        #[arg(long)]
        encoding: Option<String>,
    },
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    serde_json::from_str(&read(path)?)
        .with_context(|| format!("{} is not the JSON expected", path.display()))
}

fn definition(
    file: &Path,
    avro: Option<&Path>,
    upcast: Option<&Path>,
) -> anyhow::Result<SchemaDefinition> {
    let mut definition = SchemaDefinition::json(read_json(file)?);
    if let Some(avro) = avro {
        definition = definition.with_avro(read(avro)?);
    }
    if let Some(upcast) = upcast {
        definition =
            definition.with_upcast_from_previous(read_json::<Vec<DeclarativeUpcast>>(upcast)?);
    }
    Ok(definition)
}

/// A mode given on the command line; `default` is `None` (follow the server's default).
fn mode<T: std::str::FromStr<Err = tidemark_schema::SchemaError>>(
    text: &str,
) -> anyhow::Result<Option<T>> {
    if text.eq_ignore_ascii_case("default") {
        return Ok(None);
    }
    Ok(Some(text.parse()?))
}

fn describe<T: Copy>(own: Option<T>, default: T, name: fn(T) -> &'static str) -> String {
    match own {
        Some(mode) => name(mode).to_owned(),
        None => format!("{} (default)", name(default)),
    }
}

pub async fn run(command: SchemasCommand, store: EventStore) -> anyhow::Result<()> {
    let registry = Registry::open(store.pool().clone(), RegistryOptions::default()).await?;
    match command {
        SchemasCommand::Register {
            event_type,
            file,
            avro,
            upcast,
        } => {
            let definition = definition(&file, avro.as_deref(), upcast.as_deref())?;
            let outcome = registry.register(&event_type, &definition).await?;
            if outcome.created {
                println!("registered {event_type} version {}", outcome.version);
            } else {
                println!(
                    "{event_type} version {} is this schema already; nothing registered",
                    outcome.version
                );
            }
        }
        SchemasCommand::Check {
            event_type,
            file,
            avro,
        } => {
            let definition = definition(&file, avro.as_deref(), None)?;
            let mode = registry.mode(&event_type).await?;
            let findings = registry.check(&event_type, &definition).await?;
            if findings.is_empty() {
                println!("compatible with {event_type} under {mode}");
            } else {
                for finding in &findings {
                    println!(
                        "{} {} {}",
                        finding.incompatibility.rule(),
                        finding.incompatibility.path(),
                        finding
                    );
                }
                bail!(
                    "{} incompatibilit{} with {event_type} under {mode}",
                    findings.len(),
                    if findings.len() == 1 { "y" } else { "ies" }
                );
            }
        }
        SchemasCommand::List {
            event_type: None, ..
        } => {
            let settings = registry.settings().await?;
            let subjects = registry.list().await?;
            println!(
                "defaults: compatibility {}, validation {}, types without a schema: {}",
                settings.default_compatibility,
                settings.default_validation,
                settings.unregistered_policy
            );
            if subjects.is_empty() {
                println!("no schemas; register one with `tidemark schemas register TYPE FILE`");
            }
            for subject in subjects {
                println!(
                    "{:<32} compatibility {:<28} validation {:<18} encoding {:<5} versions {:?}",
                    subject.event_type,
                    describe(
                        subject.compatibility,
                        settings.default_compatibility,
                        CompatibilityMode::as_str
                    ),
                    describe(
                        subject.validation,
                        settings.default_validation,
                        ValidationMode::as_str
                    ),
                    subject.encoding.unwrap_or_default().as_str(),
                    subject.versions
                );
            }
        }
        SchemasCommand::List {
            event_type: Some(event_type),
            schema_version,
        } => {
            let schema = match schema_version {
                Some(version) => registry.get(&event_type, version).await?,
                None => registry.latest(&event_type).await?.ok_or_else(|| {
                    anyhow::anyhow!("event type '{event_type}' has no registered schema")
                })?,
            };
            println!("{}", serde_json::to_string_pretty(&*schema)?);
        }
        SchemasCommand::Set {
            event_type,
            compatibility,
            validation,
            encoding,
        } => {
            if compatibility.is_none() && validation.is_none() && encoding.is_none() {
                bail!("give --compatibility, --validation or --encoding");
            }
            if let Some(text) = compatibility {
                registry.set_mode(&event_type, mode(&text)?).await?;
            }
            if let Some(text) = validation {
                registry.set_validation(&event_type, mode(&text)?).await?;
            }
            if let Some(text) = encoding {
                let encoding = match text.to_ascii_lowercase().as_str() {
                    "default" => None,
                    _ => Some(
                        text.parse::<tidemark_store::PayloadEncoding>()
                            .map_err(|reason| anyhow::anyhow!(reason))?,
                    ),
                };
                registry.set_encoding(&event_type, encoding).await?;
            }
            println!("updated {event_type}");
        }
    }
    Ok(())
}
