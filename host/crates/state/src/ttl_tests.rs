//! TTL conformance, ported from Flink's `TtlStateTestBase` scenarios (`SPEC-STATE.md`): TTL
//! 100 ms on a manual clock, for value, map and list state. Each step is its own committed
//! batch, as successive events would be.

use std::sync::Arc;

use super::*;

#[derive(Clone, Copy, Debug)]
enum Kind {
    Value,
    Map,
    List,
}

const KINDS: [Kind; 3] = [Kind::Value, Kind::Map, Kind::List];
const KEY: &[u8] = b"k";

struct Fixture {
    _dir: tempfile::TempDir,
    clock: ManualClock,
    store: StateStore,
    state: StateInfo,
    kind: Kind,
}

fn fixture(kind: Kind, ttl_ms: u64, update: TtlUpdate, visibility: TtlVisibility) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(0);
    // As a pipeline opens its live database: no write-ahead log, so value and list writes
    // are deferred (`hot`) and every scenario below runs through that path.
    let options = StoreOptions {
        write_ahead_log: false,
        ..StoreOptions::default()
    };
    let store =
        StateStore::open_with(dir.path(), 128, Arc::new(clock.clone()), options).expect("open");
    let sk = match kind {
        Kind::Value => StateKind::Value,
        Kind::Map => StateKind::Map,
        Kind::List => StateKind::List,
    };
    let ttl = Ttl {
        ttl_ms,
        update,
        visibility,
    };
    let state = store.open_state("s", sk, Some(ttl)).expect("state");
    Fixture {
        _dir: dir,
        clock,
        store,
        state,
        kind,
    }
}

impl Fixture {
    fn at(&self, t: u64) -> &Self {
        self.clock.set(t);
        self
    }

    fn set(&self, v: &str) {
        self.set_key(KEY, v);
    }

    fn set_key(&self, key: &[u8], v: &str) {
        let mut b = self.store.batch();
        let kg = self.store.key_group(key);
        let mut a = KeyedAccess::new(&self.store, &mut b);
        match self.kind {
            Kind::Value => a.value_set(&self.state, kg, key, v.as_bytes()),
            Kind::Map => a.map_put(&self.state, kg, key, b"e", v.as_bytes()),
            Kind::List => a.list_update(&self.state, kg, key, &[v.as_bytes().to_vec()]),
        }
        self.store.commit(b).expect("commit");
    }

    fn get(&self) -> Option<String> {
        self.get_key(KEY)
    }

    fn get_key(&self, key: &[u8]) -> Option<String> {
        let mut b = self.store.batch();
        let kg = self.store.key_group(key);
        let mut a = KeyedAccess::new(&self.store, &mut b);
        let v = match self.kind {
            Kind::Value => a.value_get(&self.state, kg, key).expect("get"),
            Kind::Map => a.map_get(&self.state, kg, key, b"e").expect("get"),
            Kind::List => a
                .list_get(&self.state, kg, key)
                .expect("get")
                .into_iter()
                .next(),
        };
        self.store.commit(b).expect("commit");
        v.map(|v| String::from_utf8(v).expect("utf8"))
    }

    fn stored_key(&self) -> Vec<u8> {
        let kg = self.store.key_group(KEY);
        match self.kind {
            Kind::Map => layout::map_entry_key(kg, self.state.id, KEY, b"e"),
            _ => layout::state_key(kg, self.state.id, KEY),
        }
    }

    /// Whether RocksDB holds the entry once deferred writes are settled (what a checkpoint
    /// would hold).
    fn physically_present(&self) -> bool {
        self.store.settle().expect("settle");
        self.store
            .db()
            .get_cf(self.store.keyed_cf(), self.stored_key())
            .expect("raw get")
            .is_some()
    }
}

use TtlUpdate::{OnCreateAndWrite as WRITE, OnReadAndWrite as READ};
use TtlVisibility::{NeverReturnExpired as NEVER, ReturnExpiredIfNotCleanedUp as RELAXED};

#[test]
fn non_existent_state_reads_empty() {
    for kind in KINDS {
        let f = fixture(kind, 100, WRITE, NEVER);
        assert_eq!(f.at(0).get(), None, "{kind:?}");
    }
}

#[test]
fn exact_expiry_on_write() {
    for kind in KINDS {
        let f = fixture(kind, 100, WRITE, NEVER);
        f.at(0).set("A");
        assert_eq!(f.at(20).get().as_deref(), Some("A"), "{kind:?}");
        f.at(50).set("B");
        assert_eq!(
            f.at(120).get().as_deref(),
            Some("B"),
            "{kind:?}: B written at 50"
        );
        f.at(170).set("C");
        assert_eq!(f.at(220).get().as_deref(), Some("C"), "{kind:?}");
        assert_eq!(f.at(300).get(), None, "{kind:?}: 170 + 100 <= 300");
        assert!(
            !f.physically_present(),
            "{kind:?}: the expired read deleted it"
        );
    }
}

#[test]
fn expiry_boundary_is_inclusive() {
    for kind in KINDS {
        let f = fixture(kind, 100, WRITE, NEVER);
        f.at(0).set("A");
        assert_eq!(f.at(99).get().as_deref(), Some("A"), "{kind:?}");
        assert_eq!(
            f.at(100).get(),
            None,
            "{kind:?}: last_update + ttl == now is expired"
        );
    }
}

#[test]
fn relaxed_expiry_on_write_returns_the_stale_value_once() {
    for kind in KINDS {
        let f = fixture(kind, 100, WRITE, RELAXED);
        f.at(0).set("A");
        assert_eq!(
            f.at(120).get().as_deref(),
            Some("A"),
            "{kind:?}: stale, once"
        );
        assert_eq!(f.at(121).get(), None, "{kind:?}: cleared by that read");
        assert!(!f.physically_present(), "{kind:?}");
    }
}

#[test]
fn exact_expiry_on_read() {
    for kind in KINDS {
        let f = fixture(kind, 100, READ, NEVER);
        f.at(0).set("A");
        assert_eq!(f.at(50).get().as_deref(), Some("A"), "{kind:?}");
        assert_eq!(
            f.at(120).get().as_deref(),
            Some("A"),
            "{kind:?}: the read at 50 refreshed it"
        );
        assert_eq!(
            f.at(250).get(),
            None,
            "{kind:?}: last read at 120, 120 + 100 <= 250"
        );
    }
}

#[test]
fn relaxed_expiry_on_read() {
    for kind in KINDS {
        let f = fixture(kind, 100, READ, RELAXED);
        f.at(0).set("A");
        assert_eq!(f.at(50).get().as_deref(), Some("A"), "{kind:?}");
        assert_eq!(
            f.at(170).get().as_deref(),
            Some("A"),
            "{kind:?}: stale once"
        );
        assert_eq!(f.at(171).get(), None, "{kind:?}");
    }
}

#[test]
fn ttl_overflow_is_clamped() {
    for kind in KINDS {
        let f = fixture(kind, u64::MAX, WRITE, NEVER);
        f.at(10).set("A");
        assert_eq!(f.at(50).get().as_deref(), Some("A"), "{kind:?}");
        assert_eq!(f.at(u64::MAX - 1).get().as_deref(), Some("A"), "{kind:?}");
    }
}

#[test]
fn many_keys_expire_independently() {
    for kind in KINDS {
        let f = fixture(kind, 100, WRITE, NEVER);
        for i in 0..10u64 {
            f.at(i * 20).set_key(format!("k{i}").as_bytes(), "v");
        }
        f.at(150);
        for i in 0..10u64 {
            let want = (i * 20 + 100 > 150).then(|| "v".to_string());
            assert_eq!(
                f.get_key(format!("k{i}").as_bytes()),
                want,
                "{kind:?} key {i}"
            );
        }
    }
}

#[test]
fn map_iteration_skips_and_deletes_expired_entries() {
    let f = fixture(Kind::Map, 100, WRITE, NEVER);
    let kg = f.store.key_group(KEY);
    for (t, k) in [(0, "a"), (50, "b"), (60, "c")] {
        f.clock.set(t);
        let mut b = f.store.batch();
        KeyedAccess::new(&f.store, &mut b).map_put(&f.state, kg, KEY, k.as_bytes(), b"v");
        f.store.commit(b).expect("commit");
    }
    f.clock.set(120);
    let mut b = f.store.batch();
    let entries = KeyedAccess::new(&f.store, &mut b)
        .map_entries(&f.state, kg, KEY, None, 10)
        .expect("entries");
    f.store.commit(b).expect("commit");
    let keys: Vec<&[u8]> = entries.iter().map(|(k, _)| k.as_slice()).collect();
    assert_eq!(keys, vec![&b"b"[..], &b"c"[..]]);
    let gone = layout::map_entry_key(kg, f.state.id, KEY, b"a");
    assert!(
        f.store
            .db()
            .get_cf(f.store.keyed_cf(), gone)
            .expect("get")
            .is_none()
    );
    assert!(f.store.stats().expired_on_read.load(Ordering::Relaxed) >= 1);
}

#[test]
fn list_reads_under_on_read_and_write_rewrite_only_live_elements_restamped() {
    let f = fixture(Kind::List, 100, READ, NEVER);
    let kg = f.store.key_group(KEY);
    for (t, v) in [(0, "old"), (60, "new")] {
        f.clock.set(t);
        let mut b = f.store.batch();
        KeyedAccess::new(&f.store, &mut b)
            .list_add_all(&f.state, kg, KEY, &[v.as_bytes().to_vec()])
            .expect("add");
        f.store.commit(b).expect("commit");
    }
    f.clock.set(110);
    let mut b = f.store.batch();
    let got = KeyedAccess::new(&f.store, &mut b)
        .list_get(&f.state, kg, KEY)
        .expect("get");
    f.store.commit(b).expect("commit");
    assert_eq!(got, vec![b"new".to_vec()]);
    f.store.settle().expect("settle");
    let raw = f
        .store
        .db()
        .get_cf(f.store.keyed_cf(), f.stored_key())
        .expect("get")
        .expect("present");
    let els = layout::decode_list(&raw).expect("list");
    assert_eq!(
        els,
        vec![(110, &b"new"[..])],
        "only the live element, re-stamped at the read"
    );
}

#[test]
fn compaction_filter_drops_expired_entries_without_reads() {
    for kind in KINDS {
        let f = fixture(kind, 100, WRITE, RELAXED);
        f.at(0).set_key(b"old", "A");
        f.at(50).set_key(b"new", "B");
        let present = |key: &[u8]| {
            let kg = f.store.key_group(key);
            let k = match kind {
                Kind::Map => layout::map_entry_key(kg, f.state.id, key, b"e"),
                _ => layout::state_key(kg, f.state.id, key),
            };
            f.store.settle().expect("settle");
            f.store
                .db()
                .get_cf(f.store.keyed_cf(), k)
                .expect("get")
                .is_some()
        };
        for (t, old, new) in [
            (0, true, true),
            (50, true, true),
            (80, true, true),
            (120, false, true),
            (170, false, false),
        ] {
            f.clock.set(t);
            f.store.compact().expect("compact");
            assert_eq!(
                (present(b"old"), present(b"new")),
                (old, new),
                "{kind:?} at t{t}"
            );
        }
        assert_eq!(
            f.store
                .stats()
                .expired_in_compaction
                .load(Ordering::Relaxed),
            2,
            "{kind:?}"
        );
    }
}

#[test]
fn states_without_ttl_are_never_expired() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(0);
    let store = StateStore::open(dir.path(), 128, Arc::new(clock.clone())).expect("open");
    let s = store
        .open_state("plain", StateKind::Value, None)
        .expect("state");
    let mut b = store.batch();
    KeyedAccess::new(&store, &mut b).value_set(&s, store.key_group(KEY), KEY, b"v");
    store.commit(b).expect("commit");
    clock.set(u64::MAX);
    store.compact().expect("compact");
    assert_eq!(
        store.read_value(&s, KEY).expect("read"),
        Some(b"v".to_vec())
    );
}

#[test]
fn a_million_expired_keys_never_read_again_are_reclaimed_from_disk() {
    let f = fixture(Kind::Value, 100, WRITE, NEVER);
    let value = [b'x'; 64];
    f.clock.set(0);
    for chunk in 0..100u32 {
        let mut b = f.store.batch();
        let mut a = KeyedAccess::new(&f.store, &mut b);
        for i in 0..10_000u32 {
            let key = format!("customer-{chunk}-{i}");
            a.value_set(
                &f.state,
                f.store.key_group(key.as_bytes()),
                key.as_bytes(),
                &value,
            );
        }
        f.store.commit(b).expect("commit");
    }
    f.store.compact().expect("compact");
    let before = f.store.disk_bytes().expect("size");
    assert_eq!(f.store.count_entries().expect("count"), 1_000_000);
    assert!(
        before > 5 << 20,
        "the data is really on disk: {before} bytes"
    );

    f.clock.set(1_000);
    f.store.compact().expect("compact");
    let after = f.store.disk_bytes().expect("size");
    assert_eq!(
        f.store.count_entries().expect("count"),
        0,
        "no expired key survives"
    );
    assert!(
        after * 10 <= before,
        "disk use down by at least 90%: {before} -> {after} bytes"
    );
}

#[test]
fn a_per_write_ttl_wins_over_the_states_and_works_without_one() {
    for (state_ttl, kind) in [
        (None, Kind::Value),
        (None, Kind::Map),
        (Some(1_000u64), Kind::Value),
        (Some(1_000), Kind::Map),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = ManualClock::new(0);
        let store = StateStore::open(dir.path(), 128, Arc::new(clock.clone())).expect("open");
        let sk = if matches!(kind, Kind::Value) {
            StateKind::Value
        } else {
            StateKind::Map
        };
        let ttl = state_ttl.map(|ms| Ttl {
            ttl_ms: ms,
            update: WRITE,
            visibility: NEVER,
        });
        let s = store.open_state("s", sk, ttl).expect("state");
        let kg = store.key_group(KEY);
        let write = |own: Option<u64>| {
            let mut b = store.batch();
            let mut a = KeyedAccess::new(&store, &mut b);
            match (kind, own) {
                (Kind::Value, Some(ms)) => a.value_set_ttl(&s, kg, KEY, b"v", Some(ms)),
                (Kind::Value, None) => a.value_set(&s, kg, KEY, b"v"),
                (_, Some(ms)) => a.map_put_ttl(&s, kg, KEY, b"e", b"v", Some(ms)),
                (_, None) => a.map_put(&s, kg, KEY, b"e", b"v"),
            }
            store.commit(b).expect("commit");
        };
        let read = || {
            let mut b = store.batch();
            let mut a = KeyedAccess::new(&store, &mut b);
            let v = match kind {
                Kind::Value => a.value_get(&s, kg, KEY).expect("get"),
                _ => a.map_get(&s, kg, KEY, b"e").expect("get"),
            };
            store.commit(b).expect("commit");
            v.is_some()
        };
        write(Some(50));
        clock.set(49);
        assert!(read(), "{kind:?}/{state_ttl:?}: live before its own TTL");
        clock.set(50);
        assert!(!read(), "{kind:?}/{state_ttl:?}: expired by its own TTL");
        // Written again without one: the state's TTL (or none) applies again.
        write(None);
        clock.set(900);
        assert!(
            read(),
            "{kind:?}/{state_ttl:?}: a plain write drops the own TTL"
        );
        // Compaction reclaims entries with their own TTL even in states without one.
        write(Some(10));
        clock.set(2_000);
        store.compact().expect("compact");
        assert_eq!(
            store.count_entries().expect("count"),
            0,
            "{kind:?}/{state_ttl:?}"
        );
    }
}

/// Hot values (`hot`) never change what a read reports: an entry read (and so cached), then
/// dropped by the compaction filter, reads as RocksDB says after compaction, counted as
/// removed by compaction and not again on read; under `return-expired-if-not-cleaned-up` a read
/// after compaction reports the cleanup, not a cached copy.
#[test]
fn hot_values_follow_what_compaction_removed() {
    for (visibility, before_compaction) in [(NEVER, None), (RELAXED, Some("A".to_string()))] {
        let f = fixture(Kind::Value, 100, WRITE, visibility);
        f.at(0).set("A");
        assert_eq!(f.at(50).get().as_deref(), Some("A"), "read, now hot");
        f.clock.set(150);
        let stats = f.store.stats();
        let on_read = stats.expired_on_read.load(Ordering::Relaxed);
        f.store.compact().expect("compact");
        assert_eq!(stats.expired_in_compaction.load(Ordering::Relaxed), 1);
        assert!(!f.physically_present());
        assert_eq!(f.get(), None, "{visibility:?}: cleaned up, so not returned");
        assert_eq!(
            stats.expired_on_read.load(Ordering::Relaxed),
            on_read,
            "{visibility:?}: removed once, by compaction"
        );
        // Without compaction the relaxed visibility still returns it once.
        let g = fixture(Kind::Value, 100, WRITE, visibility);
        g.at(0).set("A");
        assert_eq!(g.at(50).get().as_deref(), Some("A"));
        assert_eq!(g.at(150).get(), before_compaction, "{visibility:?}");
    }
}

/// Commits write through the hot values: an overwrite, a delete and a map clear are what the
/// next batch reads.
#[test]
fn hot_values_see_every_commit() {
    let f = fixture(Kind::Map, 1_000_000, WRITE, NEVER);
    f.at(0).set("A");
    assert_eq!(f.get().as_deref(), Some("A"));
    f.set("B");
    assert_eq!(f.get().as_deref(), Some("B"));
    let kg = f.store.key_group(KEY);
    let mut b = f.store.batch();
    KeyedAccess::new(&f.store, &mut b).map_remove(&f.state, kg, KEY, b"e");
    f.store.commit(b).expect("commit");
    assert_eq!(f.get(), None);
    f.set("C");
    assert_eq!(f.get().as_deref(), Some("C"));
    let mut b = f.store.batch();
    KeyedAccess::new(&f.store, &mut b).map_clear(&f.state, kg, KEY);
    f.store.commit(b).expect("commit");
    assert_eq!(f.get(), None);
}
