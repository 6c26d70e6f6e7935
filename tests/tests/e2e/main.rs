//! End-to-end tests, one binary with a module per feature: each test starts the real server
//! (`tidemark_api::Application`) on a free port against a database of its own and talks to
//! it over HTTP and WebSocket (`common`). The embedded cluster that holds the databases is
//! started once for the whole binary; `embedded_recovery`, `replica` and `tls` run servers on
//! private clusters of their own. `graphiql` and `ui` (the dashboard) drive a real headless Chromium
//! (Debian's `chromium`).
//!
//! Run one feature with `cargo test -p tidemark-tests --test e2e <module>::`.

mod common;

mod app_builder;
mod auth;
mod bad_input;
mod bank;
mod binary_payloads;
mod embedded_recovery;
mod events;
mod graphiql;
mod groups;
mod http_service;
mod metrics;
mod outcome;
mod overview;
mod ownership;
mod readme;
mod readme_app;
mod replica;
mod restart;
mod schemas;
mod subscriptions;
mod tls;
mod ui;
mod windows;
