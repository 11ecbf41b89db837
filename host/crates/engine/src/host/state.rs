//! The state imports: `keyed-state` (value, map and list state of the current batch's
//! events, TTL, visits) and `broadcast-state` (tables every key sees, written only from
//! `handle-broadcast`). The batch calls of `keyed-state` read a state for every key of the
//! batch at once and apply a batch's writes in one crossing, through the same paths as the
//! single calls.

use super::{CallMode, PluginHost, VisitRequest, WitError, to_wit};
use crate::bindings::eddy::plugin::{broadcast_state, keyed_state};
use eddy_state::{KeyedAccess, StateInfo};
use eddy_state::{StateKind, Ttl};

fn ttl_from_wit(t: keyed_state::TtlConfig) -> Ttl {
    Ttl {
        ttl_ms: t.ttl_ms,
        update: match t.update {
            keyed_state::TtlUpdate::OnCreateAndWrite => eddy_state::TtlUpdate::OnCreateAndWrite,
            keyed_state::TtlUpdate::OnReadAndWrite => eddy_state::TtlUpdate::OnReadAndWrite,
        },
        visibility: match t.visibility {
            keyed_state::TtlVisibility::NeverReturnExpired => {
                eddy_state::TtlVisibility::NeverReturnExpired
            }
            keyed_state::TtlVisibility::ReturnExpiredIfNotCleanedUp => {
                eddy_state::TtlVisibility::ReturnExpiredIfNotCleanedUp
            }
        },
    }
}

/// Whether a state may be read a batch at a time and its writes kept by the plugin until the
/// batch ends: not when a read has an effect of its own (TTL stamped on reads, expired entries
/// returned once and removed), nor when a write may change what the plugin holds (a quota that
/// evicts).
fn batchable(opened: &super::OpenedState) -> bool {
    let reads_are_plain = opened.info.ttl.is_none_or(|t| {
        t.update == eddy_state::TtlUpdate::OnCreateAndWrite
            && t.visibility == eddy_state::TtlVisibility::NeverReturnExpired
    });
    let writes_are_kept = opened
        .quota
        .is_none_or(|q| q.policy != eddy_state::QuotaPolicy::Evict);
    reads_are_plain && writes_are_kept
}

/// The error of a batch call on a state that is not [`batchable`].
fn not_batchable(opened: &[Option<super::OpenedState>], state: u32) -> WitError {
    let name = opened
        .get(state as usize)
        .and_then(Option::as_ref)
        .map_or("?", |o| o.info.name.as_str());
    WitError::ReadOnly(format!(
        "state `{name}` is read and written with the single calls, not the batch calls: `batchable` answers false for it (its TTL stamps or removes entries on reads, its quota evicts, or the host has the batch calls off)"
    ))
}

/// Builds the values a batch read answers: one buffer, and where each value ends.
#[derive(Default)]
struct Packer {
    bytes: Vec<u8>,
    ends: Vec<u32>,
}

impl Packer {
    fn push(&mut self, value: &[u8]) {
        self.bytes.extend_from_slice(value);
        self.ends.push(self.bytes.len() as u32);
    }

    fn done(self) -> keyed_state::PackedValues {
        keyed_state::PackedValues {
            bytes: self.bytes,
            ends: self.ends,
        }
    }
}

/// Takes the values of a `write-batch`, in order.
struct Unpacker<'a> {
    values: &'a keyed_state::PackedValues,
    next: usize,
    start: usize,
}

impl<'a> Unpacker<'a> {
    fn new(values: &'a keyed_state::PackedValues) -> Self {
        Unpacker {
            values,
            next: 0,
            start: 0,
        }
    }

    /// The next `n` values, or why the buffer does not hold them.
    fn take(&mut self, n: u32) -> Result<Vec<&'a [u8]>, WitError> {
        let values = self.values;
        let mut taken = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let end = *values.ends.get(self.next).ok_or_else(|| {
                WitError::Storage(format!(
                    "write-batch: the writes take more values than the {} passed",
                    values.ends.len()
                ))
            })? as usize;
            let value = values.bytes.get(self.start..end).ok_or_else(|| {
                WitError::Storage(format!(
                    "write-batch: value {} ends at {end}, outside its range (from {} in {} bytes)",
                    self.next,
                    self.start,
                    values.bytes.len()
                ))
            })?;
            taken.push(value);
            self.next += 1;
            self.start = end;
        }
        Ok(taken)
    }
}

impl PluginHost {
    /// Runs the read `f` for each distinct key of the batch, in the order of `key-slots`.
    fn with_each_key<T>(
        &mut self,
        id: u32,
        kind: StateKind,
        mut f: impl FnMut(&StateInfo, u16, &[u8], &mut KeyedAccess<'_>) -> eddy_state::Result<T>,
    ) -> Result<Vec<T>, WitError> {
        let opened = self
            .opened
            .get(id as usize)
            .and_then(Option::as_ref)
            .ok_or(WitError::UnknownState)?;
        let info = &opened.info;
        if info.kind != kind {
            return Err(WitError::WrongKind(format!(
                "state `{}` is a {:?} state, used as {:?}",
                info.name, info.kind, kind
            )));
        }
        if !(self.batch_calls && batchable(opened)) {
            return Err(not_batchable(&self.opened, id));
        }
        if self.mode != CallMode::Handle {
            return Err(WitError::NoSuchEvent);
        }
        self.slots_of_keys();
        let PluginHost {
            opened,
            keys,
            slots,
            batch,
            state,
            ..
        } = self;
        let info = &opened[id as usize].as_ref().expect("checked above").info;
        let firsts = &slots.as_ref().expect("computed above").1;
        let mut access = KeyedAccess::new(state, batch);
        firsts
            .iter()
            .map(|&event| {
                let (kg, key) = &keys[event as usize];
                f(info, *kg, key, &mut access).map_err(to_wit)
            })
            .collect()
    }
}

impl keyed_state::Host for PluginHost {
    fn open(
        &mut self,
        name: String,
        kind: keyed_state::StateKind,
        ttl: Option<keyed_state::TtlConfig>,
    ) -> Result<u32, WitError> {
        let kind = match kind {
            keyed_state::StateKind::Value => StateKind::Value,
            keyed_state::StateKind::Map => StateKind::Map,
            keyed_state::StateKind::List => StateKind::List,
        };
        if name.is_empty() {
            return Err(WitError::Storage("a state needs a non-empty name".into()));
        }
        let info = self
            .state
            .open_state(&name, kind, ttl.map(ttl_from_wit))
            .map_err(to_wit)?;
        let id = info.id;
        let slot = id as usize;
        if self.opened.len() <= slot {
            self.opened.resize(slot + 1, None);
        }
        let quota = self.state.quota(&info.name);
        self.opened[slot] = Some(super::OpenedState { info, quota });
        Ok(id)
    }

    fn value_get(&mut self, state: u32, event: u32) -> Result<Option<Vec<u8>>, WitError> {
        self.with(state, event, StateKind::Value, |s, kg, k, a| {
            a.value_get(s, kg, k)
        })
    }

    fn value_set(&mut self, state: u32, event: u32, value: Vec<u8>) -> Result<(), WitError> {
        self.with_write(state, event, StateKind::Value, |s, kg, k, a| {
            a.value_set(s, kg, k, &value);
            Ok(())
        })
    }

    fn value_set_with_ttl(
        &mut self,
        state: u32,
        event: u32,
        value: Vec<u8>,
        ttl_ms: u64,
    ) -> Result<(), WitError> {
        self.with_write(state, event, StateKind::Value, |s, kg, k, a| {
            a.value_set_ttl(s, kg, k, &value, Some(ttl_ms));
            Ok(())
        })
    }

    fn value_clear(&mut self, state: u32, event: u32) -> Result<(), WitError> {
        self.with(state, event, StateKind::Value, |s, kg, k, a| {
            a.value_clear(s, kg, k);
            Ok(())
        })
    }

    fn map_get(
        &mut self,
        state: u32,
        event: u32,
        map_key: Vec<u8>,
    ) -> Result<Option<Vec<u8>>, WitError> {
        self.with(state, event, StateKind::Map, |s, kg, k, a| {
            a.map_get(s, kg, k, &map_key)
        })
    }

    fn map_put(
        &mut self,
        state: u32,
        event: u32,
        map_key: Vec<u8>,
        value: Vec<u8>,
    ) -> Result<(), WitError> {
        self.with_write(state, event, StateKind::Map, |s, kg, k, a| {
            a.map_put(s, kg, k, &map_key, &value);
            Ok(())
        })
    }

    fn map_put_with_ttl(
        &mut self,
        state: u32,
        event: u32,
        map_key: Vec<u8>,
        value: Vec<u8>,
        ttl_ms: u64,
    ) -> Result<(), WitError> {
        self.with_write(state, event, StateKind::Map, |s, kg, k, a| {
            a.map_put_ttl(s, kg, k, &map_key, &value, Some(ttl_ms));
            Ok(())
        })
    }

    fn map_remove(&mut self, state: u32, event: u32, map_key: Vec<u8>) -> Result<(), WitError> {
        self.with(state, event, StateKind::Map, |s, kg, k, a| {
            a.map_remove(s, kg, k, &map_key);
            Ok(())
        })
    }

    fn map_contains(&mut self, state: u32, event: u32, map_key: Vec<u8>) -> Result<bool, WitError> {
        self.with(state, event, StateKind::Map, |s, kg, k, a| {
            Ok(a.map_get(s, kg, k, &map_key)?.is_some())
        })
    }

    fn map_entries(
        &mut self,
        state: u32,
        event: u32,
        start_after: Option<Vec<u8>>,
        limit: u32,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, WitError> {
        self.with(state, event, StateKind::Map, |s, kg, k, a| {
            a.map_entries(s, kg, k, start_after.as_deref(), limit.min(10_000) as usize)
        })
    }

    fn map_is_empty(&mut self, state: u32, event: u32) -> Result<bool, WitError> {
        self.with(state, event, StateKind::Map, |s, kg, k, a| {
            a.map_is_empty(s, kg, k)
        })
    }

    fn map_clear(&mut self, state: u32, event: u32) -> Result<(), WitError> {
        self.with(state, event, StateKind::Map, |s, kg, k, a| {
            a.map_clear(s, kg, k);
            Ok(())
        })
    }

    fn list_get(&mut self, state: u32, event: u32) -> Result<Vec<Vec<u8>>, WitError> {
        self.with(state, event, StateKind::List, |s, kg, k, a| {
            a.list_get(s, kg, k)
        })
    }

    fn list_add(&mut self, state: u32, event: u32, value: Vec<u8>) -> Result<(), WitError> {
        self.with_write(state, event, StateKind::List, |s, kg, k, a| {
            a.list_add_all(s, kg, k, std::slice::from_ref(&value))
        })
    }

    fn list_add_all(
        &mut self,
        state: u32,
        event: u32,
        values: Vec<Vec<u8>>,
    ) -> Result<(), WitError> {
        self.with_write(state, event, StateKind::List, |s, kg, k, a| {
            a.list_add_all(s, kg, k, &values)
        })
    }

    fn list_update(
        &mut self,
        state: u32,
        event: u32,
        values: Vec<Vec<u8>>,
    ) -> Result<(), WitError> {
        self.with_write(state, event, StateKind::List, |s, kg, k, a| {
            a.list_update(s, kg, k, &values);
            Ok(())
        })
    }

    fn list_clear(&mut self, state: u32, event: u32) -> Result<(), WitError> {
        self.with(state, event, StateKind::List, |s, kg, k, a| {
            a.value_clear(s, kg, k);
            Ok(())
        })
    }

    fn batchable(&mut self, state: u32) -> Result<bool, WitError> {
        let opened = self
            .opened
            .get(state as usize)
            .and_then(Option::as_ref)
            .ok_or(WitError::UnknownState)?;
        Ok(self.batch_calls && batchable(opened))
    }

    fn key_slots(&mut self) -> Vec<u32> {
        self.slots_of_keys().0.clone()
    }

    fn value_get_batch(
        &mut self,
        state: u32,
    ) -> Result<(Vec<bool>, keyed_state::PackedValues), WitError> {
        let mut present = Vec::new();
        let mut packed = Packer::default();
        self.with_each_key(state, StateKind::Value, |s, kg, k, a| {
            let value = a.value_get(s, kg, k)?;
            present.push(value.is_some());
            if let Some(v) = value {
                packed.push(&v);
            }
            Ok(())
        })?;
        Ok((present, packed.done()))
    }

    fn list_get_batch(
        &mut self,
        state: u32,
    ) -> Result<(Vec<u32>, keyed_state::PackedValues), WitError> {
        let mut counts = Vec::new();
        let mut packed = Packer::default();
        self.with_each_key(state, StateKind::List, |s, kg, k, a| {
            let list = a.list_get(s, kg, k)?;
            counts.push(list.len() as u32);
            for element in &list {
                packed.push(element);
            }
            Ok(())
        })?;
        Ok((counts, packed.done()))
    }

    fn write_batch(
        &mut self,
        writes: Vec<keyed_state::StateWrite>,
        values: keyed_state::PackedValues,
    ) -> Result<(), (u32, WitError)> {
        use keyed_state::ChangeKind as C;
        let mut ranges = Unpacker::new(&values);
        let count = writes.len() as u32;
        for (at, w) in (0u32..).zip(writes) {
            let fail = |e| (at, e);
            if !self.batchable(w.state).map_err(fail)? {
                return Err((at, not_batchable(&self.opened, w.state)));
            }
            let taken = ranges.take(w.values).map_err(fail)?;
            let one = || match taken.as_slice() {
                [value] => Ok(*value),
                _ => Err(WitError::Storage(format!(
                    "write-batch: a {:?} takes one value, not {}",
                    w.change, w.values
                ))),
            };
            let (state, event) = (w.state, w.event);
            let done = match w.change {
                C::ValueSet => {
                    let v = one().map_err(fail)?;
                    self.with_write(state, event, StateKind::Value, |s, kg, k, a| {
                        a.value_set(s, kg, k, v);
                        Ok(())
                    })
                }
                C::ValueSetWithTtl => {
                    let v = one().map_err(fail)?;
                    self.with_write(state, event, StateKind::Value, |s, kg, k, a| {
                        a.value_set_ttl(s, kg, k, v, w.ttl_ms);
                        Ok(())
                    })
                }
                C::ValueClear => self.value_clear(state, event),
                C::ListAddAll => {
                    let elements: Vec<Vec<u8>> = taken.iter().map(|v| v.to_vec()).collect();
                    self.with_write(state, event, StateKind::List, |s, kg, k, a| {
                        a.list_add_all(s, kg, k, &elements)
                    })
                }
                C::ListUpdate => {
                    let elements: Vec<Vec<u8>> = taken.iter().map(|v| v.to_vec()).collect();
                    self.with_write(state, event, StateKind::List, |s, kg, k, a| {
                        a.list_update(s, kg, k, &elements);
                        Ok(())
                    })
                }
                C::ListClear => self.list_clear(state, event),
            };
            done.map_err(fail)?;
        }
        self.state
            .stats()
            .batched_writes
            .fetch_add(u64::from(count), std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    fn visit_all_keys(&mut self, state: u32, tag: String) -> Result<(), WitError> {
        let info = self
            .opened
            .get(state as usize)
            .and_then(Option::as_ref)
            .ok_or(WitError::UnknownState)?
            .info
            .clone();
        if !matches!(self.mode, CallMode::Broadcast | CallMode::Migrate) {
            return Err(WitError::ReadOnly(format!(
                "visits of every key (state `{}`) may be asked for only from handle-broadcast or migrate, not from {}",
                info.name,
                self.mode.export()
            )));
        }
        self.visits.push(VisitRequest { state: info, tag });
        Ok(())
    }
}

impl broadcast_state::Host for PluginHost {
    fn open_map(&mut self, name: String) -> Result<u32, broadcast_state::BroadcastError> {
        if name.is_empty() {
            return Err(broadcast_state::BroadcastError::Storage(
                "a broadcast map needs a non-empty name".into(),
            ));
        }
        let id = self
            .state
            .open_broadcast_map(&name)
            .map_err(|e| broadcast_state::BroadcastError::Storage(e.to_string()))?;
        self.maps.insert(id, name);
        Ok(id)
    }

    fn get(
        &mut self,
        table: u32,
        key: Vec<u8>,
    ) -> Result<Option<Vec<u8>>, broadcast_state::BroadcastError> {
        self.with_map(table, false, |a| a.get(table, &key))
    }

    fn entries(
        &mut self,
        table: u32,
        start_after: Option<Vec<u8>>,
        limit: u32,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, broadcast_state::BroadcastError> {
        self.with_map(table, false, |a| {
            a.entries(table, start_after.as_deref(), limit.min(10_000) as usize)
        })
    }

    fn put(
        &mut self,
        table: u32,
        key: Vec<u8>,
        value: Vec<u8>,
    ) -> Result<(), broadcast_state::BroadcastError> {
        self.with_map(table, true, |a| {
            a.put(table, &key, value);
            Ok(())
        })
    }

    fn remove(&mut self, table: u32, key: Vec<u8>) -> Result<(), broadcast_state::BroadcastError> {
        self.with_map(table, true, |a| {
            a.remove(table, &key);
            Ok(())
        })
    }

    fn clear(&mut self, table: u32) -> Result<(), broadcast_state::BroadcastError> {
        self.with_map(table, true, |a| {
            a.clear(table);
            Ok(())
        })
    }
}
