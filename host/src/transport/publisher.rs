//! Publishing outputs and dead letters with pipelined acks, off the run loop.
//!
//! The run loop hands over each batch's messages as one job and carries on; the publisher
//! sends the queued jobs together and awaits their acks in the background while the run loop
//! processes the next batches. A job is *acknowledged* when every message of it and of every
//! earlier job is stored by JetStream: checkpoints wait for that before they acknowledge the
//! input, so an input event is never acknowledged before its outputs are stored.
//!
//! Transient failures (NATS down, timeouts, a stream not loaded yet after a server restart) are
//! retried with backoff until they succeed, so nothing is lost; duplicates from retries are
//! dropped by JetStream thanks to `Nats-Msg-Id`. An output that can never be stored (no stream
//! captures its subject, larger than the server's `max_payload`) is replaced by its fallback, a
//! dead letter saying why. A dead letter is never given up: one too large loses its payload
//! (the input stream still has it, at the sequence its headers name), and one no stream
//! captures is *parked*, retried until an operator creates the stream, with its job (and so
//! the input behind it) unacknowledged meanwhile and `eddy_publish_parked` saying so.
//!
//! Outputs and dead letters are counted when stored, not when routed.
//!
//! A publisher may be given a [`Gate`] (a cluster partition's fence): it asks it before every
//! send and every retry, and once it says no, drops what it holds unsent and stops, so a host
//! that lost the partition during an outage does not publish, when NATS is back, outputs the
//! new owner published already (perhaps longer ago than the streams' duplicate window). What
//! it drops was never acknowledged at the input: the new owner replays it. A publisher that is
//! dropped (its run ended without [`Publisher::close`]) stops at once for the same reason.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishErrorKind, message::PublishMessage};
use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use super::Gate;
use crate::metrics::{DeadLetterReason, Metrics};

/// Builds the dead letter that replaces an output that can never be stored, from the kind and
/// the reason.
pub type Fallback = Arc<dyn Fn(DeadLetterReason, &str) -> OutMessage + Send + Sync>;

/// What a message is, for counting once it is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutKind {
    /// An output (`eddy_outputs_total`).
    Output,
    /// A dead letter, with its reason (`eddy_events_dead_lettered_total`).
    DeadLetter(DeadLetterReason),
}

/// Header of a dead letter whose payload was left out because the message would exceed the
/// server's `max_payload`.
pub const HEADER_PAYLOAD_OMITTED: &str = "Eddy-Payload-Omitted";

/// Builds more messages of a job on the publisher's task, off the run loop (routing a batch's
/// outcomes), so the run loop can hand the plugin its next batch sooner.
pub type Later = Box<dyn FnOnce() -> Vec<OutMessage> + Send>;

/// One message to publish.
#[derive(Clone)]
pub struct OutMessage {
    /// Subject.
    pub subject: String,
    /// Headers, including `Nats-Msg-Id`.
    pub headers: HeaderMap,
    /// Payload.
    pub payload: Bytes,
    /// An output or a dead letter.
    pub kind: OutKind,
    /// What to publish instead if this can never be stored: the event as a dead letter.
    /// `None` for dead letters themselves.
    pub fallback: Option<Fallback>,
}

impl std::fmt::Debug for OutMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutMessage")
            .field("subject", &self.subject)
            .field("headers", &self.headers)
            .field("payload", &self.payload)
            .field("kind", &self.kind)
            .finish()
    }
}

/// How long "no stream for this subject" is treated as a passing state (a restarting server).
const NO_STREAM_GRACE: Duration = Duration::from_secs(30);
/// Jobs queued for publishing at most; beyond that, `publish` waits (backpressure on the run
/// loop).
const JOBS_IN_FLIGHT: usize = 64;

/// The messages of one job: those built, then those `later` builds.
pub struct Outgoing {
    /// Built already.
    pub ready: Vec<OutMessage>,
    /// Built on the publisher's task (or by [`Outgoing::into_vec`]).
    pub later: Option<Later>,
}

impl From<Vec<OutMessage>> for Outgoing {
    fn from(ready: Vec<OutMessage>) -> Outgoing {
        Outgoing { ready, later: None }
    }
}

impl Outgoing {
    /// All the messages, in order, built now.
    pub fn into_vec(self) -> Vec<OutMessage> {
        let mut out = self.ready;
        if let Some(later) = self.later {
            out.extend(later());
        }
        out
    }
}

struct Job {
    id: u64,
    out: Outgoing,
}

/// The background publisher of one pipeline.
pub struct Publisher {
    tx: Option<mpsc::Sender<Job>>,
    acked: watch::Receiver<u64>,
    next_id: u64,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Publisher {
    /// Starts publishing on `js`, while `gate` (if any) allows it.
    pub fn spawn(js: jetstream::Context, metrics: Arc<Metrics>, gate: Option<Gate>) -> Publisher {
        let (tx, rx) = mpsc::channel(JOBS_IN_FLIGHT);
        let (acked_tx, acked) = watch::channel(0);
        let task = tokio::spawn(run(js, rx, acked_tx, metrics, gate));
        Publisher {
            tx: Some(tx),
            acked,
            next_id: 0,
            task: Some(task),
        }
    }

    /// Queues `messages` as one job and returns its id; waits only when too many jobs are in
    /// flight. An empty job completes in order like the others.
    pub async fn publish(&mut self, messages: Vec<OutMessage>) -> anyhow::Result<u64> {
        self.publish_outgoing(messages.into()).await
    }

    /// [`Publisher::publish`], building the `later` part on the publisher's task.
    pub async fn publish_outgoing(&mut self, out: Outgoing) -> anyhow::Result<u64> {
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("the publisher is closed"))?;
        self.next_id += 1;
        let id = self.next_id;
        tx.send(Job { id, out })
            .await
            .map_err(|_| anyhow::anyhow!("the publisher stopped"))?;
        Ok(id)
    }

    /// The id of the last job queued (0: none).
    pub fn last_job(&self) -> u64 {
        self.next_id
    }

    /// The highest job id such that it and every earlier job are stored.
    pub fn acked(&self) -> u64 {
        *self.acked.borrow()
    }

    /// A receiver of [`Publisher::acked`] updates, for waiting elsewhere.
    pub fn watch_acked(&self) -> watch::Receiver<u64> {
        self.acked.clone()
    }

    /// Waits until job `id` and every earlier job are stored.
    pub async fn wait_acked(&self, id: u64) -> anyhow::Result<()> {
        wait_for(self.acked.clone(), id).await
    }

    /// Waits for every queued job, then stops.
    pub async fn close(&mut self) -> anyhow::Result<()> {
        let last = self.next_id;
        self.tx = None;
        wait_for(self.acked.clone(), last).await?;
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        Ok(())
    }
}

impl Drop for Publisher {
    /// A run that ended without [`Publisher::close`] (an error, a fence) leaves its input
    /// unacknowledged past the last checkpoint, so whatever is still queued or being retried
    /// is published again by whoever replays it: stop here rather than publish it late.
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Waits until the watched job id reaches `id`.
pub async fn wait_for(mut acked: watch::Receiver<u64>, id: u64) -> anyhow::Result<()> {
    acked
        .wait_for(|a| *a >= id)
        .await
        .map(drop)
        .map_err(|_| anyhow::anyhow!("the publisher stopped before job {id} was stored"))
}

async fn run(
    js: jetstream::Context,
    mut rx: mpsc::Receiver<Job>,
    acked: watch::Sender<u64>,
    metrics: Arc<Metrics>,
    gate: Option<Gate>,
) {
    // Jobs are published in groups: every job queued when the previous group is stored goes
    // out together, all acks awaited (failures retried) before the next group. The group grows
    // with the backlog, so throughput follows the load, and a later group is never sent before
    // an earlier one is stored: outputs keep their order even across a NATS outage.
    while let Some(first) = rx.recv().await {
        let mut last = first.id;
        let mut messages = first.out.into_vec();
        while messages.len() < GROUP_MESSAGES {
            match rx.try_recv() {
                Ok(job) => {
                    last = job.id;
                    messages.extend(job.out.into_vec());
                }
                Err(_) => break,
            }
        }
        let settled = match send_all(&js, messages, gate.as_ref()).await {
            Ok(sent) => settle(&js, sent, &metrics, gate.as_ref()).await,
            Err(stopped) => Err(stopped),
        };
        if let Err(Stopped { why, unsent }) = settled {
            tracing::warn!(
                "stopped publishing: {why}; {unsent} messages and {} jobs queued dropped unsent (their input was never acknowledged: whoever replays it publishes them)",
                rx.len()
            );
            return;
        }
        let _ = acked.send(last);
    }
}

/// The gate closed with messages still to send.
struct Stopped {
    why: String,
    unsent: usize,
}

/// `Err` if `gate` says this host may not publish `unsent` messages.
fn check(gate: Option<&Gate>, unsent: usize) -> Result<(), Stopped> {
    match gate.map(|g| g()) {
        Some(Err(why)) => Err(Stopped { why, unsent }),
        _ => Ok(()),
    }
}

/// Messages of queued jobs merged into one group, at most (a job is never split).
const GROUP_MESSAGES: usize = 8_192;

type Sent = Vec<(
    OutMessage,
    Result<jetstream::context::PublishAckFuture, jetstream::context::PublishError>,
)>;

/// Sends every message (acks not awaited). While the connection is down nothing more is
/// handed to the client: those messages wait, in order, behind the failed ones, so that what
/// the client buffers during an outage (and re-sends on reconnect, ahead of our retries) stays
/// as small as possible. Each message's place is kept either way.
async fn send_all(
    js: &jetstream::Context,
    messages: Vec<OutMessage>,
    gate: Option<&Gate>,
) -> Result<Sent, Stopped> {
    check(gate, messages.len())?;
    let client = js.client();
    let mut sent = Vec::with_capacity(messages.len());
    let mut down = false;
    for (i, m) in messages.into_iter().enumerate() {
        if i % 64 == 0 && !down {
            down = client.connection_state() != async_nats::connection::State::Connected;
        }
        if down {
            sent.push((m, Err(PublishErrorKind::Other.into())));
            continue;
        }
        let publish = PublishMessage::build()
            .payload(m.payload.clone())
            .headers(m.headers.clone());
        let r = js.send_publish(m.subject.clone(), publish).await;
        sent.push((m, r));
    }
    Ok(sent)
}

/// Awaits the acks of sent messages, retrying failures until every message (or its dead
/// letter) is stored, or the gate closes.
async fn settle(
    js: &jetstream::Context,
    sent: Sent,
    metrics: &Metrics,
    gate: Option<&Gate>,
) -> Result<(), Stopped> {
    let started = Instant::now();
    let mut backoff = Duration::from_millis(50);
    let mut pending = sent;
    let mut parked = Parked { metrics, count: 0 };
    let mut last_alarm: Option<Instant> = None;
    loop {
        let results = futures::future::join_all(pending.into_iter().map(|(m, r)| async move {
            match r {
                Ok(ack) => (
                    m,
                    ack.await
                        .map(|a| a.duplicate)
                        .map_err(|e| (e.kind(), e.to_string())),
                ),
                Err(e) => (m, Err((e.kind(), e.to_string()))),
            }
        }))
        .await;
        let settled = started.elapsed() > NO_STREAM_GRACE;
        let mut retry = Vec::new();
        let mut stuck: Option<String> = None;
        let mut first_error: Option<String> = None;
        for (m, r) in results {
            let (kind, text) = match r {
                Ok(_) => {
                    match m.kind {
                        OutKind::Output => metrics.outputs.fetch_add(1, Ordering::Relaxed),
                        OutKind::DeadLetter(reason) => {
                            metrics.dead_letter(reason);
                            0
                        }
                    };
                    continue;
                }
                Err(e) => e,
            };
            first_error.get_or_insert_with(|| format!("{}: {text}", m.subject));
            match (permanent(&m.subject, kind, &text, settled), &m.fallback) {
                (None, _) => retry.push(m),
                (Some((reason, why)), Some(fallback)) => retry.push(fallback(reason, &why)),
                (Some((DeadLetterReason::TooLarge, why)), None) => match without_payload(&m) {
                    Some(smaller) => retry.push(smaller),
                    None => {
                        stuck.get_or_insert(why);
                        retry.push(m);
                    }
                },
                (Some((_, why)), None) => {
                    stuck.get_or_insert(why);
                    retry.push(m);
                }
            }
        }
        parked.set(if stuck.is_some() {
            retry.len() as u64
        } else {
            0
        });
        if retry.is_empty() {
            return Ok(());
        }
        metrics
            .publish_retries
            .fetch_add(retry.len() as u64, Ordering::Relaxed);
        if let Some(why) = &stuck {
            // Only an operator can fix this: say so every ten seconds, not at every retry.
            if last_alarm.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                last_alarm = Some(Instant::now());
                tracing::error!(
                    count = retry.len(),
                    "messages cannot be stored: {why}; they are held and retried, and their input is not acknowledged until they are stored"
                );
            }
        } else {
            tracing::warn!(
                count = retry.len(),
                "publish failed ({}); retrying in {} ms",
                first_error.as_deref().unwrap_or("?"),
                backoff.as_millis()
            );
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
        pending = send_all(js, retry, gate).await?;
    }
}

/// This group's share of `eddy_publish_parked`, given back however the group ends (stored,
/// dropped at a closed gate, or its task aborted).
struct Parked<'a> {
    metrics: &'a Metrics,
    count: u64,
}

impl Parked<'_> {
    fn set(&mut self, count: u64) {
        self.metrics.parked.fetch_add(count, Ordering::Relaxed);
        self.metrics.parked.fetch_sub(self.count, Ordering::Relaxed);
        self.count = count;
    }
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        self.metrics.parked.fetch_sub(self.count, Ordering::Relaxed);
    }
}

/// A dead letter too large for the server, without its payload (the input stream keeps it,
/// at the subject and sequence the letter's headers name); `None` if it has none to drop.
fn without_payload(m: &OutMessage) -> Option<OutMessage> {
    if m.payload.is_empty() || m.headers.get(HEADER_PAYLOAD_OMITTED).is_some() {
        return None;
    }
    let mut headers = m.headers.clone();
    headers.insert(
        HEADER_PAYLOAD_OMITTED,
        format!(
            "{} bytes: over the server's max_payload with these headers; read the event from the input stream at Eddy-Source-Sequence",
            m.payload.len()
        )
        .as_str(),
    );
    Some(OutMessage {
        subject: m.subject.clone(),
        headers,
        payload: Bytes::new(),
        kind: m.kind,
        fallback: None,
    })
}

/// Why a failed publish can never succeed as it is (the dead-letter kind and the reason), or
/// `None` if it may succeed later.
fn permanent(
    subject: &str,
    kind: PublishErrorKind,
    text: &str,
    settled: bool,
) -> Option<(DeadLetterReason, String)> {
    match kind {
        PublishErrorKind::StreamNotFound if settled => Some((
            DeadLetterReason::Contract,
            format!(
                "no JetStream stream captures subject `{subject}`; add the subject to a stream (`eddy streams <pipeline.toml>` creates the pipeline's) or stop emitting to it"
            ),
        )),
        PublishErrorKind::MaxPayloadExceeded => Some((
            DeadLetterReason::TooLarge,
            format!(
                "message on `{subject}` too large for the server's max_payload ({text}); raise max_payload or emit less"
            ),
        )),
        _ => None,
    }
}
