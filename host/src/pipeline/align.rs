//! Ordering broadcast updates among keyed events by stream timestamp.
//!
//! The rule plugin authors rely on: a keyed event sees every broadcast update its broadcast
//! stream stored before the keyed event's stream stored it (ties: the update first), and none
//! stored later. Before a keyed batch is admitted, each broadcast input reads every update
//! stored up to the batch's newest timestamp (`BroadcastInput::catch_up`); `merge` then cuts
//! the batch where updates fall between its events. Timestamps are stored with the messages, so
//! a replay after a crash interleaves exactly as the first run did.

use async_nats::jetstream;

use super::window::{Arrival, BroadcastMsg};
use crate::transport::BroadcastInput;

/// A run of keyed arrivals, or of broadcast updates, in the order the plugin sees them.
pub(crate) enum Segment {
    Keyed(Vec<(jetstream::Message, Arrival)>),
    Broadcast(Vec<BroadcastMsg>),
}

/// When the stream stored `m` (ns since the Unix epoch) and its sequence.
pub(crate) fn stored(m: &jetstream::Message) -> (u64, u64) {
    m.info()
        .map(|i| (i.published.unix_timestamp_nanos() as u64, i.stream_sequence))
        .unwrap_or((0, 0))
}

/// A broadcast message of input `input`, with its sequence and timestamp.
pub(crate) fn broadcast_msg(input: &str, msg: jetstream::Message) -> BroadcastMsg {
    let (stored_ns, seq) = stored(&msg);
    BroadcastMsg {
        input: input.to_string(),
        seq,
        stored_ns,
        msg,
    }
}

/// Takes, from the front of every buffer, the updates stored at or before `ns`, oldest first
/// (ties: in input order).
pub(crate) fn take_until(broadcasts: &mut [BroadcastInput], ns: u64) -> Vec<BroadcastMsg> {
    let mut out = Vec::new();
    loop {
        let next = broadcasts
            .iter()
            .enumerate()
            .filter_map(|(i, b)| b.buffer.front().map(|m| (stored(m).0, i)))
            .filter(|(t, _)| *t <= ns)
            .min();
        let Some((_, i)) = next else {
            return out;
        };
        if let Some(m) = broadcasts[i].buffer.pop_front() {
            out.push(broadcast_msg(&broadcasts[i].name, m));
        }
    }
}

/// Interleaves the buffered broadcast updates with a keyed batch.
pub(crate) fn merge(
    arrivals: Vec<(jetstream::Message, Arrival)>,
    broadcasts: &mut [BroadcastInput],
) -> Vec<Segment> {
    let mut segments = Vec::new();
    let mut keyed = Vec::new();
    for (msg, a) in arrivals {
        let updates = take_until(broadcasts, a.stored_ns);
        if !updates.is_empty() {
            if !keyed.is_empty() {
                segments.push(Segment::Keyed(std::mem::take(&mut keyed)));
            }
            segments.push(Segment::Broadcast(updates));
        }
        keyed.push((msg, a));
    }
    if !keyed.is_empty() {
        segments.push(Segment::Keyed(keyed));
    }
    segments
}
