//! The README's "Building your own application" runs as written: its Rust block is
//! `readme_app.rs` (compiled into these tests), its `Cargo.toml` lines name crates these tests
//! depend on, and the application serves its query from its projection's read model.

use crate::common::*;
use crate::readme_app;
use serde_json::json;

/// The README's section `## <title>`.
fn section(title: &str) -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md is readable");
    let start = readme
        .find(&format!("\n## {title}\n"))
        .unwrap_or_else(|| panic!("the README has a section {title:?}"));
    let rest = &readme[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    rest[..end].to_string()
}

/// The fenced blocks of `text` with info string `lang`.
fn blocks(text: &str, lang: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut open: Option<(String, String)> = None;
    for line in text.lines() {
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(info)) => open = Some((info.trim().to_string(), String::new())),
            (Some((info, body)), Some(_)) => {
                if info == lang {
                    found.push(std::mem::take(body));
                }
                open = None;
            }
            (Some((_, body)), None) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, None) => {}
        }
    }
    found
}

#[test]
fn the_readme_application_is_the_tested_file_and_its_crates_are_dependencies() {
    let text = section("Building your own application");
    let rust = blocks(&text, "rust");
    assert_eq!(rust.len(), 1, "one plain rust block, the application");
    assert_eq!(
        rust[0],
        include_str!("readme_app.rs"),
        "the README's application differs from tests/tests/e2e/readme_app.rs"
    );
    let manifest = include_str!("../../Cargo.toml");
    let toml = blocks(&text, "toml");
    assert_eq!(toml.len(), 1, "one Cargo.toml block");
    for line in toml[0].lines().filter(|l| l.contains('=')) {
        let name = line.split('=').next().unwrap().trim();
        assert!(
            manifest
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{name} "))
                    || l.trim_start().starts_with(&format!("{name}."))),
            "the README's dependency {name} is not one the tests build the application with"
        );
    }
}

#[tokio::test]
async fn the_readme_application_counts_visits_and_reads_them_back() {
    let app = spawn_app_with(readme_app::app(), |_| {}).await;
    let mut last = 0;
    for stream in ["visit-home", "visit-home", "visit-about"] {
        let body = app
            .graphql(
                "mutation($s: String!) { appendEvents(streamId: $s, events: [{type: \"Visited\", data: {}}]) { lastPosition } }",
                json!({ "s": stream }),
                Some(APPEND_KEY),
            )
            .await;
        assert_no_errors(&body);
        last = body["data"]["appendEvents"]["lastPosition"]
            .as_i64()
            .unwrap();
    }
    let data = app
        .graphql_data(
            "query($p: Int64!) { home: visits(page: \"home\") @waitFor(projection: \"visit_counts\", position: $p) about: visits(page: \"about\") @waitFor(projection: \"visit_counts\", position: $p) none: visits(page: \"none\") }",
            json!({ "p": last }),
            Some(READ_KEY),
        )
        .await;
    assert_eq!(data, json!({ "home": 2, "about": 1, "none": 0 }));
}
