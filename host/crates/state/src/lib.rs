//! Keyed state in RocksDB: the host owns it, plugins reach it through the `keyed-state` WIT
//! interface.
//!
//! Owns: the database, the registry of state names, the key layout (`layout`), key groups
//! (`keygroup`), TTL rules (`ttl`), the per-batch write overlay (`batch`), the hot values in
//! front of RocksDB (`hot`) and the store's counters (`stats`). A batch of events works on a
//! [`StateBatch`]: its writes are visible to its own later reads and are committed together
//! with the input positions they reflect. With a write-ahead log, one RocksDB write holds them all, so state and position
//! never disagree after a crash; without one (a pipeline's live database, rebuilt from a
//! checkpoint at every start), value and list writes may wait in the hot values until the
//! store settles, or a checkpoint's cut takes them over (`cut`).
//!
//! Never: talks to NATS, runs plugin code, or blocks on anything but local disk.

mod batch;
pub mod broadcast;
mod cut;
pub mod hot;
pub mod ingest;
pub mod keygroup;
pub mod layout;
pub mod quota;
mod registry;
mod stats;
pub mod ttl;
pub mod visit;
mod write;

#[cfg(test)]
mod cut_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod ttl_tests;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};

use rocksdb::{
    BlockBasedIndexType, BlockBasedOptions, Cache, ColumnFamilyDescriptor, DB, Options,
    WriteOptions,
};
use serde::{Deserialize, Serialize};

pub use batch::{KeyedAccess, StateBatch};
pub use broadcast::BroadcastAccess;
pub use cut::Frozen;
pub use quota::{Enforced, Quota, QuotaPolicy};
use registry::Registry;
pub use stats::StateStats;
pub use ttl::{Clock, ManualClock, SystemClock, Ttl, TtlUpdate, TtlVisibility};

/// Key groups when the pipeline names none (Flink's default maximum parallelism is 128).
pub const DEFAULT_KEY_GROUPS: u32 = 128;
/// Upper bound: key groups are stored as u16.
pub const MAX_KEY_GROUPS: u32 = 65_536;

const CF_KEYED: &str = "keyed";
const CF_BROADCAST: &str = "broadcast";
const CF_META: &str = "meta";
const META_KEY_GROUPS: &[u8] = b"key_groups";
const META_FORMAT: &[u8] = b"format";
const META_STATE_PREFIX: &str = "state/";
const META_BROADCAST_PREFIX: &str = "bmap/";
const META_POSITION_PREFIX: &str = "position/";
const FORMAT_VERSION: &[u8] = b"2";

/// What went wrong in the state layer.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// RocksDB failed.
    #[error("state storage failed: {0}")]
    Storage(#[from] rocksdb::Error),
    /// A state exists with another kind.
    #[error("state `{name}` is a {existing:?} state; it was opened as {requested:?}")]
    WrongKind {
        /// The state's name.
        name: String,
        /// Its kind on disk.
        existing: StateKind,
        /// The kind asked for.
        requested: StateKind,
    },
    /// The state directory belongs to another configuration.
    #[error("{0}")]
    Incompatible(String),
    /// Stored bytes could not be decoded.
    #[error("state data is corrupt: {0}")]
    Corrupt(String),
    /// A checkpoint written after its cut (`cut`) did not hold exactly the cut; the next one
    /// is written at its cut.
    #[error("checkpoint not written: {0}")]
    CutRaced(String),
}

/// Result of state operations.
pub type Result<T, E = StateError> = std::result::Result<T, E>;

/// The shape of a state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateKind {
    /// One value per key.
    Value,
    /// Entries per key.
    Map,
    /// A list per key.
    List,
}

/// One registered state, as a plugin instance opened it.
#[derive(Debug, Clone)]
pub struct StateInfo {
    /// Stable id, part of every stored key.
    pub id: u32,
    /// The name the plugin gave.
    pub name: String,
    /// Its kind.
    pub kind: StateKind,
    /// Its TTL, if any.
    pub ttl: Option<Ttl>,
}

/// The keyed state database of one pipeline on one host.
pub struct StateStore {
    db: DB,
    path: PathBuf,
    key_groups: u32,
    clock: Arc<dyn Clock>,
    registry: Mutex<Registry>,
    write_opts: WriteOptions,
    ttls: TtlTable,
    kinds: KindTable,
    stats: Arc<StateStats>,
    overrides: RwLock<HashMap<String, Option<Ttl>>>,
    /// Operator quotas by state name (`quota`).
    quotas: RwLock<HashMap<String, Quota>>,
    hot: Mutex<hot::HotValues>,
    /// Held by whoever writes keyed state (a commit, a settle, an ingest) from its RocksDB
    /// write until the hot values agree with it, so two writers never interleave there: a
    /// settle between a commit's delete and its hot update would write the deleted value
    /// back. Taken before the hot values' lock; readers take only that one.
    writing: Mutex<()>,
    /// Whether value and list writes wait in the hot values until the store settles (`hot`):
    /// only without a write-ahead log, for a database rebuilt from a checkpoint at every start,
    /// and with hot values at all.
    defer_writes: bool,
    /// Whether deferring pays now: off while recent settles found almost every deferred
    /// write was to a different key (nothing saved, the bookkeeping only cost), back on after
    /// [`PROBE_AFTER_COMMITS`] commits to look again.
    deferring: std::sync::atomic::AtomicBool,
    /// Commits left before deferring is tried again.
    probe_in: std::sync::atomic::AtomicU32,
    /// Whether commits go through the write-ahead log (then a cut is written at once: `cut`).
    write_ahead_log: bool,
    /// Set when a checkpoint written after its cut failed: the next cut is written at once.
    flush_at_cut: std::sync::atomic::AtomicBool,
    /// A frozen cut's part in RocksDB, pending or being done (`cut`).
    cuts: cut::CutGate,
}

/// Commits written through, after deferring stopped paying, before it is tried again.
const PROBE_AFTER_COMMITS: u32 = 1024;
/// Deferred writes a settle must have seen to judge whether deferring pays.
const JUDGE_AFTER_WRITES: u64 = 4096;

/// Kind and TTL of each state id with a TTL, shared with the compaction filter.
type TtlTable = Arc<RwLock<HashMap<u32, (StateKind, Ttl)>>>;
/// Kind of every opened state id, shared with the compaction filter.
type KindTable = Arc<RwLock<HashMap<u32, StateKind>>>;

/// Open-time tuning of the store.
#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    /// SST files older than this are recompacted (and so cleaned of expired entries), even if
    /// nothing else would compact them: keys never read again are reclaimed too.
    pub periodic_compaction: std::time::Duration,
    /// Whether commits go through RocksDB's write-ahead log. A pipeline's live database is
    /// rebuilt from the newest checkpoint at every start (and flushed at a clean stop and at
    /// every checkpoint), so the log would only be written, never read: pipelines turn it off.
    /// On for a store whose directory is reopened as it is after a crash.
    pub write_ahead_log: bool,
    /// Bytes of hot values kept in memory in front of RocksDB (`hot`); 0 for none. Without a
    /// write-ahead log, value and list writes also wait there until the store settles.
    pub hot_values_bytes: usize,
    /// Bytes of RocksDB's block cache for keyed state (values' blocks, index and filters).
    pub block_cache_bytes: usize,
}

/// Size past which RocksDB rolls its MANIFEST over to a new one (see [`StateStore::open_with`]).
pub const MAX_MANIFEST_BYTES: usize = 64 << 10;

/// Size of one of RocksDB's info logs (`LOG`, then `LOG.old.<time>`) before it rolls over.
pub const INFO_LOG_BYTES: usize = 1 << 20;

/// How many of RocksDB's info logs a database keeps, the current one included.
pub const INFO_LOGS_KEPT: usize = 3;

/// The block cache unless configured: 64 MiB.
pub const DEFAULT_BLOCK_CACHE: usize = 64 << 20;

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            periodic_compaction: std::time::Duration::from_secs(6 * 3600),
            write_ahead_log: true,
            hot_values_bytes: hot::DEFAULT_BUDGET,
            block_cache_bytes: DEFAULT_BLOCK_CACHE,
        }
    }
}

impl StateStore {
    /// Opens (creating if needed) the state in `path` with `key_groups` key groups. A
    /// directory created with another key-group count is refused: key groups are fixed for
    /// the life of the state.
    pub fn open(path: &Path, key_groups: u32, clock: Arc<dyn Clock>) -> Result<StateStore> {
        StateStore::open_with(path, key_groups, clock, StoreOptions::default())
    }

    /// [`StateStore::open`] with explicit options.
    pub fn open_with(
        path: &Path,
        key_groups: u32,
        clock: Arc<dyn Clock>,
        options: StoreOptions,
    ) -> Result<StateStore> {
        std::fs::create_dir_all(path).map_err(|e| {
            StateError::Incompatible(format!(
                "cannot create the state directory {}: {e}; check pipeline.state_dir",
                path.display()
            ))
        })?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.increase_parallelism(2);
        // Column families are flushed together, so a checkpoint's keyed state, broadcast
        // state and positions are always from the same moment.
        opts.set_atomic_flush(true);
        // Every checkpoint copies the MANIFEST (its own file, stored and uploaded anew), and
        // each flush and compaction appends to it: RocksDB's default limit (1 GiB) let it grow
        // by ~325 bytes a checkpoint, so checkpoints cost more the longer a host ran. Past
        // this size RocksDB starts a new one holding only the live files.
        opts.set_max_manifest_file_size(MAX_MANIFEST_BYTES);
        // RocksDB's info log (`LOG` here) gains ~14 KB at every cut (the flush, the
        // checkpoint's links, compactions) and is never rolled by default: gigabytes a day on
        // a host cutting a checkpoint a second per partition. The newest few MB are kept.
        opts.set_max_log_file_size(INFO_LOG_BYTES);
        opts.set_keep_log_file_num(INFO_LOGS_KEPT);
        let mut keyed = Options::default();
        let mut table = keyed_table_layout();
        table.set_block_cache(&Cache::new_lru_cache(options.block_cache_bytes));
        table.set_cache_index_and_filter_blocks(true);
        table.set_pin_top_level_index_and_filter(true);
        table.set_cache_index_and_filter_blocks_with_high_priority(true);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);
        keyed.set_block_based_table_factory(&table);
        keyed.set_compression_type(COMPRESSION);
        keyed.set_write_buffer_size(64 << 20);
        // A frozen cut switches memtables while one may still be flushing (`cut`).
        keyed.set_max_write_buffer_number(3);
        keyed.set_periodic_compaction_seconds(options.periodic_compaction.as_secs().max(1));
        let ttls: TtlTable = Arc::default();
        let kinds: KindTable = Arc::default();
        let stats = Arc::new(StateStats::default());
        keyed.set_compaction_filter(
            "eddy-ttl",
            ttl_compaction_filter(ttls.clone(), kinds.clone(), clock.clone(), stats.clone()),
        );
        let mut broadcast = broadcast_file_options();
        broadcast.set_max_write_buffer_number(3);
        let mut meta = Options::default();
        meta.set_max_write_buffer_number(3);
        let cfs = vec![
            ColumnFamilyDescriptor::new(CF_KEYED, keyed),
            ColumnFamilyDescriptor::new(CF_BROADCAST, broadcast),
            ColumnFamilyDescriptor::new(CF_META, meta),
        ];
        let db = DB::open_cf_descriptors(&opts, path, cfs)?;
        let mut write_opts = WriteOptions::default();
        // Never fsynced per batch: durability against machine loss comes from checkpoints.
        write_opts.set_sync(false);
        write_opts.disable_wal(!options.write_ahead_log);
        let store = StateStore {
            db,
            path: path.to_path_buf(),
            key_groups,
            clock,
            registry: Mutex::new(Registry::default()),
            write_opts,
            ttls,
            kinds,
            stats,
            overrides: RwLock::default(),
            quotas: RwLock::default(),
            hot: Mutex::new(hot::HotValues::new(options.hot_values_bytes)),
            writing: Mutex::new(()),
            defer_writes: !options.write_ahead_log && options.hot_values_bytes > 0,
            deferring: true.into(),
            probe_in: 0.into(),
            write_ahead_log: options.write_ahead_log,
            flush_at_cut: false.into(),
            cuts: cut::CutGate::default(),
        };
        store.check_layout()?;
        store.load_registry()?;
        Ok(store)
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        // Both column families are created in `open`; a missing one means the process state
        // is broken beyond recovery.
        #[allow(clippy::expect_used)]
        self.db
            .cf_handle(name)
            .expect("column family created at open")
    }

    /// The directory of the database.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The keyed state's column family (raw reads by the savepoint writer and dump tools).
    pub fn keyed_cf(&self) -> &rocksdb::ColumnFamily {
        self.cf(CF_KEYED)
    }

    /// The registry and positions' column family.
    pub fn meta_cf(&self) -> &rocksdb::ColumnFamily {
        self.cf(CF_META)
    }

    /// The broadcast state's column family.
    pub fn broadcast_cf(&self) -> &rocksdb::ColumnFamily {
        self.cf(CF_BROADCAST)
    }

    /// The database, for reading. Keyed value and list writes may still wait in the hot values:
    /// call [`StateStore::settle`] before reading keyed state other than through
    /// [`KeyedAccess`]. Writes and flushes go through the store's own methods: a frozen cut
    /// relies on their write options and on every flush naming all column families (`cut`).
    pub fn db(&self) -> &DB {
        &self.db
    }

    fn check_layout(&self) -> Result<()> {
        let meta = self.meta_cf();
        match self.db.get_cf(meta, META_FORMAT)? {
            Some(v) if v != FORMAT_VERSION => {
                return Err(StateError::Incompatible(format!(
                    "state in {} has format {}, this host reads format {}; restore it from a savepoint with a matching host",
                    self.path.display(),
                    String::from_utf8_lossy(&v),
                    String::from_utf8_lossy(FORMAT_VERSION)
                )));
            }
            Some(_) => {}
            None => self.db.put_cf(meta, META_FORMAT, FORMAT_VERSION)?,
        }
        match self.db.get_cf(meta, META_KEY_GROUPS)? {
            Some(v) => {
                let stored: u32 = std::str::from_utf8(&v)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| StateError::Corrupt("key_groups entry".into()))?;
                if stored != self.key_groups {
                    return Err(StateError::Incompatible(format!(
                        "state in {} was created with {stored} key groups but pipeline.key_groups is {}; set key_groups = {stored}, or rescale through a savepoint",
                        self.path.display(),
                        self.key_groups
                    )));
                }
            }
            None => self.db.put_cf(
                meta,
                META_KEY_GROUPS,
                self.key_groups.to_string().as_bytes(),
            )?,
        }
        Ok(())
    }

    /// Number of key groups.
    pub fn key_groups(&self) -> u32 {
        self.key_groups
    }

    /// The key group of a key.
    pub fn key_group(&self, key: &[u8]) -> u16 {
        keygroup::key_group(key, self.key_groups)
    }

    /// Processing time now.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// The clock shared with plugins.
    pub fn clock(&self) -> Arc<dyn Clock> {
        self.clock.clone()
    }

    /// The last committed position of input `input` (e.g. a stream sequence), if any.
    pub fn position(&self, input: &str) -> Result<Option<u64>> {
        let key = format!("{META_POSITION_PREFIX}{input}");
        Ok(self
            .db
            .get_cf(self.meta_cf(), key.as_bytes())?
            .and_then(|v| v.as_slice().try_into().ok().map(u64::from_be_bytes)))
    }

    /// Every input position the state records.
    pub fn positions(&self) -> Result<std::collections::BTreeMap<String, u64>> {
        let mut out = std::collections::BTreeMap::new();
        let iter = self
            .db
            .prefix_iterator_cf(self.meta_cf(), META_POSITION_PREFIX.as_bytes());
        for item in iter {
            let (k, v) = item?;
            let Some(name) = k.strip_prefix(META_POSITION_PREFIX.as_bytes()) else {
                break;
            };
            if let Ok(bytes) = <[u8; 8]>::try_from(v.as_ref()) {
                out.insert(
                    String::from_utf8_lossy(name).into_owned(),
                    u64::from_be_bytes(bytes),
                );
            }
        }
        Ok(out)
    }

    /// Opens a database read-only (a checkpoint, for queries at that cut).
    pub fn open_read_only(path: &Path, clock: Arc<dyn Clock>) -> Result<StateStore> {
        let opts = Options::default();
        let cfs = [CF_KEYED, CF_BROADCAST, CF_META];
        let db = DB::open_cf_for_read_only(&opts, path, cfs, false)?;
        let key_groups = db
            .get_cf(
                db.cf_handle(CF_META)
                    .ok_or_else(|| StateError::Corrupt("no meta column family".into()))?,
                META_KEY_GROUPS,
            )?
            .and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok())
            .ok_or_else(|| StateError::Corrupt("no key_groups entry".into()))?;
        let store = StateStore {
            db,
            path: path.to_path_buf(),
            key_groups,
            clock,
            registry: Mutex::new(Registry::default()),
            write_opts: WriteOptions::default(),
            ttls: Arc::default(),
            kinds: Arc::default(),
            stats: Arc::default(),
            overrides: RwLock::default(),
            quotas: RwLock::default(),
            hot: Mutex::new(hot::HotValues::new(0)),
            writing: Mutex::new(()),
            defer_writes: false,
            deferring: false.into(),
            probe_in: 0.into(),
            write_ahead_log: false,
            flush_at_cut: true.into(),
            cuts: cut::CutGate::default(),
        };
        store.load_registry()?;
        Ok(store)
    }

    /// Reads one value as a plugin would (TTL applied), outside any batch. For queries and
    /// tests; expired entries are not removed by it.
    pub fn read_value(&self, state: &StateInfo, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let mut b = self.batch();
        let kg = self.key_group(key);
        let v = KeyedAccess::new(self, &mut b).value_get(state, kg, key)?;
        Ok(v)
    }

    /// Sets operator TTL overrides by state name (`None` turns TTL off for that state); they
    /// win over what plugins declare in `open`.
    pub fn set_ttl_overrides(&self, overrides: HashMap<String, Option<Ttl>>) {
        *self.overrides.write().unwrap_or_else(|p| p.into_inner()) = overrides;
    }

    /// Sets operator quotas by state name (see [`quota`]).
    pub fn set_quotas(&self, quotas: HashMap<String, Quota>) {
        *self.quotas.write().unwrap_or_else(|p| p.into_inner()) = quotas;
    }

    /// The quota of the state called `name`, if the operator set one.
    pub fn quota(&self, name: &str) -> Option<Quota> {
        self.quotas
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .copied()
    }

    /// Counters of expired entries removed.
    pub fn stats(&self) -> &Arc<StateStats> {
        &self.stats
    }

    /// Flushes and compacts all keyed state now: expired entries are dropped by the
    /// compaction filter. Runs in the background on its own too (periodic compaction).
    pub fn compact(&self) -> Result<()> {
        // All column families, as every flush of this store (a frozen cut relies on it: `cut`).
        self.flush()?;
        let mut opts = rocksdb::CompactOptions::default();
        opts.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
        self.db
            .compact_range_cf_opt(self.keyed_cf(), None::<&[u8]>, None::<&[u8]>, &opts);
        Ok(())
    }

    /// Bytes of keyed state on disk (SST files).
    pub fn disk_bytes(&self) -> Result<u64> {
        Ok(self
            .db
            .property_int_value_cf(self.keyed_cf(), "rocksdb.total-sst-files-size")?
            .unwrap_or(0))
    }

    /// Number of keyed-state entries physically present (a full scan; for tests and tools).
    pub fn count_entries(&self) -> Result<u64> {
        self.settle()?;
        let mut it = self.db.raw_iterator_cf(self.keyed_cf());
        it.seek_to_first();
        let mut n = 0;
        while it.valid() {
            n += 1;
            it.next();
        }
        it.status()?;
        Ok(n)
    }

    /// Flushes memtables to disk (used before measuring size, and at shutdown).
    pub fn flush(&self) -> Result<()> {
        self.settle()?;
        let cfs = [self.keyed_cf(), self.broadcast_cf(), self.meta_cf()];
        self.db
            .flush_cfs_opt(&cfs, &rocksdb::FlushOptions::default())?;
        Ok(())
    }
}

/// The TTL compaction filter: drops values, map entries and lists whose every element is
/// expired, judged by the state's TTL and the timestamp stored with each value. Partially
/// expired lists are kept (the read path trims them), as RocksDB's filter API here can only
/// replace a value with static bytes.
fn ttl_compaction_filter(
    ttls: TtlTable,
    kinds: KindTable,
    clock: Arc<dyn Clock>,
    stats: Arc<StateStats>,
) -> impl FnMut(u32, &[u8], &[u8]) -> rocksdb::CompactionDecision + Send + 'static {
    move |_level, key, value| {
        let Some(id) = layout::state_id_of(key) else {
            return rocksdb::CompactionDecision::Keep;
        };
        let entry = match ttls.read() {
            Ok(t) => t.get(&id).copied(),
            Err(_) => None,
        };
        let now = clock.now_ms();
        let expired = match entry {
            Some((StateKind::List, ttl)) => layout::decode_list(value)
                .is_some_and(|els| els.iter().all(|(ts, _)| ttl.is_expired(*ts, now))),
            // Values and map entries: their own TTL wins over the state's. Entries written
            // with their own TTL expire even in states without one, so those are decoded
            // too; a list state's bytes are never read as a value (its kind is known only
            // while the state is open, so unknown states are left alone).
            Some((_, ttl)) => layout::decode_value_ttl(value)
                .is_some_and(|(ts, own, _)| ts.saturating_add(own.unwrap_or(ttl.ttl_ms)) <= now),
            None => match kinds.read().ok().and_then(|k| k.get(&id).copied()) {
                Some(StateKind::Value | StateKind::Map) => layout::decode_value_ttl(value)
                    .is_some_and(|(ts, own, _)| own.is_some_and(|ms| ts.saturating_add(ms) <= now)),
                _ => false,
            },
        };
        if expired {
            stats.expired_in_compaction.fetch_add(1, Ordering::Relaxed);
            rocksdb::CompactionDecision::Remove
        } else {
            rocksdb::CompactionDecision::Keep
        }
    }
}

/// Whether entries at `key` may be hot values: not those of a state that reports expired
/// entries until compaction cleans them up (`ttls`: the store's TTL table).
fn hot_cacheable(ttls: &HashMap<u32, (StateKind, Ttl)>, key: &[u8]) -> bool {
    layout::state_id_of(key).is_some_and(|id| {
        ttls.get(&id)
            .is_none_or(|(_, t)| t.visibility != TtlVisibility::ReturnExpiredIfNotCleanedUp)
    })
}

impl Drop for StateStore {
    /// Deferred writes reach RocksDB before it closes, so a store reopened after a clean
    /// drop finds them (a crash loses them with the memtables; see `hot`).
    fn drop(&mut self) {
        if let Err(e) = self.settle() {
            tracing::error!(
                "state store {}: deferred writes not written: {e}",
                self.path.display()
            );
        }
    }
}

fn position_key(input: &str) -> Vec<u8> {
    format!("{META_POSITION_PREFIX}{input}").into_bytes()
}

/// Compression of keyed and broadcast SST files, the store's and those a bulk ingest writes.
const COMPRESSION: rocksdb::DBCompressionType = rocksdb::DBCompressionType::Lz4;

/// How keyed SST files are laid out, by the store and by a bulk ingest alike. Index and filter
/// in partitions of a few KiB, found through a small top level: a whole SST file's filter is
/// about a megabyte from a million keys on, more than a shard of the cache holds, so every
/// read of a key read it from disk again (1,800 reads/s at 3M keys, `benches/state.rs`).
fn keyed_table_layout() -> BlockBasedOptions {
    let mut table = BlockBasedOptions::default();
    table.set_bloom_filter(10.0, false);
    table.set_partition_filters(true);
    table.set_index_type(BlockBasedIndexType::TwoLevelIndexSearch);
    table.set_metadata_block_size(4096);
    table
}

/// Options of an SST file of keyed state written outside the store (`ingest`).
fn keyed_file_options() -> Options {
    let mut opts = Options::default();
    opts.set_block_based_table_factory(&keyed_table_layout());
    opts.set_compression_type(COMPRESSION);
    opts
}

/// Options of broadcast state's SST files, in the store and written outside it (`ingest`).
fn broadcast_file_options() -> Options {
    let mut opts = Options::default();
    opts.set_compression_type(COMPRESSION);
    opts
}
