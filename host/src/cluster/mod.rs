//! Cluster mode (`[cluster]`): every host runs the same `eddy run pipeline.toml`, and the
//! pipeline's partitions spread over the live hosts by themselves, with NATS JetStream as the
//! only coordinator.
//!
//! Owns the life of a host in the cluster: it registers (`leases`), keeps its heartbeat and
//! leases fresh on a task of their own (`renewals`), takes free partitions up to its share and
//! hands off those beyond it (`assign`; the supervisor's steps in `member`), fences each run
//! (`fence`), and runs each owned
//! partition as a pipeline run of its own ([`crate::pipeline::run`] on
//! [`PipelineConfig::for_partition`]): its own RocksDB, durable consumer, checkpoints (in the
//! store under `<pipeline>/p<N>/`) and plugin instance, so a partition moves without pausing
//! the others. The runs share the host's one engine, so a plugin version is loaded once.
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
//!   checkpoint interval plus the lease plus the recovery allowance);
//! - *a failing run* (its state directory, disk or store on this host): the host lets the
//!   partition cool and says so, and another host runs it beyond its share (`assign`).
//!
//! The operator's view and levers: `status` (`eddy cluster status`) and `reset` (`eddy
//! cluster reset`, for a partition whose every checkpoint is corrupt).
//!
//! Fencing: each run holds a [`crate::pipeline::Fence`]. It stops by itself once its lease may
//! have lapsed by its own clock (renewed less than `lease_ms` ago, minus a margin), before
//! publishing; and its checkpoints count only once the pointer moves by compare-and-set at
//! the revision it last wrote, before the input is acknowledged: a host paused past its lease
//! cannot commit over the new owner, acknowledge, or publish after it wakes.
//!
//! Never: decides ownership from a read; only a compare-and-set on a lease does.

mod assign;
mod fence;
mod handoff;
mod leases;
mod member;
mod renewals;
pub mod reset;
pub mod status;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::config::PipelineConfig;
use crate::metrics::Metrics;
use crate::pipeline::{RunOptions, RunSummary, Shutdown};
use crate::transport;

use leases::Coordination;
use member::Member;
use renewals::Renewals;

/// One process-wide origin for the monotonic deadlines the fences compare against.
fn mono_ms() -> u64 {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_millis() as u64
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
    let cfg = Arc::new(cfg);
    let lease = Duration::from_millis(cluster.lease_ms);
    // One engine for every partition this host runs: a plugin version is compiled and linked
    // once, not once per partition, and one thread ticks the epoch for all of them.
    let mut opts = opts;
    if opts.engine.is_none() {
        let cache = (opts.compile_cache.clone())
            .unwrap_or_else(|| crate::pipeline::default_cache_dir(&cfg.pipeline.state_dir));
        opts.engine = Some(Arc::new(crate::engine::Engine::new(Some(&cache))?));
    }
    let (mut member, renewing) = join(cfg.clone(), opts, lease, &shutdown, metrics).await?;
    let http = serve_queries(&cfg, &member.nats).await?;
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
            member.renew_wants().await;
        }
        member.settle().await;
        if looked.is_none_or(|at| at.elapsed() >= look_every) {
            looked = Some(Instant::now());
            if let Some(every) = member.rebalance(renew_every).await {
                look_every = every;
            }
        }
        wait = member.next_wait(look_every, renew_every);
    }
    let summary = member.leave(renewing).await;
    if let Some(http) = http {
        http.abort();
    }
    Ok(summary)
}

/// Joins the cluster: connects (waiting for NATS), registers this host, and starts the task
/// that renews its heartbeat and leases (running until the returned handle is dropped).
async fn join(
    cfg: Arc<PipelineConfig>,
    opts: RunOptions,
    lease: Duration,
    shutdown: &Shutdown,
    metrics: Arc<Metrics>,
) -> anyhow::Result<(Member, renewals::Renewing)> {
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
    let changed = coord.agree_on_lease(&nats, true).await?;
    // A bucket another host has just created may not take writes yet: the renewal task says
    // it is alive again at once.
    if let Err(e) = coord.heartbeat().await {
        tracing::warn!("first cluster heartbeat failed ({e:#}); retrying");
    }
    if let Err(e) = confirm_lease(&coord, &nats, changed, lease).await {
        coord.leave().await;
        return Err(e);
    }
    let renewals = Renewals::new(lease);
    let renewing = renewals.spawn(coord.clone(), metrics.clone());
    tracing::info!(pipeline = %cfg.pipeline.name, host = %me, partitions = cfg.partitions.count, "joined the cluster");
    let member = Member::new(cfg, opts, metrics, nats, coord, renewals, me);
    Ok((member, renewing))
}

/// Two hosts that started together with different leases may each have found no other host
/// and set its own. Once registered, a host leaves if the buckets no longer carry its lease,
/// or if it changed them while another host registered (that host may have checked them
/// before the change): the buckets then get back the lease they had.
async fn confirm_lease(
    coord: &Coordination,
    nats: &transport::Nats,
    changed: Vec<async_nats::jetstream::stream::Config>,
    lease: Duration,
) -> anyhow::Result<()> {
    coord.agree_on_lease(nats, false).await?;
    if changed.is_empty() {
        return Ok(());
    }
    let others = coord.other_hosts().await?;
    if others.is_empty() {
        return Ok(());
    }
    coord.put_back(nats, changed).await;
    anyhow::bail!(
        "{} registered while this host changed the cluster buckets to its cluster.lease_ms ({} ms); every host of a pipeline must use the same lease: start this host again once the others run with it, or stop them all and start them with one lease_ms",
        others.join(", "),
        lease.as_millis()
    )
}

/// HTTP queries for the whole pipeline, whichever partitions this host owns at the time.
async fn serve_queries(
    cfg: &PipelineConfig,
    nats: &transport::Nats,
) -> anyhow::Result<Option<JoinHandle<()>>> {
    let Some(listen) = &cfg.query.http else {
        return Ok(None);
    };
    let served = crate::query::http::serve(
        listen,
        &cfg.query,
        crate::query::http::Source::Cluster {
            pipeline: cfg.pipeline.name.clone(),
        },
        Some(nats.clone()),
    )
    .await?;
    Ok(Some(served))
}

/// The live hosts of a pipeline, each partition's owner and the live hosts that cannot run it
/// for now, and its pointer, for `eddy cluster status`.
pub(crate) async fn view(
    nats: &transport::Nats,
    cfg: &PipelineConfig,
    lease: Duration,
) -> anyhow::Result<(
    BTreeSet<String>,
    leases::Leased,
    BTreeMap<u32, leases::Pointer>,
)> {
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
    let mut leased = coord.leases().await?;
    leased.owners.retain(|_, h| hosts.contains(h));
    for unfit in leased.unfit.values_mut() {
        unfit.retain(|h| hosts.contains(h));
    }
    Ok((hosts, leased, coord.pointers(cfg.partitions.count).await))
}
