//! What the console shows live: every second, the status of every host of the pipeline
//! (gathered over NATS), turned into rates, plugin-call quantiles and a 15-minute series.
//!
//! Owns: the last status of each host ever seen (a host that stops answering is kept and
//! shown as gone, and comes back when it answers again), and the pipeline's series.
//! Never: asks the hosts for anything but `status`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::checkpoint::now_ms;
use crate::control::{Answer, HostStatus, RECENT_CHECKPOINTS};
use crate::metrics::HistogramSnapshot;
use crate::transport::Nats;

/// How often the hosts are asked.
pub const PERIOD: Duration = Duration::from_secs(1);
/// How many points the series keeps: 15 minutes at one a second.
const POINTS: usize = 900;

/// One point of the pipeline's series: sums over the hosts that answered.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    /// When, ms since the epoch.
    pub t_ms: u64,
    /// Events read per second.
    pub in_per_s: f64,
    /// Outputs published per second.
    pub out_per_s: f64,
    /// Events dead-lettered per second.
    pub dlq_per_s: f64,
    /// Messages not yet delivered to any host.
    pub lag: Option<u64>,
    /// Plugin call time, median and 99th percentile over the last period (bucket bounds), ms.
    pub p50_ms: Option<f64>,
    /// See `p50_ms`.
    pub p99_ms: Option<f64>,
    /// Hosts that answered.
    pub hosts: usize,
}

/// One host as the overview shows it.
#[derive(Debug, Clone, Serialize)]
pub struct HostView {
    /// Its name.
    pub host: String,
    /// Whether it answered the last status request.
    pub alive: bool,
    /// When it last answered, ms since the epoch.
    pub seen_ms: u64,
    /// What it said then (of all its partitions, in cluster mode).
    pub status: HostStatus,
    /// Events read per second over the last period.
    pub in_per_s: f64,
    /// Outputs per second.
    pub out_per_s: f64,
    /// Dead letters per second.
    pub dlq_per_s: f64,
    /// Plugin call time over the last period, ms.
    pub p50_ms: Option<f64>,
    /// See `p50_ms`.
    pub p99_ms: Option<f64>,
    #[serde(skip)]
    calls: HistogramSnapshot,
    #[serde(skip)]
    calls_since: HistogramSnapshot,
}

/// What the overview shows.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Overview {
    /// The pipeline's name.
    pub pipeline: String,
    /// Every host seen since the console started, by name.
    pub hosts: Vec<HostView>,
    /// The last 15 minutes, oldest first.
    pub series: Vec<Point>,
    /// Why the last round of status requests failed, if it did.
    pub problem: Option<String>,
}

/// The samples, shared between the sampling task and the console's handlers.
#[derive(Default)]
pub struct Samples {
    hosts: BTreeMap<String, HostView>,
    series: VecDeque<Point>,
    problem: Option<String>,
}

impl Samples {
    /// The overview now.
    pub fn overview(&self, pipeline: &str) -> Overview {
        Overview {
            pipeline: pipeline.to_string(),
            hosts: self.hosts.values().cloned().collect(),
            series: self.series.iter().cloned().collect(),
            problem: self.problem.clone(),
        }
    }

    /// The last status of every live host.
    pub fn live(&self) -> Vec<HostStatus> {
        self.hosts
            .values()
            .filter(|h| h.alive)
            .map(|h| h.status.clone())
            .collect()
    }

    /// Takes one round of answers (or the reason there were none) at `now`.
    pub fn record(&mut self, answers: Result<Vec<HostStatus>, String>, now: u64) {
        let statuses = match answers {
            Ok(s) => {
                self.problem = None;
                s
            }
            Err(e) => {
                self.problem = Some(e);
                Vec::new()
            }
        };
        let mut answered = BTreeSet::new();
        for status in merge_by_host(statuses) {
            answered.insert(status.host.clone());
            let calls = status.call_seconds.clone();
            let view = match self.hosts.remove(&status.host) {
                Some(prev) if prev.alive => rated(prev, status, now),
                _ => HostView {
                    host: status.host.clone(),
                    alive: true,
                    seen_ms: now,
                    status,
                    in_per_s: 0.0,
                    out_per_s: 0.0,
                    dlq_per_s: 0.0,
                    p50_ms: None,
                    p99_ms: None,
                    calls,
                    calls_since: HistogramSnapshot::default(),
                },
            };
            self.hosts.insert(view.host.clone(), view);
        }
        for (name, view) in &mut self.hosts {
            if !answered.contains(name) {
                view.alive = false;
                view.in_per_s = 0.0;
                view.out_per_s = 0.0;
                view.dlq_per_s = 0.0;
                view.p50_ms = None;
                view.p99_ms = None;
                view.calls_since = HistogramSnapshot::default();
            }
        }
        let live: Vec<&HostView> = self.hosts.values().filter(|h| h.alive).collect();
        let mut calls = HistogramSnapshot::default();
        for h in &live {
            calls = add(&calls, &h.calls_since);
        }
        let lags: Vec<u64> = live.iter().filter_map(|h| h.status.lag).collect();
        self.series.push_back(Point {
            t_ms: now,
            in_per_s: live.iter().map(|h| h.in_per_s).sum(),
            out_per_s: live.iter().map(|h| h.out_per_s).sum(),
            dlq_per_s: live.iter().map(|h| h.dlq_per_s).sum(),
            lag: (!lags.is_empty()).then(|| lags.iter().sum()),
            p50_ms: calls.quantile(0.5).map(|s| s * 1e3),
            p99_ms: calls.quantile(0.99).map(|s| s * 1e3),
            hosts: live.len(),
        });
        while self.series.len() > POINTS {
            self.series.pop_front();
        }
    }
}

/// A host's new view from its previous one and its new status.
fn rated(prev: HostView, status: HostStatus, now: u64) -> HostView {
    let secs = (now.saturating_sub(prev.seen_ms) as f64 / 1e3).max(0.001);
    // A counter that went down belongs to a new run of the host: all of it is new.
    let rate = |new: u64, old: u64| {
        let delta = if new >= old { new - old } else { new };
        delta as f64 / secs
    };
    let calls = status.call_seconds.clone();
    let calls_since = if calls.count >= prev.calls.count {
        calls.since(&prev.calls)
    } else {
        calls.clone()
    };
    HostView {
        host: status.host.clone(),
        alive: true,
        seen_ms: now,
        in_per_s: rate(status.events_in, prev.status.events_in),
        out_per_s: rate(status.outputs, prev.status.outputs),
        dlq_per_s: rate(status.dead_lettered, prev.status.dead_lettered),
        p50_ms: calls_since.quantile(0.5).map(|s| s * 1e3),
        p99_ms: calls_since.quantile(0.99).map(|s| s * 1e3),
        status,
        calls,
        calls_since,
    }
}

/// One status per host: in cluster mode every partition a host runs answers for itself, with
/// the host's shared counters; their partitions, lags and checkpoints are put together.
fn merge_by_host(statuses: Vec<HostStatus>) -> Vec<HostStatus> {
    let mut by_host: BTreeMap<String, HostStatus> = BTreeMap::new();
    for s in statuses {
        match by_host.get_mut(&s.host) {
            None => {
                by_host.insert(s.host.clone(), s);
            }
            Some(m) => {
                m.partitions.owned.extend(&s.partitions.owned);
                m.partitions.owned.sort_unstable();
                m.partitions.owned.dedup();
                m.lag = match (m.lag, s.lag) {
                    (Some(a), Some(b)) => Some(a + b),
                    (a, b) => a.or(b),
                };
                m.checkpoints.extend(s.checkpoints);
                m.checkpoints.sort_by_key(|c| (c.created_ms, c.id));
                let extra = m.checkpoints.len().saturating_sub(RECENT_CHECKPOINTS);
                m.checkpoints.drain(..extra);
                m.events_in = m.events_in.max(s.events_in);
                m.outputs = m.outputs.max(s.outputs);
                m.dropped = m.dropped.max(s.dropped);
                m.dead_lettered = m.dead_lettered.max(s.dead_lettered);
                if s.call_seconds.count > m.call_seconds.count {
                    m.call_seconds = s.call_seconds;
                }
                if s.last_checkpoint.as_ref().map(|c| c.created_ms)
                    > m.last_checkpoint.as_ref().map(|c| c.created_ms)
                {
                    m.last_checkpoint = s.last_checkpoint;
                }
                m.positions.extend(s.positions);
            }
        }
    }
    by_host.into_values().collect()
}

/// Two histograms added (an empty one takes the other's bounds).
fn add(a: &HistogramSnapshot, b: &HistogramSnapshot) -> HistogramSnapshot {
    if a.bounds.is_empty() {
        return b.clone();
    }
    if b.bounds.is_empty() || a.bounds != b.bounds {
        return a.clone();
    }
    HistogramSnapshot {
        bounds: a.bounds.clone(),
        cumulative: a
            .cumulative
            .iter()
            .zip(&b.cumulative)
            .map(|(x, y)| x + y)
            .collect(),
        count: a.count + b.count,
    }
}

/// Asks the hosts of `pipeline` for their status every [`PERIOD`], for as long as the console
/// runs.
pub async fn run(nats: Nats, pipeline: String, samples: Arc<Mutex<Samples>>) {
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let answers = ask_status(&nats, &pipeline).await;
        let now = now_ms();
        samples.lock().expect("samples").record(answers, now);
    }
}

async fn ask_status(nats: &Nats, pipeline: &str) -> Result<Vec<HostStatus>, String> {
    // Bounded as a whole: while NATS is unreachable the client's publish and flush wait for
    // the connection, and the hosts must show as unreachable rather than as last seen.
    let asked = crate::control::request(
        nats,
        pipeline,
        "status",
        serde_json::json!({}),
        Duration::from_millis(900),
        |_| {},
    );
    let Ok(answers) = tokio::time::timeout(Duration::from_secs(2), asked).await else {
        return Err(
            "NATS does not answer: the hosts cannot be asked until it does (the console reconnects by itself)"
                .into(),
        );
    };
    match answers {
        Ok(answers) => Ok(answers
            .into_iter()
            .filter_map(|a| match serde_json::from_value(a) {
                Ok(Answer::Ok(s)) => Some(s),
                _ => None,
            })
            .collect()),
        // No host answered: every host is gone, which the overview shows; not a problem of
        // the console's own.
        Err(e) if e.to_string().contains("no host of pipeline") => Ok(Vec::new()),
        Err(e) => Err(format!("{e:#}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::PartitionsStatus;

    fn status(host: &str, events: u64, calls: &[u64]) -> HostStatus {
        HostStatus {
            quota: None,
            shadow: None,
            pipeline: "p".into(),
            host: host.into(),
            partitions: PartitionsStatus {
                count: 4,
                owned: vec![0, 1],
            },
            uptime_ms: 1,
            plugin: None,
            probation: None,
            deployments: Vec::new(),
            positions: BTreeMap::new(),
            last_checkpoint: None,
            events_in: events,
            outputs: events,
            dropped: 0,
            dead_lettered: events / 10,
            lag: Some(5),
            call_seconds: HistogramSnapshot {
                bounds: vec![0.001, 0.01, 0.1],
                cumulative: calls.to_vec(),
                count: *calls.last().expect("calls"),
            },
            checkpoints: Vec::new(),
        }
    }

    #[test]
    fn rates_come_from_two_answers_and_a_silent_host_is_gone_then_back() {
        let mut s = Samples::default();
        s.record(Ok(vec![status("a", 100, &[0, 0, 0])]), 10_000);
        s.record(Ok(vec![status("a", 1_100, &[90, 99, 100])]), 12_000);
        let o = s.overview("p");
        let a = &o.hosts[0];
        assert!(a.alive);
        assert_eq!(a.in_per_s, 500.0, "1,000 events in 2 s");
        assert_eq!(a.dlq_per_s, 50.0);
        assert_eq!(a.p50_ms, Some(1.0), "half the calls under 1 ms");
        assert_eq!(a.p99_ms, Some(10.0), "99 of 100 under 10 ms");
        assert_eq!(o.series.last().expect("point").lag, Some(5));

        s.record(Ok(Vec::new()), 13_000);
        let o = s.overview("p");
        assert!(!o.hosts[0].alive, "a host that does not answer is gone");
        assert_eq!(o.hosts[0].seen_ms, 12_000);
        assert_eq!(o.series.last().expect("point").in_per_s, 0.0);

        // Back, restarted: its counters start again, and the first answer sets the base.
        s.record(Ok(vec![status("a", 50, &[0, 0, 0])]), 14_000);
        s.record(Ok(vec![status("a", 250, &[10, 10, 10])]), 15_000);
        let a = &s.overview("p").hosts[0];
        assert!(a.alive);
        assert_eq!(a.in_per_s, 200.0);
    }

    #[test]
    fn partitions_of_one_host_are_one_row() {
        let mut b = status("a", 100, &[1, 1, 1]);
        b.partitions.owned = vec![3];
        let merged = merge_by_host(vec![
            status("a", 100, &[1, 1, 1]),
            b,
            status("b", 7, &[0, 0, 0]),
        ]);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].partitions.owned, vec![0, 1, 3]);
        assert_eq!(merged[0].lag, Some(10), "lags add up");
        assert_eq!(
            merged[0].events_in, 100,
            "the host's counters are shared, not added"
        );
    }
}
