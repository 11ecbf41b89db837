use std::sync::Arc;

use super::savepoint;
use super::*;
use eddy_state::{KeyedAccess, ManualClock, StateKind, StateStore, Ttl, TtlUpdate, TtlVisibility};

struct Fixture {
    dir: tempfile::TempDir,
    clock: ManualClock,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture {
            dir: tempfile::tempdir().expect("tempdir"),
            clock: ManualClock::new(1_000),
        }
    }

    fn db(&self) -> std::path::PathBuf {
        self.dir.path().join("db")
    }

    /// Opened as a pipeline opens its live database: no write-ahead log, so value and list
    /// writes wait in the hot values until a checkpoint settles them.
    fn open(&self, key_groups: u32) -> StateStore {
        let options = eddy_state::StoreOptions {
            write_ahead_log: false,
            ..Default::default()
        };
        StateStore::open_with(
            &self.db(),
            key_groups,
            Arc::new(self.clock.clone()),
            options,
        )
        .expect("open")
    }

    fn checkpoints(&self, retain: usize) -> Checkpoints {
        Checkpoints::new(
            &self.dir.path().join("checkpoints"),
            &self.dir.path().join("staging"),
            "t",
            retain,
        )
    }
}

fn write_counts(store: &StateStore, from: u32, to: u32, value: &[u8]) {
    let s = store
        .open_state("count", StateKind::Value, None)
        .expect("state");
    let mut b = store.batch();
    {
        let mut a = KeyedAccess::new(store, &mut b);
        for i in from..to {
            let key = format!("k{i}");
            a.value_set(&s, store.key_group(key.as_bytes()), key.as_bytes(), value);
        }
    }
    store.commit(b).expect("commit");
}

fn read(store: &StateStore, key: &str) -> Option<Vec<u8>> {
    let s = store.state("count").expect("registered");
    store.read_value(&s, key.as_bytes()).expect("read")
}

/// Checkpoint 1 of 100 keys, completed; its staged cut kept.
fn one_checkpoint(f: &Fixture) -> (Checkpoints, StateStore, Staged, Manifest) {
    let cps = f.checkpoints(2);
    let store = f.open(16);
    write_counts(&store, 0, 100, b"1");
    let staged = cps.cut(&store, 1, cut(1)).expect("cut");
    let m = cps.complete(&staged).expect("complete");
    (cps, store, staged, m)
}

fn cut(pos: u64) -> Cut {
    Cut {
        positions: BTreeMap::from([("keyed:IN/c".to_string(), pos)]),
        plugin_version: "v1".into(),
        ..Cut::default()
    }
}

#[test]
fn a_checkpoint_restores_exactly_the_state_at_its_cut() {
    let f = Fixture::new();
    let cps = f.checkpoints(3);
    let store = f.open(16);
    write_counts(&store, 0, 100, b"1");
    let staged = cps.cut(&store, 1, cut(100)).expect("cut");
    // Writes after the cut are not in the checkpoint.
    write_counts(&store, 0, 200, b"2");
    let m = cps.complete(&staged).expect("complete");
    assert_eq!(m.cut.positions["keyed:IN/c"], 100);
    assert!(m.total_bytes > 0 && m.new_bytes > 0);
    drop(store);

    let restored = cps.restore_newest(&f.db()).expect("restore").expect("one");
    assert_eq!(restored.id, 1);
    let store = f.open(16);
    assert_eq!(read(&store, "k5"), Some(b"1".to_vec()));
    assert_eq!(read(&store, "k150"), None, "written after the cut");
    assert_eq!(
        store.position("keyed:IN/c").expect("position"),
        Some(100),
        "positions are in the checkpointed state too"
    );
}

#[test]
fn checkpoints_are_incremental_and_old_ones_are_deleted() {
    let f = Fixture::new();
    let cps = f.checkpoints(2);
    let store = f.open(16);
    let big = vec![7u8; 2_000];
    write_counts(&store, 0, 5_000, &big);
    let first = cps
        .complete(&cps.cut(&store, 1, cut(1)).expect("cut"))
        .expect("complete");
    write_counts(&store, 5_000, 5_100, &big);
    let second = cps
        .complete(&cps.cut(&store, 2, cut(2)).expect("cut"))
        .expect("complete");
    assert!(
        second.new_bytes * 5 < second.total_bytes,
        "the second checkpoint stores only its new SST files: {} new of {}",
        second.new_bytes,
        second.total_bytes
    );
    let third = cps
        .complete(&cps.cut(&store, 3, cut(3)).expect("cut"))
        .expect("complete");
    cps.retain(Some(third.id)).expect("retain");
    let ids: Vec<u64> = cps.list().iter().map(|m| m.id).collect();
    assert_eq!(ids, vec![2, 3], "retain keeps the newest two");
    // Files only the deleted checkpoint used are gone; those of the kept ones remain.
    for f in &third.files {
        assert!(cps.dir().join(&f.stored).is_file(), "{} kept", f.stored);
    }
    let _ = first;
}

#[test]
fn a_corrupt_newest_checkpoint_falls_back_to_the_previous_one() {
    let f = Fixture::new();
    let cps = f.checkpoints(3);
    let store = f.open(16);
    write_counts(&store, 0, 50, b"1");
    cps.complete(&cps.cut(&store, 1, cut(50)).expect("cut"))
        .expect("complete");
    write_counts(&store, 0, 50, b"2");
    let newest = cps
        .complete(&cps.cut(&store, 2, cut(60)).expect("cut"))
        .expect("complete");
    drop(store);
    // Damage a file only the newest checkpoint has.
    let own = newest
        .files
        .iter()
        .find(|f| f.name.starts_with("MANIFEST"))
        .expect("its MANIFEST");
    let path = cps.dir().join(&own.stored);
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[0] ^= 0xff;
    std::fs::write(&path, bytes).expect("damage");

    let restored = cps.restore_newest(&f.db()).expect("restore").expect("some");
    assert_eq!(restored.id, 1, "fell back to the previous checkpoint");
    let store = f.open(16);
    assert_eq!(read(&store, "k1"), Some(b"1".to_vec()));
    drop(store);

    // A missing file is caught the same way.
    std::fs::remove_dir_all(cps.dir().join("chk-0000000002")).expect("rm");
    let restored = cps.restore_newest(&f.db()).expect("restore").expect("some");
    assert_eq!(restored.id, 1);
}

#[test]
fn an_unreadable_newest_checkpoint_is_an_error_not_a_fallback() {
    let f = Fixture::new();
    let cps = f.checkpoints(3);
    let store = f.open(16);
    write_counts(&store, 0, 50, b"1");
    cps.complete(&cps.cut(&store, 1, cut(50)).expect("cut"))
        .expect("complete");
    write_counts(&store, 0, 50, b"2");
    let newest = cps
        .complete(&cps.cut(&store, 2, cut(60)).expect("cut"))
        .expect("complete");
    drop(store);
    // A file of the newest checkpoint that cannot be read (a symbolic link loop stands for a
    // disk that fails: ELOOP is an I/O error, not a missing file). Falling back would restart
    // from checkpoint 1 although checkpoint 2 may be intact once the disk is fixed.
    let own = newest
        .files
        .iter()
        .find(|f| f.name.starts_with("MANIFEST"))
        .expect("its MANIFEST");
    let path = cps.dir().join(&own.stored);
    std::fs::remove_file(&path).expect("rm");
    std::os::unix::fs::symlink(&path, &path).expect("a link to itself");

    match cps.restore_newest(&f.db()) {
        Err(Error::Io { what, .. }) => assert!(what.contains("MANIFEST"), "{what}"),
        other => panic!("an I/O error, not a fallback: {other:?}"),
    }
    // A corrupt manifest, in contrast, is corruption: checkpoint 1 is used.
    std::fs::remove_file(&path).expect("rm link");
    std::fs::write(
        cps.dir().join("chk-0000000002/manifest.json"),
        b"{ not json",
    )
    .expect("damage");
    let restored = cps.restore_newest(&f.db()).expect("restore").expect("some");
    assert_eq!(restored.id, 1, "fell back past the corrupt manifest");
}

#[test]
fn an_incomplete_checkpoint_is_never_used() {
    let f = Fixture::new();
    let cps = f.checkpoints(3);
    let store = f.open(16);
    write_counts(&store, 0, 10, b"1");
    cps.complete(&cps.cut(&store, 1, cut(10)).expect("cut"))
        .expect("complete");
    write_counts(&store, 0, 10, b"2");
    // Cut but never completed (the host died before the manifest).
    let _staged = cps.cut(&store, 2, cut(20)).expect("cut");
    drop(store);
    let restored = cps.restore_newest(&f.db()).expect("restore").expect("some");
    assert_eq!(restored.id, 1);
    assert_eq!(cps.next_id(), 3, "ids are never reused");
}

fn ttl(ms: u64) -> Ttl {
    Ttl {
        ttl_ms: ms,
        update: TtlUpdate::OnCreateAndWrite,
        visibility: TtlVisibility::NeverReturnExpired,
    }
}

/// Savepoint restored with twice the key groups, into another directory: every key reads the
/// same; expired entries are not carried (Flink's "cleanup in full snapshot": after restore,
/// with the clock set back, they are still gone).
#[test]
fn a_savepoint_restores_elsewhere_with_other_key_groups_without_expired_entries() {
    let f = Fixture::new();
    let store = f.open(16);
    let live = store
        .open_state("live", StateKind::Value, None)
        .expect("state");
    let short = store
        .open_state("short", StateKind::Map, Some(ttl(100)))
        .expect("state");
    let list = store
        .open_state("hist", StateKind::List, Some(ttl(100)))
        .expect("state");
    let table = store.open_broadcast_map("rules").expect("map");
    let mut b = store.batch();
    {
        let mut a = KeyedAccess::new(&store, &mut b);
        for i in 0..300u32 {
            let key = format!("c-{i}");
            let kg = store.key_group(key.as_bytes());
            a.value_set(&live, kg, key.as_bytes(), format!("{i}").as_bytes());
            a.map_put(&short, kg, key.as_bytes(), b"tx", b"1");
            a.list_add_all(&list, kg, key.as_bytes(), &[b"old".to_vec()])
                .expect("add");
        }
    }
    eddy_state::BroadcastAccess::new(&store, &mut b).put(table, b"travel", b"500".to_vec());
    store.commit(b).expect("commit");
    // Later: the map entries expire, and the list gets a young element.
    f.clock.set(1_150);
    let mut b = store.batch();
    {
        let mut a = KeyedAccess::new(&store, &mut b);
        let kg = store.key_group(b"c-7");
        a.list_add_all(&list, kg, b"c-7", &[b"young".to_vec()])
            .expect("add");
    }
    store.commit(b).expect("commit");

    let sp_dir = f.dir.path().join("sp");
    let meta = savepoint::write(&store, &cut(300), "t", &sp_dir, |_| {}).expect("write");
    assert_eq!(meta.key_groups, 16);
    assert!(meta.expired_skipped >= 300, "{meta:?}");
    assert!(meta.files.iter().any(|f| f.key_group.is_some()));

    // Restore elsewhere with twice the key groups, the clock set back before the expiry.
    f.clock.set(1_010);
    let other = tempfile::tempdir().expect("tempdir");
    let target = StateStore::open(&other.path().join("db"), 32, Arc::new(f.clock.clone()))
        .expect("open target");
    let restored = savepoint::restore(&sp_dir, &target, |_| true, |_| {}).expect("restore");
    assert_eq!(restored.entries, meta.entries);
    let live2 = target.state("live").expect("state");
    for i in 0..300u32 {
        let key = format!("c-{i}");
        assert_eq!(
            target.read_value(&live2, key.as_bytes()).expect("read"),
            Some(format!("{i}").into_bytes()),
            "{key}"
        );
    }
    let short2 = target.state("short").expect("state");
    let hist2 = target.state("hist").expect("state");
    let mut b = target.batch();
    let mut a = KeyedAccess::new(&target, &mut b);
    let kg = target.key_group(b"c-7");
    assert_eq!(
        a.map_get(&short2, kg, b"c-7", b"tx").expect("get"),
        None,
        "expired before the savepoint: still gone with the clock set back"
    );
    assert_eq!(
        a.list_get(&hist2, kg, b"c-7").expect("list"),
        vec![b"young".to_vec()]
    );
    let kg = target.key_group(b"c-8");
    assert!(a.list_get(&hist2, kg, b"c-8").expect("list").is_empty());
    let t = target.broadcast_map("rules").expect("map");
    assert_eq!(
        eddy_state::BroadcastAccess::new(&target, &mut target.batch())
            .get(t, b"travel")
            .expect("get"),
        Some(b"500".to_vec())
    );
    assert_eq!(target.position("keyed:IN/c").expect("pos"), Some(300));

    // Expiry runs on the restored timestamps (the young element was written at 1,150 with a
    // 100 ms TTL), and after restoring with twice the key groups the compaction filter still
    // drops what expired: only the 300 values without TTL stay on disk.
    f.clock.set(1_249);
    let mut b = target.batch();
    let mut a = KeyedAccess::new(&target, &mut b);
    let kg = target.key_group(b"c-7");
    assert_eq!(
        a.list_get(&hist2, kg, b"c-7").expect("list"),
        vec![b"young".to_vec()]
    );
    f.clock.set(1_250);
    let mut b = target.batch();
    let mut a = KeyedAccess::new(&target, &mut b);
    assert!(a.list_get(&hist2, kg, b"c-7").expect("list").is_empty());
    target.compact().expect("compact");
    assert_eq!(target.count_entries().expect("count"), 300);

    // Only owned key groups are kept (a host owning half of the partitions).
    let half = tempfile::tempdir().expect("tempdir");
    let part =
        StateStore::open(&half.path().join("db"), 32, Arc::new(f.clock.clone())).expect("open");
    savepoint::restore(&sp_dir, &part, |kg| kg.is_multiple_of(2), |_| {}).expect("restore");
    let live3 = part.state("live").expect("state");
    for i in 0..300u32 {
        let key = format!("c-{i}");
        let kg = part.key_group(key.as_bytes());
        let v = part.read_value(&live3, key.as_bytes()).expect("read");
        assert_eq!(v.is_some(), kg.is_multiple_of(2), "{key} in key group {kg}");
    }

    // A damaged savepoint is refused.
    let file = sp_dir.join(&meta.files[0].path);
    let mut bytes = std::fs::read(&file).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&file, bytes).expect("damage");
    let again = tempfile::tempdir().expect("tempdir");
    let t3 =
        StateStore::open(&again.path().join("db"), 16, Arc::new(f.clock.clone())).expect("open");
    let e = savepoint::restore(&sp_dir, &t3, |_| true, |_| {}).expect_err("damaged");
    assert!(e.to_string().contains("fails its checksum"), "{e}");
}

/// Checkpoints of the fixture kept in a store directory beside it, as a host keeps them in
/// the NATS object store or S3.
fn stored(f: &Fixture, retain: usize) -> Checkpoints {
    f.checkpoints(retain)
        .with_storage(Arc::new(storage::DirStorage::new(
            &f.dir.path().join("store"),
        )))
}

/// Wipes the host's disk (database, staging, the local checkpoint cache) and restores the
/// newest checkpoint from the store.
fn restore_on_a_wiped_host(f: &Fixture, retain: usize) -> (Checkpoints, Manifest) {
    for d in ["db", "staging", "checkpoints"] {
        std::fs::remove_dir_all(f.dir.path().join(d)).expect("wipe");
    }
    let cps = stored(f, retain);
    let restored = cps
        .restore_newest(&f.db())
        .expect("restore")
        .expect("from the store");
    (cps, restored)
}

#[test]
fn a_wiped_host_restores_its_state_from_the_store() {
    let f = Fixture::new();
    let cps = stored(&f, 2);
    let store = f.open(16);
    write_counts(&store, 0, 100, b"1");
    let first = cps
        .complete(&cps.cut(&store, 1, cut(100)).expect("cut"))
        .expect("complete");
    assert_eq!(
        first.uploaded_bytes, first.total_bytes,
        "everything is new to the store"
    );
    write_counts(&store, 100, 120, b"2");
    let second = cps
        .complete(&cps.cut(&store, 2, cut(120)).expect("cut"))
        .expect("complete");
    assert!(
        second.uploaded_bytes < second.total_bytes,
        "SST files already stored are not sent again: {} of {}",
        second.uploaded_bytes,
        second.total_bytes
    );
    cps.retain(None).expect("retain");
    drop(store);

    let (cps, restored) = restore_on_a_wiped_host(&f, 2);
    assert_eq!(restored.id, 2);
    let store = f.open(16);
    assert_eq!(read(&store, "k5"), Some(b"1".to_vec()));
    assert_eq!(read(&store, "k110"), Some(b"2".to_vec()));
    assert_eq!(
        cps.next_id(),
        3,
        "ids continue after the store's, not the empty disk's"
    );

    // Retention applies to the store: two more checkpoints leave the newest two, and no
    // shared file that neither uses.
    for (id, pos) in [(3, 130), (4, 140)] {
        write_counts(&store, 0, 10, format!("{id}").as_bytes());
        cps.complete(&cps.cut(&store, id, cut(pos)).expect("cut"))
            .expect("complete");
        cps.retain(None).expect("retain");
    }
    let kept: Vec<u64> = cps.list().iter().map(|m| m.id).collect();
    assert_eq!(kept, vec![3, 4]);
    let objects = storage::DirStorage::new(&f.dir.path().join("store"));
    use storage::Storage;
    let used: std::collections::HashSet<String> = cps
        .list()
        .into_iter()
        .flat_map(|m| m.files.into_iter().map(|f| f.stored))
        .collect();
    let shared = objects.list("shared/").expect("list");
    assert!(!shared.is_empty());
    for name in shared {
        assert!(used.contains(&name), "{name} is used by no kept checkpoint");
    }
    assert!(objects.list("chk-0000000001/").expect("list").is_empty());
}

/// `eddy checkpoints delete` runs beside the pipeline's host, with its own view of the store.
/// Deleting the newest checkpoint must not take files the host's next checkpoint uses (the
/// host knows them stored and does not send them again).
#[test]
fn deleting_the_newest_checkpoint_beside_its_running_host_breaks_no_later_checkpoint() {
    let f = Fixture::new();
    let host = stored(&f, 3);
    let store = f.open(16);
    write_counts(&store, 0, 100, b"1");
    host.complete(&host.cut(&store, 1, cut(100)).expect("cut"))
        .expect("complete");
    host.retain(None).expect("retain");
    write_counts(&store, 100, 200, b"2");
    let second = host
        .complete(&host.cut(&store, 2, cut(200)).expect("cut"))
        .expect("complete");
    host.retain(None).expect("retain");

    let operator = stored(&f, 3);
    operator.delete(2).expect("delete");
    let ids: Vec<u64> = operator.list().iter().map(|m| m.id).collect();
    assert_eq!(ids, vec![1], "checkpoint 2 is gone");

    write_counts(&store, 200, 210, b"3");
    let third = host
        .complete(&host.cut(&store, 3, cut(210)).expect("cut"))
        .expect("complete");
    let reused: Vec<&str> = second
        .files
        .iter()
        .filter(|f| f.stored.starts_with("shared/"))
        .filter(|f| third.files.iter().any(|t| t.stored == f.stored))
        .map(|f| f.stored.as_str())
        .collect();
    assert!(
        !reused.is_empty(),
        "the test needs checkpoint 3 to use files checkpoint 2 stored"
    );
    host.retain(None).expect("retain");
    drop(store);

    let (_, restored) = restore_on_a_wiped_host(&f, 3);
    assert_eq!(restored.id, 3, "checkpoint 3 restores whole");
    let store = f.open(16);
    assert_eq!(read(&store, "k150"), Some(b"2".to_vec()));
    assert_eq!(read(&store, "k205"), Some(b"3".to_vec()));
}

/// Retention deletes the shared files the host knows of (its first listing, its own uploads)
/// that no kept checkpoint uses, never a file that appeared since: it may be another host's
/// upload in flight (the partition's new owner, while this one, paused, has not noticed it
/// lost it).
#[test]
fn retention_leaves_files_uploaded_after_its_first_look_to_their_writer() {
    let f = Fixture::new();
    let objects = storage::DirStorage::new(&f.dir.path().join("store"));
    use storage::Storage;
    let host = stored(&f, 1);
    let store = f.open(16);
    write_counts(&store, 0, 100, b"1");
    let first = host
        .complete(&host.cut(&store, 1, cut(100)).expect("cut"))
        .expect("complete");
    host.retain(None).expect("retain");

    // Another writer's SST file, stored before its manifest.
    let in_flight = "shared/000099-in-flight.sst";
    objects
        .put_bytes(in_flight, b"another owner's upload")
        .expect("put");
    store.compact().expect("compact");
    write_counts(&store, 100, 110, b"2");
    let second = host
        .complete(&host.cut(&store, 2, cut(110)).expect("cut"))
        .expect("complete");
    host.retain(None).expect("retain");
    let present = objects.list("shared/").expect("list");
    assert!(
        present.iter().any(|n| n == in_flight),
        "retention deleted a file it had not seen at its first look"
    );
    let dropped: Vec<&str> = first
        .files
        .iter()
        .filter(|f| f.stored.starts_with("shared/"))
        .filter(|f| !second.files.iter().any(|s| s.stored == f.stored))
        .map(|f| f.stored.as_str())
        .collect();
    assert!(
        !dropped.is_empty(),
        "after a compaction, checkpoint 2 no longer uses checkpoint 1's files"
    );
    for name in dropped {
        assert!(
            !present.iter().any(|n| n == name),
            "{name}, used only by the dropped checkpoint 1, is still stored"
        );
    }

    // The host restarts: the file, still unused, was there at its first look.
    let restarted = stored(&f, 1);
    write_counts(&store, 0, 5, b"3");
    restarted
        .complete(&restarted.cut(&store, 3, cut(120)).expect("cut"))
        .expect("complete");
    restarted.retain(None).expect("retain");
    let present = objects.list("shared/").expect("list");
    assert!(
        !present.iter().any(|n| n == in_flight),
        "a file no checkpoint uses, present at the host's first look, is collected"
    );
    let used: std::collections::HashSet<String> = restarted
        .list()
        .into_iter()
        .flat_map(|m| m.files.into_iter().map(|f| f.stored))
        .collect();
    for name in present {
        assert!(used.contains(&name), "{name} is used by no kept checkpoint");
    }
}

#[test]
fn a_file_missing_from_the_store_falls_back_to_the_previous_checkpoint() {
    let f = Fixture::new();
    let cps = stored(&f, 3);
    let store = f.open(16);
    write_counts(&store, 0, 50, b"1");
    cps.complete(&cps.cut(&store, 1, cut(50)).expect("cut"))
        .expect("complete");
    write_counts(&store, 0, 50, b"2");
    let newest = cps
        .complete(&cps.cut(&store, 2, cut(60)).expect("cut"))
        .expect("complete");
    drop(store);
    std::fs::remove_dir_all(f.dir.path().join("checkpoints")).expect("wipe the cache");
    // Its MANIFEST: no other checkpoint has the same one.
    let own = newest
        .files
        .iter()
        .find(|f| f.name.starts_with("MANIFEST-"))
        .expect("its MANIFEST");
    std::fs::remove_file(f.dir.path().join("store").join(&own.stored)).expect("lose it");

    let cps = stored(&f, 3);
    let restored = cps.restore_newest(&f.db()).expect("restore").expect("some");
    assert_eq!(
        restored.id, 1,
        "fell back past the checkpoint with a missing file"
    );
    let store = f.open(16);
    assert_eq!(read(&store, "k1"), Some(b"1".to_vec()));
}

/// A directory store whose listings leave out the objects of one checkpoint, as a replica
/// that has not caught up yet would; it counts them.
struct Lagging {
    inner: storage::DirStorage,
    hidden: std::sync::Mutex<Option<String>>,
    lists: std::sync::atomic::AtomicUsize,
    /// The names put, in order.
    puts: std::sync::Mutex<Vec<String>>,
}

impl Lagging {
    /// A store in `dir`, hiding nothing yet.
    fn new(dir: &std::path::Path) -> Arc<Lagging> {
        Arc::new(Lagging {
            inner: storage::DirStorage::new(dir),
            hidden: std::sync::Mutex::new(None),
            lists: Default::default(),
            puts: Default::default(),
        })
    }
}

impl storage::Storage for Lagging {
    fn describe(&self) -> String {
        "a lagging store".into()
    }
    fn put_file(&self, name: &str, path: &std::path::Path) -> Result<(), storage::StorageError> {
        self.puts.lock().expect("puts").push(name.to_string());
        self.inner.put_file(name, path)
    }
    fn put_bytes(&self, name: &str, bytes: &[u8]) -> Result<(), storage::StorageError> {
        self.puts.lock().expect("puts").push(name.to_string());
        self.inner.put_bytes(name, bytes)
    }
    fn get_file(&self, name: &str, path: &std::path::Path) -> Result<(), storage::StorageError> {
        self.inner.get_file(name, path)
    }
    fn get_bytes(&self, name: &str) -> Result<Vec<u8>, storage::StorageError> {
        self.inner.get_bytes(name)
    }
    fn list(&self, prefix: &str) -> Result<Vec<String>, storage::StorageError> {
        self.lists
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let hidden = self.hidden.lock().expect("lock").clone();
        Ok(self
            .inner
            .list(prefix)?
            .into_iter()
            .filter(|n| hidden.as_ref().is_none_or(|h| !n.starts_with(h.as_str())))
            .collect())
    }
    fn delete(&self, name: &str) -> Result<(), storage::StorageError> {
        self.inner.delete(name)
    }
}

/// Retention judges by what the run knows the store holds: its first look, then its own
/// writes. A first look that has not caught up (a replica behind) cannot make it delete what
/// it stored itself, and what the look missed is left where it is.
#[test]
fn a_first_look_behind_the_store_deletes_nothing_it_did_not_see() {
    let f = Fixture::new();
    let lagging = Lagging::new(&f.dir.path().join("store"));
    let store = f.open(16);
    let earlier = f.checkpoints(2).with_storage(lagging.clone());
    for id in 1..=2u32 {
        write_counts(&store, 0, 100, id.to_string().as_bytes());
        earlier
            .complete(&earlier.cut(&store, id.into(), cut(id.into())).expect("cut"))
            .expect("complete");
    }
    // The next run's first look misses checkpoint 2.
    *lagging.hidden.lock().expect("lock") = Some("chk-0000000002".into());
    let cps = f.checkpoints(1).with_storage(lagging.clone());
    write_counts(&store, 0, 100, b"3");
    let third = cps
        .complete(&cps.cut(&store, 3, cut(3)).expect("cut"))
        .expect("complete");
    cps.retain(None).expect("retain");
    *lagging.hidden.lock().expect("lock") = None;
    use storage::Storage;
    for file in &third.files {
        assert!(
            lagging.inner.get_bytes(&file.stored).is_ok(),
            "{} of the newest checkpoint was deleted",
            file.stored
        );
    }
    let stored = lagging.inner.list("chk-").expect("list");
    assert!(
        !stored.iter().any(|n| n.starts_with("chk-0000000001/")),
        "checkpoint 1, seen and not kept, is deleted: {stored:?}"
    );
    assert!(
        stored.iter().any(|n| n == "chk-0000000002/manifest.json"),
        "checkpoint 2, not seen, is left: {stored:?}"
    );
    drop(store);
    std::fs::remove_dir_all(f.db()).expect("wipe");
    std::fs::remove_dir_all(f.dir.path().join("checkpoints")).expect("wipe");
    let cps = f.checkpoints(1).with_storage(lagging);
    let restored = cps.restore_newest(&f.db()).expect("restore").expect("some");
    assert_eq!(restored.id, 3);
    let store = f.open(16);
    assert_eq!(read(&store, "k50"), Some(b"3".to_vec()));
}

/// A NATS object store's listing reads every object of the bucket, all partitions' (and the
/// markers of deleted ones): a cluster host with 16 partitions checkpointing every second
/// spent most of a core on listings when retention listed the store at every checkpoint.
/// Retention goes by what the host knows instead: one listing per run.
#[test]
fn checkpoints_list_the_store_once_per_run() {
    let f = Fixture::new();
    let lagging = Lagging::new(&f.dir.path().join("store"));
    let cps = f.checkpoints(2).with_storage(lagging.clone());
    let store = f.open(16);
    for id in 1..=6u32 {
        write_counts(&store, 0, 50 * id, id.to_string().as_bytes());
        if id == 4 {
            store.compact().expect("compact");
        }
        cps.complete(&cps.cut(&store, id.into(), cut(id.into())).expect("cut"))
            .expect("complete");
        cps.retain(None).expect("retain");
    }
    let retained: Vec<u64> = cps.retained().iter().map(|m| m.id).collect();
    assert_eq!(retained, vec![5, 6], "what time-travel queries choose from");
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(lagging.lists.load(Relaxed), 1, "one look at the store");
    let kept: Vec<u64> = cps.list().iter().map(|m| m.id).collect();
    assert_eq!(kept, vec![5, 6], "retention still applies to the store");
    let used: std::collections::HashSet<String> = cps
        .list()
        .into_iter()
        .flat_map(|m| m.files.into_iter().map(|f| f.stored))
        .collect();
    use storage::Storage;
    let objects = lagging.inner.list("").expect("list");
    for name in &objects {
        assert!(
            used.contains(name) || name.ends_with("/manifest.json"),
            "{name} is used by no kept checkpoint"
        );
    }
    assert!(
        objects.iter().any(|n| n.starts_with("shared/")),
        "the kept checkpoints' shared files are stored"
    );
    drop(store);
    let (_, restored) = restore_on_a_wiped_host(&f, 2);
    assert_eq!(restored.id, 6);
    let store = f.open(16);
    assert_eq!(read(&store, "k299"), Some(b"6".to_vec()));
}

/// A checkpoint sends the store what is new: its SST files, its MANIFEST and its manifest.
/// RocksDB's OPTIONS file (26 KB) and CURRENT change about never, and went with every
/// checkpoint before: two more puts each time.
#[test]
fn files_that_do_not_change_are_stored_once() {
    let f = Fixture::new();
    let lagging = Lagging::new(&f.dir.path().join("store"));
    let cps = f.checkpoints(2).with_storage(lagging.clone());
    let store = f.open(16);
    for id in 1..=4u32 {
        write_counts(&store, 0, 50 * id, id.to_string().as_bytes());
        cps.complete(&cps.cut(&store, id.into(), cut(id.into())).expect("cut"))
            .expect("complete");
        cps.retain(None).expect("retain");
    }
    let puts = lagging.puts.lock().expect("puts").clone();
    let count = |part: &str| puts.iter().filter(|n| n.contains(part)).count();
    assert_eq!(count("OPTIONS-"), 1, "{puts:?}");
    assert_eq!(count("CURRENT"), 1, "{puts:?}");
    assert_eq!(count("MANIFEST-"), 4, "{puts:?}");
    assert_eq!(count("manifest.json"), 4, "{puts:?}");
    for m in cps.list() {
        for file in &m.files {
            assert!(
                file.stored.starts_with("shared/"),
                "checkpoint {}: {} stored as {}",
                m.id,
                file.name,
                file.stored
            );
        }
    }
    drop(store);
    let (_, restored) = restore_on_a_wiped_host(&f, 2);
    assert_eq!(restored.id, 4);
    let store = f.open(16);
    assert_eq!(read(&store, "k199"), Some(b"4".to_vec()));
}

/// Completing a checkpoint links every file of the staged cut into `shared/` and writes its
/// manifest: no file is copied, no directory made but the checkpoint's own. (On ext4 each new
/// inode costs a scan past the recently deleted ones; a cluster host completes a checkpoint a
/// second per partition.)
#[test]
fn completing_a_checkpoint_links_its_files_and_adds_only_its_manifest() {
    use std::os::unix::fs::MetadataExt;
    let f = Fixture::new();
    let (cps, _store, staged, m) = one_checkpoint(&f);
    let own: Vec<String> = std::fs::read_dir(cps.dir().join("chk-0000000001"))
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(own, vec!["manifest.json".to_string()]);
    assert!(
        m.files.iter().any(|f| f.name.starts_with("MANIFEST-")),
        "{:?}",
        m.files
    );
    for file in &m.files {
        assert!(file.stored.starts_with("shared/"), "{file:?}");
        let stored = std::fs::metadata(cps.dir().join(&file.stored)).expect("stored");
        let in_cut = std::fs::metadata(staged.db_dir().join(&file.name)).expect("staged");
        assert_eq!(
            (stored.dev(), stored.ino()),
            (in_cut.dev(), in_cut.ino()),
            "{} is the staged file itself, not a copy",
            file.name
        );
    }
}

/// A checkpoint written before its files were all shared keeps its MANIFEST, OPTIONS and
/// CURRENT among its own files: it restores as it did, its files found by the names its
/// manifest gives.
#[test]
fn a_checkpoint_with_its_own_files_restores() {
    let f = Fixture::new();
    let cps = f.checkpoints(2);
    let store = f.open(16);
    write_counts(&store, 0, 100, b"old");
    let mut m = cps
        .complete(&cps.cut(&store, 1, cut(1)).expect("cut"))
        .expect("complete");
    drop(store);
    // Rewritten into the older layout: MANIFEST, OPTIONS and CURRENT under chk-<id>/files.
    std::fs::create_dir(cps.dir().join("chk-0000000001/files")).expect("mkdir");
    for file in &mut m.files {
        if file.name.starts_with("OPTIONS-")
            || file.name == "CURRENT"
            || file.name.starts_with("MANIFEST-")
        {
            let own = format!("chk-0000000001/files/{}", file.name);
            std::fs::rename(cps.dir().join(&file.stored), cps.dir().join(&own)).expect("move");
            file.stored = own;
        }
    }
    assert_eq!(
        m.files
            .iter()
            .filter(|f| f.stored.contains("/files/"))
            .count(),
        3,
        "MANIFEST, OPTIONS and CURRENT its own: {:?}",
        m.files
    );
    let json = serde_json::to_vec_pretty(&m).expect("json");
    write_atomically(&cps.dir().join("chk-0000000001/manifest.json"), &json).expect("write");
    std::fs::remove_dir_all(f.db()).expect("wipe the live database");
    let restored = cps.restore_newest(&f.db()).expect("restore").expect("one");
    assert_eq!(restored.id, 1);
    let store = f.open(16);
    assert_eq!(read(&store, "k42"), Some(b"old".to_vec()));
}

/// What a host knows of the store can be out of date: an operator deleted a checkpoint it
/// knew from its first look and never fetched, one retention would keep. Retention forgets it
/// rather than failing at every checkpoint.
#[test]
fn a_checkpoint_deleted_beside_its_host_is_forgotten_by_retention() {
    let f = Fixture::new();
    let first = stored(&f, 4);
    let store = f.open(16);
    for id in 1..=2u32 {
        write_counts(&store, 0, 50 * id, id.to_string().as_bytes());
        first
            .complete(&first.cut(&store, id.into(), cut(id.into())).expect("cut"))
            .expect("complete");
    }
    drop(store);
    // Another host takes over from the store: it fetches checkpoint 2, not 1.
    let (host, restored) = restore_on_a_wiped_host(&f, 4);
    assert_eq!(restored.id, 2);
    let store = f.open(16);
    write_counts(&store, 0, 10, b"3");
    host.complete(&host.cut(&store, 3, cut(3)).expect("cut"))
        .expect("complete");
    stored(&f, 4)
        .delete(1)
        .expect("the operator deletes checkpoint 1");
    write_counts(&store, 0, 10, b"4");
    host.complete(&host.cut(&store, 4, cut(4)).expect("cut"))
        .expect("complete");
    host.retain(None)
        .expect("retention forgets the deleted checkpoint");
    let kept: Vec<u64> = host.list().iter().map(|m| m.id).collect();
    assert_eq!(kept, vec![2, 3, 4]);
    drop(store);
    let (_, restored) = restore_on_a_wiped_host(&f, 4);
    assert_eq!(restored.id, 4);
    let store = f.open(16);
    assert_eq!(read(&store, "k5"), Some(b"4".to_vec()));
    assert_eq!(read(&store, "k75"), Some(b"2".to_vec()));
}

/// A directory store that answers "not found" to the first reads, as a replica that has not
/// caught up with what was just stored does.
struct Late {
    inner: storage::DirStorage,
    misses: std::sync::Mutex<u32>,
}

impl Late {
    fn miss(&self, name: &str) -> Result<(), storage::StorageError> {
        let mut misses = self.misses.lock().expect("lock");
        if *misses > 0 {
            *misses -= 1;
            return Err(storage::StorageError::NotFound(name.to_string()));
        }
        Ok(())
    }
}

impl storage::Storage for Late {
    fn describe(&self) -> String {
        "a late store".into()
    }
    fn put_file(&self, name: &str, path: &std::path::Path) -> Result<(), storage::StorageError> {
        self.inner.put_file(name, path)
    }
    fn put_bytes(&self, name: &str, bytes: &[u8]) -> Result<(), storage::StorageError> {
        self.inner.put_bytes(name, bytes)
    }
    fn get_file(&self, name: &str, path: &std::path::Path) -> Result<(), storage::StorageError> {
        self.miss(name)?;
        self.inner.get_file(name, path)
    }
    fn get_bytes(&self, name: &str) -> Result<Vec<u8>, storage::StorageError> {
        self.miss(name)?;
        self.inner.get_bytes(name)
    }
    fn list(&self, prefix: &str) -> Result<Vec<String>, storage::StorageError> {
        self.inner.list(prefix)
    }
    fn delete(&self, name: &str) -> Result<(), storage::StorageError> {
        self.inner.delete(name)
    }
}

#[test]
fn a_store_that_answers_late_is_waited_for_not_taken_for_corruption() {
    let f = Fixture::new();
    let late = Arc::new(Late {
        inner: storage::DirStorage::new(&f.dir.path().join("store")),
        misses: std::sync::Mutex::new(0),
    });
    let cps = f.checkpoints(2).with_storage(late.clone());
    let store = f.open(16);
    write_counts(&store, 0, 100, b"1");
    cps.complete(&cps.cut(&store, 1, cut(100)).expect("cut"))
        .expect("complete");
    write_counts(&store, 0, 100, b"2");
    cps.complete(&cps.cut(&store, 2, cut(200)).expect("cut"))
        .expect("complete");
    drop(store);
    std::fs::remove_dir_all(f.db()).expect("wipe");
    std::fs::remove_dir_all(f.dir.path().join("checkpoints")).expect("wipe");
    // The first two reads (the newest manifest, then once more) answer "not found".
    *late.misses.lock().expect("lock") = 2;
    let cps = f.checkpoints(2).with_storage(late);
    let restored = cps.restore_newest(&f.db()).expect("restore").expect("some");
    assert_eq!(restored.id, 2, "the newest checkpoint, not an older one");
    let store = f.open(16);
    assert_eq!(read(&store, "k5"), Some(b"2".to_vec()));
}

/// Retention by age keeps the checkpoints of its window beyond `retain`, drops older ones, and
/// keeps one whose manifest it cannot read rather than guess its age.
#[test]
fn retention_by_age_keeps_the_window_and_never_deletes_what_it_cannot_date() {
    let f = Fixture::new();
    let store = f.open(16);
    let cps = f.checkpoints(1).with_retention(Retention {
        count: 1,
        for_ms: 60_000,
        every_ms: 0,
    });
    for id in 1..=4u64 {
        write_counts(&store, 0, 10, id.to_string().as_bytes());
        cps.complete(&cps.cut(&store, id, cut(id)).expect("cut"))
            .expect("complete");
    }
    cps.retain(None).expect("retain");
    let kept: Vec<u64> = cps.list().iter().map(|m| m.id).collect();
    assert_eq!(kept, vec![1, 2, 3, 4], "all four are younger than a minute");
    // Checkpoint 1 cut long ago; checkpoint 2's manifest unreadable.
    let manifest = |id: u64| {
        f.dir
            .path()
            .join("checkpoints")
            .join(format!("chk-{id:010}"))
            .join("manifest.json")
    };
    let mut old = cps.load(1).expect("manifest");
    old.created_ms = 1;
    std::fs::write(manifest(1), serde_json::to_vec(&old).expect("json")).expect("write");
    std::fs::write(manifest(2), b"{not json").expect("write");
    let cps = f.checkpoints(1).with_retention(cps.retention());
    cps.retain(None).expect("retain");
    let left: Vec<u64> = list_ids(&f.dir.path().join("checkpoints"), true);
    assert_eq!(
        left,
        vec![2, 3, 4],
        "1 aged out; 2 is kept though its age is unknown"
    );
}

/// Checkpoint 1: 50 keys.
fn first_checkpoint(f: &Fixture, cps: &Checkpoints) {
    let store = f.open(16);
    write_counts(&store, 0, 50, b"1");
    cps.complete(&cps.cut(&store, 1, cut(50)).expect("cut"))
        .expect("complete");
}

/// Checkpoint 1 of `cps` copied as checkpoint 2 with `edit` applied to its manifest.
fn tampered_copy(cps: &Checkpoints, edit: impl FnOnce(&mut Manifest)) {
    let mut m = cps.load(1).expect("checkpoint 1");
    m.id = 2;
    edit(&mut m);
    let own = cps.dir().join("chk-0000000002");
    std::fs::create_dir_all(&own).expect("dir");
    std::fs::write(
        own.join("manifest.json"),
        serde_json::to_vec(&m).expect("json"),
    )
    .expect("manifest");
}

#[test]
fn a_manifest_naming_files_outside_the_checkpoint_is_never_restored() {
    let f = Fixture::new();
    let cps = f.checkpoints(3);
    first_checkpoint(&f, &cps);

    // A file outside, listed with its true size and checksum: it would verify, and be linked
    // into the database.
    let secret = f.dir.path().join("secret");
    std::fs::write(&secret, b"not state").expect("secret");
    let sha256 = sha256_file(&secret).expect("sum");
    tampered_copy(&cps, |m| {
        m.files.push(FileEntry {
            name: "999999.sst".into(),
            stored: "../secret".into(),
            size: 9,
            sha256,
        })
    });
    let restored = cps.restore_newest(&f.db()).expect("restore").expect("some");
    assert_eq!(restored.id, 1, "fell back past the tampered checkpoint");
    assert!(!f.db().join("999999.sst").exists());
    let e = cps.load(2).expect_err("refused");
    assert!(
        e.to_string()
            .contains("names a file outside the checkpoint"),
        "{e}"
    );

    // A name that climbs out of the database directory: nothing is written there.
    tampered_copy(&cps, |m| m.files[0].name = "../escaped".into());
    let restored = cps.restore_newest(&f.db()).expect("restore").expect("some");
    assert_eq!(restored.id, 1);
    assert!(!f.dir.path().join("escaped").exists());
    tampered_copy(&cps, |m| m.files[0].stored = "/etc/hostname".into());
    assert!(matches!(cps.load(2), Err(Error::Corrupt { .. })));
}

#[test]
fn a_manifest_in_the_store_naming_paths_outside_the_cache_is_refused_before_any_download() {
    let f = Fixture::new();
    let cps = stored(&f, 3);
    first_checkpoint(&f, &cps);
    // Checkpoint 2 in the store: one of its files is to be downloaded beside the host's
    // checkpoint cache.
    let objects = storage::DirStorage::new(&f.dir.path().join("store"));
    use storage::Storage;
    let mut m = cps.load(1).expect("checkpoint 1");
    m.id = 2;
    m.files[0].stored = "chk-0000000002/../../planted".into();
    objects
        .put_bytes(
            "chk-0000000002/manifest.json",
            &serde_json::to_vec(&m).expect("json"),
        )
        .expect("put");
    std::fs::remove_dir_all(f.dir.path().join("checkpoints")).expect("wipe the cache");
    let cps = stored(&f, 3);
    let e = cps.prefetch(2).expect_err("refused");
    assert!(
        e.to_string()
            .contains("names a file outside the checkpoint"),
        "{e}"
    );
    let restored = cps.restore_newest(&f.db()).expect("restore").expect("some");
    assert_eq!(restored.id, 1, "fell back past the tampered checkpoint");
    assert!(!f.dir.path().join("planted").exists());
}

#[test]
fn a_frozen_cut_written_later_holds_exactly_what_was_written_before_it() {
    let f = Fixture::new();
    let cps = f.checkpoints(3);
    let store = f.open(16);
    write_counts(&store, 0, 1_000, b"1");
    let frozen = cps.freeze(&store, 1, cut(1_000)).expect("freeze");
    // After the cut: every key rewritten and new keys, all in RocksDB's memtables (settled),
    // before the checkpoint's files are written.
    write_counts(&store, 0, 2_000, b"2");
    store.settle().expect("settle");
    let staged = frozen.stage(&store).expect("written after the cut");
    let m = cps.complete(&staged).expect("complete");
    drop(store);
    std::fs::remove_dir_all(f.db()).expect("wipe");
    let restored = cps.restore_newest(&f.db()).expect("restore").expect("some");
    assert_eq!(restored.id, m.id);
    assert_eq!(restored.cut.positions, cut(1_000).positions);
    let store = f.open(16);
    for k in [0, 500, 999] {
        assert_eq!(read(&store, &format!("k{k}")), Some(b"1".to_vec()), "k{k}");
    }
    assert_eq!(read(&store, "k1500"), None, "a key written after the cut");
}

#[test]
fn a_flush_racing_a_frozen_cut_fails_it_and_the_next_cut_is_written_at_once() {
    let f = Fixture::new();
    let cps = f.checkpoints(3);
    let store = f.open(16);
    write_counts(&store, 0, 100, b"1");
    let frozen = cps.freeze(&store, 1, cut(100)).expect("freeze");
    write_counts(&store, 0, 200, b"2");
    // Something flushes the store before the cut is written: writes after the cut reach SST
    // files the checkpoint would link.
    store.flush().expect("flush");
    let e = frozen.stage(&store).expect_err("raced");
    assert!(e.to_string().contains("after checkpoint 1's cut"), "{e}");
    assert!(cps.staged_dir(1).is_none(), "nothing left of it");
    // The next cut is written while its caller waits: it holds what was written before it.
    let frozen = cps.freeze(&store, 2, cut(200)).expect("freeze");
    write_counts(&store, 0, 300, b"3");
    store.settle().expect("settle");
    store.flush().expect("flush");
    let staged = frozen.stage(&store).expect("written at its cut");
    cps.complete(&staged).expect("complete");
    drop(store);
    std::fs::remove_dir_all(f.db()).expect("wipe");
    let restored = cps.restore_newest(&f.db()).expect("restore").expect("some");
    assert_eq!(restored.id, 2);
    let store = f.open(16);
    assert_eq!(read(&store, "k150"), Some(b"2".to_vec()));
    assert_eq!(read(&store, "k250"), None);
}

#[test]
fn a_state_registered_or_a_compaction_after_a_frozen_cut_stays_out_of_its_checkpoint() {
    let f = Fixture::new();
    let cps = f.checkpoints(3);
    let store = f.open(16);
    write_counts(&store, 0, 100, b"1");
    let frozen = cps.freeze(&store, 1, cut(100)).expect("freeze");
    // A new plugin version registers a state after the cut: not in checkpoint 1.
    let later = store
        .open_state("later", StateKind::Value, None)
        .expect("state");
    let mut b = store.batch();
    {
        let mut a = KeyedAccess::new(&store, &mut b);
        a.value_set(&later, store.key_group(b"k1"), b"k1", b"x");
    }
    store.commit(b).expect("commit");
    let staged = frozen.stage(&store).expect("written after the cut");
    cps.complete(&staged).expect("complete");

    // A compaction (which flushes) between a cut and its files: the checkpoint is given up.
    let frozen = cps.freeze(&store, 2, cut(200)).expect("freeze");
    write_counts(&store, 0, 200, b"2");
    store.compact().expect("compact");
    let e = frozen.stage(&store).expect_err("raced");
    assert!(e.to_string().contains("after checkpoint 2's cut"), "{e}");
    drop(store);

    std::fs::remove_dir_all(f.db()).expect("wipe");
    let restored = cps.restore_newest(&f.db()).expect("restore").expect("some");
    assert_eq!(restored.id, 1);
    let store = f.open(16);
    assert!(store.state("later").is_none(), "registered after the cut");
    assert_eq!(read(&store, "k50"), Some(b"1".to_vec()));
    assert_eq!(read(&store, "k150"), None);
}

/// A host cutting a checkpoint a second for weeks: each checkpoint's own files (RocksDB's
/// MANIFEST among them, copied and stored anew every time) and what the run remembers per
/// checkpoint must stay the same size, not grow with every checkpoint before.
#[test]
fn checkpoints_cost_the_same_however_long_the_host_has_run() {
    let f = Fixture::new();
    let cps = f.checkpoints(2);
    let store = f.open(16);
    let mut own_bytes = Vec::new();
    for i in 0..600u32 {
        write_counts(&store, i % 100, i % 100 + 4, format!("v{i}").as_bytes());
        let staged = cps
            .cut(&store, u64::from(i) + 1, cut(u64::from(i)))
            .expect("cut");
        let m = cps.complete(&staged).expect("complete");
        cps.retire_staged(staged);
        cps.retain(None).expect("retain");
        let own: u64 = m
            .files
            .iter()
            .filter(|f| !f.stored.starts_with("shared/"))
            .map(|f| f.size)
            .sum();
        own_bytes.push(own);
    }
    // RocksDB appends ~325 bytes to its MANIFEST a checkpoint (the flush, compactions): by
    // the 600th, ~190 KB more than the first without a limit on its size. With one, a
    // checkpoint's own files stay within the limit (and an edit) of the first's.
    let (first, largest) = (own_bytes[0], own_bytes.iter().max().copied().unwrap_or(0));
    assert!(
        largest < first + eddy_state::MAX_MANIFEST_BYTES as u64 + 4096,
        "a checkpoint's own files reached {largest} bytes (the first's: {first})"
    );
    // RocksDB's info log gains a few KB a cut: rolled over and only the newest few kept.
    let logs: Vec<(String, u64)> = std::fs::read_dir(f.db())
        .expect("db dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("LOG"))
        .map(|e| {
            let size = e.metadata().map(|m| m.len()).unwrap_or(0);
            (e.file_name().to_string_lossy().into_owned(), size)
        })
        .collect();
    // ~14 KB a cut: 8.3 MB by the 600th without a limit, all in one file.
    assert!(
        logs.len() <= eddy_state::INFO_LOGS_KEPT
            && logs
                .iter()
                .all(|l| l.1 <= eddy_state::INFO_LOG_BYTES as u64 + (64 << 10)),
        "RocksDB's info logs: {logs:?}"
    );
    let kept_files: HashSet<String> = cps
        .list_local()
        .into_iter()
        .flat_map(|m| m.files.into_iter().map(|f| f.stored))
        .collect();
    let sums = cps.sums.lock().expect("sums").len();
    assert!(
        sums <= kept_files.len(),
        "{sums} checksums remembered for {} files kept",
        kept_files.len()
    );
    let created = cps.created.lock().expect("created").len();
    assert!(
        created <= 3,
        "creation times of {created} checkpoints remembered"
    );
    assert_eq!(cps.list_local().len(), 2);
    drop(store);
    let restored = cps.restore_newest(&f.db()).expect("restore").expect("one");
    assert_eq!(restored.id, 600);
    let store = f.open(16);
    assert_eq!(read(&store, "k99"), Some(b"v599".to_vec()));
}

/// A checkpoint that cannot be written out (a file gone from the cache) leaves no partial
/// database behind, and a cut a crash left half made in staging goes at the next retention.
#[test]
fn failed_and_interrupted_copies_leave_nothing_behind() {
    let f = Fixture::new();
    let (cps, store, staged, m) = one_checkpoint(&f);
    cps.retire_staged(staged);
    let sst = m
        .files
        .iter()
        .find(|f| f.name.ends_with(".sst"))
        .expect("an SST file");
    std::fs::remove_file(cps.dir().join(&sst.stored)).expect("remove");
    let target = f.dir.path().join("opened");
    assert!(cps.materialize(&m, &target).is_err());
    assert!(!target.exists(), "a partial database was left");

    let leftover = f.dir.path().join("staging").join("chk-0000000007.tmp");
    std::fs::create_dir_all(&leftover).expect("dir");
    std::fs::write(leftover.join("MANIFEST-000001"), b"half").expect("file");
    let staged = cps.cut(&store, 2, cut(2)).expect("cut");
    cps.complete(&staged).expect("complete");
    cps.retain(Some(2)).expect("retain");
    assert!(!leftover.exists(), "the interrupted cut was left");
    assert!(
        cps.staged_dir(2).is_some(),
        "the staged cut queries read stays"
    );
}
