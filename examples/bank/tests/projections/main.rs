//! The projection engine end to end with the bank's projections, one binary with a module
//! per feature, each test on a database of its own: exactly-once under crashes (in-process
//! and a killed `projector` process), failures and dead letters, lanes, rebuilds, schema
//! evolution, windowed projections.
//!
//! `tests/scale_out.rs` stays a binary of its own: its tests run several `projector`
//! processes and measure takeovers in lease periods, so they run one at a time and must
//! not share the two cores of CI with the tests here.
//!
//! Run one feature with `cargo test -p tidemark-example-bank --test projections <module>::`.

mod common;

mod evolution;
mod exactly_once;
mod failures;
mod lanes;
mod rebuilds;
mod windows;
