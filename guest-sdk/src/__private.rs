//! Runtime support for [`export!`](crate::export). Not a stable API.

use std::cell::{Cell, RefCell};

use crate::{
    BroadcastEvent, Config, Event, LookupRequest, Outcome, Processor, VisitAction, VisitedEntry,
};

pub use crate::wit::eddy::plugin::types::{Event as WitEvent, Outcome as WitOutcome};
pub use crate::wit::exports::eddy::plugin::broadcast_handler::{
    BroadcastEvent as WitBroadcastEvent, Guest as BroadcastGuest,
};
pub use crate::wit::exports::eddy::plugin::handler::Guest;
pub use crate::wit::exports::eddy::plugin::keyed_visitor::{
    Guest as VisitorGuest, VisitAction as WitVisitAction, VisitedEntry as WitVisitedEntry,
};
pub use crate::wit::exports::eddy::plugin::lookup_planner::{
    Guest as PlannerGuest, LookupRequest as WitLookupRequest,
};
pub use crate::wit::exports::eddy::plugin::migrator::Guest as MigratorGuest;
pub use crate::wit::exports::eddy::plugin::packed_handler::{
    Guest as PackedGuest, PackedEvents as WitPackedEvents, PackedOutcomes as WitPackedOutcomes,
};
pub use std::string::String;
pub use std::vec::Vec;

/// The reason every event is rejected with when `init` has not succeeded.
pub const NOT_INITIALISED: &str = "plugin not initialised";

/// The reason broadcast events are rejected with by a processor that does not handle them.
pub const NO_BROADCAST: &str = "this plugin does not handle broadcast events: implement Processor::process_broadcast, or remove the pipeline's [broadcast] inputs";

/// A [`Processor`] with its type erased, so one slot can hold whichever type was exported.
trait ErasedProcessor {
    fn process(&mut self, event: &Event) -> Outcome;
    fn process_broadcast(&mut self, event: &BroadcastEvent) -> Result<(), String>;
    fn plan_lookups(&self, event: &Event) -> Vec<LookupRequest>;
    fn visit(&mut self, tag: &str, state: &str, entry: &VisitedEntry) -> VisitAction;
    fn migrate(&mut self, previous_version: &str) -> Result<(), String>;
}

impl<P: Processor> ErasedProcessor for P {
    fn process(&mut self, event: &Event) -> Outcome {
        Processor::process(self, event)
    }
    fn process_broadcast(&mut self, event: &BroadcastEvent) -> Result<(), String> {
        Processor::process_broadcast(self, event)
    }
    fn plan_lookups(&self, event: &Event) -> Vec<LookupRequest> {
        Processor::plan_lookups(self, event)
    }
    fn visit(&mut self, tag: &str, state: &str, entry: &VisitedEntry) -> VisitAction {
        Processor::visit(self, tag, state, entry)
    }
    fn migrate(&mut self, previous_version: &str) -> Result<(), String> {
        Processor::migrate(self, previous_version)
    }
}

/// Runs `f` with the processor built by `init`, or returns `not_ready` if there is none.
fn with_processor<T>(
    not_ready: impl FnOnce() -> T,
    f: impl FnOnce(&mut dyn ErasedProcessor) -> T,
) -> T {
    INSTANCE.with(|slot| match slot.borrow_mut().as_mut() {
        Some(p) => f(p.as_mut()),
        None => not_ready(),
    })
}

thread_local! {
    /// The processor built by `init`, if it succeeded.
    static INSTANCE: RefCell<Option<Box<dyn ErasedProcessor>>> = const { RefCell::new(None) };
    /// The index in the current batch of the event being processed, while one is.
    static CURRENT_EVENT: Cell<Option<u32>> = const { Cell::new(None) };
}

/// The index of the event being processed, for keyed state calls.
pub(crate) fn current_event() -> Option<u32> {
    CURRENT_EVENT.with(Cell::get)
}

/// The exported `init`: builds the processor from the configuration and keeps it.
pub fn init<P: Processor>(config: String) -> Result<(), String> {
    // A failed re-initialisation must not leave the previous processor running.
    INSTANCE.with(|slot| *slot.borrow_mut() = None);
    let processor = P::init(&Config::new(config))?;
    INSTANCE.with(|slot| *slot.borrow_mut() = Some(Box::new(processor)));
    Ok(())
}

/// Resets the current event when a batch ends, even if a processor panics.
struct BatchGuard;

impl Drop for BatchGuard {
    fn drop(&mut self) {
        CURRENT_EVENT.with(|current| current.set(None));
        crate::broadcast::forget_batch_reads();
        crate::state::forget_batch();
    }
}

/// Where a batch's outcomes go: the `list<outcome>` of `handle`, or the packed lists of
/// `handle-packed`.
trait Outcomes {
    fn with_capacity(count: usize) -> Self;
    fn push(&mut self, outcome: Outcome);
}

impl Outcomes for Vec<WitOutcome> {
    fn with_capacity(count: usize) -> Self {
        Vec::with_capacity(count)
    }
    fn push(&mut self, outcome: Outcome) {
        Vec::push(self, outcome.into());
    }
}

impl Outcomes for WitPackedOutcomes {
    fn with_capacity(count: usize) -> Self {
        WitPackedOutcomes {
            bytes: Vec::new(),
            ends: Vec::with_capacity(count),
            outcomes: Vec::with_capacity(count),
            outputs: Vec::with_capacity(count),
        }
    }
    fn push(&mut self, outcome: Outcome) {
        outcome.pack_into(self);
    }
}

/// The exported `handle`: one outcome per event, in order.
pub fn handle(events: Vec<WitEvent>) -> Vec<WitOutcome> {
    let count = events.len();
    let mut events = events.into_iter();
    run_batch(count, |event| {
        if let Some(next) = events.next() {
            *event = Event::from(next);
        }
    })
}

/// The exported `handle-packed`: as [`handle`], the events read from their packed lists and
/// the outcomes packed.
pub fn handle_packed(events: WitPackedEvents) -> WitPackedOutcomes {
    let mut unpacker = crate::event::Unpacker::new(&events);
    let mut metas = events.events.iter();
    run_batch(events.events.len(), |event| {
        if let Some(meta) = metas.next() {
            unpacker.next_into(event, meta);
        }
    })
}

/// Runs the processor on `count` events, each put into one reused [`Event`] by `next`, with
/// keyed state pointed at it: one outcome per event, in order.
fn run_batch<O: Outcomes>(count: usize, mut next: impl FnMut(&mut Event)) -> O {
    let mut outcomes = O::with_capacity(count);
    let ran = with_processor(
        || false,
        |processor| {
            let _guard = BatchGuard;
            let mut event = Event::default();
            for index in (0u32..).take(count) {
                CURRENT_EVENT.with(|current| current.set(Some(index)));
                next(&mut event);
                outcomes.push(processor.process(&event));
            }
            CURRENT_EVENT.with(|current| current.set(None));
            crate::state::finish_batch();
            true
        },
    );
    if !ran {
        for _ in 0..count {
            outcomes.push(Outcome::reject(NOT_INITIALISED));
        }
    }
    outcomes
}

/// The exported `handle-broadcast`: one result per broadcast event, in order.
pub fn handle_broadcast(events: Vec<WitBroadcastEvent>) -> Vec<Result<(), String>> {
    let count = events.len();
    with_processor(
        || vec![Err(NOT_INITIALISED.to_owned()); count],
        |processor| {
            events
                .into_iter()
                .map(|e| processor.process_broadcast(&BroadcastEvent::from(e)))
                .collect()
        },
    )
}

/// The exported `prepare`: the lookups each event needs.
pub fn prepare(events: Vec<WitEvent>) -> Vec<Vec<WitLookupRequest>> {
    let count = events.len();
    with_processor(
        || vec![Vec::new(); count],
        |processor| {
            events
                .into_iter()
                .map(|e| {
                    processor
                        .plan_lookups(&Event::from(e))
                        .into_iter()
                        .map(WitLookupRequest::from)
                        .collect()
                })
                .collect()
        },
    )
}

/// The exported `visit`: one action per visited entry.
pub fn visit(tag: String, state: String, entries: Vec<WitVisitedEntry>) -> Vec<WitVisitAction> {
    let count = entries.len();
    with_processor(
        || vec![WitVisitAction::Keep; count],
        |processor| {
            entries
                .into_iter()
                .map(|e| processor.visit(&tag, &state, &VisitedEntry::from(e)).into())
                .collect()
        },
    )
}

/// The exported `migrate`.
pub fn migrate(previous_version: String) -> Result<(), String> {
    with_processor(
        || Err(NOT_INITIALISED.to_owned()),
        |processor| processor.migrate(&previous_version),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Output;

    /// Echoes the key and the index the state layer would use.
    struct Echo {
        prefix: String,
    }

    impl Processor for Echo {
        fn init(config: &Config) -> Result<Self, String> {
            match config.get::<String>("/prefix")? {
                Some(prefix) if prefix == "fail" => Err("asked to fail".to_owned()),
                prefix => Ok(Echo {
                    prefix: prefix.unwrap_or_default(),
                }),
            }
        }

        fn process(&mut self, event: &Event) -> Outcome {
            match event.key() {
                b"drop" => Outcome::Drop,
                b"reject" => Outcome::reject("no"),
                key => Outcome::emit_one(Output::new(format!(
                    "{}{}@{}",
                    self.prefix,
                    String::from_utf8_lossy(key),
                    current_event().map_or(-1, i64::from)
                ))),
            }
        }
    }

    fn wit_event(key: &str) -> WitEvent {
        WitEvent {
            key: key.as_bytes().to_vec(),
            subject: "in".to_owned(),
            headers: Vec::new(),
            payload: Vec::new(),
            timestamp_ms: 0,
            sequence: 0,
        }
    }

    /// Reads packed outcomes back as the host does (`host/crates/engine/src/packed.rs`).
    fn unpacked(p: WitPackedOutcomes) -> Vec<WitOutcome> {
        use crate::wit::eddy::plugin::types::Output as WitOutput;
        use crate::wit::exports::eddy::plugin::packed_handler::PackedOutcome;
        let mut ends = p.ends.iter().map(|e| *e as usize);
        let mut start = 0;
        let mut piece = || {
            let end = ends.next().expect("a piece");
            let piece = p.bytes[start..end].to_vec();
            start = end;
            piece
        };
        let text = |b: Vec<u8>| String::from_utf8(b).expect("UTF-8");
        let mut outputs = p.outputs.iter();
        let read = p
            .outcomes
            .iter()
            .map(|o| match o {
                PackedOutcome::Emit(n) => WitOutcome::Emit(
                    (0..*n)
                        .map(|_| {
                            let o = outputs.next().expect("an output");
                            WitOutput {
                                subject: o.has_subject.then(|| text(piece())),
                                headers: (0..o.headers)
                                    .map(|_| (text(piece()), text(piece())))
                                    .collect(),
                                payload: piece(),
                            }
                        })
                        .collect(),
                ),
                PackedOutcome::Drop => WitOutcome::Drop,
                PackedOutcome::Reject => WitOutcome::Reject(text(piece())),
            })
            .collect();
        assert!(
            outputs.next().is_none() && ends.next().is_none(),
            "all read"
        );
        read
    }

    fn payloads(outcomes: &[WitOutcome]) -> Vec<String> {
        outcomes
            .iter()
            .map(|o| match o {
                WitOutcome::Emit(outputs) => String::from_utf8_lossy(&outputs[0].payload).into(),
                WitOutcome::Drop => "<drop>".to_owned(),
                WitOutcome::Reject(r) => format!("<reject {r}>"),
            })
            .collect()
    }

    // Thread-locals make each test thread its own instance.
    #[test]
    fn handle_before_init_rejects_every_event() {
        let outcomes = handle(vec![wit_event("a"), wit_event("b")]);
        assert_eq!(
            payloads(&outcomes),
            vec!["<reject plugin not initialised>"; 2]
        );
    }

    #[test]
    fn handle_runs_the_processor_once_per_event_with_its_index() {
        init::<Echo>(r#"{"prefix": "p:"}"#.to_owned()).expect("init succeeds");
        let outcomes = handle(vec![
            wit_event("a"),
            wit_event("drop"),
            wit_event("reject"),
            wit_event("b"),
        ]);
        assert_eq!(
            payloads(&outcomes),
            vec!["p:a@0", "<drop>", "<reject no>", "p:b@3"]
        );
        assert_eq!(current_event(), None);
        assert!(handle(Vec::new()).is_empty());
    }

    /// `events` packed as the host packs them for `handle-packed`.
    fn packed(events: &[WitEvent]) -> WitPackedEvents {
        use crate::wit::exports::eddy::plugin::packed_handler::PackedEvent;
        let mut p = WitPackedEvents {
            bytes: Vec::new(),
            ends: Vec::new(),
            events: Vec::new(),
        };
        for e in events {
            let mut pieces = vec![e.key.clone(), e.subject.clone().into_bytes()];
            for (n, v) in &e.headers {
                pieces.push(n.clone().into_bytes());
                pieces.push(v.clone().into_bytes());
            }
            pieces.push(e.payload.clone());
            for piece in pieces {
                p.bytes.extend_from_slice(&piece);
                p.ends.push(p.bytes.len() as u32);
            }
            p.events.push(PackedEvent {
                headers: e.headers.len() as u32,
                timestamp_ms: e.timestamp_ms,
                sequence: e.sequence,
            });
        }
        p
    }

    /// Shows every field of the event it is given, as `process` saw it.
    struct Show;

    impl Processor for Show {
        fn init(_config: &Config) -> Result<Self, String> {
            Ok(Show)
        }

        fn process(&mut self, event: &Event) -> Outcome {
            Outcome::emit_one(Output::new(format!("{event:?}")))
        }
    }

    #[test]
    fn packed_batches_give_the_processor_the_same_events() {
        init::<Show>("{}".to_owned()).expect("init succeeds");
        let mut events = vec![
            wit_event("a"),
            wit_event(""),
            wit_event("ключ"),
            wit_event("b"),
        ];
        // Headers that grow and shrink from one event to the next (the reused event must not
        // keep the previous one's), an empty payload, and fields of every length.
        events[0].headers = vec![("X".into(), "1".into()), ("X".into(), "2".into())];
        events[0].payload = b"{\"a\":1}".to_vec();
        events[1].subject = String::new();
        events[2].headers = vec![("Trace-Id".into(), "éé".into())];
        events[2].payload = vec![0, 255, 7];
        events[3].timestamp_ms = 1_700_000_000_000;
        events[3].sequence = 42;
        let from_packed = unpacked(handle_packed(packed(&events)));
        assert_eq!(payloads(&from_packed), payloads(&handle(events.clone())));
        assert!(payloads(&from_packed)[3].contains("sequence: 42"));
        assert!(payloads(&from_packed)[1].contains("headers: []"));
        assert!(unpacked(handle_packed(packed(&[]))).is_empty());
    }

    #[test]
    fn text_that_is_not_utf8_reaches_the_processor_with_replacement_characters() {
        init::<Show>("{}".to_owned()).expect("init succeeds");
        let mut p = packed(&[wit_event("a")]);
        // The subject is the second piece: put a byte that is never UTF-8 in its middle.
        let subject_start = p.ends[0] as usize;
        p.bytes[subject_start + 1] = 0xff;
        let shown = payloads(&unpacked(handle_packed(p)));
        assert!(shown[0].contains('\u{fffd}'), "{}", shown[0]);
    }

    #[test]
    fn packed_outcomes_are_the_outcomes_handle_returns() {
        let events = || {
            vec![
                wit_event("a"),
                wit_event("drop"),
                wit_event("reject"),
                wit_event("b"),
            ]
        };
        assert_eq!(
            payloads(&unpacked(handle_packed(packed(&events())))),
            vec!["<reject plugin not initialised>"; 4]
        );
        init::<Echo>(r#"{"prefix": "p:"}"#.to_owned()).expect("init succeeds");
        assert_eq!(
            format!("{:?}", unpacked(handle_packed(packed(&events())))),
            format!("{:?}", handle(events()))
        );
        assert_eq!(current_event(), None);
    }

    #[test]
    fn failed_init_leaves_no_processor() {
        init::<Echo>("{}".to_owned()).expect("init succeeds");
        assert_eq!(
            init::<Echo>(r#"{"prefix": "fail"}"#.to_owned()),
            Err("asked to fail".to_owned())
        );
        assert_eq!(
            payloads(&handle(vec![wit_event("a")])),
            vec!["<reject plugin not initialised>"]
        );
    }
}
