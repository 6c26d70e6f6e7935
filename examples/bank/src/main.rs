//! The bank example as a Tidemark server: `cargo run -p tidemark-example-bank -- serve`.
//! Every `tidemark` command works here too (`migrate`, `projections`, `events`, `keys`).

use std::sync::Arc;

#[global_allocator]
static ALLOCATOR: tidemark_api::Allocator = tidemark_api::Allocator;

fn main() -> anyhow::Result<()> {
    tidemark_api::cli::run(tidemark_example_bank::app(Arc::new(
        tidemark_example_bank::LogAlerts,
    )))
}
