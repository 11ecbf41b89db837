//! The write path of a store: committing a batch in one RocksDB write, and the hot values
//! (`hot`) that hold recent values and, while writes come faster than RocksDB takes them,
//! defer value and list writes until the next settle.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use crate::{
    JUDGE_AFTER_WRITES, PROBE_AFTER_COMMITS, Result, StateBatch, StateKind, StateStore, Ttl, hot,
    hot_cacheable, layout,
};

impl StateStore {
    /// A new, empty batch.
    pub fn batch(&self) -> StateBatch {
        StateBatch::default()
    }

    /// Commits a batch's writes and positions: one RocksDB write of all but the deferred ones
    /// (see `hot`), then the hot values (so a query never reads there what RocksDB does not
    /// hold yet, except deferred writes, which only the hot values hold).
    pub fn commit(&self, batch: StateBatch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let keyed = batch.keyed_overlay();
        // What each keyed write becomes besides RocksDB, decided before writing so that no
        // table lock is held while RocksDB writes (its compaction filter reads the tables).
        // A batch that clears a prefix is written through whole, so that its range deletes
        // and the writes after them reach RocksDB together and in order.
        let defer = self.defer_writes && keyed.cleared.is_empty() && self.deferring_now();
        let plan: Vec<HotPlan> = {
            let ttls = self.ttls.read().unwrap_or_else(|p| p.into_inner());
            let kinds = self.kinds.read().unwrap_or_else(|p| p.into_inner());
            keyed
                .writes
                .iter()
                .map(|(k, v)| match v {
                    Some(_) if defer && deferrable(&kinds, &ttls, k) => HotPlan::Defer,
                    Some(_) if hot_cacheable(&ttls, k) => HotPlan::Cache,
                    _ => HotPlan::Forget,
                })
                .collect()
        };
        let _writing = self.writing();
        let wb = batch.write_batch_except(self, |i| plan[i] == HotPlan::Defer);
        // A commit whose writes all wait in the hot values leaves RocksDB alone, so it need not
        // wait for a cut's RocksDB part (`cut`).
        let written = if wb.is_empty() {
            Ok(())
        } else {
            self.await_cut()?;
            self.db.write_opt(wb, &self.write_opts)
        };
        let mut hot = self.hot();
        hot.bump();
        if written.is_err() || !keyed.cleared.is_empty() {
            // Written through whole: nothing of an older deferred write of these keys may
            // stay, or it would hide this batch's write and be settled over it.
            for k in keyed.writes.keys() {
                hot.remove(k);
            }
            hot.forget_clean();
        } else {
            for ((k, v), plan) in keyed.writes.iter().zip(&plan) {
                match (v, plan) {
                    (Some(v), HotPlan::Defer) => self.defer_locked(&mut hot, k, v)?,
                    (Some(v), HotPlan::Cache) => hot.refresh(k, v),
                    _ => hot.remove(k),
                }
            }
        }
        written?;
        Ok(())
    }

    /// Keeps a deferred write hot; when the budget is full, settles and starts over.
    fn defer_locked(&self, hot: &mut hot::HotValues, key: &[u8], value: &[u8]) -> Result<()> {
        if hot.put_dirty(key, value) {
            return Ok(());
        }
        self.settle_locked(hot)?;
        hot.forget_all();
        if !hot.put_dirty(key, value) {
            // Larger than the whole budget: written now.
            self.db
                .put_cf_opt(self.keyed_cf(), key, value, &self.write_opts)?;
        }
        Ok(())
    }

    /// Writes the deferred value and list writes to RocksDB (`hot`), a frozen cut's first (see
    /// `cut`). Done before anything reads RocksDB other than through the hot values:
    /// savepoints, visits, flushes, full scans; and when the store is dropped.
    ///
    /// The hot values stay readable while RocksDB writes (tens of milliseconds for a large
    /// settle, and queries read there): only writers change dirty entries, and they wait for
    /// this one.
    pub fn settle(&self) -> Result<()> {
        let _writing = self.writing();
        self.settle_held()
    }

    /// [`StateStore::settle`] for a writer that holds `writing` already.
    pub(crate) fn settle_held(&self) -> Result<()> {
        self.await_cut()?;
        let Some((wb, deferred, waiting)) = self.settle_batch(&mut self.hot()) else {
            return Ok(());
        };
        self.db.write_opt(wb, &self.write_opts)?;
        self.settled(&mut self.hot(), deferred, waiting);
        Ok(())
    }

    /// Settles if a scan of `prefix` (key group + state id, at least) could miss deferred
    /// writes: those of value and list state.
    pub(crate) fn settle_for_scan(&self, prefix: &[u8]) -> Result<()> {
        let deferred_kind = layout::state_id_of(prefix).is_none_or(|id| {
            matches!(
                self.kinds
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&id),
                Some(StateKind::Value | StateKind::List) | None
            )
        });
        if deferred_kind {
            self.settle()?;
        }
        Ok(())
    }

    pub(crate) fn writing(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether this commit may defer; counts down to the next try while it may not.
    fn deferring_now(&self) -> bool {
        if self.deferring.load(Ordering::Relaxed) {
            return true;
        }
        if self.probe_in.fetch_sub(1, Ordering::Relaxed) <= 1 {
            self.deferring.store(true, Ordering::Relaxed);
            tracing::debug!("state: deferring value and list writes again, to see if it pays");
        }
        false
    }

    /// Whether deferring is on (see `hot`).
    #[cfg(test)]
    pub(crate) fn defers_writes(&self) -> bool {
        self.defer_writes && self.deferring.load(Ordering::Relaxed)
    }

    /// [`StateStore::settle`] for a writer that holds the hot values already.
    pub(crate) fn settle_locked(&self, hot: &mut hot::HotValues) -> Result<()> {
        // The cut's RocksDB part takes no lock of the hot values: holding them is safe here.
        self.await_cut()?;
        if let Some((wb, deferred, waiting)) = self.settle_batch(hot) {
            self.db.write_opt(wb, &self.write_opts)?;
            self.settled(hot, deferred, waiting);
        }
        Ok(())
    }

    /// The RocksDB write of the dirty entries (none: nothing waits), with the counts to judge
    /// whether deferring pays: the writes deferred since the last settle, and the entries
    /// they left waiting (a key rewritten while waiting saved a RocksDB write).
    fn settle_batch(&self, hot: &mut hot::HotValues) -> Option<(rocksdb::WriteBatch, u64, u64)> {
        let (deferred, waiting) = (hot.deferred_since_settle(), hot.dirty_len() as u64);
        self.judge_deferring(deferred, waiting);
        if waiting == 0 {
            return None;
        }
        let cf = self.keyed_cf();
        let mut wb = rocksdb::WriteBatch::default();
        for (k, v) in hot.dirty_entries() {
            wb.put_cf(cf, k, v);
        }
        Some((wb, deferred, waiting))
    }

    /// Turns deferring off for a while if the `deferred` writes since the last settle left
    /// nearly as many entries `waiting`: under a tenth saved.
    pub(crate) fn judge_deferring(&self, deferred: u64, waiting: u64) {
        if deferred >= JUDGE_AFTER_WRITES && waiting * 10 > deferred * 9 {
            self.deferring.store(false, Ordering::Relaxed);
            self.probe_in.store(PROBE_AFTER_COMMITS, Ordering::Relaxed);
            tracing::debug!(
                deferred,
                waiting,
                "state: deferred writes were nearly all to different keys; writing through for now"
            );
        }
    }

    /// Marks the dirty entries written.
    fn settled(&self, hot: &mut hot::HotValues, deferred: u64, waiting: u64) {
        self.stats
            .deferred_writes
            .fetch_add(deferred, Ordering::Relaxed);
        self.stats
            .settled_writes
            .fetch_add(waiting, Ordering::Relaxed);
        hot.mark_clean();
    }

    pub(crate) fn hot(&self) -> std::sync::MutexGuard<'_, hot::HotValues> {
        self.hot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The stored bytes at keyed `key` if they are hot (`Ok`), or the generation to hand to
    /// [`StateStore::hot_fill`] with what RocksDB holds (`Err`).
    pub(crate) fn hot_get(&self, key: &[u8]) -> std::result::Result<Vec<u8>, u64> {
        let mut hot = self.hot();
        hot.check_epoch(self.stats.expired_in_compaction.load(Ordering::Relaxed));
        let found = hot.get(key).ok_or(hot.generation());
        let counter = match found {
            Ok(_) => &self.stats.hot_hits,
            Err(_) => &self.stats.hot_misses,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Keeps bytes read from RocksDB at keyed `key` hot, unless a commit came in between.
    pub(crate) fn hot_fill(&self, generation: u64, key: &[u8], stored: &[u8]) {
        // The TTL table's guard is dropped before the hot values' lock is taken: that lock
        // may be held across a RocksDB write, whose compaction filter reads the table.
        let cacheable = hot_cacheable(&self.ttls.read().unwrap_or_else(|p| p.into_inner()), key);
        if cacheable {
            self.hot().fill(generation, key, stored);
        }
    }
}

/// What a commit does with a keyed write besides RocksDB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HotPlan {
    /// Keep it hot and dirty instead of writing it now.
    Defer,
    /// Write it, and refresh it if it is hot.
    Cache,
    /// Write it (or its delete), and forget it.
    Forget,
}

/// Whether a write at `key` may wait in the hot values (`hot`): value and list state, which
/// only point reads see, and only if its entries may be hot at all.
fn deferrable(
    kinds: &HashMap<u32, StateKind>,
    ttls: &HashMap<u32, (StateKind, Ttl)>,
    key: &[u8],
) -> bool {
    layout::state_id_of(key)
        .is_some_and(|id| matches!(kinds.get(&id), Some(StateKind::Value | StateKind::List)))
        && hot_cacheable(ttls, key)
}
