//! `dedupe-filter`: drops transactions whose id was already seen for the same key.
//!
//! The pipeline keys events by customer id; ids are remembered per customer.
//!
//! # Config
//!
//! Optional `{"ttl_ms": N}` (N > 0): forget an id N milliseconds after it was stored, on the
//! host's processing-time clock, so the state does not grow forever. Without it ids are kept
//! until the state is cleared. Unknown fields are an error.
//!
//! # Input
//!
//! A JSON object with a string `id`, for example
//! `{"id": "tx-1", "customer": "c-42", "amount_cents": 1250, "ts": 1700000000000}`. Other fields
//! are not looked at, except an integer `ts`, which is what is stored for the id.
//!
//! A payload that is not JSON, or has no string `id`, is rejected with the reason
//! `dedupe-filter: payload is not a JSON object with a string "id": <serde error>`.
//!
//! # State
//!
//! `seen` (map, `String → u64`): transaction id (UTF-8 map key) → the transaction's `ts`, or the
//! event's stream timestamp when the payload has no integer `ts`.
//!
//! # Output
//!
//! The first event of an id is emitted unchanged to the default subject; later events with the
//! same id (and key) are dropped. A state error rejects the event with the reason
//! `dedupe-filter: <error>`.

use eddy_sdk::{Config, Event, MapState, Outcome, Output, Processor, StateError, Ttl};
use serde::Deserialize;

/// The plugin configuration.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// How long an id is remembered, in milliseconds.
    #[serde(default)]
    ttl_ms: Option<u64>,
}

/// The fields of an input event that matter here.
#[derive(Debug, Deserialize)]
struct Transaction {
    id: String,
    #[serde(default)]
    ts: Option<serde_json::Value>,
}

/// Filters out repeated transaction ids.
struct DedupeFilter {
    seen: MapState<String, u64>,
}

impl DedupeFilter {
    fn filter(&self, event: &Event, tx: &Transaction) -> Result<Outcome, StateError> {
        if self.seen.contains(&tx.id)? {
            return Ok(Outcome::Drop);
        }
        let ts = tx
            .ts
            .as_ref()
            .and_then(serde_json::Value::as_u64)
            .unwrap_or_else(|| event.timestamp_ms());
        self.seen.put(&tx.id, &ts)?;
        Ok(Outcome::emit_one(Output::new(event.payload())))
    }
}

impl Processor for DedupeFilter {
    fn init(config: &Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        let seen = MapState::new("seen");
        let seen = match settings.ttl_ms {
            Some(0) => return Err("invalid plugin config: `ttl_ms` must be more than 0".to_owned()),
            Some(ttl_ms) => seen.with_ttl(Ttl::from_millis(ttl_ms)),
            None => seen,
        };
        Ok(DedupeFilter { seen })
    }

    fn process(&mut self, event: &Event) -> Outcome {
        let tx: Transaction = match event.json() {
            Ok(tx) => tx,
            Err(e) => {
                return Outcome::reject(format!(
                    "dedupe-filter: payload is not a JSON object with a string \"id\": {e}"
                ));
            }
        };
        self.filter(event, &tx)
            .unwrap_or_else(|e| Outcome::reject(format!("dedupe-filter: {e}")))
    }
}

eddy_sdk::export!(DedupeFilter);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config() {
        let plugin = DedupeFilter::init(&Config::new("{}")).expect("no TTL");
        assert_eq!(plugin.seen.ttl(), None);
        assert_eq!(plugin.seen.name(), "seen");
        let plugin = DedupeFilter::init(&Config::new(r#"{"ttl_ms": 60000}"#)).expect("TTL");
        assert_eq!(plugin.seen.ttl(), Some(Ttl::from_millis(60_000)));
        assert!(DedupeFilter::init(&Config::new(r#"{"ttl_ms": 0}"#)).is_err());
        assert!(DedupeFilter::init(&Config::new(r#"{"ttl": 5}"#)).is_err());
    }

    #[test]
    fn rejects_events_without_an_id() {
        let mut plugin = DedupeFilter::init(&Config::new("{}")).expect("no TTL");
        for payload in ["not json", "{}", r#"{"id": 5}"#, "[]"] {
            let outcome = plugin.process(&Event::new("c", payload));
            assert!(
                matches!(&outcome, Outcome::Reject(r) if r.starts_with("dedupe-filter: payload is not a JSON object with a string \"id\": ")),
                "{payload}: {outcome:?}"
            );
        }
    }
}
