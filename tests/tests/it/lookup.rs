//! Async lookups against real stores: Redis, PostgreSQL, NATS KV and a local HTTP server with
//! a configurable delay, through the `chaos` plugin's `lookup` action (it plans the lookup in
//! `prepare` and emits what `handle` got).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use eddy_host::cli::tail;
use eddy_tests::{
    Fixture, PipelineSpec, PostgresServer, RedisServer, Running, SlowHttp, plugin, stream_len,
    wait_for_len,
};
use serde_json::{Value, json};

fn spec(nats_url: &str, dir: &std::path::Path, stores: &str) -> PipelineSpec {
    let mut spec = PipelineSpec::new("lk", nats_url, dir, plugin("chaos"));
    spec.key = r#"{ json = "/k" }"#.into();
    spec.extra = stores.to_string();
    spec
}

async fn publish(js: &async_nats::jetstream::Context, payloads: &[Value]) {
    let p: Vec<Bytes> = payloads
        .iter()
        .map(|v| Bytes::from(v.to_string()))
        .collect();
    eddy_host::cli::produce::publish(js, "txn.in", p)
        .await
        .expect("publish");
}

fn lookup(i: usize, k: &str, store: &str, key: &str) -> Value {
    json!({"i": i, "k": k, "action": "lookup", "store": store, "key": key})
}

/// Each output with the input sequence it came from (read from its message id,
/// `<pipeline>:<input>:<sequence>:<index>`), in stream order.
async fn answers_by_input(js: &async_nats::jetstream::Context) -> Vec<(u64, Value)> {
    eddy_tests::read_stored(js, "txn.out")
        .await
        .expect("read")
        .iter()
        .map(|m| {
            let id = m
                .headers
                .iter()
                .find(|(h, _)| h == "Nats-Msg-Id")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            let seq: u64 = id
                .split(':')
                .nth(2)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            (seq, serde_json::from_slice(&m.payload).expect("json"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_store_answers_like_a_reference() {
    let redis = RedisServer::start().expect("redis");
    let pg = PostgresServer::start().expect("postgres");
    let http = SlowHttp::start(
        HashMap::from([("m-1".to_string(), r#"{"name":"Corner Shop"}"#.to_string())]),
        1,
    )
    .await
    .expect("http");
    redis
        .cmd(&["SET", "profile:c-1", r#"{"segment":"gold"}"#])
        .expect("set");
    redis
        .cmd(&["HSET", "card:c-1", "brand", "visa", "country", "FR"])
        .expect("hset");
    pg.sql("CREATE TABLE merchants (id integer primary key, name text, risk real, tags jsonb)")
        .expect("table");
    pg.sql("INSERT INTO merchants VALUES (7, 'Luna Travel', 0.5, '[\"travel\"]')")
        .expect("row");
    let stores = format!(
        r#"
[lookup.profiles]
kind = "redis"
url = "{redis}"
key_prefix = "profile:"

[lookup.cards]
kind = "redis"
url = "{redis}"
command = "hgetall"
key_prefix = "card:"

[lookup.merchants]
kind = "postgres"
url = "{pg}"
query = "SELECT name, risk, tags FROM merchants WHERE id = $1"

[lookup.shops]
kind = "http"
url_template = "{http}/shops/{{key}}"

[lookup.flags]
kind = "nats-kv"
bucket = "flags"
"#,
        redis = redis.url(),
        pg = pg.url(),
        http = http.url()
    );
    let Fixture {
        nats: _nats,
        dir: _dir,
        spec,
        conn,
    } = Fixture::start_with(|url, dir| spec(url, dir, &stores)).await;
    let kv = conn
        .js
        .create_key_value(async_nats::jetstream::kv::Config {
            bucket: "flags".into(),
            ..Default::default()
        })
        .await
        .expect("kv");
    kv.put("c-1", Bytes::from_static(b"\"blocked\""))
        .await
        .expect("kv put");
    let inputs = vec![
        lookup(0, "c-1", "profiles", "c-1"),
        lookup(1, "c-2", "profiles", "c-2"),
        lookup(2, "c-1", "cards", "c-1"),
        lookup(3, "c-1", "merchants", "7"),
        lookup(4, "c-1", "merchants", "8"),
        lookup(5, "c-1", "merchants", "not-a-number"),
        lookup(6, "c-1", "shops", "m-1"),
        lookup(7, "c-1", "shops", "m-2"),
        lookup(8, "c-1", "flags", "c-1"),
        lookup(9, "c-1", "flags", "c-9"),
        lookup(10, "c-1", "nowhere", "x"),
    ];
    publish(&conn.js, &inputs).await;
    let run = Running::start(&spec);
    assert_eq!(
        wait_for_len(&conn.js, "OUT", 11, Duration::from_secs(30)).await,
        11
    );
    run.stop().await;
    let mut got = answers_by_input(&conn.js).await;
    got.sort_by_key(|(s, _)| *s);
    let values: Vec<Value> = got.into_iter().map(|(_, v)| v).collect();
    let found = |v: Value| json!({"found": true, "value": v, "error": null});
    let missing = json!({"found": false, "value": null, "error": null});
    assert_eq!(values[0], found(json!({"segment": "gold"})));
    assert_eq!(values[1], missing);
    assert_eq!(values[2], found(json!({"brand": "visa", "country": "FR"})));
    assert_eq!(
        values[3],
        found(json!({"name": "Luna Travel", "risk": 0.5, "tags": ["travel"]}))
    );
    assert_eq!(values[4], missing);
    assert_eq!(
        values[5], missing,
        "a key that is not a number matches no integer id"
    );
    assert_eq!(values[6], found(json!({"name": "Corner Shop"})));
    assert_eq!(values[7], missing);
    assert_eq!(values[8], found(json!("blocked")));
    assert_eq!(values[9], missing);
    let err = values[10]["error"].as_str().expect("an error");
    assert!(err.contains("`nowhere` is not declared"), "{err}");
}

/// Ordered mode publishes in input order even when early events wait longer; unordered lets
/// fast events overtake slow ones, but never those of the same key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_keeps_input_order_and_unordered_keeps_key_order() {
    let mut values = HashMap::new();
    for i in 0..400 {
        values.insert(format!("fast{i}"), "1".to_string());
        values.insert(format!("slow{i}"), "1".to_string());
    }
    let http = SlowHttp::start(values, 5).await.expect("http");
    let inputs: Vec<Value> = (0..400)
        .map(|i| {
            let key = if i % 5 == 0 {
                format!("slow{i}")
            } else {
                format!("fast{i}")
            };
            lookup(i, &format!("k{}", i % 9), "h", &key)
        })
        .collect();
    for mode in ["ordered", "unordered"] {
        let stores = format!(
            "[lookups]\ncapacity = 64\nmode = \"{mode}\"\n\n[lookup.h]\nkind = \"http\"\nurl_template = \"{}/{{key}}\"\ncache = {{ mode = \"none\" }}\n",
            http.url()
        );
        let Fixture {
            nats: _nats,
            dir: _dir,
            spec,
            conn,
        } = Fixture::start_with(|url, dir| {
            let mut spec = spec(url, dir, &stores);
            spec.batch = 16;
            spec
        })
        .await;
        publish(&conn.js, &inputs).await;
        let run = Running::start(&spec);
        assert_eq!(
            wait_for_len(&conn.js, "OUT", 400, Duration::from_secs(60)).await,
            400
        );
        run.stop().await;
        let order: Vec<u64> = answers_by_input(&conn.js)
            .await
            .into_iter()
            .map(|(seq, _)| seq)
            .collect();
        let in_order = order.windows(2).all(|w| w[0] < w[1]);
        // Input sequence s carries i = s - 1; its key is k{i % 9}.
        let mut last_by_key: HashMap<u64, u64> = HashMap::new();
        for s in &order {
            let key = (s - 1) % 9;
            if let Some(prev) = last_by_key.insert(key, *s) {
                assert!(
                    prev < *s,
                    "{mode}: key k{key} out of order ({prev} then {s})"
                );
            }
        }
        match mode {
            "ordered" => assert!(in_order, "ordered mode publishes in input order"),
            _ => assert!(
                !in_order,
                "unordered mode lets fast lookups overtake slow ones"
            ),
        }
    }
}

/// With a store that answers in 50 ms and room for 50 events, throughput is far above one
/// event per lookup time: the events wait concurrently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_wait_for_a_slow_store_concurrently() {
    let values: HashMap<String, String> = (0..1_000)
        .map(|i| (format!("m{i}"), "1".to_string()))
        .collect();
    let http = SlowHttp::start(values, 50).await.expect("http");
    let stores = format!(
        "[lookups]\ncapacity = 50\n\n[lookup.h]\nkind = \"http\"\nurl_template = \"{}/{{key}}\"\ncache = {{ mode = \"none\" }}\n",
        http.url()
    );
    let Fixture {
        nats: _nats,
        dir: _dir,
        spec,
        conn,
    } = Fixture::start_with(|url, dir| {
        let mut spec = spec(url, dir, &stores);
        spec.batch = 25;
        spec
    })
    .await;
    let inputs: Vec<Value> = (0..1_000)
        .map(|i| lookup(i, &format!("c{}", i % 100), "h", &format!("m{i}")))
        .collect();
    publish(&conn.js, &inputs).await;
    let run = Running::start(&spec);
    // Timed from the first output, so start-up (a cold compile on a loaded machine) does not
    // count.
    let first = wait_for_len(&conn.js, "OUT", 1, Duration::from_secs(60)).await;
    let started = Instant::now();
    assert_eq!(
        wait_for_len(&conn.js, "OUT", 1_000, Duration::from_secs(60)).await,
        1_000
    );
    let secs = started.elapsed().as_secs_f64();
    run.stop().await;
    let rate = (1_000 - first) as f64 / secs;
    let ideal = 50.0 / 0.050;
    eprintln!(
        "50 ms store, capacity 50: {rate:.0} events/s = {:.2} of capacity/latency ({ideal:.0}/s)",
        rate / ideal
    );
    assert!(
        rate > 10.0 * 20.0,
        "events wait concurrently: {rate:.0}/s, one at a time would be 20/s"
    );
}

/// Retries happen as configured, a timeout covers them all, and each failure policy does
/// what it says; the pipeline never stops because of a lookup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_timeouts_and_each_failure_policy() {
    let http = SlowHttp::start(HashMap::from([("a".into(), "1".into())]), 1)
        .await
        .expect("http");
    http.set_failing(true);
    for policy in ["dead-letter", "not-found", "drop", "plugin"] {
        let stores = format!(
            "[lookup.h]\nkind = \"http\"\nurl_template = \"{}/{{key}}\"\ncache = {{ mode = \"none\" }}\ntimeout_ms = 2000\non_failure = \"{policy}\"\nretry = {{ attempts = 3, backoff_ms = 5 }}\n",
            http.url()
        );
        let Fixture {
            nats: _nats,
            dir: _dir,
            spec,
            conn,
        } = Fixture::start_with(|url, dir| spec(url, dir, &stores)).await;
        let before = http.requests();
        // Five different keys: lookups of one key by events waiting together share one fetch.
        let inputs: Vec<Value> = (0..5)
            .map(|i| lookup(i, "c", "h", &format!("a{i}")))
            .collect();
        publish(&conn.js, &inputs).await;
        let run = Running::start(&spec);
        eddy_tests::eventually(policy, Duration::from_secs(30), async || {
            run.metrics.events_in.load(Ordering::Relaxed) == 5
                && stream_len(&conn.js, "OUT").await.unwrap_or(0)
                    + stream_len(&conn.js, "DLQ").await.unwrap_or(0)
                    + run.metrics.dropped.load(Ordering::Relaxed)
                    >= 5
        })
        .await;
        let metrics = run.metrics.clone();
        run.stop().await;
        let (out, dlq) = (
            stream_len(&conn.js, "OUT").await.expect("len"),
            stream_len(&conn.js, "DLQ").await.expect("len"),
        );
        match policy {
            "dead-letter" => {
                assert_eq!((out, dlq), (0, 5));
                let letters = tail::read(&conn.js, "txn.dlq", 5, Duration::from_secs(2))
                    .await
                    .expect("read");
                let h = |n: &str| {
                    letters[0]
                        .headers
                        .iter()
                        .find(|(k, _)| k == n)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default()
                };
                assert_eq!(h("Eddy-Error-Kind"), "lookup");
                assert!(h("Eddy-Error").contains("HTTP 500"), "{}", h("Eddy-Error"));
                assert!(
                    h("Eddy-Error").contains("after 3 attempts"),
                    "{}",
                    h("Eddy-Error")
                );
            }
            "not-found" => {
                assert_eq!((out, dlq), (5, 0));
                let v = answers_by_input(&conn.js).await;
                assert_eq!(
                    v[0].1,
                    json!({"found": false, "value": null, "error": null})
                );
            }
            "drop" => {
                assert_eq!((out, dlq), (0, 0));
                assert_eq!(metrics.lookup_drops.load(Ordering::Relaxed), 5);
            }
            _ => {
                assert_eq!((out, dlq), (5, 0));
                let v = answers_by_input(&conn.js).await;
                let e = v[0].1["error"].as_str().unwrap_or_default();
                assert!(e.contains("HTTP 500"), "the plugin sees the error: {e}");
            }
        }
        assert_eq!(
            http.requests() - before,
            15,
            "{policy}: 3 attempts for each of 5 events"
        );
    }

    // A timeout covers every retry.
    http.set_failing(false);
    http.set_delay(400);
    let stores = format!(
        "[lookup.h]\nkind = \"http\"\nurl_template = \"{}/{{key}}\"\ncache = {{ mode = \"none\" }}\ntimeout_ms = 150\n",
        http.url()
    );
    let Fixture {
        nats: _nats,
        dir: _dir,
        spec,
        conn,
    } = Fixture::start_with(|url, dir| spec(url, dir, &stores)).await;
    publish(&conn.js, &[lookup(0, "c", "h", "a")]).await;
    let started = Instant::now();
    let run = Running::start(&spec);
    assert_eq!(
        wait_for_len(&conn.js, "DLQ", 1, Duration::from_secs(30)).await,
        1
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    run.stop().await;
    let letters = tail::read(&conn.js, "txn.dlq", 1, Duration::from_secs(2))
        .await
        .expect("read");
    let reason = letters[0]
        .headers
        .iter()
        .find(|(k, _)| k == "Eddy-Error")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    assert!(reason.contains("no answer within 150 ms"), "{reason}");
}

/// Redis goes away mid-run and comes back: the host keeps running, events in between follow
/// the policy (dead letters here), none is lost, and lookups succeed again afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_follows_the_policy_and_processing_resumes() {
    let mut redis = RedisServer::start().expect("redis");
    redis.cmd(&["SET", "c-1", "1"]).expect("set");
    let stores = format!(
        "[lookup.r]\nkind = \"redis\"\nurl = \"{}\"\ncache = {{ mode = \"none\" }}\ntimeout_ms = 300\nretry = {{ attempts = 2, backoff_ms = 10 }}\n",
        redis.url()
    );
    let Fixture {
        nats: _nats,
        dir: _dir,
        spec,
        conn,
    } = Fixture::start_with(|url, dir| spec(url, dir, &stores)).await;
    let run = Running::start(&spec);
    publish(
        &conn.js,
        &(0..50)
            .map(|i| lookup(i, "c", "r", "c-1"))
            .collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(
        wait_for_len(&conn.js, "OUT", 50, Duration::from_secs(30)).await,
        50
    );

    redis.stop();
    publish(
        &conn.js,
        &(50..70)
            .map(|i| lookup(i, "c", "r", "c-1"))
            .collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(
        wait_for_len(&conn.js, "DLQ", 20, Duration::from_secs(60)).await,
        20
    );

    redis.restart().expect("redis back");
    redis.cmd(&["SET", "c-1", "1"]).expect("set");
    // Until the host reconnects, events may still fail: keep sending until one is found.
    let mut sent = 70;
    eddy_tests::eventually(
        "a lookup succeeds after the restart",
        Duration::from_secs(30),
        async || {
            publish(&conn.js, &[lookup(sent, "c", "r", "c-1")]).await;
            sent += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
            stream_len(&conn.js, "OUT").await.unwrap_or(0) > 50
        },
    )
    .await;
    publish(
        &conn.js,
        &(sent..sent + 30)
            .map(|i| lookup(i, "c", "r", "c-1"))
            .collect::<Vec<_>>(),
    )
    .await;
    let total = sent as u64 + 30;
    eddy_tests::eventually(
        "every event is out or dead-lettered",
        Duration::from_secs(30),
        async || {
            stream_len(&conn.js, "OUT").await.unwrap_or(0)
                + stream_len(&conn.js, "DLQ").await.unwrap_or(0)
                >= total
        },
    )
    .await;
    run.stop().await;
    let (out, dlq) = (
        stream_len(&conn.js, "OUT").await.expect("len"),
        stream_len(&conn.js, "DLQ").await.expect("len"),
    );
    assert_eq!(out + dlq, total, "none lost, none twice");
    let answers = answers_by_input(&conn.js).await;
    assert!(
        answers.iter().all(|(_, v)| v["found"] == true),
        "outputs found their value"
    );
    let last: Vec<u64> = answers
        .iter()
        .map(|(s, _)| *s)
        .filter(|s| *s > total - 30)
        .collect();
    assert_eq!(
        last.len(),
        30,
        "after the restart, processing is back to normal"
    );
}

/// Partial caches keep recent answers (and "not found") until they expire; full caches load
/// everything and reload on their interval, asking the store nothing per key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caches_hit_and_expire_as_configured() {
    let values = || HashMap::from([("a".into(), "1".into()), ("b".into(), "2".into())]);
    let http = SlowHttp::start(values(), 1).await.expect("http");
    let loads = SlowHttp::start(values(), 1).await.expect("http");
    let stores = format!(
        r#"
[lookup.partial]
kind = "http"
url_template = "{url}/{{key}}"
cache = {{ mode = "partial", max_entries = 100, expire_after_write_ms = 700 }}

[lookup.full]
kind = "http"
url_template = "{full}/{{key}}"
load = "{full}/all"
cache = {{ mode = "full", reload_interval_ms = 500 }}
"#,
        url = http.url(),
        full = loads.url()
    );
    let Fixture {
        nats: _nats,
        dir: _dir,
        spec,
        conn,
    } = Fixture::start_with(|url, dir| spec(url, dir, &stores)).await;
    let run = Running::start(&spec);
    let base = http.requests();
    // 40 lookups of 3 keys (one missing): 3 misses; the rest are answered from the cache, or
    // wait for the fetch already under way for the same key.
    let inputs: Vec<Value> = (0..40)
        .map(|i| lookup(i, "c", "partial", ["a", "b", "zz"][i % 3]))
        .collect();
    publish(&conn.js, &inputs).await;
    assert_eq!(
        wait_for_len(&conn.js, "OUT", 40, Duration::from_secs(30)).await,
        40
    );
    assert_eq!(
        http.requests() - base,
        3,
        "one fetch per key, \"not found\" cached too"
    );
    // After expire_after_write, the keys are fetched again.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let base = http.requests();
    publish(
        &conn.js,
        &(40..43)
            .map(|i| lookup(i, "c", "partial", ["a", "b", "zz"][i % 3]))
            .collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(
        wait_for_len(&conn.js, "OUT", 43, Duration::from_secs(30)).await,
        43
    );
    assert_eq!(
        http.requests() - base,
        3,
        "expired entries are fetched again"
    );

    // Full cache: answers without asking per key; a changed value shows after a reload.
    let loads_before = loads.requests();
    let t0 = Instant::now();
    publish(
        &conn.js,
        &(43..63)
            .map(|i| lookup(i, "c", "full", "a"))
            .collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(
        wait_for_len(&conn.js, "OUT", 63, Duration::from_secs(30)).await,
        63
    );
    let reloads_possible = t0.elapsed().as_millis() as u64 / 500 + 1;
    assert!(
        loads.requests() - loads_before <= reloads_possible,
        "only reloads of /all, no per-key requests"
    );
    loads.set("a", "99");
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    publish(
        &conn.js,
        &[
            lookup(63, "c", "full", "a"),
            lookup(64, "c", "full", "nope"),
        ],
    )
    .await;
    assert_eq!(
        wait_for_len(&conn.js, "OUT", 65, Duration::from_secs(30)).await,
        65
    );
    let metrics = run.metrics.clone();
    run.stop().await;
    let mut v = answers_by_input(&conn.js).await;
    v.sort_by_key(|(s, _)| *s);
    assert_eq!(v[63].1["value"], 99, "the reloaded value");
    assert_eq!(
        v[64].1["found"], false,
        "absent from a full cache means absent"
    );
    let text = metrics.render();
    assert!(
        text.contains("store=\"partial\",result=\"hit\"} 37"),
        "{text}"
    );
    assert!(
        text.contains("store=\"partial\",result=\"miss\"} 6"),
        "{text}"
    );
}

/// The Grafana dashboard in `docs/grafana/eddy.json` queries only what a running pipeline
/// exports: every metric it names (histograms by their `_bucket`, `_sum` and `_count` series)
/// and every label it groups or filters by, read from a pipeline with keyed state and a lookup
/// store, which is when every family is present.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grafana_dashboard_queries_only_what_a_pipeline_exports() {
    let http = SlowHttp::start(HashMap::from([("a".into(), "1".into())]), 1)
        .await
        .expect("http");
    let stores = format!(
        "\n[lookup.h]\nkind = \"http\"\nurl_template = \"{}/{{key}}\"\n",
        http.url()
    );
    let Fixture {
        nats: _nats,
        dir: _dir,
        spec,
        conn,
    } = Fixture::start_with(|url, dir| spec(url, dir, &stores)).await;
    let run = Running::start(&spec);
    publish(
        &conn.js,
        &(0..3).map(|i| lookup(i, "c", "h", "a")).collect::<Vec<_>>(),
    )
    .await;
    wait_for_len(&conn.js, "OUT", 3, Duration::from_secs(30)).await;
    let exported = run.metrics.render();
    run.stop().await;

    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/grafana/eddy.json");
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("the dashboard")).expect("json");
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 20, "the dashboard's queries: {exprs:?}");
    let families: Vec<&str> = exported
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    // Prometheus's naming: counters, and only they, end in `_total` (a gauge typed as a
    // counter would be summed by `rate()` into nonsense).
    for l in exported.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let (name, kind) = l.split_once(' ').expect("name and type");
        assert_eq!(kind == "counter", name.ends_with("_total"), "{l}");
    }
    for expr in &exprs {
        for name in words(expr).filter(|w| w.starts_with("eddy_")) {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|f| exported.contains(&format!("# TYPE {f} histogram")))
                .unwrap_or(name);
            assert!(
                families.contains(&family),
                "{name} (in `{expr}`) is not exported; the exported families: {families:?}"
            );
        }
        // Labels grouped by (`by (a, b)`) and matched (`a="v"`) are on some exported series.
        let grouped = expr
            .split("by (")
            .skip(1)
            .filter_map(|s| s.split(')').next())
            .flat_map(|s| s.split(','))
            .map(str::trim);
        let matched = expr
            .split('{')
            .skip(1)
            .filter_map(|s| s.split('}').next())
            .flat_map(|s| s.split(','))
            .filter_map(|m| m.split(['=', '!']).next())
            .map(str::trim);
        for label in grouped.chain(matched) {
            // `instance` is Prometheus's own label for the scraped host; `le` the buckets'.
            if label.is_empty() || label == "instance" {
                continue;
            }
            assert!(
                exported.contains(&format!("{label}=\"")),
                "label {label} (in `{expr}`) is on no exported series"
            );
        }
    }
}

/// Every `expr` in a Grafana dashboard: panel targets and template variable queries.
fn collect_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", Value::String(s)) => out.push(s.clone()),
                    ("query", Value::String(s)) if s.contains("eddy_") => out.push(s.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// The identifiers in a PromQL expression.
fn words(expr: &str) -> impl Iterator<Item = &str> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
}

/// Redis's count of calls to `command` since its stats were last reset.
fn redis_calls(redis: &RedisServer, command: &str) -> u64 {
    let info = redis.cmd(&["INFO", "commandstats"]).expect("info");
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

/// What Redis and the host counted while 500 lookups ran.
struct Counted {
    mget: u64,
    get: u64,
    /// The host's `eddy_lookups_unplanned_total` for store `r`.
    unplanned: Option<u64>,
}

/// Runs the 500 lookup events `inputs` (event i asks for `m{i}`, which Redis holds as
/// `"v{i}"`) through a pipeline with `stores`, checks that every event got its own value, and
/// returns what Redis served and the host counted meanwhile.
async fn five_hundred_lookups(redis: &RedisServer, stores: &str, inputs: &[Value]) -> Counted {
    redis.cmd(&["CONFIG", "RESETSTAT"]).expect("reset");
    let Fixture {
        nats: _nats,
        dir: _dir,
        spec,
        conn,
    } = Fixture::start_with(|url, dir| spec(url, dir, stores)).await;
    publish(&conn.js, inputs).await;
    let run = Running::start(&spec);
    wait_for_len(&conn.js, "OUT", 500, Duration::from_secs(60)).await;
    let series = "eddy_lookups_unplanned_total{pipeline=\"lk\",store=\"r\"}";
    let unplanned = run
        .metrics
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok());
    run.stop().await;
    let answers = answers_by_input(&conn.js).await;
    assert_eq!(answers.len(), 500);
    for (seq, v) in &answers {
        let i = seq - 1;
        assert_eq!(v["found"], true, "{v}");
        assert_eq!(v["value"], format!("v{i}"), "event {i}: {v}");
    }
    Counted {
        mget: redis_calls(redis, "mget"),
        get: redis_calls(redis, "get"),
        unplanned,
    }
}

/// 500 events, each asking Redis for its own key, admitted together in a backlog: the keys
/// asked while a request is made go in the next one (`MGET`), so the store sees a few dozen
/// requests instead of 500, and every event still gets its own value. With `max_batch = 1`
/// it sees one `GET` per key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_asked_together_share_one_request() {
    let redis = RedisServer::start().expect("redis");
    let sets: Vec<Vec<String>> = (0..500)
        .map(|i| vec!["SET".into(), format!("m{i}"), format!("\"v{i}\"")])
        .collect();
    redis.pipe(&sets).expect("load");
    for max_batch in [256, 1] {
        let stores = format!(
            "[lookups]\ncapacity = 100\n\n[lookup.r]\nkind = \"redis\"\nurl = \"{}\"\nmax_batch = {max_batch}\ncache = {{ mode = \"none\" }}\n",
            redis.url()
        );
        let inputs: Vec<Value> = (0..500)
            .map(|i| lookup(i, &format!("c{}", i % 50), "r", &format!("m{i}")))
            .collect();
        let Counted { mget, get, .. } = five_hundred_lookups(&redis, &stores, &inputs).await;
        eprintln!("max_batch {max_batch}: {mget} MGET and {get} GET for 500 keys");
        if max_batch == 1 {
            assert_eq!((mget, get), (0, 500), "one GET per key");
        } else {
            assert!(mget > 0 && mget + get <= 100, "{mget} MGET + {get} GET");
        }
    }
}

/// Lookups the pipeline file plans (`lookup.<store>.plan`) are fetched before `handle`, like
/// those `prepare` plans, without the plugin planning them: 500 events whose lookups the
/// plugin does not plan (`lookup-unplanned`) cost one `GET` each, fetched when `handle` asks,
/// and a few dozen requests (`MGET`s) once the file plans them by a JSON pointer. With a second
/// store the file does not plan, `prepare` still plans that one's lookups (they too come in
/// `MGET`s); with every store planned by the file, `prepare` is not called at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_the_pipeline_file_plans_are_fetched_before_handle() {
    let redis = RedisServer::start().expect("redis");
    let sets: Vec<Vec<String>> = (0..500)
        .map(|i| vec!["SET".into(), format!("m{i}"), format!("\"v{i}\"")])
        .collect();
    redis.pipe(&sets).expect("load");
    let store = |name: &str, plan: &str| {
        format!(
            "[lookup.{name}]\nkind = \"redis\"\nurl = \"{}\"\ncache = {{ mode = \"none\" }}\n{plan}\n",
            redis.url()
        )
    };
    // For each run: what the file declares, and the action and store of event i.
    type Action = fn(usize) -> (&'static str, &'static str);
    let runs: [(String, Action); 4] = [
        (store("r", ""), |_| ("lookup-unplanned", "r")),
        (store("r", "plan = \"/key\""), |_| ("lookup-unplanned", "r")),
        (
            format!("{}{}", store("r", "plan = [\"/key\"]"), store("q", "")),
            |i| {
                if i % 2 == 0 {
                    ("lookup-unplanned", "r")
                } else {
                    ("lookup", "q")
                }
            },
        ),
        // Every store planned by the file (by a field these events lack): `prepare` is not
        // called, so the keys it would have planned are asked for unplanned.
        (store("r", "plan = \"/missing\""), |_| ("lookup", "r")),
    ];
    for (n, (stores, action)) in runs.into_iter().enumerate() {
        let stores = format!("[lookups]\ncapacity = 100\n\n{stores}");
        let inputs: Vec<Value> = (0..500)
            .map(|i| {
                let (act, store) = action(i);
                json!({"i": i, "k": format!("c{}", i % 50), "action": act, "store": store, "key": format!("m{i}")})
            })
            .collect();
        let Counted {
            mget,
            get,
            unplanned,
        } = five_hundred_lookups(&redis, &stores, &inputs).await;
        eprintln!("run {n}: {mget} MGET and {get} GET for 500 keys, {unplanned:?} unplanned");
        match n {
            0 => {
                assert_eq!(
                    (mget, get),
                    (0, 500),
                    "unplanned: one GET per key, when handle asks"
                );
                assert_eq!(unplanned, Some(500), "the host counts each");
            }
            3 => assert_eq!(
                unplanned,
                Some(500),
                "prepare was not called: its keys were asked for unplanned"
            ),
            _ => {
                assert_eq!(unplanned, Some(0), "run {n}: every key planned");
                // A planned key asked alone (the last of a burst) goes as a GET.
                assert!(
                    mget > 0 && mget + get <= 100,
                    "run {n}: {mget} MGET + {get} GET"
                );
            }
        }
    }
}

/// Statements PostgreSQL has committed in the `postgres` database so far (each lookup
/// statement outside a transaction is one), read once the server has the counts of sessions
/// that ended.
fn pg_statements(pg: &PostgresServer) -> u64 {
    std::thread::sleep(Duration::from_millis(700));
    pg.sql("SELECT xact_commit FROM pg_stat_database WHERE datname = 'postgres'")
        .expect("stats")
        .parse()
        .expect("a count")
}

/// 500 events, each asking PostgreSQL for its own row, admitted together in a backlog: the
/// keys asked while a statement runs go in the next one (`unnest` over the keys, the query
/// run once per key inside the server), so PostgreSQL executes a few dozen statements instead
/// of 500. Keys an integer id cannot take (not a number, beyond `integer`'s range) match no
/// row, in a batch as alone, and do not spoil the batch they are in. With `max_batch = 1`
/// each key is a statement of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_asked_together_share_one_postgres_statement() {
    let pg = PostgresServer::start().expect("postgres");
    pg.sql("CREATE TABLE merchants (id integer primary key, name text)")
        .expect("table");
    pg.sql("INSERT INTO merchants SELECT i, 'v' || i FROM generate_series(0, 499) AS i")
        .expect("rows");
    // What an event asks for: its own id, but every 50th a key no integer id matches.
    let key = |i: usize| match i % 100 {
        0 => "not-a-number".to_string(),
        // 2^32 + i: cut down to 32 bits it would be `i`.
        50 => (4_294_967_296u64 + i as u64).to_string(),
        _ => i.to_string(),
    };
    for max_batch in [256, 1] {
        let stores = format!(
            "[lookups]\ncapacity = 100\n\n[lookup.m]\nkind = \"postgres\"\nurl = \"{}\"\nquery = \"SELECT name FROM merchants WHERE id = $1\"\nmax_batch = {max_batch}\ncache = {{ mode = \"none\" }}\n",
            pg.url()
        );
        let Fixture {
            nats: _nats,
            dir: _dir,
            spec,
            conn,
        } = Fixture::start_with(|url, dir| spec(url, dir, &stores)).await;
        let inputs: Vec<Value> = (0..500)
            .map(|i| lookup(i, &format!("c{}", i % 50), "m", &key(i)))
            .collect();
        publish(&conn.js, &inputs).await;
        let before = pg_statements(&pg);
        let run = Running::start(&spec);
        wait_for_len(&conn.js, "OUT", 500, Duration::from_secs(60)).await;
        run.stop().await;
        let statements = pg_statements(&pg) - before;
        let answers = answers_by_input(&conn.js).await;
        assert_eq!(answers.len(), 500);
        for (seq, v) in &answers {
            let i = (seq - 1) as usize;
            if i.is_multiple_of(50) {
                assert_eq!(
                    v,
                    &json!({"found": false, "value": null, "error": null}),
                    "event {i}"
                );
            } else {
                assert_eq!(v["found"], true, "event {i}: {v}");
                assert_eq!(v["value"], json!({"name": format!("v{i}")}), "event {i}");
            }
        }
        eprintln!("max_batch {max_batch}: {statements} statements for 500 keys");
        if max_batch == 1 {
            // Each of the 490 keys that can match is a statement (and a few more to connect).
            assert!(statements >= 490, "{statements} statements");
        } else {
            assert!(statements <= 100, "{statements} statements");
        }
    }
}
