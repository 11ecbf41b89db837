//! Bulk state: `eddy state export` writes a savepoint's keyed states and broadcast maps out,
//! `eddy state load` builds a savepoint from such files, and a pipeline started from the
//! loaded savepoint treats new events exactly as the pipeline whose state went through the
//! stream.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use eddy_host::cli::produce;
use eddy_host::pipeline::RunOptions;
use eddy_host::query::{self, Op, Query};
use eddy_tests::{Fixture, Running, eddy_bin, publish_txs, wait_for_len};
use serde_json::Value;

fn eddy(args: &[&dyn AsRef<std::ffi::OsStr>]) -> std::process::Output {
    let mut cmd = Command::new(eddy_bin());
    for a in args {
        cmd.arg(a);
    }
    cmd.output().expect("eddy")
}

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Outputs by transaction id.
async fn outputs(js: &async_nats::jetstream::Context) -> BTreeMap<String, Value> {
    eddy_tests::read_stored(js, "txn.out")
        .await
        .expect("outputs")
        .iter()
        .map(|m| {
            let v: Value = serde_json::from_slice(&m.payload).expect("json");
            (v["id"].as_str().expect("id").to_string(), v)
        })
        .collect()
}

/// A broadcast input of category limits (`[broadcast.rules]`, stream `RULES`).
async fn with_rules(f: &mut Fixture) {
    f.spec.extra.push_str(
        "\n[broadcast.rules]\nstream = \"RULES\"\nsubjects = [\"rules.fraud\"]\nidle_apply_ms = 100\n",
    );
    eddy_tests::create_stream(&f.conn.js, "RULES", &["rules.fraud"])
        .await
        .expect("rules stream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loaded_state_feeds_the_plugin_as_the_stream_did_and_export_round_trips() {
    let txs = produce::transactions(6_000, 400, 21, 0);
    // A: the first 4,000 transactions through the stream, then a savepoint.
    let mut a = Fixture::start("fraud", "fraud-enrich").await;
    with_rules(&mut a).await;
    for rule in [
        r#"{"category":"travel","limit_cents":50000}"#,
        r#"{"category":"groceries","limit_cents":12000}"#,
    ] {
        a.conn
            .js
            .publish("rules.fraud", rule.as_bytes().to_vec().into())
            .await
            .expect("publish rule")
            .await
            .expect("rule stored");
    }
    publish_txs(&a.conn.js, "txn.in", &txs[..4_000]).await;
    let run = Running::start(&a.spec);
    wait_for_len(&a.conn.js, "OUT", 4_000, Duration::from_secs(60)).await;
    let sp = eddy_tests::savepoint_now(&a.conn, "fraud", &a.dir.path().join("sp"), "a").await;
    run.stop().await;
    let work = a.dir.path();
    // `flag` is --state or --map.
    let exported = |savepoint: &Path, flag: &str, name: &str| -> String {
        let out = work.join(format!(
            "{}-{name}.jsonl",
            savepoint.file_name().unwrap_or_default().to_string_lossy()
        ));
        ok(eddy(&[
            &"state", &"export", &savepoint, &flag, &name, &"--out", &out,
        ]));
        std::fs::read_to_string(&out).expect("export")
    };
    let stats = exported(&sp, "--state", "stats");
    let recent = exported(&sp, "--state", "recent");
    let limits = exported(&sp, "--map", "category_limits");
    assert_eq!(limits.lines().count(), 2, "two category limits: {limits}");
    assert_eq!(stats.lines().count(), 400, "one line per customer");
    assert!(recent.lines().count() > 400, "one line per list element");

    // B: its own NATS and state, started from a savepoint loaded from the two files.
    let mut b = Fixture::start("fraud", "fraud-enrich").await;
    with_rules(&mut b).await;
    let pipeline_b = b.dir.path().join("pipeline.toml");
    b.spec.write(&pipeline_b).expect("pipeline file");
    let loaded = b.dir.path().join("loaded");
    let (said_stats, said) = load_fraud_state(
        &pipeline_b,
        &work.join("a-stats.jsonl"),
        &work.join("a-recent.jsonl"),
        &loaded,
    );
    assert!(
        said_stats.contains("loaded 400 entries of `stats`"),
        "{said_stats}"
    );
    // A list is one entry per key, and the count is this load's alone, not the savepoint's.
    let lists: std::collections::HashSet<String> =
        std::fs::read_to_string(work.join("a-recent.jsonl"))
            .expect("read")
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json")["key"].to_string())
            .collect();
    let lines = std::fs::read_to_string(work.join("a-recent.jsonl"))
        .expect("read")
        .lines()
        .count();
    assert!(
        said.contains(&format!(
            "loaded {} entries of `recent` from {lines} lines (0 skipped)",
            lists.len()
        )),
        "{said}"
    );
    ok(eddy(&[
        &"state",
        &"load",
        &pipeline_b,
        &work.join("a-category_limits.jsonl"),
        &"--map",
        &"category_limits",
        &"--into",
        &loaded,
    ]));
    // Export → load → export: the same bytes.
    for (flag, name, before) in [
        ("--state", "stats", &stats),
        ("--state", "recent", &recent),
        ("--map", "category_limits", &limits),
    ] {
        let after = exported(&loaded, flag, name);
        let differs = after.lines().zip(before.lines()).position(|(a, b)| a != b);
        assert!(
            after == *before,
            "{name}: {} lines exported again against {}; first difference at line {differs:?}",
            after.lines().count(),
            before.lines().count()
        );
    }
    // The same through Parquet: export → load → export as JSON Lines gives the same bytes.
    let via_parquet = b.dir.path().join("via-parquet");
    for (i, (flag, name, kind, before)) in [
        ("--state", "stats", "value", &stats),
        ("--state", "recent", "list", &recent),
        ("--map", "category_limits", "value", &limits),
    ]
    .into_iter()
    .enumerate()
    {
        let pq = work.join(format!("{name}.parquet"));
        ok(eddy(&[
            &"state",
            &"export",
            &loaded,
            &flag,
            &name,
            &"--format",
            &"parquet",
            &"--out",
            &pq,
        ]));
        let into: [&dyn AsRef<std::ffi::OsStr>; 2] = if i == 0 {
            [&"--to", &via_parquet]
        } else {
            [&"--into", &via_parquet]
        };
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> =
            vec![&"state", &"load", &pipeline_b, &pq, &flag, &name];
        if flag == "--state" {
            args.extend([&"--kind" as &dyn AsRef<std::ffi::OsStr>, &kind]);
        }
        args.extend(into);
        ok(eddy(&args));
        let after = exported(&via_parquet, flag, name);
        assert!(
            after == *before,
            "{name} through Parquet: {} lines against {}",
            after.lines().count(),
            before.lines().count()
        );
    }

    // The rest of the transactions through both: the same outputs, field for field.
    let run_a = Running::start(&a.spec);
    publish_txs(&a.conn.js, "txn.in", &txs[4_000..]).await;
    wait_for_len(&a.conn.js, "OUT", 6_000, Duration::from_secs(60)).await;
    run_a.stop().await;
    let run_b = Running::start_with(
        b.spec.config(),
        RunOptions {
            from_savepoint: Some(loaded.clone()),
            ..RunOptions::default()
        },
    );
    publish_txs(&b.conn.js, "txn.in", &txs[4_000..]).await;
    wait_for_len(&b.conn.js, "OUT", 2_000, Duration::from_secs(60)).await;
    run_b.stop().await;
    let from_a = outputs(&a.conn.js).await;
    let from_b = outputs(&b.conn.js).await;
    assert_eq!(from_b.len(), 2_000);
    assert!(
        from_b.values().any(|o| o["category_limit_cents"] == 50_000),
        "the loaded category limits reach the plugin"
    );
    for (id, out) in &from_b {
        assert_eq!(Some(out), from_a.get(id), "transaction {id}");
    }
}

/// A bad line stops a load with its file and line number and leaves nothing behind; with
/// `--on-error skip` it is reported and the rest is loaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_lines_fail_the_load_or_are_skipped_and_named() {
    let f = Fixture::start("fraud", "fraud-enrich").await;
    let pipeline = f.dir.path().join("pipeline.toml");
    f.spec.write(&pipeline).expect("pipeline file");
    let file = f.dir.path().join("profiles.jsonl");
    std::fs::write(
        &file,
        "{\"key\":\"c-1\",\"value\":{\"tier\":\"gold\"}}\n{\"key\":\"c-2\"}\n{\"key\":\"c-3\",\"value\":[1]}\n",
    )
    .expect("file");
    let to = f.dir.path().join("profiles");
    let out = eddy(&[
        &"state", &"load", &pipeline, &file, &"--state", &"profile", &"--to", &to,
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("profiles.jsonl:2: `value` is missing") && err.contains("nothing was loaded"),
        "{err}"
    );
    assert!(!to.exists(), "no savepoint after a failed load");
    assert!(
        !f.dir.path().join("profiles.partial").exists(),
        "nothing half-built left"
    );
    let out = eddy(&[
        &"state",
        &"load",
        &pipeline,
        &file,
        &"--state",
        &"profile",
        &"--to",
        &to,
        &"--on-error",
        &"skip",
    ]);
    let said = ok(out.clone());
    assert!(
        said.contains("loaded 2 entries of `profile` from 3 lines (1 skipped)"),
        "{said}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("skipped"),
        "the skipped line is named"
    );
    // CSV: a header, a quoted JSON value, and a plain text value stored as a JSON string.
    let csv = f.dir.path().join("tiers.csv");
    std::fs::write(
        &csv,
        "key,value\nc-1,\"{\"\"tier\"\":\"\"gold\"\"}\"\nc-2,silver\n",
    )
    .expect("csv");
    ok(eddy(&[
        &"state",
        &"load",
        &pipeline,
        &csv,
        &"--state",
        &"tier",
        &"--to",
        &f.dir.path().join("tiers"),
    ]));
    let back = ok(eddy(&[
        &"state",
        &"export",
        &f.dir.path().join("tiers"),
        &"--state",
        &"tier",
    ]));
    let values: Vec<Value> = back
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("json")["value"].clone())
        .collect();
    assert!(
        values.contains(&serde_json::json!({"tier": "gold"})),
        "{back}"
    );
    assert!(values.contains(&serde_json::json!("silver")), "{back}");
}

/// The issue's size: a million entries (a `stats` value and a `recent` list for each of
/// 500,000 customers) written through the stream, exported and loaded into another pipeline,
/// answer queries with the same values and feed the plugin the same state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_loaded_entries_answer_queries_and_feed_the_plugin_as_streamed_ones() {
    const CUSTOMERS: usize = 500_000;
    let mut txs = produce::transactions(CUSTOMERS + 3_000, CUSTOMERS, 33, 0);
    // Every customer once first, so the stream writes two entries for each.
    for (i, t) in txs[..CUSTOMERS].iter_mut().enumerate() {
        t.customer = format!("c-{i}");
    }
    let a = Fixture::start("fraud", "fraud-enrich").await;
    publish_txs(&a.conn.js, "txn.in", &txs[..CUSTOMERS]).await;
    let run = Running::start(&a.spec);
    wait_for_len(
        &a.conn.js,
        "OUT",
        CUSTOMERS as u64,
        Duration::from_secs(300),
    )
    .await;
    let sp = eddy_tests::savepoint_now(&a.conn, "fraud", &a.dir.path().join("sp"), "a").await;
    run.stop().await;
    let meta: Value =
        serde_json::from_slice(&std::fs::read(sp.join("savepoint.json")).expect("savepoint.json"))
            .expect("meta");
    assert_eq!(meta["entries"], 2 * CUSTOMERS as u64, "a million entries");
    let work = a.dir.path();
    for state in ["stats", "recent"] {
        ok(eddy(&[
            &"state",
            &"export",
            &sp,
            &"--state",
            &state,
            &"--out",
            &work.join(format!("{state}.jsonl")),
        ]));
    }

    let b = Fixture::start("fraud", "fraud-enrich").await;
    let pipeline_b = b.dir.path().join("pipeline.toml");
    b.spec.write(&pipeline_b).expect("pipeline file");
    let loaded = b.dir.path().join("loaded");
    let (said_stats, said) = load_fraud_state(
        &pipeline_b,
        &work.join("stats.jsonl"),
        &work.join("recent.jsonl"),
        &loaded,
    );
    assert!(
        said_stats.contains(&format!("loaded {CUSTOMERS} entries of `stats`")),
        "{said_stats}"
    );
    assert!(
        said.contains(&format!("loaded {CUSTOMERS} entries of `recent`")),
        "{said}"
    );

    // Both running: the same answers to queries of customers spread over all of them.
    let run_a = Running::start(&a.spec);
    let run_b = Running::start_with(
        b.spec.config(),
        RunOptions {
            from_savepoint: Some(loaded),
            ..RunOptions::default()
        },
    );
    let sample = (0..CUSTOMERS).step_by(997).map(|i| format!("c-{i}"));
    let mut asked = 0;
    for c in sample {
        let (from_a, from_b) = (stats_of(&a.conn, &c).await, stats_of(&b.conn, &c).await);
        assert!(from_a["count"].as_u64() == Some(1), "{c}: {from_a}");
        assert_eq!(from_b, from_a, "{c}");
        asked += 1;
    }
    assert!(asked > 500);

    // The rest through both: the same outputs, field for field.
    publish_txs(&a.conn.js, "txn.in", &txs[CUSTOMERS..]).await;
    publish_txs(&b.conn.js, "txn.in", &txs[CUSTOMERS..]).await;
    wait_for_len(
        &a.conn.js,
        "OUT",
        CUSTOMERS as u64 + 3_000,
        Duration::from_secs(120),
    )
    .await;
    wait_for_len(&b.conn.js, "OUT", 3_000, Duration::from_secs(120)).await;
    run_a.stop().await;
    run_b.stop().await;
    let from_a = outputs(&a.conn.js).await;
    let from_b = outputs(&b.conn.js).await;
    assert_eq!(from_b.len(), 3_000);
    for (id, out) in &from_b {
        assert_eq!(Some(out), from_a.get(id), "transaction {id}");
    }
}

/// A customer's `stats` as the running host answers it, waiting for the host to answer.
async fn stats_of(nats: &eddy_host::transport::Nats, customer: &str) -> Value {
    let q = Query {
        state: Some("stats".into()),
        key: Some(customer.to_string()),
        ..Query::default()
    };
    for _ in 0..600 {
        if let Ok(v) = query::nats::ask(nats, "fraud", Op::Get, &q).await {
            return v["value"].clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no answer about {customer}");
}

/// Loads the fraud plugin's two states (`stats` values, `recent` lists) from JSON Lines into
/// a new savepoint `to`; what each load said.
fn load_fraud_state(pipeline: &Path, stats: &Path, recent: &Path, to: &Path) -> (String, String) {
    let said_stats = ok(eddy(&[
        &"state", &"load", &pipeline, &stats, &"--state", &"stats", &"--to", &to,
    ]));
    let said_recent = ok(eddy(&[
        &"state", &"load", &pipeline, &recent, &"--state", &"recent", &"--kind", &"list",
        &"--into", &to,
    ]));
    (said_stats, said_recent)
}
