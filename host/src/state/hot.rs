//! Hot values: the stored bytes of keyed entries recently read or committed, kept in memory in
//! front of RocksDB for point reads (`value-get`, `map-get`, `map-contains`).
//!
//! Owns: what may be cached and when it is forgotten. RocksDB stays the source of truth: every
//! commit writes through (the cache takes the committed bytes, or forgets a deleted key), and
//! anything that changes the database behind the commit path forgets everything: a cleared
//! prefix, a raw write (savepoint restore), and an entry dropped by the TTL compaction filter
//! (seen through its counter). Entries of a state whose TTL visibility is
//! `return-expired-if-not-cleaned-up` are never cached: whether compaction has cleaned an
//! entry up is what such a read reports.
//!
//! Readers other than the pipeline's worker (queries) read through it too, from their own
//! threads. A value read from RocksDB is kept only if nothing was committed between the read
//! and the keeping (a generation count), so a query that read just before a commit cannot put
//! the older value back over the committed one.
//!
//! Bounded by bytes; when full it starts over empty (cheap, and a stream's working set
//! refills it within a batch or two).

use std::collections::HashMap;

/// Default budget of a store's hot values, in bytes of keys and values.
pub const DEFAULT_BUDGET: usize = 32 << 20;

/// Per-entry bookkeeping counted against the budget besides key and value bytes.
const ENTRY_OVERHEAD: usize = 64;

#[derive(Debug)]
pub(super) struct HotValues {
    map: HashMap<Vec<u8>, Vec<u8>>,
    bytes: usize,
    budget: usize,
    /// The compaction filter's removal count when the cache was last known valid.
    compaction_epoch: u64,
    /// Bumped by every change made behind a reader's back (commit, clear).
    generation: u64,
}

impl HotValues {
    pub(super) fn new(budget: usize) -> HotValues {
        HotValues {
            map: HashMap::new(),
            bytes: 0,
            budget,
            compaction_epoch: 0,
            generation: 0,
        }
    }

    /// The current generation: pass it to [`HotValues::fill`] with bytes read from RocksDB
    /// after taking it.
    pub(super) fn generation(&self) -> u64 {
        self.generation
    }

    /// Marks a change of what RocksDB holds (a commit).
    pub(super) fn bump(&mut self) {
        self.generation += 1;
    }

    /// Keeps bytes read from RocksDB, unless anything changed since `generation` was taken.
    pub(super) fn fill(&mut self, generation: u64, key: &[u8], value: &[u8]) {
        if generation == self.generation {
            self.put(key, value);
        }
    }

    /// Forgets everything if the compaction filter removed entries since the last call.
    pub(super) fn check_epoch(&mut self, removed_by_compaction: u64) {
        if removed_by_compaction != self.compaction_epoch {
            self.clear();
            self.compaction_epoch = removed_by_compaction;
        }
    }

    pub(super) fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.map.get(key).cloned()
    }

    pub(super) fn put(&mut self, key: &[u8], value: &[u8]) {
        if self.budget == 0 {
            return;
        }
        let size = key.len() + value.len() + ENTRY_OVERHEAD;
        if self.bytes + size > self.budget {
            self.clear();
        }
        match self.map.get_mut(key) {
            Some(v) => {
                self.bytes = self.bytes + value.len() - v.len();
                v.clear();
                v.extend_from_slice(value);
            }
            None => {
                self.map.insert(key.to_vec(), value.to_vec());
                self.bytes += size;
            }
        }
    }

    pub(super) fn remove(&mut self, key: &[u8]) {
        if let Some(v) = self.map.remove(key) {
            self.bytes -= key.len() + v.len() + ENTRY_OVERHEAD;
        }
    }

    pub(super) fn clear(&mut self) {
        self.map.clear();
        self.bytes = 0;
        self.generation += 1;
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn puts_replace_removes_forget_and_a_full_cache_starts_over() {
        let mut hot = HotValues::new(3 * (ENTRY_OVERHEAD + 2));
        hot.put(b"a", b"1");
        hot.put(b"a", b"2");
        assert_eq!(hot.get(b"a"), Some(b"2".to_vec()));
        assert_eq!(hot.bytes, ENTRY_OVERHEAD + 2);
        hot.put(b"b", b"1");
        hot.remove(b"a");
        assert_eq!(hot.get(b"a"), None);
        hot.put(b"c", b"1");
        hot.put(b"d", b"1");
        assert_eq!(hot.len(), 3);
        hot.put(b"e", b"1");
        assert_eq!(hot.len(), 1, "over budget: starts over with the new entry");
        assert_eq!(hot.get(b"e"), Some(b"1".to_vec()));
    }

    #[test]
    fn a_removal_by_compaction_forgets_everything() {
        let mut hot = HotValues::new(DEFAULT_BUDGET);
        hot.put(b"a", b"1");
        hot.check_epoch(0);
        assert_eq!(hot.get(b"a"), Some(b"1".to_vec()));
        hot.check_epoch(1);
        assert_eq!(hot.get(b"a"), None);
    }

    #[test]
    fn a_read_that_a_commit_overtook_is_not_kept() {
        let mut hot = HotValues::new(DEFAULT_BUDGET);
        let before = hot.generation();
        // A commit lands between the reader's RocksDB read and its fill.
        hot.put(b"k", b"new");
        hot.bump();
        hot.fill(before, b"k", b"old");
        assert_eq!(hot.get(b"k"), Some(b"new".to_vec()));
        hot.fill(hot.generation(), b"j", b"1");
        assert_eq!(hot.get(b"j"), Some(b"1".to_vec()));
    }

    #[test]
    fn a_zero_budget_caches_nothing() {
        let mut hot = HotValues::new(0);
        hot.put(b"a", b"1");
        assert_eq!(hot.get(b"a"), None);
    }
}
