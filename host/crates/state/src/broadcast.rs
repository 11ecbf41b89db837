//! Broadcast state: named maps shared by every key, in the `broadcast` column family.
//!
//! Key: `map_id: u32 BE | entry key bytes`; value: the bytes the plugin wrote (no timestamp:
//! broadcast state has no TTL). One copy per host, on disk, whatever the table's size: Flink
//! keeps broadcast state on the heap, once per parallel task.

use super::batch::StateBatch;
use super::layout::prefix_end;
use super::{Result, StateStore};

/// The stored key of entry `key` of map `map`.
pub fn entry_key(map: u32, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + key.len());
    out.extend_from_slice(&map.to_be_bytes());
    out.extend_from_slice(key);
    out
}

/// The map id and entry key of a stored key.
pub fn split_key(stored: &[u8]) -> Option<(u32, &[u8])> {
    let (id, key) = stored.split_first_chunk::<4>()?;
    Some((u32::from_be_bytes(*id), key))
}

/// Broadcast map operations over the store and one batch's overlay.
pub struct BroadcastAccess<'a> {
    store: &'a StateStore,
    batch: &'a mut StateBatch,
}

impl<'a> BroadcastAccess<'a> {
    /// Operations on `store` through `batch`.
    pub fn new(store: &'a StateStore, batch: &'a mut StateBatch) -> BroadcastAccess<'a> {
        BroadcastAccess { store, batch }
    }

    /// The entry `key` of map `map`.
    pub fn get(&mut self, map: u32, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let k = entry_key(map, key);
        if let Some(v) = self.batch.broadcast.get(&k) {
            return Ok(v);
        }
        Ok(self
            .store
            .db()
            .get_pinned_cf(self.store.broadcast_cf(), &k)?
            .map(|v| v.to_vec()))
    }

    /// Up to `limit` entries after `start_after`, in key order: `(entry key, value)`.
    pub fn entries(
        &mut self,
        map: u32,
        start_after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let prefix = map.to_be_bytes();
        let after = start_after.map(|a| entry_key(map, a));
        let found = self.batch.broadcast.scan(
            self.store,
            self.store.broadcast_cf(),
            &prefix,
            after.as_deref(),
            limit,
        )?;
        Ok(found
            .into_iter()
            .map(|(k, v)| (k[prefix.len()..].to_vec(), v))
            .collect())
    }

    /// Sets an entry.
    pub fn put(&mut self, map: u32, key: &[u8], value: Vec<u8>) {
        self.batch.broadcast.put(entry_key(map, key), value);
    }

    /// Removes an entry.
    pub fn remove(&mut self, map: u32, key: &[u8]) {
        self.batch.broadcast.delete(entry_key(map, key));
    }

    /// Removes every entry of map `map`.
    pub fn clear(&mut self, map: u32) {
        self.batch
            .broadcast
            .clear_prefix(map.to_be_bytes().to_vec());
    }
}

/// The end of map `map`'s key range, for range deletes and scans.
pub fn map_end(map: u32) -> Vec<u8> {
    prefix_end(&map.to_be_bytes()).unwrap_or_else(|| vec![0xff; 5])
}
