//! The keyed input's reader task: reads batches from JetStream, skips redeliveries and events
//! the restored checkpoint already holds, extracts keys and the lookups the pipeline file
//! plans, off the run loop.
//!
//! It also makes sure nothing is skipped: the input is acknowledged "all up to" each
//! checkpoint, so a delivery that never arrived here (lost with a failing NATS server, or
//! pulled by a run that no longer owns the partition) would be acknowledged unread. Every
//! delivery carries the consumer's delivery count; a count other than the next one (a jump:
//! some went elsewhere; a step back: the consumer was recreated or its leader lost what it
//! had sent) makes the reader open the consumer again just after the last event it passed
//! on. While no delivery comes, it asks the server every few seconds how many it has sent,
//! so deliveries lost at the end of a burst are not left for the ack wait.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_nats::jetstream;
use tokio::sync::mpsc;

use super::keys;
use super::plan::FilePlans;
use super::route::{Source, headers_to_wit};
use super::window::{Arrival, Body};
use super::{Fence, KEYED};
use crate::config::PipelineConfig;
use crate::engine::Event;
use crate::metrics::Metrics;
use crate::transport::Input;

/// What the reader needs besides its input and where it sends batches.
pub(super) struct Reader {
    pub(super) cfg: Arc<PipelineConfig>,
    pub(super) key_groups: u32,
    /// The input position the restored checkpoint reflects.
    pub(super) resume_after: u64,
    /// Events after it the checkpoint already holds.
    pub(super) skip: BTreeSet<u64>,
    pub(super) metrics: Arc<Metrics>,
    /// The lease the run holds, if any (cluster mode).
    pub(super) fence: Option<Arc<dyn Fence>>,
}

/// Reads keyed batches, skips what is already done, extracts keys: off the run loop.
pub(super) async fn read_input(
    mut input: Input,
    tx: mpsc::Sender<Vec<(jetstream::Message, Arrival)>>,
    reader: Reader,
) {
    let Reader {
        cfg,
        key_groups,
        resume_after,
        skip,
        metrics,
        fence,
    } = reader;
    let mut max_seen = resume_after;
    // The consumer's delivery count of the last delivery read (a fresh consumer starts at 1).
    let mut delivered = 0;
    let source_name: Arc<str> = KEYED.into();
    let key_of = keys::KeyExtractor::new(&cfg.input.key);
    let batch_wait = std::time::Duration::from_millis(cfg.input.batch_wait_ms);
    let file_plans = FilePlans::new(&cfg);
    loop {
        let next = input
            .next_batch(cfg.input.batch, batch_wait, IDLE_CHECK)
            .await;
        // A run that may have lost its partition reads nothing more: its pulls would take
        // deliveries from the new owner's consumer, which has the same name.
        if let Some(why) = fence.as_ref().and_then(|f| f.check().err()) {
            tracing::warn!("input: stopped reading ({why})");
            break;
        }
        let batch = match next {
            Ok(Some(batch)) => batch,
            Ok(None) => break,
            Err(_idle) => {
                // Sent, never arrived, and nothing after them to show the gap (unanswered, it
                // is looked for again at the next idle call).
                match input.delivered().await {
                    Ok(sent) if sent > delivered => {
                        let gap = (delivered + 1, sent + 1);
                        if !read_again(&mut input, &metrics, gap, max_seen, &fence).await {
                            break;
                        }
                        delivered = 0;
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!("input: {e:#}"),
                }
                continue;
            }
        };
        let mut arrivals = Vec::with_capacity(batch.len());
        let mut gap = None;
        for msg in batch {
            let (seq, stored_ns, count) = match msg.info() {
                Ok(info) => (
                    info.stream_sequence,
                    info.published.unix_timestamp_nanos() as u64,
                    info.consumer_sequence,
                ),
                Err(e) => {
                    tracing::warn!("input message without JetStream metadata ({e}); skipped");
                    continue;
                }
            };
            if count != delivered + 1 {
                gap = Some((delivered + 1, count));
                break;
            }
            delivered = count;
            if seq <= max_seen {
                // Delivered again (an ack wait expired): it is in the window or done.
                metrics.skipped_replays.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            max_seen = seq;
            let source = Arc::new(Source {
                input: source_name.clone(),
                subject: msg.subject.clone(),
                seq,
                payload: msg.payload.clone(),
                headers: msg.headers.clone(),
            });
            let body = if skip.contains(&seq) {
                metrics.skipped_replays.fetch_add(1, Ordering::Relaxed);
                Body::Done
            } else {
                metrics.events_in.fetch_add(1, Ordering::Relaxed);
                match key_of.extract(&msg.subject, msg.headers.as_ref(), &msg.payload) {
                    Ok(key) => {
                        let event = Event {
                            key,
                            subject: msg.subject.to_string(),
                            headers: headers_to_wit(msg.headers.as_ref()),
                            payload: msg.payload.to_vec(),
                            timestamp_ms: stored_ns / 1_000_000,
                            sequence: seq,
                        };
                        let mut plan = Vec::new();
                        file_plans.add(&event, &mut plan);
                        Body::Event {
                            key_group: crate::state::keygroup::key_group(&event.key, key_groups),
                            event,
                            plan,
                        }
                    }
                    Err(reason) => Body::BadKey(reason),
                }
            };
            arrivals.push((
                msg,
                Arrival {
                    seq,
                    stored_ns,
                    source,
                    body,
                },
            ));
        }
        if !arrivals.is_empty() && tx.send(arrivals).await.is_err() {
            break;
        }
        if let Some(gap) = gap {
            if !read_again(&mut input, &metrics, gap, max_seen, &fence).await {
                break;
            }
            delivered = 0;
        }
    }
}

/// How long the reader waits for a delivery before asking the server how many it sent.
const IDLE_CHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// Logs that delivery `expected` did not come next (`got` did, or would), and opens the
/// consumer again after `max_seen`; false when the run must stop reading.
async fn read_again(
    input: &mut Input,
    metrics: &Metrics,
    (expected, got): (u64, u64),
    max_seen: u64,
    fence: &Option<Arc<dyn Fence>>,
) -> bool {
    metrics.input_reopens.fetch_add(1, Ordering::Relaxed);
    let what = if got > expected {
        format!(
            "deliveries {expected}..={} of the consumer did not arrive here (lost with a failing NATS server, or pulled by a host that no longer owns the input)",
            got - 1
        )
    } else {
        format!(
            "the consumer's deliveries went back from {} to {got} (the consumer was recreated, or its new leader lost what was sent)",
            expected - 1
        )
    };
    tracing::warn!(
        consumer = input.consumer(),
        "input: {what}; reading again after stream sequence {max_seen}"
    );
    reopen(input, max_seen, fence.as_deref()).await
}

/// Opens the consumer again after `after`, retrying while NATS is unavailable; false when
/// this run may no longer own the input (it must not touch the consumer then).
async fn reopen(input: &mut Input, after: u64, fence: Option<&dyn Fence>) -> bool {
    let mut wait = std::time::Duration::from_millis(100);
    loop {
        if let Some(why) = fence.and_then(|f| f.check().err()) {
            tracing::warn!("input: stopped reading ({why})");
            return false;
        }
        match input.reopen(after).await {
            Ok(()) => return true,
            Err(e) => {
                tracing::warn!("input: {e:#}; retrying in {wait:?}");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(5));
            }
        }
    }
}
