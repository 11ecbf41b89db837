//! Lookups in external stores: [`LookupStore`], planned with [`LookupRequest`].
//!
//! The pipeline declares its stores (`[lookup.<name>]`: Redis, NATS KV, HTTP, PostgreSQL), with
//! their caches, timeouts and retries; a plugin reaches those and no other network.
//!
//! For speed, say which keys an event needs in
//! [`Processor::plan_lookups`](crate::Processor::plan_lookups): the host fetches every planned
//! key of a batch concurrently, and from its caches, before calling
//! [`Processor::process`](crate::Processor::process), where [`LookupStore::get`] then answers at
//! once. A key that was not planned is fetched when asked for, which is correct but makes the
//! batch wait.
//!
//! Where an event's key in a store is a field of its payload (or the event's key), the pipeline
//! file can plan it instead: `plan = "/customer"` (a JSON pointer, or `"key"`) under
//! `[lookup.<store>]`. The host reads it beside the input and, once every store is planned that
//! way, does not call `plan_lookups` at all: a batch crosses into the plugin once, not twice.
//!
//! Lookups must be reads: after a crash the host replays events and re-issues their lookups.

use std::fmt;

use serde::de::DeserializeOwned;

use crate::wit::eddy::plugin::lookup as wit;
use crate::wit::exports::eddy::plugin::lookup_planner as export;

/// Why a lookup failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LookupError {
    /// The pipeline declares no store with this name.
    UnknownStore(String),
    /// The store failed or did not answer in time, after every retry.
    Failed(String),
    /// The value is not valid JSON for the requested type.
    Decode(String),
}

impl fmt::Display for LookupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LookupError::UnknownStore(m) => write!(f, "unknown lookup store: {m}"),
            LookupError::Failed(m) => write!(f, "lookup failed: {m}"),
            LookupError::Decode(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for LookupError {}

impl From<wit::LookupError> for LookupError {
    fn from(e: wit::LookupError) -> Self {
        match e {
            wit::LookupError::UnknownStore(m) => LookupError::UnknownStore(m),
            wit::LookupError::Failed(m) => LookupError::Failed(m),
        }
    }
}

/// One planned lookup: a key in a named store.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LookupRequest {
    store: String,
    key: String,
}

impl LookupRequest {
    /// The lookup of `key` in `store`.
    pub fn new(store: impl Into<String>, key: impl Into<String>) -> Self {
        LookupRequest {
            store: store.into(),
            key: key.into(),
        }
    }

    /// The store's name.
    pub fn store(&self) -> &str {
        &self.store
    }

    /// The key.
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl From<LookupRequest> for export::LookupRequest {
    fn from(r: LookupRequest) -> Self {
        export::LookupRequest {
            store: r.store,
            key: r.key,
        }
    }
}

/// A lookup store declared by the pipeline, by name.
///
/// ```no_run
/// use eddy_sdk::{Event, LookupRequest, LookupStore};
/// use serde::Deserialize;
///
/// #[derive(Deserialize)]
/// struct Profile {
///     segment: String,
/// }
///
/// let profiles = LookupStore::new("profiles");
///
/// // In `plan_lookups`: declare what `process` will read.
/// let event = Event::new("c-42", "{}");
/// let plan: Vec<LookupRequest> = vec![profiles.request(event.key_str().unwrap_or_default())];
///
/// // In `process`: the answer is already there.
/// match profiles.get_json::<Profile>("c-42") {
///     Ok(Some(profile)) => eddy_sdk::log::debug!("segment {}", profile.segment),
///     Ok(None) => eddy_sdk::log::debug!("no profile"),
///     Err(e) => eddy_sdk::log::warn!("{e}"),
/// }
/// # let _ = plan;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupStore {
    name: String,
}

impl LookupStore {
    /// The store called `name` in the pipeline's `[lookup.<name>]`.
    pub fn new(name: impl Into<String>) -> Self {
        LookupStore { name: name.into() }
    }

    /// The store's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A [`LookupRequest`] for `key` in this store, for `plan_lookups`.
    pub fn request(&self, key: impl Into<String>) -> LookupRequest {
        LookupRequest::new(self.name.clone(), key)
    }

    /// The raw value of `key`, or `None` if the store has no such key.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, LookupError> {
        Ok(wit::get(&self.name, key)?)
    }

    /// The value of `key` decoded from JSON.
    pub fn get_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, LookupError> {
        match self.get(key)? {
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                LookupError::Decode(format!(
                    "value of `{key}` in store `{}` is not the JSON expected: {e}",
                    self.name
                ))
            }),
            None => Ok(None),
        }
    }

    /// Several keys at once (one round trip where the store allows it), one result per key.
    pub fn get_many(&self, keys: &[String]) -> Vec<Result<Option<Vec<u8>>, LookupError>> {
        wit::get_many(&self.name, keys)
            .into_iter()
            .map(|r| r.map_err(LookupError::from))
            .collect()
    }
}
