//! The inputs: the keyed input, read from a JetStream durable pull consumer acknowledged at
//! checkpoints, and the broadcast inputs, read whole by every host through ordered consumers;
//! and the look past what an input has read (`Backlog`) that orders broadcast updates.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use async_nats::jetstream::{self, consumer};
use futures::{FutureExt, StreamExt};

use super::{Gate, Nats};
use crate::config::PipelineConfig;
use crate::throttle::Throttle;

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
    /// The stream sequence the consumer had delivered up to before this start recreated it
    /// (`None` without one: a first start, or a nats-server restarted since forgot it): outputs
    /// of events up to there may be published already, so the state is behind them until the
    /// replay passes it.
    pub delivered_before: Option<u64>,
    /// The stream sequence of the last message read: where a consumer that is gone is
    /// created again.
    read_through: u64,
    /// A pull found lost while a batch was being filled: the batch went on, and the next call
    /// asks again before it waits (the client would only after 10 s of missed heartbeats).
    lost: Option<consumer::pull::MessagesError>,
    /// Since when pulling again has failed (none while it has not), and the warnings of it:
    /// each partition's reader asks again every second while NATS is away.
    failing_since: Option<std::time::Instant>,
    renewal_warnings: Throttle,
    /// Whether the reader may still create its consumer again (see [`Input::with_gate`]).
    gate: Option<Gate>,
}

/// How often a re-pull that keeps failing is logged again as a warning (the attempts between
/// go to the debug log).
const WARN_AGAIN_AFTER: Duration = Duration::from_secs(30);

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
            // The checkpoint, not the server, says where to resume, so the consumer's state
            // need not be on disk. On disk, nats-server rewrites it up to ten times a second,
            // every delivered and unacknowledged message in it (all since the last
            // checkpoint), and deliveries waited on each rewrite: p99 latency 8-10 ms against
            // 0.5-1.7 ms in memory (docs/BENCHMARKS.md). A server restart may lose the
            // consumer: `next_batch` then creates it again.
            memory_storage: true,
            ..Default::default()
        };
        let batch = input.batch.max(64);
        let (messages, delivered_before) =
            start_consumer(&stream, &config, batch, resume_after).await?;
        Ok(Input {
            messages: Some(messages),
            stream: stream.clone(),
            config,
            batch,
            position_key: Input::position_key(cfg),
            backlog: Backlog::new(stream, &input.subjects, &input.stream),
            pending: Arc::new(AtomicU64::new(u64::MAX)),
            delivered_before,
            read_through: resume_after,
            lost: None,
            failing_since: None,
            renewal_warnings: Throttle::default(),
            gate: None,
        })
    }

    /// Pulls again, after a lost pull, only while `gate` allows: a reader whose partition may
    /// have a new owner must not create the consumer again, since the new owner's is the same
    /// durable, positioned where its checkpoint says.
    pub fn with_gate(mut self, gate: Option<Gate>) -> Input {
        self.gate = gate;
        self
    }

    /// Opens the consumer again just after stream sequence `after`: what was delivered
    /// beyond it and not read here (lost with a failing server, or taken by a reader that no
    /// longer owns the input) is delivered again.
    pub async fn reopen(&mut self, after: u64) -> anyhow::Result<()> {
        // The old pulls stop first: one sent while the consumer is recreated (the same name)
        // would take deliveries of the new one into an inbox nobody reads.
        self.messages = None;
        self.lost = None;
        self.messages = Some(
            start_consumer(&self.stream, &self.config, self.batch, after)
                .await?
                .0,
        );
        self.read_through = after;
        Ok(())
    }

    /// How many deliveries the consumer has sent (its delivery count), as the server says,
    /// asked for 2 s at most (see [`answered_by`]): the reader asks between idle calls.
    pub async fn delivered(&self) -> anyhow::Result<u64> {
        let until = tokio::time::Instant::now() + Duration::from_secs(2);
        let info = answered_by(until, async {
            self.stream
                .consumer_info(self.consumer())
                .await
                .with_context(|| format!("cannot read consumer `{}`", self.consumer()))
        })
        .await?;
        Ok(info.delivered.consumer_sequence)
    }

    /// The input stream's last sequence when the input was opened: everything a previous
    /// owner of the partition can have handled.
    pub fn stored_through(&self) -> u64 {
        self.stream.cached_info().state.last_sequence
    }

    /// Whether a pull was found lost and is still to be asked for again (NATS could not be
    /// reached to do it): the input is stalled until it is.
    pub fn pull_lost(&self) -> bool {
        self.lost.is_some()
    }

    /// The durable consumer's name.
    pub fn consumer(&self) -> &str {
        self.config.durable_name.as_deref().unwrap_or_default()
    }

    /// The name of this input in checkpoint positions: `keyed:<stream>/<consumer>`.
    pub fn position_key(cfg: &PipelineConfig) -> String {
        format!("keyed:{}/{}", cfg.input.stream, cfg.consumer_name())
    }

    /// Waits up to `idle` for at least one message (`Ok(None)` at end of stream,
    /// `Err(Idle)` if none came), then takes up to `max` that are already here: batches grow
    /// with load and latency stays low when idle. In a backlog, a batch short of `max` waits
    /// up to `wait` for the deliveries on their way (see [`next_batch`]); `idle` never cuts
    /// that wait short, so a batch whose first message arrived is always handed on.
    /// Transient errors (heartbeats missed during a NATS outage) are logged and waited out. A
    /// pull found lost (no responder, the consumer gone) is asked for again at once; lost
    /// while a batch fills, the batch is handed on first.
    pub async fn next_batch(
        &mut self,
        max: usize,
        wait: Duration,
        idle: Duration,
    ) -> Result<Option<Vec<jetstream::Message>>, Idle> {
        let first_by = tokio::time::Instant::now() + idle;
        let mut pause = Duration::from_millis(250);
        loop {
            if let Some(lost) = self.lost.take() {
                // The client counts the lost pull as still open and would ask again only
                // once heartbeats are missed (10 s): ask again now, from the same consumer
                // (it delivers after what it sent before, read or not: the reader's gap check
                // reads again what was sent and not read), or from a new one if it is gone.
                // The old pulls stop first, as in `reopen`: one still open while the consumer
                // is created again (the same name) would take deliveries nobody reads.
                tokio::time::sleep(pause).await;
                self.messages = None;
                // Within the call's own time (a second at least).
                let until = first_by.max(tokio::time::Instant::now() + Duration::from_secs(1));
                match answered_by(until, self.pull_again()).await {
                    Ok(messages) => {
                        self.messages = Some(messages);
                        if let Some(since) = self.failing_since.take() {
                            self.renewal_warnings = Throttle::default();
                            tracing::info!(
                                consumer = %self.consumer(),
                                "input: pulling again, after {:.1?} of failures",
                                since.elapsed()
                            );
                        }
                    }
                    Err(e) => {
                        // Kept, so that every call asks again until one succeeds: a pull
                        // that ended (a deleted consumer's) would read as the input's end.
                        let now = std::time::Instant::now();
                        let since = *self.failing_since.get_or_insert(now);
                        match self.renewal_warnings.admit(now, WARN_AGAIN_AFTER) {
                            Some(held) => tracing::warn!(
                                "input: {e:#}; pulling again every second (failing for {:.0?}, {held} failures since the last warning; said again every {WARN_AGAIN_AFTER:?})",
                                now - since
                            ),
                            None => tracing::debug!("input: {e:#}; pulling again"),
                        }
                        self.lost = Some(lost);
                        pause = Duration::from_secs(1);
                        if tokio::time::Instant::now() >= first_by {
                            return Err(Idle);
                        }
                        continue;
                    }
                }
            }
            let Some(messages) = self.messages.as_mut() else {
                return Ok(None);
            };
            match next_batch(messages, max, wait, first_by).await {
                Pulled::Batch(batch, lost) => {
                    if let Some(e) = &lost {
                        tracing::warn!(
                            "input: {e} (the consumer's leader is not ready, or the consumer is gone); pulling again"
                        );
                    }
                    self.lost = lost;
                    if batch.is_empty() {
                        continue; // lost before any message: pull again, then wait
                    }
                    if let Some(Ok(info)) = batch.last().map(|m| m.info()) {
                        self.pending.store(info.pending, Ordering::Relaxed);
                        self.read_through = info.stream_sequence;
                    }
                    return Ok(Some(batch));
                }
                Pulled::End => return Ok(None),
                Pulled::Idle => return Err(Idle),
            }
        }
    }

    /// A new pull from the durable consumer as it stands, or, if the server no longer has it
    /// (a restarted nats-server keeps no consumer stored in memory), from the consumer created
    /// again just after the last message read. Its deliveries then count from 1 again, which
    /// the reader takes for a recreated consumer and reads again after its own position.
    async fn pull_again(&mut self) -> anyhow::Result<consumer::pull::Stream> {
        if let Some(why) = self.gate.as_ref().and_then(|g| g().err()) {
            bail!("not pulling again: {why}");
        }
        let name = self.consumer().to_string();
        match self.stream.consumer_info(&name).await {
            Err(e) if e.kind() == jetstream::context::ConsumerInfoErrorKind::NotFound => {
                tracing::warn!(
                    consumer = %name,
                    "input: the consumer is gone (a restarted nats-server keeps no consumer stored in memory); creating it again after stream sequence {}",
                    self.read_through
                );
                // Created only if still absent: another reader of the partition (its new owner)
                // may have created it meanwhile, at its own position, and deleting that one
                // would skip what lies between.
                let config = consumer::pull::Config {
                    deliver_policy: deliver_after(self.read_through),
                    ..self.config.clone()
                };
                let consumer: consumer::PullConsumer = self
                    .stream
                    .create_consumer_strict(config)
                    .await
                    .with_context(|| format!("cannot create consumer `{name}` again"))?;
                pull(&consumer, self.batch).await
            }
            Err(e) => bail!("cannot look up consumer `{name}`: {e}"),
            Ok(_) => {
                let consumer: consumer::PullConsumer = self
                    .stream
                    .get_consumer(&name)
                    .await
                    .map_err(|e| anyhow!("cannot find consumer `{name}`: {e}"))?;
                pull(&consumer, self.batch).await
            }
        }
    }
}

/// `requests`' answer, or an error at `until`. A request to a server that cannot be reached
/// waits out the client's timeout (10 s); the input reader's fence and gap checks run between
/// its calls, so its requests give up sooner.
async fn answered_by<T>(
    until: tokio::time::Instant,
    requests: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::time::timeout_at(until, requests)
        .await
        .unwrap_or_else(|_| Err(anyhow!("no answer from NATS in time")))
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
enum Pulled<M> {
    /// A batch, and the pull found lost (see [`lost`]) while it was filled or before its first
    /// message, if it was: the batch (empty in the second case) is handed on, and the pull
    /// asked for again before the next.
    Batch(Vec<M>, Option<consumer::pull::MessagesError>),
    /// No message came by the time given.
    Idle,
    /// The input ended.
    End,
}

/// No message came in the time [`Input::next_batch`] was given.
#[derive(Debug)]
pub struct Idle;

/// (Re)creates the durable consumer `config` names, positioned just after `after`, and
/// starts pulling from it. Also returns the stream sequence the old consumer had delivered up
/// to (`None` if there was none).
async fn start_consumer(
    stream: &jetstream::stream::Stream,
    config: &consumer::pull::Config,
    batch: usize,
    after: u64,
) -> anyhow::Result<(consumer::pull::Stream, Option<u64>)> {
    let name = config.durable_name.clone().unwrap_or_default();
    let stream_name = stream.cached_info().config.name.clone();
    let delivered = match stream.consumer_info(&name).await {
        Ok(info) => {
            let delivered = info.delivered.stream_sequence;
            stream.delete_consumer(&name).await.with_context(|| {
                format!("cannot reset consumer `{name}` on stream {stream_name}")
            })?;
            Some(delivered)
        }
        Err(e) if e.kind() == jetstream::context::ConsumerInfoErrorKind::NotFound => None,
        Err(e) => anyhow::bail!("cannot look up consumer `{name}` on stream {stream_name}: {e}"),
    };
    let config = consumer::pull::Config {
        deliver_policy: deliver_after(after),
        ..config.clone()
    };
    let consumer: consumer::PullConsumer = stream
        .create_consumer(config)
        .await
        .with_context(|| format!("cannot create consumer `{name}` on stream {stream_name}"))?;
    Ok((pull(&consumer, batch).await?, delivered))
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

async fn next_batch<S, M>(
    messages: &mut S,
    max: usize,
    wait: Duration,
    first_by: tokio::time::Instant,
) -> Pulled<M>
where
    S: futures::Stream<Item = Result<M, consumer::pull::MessagesError>> + Unpin,
    M: Delivered,
{
    let mut batch = Vec::with_capacity(max);
    loop {
        let Ok(next) = tokio::time::timeout_at(first_by, messages.next()).await else {
            return Pulled::Idle;
        };
        match next {
            Some(Ok(m)) => {
                batch.push(m);
                break;
            }
            Some(Err(e)) if lost(&e) => return Pulled::Batch(batch, Some(e)),
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
            Some(Some(Err(e))) if lost(&e) => return Pulled::Batch(batch, Some(e)),
            Some(Some(Err(e))) => {
                tracing::warn!("input: {e}");
                break;
            }
            _ => break,
        }
    }
    // Behind the stream by at least what the batch lacks (a backlog): the pull's next
    // deliveries are on their way. Waiting for them here, off the run loop, makes one full
    // batch of what would be several small ones (a host with many partition consumers gets
    // about half-full batches otherwise). A reader just behind a steady flow (a message or two
    // in the stream, each arriving as it is published) does not wait: that would only add
    // latency.
    let short = max - batch.len();
    if !wait.is_zero() && short > 0 && batch.last().is_some_and(|m| m.pending() >= short as u64) {
        let until = tokio::time::Instant::now() + wait;
        while batch.len() < max {
            match tokio::time::timeout_at(until, messages.next()).await {
                Ok(Some(Ok(m))) => batch.push(m),
                Ok(Some(Err(e))) if lost(&e) => return Pulled::Batch(batch, Some(e)),
                Ok(Some(Err(e))) => {
                    tracing::warn!("input: {e}");
                    break;
                }
                Ok(None) | Err(_) => break,
            }
        }
    }
    Pulled::Batch(batch, None)
}

/// Whether `e` says the pull will deliver nothing more: no responder (a consumer whose leader
/// is not elected yet), the consumer deleted, or the server answering that it has no such
/// consumer (async-nats says so only in the pull error's text).
fn lost(e: &consumer::pull::MessagesError) -> bool {
    use consumer::pull::MessagesErrorKind as K;
    e.kind() == K::NoResponders
        || e.kind() == K::ConsumerDeleted
        || (e.kind() == K::Pull && e.to_string().contains("consumer not found"))
}

/// A delivered message, as [`next_batch`] needs it.
trait Delivered {
    /// How many more messages the consumer had to deliver when it sent this one.
    fn pending(&self) -> u64;
}

impl Delivered for jetstream::Message {
    fn pending(&self) -> u64 {
        self.info().map_or(0, |i| i.pending)
    }
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

#[cfg(test)]
mod tests;
