//! The three NATS KV buckets a cluster of hosts coordinates through, per pipeline:
//!
//! - `eddy-<pipeline>-hosts`: a key per live host, rewritten every third of the lease; the
//!   bucket's `max_age` (the lease) removes a host that stopped writing;
//! - `eddy-<pipeline>-leases`: a key per owned partition (`p<N>`), taken by `create` (only if
//!   absent), renewed by `update` at the revision the owner last wrote, expiring with the
//!   bucket's `max_age` when not renewed. The revision of the `create` is the owner's epoch;
//! - `eddy-<pipeline>-pointers`: a key per partition naming its committed checkpoint and the
//!   epoch of the owner that committed it, moved only by compare-and-set. A new owner claims
//!   it (writes its epoch) before restoring; an earlier owner's next commit then fails.
//!
//! Ownership is decided by the result of a compare-and-set, never by a read (reads may come
//! from a stale replica, ADR-8).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context, anyhow};
use async_nats::jetstream::kv;
use bytes::Bytes;
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};

use crate::transport::Nats;

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

/// What a pointer key holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Pointer {
    /// The committed checkpoint (none yet: the partition starts empty).
    pub(crate) checkpoint: Option<u64>,
    /// The epoch of the owner that wrote it last.
    pub(crate) epoch: u64,
    /// That owner.
    pub(crate) host: String,
}

/// The coordination buckets of one pipeline.
#[derive(Clone)]
pub(crate) struct Coordination {
    hosts: kv::Store,
    leases: kv::Store,
    pointers: kv::Store,
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

    /// The live hosts.
    pub(crate) async fn hosts(&self) -> anyhow::Result<BTreeSet<String>> {
        let keys: Vec<String> = self
            .hosts
            .keys()
            .await
            .map_err(|e| anyhow!("list hosts: {e}"))?
            .try_collect()
            .await
            .map_err(|e| anyhow!("list hosts: {e}"))?;
        Ok(keys.into_iter().collect())
    }

    /// Each leased partition's owner.
    pub(crate) async fn owners(&self) -> anyhow::Result<BTreeMap<u32, String>> {
        let keys: Vec<String> = self
            .leases
            .keys()
            .await
            .map_err(|e| anyhow!("list leases: {e}"))?
            .try_collect()
            .await
            .map_err(|e| anyhow!("list leases: {e}"))?;
        let mut out = BTreeMap::new();
        for k in keys {
            let Some(p) = k.strip_prefix('p').and_then(|n| n.parse().ok()) else {
                continue;
            };
            if let Ok(Some(v)) = self.leases.get(&k).await
                && let Ok(v) = serde_json::from_slice::<LeaseValue>(&v)
            {
                out.insert(p, v.host);
            }
        }
        Ok(out)
    }

    /// Takes partition `p` if nobody holds it.
    pub(crate) async fn acquire(&self, p: u32) -> anyhow::Result<Option<Lease>> {
        let key = format!("p{p}");
        // The epoch is the create's revision, known only after it: write the host first,
        // then renew at once with the epoch in the value.
        let value = serde_json::to_vec(&LeaseValue {
            host: self.me.clone(),
            epoch: 0,
        })?;
        match self.leases.create(&key, value.into()).await {
            Ok(revision) => {
                let mut lease = Lease {
                    partition: p,
                    epoch: revision,
                    revision,
                };
                if !self.renew(&mut lease).await? {
                    return Ok(None);
                }
                Ok(Some(lease))
            }
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(anyhow!("take partition {p}: {e}")),
        }
    }

    /// Renews `lease`; false if another host holds it now.
    pub(crate) async fn renew(&self, lease: &mut Lease) -> anyhow::Result<bool> {
        let value = serde_json::to_vec(&LeaseValue {
            host: self.me.clone(),
            epoch: lease.epoch,
        })?;
        match self
            .leases
            .update(
                format!("p{}", lease.partition),
                value.into(),
                lease.revision,
            )
            .await
        {
            Ok(revision) => {
                lease.revision = revision;
                Ok(true)
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
            Err(e) => Err(anyhow!("renew partition {}: {e}", lease.partition)),
        }
    }

    /// Gives `lease` up (after the partition's last checkpoint is committed).
    pub(crate) async fn release(&self, lease: &Lease) {
        let _ = self
            .leases
            .delete_expect_revision(format!("p{}", lease.partition), Some(lease.revision))
            .await;
    }

    /// Partition `p`'s pointer and its revision.
    async fn pointer(&self, p: u32) -> anyhow::Result<(Option<Pointer>, u64)> {
        match self.pointers.entry(format!("p{p}")).await {
            Ok(Some(e)) if e.operation == kv::Operation::Put => {
                let ptr = serde_json::from_slice(&e.value)
                    .with_context(|| format!("the checkpoint pointer of partition {p}"))?;
                Ok((Some(ptr), e.revision))
            }
            Ok(Some(e)) => Ok((None, e.revision)),
            Ok(None) => Ok((None, 0)),
            Err(e) => Err(anyhow!("read the checkpoint pointer of partition {p}: {e}")),
        }
    }

    /// Claims partition `p`'s pointer for `lease` (before restoring): returns the committed
    /// checkpoint and the pointer's revision for the next commit. Fails if an owner with a
    /// newer epoch wrote it.
    pub(crate) async fn claim(&self, lease: &Lease) -> anyhow::Result<(Option<u64>, u64)> {
        let p = lease.partition;
        let (current, revision) = self.pointer(p).await?;
        if let Some(c) = &current
            && c.epoch > lease.epoch
        {
            anyhow::bail!(
                "partition {p} was committed by a newer owner ({} at epoch {})",
                c.host,
                c.epoch
            );
        }
        let checkpoint = current.and_then(|c| c.checkpoint);
        let revision = self
            .write_pointer(p, checkpoint, lease.epoch, revision)
            .await?;
        Ok((checkpoint, revision))
    }

    /// Moves partition `p`'s pointer to `checkpoint` if it is still at `revision`; returns the
    /// new revision. `Err` when another owner moved it: this host is fenced.
    pub(crate) async fn write_pointer(
        &self,
        p: u32,
        checkpoint: Option<u64>,
        epoch: u64,
        revision: u64,
    ) -> anyhow::Result<u64> {
        let value: Bytes = serde_json::to_vec(&Pointer {
            checkpoint,
            epoch,
            host: self.me.clone(),
        })?
        .into();
        let key = format!("p{p}");
        let written = if revision == 0 {
            self.pointers
                .create(&key, value)
                .await
                .map_err(|e| anyhow!("{e}"))
        } else {
            self.pointers
                .update(&key, value, revision)
                .await
                .map_err(|e| anyhow!("{e}"))
        };
        written.with_context(|| {
            format!("partition {p}'s checkpoint pointer moved since revision {revision}")
        })
    }

    /// Every partition's pointer, for `eddy cluster status`.
    pub(crate) async fn pointers(&self, count: u32) -> BTreeMap<u32, Pointer> {
        let mut out = BTreeMap::new();
        for p in 0..count {
            if let Ok((Some(ptr), _)) = self.pointer(p).await {
                out.insert(p, ptr);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn bucket_names_are_valid_kv_names() {
        assert_eq!(super::bucket_name("fraud", "leases"), "eddy-fraud-leases");
        assert_eq!(super::bucket_name("a:b.c", "hosts"), "eddy-a_b_c-hosts");
    }
}
