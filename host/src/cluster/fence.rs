//! The fence of one owned partition: its run stops by itself once the lease may have lapsed
//! by this host's clock, and a checkpoint counts only once the partition's pointer moved by
//! compare-and-set at the revision this owner last wrote.
//!
//! Once closed, the fence stays closed for the run, even if a late renewal then succeeds:
//! whatever saw it closed (the publisher, which drops what it holds; the input; a commit) has
//! stopped, and the run must end with them, as fenced, rather than go on without them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use futures::FutureExt;
use futures::future::BoxFuture;

use super::leases::Coordination;
use super::mono_ms;
use crate::pipeline::{CommitError, Fence};

/// The fence of one owned partition.
pub(super) struct LeaseFence {
    pub(super) coord: Coordination,
    pub(super) partition: u32,
    pub(super) epoch: u64,
    /// This owner's generation: its checkpoint ids start at `generation << 32`.
    pub(super) generation: u64,
    /// The pointer's revision this owner last wrote.
    pub(super) pointer_revision: Arc<AtomicU64>,
    /// The checkpoint the pointer named when this owner claimed it.
    pub(super) committed: Option<u64>,
    /// The checkpoint the pointer names now, as this owner last wrote it (0: none).
    pub(super) last_committed: Arc<AtomicU64>,
    /// Until when (by [`mono_ms`]) the lease surely holds.
    pub(super) deadline_ms: Arc<AtomicU64>,
    /// Why the fence closed, once it has (it never opens again).
    pub(super) closed: OnceLock<String>,
}

impl Fence for LeaseFence {
    fn check(&self) -> Result<(), String> {
        if let Some(why) = self.closed.get() {
            return Err(why.clone());
        }
        let now = mono_ms();
        let deadline = self.deadline_ms.load(Ordering::Acquire);
        if now < deadline {
            return Ok(());
        }
        let why = format!(
            "the lease on partition {} was last renewed too long ago ({} ms past its margin); another host may own it",
            self.partition,
            now - deadline
        );
        Err(self.closed.get_or_init(|| why).clone())
    }

    fn commit(&self, id: u64) -> BoxFuture<'static, Result<(), CommitError>> {
        if let Err(why) = self.check() {
            return futures::future::ready(Err(CommitError::Fenced(why))).boxed();
        }
        let (coord, p, epoch, generation) = (
            self.coord.clone(),
            self.partition,
            self.epoch,
            self.generation,
        );
        let revision = self.pointer_revision.clone();
        let deadline = self.deadline_ms.clone();
        let last = self.last_committed.clone();
        async move {
            if mono_ms() >= deadline.load(Ordering::Acquire) {
                return Err(CommitError::Fenced(format!(
                    "the lease on partition {p} may have lapsed"
                )));
            }
            let at = revision.load(Ordering::Acquire);
            let new = coord.commit_pointer(p, id, epoch, generation, at).await?;
            revision.store(new, Ordering::Release);
            last.store(id, Ordering::Release);
            Ok(())
        }
        .boxed()
    }

    fn committed(&self) -> Option<u64> {
        self.committed
    }

    fn id_base(&self) -> u64 {
        self.generation << 32
    }
}
