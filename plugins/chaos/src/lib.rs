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
//! | `rule` | emits the payload with the header `Eddy-Rule: <value of broadcast map "rules" at the payload's "rule" field, as JSON, or "none">` |
//! | `broadcast-write` | tries to write the broadcast map `rules` from the keyed side; emits the header `Eddy-Broadcast-Write` with the error it got (or `written`) |
//! | `lookup` | plans a lookup of the payload's `key` in store `store`; emits `{"found": bool, "value": <JSON or text>, "error": <text or null>}` |
//! | `lookup-unplanned` | as `lookup`, but `prepare` does not plan it: the host fetches it when `handle` asks, unless the pipeline file plans it (`lookup.<store>.plan`) |
//! | `count` | like `ok` without the history: increments `count` and emits the payload with `Eddy-Count` |
//!
//! Any other action, a payload that is not JSON or has no string `action`, is rejected with a
//! reason starting with `chaos: `. A state error rejects the event with `chaos: <error>`.
//!
//! # Broadcast events
//!
//! JSON objects `{"op": ...}`: `put` (`key`, `value` into the map `rules`), `remove` (`key`),
//! `visit` (visits every key of `state` with `tag`: tag `reset` removes every entry, tag
//! `double` doubles numbers), `fail` (returns an error). Every event that succeeds increments
//! the entry `applied` of the map `meta`, so a test can tell that no update was applied twice.

use std::hint::black_box;

use eddy_sdk::{
    BroadcastEvent, BroadcastMap, Config, Event, ListState, LookupRequest, LookupStore, Outcome,
    Output, Processor, Ttl, ValueState, VisitAction, VisitedEntry,
};
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
    /// For `rule`: the rule to read.
    #[serde(default)]
    rule: String,
    /// For `lookup`: the store and key.
    #[serde(default)]
    store: String,
    #[serde(default)]
    key: String,
}

/// A broadcast event.
#[derive(Debug, Deserialize)]
struct BroadcastOp {
    op: String,
    #[serde(default)]
    key: String,
    #[serde(default)]
    value: serde_json::Value,
    #[serde(default)]
    state: String,
    #[serde(default)]
    tag: String,
}

/// Does what each event asks.
struct Chaos {
    count: ValueState<u64>,
    history: ListState<u64>,
    flash: ValueState<u64>,
    rules: BroadcastMap<String, serde_json::Value>,
    meta: BroadcastMap<String, u64>,
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
            rules: BroadcastMap::new("rules"),
            meta: BroadcastMap::new("meta"),
        })
    }

    fn process_broadcast(&mut self, event: &BroadcastEvent) -> Result<(), String> {
        let op: BroadcastOp = event.json().map_err(|e| format!("chaos: {e}"))?;
        let e = |e: eddy_sdk::BroadcastError| format!("chaos: {e}");
        match op.op.as_str() {
            "put" => self.rules.put(&op.key, &op.value).map_err(e)?,
            "remove" => self.rules.remove(&op.key).map_err(e)?,
            "visit" => {
                let asked = match op.state.as_str() {
                    "count" => self.count.visit_all_keys(&op.tag),
                    "history" => self.history.visit_all_keys(&op.tag),
                    other => return Err(format!("chaos: cannot visit {other:?}")),
                };
                asked.map_err(|e| format!("chaos: {e}"))?;
            }
            "fail" => return Err("chaos: broadcast failed on purpose".to_owned()),
            other => return Err(format!("chaos: unknown broadcast op {other:?}")),
        }
        let applied = self.meta.get("applied").map_err(e)?.unwrap_or(0);
        self.meta.put("applied", &(applied + 1)).map_err(e)
    }

    fn visit(&mut self, tag: &str, _state: &str, entry: &VisitedEntry) -> VisitAction {
        match tag {
            "reset" => VisitAction::Remove,
            "double" => match entry.value::<u64>() {
                Ok(n) => VisitAction::set_json(&(n * 2)).unwrap_or(VisitAction::Keep),
                Err(_) => VisitAction::Keep,
            },
            _ => VisitAction::Keep,
        }
    }

    fn plan_lookups(&self, event: &Event) -> Vec<LookupRequest> {
        match event.json::<Command>() {
            Ok(c) if c.action == "lookup" => vec![LookupRequest::new(c.store, c.key)],
            _ => Vec::new(),
        }
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
            "count" => match self.count.update(|n| n.unwrap_or(0) + 1) {
                Ok(count) => Outcome::emit_one(
                    Output::new(event.payload()).header("Eddy-Count", count.to_string()),
                ),
                Err(e) => Outcome::reject(format!("chaos: {e}")),
            },
            "rule" => match self.rules.get(&command.rule) {
                Ok(v) => Outcome::emit_one(
                    Output::new(event.payload()).header(
                        "Eddy-Rule",
                        v.map(|v| v.to_string())
                            .unwrap_or_else(|| "none".to_owned()),
                    ),
                ),
                Err(e) => Outcome::reject(format!("chaos: {e}")),
            },
            "broadcast-write" => {
                let result = match self.rules.put("from-keyed", &serde_json::json!(1)) {
                    Ok(()) => "written".to_owned(),
                    Err(e) => e.to_string(),
                };
                Outcome::emit_one(
                    Output::new(event.payload()).header("Eddy-Broadcast-Write", result),
                )
            }
            "lookup" | "lookup-unplanned" => {
                let store = LookupStore::new(command.store);
                let answer = match store.get(&command.key) {
                    Ok(Some(bytes)) => {
                        let value = serde_json::from_slice::<serde_json::Value>(&bytes)
                            .unwrap_or_else(|_| {
                                serde_json::Value::String(String::from_utf8_lossy(&bytes).into())
                            });
                        serde_json::json!({"found": true, "value": value, "error": null})
                    }
                    Ok(None) => serde_json::json!({"found": false, "value": null, "error": null}),
                    Err(e) => {
                        serde_json::json!({"found": false, "value": null, "error": e.to_string()})
                    }
                };
                Outcome::emit_json(&answer)
            }
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
