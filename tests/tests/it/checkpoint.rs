//! Checkpoints, exactly-once output and savepoints, proven against a real nats-server and
//! real crashes (SIGKILL of the `eddy` binary).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use eddy_host::cli::produce;
use eddy_host::pipeline::RunOptions;
use eddy_host::query::{self, Op, Query};
use eddy_tests::hosts::HostProcess;
use eddy_tests::{
    Fixture, NatsServer, PipelineSpec, Running, create_stream, plugin, publish_txs, stream_len,
    wait_for_len,
};
use serde_json::Value;

/// Every output message: message id → payload.
async fn outputs(js: &async_nats::jetstream::Context) -> BTreeMap<String, Value> {
    let msgs = eddy_tests::read_stored(js, "txn.out")
        .await
        .expect("read outputs");
    let mut out = BTreeMap::new();
    for m in msgs {
        let id = m
            .headers
            .iter()
            .find(|(n, _)| n == "Nats-Msg-Id")
            .map(|(_, v)| v.clone())
            .expect("every output has a message id");
        let v: Value = serde_json::from_slice(&m.payload).expect("json");
        assert!(out.insert(id.clone(), v).is_none(), "{id} stored twice");
    }
    out
}

/// Reference statistics per customer: (count, sum).
fn reference_stats(txs: &[produce::Transaction]) -> BTreeMap<String, (u64, u64)> {
    let mut m: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for t in txs {
        let e = m.entry(t.customer.clone()).or_default();
        e.0 += 1;
        e.1 += t.amount_cents;
    }
    m
}

/// Every customer's `stats` as the running host answers it (queryable state over NATS).
async fn queried_stats(
    nats: &eddy_host::transport::Nats,
    pipeline: &str,
    customers: impl Iterator<Item = String>,
) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for c in customers {
        let q = Query {
            state: Some("stats".into()),
            key: Some(c.clone()),
            ..Query::default()
        };
        let v = query::nats::ask(nats, pipeline, Op::Get, &q)
            .await
            .expect("query answered");
        out.insert(c, v["value"].clone());
    }
    out
}

/// The chaos test of the issue: 200k events, the host SIGKILLed at random moments ten times
/// and restarted each time: the output stream holds each expected output exactly once, and
/// the final state equals the reference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_kill_9s_over_200k_events_leave_exact_outputs_and_state() {
    let Fixture {
        nats: _nats,
        dir,
        spec,
        conn,
    } = Fixture::start_with(|url, dir| {
        let mut spec = PipelineSpec::new("fraud", url, dir, plugin("fraud-enrich"));
        spec.extra = "[checkpoint]\ninterval_ms = 300\n".into();
        spec
    })
    .await;
    let config = dir.path().join("pipeline.toml");
    spec.write(&config).expect("write config");
    let txs = produce::transactions(200_000, 500, 77, 0);
    publish_txs(&conn.js, "txn.in", &txs).await;

    // Kill at pseudo-random moments (fixed seed): when the output count passes a random mark
    // (so every kill is mid-stream), plus a random 0-300 ms; restart each time.
    let mut seed: u64 = 0x5eed;
    let mut next = || {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        seed >> 33
    };
    let mut marks: Vec<u64> = (0..10).map(|_| 5_000 + next() % 190_000).collect();
    marks.sort_unstable();
    for (i, mark) in marks.iter().enumerate() {
        let mut child = HostProcess::spawn("a", &config, &dir.path().join(format!("run{i}.log")));
        wait_for_len(&conn.js, "OUT", *mark, Duration::from_secs(120)).await;
        tokio::time::sleep(Duration::from_millis(next() % 300)).await;
        child.signal("-KILL");
        child.wait_exit_within(Duration::from_secs(20));
    }
    let in_flight = stream_len(&conn.js, "OUT").await.expect("len");
    assert!(
        in_flight < 200_000,
        "the last kill happened mid-stream ({in_flight} outputs)"
    );
    let mut child = HostProcess::spawn("a", &config, &dir.path().join("final.log"));
    let got = wait_for_len(&conn.js, "OUT", 200_000, Duration::from_secs(180)).await;
    // Let any replayed duplicate arrive, then check the final state while the host runs.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reference = reference_stats(&txs);
    let stats = queried_stats(&conn, "fraud", reference.keys().cloned()).await;
    child.signal("-TERM");
    child.wait_exit_within(Duration::from_secs(20));
    assert_eq!(got, 200_000);
    assert_eq!(
        stream_len(&conn.js, "OUT").await.expect("len"),
        200_000,
        "no output stored twice"
    );
    let outs = outputs(&conn.js).await;
    let ids: HashSet<&str> = outs.values().filter_map(|v| v["id"].as_str()).collect();
    assert_eq!(ids.len(), 200_000, "every transaction has its one output");
    for (customer, (count, sum)) in &reference {
        let s = &stats[customer];
        assert_eq!(s["count"], *count, "{customer}: count");
        assert_eq!(s["sum_cents"], *sum, "{customer}: sum");
    }
    // Every output equals the reference computed from the input order.
    let expected = eddy_tests::fraud_reference(&txs, 70);
    let by_id: HashMap<&str, &Value> = outs
        .values()
        .map(|v| (v["id"].as_str().unwrap_or_default(), v))
        .collect();
    for e in &expected {
        let id = e["id"].as_str().expect("id");
        assert_eq!(by_id[id], e, "output of {id}");
    }
}

/// A corrupt newest checkpoint: the host says so, restores the previous one, and the result
/// is still exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_newest_checkpoint_falls_back_and_the_result_is_still_exact() {
    let Fixture {
        nats: _nats,
        dir: _dir,
        spec,
        conn,
    } = Fixture::start_with(|url, dir| {
        // On the host's own disk: with a store beyond it, a damaged local copy is fetched
        // again.
        let mut spec =
            PipelineSpec::new("fraud", url, dir, plugin("fraud-enrich")).local_checkpoints();
        spec.extra = "[checkpoint]\ninterval_ms = 100\nretain = 3\n".into();
        spec
    })
    .await;
    let txs = produce::transactions(12_000, 80, 5, 0);
    // In two parts with a pause longer than the interval between them: a cut is taken only
    // when something happened, and a fast machine takes all 6,000 events within one interval.
    publish_txs(&conn.js, "txn.in", &txs[..3_000]).await;
    let run = Running::start(&spec);
    wait_for_len(&conn.js, "OUT", 3_000, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    publish_txs(&conn.js, "txn.in", &txs[3_000..6_000]).await;
    wait_for_len(&conn.js, "OUT", 6_000, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    run.stop().await;

    // Damage the newest checkpoint's MANIFEST copy.
    let cps = spec.config().checkpoints();
    let list = cps.list();
    assert!(
        list.len() >= 2,
        "several checkpoints were kept: {}",
        list.len()
    );
    let newest = list.last().expect("newest");
    let manifest_file = newest
        .files
        .iter()
        .find(|f| f.name.starts_with("MANIFEST"))
        .expect("a MANIFEST file");
    let path = cps.dir().join(&manifest_file.stored);
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[10] ^= 0x55;
    std::fs::write(&path, bytes).expect("damage");

    publish_txs(&conn.js, "txn.in", &txs[6_000..]).await;
    let run = Running::start(&spec);
    let got = wait_for_len(&conn.js, "OUT", 12_000, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    run.stop().await;
    assert_eq!(got, 12_000);
    assert_eq!(stream_len(&conn.js, "OUT").await.expect("len"), 12_000);
    let outs = outputs(&conn.js).await;
    let mut got: Vec<Value> = outs.into_values().collect();
    let mut want = eddy_tests::fraud_reference(&txs, 70);
    let key = |v: &Value| v["id"].as_str().unwrap_or_default().to_string();
    got.sort_by_key(key);
    want.sort_by_key(key);
    assert_eq!(got, want, "exact after falling back");
}

/// A savepoint restored into a fresh state directory with twice the key groups answers every
/// key like the original, and the pipeline goes on from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_savepoint_restores_elsewhere_with_other_key_groups() {
    let Fixture {
        nats,
        dir,
        spec,
        conn,
    } = Fixture::start("fraud", "fraud-enrich").await;
    let txs = produce::transactions(8_000, 300, 11, 0);
    publish_txs(&conn.js, "txn.in", &txs[..5_000]).await;
    // What a crash while a savepoint was written left: gone once the host has started.
    let left = spec.state_dir.join("savepoint-staging").join("crashed");
    std::fs::create_dir_all(&left).expect("dir");
    std::fs::write(left.join("000009.sst"), b"a linked copy").expect("file");
    let run = Running::start(&spec);
    wait_for_len(&conn.js, "OUT", 5_000, Duration::from_secs(60)).await;
    assert!(!left.exists(), "{} was left", left.display());
    let customers: Vec<String> = reference_stats(&txs).into_keys().collect();
    let before = queried_stats(&conn, "fraud", customers.iter().cloned()).await;
    // A savepoint that cannot be written (its directory would be inside a file) fails with the
    // cause, and leaves no copy of the state behind.
    let blocked = dir.path().join("not-a-dir");
    std::fs::write(&blocked, b"a file").expect("file");
    let answers = eddy_host::control::request(
        &conn,
        "fraud",
        "savepoint",
        serde_json::json!({"name": "failed", "dir": blocked}),
        Duration::from_secs(60),
        |_| {},
    )
    .await
    .expect("a host answers");
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert!(
        answers[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("not-a-dir")),
        "{answers:?}"
    );
    let staging = spec.state_dir.join("savepoint-staging").join("failed");
    assert!(!staging.exists(), "{} was left", staging.display());

    let sp_dir = dir.path().join("sp");
    let answers = eddy_host::control::request(
        &conn,
        "fraud",
        "savepoint",
        serde_json::json!({"name": "moved", "dir": sp_dir}),
        Duration::from_secs(60),
        |_| {},
    )
    .await
    .expect("a host answers");
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert!(answers[0].get("ok").is_some(), "{answers:?}");
    run.stop().await;

    // Elsewhere: a new state directory, 256 key groups instead of 128.
    let other = tempfile::tempdir().expect("tempdir");
    let mut spec2 = PipelineSpec::new("fraud", &nats.url(), other.path(), plugin("fraud-enrich"));
    spec2.extra = String::new();
    let toml = spec2
        .toml()
        .replace("[pipeline]\n", "[pipeline]\nkey_groups = 256\n");
    let cfg2 = eddy_host::config::PipelineConfig::parse(&toml).expect("config");
    let run = Running::start_with(
        cfg2,
        RunOptions {
            from_savepoint: Some(sp_dir.join("moved")),
            ..RunOptions::default()
        },
    );
    let mut after = BTreeMap::new();
    eddy_tests::eventually(
        "the restored host answers queries",
        Duration::from_secs(30),
        async || {
            let q = Query {
                state: Some("stats".into()),
                key: Some(customers[0].clone()),
                ..Query::default()
            };
            query::nats::ask(&conn, "fraud", Op::Get, &q).await.is_ok()
        },
    )
    .await;
    after.extend(queried_stats(&conn, "fraud", customers.iter().cloned()).await);
    assert_eq!(after, before, "identical answers for every key");

    // It resumes the input where the savepoint's cut was: the rest comes out exactly once.
    publish_txs(&conn.js, "txn.in", &txs[5_000..]).await;
    let got = wait_for_len(&conn.js, "OUT", 8_000, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    run.stop().await;
    assert_eq!(got, 8_000);
    assert_eq!(stream_len(&conn.js, "OUT").await.expect("len"), 8_000);
    let final_stats = {
        let run = Running::start_with(
            eddy_host::config::PipelineConfig::parse(&toml).expect("config"),
            RunOptions::default(),
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let s = queried_stats(&conn, "fraud", customers.iter().cloned()).await;
        run.stop().await;
        s
    };
    for (c, (count, sum)) in reference_stats(&txs) {
        assert_eq!(final_stats[&c]["count"], count, "{c}");
        assert_eq!(final_stats[&c]["sum_cents"], sum, "{c}");
    }
}

/// One run three ways: straight, with crashes, restored from a savepoint mid-way. The output
/// streams hold the same messages (ids and payloads).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_run_three_ways_gives_the_same_output() {
    let txs = produce::transactions(20_000, 150, 31, 0);

    // Straight.
    let straight = {
        let Fixture {
            nats: _nats,
            dir: _dir,
            spec,
            conn,
        } = Fixture::start("fraud", "fraud-enrich").await;
        publish_txs(&conn.js, "txn.in", &txs).await;
        let run = Running::start(&spec);
        wait_for_len(&conn.js, "OUT", 20_000, Duration::from_secs(60)).await;
        run.stop().await;
        outputs(&conn.js).await
    };

    // With crashes.
    let crashed = {
        let Fixture {
            nats: _nats,
            dir,
            spec,
            conn,
        } = Fixture::start_with(|url, dir| {
            let mut spec = PipelineSpec::new("fraud", url, dir, plugin("fraud-enrich"));
            spec.extra = "[checkpoint]\ninterval_ms = 200\n".into();
            spec
        })
        .await;
        let config = dir.path().join("pipeline.toml");
        spec.write(&config).expect("write");
        publish_txs(&conn.js, "txn.in", &txs).await;
        for (i, at) in [3_000u64, 9_000, 15_000].iter().enumerate() {
            let mut child = HostProcess::spawn("a", &config, &dir.path().join(format!("r{i}.log")));
            wait_for_len(&conn.js, "OUT", *at, Duration::from_secs(60)).await;
            child.signal("-KILL");
            child.wait_exit_within(Duration::from_secs(20));
        }
        let mut child = HostProcess::spawn("a", &config, &dir.path().join("final.log"));
        wait_for_len(&conn.js, "OUT", 20_000, Duration::from_secs(60)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        child.signal("-TERM");
        child.wait_exit_within(Duration::from_secs(20));
        outputs(&conn.js).await
    };

    // Restored from a savepoint taken half-way, on another state directory.
    let restored = {
        let Fixture {
            nats,
            dir,
            spec,
            conn,
        } = Fixture::start("fraud", "fraud-enrich").await;
        publish_txs(&conn.js, "txn.in", &txs[..10_000]).await;
        let run = Running::start(&spec);
        wait_for_len(&conn.js, "OUT", 10_000, Duration::from_secs(60)).await;
        let sp = dir.path().join("sps");
        eddy_host::control::request(
            &conn,
            "fraud",
            "savepoint",
            serde_json::json!({"name": "half", "dir": sp}),
            Duration::from_secs(60),
            |_| {},
        )
        .await
        .expect("savepoint");
        run.stop().await;
        let elsewhere = tempfile::tempdir().expect("tempdir");
        let spec2 = PipelineSpec::new(
            "fraud",
            &nats.url(),
            elsewhere.path(),
            plugin("fraud-enrich"),
        );
        publish_txs(&conn.js, "txn.in", &txs[10_000..]).await;
        let run = Running::start_with(
            spec2.config(),
            RunOptions {
                from_savepoint: Some(sp.join("half")),
                ..RunOptions::default()
            },
        );
        wait_for_len(&conn.js, "OUT", 20_000, Duration::from_secs(60)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        run.stop().await;
        outputs(&conn.js).await
    };

    assert_eq!(straight.len(), 20_000);
    assert_eq!(crashed, straight, "with crashes: same messages");
    assert_eq!(
        restored, straight,
        "restored from a savepoint: same messages"
    );
}

/// The output stream's duplicate window must cover a checkpoint interval plus recovery:
/// refused by default, allowed with a warning when asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_duplicate_window_is_refused_with_the_fix() {
    let nats = NatsServer::start().expect("nats-server");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = PipelineSpec::new("fraud", &nats.url(), dir.path(), plugin("fraud-enrich"));
    let conn = nats.connect().await.expect("connect");
    create_stream(&conn.js, "TXN", &["txn.in"])
        .await
        .expect("input");
    create_stream(&conn.js, "DLQ", &["txn.dlq"])
        .await
        .expect("dlq");
    conn.js
        .create_stream(async_nats::jetstream::stream::Config {
            name: "OUT".into(),
            subjects: vec!["txn.out".into()],
            duplicate_window: Duration::from_secs(10),
            ..Default::default()
        })
        .await
        .expect("out");
    let e = Running::start(&spec).failure(Duration::from_secs(30)).await;
    let msg = format!("{e:#}");
    assert!(msg.contains("stream OUT"), "{msg}");
    assert!(msg.contains("keeps message ids for 10 s"), "{msg}");
    assert!(msg.contains("--dupe-window"), "{msg}");
    assert!(msg.contains("dedupe_check = \"warn\""), "{msg}");

    spec.extra = "[checkpoint]\ndedupe_check = \"warn\"\n".into();
    let run = Running::start(&spec);
    publish_txs(&conn.js, "txn.in", &produce::transactions(100, 5, 1, 0)).await;
    assert_eq!(
        wait_for_len(&conn.js, "OUT", 100, Duration::from_secs(30)).await,
        100
    );
    run.stop().await;
}
