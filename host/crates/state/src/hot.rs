//! Hot values: the stored bytes of keyed entries recently read or committed, kept in memory in
//! front of RocksDB for point reads (`value-get`, `list-get`, `map-get`, `map-contains`), and
//! the deferred writes of value and list state.
//!
//! Owns: what may be cached, which entries still have to reach RocksDB (*dirty*), and when
//! entries are forgotten. The store (`super::StateStore`) decides what is deferred and does
//! the writing; this module only keeps the books.
//!
//! - Map entries (scanned by `map-entries`, queries and visits) and everything of a state whose
//!   TTL visibility is `return-expired-if-not-cleaned-up` are written through at commit and
//!   cached clean. Entries of such a state are never cached at all: whether compaction has
//!   cleaned an entry up is what such a read reports.
//! - Value and list entries are *deferred*: a commit puts them here, dirty, and they reach
//!   RocksDB when the store settles (before a savepoint, a visit, a flush, when the budget is
//!   full, and when the store is dropped), or when a checkpoint's cut takes them over whole
//!   (`take_dirty`, a swap): the cut writes them into RocksDB from another thread, and they are
//!   read here after the other entries, until [`KEPT_CUTS`] later cuts have taken entries. A key written by every
//!   event of a checkpoint interval then costs one RocksDB write per interval instead of one
//!   per batch, and a key written in one interval and read again a few intervals later (a
//!   customer whose events come every few seconds, with a checkpoint every second) is read
//!   here, not from RocksDB's files.
//!   The live database has no write-ahead log and is rebuilt from the newest checkpoint at
//!   every start, so nothing a checkpoint holds is lost by deferring.
//! - Anything that changes the database behind the commit path forgets the clean entries: a
//!   cleared prefix, a bulk ingest (savepoint restore), and an entry dropped by the TTL
//!   compaction filter (seen through its counter). Dirty entries are newer than anything
//!   RocksDB holds, so they stay.
//!
//! Readers other than the pipeline's worker (queries) read through it too, from their own
//! threads. A value read from RocksDB is kept only if nothing was committed between the read
//! and the keeping (a generation count), so a query that read just before a commit cannot put
//! the older value back over the committed one.
//!
//! Bounded by bytes; when full, the oldest cuts' entries go first, then the store settles the
//! dirty entries and this starts over empty (cheap, and a stream's working set refills it
//! within a batch or two).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Keys are event keys, which senders choose: a seeded hasher (foldhash's, randomly seeded per
/// map) keeps them from being steered into collisions, at a fraction of SipHash's cost.
type Hasher = foldhash::fast::RandomState;

/// Stored bytes by keyed-state key.
pub(super) type Entries = HashMap<Vec<u8>, Vec<u8>, Hasher>;

/// Default budget of a store's hot values, in bytes of keys and values.
pub const DEFAULT_BUDGET: usize = 32 << 20;

/// How many cuts' entries are kept readable: the last cut's, and those of the cuts before it
/// (each a map a miss looks into, so a few).
pub const KEPT_CUTS: usize = 4;

/// Per-entry bookkeeping counted against the budget besides key and value bytes.
const ENTRY_OVERHEAD: usize = 64;

/// What an entry counts against the budget.
fn size(key: &[u8], value: &[u8]) -> usize {
    key.len() + value.len() + ENTRY_OVERHEAD
}

/// The dirty entries a checkpoint cut took (`cut`): read here until RocksDB holds them, and
/// after that as clean entries until [`KEPT_CUTS`] later cuts that took entries have taken
/// their place (a cut with nothing dirty takes nothing and retires nothing).
#[derive(Debug)]
struct FrozenLayer {
    entries: Arc<Entries>,
    bytes: usize,
    /// Set once RocksDB holds the entries.
    written: Arc<AtomicBool>,
}

impl FrozenLayer {
    fn written(&self) -> bool {
        self.written.load(Ordering::Acquire)
    }
}

/// What a cut takes from the hot values (see [`HotValues::take_dirty`]).
#[derive(Debug)]
pub(super) struct Handover {
    /// The dirty entries, still read through the hot values until `written` is set.
    pub(super) entries: Arc<Entries>,
    pub(super) written: Arc<AtomicBool>,
    /// Dirty puts they stand for (see [`HotValues::deferred_since_settle`]).
    pub(super) deferred: u64,
    /// The entries of a cut no longer kept: dropped with the handover, off the caller's
    /// thread.
    pub(super) _retired: Option<Arc<Entries>>,
}

#[derive(Debug)]
pub(super) struct HotValues {
    /// Entries RocksDB holds.
    clean: Entries,
    /// Committed entries RocksDB does not hold yet.
    dirty: Entries,
    /// The dirty entries of the last cuts (see [`FrozenLayer`]), newest first, read after the
    /// two maps; only the newest may not be written yet.
    layers: VecDeque<FrozenLayer>,
    clean_bytes: usize,
    dirty_bytes: usize,
    layer_bytes: usize,
    budget: usize,
    /// Dirty puts since the last settle (a key rewritten while dirty counts each time).
    deferred_puts: u64,
    /// The compaction filter's removal count when the cache was last known valid.
    compaction_epoch: u64,
    /// Bumped by every change made behind a reader's back (commit, forgetting).
    generation: u64,
}

impl HotValues {
    pub(super) fn new(budget: usize) -> HotValues {
        HotValues {
            clean: HashMap::default(),
            dirty: HashMap::default(),
            layers: VecDeque::new(),
            clean_bytes: 0,
            dirty_bytes: 0,
            layer_bytes: 0,
            budget,
            deferred_puts: 0,
            compaction_epoch: 0,
            generation: 0,
        }
    }

    /// Whether anything is cached at all (a zero budget turns hot values and deferred writes
    /// off).
    pub(super) fn enabled(&self) -> bool {
        self.budget > 0
    }

    /// The current generation: pass it to [`HotValues::fill`] with bytes read from RocksDB
    /// after taking it.
    pub(super) fn generation(&self) -> u64 {
        self.generation
    }

    /// Marks a change of the committed state (a commit).
    pub(super) fn bump(&mut self) {
        self.generation += 1;
    }

    /// Keeps bytes read from RocksDB, unless anything changed since `generation` was taken.
    pub(super) fn fill(&mut self, generation: u64, key: &[u8], value: &[u8]) {
        if generation == self.generation {
            self.put(key, value);
        }
    }

    /// Forgets the clean entries if the compaction filter removed entries since the last call.
    pub(super) fn check_epoch(&mut self, removed_by_compaction: u64) {
        if removed_by_compaction != self.compaction_epoch {
            self.forget_clean();
            self.compaction_epoch = removed_by_compaction;
        }
    }

    /// The newest bytes at `key`, if hot. One found only among the cuts' entries is copied
    /// among the clean ones, so that a key read often stays hot past the cuts.
    pub(super) fn get(&mut self, key: &[u8]) -> Option<Vec<u8>> {
        if let Some(v) = self.dirty.get(key).or_else(|| self.clean.get(key)) {
            return Some(v.clone());
        }
        let v = self.layers.iter().find_map(|l| l.entries.get(key))?.clone();
        if self.fits(key, &v) {
            self.clean_bytes += size(key, &v);
            self.clean.insert(key.to_vec(), v.clone());
        }
        Some(v)
    }

    fn bytes(&self) -> usize {
        self.clean_bytes + self.dirty_bytes + self.layer_bytes
    }

    /// Whether a cut's entries hold `key`.
    fn in_layers(&self, key: &[u8]) -> bool {
        self.layers.iter().any(|l| l.entries.contains_key(key))
    }

    /// Drops the oldest cuts' entries that RocksDB holds until `value` at `key` fits (the
    /// newest cut's stay, written or not). Whether it fits.
    fn make_room(&mut self, key: &[u8], value: &[u8]) -> bool {
        while !self.fits(key, value) {
            if self.layers.len() < 2 {
                return false;
            }
            if let Some(oldest) = self.layers.pop_back() {
                self.layer_bytes -= oldest.bytes;
            }
        }
        true
    }

    /// Counts the bytes of the layers left after some were dropped.
    fn recount_layers(&mut self) {
        self.layer_bytes = self.layers.iter().map(|l| l.bytes).sum();
    }

    /// Caches bytes that RocksDB holds (read, or written through). When full, the oldest cuts'
    /// entries go first (the newest cut's stay), then the clean entries with every written
    /// cut's; if what is left fills the budget, the bytes are not kept (the next commit settles
    /// and starts over).
    pub(super) fn put(&mut self, key: &[u8], value: &[u8]) {
        if !self.enabled() {
            return;
        }
        if let Some(held) = self.dirty.get_mut(key) {
            // Never dropped for room: it stays dirty, with the newer bytes (writing the same
            // bytes again at the next settle is harmless).
            overwrite(&mut self.dirty_bytes, held, value);
            return;
        }
        if !self.make_room(key, value) {
            self.forget_clean();
            if !self.fits(key, value) {
                self.remove(key);
                return;
            }
        }
        match self.clean.get_mut(key) {
            Some(held) => overwrite(&mut self.clean_bytes, held, value),
            None => {
                self.clean_bytes += size(key, value);
                self.clean.insert(key.to_vec(), value.to_vec());
            }
        }
    }

    /// Updates a cached entry with bytes just written through; a key not cached stays out (a
    /// blind write is not a sign of a coming read; a read-modify-write read it, and so cached
    /// it, first).
    pub(super) fn refresh(&mut self, key: &[u8], value: &[u8]) {
        let cached =
            self.dirty.contains_key(key) || self.clean.contains_key(key) || self.in_layers(key);
        if cached {
            self.put(key, value);
        }
    }

    /// Keeps a committed value that RocksDB does not hold yet. False, and nothing kept, when it
    /// does not fit: the store then settles, starts over and tries again.
    #[must_use]
    pub(super) fn put_dirty(&mut self, key: &[u8], value: &[u8]) -> bool {
        if !self.enabled() || !self.make_room(key, value) {
            return false;
        }
        self.deferred_puts += 1;
        if let Some(held) = self.dirty.get_mut(key) {
            overwrite(&mut self.dirty_bytes, held, value);
            return true;
        }
        // A clean entry turns dirty: its allocations move along.
        let (owned_key, mut held) = match self.clean.remove_entry(key) {
            Some((k, v)) => {
                self.clean_bytes -= size(&k, &v);
                (k, v)
            }
            None => (key.to_vec(), Vec::new()),
        };
        held.clear();
        held.extend_from_slice(value);
        self.dirty_bytes += size(key, value);
        self.dirty.insert(owned_key, held);
        true
    }

    /// Dirty puts since the last [`HotValues::mark_clean`]: with [`HotValues::dirty_len`], how
    /// much deferring saved.
    pub(super) fn deferred_since_settle(&self) -> u64 {
        self.deferred_puts
    }

    /// Whether `value` at `key` fits, counting what it replaces.
    fn fits(&self, key: &[u8], value: &[u8]) -> bool {
        let held = self
            .dirty
            .get(key)
            .or_else(|| self.clean.get(key))
            .map_or(0, |v| size(key, v));
        self.bytes() - held + size(key, value) <= self.budget
    }

    /// Forgets `key`, dirty or not (its delete was written to RocksDB). The newest cut's entries
    /// that hold it go too, with every older cut's: RocksDB holds them by now (a write reaches
    /// RocksDB only after the cut's entries do). Only older ones may go, never a newer one
    /// alone: another key of the dropped cut would be read from an older cut's bytes.
    pub(super) fn remove(&mut self, key: &[u8]) {
        if let Some(v) = self.dirty.remove(key) {
            self.dirty_bytes -= size(key, &v);
        }
        if let Some(v) = self.clean.remove(key) {
            self.clean_bytes -= size(key, &v);
        }
        if let Some(newest) = self.layers.iter().position(|l| l.entries.contains_key(key)) {
            debug_assert!(self.layers.iter().skip(newest).all(FrozenLayer::written));
            self.layers.truncate(newest);
            self.recount_layers();
        }
    }

    /// Number of dirty entries.
    pub(super) fn dirty_len(&self) -> usize {
        self.dirty.len()
    }

    /// The dirty entries, in key order (RocksDB inserts sorted keys fastest).
    pub(super) fn dirty_entries(&self) -> Vec<(&[u8], &[u8])> {
        sorted(&self.dirty)
    }

    /// Marks every entry clean: RocksDB now holds them.
    pub(super) fn mark_clean(&mut self) {
        self.clean_bytes += self.dirty_bytes;
        self.dirty_bytes = 0;
        if self.clean.is_empty() {
            std::mem::swap(&mut self.clean, &mut self.dirty);
        } else {
            self.clean.extend(self.dirty.drain());
        }
        self.deferred_puts = 0;
    }

    /// Hands the dirty entries over to a cut, in constant time: they are read among the cuts'
    /// entries from now on, until [`KEPT_CUTS`] later cuts have taken entries. The previous cut's entries must be written
    /// (the store waits for that first).
    pub(super) fn take_dirty(&mut self) -> Handover {
        debug_assert!(self.layers.front().is_none_or(FrozenLayer::written));
        let entries = Arc::new(std::mem::take(&mut self.dirty));
        let written = Arc::new(AtomicBool::new(entries.is_empty()));
        let deferred = std::mem::take(&mut self.deferred_puts);
        if entries.is_empty() {
            // Nothing to take: the last cut's entries stay readable.
            return Handover {
                entries,
                written,
                deferred,
                _retired: None,
            };
        }
        let bytes = std::mem::take(&mut self.dirty_bytes);
        self.layer_bytes += bytes;
        self.layers.push_front(FrozenLayer {
            entries: entries.clone(),
            bytes,
            written: written.clone(),
        });
        let retired = (self.layers.len() > KEPT_CUTS)
            .then(|| self.layers.pop_back())
            .flatten()
            .map(|oldest| {
                self.layer_bytes -= oldest.bytes;
                oldest.entries
            });
        Handover {
            entries,
            written,
            deferred,
            _retired: retired,
        }
    }

    /// Forgets every clean entry, and the cuts' entries RocksDB holds; dirty ones stay.
    pub(super) fn forget_clean(&mut self) {
        self.clean = HashMap::default();
        self.clean_bytes = 0;
        self.layers.retain(|l| !l.written());
        self.recount_layers();
        self.generation += 1;
    }

    /// Forgets everything. Only once settled: a dirty entry forgotten would be a lost write.
    pub(super) fn forget_all(&mut self) {
        debug_assert!(
            self.dirty.is_empty(),
            "forgetting dirty entries loses writes"
        );
        debug_assert!(self.layers.iter().all(FrozenLayer::written));
        self.clean = HashMap::default();
        self.dirty = HashMap::default();
        self.layers.clear();
        self.clean_bytes = 0;
        self.dirty_bytes = 0;
        self.layer_bytes = 0;
        self.generation += 1;
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.clean.len() + self.dirty.len()
    }
}

/// Puts `value` in place of the bytes `held`, keeping `bytes`, the count of their map, right.
fn overwrite(bytes: &mut usize, held: &mut Vec<u8>, value: &[u8]) {
    *bytes = *bytes + value.len() - held.len();
    held.clear();
    held.extend_from_slice(value);
}

/// `entries` in key order.
pub(super) fn sorted(entries: &Entries) -> Vec<(&[u8], &[u8])> {
    let mut out: Vec<(&[u8], &[u8])> = entries
        .iter()
        .map(|(k, v)| (k.as_slice(), v.as_slice()))
        .collect();
    out.sort_unstable_by(|a, b| a.0.cmp(b.0));
    out
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
        assert_eq!(hot.bytes(), ENTRY_OVERHEAD + 2);
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
    fn a_removal_by_compaction_forgets_the_clean_entries_only() {
        let mut hot = HotValues::new(DEFAULT_BUDGET);
        hot.put(b"a", b"1");
        assert!(hot.put_dirty(b"d", b"2"));
        hot.check_epoch(0);
        assert_eq!(hot.get(b"a"), Some(b"1".to_vec()));
        hot.check_epoch(1);
        assert_eq!(hot.get(b"a"), None);
        assert_eq!(
            hot.get(b"d"),
            Some(b"2".to_vec()),
            "a dirty entry is newer than the disk"
        );
        assert_eq!(hot.dirty_len(), 1);
    }

    #[test]
    fn dirty_entries_are_counted_listed_in_key_order_and_settled() {
        let mut hot = HotValues::new(DEFAULT_BUDGET);
        assert!(hot.put_dirty(b"b", b"1"));
        assert!(hot.put_dirty(b"a", b"1"));
        assert!(hot.put_dirty(b"a", b"2"), "rewriting a dirty entry");
        hot.put(b"c", b"1");
        assert_eq!(hot.dirty_len(), 2);
        assert_eq!(
            hot.dirty_entries(),
            vec![(&b"a"[..], &b"2"[..]), (&b"b"[..], &b"1"[..])]
        );
        hot.remove(b"b");
        assert_eq!(
            hot.dirty_len(),
            1,
            "a removed dirty entry is no longer owed"
        );
        hot.mark_clean();
        assert_eq!(hot.dirty_len(), 0);
        assert!(hot.dirty_entries().is_empty());
        assert_eq!(
            hot.get(b"a"),
            Some(b"2".to_vec()),
            "settled entries stay cached"
        );
    }

    #[test]
    fn a_full_cache_keeps_its_dirty_entries_and_refuses_more() {
        let mut hot = HotValues::new(2 * (ENTRY_OVERHEAD + 2));
        assert!(hot.put_dirty(b"a", b"1"));
        hot.put(b"b", b"1");
        hot.put(b"c", b"1");
        assert_eq!(hot.get(b"a"), Some(b"1".to_vec()), "dirty: kept when full");
        assert_eq!(hot.get(b"b"), None, "clean: forgotten to make room");
        assert_eq!(hot.get(b"c"), Some(b"1".to_vec()));
        assert!(hot.put_dirty(b"a", b"2"), "replacing in place fits");
        assert!(
            !hot.put_dirty(b"d", b"1"),
            "full: the store must settle first"
        );
        hot.mark_clean();
        hot.forget_all();
        assert!(hot.put_dirty(b"d", b"1"));
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
    fn a_refresh_updates_what_is_cached_and_adds_nothing() {
        let mut hot = HotValues::new(DEFAULT_BUDGET);
        hot.refresh(b"blind", b"1");
        assert_eq!(hot.get(b"blind"), None, "a blind write is not cached");
        hot.put(b"read", b"1");
        hot.refresh(b"read", b"2");
        assert_eq!(hot.get(b"read"), Some(b"2".to_vec()));
        assert!(hot.put_dirty(b"d", b"1"));
        hot.refresh(b"d", b"2");
        assert_eq!(hot.get(b"d"), Some(b"2".to_vec()));
        assert_eq!(hot.dirty_len(), 1, "still owed to RocksDB");
    }

    #[test]
    fn a_cut_takes_the_dirty_entries_whole_and_they_stay_readable() {
        let mut hot = HotValues::new(DEFAULT_BUDGET);
        hot.put(b"clean", b"c");
        assert!(hot.put_dirty(b"a", b"1"));
        assert!(hot.put_dirty(b"b", b"1"));
        let cut = hot.take_dirty();
        assert_eq!(cut.deferred, 2);
        assert_eq!(
            sorted(&cut.entries),
            vec![(&b"a"[..], &b"1"[..]), (&b"b"[..], &b"1"[..])]
        );
        assert!(!cut.written.load(Ordering::Acquire));
        assert_eq!(hot.dirty_len(), 0, "the next settle owes nothing of them");
        assert_eq!(
            hot.get(b"a"),
            Some(b"1".to_vec()),
            "read while RocksDB lacks it"
        );
        assert!(hot.put_dirty(b"b", b"2"), "a write after the cut");
        assert_eq!(
            hot.get(b"b"),
            Some(b"2".to_vec()),
            "the newer write shadows the cut's"
        );
        hot.forget_clean();
        assert_eq!(
            hot.get(b"a"),
            Some(b"1".to_vec()),
            "not written yet: never forgotten"
        );
        cut.written.store(true, Ordering::Release);
        hot.refresh(b"a", b"3");
        assert_eq!(
            hot.get(b"a"),
            Some(b"3".to_vec()),
            "written through over the cut's"
        );
        hot.remove(b"a");
        assert_eq!(hot.get(b"a"), None, "a delete hides the cut's entry");
        let next = hot.take_dirty();
        assert!(next._retired.is_none(), "nothing to retire yet");
        assert_eq!(hot.get(b"b"), Some(b"2".to_vec()));
        next.written.store(true, Ordering::Release);
        hot.forget_clean();
        assert_eq!(
            hot.get(b"b"),
            None,
            "written: forgotten as clean entries are"
        );
        assert_eq!(hot.bytes(), 0);
    }

    #[test]
    fn a_key_written_once_stays_readable_for_the_kept_cuts_and_the_oldest_go_first() {
        let mut hot = HotValues::new(DEFAULT_BUDGET);
        // One key per interval, each written once and not read again until much later, as a
        // customer whose events come every few checkpoint intervals.
        let cut = |hot: &mut HotValues, key: &[u8]| {
            assert!(hot.put_dirty(key, b"v"));
            let handover = hot.take_dirty();
            handover.written.store(true, Ordering::Release);
            handover._retired.map(|r| sorted(&r).len())
        };
        assert_eq!(cut(&mut hot, b"k0"), None);
        for i in 1..KEPT_CUTS {
            assert_eq!(cut(&mut hot, format!("k{i}").as_bytes()), None, "cut {i}");
        }
        assert_eq!(
            hot.get(b"k0"),
            Some(b"v".to_vec()),
            "{KEPT_CUTS} cuts later"
        );
        assert_eq!(
            cut(&mut hot, b"k-next"),
            Some(1),
            "the oldest cut's entries retired"
        );
        assert_eq!(
            hot.get(b"k0"),
            Some(b"v".to_vec()),
            "read before it retired: kept among the clean entries"
        );
        assert_eq!(hot.get(b"k1"), Some(b"v".to_vec()), "still among the kept");
        // A budget that holds a clean entry and three cuts' entries, all of one size: the
        // oldest cut's make room first, the clean entries stay.
        let one = size(b"k0", b"v");
        let mut small = HotValues::new(4 * one);
        small.put(b"cl", b"v");
        for i in 0..3 {
            cut(&mut small, format!("k{i}").as_bytes());
        }
        assert_eq!(small.bytes(), 4 * one);
        assert!(small.put_dirty(b"nw", b"v"), "room made by the oldest cut");
        assert_eq!(small.get(b"k0"), None, "the oldest cut's entries went");
        assert_eq!(small.get(b"cl"), Some(b"v".to_vec()));
        assert_eq!(small.get(b"k2"), Some(b"v".to_vec()));
    }

    #[test]
    fn a_delete_never_uncovers_an_older_cut_s_bytes_of_another_key() {
        let mut hot = HotValues::new(DEFAULT_BUDGET);
        let cut = |hot: &mut HotValues| {
            let handover = hot.take_dirty();
            handover.written.store(true, Ordering::Release);
        };
        assert!(hot.put_dirty(b"j", b"1"));
        cut(&mut hot);
        assert!(hot.put_dirty(b"j", b"2"));
        assert!(hot.put_dirty(b"k", b"x"));
        cut(&mut hot);
        assert!(hot.put_dirty(b"n", b"new"));
        cut(&mut hot);
        // `k`'s delete is written: the cut that holds it goes, and with it every older one
        // (which holds `j` at 1), while the newer cut stays.
        hot.remove(b"k");
        assert_eq!(hot.get(b"k"), None);
        assert_ne!(
            hot.get(b"j"),
            Some(b"1".to_vec()),
            "j was written 2 after 1"
        );
        assert_eq!(hot.get(b"j"), None, "read from RocksDB, which holds 2");
        assert_eq!(hot.get(b"n"), Some(b"new".to_vec()), "the newer cut stays");
    }

    #[test]
    fn a_zero_budget_caches_nothing_and_defers_nothing() {
        let mut hot = HotValues::new(0);
        hot.put(b"a", b"1");
        assert_eq!(hot.get(b"a"), None);
        assert!(!hot.put_dirty(b"a", b"1"));
        assert!(!hot.enabled());
    }
}
