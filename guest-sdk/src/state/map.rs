//! [`MapState`]: a map per key, with its key encoding ([`MapKey`]) and the paged
//! iterators over its entries and keys.

use std::fmt;
use std::iter::FusedIterator;
use std::marker::PhantomData;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{ENTRIES_PAGE, Slot, StateError, Ttl, millis, wit};
use crate::__private::current_event;

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
