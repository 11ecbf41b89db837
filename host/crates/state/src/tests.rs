use std::sync::Arc;

use super::layout::{map_entry_key, state_key};
use super::visit::Visit;
use super::*;

fn store(dir: &Path, clock: &ManualClock) -> StateStore {
    StateStore::open(dir, 128, Arc::new(clock.clone())).expect("open state")
}

#[test]
fn batch_reads_its_own_writes_and_commit_persists_across_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(1_000);
    let st = store(dir.path(), &clock);
    let v = st
        .open_state("count", StateKind::Value, None)
        .expect("open");
    let kg = st.key_group(b"k1");
    let mut b = st.batch();
    {
        let mut a = KeyedAccess::new(&st, &mut b);
        assert_eq!(a.value_get(&v, kg, b"k1").expect("get"), None);
        a.value_set(&v, kg, b"k1", b"1");
        assert_eq!(
            a.value_get(&v, kg, b"k1").expect("get"),
            Some(b"1".to_vec())
        );
    }
    b.set_position("in", 42);
    // Not visible to another batch before commit.
    assert_eq!(st.read_value(&v, b"k1").expect("read"), None);
    st.commit(b).expect("commit");
    assert_eq!(st.read_value(&v, b"k1").expect("read"), Some(b"1".to_vec()));
    drop(st);
    let st = store(dir.path(), &clock);
    let v2 = st
        .open_state("count", StateKind::Value, None)
        .expect("reopen state");
    assert_eq!(v2.id, v.id, "state ids are stable across restarts");
    assert_eq!(
        st.read_value(&v2, b"k1").expect("read"),
        Some(b"1".to_vec())
    );
    assert_eq!(st.position("in").expect("position"), Some(42));
}

#[test]
fn wrong_kind_and_key_group_mismatch_are_refused_with_the_fix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(0);
    let st = store(dir.path(), &clock);
    st.open_state("s", StateKind::Map, None).expect("open");
    let e = st
        .open_state("s", StateKind::List, None)
        .expect_err("kind mismatch");
    assert!(e.to_string().contains("is a Map state"), "{e}");
    drop(st);
    let e = StateStore::open(dir.path(), 64, Arc::new(clock))
        .err()
        .expect("key group mismatch refused");
    assert!(e.to_string().contains("set key_groups = 128"), "{e}");
}

#[test]
fn map_entries_merge_overlay_and_disk_in_order_and_respect_clear() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(0);
    let st = store(dir.path(), &clock);
    let m = st.open_state("m", StateKind::Map, None).expect("open");
    let kg = st.key_group(b"a");
    let mut b = st.batch();
    {
        let mut a = KeyedAccess::new(&st, &mut b);
        for k in [b"1", b"3", b"5"] {
            a.map_put(&m, kg, b"a", k, b"disk");
        }
        // A key whose bytes extend "a" must not leak into "a"'s entries.
        let kg2 = st.key_group(b"ab");
        a.map_put(&m, kg2, b"ab", b"x", b"other");
    }
    st.commit(b).expect("commit");
    let mut b = st.batch();
    let mut a = KeyedAccess::new(&st, &mut b);
    a.map_put(&m, kg, b"a", b"2", b"over");
    a.map_put(&m, kg, b"a", b"5", b"over");
    a.map_remove(&m, kg, b"a", b"3");
    let all = a.map_entries(&m, kg, b"a", None, 100).expect("entries");
    let keys: Vec<_> = all.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    assert_eq!(
        keys,
        vec![
            (b"1".to_vec(), b"disk".to_vec()),
            (b"2".to_vec(), b"over".to_vec()),
            (b"5".to_vec(), b"over".to_vec())
        ]
    );
    let page = a.map_entries(&m, kg, b"a", Some(b"1"), 1).expect("page");
    assert_eq!(page[0].0, b"2".to_vec());
    a.map_clear(&m, kg, b"a");
    assert!(a.map_is_empty(&m, kg, b"a").expect("empty"));
    a.map_put(&m, kg, b"a", b"9", b"after-clear");
    assert!(a.map_contains_for_test(&m, kg, b"a", b"9"));
    assert!(!a.map_contains_for_test(&m, kg, b"a", b"1"));
    st.commit(b).expect("commit");
    let mut b = st.batch();
    let mut a = KeyedAccess::new(&st, &mut b);
    let all = a.map_entries(&m, kg, b"a", None, 100).expect("entries");
    assert_eq!(all, vec![(b"9".to_vec(), b"after-clear".to_vec())]);
}

impl KeyedAccess<'_> {
    fn map_contains_for_test(&mut self, s: &StateInfo, kg: u16, key: &[u8], mk: &[u8]) -> bool {
        self.map_get(s, kg, key, mk).expect("get").is_some()
    }
}

#[test]
fn lists_append_update_and_clear() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(0);
    let st = store(dir.path(), &clock);
    let l = st.open_state("l", StateKind::List, None).expect("open");
    let kg = st.key_group(b"k");
    let mut b = st.batch();
    let mut a = KeyedAccess::new(&st, &mut b);
    a.list_add_all(&l, kg, b"k", &[b"a".to_vec()]).expect("add");
    a.list_add_all(&l, kg, b"k", &[b"b".to_vec(), b"c".to_vec()])
        .expect("add");
    assert_eq!(
        a.list_get(&l, kg, b"k").expect("get"),
        vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
    );
    a.list_update(&l, kg, b"k", &[b"z".to_vec()]);
    assert_eq!(a.list_get(&l, kg, b"k").expect("get"), vec![b"z".to_vec()]);
    a.value_clear(&l, kg, b"k");
    assert!(a.list_get(&l, kg, b"k").expect("get").is_empty());
}

// ---- deferred writes (see `hot`) ----

/// A store as a pipeline opens it: no write-ahead log, so value and list writes are deferred.
pub(crate) fn deferring_store(dir: &Path, clock: &ManualClock, hot_bytes: usize) -> StateStore {
    let options = StoreOptions {
        write_ahead_log: false,
        hot_values_bytes: hot_bytes,
        ..StoreOptions::default()
    };
    StateStore::open_with(dir, 128, Arc::new(clock.clone()), options).expect("open state")
}

/// Whether RocksDB itself (not the hot values) holds keyed `key`.
pub(crate) fn on_disk(st: &StateStore, key: &[u8]) -> bool {
    st.db()
        .get_cf(st.keyed_cf(), key)
        .expect("rocksdb read")
        .is_some()
}

/// A checkpoint of `st` in `dir`, opened read-only, and its state `v`.
fn checkpoint_of(st: &StateStore, dir: &Path, clock: &ManualClock) -> (StateStore, StateInfo) {
    let cp = dir.join("cp");
    st.create_checkpoint(&cp).expect("checkpoint");
    let snap = StateStore::open_read_only(&cp, Arc::new(clock.clone())).expect("open cp");
    let v = snap
        .states()
        .into_iter()
        .find(|s| s.name == "v")
        .expect("v");
    (snap, v)
}

#[test]
fn value_and_list_writes_wait_hot_map_writes_do_not_and_every_reader_sees_both() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(1_000);
    let st = deferring_store(dir.path(), &clock, hot::DEFAULT_BUDGET);
    let v = st.open_state("v", StateKind::Value, None).expect("open");
    let l = st.open_state("l", StateKind::List, None).expect("open");
    let m = st.open_state("m", StateKind::Map, None).expect("open");
    let kg = st.key_group(b"k");
    let mut b = st.batch();
    {
        let mut a = KeyedAccess::new(&st, &mut b);
        a.value_set(&v, kg, b"k", b"1");
        a.list_update(&l, kg, b"k", &[b"x".to_vec(), b"y".to_vec()]);
        a.map_put(&m, kg, b"k", b"e", b"2");
    }
    st.commit(b).expect("commit");
    assert!(!on_disk(&st, &state_key(kg, v.id, b"k")), "value: deferred");
    assert!(!on_disk(&st, &state_key(kg, l.id, b"k")), "list: deferred");
    assert!(
        on_disk(&st, &map_entry_key(kg, m.id, b"k", b"e")),
        "map: written"
    );

    // The next batch and a query read the deferred writes, from the hot values.
    let hits = st.stats().hot_hits.load(Ordering::Relaxed);
    let mut b = st.batch();
    let mut a = KeyedAccess::new(&st, &mut b);
    assert_eq!(a.value_get(&v, kg, b"k").expect("get"), Some(b"1".to_vec()));
    assert_eq!(
        a.list_get(&l, kg, b"k").expect("get"),
        vec![b"x".to_vec(), b"y".to_vec()]
    );
    assert_eq!(st.read_value(&v, b"k").expect("read"), Some(b"1".to_vec()));
    assert_eq!(st.stats().hot_hits.load(Ordering::Relaxed), hits + 3);

    // A checkpoint holds them: it settles first.
    let (snap, v_snap) = checkpoint_of(&st, dir.path(), &clock);
    assert!(on_disk(&st, &state_key(kg, v.id, b"k")), "settled");
    assert_eq!(
        snap.read_value(&v_snap, b"k").expect("read"),
        Some(b"1".to_vec())
    );
}

#[test]
fn a_full_budget_settles_before_starting_over_and_nothing_is_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(1_000);
    // Room for about ten entries: every few batches the budget is full.
    let st = deferring_store(dir.path(), &clock, 10 * 100);
    let v = st.open_state("v", StateKind::Value, None).expect("open");
    let keys: Vec<String> = (0..50).map(|i| format!("key-{i}")).collect();
    for round in 0..4u32 {
        for chunk in keys.chunks(7) {
            let mut b = st.batch();
            let mut a = KeyedAccess::new(&st, &mut b);
            for k in chunk {
                let kg = st.key_group(k.as_bytes());
                let before = a.value_get(&v, kg, k.as_bytes()).expect("get");
                let expected = (round > 0).then(|| (round - 1).to_string().into_bytes());
                assert_eq!(before, expected, "{k} in round {round}");
                a.value_set(&v, kg, k.as_bytes(), round.to_string().as_bytes());
            }
            st.commit(b).expect("commit");
        }
    }
    for k in &keys {
        assert_eq!(
            st.read_value(&v, k.as_bytes()).expect("read"),
            Some(b"3".to_vec())
        );
    }
}

#[test]
fn visits_dumps_and_a_reopened_store_see_deferred_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(1_000);
    let st = deferring_store(dir.path(), &clock, hot::DEFAULT_BUDGET);
    let v = st.open_state("v", StateKind::Value, None).expect("open");
    let m = st.open_state("m", StateKind::Map, None).expect("open");
    let mut b = st.batch();
    {
        let mut a = KeyedAccess::new(&st, &mut b);
        for k in ["a", "b", "c"] {
            a.value_set(&v, st.key_group(k.as_bytes()), k.as_bytes(), b"1");
        }
    }
    st.commit(b).expect("commit");
    // A later batch that clears a map (written through whole) leaves the deferred values be.
    let mut b = st.batch();
    KeyedAccess::new(&st, &mut b).map_clear(&m, st.key_group(b"a"), b"a");
    st.commit(b).expect("commit");
    assert_eq!(st.read_value(&v, b"b").expect("read"), Some(b"1".to_vec()));

    let mut visit = Visit::new(v.clone());
    let mut b = st.batch();
    let mut seen = Vec::new();
    loop {
        let chunk = visit.next_chunk(&st, &mut b, 10).expect("visit");
        if chunk.is_empty() {
            break;
        }
        seen.extend(chunk.into_iter().map(|i| i.key));
    }
    seen.sort();
    assert_eq!(seen, vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);

    let mut b = st.batch();
    KeyedAccess::new(&st, &mut b).value_set(&v, st.key_group(b"d"), b"d", b"2");
    st.commit(b).expect("commit");
    drop(st);
    let st = deferring_store(dir.path(), &clock, hot::DEFAULT_BUDGET);
    let v = st.open_state("v", StateKind::Value, None).expect("open");
    assert_eq!(st.read_value(&v, b"d").expect("read"), Some(b"2".to_vec()));
    assert_eq!(st.count_entries().expect("count"), 4);
}

/// Found in review: a batch that clears a map is written through whole; an older deferred
/// write of a key it also writes (or deletes) must not survive it, hot or at the next settle.
#[test]
fn a_batch_that_clears_a_map_overrides_older_deferred_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(1_000);
    let st = deferring_store(dir.path(), &clock, hot::DEFAULT_BUDGET);
    let v = st.open_state("v", StateKind::Value, None).expect("open");
    let m = st.open_state("m", StateKind::Map, None).expect("open");
    let (kg_k, kg_j) = (st.key_group(b"k"), st.key_group(b"j"));
    let mut b = st.batch();
    {
        let mut a = KeyedAccess::new(&st, &mut b);
        a.value_set(&v, kg_k, b"k", b"old");
        a.value_set(&v, kg_j, b"j", b"old");
    }
    st.commit(b).expect("commit");
    let mut b = st.batch();
    {
        let mut a = KeyedAccess::new(&st, &mut b);
        a.value_set(&v, kg_k, b"k", b"new");
        a.value_clear(&v, kg_j, b"j");
        a.map_clear(&m, st.key_group(b"x"), b"x");
    }
    st.commit(b).expect("commit");
    assert_eq!(
        st.read_value(&v, b"k").expect("read"),
        Some(b"new".to_vec())
    );
    assert_eq!(st.read_value(&v, b"j").expect("read"), None);
    let (snap, v_snap) = checkpoint_of(&st, dir.path(), &clock);
    assert_eq!(
        snap.read_value(&v_snap, b"k").expect("read"),
        Some(b"new".to_vec())
    );
    assert_eq!(snap.read_value(&v_snap, b"j").expect("read"), None);
}

/// With hot values off there is nowhere to wait: every write goes into the batch's one
/// RocksDB write.
#[test]
fn without_hot_values_nothing_is_deferred() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(1_000);
    let st = deferring_store(dir.path(), &clock, 0);
    let v = st.open_state("v", StateKind::Value, None).expect("open");
    let kg = st.key_group(b"k");
    let mut b = st.batch();
    KeyedAccess::new(&st, &mut b).value_set(&v, kg, b"k", b"1");
    st.commit(b).expect("commit");
    assert!(on_disk(&st, &state_key(kg, v.id, b"k")));
}

/// Deferring pays when keys are written again before the next settle; when nearly every
/// write is to a new key it only costs, so the store writes through for a while and then
/// tries again.
#[test]
fn deferring_stops_when_it_saves_nothing_and_tries_again_later() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(1_000);
    let st = deferring_store(dir.path(), &clock, hot::DEFAULT_BUDGET);
    let v = st.open_state("v", StateKind::Value, None).expect("open");
    let write = |keys: &mut dyn Iterator<Item = String>| {
        let mut b = st.batch();
        let mut a = KeyedAccess::new(&st, &mut b);
        for k in keys {
            a.value_set(&v, st.key_group(k.as_bytes()), k.as_bytes(), b"1");
        }
        st.commit(b).expect("commit");
    };

    // 100 keys written 50 times each: 5,000 deferred writes, 100 waiting. Keeps deferring.
    for _ in 0..50 {
        write(&mut (0..100).map(|i| format!("hot-{i}")));
    }
    st.settle().expect("settle");
    assert!(st.defers_writes(), "rewrites were saved");
    let count = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    assert_eq!(count(&st.stats().deferred_writes), 5_000);
    assert_eq!(
        count(&st.stats().settled_writes),
        100,
        "one RocksDB write per key"
    );

    // 5,000 keys written once each: nothing saved. Writes go through after the settle.
    for chunk in 0..50 {
        write(&mut (0..100).map(|i| format!("once-{chunk}-{i}")));
    }
    st.settle().expect("settle");
    assert!(!st.defers_writes(), "nothing was saved");
    write(&mut std::iter::once("next".to_owned()));
    let kg = st.key_group(b"next");
    assert!(
        on_disk(&st, &state_key(kg, v.id, b"next")),
        "written through"
    );

    // After the probe interval, deferring is tried again.
    for i in 0..PROBE_AFTER_COMMITS {
        write(&mut std::iter::once(format!("later-{i}")));
    }
    assert!(st.defers_writes(), "tried again");
    write(&mut std::iter::once("probe".to_owned()));
    let kg = st.key_group(b"probe");
    assert!(
        !on_disk(&st, &state_key(kg, v.id, b"probe")),
        "deferred again"
    );
    assert_eq!(
        st.read_value(&v, b"probe").expect("read"),
        Some(b"1".to_vec())
    );
}

/// A settle writes RocksDB without holding the hot values: readers on other threads (queries)
/// go on meanwhile, and always see the committed values, before, during and after it.
#[test]
fn readers_see_the_committed_values_while_a_settle_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(1_000);
    let st = Arc::new(deferring_store(dir.path(), &clock, hot::DEFAULT_BUDGET));
    let v = st.open_state("v", StateKind::Value, None).expect("open");
    let keys: Vec<String> = (0..20_000).map(|i| format!("k-{i}")).collect();
    for round in [b"1", b"2"] {
        for chunk in keys.chunks(1_000) {
            let mut b = st.batch();
            let mut a = KeyedAccess::new(&st, &mut b);
            for k in chunk {
                a.value_set(&v, st.key_group(k.as_bytes()), k.as_bytes(), round);
            }
            st.commit(b).expect("commit");
        }
    }
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (st, v, keys, done) = (st.clone(), v.clone(), keys.clone(), done.clone());
        std::thread::spawn(move || {
            let mut reads = 0u64;
            while !done.load(Ordering::Relaxed) || reads < keys.len() as u64 {
                let k = &keys[reads as usize % keys.len()];
                assert_eq!(
                    st.read_value(&v, k.as_bytes()).expect("read"),
                    Some(b"2".to_vec()),
                    "{k}"
                );
                reads += 1;
            }
            reads
        })
    };
    st.settle().expect("settle");
    done.store(true, Ordering::Relaxed);
    assert!(reader.join().expect("reader") >= keys.len() as u64);
    assert_eq!(st.count_entries().expect("count"), keys.len() as u64);
}

/// Entries of `state` for keys `range`, as stored, each value `tag` and the key's number.
fn stored_entries(
    st: &StateStore,
    state: &StateInfo,
    range: std::ops::Range<u32>,
    tag: &str,
) -> ingest::RawEntries {
    range
        .map(|i| {
            let key = format!("k{i}");
            let kg = st.key_group(key.as_bytes());
            (
                state_key(kg, state.id, key.as_bytes()),
                layout::encode_value(1_000, format!("{tag}{i}").as_bytes()),
            )
        })
        .collect()
}

fn level_files(st: &StateStore, level: u32) -> u64 {
    st.db()
        .property_int_value_cf(st.keyed_cf(), &format!("rocksdb.num-files-at-level{level}"))
        .expect("property")
        .expect("level known")
}

#[test]
fn ingested_entries_read_as_written_ones_and_leave_nothing_in_level_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(1_000);
    let st = store(dir.path(), &clock);
    let v = st
        .open_state("profile", StateKind::Value, None)
        .expect("open");
    // A value cached in the hot values before the ingest is not read after it.
    let mut b = st.batch();
    KeyedAccess::new(&st, &mut b).value_set(&v, st.key_group(b"k1"), b"k1", b"old");
    st.commit(b).expect("commit");
    assert_eq!(
        st.read_value(&v, b"k1").expect("read"),
        Some(b"old".to_vec())
    );
    let ingest = st.ingest().expect("ingest");
    // Two batches from two threads, in no key order: their key ranges interleave (keys of
    // every key group in each), so the files overlap.
    std::thread::scope(|s| {
        let one = s.spawn(|| ingest.add(stored_entries(&st, &v, 0..5_000, "a"), false));
        let two = s.spawn(|| ingest.add(stored_entries(&st, &v, 5_000..10_000, "a"), false));
        for t in [one, two] {
            t.join().expect("thread").expect("add");
        }
    });
    // A third, added after both, rewrites some of their keys: it wins.
    ingest
        .add(stored_entries(&st, &v, 0..100, "z"), false)
        .expect("add");
    ingest.finish().expect("finish");
    for (i, want) in [
        (0u32, "z0"),
        (1, "z1"),
        (99, "z99"),
        (100, "a100"),
        (9_999, "a9999"),
    ] {
        let key = format!("k{i}");
        assert_eq!(
            st.read_value(&v, key.as_bytes()).expect("read"),
            Some(want.as_bytes().to_vec()),
            "{key}"
        );
    }
    assert_eq!(st.read_value(&v, b"k10000").expect("read"), None);
    assert_eq!(st.count_entries().expect("count"), 10_000);
    assert_eq!(
        level_files(&st, 0),
        0,
        "overlapping files are compacted down"
    );
    assert!(
        !dir.path().join("ingest").exists(),
        "the staging directory is removed"
    );

    // An ingest dropped before it finishes leaves nothing, in the store or beside it.
    let ingest = st.ingest().expect("ingest");
    ingest
        .add(stored_entries(&st, &v, 20_000..20_010, "x"), false)
        .expect("add");
    drop(ingest);
    assert_eq!(st.read_value(&v, b"k20000").expect("read"), None);
    assert!(!dir.path().join("ingest").exists());

    // Batches that do not overlap (one key group each, as a savepoint's files are) go in
    // together, below level 0; a later batch's entry wins over an earlier one's.
    let fresh = tempfile::tempdir().expect("tempdir");
    let st = store(fresh.path(), &clock);
    let v = st
        .open_state("profile", StateKind::Value, None)
        .expect("open");
    let mut groups: std::collections::BTreeMap<u16, ingest::RawEntries> = Default::default();
    for e in stored_entries(&st, &v, 0..10_000, "b") {
        groups
            .entry(layout::key_group_of(&e.0).expect("key group"))
            .or_default()
            .push(e);
    }
    let mut rewritten = stored_entries(&st, &v, 7..8, "c");
    rewritten.extend(stored_entries(&st, &v, 7..8, "d"));
    let kg7 = st.key_group(b"k7");
    let ingest = st.ingest().expect("ingest");
    for (kg, mut entries) in groups {
        if kg == kg7 {
            entries.extend(rewritten.clone());
        }
        ingest.add(entries, false).expect("add");
    }
    ingest.finish().expect("finish");
    assert_eq!(level_files(&st, 0), 0, "nothing lands in level 0");
    assert!(
        level_files(&st, 6) > 100,
        "the key groups' files sit at the bottom"
    );
    assert_eq!(
        st.read_value(&v, b"k7").expect("read"),
        Some(b"d7".to_vec())
    );
    assert_eq!(
        st.read_value(&v, b"k8").expect("read"),
        Some(b"b8".to_vec())
    );
    assert_eq!(st.count_entries().expect("count"), 10_000);
}
