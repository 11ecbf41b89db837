//! Per-key quotas on a running pipeline: `reject` dead-letters the event that would take a key
//! over (kind `quota`, none of its writes kept), `evict` keeps exactly the newest entries.

use std::time::Duration;

use eddy_host::cli::produce;
use eddy_host::cli::tail::Stored;
use eddy_host::query::{self, Op, Query};
use eddy_tests::{Fixture, PipelineSpec, Running, plugin, publish_txs, wait_for_len};
use serde_json::Value;

fn header(m: &Stored, name: &str) -> String {
    m.headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

/// The fraud pipeline with `quota` (TOML) in its file.
async fn fraud_with(quota: &str) -> Fixture {
    Fixture::start_with(|url, dir| {
        let mut spec = PipelineSpec::new("fraud", url, dir, plugin("fraud-enrich"));
        spec.extra = quota.into();
        spec
    })
    .await
}

async fn ask(conn: &eddy_host::transport::Nats, op: Op, state: &str, key: &str) -> Value {
    let q = Query {
        state: Some(state.into()),
        key: Some(key.into()),
        ..Query::default()
    };
    query::nats::ask(conn, "fraud", op, &q)
        .await
        .expect("query")
}

/// `recent` may hold 3 amounts per customer: each customer's first 3 transactions pass, every
/// later one is dead-lettered with kind `quota` and a message naming the bound, and its
/// `stats` write is not kept either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_dead_letters_the_event_and_keeps_none_of_its_writes() {
    let Fixture {
        nats: _nats,
        dir: _dir,
        spec,
        conn,
    } = fraud_with("[state.quota.recent]\nmax_entries = 3\n").await;
    // 3 customers, 40 transactions.
    let txs = produce::transactions(40, 3, 5, 0);
    let run = Running::start(&spec);
    publish_txs(&conn.js, "txn.in", &txs).await;
    wait_for_len(&conn.js, "OUT", 9, Duration::from_secs(30)).await;
    wait_for_len(&conn.js, "DLQ", 31, Duration::from_secs(30)).await;
    let dead = eddy_tests::read_stored(&conn.js, "txn.dlq")
        .await
        .expect("dead letters");
    let outs = eddy_tests::read_stored(&conn.js, "txn.out")
        .await
        .expect("outputs");
    assert_eq!((outs.len(), dead.len()), (9, 31));
    for d in &dead {
        assert_eq!(header(d, "Eddy-Error-Kind"), "quota");
        let why = header(d, "Eddy-Error");
        assert!(
            why.contains("4 entries") && why.contains("[state.quota.recent] max_entries = 3"),
            "{why}"
        );
    }
    // Exactly the first three of each customer passed; their state is those three only.
    let mut customers: Vec<String> = txs.iter().map(|t| t.customer.clone()).collect();
    customers.sort();
    customers.dedup();
    for c in &customers {
        let first3: Vec<u64> = txs
            .iter()
            .filter(|t| &t.customer == c)
            .take(3)
            .map(|t| t.amount_cents)
            .collect();
        let stats = ask(&conn, Op::Get, "stats", c).await;
        assert_eq!(stats["value"]["count"], 3, "{stats}");
        let recent = ask(&conn, Op::List, "recent", c).await;
        assert_eq!(recent["values"], serde_json::json!(first3), "{recent}");
    }
    let metrics = run.metrics.render();
    assert!(
        metrics.contains("eddy_state_quota_total{pipeline=\"fraud\",action=\"rejected\"} 31"),
        "{metrics}"
    );
    // `eddy status` counts them too.
    let status: Vec<eddy_host::control::HostStatus> = eddy_host::cli::hosts::ask(
        &conn,
        "fraud",
        "status",
        serde_json::json!({}),
        Duration::from_secs(5),
    )
    .await
    .expect("status");
    assert_eq!(
        status[0].quota,
        Some(eddy_host::control::QuotaStatus {
            rejected: 31,
            evicted: 0
        })
    );
    run.stop().await;
}

/// `recent` evicts down to 3: every customer's list holds its 3 newest amounts, and each output
/// shows the 3 before it. `seen` of dedupe-filter evicts down to 2 ids per customer: exactly the
/// two written last are kept, so an evicted id passes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evict_keeps_exactly_the_newest_entries() {
    let Fixture {
        nats: _nats,
        dir: _dir,
        spec,
        conn,
    } = fraud_with("[state.quota.recent]\nmax_entries = 3\npolicy = \"evict\"\n").await;
    let txs = produce::transactions(40, 3, 6, 0);
    let run = Running::start(&spec);
    publish_txs(&conn.js, "txn.in", &txs).await;
    wait_for_len(&conn.js, "OUT", 40, Duration::from_secs(30)).await;
    let outs = eddy_tests::read_stored(&conn.js, "txn.out")
        .await
        .expect("outputs");
    assert_eq!(outs.len(), 40);
    for (i, (t, o)) in txs.iter().zip(&outs).enumerate() {
        let before: Vec<u64> = txs[..i]
            .iter()
            .filter(|p| p.customer == t.customer)
            .map(|p| p.amount_cents)
            .collect();
        let shown = &before[before.len().saturating_sub(3)..];
        let v: Value = serde_json::from_slice(&o.payload).expect("json");
        assert_eq!(
            v["recent_cents"],
            serde_json::json!(shown),
            "output {i}: {v}"
        );
    }
    let c = &txs[0].customer;
    let all: Vec<u64> = txs
        .iter()
        .filter(|t| &t.customer == c)
        .map(|t| t.amount_cents)
        .collect();
    let recent = ask(&conn, Op::List, "recent", c).await;
    assert_eq!(recent["values"], serde_json::json!(all[all.len() - 3..]));
    run.stop().await;

    // A map: dedupe-filter's `seen`, at most 2 ids per customer, evicting.
    let mut spec = PipelineSpec::new(
        "fraud",
        &spec.nats_url,
        &spec.state_dir.join("dedupe"),
        plugin("dedupe-filter"),
    );
    spec.extra = "[state.quota.seen]\nmax_entries = 2\npolicy = \"evict\"\n".into();
    // Its own input: the transactions above are gone from the stream, so none is replayed
    // into this state (or its outputs counted, once the dedupe window passed).
    conn.js
        .get_stream("TXN")
        .await
        .expect("input stream")
        .purge()
        .await
        .expect("purge");
    let before = eddy_tests::stream_len(&conn.js, "OUT").await.expect("len");
    let run = Running::start(&spec);
    let tx = |id: &str| {
        serde_json::json!({"id": id, "customer": "c-1", "amount_cents": 1, "ts": 1})
            .to_string()
            .into_bytes()
    };
    // Published one at a time, so each id is written in its own batch, in this order.
    for id in ["id-3", "id-1", "id-2"] {
        conn.js
            .publish("txn.in", tx(id).into())
            .await
            .expect("publish")
            .await
            .expect("stored");
        wait_for_len(
            &conn.js,
            "OUT",
            before
                + 1
                + ["id-3", "id-1", "id-2"]
                    .iter()
                    .position(|x| *x == id)
                    .unwrap_or(0) as u64,
            Duration::from_secs(30),
        )
        .await;
        // Write times are milliseconds: the next id is written in a later one.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let q = Query {
        state: Some("seen".into()),
        key: Some("c-1".into()),
        ..Query::default()
    };
    let seen = query::nats::ask(&conn, "fraud", Op::Map, &q)
        .await
        .expect("map");
    let kept: Vec<&str> = seen["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["key"].as_str())
        .collect();
    // id-3 was written first: evicted though it sorts last.
    assert_eq!(kept, ["id-1", "id-2"], "{seen}");
    // So id-3 passes again; id-2 is still a duplicate.
    for id in ["id-2", "id-3"] {
        conn.js
            .publish("txn.in", tx(id).into())
            .await
            .expect("publish")
            .await
            .expect("stored");
    }
    wait_for_len(&conn.js, "OUT", before + 4, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let outs = eddy_tests::read_stored(&conn.js, "txn.out")
        .await
        .expect("outputs");
    let last: Value =
        serde_json::from_slice(&outs.last().expect("an output").payload).expect("json");
    assert_eq!(last["id"], "id-3");
    assert_eq!(
        eddy_tests::stream_len(&conn.js, "OUT").await.expect("len"),
        before + 4,
        "id-2 was dropped as a duplicate"
    );
    // Two evictions: id-3 when id-2 came, id-1 when id-3 came back.
    let metrics = run.metrics.render();
    assert!(
        metrics.contains("eddy_state_quota_total{pipeline=\"fraud\",action=\"evicted\"} 2"),
        "{metrics}"
    );
    run.stop().await;
}
