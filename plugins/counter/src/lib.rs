//! `counter`: counts the events of each key and passes every payload through.
//!
//! - **Config:** none (any JSON is accepted and ignored).
//! - **Input:** any payload, any key.
//! - **Output:** one message per event with the same payload bytes, to the pipeline's default
//!   output subject, with no headers of its own.
//! - **State:** `count` (value state, `u64`): events seen for the key. One read and one write
//!   per event, nothing else.
//!
//! It is the engine benchmark's "one keyed read + write per event" plugin: next to
//! `passthrough`, what it costs more is the cost of keyed state through the WIT.

use eddy_sdk::{Config, Event, Outcome, Output, Processor, ValueState};

/// Counts per key.
struct Counter {
    count: ValueState<u64>,
}

impl Processor for Counter {
    fn init(_config: &Config) -> Result<Self, String> {
        Ok(Counter {
            count: ValueState::new("count"),
        })
    }

    fn process(&mut self, event: &Event) -> Outcome {
        let n = match self.count.get() {
            Ok(n) => n.unwrap_or(0),
            Err(e) => return Outcome::reject(format!("counter: {e}")),
        };
        if let Err(e) = self.count.set(&(n + 1)) {
            return Outcome::reject(format!("counter: {e}"));
        }
        Outcome::emit_one(Output::new(event.payload()))
    }
}

eddy_sdk::export!(Counter);
