//! The `eddy` binary as an operator runs it: signals, crashes, bad configuration.

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use eddy_host::cli::{produce, tail};
use eddy_tests::{
    Fixture, NatsServer, PipelineSpec, Running, create_streams, eddy_bin, plugin, stream_len,
    wait_for_len,
};
use serde_json::Value;

fn spawn(config: &std::path::Path, log: &std::path::Path) -> Child {
    let log = std::fs::File::create(log).expect("log file");
    Command::new(eddy_bin())
        .args(["run"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("eddy binary (cargo build --bins)")
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "signal {sig} delivered");
}

fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "eddy did not exit within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn publish(js: &async_nats::jetstream::Context, txs: &[produce::Transaction]) {
    let payloads = txs
        .iter()
        .map(|t| Bytes::from(serde_json::to_vec(t).expect("json")))
        .collect();
    produce::publish(js, "txn.in", payloads)
        .await
        .expect("publish");
}

/// Per customer, the sequence of (id, customer_count) the outputs show.
async fn counts_per_customer(
    js: &async_nats::jetstream::Context,
    max: usize,
) -> (usize, HashMap<String, Vec<(String, u64)>>) {
    let outs = tail::read(js, "txn.out", max, Duration::from_secs(2))
        .await
        .expect("read");
    let mut m: HashMap<String, Vec<(String, u64)>> = HashMap::new();
    for o in &outs {
        let v: Value = serde_json::from_slice(&o.payload).expect("json");
        m.entry(v["customer"].as_str().unwrap_or_default().to_string())
            .or_default()
            .push((
                v["id"].as_str().unwrap_or_default().to_string(),
                v["customer_count"].as_u64().unwrap_or(0),
            ));
    }
    (outs.len(), m)
}

fn expected_counts(txs: &[produce::Transaction]) -> HashMap<String, Vec<(String, u64)>> {
    let mut m: HashMap<String, Vec<(String, u64)>> = HashMap::new();
    for t in txs {
        let e = m.entry(t.customer.clone()).or_default();
        let n = e.len() as u64 + 1;
        e.push((t.id.clone(), n));
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_work_and_exits_zero() {
    let nats = NatsServer::start().expect("nats-server");
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = PipelineSpec::new("fraud", &nats.url(), dir.path(), plugin("fraud-enrich"));
    let config = dir.path().join("pipeline.toml");
    spec.write(&config).expect("write config");
    let conn = nats.connect().await.expect("connect");
    create_streams(&conn.js, &spec).await.expect("streams");
    let txs = produce::transactions(6_000, 50, 21, 0);
    publish(&conn.js, &txs).await;

    let mut child = spawn(&config, &dir.path().join("run1.log"));
    wait_for_len(&conn.js, "OUT", 500, Duration::from_secs(60)).await;
    signal(&child, "-TERM");
    let status = wait_exit(&mut child, Duration::from_secs(20));
    let log = std::fs::read_to_string(dir.path().join("run1.log")).unwrap_or_default();
    assert!(status.success(), "exit 0 on SIGTERM: {status:?}\n{log}");
    assert!(log.contains("pipeline stopped cleanly"), "{log}");

    let mut child = spawn(&config, &dir.path().join("run2.log"));
    let got = wait_for_len(&conn.js, "OUT", 6_000, Duration::from_secs(60)).await;
    signal(&child, "-INT");
    assert!(wait_exit(&mut child, Duration::from_secs(20)).success());
    assert_eq!(got, 6_000);
    let (n, counts) = counts_per_customer(&conn.js, 7_000).await;
    assert_eq!(n, 6_000, "each input exactly once in the output stream");
    assert_eq!(
        counts,
        expected_counts(&txs),
        "running counts continue across the restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_loses_nothing_and_duplicates_nothing() {
    let nats = NatsServer::start().expect("nats-server");
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = PipelineSpec::new("fraud", &nats.url(), dir.path(), plugin("fraud-enrich"));
    let config = dir.path().join("pipeline.toml");
    spec.write(&config).expect("write config");
    let conn = nats.connect().await.expect("connect");
    create_streams(&conn.js, &spec).await.expect("streams");
    let txs = produce::transactions(20_000, 200, 9, 0);
    publish(&conn.js, &txs).await;

    // Kill at growing output counts, restarting each time on the same state directory.
    for (round, at) in [2_000u64, 7_000, 13_000].iter().enumerate() {
        let mut child = spawn(&config, &dir.path().join(format!("run{round}.log")));
        wait_for_len(&conn.js, "OUT", *at, Duration::from_secs(90)).await;
        signal(&child, "-KILL");
        wait_exit(&mut child, Duration::from_secs(10));
    }
    let mut child = spawn(&config, &dir.path().join("final.log"));
    let got = wait_for_len(&conn.js, "OUT", 20_000, Duration::from_secs(90)).await;
    // Give a replay the chance to show up as an extra message, then stop.
    tokio::time::sleep(Duration::from_millis(500)).await;
    signal(&child, "-TERM");
    assert!(wait_exit(&mut child, Duration::from_secs(20)).success());
    assert_eq!(got, 20_000);
    assert_eq!(
        stream_len(&conn.js, "OUT").await.expect("len"),
        20_000,
        "no duplicate stored"
    );
    let (n, counts) = counts_per_customer(&conn.js, 25_000).await;
    assert_eq!(n, 20_000);
    let unique: HashSet<&String> = counts.values().flatten().map(|(id, _)| id).collect();
    assert_eq!(unique.len(), 20_000);
    assert_eq!(
        counts,
        expected_counts(&txs),
        "state exact after three kill -9s"
    );
}

#[test]
fn bad_configuration_is_refused_with_the_field_and_the_fix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = PipelineSpec::new(
        "fraud",
        "nats://127.0.0.1:1",
        dir.path(),
        plugin("fraud-enrich"),
    );
    let cases = [
        (
            spec.toml().replace("batch = 256", "batch = 0"),
            vec!["input.batch", "use 1 to 10000"],
        ),
        (
            spec.toml().replace("[dead_letter]", "[dead_letters]"),
            vec!["dead_letters", "unknown field"],
        ),
        (
            spec.toml().replace("fraud_enrich.wasm", "missing.wasm"),
            vec!["plugin.path", "no plugin file", "build-plugins.sh"],
        ),
        (
            spec.toml()
                .replace("{ json = \"/customer\" }", "{ json = \"customer\" }"),
            vec!["input.key.json", "must start with `/`"],
        ),
    ];
    for (i, (text, wants)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&path, text).expect("write");
        let out = Command::new(eddy_bin())
            .args(["check"])
            .arg(&path)
            .output()
            .expect("eddy binary");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "case {i} refused");
        assert!(
            stderr.contains(&*path.to_string_lossy()),
            "case {i} names the file: {stderr}"
        );
        for want in wants {
            assert!(stderr.contains(want), "case {i}: `{want}` in: {stderr}");
        }
    }
    // And an unreachable NATS server is named, with the fix.
    let path = dir.path().join("unreachable.toml");
    spec.write(&path).expect("write");
    let out = Command::new(eddy_bin())
        .args(["run"])
        .arg(&path)
        .output()
        .expect("eddy binary");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("cannot reach NATS at nats://127.0.0.1:1"),
        "{stderr}"
    );
    assert!(stderr.contains("nats-server -js"), "{stderr}");
}

/// An operator's machine has the pipeline file but not the plugin the hosts run: `eddy
/// status` asks the running hosts and answers, typed on both sides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_answers_without_the_plugin_file_on_this_machine() {
    let Fixture {
        nats: _nats,
        dir,
        spec,
        conn,
    } = Fixture::start("fraud", "fraud-enrich").await;
    let run = Running::start(&spec);
    let txs = produce::transactions(500, 10, 3, 0);
    publish(&conn.js, &txs).await;
    wait_for_len(&conn.js, "OUT", 500, Duration::from_secs(30)).await;
    let mut elsewhere = spec.clone();
    elsewhere.plugin = dir.path().join("not-on-this-machine.wasm");
    let path = dir.path().join("operator.toml");
    elsewhere.write(&path).expect("write");
    let out = Command::new(eddy_bin())
        .args(["status"])
        .arg(&path)
        .output()
        .expect("eddy binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let status: eddy_host::control::HostStatus =
        serde_json::from_str(&stdout).expect("one host's status, as the host sends it");
    assert_eq!(status.pipeline, "fraud");
    assert_eq!(status.events_in, 500);
    let plugin = status.plugin.clone().expect("the running plugin");
    assert_eq!(
        status
            .deployment(&plugin.version)
            .expect("its deployment")
            .status,
        eddy_host::reload::DeployStatus::Live
    );
    // `eddy run` still needs the plugin, and says which field and file.
    let out = Command::new(eddy_bin())
        .args(["check"])
        .arg(&path)
        .output()
        .expect("eddy binary");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("plugin.path"), "{stderr}");
    run.stop().await;
}
