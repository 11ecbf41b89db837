//! Pipeline metrics and their Prometheus endpoint.
//!
//! Owns: the counters and histograms a pipeline updates, and a minimal HTTP server that
//! renders them in the Prometheus text format at `/metrics`. Updating a metric is one relaxed
//! atomic add: cheap enough for the event path.

mod attached;
mod histogram;
mod serve;
#[cfg(test)]
mod tests;

pub use histogram::{Histogram, HistogramSnapshot};
pub use serve::serve;

use attached::Attached;

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

const LATENCY_BOUNDS: &[f64] = &[
    0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0,
];
/// A cut's pause of the run loop: fine below 10 ms, where its goal (a millisecond) lies.
const PAUSE_BOUNDS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0,
];
const BATCH_BOUNDS: &[f64] = &[1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 10000.0];
const RESTORE_BOUNDS: &[f64] = &[0.01, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0];

/// How many `eddy_shadow_messages_total` series a host keeps before it counts new subjects
/// together.
const SHADOW_SERIES: usize = 1000;

/// The subject label of the shadow comparisons counted together past `SHADOW_SERIES`.
const OTHER_SUBJECTS: &str = "(other)";

/// The metrics of one pipeline.
#[derive(Debug)]
pub struct Metrics {
    pipeline: String,
    /// Events read from the input.
    pub events_in: AtomicU64,
    /// Messages published to output subjects.
    pub outputs: AtomicU64,
    /// Events the plugin dropped on purpose.
    pub dropped: AtomicU64,
    /// Events stored on the dead-letter subject, by reason.
    pub dead_lettered: [AtomicU64; DeadLetterReason::COUNT],
    /// Events skipped because the state already reflected them (redeliveries).
    pub skipped_replays: AtomicU64,
    /// Times the keyed input was opened again because deliveries went missing.
    pub input_reopens: AtomicU64,
    /// Publish attempts that failed and were retried.
    pub publish_retries: AtomicU64,
    /// Messages that cannot be stored for now for a reason only an operator can fix (no
    /// stream captures their subject): held, with their input unacknowledged, until they are.
    pub parked: AtomicU64,
    /// Plugin instances replaced after a trap.
    pub instance_restarts: AtomicU64,
    /// Seconds per plugin call (one batch).
    pub call_seconds: Histogram,
    /// Events per plugin call.
    pub batch_size: Histogram,
    /// Broadcast events handled.
    pub broadcast_in: AtomicU64,
    /// Events dropped by a lookup failure policy.
    pub lookup_drops: AtomicU64,
    /// Checkpoints completed.
    pub checkpoints: AtomicU64,
    /// Checkpoints that failed to complete.
    pub checkpoint_failures: AtomicU64,
    /// Seconds the pipeline waited for a checkpoint cut.
    pub checkpoint_pause_seconds: Histogram,
    /// Seconds from cut to completed checkpoint.
    pub checkpoint_seconds: Histogram,
    /// Bytes of the last completed checkpoint.
    pub checkpoint_bytes: AtomicU64,
    /// Bytes checkpoints added (their incremental parts), in all.
    pub checkpoint_new_bytes: AtomicU64,
    /// Plugin version swaps.
    pub reloads: AtomicU64,
    /// Versions rolled back.
    pub rollbacks: AtomicU64,
    /// Versions rejected before they ran.
    pub reload_rejections: AtomicU64,
    /// Seconds the pipeline paused to swap a plugin version (migrate included).
    pub swap_pause_seconds: Histogram,
    /// Partitions this host owns (cluster mode).
    pub partitions_owned: AtomicU64,
    /// Partitions this host took (cluster mode), from a free lease or a lapsed one.
    pub partitions_acquired: AtomicU64,
    /// Of those, partitions another host held before (failovers and hand-offs).
    pub failovers: AtomicU64,
    /// Partition runs on this host that ended on an error (cluster mode): each lets the
    /// partition cool here while another host may run it.
    pub partition_failures: AtomicU64,
    /// Seconds a lease renewal took (cluster mode).
    pub lease_renewal_seconds: Histogram,
    /// Seconds restoring state took at the start of a run (downloads included).
    pub restore_seconds: Histogram,
    /// Bytes checkpoints sent to the store beyond the host.
    pub checkpoint_upload_bytes: AtomicU64,
    /// The state stores' counters: one per partition run in cluster mode, and a promoted
    /// shadow's.
    state: std::sync::Mutex<Attached<crate::state::StateStats>>,
    /// Messages a shadow version's outputs were compared on, by subject and verdict
    /// (`same`, `different`, `only-live`, `only-shadow`).
    shadow_messages: std::sync::Mutex<std::collections::BTreeMap<(String, &'static str), u64>>,
    /// Events a shadow version handled beside the live one.
    pub shadow_events: AtomicU64,
    /// The lookup stores' counters, one set per run.
    lookups: std::sync::Mutex<Attached<dyn LookupCounters>>,
    /// The pending counts of the keyed inputs running now (one per partition in cluster
    /// mode; `u64::MAX` until an input read its first batch), summed as `eddy_input_pending`.
    input_pending: std::sync::Mutex<Vec<std::sync::Weak<AtomicU64>>>,
}

/// Counters of the lookup stores, read when the metrics are rendered (implemented by
/// `crate::lookup::Lookups`; the metrics know nothing of stores).
pub trait LookupCounters: Send + Sync + std::fmt::Debug {
    /// Calls `f(store, result, count)` for every store and result (`hit`, `miss`, `error`,
    /// `failure`, `load`), and for the keys asked without a plan (`unplanned`).
    fn each(&self, f: &mut dyn FnMut(&str, &str, u64));
}

/// Why an event was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterReason {
    /// The key could not be extracted.
    Key,
    /// The plugin rejected the event.
    Rejected,
    /// The plugin trapped on it.
    Trap,
    /// CPU budget exceeded.
    CpuBudget,
    /// Memory limit exceeded.
    MemoryLimit,
    /// The plugin broke the contract (bad subject, wrong outcome count).
    Contract,
    /// A lookup failed after every retry (policy `dead-letter`).
    Lookup,
    /// An output larger than the server's `max_payload`.
    TooLarge,
    /// A write over a per-key quota (policy `reject`).
    Quota,
}

impl DeadLetterReason {
    const COUNT: usize = 9;
    const ALL: [DeadLetterReason; Self::COUNT] = [
        DeadLetterReason::Key,
        DeadLetterReason::Rejected,
        DeadLetterReason::Trap,
        DeadLetterReason::CpuBudget,
        DeadLetterReason::MemoryLimit,
        DeadLetterReason::Contract,
        DeadLetterReason::Lookup,
        DeadLetterReason::TooLarge,
        DeadLetterReason::Quota,
    ];

    /// The label used in headers and metrics.
    pub fn label(self) -> &'static str {
        match self {
            DeadLetterReason::Key => "key",
            DeadLetterReason::Rejected => "rejected",
            DeadLetterReason::Trap => "trap",
            DeadLetterReason::CpuBudget => "cpu-budget",
            DeadLetterReason::MemoryLimit => "memory-limit",
            DeadLetterReason::Contract => "contract",
            DeadLetterReason::Lookup => "lookup",
            DeadLetterReason::TooLarge => "too-large",
            DeadLetterReason::Quota => "quota",
        }
    }
}

impl eddy_engine::WorkerMetrics for Metrics {
    fn batch_called(&self, events: usize, seconds: f64) {
        self.call_seconds.observe(seconds);
        self.batch_size.observe(events as f64);
    }

    fn instance_restarted(&self) {
        self.instance_restarts.fetch_add(1, Ordering::Relaxed);
    }
}

impl Metrics {
    /// Fresh metrics for `pipeline`.
    pub fn new(pipeline: &str) -> Arc<Metrics> {
        Arc::new(Metrics {
            pipeline: pipeline.to_string(),
            events_in: AtomicU64::new(0),
            outputs: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            dead_lettered: Default::default(),
            skipped_replays: AtomicU64::new(0),
            input_reopens: AtomicU64::new(0),
            publish_retries: AtomicU64::new(0),
            parked: AtomicU64::new(0),
            partitions_owned: AtomicU64::new(0),
            partitions_acquired: AtomicU64::new(0),
            failovers: AtomicU64::new(0),
            partition_failures: AtomicU64::new(0),
            lease_renewal_seconds: Histogram::new(LATENCY_BOUNDS),
            restore_seconds: Histogram::new(RESTORE_BOUNDS),
            checkpoint_upload_bytes: AtomicU64::new(0),
            instance_restarts: AtomicU64::new(0),
            call_seconds: Histogram::new(LATENCY_BOUNDS),
            batch_size: Histogram::new(BATCH_BOUNDS),
            broadcast_in: AtomicU64::new(0),
            lookup_drops: AtomicU64::new(0),
            checkpoints: AtomicU64::new(0),
            checkpoint_failures: AtomicU64::new(0),
            checkpoint_pause_seconds: Histogram::new(PAUSE_BOUNDS),
            checkpoint_seconds: Histogram::new(LATENCY_BOUNDS),
            checkpoint_bytes: AtomicU64::new(0),
            checkpoint_new_bytes: AtomicU64::new(0),
            reloads: AtomicU64::new(0),
            rollbacks: AtomicU64::new(0),
            reload_rejections: AtomicU64::new(0),
            swap_pause_seconds: Histogram::new(LATENCY_BOUNDS),
            state: std::sync::Mutex::new(Attached::new()),
            shadow_messages: std::sync::Mutex::default(),
            shadow_events: AtomicU64::new(0),
            lookups: std::sync::Mutex::new(Attached::new()),
            input_pending: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Counts a keyed input's pending messages in `eddy_input_pending` for as long as it runs.
    pub fn attach_input_pending(&self, pending: &Arc<AtomicU64>) {
        let mut all = self.input_pending.lock().expect("input_pending");
        all.retain(|w| w.strong_count() > 0);
        all.push(Arc::downgrade(pending));
    }

    /// The pending messages of the keyed inputs running now, if any has read a batch.
    pub fn input_pending(&self) -> Option<u64> {
        let all = self.input_pending.lock().expect("input_pending");
        let known: Vec<u64> = all
            .iter()
            .filter_map(|w| w.upgrade())
            .map(|p| p.load(Ordering::Relaxed))
            .filter(|p| *p != u64::MAX)
            .collect();
        (!known.is_empty()).then(|| known.iter().sum())
    }

    /// Includes a state store's counters in the exposition's sums (a run's, or a promoted
    /// shadow's), until the store goes and beyond (see [`Attached`]).
    pub fn attach_state(&self, stats: Arc<crate::state::StateStats>) {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .attach(stats, false);
    }

    /// [`Metrics::attach_state`] for a store whose counts so far are not the pipeline's: a
    /// shadow's, promoted to live (it counted every event beside the live store).
    pub fn attach_state_from_now(&self, stats: Arc<crate::state::StateStats>) {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .attach(stats, true);
    }

    /// Counts one message a shadow's outputs were compared on. Subjects are the plugin's
    /// choice (one per key, say): once there are `SHADOW_SERIES` series, subjects not seen
    /// yet are counted under the subject `(other)`, so the exposition stays bounded.
    pub fn shadow_compared(&self, subject: &str, verdict: &'static str) {
        let mut all = self
            .shadow_messages
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let seen = all
            .range((subject.to_string(), "")..)
            .next()
            .is_some_and(|((s, _), _)| s == subject);
        let subject = if seen || all.len() < SHADOW_SERIES {
            subject
        } else {
            OTHER_SUBJECTS
        };
        *all.entry((subject.to_string(), verdict)).or_default() += 1;
    }

    /// Includes a run's lookup stores' counters in the exposition's sums, until the run ends
    /// and beyond (see [`Attached`]).
    pub fn attach_lookups(&self, lookups: Arc<dyn LookupCounters>) {
        self.lookups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .attach(lookups, false);
    }

    /// Counts one dead letter.
    pub fn dead_letter(&self, reason: DeadLetterReason) {
        self.dead_lettered[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Total dead letters.
    pub fn dead_lettered_total(&self) -> u64 {
        self.dead_lettered
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let l = format!("pipeline=\"{}\"", self.pipeline);
        self.render_gauges(&mut out, &l);
        self.render_counters(&mut out, &l);
        self.render_dead_letters(&mut out, &l);
        self.render_shadow(&mut out, &l);
        self.render_state(&mut out, &l);
        self.render_lookups(&mut out, &l);
        self.render_timings(&mut out, &l);
        out
    }

    /// Messages parked, the last checkpoint's size, partitions owned, input pending.
    fn render_gauges(&self, out: &mut String, l: &str) {
        let gauges = [
            (
                "eddy_publish_parked",
                "Messages that cannot be stored until an operator acts (no stream captures their subject); their input stays unacknowledged.",
                Some(self.parked.load(Ordering::Relaxed)),
            ),
            (
                "eddy_checkpoint_bytes",
                "Bytes of the state at the last completed checkpoint.",
                Some(self.checkpoint_bytes.load(Ordering::Relaxed)),
            ),
            (
                "eddy_partitions_owned",
                "Partitions this host owns (cluster mode).",
                Some(self.partitions_owned.load(Ordering::Relaxed)),
            ),
            (
                "eddy_input_pending",
                "Messages of the keyed input not yet delivered to this host (the consumer's pending count at its last batch; summed over its partitions).",
                self.input_pending(),
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(v) = value {
                let _ = writeln!(
                    out,
                    "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{{l}}} {v}"
                );
            }
        }
    }

    /// The plain counters, the cluster's included.
    fn render_counters(&self, out: &mut String, l: &str) {
        let counters: [(&str, &str, &AtomicU64); 15] = [
            (
                "eddy_events_in_total",
                "Events read from the input.",
                &self.events_in,
            ),
            (
                "eddy_outputs_total",
                "Messages published to output subjects.",
                &self.outputs,
            ),
            (
                "eddy_events_dropped_total",
                "Events the plugin filtered out.",
                &self.dropped,
            ),
            (
                "eddy_replays_skipped_total",
                "Redelivered events already reflected in state.",
                &self.skipped_replays,
            ),
            (
                "eddy_input_reopens_total",
                "Times the keyed input was read again from the last event passed on, because deliveries of its consumer did not arrive.",
                &self.input_reopens,
            ),
            (
                "eddy_publish_retries_total",
                "Publishes retried after a failure.",
                &self.publish_retries,
            ),
            (
                "eddy_instance_restarts_total",
                "Plugin instances replaced after a trap.",
                &self.instance_restarts,
            ),
            (
                "eddy_broadcast_events_total",
                "Broadcast events handled.",
                &self.broadcast_in,
            ),
            (
                "eddy_lookup_drops_total",
                "Events dropped because a lookup failed (policy drop).",
                &self.lookup_drops,
            ),
            (
                "eddy_checkpoints_total",
                "Checkpoints completed.",
                &self.checkpoints,
            ),
            (
                "eddy_checkpoint_failures_total",
                "Checkpoints that failed to complete.",
                &self.checkpoint_failures,
            ),
            (
                "eddy_checkpoint_new_bytes_total",
                "Bytes checkpoints stored beyond what earlier ones share.",
                &self.checkpoint_new_bytes,
            ),
            (
                "eddy_plugin_reloads_total",
                "Plugin versions swapped in.",
                &self.reloads,
            ),
            (
                "eddy_plugin_rollbacks_total",
                "Plugin versions rolled back.",
                &self.rollbacks,
            ),
            (
                "eddy_plugin_rejections_total",
                "Plugin versions rejected before they ran.",
                &self.reload_rejections,
            ),
        ];
        for (name, help, c) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{{l}}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        for (name, help, c) in [
            (
                "eddy_partitions_acquired_total",
                "Partitions this host took (cluster mode).",
                &self.partitions_acquired,
            ),
            (
                "eddy_partition_failovers_total",
                "Partitions this host took over from another host (cluster mode).",
                &self.failovers,
            ),
            (
                "eddy_partition_failures_total",
                "Partition runs on this host that ended on an error (cluster mode).",
                &self.partition_failures,
            ),
            (
                "eddy_checkpoint_upload_bytes_total",
                "Bytes checkpoints sent to the store beyond the host.",
                &self.checkpoint_upload_bytes,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{{l}}} {}",
                c.load(Ordering::Relaxed)
            );
        }
    }

    /// Dead letters by reason.
    fn render_dead_letters(&self, out: &mut String, l: &str) {
        let dead: Vec<(&str, &AtomicU64)> = DeadLetterReason::ALL
            .iter()
            .map(|r| (r.label(), &self.dead_lettered[*r as usize]))
            .collect();
        split_counter(
            out,
            "eddy_events_dead_lettered_total",
            "Events sent to the dead-letter subject, by reason.",
            l,
            "reason",
            &dead,
        );
    }

    /// A shadow's events and compared messages (once one ran).
    fn render_shadow(&self, out: &mut String, l: &str) {
        let shadow = self
            .shadow_messages
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if !shadow.is_empty() {
            let _ = writeln!(
                out,
                "# HELP eddy_shadow_events_total Events a shadow version handled beside the live one.\n# TYPE eddy_shadow_events_total counter\neddy_shadow_events_total{{{l}}} {}",
                self.shadow_events.load(Ordering::Relaxed)
            );
            let name = "eddy_shadow_messages_total";
            let _ = writeln!(
                out,
                "# HELP {name} Messages of a shadow version compared with the live version's, by subject and verdict.\n# TYPE {name} counter"
            );
            for ((subject, verdict), n) in shadow {
                let subject = subject.replace('\\', "\\\\").replace('"', "\\\"");
                let _ = writeln!(
                    out,
                    "{name}{{{l},subject=\"{subject}\",verdict=\"{verdict}\"}} {n}"
                );
            }
        }
    }

    /// The state's counters (expiry, quotas, hot values), once a state is attached.
    fn render_state(&self, out: &mut String, l: &str) {
        let state = self
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .totals();
        if let Some(stats) = state {
            let stats = &stats;
            split_counter(
                out,
                "eddy_state_expired_removed_total",
                "Expired state entries removed, by cleanup strategy.",
                l,
                "strategy",
                &[
                    ("read", &stats.expired_on_read),
                    ("compaction", &stats.expired_in_compaction),
                ],
            );
            split_counter(
                out,
                "eddy_state_quota_total",
                "Per-key quota hits: writes refused (policy reject, the event dead-lettered) and entries evicted (policy evict).",
                l,
                "action",
                &[
                    ("rejected", &stats.quota_rejected),
                    ("evicted", &stats.quota_evicted),
                ],
            );
            split_counter(
                out,
                "eddy_state_hot_reads_total",
                "Keyed point reads, by whether the hot values answered them.",
                l,
                "result",
                &[("hit", &stats.hot_hits), ("miss", &stats.hot_misses)],
            );
            split_counter(
                out,
                "eddy_state_deferred_writes_total",
                "Value and list writes that waited in the hot values (counted when settled), and the RocksDB writes that settling them took.",
                l,
                "stage",
                &[
                    ("deferred", &stats.deferred_writes),
                    ("written", &stats.settled_writes),
                ],
            );
            let batched = stats.batched_writes.load(Ordering::Relaxed);
            let name = "eddy_state_batched_writes_total";
            let _ = writeln!(
                out,
                "# HELP {name} Value and list writes plugins handed over a batch at a time (keyed-state write-batch) instead of one import call each.\n# TYPE {name} counter\n{name}{{{l}}} {batched}"
            );
        }
    }

    /// Lookup answers by store and result, if the pipeline has lookups.
    fn render_lookups(&self, out: &mut String, l: &str) {
        let totals = self
            .lookups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .totals();
        if let Some(totals) = totals {
            let (unplanned, answers): (Vec<_>, Vec<_>) = totals
                .into_iter()
                .partition(|((_, result), _)| result == "unplanned");
            let name = "eddy_lookups_total";
            let _ = writeln!(
                out,
                "# HELP {name} Lookup answers by store and result.\n# TYPE {name} counter"
            );
            for ((store, result), count) in answers {
                let _ = writeln!(
                    out,
                    "{name}{{{l},store=\"{store}\",result=\"{result}\"}} {count}"
                );
            }
            let name = "eddy_lookups_unplanned_total";
            let _ = writeln!(
                out,
                "# HELP {name} Keys the plugin asked for that no plan declared (lookup.<store>.plan or the plugin's prepare): fetched while it waited.\n# TYPE {name} counter"
            );
            for ((store, _), count) in unplanned {
                let _ = writeln!(out, "{name}{{{l},store=\"{store}\"}} {count}");
            }
        }
    }

    /// Histograms of what takes time.
    fn render_timings(&self, out: &mut String, l: &str) {
        self.lease_renewal_seconds.render(
            out,
            "eddy_lease_renewal_seconds",
            "Time a partition lease renewal took (cluster mode).",
            l,
        );
        self.restore_seconds.render(
            out,
            "eddy_restore_seconds",
            "Time restoring state took at the start of a run, downloads from the store included.",
            l,
        );
        self.checkpoint_pause_seconds.render(
            out,
            "eddy_checkpoint_pause_seconds",
            "Time the pipeline waited for a checkpoint cut.",
            l,
        );
        self.checkpoint_seconds.render(
            out,
            "eddy_checkpoint_seconds",
            "Time from checkpoint cut to completed checkpoint.",
            l,
        );
        self.swap_pause_seconds.render(
            out,
            "eddy_plugin_swap_pause_seconds",
            "Time the pipeline paused to swap a plugin version.",
            l,
        );
        self.call_seconds.render(
            out,
            "eddy_plugin_call_seconds",
            "Duration of one plugin call (one batch).",
            l,
        );
        self.batch_size
            .render(out, "eddy_batch_size", "Events per plugin call.", l);
    }
}

/// One counter split by a label: a series `{labels,<label>="<value>"}` per `(value, counter)`.
fn split_counter(
    out: &mut String,
    name: &str,
    help: &str,
    labels: &str,
    label: &str,
    series: &[(&str, &AtomicU64)],
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (value, c) in series {
        let _ = writeln!(
            out,
            "{name}{{{labels},{label}=\"{value}\"}} {}",
            c.load(Ordering::Relaxed)
        );
    }
}
