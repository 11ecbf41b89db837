//! `eddy produce`: publishes synthetic card transactions, for demos, tests and benchmarks.
//!
//! The generator is deterministic for a seed, so a test can compute the expected outputs
//! independently from the same list of transactions.

use std::time::Instant;

use async_nats::jetstream;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// One synthetic transaction, as published (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transaction {
    /// Unique id (`tx-<n>`), except where duplicates are asked for.
    pub id: String,
    /// Customer id: the event key.
    pub customer: String,
    /// Amount in cents.
    pub amount_cents: u64,
    /// Merchant id.
    pub merchant: String,
    /// Merchant category.
    pub category: String,
    /// Event time, ms since the epoch.
    pub ts: u64,
}

const CATEGORIES: [&str; 6] = [
    "grocery",
    "travel",
    "electronics",
    "fuel",
    "restaurants",
    "gaming",
];

/// splitmix64: small, fast, and the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// `count` transactions over `customers` customers. Every `duplicate_every`-th transaction
/// (if non-zero) repeats the id of an earlier transaction of the same customer.
pub fn transactions(
    count: usize,
    customers: usize,
    seed: u64,
    duplicate_every: usize,
) -> Vec<Transaction> {
    let mut rng = Rng(seed);
    let mut out: Vec<Transaction> = Vec::with_capacity(count);
    let mut last_of_customer: std::collections::HashMap<String, String> = Default::default();
    let mut ts = 1_700_000_000_000u64;
    for n in 0..count {
        let customer = format!("c-{}", rng.below(customers as u64));
        ts += 1 + rng.below(20_000);
        // Mostly small amounts, sometimes large ones, so the risk score varies.
        let amount_cents = match rng.below(20) {
            0 => 100_000 + rng.below(400_000),
            1..=3 => 20_000 + rng.below(50_000),
            _ => 100 + rng.below(9_900),
        };
        let mut id = format!("tx-{n}");
        if duplicate_every > 0
            && n % duplicate_every == duplicate_every - 1
            && let Some(prev) = last_of_customer.get(&customer)
        {
            id = prev.clone();
        }
        last_of_customer.insert(customer.clone(), id.clone());
        out.push(Transaction {
            id,
            customer,
            amount_cents,
            merchant: format!("m-{}", rng.below(50)),
            category: CATEGORIES[rng.below(CATEGORIES.len() as u64) as usize].to_string(),
            ts,
        });
    }
    out
}

/// The subject of a transaction for `pattern`: its `*` token replaced by the customer (the
/// key a cluster's input stream partitions by), or `pattern` itself without one.
pub fn subject_for(pattern: &str, t: &Transaction) -> String {
    pattern
        .split('.')
        .map(|tok| if tok == "*" { t.customer.as_str() } else { tok })
        .collect::<Vec<_>>()
        .join(".")
}

/// Publishes `payloads` to `subject` (pipelined, every ack awaited); returns messages per
/// second.
pub async fn publish(
    js: &jetstream::Context,
    subject: &str,
    payloads: Vec<Bytes>,
) -> anyhow::Result<f64> {
    publish_each(js, payloads.into_iter().map(|p| (subject.to_string(), p))).await
}

/// Publishes each payload to its own subject (pipelined, every ack awaited); returns
/// messages per second.
pub async fn publish_each(
    js: &jetstream::Context,
    messages: impl IntoIterator<Item = (String, Bytes)>,
) -> anyhow::Result<f64> {
    publish_counted(js, messages, |_| {}).await
}

/// [`publish_each`], calling `stored(n)` as each group of `n` messages is stored (for a
/// progress bar).
pub async fn publish_counted(
    js: &jetstream::Context,
    messages: impl IntoIterator<Item = (String, Bytes)>,
    mut stored: impl FnMut(u64),
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut n = 0usize;
    let mut acks = Vec::with_capacity(4096);
    for (subject, p) in messages {
        n += 1;
        acks.push(js.publish(subject, p).await?);
        if acks.len() == 4096 {
            for a in acks.drain(..) {
                a.await?;
            }
            stored(4096);
        }
    }
    let last = acks.len() as u64;
    for a in acks {
        a.await?;
    }
    stored(last);
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generator_is_deterministic_and_makes_duplicates_when_asked() {
        let a = transactions(1000, 10, 7, 50);
        assert_eq!(a, transactions(1000, 10, 7, 50));
        assert_ne!(a, transactions(1000, 10, 8, 50));
        let ids: std::collections::HashSet<_> = a.iter().map(|t| (&t.customer, &t.id)).collect();
        assert!(ids.len() < a.len(), "some ids repeat per customer");
        assert!(a.windows(2).all(|w| w[0].ts < w[1].ts));
    }
}
