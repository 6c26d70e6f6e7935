//! The `tidemark` server as a binary of this package, with the same entry point as
//! `api/src/main.rs`: end-to-end tests run it as separate OS processes (two servers on one
//! database, `kill -9`), which they can only start from a binary of their own package.

fn main() -> std::process::ExitCode {
    tidemark_api::cli::main(tidemark_api::TidemarkApp::builder().build())
}
