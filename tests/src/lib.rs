//! Test harness for Eddy's integration tests and end-to-end benchmarks.
//!
//! Everything here is real, one module per kind of server or fixture:
//! - [`nats`]: [`NatsServer`] starts the `nats-server` binary with JetStream on a free loopback
//!   port and a temporary directory, and stops it when dropped;
//! - [`redis`], [`postgres`], [`http`]: the lookup stores ([`RedisServer`],
//!   [`PostgresServer`], and [`SlowHttp`], a local HTTP store with a configurable delay);
//! - [`s3`]: [`S3Server`], an S3-compatible checkpoint store (moto);
//! - [`proxy`]: [`Relay`], a TCP relay a test cuts to take a server out of reach;
//! - [`plugins`]: [`plugin`] builds the sample plugins to WebAssembly components once per test
//!   binary (wasmtime's test-programs pattern), never using checked-in binaries;
//! - [`spec`]: the pipeline file a test runs ([`PipelineSpec`]), its streams, and [`Fixture`],
//!   the usual start (a server, a directory, a spec, a connection, the streams);
//! - [`running`]: pipelines running in the test process and what their hosts report;
//! - [`hosts`]: hosts as `eddy run` processes, signalled as operators and crashes do, and
//!   what `eddy cluster status` says of them;
//! - [`reference`]: behaviour written again from specs, to compare against;
//! - [`bench`]: helpers shared by the in-process benchmarks.

pub mod bench;
pub mod hosts;
pub mod http;
pub mod nats;
pub mod plugins;
pub mod postgres;
pub mod proxy;
pub mod redis;
pub mod reference;
pub mod running;
pub mod s3;
pub mod spec;

pub use http::SlowHttp;
pub use nats::{NatsCluster, NatsServer};
pub use plugins::{eddy_bin, plugin, plugin_target_dir, run_build_script, variant};
pub use postgres::PostgresServer;
pub use proxy::Relay;
pub use redis::RedisServer;
pub use reference::{fraud_reference, publish_txs, publish_txs_by_customer};
pub use running::{
    Running, checkpoint_now, deployment, eventually, host_status, savepoint_now, wait_deployment,
};
pub use s3::S3Server;
pub use spec::{
    Fixture, PipelineSpec, create_stream, create_streams, create_two_host_streams, read_stored,
    stream_len, wait_for_len,
};

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::bail;

#[doc(hidden)]
pub use mimalloc;

/// Makes a test or benchmark binary allocate as the `eddy` binary does (mimalloc), so its
/// figures and behaviour are the host's. A binary's choice: write `eddy_tests::host_allocator!();`
/// at its root (benchmarks also call `eddy_host::no_huge_page_churn()` first, as `eddy` does).
#[macro_export]
macro_rules! host_allocator {
    () => {
        #[global_allocator]
        static ALLOCATOR: $crate::mimalloc::MiMalloc = $crate::mimalloc::MiMalloc;
    };
}

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// Sends the host's logs to the test output when `RUST_LOG` is set (`--nocapture` to see).
pub fn init_logging() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
    });
}

/// Waits until a TCP port accepts connections.
pub(crate) fn wait_listening(port: u16, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("{what} did not start listening on port {port}")
}

pub(crate) fn stop_child(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}
