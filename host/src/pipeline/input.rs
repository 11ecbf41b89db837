//! The keyed input's reader task: reads batches from JetStream, skips redeliveries and events
//! the restored checkpoint already holds, and extracts keys, off the run loop.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_nats::jetstream;
use tokio::sync::mpsc;

use super::KEYED;
use super::keys;
use super::route::{Source, headers_to_wit};
use super::window::{Arrival, Body};
use crate::config::PipelineConfig;
use crate::engine::Event;
use crate::metrics::Metrics;
use crate::transport::Input;

/// Reads keyed batches, skips what is already done, extracts keys: off the run loop.
pub(super) async fn read_input(
    mut input: Input,
    tx: mpsc::Sender<Vec<(jetstream::Message, Arrival)>>,
    cfg: Arc<PipelineConfig>,
    key_groups: u32,
    resume_after: u64,
    skip: BTreeSet<u64>,
    metrics: Arc<Metrics>,
) {
    let mut max_seen = resume_after;
    let source_name: Arc<str> = KEYED.into();
    let key_of = keys::KeyExtractor::new(&cfg.input.key);
    while let Some(batch) = input.next_batch(cfg.input.batch).await {
        let mut arrivals = Vec::with_capacity(batch.len());
        for msg in batch {
            let (seq, stored_ns) = match msg.info() {
                Ok(info) => (
                    info.stream_sequence,
                    info.published.unix_timestamp_nanos() as u64,
                ),
                Err(e) => {
                    tracing::warn!("input message without JetStream metadata ({e}); skipped");
                    continue;
                }
            };
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
                    Ok(key) => Body::Event {
                        key_group: crate::state::keygroup::key_group(&key, key_groups),
                        event: Event {
                            key,
                            subject: msg.subject.to_string(),
                            headers: headers_to_wit(msg.headers.as_ref()),
                            payload: msg.payload.to_vec(),
                            timestamp_ms: stored_ns / 1_000_000,
                            sequence: seq,
                        },
                    },
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
    }
}
