//! Reference behaviour written again from specs, and test data publishing.

/// The fraud-enrich plugin's documented behaviour, written again here from its spec.
pub fn fraud_reference(
    txs: &[eddy_host::cli::produce::Transaction],
    flag_threshold: u64,
) -> Vec<serde_json::Value> {
    #[derive(Default, Clone)]
    struct Stats {
        count: u64,
        sum: u64,
        max: u64,
        last_ts: Option<u64>,
        recent: Vec<u64>,
    }
    let mut by_customer: std::collections::HashMap<&str, Stats> = Default::default();
    let mut out = Vec::new();
    for t in txs {
        let prev = by_customer.entry(&t.customer).or_default().clone();
        let mut risk = 0;
        if prev.count >= 3 && t.amount_cents > 3 * (prev.sum / prev.count) {
            risk += 40;
        }
        if let Some(last) = prev.last_ts
            && t.ts.saturating_sub(last) < 10_000
        {
            risk += 30;
        }
        if t.amount_cents >= 100_000 {
            risk += 30;
        }
        let risk: u64 = risk.min(100);
        let count = prev.count + 1;
        let sum = prev.sum + t.amount_cents;
        out.push(serde_json::json!({
            "id": t.id, "customer": t.customer, "amount_cents": t.amount_cents,
            "merchant": t.merchant, "category": t.category, "ts": t.ts,
            "customer_count": count,
            "customer_sum_cents": sum,
            "customer_avg_cents": sum / count,
            "customer_max_cents": prev.max.max(t.amount_cents),
            "previous_ts": prev.last_ts,
            "recent_cents": prev.recent,
            "category_limit_cents": null,
            "profile": null,
            "merchant_info": null,
            "risk": risk,
            "flagged": risk >= flag_threshold,
        }));
        let s = by_customer.entry(&t.customer).or_default();
        s.count = count;
        s.sum = sum;
        s.max = s.max.max(t.amount_cents);
        s.last_ts = Some(t.ts);
        s.recent.push(t.amount_cents);
        if s.recent.len() > 5 {
            s.recent.remove(0);
        }
    }
    out
}

/// Publishes transactions to `subject` (pipelined, acked).
pub async fn publish_txs(
    js: &async_nats::jetstream::Context,
    subject: &str,
    txs: &[eddy_host::cli::produce::Transaction],
) {
    let payloads = txs
        .iter()
        .map(|t| bytes::Bytes::from(serde_json::to_vec(t).expect("json")))
        .collect();
    eddy_host::cli::produce::publish(js, subject, payloads)
        .await
        .expect("publish");
}

/// Publishes `txs` each to `pattern` with its `*` filled by the customer (`txn.in.*`), as
/// partitioned pipelines read them.
pub async fn publish_txs_by_customer(
    js: &async_nats::jetstream::Context,
    pattern: &str,
    txs: &[eddy_host::cli::produce::Transaction],
) {
    let messages: Vec<(String, bytes::Bytes)> = txs
        .iter()
        .map(|t| {
            (
                eddy_host::cli::produce::subject_for(pattern, t),
                bytes::Bytes::from(serde_json::to_vec(t).expect("json")),
            )
        })
        .collect();
    eddy_host::cli::produce::publish_each(js, messages)
        .await
        .expect("publish");
}
