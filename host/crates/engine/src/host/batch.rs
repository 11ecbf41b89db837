//! The batch calls of `keyed-state` (0.2.1): `batchable`, `key-slots`, `value-get-batch`,
//! `list-get-batch` and `write-batch`. A plugin reads a value or list state for every distinct
//! key of its batch in one crossing and hands over the batch's writes in one more; each read
//! and write goes through the same paths as the single calls (`super::state`), so TTL,
//! quotas and the overlay behave alike. Values cross packed in one buffer with their ends.

use std::collections::HashMap;

use super::{CallMode, PluginHost, WitError, opened_as, to_wit};
use crate::bindings::eddy::plugin::keyed_state;
use crate::packed::{Pieces, push_piece};
use eddy_state::{KeyedAccess, StateInfo, StateKind};

/// Whether a state may be read a batch at a time and its writes kept by the plugin until the
/// batch ends: not when it has a TTL (a read has an effect of its own, stamping or removing
/// the entry, or the entry can expire between the batch's first read and a later one, which
/// the plugin cannot tell), nor when a write may change what the plugin holds (a quota that
/// evicts).
fn batchable(opened: &super::OpenedState) -> bool {
    let writes_are_kept = opened
        .quota
        .is_none_or(|q| q.policy != eddy_state::QuotaPolicy::Evict);
    opened.info.ttl.is_none() && writes_are_kept
}

/// The error of a batch call on state `name`, which is not [`batchable`].
fn not_batchable(name: &str) -> WitError {
    WitError::ReadOnly(format!(
        "state `{name}` is read and written with the single calls, not the batch calls: `batchable` answers false for it (it has a TTL, its quota evicts, or the host has the batch calls off)"
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
        push_piece(&mut self.bytes, &mut self.ends, value);
    }

    fn done(self) -> keyed_state::PackedValues {
        keyed_state::PackedValues {
            bytes: self.bytes,
            ends: self.ends,
        }
    }
}

/// Takes the values of a `write-batch`, in order.
struct Unpacker<'a>(Pieces<'a>);

impl<'a> Unpacker<'a> {
    fn new(values: &'a keyed_state::PackedValues) -> Self {
        Unpacker(Pieces::new(&values.bytes, &values.ends))
    }

    /// The next `n` values, or why the buffer does not hold them.
    fn take(&mut self, n: u32) -> Result<Vec<&'a [u8]>, WitError> {
        (0..n)
            .map(|_| {
                self.0
                    .next("write-batch: a value")
                    .map_err(WitError::Storage)
            })
            .collect()
    }
}

impl PluginHost {
    /// The slot of each event's key among the call's distinct keys (numbered in order of first
    /// appearance), and the first event of each slot.
    pub(super) fn slots_of_keys(&mut self) -> &(Vec<u32>, Vec<u32>) {
        let keys = &self.keys;
        self.slots.get_or_insert_with(|| {
            let mut seen: HashMap<&[u8], u32, foldhash::fast::RandomState> =
                HashMap::with_capacity_and_hasher(keys.len(), Default::default());
            let mut firsts = Vec::new();
            let slots = (0u32..)
                .zip(keys)
                .map(|(event, (_, key))| {
                    *seen.entry(key.as_slice()).or_insert_with(|| {
                        firsts.push(event);
                        firsts.len() as u32 - 1
                    })
                })
                .collect();
            (slots, firsts)
        })
    }

    /// Runs the read `f` for each distinct key of the batch, in the order of `key-slots`.
    fn with_each_key<T>(
        &mut self,
        id: u32,
        kind: StateKind,
        mut f: impl FnMut(&StateInfo, u16, &[u8], &mut KeyedAccess<'_>) -> eddy_state::Result<T>,
    ) -> Result<Vec<T>, WitError> {
        self.state_batchable_as(id, kind)?;
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
        let info = &opened_as(opened, id, kind)?.info;
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

    /// State `id` of `kind`, if it may use the batch calls; the error says why not.
    fn state_batchable_as(&self, id: u32, kind: StateKind) -> Result<(), WitError> {
        let opened = opened_as(&self.opened, id, kind)?;
        if self.batch_calls && batchable(opened) {
            Ok(())
        } else {
            Err(not_batchable(&opened.info.name))
        }
    }

    /// `batchable`: whether `state` may use the batch calls.
    pub(super) fn state_batchable(&self, state: u32) -> Result<bool, WitError> {
        let opened = self
            .opened
            .get(state as usize)
            .and_then(Option::as_ref)
            .ok_or(WitError::UnknownState)?;
        Ok(self.batch_calls && batchable(opened))
    }

    /// `value-get-batch`.
    pub(super) fn values_of_batch(
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

    /// `list-get-batch`.
    pub(super) fn lists_of_batch(
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

    /// `write-batch`.
    pub(super) fn apply_write_batch(
        &mut self,
        writes: Vec<keyed_state::StateWrite>,
        values: keyed_state::PackedValues,
    ) -> Result<(), (u32, WitError)> {
        use keyed_state::ChangeKind as C;
        let mut ranges = Unpacker::new(&values);
        let count = writes.len() as u32;
        for (at, w) in (0u32..).zip(writes) {
            let fail = |e| (at, e);
            let kind = match w.change {
                C::ValueSet | C::ValueSetWithTtl | C::ValueClear => StateKind::Value,
                C::ListAddAll | C::ListUpdate | C::ListClear => StateKind::List,
            };
            self.state_batchable_as(w.state, kind).map_err(fail)?;
            let taken = ranges.take(w.values).map_err(fail)?;
            let one = || match taken.as_slice() {
                [value] => Ok(*value),
                _ => Err(WitError::Storage(format!(
                    "write-batch: a {:?} takes one value, not {}",
                    w.change, w.values
                ))),
            };
            let clears = matches!(w.change, C::ValueClear | C::ListClear);
            if clears && !taken.is_empty() {
                return Err(fail(WitError::Storage(format!(
                    "write-batch: a {:?} takes no value, not {}",
                    w.change, w.values
                ))));
            }
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
                C::ValueClear => keyed_state::Host::value_clear(self, state, event),
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
                C::ListClear => keyed_state::Host::list_clear(self, state, event),
            };
            done.map_err(fail)?;
        }
        self.state
            .stats()
            .batched_writes
            .fetch_add(u64::from(count), std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}
