//! End-to-end tests live in `tests/tests/e2e/` (one test binary, a module per feature):
//! each starts the real server (`tidemark_api::Application`) on a free port against a fresh
//! PostgreSQL database and talks to it over HTTP and WebSocket. `tests/tests/e2e/common.rs`
//! has `spawn_app` and the typed helpers.
