//! Tidy checks: the invariants of ARCHITECTURE.md that the compiler cannot see, checked by
//! reading the repository's files (as rust-analyzer's `tidy` tests do). Each rule is a
//! function from the files to its violations; the `*_catches_*` tests feed each rule a
//! deliberate violation, so no rule can pass vacuously. No database, no server: milliseconds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A file of the repository: its path relative to the root (with `/`), and its text.
struct File {
    path: String,
    text: String,
}

impl File {
    fn new(path: &str, text: &str) -> File {
        File {
            path: path.to_string(),
            text: text.to_string(),
        }
    }

    fn is_rust(&self) -> bool {
        self.path.ends_with(".rs")
    }

    /// Library and binary code, not tests or benchmarks of the crate.
    fn is_production_rust(&self) -> bool {
        self.is_rust()
            && self.path.contains("/src/")
            && !self.path.starts_with("tests/")
            && !self.path.starts_with("testkit/")
            && !self.path.starts_with("bench/")
    }

    /// The code a rule about production code reads: up to the file's test module, without
    /// `//` comments, log lines and metric labels (prose, not data).
    fn code(&self) -> String {
        self.text
            .lines()
            .take_while(|line| line.trim() != "#[cfg(test)]")
            .filter(|line| {
                let line = line.trim_start();
                !line.starts_with("//")
                    && ![
                        "tracing::",
                        "metrics::",
                        "info!(",
                        "warn!(",
                        "debug!(",
                        "error!(",
                    ]
                    .iter()
                    .any(|prose| line.contains(prose))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives in the workspace root")
        .to_path_buf()
}

/// Every file the rules read: Rust sources, manifests, SQL and Markdown, outside `target/`
/// and hidden folders.
fn repository_files() -> Vec<File> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<File>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with('.') || name == "target" || name == "node_modules" {
                continue;
            }
            if path.is_dir() {
                walk(&path, root, out);
            } else if ["rs", "toml", "sql", "md", "graphql"]
                .iter()
                .any(|ext| name.ends_with(&format!(".{ext}")))
            {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let relative = path.strip_prefix(root).unwrap().to_string_lossy();
                out.push(File {
                    path: relative.replace('\\', "/"),
                    text,
                });
            }
        }
    }
    let root = root();
    let mut files = Vec::new();
    walk(&root, &root, &mut files);
    assert!(
        files.iter().any(|f| f.path == "store/src/lib.rs"),
        "the tidy walk found no store/src/lib.rs under {}: it reads nothing",
        root.display()
    );
    files
}

/// Every Rust file opens with a `//!` line saying what it is.
fn files_without_module_doc(files: &[File]) -> Vec<String> {
    files
        .iter()
        .filter(|f| f.is_rust())
        .filter(|f| !f.text.trim_start().starts_with("//!"))
        .map(|f| format!("{} does not open with a `//!` line", f.path))
        .collect()
}

/// The workspace's own crates, by package name, with the Tidemark crates each depends on
/// (normal dependencies only: tests may use anything).
fn crate_dependencies(files: &[File]) -> BTreeMap<String, Vec<String>> {
    let mut crates = BTreeMap::new();
    for manifest in files.iter().filter(|f| f.path.ends_with("Cargo.toml")) {
        let mut name = None;
        let mut deps = Vec::new();
        let mut section = String::new();
        for line in manifest.text.lines() {
            let line = line.trim();
            if line.starts_with('[') {
                section = line.to_string();
                continue;
            }
            let key = line.split(['=', ' ', '.']).next().unwrap_or("");
            if section == "[package]" && key == "name" {
                name = line.split('"').nth(1).map(str::to_string);
            }
            if section == "[dependencies]" && key.starts_with("tidemark-") {
                deps.push(key.to_string());
            }
        }
        if let Some(name) = name {
            crates.insert(name, deps);
        }
    }
    crates
}

/// Which Tidemark crates each library crate may depend on: `api → projections → store`, and
/// the leaves below them.
const ALLOWED_DEPENDENCIES: &[(&str, &[&str])] = &[
    ("tidemark-pg-embedded", &[]),
    ("tidemark-store", &[]),
    ("tidemark-schema", &["tidemark-store"]),
    ("tidemark-consumers", &["tidemark-store"]),
    (
        "tidemark-projections",
        &["tidemark-store", "tidemark-pg-embedded"],
    ),
    (
        "tidemark-relay",
        &["tidemark-store", "tidemark-projections"],
    ),
    (
        "tidemark-api",
        &[
            "tidemark-store",
            "tidemark-projections",
            "tidemark-pg-embedded",
            "tidemark-schema",
            "tidemark-relay",
            "tidemark-consumers",
        ],
    ),
];

fn dependency_violations(files: &[File]) -> Vec<String> {
    let crates = crate_dependencies(files);
    let mut violations = Vec::new();
    for (name, allowed) in ALLOWED_DEPENDENCIES {
        let Some(deps) = crates.get(*name) else {
            continue;
        };
        for dep in deps {
            if !allowed.contains(&dep.as_str()) {
                violations.push(format!(
                    "{name} depends on {dep}; allowed: {}",
                    allowed.join(", ")
                ));
            }
        }
    }
    violations
}

/// The repository stands alone: nothing refers to the workplace's shared folder or to the
/// design document that lived there.
fn references_outside_repository(files: &[File]) -> Vec<String> {
    // Spelled in parts so that this rule's own text is no such reference.
    let shared_folder = ["..", "shared"].join("/");
    let old_design = ["DESIGN", "md"].join(".");
    files
        .iter()
        .filter(|f| f.text.contains(&shared_folder) || f.text.contains(&old_design))
        .map(|f| format!("{} refers to a file outside the repository", f.path))
        .collect()
}

/// The SQL spellings of the projection engine's kinds and statuses (`projections/src/kinds.rs`):
/// written there once, nowhere else in the engine or the API.
const KIND_SPELLINGS: &[&str] = &[
    "live",
    "shadow",
    "as_of",
    "as_of:",
    "rebuild",
    "replay",
    "running",
    "done",
    "failed",
    "stopped",
    "rebuilding",
    "not started",
];

fn kind_literals_outside_their_enum(files: &[File]) -> Vec<String> {
    let mut violations = Vec::new();
    for file in files.iter().filter(|f| {
        f.is_production_rust()
            && (f.path.starts_with("projections/src/") || f.path.starts_with("api/src/"))
            && f.path != "projections/src/kinds.rs"
    }) {
        let code = file.code();
        for spelling in KIND_SPELLINGS {
            for quoted in [format!("\"{spelling}\""), format!("'{spelling}'")] {
                if code.contains(&quoted) {
                    violations.push(format!(
                        "{} spells {quoted}: use the enum in projections/src/kinds.rs",
                        file.path
                    ));
                }
            }
        }
    }
    violations
}

/// The lane's commit primitive: the one place events are applied to a read model.
const LANE_COMMIT: &str = "projections/src/lane/commit.rs";
/// Builds an `ApplyContext` to run a projection's `setup` (creating tables), never `apply`.
const SETUP_ONLY: &str = "projections/src/registration.rs";

/// Only the lane's commit primitive applies events: a projection is applied through an
/// `ApplyContext`, so no other production file may build one (the registration builds one
/// for `setup` and must not apply with it).
fn events_applied_outside_the_lane(files: &[File]) -> Vec<String> {
    files
        .iter()
        .filter(|f| f.is_production_rust() && f.path != LANE_COMMIT)
        .filter_map(|file| {
            let code = file.code();
            let builds_context = code.contains("ApplyContext {");
            let applies = code.contains(".apply(");
            (builds_context && (file.path != SETUP_ONLY || applies)).then(|| {
                format!(
                    "{} builds an ApplyContext: apply events through the lane's commit primitive ({LANE_COMMIT})",
                    file.path
                )
            })
        })
        .collect()
}

/// Only `projections/src/checkpoint.rs` writes `projection_checkpoints`.
fn checkpoint_writes_outside_their_module(files: &[File]) -> Vec<String> {
    let writes = [
        "INSERT INTO projection_checkpoints",
        "UPDATE projection_checkpoints",
        "DELETE FROM projection_checkpoints",
    ];
    files
        .iter()
        .filter(|f| f.is_production_rust() && f.path != "projections/src/checkpoint.rs")
        .filter_map(|file| {
            let code = file.code();
            writes.iter().find(|w| code.contains(*w)).map(|w| {
                format!(
                    "{} runs `{w}`: checkpoints are written in projections/src/checkpoint.rs only",
                    file.path
                )
            })
        })
        .collect()
}

#[test]
fn only_the_lane_commit_applies_events() {
    let files = repository_files();
    assert!(
        files
            .iter()
            .any(|f| f.path == LANE_COMMIT && f.code().contains("ApplyContext {")),
        "{LANE_COMMIT} no longer builds the ApplyContext: update this rule"
    );
    let violations = events_applied_outside_the_lane(&files);
    assert!(violations.is_empty(), "{violations:#?}");
}

#[test]
fn only_the_checkpoint_module_writes_checkpoints() {
    let violations = checkpoint_writes_outside_their_module(&repository_files());
    assert!(violations.is_empty(), "{violations:#?}");
}

#[test]
fn apply_rule_catches_a_second_apply_loop() {
    let files = [
        File::new(
            LANE_COMMIT,
            "//! Commit.\nlet ctx = ApplyContext { tx, schema };\np.apply(&ctx, events);\n",
        ),
        File::new(
            SETUP_ONLY,
            "//! Setup.\nlet ctx = ApplyContext { tx, schema };\np.setup(&ctx);\n",
        ),
        File::new(
            "projections/src/rebuild.rs",
            "//! Rebuild.\nlet ctx = ApplyContext { tx: &tx, schema };\nprojection.apply(&ctx, &events);\n",
        ),
    ];
    assert_eq!(
        events_applied_outside_the_lane(&files),
        ["projections/src/rebuild.rs builds an ApplyContext: apply events through the lane's commit primitive (projections/src/lane/commit.rs)"]
    );
    let setup_applying = [File::new(
        SETUP_ONLY,
        "//! Setup.\nlet ctx = ApplyContext { tx, schema };\np.apply(&ctx, events);\n",
    )];
    assert_eq!(events_applied_outside_the_lane(&setup_applying).len(), 1);
}

#[test]
fn checkpoint_rule_catches_a_write_elsewhere() {
    let files = [
        File::new(
            "projections/src/checkpoint.rs",
            "//! Checkpoints.\nconst Q: &str = \"UPDATE projection_checkpoints SET position = $1\";\n",
        ),
        File::new(
            "projections/src/status.rs",
            "//! Status.\nconst Q: &str = \"SELECT position FROM projection_checkpoints\";\n",
        ),
        File::new(
            "projections/src/dead_letter.rs",
            "//! Parked.\n// UPDATE projection_checkpoints in a comment is fine\nconst Q: &str = \"UPDATE projection_checkpoints SET position = $4\";\n",
        ),
    ];
    assert_eq!(
        checkpoint_writes_outside_their_module(&files),
        ["projections/src/dead_letter.rs runs `UPDATE projection_checkpoints`: checkpoints are written in projections/src/checkpoint.rs only"]
    );
}

/// The metric catalog every exported metric must be listed in (with its `HELP` text).
const METRIC_CATALOG: &str = "api/src/telemetry/catalog.rs";

/// Metric names emitted by production code (`metrics::counter!("tidemark_…"` and its
/// kin) that the catalog does not list.
fn metrics_missing_from_the_catalog(files: &[File]) -> Vec<String> {
    let catalog = files
        .iter()
        .find(|f| f.path == METRIC_CATALOG)
        .map(|f| f.text.clone())
        .unwrap_or_default();
    let mut missing = Vec::new();
    for file in files.iter().filter(|f| f.is_production_rust()) {
        for macro_call in ["counter!(", "gauge!(", "histogram!("] {
            for (at, _) in file.text.match_indices(macro_call) {
                let rest = file.text[at + macro_call.len()..].trim_start();
                let Some(name) = rest
                    .strip_prefix('"')
                    .and_then(|r| r.split('"').next())
                    .filter(|n| n.starts_with("tidemark_"))
                else {
                    continue;
                };
                if !catalog.contains(&format!("metric(\"{name}\"")) {
                    missing.push(format!(
                        "{} emits {name}, which {METRIC_CATALOG} does not list",
                        file.path
                    ));
                }
            }
        }
    }
    missing.sort();
    missing.dedup();
    missing
}

#[test]
fn every_metric_is_in_the_catalog() {
    let violations = metrics_missing_from_the_catalog(&repository_files());
    assert!(violations.is_empty(), "{violations:#?}");
}

#[test]
fn metric_rule_catches_an_unlisted_metric() {
    let files = [
        File::new(
            METRIC_CATALOG,
            "//! Catalog.\nmetric(\"tidemark_listed_total\", Counter, &[], \"Listed.\"),\n",
        ),
        File::new(
            "store/src/append/x.rs",
            "//! X.\nmetrics::counter!(\"tidemark_listed_total\").increment(1);\nmetrics::gauge!(\n    \"tidemark_unlisted\", \"a\" => b).set(1.0);\n",
        ),
    ];
    assert_eq!(
        metrics_missing_from_the_catalog(&files),
        ["store/src/append/x.rs emits tidemark_unlisted, which api/src/telemetry/catalog.rs does not list"]
    );
}

/// Production code never creates an unbounded channel: every queue has a bound, so memory
/// does and backpressure reaches the producer.
fn unbounded_channels(files: &[File]) -> Vec<String> {
    files
        .iter()
        .filter(|f| f.is_production_rust())
        .filter(|f| f.code().contains("unbounded_channel") || f.code().contains("mpsc::unbounded"))
        .map(|f| format!("{} creates an unbounded channel: give it a bound", f.path))
        .collect()
}

#[test]
fn every_channel_is_bounded() {
    let violations = unbounded_channels(&repository_files());
    assert!(violations.is_empty(), "{violations:#?}");
}

#[test]
fn channel_rule_catches_an_unbounded_channel() {
    let files = [
        File::new(
            "store/src/a.rs",
            "//! A.\nlet (tx, rx) = mpsc::channel(16);\n",
        ),
        File::new(
            "store/src/b.rs",
            "//! B.\nlet (tx, rx) = mpsc::unbounded_channel();\n",
        ),
    ];
    assert_eq!(
        unbounded_channels(&files),
        ["store/src/b.rs creates an unbounded channel: give it a bound"]
    );
}

#[test]
fn every_rust_file_opens_with_a_module_doc() {
    let violations = files_without_module_doc(&repository_files());
    assert!(violations.is_empty(), "{violations:#?}");
}

#[test]
fn crate_dependencies_point_one_way() {
    let files = repository_files();
    let crates = crate_dependencies(&files);
    for (name, _) in ALLOWED_DEPENDENCIES {
        assert!(crates.contains_key(*name), "crate {name} not found");
    }
    let violations = dependency_violations(&files);
    assert!(violations.is_empty(), "{violations:#?}");
}

#[test]
fn nothing_refers_outside_the_repository() {
    let violations = references_outside_repository(&repository_files());
    assert!(violations.is_empty(), "{violations:#?}");
}

#[test]
fn kinds_and_statuses_are_spelled_only_in_their_enum() {
    let violations = kind_literals_outside_their_enum(&repository_files());
    assert!(violations.is_empty(), "{violations:#?}");
}

#[test]
fn kind_rule_catches_a_status_literal() {
    let files = [
        File::new(
            "projections/src/kinds.rs",
            "//! Kinds.\nconst A: &str = \"running\";\n",
        ),
        File::new(
            "projections/src/status.rs",
            "//! Status.\n// a comment may say \"running\"\nlet q = \"WHERE status = 'running'\";\n",
        ),
        File::new("projections/tests/x.rs", "//! A test.\nlet s = \"running\";\n"),
    ];
    assert_eq!(
        kind_literals_outside_their_enum(&files),
        ["projections/src/status.rs spells 'running': use the enum in projections/src/kinds.rs"]
    );
}

#[test]
fn module_doc_rule_catches_a_file_without_one() {
    let files = [
        File::new("store/src/ok.rs", "//! Fine.\nfn f() {}\n"),
        File::new("store/src/bad.rs", "use std::fmt;\n"),
    ];
    assert_eq!(
        files_without_module_doc(&files),
        ["store/src/bad.rs does not open with a `//!` line"]
    );
}

#[test]
fn dependency_rule_catches_the_store_depending_on_projections() {
    let files = [
        File::new(
            "store/Cargo.toml",
            "[package]\nname = \"tidemark-store\"\n[dependencies]\ntidemark-projections.workspace = true\n[dev-dependencies]\ntidemark-testkit.workspace = true\n",
        ),
        File::new(
            "projections/Cargo.toml",
            "[package]\nname = \"tidemark-projections\"\n[dependencies]\ntidemark-store = { workspace = true }\n",
        ),
        File::new(
            "api/Cargo.toml",
            "[package]\nname = \"tidemark-api\"\n[dependencies]\ntidemark-store.workspace = true\n",
        ),
    ];
    assert_eq!(
        dependency_violations(&files),
        ["tidemark-store depends on tidemark-projections; allowed: "]
    );
}

#[test]
fn outside_reference_rule_catches_a_shared_path() {
    let files = [
        File::new("docs/a.md", "See docs/design.md."),
        File::new(
            "store/src/x.rs",
            &format!(
                "//! See {}/{}.md §3.\n",
                ["..", "shared"].join("/"),
                "DESIGN"
            ),
        ),
    ];
    assert_eq!(
        references_outside_repository(&files),
        ["store/src/x.rs refers to a file outside the repository"]
    );
}
