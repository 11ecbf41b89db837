//! One released group through the plugin: a keyed batch (dead letters for bad keys and failed
//! lookups, one plugin call for the rest, routing deferred to the publisher's task) or a run
//! of broadcast updates (applied in order, positions advanced). A shadow, if one runs, gets
//! the same group on its own thread (`shadowing`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::Runner;
use crate::engine::{BroadcastEvent, FailureKind, Prefetched};
use crate::lookup::{Resolved, Verdict};
use crate::metrics::DeadLetterReason;
use crate::pipeline::route::{Source, headers_to_wit};
use crate::pipeline::window::{Arrival, Body, BroadcastMsg, Released};
use crate::transport::BroadcastInput;
use crate::transport::publisher::Outgoing;

/// What running one group produced.
pub(super) struct GroupRun {
    /// Its messages: outputs and dead letters.
    pub(super) out: Outgoing,
    /// Events handed to the plugin.
    pub(super) handed: u64,
    /// Of those, the ones that failed (trap or budget): what probation judges.
    pub(super) failed: u64,
}

impl Runner {
    /// Runs one released group through the plugin.
    pub(super) async fn run_group(&mut self, group: Released) -> anyhow::Result<GroupRun> {
        match group {
            Released::Keyed(items) => self.run_keyed(items).await,
            Released::Broadcast(msgs) => self.run_broadcast(msgs).await,
        }
    }

    async fn run_keyed(&mut self, items: Vec<(Arrival, Resolved)>) -> anyhow::Result<GroupRun> {
        let mut out = Vec::new();
        let mut events = Vec::with_capacity(items.len());
        let mut key_groups = Vec::with_capacity(items.len());
        let mut sources = Vec::with_capacity(items.len());
        let mut prefetched = Prefetched::new();
        for (a, resolved) in items {
            let (event, key_group) = match a.body {
                Body::Done => continue,
                Body::BadKey(reason) => {
                    out.push(
                        self.routes
                            .dead_letter(&a.source, DeadLetterReason::Key, &reason),
                    );
                    continue;
                }
                Body::Event {
                    event, key_group, ..
                } => (event, key_group),
            };
            match resolved.verdict {
                Verdict::DeadLetter(reason) => out.push(self.routes.dead_letter(
                    &a.source,
                    DeadLetterReason::Lookup,
                    &reason,
                )),
                Verdict::Drop => {
                    self.metrics.dropped.fetch_add(1, Ordering::Relaxed);
                    self.metrics.lookup_drops.fetch_add(1, Ordering::Relaxed);
                }
                Verdict::Proceed => {
                    prefetched.extend(resolved.answers);
                    events.push(event);
                    key_groups.push(key_group);
                    sources.push(a.source);
                }
            }
        }
        if events.is_empty() {
            return Ok(GroupRun {
                out: Outgoing {
                    ready: out,
                    later: None,
                },
                handed: 0,
                failed: 0,
            });
        }
        let handed = events.len() as u64;
        let prefetched = Arc::new(prefetched);
        // A shadow runs the same batch on its own thread meanwhile.
        let shadow = self
            .shadowing
            .start_keyed(&events, &key_groups, &prefetched);
        let (version, result) = self
            .on_worker_admitting(move |worker| {
                let r = worker.handle(&events, &key_groups, &prefetched);
                (worker.plugin().version().to_string(), r)
            })
            .await?;
        let outcomes = result?;
        if let Some(running) = shadow {
            self.compare_keyed(running, &outcomes).await;
        }
        let failed = outcomes
            .iter()
            .filter(|o| {
                o.as_ref().is_err_and(|f| {
                    matches!(
                        f.kind,
                        FailureKind::Trap | FailureKind::CpuBudget | FailureKind::MemoryLimit
                    )
                })
            })
            .count() as u64;
        // Routing (headers, message ids, dead letters) happens on the publisher's task while
        // the plugin already runs the next batch.
        let (routes, metrics) = (self.routes.clone(), self.metrics.clone());
        let later: crate::transport::publisher::Later = Box::new(move || {
            let mut out = Vec::with_capacity(sources.len());
            for (source, outcome) in sources.iter().zip(outcomes) {
                routes.outcome(source, outcome, &version, &metrics, &mut out);
            }
            out
        });
        Ok(GroupRun {
            out: Outgoing {
                ready: out,
                later: Some(later),
            },
            handed,
            failed,
        })
    }

    async fn run_broadcast(&mut self, msgs: Vec<BroadcastMsg>) -> anyhow::Result<GroupRun> {
        let events: Vec<BroadcastEvent> = msgs
            .iter()
            .map(|b| BroadcastEvent {
                input: b.input.clone(),
                subject: b.msg.subject.to_string(),
                headers: headers_to_wit(b.msg.headers.as_ref()),
                payload: b.msg.payload.to_vec(),
                timestamp_ms: b.stored_ns / 1_000_000,
                sequence: b.seq,
            })
            .collect();
        let shadow = self.shadowing.start_broadcast(&events);
        let compared = shadow.is_some().then(|| events.clone());
        let results = self
            .on_worker_admitting(move |worker| worker.handle_broadcast(&events))
            .await??;
        if let (Some(running), Some(events)) = (shadow, compared) {
            self.compare_broadcast(running, &events, &results).await;
        }
        let mut out = Vec::new();
        for (b, r) in msgs.iter().zip(results) {
            self.metrics.broadcast_in.fetch_add(1, Ordering::Relaxed);
            self.broadcast_positions
                .insert(BroadcastInput::position_key(&b.input), b.seq);
            if let Err(reason) = r {
                let source = Source {
                    input: format!("b-{}", b.input).into(),
                    subject: b.msg.subject.clone(),
                    seq: b.seq,
                    payload: b.msg.payload.clone(),
                    headers: b.msg.headers.clone(),
                };
                out.push(
                    self.routes
                        .dead_letter(&source, DeadLetterReason::Rejected, &reason),
                );
            }
        }
        Ok(GroupRun {
            out: Outgoing {
                ready: out,
                later: None,
            },
            handed: 0,
            failed: 0,
        })
    }
}
