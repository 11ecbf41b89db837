//! The checkpoint pointers (`eddy-<pipeline>-pointers`): a new owner's claim, each commit
//! by compare-and-set, and what a commit whose answer was lost left behind.

use std::collections::BTreeMap;

use anyhow::{Context, anyhow};
use async_nats::jetstream::kv;
use bytes::Bytes;

use super::{Claim, Coordination, Lease, Pointer, next_generation};
use crate::pipeline::CommitError;

impl Coordination {
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

    /// The checkpoint partition `p`'s pointer names (none: never committed).
    pub(crate) async fn committed(&self, p: u32) -> anyhow::Result<Option<u64>> {
        Ok(self.pointer(p).await?.0.and_then(|ptr| ptr.checkpoint))
    }

    /// Claims partition `p`'s pointer for `lease` (before restoring): returns the committed
    /// checkpoint, the pointer's revision for the next commit and this owner's generation.
    /// Fails if an owner with a newer epoch wrote it.
    pub(crate) async fn claim(&self, lease: &Lease) -> anyhow::Result<Claim> {
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
        let generation = next_generation(current.as_ref())?;
        let checkpoint = current.and_then(|c| c.checkpoint);
        let revision = self
            .write_pointer(p, checkpoint, lease.epoch, generation, revision)
            .await?;
        Ok(Claim {
            committed: checkpoint,
            revision,
            generation,
        })
    }

    /// Moves partition `p`'s pointer to `checkpoint` if it is still at `revision`; returns the
    /// new revision. `Err` when another owner moved it: this host is fenced.
    pub(crate) async fn write_pointer(
        &self,
        p: u32,
        checkpoint: Option<u64>,
        epoch: u64,
        generation: u64,
        revision: u64,
    ) -> anyhow::Result<u64> {
        let ptr = Pointer {
            checkpoint,
            epoch,
            host: self.me.clone(),
            generation,
        };
        self.put_pointer(p, &ptr, revision)
            .await
            .map_err(|(_, why)| anyhow!("{why}"))
            .with_context(|| {
                format!("partition {p}'s checkpoint pointer moved since revision {revision}")
            })
    }

    /// Writes `ptr` as partition `p`'s pointer if the key is at `revision` (0: absent);
    /// returns the new revision, or whether the key was elsewhere (a conflict) and why.
    async fn put_pointer(
        &self,
        p: u32,
        ptr: &Pointer,
        revision: u64,
    ) -> Result<u64, (bool, String)> {
        let value: Bytes = serde_json::to_vec(ptr)
            .map_err(|e| (false, e.to_string()))?
            .into();
        let key = format!("p{p}");
        if revision == 0 {
            (self.pointers.create(&key, value).await).map_err(|e| {
                (
                    e.kind() == kv::CreateErrorKind::AlreadyExists,
                    e.to_string(),
                )
            })
        } else {
            (self.pointers.update(&key, value, revision).await).map_err(|e| {
                (
                    e.kind() == kv::UpdateErrorKind::WrongLastRevision,
                    e.to_string(),
                )
            })
        }
    }

    /// Commits checkpoint `id` of partition `p` for its owner at `epoch` and `generation`:
    /// moves the pointer if it is still at `revision` (the owner's last write) and returns the
    /// new revision.
    ///
    /// A write whose answer was lost (a timeout) may have landed, and a failed commit leaves
    /// the owner's revision behind one that did: either way the pointer is read back, and
    /// what this owner wrote (its host, epoch and generation) counts as its own. Only a
    /// pointer another owner wrote fences the run; one that can be neither written nor read
    /// is a failed commit, tried again at the next checkpoint.
    pub(crate) async fn commit_pointer(
        &self,
        p: u32,
        id: u64,
        epoch: u64,
        generation: u64,
        revision: u64,
    ) -> Result<u64, CommitError> {
        let ptr = Pointer {
            checkpoint: Some(id),
            epoch,
            host: self.me.clone(),
            generation,
        };
        let mut at = revision;
        let mut why = String::new();
        for _ in 0..2 {
            why = match self.put_pointer(p, &ptr, at).await {
                Ok(written) => return Ok(written),
                Err((_, why)) => why,
            };
            let (now, now_at) = self.pointer(p).await.map_err(|e| {
                CommitError::Failed(format!(
                    "writing partition {p}'s checkpoint pointer: {why}; reading it back: {e:#}"
                ))
            })?;
            match now {
                Some(n) if n.host == self.me && n.epoch == epoch && n.generation == generation => {
                    if n.checkpoint == Some(id) {
                        tracing::info!(
                            partition = p,
                            checkpoint = id,
                            "the checkpoint pointer's write answered `{why}` but had landed"
                        );
                        return Ok(now_at);
                    }
                    at = now_at;
                }
                Some(n) => {
                    return Err(CommitError::Fenced(format!(
                        "partition {p}'s checkpoint pointer moved since revision {revision}: {} at epoch {} wrote it",
                        n.host, n.epoch
                    )));
                }
                None => {
                    return Err(CommitError::Fenced(format!(
                        "partition {p}'s checkpoint pointer is gone (since revision {revision})"
                    )));
                }
            }
        }
        Err(CommitError::Failed(format!(
            "writing partition {p}'s checkpoint pointer: {why}"
        )))
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

    /// Makes partition `p`'s pointer name no checkpoint (`eddy cluster reset`), keeping its
    /// epoch and a generation at least as high as any of its checkpoint ids says. Refused
    /// while a lease names an owner, unless `force`; then the lease goes too, so that its
    /// owner stops at its next renewal even if it commits nothing. Returns the checkpoint the
    /// pointer named and the lowest id the next owner can give (none: nothing to reset).
    pub(crate) async fn reset_pointer(
        &self,
        p: u32,
        force: bool,
    ) -> anyhow::Result<Option<(u64, u64)>> {
        let (current, revision) = self.pointer(p).await?;
        let Some(ptr) = current else {
            return Ok(None);
        };
        let Some(id) = ptr.checkpoint else {
            return Ok(None);
        };
        // Read after the pointer: a host that took the partition since the caller looked has
        // claimed the pointer by now, or its claim fails against the reset's write.
        if !force && let Some(owner) = self.owners().await?.get(&p) {
            anyhow::bail!(
                "partition {p} runs on {owner}: a reset throws its state away and replays its input from the start of the stream. To do that anyway, run again with --force"
            );
        }
        let next = next_generation(Some(&ptr))?;
        let reset = Pointer {
            checkpoint: None,
            host: self.me.clone(),
            generation: next - 1,
            ..ptr
        };
        self.put_pointer(p, &reset, revision)
            .await
            .map_err(|(conflict, why)| {
                if conflict {
                    anyhow!("partition {p}'s checkpoint pointer moved while it was reset (an owner took or committed it): run the command again")
                } else {
                    anyhow!("reset partition {p}'s checkpoint pointer: {why}")
                }
            })?;
        if force {
            self.drop_lease(p).await?;
        }
        Ok(Some((id, next << 32)))
    }
}
