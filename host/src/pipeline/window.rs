//! The in-flight window: events between the input and the plugin, waiting for their lookups,
//! released to the plugin in the pipeline's order, and the input position that follows.
//!
//! Every message read from the keyed input takes a slot, in arrival order; broadcast updates
//! take slots too, where the timestamp order puts them. A slot is *waiting* while its lookups
//! run, *ready* once they are answered (at once without lookups), *released* once handed to
//! the plugin. Release rules:
//!
//! - `ordered`: the ready slots at the front, in order: outputs leave in input order.
//! - `unordered`: any ready keyed slot whose key has no earlier unreleased event and that has
//!   no unreleased broadcast update before it: outputs leave as lookups complete, yet events of
//!   one key, and events and broadcast updates, never overtake each other.
//!
//! The input position is the last slot of the released prefix: every event up to it is in the
//! state. Events released beyond it (unordered) are listed by [`Window::done_after`] so a
//! checkpoint can record them and a replay skip them.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use async_nats::jetstream;
use futures::{FutureExt, Stream, StreamExt};
use tokio::sync::mpsc;

use super::route::Source;
use crate::config::OrderMode;
use crate::engine::{Event, LookupRequest};
use crate::lookup::{Resolved, Verdict};

/// One message of the keyed input, on its way through.
#[derive(Clone)]
pub(crate) struct Arrival {
    /// Stream sequence.
    pub seq: u64,
    /// When the stream stored it, ns since the Unix epoch (orders it among broadcast
    /// updates).
    pub stored_ns: u64,
    /// For routing and dead letters.
    pub source: Arc<Source>,
    /// What it carries.
    pub body: Body,
}

/// What an arrival carries.
#[derive(Clone)]
pub(crate) enum Body {
    /// An event for the plugin.
    Event {
        /// The event.
        event: Event,
        /// Its key group.
        key_group: u16,
        /// The lookups the pipeline file plans for it (`lookup.<store>.plan`).
        plan: Vec<LookupRequest>,
    },
    /// A message whose key could not be extracted: dead-lettered with this reason.
    BadKey(String),
    /// A message the restored checkpoint already reflects: skipped.
    Done,
}

/// One message of a broadcast input.
#[derive(Clone)]
pub(crate) struct BroadcastMsg {
    /// The input's name.
    pub input: String,
    /// Stream sequence.
    pub seq: u64,
    /// When the stream stored it, ns since the Unix epoch.
    pub stored_ns: u64,
    /// The message.
    pub msg: jetstream::Message,
}

/// What a slot holds.
pub(crate) enum Item {
    Keyed(Arrival),
    Broadcast(Vec<BroadcastMsg>),
}

/// What the window hands to the plugin, in order.
#[derive(Clone)]
pub(crate) enum Released {
    /// Keyed arrivals with their lookups.
    Keyed(Vec<(Arrival, Resolved)>),
    /// Broadcast updates.
    Broadcast(Vec<BroadcastMsg>),
}

#[derive(PartialEq, Eq)]
enum Phase {
    Waiting,
    Ready,
    Released,
}

struct Slot<A> {
    id: u64,
    /// Keyed: stream sequence and the message's ack handle (acknowledged at a checkpoint).
    keyed: Option<(u64, A)>,
    /// Keyed events: the key (unordered release).
    key: Option<Vec<u8>>,
    item: Option<Item>,
    resolved: Option<Resolved>,
    phase: Phase,
}

/// See the module documentation. `A` is what acknowledges a keyed message (the message).
pub(crate) struct Window<A> {
    mode: OrderMode,
    /// Most keyed events waiting on lookups.
    waiting_capacity: usize,
    /// Most keyed events ready and not yet released.
    ready_capacity: usize,
    slots: VecDeque<Slot<A>>,
    next_id: u64,
    waiting: usize,
    keyed_unreleased: usize,
    tx: mpsc::UnboundedSender<(u64, Resolved)>,
    rx: mpsc::UnboundedReceiver<(u64, Resolved)>,
    /// The last keyed slot of the released prefix.
    position: Option<(u64, A)>,
}

impl<A> Window<A> {
    /// A window that admits keyed events while fewer than `waiting_capacity` wait on lookups
    /// and fewer than `ready_capacity` are ready for the plugin. The two are apart so that
    /// events ready for the plugin (while it runs the group before) do not hold back the
    /// lookups of the events after them: `lookups.capacity` bounds what waits on the stores.
    pub(crate) fn new(
        mode: OrderMode,
        waiting_capacity: usize,
        ready_capacity: usize,
    ) -> Window<A> {
        let (tx, rx) = mpsc::unbounded_channel();
        Window {
            mode,
            waiting_capacity: waiting_capacity.max(1),
            ready_capacity: ready_capacity.max(1),
            slots: VecDeque::new(),
            next_id: 0,
            waiting: 0,
            keyed_unreleased: 0,
            tx,
            rx,
            position: None,
        }
    }

    /// Whether more keyed events fit: fewer than the capacities wait on lookups and are
    /// ready. An admitted batch may overshoot them; the next waits.
    pub(crate) fn has_room(&self) -> bool {
        self.waiting < self.waiting_capacity
            && self.keyed_unreleased - self.waiting < self.ready_capacity
    }

    /// Whether nothing is in the window.
    pub(crate) fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Whether keyed events are in the window.
    pub(crate) fn has_keyed(&self) -> bool {
        self.keyed_unreleased > 0
    }

    /// Slots waiting on lookups.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting
    }

    fn push(&mut self, keyed: Option<(u64, A)>, item: Item, phase: Phase) -> u64 {
        self.next_id += 1;
        let key = match (&item, self.mode) {
            (Item::Keyed(a), OrderMode::Unordered) => match &a.body {
                Body::Event { event, .. } => Some(event.key.clone()),
                _ => None,
            },
            _ => None,
        };
        if matches!(item, Item::Keyed(_)) {
            self.keyed_unreleased += 1;
        }
        if phase == Phase::Waiting {
            self.waiting += 1;
        }
        self.slots.push_back(Slot {
            id: self.next_id,
            keyed,
            key,
            item: Some(item),
            resolved: (phase == Phase::Ready).then(Resolved::default),
            phase,
        });
        self.next_id
    }

    /// Adds a keyed arrival that needs no lookups (`msg` is acknowledged once it is in a
    /// checkpoint).
    pub(crate) fn push_ready(&mut self, msg: A, arrival: Arrival) {
        let seq = arrival.seq;
        self.push(Some((seq, msg)), Item::Keyed(arrival), Phase::Ready);
    }

    /// Adds broadcast updates (ready at once; a barrier in unordered mode).
    pub(crate) fn push_broadcast(&mut self, msgs: Vec<BroadcastMsg>) {
        if !msgs.is_empty() {
            self.push(None, Item::Broadcast(msgs), Phase::Ready);
        }
    }

    /// Adds a keyed arrival that waits on its lookups; its answer comes through
    /// [`Window::await_lookups`] with the returned slot id.
    pub(crate) fn push_waiting(&mut self, msg: A, arrival: Arrival) -> u64 {
        let seq = arrival.seq;
        self.push(Some((seq, msg)), Item::Keyed(arrival), Phase::Waiting)
    }

    /// Runs `resolve` as one task for the waiting slots `ids`: it yields each slot's
    /// `Resolved` (with its index in `ids`) once that slot's lookups are answered. One task
    /// and one round of store requests per admitted batch, not per event. A slot the stream
    /// ends without answering (a bug, or a panic in it) is answered with a dead letter, so it
    /// never holds the window.
    pub(crate) fn await_lookups(
        &self,
        ids: Vec<u64>,
        resolve: impl Stream<Item = (usize, Resolved)> + Send + 'static,
    ) {
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let mut answered = vec![false; ids.len()];
            let mut resolve = std::pin::pin!(resolve);
            loop {
                match std::panic::AssertUnwindSafe(resolve.next())
                    .catch_unwind()
                    .await
                {
                    Ok(Some((i, resolved))) => {
                        if let (Some(&id), Some(done)) = (ids.get(i), answered.get_mut(i)) {
                            *done = true;
                            let _ = tx.send((id, resolved));
                        }
                    }
                    Ok(None) => break,
                    Err(_) => {
                        tracing::error!(
                            "a lookup resolution panicked; its events are dead-lettered"
                        );
                        break;
                    }
                }
            }
            for (&id, _) in ids.iter().zip(answered).filter(|(_, done)| !done) {
                let resolved = Resolved {
                    verdict: Verdict::DeadLetter(
                        "the lookups of this event were not answered (the resolution failed); replaying the event from the dead-letter subject asks again".into(),
                    ),
                    ..Resolved::default()
                };
                let _ = tx.send((id, resolved));
            }
        });
    }

    /// Waits for the next lookup answer (pending forever when none is waiting).
    pub(crate) async fn completion(&mut self) -> (u64, Resolved) {
        match self.rx.recv().await {
            Some(c) => c,
            // The window holds a sender, so the channel never closes.
            None => std::future::pending().await,
        }
    }

    /// Records a lookup answer (from [`Window::completion`]) and every other one that has
    /// already arrived, so the events they release go to the plugin together rather than one
    /// call each.
    pub(crate) fn record(&mut self, (id, resolved): (u64, Resolved)) {
        self.complete(id, resolved);
        self.complete_arrived();
    }

    fn complete_arrived(&mut self) {
        while let Ok((id, resolved)) = self.rx.try_recv() {
            self.complete(id, resolved);
        }
    }

    /// Records a lookup answer.
    pub(crate) fn complete(&mut self, id: u64, resolved: Resolved) {
        let Some(front) = self.slots.front().map(|s| s.id) else {
            return;
        };
        let Some(slot) = id
            .checked_sub(front)
            .and_then(|i| self.slots.get_mut(i as usize))
        else {
            return;
        };
        if slot.phase == Phase::Waiting {
            slot.phase = Phase::Ready;
            slot.resolved = Some(resolved);
            self.waiting -= 1;
        }
    }

    /// The next group to hand to the plugin: up to `max` keyed events, or one broadcast
    /// batch, per the window's order. None when nothing can be released yet.
    pub(crate) fn take_released(&mut self, max: usize) -> Option<Released> {
        let picked = match self.mode {
            OrderMode::Ordered => self.pick_ordered(max),
            OrderMode::Unordered => self.pick_unordered(max),
        };
        let released = match picked {
            Pick::None => None,
            Pick::Broadcast(i) => {
                let slot = &mut self.slots[i];
                slot.phase = Phase::Released;
                match slot.item.take() {
                    Some(Item::Broadcast(msgs)) => Some(Released::Broadcast(msgs)),
                    _ => None,
                }
            }
            Pick::Keyed(indices) => {
                let mut out = Vec::with_capacity(indices.len());
                for i in indices {
                    let slot = &mut self.slots[i];
                    slot.phase = Phase::Released;
                    self.keyed_unreleased -= 1;
                    if let (Some(Item::Keyed(a)), Some(r)) =
                        (slot.item.take(), slot.resolved.take())
                    {
                        out.push((a, r));
                    }
                }
                Some(Released::Keyed(out))
            }
        };
        while self
            .slots
            .front()
            .is_some_and(|s| s.phase == Phase::Released)
        {
            if let Some(slot) = self.slots.pop_front()
                && let Some(k) = slot.keyed
            {
                self.position = Some(k);
            }
        }
        released
    }

    fn pick_ordered(&self, max: usize) -> Pick {
        let mut keyed = Vec::new();
        for (i, s) in self.slots.iter().enumerate() {
            match (&s.phase, &s.item) {
                (Phase::Released, _) => continue,
                (Phase::Ready, Some(Item::Keyed(_))) if keyed.len() < max => keyed.push(i),
                (Phase::Ready, Some(Item::Broadcast(_))) if keyed.is_empty() => {
                    return Pick::Broadcast(i);
                }
                _ => break,
            }
        }
        if keyed.is_empty() {
            Pick::None
        } else {
            Pick::Keyed(keyed)
        }
    }

    fn pick_unordered(&self, max: usize) -> Pick {
        let mut keyed = Vec::new();
        let mut blocked: HashSet<&[u8]> = HashSet::new();
        let mut first_unreleased = true;
        for (i, s) in self.slots.iter().enumerate() {
            if s.phase == Phase::Released {
                continue;
            }
            match &s.item {
                Some(Item::Broadcast(_)) => {
                    if first_unreleased {
                        return Pick::Broadcast(i);
                    }
                    // A barrier: nothing after it may overtake it.
                    break;
                }
                Some(Item::Keyed(_)) => {
                    let free = s.key.as_deref().is_none_or(|k| !blocked.contains(k));
                    if s.phase == Phase::Ready && free && keyed.len() < max {
                        keyed.push(i);
                    } else if let Some(k) = s.key.as_deref() {
                        blocked.insert(k);
                    }
                }
                None => {}
            }
            first_unreleased = false;
        }
        if keyed.is_empty() {
            Pick::None
        } else {
            Pick::Keyed(keyed)
        }
    }

    /// The input position: the sequence (and message, to acknowledge) of the last keyed
    /// slot of the released prefix. None until one has been released.
    pub(crate) fn position(&self) -> Option<&(u64, A)> {
        self.position.as_ref()
    }

    /// Keyed sequences released beyond the position (unordered mode).
    pub(crate) fn done_after(&self) -> Vec<u64> {
        self.slots
            .iter()
            .filter(|s| s.phase == Phase::Released)
            .filter_map(|s| s.keyed.as_ref().map(|(seq, _)| *seq))
            .collect()
    }
}

enum Pick {
    None,
    Broadcast(usize),
    Keyed(Vec<usize>),
}
