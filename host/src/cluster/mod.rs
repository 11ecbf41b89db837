//! Cluster mode (`[cluster]`): every host runs the same `eddy run pipeline.toml`, and the
//! pipeline's partitions spread over the live hosts by themselves, with NATS JetStream as the
//! only coordinator.
//!
//! Owns the life of a host in the cluster: it registers (`leases`), keeps its heartbeat and
//! leases fresh on a task of their own (`renewals`), takes free
//! partitions up to its share and hands off those beyond it (`assign`), and runs each owned
//! partition as a pipeline run of its own ([`crate::pipeline::run`] on
//! [`PipelineConfig::for_partition`]): its own RocksDB, durable consumer, checkpoints (in the
//! store under `<pipeline>/p<N>/`) and plugin instance, so a partition moves without pausing
//! the others.
//!
//! Moving a partition:
//! - *rebalance* (a host joined): the receiving host fetches the partition's committed
//!   checkpoint into its local cache while the owner runs on (cutting no new checkpoint
//!   meanwhile), then says it wants the partition; the owner stops the run at once (no last
//!   checkpoint) and releases the lease; the receiver, watching the lease, takes it, restores
//!   from its cache and replays from the committed position (the replayed outputs are
//!   duplicates by id, dropped by the output stream; `latest` queries wait until the replay
//!   has caught up). The partition pauses for the stop, the take and the start, not for a
//!   download or a checkpoint. A receiver that has not warmed up within
//!   [`crate::pipeline::WARM_WAIT`] gets the partition anyway, after the owner's last
//!   checkpoint;
//! - *leaving* (this host stops): each run drains, takes its last checkpoint and commits it
//!   to the partition's pointer, then the lease is released and a survivor takes it;
//! - *failover* (a host died): its leases expire after `cluster.lease_ms`; a survivor takes
//!   the partition, claims its pointer, restores the committed checkpoint from the store and
//!   replays from its input position. Replayed outputs carry the same message ids, so the
//!   output stream's duplicate window drops them (checked at start: the window must cover a
//!   checkpoint interval plus the lease plus the recovery allowance).
//!
//! Fencing: each run holds a [`crate::pipeline::Fence`]. It stops by itself once its lease may
//! have lapsed by its own clock (renewed less than `lease_ms` ago, minus a margin), before
//! publishing; and its checkpoints count only once the pointer moves by compare-and-set at
//! the revision it last wrote, before the input is acknowledged: a host paused past its lease
//! cannot commit over the new owner, acknowledge, or publish after it wakes.
//!
//! Never: decides ownership from a read; only a compare-and-set on a lease does.

mod assign;
mod handoff;
mod leases;
mod renewals;
pub mod status;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::PipelineConfig;
use crate::metrics::Metrics;
use crate::pipeline::{self, Fence, Fenced, HandOff, RunOptions, RunSummary, Shutdown};
use crate::transport;

use handoff::{Incoming, Step};
use leases::Coordination;
use renewals::{Held, Renewals};

/// One process-wide origin for the monotonic deadlines the fences compare against.
fn mono_ms() -> u64 {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// The fence of one owned partition.
struct LeaseFence {
    coord: Coordination,
    partition: u32,
    epoch: u64,
    /// The pointer's revision this owner last wrote.
    pointer_revision: Arc<AtomicU64>,
    /// The checkpoint the pointer named when this owner claimed it.
    committed: Option<u64>,
    /// The checkpoint the pointer names now, as this owner last wrote it (0: none).
    last_committed: Arc<AtomicU64>,
    /// Until when (by [`mono_ms`]) the lease surely holds.
    deadline_ms: Arc<AtomicU64>,
}

impl Fence for LeaseFence {
    fn check(&self) -> Result<(), String> {
        let now = mono_ms();
        let deadline = self.deadline_ms.load(Ordering::Acquire);
        if now < deadline {
            Ok(())
        } else {
            Err(format!(
                "the lease on partition {} was last renewed too long ago ({} ms past its margin); another host may own it",
                self.partition,
                now - deadline
            ))
        }
    }

    fn commit(&self, id: u64) -> BoxFuture<'static, Result<(), String>> {
        let (coord, p, epoch) = (self.coord.clone(), self.partition, self.epoch);
        let revision = self.pointer_revision.clone();
        let deadline = self.deadline_ms.clone();
        let last = self.last_committed.clone();
        async move {
            if mono_ms() >= deadline.load(Ordering::Acquire) {
                return Err(format!("the lease on partition {p} may have lapsed"));
            }
            let at = revision.load(Ordering::Acquire);
            match coord.write_pointer(p, Some(id), epoch, at).await {
                Ok(new) => {
                    revision.store(new, Ordering::Release);
                    last.store(id, Ordering::Release);
                    Ok(())
                }
                Err(e) => Err(format!("{e:#}")),
            }
        }
        .boxed()
    }

    fn committed(&self) -> Option<u64> {
        self.committed
    }

    fn id_base(&self) -> u64 {
        self.epoch << 32
    }
}

/// A partition this host owns and runs.
struct Owned {
    /// The lease, with what the renewal task keeps fresh.
    held: Held,
    /// How the run moves to another host.
    hand_off: Arc<HandOff>,
    /// The checkpoint the partition's pointer names, as this owner last wrote it (0: none).
    committed: Arc<AtomicU64>,
    task: JoinHandle<anyhow::Result<RunSummary>>,
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

/// Runs `cfg` as one host of its cluster until `shutdown`, then hands every partition off.
pub async fn run(
    cfg: PipelineConfig,
    opts: RunOptions,
    mut shutdown: Shutdown,
    metrics: Arc<Metrics>,
) -> anyhow::Result<RunSummary> {
    let cluster = cfg
        .cluster
        .clone()
        .ok_or_else(|| anyhow::anyhow!("the pipeline has no [cluster] section"))?;
    let lease = Duration::from_millis(cluster.lease_ms);
    let cfg = Arc::new(cfg);
    let nats = transport::connect_waiting(
        &cfg.nats,
        &format!("eddy:{}:cluster", cfg.pipeline.name),
        &mut shutdown.clone(),
    )
    .await?;
    let me = format!(
        "{}-{}-{}",
        cfg.partitions.host_name(),
        std::process::id(),
        crate::checkpoint::now_ms() % 100_000
    );
    let replicas = transport::replicas(&nats);
    let coord = Coordination::open(&nats, &cfg.pipeline.name, &me, lease, replicas).await?;
    // A bucket another host has just created may not take writes yet: the renewal task says
    // it is alive again at once.
    if let Err(e) = coord.heartbeat().await {
        tracing::warn!("first cluster heartbeat failed ({e:#}); retrying");
    }
    let renewals = Renewals::new(cluster.lease_ms);
    let renewing = renewals.spawn(coord.clone(), metrics.clone());
    tracing::info!(pipeline = %cfg.pipeline.name, host = %me, partitions = cfg.partitions.count, "joined the cluster");
    // HTTP queries for the whole pipeline, whichever partitions this host owns at the time.
    let http = match &cfg.query.http {
        Some(listen) => Some(
            crate::query::http::serve(
                listen,
                &cfg.query,
                crate::query::http::Source::Cluster {
                    pipeline: cfg.pipeline.name.clone(),
                },
                Some(nats.clone()),
            )
            .await?,
        ),
        None => None,
    };

    let mut owned: BTreeMap<u32, Owned> = BTreeMap::new();
    // Partitions stopping for a hand-off: their leases are still renewed until the run has
    // ended (after a last checkpoint, when leaving), then released.
    let mut handing_off: BTreeMap<u32, Owned> = BTreeMap::new();
    // Partitions planned to come here, and since when each of this host's partitions has
    // been planned to go.
    let mut incoming = Incoming::default();
    let mut planned_since: BTreeMap<u32, Instant> = BTreeMap::new();
    // A partition whose run failed (not fenced) waits before this host takes it again.
    let mut cooling: BTreeMap<u32, Instant> = BTreeMap::new();
    // Leases and the heartbeat are renewed by a task of their own (`renewals`); wants every
    // third of the lease here, and the hosts and leases looked at as often. While partitions
    // move (this host hands some off, owns fewer than its share, or has some coming) it looks
    // every `MOVING` instead, and while it is ready for a partition or one is stopping here
    // it steps every `TAKING`, so a partition is taken the moment it is let go.
    let renew_every = lease / 3;
    let mut renewed: Option<Instant> = None;
    let mut looked: Option<Instant> = None;
    let mut look_every = renew_every;
    let mut wait = Duration::ZERO;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
            }
        }
        if *shutdown.borrow() {
            break;
        }
        if renewed.is_none_or(|at| at.elapsed() >= renew_every) {
            renewed = Some(Instant::now());
            incoming.renew(&coord).await;
        }
        reap(&mut owned, &mut cooling, &coord, &renewals).await;
        finish_hand_offs(&coord, &mut handing_off, &renewals).await;
        metrics
            .partitions_owned
            .store(owned.len() as u64, Ordering::Relaxed);

        // Partitions on their way here: fetched ahead, then taken once free.
        incoming.poll(&cfg, &nats, &coord).await;
        // Taking is one KV create while the owner still holds the lease (it fails).
        let takes = incoming.ready().into_iter().map(|p| {
            let (cfg, opts, coord, metrics, renewals) = (&cfg, &opts, &coord, &metrics, &renewals);
            async move {
                let r = start_partition(cfg, opts, coord, metrics, renewals, p, false).await;
                (p, r)
            }
        });
        for (p, taken) in futures::future::join_all(takes).await {
            match taken {
                Ok(Some(o)) => {
                    owned.insert(p, o);
                    incoming.remove(p, &coord).await;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(partition = p, "cannot take the partition: {e:#}"),
            }
        }

        if looked.is_none_or(|at| at.elapsed() >= look_every) {
            looked = Some(Instant::now());
            match look(&coord, &me).await {
                Ok((hosts, owners, wants)) => {
                    let moves = assign::moves(
                        cfg.partitions.count,
                        &hosts,
                        &owners,
                        &wants.iter().map(|(p, w)| (*p, w.host.clone())).collect(),
                        &me,
                    );
                    // Hand-offs, step by step with the receiver (see `handoff`).
                    planned_since.retain(|p, _| moves.release.iter().any(|(r, _)| r == p));
                    for (p, o) in &owned {
                        if !planned_since.contains_key(p) {
                            o.hold(false);
                        }
                    }
                    for (p, to) in &moves.release {
                        let since = *planned_since.entry(*p).or_insert_with(Instant::now);
                        let Some(o) = owned.get(p) else { continue };
                        match handoff::owner_step(wants.get(p), to, o.committed(), since.elapsed())
                        {
                            Step::Run => o.hold(false),
                            Step::Hold => o.hold(true),
                            Step::Go { warmed } => {
                                if warmed {
                                    tracing::info!(partition = *p, to = %to, "handing the partition off to a host ready for it");
                                } else {
                                    tracing::warn!(partition = *p, to = %to, "handing the partition off though its receiver has not fetched its checkpoint within {:?}", handoff::WARM_WAIT);
                                }
                                // At once, from the checkpoint the receiver fetched: it
                                // replays what this run did since (the outputs are duplicates
                                // by id) and answers `latest` queries once it has caught up.
                                // Released at the first step (every `TAKING`) that finds the
                                // run ended.
                                if let Some(o) = owned.remove(p) {
                                    o.stop(warmed);
                                    handing_off.insert(*p, o);
                                }
                                planned_since.remove(p);
                            }
                        }
                    }
                    incoming.follow(&moves.incoming, &cfg, &nats, &coord).await;
                    cooling.retain(|_, at| at.elapsed() < Duration::from_secs(10));
                    for p in moves.acquire {
                        if owned.contains_key(&p) || cooling.contains_key(&p) {
                            continue;
                        }
                        let failover = owners.contains_key(&p);
                        match start_partition(&cfg, &opts, &coord, &metrics, &renewals, p, failover)
                            .await
                        {
                            Ok(Some(o)) => {
                                owned.insert(p, o);
                                incoming.remove(p, &coord).await;
                            }
                            Ok(None) => {}
                            Err(e) => {
                                tracing::warn!(partition = p, "cannot take the partition: {e:#}")
                            }
                        }
                    }
                    let moving = !handing_off.is_empty()
                        || !incoming.is_empty()
                        || !planned_since.is_empty()
                        || (owned.len() as u32) < assign::share(cfg.partitions.count, &hosts, &me);
                    look_every = if moving {
                        MOVING.min(renew_every)
                    } else {
                        renew_every
                    };
                }
                Err(e) => {
                    tracing::warn!("cannot read the cluster's hosts and leases ({e:#}); retrying");
                }
            }
        }
        wait = if !incoming.ready().is_empty() || !handing_off.is_empty() {
            TAKING
        } else {
            look_every.min(renew_every)
        };
    }
    incoming.clear(&coord).await;

    // Stopping: every partition hands off (last checkpoint, pointer, release), in parallel,
    // with the leases renewed meanwhile so the last commits still count.
    tracing::info!(
        partitions = owned.len(),
        "leaving the cluster: handing partitions off"
    );
    for (p, o) in std::mem::take(&mut owned) {
        o.stop(false);
        handing_off.insert(p, o);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while !handing_off.is_empty() && Instant::now() < deadline {
        finish_hand_offs(&coord, &mut handing_off, &renewals).await;
        tokio::time::sleep(Duration::from_millis(100).min(lease / 3)).await;
    }
    drop(renewing);
    for (p, o) in handing_off {
        tracing::warn!(
            partition = p,
            "hand-off did not finish in 120 s; leaving its lease to lapse"
        );
        o.task.abort();
    }
    coord.leave().await;
    if let Some(http) = http {
        http.abort();
    }
    // Every partition run counted into the host's metrics: they are the host's summary.
    Ok(RunSummary {
        events_in: metrics.events_in.load(Ordering::Relaxed),
        outputs: metrics.outputs.load(Ordering::Relaxed),
        dropped: metrics.dropped.load(Ordering::Relaxed),
        dead_lettered: metrics.dead_lettered_total(),
        checkpoints: metrics.checkpoints.load(Ordering::Relaxed),
    })
}

/// The live hosts (this one included), each partition's owner, and each want.
async fn look(
    coord: &Coordination,
    me: &str,
) -> anyhow::Result<(
    BTreeSet<String>,
    BTreeMap<u32, String>,
    BTreeMap<u32, leases::Want>,
)> {
    let (hosts, leases) = tokio::join!(coord.hosts(), coord.leases());
    let mut hosts = hosts?;
    hosts.insert(me.to_string());
    let (owners, wants) = leases?;
    Ok((hosts, owners, wants))
}

/// Takes partition `p` if it is free: lease, pointer claim, then a run of its own; `failover`
/// when its last owner died rather than let go.
async fn start_partition(
    cfg: &Arc<PipelineConfig>,
    opts: &RunOptions,
    coord: &Coordination,
    metrics: &Arc<Metrics>,
    renewals: &Renewals,
    p: u32,
    failover: bool,
) -> anyhow::Result<Option<Owned>> {
    let sent = mono_ms();
    let Some(lease) = coord.acquire(p).await? else {
        return Ok(None);
    };
    let deadline_ms = Arc::new(AtomicU64::new(renewals.deadline_after(sent)));
    let (committed, pointer_revision) = match coord.claim(&lease).await {
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
        checkpoint = ?committed,
        "took the partition"
    );
    let last_committed = Arc::new(AtomicU64::new(committed.unwrap_or(0)));
    let fence = Arc::new(LeaseFence {
        coord: coord.clone(),
        partition: p,
        epoch: lease.epoch,
        pointer_revision: Arc::new(AtomicU64::new(pointer_revision)),
        committed,
        last_committed: last_committed.clone(),
        deadline_ms: deadline_ms.clone(),
    });
    let hand_off = Arc::new(HandOff::default());
    let run_opts = RunOptions {
        fence: Some(fence),
        hand_off: Some(hand_off.clone()),
        compile_cache: opts
            .compile_cache
            .clone()
            .or_else(|| Some(cfg.pipeline.state_dir.join(".compiled"))),
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
    renewals.add(p, held.clone());
    Ok(Some(Owned {
        held,
        hand_off,
        committed: last_committed,
        task,
    }))
}

/// How often the supervisor looks again while partitions move to or from this host. Each
/// look lists two KV buckets, which creates an ordered consumer on each of their streams at
/// the server: work every host adds to the cluster while it looks this often.
const MOVING: Duration = Duration::from_millis(500);

/// How often a host ready for a partition reads its lease (one KV get), and a host handing
/// partitions off looks whether their runs have ended.
const TAKING: Duration = Duration::from_millis(100);

/// Collects runs that ended on their own, and gives up their leases.
async fn reap(
    owned: &mut BTreeMap<u32, Owned>,
    cooling: &mut BTreeMap<u32, Instant>,
    coord: &Coordination,
    renewals: &Renewals,
) {
    let ended: Vec<u32> = owned
        .iter()
        .filter(|(_, o)| o.task.is_finished())
        .map(|(p, _)| *p)
        .collect();
    for p in ended {
        let Some(o) = owned.remove(&p) else { continue };
        match o.task.await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) if e.downcast_ref::<Fenced>().is_some() => {
                tracing::warn!(partition = p, "partition stopped: {e:#}");
            }
            Ok(Err(e)) => {
                tracing::error!(partition = p, "partition failed: {e:#}; handing it back");
                cooling.insert(p, Instant::now());
            }
            Err(_) => tracing::warn!(partition = p, "partition stopped (lease lost)"),
        }
        // Nothing runs under its lease any more, which may still name this host (a fenced
        // run's renewal came late but no one took it): give it up, so the partition is free
        // at once rather than held until the server expires the key, if it ever does. Taken
        // by another host, the delete at this host's revision does nothing.
        renewals.remove(p);
        coord.release(&*o.held.lease.lock().await).await;
    }
}

/// Releases the leases of hand-offs whose run finished cleanly (its last checkpoint is
/// committed), so another host takes the partition without waiting for expiry.
async fn finish_hand_offs(
    coord: &Coordination,
    handing_off: &mut BTreeMap<u32, Owned>,
    renewals: &Renewals,
) {
    let done: Vec<u32> = handing_off
        .iter()
        .filter(|(_, o)| o.task.is_finished())
        .map(|(p, _)| *p)
        .collect();
    for p in done {
        let Some(o) = handing_off.remove(&p) else {
            continue;
        };
        // Released, or (after an error) left to lapse: renewed no more either way.
        renewals.remove(p);
        match o.task.await {
            Ok(Ok(_)) => {
                coord.release(&*o.held.lease.lock().await).await;
                tracing::info!(partition = p, "partition handed off");
            }
            Ok(Err(e)) => tracing::warn!(partition = p, "partition stopped with an error: {e:#}"),
            Err(e) => tracing::warn!(partition = p, "partition task: {e}"),
        }
    }
}

/// The live hosts of a pipeline, each partition's owner, and its pointer, for `eddy cluster
/// status`.
pub(crate) async fn view(
    nats: &transport::Nats,
    cfg: &PipelineConfig,
) -> anyhow::Result<(
    BTreeSet<String>,
    BTreeMap<u32, String>,
    BTreeMap<u32, leases::Pointer>,
)> {
    let lease = Duration::from_millis(cfg.cluster.as_ref().map_or(6_000, |c| c.lease_ms));
    let replicas = transport::replicas(nats);
    let coord = Coordination::open(nats, &cfg.pipeline.name, "eddy-cli", lease, replicas).await?;
    // One look cannot watch heartbeats change: a host counts as live if the server stamped
    // its heartbeat within two leases or 30 s, whichever is longer (room for this machine's
    // clock to differ, and for a host slowed by load, which its peers judge by themselves),
    // and a partition as owned only by such a host: one whose key the server failed to
    // expire stops showing as an owner.
    let hosts = coord
        .recent_hosts((2 * lease).max(Duration::from_secs(30)))
        .await?;
    let mut owners = coord.owners().await?;
    owners.retain(|_, h| hosts.contains(h));
    Ok((hosts, owners, coord.pointers(cfg.partitions.count).await))
}
