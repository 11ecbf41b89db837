//! Runtime support for [`export!`](crate::export). Not a stable API.

use std::cell::{Cell, RefCell};

use crate::{Config, Event, Outcome, Processor};

pub use crate::wit::eddy::plugin::types::{Event as WitEvent, Outcome as WitOutcome};
pub use crate::wit::exports::eddy::plugin::handler::Guest;
pub use std::string::String;
pub use std::vec::Vec;

/// The reason every event is rejected with when `init` has not succeeded.
pub const NOT_INITIALISED: &str = "plugin not initialised";

/// A [`Processor`] with its type erased, so one slot can hold whichever type was exported.
trait ErasedProcessor {
    fn process(&mut self, event: &Event) -> Outcome;
}

impl<P: Processor> ErasedProcessor for P {
    fn process(&mut self, event: &Event) -> Outcome {
        Processor::process(self, event)
    }
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
    }
}

/// The exported `handle`: one outcome per event, in order.
pub fn handle(events: Vec<WitEvent>) -> Vec<WitOutcome> {
    INSTANCE.with(|slot| {
        let mut slot = slot.borrow_mut();
        let Some(processor) = slot.as_mut() else {
            return events
                .iter()
                .map(|_| WitOutcome::Reject(NOT_INITIALISED.to_owned()))
                .collect();
        };
        let _guard = BatchGuard;
        let mut outcomes = Vec::with_capacity(events.len());
        for (index, event) in (0u32..).zip(events) {
            CURRENT_EVENT.with(|current| current.set(Some(index)));
            let event = Event::from(event);
            outcomes.push(processor.process(&event).into());
        }
        outcomes
    })
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
