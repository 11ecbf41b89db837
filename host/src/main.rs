//! The `eddy` command: parses the command line and runs the subcommand (`eddy_host::cli`).

use std::process::ExitCode;

use clap::Parser;
use eddy_host::cli::{Cli, LogFormat, dispatch};
use tracing_subscriber::EnvFilter;

/// Events, state values and NATS messages are allocated on one thread and freed on another by
/// the thousand per second; with glibc's malloc about a fifth of the host's CPU goes there in
/// the end-to-end benchmark (`docs/BENCHMARKS.md`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Log lines to stderr, filtered by `RUST_LOG` (default: info, and warnings from the NATS
/// client).
fn init_logs(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,async_nats=warn"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => logs.init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
}

fn main() -> ExitCode {
    eddy_host::no_huge_page_churn();
    let cli = Cli::parse();
    init_logs(cli.log_format);
    // State (RocksDB's files), checkpoints and connections share the process's descriptors:
    // take what the system allows, not the shell's default soft limit (often 1024).
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!(
            "cannot raise the open-files limit: {e}; RocksDB and clients share the default"
        );
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
