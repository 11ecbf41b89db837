//! Hot reload against a real nats-server: versions deployed through the object store are
//! swapped under a running pipeline, broken ones are refused or rolled back, and every host of
//! a pipeline follows one deploy.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bytes::Bytes;
use eddy_tests::{
    Fixture, NatsServer, PipelineSpec, Running, create_two_host_streams, deployment, host_status,
    plugin, stream_len, variant, wait_deployment, wait_for_len,
};
use serde_json::{Value, json};

fn spec(nats_url: &str, dir: &std::path::Path) -> PipelineSpec {
    let mut spec = PipelineSpec::new("swap", nats_url, dir, plugin("chaos"));
    spec.key = r#"{ json = "/k" }"#.into();
    spec.batch = 32;
    spec.extra = "[reload]\nprobation_events = 40\nprobation_ms = 1000\n".into();
    spec
}

/// How long a deploy may take to reach a status here.
const WITHIN: Duration = Duration::from_secs(30);

/// The reason a host recorded for what happened to `version`.
fn reason_of(status: &Value, version: &str) -> String {
    deployment(status, version).expect("recorded")["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Outputs in input order: (input sequence, key, count, version).
async fn outputs(js: &async_nats::jetstream::Context) -> Vec<(u64, String, u64, String)> {
    let mut out: Vec<(u64, String, u64, String)> = eddy_tests::read_stored(js, "txn.out")
        .await
        .expect("read")
        .iter()
        .map(|m| {
            let h = |name: &str| {
                m.headers
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            let v: Value = serde_json::from_slice(&m.payload).expect("json");
            let seq = h("Nats-Msg-Id")
                .split(':')
                .nth(2)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            (
                seq,
                v["k"].as_str().unwrap_or_default().to_string(),
                h("Eddy-Count").parse().unwrap_or(0),
                h("Eddy-Plugin-Version"),
            )
        })
        .collect();
    out.sort();
    out
}

/// Per key, the counts must be 1, 2, 3, ...: state is continuous, nothing twice, nothing lost.
fn assert_counts_continuous(outs: &[(u64, String, u64, String)]) {
    let mut per_key: HashMap<&str, u64> = HashMap::new();
    for (seq, k, count, _) in outs {
        let next = per_key.entry(k).or_default();
        *next += 1;
        assert_eq!(*count, *next, "key {k} at input {seq}");
    }
}

/// A steady stream while 20 versions are deployed one after another: every input has exactly
/// one output, produced by the version live at that moment (versions only move forward, in
/// deployment order), and state goes on across every swap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_swaps_under_a_steady_stream_lose_and_duplicate_nothing() {
    let Fixture {
        nats: _nats,
        dir: _dir,
        spec,
        conn,
    } = Fixture::start_with(spec).await;
    let run = Running::start(&spec);
    let base = std::fs::read(plugin("chaos")).expect("chaos.wasm");
    let mut versions = vec![eddy_host::engine::version_of(&base)];
    // Deploy only once the host runs (a version deployed before it starts is its first).
    wait_deployment(&conn, "swap", &versions[0], "live", 1, WITHIN).await;

    // A producer: 20 events every 10 ms over 10 keys, until every swap is done.
    let js = conn.js.clone();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let producer = tokio::spawn(async move {
        let mut i = 0u64;
        loop {
            for _ in 0..20 {
                let p = json!({"k": format!("c-{}", i % 10), "action": "count", "i": i});
                js.publish("txn.in", Bytes::from(p.to_string()))
                    .await
                    .expect("publish");
                i += 1;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            if *stop_rx.borrow() {
                return i;
            }
        }
    });
    for n in 1..=20u32 {
        let wasm = variant(&base, n);
        let v = eddy_host::reload::deploy(&conn, "eddy-plugins", "swap", &wasm, "test")
            .await
            .expect("deploy");
        wait_deployment(&conn, "swap", &v, "live", 1, WITHIN).await;
        versions.push(v);
    }
    // The last version handles a while of the stream too.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = stop_tx.send(true);
    let sent = producer.await.expect("producer");
    assert_eq!(
        wait_for_len(&conn.js, "OUT", sent, Duration::from_secs(60)).await,
        sent
    );
    let s = host_status(&conn, "swap", 1).await;
    run.stop().await;
    assert_eq!(
        stream_len(&conn.js, "OUT").await.expect("len"),
        sent,
        "nothing twice"
    );

    let outs = outputs(&conn.js).await;
    assert_eq!(outs.len() as u64, sent, "every input has its output");
    assert_counts_continuous(&outs);
    let rank: HashMap<&str, usize> = versions
        .iter()
        .enumerate()
        .map(|(i, v)| (v.as_str(), i))
        .collect();
    let mut last = 0;
    let mut seen = BTreeMap::new();
    for (seq, _, _, v) in &outs {
        let r = *rank
            .get(v.as_str())
            .unwrap_or_else(|| panic!("unknown version {v} at {seq}"));
        assert!(r >= last, "input {seq}: version {v} after a newer one");
        last = r;
        *seen.entry(r).or_insert(0u64) += 1;
    }
    assert_eq!(last, 20, "the last version handled the last events");
    assert!(seen.len() >= 15, "most versions handled events: {seen:?}");
    let pauses: Vec<u64> = s[0]["deployments"]
        .as_array()
        .expect("deployments")
        .iter()
        .filter_map(|d| d["swap_pause_us"].as_u64())
        .collect();
    assert_eq!(pauses.len(), 20, "{}", s[0]["deployments"]);
    let mut sorted = pauses.clone();
    sorted.sort_unstable();
    eprintln!(
        "swap pause over 20 swaps: p50 {} us, p99 {} us, max {} us",
        sorted[sorted.len() / 2],
        sorted[(sorted.len() * 99 / 100).min(sorted.len() - 1)],
        sorted[sorted.len() - 1]
    );
}

/// Versions that cannot run: one whose `init` fails and one that is not an Eddy processor are
/// refused before they run; one that traps on every event is rolled back after its probation
/// events, which the previous version then handles. Nothing is lost or published twice, and
/// the reasons are reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_versions_are_refused_or_rolled_back_with_the_reason() {
    let Fixture {
        nats: _nats,
        dir: _dir,
        spec,
        conn,
    } = Fixture::start_with(spec).await;
    let run = Running::start(&spec);
    let publish = async |from: u64, to: u64| {
        for i in from..to {
            let p = json!({"k": format!("c-{}", i % 4), "action": "count", "i": i});
            conn.js
                .publish("txn.in", Bytes::from(p.to_string()))
                .await
                .expect("publish")
                .await
                .expect("stored");
        }
    };
    publish(0, 100).await;
    assert_eq!(
        wait_for_len(&conn.js, "OUT", 100, Duration::from_secs(30)).await,
        100
    );

    // init fails.
    let init = std::fs::read(plugin("faulty-init")).expect("faulty_init.wasm");
    let v = eddy_host::reload::deploy(&conn, "eddy-plugins", "swap", &init, "test")
        .await
        .expect("deploy");
    let s = wait_deployment(&conn, "swap", &v, "rejected", 1, WITHIN).await;
    let reason = reason_of(&s[0], &v);
    assert!(reason.contains("faulty: init refuses to start"), "{reason}");

    // Not a processor at all: an empty component.
    let empty = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];
    let v = eddy_host::reload::deploy(&conn, "eddy-plugins", "swap", &empty, "test")
        .await
        .expect("deploy");
    let s = wait_deployment(&conn, "swap", &v, "rejected", 1, WITHIN).await;
    let reason = reason_of(&s[0], &v);
    assert!(reason.contains("not an Eddy processor"), "{reason}");

    // Traps on every event: rolled back, its events handled again by the previous version.
    let trap = std::fs::read(plugin("faulty-trap")).expect("faulty_trap.wasm");
    let bad = eddy_host::reload::deploy(&conn, "eddy-plugins", "swap", &trap, "test")
        .await
        .expect("deploy");
    wait_deployment(&conn, "swap", &bad, "probation", 1, WITHIN).await;
    publish(100, 300).await;
    let s = wait_deployment(&conn, "swap", &bad, "rolled-back", 1, WITHIN).await;
    let reason = reason_of(&s[0], &bad);
    assert!(reason.contains("failed (trap or budget)"), "{reason}");
    assert_eq!(
        wait_for_len(&conn.js, "OUT", 300, Duration::from_secs(30)).await,
        300
    );
    let metrics = run.metrics.clone();
    run.stop().await;
    assert_eq!(stream_len(&conn.js, "OUT").await.expect("len"), 300);
    assert_eq!(
        stream_len(&conn.js, "DLQ").await.expect("len"),
        0,
        "no trap reached the dead letters"
    );
    let outs = outputs(&conn.js).await;
    assert_counts_continuous(&outs);
    assert!(
        outs.iter().all(|(_, _, _, v)| *v != bad),
        "no output of the bad version"
    );
    let text = metrics.render();
    assert!(
        text.contains("eddy_plugin_rollbacks_total{pipeline=\"swap\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("eddy_plugin_rejections_total{pipeline=\"swap\"} 2"),
        "{text}"
    );

    // A restart remembers: the rolled-back version (still the deployed object) is not run
    // again, the history is kept, and the previous version handles the next events.
    let run = Running::start(&spec);
    publish(300, 400).await;
    assert_eq!(
        wait_for_len(&conn.js, "OUT", 400, Duration::from_secs(30)).await,
        400
    );
    let s = wait_deployment(&conn, "swap", &bad, "rolled-back", 1, WITHIN).await;
    assert!(reason_of(&s[0], &bad).contains("failed (trap or budget)"));

    // A version deployed at a quiet time stays on probation until events come.
    let chaos = std::fs::read(plugin("chaos")).expect("chaos.wasm");
    let quiet =
        eddy_host::reload::deploy(&conn, "eddy-plugins", "swap", &variant(&chaos, 7), "test")
            .await
            .expect("deploy");
    wait_deployment(&conn, "swap", &quiet, "probation", 1, WITHIN).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    wait_deployment(&conn, "swap", &quiet, "probation", 1, Duration::ZERO).await;
    // Stopped while it is on probation: the restart runs the last good version and puts the
    // quiet one on probation again, instead of taking it as passed.
    run.stop().await;
    let run = Running::start(&spec);
    publish(400, 460).await;
    wait_deployment(&conn, "swap", &quiet, "live", 1, WITHIN).await;
    let again = run.metrics.clone();
    run.stop().await;
    assert!(
        again
            .render()
            .contains("eddy_plugin_rollbacks_total{pipeline=\"swap\"} 0"),
        "the rolled-back version did not run again"
    );
    let outs = outputs(&conn.js).await;
    assert_counts_continuous(&outs);
    assert!(
        outs.iter().all(|(_, _, _, v)| *v != bad),
        "no output of the bad version"
    );
}

/// Two hosts of one pipeline (each with its own partition of the input) both switch after one
/// deploy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_of_a_pipeline_both_switch_after_one_deploy() {
    let nats = NatsServer::start().expect("nats-server");
    let conn = nats.connect().await.expect("connect");
    create_two_host_streams(&conn.js).await.expect("streams");
    let (da, db) = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );
    let host =
        |dir: &std::path::Path, part: u32| spec(&nats.url(), dir).one_of_two_hosts(part).config();
    let a = Running::start_with(host(da.path(), 0), Default::default());
    let b = Running::start_with(host(db.path(), 1), Default::default());
    eddy_tests::eventually("both hosts answer", Duration::from_secs(30), async || {
        host_status(&conn, "swap", 2).await.len() == 2
    })
    .await;
    let wasm = variant(&std::fs::read(plugin("chaos")).expect("chaos.wasm"), 77);
    let v = eddy_host::reload::deploy(&conn, "eddy-plugins", "swap", &wasm, "test")
        .await
        .expect("deploy");
    // Both hosts swapped (on probation): every event from now on meets the new version.
    wait_deployment(&conn, "swap", &v, "probation", 2, WITHIN).await;
    for (subject, i) in [("txn.a", 0), ("txn.b", 1)] {
        // Events pass probation (or its time runs out) on each host.
        for j in 0..50 {
            let p = json!({"k": format!("c-{j}"), "action": "count", "i": i * 100 + j});
            conn.js
                .publish(subject, Bytes::from(p.to_string()))
                .await
                .expect("publish")
                .await
                .expect("stored");
        }
    }
    let s = wait_deployment(&conn, "swap", &v, "live", 2, WITHIN).await;
    let hosts: Vec<&str> = s.iter().filter_map(|s| s["host"].as_str()).collect();
    assert_eq!(hosts.len(), 2, "{hosts:?}");
    assert_eq!(
        wait_for_len(&conn.js, "OUT", 100, Duration::from_secs(30)).await,
        100
    );
    let outs = outputs(&conn.js).await;
    assert!(
        outs.iter().all(|(_, _, _, ver)| *ver == v),
        "both hosts' outputs come from the new version"
    );
    a.stop().await;
    b.stop().await;
}
