//! `faulty`: a plugin that is broken on purpose, for testing hot reload's validation and
//! rollback. How it is broken is chosen when it is built, with the environment variable
//! `EDDY_FAULTY` (so each way is a distinct component version):
//!
//! - `trap`: `init` succeeds, every event traps (`faulty: traps on every event`);
//! - `init`: `init` fails (`faulty: init refuses to start`);
//! - anything else (or unset): behaves like `chaos`'s `count` action, counting events per key
//!   in the value state `count` and emitting the payload with `Eddy-Count`.
//!
//! `scripts/build-plugins.sh` builds `faulty_trap.wasm` and `faulty_init.wasm`.

use eddy_sdk::{Config, Event, Outcome, Output, Processor, ValueState};

const MODE: Option<&str> = option_env!("EDDY_FAULTY");

/// Broken as built.
struct Faulty {
    count: ValueState<u64>,
}

impl Processor for Faulty {
    fn init(_config: &Config) -> Result<Self, String> {
        if MODE == Some("init") {
            return Err("faulty: init refuses to start".to_owned());
        }
        Ok(Faulty {
            count: ValueState::new("count"),
        })
    }

    fn process(&mut self, event: &Event) -> Outcome {
        if MODE == Some("trap") {
            panic!("faulty: traps on every event");
        }
        match self.count.update(|n| n.unwrap_or(0) + 1) {
            Ok(n) => {
                Outcome::emit_one(Output::new(event.payload()).header("Eddy-Count", n.to_string()))
            }
            Err(e) => Outcome::reject(format!("faulty: {e}")),
        }
    }
}

eddy_sdk::export!(Faulty);
