//! The walking pipeline end to end: real nats-server with JetStream, real RocksDB, real
//! WebAssembly components built from `plugins/`.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use eddy_host::cli::produce::{self, Transaction};
use eddy_host::cli::tail;
use eddy_host::metrics::Metrics;
use eddy_host::pipeline::{self, RunOptions};
use eddy_tests::{
    Fixture, NatsServer, PipelineSpec, Running, fraud_reference, plugin, publish_txs, wait_for_len,
};
use serde_json::{Value, json};

fn start(spec: &PipelineSpec) -> Running {
    Running::start(spec)
}

async fn read_json(js: &async_nats::jetstream::Context, subject: &str) -> Vec<Value> {
    eddy_tests::read_stored(js, subject)
        .await
        .expect("read outputs")
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).expect("output is JSON"))
        .collect()
}

/// Outputs of one customer, in order: per-key order is what a keyed pipeline promises.
fn by_customer(values: &[Value]) -> HashMap<String, Vec<Value>> {
    let mut m: HashMap<String, Vec<Value>> = HashMap::new();
    for v in values {
        let c = v["customer"].as_str().expect("customer").to_string();
        m.entry(c).or_default().push(v.clone());
    }
    m
}

/// Asserts that every customer's outputs equal the reference's, in order, and says where
/// they first differ (a whole map of 80,000 outputs would hide the one that matters).
fn assert_same_per_customer(got: &[Value], want: &[Value]) {
    let (got, want) = (by_customer(got), by_customer(want));
    let mut customers: Vec<&String> = want.keys().chain(got.keys()).collect();
    customers.sort();
    customers.dedup();
    for c in customers {
        let (g, w) = (
            got.get(c).map_or(&[][..], |v| &v[..]),
            want.get(c).map_or(&[][..], |v| &v[..]),
        );
        if let Some(i) = (0..g.len().max(w.len())).find(|&i| g.get(i) != w.get(i)) {
            panic!(
                "customer {c}: {} outputs, {} in the reference; the first difference is #{i}:\n  got  {}\n  want {}",
                g.len(),
                w.len(),
                g.get(i).map_or("nothing".into(), Value::to_string),
                w.get(i).map_or("nothing".into(), Value::to_string),
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fraud_enrichment_equals_an_independent_reference() {
    let Fixture {
        nats: _nats,
        dir: _dir,
        spec,
        conn,
    } = Fixture::start_with(|url, dir| {
        let mut spec = PipelineSpec::new("fraud", url, dir, plugin("fraud-enrich"));
        spec.plugin_config = Some("{ flag_threshold = 60 }".into());
        spec
    })
    .await;

    let txs = produce::transactions(3_000, 40, 11, 0);
    publish_txs(&conn.js, "txn.in", &txs).await;
    let run = start(&spec);
    let got = wait_for_len(&conn.js, "OUT", 3_000, Duration::from_secs(60)).await;
    let summary = run.stop().await;
    assert_eq!(got, 3_000);
    assert_eq!(summary.events_in, 3_000);
    assert_eq!(summary.dead_lettered, 0);

    let outputs = read_json(&conn.js, "txn.out").await;
    let expected = fraud_reference(&txs, 60);
    assert_eq!(outputs.len(), expected.len());
    // The pipeline processes in input order on one partition: the whole sequence matches.
    assert_eq!(outputs, expected);
    assert!(
        outputs.iter().any(|v| v["flagged"] == json!(true)),
        "the data exercises the flag"
    );
    assert!(
        outputs.iter().any(|v| v["risk"] == json!(0)),
        "and the unflagged path"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedupe_filter_passes_first_sightings_and_drops_repeats() {
    let Fixture {
        nats: _nats,
        dir: _dir,
        spec,
        conn,
    } = Fixture::start("dedupe", "dedupe-filter").await;

    let txs = produce::transactions(2_000, 30, 5, 7);
    let mut seen = HashSet::new();
    let expected: Vec<&Transaction> = txs
        .iter()
        .filter(|t| seen.insert((t.customer.clone(), t.id.clone())))
        .collect();
    assert!(expected.len() < txs.len() - 100, "the data has repeats");
    publish_txs(&conn.js, "txn.in", &txs).await;
    let run = start(&spec);
    let processed = async {
        while run
            .metrics
            .events_in
            .load(std::sync::atomic::Ordering::Relaxed)
            < 2_000
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), processed)
        .await
        .expect("all events read");
    let got = wait_for_len(
        &conn.js,
        "OUT",
        expected.len() as u64,
        Duration::from_secs(30),
    )
    .await;
    let summary = run.stop().await;
    assert_eq!(got, expected.len() as u64);
    assert_eq!(summary.dropped, (txs.len() - expected.len()) as u64);
    let outputs = read_json(&conn.js, "txn.out").await;
    let ids: Vec<(String, String)> = outputs
        .iter()
        .map(|v| {
            (
                v["customer"].as_str().unwrap_or_default().to_string(),
                v["id"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = expected
        .iter()
        .map(|t| (t.customer.clone(), t.id.clone()))
        .collect();
    assert_eq!(ids, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_mid_stream_keeps_state_and_loses_nothing() {
    let Fixture {
        nats: _nats,
        dir: _dir,
        spec,
        conn,
    } = Fixture::start("fraud", "fraud-enrich").await;
    let txs = produce::transactions(4_000, 25, 3, 0);

    // First run: the first half, stopped while the second half is arriving.
    publish_txs(&conn.js, "txn.in", &txs[..2_000]).await;
    let run = start(&spec);
    wait_for_len(&conn.js, "OUT", 1_000, Duration::from_secs(60)).await;
    let publisher = {
        let js = conn.js.clone();
        let rest = txs[2_000..].to_vec();
        tokio::spawn(async move { publish_txs(&js, "txn.in", &rest).await })
    };
    let first = run.stop().await;
    assert!(
        first.events_in >= 1_000 && first.events_in < 4_000,
        "stopped mid-stream: {first:?}"
    );
    publisher.await.expect("publisher");

    // Second run on the same state directory: continues where the first stopped.
    let run = start(&spec);
    let got = wait_for_len(&conn.js, "OUT", 4_000, Duration::from_secs(60)).await;
    run.stop().await;
    assert_eq!(got, 4_000, "every input has exactly one output");
    let outputs = read_json(&conn.js, "txn.out").await;
    let expected = fraud_reference(&txs, 70);
    // Per-customer sequences equal the reference: the running stats carried across the
    // restart (a lost state would restart counts at 1; a replay would double them).
    assert_same_per_customer(&outputs, &expected);
    let unique: HashSet<&str> = outputs.iter().filter_map(|v| v["id"].as_str()).collect();
    assert_eq!(unique.len(), 4_000, "no output twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_events_are_dead_lettered_with_reasons_and_the_rest_flow() {
    let Fixture {
        nats: _nats,
        dir: _dir,
        spec,
        conn,
    } = Fixture::start_with(|url, dir| {
        let mut spec = PipelineSpec::new("chaos", url, dir, plugin("chaos"));
        spec.key = r#"{ json = "/k" }"#.into();
        // Room for the `oom` event to reach the memory limit (32 one-MiB blocks) before the
        // CPU budget on a loaded machine: the budget is counted in wall-clock ticks.
        spec.cpu_ms = 250;
        spec.memory_mb = 32;
        spec
    })
    .await;

    let bad = ["trap", "loop", "reject", "bad-subject", "oom"];
    let mut payloads = Vec::new();
    let mut oks = 0;
    for i in 0..200 {
        let action = if i % 20 == 10 {
            bad[(i / 20) % bad.len()]
        } else {
            "ok"
        };
        if action == "ok" {
            oks += 1;
        }
        payloads.push(Bytes::from(
            json!({"k": format!("k{}", i % 4), "action": action, "i": i}).to_string(),
        ));
    }
    // Malformed input: not JSON, and JSON without the key.
    payloads.push(Bytes::from_static(b"this is not json"));
    payloads.push(Bytes::from(json!({"action": "ok"}).to_string()));
    produce::publish(&conn.js, "txn.in", payloads)
        .await
        .expect("publish");

    let run = start(&spec);
    let got = wait_for_len(&conn.js, "OUT", oks, Duration::from_secs(60)).await;
    let dead = wait_for_len(&conn.js, "DLQ", 12, Duration::from_secs(30)).await;
    let summary = run.stop().await;
    assert_eq!(got, oks, "every good event produced its output");
    assert_eq!(dead, 12, "10 failing events + 2 malformed");
    assert_eq!(summary.dead_lettered, 12);

    let letters = eddy_tests::read_stored(&conn.js, "txn.dlq")
        .await
        .expect("read dlq");
    let header = |m: &tail::Stored, name: &str| {
        m.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let mut kinds: HashMap<String, Vec<String>> = HashMap::new();
    for m in &letters {
        kinds
            .entry(header(m, "Eddy-Error-Kind"))
            .or_default()
            .push(header(m, "Eddy-Error"));
        assert!(!header(m, "Eddy-Source-Sequence").is_empty());
    }
    let reason = |kind: &str| kinds.get(kind).cloned().unwrap_or_default();
    assert_eq!(reason("cpu-budget").len(), 2, "{kinds:?}");
    assert!(
        reason("cpu-budget")[0].contains("CPU budget of 250 ms"),
        "{kinds:?}"
    );
    assert_eq!(reason("memory-limit").len(), 2, "{kinds:?}");
    assert!(
        reason("memory-limit")[0].contains("memory limit of 32 MiB"),
        "{kinds:?}"
    );
    assert_eq!(reason("trap").len(), 2, "{kinds:?}");
    assert!(
        reason("trap")[0].contains("chaos: asked to trap"),
        "the panic message is quoted: {kinds:?}"
    );
    assert_eq!(reason("rejected"), vec!["chaos: asked to reject"; 2]);
    assert_eq!(reason("contract").len(), 2, "{kinds:?}");
    assert!(
        reason("contract")[0].contains("forbidden.subject"),
        "{kinds:?}"
    );
    assert_eq!(reason("key").len(), 2, "{kinds:?}");
    assert!(
        reason("key").iter().any(|r| r.contains("not JSON")),
        "{kinds:?}"
    );
    assert!(
        reason("key").iter().any(|r| r.contains("has no `/k`")),
        "{kinds:?}"
    );

    // State survived the traps: each key's counter counts exactly its good events, in order.
    let outs = eddy_tests::read_stored(&conn.js, "txn.out")
        .await
        .expect("read out");
    let mut per_key: HashMap<String, Vec<u64>> = HashMap::new();
    for m in &outs {
        let v: Value = serde_json::from_slice(&m.payload).expect("json");
        let count: u64 = header(m, "Eddy-Count").parse().expect("count header");
        per_key
            .entry(v["k"].as_str().unwrap_or_default().to_string())
            .or_default()
            .push(count);
    }
    for (k, counts) in per_key {
        let want: Vec<u64> = (1..=counts.len() as u64).collect();
        assert_eq!(counts, want, "key {k}: counter continuous across traps");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_fails_init_stops_the_start_with_its_message() {
    let nats = NatsServer::start().expect("nats-server");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = PipelineSpec::new("chaos", &nats.url(), dir.path(), plugin("chaos"));
    spec.plugin_config = Some("{ fail_init = true }".into());
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let err = pipeline::run(
        spec.config(),
        RunOptions::default(),
        rx,
        Metrics::new("chaos"),
    )
    .await
    .expect_err("init failure stops the start");
    let msg = format!("{err:#}");
    assert!(msg.contains("chaos: init failed on purpose"), "{msg}");
    assert!(msg.contains("[plugin.config]"), "the fix is named: {msg}");
}

/// A rolling NATS upgrade as a host sees it: the server goes away twice mid-run, under a
/// pipeline that also reads a broadcast input and looks up a NATS KV bucket. The host rides
/// both out and every event is output once, as the reference says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restarted_twice_under_broadcast_and_lookup_inputs_loses_and_duplicates_nothing() {
    let Fixture {
        mut nats,
        dir: _dir,
        spec,
        conn,
    } = Fixture::start_with(|url, dir| {
        let mut spec = PipelineSpec::new("fraud", url, dir, plugin("fraud-enrich"));
        spec.plugin_config = Some(r#"{ flag_threshold = 70, profiles = "profiles" }"#.into());
        // No rules and no profiles: the reference's `null`s hold, and both inputs are read
        // (and must reconnect) all the same.
        spec.extra = r#"[broadcast.rules]
stream = "RULES"
subjects = ["rules.fraud"]

[lookup.profiles]
kind = "nats-kv"
bucket = "profiles"
on_failure = "not-found"
"#
        .into();
        spec
    })
    .await;
    eddy_tests::create_stream(&conn.js, "RULES", &["rules.fraud"])
        .await
        .expect("rules stream");
    conn.js
        .create_key_value(async_nats::jetstream::kv::Config {
            bucket: "profiles".into(),
            ..Default::default()
        })
        .await
        .expect("profiles bucket");
    // Enough that both restarts fall in the middle of the backlog: the restarted server has
    // forgotten the input's consumer (kept in memory), and the host must create it again.
    let txs = produce::transactions(80_000, 60, 17, 0);
    publish_txs(&conn.js, "txn.in", &txs).await;
    drop(conn);

    let run = start(&spec);
    for after in [10_000, 40_000] {
        let watcher = nats.connect().await.expect("connect");
        wait_for_len(&watcher.js, "OUT", after, Duration::from_secs(60)).await;
        drop(watcher);
        // The server goes away for a second and comes back with its data.
        nats.stop();
        tokio::time::sleep(Duration::from_secs(1)).await;
        nats.restart().expect("restart nats-server");
    }

    let conn = nats.connect().await.expect("reconnect");
    let got = wait_for_len(&conn.js, "OUT", 80_000, Duration::from_secs(90)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let summary = run.stop().await;
    assert_eq!(
        got, 80_000,
        "the pipeline reconnected and finished: {summary:?}"
    );
    assert_eq!(
        eddy_tests::stream_len(&conn.js, "OUT").await.expect("len"),
        80_000,
        "nothing twice"
    );
    // Messages in flight when the server went away may be stored after later ones (the
    // client re-sends its buffer on reconnect before the publisher retries a failed one), so
    // the outputs are put back in input order by the position in their message id before
    // they are compared: each is stored once, with the content the reference expects.
    let mut stored = eddy_tests::read_stored(&conn.js, "txn.out")
        .await
        .expect("read outputs");
    let input_seq = |m: &tail::Stored| -> u64 {
        let id = m
            .headers
            .iter()
            .find(|(n, _)| n == "Nats-Msg-Id")
            .map(|(_, v)| v.clone())
            .expect("every output has a message id");
        id.rsplit(':')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("<pipeline>:in:<seq>:<i>")
    };
    let reordered = stored
        .windows(2)
        .filter(|w| input_seq(&w[0]) > input_seq(&w[1]))
        .count();
    stored.sort_by_key(input_seq);
    eprintln!("outputs stored out of input order around the outage: {reordered}");
    let outputs: Vec<Value> = stored
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).expect("output is JSON"))
        .collect();
    assert_same_per_customer(&outputs, &fraud_reference(&txs, 70));
}
