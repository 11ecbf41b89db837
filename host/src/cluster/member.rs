//! This host as a member of the cluster ([`Member`]): the partitions it owns, hands off, has
//! coming and lets cool after a failure (while another host runs them, see `assign`), and the
//! steps the supervisor loop takes with them:
//! settle what ended, take what is ready, look at the cluster and move partitions toward the
//! assignment, and leave.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::fence::LeaseFence;
use super::handoff::{self, Incoming, Step};
use super::leases::{self, Coordination};
use super::renewals::{Held, Renewals, Renewing};
use super::{assign, mono_ms};
use crate::config::PipelineConfig;
use crate::metrics::Metrics;
use crate::pipeline::{self, Fenced, HandOff, RunOptions, RunSummary};
use crate::transport::Nats;

/// How often the supervisor looks again while partitions move to or from this host. Each
/// look lists two KV buckets, which creates an ordered consumer on each of their streams at
/// the server: work every host adds to the cluster while it looks this often.
const MOVING: Duration = Duration::from_millis(500);

/// How often a host ready for a partition reads its lease (one KV get), and a host handing
/// partitions off looks whether their runs have ended.
pub(super) const TAKING: Duration = Duration::from_millis(100);

/// How long a partition whose run failed here cools before this host tries it again, after
/// its first failure; doubled at each failure after it, up to [`COOL_MAX`].
const COOL_FIRST: Duration = Duration::from_secs(10);

/// The longest cooling: how long a partition no live host can run (a store outage) waits at
/// most, once the cause is gone.
const COOL_MAX: Duration = Duration::from_secs(120);

/// A run that failed after running this long starts the count of failures over.
const HEALTHY: Duration = Duration::from_secs(300);

/// A partition this host owns and runs.
struct Owned {
    /// The lease, with what the renewal task keeps fresh.
    held: Held,
    /// How the run moves to another host.
    hand_off: Arc<HandOff>,
    /// The checkpoint the partition's pointer names, as this owner last wrote it (0: none).
    committed: Arc<AtomicU64>,
    task: JoinHandle<anyhow::Result<RunSummary>>,
    /// When this host took it.
    since: Instant,
}

impl Owned {
    /// Stops the run; `quick` for a hand-off to a host that restores the committed
    /// checkpoint, otherwise after the events in hand and a last checkpoint.
    fn stop(&self, quick: bool) {
        self.hand_off.quick.store(quick, Ordering::Release);
        let _ = self.held.stop.send(true);
    }

    /// Holds (or resumes) the run's checkpoints while its receiver catches up.
    fn hold(&self, hold: bool) {
        self.hand_off.hold.store(hold, Ordering::Release);
    }

    fn committed(&self) -> Option<u64> {
        Some(self.committed.load(Ordering::Acquire)).filter(|id| *id != 0)
    }
}

/// A partition whose run failed here.
struct Cooling {
    /// When it failed.
    since: Instant,
    /// Until when this host leaves it to others.
    until: Instant,
}

/// This host in the cluster.
pub(super) struct Member {
    cfg: Arc<PipelineConfig>,
    opts: RunOptions,
    metrics: Arc<Metrics>,
    pub(super) nats: Nats,
    coord: Coordination,
    renewals: Renewals,
    /// This host's name in the cluster (`<host>-<pid>-<n>`).
    me: String,
    owned: BTreeMap<u32, Owned>,
    /// Partitions stopping for a hand-off: their leases are still renewed until the run has
    /// ended (after a last checkpoint, when leaving), then released.
    handing_off: BTreeMap<u32, Owned>,
    /// Partitions planned to come here.
    incoming: Incoming,
    /// Since when each of this host's partitions has been planned to go.
    planned_since: BTreeMap<u32, Instant>,
    /// Partitions whose run failed here (not fenced), each waiting before this host takes it
    /// again. Meanwhile this host says it cannot run it, and others may.
    cooling: BTreeMap<u32, Cooling>,
    /// How many runs of each partition failed here in a row.
    failures: BTreeMap<u32, u32>,
}

impl Member {
    pub(super) fn new(
        cfg: Arc<PipelineConfig>,
        opts: RunOptions,
        metrics: Arc<Metrics>,
        nats: Nats,
        coord: Coordination,
        renewals: Renewals,
        me: String,
    ) -> Member {
        Member {
            cfg,
            opts,
            metrics,
            nats,
            coord,
            renewals,
            me,
            owned: BTreeMap::new(),
            handing_off: BTreeMap::new(),
            incoming: Incoming::default(),
            planned_since: BTreeMap::new(),
            cooling: BTreeMap::new(),
            failures: BTreeMap::new(),
        }
    }

    /// Says again which partitions this host wants, and which it cannot run for now (both
    /// expire like leases).
    pub(super) async fn renew_wants(&mut self) {
        self.incoming.renew(&self.coord).await;
        for p in self.cooling.keys() {
            if let Err(e) = self.coord.unfit(*p).await {
                tracing::warn!(partition = *p, "{e:#}");
            }
        }
    }

    /// Collects runs that ended, releases finished hand-offs, and takes the partitions on
    /// their way here that are free now.
    pub(super) async fn settle(&mut self) {
        self.reap().await;
        self.finish_hand_offs().await;
        self.metrics
            .partitions_owned
            .store(self.owned.len() as u64, Ordering::Relaxed);
        // Partitions on their way here: fetched ahead, then taken once free. Taking is one KV
        // create while the owner still holds the lease (it fails).
        self.incoming.poll(&self.cfg, &self.nats, &self.coord).await;
        let this = &*self;
        let takes = this
            .incoming
            .ready()
            .into_iter()
            .map(|p| async move { (p, this.start_partition(p, false).await) });
        let taken_all = futures::future::join_all(takes).await;
        for (p, taken) in taken_all {
            self.taken(p, taken).await;
        }
    }

    /// Looks at the cluster and moves partitions toward the assignment: hands off, step by
    /// step with the receiver, those planned to go; follows those planned to come; takes the
    /// free ones that are this host's. Returns how soon to look again (`usual` unless
    /// partitions are moving; `None` if the cluster could not be read).
    pub(super) async fn rebalance(&mut self, usual: Duration) -> Option<Duration> {
        let (hosts, leased) = match look(&self.coord, &self.me).await {
            Ok(seen) => seen,
            Err(e) => {
                tracing::warn!("cannot read the cluster's hosts and leases ({e:#}); retrying");
                return None;
            }
        };
        let count = self.cfg.partitions.count;
        let view = assign::View {
            hosts,
            owners: leased.owners,
            wants: (leased.wants.iter())
                .map(|(p, w)| (*p, w.host.clone()))
                .collect(),
            unfit: leased.unfit,
        };
        let moves = assign::moves(count, &view, &self.me);
        let (hosts, owners) = (view.hosts, view.owners);
        self.hand_off(&moves.release, &leased.wants);
        self.incoming
            .follow(&moves.incoming, &self.cfg, &self.nats, &self.coord)
            .await;
        // A partition that failed on every live host does not fail because of this one (the
        // checkpoint store out of reach, a plugin that cannot start): it is tried again after
        // the first cooling, however many times it failed here.
        for (p, cooling) in self.cooling.iter_mut() {
            let everywhere =
                (view.unfit.get(p)).is_some_and(|u| hosts.iter().all(|h| u.contains(h)));
            if everywhere {
                cooling.until = cooling.until.min(cooling.since + COOL_FIRST);
            }
        }
        let cooled: Vec<u32> = (self.cooling.iter())
            .filter(|(_, c)| Instant::now() >= c.until)
            .map(|(p, _)| *p)
            .collect();
        for p in cooled {
            self.cooling.remove(&p);
            self.coord.fit_again(p).await;
            tracing::info!(
                partition = p,
                "the partition has cooled: this host may run it again"
            );
        }
        for (p, owner) in &owners {
            if *owner == self.me && !self.owned.contains_key(p) && !self.handing_off.contains_key(p)
            {
                self.coord.release_if_mine(*p).await;
            }
        }
        for p in moves.acquire {
            if self.owned.contains_key(&p) || self.cooling.contains_key(&p) {
                continue;
            }
            let failover = owners.contains_key(&p);
            let taken = self.start_partition(p, failover).await;
            if matches!(taken, Ok(Some(_))) && moves.rescues.contains(&p) {
                let on: Vec<&String> = (view.unfit.get(&p).into_iter().flatten()).collect();
                tracing::info!(partition = p, failing_on = ?on, "took the partition beyond this host's share: its run failed on another host");
            }
            self.taken(p, taken).await;
        }
        let moving = !self.handing_off.is_empty()
            || !self.incoming.is_empty()
            || !self.planned_since.is_empty()
            || ((self.owned.len() + self.cooling.len()) as u32)
                < assign::share(count, &hosts, &self.me);
        Some(if moving { MOVING.min(usual) } else { usual })
    }

    /// Steps each partition planned to go toward its receiver (see `handoff`).
    fn hand_off(&mut self, release: &[(u32, String)], wants: &BTreeMap<u32, leases::Want>) {
        self.planned_since
            .retain(|p, _| release.iter().any(|(r, _)| r == p));
        for (p, o) in &self.owned {
            if !self.planned_since.contains_key(p) {
                o.hold(false);
            }
        }
        for (p, to) in release {
            let since = *self.planned_since.entry(*p).or_insert_with(Instant::now);
            let Some(o) = self.owned.get(p) else { continue };
            match handoff::owner_step(wants.get(p), to, o.committed(), since.elapsed()) {
                Step::Run => o.hold(false),
                Step::Hold => o.hold(true),
                Step::Go { warmed } => {
                    if warmed {
                        tracing::info!(partition = *p, to = %to, "handing the partition off to a host ready for it");
                    } else {
                        tracing::warn!(partition = *p, to = %to, "handing the partition off though its receiver has not fetched its checkpoint within {:?}", handoff::WARM_WAIT);
                    }
                    // At once, from the checkpoint the receiver fetched: it replays what this
                    // run did since (the outputs are duplicates by id) and answers `latest`
                    // queries once it has caught up. Released at the first step (every
                    // `TAKING`) that finds the run ended.
                    if let Some(o) = self.owned.remove(p) {
                        o.stop(warmed);
                        self.handing_off.insert(*p, o);
                    }
                    self.planned_since.remove(p);
                }
            }
        }
    }

    /// How long the supervisor waits before its next step.
    pub(super) fn next_wait(&self, look_every: Duration, renew_every: Duration) -> Duration {
        if !self.incoming.ready().is_empty() || !self.handing_off.is_empty() {
            TAKING
        } else {
            look_every.min(renew_every)
        }
    }

    /// Leaves the cluster: every partition hands off (last checkpoint, pointer, release), in
    /// parallel, with the leases renewed meanwhile (until `renewing` is dropped) so the last
    /// commits still count. Returns the host's summary.
    pub(super) async fn leave(mut self, renewing: Renewing) -> RunSummary {
        self.incoming.clear(&self.coord).await;
        for p in std::mem::take(&mut self.cooling).into_keys() {
            self.coord.fit_again(p).await;
        }
        tracing::info!(
            partitions = self.owned.len(),
            "leaving the cluster: handing partitions off"
        );
        for (p, o) in std::mem::take(&mut self.owned) {
            o.stop(false);
            self.handing_off.insert(p, o);
        }
        let lease = self.renewals.lease();
        let deadline = Instant::now() + Duration::from_secs(120);
        while !self.handing_off.is_empty() && Instant::now() < deadline {
            self.finish_hand_offs().await;
            tokio::time::sleep(Duration::from_millis(100).min(lease / 3)).await;
        }
        drop(renewing);
        for (p, o) in std::mem::take(&mut self.handing_off) {
            tracing::warn!(
                partition = p,
                "hand-off did not finish in 120 s; leaving its lease to lapse"
            );
            o.task.abort();
        }
        self.coord.leave().await;
        // Every partition run counted into the host's metrics: they are the host's summary.
        RunSummary::of(&self.metrics)
    }

    /// Records the outcome of taking partition `p`.
    async fn taken(&mut self, p: u32, taken: anyhow::Result<Option<Owned>>) {
        match taken {
            Ok(Some(o)) => {
                self.owned.insert(p, o);
                self.incoming.remove(p, &self.coord).await;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(partition = p, "cannot take the partition: {e:#}"),
        }
    }

    /// Takes partition `p` if it is free: lease, pointer claim, then a run of its own; `failover`
    /// when its last owner died rather than let go.
    async fn start_partition(&self, p: u32, failover: bool) -> anyhow::Result<Option<Owned>> {
        let (cfg, opts, coord, metrics) = (&self.cfg, &self.opts, &self.coord, &self.metrics);
        let sent = mono_ms();
        let Some(lease) = coord.acquire(p).await? else {
            return Ok(None);
        };
        let deadline_ms = Arc::new(AtomicU64::new(self.renewals.deadline_after(sent)));
        let claim = match coord.claim(&lease).await {
            Ok(c) => c,
            Err(e) => {
                coord.release(&lease).await;
                return Err(e);
            }
        };
        if failover {
            metrics.failovers.fetch_add(1, Ordering::Relaxed);
        }
        metrics.partitions_acquired.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            partition = p,
            epoch = lease.epoch,
            generation = claim.generation,
            checkpoint = ?claim.committed,
            "took the partition"
        );
        let last_committed = Arc::new(AtomicU64::new(claim.committed.unwrap_or(0)));
        let fence = Arc::new(LeaseFence {
            coord: coord.clone(),
            partition: p,
            epoch: lease.epoch,
            generation: claim.generation,
            pointer_revision: Arc::new(AtomicU64::new(claim.revision)),
            committed: claim.committed,
            last_committed: last_committed.clone(),
            deadline_ms: deadline_ms.clone(),
            closed: std::sync::OnceLock::new(),
        });
        let hand_off = Arc::new(HandOff::default());
        let run_opts = RunOptions {
            fence: Some(fence),
            hand_off: Some(hand_off.clone()),
            ..opts.clone()
        };
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(pipeline::run(
            cfg.for_partition(p),
            run_opts,
            rx,
            metrics.clone(),
        ));
        let held = Held {
            lease: Arc::new(tokio::sync::Mutex::new(lease)),
            deadline_ms,
            stop: Arc::new(stop),
        };
        self.renewals.add(p, held.clone());
        Ok(Some(Owned {
            held,
            hand_off,
            committed: last_committed,
            task,
            since: Instant::now(),
        }))
    }

    /// Collects runs that ended on their own, and gives up their leases.
    async fn reap(&mut self) {
        for (p, o) in take_finished(&mut self.owned) {
            let ran = o.since.elapsed();
            match o.task.await {
                Ok(Ok(_)) => {
                    self.failures.remove(&p);
                }
                Ok(Err(e)) if e.downcast_ref::<Fenced>().is_some() => {
                    tracing::warn!(partition = p, "partition stopped: {e:#}");
                }
                Ok(Err(e)) => {
                    let cool = self.cool(p, ran).await;
                    tracing::error!(
                        partition = p,
                        "partition failed: {e:#}; handing it back: another host may run it, and this one tries again in {cool:?}"
                    );
                }
                Err(e) => {
                    // A panic in the run (a defect: the plugin's traps are errors, not panics).
                    let cool = self.cool(p, ran).await;
                    tracing::error!(
                        partition = p,
                        "partition run ended abnormally: {e}; handing it back: another host may run it, and this one tries again in {cool:?}"
                    );
                }
            }
            // Nothing runs under its lease any more, which may still name this host (a fenced
            // run's renewal came late but no one took it): give it up, so the partition is free
            // at once rather than held until the server expires the key, if it ever does. Taken
            // by another host, the delete at this host's revision does nothing.
            self.renewals.remove(p);
            self.coord.release(&*o.held.lease.lock().await).await;
        }
    }

    /// Lets partition `p`, whose run failed after running `ran`, cool before this host tries
    /// it again, and says so, so that another host runs it meanwhile; returns for how long.
    async fn cool(&mut self, p: u32, ran: Duration) -> Duration {
        self.metrics
            .partition_failures
            .fetch_add(1, Ordering::Relaxed);
        let failures = self.failures.entry(p).or_insert(0);
        *failures = if ran >= HEALTHY { 1 } else { *failures + 1 };
        let cool = COOL_FIRST
            .saturating_mul(1 << (*failures - 1).min(16))
            .min(COOL_MAX);
        let since = Instant::now();
        self.cooling.insert(
            p,
            Cooling {
                since,
                until: since + cool,
            },
        );
        if let Err(e) = self.coord.unfit(p).await {
            tracing::warn!(partition = p, "{e:#}");
        }
        cool
    }

    /// Releases the leases of hand-offs whose run finished cleanly (its last checkpoint is
    /// committed), so another host takes the partition without waiting for expiry.
    async fn finish_hand_offs(&mut self) {
        for (p, o) in take_finished(&mut self.handing_off) {
            // Released, or (after an error) left to lapse: renewed no more either way.
            self.renewals.remove(p);
            match o.task.await {
                Ok(Ok(_)) => {
                    self.coord.release(&*o.held.lease.lock().await).await;
                    self.failures.remove(&p);
                    tracing::info!(partition = p, "partition handed off");
                }
                Ok(Err(e)) => {
                    tracing::warn!(partition = p, "partition stopped with an error: {e:#}")
                }
                Err(e) => tracing::warn!(partition = p, "partition task: {e}"),
            }
        }
    }
}

/// The live hosts (this one included), and what the leases bucket says.
async fn look(
    coord: &Coordination,
    me: &str,
) -> anyhow::Result<(BTreeSet<String>, leases::Leased)> {
    let (hosts, leases) = tokio::join!(coord.hosts(), coord.leases());
    let mut hosts = hosts?;
    hosts.insert(me.to_string());
    Ok((hosts, leases?))
}

/// Removes the partitions whose runs have ended from `runs`, and returns them.
fn take_finished(runs: &mut BTreeMap<u32, Owned>) -> Vec<(u32, Owned)> {
    let ended: Vec<u32> = runs
        .iter()
        .filter(|(_, o)| o.task.is_finished())
        .map(|(p, _)| *p)
        .collect();
    ended
        .into_iter()
        .filter_map(|p| runs.remove(&p).map(|o| (p, o)))
        .collect()
}
