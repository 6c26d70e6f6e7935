//! The append path: validation and hashing in the caller's task, then a bounded queue feeding
//! one writer task that commits many appends per transaction (group commit).
//!
//! - [`prepare`]: validate a request, compute content hashes and event ids (no I/O).
//! - [`batch`]: check and write a batch of prepared appends in one transaction.
//! - [`pipeline`]: the queue, the writer task, backpressure and draining on shutdown.
//! - [`admission`]: refuses at once an append whose expected wait exceeds the budget.

pub(crate) mod admission;
pub(crate) mod batch;
pub(crate) mod pipeline;
pub(crate) mod prepare;
