//! Queryable state from outside, over NATS and HTTP, while the pipeline runs: answers at the
//! cut the freshness mode promises, owner routing between hosts, and clear errors.

use std::collections::BTreeMap;
use std::time::Duration;

use eddy_host::cli::produce;
use eddy_host::query::{self, Freshness, Op, Query, QueryError};
use eddy_tests::{
    Fixture, NatsServer, PipelineSpec, Running, create_two_host_streams, plugin, publish_txs,
    wait_for_len,
};
use serde_json::Value;

/// The fraud pipeline with `extra` (TOML) appended to its file.
async fn fraud_with(extra: &str) -> Fixture {
    Fixture::start_with(|url, dir| {
        let mut spec = PipelineSpec::new("fraud", url, dir, plugin("fraud-enrich"));
        spec.extra = extra.to_string();
        spec
    })
    .await
}

fn stats_query(customer: &str, freshness: Freshness) -> Query {
    Query {
        state: Some("stats".into()),
        key: Some(customer.into()),
        freshness,
        ..Query::default()
    }
}

/// Per customer, the statistics after each of its transactions: (count, sum, max, last_ts).
fn prefixes(txs: &[produce::Transaction]) -> BTreeMap<String, Vec<(u64, u64, u64, u64)>> {
    let mut m: BTreeMap<String, Vec<(u64, u64, u64, u64)>> = BTreeMap::new();
    for t in txs {
        let v = m.entry(t.customer.clone()).or_default();
        let (c, s, x, _) = v.last().copied().unwrap_or_default();
        v.push((c + 1, s + t.amount_cents, x.max(t.amount_cents), t.ts));
    }
    m
}

/// Under load, a `latest` answer is always the state after some whole number of a customer's
/// events (never half of one), and `checkpoint` answers for every key equal the reference at
/// the checkpoint's input position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_match_the_reference_at_the_promised_cut_under_load() {
    let Fixture {
        nats: _nats,
        dir: _dir,
        spec,
        conn,
    } = fraud_with("[checkpoint]\ninterval_ms = 200\n").await;
    let txs = produce::transactions(60_000, 40, 3, 0);
    let reference = prefixes(&txs);
    let customers: Vec<String> = reference.keys().cloned().collect();
    let run = Running::start(&spec);
    eddy_tests::eventually(
        "the host answers queries",
        Duration::from_secs(30),
        async || {
            query::nats::ask(&conn, "fraud", Op::Describe, &Query::default())
                .await
                .is_ok()
        },
    )
    .await;
    let js = conn.js.clone();
    let all = txs.clone();
    let producer = tokio::spawn(async move { publish_txs(&js, "txn.in", &all).await });

    let mut latest_checked = 0;
    let mut cuts_checked = 0;
    while latest_checked < 400 || cuts_checked < 3 {
        // latest: a whole-event state of this customer.
        let c = &customers[latest_checked % customers.len()];
        let v = match query::nats::ask(&conn, "fraud", Op::Get, &stats_query(c, Freshness::Latest))
            .await
        {
            Ok(v) => v,
            // Before the first event the plugin has not opened its states yet.
            Err(QueryError::NotFound(_)) => continue,
            Err(e) => panic!("{e}"),
        };
        if v["found"] == true {
            let s = &v["value"];
            let k = s["count"].as_u64().expect("count") as usize;
            let (count, sum, max, last) = reference[c][k - 1];
            assert_eq!(
                (
                    s["count"].as_u64(),
                    s["sum_cents"].as_u64(),
                    s["max_cents"].as_u64(),
                    s["last_ts"].as_u64()
                ),
                (Some(count), Some(sum), Some(max), Some(last)),
                "{c}: the state after exactly {k} events"
            );
        }
        latest_checked += 1;
        // checkpoint: every key as of one cut, whose position the checkpoint records.
        if latest_checked % 100 == 0 {
            let mut answers = BTreeMap::new();
            let mut ids = std::collections::BTreeSet::new();
            for c in &customers {
                match query::nats::ask(
                    &conn,
                    "fraud",
                    Op::Get,
                    &stats_query(c, Freshness::Checkpoint),
                )
                .await
                {
                    Ok(v) => {
                        ids.insert(v["checkpoint"].as_u64().expect("checkpoint id"));
                        answers.insert(c.clone(), v["value"].clone());
                    }
                    Err(QueryError::Unavailable(_) | QueryError::NotFound(_)) => break,
                    Err(e) => panic!("{e}"),
                }
            }
            if ids.len() == 1 && answers.len() == customers.len() {
                let id = *ids.iter().next().expect("one id");
                let m = spec
                    .config()
                    .checkpoints()
                    .list()
                    .into_iter()
                    .find(|m| m.id == id);
                // The checkpoint may already be retired from disk; then check the next one.
                if let Some(m) = m {
                    let position = m.cut.positions["keyed:TXN/fraud"] as usize;
                    let cut = prefixes(&txs[..position]);
                    for c in &customers {
                        let want = cut.get(c).and_then(|v| v.last().copied());
                        let got = &answers[c];
                        match want {
                            None => assert!(got.is_null(), "{c} has no event before the cut"),
                            Some((count, sum, _, _)) => {
                                assert_eq!(got["count"], count, "{c} at checkpoint {id}");
                                assert_eq!(got["sum_cents"], sum, "{c} at checkpoint {id}");
                            }
                        }
                    }
                    cuts_checked += 1;
                }
            }
        }
    }
    producer.await.expect("producer");
    wait_for_len(&conn.js, "OUT", 60_000, Duration::from_secs(60)).await;
    run.stop().await;
}

/// `checkpoint` answers stay at the last completed checkpoint while newer events are applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_freshness_answers_from_the_last_checkpoint() {
    let Fixture {
        nats: _nats,
        dir: _dir,
        spec,
        conn,
    } = fraud_with("[checkpoint]\ninterval_ms = 3600000\ndedupe_check = \"warn\"\n").await;
    // No checkpoint but the one asked for (the long interval needs the warning mode: it
    // is longer than the output stream's duplicate window).
    let txs: Vec<produce::Transaction> = produce::transactions(2_000, 1, 9, 0);
    let run = Running::start(&spec);
    publish_txs(&conn.js, "txn.in", &txs[..1_000]).await;
    wait_for_len(&conn.js, "OUT", 1_000, Duration::from_secs(30)).await;
    eddy_tests::checkpoint_now(&conn, "fraud").await;
    publish_txs(&conn.js, "txn.in", &txs[1_000..]).await;
    wait_for_len(&conn.js, "OUT", 2_000, Duration::from_secs(30)).await;
    let c = &txs[0].customer;
    let latest = query::nats::ask(&conn, "fraud", Op::Get, &stats_query(c, Freshness::Latest))
        .await
        .expect("latest");
    let at_cut = query::nats::ask(
        &conn,
        "fraud",
        Op::Get,
        &stats_query(c, Freshness::Checkpoint),
    )
    .await
    .expect("checkpoint");
    run.stop().await;
    assert_eq!(latest["value"]["count"], 2_000);
    assert_eq!(at_cut["value"]["count"], 1_000, "{at_cut}");
    assert_eq!(at_cut["freshness"], "checkpoint");
}

/// Bad requests get clear errors; HTTP needs the bearer token when one is set; a key owned by
/// another host is answered through it, over NATS and HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_tokens_and_owner_routing() {
    let nats = NatsServer::start().expect("nats-server");
    let conn = nats.connect().await.expect("connect");
    create_two_host_streams(&conn.js).await.expect("streams");
    let (da, db) = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );
    let port_a = eddy_tests::free_port();
    let host = |dir: &std::path::Path, part: u32, http: Option<u16>| {
        let mut s = PipelineSpec::new("fraud", &nats.url(), dir, plugin("fraud-enrich"))
            .one_of_two_hosts(part);
        if let Some(port) = http {
            s.extra.push_str(&format!(
                "\n[query]\nhttp = \"127.0.0.1:{port}\"\ntoken = \"s3cret\"\n"
            ));
        }
        s.config()
    };
    let a = Running::start_with(host(da.path(), 0, Some(port_a)), Default::default());
    let b = Running::start_with(host(db.path(), 1, None), Default::default());
    // Route each customer to the host owning it, as a partitioning subject mapping would.
    let txs = produce::transactions(400, 30, 4, 0);
    let owner = |c: &str| eddy_host::state::keygroup::key_group(c.as_bytes(), 128) % 2;
    let (to_a, to_b): (Vec<_>, Vec<_>) = txs.iter().cloned().partition(|t| owner(&t.customer) == 0);
    publish_txs(&conn.js, "txn.a", &to_a).await;
    publish_txs(&conn.js, "txn.b", &to_b).await;
    wait_for_len(&conn.js, "OUT", 400, Duration::from_secs(30)).await;
    let on_b = to_b.first().expect("a customer of host b").customer.clone();
    let count_b = to_b.iter().filter(|t| t.customer == on_b).count() as u64;

    // Over NATS, every host answers every key: keys of the other host are forwarded.
    for _ in 0..6 {
        let v = query::nats::ask(
            &conn,
            "fraud",
            Op::Get,
            &stats_query(&on_b, Freshness::Latest),
        )
        .await
        .expect("answered");
        assert_eq!(v["value"]["count"], count_b);
        assert_eq!(v["host"], "host-1", "the owner answered");
    }
    let o = query::nats::ask(
        &conn,
        "fraud",
        Op::Owner,
        &Query {
            key: Some(on_b.clone()),
            ..Query::default()
        },
    )
    .await
    .expect("owner");
    assert_eq!(o["partition"], 1);

    // Errors say what is wrong.
    let e = query::nats::ask(
        &conn,
        "fraud",
        Op::Get,
        &stats_query("c-1", Freshness::Latest).tap(|q| q.state = Some("nope".into())),
    )
    .await
    .expect_err("unknown state");
    assert!(
        matches!(&e, QueryError::NotFound(m) if m.contains("no state `nope`")),
        "{e:?}"
    );
    let e = query::nats::ask(
        &conn,
        "fraud",
        Op::Map,
        &stats_query("c-1", Freshness::Latest),
    )
    .await
    .expect_err("wrong kind");
    assert!(
        matches!(&e, QueryError::BadRequest(m) if m.contains("ask `get`")),
        "{e:?}"
    );
    let raw = conn
        .client
        .request("eddy.query.fraud.get", "{not json".into())
        .await
        .expect("answered");
    let v: Value = serde_json::from_slice(&raw.payload).expect("json");
    assert_eq!(v["code"], 400);
    assert!(
        v["error"]
            .as_str()
            .unwrap_or_default()
            .contains("not a valid query"),
        "{v}"
    );
    let e = query::nats::ask(
        &conn,
        "nosuch",
        Op::Get,
        &stats_query("c-1", Freshness::Latest),
    )
    .await
    .expect_err("unknown pipeline");
    assert!(
        matches!(&e, QueryError::Unavailable(m) if m.contains("no host serves queries of pipeline nosuch")),
        "{e:?}"
    );

    // HTTP: the token is required, keys of the other host are forwarded.
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port_a}/v1/state/stats/{on_b}");
    let r = http.get(&url).send().await.expect("http");
    assert_eq!(r.status(), 401);
    let r = http
        .get(&url)
        .bearer_auth("wrong")
        .send()
        .await
        .expect("http");
    assert_eq!(r.status(), 401);
    let r = http
        .get(&url)
        .bearer_auth("s3cret")
        .send()
        .await
        .expect("http");
    assert_eq!(r.status(), 200);
    let v: Value = serde_json::from_slice(&r.bytes().await.expect("body")).expect("json");
    assert_eq!(v["value"]["count"], count_b);
    let r = http
        .get(format!("http://127.0.0.1:{port_a}/v1/state/nope/{on_b}"))
        .bearer_auth("s3cret")
        .send()
        .await
        .expect("http");
    assert_eq!(r.status(), 404);
    let r = http
        .get(format!(
            "http://127.0.0.1:{port_a}/v1/state/stats/{on_b}?freshness=sometimes"
        ))
        .bearer_auth("s3cret")
        .send()
        .await
        .expect("http");
    assert_eq!(r.status(), 400);
    let r = http
        .get(format!(
            "http://127.0.0.1:{port_a}/v1/state/recent/{on_b}/list"
        ))
        .bearer_auth("s3cret")
        .send()
        .await
        .expect("http");
    let v: Value = serde_json::from_slice(&r.bytes().await.expect("body")).expect("json");
    assert!(
        v["values"]
            .as_array()
            .is_some_and(|l| !l.is_empty() && l.len() <= 5),
        "{v}"
    );
    a.stop().await;
    b.stop().await;
}

trait Tap: Sized {
    fn tap(self, f: impl FnOnce(&mut Self)) -> Self;
}

impl Tap for Query {
    fn tap(mut self, f: impl FnOnce(&mut Self)) -> Self {
        f(&mut self);
        self
    }
}

/// Time travel: after three checkpoints, `as_of` each one (by id over NATS, by time over HTTP,
/// by id from `eddy state get --as-of`) answers that checkpoint's value and names it, while
/// `latest` has moved on; checkpoints kept by age outlive `retain`; a time before every
/// retained checkpoint is a clear 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_of_answers_from_each_retained_checkpoint() {
    let port = eddy_tests::free_port();
    let Fixture {
        nats: _nats,
        dir,
        spec,
        conn,
    } = fraud_with(&format!(
            "[checkpoint]\ninterval_ms = 3600000\ndedupe_check = \"warn\"\nretain = 1\nretain_for_ms = 3600000\n\n[query]\nhttp = \"127.0.0.1:{port}\"\n"
        )).await;
    // Checkpoints only when asked; `retain = 1` alone would keep only the newest.
    let txs: Vec<produce::Transaction> = produce::transactions(1_200, 1, 13, 0);
    let c = txs[0].customer.clone();
    let count_to = |n: usize| txs[..n].iter().filter(|t| t.customer == c).count() as u64;
    let run = Running::start(&spec);
    let before_all = std::time::SystemTime::now();
    let mut cuts = Vec::new();
    for (i, upto) in [300, 600, 900].into_iter().enumerate() {
        publish_txs(&conn.js, "txn.in", &txs[i * 300..upto]).await;
        wait_for_len(&conn.js, "OUT", upto as u64, Duration::from_secs(30)).await;
        let id = eddy_tests::checkpoint_now(&conn, "fraud").await;
        // A moment that falls after this checkpoint and before the next.
        tokio::time::sleep(Duration::from_millis(30)).await;
        let between = std::time::SystemTime::now();
        tokio::time::sleep(Duration::from_millis(30)).await;
        cuts.push((id, between, count_to(upto)));
    }
    publish_txs(&conn.js, "txn.in", &txs[900..]).await;
    wait_for_len(&conn.js, "OUT", 1_200, Duration::from_secs(30)).await;

    let latest = query::nats::ask(&conn, "fraud", Op::Get, &stats_query(&c, Freshness::Latest))
        .await
        .expect("latest");
    assert_eq!(latest["value"]["count"], count_to(1_200));
    let http = reqwest::Client::new();
    for (id, between, count) in &cuts {
        // By id, over NATS.
        let q = Query {
            as_of: Some(query::AsOf::Checkpoint(*id)),
            ..stats_query(&c, Freshness::Latest)
        };
        let v = query::nats::ask(&conn, "fraud", Op::Get, &q)
            .await
            .expect("as_of id");
        assert_eq!(v["value"]["count"], *count, "as of {id}: {v}");
        assert_eq!(v["checkpoint"], *id, "{v}");
        assert_eq!(v["as_of"]["checkpoint"], *id, "{v}");
        assert_eq!(v["freshness"], "as-of", "{v}");
        // By time, over HTTP: the newest checkpoint at or before it.
        let at = humantime::format_rfc3339_millis(*between).to_string();
        let r = http
            .get(format!("http://127.0.0.1:{port}/v1/state/stats/{c}"))
            .query(&[("as_of", at.as_str())])
            .send()
            .await
            .expect("http");
        assert_eq!(r.status(), 200);
        let v: Value = serde_json::from_slice(&r.bytes().await.expect("body")).expect("json");
        assert_eq!(v["value"]["count"], *count, "as of {at}: {v}");
        assert_eq!(v["as_of"]["checkpoint"], *id, "{v}");
    }
    // The CLI, by id.
    let (id, _, count) = cuts[1];
    let path = dir.path().join("pipeline.toml");
    spec.write(&path).expect("write pipeline");
    let out = std::process::Command::new(eddy_tests::eddy_bin())
        .args(["state", "get"])
        .arg(&path)
        .args(["stats", &c, "--as-of", &id.to_string()])
        .output()
        .expect("eddy state get");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("json answer");
    assert_eq!(v["value"]["count"], count, "{v}");
    assert_eq!(v["checkpoint"], id, "{v}");

    // Before every retained checkpoint: a 404 that says what is retained.
    let early = humantime::format_rfc3339_millis(before_all - Duration::from_secs(60)).to_string();
    let r = http
        .get(format!("http://127.0.0.1:{port}/v1/state/stats/{c}"))
        .query(&[("as_of", early.as_str())])
        .send()
        .await
        .expect("http");
    assert_eq!(r.status(), 404);
    let v: Value = serde_json::from_slice(&r.bytes().await.expect("body")).expect("json");
    let msg = v["error"].as_str().unwrap_or_default();
    assert!(
        msg.contains("no retained checkpoint cut at or before") && msg.contains("retain_for_ms"),
        "{v}"
    );
    // Nonsense is a 400 that says what is accepted.
    let r = http
        .get(format!(
            "http://127.0.0.1:{port}/v1/state/stats/{c}?as_of=yesterday-ish"
        ))
        .send()
        .await
        .expect("http");
    assert_eq!(r.status(), 400);
    run.stop().await;
}

/// A host killed after publishing outputs restarts from an older checkpoint and replays: until
/// the replay has passed everything the input had delivered before, `latest` answers 503
/// rather than a state older than outputs already out. Every answer it gives is the final one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_host_never_answers_latest_from_behind_its_published_outputs() {
    restarted_host_answers_latest_only_once_replayed(false).await;
}

/// The server keeps the input consumer in memory: one restarted while the host was down has
/// forgotten how far the host's last run read, and the host must still wait for its replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_started_after_nats_forgot_its_consumer_still_waits_for_its_replay() {
    restarted_host_answers_latest_only_once_replayed(true).await;
}

/// A host killed after publishing every output, started again (after a nats-server restart if
/// `restart_nats`): every `latest` answer holds the whole input, never part of the replay.
async fn restarted_host_answers_latest_only_once_replayed(restart_nats: bool) {
    let Fixture {
        mut nats,
        dir,
        spec,
        conn,
    } = fraud_with("[checkpoint]\ninterval_ms = 3600000\ndedupe_check = \"warn\"\n").await;
    let config = dir.path().join("pipeline.toml");
    spec.write(&config).expect("write config");
    // One customer, so its count says how much of the replay the state has seen.
    let txs = produce::transactions(20_000, 1, 17, 0);
    let c = txs[0].customer.clone();
    publish_txs(&conn.js, "txn.in", &txs).await;
    let mut host = eddy_tests::hosts::HostProcess::spawn("a", &config, &dir.path().join("a.log"));
    wait_for_len(&conn.js, "OUT", 20_000, Duration::from_secs(90)).await;
    let total = if restart_nats {
        // A checkpoint of the first 20,000 (so the restart restores one), then 20,000 more
        // past it, killed at once.
        eddy_tests::checkpoint_now(&conn, "fraud").await;
        publish_txs(&conn.js, "txn.in", &produce::transactions(20_000, 1, 18, 0)).await;
        wait_for_len(&conn.js, "OUT", 40_000, Duration::from_secs(90)).await;
        40_000
    } else {
        20_000
    };
    host.signal("-KILL");
    host.wait_exit_within(Duration::from_secs(10));
    let conn = if restart_nats {
        drop(conn);
        nats.stop();
        nats.restart().expect("restart nats-server");
        let conn = nats.connect().await.expect("reconnect");
        let consumer = conn
            .js
            .get_stream("TXN")
            .await
            .expect("input stream")
            .consumer_info("fraud")
            .await;
        assert!(
            consumer.is_err(),
            "the restarted server forgot the consumer"
        );
        conn
    } else {
        conn
    };

    let mut host = eddy_tests::hosts::HostProcess::spawn("a", &config, &dir.path().join("b.log"));
    let (mut refused, mut answered) = (0, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while answered < 20 && std::time::Instant::now() < deadline {
        match query::nats::ask(&conn, "fraud", Op::Get, &stats_query(&c, Freshness::Latest)).await {
            Ok(v) => {
                answered += 1;
                assert_eq!(
                    v["value"]["count"], total,
                    "answer {answered} after {refused} refusals: {v}"
                );
            }
            Err(QueryError::Unavailable(m)) if m.contains("replaying") => refused += 1,
            // Not up yet: no responder.
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
    host.signal("-TERM");
    assert!(host.wait_exit_within(Duration::from_secs(20)).success());
    assert_eq!(
        answered, 20,
        "answers came once the replay was done ({refused} refusals)"
    );
    assert_eq!(
        stream_len_out(&conn).await,
        total,
        "the replay published nothing twice"
    );
}

async fn stream_len_out(conn: &eddy_host::transport::Nats) -> u64 {
    eddy_tests::stream_len(&conn.js, "OUT").await.expect("len")
}
