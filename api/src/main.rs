//! The `tidemark` binary: the built-in schema, no application projections.

#[global_allocator]
static ALLOCATOR: tidemark_api::Allocator = tidemark_api::Allocator;

fn main() -> std::process::ExitCode {
    tidemark_api::cli::main(tidemark_api::TidemarkApp::builder().build())
}
