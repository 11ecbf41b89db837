//! The packed crossing of `packed-handler` (`wit/eddy.wit`, 0.2.2): a keyed batch's events
//! written into three flat lists for `handle-packed`, and its packed outcomes read back into
//! [`Outcome`]s.
//!
//! Why: `handler.handle(list<event>)` makes wasmtime call the plugin's `realloc` for every
//! key, subject, header and payload it copies in, and read a list per output back; packed, a
//! batch crosses as a few lists each way (measured in `docs/BENCHMARKS.md`, "Packed batches").
//!
//! Owns: the layout of both directions, the piece lists (bytes and where each piece ends) the
//! `keyed-state` batch calls use as well, and the checks on what a plugin returns (ends that
//! fit, counts that add up, UTF-8 where the contract says text): a plugin's output is untrusted.

use super::bindings::exports::eddy::plugin::packed_handler::{
    PackedEvent, PackedEvents, PackedOutcome, PackedOutcomes,
};
use super::{Event, Outcome, Output};

/// Packs batches for `handle-packed` into lists reused from call to call.
pub(crate) struct Packer {
    events: PackedEvents,
}

impl Default for Packer {
    fn default() -> Self {
        Packer {
            events: PackedEvents {
                bytes: Vec::new(),
                ends: Vec::new(),
                events: Vec::new(),
            },
        }
    }
}

impl Packer {
    /// `events` as `handle-packed` takes them.
    pub(crate) fn pack(&mut self, events: &[Event]) -> &PackedEvents {
        let packed = &mut self.events;
        packed.bytes.clear();
        packed.ends.clear();
        packed.events.clear();
        for e in events {
            push_piece(&mut packed.bytes, &mut packed.ends, &e.key);
            push_piece(&mut packed.bytes, &mut packed.ends, e.subject.as_bytes());
            for (name, value) in &e.headers {
                push_piece(&mut packed.bytes, &mut packed.ends, name.as_bytes());
                push_piece(&mut packed.bytes, &mut packed.ends, value.as_bytes());
            }
            push_piece(&mut packed.bytes, &mut packed.ends, &e.payload);
            packed.events.push(PackedEvent {
                headers: e.headers.len() as u32,
                timestamp_ms: e.timestamp_ms,
                sequence: e.sequence,
            });
        }
        packed
    }
}

/// Appends `piece` to a packed list: its bytes to `bytes`, where it ends to `ends`.
pub(crate) fn push_piece(bytes: &mut Vec<u8>, ends: &mut Vec<u32>, piece: &[u8]) {
    bytes.extend_from_slice(piece);
    // A wasm32 plugin cannot take 4 GiB: past that, the call fails when the bytes are copied
    // in, before these ends are read.
    ends.push(bytes.len() as u32);
}

/// Reads pieces off a packed list in order, checking each end: what a plugin hands over is
/// untrusted.
pub(crate) struct Pieces<'a> {
    bytes: &'a [u8],
    ends: std::slice::Iter<'a, u32>,
    start: usize,
}

impl<'a> Pieces<'a> {
    pub(crate) fn new(bytes: &'a [u8], ends: &'a [u32]) -> Self {
        Pieces {
            bytes,
            ends: ends.iter(),
            start: 0,
        }
    }

    /// The next piece; `what` names it in the error.
    pub(crate) fn next(&mut self, what: &str) -> Result<&'a [u8], String> {
        let end = *self
            .ends
            .next()
            .ok_or_else(|| format!("{what}: no piece left in `ends`"))? as usize;
        let piece = self.bytes.get(self.start..end).ok_or_else(|| {
            format!(
                "{what}: piece {}..{end} outside `bytes` ({} bytes)",
                self.start,
                self.bytes.len()
            )
        })?;
        self.start = end;
        Ok(piece)
    }

    fn text(&mut self, what: &str) -> Result<String, String> {
        let piece = self.next(what)?;
        String::from_utf8(piece.to_vec()).map_err(|e| format!("{what} is not UTF-8: {e}"))
    }
}

/// The outcomes `handle-packed` returned, or what does not add up in them.
pub(crate) fn outcomes(packed: &PackedOutcomes) -> Result<Vec<Outcome>, String> {
    let mut pieces = Pieces::new(&packed.bytes, &packed.ends);
    let mut outputs = packed.outputs.iter();
    let mut outcomes = Vec::with_capacity(packed.outcomes.len());
    for (i, outcome) in packed.outcomes.iter().enumerate() {
        outcomes.push(match outcome {
            PackedOutcome::Emit(n) => {
                let mut emitted = Vec::with_capacity((*n as usize).min(packed.outputs.len()));
                for _ in 0..*n {
                    let output = outputs.next().ok_or_else(|| {
                        format!("outcome {i} emits more outputs than `outputs` holds")
                    })?;
                    let subject = match output.has_subject {
                        true => Some(pieces.text("an output's subject")?),
                        false => None,
                    };
                    let headers = (0..output.headers)
                        .map(|_| {
                            Ok((
                                pieces.text("a header name")?,
                                pieces.text("a header value")?,
                            ))
                        })
                        .collect::<Result<_, String>>()?;
                    let payload = pieces.next("an output's payload")?.to_vec();
                    emitted.push(Output {
                        subject,
                        headers,
                        payload,
                    });
                }
                Outcome::Emit(emitted)
            }
            PackedOutcome::Drop => Outcome::Drop,
            PackedOutcome::Reject => Outcome::Reject(pieces.text("a reject reason")?),
        });
    }
    if outputs.next().is_some() {
        return Err(format!(
            "`outputs` holds {} entries, more than the outcomes emit",
            packed.outputs.len()
        ));
    }
    if pieces.ends.next().is_some() {
        return Err(format!(
            "`ends` holds {} pieces, more than the outcomes use",
            packed.ends.len()
        ));
    }
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::super::bindings::exports::eddy::plugin::packed_handler::PackedOutput;
    use super::*;

    /// Packs `outcomes` as a plugin would.
    fn pack(outcomes: &[Outcome]) -> PackedOutcomes {
        let mut p = PackedOutcomes {
            bytes: Vec::new(),
            ends: Vec::new(),
            outcomes: Vec::new(),
            outputs: Vec::new(),
        };
        let piece = |p: &mut PackedOutcomes, b: &[u8]| {
            p.bytes.extend_from_slice(b);
            p.ends.push(p.bytes.len() as u32);
        };
        for o in outcomes {
            match o {
                Outcome::Emit(outputs) => {
                    p.outcomes.push(PackedOutcome::Emit(outputs.len() as u32));
                    for out in outputs {
                        p.outputs.push(PackedOutput {
                            has_subject: out.subject.is_some(),
                            headers: out.headers.len() as u32,
                        });
                        if let Some(s) = &out.subject {
                            piece(&mut p, s.as_bytes());
                        }
                        for (n, v) in &out.headers {
                            piece(&mut p, n.as_bytes());
                            piece(&mut p, v.as_bytes());
                        }
                        piece(&mut p, &out.payload);
                    }
                }
                Outcome::Drop => p.outcomes.push(PackedOutcome::Drop),
                Outcome::Reject(r) => {
                    p.outcomes.push(PackedOutcome::Reject);
                    piece(&mut p, r.as_bytes());
                }
            }
        }
        p
    }

    fn output(subject: Option<&str>, headers: &[(&str, &str)], payload: &[u8]) -> Output {
        Output {
            subject: subject.map(str::to_string),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            payload: payload.to_vec(),
        }
    }

    fn sample() -> Vec<Outcome> {
        vec![
            Outcome::Emit(vec![output(None, &[], b"{}")]),
            Outcome::Drop,
            Outcome::Emit(vec![]),
            Outcome::Reject("no: bad \u{e9}vent".into()),
            Outcome::Emit(vec![
                output(Some("alerts.x"), &[("A", "1"), ("A", "")], b""),
                output(Some(""), &[], &[0, 255]),
            ]),
        ]
    }

    #[test]
    fn outcomes_read_back_as_packed() {
        // The generated types have no `PartialEq`: compared by their debug form.
        let read = outcomes(&pack(&sample())).expect("well formed");
        assert_eq!(format!("{read:?}"), format!("{:?}", sample()));
        assert!(outcomes(&pack(&[])).expect("well formed").is_empty());
    }

    #[test]
    fn outcomes_that_do_not_add_up_are_refused_with_what_is_wrong() {
        let refused = |edit: fn(&mut PackedOutcomes)| {
            let mut p = pack(&sample());
            edit(&mut p);
            outcomes(&p).expect_err("malformed")
        };
        assert!(refused(|p| p.outputs.truncate(2)).contains("more outputs than"));
        assert!(refused(|p| p.outputs.push(p.outputs[0])).contains("more than the outcomes emit"));
        assert!(refused(|p| *p.ends.last_mut().expect("pieces") += 1).contains("outside `bytes`"));
        assert!(
            refused(|p| p.ends.push(p.bytes.len() as u32)).contains("more than the outcomes use")
        );
        assert!(
            refused(|p| {
                p.ends.pop();
            })
            .contains("no piece left")
        );
        // An end before the previous one.
        assert!(refused(|p| p.ends[1] = 0).contains("outside `bytes`"));
        assert!(
            refused(|p| {
                let reason = p.bytes.windows(3).position(|w| w == b"no:");
                let reason = reason.expect("the reject reason is packed");
                p.bytes[reason] = 0xff;
            })
            .contains("a reject reason is not UTF-8")
        );
    }

    #[test]
    fn events_pack_as_the_contract_says() {
        let event = |key: &[u8], headers: &[(&str, &str)], payload: &[u8]| Event {
            key: key.to_vec(),
            subject: "in.a".into(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            payload: payload.to_vec(),
            timestamp_ms: 7,
            sequence: 9,
        };
        let mut packer = Packer::default();
        // Twice: the second batch must not keep anything of the first.
        packer.pack(&[event(b"x", &[], b"long payload")]);
        let p = packer.pack(&[event(b"k", &[("H", "v")], b"{}"), event(b"", &[], b"")]);
        assert_eq!(p.bytes, b"kin.aHv{}in.a");
        assert_eq!(p.ends, vec![1, 5, 6, 7, 9, 9, 13, 13]);
        assert_eq!(p.events.len(), 2);
        assert_eq!(
            (
                p.events[0].headers,
                p.events[1].headers,
                p.events[1].sequence
            ),
            (1, 0, 9)
        );
    }
}
