//! Test pipelines: the pipeline file a test runs ([`PipelineSpec`]), the streams it needs,
//! waiting on stream contents, and one fixture for the usual start ([`Fixture`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::*;

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
    /// Lines for the `[checkpoint]` table (merged with one in `extra`), e.g.
    /// `store = "local"`.
    pub checkpoint: String,
    /// Tables appended after everything else (e.g. `[checkpoint.s3]`).
    pub tables: String,
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
            checkpoint: String::new(),
            tables: String::new(),
        }
    }

    /// Keeps checkpoints in the S3-compatible server `s3` (`checkpoint.store = "s3"`).
    pub fn s3_checkpoints(mut self, s3: &S3Server) -> PipelineSpec {
        self.checkpoint.push_str("store = \"s3\"\n");
        self.tables.push_str(&s3.table());
        self
    }

    /// Keeps checkpoints in `s3`, reached through `relay` (which a test can cut).
    pub fn s3_checkpoints_via(mut self, s3: &S3Server, relay: &Relay) -> PipelineSpec {
        self.checkpoint.push_str("store = \"s3\"\n");
        self.tables.push_str(&s3.table_via(relay.port()));
        self
    }

    /// Keeps checkpoints in the state directory alone (`checkpoint.store = "local"`): for
    /// tests of what happens to checkpoint files on the host's own disk.
    pub fn local_checkpoints(mut self) -> PipelineSpec {
        self.checkpoint.push_str("store = \"local\"\n");
        self
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
        let extra = if self.checkpoint.is_empty() {
            self.extra.clone()
        } else if self.extra.contains("[checkpoint]\n") {
            self.extra.replacen(
                "[checkpoint]\n",
                &format!("[checkpoint]\n{}", self.checkpoint),
                1,
            )
        } else {
            format!("{}\n[checkpoint]\n{}", self.extra, self.checkpoint)
        };
        let extra = format!("{extra}\n{}", self.tables);
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
            extra = extra,
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

/// Every message stored on `subject` (wildcards allowed) when called, oldest first. Reads as
/// many as the stream holds there, however long a delivery pauses on the way (seconds, on a
/// loaded machine: a read that stopped at the first pause would look like lost or different
/// outputs), and fails if they do not all come within a minute of each other.
pub async fn read_stored(
    js: &async_nats::jetstream::Context,
    subject: &str,
) -> anyhow::Result<Vec<eddy_host::cli::tail::Stored>> {
    use eddy_host::cli::tail;
    let stream = tail::stream_of(js, subject).await?;
    let stored = tail::pending_from(&stream, subject, 1).await? as usize;
    let read = tail::read(js, subject, stored, Duration::from_secs(60)).await?;
    anyhow::ensure!(
        read.len() == stored,
        "`{subject}`: {stored} messages stored, {} read before a minute passed without one",
        read.len()
    );
    Ok(read)
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

/// The usual start of a test: a nats-server, a temporary directory, a pipeline spec on that
/// server with its state in that directory, a connection, and the spec's streams.
pub struct Fixture {
    /// The server.
    pub nats: NatsServer,
    /// The pipeline's directory (state, checkpoints), removed when dropped.
    pub dir: tempfile::TempDir,
    /// The pipeline.
    pub spec: PipelineSpec,
    /// A connection to the server.
    pub conn: eddy_host::transport::Nats,
}

impl Fixture {
    /// Starts everything, with the spec as [`PipelineSpec::new`] makes it: pipeline `name`
    /// running the sample plugin `plugin_name`.
    pub async fn start(name: &str, plugin_name: &str) -> Fixture {
        Fixture::start_with(|url, dir| PipelineSpec::new(name, url, dir, plugin(plugin_name))).await
    }

    /// Starts everything, with the spec `make` returns from the server's URL and the
    /// directory (edits to the spec go in `make`: the streams are created from its result).
    pub async fn start_with(make: impl FnOnce(&str, &Path) -> PipelineSpec) -> Fixture {
        let nats = NatsServer::start().expect("nats-server");
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = make(&nats.url(), dir.path());
        let conn = nats.connect().await.expect("connect");
        create_streams(&conn.js, &spec).await.expect("streams");
        Fixture {
            nats,
            dir,
            spec,
            conn,
        }
    }
}
