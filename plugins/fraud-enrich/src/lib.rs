//! `fraud-enrich`: adds per-customer statistics and a risk score to card transactions.
//!
//! The pipeline keys events by customer id, so the state below is per customer.
//!
//! # Config
//!
//! `{"flag_threshold": 70, "profiles": "profiles", "merchants": "merchants"}`: the risk from which
//! a transaction is `flagged` (default 70), and the lookup stores (declared by the pipeline as
//! `[lookup.<name>]`) to read the customer's profile (by customer id) and the merchant's record
//! (by merchant id) from; without a store, that field of the output is `null`. Unknown fields are
//! an error, so a misspelt setting is caught when the pipeline starts.
//!
//! # Rules (broadcast)
//!
//! Broadcast events `{"category": "travel", "limit_cents": 50000}` set the limit of a merchant
//! category in the broadcast map `category_limits`; `{"category": "travel", "remove": true}`
//! removes it. Every transaction sees the limits stored before it.
//!
//! # Input
//!
//! A JSON transaction; amounts are integer cents and times integer milliseconds since the Unix
//! epoch, so every language computes identical results:
//!
//! ```json
//! {"id": "tx-1", "customer": "c-42", "amount_cents": 1250, "merchant": "m-7", "category": "grocery", "ts": 1700000000000}
//! ```
//!
//! A payload that is not such an object is rejected with the reason
//! `fraud-enrich: payload is not a transaction: <serde error>`.
//!
//! # State
//!
//! - `stats` (value): `{"count": u64, "sum_cents": u64, "max_cents": u64, "last_ts": u64}`, the
//!   customer's transactions so far.
//! - `recent` (list of u64): the customer's last 5 amounts in cents, oldest first.
//!
//! # Output
//!
//! One message to the default subject with the header `Eddy-Risk: <risk>` and the transaction
//! with fields added, in this order (fields of the input not listed here are not copied):
//!
//! | field | value |
//! | --- | --- |
//! | `id`, `customer`, `amount_cents`, `merchant`, `category`, `ts` | as in the input |
//! | `customer_count` | transactions of the customer, this one included |
//! | `customer_sum_cents` | their total amount, this one included |
//! | `customer_avg_cents` | `customer_sum_cents / customer_count` (integer division) |
//! | `customer_max_cents` | their largest amount, this one included |
//! | `previous_ts` | `ts` of the customer's previous transaction, or `null` |
//! | `recent_cents` | the up to 5 previous amounts, oldest first (before this transaction) |
//! | `category_limit_cents` | the limit of the transaction's category, or `null` |
//! | `profile` | the customer's profile from the `profiles` store (JSON), or `null` |
//! | `merchant_info` | the merchant's record from the `merchants` store (JSON), or `null` |
//! | `risk` | 0 to 100, see below |
//! | `flagged` | `risk >= flag_threshold` |
//!
//! With `prev` the customer's statistics before this transaction, `risk` is the sum, capped at
//! 100, of:
//!
//! - 40 if `prev.count >= 3` and `amount_cents > 3 * (prev.sum_cents / prev.count)`;
//! - 30 if there is a previous transaction and `ts - prev.last_ts < 10000` (the subtraction
//!   saturates at 0, so an out-of-order transaction counts as close);
//! - 30 if `amount_cents >= 100000`;
//! - 20 if the category has a limit and `amount_cents > limit`.
//!
//! A state error rejects the event with the reason `fraud-enrich: <error>`; a failed lookup is
//! handled by the pipeline's `on_failure` policy (dead letter by default) before the plugin
//! sees the event, or, with policy `plugin`, rejects it with the lookup's error.

use eddy_sdk::{
    BroadcastEvent, BroadcastMap, Config, Event, ListState, LookupRequest, LookupStore, Outcome,
    Output, Processor, StateError, ValueState,
};
use serde::{Deserialize, Serialize};

/// How many previous amounts `recent` keeps.
const RECENT_LEN: usize = 5;

/// The plugin configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// The risk from which a transaction is flagged.
    #[serde(default = "default_flag_threshold")]
    flag_threshold: u32,
    /// The lookup store of customer profiles.
    #[serde(default)]
    profiles: Option<String>,
    /// The lookup store of merchant records.
    #[serde(default)]
    merchants: Option<String>,
}

/// A rule from the broadcast input.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    category: String,
    #[serde(default)]
    limit_cents: Option<u64>,
    #[serde(default)]
    remove: bool,
}

/// The build variant: `EDDY_FRAUD_VARIANT=strict` at build time makes the candidate version of
/// the shadow-deploy tests (default threshold 40, and a `flags` state counting each customer's
/// flagged transactions); any other build is the plugin documented above.
fn strict() -> bool {
    option_env!("EDDY_FRAUD_VARIANT") == Some("strict")
}

fn default_flag_threshold() -> u32 {
    if strict() { 40 } else { 70 }
}

/// An input transaction.
#[derive(Debug, Deserialize)]
struct Transaction {
    id: String,
    customer: String,
    amount_cents: u64,
    merchant: String,
    category: String,
    ts: u64,
}

/// What `plan_lookups` reads of a transaction: the two keys, borrowed from the payload where
/// they need no unescaping, and nothing else parsed into values.
#[derive(Debug, Deserialize)]
struct LookupKeys<'a> {
    #[serde(borrow)]
    customer: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    merchant: std::borrow::Cow<'a, str>,
}

/// A customer's statistics, the `stats` state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Stats {
    count: u64,
    sum_cents: u64,
    max_cents: u64,
    last_ts: u64,
}

/// The output: the transaction and what was derived for it, in this field order.
#[derive(Debug, Serialize)]
struct Enriched<'a> {
    id: &'a str,
    customer: &'a str,
    amount_cents: u64,
    merchant: &'a str,
    category: &'a str,
    ts: u64,
    customer_count: u64,
    customer_sum_cents: u64,
    customer_avg_cents: u64,
    customer_max_cents: u64,
    previous_ts: Option<u64>,
    recent_cents: &'a [u64],
    category_limit_cents: Option<u64>,
    profile: Option<serde_json::Value>,
    merchant_info: Option<serde_json::Value>,
    risk: u32,
    flagged: bool,
}

/// The risk score of `tx` given the customer's statistics before it and its category's limit.
fn risk(tx: &Transaction, prev: Option<&Stats>, limit: Option<u64>) -> u32 {
    let mut risk = 0u32;
    if let Some(prev) = prev {
        if prev.count >= 3 && tx.amount_cents > (prev.sum_cents / prev.count).saturating_mul(3) {
            risk += 40;
        }
        if tx.ts.saturating_sub(prev.last_ts) < 10_000 {
            risk += 30;
        }
    }
    if tx.amount_cents >= 100_000 {
        risk += 30;
    }
    if limit.is_some_and(|l| tx.amount_cents > l) {
        risk += 20;
    }
    risk.min(100)
}

/// The customer's statistics after `tx`.
fn updated(prev: Option<&Stats>, tx: &Transaction) -> Stats {
    let prev = prev.copied().unwrap_or_default();
    Stats {
        count: prev.count.saturating_add(1),
        sum_cents: prev.sum_cents.saturating_add(tx.amount_cents),
        max_cents: prev.max_cents.max(tx.amount_cents),
        last_ts: tx.ts,
    }
}

/// Enriches transactions using per-customer state.
struct FraudEnrich {
    flag_threshold: u32,
    stats: ValueState<Stats>,
    recent: ListState<u64>,
    /// The strict variant's flagged transactions per customer.
    flags: Option<ValueState<u64>>,
    limits: BroadcastMap<String, u64>,
    profiles: Option<LookupStore>,
    merchants: Option<LookupStore>,
}

/// Looks `key` up in `store` (if configured): the JSON value or `null`.
fn lookup(store: Option<&LookupStore>, key: &str) -> Result<Option<serde_json::Value>, String> {
    match store {
        Some(s) => s.get_json(key).map_err(|e| e.to_string()),
        None => Ok(None),
    }
}

impl FraudEnrich {
    fn enrich(&self, tx: &Transaction) -> Result<Outcome, StateError> {
        let prev = self.stats.get()?;
        let mut recent = self.recent.get()?;
        recent.drain(..recent.len().saturating_sub(RECENT_LEN));

        let limit = self
            .limits
            .get(&tx.category)
            .map_err(|e| StateError::Storage(e.to_string()))?;
        let (profile, merchant_info) = match (
            lookup(self.profiles.as_ref(), &tx.customer),
            lookup(self.merchants.as_ref(), &tx.merchant),
        ) {
            (Ok(p), Ok(m)) => (p, m),
            (Err(e), _) | (_, Err(e)) => return Ok(Outcome::reject(format!("fraud-enrich: {e}"))),
        };
        let now = updated(prev.as_ref(), tx);
        let risk = risk(tx, prev.as_ref(), limit);
        let enriched = Enriched {
            id: &tx.id,
            customer: &tx.customer,
            amount_cents: tx.amount_cents,
            merchant: &tx.merchant,
            category: &tx.category,
            ts: tx.ts,
            customer_count: now.count,
            customer_sum_cents: now.sum_cents,
            customer_avg_cents: now.sum_cents / now.count,
            customer_max_cents: now.max_cents,
            previous_ts: prev.map(|p| p.last_ts),
            recent_cents: &recent,
            category_limit_cents: limit,
            profile,
            merchant_info,
            risk,
            flagged: risk >= self.flag_threshold,
        };
        let output = match Output::json(&enriched) {
            Ok(output) => output.header("Eddy-Risk", risk.to_string()),
            Err(e) => return Ok(Outcome::reject(format!("fraud-enrich: {e}"))),
        };

        self.stats.set(&now)?;
        recent.push(tx.amount_cents);
        recent.drain(..recent.len().saturating_sub(RECENT_LEN));
        self.recent.update(&recent)?;
        if let Some(flags) = &self.flags
            && risk >= self.flag_threshold
        {
            flags.set(&(flags.get()?.unwrap_or(0) + 1))?;
        }

        Ok(Outcome::emit_one(output))
    }
}

impl Processor for FraudEnrich {
    fn init(config: &Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        Ok(FraudEnrich {
            flag_threshold: settings.flag_threshold,
            stats: ValueState::new("stats"),
            recent: ListState::new("recent"),
            flags: strict().then(|| ValueState::new("flags")),
            limits: BroadcastMap::new("category_limits"),
            profiles: settings.profiles.map(LookupStore::new),
            merchants: settings.merchants.map(LookupStore::new),
        })
    }

    fn plan_lookups(&self, event: &Event) -> Vec<LookupRequest> {
        let Ok(keys) = serde_json::from_slice::<LookupKeys>(event.payload()) else {
            return Vec::new();
        };
        let mut plan = Vec::new();
        if let Some(p) = &self.profiles {
            plan.push(p.request(keys.customer));
        }
        if let Some(m) = &self.merchants {
            plan.push(m.request(keys.merchant));
        }
        plan
    }

    fn process_broadcast(&mut self, event: &BroadcastEvent) -> Result<(), String> {
        let rule: Rule = event
            .json()
            .map_err(|e| format!("fraud-enrich: not a rule: {e}"))?;
        let result = match (rule.remove, rule.limit_cents) {
            (true, _) => self.limits.remove(&rule.category),
            (false, Some(limit)) => self.limits.put(&rule.category, &limit),
            (false, None) => {
                return Err(format!(
                    "fraud-enrich: rule for `{}` has neither limit_cents nor remove",
                    rule.category
                ));
            }
        };
        result.map_err(|e| format!("fraud-enrich: {e}"))
    }

    fn process(&mut self, event: &Event) -> Outcome {
        let tx: Transaction = match event.json() {
            Ok(tx) => tx,
            Err(e) => {
                return Outcome::reject(format!("fraud-enrich: payload is not a transaction: {e}"));
            }
        };
        self.enrich(&tx)
            .unwrap_or_else(|e| Outcome::reject(format!("fraud-enrich: {e}")))
    }
}

eddy_sdk::export!(FraudEnrich);

#[cfg(test)]
mod tests {
    use super::*;

    fn tx(amount_cents: u64, ts: u64) -> Transaction {
        Transaction {
            id: "tx".to_owned(),
            customer: "c".to_owned(),
            amount_cents,
            merchant: "m".to_owned(),
            category: "grocery".to_owned(),
            ts,
        }
    }

    fn stats(count: u64, sum_cents: u64, last_ts: u64) -> Stats {
        Stats {
            count,
            sum_cents,
            max_cents: 0,
            last_ts,
        }
    }

    #[test]
    fn lookup_keys_are_read_borrowed_or_unescaped() {
        let keys: LookupKeys = serde_json::from_slice(
            br#"{"id":"tx-1","customer":"c-\u0034\"2","amount_cents":1,"merchant":"m-7","category":"g","ts":0}"#,
        )
        .expect("keys");
        assert_eq!(keys.customer, "c-4\"2");
        assert!(matches!(keys.merchant, std::borrow::Cow::Borrowed("m-7")));
        assert!(serde_json::from_slice::<LookupKeys>(br#"{"customer":"c-1"}"#).is_err());
    }

    #[test]
    fn first_transaction_is_risky_only_when_large() {
        assert_eq!(risk(&tx(1250, 0), None, None), 0);
        assert_eq!(risk(&tx(100_000, 0), None, None), 30);
        assert_eq!(risk(&tx(99_999, 0), None, None), 0);
    }

    #[test]
    fn spikes_need_three_previous_transactions() {
        // Average 1000: more than 3000 is a spike.
        let three = stats(3, 3000, 0);
        assert_eq!(risk(&tx(3001, 60_000), Some(&three), None), 40);
        assert_eq!(risk(&tx(3000, 60_000), Some(&three), None), 0);
        assert_eq!(risk(&tx(9999, 60_000), Some(&stats(2, 2000, 0)), None), 0);
        // Integer average: 3100 / 3 = 1033, so more than 3099 is a spike.
        assert_eq!(risk(&tx(3100, 60_000), Some(&stats(3, 3100, 0)), None), 40);
    }

    #[test]
    fn quick_succession_and_saturation() {
        let prev = stats(1, 100, 50_000);
        assert_eq!(risk(&tx(100, 59_999), Some(&prev), None), 30);
        assert_eq!(risk(&tx(100, 60_000), Some(&prev), None), 0);
        // Out of order: the saturating difference is 0.
        assert_eq!(risk(&tx(100, 1), Some(&prev), None), 30);
    }

    #[test]
    fn risk_is_capped() {
        let prev = stats(3, 3, 0);
        assert_eq!(risk(&tx(200_000, 1), Some(&prev), Some(1)), 100);
    }

    #[test]
    fn over_the_category_limit() {
        assert_eq!(risk(&tx(501, 0), None, Some(500)), 20);
        assert_eq!(risk(&tx(500, 0), None, Some(500)), 0);
    }

    #[test]
    fn stats_update() {
        let first = updated(None, &tx(1250, 10));
        assert_eq!(
            first,
            Stats {
                count: 1,
                sum_cents: 1250,
                max_cents: 1250,
                last_ts: 10
            }
        );
        let second = updated(Some(&first), &tx(500, 5));
        assert_eq!(
            second,
            Stats {
                count: 2,
                sum_cents: 1750,
                max_cents: 1250,
                last_ts: 5
            }
        );
    }

    #[test]
    fn output_field_order_is_fixed() {
        let enriched = Enriched {
            id: "tx-1",
            customer: "c-42",
            amount_cents: 1250,
            merchant: "m-7",
            category: "grocery",
            ts: 1_700_000_000_000,
            customer_count: 1,
            customer_sum_cents: 1250,
            customer_avg_cents: 1250,
            customer_max_cents: 1250,
            previous_ts: None,
            recent_cents: &[],
            category_limit_cents: None,
            profile: None,
            merchant_info: None,
            risk: 0,
            flagged: false,
        };
        assert_eq!(
            serde_json::to_string(&enriched).expect("encodes"),
            r#"{"id":"tx-1","customer":"c-42","amount_cents":1250,"merchant":"m-7","category":"grocery","ts":1700000000000,"customer_count":1,"customer_sum_cents":1250,"customer_avg_cents":1250,"customer_max_cents":1250,"previous_ts":null,"recent_cents":[],"category_limit_cents":null,"profile":null,"merchant_info":null,"risk":0,"flagged":false}"#
        );
    }

    #[test]
    fn config() {
        let plugin = FraudEnrich::init(&Config::new("{}")).expect("defaults");
        assert_eq!(plugin.flag_threshold, 70);
        let plugin = FraudEnrich::init(&Config::new(r#"{"flag_threshold": 50}"#)).expect("valid");
        assert_eq!(plugin.flag_threshold, 50);
        assert!(FraudEnrich::init(&Config::new(r#"{"flag_treshold": 50}"#)).is_err());
    }

    #[test]
    fn rejects_what_is_not_a_transaction() {
        let mut plugin = FraudEnrich::init(&Config::new("{}")).expect("defaults");
        let outcome = plugin.process(&Event::new("c-42", r#"{"id": "tx-1"}"#));
        assert_eq!(
            outcome,
            Outcome::reject(
                "fraud-enrich: payload is not a transaction: missing field `customer` at line 1 column 14"
            )
        );
    }
}
