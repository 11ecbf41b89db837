//! Queryable state: outside applications read live keyed and broadcast state, over NATS (a
//! NATS service, `nats`) and HTTP (`http`), and the CLI (`eddy state get`).
//!
//! Owns: the query model (what can be asked, how answers look), owner routing, freshness.
//!
//! - **Freshness** `latest`: the live database, which the run loop writes one whole batch at a
//!   time (one RocksDB write), so an answer never shows half of an event's writes.
//!   `checkpoint`: the last completed checkpoint, opened read-only by the first query that
//!   reads it (not at every checkpoint: most hosts are never asked), consistent across keys,
//!   as of a cut, while newer events keep being applied; the answer names its checkpoint.
//! - **Owner routing**: a key lives on the host that owns its partition
//!   (`partition = key_group % partitions.count`, `key_group = fnv1a_32(key) % key_groups`).
//!   Every host answers the pipeline-wide endpoints: for a key it does not own, it forwards the
//!   request to the owner's partition endpoint over NATS.
//! - **Values** are decoded for display: the SDKs store JSON, shown as JSON; anything else is
//!   shown as `{"base64": ...}`. String map keys are shown as strings.
//!
//! - **Time travel** (`as_of`, see [`history`]): the state as of a retained checkpoint, by id
//!   or by time; the answer names the checkpoint.
//!
//! TTL applies as for plugins (`never-return-expired` hides expired entries) but a query never
//! writes: expired entries it meets are left for the plugin's reads and compaction.
//!
//! Never: writes state, or blocks the run loop (reads go straight to RocksDB).

pub mod history;
pub mod http;
pub mod nats;

pub use history::{AsOf, TimeTravel};

use std::sync::{Arc, RwLock};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::config::PipelineConfig;
use crate::state::{BroadcastAccess, KeyedAccess, StateKind, StateStore, Ttl, TtlVisibility};

/// How fresh an answer must be.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Freshness {
    /// State after the last fully applied batch.
    #[default]
    Latest,
    /// State as of the last completed checkpoint.
    Checkpoint,
}

/// A query.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Query {
    /// The keyed state's name (for `get`, `map`, `list`).
    #[serde(default)]
    pub state: Option<String>,
    /// The broadcast map's name (for `broadcast`).
    #[serde(default, rename = "map")]
    pub broadcast_map: Option<String>,
    /// The key, as text.
    #[serde(default)]
    pub key: Option<String>,
    /// The key, as base64 bytes (instead of `key`).
    #[serde(default)]
    pub key_base64: Option<String>,
    /// Map state: only entries whose (text) map key starts with this.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Map state / broadcast map: continue after this (text) key.
    #[serde(default)]
    pub start_after: Option<String>,
    /// Map state / broadcast map: the most entries (default 100, at most 10,000).
    #[serde(default)]
    pub limit: Option<usize>,
    /// `latest` (default) or `checkpoint`.
    #[serde(default)]
    pub freshness: Freshness,
    /// Time travel: the state as of this retained checkpoint (by id or time) instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_of: Option<AsOf>,
}

/// What went wrong with a query: the caller's fault (400/404) or the host's (500).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryError {
    /// A malformed request: the message says what is missing or wrong.
    BadRequest(String),
    /// No such state, map or operation here.
    NotFound(String),
    /// The key belongs to another host, which did not answer.
    Unavailable(String),
    /// The storage failed.
    Internal(String),
}

impl QueryError {
    /// An HTTP-like status code.
    pub fn code(&self) -> u16 {
        match self {
            QueryError::BadRequest(_) => 400,
            QueryError::NotFound(_) => 404,
            QueryError::Unavailable(_) => 503,
            QueryError::Internal(_) => 500,
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        match self {
            QueryError::BadRequest(m)
            | QueryError::NotFound(m)
            | QueryError::Unavailable(m)
            | QueryError::Internal(m) => m,
        }
    }
}

impl std::fmt::Display for QueryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

/// The operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A value state's value.
    Get,
    /// A map state's entries.
    Map,
    /// A list state's elements.
    List,
    /// A broadcast map's entry (with `key`) or entries.
    Broadcast,
    /// Which partition and host own a key.
    Owner,
    /// The states and maps there are.
    Describe,
}

impl Op {
    /// The operation's endpoint name.
    pub fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Map => "map",
            Op::List => "list",
            Op::Broadcast => "broadcast",
            Op::Owner => "owner",
            Op::Describe => "describe",
        }
    }

    /// Every operation.
    pub const ALL: [Op; 6] = [
        Op::Get,
        Op::Map,
        Op::List,
        Op::Broadcast,
        Op::Owner,
        Op::Describe,
    ];

    /// Whether answers depend on which host owns the key.
    pub fn keyed(self) -> bool {
        matches!(self, Op::Get | Op::Map | Op::List)
    }
}

/// Answers queries of one pipeline on one host.
pub struct QueryEngine {
    pipeline: String,
    host: String,
    key_groups: u32,
    partitions: u32,
    owned: Vec<u32>,
    /// The live database (replaced when a shadow is promoted).
    live: RwLock<Arc<StateStore>>,
    /// The last completed checkpoint, opened by the first query that reads it.
    checkpoint: RwLock<Option<Arc<LastCheckpoint>>>,
    /// In cluster mode, whether this run still holds its partition's lease (`Err(why)` once
    /// it may have lapsed): a run past its lease no longer answers as the owner.
    holds_lease: Option<LeaseCheck>,
    /// Whether the run has caught up after its start (a restart, a partition taken over):
    /// until it has handled every event whose output may be out already, its state is older
    /// than outputs already published (the replay from the checkpoint is under way).
    caught_up: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// The retained checkpoints, for `as_of` queries.
    history: Option<TimeTravel>,
}

/// The newest completed checkpoint, for `checkpoint`-freshness queries: its staged directory,
/// opened read-only by the first query that reads it. Most pipelines are never asked at that
/// freshness, and opening every checkpoint as it completed cost 6-36 ms of a busy host's time
/// a second, per partition.
struct LastCheckpoint {
    id: u64,
    dir: std::path::PathBuf,
    /// Opened once (or failed to open, said once); concurrent first queries wait for the
    /// one opening it.
    opened: std::sync::Mutex<Option<Result<Arc<StateStore>, String>>>,
}

impl LastCheckpoint {
    /// Its database, opened by the first caller (the others wait for that opening); `None` if
    /// its directory is gone: retention removes it once the run has named the next one. A
    /// failure is logged and kept, so later queries hear it without trying again.
    fn open(&self, clock: Arc<dyn crate::state::Clock>) -> Result<Option<Arc<StateStore>>, String> {
        let mut opened = self.opened.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(done) = opened.as_ref() {
            return done.clone().map(Some);
        }
        if !self.dir.exists() {
            return Ok(None);
        }
        let db = match StateStore::open_read_only(&self.dir, clock) {
            Ok(db) => Arc::new(db),
            // Removed while it opened.
            Err(_) if !self.dir.exists() => return Ok(None),
            Err(e) => {
                let why = format!(
                    "cannot open checkpoint {} for queries ({e}); the next checkpoint is opened afresh",
                    self.id
                );
                tracing::warn!("{why}");
                *opened = Some(Err(why.clone()));
                return Err(why);
            }
        };
        *opened = Some(Ok(db.clone()));
        Ok(Some(db))
    }
}

/// The state a query reads.
enum Reading {
    /// The live database, or the last completed checkpoint (with its id).
    Store(Arc<StateStore>, Option<u64>),
    /// A retained checkpoint, opened for time travel.
    AsOf(Arc<history::Opened>),
}

impl Reading {
    fn store(&self) -> &StateStore {
        match self {
            Reading::Store(db, _) => db,
            Reading::AsOf(opened) => opened.store(),
        }
    }
}

/// Whether a run still holds its lease; see [`QueryEngine::with_lease_check`].
pub type LeaseCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

impl QueryEngine {
    /// Queries over `live`.
    pub fn new(cfg: &PipelineConfig, live: Arc<StateStore>) -> QueryEngine {
        let partitions = cfg.partitions.count;
        QueryEngine {
            pipeline: cfg.pipeline.name.clone(),
            host: cfg.partitions.host_name(),
            key_groups: cfg.pipeline.key_groups,
            partitions,
            owned: (0..partitions)
                .filter(|p| cfg.partitions.owns(*p))
                .collect(),
            live: RwLock::new(live),
            checkpoint: RwLock::new(None),
            holds_lease: None,
            caught_up: None,
            history: None,
        }
    }

    /// Answers `as_of` queries from `history`'s retained checkpoints.
    pub fn with_history(mut self, history: TimeTravel) -> QueryEngine {
        self.history = Some(history);
        self
    }

    /// Refuses `latest` queries (503, asked again they are answered) until `caught_up` is
    /// set: a run that restarts or takes a partition over replays from the checkpoint, and its
    /// state is behind what was published until it has handled what may have been.
    pub fn with_catch_up(mut self, caught_up: Arc<std::sync::atomic::AtomicBool>) -> QueryEngine {
        self.caught_up = Some(caught_up);
        self
    }

    /// Refuses every query (503, asked again the client reaches the new owner) once `check`
    /// says this run's lease may have lapsed: its state stops at the moment it lost the
    /// partition, and the new owner's moves on.
    pub fn with_lease_check(mut self, check: LeaseCheck) -> QueryEngine {
        self.holds_lease = Some(check);
        self
    }

    /// The pipeline's name.
    pub fn pipeline(&self) -> &str {
        &self.pipeline
    }

    /// Whether this host owns every partition (so no query is ever forwarded).
    pub fn owns_all(&self) -> bool {
        self.owned.len() == self.partitions as usize
    }

    /// The partitions this host owns.
    pub fn owned(&self) -> &[u32] {
        &self.owned
    }

    /// Answers `latest` queries from `live` from now on (a promoted shadow's state).
    pub fn set_live(&self, live: Arc<StateStore>) {
        *self.live.write().unwrap_or_else(|p| p.into_inner()) = live;
    }

    fn live(&self) -> Arc<StateStore> {
        self.live.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Serves `checkpoint` freshness from checkpoint `id`, staged in `dir`, from now on. The
    /// directory is opened when a query first reads it.
    pub fn set_checkpoint(&self, id: u64, dir: std::path::PathBuf) {
        let named = Arc::new(LastCheckpoint {
            id,
            dir,
            opened: std::sync::Mutex::new(None),
        });
        let replaced = self
            .checkpoint
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .replace(named);
        // Closed (if opened and no query reads it) with no lock held.
        drop(replaced);
    }

    /// The last completed checkpoint, opened.
    fn last_checkpoint(&self) -> Result<(u64, Arc<StateStore>), QueryError> {
        let newest = || {
            self.checkpoint
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        };
        let mut last = newest().ok_or_else(|| {
            QueryError::Unavailable(
                "no checkpoint has completed yet on this host; ask with freshness latest, or retry after checkpoint.interval_ms".into(),
            )
        })?;
        loop {
            let failed = match last.open(self.live().clock()) {
                Ok(Some(db)) => return Ok((last.id, db)),
                Ok(None) => None,
                Err(why) => Some(why),
            };
            // A newer checkpoint named meanwhile answers instead of one gone or broken.
            match newest() {
                Some(next) if next.id != last.id => last = next,
                _ => {
                    return Err(match failed {
                        Some(why) => QueryError::Internal(why),
                        None => QueryError::Unavailable(format!(
                            "checkpoint {} was replaced by a newer one just now; ask again",
                            last.id
                        )),
                    });
                }
            }
        }
    }

    /// The partition of `key`.
    pub fn partition_of(&self, key: &[u8]) -> u32 {
        u32::from(crate::state::keygroup::key_group(key, self.key_groups)) % self.partitions
    }

    /// Whether this host owns `key`.
    pub fn owns(&self, key: &[u8]) -> bool {
        self.owned.contains(&self.partition_of(key))
    }

    /// The key of a query, as bytes.
    pub fn key_of(q: &Query) -> Result<Option<Vec<u8>>, QueryError> {
        match (&q.key, &q.key_base64) {
            (Some(_), Some(_)) => Err(QueryError::BadRequest(
                "give `key` or `key_base64`, not both".into(),
            )),
            (Some(k), None) => Ok(Some(k.as_bytes().to_vec())),
            (None, Some(b)) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .map(Some)
                .map_err(|e| QueryError::BadRequest(format!("`key_base64` is not base64: {e}"))),
            (None, None) => Ok(None),
        }
    }

    /// Answers `q` from this host's state (the caller routes keys this host does not own).
    pub fn execute(&self, op: Op, q: &Query) -> Result<serde_json::Value, QueryError> {
        if let Some(check) = &self.holds_lease {
            check().map_err(|why| {
                QueryError::Unavailable(format!(
                    "this host no longer answers for its partition ({why}); ask again: the new owner answers"
                ))
            })?;
        }
        let reading = self.reading(op, q)?;
        let store = reading.store();
        let mut answer = match op {
            Op::Owner => self.owner(q)?,
            Op::Describe => self.describe(store),
            Op::Broadcast => self.broadcast(store, q)?,
            Op::Get | Op::Map | Op::List => self.keyed(store, op, q)?,
        };
        if let Some(obj) = answer.as_object_mut() {
            match &reading {
                Reading::Store(_, checkpoint) => {
                    obj.insert(
                        "freshness".into(),
                        serde_json::to_value(q.freshness).unwrap_or_default(),
                    );
                    if let Some(id) = checkpoint {
                        obj.insert("checkpoint".into(), (*id).into());
                    }
                }
                Reading::AsOf(opened) => {
                    let m = &opened.manifest;
                    obj.insert("freshness".into(), "as-of".into());
                    obj.insert("checkpoint".into(), m.id.into());
                    obj.insert(
                        "as_of".into(),
                        serde_json::json!({
                            "checkpoint": m.id,
                            "created": history::show_time(m.created_ms),
                            "created_ms": m.created_ms,
                            "positions": m.cut.positions,
                            "plugin_version": m.cut.plugin_version,
                        }),
                    );
                }
            }
            obj.insert("host".into(), self.host.clone().into());
        }
        Ok(answer)
    }

    /// The state `q` reads: a retained checkpoint (`as_of`), else the live state or the last
    /// completed checkpoint by its freshness.
    fn reading(&self, op: Op, q: &Query) -> Result<Reading, QueryError> {
        if let Some(as_of) = q.as_of {
            let history = self.history.as_ref().ok_or_else(|| {
                QueryError::BadRequest(
                    "this host keeps no checkpoints for time-travel queries (`as_of`)".into(),
                )
            })?;
            return Ok(Reading::AsOf(history.open(as_of)?));
        }
        match q.freshness {
            Freshness::Latest
                if matches!(op, Op::Get | Op::Map | Op::List | Op::Broadcast)
                    && self
                        .caught_up
                        .as_ref()
                        .is_some_and(|c| !c.load(std::sync::atomic::Ordering::Acquire)) =>
            {
                Err(QueryError::Unavailable(
                    "this host is replaying from its checkpoint (a restart, or a partition it took over): its state is behind outputs already published; ask again in a moment (or with freshness checkpoint)".into(),
                ))
            }
            Freshness::Latest => Ok(Reading::Store(self.live(), None)),
            Freshness::Checkpoint => {
                let (id, db) = self.last_checkpoint()?;
                Ok(Reading::Store(db, Some(id)))
            }
        }
    }

    fn owner(&self, q: &Query) -> Result<serde_json::Value, QueryError> {
        let key =
            Self::key_of(q)?.ok_or_else(|| QueryError::BadRequest("`key` is required".into()))?;
        let kg = crate::state::keygroup::key_group(&key, self.key_groups);
        let partition = u32::from(kg) % self.partitions;
        Ok(serde_json::json!({
            "key_group": kg,
            "key_groups": self.key_groups,
            "partition": partition,
            "partitions": self.partitions,
            "owned_here": self.owned.contains(&partition),
            "hash": "fnv1a_32(key bytes) % key_groups; partition = key_group % partitions",
        }))
    }

    fn describe(&self, store: &StateStore) -> serde_json::Value {
        let states: Vec<serde_json::Value> = store
            .states()
            .into_iter()
            .map(|s| {
                serde_json::json!({
                    "name": s.name,
                    "kind": s.kind,
                    "ttl_ms": s.ttl.map(|t| t.ttl_ms),
                })
            })
            .collect();
        let maps: Vec<String> = store.broadcast_maps().into_iter().map(|(n, _)| n).collect();
        serde_json::json!({
            "pipeline": self.pipeline,
            "states": states,
            "broadcast_maps": maps,
            "partitions": self.partitions,
            "owned": self.owned,
        })
    }

    fn keyed(
        &self,
        store: &StateStore,
        op: Op,
        q: &Query,
    ) -> Result<serde_json::Value, QueryError> {
        let name = q
            .state
            .as_deref()
            .ok_or_else(|| QueryError::BadRequest("`state` is required".into()))?;
        let key =
            Self::key_of(q)?.ok_or_else(|| QueryError::BadRequest("`key` is required".into()))?;
        let mut info = store.state(name).ok_or_else(|| {
            let known: Vec<String> = store.states().into_iter().map(|s| s.name).collect();
            QueryError::NotFound(format!(
                "no state `{name}` in pipeline {}; it has {known:?}",
                self.pipeline
            ))
        })?;
        let wanted = match op {
            Op::Get => StateKind::Value,
            Op::Map => StateKind::Map,
            _ => StateKind::List,
        };
        if info.kind != wanted {
            let (op, flag, path) = match info.kind {
                StateKind::Value => ("get", "", ""),
                StateKind::Map => ("map", " --map", "/map"),
                StateKind::List => ("list", " --list", "/list"),
            };
            return Err(QueryError::BadRequest(format!(
                "state `{name}` is a {:?} state; ask `{op}` for it (`eddy state get{flag}`, HTTP /v1/state/{name}/<key>{path})",
                info.kind
            )));
        }
        // Queries read like a plugin that never refreshes or cleans up.
        info.ttl = info.ttl.map(|t| Ttl {
            update: crate::state::TtlUpdate::OnCreateAndWrite,
            visibility: TtlVisibility::NeverReturnExpired,
            ..t
        });
        let kg = store.key_group(&key);
        let mut scratch = store.batch();
        let mut access = KeyedAccess::new(store, &mut scratch);
        let internal = |e: crate::state::StateError| QueryError::Internal(e.to_string());
        let shown_key = show_key(&key);
        Ok(match op {
            Op::Get => {
                let v = access.value_get(&info, kg, &key).map_err(internal)?;
                serde_json::json!({
                    "state": name, "key": shown_key, "found": v.is_some(),
                    "value": v.as_deref().map(show_value),
                })
            }
            Op::List => {
                let values = access.list_get(&info, kg, &key).map_err(internal)?;
                serde_json::json!({
                    "state": name, "key": shown_key,
                    "values": values.iter().map(|v| show_value(v)).collect::<Vec<_>>(),
                })
            }
            _ => {
                let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
                let prefix = q.prefix.as_deref().unwrap_or("").as_bytes();
                let mut cursor: Option<Vec<u8>> = match &q.start_after {
                    Some(a) if a.as_bytes() >= prefix => Some(a.as_bytes().to_vec()),
                    _ => prefix_predecessor(prefix),
                };
                let mut entries: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
                'pages: loop {
                    let page = access
                        .map_entries(&info, kg, &key, cursor.as_deref(), 256)
                        .map_err(internal)?;
                    let last_page = page.len() < 256;
                    for (mk, v) in page {
                        cursor = Some(mk.clone());
                        if !mk.starts_with(prefix) {
                            if mk.as_slice() > prefix {
                                break 'pages;
                            }
                            continue;
                        }
                        entries.push((mk, v));
                        if entries.len() > limit {
                            break 'pages;
                        }
                    }
                    if last_page {
                        break;
                    }
                }
                let next = (entries.len() > limit).then(|| {
                    entries.truncate(limit);
                    show_key(&entries[limit - 1].0)
                });
                let shown: Vec<serde_json::Value> = entries
                    .iter()
                    .map(|(k, v)| serde_json::json!({ "key": show_key(k), "value": show_value(v) }))
                    .collect();
                serde_json::json!({ "state": name, "key": shown_key, "entries": shown, "next": next })
            }
        })
    }

    fn broadcast(&self, store: &StateStore, q: &Query) -> Result<serde_json::Value, QueryError> {
        let name = q.broadcast_map.as_deref().ok_or_else(|| {
            QueryError::BadRequest("`map` (the broadcast map's name) is required".into())
        })?;
        let id = store.broadcast_map(name).ok_or_else(|| {
            let known: Vec<String> = store.broadcast_maps().into_iter().map(|(n, _)| n).collect();
            QueryError::NotFound(format!(
                "no broadcast map `{name}` in pipeline {}; it has {known:?}",
                self.pipeline
            ))
        })?;
        let mut scratch = store.batch();
        let mut access = BroadcastAccess::new(store, &mut scratch);
        let internal = |e: crate::state::StateError| QueryError::Internal(e.to_string());
        match Self::key_of(q)? {
            Some(key) => {
                let v = access.get(id, &key).map_err(internal)?;
                Ok(serde_json::json!({
                    "map": name, "key": show_key(&key), "found": v.is_some(),
                    "value": v.as_deref().map(show_value),
                }))
            }
            None => {
                let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
                let after = q.start_after.as_ref().map(|s| s.as_bytes().to_vec());
                let page = access
                    .entries(id, after.as_deref(), limit + 1)
                    .map_err(internal)?;
                let more = page.len() > limit;
                let entries: Vec<serde_json::Value> = page
                    .iter()
                    .take(limit)
                    .map(|(k, v)| serde_json::json!({ "key": show_key(k), "value": show_value(v) }))
                    .collect();
                let next = more.then(|| show_key(&page[limit - 1].0));
                Ok(serde_json::json!({ "map": name, "entries": entries, "next": next }))
            }
        }
    }
}

/// The greatest byte string below every string starting with `prefix` that map iteration can
/// start after (None: start at the beginning).
fn prefix_predecessor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut p = prefix.to_vec();
    let last = p.pop()?;
    if last == 0 {
        return Some(p);
    }
    p.push(last - 1);
    p.extend_from_slice(&[0xff; 8]);
    Some(p)
}

/// A key for display: text if UTF-8, else `{"base64": ...}`.
pub fn show_key(k: &[u8]) -> serde_json::Value {
    match std::str::from_utf8(k) {
        Ok(s) => s.into(),
        Err(_) => {
            serde_json::json!({ "base64": base64::engine::general_purpose::STANDARD.encode(k) })
        }
    }
}

/// A value for display: the JSON it is (the SDKs' encoding), else `{"base64": ...}`.
pub fn show_value(v: &[u8]) -> serde_json::Value {
    serde_json::from_slice(v).unwrap_or_else(
        |_| serde_json::json!({ "base64": base64::engine::general_purpose::STANDARD.encode(v) }),
    )
}

#[cfg(test)]
mod tests;
