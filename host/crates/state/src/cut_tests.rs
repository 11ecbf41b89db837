//! A frozen cut's RocksDB part done off the freezing thread (`cut`): what the cut holds, what
//! readers see meanwhile, and which writes wait for it.

use std::sync::Arc;

use super::layout::state_key;
use super::tests::{deferring_store, on_disk};
use super::*;

fn set(st: &StateStore, v: &StateInfo, keys: std::ops::Range<u32>, value: &[u8]) {
    let mut b = st.batch();
    {
        let mut a = KeyedAccess::new(st, &mut b);
        for i in keys {
            let k = format!("k{i}");
            a.value_set(v, st.key_group(k.as_bytes()), k.as_bytes(), value);
        }
    }
    st.commit(b).expect("commit");
}

fn on_disk_at(st: &StateStore, v: &StateInfo, i: u32) -> bool {
    let k = format!("k{i}");
    on_disk(
        st,
        &state_key(st.key_group(k.as_bytes()), v.id, k.as_bytes()),
    )
}

fn read(st: &StateStore, v: &StateInfo, i: u32) -> Option<Vec<u8>> {
    st.read_value(v, format!("k{i}").as_bytes()).expect("read")
}

#[test]
fn a_frozen_cut_writes_nothing_on_the_freezing_thread_and_holds_exactly_the_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(1_000);
    let st = Arc::new(deferring_store(
        &dir.path().join("db"),
        &clock,
        hot::DEFAULT_BUDGET,
    ));
    let v = st.open_state("v", StateKind::Value, None).expect("open");
    set(&st, &v, 0..1_000, b"1");
    assert!(
        !on_disk_at(&st, &v, 0),
        "deferred: only the hot values hold it"
    );

    let frozen = st.freeze(1, &dir.path().join("cp")).expect("freeze");
    assert!(
        !on_disk_at(&st, &v, 0) && !on_disk_at(&st, &v, 999),
        "the freeze handed the entries over without writing them"
    );
    // Meanwhile readers on other threads see every value, and commits whose writes wait in
    // the hot values go on without doing the cut's part.
    let reader = {
        let (st, v) = (st.clone(), v.clone());
        std::thread::spawn(move || (0..1_000).all(|i| read(&st, &v, i).is_some()))
    };
    assert!(reader.join().expect("reader"), "a value went missing");
    set(&st, &v, 0..500, b"2");
    set(&st, &v, 1_000..1_001, b"new");
    assert!(!on_disk_at(&st, &v, 999), "the cut's part is still pending");
    assert_eq!(
        read(&st, &v, 0),
        Some(b"2".to_vec()),
        "the newer write wins"
    );
    assert_eq!(read(&st, &v, 999), Some(b"1".to_vec()));

    // A commit that writes RocksDB (a delete) does the cut's part first, then its own.
    let mut b = st.batch();
    {
        let mut a = KeyedAccess::new(&st, &mut b);
        a.value_clear(&v, st.key_group(b"k999"), b"k999");
    }
    st.commit(b).expect("commit");
    assert!(on_disk_at(&st, &v, 998), "written by the cut's part");
    assert_eq!(
        read(&st, &v, 999),
        None,
        "the delete came after the cut's entry"
    );

    frozen.write(&st).expect("written after the cut");
    let cp = StateStore::open_read_only(&dir.path().join("cp"), Arc::new(clock.clone()))
        .expect("open the checkpoint");
    let cv = cp.state("v").expect("v");
    for i in [0, 499, 500, 999] {
        assert_eq!(read(&cp, &cv, i), Some(b"1".to_vec()), "k{i} as of the cut");
    }
    assert_eq!(read(&cp, &cv, 1_000), None, "written after the cut");

    // The live store settles the later writes over the cut's.
    st.settle().expect("settle");
    assert!(on_disk_at(&st, &v, 1_000));
    assert_eq!(read(&st, &v, 0), Some(b"2".to_vec()));
    assert_eq!(read(&st, &v, 500), Some(b"1".to_vec()));
}

#[test]
fn the_next_writer_does_a_cut_nobody_wrote_and_a_later_state_stays_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(1_000);
    let st = deferring_store(&dir.path().join("db"), &clock, hot::DEFAULT_BUDGET);
    let v = st.open_state("v", StateKind::Value, None).expect("open");
    set(&st, &v, 0..100, b"1");
    let frozen = st.freeze(7, &dir.path().join("cp")).expect("freeze");
    // Registering a state writes RocksDB: the cut's part is done first, so the registration
    // lands after the cut's marker.
    st.open_state("later", StateKind::Value, None)
        .expect("open");
    assert!(on_disk_at(&st, &v, 50), "done by the registering thread");
    frozen.write(&st).expect("written");
    let cp = StateStore::open_read_only(&dir.path().join("cp"), Arc::new(clock.clone()))
        .expect("open the checkpoint");
    assert!(cp.state("later").is_none(), "registered after the cut");
    let cv = cp.state("v").expect("v");
    assert_eq!(read(&cp, &cv, 50), Some(b"1".to_vec()));

    // A cut dropped without being written is done by the next freeze, before its own.
    set(&st, &v, 0..100, b"2");
    drop(st.freeze(8, &dir.path().join("lost")).expect("freeze"));
    set(&st, &v, 0..100, b"3");
    let frozen = st.freeze(9, &dir.path().join("cp9")).expect("freeze");
    frozen.write(&st).expect("written");
    let cp = StateStore::open_read_only(&dir.path().join("cp9"), Arc::new(clock.clone()))
        .expect("open the checkpoint");
    let cv = cp.state("v").expect("v");
    assert_eq!(read(&cp, &cv, 50), Some(b"3".to_vec()));
    assert!(
        !dir.path().join("lost").exists(),
        "nobody asked for its files"
    );
}
