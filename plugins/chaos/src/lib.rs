//! `chaos`: a plugin that misbehaves on request, for testing how the host copes.
//!
//! # Config
//!
//! `{"fail_init": true}` makes `init` fail with `chaos: init failed on purpose`.
//! `{"ttl_ms": N}` gives the `count` and `history` states a time-to-live of N ms. Anything else
//! (including `{}`) initialises normally.
//!
//! # Input
//!
//! A JSON object `{"action": "<action>", ...}`; other fields are carried along. Actions:
//!
//! | action | what happens |
//! | --- | --- |
//! | `ok` | increments the key's `count` (value state, `u64`), appends the event's sequence to `history` (list state), and emits the payload unchanged to the default subject with the headers `Eddy-Count: <count>` and `Eddy-History: <list length>` |
//! | `trap` | panics (`chaos: asked to trap`): the instance traps |
//! | `loop` | spins forever, for fuel or epoch interruption to stop |
//! | `oom` | allocates and fills 1 MiB blocks, keeping them, until memory runs out |
//! | `reject` | rejects the event with the reason `chaos: asked to reject` |
//! | `bad-subject` | emits the payload unchanged to the subject `forbidden.subject` |
//! | `flash` | reports (header `Eddy-Flash: present|absent`) whether the key's `flash` value exists, then writes it with its own TTL of `ttl_ms` from the payload |
//! | `escape` | tries to reach outside the sandbox (read `/etc/hostname`, list `/`, connect to 127.0.0.1:4222, read the environment) and emits a JSON report of what each attempt returned |
//!
//! Any other action, a payload that is not JSON or has no string `action`, is rejected with a
//! reason starting with `chaos: `. A state error rejects the event with `chaos: <error>`.

use std::hint::black_box;

use eddy_sdk::{Config, Event, ListState, Outcome, Output, Processor, Ttl, ValueState};
use serde::Deserialize;

/// The plugin configuration.
#[derive(Debug, Default, Deserialize)]
struct Settings {
    /// Fail `init`.
    #[serde(default)]
    fail_init: bool,
    /// A time-to-live for the `count` and `history` states, in ms.
    #[serde(default)]
    ttl_ms: Option<u64>,
}

/// The field of an input event that says what to do.
#[derive(Debug, Deserialize)]
struct Command {
    action: String,
    /// For `flash`: the TTL of the value it writes.
    #[serde(default)]
    ttl_ms: u64,
}

/// Does what each event asks.
struct Chaos {
    count: ValueState<u64>,
    history: ListState<u64>,
    flash: ValueState<u64>,
}

/// Spins forever; `black_box` keeps the optimiser from proving anything about the loop.
fn spin() -> ! {
    let mut n = 0u64;
    loop {
        n = black_box(n.wrapping_add(1));
    }
}

/// Allocates 1 MiB blocks, writing every byte and keeping them all, until allocation fails
/// (which aborts, trapping the instance).
fn exhaust_memory() -> ! {
    const BLOCK: usize = 1 << 20;
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    loop {
        let block = vec![0xa5u8; BLOCK];
        blocks.push(black_box(block));
        black_box(&blocks);
    }
}

/// Tries what a sandboxed plugin must not be able to do; reports each result as text.
fn escape_report() -> String {
    let file = match std::fs::read_to_string("/etc/hostname") {
        Ok(s) => format!("read {} bytes", s.len()),
        Err(e) => format!("denied: {e}"),
    };
    let dir = match std::fs::read_dir("/") {
        Ok(d) => format!("listed {} entries", d.count()),
        Err(e) => format!("denied: {e}"),
    };
    let socket = match std::net::TcpStream::connect("127.0.0.1:4222") {
        Ok(_) => "connected".to_owned(),
        Err(e) => format!("denied: {e}"),
    };
    let env = std::env::vars().count();
    serde_json::json!({ "file": file, "dir": dir, "socket": socket, "env_vars": env }).to_string()
}

impl Processor for Chaos {
    fn init(config: &Config) -> Result<Self, String> {
        let settings: Settings = config.parse().map_err(|e| format!("chaos: {e}"))?;
        if settings.fail_init {
            return Err("chaos: init failed on purpose".to_owned());
        }
        let (mut count, mut history) = (ValueState::new("count"), ListState::new("history"));
        if let Some(ms) = settings.ttl_ms {
            count = count.with_ttl(Ttl::from_millis(ms));
            history = history.with_ttl(Ttl::from_millis(ms));
        }
        Ok(Chaos {
            count,
            history,
            flash: ValueState::new("flash"),
        })
    }

    fn process(&mut self, event: &Event) -> Outcome {
        let command: Command = match event.json() {
            Ok(command) => command,
            Err(e) => {
                return Outcome::reject(format!(
                    "chaos: payload is not a JSON object with a string \"action\": {e}"
                ));
            }
        };
        match command.action.as_str() {
            "ok" => {
                let counted = self.count.update(|n| n.unwrap_or(0) + 1).and_then(|count| {
                    self.history.add(&event.sequence())?;
                    Ok((count, self.history.get()?.len()))
                });
                match counted {
                    Ok((count, history)) => Outcome::emit_one(
                        Output::new(event.payload())
                            .header("Eddy-Count", count.to_string())
                            .header("Eddy-History", history.to_string()),
                    ),
                    Err(e) => Outcome::reject(format!("chaos: {e}")),
                }
            }
            "trap" => panic!("chaos: asked to trap"),
            "loop" => spin(),
            "oom" => exhaust_memory(),
            "reject" => Outcome::reject("chaos: asked to reject"),
            "bad-subject" => {
                Outcome::emit_one(Output::new(event.payload()).subject("forbidden.subject"))
            }
            "flash" => {
                let before = self.flash.get().map(|v| v.is_some());
                let written = before.and_then(|b| {
                    self.flash.set_with_ttl(
                        &event.sequence(),
                        std::time::Duration::from_millis(command.ttl_ms),
                    )?;
                    Ok(b)
                });
                match written {
                    Ok(was) => Outcome::emit_one(
                        Output::new(event.payload())
                            .header("Eddy-Flash", if was { "present" } else { "absent" }),
                    ),
                    Err(e) => Outcome::reject(format!("chaos: {e}")),
                }
            }
            "escape" => Outcome::emit_one(Output::new(escape_report().into_bytes())),
            other => Outcome::reject(format!("chaos: unknown action {other:?}")),
        }
    }
}

eddy_sdk::export!(Chaos);

#[cfg(test)]
mod tests {
    use super::*;

    fn chaos() -> Chaos {
        Chaos::init(&Config::new("{}")).expect("init succeeds")
    }

    #[test]
    fn init_can_fail_on_purpose() {
        assert!(Chaos::init(&Config::new(r#"{"fail_init": false}"#)).is_ok());
        assert_eq!(
            Chaos::init(&Config::new(r#"{"fail_init": true}"#)).err(),
            Some("chaos: init failed on purpose".to_owned())
        );
    }

    #[test]
    fn harmless_actions() {
        let mut plugin = chaos();
        let payload = r#"{"action": "bad-subject", "n": 1}"#;
        assert_eq!(
            plugin.process(&Event::new("k", payload)),
            Outcome::emit_one(Output::new(payload).subject("forbidden.subject"))
        );
        assert_eq!(
            plugin.process(&Event::new("k", r#"{"action": "reject"}"#)),
            Outcome::reject("chaos: asked to reject")
        );
        assert_eq!(
            plugin.process(&Event::new("k", r#"{"action": "dance"}"#)),
            Outcome::reject("chaos: unknown action \"dance\"")
        );
        assert!(plugin.process(&Event::new("k", "nope")).is_reject());
        assert!(plugin.process(&Event::new("k", r#"{"n": 1}"#)).is_reject());
    }

    #[test]
    #[should_panic(expected = "chaos: asked to trap")]
    fn trap_panics() {
        chaos().process(&Event::new("k", r#"{"action": "trap"}"#));
    }
}
