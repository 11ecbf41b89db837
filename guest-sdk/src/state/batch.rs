//! The batch's value and list state, kept in the plugin while `handle` runs.
//!
//! Each crossing of the component boundary costs more than the state work behind it, so value
//! and list state of a `batchable` state (see `keyed-state.batchable` in the WIT) cross once
//! per state and batch instead of once per read and write:
//! - the first read of a state in a batch fetches its values for every distinct key of the
//!   batch (`value-get-batch`, `list-get-batch`);
//! - writes are logged here, in order, and change what later reads of the batch see;
//! - when the batch's events are handled, [`finish`] hands the log to the host in one
//!   `write-batch`, which applies each write as the single call would (TTL, quotas).
//!
//! Values are not copied into a buffer of their own: reads decode from the buffer the host
//! answered with, and writes encode straight into the one buffer `write-batch` passes. A
//! value is a [`Span`] of one of those buffers. A list appended to before it was read keeps
//! the appended elements until the fetch gives the elements before them. Map state stays with
//! the single calls.

use std::cell::RefCell;

use super::StateError;
use crate::wit::eddy::plugin::keyed_state as wit;

/// Which buffer a [`Span`] is in: the batch's written values, or one of its fetches.
const WRITTEN: u32 = u32::MAX;

/// A value: a range of the written buffer or of a fetch's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    buf: u32,
    start: u32,
    end: u32,
}

/// What the batch knows of one key's value.
#[derive(Clone)]
enum ValueSlot {
    /// Not read or written in this batch yet.
    Unknown,
    /// The value (`None`: there is none), as fetched or as the batch's last write left it.
    Known(Option<Span>),
}

/// What the batch knows of one key's list.
#[derive(Clone)]
enum ListSlot {
    /// Not read yet: the elements appended in this batch, after those the host holds.
    Unknown { appended: Vec<Span> },
    /// The whole list.
    Known(Vec<Span>),
}

/// One batch's fetched values and logged writes.
#[derive(Default)]
pub(super) struct Batch {
    /// The slot of each event's key (`key-slots`), and how many slots, once asked for.
    slots: Option<(Vec<u32>, usize)>,
    /// Per state id (small integers, handed out in order), its keys' values or lists.
    values: Vec<Vec<ValueSlot>>,
    lists: Vec<Vec<ListSlot>>,
    /// The buffers of the batch reads.
    fetched: Vec<Vec<u8>>,
    /// The logged writes, and the values they take, side by side.
    writes: Vec<wit::StateWrite>,
    bytes: Vec<u8>,
    ends: Vec<u32>,
    /// Per state id, the reads of this batch.
    reads: Vec<u32>,
    /// Per state id, whether the last batch that read the state read it for fewer than a
    /// quarter of its events. Such a state is read one key at a time (`value-get`, `list-get`)
    /// rather than for every key of the batch: a plugin that reads a state for a few events
    /// would otherwise fetch every key's value, from disk where the hot values lack it. Kept
    /// from batch to batch.
    sparse: Vec<bool>,
    /// Per state id, whether the state left the batch for the rest of it (see [`go_direct`]).
    direct: Vec<bool>,
    /// How much of `bytes` and `ends` a hand-over in the middle of the batch took already.
    handed_bytes: usize,
    handed_ends: usize,
}

/// Where the batch gets what it does not hold: the host, or a test's stand-in.
pub(super) trait Source {
    fn key_slots(&mut self) -> Vec<u32>;
    fn values(&mut self, state: wit::StateId)
    -> Result<(Vec<bool>, wit::PackedValues), StateError>;
    fn lists(&mut self, state: wit::StateId) -> Result<(Vec<u32>, wit::PackedValues), StateError>;
    fn value(&mut self, state: wit::StateId, event: u32) -> Result<Option<Vec<u8>>, StateError>;
    fn list(&mut self, state: wit::StateId, event: u32) -> Result<Vec<Vec<u8>>, StateError>;
}

/// The host, through the batch calls.
pub(super) struct Host;

impl Source for Host {
    fn key_slots(&mut self) -> Vec<u32> {
        wit::key_slots()
    }
    fn values(
        &mut self,
        state: wit::StateId,
    ) -> Result<(Vec<bool>, wit::PackedValues), StateError> {
        Ok(wit::value_get_batch(state)?)
    }
    fn lists(&mut self, state: wit::StateId) -> Result<(Vec<u32>, wit::PackedValues), StateError> {
        Ok(wit::list_get_batch(state)?)
    }
    fn value(&mut self, state: wit::StateId, event: u32) -> Result<Option<Vec<u8>>, StateError> {
        Ok(wit::value_get(state, event)?)
    }
    fn list(&mut self, state: wit::StateId, event: u32) -> Result<Vec<Vec<u8>>, StateError> {
        Ok(wit::list_get(state, event)?)
    }
}

/// The slots of `state` in `table`, made for `count` keys on first use.
fn slots_of<T: Clone>(
    table: &mut Vec<Vec<T>>,
    state: wit::StateId,
    count: usize,
    unknown: T,
) -> &mut Vec<T> {
    let at = state as usize;
    if table.len() <= at {
        table.resize_with(at + 1, Vec::new);
    }
    let slots = &mut table[at];
    if slots.is_empty() {
        *slots = vec![unknown; count];
    }
    slots
}

/// The spans of values in buffer `buf` (of `len` bytes) that start at `start` and end at
/// `ends`, checked against the buffer first. Nothing is allocated: a value write takes this
/// path once per event.
fn spans_of(
    buf: u32,
    start: u32,
    ends: &[u32],
    len: usize,
) -> Result<impl Iterator<Item = Span> + '_, StateError> {
    let mut from = start;
    for &end in ends {
        if end < from || end as usize > len {
            return Err(StateError::Storage(format!(
                "a value of the batch ends at {end}, outside its range (from {from} in {len} bytes)"
            )));
        }
        from = end;
    }
    let mut from = start;
    Ok(ends.iter().map(move |&end| {
        let span = Span {
            buf,
            start: from,
            end,
        };
        from = end;
        span
    }))
}

/// The spans of a fetch's values, kept as buffer `buf`.
fn fetched_spans(
    buf: u32,
    packed: &wit::PackedValues,
) -> Result<impl Iterator<Item = Span> + '_, StateError> {
    spans_of(buf, 0, &packed.ends, packed.bytes.len())
}

/// Keeps one value the host answered with as a buffer of its own.
fn keep(fetched: &mut Vec<Vec<u8>>, value: Vec<u8>) -> Span {
    let end = value.len() as u32;
    fetched.push(value);
    Span {
        buf: fetched.len() as u32 - 1,
        start: 0,
        end,
    }
}

/// The error for a batch read that answered another number of keys than the batch has.
fn short_answer(got: usize, keys: usize) -> StateError {
    StateError::Storage(format!(
        "the host answered a batch read with {got} entries for the batch's {keys} keys"
    ))
}

/// Writes a write's values into the batch's buffer, one call of [`Values::push`] each.
pub(super) struct Values<'a> {
    bytes: &'a mut Vec<u8>,
    ends: &'a mut Vec<u32>,
}

impl Values<'_> {
    /// Adds one value, written into the buffer by `encode`.
    pub(super) fn push(
        &mut self,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), StateError>,
    ) -> Result<(), StateError> {
        encode(self.bytes)?;
        self.ends.push(self.bytes.len() as u32);
        Ok(())
    }
}

impl Batch {
    /// The slot of `event`'s key, and the number of slots.
    fn slot(&mut self, source: &mut impl Source, event: u32) -> Result<(usize, usize), StateError> {
        let (slots, count) = self.slots.get_or_insert_with(|| {
            let slots = source.key_slots();
            let count = slots.iter().max().map_or(0, |&s| s as usize + 1);
            (slots, count)
        });
        let slot = slots.get(event as usize).ok_or(StateError::NoSuchEvent)?;
        Ok((*slot as usize, *count))
    }

    /// The bytes of `span`.
    fn bytes_of(&self, span: Span) -> &[u8] {
        let buf = if span.buf == WRITTEN {
            &self.bytes
        } else {
            &self.fetched[span.buf as usize]
        };
        &buf[span.start as usize..span.end as usize]
    }

    /// Runs `f` on the value of `event`'s key, fetching the state's values on first need.
    pub(super) fn read_value<R>(
        &mut self,
        source: &mut impl Source,
        state: wit::StateId,
        event: u32,
        f: impl FnOnce(Option<&[u8]>) -> R,
    ) -> Result<R, StateError> {
        let (slot, count) = self.slot(source, event)?;
        let sparse = self.count_read(state);
        let values = slots_of(&mut self.values, state, count, ValueSlot::Unknown);
        if matches!(values[slot], ValueSlot::Unknown) && sparse {
            let value = source
                .value(state, event)?
                .map(|v| keep(&mut self.fetched, v));
            values[slot] = ValueSlot::Known(value);
        } else if matches!(values[slot], ValueSlot::Unknown) {
            let (present, packed) = source.values(state)?;
            if present.len() != count {
                return Err(short_answer(present.len(), count));
            }
            let mut spans = fetched_spans(self.fetched.len() as u32, &packed)?;
            for (known, present) in values.iter_mut().zip(present) {
                let value = if present {
                    Some(spans.next().ok_or_else(|| short_answer(0, count))?)
                } else {
                    None
                };
                if matches!(known, ValueSlot::Unknown) {
                    *known = ValueSlot::Known(value);
                }
            }
            drop(spans);
            self.fetched.push(packed.bytes);
        }
        let ValueSlot::Known(span) = self.values[state as usize][slot] else {
            unreachable!("every slot is known after the fetch");
        };
        Ok(f(span.map(|s| self.bytes_of(s))))
    }

    /// Runs `f` on the list of `event`'s key, fetching the state's lists on first need.
    pub(super) fn read_list<R>(
        &mut self,
        source: &mut impl Source,
        state: wit::StateId,
        event: u32,
        f: impl FnOnce(&mut dyn Iterator<Item = &[u8]>) -> R,
    ) -> Result<R, StateError> {
        let (slot, count) = self.slot(source, event)?;
        let unknown = ListSlot::Unknown {
            appended: Vec::new(),
        };
        let sparse = self.count_read(state);
        let lists = slots_of(&mut self.lists, state, count, unknown);
        if let ListSlot::Unknown { appended } = &mut lists[slot]
            && sparse
        {
            let stored = source.list(state, event)?;
            let mut list: Vec<Span> = stored
                .into_iter()
                .map(|v| keep(&mut self.fetched, v))
                .collect();
            list.append(appended);
            lists[slot] = ListSlot::Known(list);
        } else if matches!(lists[slot], ListSlot::Unknown { .. }) {
            let (counts, packed) = source.lists(state)?;
            if counts.len() != count {
                return Err(short_answer(counts.len(), count));
            }
            let mut spans = fetched_spans(self.fetched.len() as u32, &packed)?;
            for (known, n) in lists.iter_mut().zip(counts) {
                let mut list: Vec<Span> = spans.by_ref().take(n as usize).collect();
                if list.len() != n as usize {
                    return Err(short_answer(list.len(), n as usize));
                }
                if let ListSlot::Unknown { appended } = known {
                    list.append(appended);
                    *known = ListSlot::Known(list);
                }
            }
            drop(spans);
            self.fetched.push(packed.bytes);
        }
        let ListSlot::Known(spans) = &self.lists[state as usize][slot] else {
            unreachable!("every slot is known after the fetch");
        };
        Ok(f(&mut spans.iter().map(|&s| self.bytes_of(s))))
    }

    /// Logs a write: `change` to `state` for `event`'s key, its values written by `encode`
    /// (none for the clears, one for the value sets). Nothing is logged if `encode` fails.
    pub(super) fn write(
        &mut self,
        source: &mut impl Source,
        state: wit::StateId,
        event: u32,
        change: wit::ChangeKind,
        encode: impl FnOnce(&mut Values<'_>) -> Result<(), StateError>,
    ) -> Result<(), StateError> {
        let (slot, count) = self.slot(source, event)?;
        let (first, bytes_before) = (self.ends.len(), self.bytes.len());
        let encoded = encode(&mut Values {
            bytes: &mut self.bytes,
            ends: &mut self.ends,
        });
        if let Err(e) = encoded {
            self.bytes.truncate(bytes_before);
            self.ends.truncate(first);
            return Err(e);
        }
        let written = (self.ends.len() - first) as u32;
        let mut spans = spans_of(
            WRITTEN,
            bytes_before as u32,
            &self.ends[first..],
            self.bytes.len(),
        )?;
        use wit::ChangeKind as C;
        match change {
            C::ValueSet | C::ValueSetWithTtl | C::ValueClear => {
                let values = slots_of(&mut self.values, state, count, ValueSlot::Unknown);
                values[slot] = ValueSlot::Known(spans.next());
            }
            C::ListAddAll | C::ListUpdate | C::ListClear => {
                let unknown = ListSlot::Unknown {
                    appended: Vec::new(),
                };
                let list = &mut slots_of(&mut self.lists, state, count, unknown)[slot];
                match (change, list) {
                    (C::ListAddAll, ListSlot::Known(list)) => list.extend(spans),
                    (C::ListAddAll, ListSlot::Unknown { appended }) => appended.extend(spans),
                    (_, list) => *list = ListSlot::Known(spans.collect()),
                }
            }
        }
        self.writes.push(wit::StateWrite {
            state,
            event,
            change,
            // A write with its own TTL is never logged: it takes its state out of the batch.
            ttl_ms: None,
            values: written,
        });
        Ok(())
    }

    /// Counts a read of `state`; whether the state is read one key at a time.
    fn count_read(&mut self, state: wit::StateId) -> bool {
        let at = state as usize;
        if self.reads.len() <= at {
            self.reads.resize(at + 1, 0);
        }
        self.reads[at] += 1;
        self.sparse.get(at).copied().unwrap_or(false)
    }

    /// The writes logged since the last hand-over and their values, to hand over now; the
    /// batch keeps its values (later reads of the batch still see them).
    fn take_pending(&mut self) -> (Vec<wit::StateWrite>, wit::PackedValues) {
        let (from, from_end) = (self.handed_bytes, self.handed_ends);
        let packed = wit::PackedValues {
            bytes: self.bytes[from..].to_vec(),
            ends: self.ends[from_end..]
                .iter()
                .map(|e| e - from as u32)
                .collect(),
        };
        self.handed_bytes = self.bytes.len();
        self.handed_ends = self.ends.len();
        (std::mem::take(&mut self.writes), packed)
    }

    /// Takes `state` out of the batch for the rest of it: its reads and writes go to the host
    /// one call each from now on.
    fn leave(&mut self, state: wit::StateId) {
        let at = state as usize;
        if self.direct.len() <= at {
            self.direct.resize(at + 1, false);
        }
        self.direct[at] = true;
        if let Some(values) = self.values.get_mut(at) {
            values.clear();
        }
        if let Some(lists) = self.lists.get_mut(at) {
            lists.clear();
        }
    }

    /// The writes logged since the last hand-over and their values, leaving the batch empty
    /// but for what it learnt of how densely each state is read.
    fn take_writes(&mut self) -> (Vec<wit::StateWrite>, wit::PackedValues) {
        let events = self.slots.as_ref().map_or(0, |(slots, _)| slots.len());
        let mut sparse = std::mem::take(&mut self.sparse);
        for (state, &reads) in self.reads.iter().enumerate() {
            if reads > 0 {
                if sparse.len() <= state {
                    sparse.resize(state + 1, false);
                }
                sparse[state] = (reads as usize) * 4 < events;
            }
        }
        let pending = if self.handed_bytes == 0 && self.handed_ends == 0 {
            let taken = std::mem::take(self);
            (
                taken.writes,
                wit::PackedValues {
                    bytes: taken.bytes,
                    ends: taken.ends,
                },
            )
        } else {
            let pending = self.take_pending();
            *self = Batch::default();
            pending
        };
        self.sparse = sparse;
        pending
    }
}

thread_local! {
    static BATCH: RefCell<Batch> = RefCell::new(Batch::default());
}

/// Runs `f` with the current batch and the host as its source.
pub(super) fn with<R>(f: impl FnOnce(&mut Batch, &mut Host) -> R) -> R {
    BATCH.with(|b| f(&mut b.borrow_mut(), &mut Host))
}

/// Whether `state` left the batch for the rest of it ([`go_direct`]).
pub(super) fn is_direct(state: wit::StateId) -> bool {
    BATCH.with(|b| {
        b.borrow()
            .direct
            .get(state as usize)
            .copied()
            .unwrap_or(false)
    })
}

/// Takes `state` out of the batch for the rest of it, handing over what the batch logged so
/// far first, so that the host holds every earlier write when the state's calls go to it one
/// at a time. For a write with its own time-to-live (`set_with_ttl`): the host decides when
/// it expires, which later reads of the batch must see.
pub(super) fn go_direct(state: wit::StateId) {
    let pending = BATCH.with(|b| {
        let mut b = b.borrow_mut();
        b.leave(state);
        b.take_pending()
    });
    hand_over(pending);
}

/// Hands the batch's writes to the host and forgets the batch. A write the host refuses
/// traps the call: the host then discards the batch's writes and handles its events one at a
/// time, where the refusal meets the event it belongs to (a quota, for example).
pub(crate) fn finish() {
    let pending = BATCH.with(|b| b.borrow_mut().take_writes());
    hand_over(pending);
}

/// Hands `writes` to the host; traps the call if it refuses one.
fn hand_over((writes, values): (Vec<wit::StateWrite>, wit::PackedValues)) {
    if writes.is_empty() {
        return;
    }
    if let Err((at, error)) = wit::write_batch(&writes, &values) {
        let event = writes.get(at as usize).map_or(0, |w| w.event);
        panic!(
            "eddy-sdk: the host refused the state write of event {event} (write {at} of the batch): {}",
            StateError::from(error)
        );
    }
}

/// Forgets the batch without writing it (the batch ended with a panic).
pub(crate) fn forget() {
    BATCH.with(|b| drop(b.borrow_mut().take_writes()));
}

#[cfg(test)]
mod tests;
