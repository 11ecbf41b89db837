//! Shadow deploys on a running pipeline: a candidate version (fraud-enrich's `strict` build:
//! `flagged` from risk 40 instead of 70, and a `flags` state of its own) runs beside the live
//! one; the report names exactly the events whose output changed; promote makes its state and
//! version live with every event published once; discard leaves nothing of it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use eddy_host::cli::tail::Stored;
use eddy_host::cli::{hosts, produce};
use eddy_host::control::HostStatus;
use eddy_host::query::{self, Op, Query};
use eddy_host::reload::shadow::{self, ShadowReport};
use eddy_tests::{Fixture, PipelineSpec, Running, plugin, publish_txs, wait_for_len};
use serde_json::Value;

const BUCKET: &str = "eddy-plugins";
const WITHIN: Duration = Duration::from_secs(60);

fn header(m: &Stored, name: &str) -> String {
    m.header(name).unwrap_or_default().to_string()
}

async fn fixture() -> Fixture {
    Fixture::start_with(|url, dir| PipelineSpec::new("fraud", url, dir, plugin("fraud-enrich")))
        .await
}

/// The host's status (`None` while it is not answering: starting, say).
async fn status(conn: &eddy_host::transport::Nats) -> Option<HostStatus> {
    let mut all: Vec<HostStatus> = hosts::ask(
        conn,
        "fraud",
        "status",
        serde_json::json!({}),
        Duration::from_secs(5),
    )
    .await
    .ok()?;
    assert!(all.len() <= 1, "one host");
    all.pop()
}

/// Waits until the host's status satisfies `done`; returns that status.
async fn wait_status(
    conn: &eddy_host::transport::Nats,
    what: &str,
    done: impl Fn(&HostStatus) -> bool,
) -> HostStatus {
    let deadline = Instant::now() + WITHIN;
    loop {
        let s = status(conn).await;
        if let Some(s) = s.as_ref().filter(|s| done(s)) {
            return s.clone();
        }
        assert!(Instant::now() < deadline, "waited for {what}: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the shadow `version` has handled `events` keyed events; returns its report.
async fn shadow_after(
    conn: &eddy_host::transport::Nats,
    version: &str,
    events: u64,
) -> ShadowReport {
    let s = wait_status(conn, "the shadow's events", |s| {
        s.shadow
            .as_ref()
            .is_some_and(|r| r.version == version && r.events >= events)
    })
    .await;
    s.shadow.expect("shadow report")
}

async fn outputs(js: &async_nats::jetstream::Context) -> Vec<Stored> {
    eddy_tests::read_stored(js, "txn.out")
        .await
        .expect("outputs")
}

async fn get(conn: &eddy_host::transport::Nats, state: &str, key: &str) -> Value {
    let q = Query {
        state: Some(state.into()),
        key: Some(key.into()),
        ..Query::default()
    };
    query::nats::ask(conn, "fraud", Op::Get, &q)
        .await
        .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }))
}

fn json(m: &Stored) -> Value {
    serde_json::from_slice(&m.payload).expect("output json")
}

fn risk(v: &Value) -> u64 {
    v["risk"].as_u64().expect("risk")
}

/// The same output without `flagged`.
fn unflagged(v: &Value) -> Value {
    let mut v = v.clone();
    v.as_object_mut().expect("object").remove("flagged");
    v
}

/// 300 events with the live version alone, then the strict version as shadow for 300: the
/// report counts exactly the events whose risk is 40 to 69 as different (only `flagged`
/// differs in them, and its samples show it), every other as the same, and nothing it did is
/// published. Promoted, its `flags` state (which only it ever wrote) is live with the counts of
/// those 300 events, its version handles the next 200, and every event has exactly one output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_reports_exactly_the_changed_events_and_promote_keeps_its_state() {
    let Fixture {
        nats: _nats,
        dir: _dir,
        spec,
        conn,
    } = fixture().await;
    let live_wasm = std::fs::read(plugin("fraud-enrich")).expect("fraud-enrich");
    let strict_wasm = std::fs::read(plugin("fraud-enrich-strict")).expect("strict build");
    let live = eddy_host::engine::version_of(&live_wasm);
    let strict = eddy_host::engine::version_of(&strict_wasm);
    assert_ne!(live, strict);
    let txs = produce::transactions(800, 100, 11, 0);
    let run = Running::start(&spec);
    publish_txs(&conn.js, "txn.in", &txs[..300]).await;
    wait_for_len(&conn.js, "OUT", 300, WITHIN).await;

    let v = shadow::deploy(&conn, BUCKET, "fraud", &strict_wasm, "test")
        .await
        .expect("deploy shadow");
    assert_eq!(v, strict);
    wait_status(&conn, "the shadow to start", |s| {
        s.shadow.as_ref().is_some_and(|r| r.version == strict)
    })
    .await;
    publish_txs(&conn.js, "txn.in", &txs[300..600]).await;
    wait_for_len(&conn.js, "OUT", 600, WITHIN).await;
    let report = shadow_after(&conn, &strict, 300).await;

    let outs = outputs(&conn.js).await;
    assert_eq!(outs.len(), 600, "the shadow published nothing");
    assert!(
        outs.iter()
            .all(|o| header(o, "Eddy-Plugin-Version") == live),
        "every output is the live version's"
    );
    let changed: BTreeSet<u64> = outs[300..]
        .iter()
        .filter(|o| (40..70).contains(&risk(&json(o))))
        .map(|o| {
            let id = json(o)["id"].as_str().expect("id").to_string();
            txs.iter().position(|t| t.id == id).expect("input") as u64
        })
        .collect();
    assert!(
        changed.len() >= 10,
        "the data must exercise the difference: {} changed; risks {:?}",
        changed.len(),
        outs[300..]
            .iter()
            .map(|o| risk(&json(o)))
            .filter(|r| *r != 0 && *r != 30)
            .collect::<Vec<_>>()
    );
    assert_eq!(
        report.events, 300,
        "the shadow saw exactly the events after it started"
    );
    assert_eq!(report.differing_events, changed.len() as u64);
    assert_eq!(report.shadow_failures, 0);
    assert_eq!(report.subjects.len(), 1, "{:?}", report.subjects);
    let counts = &report.subjects["txn.out"];
    assert_eq!(counts.different, changed.len() as u64);
    assert_eq!(counts.same, 300 - changed.len() as u64);
    assert_eq!((counts.only_live, counts.only_shadow), (0, 0));
    // The samples are the first differing events, in order, each differing in `flagged` alone.
    assert_eq!(report.samples.len(), 20.min(changed.len()));
    let first_seqs: Vec<u64> = changed.iter().take(20).map(|i| i + 1).collect();
    let sampled: Vec<u64> = report.samples.iter().map(|d| d.input.seq).collect();
    assert_eq!(
        sampled, first_seqs,
        "stream sequences of the first differences"
    );
    for d in &report.samples {
        let l: Value = serde_json::from_str(&d.live.as_ref().expect("live").payload).expect("j");
        let s: Value =
            serde_json::from_str(&d.shadow.as_ref().expect("shadow").payload).expect("j");
        assert_eq!(
            (l["flagged"].clone(), s["flagged"].clone()),
            (false.into(), true.into())
        );
        assert_eq!(unflagged(&l), unflagged(&s));
        let input: Value = serde_json::from_str(&d.input.payload).expect("input json");
        assert_eq!(input["id"], l["id"]);
        assert_eq!(d.input.key, l["customer"].as_str().expect("customer"));
    }
    let metrics = run.metrics.render();
    for (verdict, n) in [("different", changed.len()), ("same", 300 - changed.len())] {
        let line = format!(
            "eddy_shadow_messages_total{{pipeline=\"fraud\",subject=\"txn.out\",verdict=\"{verdict}\"}} {n}"
        );
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
    // The live state has no `flags`: only the shadow wrote it.
    let c0 = &txs[0].customer;
    let before = get(&conn, "flags", c0).await;
    assert!(before.get("value").is_none(), "{before}");

    let v = shadow::promote(&conn, BUCKET, "fraud", "test")
        .await
        .expect("promote");
    assert_eq!(v, strict);
    let promoted = wait_status(&conn, "the promotion", |s| {
        s.plugin.as_ref().is_some_and(|p| p.version == strict) && s.shadow.is_none()
    })
    .await;
    let newest = promoted.deployments.last().expect("deployment");
    assert_eq!(
        (newest.version.as_str(), newest.status),
        (strict.as_str(), eddy_host::reload::DeployStatus::Live)
    );
    publish_txs(&conn.js, "txn.in", &txs[600..]).await;
    wait_for_len(&conn.js, "OUT", 800, WITHIN).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let outs = outputs(&conn.js).await;
    assert_eq!(outs.len(), 800, "every event exactly once");
    let ids: Vec<String> = outs
        .iter()
        .map(|o| json(o)["id"].as_str().expect("id").to_string())
        .collect();
    let expected: Vec<String> = txs.iter().map(|t| t.id.clone()).collect();
    assert_eq!(ids, expected, "one output per event, in order");
    for o in &outs[600..] {
        assert_eq!(header(o, "Eddy-Plugin-Version"), strict);
        let v = json(o);
        assert_eq!(v["flagged"], Value::Bool(risk(&v) >= 40), "{v}");
    }
    // The customers' counts run on without a gap across the promotion.
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    for o in &outs {
        let v = json(o);
        let n = seen
            .entry(v["customer"].as_str().expect("customer").to_string())
            .or_default();
        *n += 1;
        assert_eq!(v["customer_count"], *n, "{v}");
    }
    // `flags` holds what the shadow counted from event 300 on, and what the live version
    // counted since.
    for (customer, _) in seen {
        let flagged = outs[300..]
            .iter()
            .map(json)
            .filter(|v| v["customer"] == customer.as_str() && risk(v) >= 40)
            .count();
        let got = get(&conn, "flags", &customer).await;
        if flagged == 0 {
            assert!(got.get("value").is_none_or(Value::is_null), "{got}");
        } else {
            assert_eq!(got["value"], flagged, "{customer}: {got}");
        }
    }
    // A restart runs the promoted version on the promoted state.
    let flagged_customer = outs[300..]
        .iter()
        .map(json)
        .find(|v| risk(v) >= 40)
        .map(|v| v["customer"].as_str().expect("customer").to_string())
        .expect("a flagged customer");
    let before = get(&conn, "flags", &flagged_customer).await;
    run.stop().await;
    let run = Running::start(&spec);
    wait_status(&conn, "the restart", |s| {
        s.plugin.as_ref().is_some_and(|p| p.version == strict)
    })
    .await;
    assert_eq!(
        get(&conn, "flags", &flagged_customer).await["value"],
        before["value"]
    );
    // Promoting a shadow of the version already live is refused (the hosts would take no
    // swap), and the shadow is left as it was.
    shadow::deploy(&conn, BUCKET, "fraud", &strict_wasm, "test")
        .await
        .expect("the same version as shadow");
    let refused = shadow::promote(&conn, BUCKET, "fraud", "test")
        .await
        .expect_err("already live");
    assert!(
        refused
            .to_string()
            .contains("is the deployed live version already"),
        "{refused}"
    );
    assert!(
        shadow::declared(&conn, BUCKET, "fraud")
            .await
            .expect("bucket")
            .is_some(),
        "the shadow is still declared"
    );
    run.stop().await;
}

/// The strict version as shadow, then discarded: the live version never stopped or changed,
/// its outputs are the only ones, the `flags` state the shadow wrote is nowhere, and its state
/// directory is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discarded_shadow_leaves_no_trace() {
    let Fixture {
        nats: _nats,
        dir,
        spec,
        conn,
    } = fixture().await;
    let live = eddy_host::engine::version_of(
        &std::fs::read(plugin("fraud-enrich")).expect("fraud-enrich"),
    );
    let strict_wasm = std::fs::read(plugin("fraud-enrich-strict")).expect("strict build");
    let strict = eddy_host::engine::version_of(&strict_wasm);
    let txs = produce::transactions(400, 2, 12, 0);
    let run = Running::start(&spec);
    publish_txs(&conn.js, "txn.in", &txs[..100]).await;
    wait_for_len(&conn.js, "OUT", 100, WITHIN).await;
    // A shadow replaced by a newer one is discarded: its history says so.
    let first_wasm = std::fs::read(plugin("passthrough")).expect("passthrough");
    let first = shadow::deploy(&conn, BUCKET, "fraud", &first_wasm, "test")
        .await
        .expect("deploy the first shadow");
    wait_status(&conn, "the first shadow to start", |s| {
        s.shadow.as_ref().is_some_and(|r| r.version == first)
    })
    .await;
    shadow::deploy(&conn, BUCKET, "fraud", &strict_wasm, "test")
        .await
        .expect("deploy shadow");
    let replaced = wait_status(&conn, "the shadow to start", |s| {
        s.shadow.as_ref().is_some_and(|r| r.version == strict)
    })
    .await;
    let statuses: Vec<_> = replaced
        .deployments
        .iter()
        .filter(|d| d.version == first)
        .map(|d| d.status)
        .collect();
    assert_eq!(
        statuses,
        [eddy_host::reload::DeployStatus::Discarded],
        "the replaced shadow"
    );
    publish_txs(&conn.js, "txn.in", &txs[100..300]).await;
    wait_for_len(&conn.js, "OUT", 300, WITHIN).await;
    let report = shadow_after(&conn, &strict, 200).await;
    assert!(report.differing_events > 0, "{report:?}");
    let shadow_dir = dir.path().join("state").join("shadow");
    let seeded: Vec<_> = std::fs::read_dir(&shadow_dir)
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert_eq!(
        seeded.len(),
        1,
        "the shadow's state in {}",
        shadow_dir.display()
    );

    let v = shadow::discard(&conn, BUCKET, "fraud")
        .await
        .expect("discard");
    assert_eq!(v, strict);
    let after = wait_status(&conn, "the discard", |s| s.shadow.is_none()).await;
    assert_eq!(
        after.plugin.as_ref().map(|p| p.version.clone()),
        Some(live.clone())
    );
    let discarded = after
        .deployments
        .iter()
        .rev()
        .find(|d| d.version == strict)
        .expect("the shadow's deployment");
    assert_eq!(discarded.status, eddy_host::reload::DeployStatus::Discarded);
    publish_txs(&conn.js, "txn.in", &txs[300..]).await;
    wait_for_len(&conn.js, "OUT", 400, WITHIN).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let outs = outputs(&conn.js).await;
    assert_eq!(outs.len(), 400);
    for o in &outs {
        assert_eq!(header(o, "Eddy-Plugin-Version"), live);
        let v = json(o);
        assert_eq!(v["flagged"], Value::Bool(risk(&v) >= 70), "{v}");
    }
    for c in ["c-0", "c-1"] {
        let got = get(&conn, "flags", c).await;
        assert!(got.get("value").is_none(), "no flags state anywhere: {got}");
    }
    // Its state is gone: moved aside at once, deleted once closed.
    let retired = dir.path().join("state").join("retired");
    let deadline = Instant::now() + Duration::from_secs(10);
    for d in [&shadow_dir, &retired] {
        while std::fs::read_dir(d).is_ok_and(|mut d| d.next().is_some()) {
            assert!(
                Instant::now() < deadline,
                "the shadow's state is still in {}",
                d.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    run.stop().await;
}
