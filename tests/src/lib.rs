//! End-to-end tests live in `tests/tests/`: each starts the real server
//! (`tidemark_api::Application`) on a free port against a fresh PostgreSQL database and talks
//! to it over HTTP and WebSocket. `tests/tests/common/mod.rs` has `spawn_app` and the
//! typed helpers.
