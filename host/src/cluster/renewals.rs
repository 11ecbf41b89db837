//! Keeps this host alive in the cluster on a schedule of its own: its heartbeat and the lease
//! of every partition running or draining here are renewed every third of the lease by a task
//! that does nothing else.
//!
//! The supervisor's step (taking and starting partitions, fetching checkpoints ahead, looking
//! at every lease) can take seconds on a busy machine; renewals waiting behind it let leases
//! lapse by the hosts' own clocks, and the fences stopped runs that were working.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::leases::{Coordination, Lease};
use super::mono_ms;
use crate::metrics::Metrics;

/// What is renewed for one partition, shared with its [`super::Owned`].
#[derive(Clone)]
pub(super) struct Held {
    /// The lease; locked for a renewal or the release, so the release names the revision
    /// the last renewal wrote.
    pub(super) lease: Arc<tokio::sync::Mutex<Lease>>,
    /// Until when (by [`mono_ms`]) the lease surely holds: what the run's fence checks.
    pub(super) deadline_ms: Arc<AtomicU64>,
    /// Stops the run (the lease was lost).
    pub(super) stop: Arc<watch::Sender<bool>>,
}

/// The renewal task; stopped when dropped (the host left, or its supervisor failed), after
/// which the leases lapse unless released.
pub(super) struct Renewing(JoinHandle<()>);

impl Drop for Renewing {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The partitions whose leases the renewal task renews.
#[derive(Clone)]
pub(super) struct Renewals {
    held: Arc<Mutex<BTreeMap<u32, Held>>>,
    lease_ms: u64,
}

impl Renewals {
    /// For leases of `lease`.
    pub(super) fn new(lease: Duration) -> Renewals {
        Renewals {
            held: Arc::default(),
            lease_ms: lease.as_millis() as u64,
        }
    }

    /// How long a lease lasts without renewal.
    pub(super) fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms)
    }

    /// Until when (by [`mono_ms`]) a lease written by a request sent at `sent` surely holds:
    /// the lease less a sixth of it, room for this host's clock running slow against the
    /// server's and for the time a run takes to see the deadline pass.
    pub(super) fn deadline_after(&self, sent: u64) -> u64 {
        sent + self.lease_ms - self.lease_ms / 6
    }

    /// Renews `p`'s lease from the next round on.
    pub(super) fn add(&self, p: u32, held: Held) {
        self.held().insert(p, held);
    }

    /// Stops renewing `p`'s lease (before it is released or left to lapse).
    pub(super) fn remove(&self, p: u32) {
        self.held().remove(&p);
    }

    fn held(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn holds(&self, p: u32) -> bool {
        self.held().contains_key(&p)
    }

    /// Starts the task: a heartbeat and a renewal of every lease every third of the lease,
    /// until the handle is dropped.
    pub(super) fn spawn(&self, coord: Coordination, metrics: Arc<Metrics>) -> Renewing {
        let renewals = self.clone();
        Renewing(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(renewals.lease_ms / 3));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let held: Vec<(u32, Held)> = renewals
                    .held()
                    .iter()
                    .map(|(p, h)| (*p, h.clone()))
                    .collect();
                let (beat, ()) =
                    tokio::join!(coord.heartbeat(), renewals.renew(&coord, &metrics, held));
                if let Err(e) = beat {
                    tracing::warn!("cluster heartbeat failed ({e:#}); retrying");
                }
            }
        }))
    }

    /// Renews every lease in `held` at once (one round trip however many partitions: a slow
    /// renewal of one must not let the others lapse); a lost one stops its run.
    async fn renew(&self, coord: &Coordination, metrics: &Metrics, held: Vec<(u32, Held)>) {
        let renewals = held.into_iter().map(|(p, h)| async move {
            let mut lease = h.lease.lock().await;
            // Released meanwhile: renewing would fail and read as a lease lost.
            if !self.holds(p) {
                return;
            }
            let sent = mono_ms();
            let started = Instant::now();
            match coord.renew(&mut lease).await {
                Ok(true) => {
                    metrics
                        .lease_renewal_seconds
                        .observe(started.elapsed().as_secs_f64());
                    h.deadline_ms
                        .store(self.deadline_after(sent), Ordering::Release);
                }
                Ok(false) => {
                    tracing::warn!(
                        partition = p,
                        "lease lost to another host; stopping the partition"
                    );
                    // Its fence fails from now on: the run stops at its next publish or
                    // commit, acknowledging nothing more.
                    h.deadline_ms.store(0, Ordering::Release);
                    let _ = h.stop.send(true);
                }
                Err(e) => {
                    tracing::warn!(partition = p, "lease renewal failed ({e:#}); retrying")
                }
            }
        });
        futures::future::join_all(renewals).await;
    }
}
