//! Broadcast state: [`BroadcastMap`], fed by [`BroadcastEvent`]s.
//!
//! A broadcast map is one table shared by every key and every host (reference data: rules,
//! thresholds, blocked lists, rates). It is written only from
//! [`Processor::process_broadcast`](crate::Processor::process_broadcast), which the host calls
//! for the events of the pipeline's `[broadcast.<name>]` inputs, and read from anywhere.
//!
//! When an update becomes visible: a keyed event sees every broadcast update that was stored in
//! its stream before the keyed event was stored in its own, and none stored after (the host
//! orders them by the streams' timestamps, so a replay after a crash sees the same tables).
//!
//! Reading is cheap to repeat: during a keyed batch the maps cannot change, so
//! [`BroadcastMap::get`] asks the host for a key once per batch and answers the batch's other
//! events from memory.
//!
//! The rule for plugin authors: `process_broadcast` must be deterministic. Its writes may depend
//! only on the broadcast events and the broadcast state, never on the clock, randomness or
//! lookups, so that every host, and every replay, builds the same tables.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::event::{Message, message_accessors};
use crate::state::MapKey;
use crate::wit::eddy::plugin::broadcast_state as wit;
use crate::wit::exports::eddy::plugin::broadcast_handler as export;

/// Bytes read per (map, key); `None`: no entry.
type Reads = HashMap<(wit::MapId, Vec<u8>), Option<Vec<u8>>>;

thread_local! {
    /// What [`BroadcastMap::get`] read during the keyed batch being handled. Broadcast maps are
    /// written only between keyed batches (in `process_broadcast`), so within one they cannot
    /// change: each key is asked of the host once per batch, whatever number of events read it.
    static BATCH_READS: RefCell<Reads> = RefCell::new(HashMap::new());
}

/// Forgets the reads of the batch that ended.
pub(crate) fn forget_batch_reads() {
    BATCH_READS.with(|r| r.borrow_mut().clear());
}

/// The bytes at `key` in map `id`: from this batch's earlier reads while a keyed batch is
/// handled, else from the host.
fn read(id: wit::MapId, key: Vec<u8>) -> Result<Option<Vec<u8>>, wit::BroadcastError> {
    if crate::__private::current_event().is_none() {
        return wit::get(id, &key);
    }
    let cache_key = (id, key);
    if let Some(hit) = BATCH_READS.with(|r| r.borrow().get(&cache_key).cloned()) {
        return Ok(hit);
    }
    let bytes = wit::get(id, &cache_key.1)?;
    BATCH_READS.with(|r| r.borrow_mut().insert(cache_key, bytes.clone()));
    Ok(bytes)
}

/// How many entries [`BroadcastMap::entries`] fetches from the host at once.
const ENTRIES_PAGE: u32 = 256;

/// One event of a broadcast input.
///
/// ```
/// use eddy_sdk::BroadcastEvent;
///
/// let event = BroadcastEvent::new("rules", r#"{"category": "travel", "limit_cents": 50000}"#);
/// let rule: serde_json::Value = event.json()?;
/// assert_eq!(event.input(), "rules");
/// assert_eq!(rule["limit_cents"], 50000);
/// # Ok::<(), String>(())
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct BroadcastEvent {
    input: String,
    message: Message,
}

message_accessors!(BroadcastEvent, input);

impl BroadcastEvent {
    /// An event of broadcast input `input` with this payload. For tests.
    pub fn new(input: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        BroadcastEvent {
            input: input.into(),
            message: Message {
                payload: payload.into(),
                ..Message::default()
            },
        }
    }

    /// The broadcast input's name (`[broadcast.<name>]` in the pipeline file).
    pub fn input(&self) -> &str {
        &self.input
    }
}

impl From<export::BroadcastEvent> for BroadcastEvent {
    fn from(e: export::BroadcastEvent) -> Self {
        BroadcastEvent {
            input: e.input,
            message: Message {
                subject: e.subject,
                headers: e.headers,
                payload: e.payload,
                timestamp_ms: e.timestamp_ms,
                sequence: e.sequence,
            },
        }
    }
}

/// Why a broadcast state operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BroadcastError {
    /// The map is not open in this plugin instance.
    UnknownMap,
    /// A write outside [`Processor::process_broadcast`](crate::Processor::process_broadcast):
    /// broadcast state is read-only while handling keyed events. Nothing was written.
    ReadOnly(String),
    /// The host's storage engine failed.
    Storage(String),
    /// Stored bytes do not decode as the map's key or value type.
    Decode(String),
    /// A value could not be encoded as JSON.
    Encode(String),
}

impl fmt::Display for BroadcastError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BroadcastError::UnknownMap => f.write_str("broadcast map is not open"),
            BroadcastError::ReadOnly(m) => write!(f, "broadcast state is read-only here: {m}"),
            BroadcastError::Storage(m) => write!(f, "broadcast storage failed: {m}"),
            BroadcastError::Decode(m) | BroadcastError::Encode(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for BroadcastError {}

impl From<wit::BroadcastError> for BroadcastError {
    fn from(e: wit::BroadcastError) -> Self {
        match e {
            wit::BroadcastError::UnknownMap => BroadcastError::UnknownMap,
            wit::BroadcastError::ReadOnly(m) => BroadcastError::ReadOnly(m),
            wit::BroadcastError::Storage(m) => BroadcastError::Storage(m),
        }
    }
}

/// A named broadcast map from `K` to `V`, with the same encoding as [`MapState`](crate::MapState)
/// (keys per [`MapKey`], values as JSON).
///
/// ```no_run
/// use eddy_sdk::{BroadcastEvent, BroadcastMap};
/// use serde::Deserialize;
///
/// #[derive(Deserialize)]
/// struct Rule {
///     category: String,
///     limit_cents: u64,
/// }
///
/// let limits = BroadcastMap::<String, u64>::new("limits");
///
/// // In `process_broadcast`: apply the rule.
/// let event = BroadcastEvent::new("rules", r#"{"category": "travel", "limit_cents": 50000}"#);
/// let rule: Rule = event.json().map_err(|e| format!("bad rule: {e}"))?;
/// limits.put(&rule.category, &rule.limit_cents).map_err(|e| e.to_string())?;
///
/// // In `process`: read it.
/// let limit = limits.get("travel").map_err(|e| e.to_string())?;
/// # let _ = limit;
/// # Ok::<(), String>(())
/// ```
pub struct BroadcastMap<K, V> {
    name: String,
    id: Cell<Option<wit::MapId>>,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> BroadcastMap<K, V> {
    /// A handle to the broadcast map called `name`.
    pub fn new(name: impl Into<String>) -> Self {
        BroadcastMap {
            name: name.into(),
            id: Cell::new(None),
            _types: PhantomData,
        }
    }

    /// The map's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Opens the map now instead of on first use.
    pub fn open(&self) -> Result<(), BroadcastError> {
        self.id().map(drop)
    }

    fn id(&self) -> Result<wit::MapId, BroadcastError> {
        if let Some(id) = self.id.get() {
            return Ok(id);
        }
        let id = wit::open_map(&self.name)?;
        self.id.set(Some(id));
        Ok(id)
    }
}

impl<K: MapKey, V: Serialize + DeserializeOwned> BroadcastMap<K, V> {
    /// The entry for `key`, if any.
    pub fn get(&self, key: &K::Borrowed) -> Result<Option<V>, BroadcastError> {
        match read(self.id()?, K::encode_key(key))? {
            Some(bytes) => self.decode(&bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Sets an entry. Only in `process_broadcast`.
    pub fn put(&self, key: &K::Borrowed, value: &V) -> Result<(), BroadcastError> {
        let bytes = serde_json::to_vec(value).map_err(|e| {
            BroadcastError::Encode(format!(
                "cannot encode a value of broadcast map `{}`: {e}",
                self.name
            ))
        })?;
        Ok(wit::put(self.id()?, &K::encode_key(key), &bytes)?)
    }

    /// Removes an entry. Only in `process_broadcast`.
    pub fn remove(&self, key: &K::Borrowed) -> Result<(), BroadcastError> {
        Ok(wit::remove(self.id()?, &K::encode_key(key))?)
    }

    /// Removes every entry. Only in `process_broadcast`.
    pub fn clear(&self) -> Result<(), BroadcastError> {
        Ok(wit::clear(self.id()?)?)
    }

    /// Every entry in key-byte order, fetched a page at a time.
    pub fn entries(&self) -> Result<Vec<(K, V)>, BroadcastError> {
        let id = self.id()?;
        let mut out = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = wit::entries(id, after.as_deref(), ENTRIES_PAGE)?;
            let done = page.len() < ENTRIES_PAGE as usize;
            after = page.last().map(|(k, _)| k.clone());
            for (k, v) in page {
                let key = K::decode_key(k).map_err(|e| {
                    BroadcastError::Decode(format!(
                        "cannot decode a key of broadcast map `{}`: {e}",
                        self.name
                    ))
                })?;
                out.push((key, self.decode(&v)?));
            }
            if done || after.is_none() {
                return Ok(out);
            }
        }
    }

    fn decode(&self, bytes: &[u8]) -> Result<V, BroadcastError> {
        serde_json::from_slice(bytes).map_err(|e| {
            BroadcastError::Decode(format!(
                "cannot decode a value of broadcast map `{}`: {e}",
                self.name
            ))
        })
    }
}

impl<K, V> fmt::Debug for BroadcastMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BroadcastMap")
            .field("name", &self.name)
            .field("id", &self.id.get())
            .finish()
    }
}
