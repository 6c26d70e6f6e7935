//! # A small bank on Tidemark
//!
//! - [`domain`]: the write side — customers, accounts and orders with their invariants.
//! - [`projections`]: the read models — balances per account (a per-stream fold), totals
//!   per category and event type (a cross-stream aggregate) — and a side-effect handler
//!   that alerts on large withdrawals.
//!
//! Streams are `account-<id>`; events are `AccountOpened`, `MoneyDeposited` and
//! `MoneyWithdrawn` with an integer `amount` in cents.

pub mod domain;
pub mod projections;
