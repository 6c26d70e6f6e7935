//! The `tidemark` binary: the built-in schema, no application projections.

fn main() -> std::process::ExitCode {
    tidemark_api::cli::main(tidemark_api::TidemarkApp::builder().build())
}
