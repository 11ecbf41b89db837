//! Visiting every key of a keyed state: [`VisitedEntry`] in, [`VisitAction`] out.
//!
//! Ask for a visit with `visit_all_keys(tag)` on a [`ValueState`](crate::ValueState),
//! [`MapState`](crate::MapState) or [`ListState`](crate::ListState) from
//! [`Processor::process_broadcast`](crate::Processor::process_broadcast) or
//! [`Processor::migrate`](crate::Processor::migrate). The host then streams the state's live
//! entries, in chunks, to [`Processor::visit`](crate::Processor::visit), and applies one action
//! per entry, before any later keyed event is handled. Memory stays bounded whatever the number
//! of keys.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::state::MapKey;
use crate::wit::exports::eddy::plugin::keyed_visitor as export;

/// One live entry of a visited state: for value state the value, for map state one entry, for
/// list state one element.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VisitedEntry {
    key: Vec<u8>,
    map_key: Option<Vec<u8>>,
    value: Vec<u8>,
}

impl VisitedEntry {
    /// An entry, for tests.
    pub fn new(
        key: impl Into<Vec<u8>>,
        map_key: Option<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Self {
        VisitedEntry {
            key: key.into(),
            map_key,
            value: value.into(),
        }
    }

    /// The event key the entry belongs to.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The event key as text, if it is UTF-8.
    pub fn key_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.key).ok()
    }

    /// The raw map key, for map state.
    pub fn map_key_bytes(&self) -> Option<&[u8]> {
        self.map_key.as_deref()
    }

    /// The map key decoded as `K`, for map state.
    pub fn map_key<K: MapKey>(&self) -> Option<Result<K, String>> {
        self.map_key.clone().map(K::decode_key)
    }

    /// The raw value.
    pub fn value_bytes(&self) -> &[u8] {
        &self.value
    }

    /// The value decoded from JSON.
    pub fn value<T: DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_slice(&self.value).map_err(|e| e.to_string())
    }
}

impl From<export::VisitedEntry> for VisitedEntry {
    fn from(e: export::VisitedEntry) -> Self {
        VisitedEntry {
            key: e.key,
            map_key: e.map_key,
            value: e.value,
        }
    }
}

/// What to do with a visited entry.
///
/// ```
/// use eddy_sdk::VisitAction;
///
/// assert_eq!(VisitAction::set_json(&42u64), Ok(VisitAction::Set(b"42".to_vec())));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VisitAction {
    /// Leave the entry as it is.
    Keep,
    /// Replace its value (re-stamping its TTL).
    Set(Vec<u8>),
    /// Remove it.
    Remove,
}

impl VisitAction {
    /// Replace the value with `value` encoded as JSON.
    pub fn set_json<T: Serialize + ?Sized>(value: &T) -> Result<Self, String> {
        serde_json::to_vec(value)
            .map(VisitAction::Set)
            .map_err(|e| e.to_string())
    }
}

impl From<VisitAction> for export::VisitAction {
    fn from(a: VisitAction) -> Self {
        match a {
            VisitAction::Keep => export::VisitAction::Keep,
            VisitAction::Set(v) => export::VisitAction::Set(v),
            VisitAction::Remove => export::VisitAction::Remove,
        }
    }
}
