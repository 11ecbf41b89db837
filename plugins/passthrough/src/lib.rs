//! `passthrough`: publishes every event's payload unchanged.
//!
//! - **Config:** none (any JSON is accepted and ignored).
//! - **Input:** any payload, any key.
//! - **Output:** one message per event with the same payload bytes, to the pipeline's default
//!   output subject, with no headers of its own (the host still adds its `Eddy-*` headers).
//! - **State:** none.
//!
//! It is the baseline plugin of the benchmarks: what it costs is the cost of the host and of
//! crossing the component boundary.

use eddy_sdk::{Config, Event, Outcome, Output, Processor};

/// Emits each payload as it came.
struct Passthrough;

impl Processor for Passthrough {
    fn init(_config: &Config) -> Result<Self, String> {
        Ok(Passthrough)
    }

    fn process(&mut self, event: &Event) -> Outcome {
        Outcome::emit_one(Output::new(event.payload()))
    }
}

eddy_sdk::export!(Passthrough);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emits_the_payload_unchanged() {
        let mut plugin = Passthrough::init(&Config::new("{}")).expect("init succeeds");
        let outcome = plugin.process(&Event::new("k", vec![0u8, 1, 255]));
        assert_eq!(outcome, Outcome::emit_one(Output::new(vec![0u8, 1, 255])));
    }
}
