//! `{{name}}`: counts the events of each key and emits each payload with the count added.
//!
//! Input: a JSON object. Output: the same object with `"count"`: how many events this key has
//! had, this one included. A payload that is not a JSON object is rejected with the reason.

use eddy_sdk::{Config, Event, Outcome, Output, Processor, ValueState};

struct Plugin {
    count: ValueState<u64>,
}

impl Processor for Plugin {
    fn init(_config: &Config) -> Result<Self, String> {
        Ok(Plugin {
            count: ValueState::new("count"),
        })
    }

    fn process(&mut self, event: &Event) -> Outcome {
        let mut object: serde_json::Map<String, serde_json::Value> = match event.json() {
            Ok(o) => o,
            Err(e) => return Outcome::reject(format!("{{name}}: not a JSON object: {e}")),
        };
        let count = match self.count.update(|n| n.unwrap_or(0) + 1) {
            Ok(n) => n,
            Err(e) => return Outcome::reject(format!("{{name}}: {e}")),
        };
        object.insert("count".into(), count.into());
        match serde_json::to_vec(&object) {
            Ok(bytes) => Outcome::emit_one(Output::new(bytes)),
            Err(e) => Outcome::reject(format!("{{name}}: {e}")),
        }
    }
}

eddy_sdk::export!(Plugin);
