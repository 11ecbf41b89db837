//! Broadcast state: a global table fed by its own stream, visible to keyed events in stream
//! timestamp order, on disk, restored from checkpoints, and read by every host.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use eddy_host::engine::Worker;
use eddy_host::engine::{BroadcastEvent, Engine, InstanceContext, Limits};
use eddy_host::metrics::Metrics;
use eddy_host::query::{self, Op, Query};
use eddy_host::state::{KeyedAccess, StateKind, StateStore, SystemClock};
use eddy_tests::{
    Fixture, NatsServer, PipelineSpec, Running, create_stream, create_two_host_streams, plugin,
    wait_for_len,
};
use serde_json::{Value, json};

fn spec(nats_url: &str, dir: &std::path::Path) -> PipelineSpec {
    let mut spec = PipelineSpec::new("rules", nats_url, dir, plugin("chaos"));
    spec.key = r#"{ json = "/k" }"#.into();
    spec.extra =
        "[broadcast.rules]\nstream = \"RULES\"\nsubjects = [\"rules.>\"]\nidle_apply_ms = 100\n"
            .into();
    spec
}

async fn publish(js: &async_nats::jetstream::Context, subject: &str, payloads: Vec<Value>) {
    for p in payloads {
        js.publish(subject.to_string(), Bytes::from(p.to_string()))
            .await
            .expect("publish")
            .await
            .expect("stored");
    }
}

fn keyed(from: usize, to: usize) -> Vec<Value> {
    (from..to)
        .map(|i| json!({"k": format!("c-{}", i % 7), "action": "rule", "rule": "limit", "i": i}))
        .collect()
}

/// Each output's `i` and `Eddy-Rule` header, in input order.
async fn rules_seen(js: &async_nats::jetstream::Context) -> Vec<(u64, String)> {
    let mut out: Vec<(u64, String)> = eddy_tests::read_stored(js, "txn.out")
        .await
        .expect("read")
        .iter()
        .map(|m| {
            let v: Value = serde_json::from_slice(&m.payload).expect("json");
            let rule = m
                .headers
                .iter()
                .find(|(h, _)| h == "Eddy-Rule")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            (v["i"].as_u64().expect("i"), rule)
        })
        .collect();
    out.sort();
    out
}

async fn broadcast_entry(
    nats: &eddy_host::transport::Nats,
    pipeline: &str,
    map: &str,
    key: &str,
) -> Value {
    let q = Query {
        broadcast_map: Some(map.into()),
        key: Some(key.into()),
        ..Query::default()
    };
    query::nats::ask(nats, pipeline, Op::Broadcast, &q)
        .await
        .expect("broadcast query")["value"]
        .clone()
}

/// The `applied` counter, once the host answers queries.
async fn applied(nats: &eddy_host::transport::Nats) -> Option<Value> {
    let q = Query {
        broadcast_map: Some("meta".into()),
        key: Some("applied".into()),
        ..Query::default()
    };
    query::nats::ask(nats, "rules", Op::Broadcast, &q)
        .await
        .ok()
        .map(|v| v["value"].clone())
}

/// The documented order: a keyed event sees every update stored before it and none after,
/// whether the pipeline reads a backlog (keyed input far ahead of the broadcast input) or
/// runs live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_update_mid_stream_changes_later_events_and_not_earlier_ones() {
    let Fixture {
        nats: _nats,
        dir: _dir,
        spec,
        conn,
    } = Fixture::start_with(spec).await;
    create_stream(&conn.js, "RULES", &["rules.>"])
        .await
        .expect("rules stream");

    // A backlog: events, an update, events, an update, events, all stored before the start.
    publish(&conn.js, "txn.in", keyed(0, 300)).await;
    publish(
        &conn.js,
        "rules.set",
        vec![json!({"op": "put", "key": "limit", "value": 100})],
    )
    .await;
    publish(&conn.js, "txn.in", keyed(300, 600)).await;
    publish(
        &conn.js,
        "rules.set",
        vec![json!({"op": "put", "key": "limit", "value": 200})],
    )
    .await;
    publish(&conn.js, "txn.in", keyed(600, 900)).await;
    let run = Running::start(&spec);
    assert_eq!(
        wait_for_len(&conn.js, "OUT", 900, Duration::from_secs(30)).await,
        900
    );

    // Live: an update, then events.
    publish(
        &conn.js,
        "rules.set",
        vec![json!({"op": "put", "key": "limit", "value": 300})],
    )
    .await;
    publish(&conn.js, "txn.in", keyed(900, 1_000)).await;
    assert_eq!(
        wait_for_len(&conn.js, "OUT", 1_000, Duration::from_secs(30)).await,
        1_000
    );
    run.stop().await;

    let seen = rules_seen(&conn.js).await;
    assert_eq!(seen.len(), 1_000);
    for (i, rule) in seen {
        let want = match i {
            0..300 => "none",
            300..600 => "100",
            600..900 => "200",
            _ => "300",
        };
        assert_eq!(rule, want, "event {i}");
    }
}

/// The same order when the host reads a backlog in small steps (`max_pending` stalls the
/// keyed input until each checkpoint acknowledges it): while the keyed input is stalled no
/// keyed event is in hand, and updates stored after events still in the stream must wait for
/// them rather than be applied as if the keyed input were idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_read_in_small_steps_sees_updates_in_stream_order() {
    let Fixture {
        nats: _nats,
        dir: _dir,
        spec,
        conn,
    } = Fixture::start_with(|url, dir| {
        let mut spec = spec(url, dir);
        spec.max_pending = Some(8);
        spec.batch = 4;
        spec
    })
    .await;
    create_stream(&conn.js, "RULES", &["rules.>"])
        .await
        .expect("rules stream");
    for (n, from) in [0, 100, 200].into_iter().enumerate() {
        publish(&conn.js, "txn.in", keyed(from, from + 100)).await;
        publish(
            &conn.js,
            "rules.set",
            vec![json!({"op": "put", "key": "limit", "value": 100 * (n + 1)})],
        )
        .await;
    }
    publish(&conn.js, "txn.in", keyed(300, 400)).await;
    // Every update is older than `idle_apply_ms` when the host starts.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let run = Running::start(&spec);
    assert_eq!(
        wait_for_len(&conn.js, "OUT", 400, Duration::from_secs(60)).await,
        400
    );
    run.stop().await;

    let seen = rules_seen(&conn.js).await;
    assert_eq!(seen.len(), 400);
    let wrong: Vec<String> = seen
        .iter()
        .filter_map(|(i, rule)| {
            let want = match i {
                0..100 => "none",
                100..200 => "100",
                200..300 => "200",
                _ => "300",
            };
            (rule != want).then(|| format!("event {i} saw {rule}, not {want}"))
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{} events saw the wrong rule: {wrong:?}",
        wrong.len()
    );
}

/// With several broadcast inputs and no keyed traffic, updates apply in the order their
/// streams stored them, across inputs: here input `b` stores `limit = 2`, then input `a` stores
/// `limit = 1`, so the table ends at 1 (applying input by input would end at 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_updates_of_several_inputs_apply_in_stored_order() {
    let Fixture {
        nats: _nats,
        dir: _dir,
        spec,
        conn,
    } = Fixture::start_with(|url, dir| {
        let mut spec = spec(url, dir);
        spec.extra = "[broadcast.a]\nstream = \"RULES_A\"\nsubjects = [\"rules.a\"]\nidle_apply_ms = 100\n\n[broadcast.b]\nstream = \"RULES_B\"\nsubjects = [\"rules.b\"]\nidle_apply_ms = 100\n".into();
        spec
    })
    .await;
    create_stream(&conn.js, "RULES_A", &["rules.a"])
        .await
        .expect("stream a");
    create_stream(&conn.js, "RULES_B", &["rules.b"])
        .await
        .expect("stream b");
    let run = Running::start(&spec);
    let wait_applied = |n: u64| {
        let conn = &conn;
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while applied(conn).await != Some(json!(n)) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{n} updates were not applied within 30 s"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    for round in 0..3u64 {
        publish(
            &conn.js,
            "rules.b",
            vec![json!({"op": "put", "key": "limit", "value": 2 + 10 * round})],
        )
        .await;
        publish(
            &conn.js,
            "rules.a",
            vec![json!({"op": "put", "key": "limit", "value": 1 + 10 * round})],
        )
        .await;
        wait_applied(2 * (round + 1)).await;
        assert_eq!(
            broadcast_entry(&conn, "rules", "rules", "limit").await,
            json!(1 + 10 * round),
            "round {round}: the update stored last wins"
        );
    }
    run.stop().await;
}

/// A write from the keyed side is an error the plugin sees, and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_from_the_keyed_side_is_refused_and_changes_nothing() {
    let Fixture {
        nats: _nats,
        dir: _dir,
        spec,
        conn,
    } = Fixture::start_with(spec).await;
    create_stream(&conn.js, "RULES", &["rules.>"])
        .await
        .expect("rules stream");
    publish(
        &conn.js,
        "rules.set",
        vec![json!({"op": "put", "key": "limit", "value": 1})],
    )
    .await;
    publish(
        &conn.js,
        "txn.in",
        vec![json!({"k": "c-1", "action": "broadcast-write"})],
    )
    .await;
    let run = Running::start(&spec);
    assert_eq!(
        wait_for_len(&conn.js, "OUT", 1, Duration::from_secs(30)).await,
        1
    );
    let out = eddy_tests::read_stored(&conn.js, "txn.out")
        .await
        .expect("read");
    let said = out[0]
        .headers
        .iter()
        .find(|(h, _)| h == "Eddy-Broadcast-Write")
        .map(|(_, v)| v.clone())
        .expect("header");
    assert!(said.contains("read-only"), "{said}");
    assert!(
        said.contains("written only from handle-broadcast"),
        "{said}"
    );
    assert!(said.contains("nothing was written"), "{said}");
    assert_eq!(
        broadcast_entry(&conn, "rules", "rules", "from-keyed").await,
        Value::Null
    );
    assert_eq!(
        broadcast_entry(&conn, "rules", "rules", "limit").await,
        json!(1)
    );
    run.stop().await;
}

/// After a restart the broadcast state and position come back from the checkpoint: updates
/// before the restart are not applied again, later ones are applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_restores_broadcast_state_and_applies_nothing_twice() {
    let Fixture {
        nats: _nats,
        dir: _dir,
        spec,
        conn,
    } = Fixture::start_with(spec).await;
    create_stream(&conn.js, "RULES", &["rules.>"])
        .await
        .expect("rules stream");
    let puts = |from: usize, to: usize| -> Vec<Value> {
        (from..to)
            .map(|i| json!({"op": "put", "key": format!("r{i}"), "value": i}))
            .collect()
    };
    publish(&conn.js, "rules.set", puts(0, 10)).await;
    let run = Running::start(&spec);
    eddy_tests::eventually("10 updates applied", Duration::from_secs(30), async || {
        applied(&conn).await == Some(json!(10))
    })
    .await;
    run.stop().await;

    publish(&conn.js, "rules.set", puts(10, 15)).await;
    let run = Running::start(&spec);
    eddy_tests::eventually("15 updates applied", Duration::from_secs(30), async || {
        applied(&conn).await == Some(json!(15))
    })
    .await;
    // Give a replay the time to show as a 16th application.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        broadcast_entry(&conn, "rules", "meta", "applied").await,
        json!(15)
    );
    assert_eq!(
        broadcast_entry(&conn, "rules", "rules", "r3").await,
        json!(3)
    );
    assert_eq!(
        broadcast_entry(&conn, "rules", "rules", "r14").await,
        json!(14)
    );
    run.stop().await;
}

/// Two hosts of one pipeline (each with its own partition of the keyed input) both read the
/// whole broadcast input: each applies every update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_on_one_broadcast_input_both_see_every_update() {
    let nats = NatsServer::start().expect("nats-server");
    let conn = nats.connect().await.expect("connect");
    create_two_host_streams(&conn.js).await.expect("streams");
    create_stream(&conn.js, "RULES", &["rules.>"])
        .await
        .expect("rules stream");
    let (da, db) = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );
    let host =
        |dir: &std::path::Path, part: u32| spec(&nats.url(), dir).one_of_two_hosts(part).config();
    let a = Running::start_with(host(da.path(), 0), Default::default());
    let b = Running::start_with(host(db.path(), 1), Default::default());
    publish(
        &conn.js,
        "rules.set",
        (0..20)
            .map(|i| json!({"op": "put", "key": "limit", "value": i}))
            .collect(),
    )
    .await;
    let probe = |subject: &str, i: usize| {
        (
            subject.to_string(),
            json!({"k": "c-1", "action": "rule", "rule": "limit", "i": i}),
        )
    };
    for (subject, p) in [probe("txn.a", 0), probe("txn.b", 1)] {
        publish(&conn.js, &subject, vec![p]).await;
    }
    assert_eq!(
        wait_for_len(&conn.js, "OUT", 2, Duration::from_secs(30)).await,
        2
    );
    let seen = rules_seen(&conn.js).await;
    assert_eq!(
        seen,
        vec![(0, "19".to_string()), (1, "19".to_string())],
        "both hosts saw all 20"
    );
    a.stop().await;
    b.stop().await;
}

/// Visiting every key of a keyed state (`applyToKeyedState`) over a million keys, with the
/// plugin held to 16 MiB of memory: the host hands the entries over in chunks, so it
/// completes, and every entry is updated.
#[test]
fn visiting_a_million_keys_completes_in_bounded_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = Arc::new(StateStore::open(dir.path(), 128, Arc::new(SystemClock)).expect("state"));
    let count = state
        .open_state("count", StateKind::Value, None)
        .expect("state");
    const N: u32 = 1_000_000;
    for chunk in (0..N).collect::<Vec<_>>().chunks(50_000) {
        let mut b = state.batch();
        {
            let mut a = KeyedAccess::new(&state, &mut b);
            for i in chunk {
                let key = format!("c-{i}");
                a.value_set(
                    &count,
                    state.key_group(key.as_bytes()),
                    key.as_bytes(),
                    b"21",
                );
            }
        }
        state.commit(b).expect("commit");
    }
    let engine = Engine::new(None).expect("engine");
    let p = engine.load_file(&plugin("chaos")).expect("plugin");
    let ctx = InstanceContext {
        state: state.clone(),
        limits: Limits {
            cpu_per_event: Duration::from_millis(1_000),
            memory_bytes: 16 << 20,
        },
        lookups: None,
        batch_calls: true,
        packed_batches: true,
    };
    let mut worker = Worker::new(p, ctx, "{}".into(), Metrics::new("visit")).expect("worker");
    let hwm_before = high_water_kib();
    let started = std::time::Instant::now();
    let results = worker
        .handle_broadcast(&[BroadcastEvent {
            input: "rules".into(),
            subject: "rules.visit".into(),
            headers: vec![],
            payload: br#"{"op":"visit","state":"count","tag":"double"}"#.to_vec(),
            timestamp_ms: 0,
            sequence: 1,
        }])
        .expect("broadcast");
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(results, vec![Ok(())]);
    let grown_mib = high_water_kib().saturating_sub(hwm_before) / 1024;
    eprintln!("visited {N} keys in {secs:.1} s; peak memory grew by {grown_mib} MiB");
    for i in [0u32, 1, 499_999, 999_999] {
        let key = format!("c-{i}");
        assert_eq!(
            state.read_value(&count, key.as_bytes()).expect("read"),
            Some(b"42".to_vec()),
            "{key} doubled"
        );
    }
    let mut b = state.batch();
    let mut a = KeyedAccess::new(&state, &mut b);
    let mut doubled = 0;
    for i in (0..N).step_by(997) {
        let key = format!("c-{i}");
        if a.value_get(&count, state.key_group(key.as_bytes()), key.as_bytes())
            .expect("get")
            == Some(b"42".to_vec())
        {
            doubled += 1;
        }
    }
    assert_eq!(
        doubled,
        (0..N).step_by(997).count(),
        "every sampled key doubled"
    );
}

/// The process's peak resident memory so far, KiB.
fn high_water_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}
