//! The store's integration tests, one binary with a module per feature, each test on a
//! database of its own (`tidemark_testkit::TestDatabase`); the embedded cluster that holds
//! them is started once for the whole binary. The `embedded`, `replica` and `tls` modules
//! start private clusters of their own.
//!
//! Run one feature with `cargo test -p tidemark-store --test store <module>::`.

mod common;

mod append_only;
mod browse;
mod dedup;
mod embedded;
mod expected_version;
mod global_order;
mod migrations;
mod outcome;
mod pipeline;
mod reads;
mod replica;
mod subscription;
mod tls;
mod validation;
