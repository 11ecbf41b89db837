//! The write overlay of one batch, and the value/map/list operations plugins call.
//!
//! Reads look in the overlay first (a batch reads its own writes), then at cleared prefixes
//! (a `map-clear` hides what is on disk), then in RocksDB. TTL is applied on every read:
//! expired entries are hidden (or returned once, per visibility) and deleted lazily through
//! the overlay, and `on-read-and-write` reads re-stamp what they return.

use std::collections::BTreeMap;
use std::ops::Bound;

use rocksdb::WriteBatch;

use super::layout::{
    decode_list, decode_value_ttl, encode_value_ttl, map_entry_key, prefix_end, push_list_element,
    state_key,
};
use super::{
    Result, StateError, StateInfo, StateStore, Ttl, TtlUpdate, TtlVisibility, position_key,
};

/// Writes of one batch, not yet committed.
#[derive(Debug, Default, Clone)]
pub struct StateBatch {
    /// Keyed state writes (column family `keyed`).
    keyed: Overlay,
    /// Broadcast state writes (column family `broadcast`).
    pub(super) broadcast: Overlay,
    /// Input positions this batch brings the state to.
    positions: BTreeMap<String, u64>,
}

/// Writes to one column family: key → new stored bytes (None for a delete), and prefixes
/// cleared (a map or table clear); overlay writes made after a clear survive it.
#[derive(Debug, Default, Clone)]
pub(super) struct Overlay {
    pub(super) writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    pub(super) cleared: Vec<Vec<u8>>,
}

impl Overlay {
    fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.cleared.is_empty()
    }

    pub(super) fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.writes.insert(key, Some(value));
    }

    pub(super) fn delete(&mut self, key: Vec<u8>) {
        self.writes.insert(key, None);
    }

    pub(super) fn clear_prefix(&mut self, prefix: Vec<u8>) {
        let keys: Vec<Vec<u8>> = self
            .writes
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            self.writes.remove(&k);
        }
        self.cleared.push(prefix);
    }

    pub(super) fn is_cleared(&self, key: &[u8]) -> bool {
        self.cleared.iter().any(|p| key.starts_with(p))
    }

    /// The overlay's view of `key`: `Some(Some(v))` written, `Some(None)` deleted or cleared,
    /// `None` untouched (read the disk).
    pub(super) fn get(&self, key: &[u8]) -> Option<Option<Vec<u8>>> {
        if let Some(v) = self.writes.get(key) {
            return Some(v.clone());
        }
        self.is_cleared(key).then_some(None)
    }

    /// Takes `later`'s writes on top of these.
    fn absorb(&mut self, later: Overlay) {
        for p in later.cleared {
            self.clear_prefix(p);
        }
        self.writes.extend(later.writes);
    }

    /// Adds the overlay to `wb`, leaving out the writes whose index (in key order) `skip`
    /// names.
    fn write_into(
        &self,
        wb: &mut WriteBatch,
        cf: &rocksdb::ColumnFamily,
        skip: impl Fn(usize) -> bool,
    ) {
        for prefix in &self.cleared {
            match prefix_end(prefix) {
                Some(end) => wb.delete_range_cf(cf, prefix.as_slice(), end.as_slice()),
                None => wb.delete_range_cf(cf, prefix.as_slice(), &[0xffu8; 16][..]),
            }
        }
        for (i, (k, v)) in self.writes.iter().enumerate() {
            if skip(i) {
                continue;
            }
            match v {
                Some(v) => wb.put_cf(cf, k, v),
                None => wb.delete_cf(cf, k),
            }
        }
    }

    /// Merged overlay + disk entries of column family `cf` under `prefix`, strictly after
    /// `after` (or from the prefix), at most `max`, deletes and cleared ranges resolved.
    pub(super) fn scan(
        &self,
        store: &StateStore,
        cf: &rocksdb::ColumnFamily,
        prefix: &[u8],
        after: Option<&[u8]>,
        max: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let start: Vec<u8> = after.map(<[u8]>::to_vec).unwrap_or_else(|| prefix.to_vec());
        let lower = match after {
            Some(_) => Bound::Excluded(start.clone()),
            None => Bound::Included(start.clone()),
        };
        let mut overlay = self
            .writes
            .range((lower, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .peekable();
        let mut disk = store.db().raw_iterator_cf(cf);
        disk.seek(&start);
        if after.is_some() && disk.valid() && disk.key() == Some(start.as_slice()) {
            disk.next();
        }
        let mut out = Vec::new();
        while out.len() < max {
            let disk_key = disk
                .valid()
                .then(|| disk.key())
                .flatten()
                .filter(|k| k.starts_with(prefix));
            let over_key = overlay.peek().map(|(k, _)| k.as_slice());
            match (disk_key, over_key) {
                (None, None) => break,
                (Some(d), o) if o.is_none_or(|o| d < o) => {
                    if !self.is_cleared(d)
                        && let Some(v) = disk.value()
                    {
                        out.push((d.to_vec(), v.to_vec()));
                    }
                    disk.next();
                }
                (d, Some(o)) => {
                    if d == Some(o) {
                        disk.next();
                    }
                    if let Some((k, v)) = overlay.next()
                        && let Some(v) = v
                    {
                        out.push((k.clone(), v.clone()));
                    }
                }
                (Some(_), None) => unreachable!("covered by the guard above"),
            }
        }
        disk.status()?;
        Ok(out)
    }
}

impl StateBatch {
    /// Whether the batch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.keyed.is_empty() && self.broadcast.is_empty() && self.positions.is_empty()
    }

    /// Number of pending key writes.
    pub fn len(&self) -> usize {
        self.keyed.writes.len() + self.broadcast.writes.len()
    }

    /// Takes the writes of `later` on top of this batch's (the later batch wins).
    pub fn absorb(&mut self, later: StateBatch) {
        self.keyed.absorb(later.keyed);
        self.broadcast.absorb(later.broadcast);
        self.positions.extend(later.positions);
    }

    /// Records that the state now reflects input `input` up to `position`.
    pub fn set_position(&mut self, input: &str, position: u64) {
        self.positions.insert(input.to_string(), position);
    }

    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.keyed.put(key, value);
    }

    fn delete(&mut self, key: Vec<u8>) {
        self.keyed.delete(key);
    }

    pub(super) fn put_keyed(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.keyed.put(key, value);
    }

    pub(super) fn delete_keyed(&mut self, key: Vec<u8>) {
        self.keyed.delete(key);
    }

    /// Keyed entries under `prefix` after `after`, through this overlay.
    pub(super) fn keyed_scan(
        &self,
        store: &StateStore,
        prefix: &[u8],
        after: Option<&[u8]>,
        max: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        // Value and list writes may still wait in the hot values: RocksDB gets them first.
        store.settle_for_scan(prefix)?;
        self.keyed.scan(store, store.keyed_cf(), prefix, after, max)
    }

    /// The keyed writes, for the hot values to take at commit.
    pub(super) fn keyed_overlay(&self) -> &Overlay {
        &self.keyed
    }

    /// The RocksDB write of this batch, leaving out the keyed writes whose index (in key
    /// order, as [`StateBatch::keyed_overlay`] lists them) `skip` names: those deferred.
    pub(super) fn write_batch_except(
        &self,
        store: &StateStore,
        skip: impl Fn(usize) -> bool,
    ) -> WriteBatch {
        let mut wb = WriteBatch::default();
        self.keyed.write_into(&mut wb, store.keyed_cf(), skip);
        self.broadcast
            .write_into(&mut wb, store.broadcast_cf(), |_| false);
        let meta = store.meta_cf();
        for (input, pos) in &self.positions {
            wb.put_cf(meta, position_key(input), pos.to_be_bytes());
        }
        wb
    }
}

/// Keyed state operations over the store and one batch's overlay.
pub struct KeyedAccess<'a> {
    store: &'a StateStore,
    batch: &'a mut StateBatch,
    now: u64,
}

impl<'a> KeyedAccess<'a> {
    /// Operations at the store's current time.
    pub fn new(store: &'a StateStore, batch: &'a mut StateBatch) -> KeyedAccess<'a> {
        let now = store.now_ms();
        KeyedAccess { store, batch, now }
    }

    pub(super) fn lookup(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(v) = self.batch.keyed.get(key) {
            return Ok(v);
        }
        let generation = match self.store.hot_get(key) {
            Ok(v) => return Ok(Some(v)),
            Err(generation) => generation,
        };
        let stored = self.store.db().get_pinned_cf(self.store.keyed_cf(), key)?;
        Ok(stored.map(|v| {
            self.store.hot_fill(generation, key, &v);
            v.to_vec()
        }))
    }

    /// Applies TTL to one stored value/entry read at `key`: returns the value to show, and
    /// queues the lazy delete or the read re-stamp.
    pub(super) fn read_entry(
        &mut self,
        state: &StateInfo,
        key: Vec<u8>,
        stored: &[u8],
    ) -> Result<Option<Vec<u8>>> {
        let (ts, own_ttl, value) = decode_value_ttl(stored)
            .ok_or_else(|| StateError::Corrupt(format!("value of state `{}`", state.name)))?;
        // An entry written with its own TTL expires by it, whatever the state's TTL; the
        // state's update type and visibility still apply (Flink-style defaults without one).
        let ttl = match (own_ttl, state.ttl) {
            (Some(ms), Some(t)) => Some(Ttl { ttl_ms: ms, ..t }),
            (Some(ms), None) => Some(Ttl {
                ttl_ms: ms,
                update: TtlUpdate::OnCreateAndWrite,
                visibility: TtlVisibility::NeverReturnExpired,
            }),
            (None, t) => t,
        };
        let Some(ttl) = ttl else {
            return Ok(Some(value.to_vec()));
        };
        if ttl.is_expired(ts, self.now) {
            let shown = match ttl.visibility {
                TtlVisibility::NeverReturnExpired => None,
                TtlVisibility::ReturnExpiredIfNotCleanedUp => Some(value.to_vec()),
            };
            self.batch.delete(key);
            self.store
                .stats()
                .expired_on_read
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok(shown);
        }
        let value = value.to_vec();
        if ttl.update == TtlUpdate::OnReadAndWrite && ts != self.now {
            self.batch
                .put(key, encode_value_ttl(self.now, own_ttl, &value));
        }
        Ok(Some(value))
    }

    // ---- value state ----

    /// The value for `key`.
    pub fn value_get(&mut self, state: &StateInfo, kg: u16, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let k = state_key(kg, state.id, key);
        match self.lookup(&k)? {
            Some(stored) => self.read_entry(state, k, &stored),
            None => Ok(None),
        }
    }

    /// Sets the value for `key`.
    pub fn value_set(&mut self, state: &StateInfo, kg: u16, key: &[u8], value: &[u8]) {
        self.value_set_ttl(state, kg, key, value, None);
    }

    /// Sets the value for `key`, with its own TTL if given (overriding the state's for this
    /// entry).
    pub fn value_set_ttl(
        &mut self,
        state: &StateInfo,
        kg: u16,
        key: &[u8],
        value: &[u8],
        own_ttl_ms: Option<u64>,
    ) {
        self.batch.put(
            state_key(kg, state.id, key),
            encode_value_ttl(self.now, own_ttl_ms, value),
        );
    }

    /// Sets a map entry, with its own TTL if given (overriding the state's for this entry).
    pub fn map_put_ttl(
        &mut self,
        state: &StateInfo,
        kg: u16,
        key: &[u8],
        map_key: &[u8],
        value: &[u8],
        own_ttl_ms: Option<u64>,
    ) {
        self.batch.put(
            map_entry_key(kg, state.id, key, map_key),
            encode_value_ttl(self.now, own_ttl_ms, value),
        );
    }

    /// Removes the value (or list) for `key`.
    pub fn value_clear(&mut self, state: &StateInfo, kg: u16, key: &[u8]) {
        self.batch.delete(state_key(kg, state.id, key));
    }

    // ---- map state ----

    /// One map entry.
    pub fn map_get(
        &mut self,
        state: &StateInfo,
        kg: u16,
        key: &[u8],
        map_key: &[u8],
    ) -> Result<Option<Vec<u8>>> {
        let k = map_entry_key(kg, state.id, key, map_key);
        match self.lookup(&k)? {
            Some(stored) => self.read_entry(state, k, &stored),
            None => Ok(None),
        }
    }

    /// Sets a map entry.
    pub fn map_put(
        &mut self,
        state: &StateInfo,
        kg: u16,
        key: &[u8],
        map_key: &[u8],
        value: &[u8],
    ) {
        self.map_put_ttl(state, kg, key, map_key, value, None);
    }

    /// Removes a map entry.
    pub fn map_remove(&mut self, state: &StateInfo, kg: u16, key: &[u8], map_key: &[u8]) {
        self.batch.delete(map_entry_key(kg, state.id, key, map_key));
    }

    /// Removes every entry of `key`'s map.
    pub fn map_clear(&mut self, state: &StateInfo, kg: u16, key: &[u8]) {
        self.batch.keyed.clear_prefix(state_key(kg, state.id, key));
    }

    /// Up to `limit` live entries after `start_after` (exclusive), in map-key order.
    pub fn map_entries(
        &mut self,
        state: &StateInfo,
        kg: u16,
        key: &[u8],
        start_after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let prefix = state_key(kg, state.id, key);
        let mut out = Vec::new();
        let mut cursor: Option<Vec<u8>> = start_after.map(|s| {
            let mut k = prefix.clone();
            k.extend_from_slice(s);
            k
        });
        // Scan in chunks: TTL handling mutates the overlay, so each chunk is collected first.
        while out.len() < limit {
            let chunk = self.scan(&prefix, cursor.as_deref(), 128)?;
            if chunk.is_empty() {
                break;
            }
            cursor = chunk.last().map(|(k, _)| k.clone());
            for (k, stored) in chunk {
                let map_key = k[prefix.len()..].to_vec();
                if let Some(v) = self.read_entry(state, k, &stored)? {
                    out.push((map_key, v));
                    if out.len() == limit {
                        break;
                    }
                }
            }
        }
        Ok(out)
    }

    /// Whether `key`'s map has no live entry.
    pub fn map_is_empty(&mut self, state: &StateInfo, kg: u16, key: &[u8]) -> Result<bool> {
        Ok(self.map_entries(state, kg, key, None, 1)?.is_empty())
    }

    /// Writes stored bytes as they are (quota eviction keeps write times).
    pub(super) fn put_raw(&mut self, key: Vec<u8>, stored: Vec<u8>) {
        self.batch.put(key, stored);
    }

    /// Deletes a stored entry.
    pub(super) fn delete_raw(&mut self, key: Vec<u8>) {
        self.batch.delete(key);
    }

    /// Stored entries under `prefix` after `after`, overlay and disk merged (no TTL applied).
    pub(super) fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        max: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.batch
            .keyed
            .scan(self.store, self.store.keyed_cf(), prefix, after, max)
    }

    // ---- list state ----

    /// The live elements of `key`'s list, oldest first.
    pub fn list_get(&mut self, state: &StateInfo, kg: u16, key: &[u8]) -> Result<Vec<Vec<u8>>> {
        let k = state_key(kg, state.id, key);
        let Some(stored) = self.lookup(&k)? else {
            return Ok(Vec::new());
        };
        let elements = decode_list(&stored)
            .ok_or_else(|| StateError::Corrupt(format!("list of state `{}`", state.name)))?;
        let Some(ttl) = state.ttl else {
            return Ok(elements.into_iter().map(|(_, v)| v.to_vec()).collect());
        };
        let now = self.now;
        let live: Vec<(u64, &[u8])> = elements
            .iter()
            .copied()
            .filter(|(ts, _)| !ttl.is_expired(*ts, now))
            .collect();
        let shown: Vec<Vec<u8>> = match ttl.visibility {
            TtlVisibility::NeverReturnExpired => live.iter().map(|(_, v)| v.to_vec()).collect(),
            TtlVisibility::ReturnExpiredIfNotCleanedUp => {
                elements.iter().map(|(_, v)| v.to_vec()).collect()
            }
        };
        let restamp = ttl.update == TtlUpdate::OnReadAndWrite;
        let expired = (elements.len() - live.len()) as u64;
        if expired > 0 {
            self.store
                .stats()
                .expired_on_read
                .fetch_add(expired, std::sync::atomic::Ordering::Relaxed);
        }
        if expired > 0 || (restamp && !live.is_empty()) {
            // Rewrite only the live elements; under on-read-and-write they are re-stamped.
            if live.is_empty() {
                self.batch.delete(k);
            } else {
                let mut out = Vec::with_capacity(stored.len());
                for (ts, v) in &live {
                    push_list_element(&mut out, if restamp { now } else { *ts }, v);
                }
                self.batch.put(k, out);
            }
        }
        Ok(shown)
    }

    /// Appends elements to `key`'s list.
    pub fn list_add_all(
        &mut self,
        state: &StateInfo,
        kg: u16,
        key: &[u8],
        values: &[Vec<u8>],
    ) -> Result<()> {
        let k = state_key(kg, state.id, key);
        let mut stored = self.lookup(&k)?.unwrap_or_default();
        for v in values {
            push_list_element(&mut stored, self.now, v);
        }
        self.batch.put(k, stored);
        Ok(())
    }

    /// Replaces `key`'s list.
    pub fn list_update(&mut self, state: &StateInfo, kg: u16, key: &[u8], values: &[Vec<u8>]) {
        let k = state_key(kg, state.id, key);
        if values.is_empty() {
            self.batch.delete(k);
            return;
        }
        let mut stored = Vec::new();
        for v in values {
            push_list_element(&mut stored, self.now, v);
        }
        self.batch.put(k, stored);
    }

    /// Whether a key exists physically (in the overlay or on disk), ignoring TTL: for tests
    /// that check expired entries are really gone.
    pub fn physically_present(&self, stored_key: &[u8]) -> Result<bool> {
        Ok(self.lookup(stored_key)?.is_some())
    }
}
