//! Visiting every key of one keyed state (Flink's `applyToKeyedState`), in bounded chunks.
//!
//! A state's entries are spread over every key group (the key group leads the stored key), so
//! a visit walks key group by key group, a chunk at a time, each chunk read through the
//! batch's overlay and handed back with where it stopped. Memory is bounded by the chunk size,
//! whatever the number of keys. Expired entries are skipped (and deleted), as on any read.

use super::batch::StateBatch;
use super::layout::{
    PREFIX_LEN, decode_list, decode_value_ttl, encode_value_ttl, push_list_element,
};
use super::{Result, StateInfo, StateKind, StateStore, Ttl, TtlUpdate, TtlVisibility};

/// One live entry met by a visit: a value, a map entry, or one list element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VisitItem {
    /// The stored key (value or list: the state key; map: the entry key).
    stored_key: Vec<u8>,
    /// The event key.
    pub key: Vec<u8>,
    /// The map key, for map state.
    pub map_key: Option<Vec<u8>>,
    /// The value (or list element).
    pub value: Vec<u8>,
    /// For list state: the element's position and timestamp.
    element: Option<(usize, u64)>,
    own_ttl: Option<u64>,
}

/// What to do with a visited item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemAction {
    /// Leave it.
    Keep,
    /// Replace its value, stamped now.
    Set(Vec<u8>),
    /// Remove it.
    Remove,
}

/// Where a visit stands: the key group it is in and the last stored key it returned.
#[derive(Debug, Clone)]
pub struct Visit {
    state: StateInfo,
    key_group: u32,
    after: Option<Vec<u8>>,
}

impl Visit {
    /// A visit of every key of `state`.
    pub fn new(state: StateInfo) -> Visit {
        Visit {
            state,
            key_group: 0,
            after: None,
        }
    }

    /// The state being visited.
    pub fn state(&self) -> &StateInfo {
        &self.state
    }

    /// The next chunk of at most `max` items (`max` stored keys; a list key yields one item
    /// per live element), or an empty vector when the visit is done. Expired entries met on
    /// the way are deleted through `batch`.
    pub fn next_chunk(
        &mut self,
        store: &StateStore,
        batch: &mut StateBatch,
        max: usize,
    ) -> Result<Vec<VisitItem>> {
        let now = store.now_ms();
        let mut out = Vec::new();
        while self.key_group < store.key_groups() {
            let mut prefix = Vec::with_capacity(6);
            prefix.extend_from_slice(&(self.key_group as u16).to_be_bytes());
            prefix.extend_from_slice(&self.state.id.to_be_bytes());
            let found = batch.keyed_scan(store, &prefix, self.after.as_deref(), max)?;
            if found.is_empty() {
                self.key_group += 1;
                self.after = None;
                continue;
            }
            self.after = found.last().map(|(k, _)| k.clone());
            for (stored_key, stored) in found {
                self.decode_into(stored_key, &stored, now, batch, &mut out);
            }
            if !out.is_empty() {
                break;
            }
        }
        Ok(out)
    }

    fn decode_into(
        &self,
        stored_key: Vec<u8>,
        stored: &[u8],
        now: u64,
        batch: &mut StateBatch,
        out: &mut Vec<VisitItem>,
    ) {
        let Some((key, rest)) = split_stored_key(&stored_key) else {
            return;
        };
        let (key, rest) = (key.to_vec(), rest.to_vec());
        match self.state.kind {
            StateKind::List => {
                let Some(elements) = decode_list(stored) else {
                    return;
                };
                for (i, (ts, v)) in elements.iter().enumerate() {
                    if self.state.ttl.is_some_and(|t| t.is_expired(*ts, now)) {
                        continue;
                    }
                    out.push(VisitItem {
                        stored_key: stored_key.clone(),
                        key: key.clone(),
                        map_key: None,
                        value: v.to_vec(),
                        element: Some((i, *ts)),
                        own_ttl: None,
                    });
                }
            }
            StateKind::Value | StateKind::Map => {
                let Some((ts, own, value)) = decode_value_ttl(stored) else {
                    return;
                };
                let ttl = match (own, self.state.ttl) {
                    (Some(ms), t) => Some(Ttl {
                        ttl_ms: ms,
                        ..t.unwrap_or(Ttl {
                            ttl_ms: ms,
                            update: TtlUpdate::OnCreateAndWrite,
                            visibility: TtlVisibility::NeverReturnExpired,
                        })
                    }),
                    (None, t) => t,
                };
                if ttl.is_some_and(|t| t.is_expired(ts, now)) {
                    batch.delete_keyed(stored_key);
                    return;
                }
                out.push(VisitItem {
                    stored_key,
                    key,
                    map_key: (self.state.kind == StateKind::Map).then_some(rest),
                    value: value.to_vec(),
                    element: None,
                    own_ttl: own,
                });
            }
        }
    }
}

/// Splits a stored keyed-state key into the event key and what follows it (the map key).
fn split_stored_key(stored: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u32::from_be_bytes(stored.get(6..PREFIX_LEN)?.try_into().ok()?) as usize;
    let rest = stored.get(PREFIX_LEN..)?;
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// Applies one action per item into `batch`, stamping written values with `now`. List items
/// of one key are rebuilt together: kept and replaced elements stay in order, removed ones go.
pub fn apply(
    store: &StateStore,
    batch: &mut StateBatch,
    items: Vec<VisitItem>,
    actions: Vec<ItemAction>,
) -> Result<()> {
    let now = store.now_ms();
    let mut list: Option<(Vec<u8>, Vec<u8>, bool)> = None;
    let flush = |batch: &mut StateBatch, list: &mut Option<(Vec<u8>, Vec<u8>, bool)>| {
        if let Some((k, bytes, changed)) = list.take()
            && changed
        {
            if bytes.is_empty() {
                batch.delete_keyed(k);
            } else {
                batch.put_keyed(k, bytes);
            }
        }
    };
    for (item, action) in items.into_iter().zip(actions) {
        match item.element {
            Some((_, ts)) => {
                if list.as_ref().is_some_and(|(k, _, _)| *k != item.stored_key) {
                    flush(batch, &mut list);
                }
                let entry =
                    list.get_or_insert_with(|| (item.stored_key.clone(), Vec::new(), false));
                match action {
                    ItemAction::Keep => push_list_element(&mut entry.1, ts, &item.value),
                    ItemAction::Set(v) => {
                        push_list_element(&mut entry.1, now, &v);
                        entry.2 = true;
                    }
                    ItemAction::Remove => entry.2 = true,
                }
            }
            None => {
                flush(batch, &mut list);
                match action {
                    ItemAction::Keep => {}
                    ItemAction::Set(v) => {
                        batch.put_keyed(item.stored_key, encode_value_ttl(now, item.own_ttl, &v))
                    }
                    ItemAction::Remove => batch.delete_keyed(item.stored_key),
                }
            }
        }
    }
    flush(batch, &mut list);
    Ok(())
}
