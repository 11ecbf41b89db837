//! Typed keyed state: [`ValueState`], [`MapState`] and [`ListState`].
//!
//! See the crate documentation, sections "Keyed state" and "State encoding".

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::__private::current_event;
use crate::wit::eddy::plugin::keyed_state as wit;

mod batch;
#[cfg(test)]
mod tests;

pub(crate) use batch::{finish as finish_batch, forget as forget_batch};

pub use map::{MapEntries, MapKey, MapKeys, MapState};

/// How many map entries [`MapState::entries`] and [`MapState::keys`] fetch from the host at once.
const ENTRIES_PAGE: u32 = 256;

// ---------------------------------------------------------------------------------------------
// Errors

/// Why a state operation failed.
///
/// The first five variants are the host's `state-error`; [`Decode`](StateError::Decode) and
/// [`Encode`](StateError::Encode) come from this SDK's JSON and key encoding. Nothing is retried:
/// the plugin decides what to do, usually [`Outcome::reject`](crate::Outcome::reject) with the
/// error's message.
///
/// ```
/// use eddy_sdk::{StateError, ValueState};
///
/// // Outside `process` there is no current event, so there is no key to read.
/// let count = ValueState::<u64>::new("count");
/// let err = count.get().unwrap_err();
/// assert_eq!(err, StateError::NoSuchEvent);
/// assert!(err.to_string().contains("no event is being processed"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StateError {
    /// The state is not open in this plugin instance.
    UnknownState,
    /// The state exists with another kind; the message gives its name, kind and the expected
    /// kind.
    WrongKind(String),
    /// No event of the current batch is being processed: keyed state is only reachable from
    /// [`Processor::process`](crate::Processor::process).
    NoSuchEvent,
    /// The state may not be written here (for example a visit asked for outside
    /// `process_broadcast` or `migrate`); the message says why.
    ReadOnly(String),
    /// The host's storage engine failed; the message says how.
    Storage(String),
    /// Stored bytes do not decode as the handle's type; the message names the state.
    Decode(String),
    /// A value could not be encoded as JSON; the message names the state.
    Encode(String),
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateError::UnknownState => f.write_str("state is not open in this plugin instance"),
            StateError::WrongKind(m) => write!(f, "state exists with another kind: {m}"),
            StateError::NoSuchEvent => f.write_str(
                "no event is being processed: keyed state is only reachable from `process`",
            ),
            StateError::ReadOnly(m) => write!(f, "state is read-only here: {m}"),
            StateError::Storage(m) => write!(f, "state storage failed: {m}"),
            StateError::Decode(m) | StateError::Encode(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for StateError {}

impl From<wit::StateError> for StateError {
    fn from(error: wit::StateError) -> Self {
        match error {
            wit::StateError::UnknownState => StateError::UnknownState,
            wit::StateError::WrongKind(m) => StateError::WrongKind(m),
            wit::StateError::NoSuchEvent => StateError::NoSuchEvent,
            wit::StateError::ReadOnly(m) => StateError::ReadOnly(m),
            wit::StateError::Storage(m) => StateError::Storage(m),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// TTL

/// Time-to-live of a state's entries, modelled on Flink's `StateTtlConfig`.
///
/// An entry is expired once `last update + ttl <= now` on the host's processing-time clock
/// ([`now_ms`](crate::now_ms)). By default only creating or writing an entry stamps it and an
/// expired entry is never returned. The pipeline's configuration may override a plugin's TTL.
///
/// ```
/// use eddy_sdk::{MapState, Ttl};
/// use std::time::Duration;
///
/// let day = Ttl::new(Duration::from_secs(24 * 3600));
/// assert_eq!(day.ttl_ms(), 86_400_000);
///
/// let sliding = Ttl::from_millis(60_000)
///     .update_on_read_and_write()
///     .return_expired_if_not_cleaned_up();
/// assert!(sliding.updates_on_read() && sliding.returns_expired());
///
/// let seen = MapState::<String, u64>::new("seen").with_ttl(day);
/// assert_eq!(seen.ttl(), Some(day));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ttl {
    ttl_ms: u64,
    update_on_read: bool,
    return_expired: bool,
}

impl Ttl {
    /// Entries live for `ttl` after their last update, in whole milliseconds (rounded down,
    /// saturating at `u64::MAX`).
    pub fn new(ttl: Duration) -> Self {
        Ttl::from_millis(millis(ttl))
    }

    /// Entries live for `ttl_ms` milliseconds after their last update.
    pub fn from_millis(ttl_ms: u64) -> Self {
        Ttl {
            ttl_ms,
            update_on_read: false,
            return_expired: false,
        }
    }

    /// Reads stamp entries too, so the TTL counts from the last read or write (Flink
    /// `UpdateType.OnReadAndWrite`).
    #[must_use]
    pub fn update_on_read_and_write(mut self) -> Self {
        self.update_on_read = true;
        self
    }

    /// An expired entry that is still on disk may be returned once; it is removed on that read
    /// (Flink `StateVisibility.ReturnExpiredIfNotCleanedUp`).
    #[must_use]
    pub fn return_expired_if_not_cleaned_up(mut self) -> Self {
        self.return_expired = true;
        self
    }

    /// The time-to-live in milliseconds.
    pub fn ttl_ms(&self) -> u64 {
        self.ttl_ms
    }

    /// Whether reads stamp entries (see [`update_on_read_and_write`](Ttl::update_on_read_and_write)).
    pub fn updates_on_read(&self) -> bool {
        self.update_on_read
    }

    /// Whether expired entries may be returned (see
    /// [`return_expired_if_not_cleaned_up`](Ttl::return_expired_if_not_cleaned_up)).
    pub fn returns_expired(&self) -> bool {
        self.return_expired
    }
}

impl From<Ttl> for wit::TtlConfig {
    fn from(ttl: Ttl) -> Self {
        wit::TtlConfig {
            ttl_ms: ttl.ttl_ms,
            update: if ttl.update_on_read {
                wit::TtlUpdate::OnReadAndWrite
            } else {
                wit::TtlUpdate::OnCreateAndWrite
            },
            visibility: if ttl.return_expired {
                wit::TtlVisibility::ReturnExpiredIfNotCleanedUp
            } else {
                wit::TtlVisibility::NeverReturnExpired
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The untyped part of a handle

/// A state's name, kind and TTL, and its host id once opened.
struct Slot {
    name: String,
    kind: wit::StateKind,
    ttl: Option<Ttl>,
    id: Cell<Option<wit::StateId>>,
    /// Whether the host lets value and list state go through the batch (`batchable`), once
    /// asked.
    batchable: Cell<Option<bool>>,
}

impl Slot {
    fn new(name: String, kind: wit::StateKind) -> Self {
        Slot {
            name,
            kind,
            ttl: None,
            id: Cell::new(None),
            batchable: Cell::new(None),
        }
    }

    fn set_ttl(&mut self, ttl: Ttl) {
        self.ttl = Some(ttl);
        // Open again, with the TTL, on next use.
        self.id.set(None);
        self.batchable.set(None);
    }

    /// The host id of the state, opening it on first use.
    fn id(&self) -> Result<wit::StateId, StateError> {
        if let Some(id) = self.id.get() {
            return Ok(id);
        }
        let id = wit::open(&self.name, self.kind, self.ttl.map(wit::TtlConfig::from))?;
        self.id.set(Some(id));
        Ok(id)
    }

    /// The state id and current event index for a keyed call.
    fn target(&self) -> Result<(wit::StateId, wit::EventIndex), StateError> {
        let event = current_event().ok_or(StateError::NoSuchEvent)?;
        Ok((self.id()?, event))
    }

    /// Whether reads and writes of state `id` go through the batch ([`batch`]): they do
    /// unless the host says otherwise (see `batchable` in the WIT), or a write with its own
    /// time-to-live took the state out of this batch.
    fn batched(&self, id: wit::StateId) -> Result<bool, StateError> {
        let batchable = match self.batchable.get() {
            Some(batchable) => batchable,
            None => {
                let batchable = wit::batchable(id)?;
                self.batchable.set(Some(batchable));
                batchable
            }
        };
        Ok(batchable && !batch::is_direct(id))
    }

    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Vec<u8>, StateError> {
        let mut buf = Vec::new();
        self.encode_into(value, &mut buf)?;
        Ok(buf)
    }

    /// Encodes `value` as JSON at the end of `buf`.
    fn encode_into<T: Serialize + ?Sized>(
        &self,
        value: &T,
        buf: &mut Vec<u8>,
    ) -> Result<(), StateError> {
        serde_json::to_writer(buf, value).map_err(|e| {
            StateError::Encode(format!(
                "cannot encode a value of state `{}`: {e}",
                self.name
            ))
        })
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, StateError> {
        serde_json::from_slice(bytes).map_err(|e| {
            StateError::Decode(format!(
                "cannot decode a value of state `{}`: {e}",
                self.name
            ))
        })
    }

    fn decode_key<K: MapKey>(&self, bytes: Vec<u8>) -> Result<K, StateError> {
        K::decode_key(bytes).map_err(|e| {
            StateError::Decode(format!("cannot decode a key of state `{}`: {e}", self.name))
        })
    }
}

/// Gives `$handle`, a struct of a `slot: Slot` and a `_types: PhantomData`, what every keyed-state
/// handle has: `new` for state kind `$kind`, `with_ttl`, `name`, `ttl`, `open`,
/// `visit_all_keys` and `Debug`. A macro rather than a trait, so that they are inherent
/// methods: a plugin calls them without importing anything.
macro_rules! state_handle {
    ($handle:ident<$($param:ident),+>, $kind:ident, $what:literal) => {
        impl<$($param),+> $handle<$($param),+> {
            #[doc = concat!("A handle to the ", $what, " state called `name` (unique in the pipeline).")]
            pub fn new(name: impl Into<String>) -> Self {
                $handle {
                    slot: Slot::new(name.into(), wit::StateKind::$kind),
                    _types: PhantomData,
                }
            }

            /// Gives the state's entries a time-to-live; each entry, and each entry of a map,
            /// expires on its own. Set it before first use.
            #[must_use]
            pub fn with_ttl(mut self, ttl: Ttl) -> Self {
                self.slot.set_ttl(ttl);
                self
            }

            /// The state's name.
            pub fn name(&self) -> &str {
                &self.slot.name
            }

            /// The state's time-to-live, if set.
            pub fn ttl(&self) -> Option<Ttl> {
                self.slot.ttl
            }

            /// Opens the state now instead of on first use, to fail `init` early if the name is
            /// taken by a state of another kind.
            pub fn open(&self) -> Result<(), StateError> {
                self.slot.id().map(drop)
            }

            /// Asks the host to visit every key of this state (Flink's `applyToKeyedState`):
            /// after the current
            /// [`Processor::process_broadcast`](crate::Processor::process_broadcast) or
            /// [`Processor::migrate`](crate::Processor::migrate) call, the host hands every live
            /// entry, in chunks, to [`Processor::visit`](crate::Processor::visit) with `tag`,
            /// and applies the [`VisitAction`](crate::VisitAction) returned for each. Anywhere
            /// else it fails with [`StateError::ReadOnly`].
            pub fn visit_all_keys(&self, tag: &str) -> Result<(), StateError> {
                Ok(wit::visit_all_keys(self.slot.id()?, tag)?)
            }
        }

        impl<$($param),+> fmt::Debug for $handle<$($param),+> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($handle))
                    .field("name", &self.slot.name)
                    .field("ttl", &self.slot.ttl)
                    .field("id", &self.slot.id.get())
                    .finish()
            }
        }
    };
}

// After the macro: the map handle is made with it too.
mod map;

/// A duration in whole milliseconds, rounded down, saturating at `u64::MAX`.
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

// ---------------------------------------------------------------------------------------------
// Value state

/// One value of type `T` per key (Flink `ValueState`).
///
/// Create it in [`Processor::init`](crate::Processor::init); it is opened in the host on first
/// use. Values are stored as JSON (see "State encoding" in the crate documentation).
///
/// ```no_run
/// use eddy_sdk::{Event, Outcome, Output, ValueState};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize, Default, Clone)]
/// struct Stats {
///     count: u64,
///     sum_cents: u64,
/// }
///
/// fn process(stats: &ValueState<Stats>, amount_cents: u64) -> Result<Stats, eddy_sdk::StateError> {
///     let previous = stats.get()?.unwrap_or_default();
///     stats.update(|s| {
///         let mut s = s.unwrap_or_default();
///         s.count += 1;
///         s.sum_cents += amount_cents;
///         s
///     })?;
///     Ok(previous)
/// }
///
/// let stats = ValueState::<Stats>::new("stats");
/// let previous = process(&stats, 1250)?;
/// stats.set(&Stats::default())?;
/// stats.clear()?;
/// # Ok::<(), eddy_sdk::StateError>(())
/// ```
pub struct ValueState<T> {
    slot: Slot,
    _types: PhantomData<fn() -> T>,
}

state_handle!(ValueState<T>, Value, "value");

impl<T: Serialize + DeserializeOwned> ValueState<T> {
    /// The current key's value, if any.
    pub fn get(&self) -> Result<Option<T>, StateError> {
        let (id, event) = self.slot.target()?;
        if self.slot.batched(id)? {
            return batch::with(|b, host| {
                b.read_value(host, id, event, |bytes| {
                    bytes.map(|bytes| self.slot.decode(bytes)).transpose()
                })
            })?;
        }
        match wit::value_get(id, event)? {
            Some(bytes) => self.slot.decode(&bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Sets the current key's value.
    pub fn set(&self, value: &T) -> Result<(), StateError> {
        let (id, event) = self.slot.target()?;
        if self.slot.batched(id)? {
            return batch::with(|b, host| {
                b.write(host, id, event, wit::ChangeKind::ValueSet, |values| {
                    values.push(|buf| self.slot.encode_into(value, buf))
                })
            });
        }
        let bytes = self.slot.encode(value)?;
        Ok(wit::value_set(id, event, &bytes)?)
    }

    /// Sets the current key's value with its own time-to-live (like Redis `SET .. PX`): it
    /// wins over the state's TTL for this value until the value is written again.
    ///
    /// ```no_run
    /// # let session = eddy_sdk::ValueState::<String>::new("session");
    /// session.set_with_ttl(&"token".to_owned(), std::time::Duration::from_secs(60))?;
    /// # Ok::<(), eddy_sdk::StateError>(())
    /// ```
    pub fn set_with_ttl(&self, value: &T, ttl: Duration) -> Result<(), StateError> {
        let (id, event) = self.slot.target()?;
        if self.slot.batched(id)? {
            // The host decides when the value expires, and later reads of the batch must see
            // that: the state leaves the batch for the rest of it.
            batch::go_direct(id);
        }
        let bytes = self.slot.encode(value)?;
        Ok(wit::value_set_with_ttl(id, event, &bytes, millis(ttl))?)
    }

    /// Removes the current key's value.
    pub fn clear(&self) -> Result<(), StateError> {
        let (id, event) = self.slot.target()?;
        if self.slot.batched(id)? {
            return batch::with(|b, host| {
                b.write(host, id, event, wit::ChangeKind::ValueClear, |_| Ok(()))
            });
        }
        Ok(wit::value_clear(id, event)?)
    }

    /// Reads the current key's value, computes the new one with `f`, stores and returns it.
    pub fn update(&self, f: impl FnOnce(Option<T>) -> T) -> Result<T, StateError> {
        let new = f(self.get()?);
        self.set(&new)?;
        Ok(new)
    }
}

// ---------------------------------------------------------------------------------------------
// List state

/// A list of values of type `T` per key, oldest first (Flink `ListState`).
///
/// Each element is stored as JSON.
///
/// ```no_run
/// use eddy_sdk::ListState;
///
/// let recent = ListState::<u64>::new("recent");
/// recent.add(&1250)?;
/// recent.add_all(&[300, 4500])?;
/// // Keep the last two.
/// let mut all = recent.get()?;
/// let keep = all.split_off(all.len().saturating_sub(2));
/// recent.update(&keep)?;
/// recent.clear()?;
/// # Ok::<(), eddy_sdk::StateError>(())
/// ```
pub struct ListState<T> {
    slot: Slot,
    _types: PhantomData<fn() -> T>,
}

state_handle!(ListState<T>, List, "list");

impl<T: Serialize + DeserializeOwned> ListState<T> {
    /// Every element of the current key's list, oldest first; empty if there is none.
    pub fn get(&self) -> Result<Vec<T>, StateError> {
        let (id, event) = self.slot.target()?;
        if self.slot.batched(id)? {
            return batch::with(|b, host| {
                b.read_list(host, id, event, |list| {
                    list.map(|bytes| self.slot.decode(bytes)).collect()
                })
            })?;
        }
        wit::list_get(id, event)?
            .iter()
            .map(|bytes| self.slot.decode(bytes))
            .collect()
    }

    /// Appends one element.
    pub fn add(&self, value: &T) -> Result<(), StateError> {
        let (id, event) = self.slot.target()?;
        if self.slot.batched(id)? {
            let one = std::slice::from_ref(value);
            return self.write_all(id, event, wit::ChangeKind::ListAddAll, one);
        }
        let bytes = self.slot.encode(value)?;
        Ok(wit::list_add(id, event, &bytes)?)
    }

    /// Appends several elements, in order.
    pub fn add_all(&self, values: &[T]) -> Result<(), StateError> {
        let (id, event) = self.slot.target()?;
        if self.slot.batched(id)? {
            return self.write_all(id, event, wit::ChangeKind::ListAddAll, values);
        }
        let encoded = self.encode_all(values)?;
        Ok(wit::list_add_all(id, event, &encoded)?)
    }

    /// Replaces the whole list.
    pub fn update(&self, values: &[T]) -> Result<(), StateError> {
        let (id, event) = self.slot.target()?;
        if self.slot.batched(id)? {
            return self.write_all(id, event, wit::ChangeKind::ListUpdate, values);
        }
        let encoded = self.encode_all(values)?;
        Ok(wit::list_update(id, event, &encoded)?)
    }

    /// Removes the list.
    pub fn clear(&self) -> Result<(), StateError> {
        let (id, event) = self.slot.target()?;
        if self.slot.batched(id)? {
            return self.write_all(id, event, wit::ChangeKind::ListClear, &[]);
        }
        Ok(wit::list_clear(id, event)?)
    }

    fn encode_all(&self, values: &[T]) -> Result<Vec<Vec<u8>>, StateError> {
        values.iter().map(|v| self.slot.encode(v)).collect()
    }

    /// Logs a list write of `values` in the batch.
    fn write_all(
        &self,
        id: wit::StateId,
        event: wit::EventIndex,
        kind: wit::ChangeKind,
        values: &[T],
    ) -> Result<(), StateError> {
        batch::with(|b, host| {
            b.write(host, id, event, kind, |out| {
                values
                    .iter()
                    .try_for_each(|v| out.push(|buf| self.slot.encode_into(v, buf)))
            })
        })
    }
}
