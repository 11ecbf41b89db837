//! The store's counters ([`StateStats`]): expired entries removed, quota hits, how the hot
//! values are doing; and their sums over several stores (a cluster host's partitions).

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of the store: expired entries removed, by cleanup strategy, and how the hot values
/// (`hot`) are doing.
#[derive(Debug, Default)]
pub struct StateStats {
    /// Removed when a read found them expired.
    pub expired_on_read: AtomicU64,
    /// Removed by the compaction filter.
    pub expired_in_compaction: AtomicU64,
    /// Keyed point reads answered by the hot values.
    pub hot_hits: AtomicU64,
    /// Keyed point reads that went to RocksDB.
    pub hot_misses: AtomicU64,
    /// Value and list writes deferred, counted when settled.
    pub deferred_writes: AtomicU64,
    /// RocksDB writes settling them took (fewer: a key rewritten while waiting is written once).
    pub settled_writes: AtomicU64,
    /// Writes refused by a per-key quota (policy `reject`).
    pub quota_rejected: AtomicU64,
    /// Entries evicted by a per-key quota (policy `evict`).
    pub quota_evicted: AtomicU64,
    /// Value and list writes a plugin handed over a batch at a time (`write-batch`), rather
    /// than one import call each.
    pub batched_writes: AtomicU64,
}

impl StateStats {
    /// Adds these counts to `total` (a host's sums over several stores).
    pub fn add_into(&self, total: &StateStats) {
        for (from, to) in self.pairs(total) {
            to.fetch_add(from.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }

    /// Takes these counts away from `total` (counts from before a moment that are not to be
    /// summed; `total` holds at least them).
    pub fn take_from(&self, total: &StateStats) {
        for (from, to) in self.pairs(total) {
            let n = from.load(Ordering::Relaxed);
            let _ = to.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some(t.saturating_sub(n))
            });
        }
    }

    /// Each counter beside the same counter of `other`. Destructured, so that a counter added
    /// to the struct cannot be left out.
    fn pairs<'a>(&'a self, other: &'a StateStats) -> [(&'a AtomicU64, &'a AtomicU64); 9] {
        let StateStats {
            expired_on_read,
            expired_in_compaction,
            hot_hits,
            hot_misses,
            deferred_writes,
            settled_writes,
            quota_rejected,
            quota_evicted,
            batched_writes,
        } = self;
        [
            (expired_on_read, &other.expired_on_read),
            (expired_in_compaction, &other.expired_in_compaction),
            (hot_hits, &other.hot_hits),
            (hot_misses, &other.hot_misses),
            (deferred_writes, &other.deferred_writes),
            (settled_writes, &other.settled_writes),
            (quota_rejected, &other.quota_rejected),
            (quota_evicted, &other.quota_evicted),
            (batched_writes, &other.batched_writes),
        ]
    }
}
