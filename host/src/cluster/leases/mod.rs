//! The three NATS KV buckets a cluster of hosts coordinates through, per pipeline:
//!
//! - `eddy-<pipeline>-hosts`: a key per live host, rewritten every third of the lease; the
//!   bucket's `max_age` (the lease) removes a host that stopped writing;
//! - `eddy-<pipeline>-leases`: a key per owned partition (`p<N>`), taken by `create` (only if
//!   absent), renewed by `update` at the revision the owner last wrote, expiring with the
//!   bucket's `max_age` when not renewed. The revision of the `create` is the owner's epoch.
//!   Beside them, `w<N>` keys: a host that has fetched partition N's checkpoint and waits for
//!   its owner to hand it over (see `assign`); and `u<N>.<host>` keys: a host whose run of
//!   partition N failed and that lets it cool, so that another host runs it meanwhile;
//! - `eddy-<pipeline>-pointers`: a key per partition naming its committed checkpoint and the
//!   epoch of the owner that committed it, moved only by compare-and-set. A new owner claims
//!   it (writes its epoch) before restoring; an earlier owner's next commit then fails. The
//!   claim also counts the partition's owners (its *generation*): each owner gives its
//!   checkpoints ids from `generation << 32` up, so ids grow from owner to owner and two
//!   owners never write the same names. (The epoch cannot serve there: it is a revision of
//!   the whole leases bucket, which every renewal of every partition moves, and passes 2^32
//!   within a year at a few hundred partitions.)
//!
//! Ownership is decided by the result of a compare-and-set, never by a read (reads may come
//! from a stale replica, ADR-8).
//!
//! Expiry by `max_age` is the usual way a dead host's keys go, but not the only one: a
//! replica does not always expire on time (nats-server issues 3653, 4754), and a key that
//! never expires would keep its partitions from every survivor. So each host also watches
//! the revisions itself ([`Sightings`]): a heartbeat whose revision has not changed for a
//! whole lease is a dead host, and a lease key unchanged for a whole lease is taken by an
//! `update` at the revision seen. That is safe by the owner's own clock: it renewed at that
//! revision no later than it was first seen here, and its fence stops it a sixth of a lease
//! before the lease ends.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::anyhow;
use async_nats::jetstream::kv;
use bytes::Bytes;
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};

use crate::transport::Nats;

mod agreement;
mod pointers;

/// Attempts at withdrawing a want before it is left to lapse.
const UNWANT_TRIES: u32 = 4;

/// A bucket name for `pipeline` and `what` (KV names allow letters, digits, `-` and `_`).
fn bucket_name(pipeline: &str, what: &str) -> String {
    let clean: String = pipeline
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("eddy-{clean}-{what}")
}

async fn bucket(
    nats: &Nats,
    name: &str,
    max_age: Duration,
    replicas: usize,
) -> anyhow::Result<kv::Store> {
    crate::transport::kv_bucket(
        nats,
        kv::Config {
            bucket: name.to_string(),
            history: 1,
            max_age,
            num_replicas: replicas,
            ..Default::default()
        },
    )
    .await
}

/// The keys of `bucket` (`what` names it in errors).
async fn keys_of(bucket: &kv::Store, what: &str) -> anyhow::Result<Vec<String>> {
    let keys = (bucket.keys().await).map_err(|e| anyhow!("list {what}: {e}"))?;
    keys.try_collect()
        .await
        .map_err(|e| anyhow!("list {what}: {e}"))
}

/// A partition held by this host.
#[derive(Debug, Clone)]
pub(crate) struct Lease {
    /// The partition.
    pub(crate) partition: u32,
    /// The revision of the `create` that took it: grows from owner to owner.
    pub(crate) epoch: u64,
    /// The revision this host last wrote (what the next renewal must match).
    pub(crate) revision: u64,
}

/// What a lease key holds.
#[derive(Debug, Serialize, Deserialize)]
struct LeaseValue {
    host: String,
    epoch: u64,
}

/// What a want key holds: the host waiting for the partition, and the checkpoint it has
/// fetched for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Want {
    pub(crate) host: String,
    pub(crate) checkpoint: Option<u64>,
}

/// What the leases bucket says, at one look.
#[derive(Debug, Default)]
pub(crate) struct Leased {
    /// Each leased partition's owner.
    pub(crate) owners: BTreeMap<u32, String>,
    /// Each wanted partition's want.
    pub(crate) wants: BTreeMap<u32, Want>,
    /// The hosts whose run of a partition failed and that let it cool.
    pub(crate) unfit: BTreeMap<u32, BTreeSet<String>>,
}

/// A partition's pointer as its new owner claimed it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Claim {
    /// The checkpoint it names (none: the partition starts empty).
    pub(crate) committed: Option<u64>,
    /// Its revision, for the owner's next commit.
    pub(crate) revision: u64,
    /// The owner's generation (see [`Pointer::generation`]).
    pub(crate) generation: u64,
}

/// What a pointer key holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Pointer {
    /// The committed checkpoint (none yet: the partition starts empty).
    pub(crate) checkpoint: Option<u64>,
    /// The epoch of the owner that wrote it last.
    pub(crate) epoch: u64,
    /// That owner.
    pub(crate) host: String,
    /// That owner's generation: its checkpoint ids start at `generation << 32` (0 in pointers
    /// written before generations were counted, whose owners started theirs at the epoch's).
    #[serde(default)]
    pub(crate) generation: u64,
}

/// The generation of the owner that claims a partition whose pointer is `current`: above
/// the last owner's. A pointer that names no generation was written by an owner whose ids
/// started at its epoch's: then above that epoch (if it fit an id's upper half) and the
/// committed checkpoint's.
fn next_generation(current: Option<&Pointer>) -> anyhow::Result<u64> {
    let after = current.map_or(0, |c| {
        let epoch = if c.generation == 0 && c.epoch < 1 << 32 {
            c.epoch
        } else {
            0
        };
        c.generation
            .max(epoch)
            .max(c.checkpoint.map_or(0, |id| id >> 32))
            .saturating_add(1)
    });
    // Ids are `generation << 32` plus the owner's count: 2^32 claims of one partition.
    if after >= 1 << 32 {
        anyhow::bail!("partition ids are exhausted: generation {after} does not fit 32 bits");
    }
    Ok(after.max(1))
}

/// Since when this host has seen each key at its current revision.
#[derive(Default)]
struct Sightings(Mutex<HashMap<String, (u64, Instant)>>);

impl Sightings {
    /// Records `key` at `revision`; returns how long it has stood at that revision (zero on
    /// the first sighting or a change).
    fn unchanged_for(&self, key: &str, revision: u64) -> Duration {
        let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match seen.get(key) {
            Some((r, since)) if *r == revision => now - *since,
            _ => {
                seen.insert(key.to_string(), (revision, now));
                Duration::ZERO
            }
        }
    }

    /// The revision of `key` if it has stood unchanged for at least `at_least`.
    fn stale(&self, key: &str, at_least: Duration) -> Option<u64> {
        let seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        seen.get(key)
            .filter(|(_, since)| since.elapsed() >= at_least)
            .map(|(r, _)| *r)
    }

    /// Forgets the keys starting with `prefix` that are not `present`: a host that left (its
    /// heartbeat gone from the bucket), so that a cluster whose hosts restart for months does
    /// not keep a sighting of every process it ever saw.
    fn keep_only(&self, prefix: &str, present: &BTreeSet<String>) {
        let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        seen.retain(|k, _| !k.starts_with(prefix) || present.contains(k));
    }
}

/// The coordination buckets of one pipeline.
#[derive(Clone)]
pub(crate) struct Coordination {
    hosts: kv::Store,
    leases: kv::Store,
    pointers: kv::Store,
    /// How long a host or lease lives unrenewed.
    lease: Duration,
    seen: Arc<Sightings>,
    /// This host's id in the buckets.
    pub(crate) me: String,
}

impl Coordination {
    /// Opens (or creates) the buckets; `lease` is how long a host or lease lives unrenewed.
    pub(crate) async fn open(
        nats: &Nats,
        pipeline: &str,
        me: &str,
        lease: Duration,
        replicas: usize,
    ) -> anyhow::Result<Coordination> {
        Ok(Coordination {
            hosts: bucket(nats, &bucket_name(pipeline, "hosts"), lease, replicas).await?,
            leases: bucket(nats, &bucket_name(pipeline, "leases"), lease, replicas).await?,
            pointers: bucket(
                nats,
                &bucket_name(pipeline, "pointers"),
                Duration::ZERO,
                replicas,
            )
            .await?,
            lease,
            seen: Arc::default(),
            me: me.to_string(),
        })
    }

    /// Says this host is alive (again).
    pub(crate) async fn heartbeat(&self) -> anyhow::Result<()> {
        self.hosts
            .put(
                &self.me,
                Bytes::from(crate::checkpoint::now_ms().to_string()),
            )
            .await
            .map(drop)
            .map_err(|e| anyhow!("heartbeat: {e}"))
    }

    /// Leaves: other hosts stop counting this one at once.
    pub(crate) async fn leave(&self) {
        let _ = self.hosts.delete(&self.me).await;
    }

    /// Every host's heartbeat: (host, revision, when the server stored it, ns since the
    /// epoch).
    async fn heartbeats(&self) -> anyhow::Result<Vec<(String, u64, i128)>> {
        let keys = keys_of(&self.hosts, "hosts").await?;
        // One read per key, all at once: read one after another, a look at a loaded cluster
        // took seconds, and the renewals wait behind it.
        let entries = futures::future::join_all(keys.iter().map(|k| self.hosts.entry(k))).await;
        let mut out = Vec::with_capacity(keys.len());
        for (k, entry) in keys.into_iter().zip(entries) {
            let entry = entry.map_err(|e| anyhow!("read host {k}: {e}"))?;
            if let Some(e) = entry
                && e.operation == kv::Operation::Put
            {
                out.push((k, e.revision, e.created.unix_timestamp_nanos()));
            }
        }
        Ok(out)
    }

    /// The live hosts: those whose heartbeat changed within a lease, as seen from here (a
    /// host first seen now counts as live until it has been silent for a lease).
    pub(crate) async fn hosts(&self) -> anyhow::Result<BTreeSet<String>> {
        let beats = self.heartbeats().await?;
        let listed = beats.iter().map(|(k, _, _)| format!("h.{k}")).collect();
        self.seen.keep_only("h.", &listed);
        Ok(beats
            .into_iter()
            .filter(|(k, revision, _)| {
                *k == self.me || self.seen.unchanged_for(&format!("h.{k}"), *revision) < self.lease
            })
            .map(|(k, _, _)| k)
            .collect())
    }

    /// The hosts whose heartbeat the server stamped within the last `within` by this
    /// machine's clock, for a one-off look (`eddy cluster status`) that cannot watch
    /// revisions change.
    pub(crate) async fn recent_hosts(&self, within: Duration) -> anyhow::Result<BTreeSet<String>> {
        let now_ns = crate::checkpoint::now_ms() as i128 * 1_000_000;
        Ok(self
            .heartbeats()
            .await?
            .into_iter()
            .filter(|(_, _, stored_ns)| now_ns - stored_ns < within.as_nanos() as i128)
            .map(|(k, _, _)| k)
            .collect())
    }

    /// Each leased partition's owner.
    pub(crate) async fn owners(&self) -> anyhow::Result<BTreeMap<u32, String>> {
        Ok(self.leases().await?.owners)
    }

    /// Deletes partition `p`'s lease, whoever holds it (`eddy cluster reset --force`): its
    /// owner's next renewal fails, and its fence closes.
    pub(crate) async fn drop_lease(&self, p: u32) -> anyhow::Result<()> {
        self.leases
            .delete(format!("p{p}"))
            .await
            .map_err(|e| anyhow!("delete the lease of partition {p}: {e}"))
    }

    /// Each leased partition's owner, each wanted partition's wanting host (`w<N>` keys: a
    /// host that has fetched partition N's checkpoint and waits for its owner to let go), and
    /// the hosts that cannot run a partition for now (`u<N>.<host>` keys).
    pub(crate) async fn leases(&self) -> anyhow::Result<Leased> {
        let keys = keys_of(&self.leases, "leases").await?;
        let mut out = Leased::default();
        let mut marks = BTreeSet::new();
        // All reads at once (see `heartbeats`).
        let entries = futures::future::join_all(keys.iter().map(|k| self.leases.entry(k))).await;
        for (k, entry) in keys.into_iter().zip(entries) {
            if k.is_empty() {
                continue;
            }
            let (kind, rest) = k.split_at(1);
            let (n, host) = rest.split_once('.').unwrap_or((rest, ""));
            let Ok(p) = n.parse::<u32>() else { continue };
            let Ok(Some(e)) = entry else {
                continue;
            };
            if e.operation != kv::Operation::Put {
                continue;
            }
            match kind {
                "p" => {
                    if let Ok(v) = serde_json::from_slice::<LeaseValue>(&e.value) {
                        self.seen.unchanged_for(&format!("l.{k}"), e.revision);
                        out.owners.insert(p, v.host);
                    }
                }
                "w" => {
                    if let Ok(w) = serde_json::from_slice::<Want>(&e.value) {
                        out.wants.insert(p, w);
                    }
                }
                // Rewritten every third of a lease while it stands: one the server kept unchanged
                // for a whole lease (see the module's notes on expiry) is no longer meant.
                "u" if !host.is_empty() => {
                    let seen = format!("l.{k}");
                    if self.seen.unchanged_for(&seen, e.revision) < self.lease {
                        out.unfit.entry(p).or_default().insert(host.to_string());
                    }
                    marks.insert(seen);
                }
                _ => {}
            }
        }
        self.seen.keep_only("l.u", &marks);
        Ok(out)
    }

    /// Says this host cannot run partition `p` for now (its run failed here), so that
    /// another host runs it meanwhile (see `assign`). Renewed like a want: it lapses within
    /// a lease when not rewritten, and with the host.
    pub(crate) async fn unfit(&self, p: u32) -> anyhow::Result<()> {
        self.leases
            .put(format!("u{p}.{}", self.me), Bytes::new())
            .await
            .map(drop)
            .map_err(|e| anyhow!("say this host cannot run partition {p} for now: {e}"))
    }

    /// Withdraws [`Coordination::unfit`]: this host tries partition `p` again.
    pub(crate) async fn fit_again(&self, p: u32) {
        if let Err(e) = self.leases.delete(format!("u{p}.{}", self.me)).await {
            tracing::warn!(
                partition = p,
                "could not withdraw this host's unfit mark of partition {p} ({e}); it lapses within a lease ({:?})",
                self.lease
            );
        }
    }

    /// Says this host has fetched partition `p`'s `checkpoint` and waits to take it
    /// (renewed like a lease: a want not rewritten within a lease lapses).
    pub(crate) async fn want(&self, p: u32, checkpoint: Option<u64>) -> anyhow::Result<()> {
        let value = serde_json::to_vec(&Want {
            host: self.me.clone(),
            checkpoint,
        })?;
        self.leases
            .put(format!("w{p}"), value.into())
            .await
            .map(drop)
            .map_err(|e| anyhow!("want partition {p}: {e}"))
    }

    /// Withdraws this host's want of partition `p` (taken, or no longer coming here). A want
    /// left standing would keep its owner holding checkpoints for a host that no longer
    /// comes, until it lapses: a failed withdrawal is tried again a few times, then logged.
    pub(crate) async fn unwant(&self, p: u32) {
        let key = format!("w{p}");
        let mut pause = Duration::from_millis(50);
        let mut last_error = String::new();
        for _ in 0..UNWANT_TRIES {
            match self.try_unwant(&key).await {
                Ok(true) => return,
                // Rewritten meanwhile (by this host's renewal): look again.
                Ok(false) => {}
                Err(e) => {
                    last_error = e;
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
            }
        }
        tracing::warn!(
            partition = p,
            "could not withdraw this host's want of partition {p} ({last_error}); it lapses within a lease ({:?}), and until then the owner may hold its checkpoints for this host",
            self.lease
        );
    }

    /// One try at [`Coordination::unwant`]: true once no want of this host stands at `key`,
    /// false if it was rewritten between the read and the delete.
    async fn try_unwant(&self, key: &str) -> Result<bool, String> {
        let Some(e) = self.leases.entry(key).await.map_err(|e| e.to_string())? else {
            return Ok(true);
        };
        let mine = e.operation == kv::Operation::Put
            && serde_json::from_slice::<Want>(&e.value).is_ok_and(|w| w.host == self.me);
        if !mine {
            return Ok(true);
        }
        match self
            .leases
            .delete_expect_revision(key, Some(e.revision))
            .await
        {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == kv::DeleteErrorKind::WrongLastRevision => Ok(false),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Takes partition `p` if nobody holds it, or its lease has stood unrenewed for a whole
    /// lease as seen from here (by [`Coordination::owners`]) though the server kept the key.
    pub(crate) async fn acquire(&self, p: u32) -> anyhow::Result<Option<Lease>> {
        let key = format!("p{p}");
        // The epoch is the create's revision, known only after it: write the host first,
        // then renew at once with the epoch in the value.
        let value = serde_json::to_vec(&LeaseValue {
            host: self.me.clone(),
            epoch: 0,
        })?;
        match self.leases.create(&key, value.clone().into()).await {
            Ok(revision) => self.hold(p, revision).await,
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                let Some(stale) = self.seen.stale(&format!("l.{key}"), self.lease) else {
                    return Ok(None);
                };
                match self.leases.update(&key, value.into(), stale).await {
                    Ok(revision) => {
                        tracing::info!(
                            partition = p,
                            "took over a lease the server kept though unrenewed for {:?}",
                            self.lease
                        );
                        self.hold(p, revision).await
                    }
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
                    Err(e) => Err(anyhow!("take over partition {p}: {e}")),
                }
            }
            Err(e) => Err(anyhow!("take partition {p}: {e}")),
        }
    }

    /// The lease on `p` just written at `revision` (its epoch), renewed at once so that its
    /// value names the epoch.
    async fn hold(&self, p: u32, revision: u64) -> anyhow::Result<Option<Lease>> {
        let mut lease = Lease {
            partition: p,
            epoch: revision,
            revision,
        };
        Ok(self.renew(&mut lease).await?.then_some(lease))
    }

    /// Renews `lease`; false if another host holds it now.
    pub(crate) async fn renew(&self, lease: &mut Lease) -> anyhow::Result<bool> {
        let key = format!("p{}", lease.partition);
        let value: Bytes = serde_json::to_vec(&LeaseValue {
            host: self.me.clone(),
            epoch: lease.epoch,
        })?
        .into();
        // A renewal whose reply was lost may still have been stored: then the key names this
        // host at its epoch, at a revision this host never saw. Adopt it and renew again, so
        // the deadline counts from a renewal sent now rather than from the lost one.
        for _ in 0..2 {
            match self
                .leases
                .update(&key, value.clone(), lease.revision)
                .await
            {
                Ok(revision) => {
                    lease.revision = revision;
                    return Ok(true);
                }
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    match self.leases.entry(&key).await {
                        Ok(Some(e))
                            if e.operation == kv::Operation::Put
                                && e.revision != lease.revision
                                && serde_json::from_slice::<LeaseValue>(&e.value)
                                    .is_ok_and(|v| v.host == self.me && v.epoch == lease.epoch) =>
                        {
                            lease.revision = e.revision;
                        }
                        _ => return Ok(false),
                    }
                }
                Err(e) => return Err(anyhow!("renew partition {}: {e}", lease.partition)),
            }
        }
        Ok(false)
    }

    /// Gives `lease` up (after the partition's last checkpoint is committed).
    pub(crate) async fn release(&self, lease: &Lease) {
        let _ = self
            .leases
            .delete_expect_revision(format!("p{}", lease.partition), Some(lease.revision))
            .await;
    }

    /// Gives up partition `p`'s lease if it names this host: for a lease no run of this host
    /// holds (a take whose first renewal failed, a release that failed), which would keep the
    /// partition from every other host while this one lives, and from this one too.
    pub(crate) async fn release_if_mine(&self, p: u32) {
        let key = format!("p{p}");
        let Ok(Some(e)) = self.leases.entry(&key).await else {
            return;
        };
        let mine = e.operation == kv::Operation::Put
            && serde_json::from_slice::<LeaseValue>(&e.value).is_ok_and(|v| v.host == self.me);
        if mine
            && self
                .leases
                .delete_expect_revision(&key, Some(e.revision))
                .await
                .is_ok()
        {
            tracing::warn!(
                partition = p,
                "gave up a lease that named this host though no run of it held the partition"
            );
        }
    }
}

#[cfg(test)]
mod tests;
