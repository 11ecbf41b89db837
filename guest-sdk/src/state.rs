//! Typed keyed state: [`ValueState`], [`MapState`] and [`ListState`].
//!
//! See the crate documentation, sections "Keyed state" and "State encoding".

use std::cell::Cell;
use std::fmt;
use std::iter::FusedIterator;
use std::marker::PhantomData;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::__private::current_event;
use crate::wit::eddy::plugin::keyed_state as wit;

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
// Map keys

/// A type usable as a [`MapState`] key: how it is encoded into the bytes the host orders entries
/// by.
///
/// The encodings are part of the cross-language state format (see the crate documentation,
/// section "State encoding"); they keep byte order equal to the type's natural order:
///
/// | type | [`Borrowed`](MapKey::Borrowed) | bytes |
/// | --- | --- | --- |
/// | `String` | `str` | UTF-8 |
/// | `Vec<u8>` | `[u8]` | as they are |
/// | `u32`, `u64` | itself | big-endian, 4 or 8 bytes |
/// | `i32`, `i64` | itself | big-endian, 4 or 8 bytes, sign bit flipped |
///
/// ```
/// use eddy_sdk::MapKey;
///
/// assert_eq!(String::encode_key("tx-1"), b"tx-1");
/// assert_eq!(u32::encode_key(&258), [0, 0, 1, 2]);
/// assert_eq!(i32::encode_key(&-1), [0x7f, 0xff, 0xff, 0xff]);
/// assert_eq!(i64::decode_key(i64::encode_key(&-5)), Ok(-5));
/// assert!(u64::decode_key(vec![1, 2, 3]).is_err());
/// ```
///
/// Implement it for your own key types to use other encodings, keeping
/// `decode_key(encode_key(k)) == k`.
pub trait MapKey: Sized {
    /// The form keys are passed to [`MapState`] methods in: `str` for `String`, `[u8]` for
    /// `Vec<u8>`, the type itself otherwise.
    type Borrowed: ?Sized;

    /// The key's bytes.
    fn encode_key(key: &Self::Borrowed) -> Vec<u8>;

    /// The key back from its bytes. The error says why the bytes are not a key of this type.
    fn decode_key(bytes: Vec<u8>) -> Result<Self, String>;
}

impl MapKey for String {
    type Borrowed = str;

    fn encode_key(key: &str) -> Vec<u8> {
        key.as_bytes().to_vec()
    }

    fn decode_key(bytes: Vec<u8>) -> Result<Self, String> {
        String::from_utf8(bytes).map_err(|e| format!("key is not UTF-8: {e}"))
    }
}

impl MapKey for Vec<u8> {
    type Borrowed = [u8];

    fn encode_key(key: &[u8]) -> Vec<u8> {
        key.to_vec()
    }

    fn decode_key(bytes: Vec<u8>) -> Result<Self, String> {
        Ok(bytes)
    }
}

/// The fixed-width big-endian bytes of an integer key.
fn fixed<const N: usize>(bytes: &[u8], type_name: &str) -> Result<[u8; N], String> {
    bytes.try_into().map_err(|_| {
        format!(
            "a {type_name} key is {N} bytes, this one is {}",
            bytes.len()
        )
    })
}

impl MapKey for u32 {
    type Borrowed = u32;

    fn encode_key(key: &u32) -> Vec<u8> {
        key.to_be_bytes().to_vec()
    }

    fn decode_key(bytes: Vec<u8>) -> Result<Self, String> {
        fixed(&bytes, "u32").map(u32::from_be_bytes)
    }
}

impl MapKey for u64 {
    type Borrowed = u64;

    fn encode_key(key: &u64) -> Vec<u8> {
        key.to_be_bytes().to_vec()
    }

    fn decode_key(bytes: Vec<u8>) -> Result<Self, String> {
        fixed(&bytes, "u64").map(u64::from_be_bytes)
    }
}

impl MapKey for i32 {
    type Borrowed = i32;

    fn encode_key(key: &i32) -> Vec<u8> {
        (key.cast_unsigned() ^ (1 << 31)).to_be_bytes().to_vec()
    }

    fn decode_key(bytes: Vec<u8>) -> Result<Self, String> {
        fixed(&bytes, "i32").map(|b| (u32::from_be_bytes(b) ^ (1 << 31)).cast_signed())
    }
}

impl MapKey for i64 {
    type Borrowed = i64;

    fn encode_key(key: &i64) -> Vec<u8> {
        (key.cast_unsigned() ^ (1 << 63)).to_be_bytes().to_vec()
    }

    fn decode_key(bytes: Vec<u8>) -> Result<Self, String> {
        fixed(&bytes, "i64").map(|b| (u64::from_be_bytes(b) ^ (1 << 63)).cast_signed())
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
}

impl Slot {
    fn new(name: String, kind: wit::StateKind) -> Self {
        Slot {
            name,
            kind,
            ttl: None,
            id: Cell::new(None),
        }
    }

    fn set_ttl(&mut self, ttl: Ttl) {
        self.ttl = Some(ttl);
        // Open again, with the TTL, on next use.
        self.id.set(None);
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

    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Vec<u8>, StateError> {
        serde_json::to_vec(value).map_err(|e| {
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
        match wit::value_get(id, event)? {
            Some(bytes) => self.slot.decode(&bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Sets the current key's value.
    pub fn set(&self, value: &T) -> Result<(), StateError> {
        let (id, event) = self.slot.target()?;
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
        let bytes = self.slot.encode(value)?;
        Ok(wit::value_set_with_ttl(id, event, &bytes, millis(ttl))?)
    }

    /// Removes the current key's value.
    pub fn clear(&self) -> Result<(), StateError> {
        let (id, event) = self.slot.target()?;
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
// Map state

/// A map of entries `K → V` per key, ordered by the key bytes (Flink `MapState`).
///
/// Keys are encoded with [`MapKey`] and passed to methods in their borrowed form (`&str` for
/// `String` keys); values are stored as JSON.
///
/// ```no_run
/// use eddy_sdk::{MapState, Ttl};
///
/// let seen = MapState::<String, u64>::new("seen").with_ttl(Ttl::from_millis(3_600_000));
/// if !seen.contains("tx-1")? {
///     seen.put("tx-1", &1_700_000_000_000)?;
/// }
/// assert_eq!(seen.get("tx-1")?, Some(1_700_000_000_000));
/// for entry in seen.entries() {
///     let (id, ts) = entry?;
///     eddy_sdk::log::debug!("{id} at {ts}");
/// }
/// let ids: Vec<String> = seen.keys().collect::<Result<_, _>>()?;
/// seen.remove("tx-1")?;
/// if !seen.is_empty()? {
///     seen.clear()?;
/// }
/// # Ok::<(), eddy_sdk::StateError>(())
/// ```
pub struct MapState<K, V> {
    slot: Slot,
    _types: PhantomData<fn() -> (K, V)>,
}

state_handle!(MapState<K, V>, Map, "map");

impl<K: MapKey, V: Serialize + DeserializeOwned> MapState<K, V> {
    /// The value of entry `key` of the current key's map, if any.
    pub fn get(&self, key: &K::Borrowed) -> Result<Option<V>, StateError> {
        let (id, event) = self.slot.target()?;
        match wit::map_get(id, event, &K::encode_key(key))? {
            Some(bytes) => self.slot.decode(&bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Sets entry `key`.
    pub fn put(&self, key: &K::Borrowed, value: &V) -> Result<(), StateError> {
        let (id, event) = self.slot.target()?;
        let bytes = self.slot.encode(value)?;
        Ok(wit::map_put(id, event, &K::encode_key(key), &bytes)?)
    }

    /// Sets entry `key` with its own time-to-live: it wins over the state's TTL for this
    /// entry until the entry is written again.
    pub fn put_with_ttl(
        &self,
        key: &K::Borrowed,
        value: &V,
        ttl: Duration,
    ) -> Result<(), StateError> {
        let (id, event) = self.slot.target()?;
        let bytes = self.slot.encode(value)?;
        Ok(wit::map_put_with_ttl(
            id,
            event,
            &K::encode_key(key),
            &bytes,
            millis(ttl),
        )?)
    }

    /// Removes entry `key` (no error if it is absent).
    pub fn remove(&self, key: &K::Borrowed) -> Result<(), StateError> {
        let (id, event) = self.slot.target()?;
        Ok(wit::map_remove(id, event, &K::encode_key(key))?)
    }

    /// Whether entry `key` exists. Counts as a read for TTL.
    pub fn contains(&self, key: &K::Borrowed) -> Result<bool, StateError> {
        let (id, event) = self.slot.target()?;
        Ok(wit::map_contains(id, event, &K::encode_key(key))?)
    }

    /// Whether the current key's map has no entries.
    pub fn is_empty(&self) -> Result<bool, StateError> {
        let (id, event) = self.slot.target()?;
        Ok(wit::map_is_empty(id, event)?)
    }

    /// Removes every entry of the current key's map.
    pub fn clear(&self) -> Result<(), StateError> {
        let (id, event) = self.slot.target()?;
        Ok(wit::map_clear(id, event)?)
    }

    /// The entries of the current key's map in key-byte order, fetched from the host 256 at a
    /// time as the iterator advances.
    ///
    /// An entry that does not decode is an `Err` item and iteration goes on; a host error is the
    /// last item.
    pub fn entries(&self) -> MapEntries<'_, K, V> {
        MapEntries {
            pages: Pages::new(&self.slot),
            _types: PhantomData,
        }
    }

    /// The keys of the current key's map in key-byte order, fetched like
    /// [`entries`](MapState::entries) (values are not decoded).
    pub fn keys(&self) -> MapKeys<'_, K> {
        MapKeys {
            pages: Pages::new(&self.slot),
            _type: PhantomData,
        }
    }
}

/// A map entry as the host returns it: key bytes and value bytes.
type RawEntry = (Vec<u8>, Vec<u8>);

/// Pages through `map-entries` for one event.
struct Pages<'a> {
    slot: &'a Slot,
    /// The event whose map is read: the current one when iteration started.
    event: Option<wit::EventIndex>,
    page: std::vec::IntoIter<RawEntry>,
    /// The last key fetched, where the next page starts after.
    last_key: Option<Vec<u8>>,
    /// No page is left to fetch.
    exhausted: bool,
}

impl<'a> Pages<'a> {
    fn new(slot: &'a Slot) -> Self {
        Pages {
            slot,
            event: current_event(),
            page: Vec::new().into_iter(),
            last_key: None,
            exhausted: false,
        }
    }

    fn fetch(&mut self) -> Result<(), StateError> {
        let event = self.event.ok_or(StateError::NoSuchEvent)?;
        let id = self.slot.id()?;
        let page = wit::map_entries(id, event, self.last_key.as_deref(), ENTRIES_PAGE)?;
        if page.len() < ENTRIES_PAGE as usize {
            self.exhausted = true;
        }
        match page.last() {
            Some((key, _)) => self.last_key = Some(key.clone()),
            None => self.exhausted = true,
        }
        self.page = page.into_iter();
        Ok(())
    }

    fn next_raw(&mut self) -> Option<Result<RawEntry, StateError>> {
        loop {
            if let Some(entry) = self.page.next() {
                return Some(Ok(entry));
            }
            if self.exhausted {
                return None;
            }
            if let Err(e) = self.fetch() {
                self.exhausted = true;
                return Some(Err(e));
            }
        }
    }
}

/// The entries of a [`MapState`], from [`MapState::entries`]: `Result<(K, V), StateError>`
/// items in key-byte order, fetched from the host a page at a time.
///
/// ```no_run
/// use eddy_sdk::MapState;
///
/// let totals = MapState::<u32, u64>::new("totals-by-day");
/// // Days in numeric order: integer keys are big-endian, so byte order is numeric order.
/// let mut sum = 0;
/// for entry in totals.entries() {
///     let (day, total) = entry?;
///     eddy_sdk::log::trace!("day {day}: {total}");
///     sum += total;
/// }
/// # let _ = sum;
/// # Ok::<(), eddy_sdk::StateError>(())
/// ```
pub struct MapEntries<'a, K, V> {
    pages: Pages<'a>,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K: MapKey, V: DeserializeOwned> Iterator for MapEntries<'_, K, V> {
    type Item = Result<(K, V), StateError>;

    fn next(&mut self) -> Option<Self::Item> {
        let slot = self.pages.slot;
        Some(
            self.pages
                .next_raw()?
                .and_then(|(key, value)| Ok((slot.decode_key(key)?, slot.decode(&value)?))),
        )
    }
}

impl<K: MapKey, V: DeserializeOwned> FusedIterator for MapEntries<'_, K, V> {}

impl<K, V> fmt::Debug for MapEntries<'_, K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MapEntries")
            .field("state", &self.pages.slot.name)
            .finish_non_exhaustive()
    }
}

/// The keys of a [`MapState`], from [`MapState::keys`]: `Result<K, StateError>` items in key-byte
/// order.
///
/// ```no_run
/// use eddy_sdk::MapState;
///
/// let seen = MapState::<String, u64>::new("seen");
/// let first_three: Vec<String> = seen.keys().take(3).collect::<Result<_, _>>()?;
/// # let _ = first_three;
/// # Ok::<(), eddy_sdk::StateError>(())
/// ```
pub struct MapKeys<'a, K> {
    pages: Pages<'a>,
    _type: PhantomData<fn() -> K>,
}

impl<K: MapKey> Iterator for MapKeys<'_, K> {
    type Item = Result<K, StateError>;

    fn next(&mut self) -> Option<Self::Item> {
        let slot = self.pages.slot;
        Some(
            self.pages
                .next_raw()?
                .and_then(|(key, _)| slot.decode_key(key)),
        )
    }
}

impl<K: MapKey> FusedIterator for MapKeys<'_, K> {}

impl<K> fmt::Debug for MapKeys<'_, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MapKeys")
            .field("state", &self.pages.slot.name)
            .finish_non_exhaustive()
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
        wit::list_get(id, event)?
            .iter()
            .map(|bytes| self.slot.decode(bytes))
            .collect()
    }

    /// Appends one element.
    pub fn add(&self, value: &T) -> Result<(), StateError> {
        let (id, event) = self.slot.target()?;
        let bytes = self.slot.encode(value)?;
        Ok(wit::list_add(id, event, &bytes)?)
    }

    /// Appends several elements, in order.
    pub fn add_all(&self, values: &[T]) -> Result<(), StateError> {
        let (id, event) = self.slot.target()?;
        let encoded = self.encode_all(values)?;
        Ok(wit::list_add_all(id, event, &encoded)?)
    }

    /// Replaces the whole list.
    pub fn update(&self, values: &[T]) -> Result<(), StateError> {
        let (id, event) = self.slot.target()?;
        let encoded = self.encode_all(values)?;
        Ok(wit::list_update(id, event, &encoded)?)
    }

    /// Removes the list.
    pub fn clear(&self) -> Result<(), StateError> {
        let (id, event) = self.slot.target()?;
        Ok(wit::list_clear(id, event)?)
    }

    fn encode_all(&self, values: &[T]) -> Result<Vec<Vec<u8>>, StateError> {
        values.iter().map(|v| self.slot.encode(v)).collect()
    }
}

// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn round_trip<K: MapKey<Borrowed = K> + PartialEq + fmt::Debug>(key: K) {
        assert_eq!(K::decode_key(K::encode_key(&key)), Ok(key));
    }

    /// Byte order of the encodings equals the natural order of the values.
    fn assert_order_preserved<K: MapKey<Borrowed = K> + Ord + Copy + fmt::Debug>(values: &[K]) {
        let mut by_value = values.to_vec();
        by_value.sort();
        let mut by_bytes = values.to_vec();
        by_bytes.sort_by_key(|k| K::encode_key(k));
        assert_eq!(by_value, by_bytes);
    }

    #[test]
    fn string_keys_are_utf8() {
        assert_eq!(String::encode_key("tx-1"), b"tx-1".to_vec());
        assert_eq!(String::encode_key("é"), vec![0xc3, 0xa9]);
        assert_eq!(String::encode_key(""), Vec::<u8>::new());
        assert_eq!(String::decode_key(b"abc".to_vec()), Ok("abc".to_owned()));
        let err = String::decode_key(vec![0xff]).expect_err("not UTF-8");
        assert!(err.starts_with("key is not UTF-8"), "{err}");
    }

    #[test]
    fn byte_keys_are_raw() {
        assert_eq!(Vec::<u8>::encode_key(&[0, 255, 7]), vec![0, 255, 7]);
        assert_eq!(Vec::<u8>::decode_key(vec![9, 8]), Ok(vec![9, 8]));
    }

    #[test]
    fn unsigned_keys_are_big_endian() {
        assert_eq!(u32::encode_key(&1), vec![0, 0, 0, 1]);
        assert_eq!(u32::encode_key(&0x0102_0304), vec![1, 2, 3, 4]);
        assert_eq!(u64::encode_key(&1), vec![0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(u64::encode_key(&u64::MAX), vec![0xff; 8]);
        for k in [0, 1, 255, 256, u32::MAX] {
            round_trip(k);
        }
        for k in [0, 1, 1 << 40, u64::MAX] {
            round_trip(k);
        }
    }

    #[test]
    fn signed_keys_flip_the_sign_bit() {
        assert_eq!(i32::encode_key(&i32::MIN), vec![0, 0, 0, 0]);
        assert_eq!(i32::encode_key(&-1), vec![0x7f, 0xff, 0xff, 0xff]);
        assert_eq!(i32::encode_key(&0), vec![0x80, 0, 0, 0]);
        assert_eq!(i32::encode_key(&1), vec![0x80, 0, 0, 1]);
        assert_eq!(i32::encode_key(&i32::MAX), vec![0xff; 4]);
        assert_eq!(
            i64::encode_key(&-1),
            vec![0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]
        );
        assert_eq!(i64::encode_key(&0), vec![0x80, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(i64::encode_key(&i64::MIN), vec![0; 8]);
        for k in [i32::MIN, -256, -1, 0, 1, 256, i32::MAX] {
            round_trip(k);
        }
        for k in [i64::MIN, -(1 << 40), -1, 0, 1, 1 << 40, i64::MAX] {
            round_trip(k);
        }
    }

    #[test]
    fn byte_order_is_numeric_order() {
        assert_order_preserved(&[5u32, 0, 256, 255, 1, u32::MAX, 65_536]);
        assert_order_preserved(&[5u64, 0, 1 << 33, 255, u64::MAX, 256]);
        assert_order_preserved(&[5i32, -5, 0, i32::MIN, i32::MAX, -1, 1, 256, -256]);
        assert_order_preserved(&[5i64, -5, 0, i64::MIN, i64::MAX, -1, 1, 1 << 40, -(1 << 40)]);
        // Strings order by code point, which is UTF-8 byte order.
        let mut words = vec!["b", "a", "ab", "", "é", "z"];
        let mut by_bytes = words.clone();
        words.sort();
        by_bytes.sort_by_key(|w| String::encode_key(w));
        assert_eq!(words, by_bytes);
    }

    #[test]
    fn integer_keys_of_the_wrong_width_do_not_decode() {
        assert_eq!(
            u64::decode_key(vec![1, 2, 3]),
            Err("a u64 key is 8 bytes, this one is 3".to_owned())
        );
        assert!(u32::decode_key(vec![0; 8]).is_err());
        assert!(i32::decode_key(Vec::new()).is_err());
        assert!(i64::decode_key(vec![0; 4]).is_err());
    }

    #[test]
    fn decode_errors_name_the_state() {
        let slot = Slot::new("stats".to_owned(), wit::StateKind::Value);
        let err = slot
            .decode::<u64>(b"\"x\"")
            .expect_err("a string is not a u64");
        assert!(
            matches!(&err, StateError::Decode(m) if m.starts_with("cannot decode a value of state `stats`: ")),
            "{err:?}"
        );
        let err = slot.decode_key::<u32>(vec![1]).expect_err("too short");
        assert_eq!(
            err.to_string(),
            "cannot decode a key of state `stats`: a u32 key is 4 bytes, this one is 1"
        );
        let mut bad = BTreeMap::new();
        bad.insert(vec![1u8], 1u8);
        let err = slot
            .encode(&bad)
            .expect_err("byte-vector keys are not JSON");
        assert!(matches!(err, StateError::Encode(m) if m.contains("state `stats`")));
    }

    #[test]
    fn values_are_compact_json() {
        #[derive(Serialize)]
        struct Stats {
            count: u64,
            last_ts: Option<u64>,
        }
        let slot = Slot::new("s".to_owned(), wit::StateKind::Value);
        assert_eq!(
            slot.encode(&Stats {
                count: 3,
                last_ts: None
            }),
            Ok(br#"{"count":3,"last_ts":null}"#.to_vec())
        );
        assert_eq!(slot.encode(&1250u64), Ok(b"1250".to_vec()));
        assert_eq!(slot.encode("tx"), Ok(br#""tx""#.to_vec()));
        assert_eq!(slot.decode::<Vec<u64>>(b" [1, 2] "), Ok(vec![1, 2]));
    }

    #[test]
    fn ttl_builder_and_wit_conversion() {
        let ttl = Ttl::new(Duration::from_millis(1500));
        assert_eq!(ttl.ttl_ms(), 1500);
        assert!(!ttl.updates_on_read());
        assert!(!ttl.returns_expired());
        let config = wit::TtlConfig::from(ttl);
        assert_eq!(config.ttl_ms, 1500);
        assert_eq!(config.update, wit::TtlUpdate::OnCreateAndWrite);
        assert_eq!(config.visibility, wit::TtlVisibility::NeverReturnExpired);

        let ttl = Ttl::from_millis(10)
            .update_on_read_and_write()
            .return_expired_if_not_cleaned_up();
        let config = wit::TtlConfig::from(ttl);
        assert_eq!(config.update, wit::TtlUpdate::OnReadAndWrite);
        assert_eq!(
            config.visibility,
            wit::TtlVisibility::ReturnExpiredIfNotCleanedUp
        );

        assert_eq!(Ttl::new(Duration::MAX).ttl_ms(), u64::MAX);
        assert_eq!(Ttl::new(Duration::from_micros(999)).ttl_ms(), 0);
    }

    #[test]
    fn handles_keep_name_and_ttl() {
        let value = ValueState::<u64>::new("count");
        assert_eq!(value.name(), "count");
        assert_eq!(value.ttl(), None);
        let ttl = Ttl::from_millis(5);
        let map = MapState::<String, u64>::new("seen").with_ttl(ttl);
        assert_eq!((map.name(), map.ttl()), ("seen", Some(ttl)));
        let list = ListState::<u64>::new("recent").with_ttl(ttl);
        assert_eq!((list.name(), list.ttl()), ("recent", Some(ttl)));
        assert_eq!(
            format!("{value:?}"),
            r#"ValueState { name: "count", ttl: None, id: None }"#
        );
    }

    #[test]
    fn keyed_calls_outside_process_fail_without_calling_the_host() {
        let value = ValueState::<u64>::new("count");
        assert_eq!(value.get(), Err(StateError::NoSuchEvent));
        assert_eq!(value.set(&1), Err(StateError::NoSuchEvent));
        assert_eq!(
            value.update(|n| n.unwrap_or(0)),
            Err(StateError::NoSuchEvent)
        );
        let map = MapState::<String, u64>::new("seen");
        assert_eq!(map.contains("x"), Err(StateError::NoSuchEvent));
        let mut entries = map.entries();
        assert_eq!(entries.next(), Some(Err(StateError::NoSuchEvent)));
        assert_eq!(entries.next(), None);
        assert_eq!(map.keys().next(), Some(Err(StateError::NoSuchEvent)));
        let list = ListState::<u64>::new("recent");
        assert_eq!(list.get(), Err(StateError::NoSuchEvent));
        assert_eq!(list.add_all(&[1, 2]), Err(StateError::NoSuchEvent));
    }

    #[test]
    fn state_errors_display() {
        assert_eq!(
            StateError::from(wit::StateError::WrongKind(
                "seen: value, not map".to_owned()
            ))
            .to_string(),
            "state exists with another kind: seen: value, not map"
        );
        assert_eq!(
            StateError::from(wit::StateError::Storage("io".to_owned())),
            StateError::Storage("io".to_owned())
        );
        assert_eq!(
            StateError::from(wit::StateError::UnknownState).to_string(),
            "state is not open in this plugin instance"
        );
        assert_eq!(
            StateError::from(wit::StateError::ReadOnly("query".to_owned())).to_string(),
            "state is read-only here: query"
        );
        let err: Box<dyn std::error::Error> = Box::new(StateError::NoSuchEvent);
        assert!(err.to_string().starts_with("no event is being processed"));
    }
}
