//! The consumer groups' integration tests, one binary with a module per feature, each test
//! on a database of its own (`tidemark_testkit::TestDatabase`). Two `ConsumerGroups` on two
//! stores of one database stand for two server processes.
//!
//! Run one feature with `cargo test -p tidemark-consumers --test consumers <module>::`.

mod common;

mod competing;
mod ordering;
mod redelivery;
