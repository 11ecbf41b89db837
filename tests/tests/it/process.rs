//! The `eddy` binary as an operator runs it: signals, crashes, bad configuration.

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::time::{Duration, Instant};

use eddy_host::cli::{produce, tail};
use eddy_tests::hosts::HostProcess;
use eddy_tests::{
    Fixture, NatsServer, PipelineSpec, Running, create_streams, eddy_bin, eventually, free_port,
    plugin, publish_txs, stream_len, wait_for_len,
};
use serde_json::Value;

/// Per customer, the sequence of (id, customer_count) the outputs show.
async fn counts_per_customer(
    js: &async_nats::jetstream::Context,
) -> (usize, HashMap<String, Vec<(String, u64)>>) {
    let outs = eddy_tests::read_stored(js, "txn.out").await.expect("read");
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
    let Fixture {
        nats: _nats,
        dir,
        spec,
        conn,
    } = Fixture::start("fraud", "fraud-enrich").await;
    let config = dir.path().join("pipeline.toml");
    spec.write(&config).expect("write config");
    // Half the events before the first run, the other half once it has stopped: the second
    // run has work left however fast the first one was, and its SIGINT comes once it is busy.
    let txs = produce::transactions(6_000, 50, 21, 0);
    publish_txs(&conn.js, "txn.in", &txs[..3_000]).await;

    let mut child = HostProcess::spawn("a", &config, &dir.path().join("run1.log"));
    wait_for_len(&conn.js, "OUT", 500, Duration::from_secs(60)).await;
    child.signal("-TERM");
    let status = child.wait_exit_within(Duration::from_secs(20));
    let log = std::fs::read_to_string(dir.path().join("run1.log")).unwrap_or_default();
    assert!(status.success(), "exit 0 on SIGTERM: {status:?}\n{log}");
    assert!(log.contains("pipeline stopped cleanly"), "{log}");

    publish_txs(&conn.js, "txn.in", &txs[3_000..]).await;
    let mut child = HostProcess::spawn("a", &config, &dir.path().join("run2.log"));
    let got = wait_for_len(&conn.js, "OUT", 6_000, Duration::from_secs(60)).await;
    child.signal("-INT");
    let status = child.wait_exit_within(Duration::from_secs(20));
    let log = std::fs::read_to_string(dir.path().join("run2.log")).unwrap_or_default();
    assert!(status.success(), "exit 0 on SIGINT: {status:?}\n{log}");
    assert_eq!(got, 6_000);
    let (n, counts) = counts_per_customer(&conn.js).await;
    assert_eq!(n, 6_000, "each input exactly once in the output stream");
    assert_eq!(
        counts,
        expected_counts(&txs),
        "running counts continue across the restart"
    );

    // A stop asked while the host is still starting (restoring, connecting) is a clean stop
    // too, not a death by the signal's default action.
    let mut child = HostProcess::spawn("a", &config, &dir.path().join("run3.log"));
    tokio::time::sleep(Duration::from_millis(150)).await;
    child.signal("-INT");
    let status = child.wait_exit_within(Duration::from_secs(20));
    let log = std::fs::read_to_string(dir.path().join("run3.log")).unwrap_or_default();
    assert!(
        status.success(),
        "exit 0 on SIGINT at start: {status:?}\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_loses_nothing_and_duplicates_nothing() {
    let Fixture {
        nats: _nats,
        dir,
        spec,
        conn,
    } = Fixture::start("fraud", "fraud-enrich").await;
    let config = dir.path().join("pipeline.toml");
    spec.write(&config).expect("write config");
    let txs = produce::transactions(20_000, 200, 9, 0);
    publish_txs(&conn.js, "txn.in", &txs).await;

    // Kill at growing output counts, restarting each time on the same state directory.
    for (round, at) in [2_000u64, 7_000, 13_000].iter().enumerate() {
        let mut child =
            HostProcess::spawn("a", &config, &dir.path().join(format!("run{round}.log")));
        wait_for_len(&conn.js, "OUT", *at, Duration::from_secs(90)).await;
        child.signal("-KILL");
        child.wait_exit_within(Duration::from_secs(10));
    }
    let mut child = HostProcess::spawn("a", &config, &dir.path().join("final.log"));
    let got = wait_for_len(&conn.js, "OUT", 20_000, Duration::from_secs(90)).await;
    // Give a replay the chance to show up as an extra message, then stop.
    tokio::time::sleep(Duration::from_millis(500)).await;
    child.signal("-TERM");
    assert!(child.wait_exit_within(Duration::from_secs(20)).success());
    assert_eq!(got, 20_000);
    assert_eq!(
        stream_len(&conn.js, "OUT").await.expect("len"),
        20_000,
        "no duplicate stored"
    );
    let (n, counts) = counts_per_customer(&conn.js).await;
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
            vec!["plugin.path", "no plugin file", "eddy new plugin"],
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
}

/// A host started before its NATS server waits for it, saying where it looks and what to do,
/// then runs: every event once, as if NATS had been there from the start. Stopped while it
/// waits, it exits at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_started_before_its_nats_waits_for_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let spec = PipelineSpec::new("fraud", &url, dir.path(), plugin("fraud-enrich"));
    // The streams exist (made by an operator earlier); the server is down when the host starts.
    let mut nats = NatsServer::start_on(port).expect("nats-server");
    let conn = nats.connect().await.expect("connect");
    create_streams(&conn.js, &spec).await.expect("streams");
    drop(conn);
    nats.stop();
    let config = dir.path().join("pipeline.toml");
    spec.write(&config).expect("config");
    let log = dir.path().join("a.log");
    let mut host = HostProcess::spawn("a", &config, &log);
    let said = || std::fs::read_to_string(&log).unwrap_or_default();
    eventually(
        "the host says it waits",
        Duration::from_secs(15),
        async || said().contains(&format!("cannot reach NATS at {url}")),
    )
    .await;
    assert!(said().contains("nats-server -js"), "{}", said());
    assert!(host.running(), "it waits instead of exiting");

    nats.restart().expect("nats-server again");
    let conn = nats.connect().await.expect("connect");
    let txs = produce::transactions(2_000, 20, 19, 0);
    publish_txs(&conn.js, "txn.in", &txs).await;
    wait_for_len(&conn.js, "OUT", 2_000, Duration::from_secs(60)).await;
    host.stop();
    assert_eq!(stream_len(&conn.js, "OUT").await.expect("len"), 2_000);
    let (n, counts) = counts_per_customer(&conn.js).await;
    assert_eq!(n, 2_000);
    assert_eq!(counts, expected_counts(&txs));

    // Stopped before any server is there: it does not wait on.
    let elsewhere = PipelineSpec::new(
        "fraud",
        "nats://127.0.0.1:1",
        dir.path(),
        plugin("fraud-enrich"),
    );
    elsewhere.write(&config).expect("config");
    let mut host = HostProcess::spawn("b", &config, &dir.path().join("b.log"));
    std::thread::sleep(Duration::from_secs(1));
    let stopped = Instant::now();
    host.stop();
    assert!(stopped.elapsed() < Duration::from_secs(5));
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
    publish_txs(&conn.js, "txn.in", &txs).await;
    wait_for_len(&conn.js, "OUT", 500, Duration::from_secs(30)).await;
    let mut elsewhere = spec.clone();
    elsewhere.plugin = dir.path().join("not-on-this-machine.wasm");
    let path = dir.path().join("operator.toml");
    elsewhere.write(&path).expect("write");
    let status_of = |json: bool| {
        let mut cmd = Command::new(eddy_bin());
        cmd.arg("status").arg(&path);
        if json {
            cmd.arg("--json");
        }
        let out = cmd.output().expect("eddy binary");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let status: eddy_host::control::HostStatus =
        serde_json::from_str(&status_of(true)).expect("one host's status, as the host sends it");
    // For people: what runs, how far, the deployments with their status.
    let table = status_of(false);
    assert!(table.starts_with("fraud on host "), "{table}");
    assert!(
        table.contains("events       500 in, 500 out, 0 dropped, 0 dead-lettered"),
        "{table}"
    );
    assert!(table.contains("  plugin       fraud_enrich "), "{table}");
    assert!(table.contains(" live "), "{table}");
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

/// Thousands of half-open connections to the query endpoint (a request line, headers never
/// finished) against a host allowed 1,024 file descriptors: it keeps processing and
/// checkpointing, closes the stalled connections after the header timeout, and answers
/// queries again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connections_leave_the_host_serving_and_checkpointing() {
    use std::io::{Read, Write};
    let Fixture {
        nats: _nats,
        dir,
        mut spec,
        conn,
    } = Fixture::start("fraud", "fraud-enrich").await;
    let (query_port, metrics_port) = (free_port(), free_port());
    spec.extra = format!(
        "[checkpoint]\ninterval_ms = 200\n\n[query]\nhttp = \"127.0.0.1:{query_port}\"\n\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n"
    );
    let config = dir.path().join("pipeline.toml");
    spec.write(&config).expect("config");
    let mut host = HostProcess::spawn_limited("a", &config, &dir.path().join("a.log"), 1_024);
    let txs = produce::transactions(4_000, 40, 17, 0);
    publish_txs(&conn.js, "txn.in", &txs[..2_000]).await;
    wait_for_len(&conn.js, "OUT", 2_000, Duration::from_secs(60)).await;
    let checkpoints = || -> u64 {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", metrics_port)).expect("metrics");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("scrape");
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        text.lines()
            .find(|l| l.starts_with("eddy_checkpoints_total"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .expect("eddy_checkpoints_total")
    };
    let before = checkpoints();

    let stalled: Vec<std::net::TcpStream> = (0..3_000)
        .filter_map(|_| {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", query_port)).ok()?;
            s.write_all(b"GET /v1/describe HTTP/1.1\r\nHost: x\r\n")
                .ok()?;
            Some(s)
        })
        .collect();
    assert!(
        stalled.len() > 2_000,
        "{} connections opened",
        stalled.len()
    );
    publish_txs(&conn.js, "txn.in", &txs[2_000..]).await;
    wait_for_len(&conn.js, "OUT", 4_000, Duration::from_secs(60)).await;
    eventually("checkpoints go on", Duration::from_secs(20), async || {
        checkpoints() >= before + 3
    })
    .await;
    assert!(host.running(), "the host is still up");

    // The stalled connections are closed by the host after the header timeout.
    tokio::time::sleep(eddy_host::web::HEADER_TIMEOUT + Duration::from_secs(2)).await;
    let mut first = stalled.into_iter().next().expect("one");
    first
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut rest = Vec::new();
    assert!(
        first.read_to_end(&mut rest).is_ok(),
        "the host closed a stalled connection"
    );
    let r = reqwest::get(format!("http://127.0.0.1:{query_port}/v1/describe"))
        .await
        .expect("a fresh query");
    assert_eq!(r.status(), 200);
    let log = std::fs::read_to_string(dir.path().join("a.log")).expect("log");
    assert!(!log.contains("Too many open files"), "{log}");
    host.stop();
}

/// `eddy tail` on a payload meant to take over the operator's terminal (clear the screen,
/// retitle the window, ring the bell, overwrite the line) prints it escaped, one line per
/// message; `--raw` hands the bytes through for a pipe; `-n` shows the last messages and `-f`
/// follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_escapes_what_a_payload_would_do_to_the_terminal() {
    let nats = NatsServer::start().expect("nats-server");
    let conn = nats.connect().await.expect("connect");
    conn.js
        .create_stream(async_nats::jetstream::stream::Config {
            name: "HOSTILE".into(),
            subjects: vec!["hostile.>".into()],
            ..Default::default()
        })
        .await
        .expect("stream");
    let payload: &[u8] = b"{\"name\":\"\x1b[2J\x1b]0;pwned\x07\rok\"}\n\xff";
    conn.js
        .publish("hostile.one", bytes::Bytes::from_static(payload))
        .await
        .expect("publish")
        .await
        .expect("stored");
    let tail = |raw: bool| {
        let mut cmd = Command::new(eddy_bin());
        cmd.args(["tail", "hostile.>", "--nats", &nats.url()]);
        if raw {
            cmd.arg("--raw");
        }
        let out = cmd.output().expect("eddy tail");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let shown = String::from_utf8(tail(false)).expect("escaped output is UTF-8");
    assert_eq!(
        shown,
        "hostile.one [] {\"name\":\"\\e[2J\\e]0;pwned\\x07\\rok\"}\\n\\xff\n"
    );
    let mut raw = payload.to_vec();
    raw.push(b'\n');
    assert_eq!(tail(true), raw);

    // `-n N` shows the last N (of one subject among several), `-f` then follows.
    for i in 0..6 {
        for subject in ["hostile.one", "hostile.two"] {
            conn.js
                .publish(subject, format!("{subject} {i}").into())
                .await
                .expect("publish")
                .await
                .expect("stored");
        }
    }
    let out = Command::new(eddy_bin())
        .args([
            "tail",
            "hostile.two",
            "-n",
            "2",
            "--raw",
            "--nats",
            &nats.url(),
        ])
        .output()
        .expect("eddy tail -n");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hostile.two 4\nhostile.two 5\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut follow = std::process::Command::new(eddy_bin())
        .args([
            "tail",
            "hostile.two",
            "-n",
            "1",
            "-f",
            "--raw",
            "--nats",
            &nats.url(),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("eddy tail -f");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(
        follow.stdout.take().expect("stdout"),
    ));
    let first = lines.next().expect("a line").expect("utf-8");
    assert_eq!(first, "hostile.two 5");
    conn.js
        .publish("hostile.two", "arrived later".into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(lines.next());
    });
    let later = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("followed within 10 s");
    assert_eq!(later.expect("a line").expect("utf-8"), "arrived later");
    let _ = follow.kill();
    let _ = follow.wait();
}

/// `eddy publish --file` stores each line of a JSON Lines file as a message, in order, and
/// names the fix when no stream would store them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_file_stores_each_line_in_order() {
    let nats = NatsServer::start().expect("nats-server");
    let conn = nats.connect().await.expect("connect");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("events.jsonl");
    std::fs::write(
        &file,
        "{\"k\":\"a\",\"n\":1}\n\n{\"k\":\"b\",\"n\":2}\nnot json\n",
    )
    .expect("file");
    let publish = || {
        Command::new(eddy_bin())
            .args(["publish", "txn.in", "--file"])
            .arg(&file)
            .args(["--nats", &nats.url()])
            .output()
            .expect("eddy publish")
    };
    let out = publish();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no stream captures `txn.in`"), "{err}");
    assert!(err.contains("eddy streams"), "{err}");

    eddy_tests::create_stream(&conn.js, "TXN", &["txn.in"])
        .await
        .expect("stream");
    let out = publish();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("stored 3 messages from"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stored = eddy_tests::read_stored(&conn.js, "txn.in")
        .await
        .expect("read");
    let payloads: Vec<String> = stored
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    assert_eq!(
        payloads,
        ["{\"k\":\"a\",\"n\":1}", "{\"k\":\"b\",\"n\":2}", "not json"]
    );
}

/// `eddy test` in a plugin project: keys found where its `pipeline.toml` says, lines
/// `eddy run` would dead-letter shown as such (the lines after them still run), and
/// `--expect` passing on the outcomes it names and failing with the difference.
#[test]
fn eddy_test_takes_the_key_from_the_project_and_checks_expected_outcomes() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("pipeline.toml"),
        "[pipeline]\nname = \"chaos\"\n\n[input]\nkey = { json = \"/k\" }\n",
    )
    .expect("pipeline file");
    std::fs::write(
        dir.path().join("events.jsonl"),
        "{\"action\":\"ok\",\"k\":\"a\"}\nnot json\n{\"action\":\"ok\"}\n{\"action\":\"ok\",\"k\":\"a\"}\n",
    )
    .expect("events");
    let wasm = plugin("chaos");
    let test = |extra: &[&str]| {
        Command::new(eddy_bin())
            .current_dir(dir.path())
            .env("XDG_CACHE_HOME", dir.path().join("cache"))
            .arg("test")
            .arg(&wasm)
            .arg("events.jsonl")
            .args(extra)
            .output()
            .expect("eddy test")
    };
    // A run that succeeded: what it printed, and its log without colours.
    let passed = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            without_colours(&String::from_utf8_lossy(&out.stderr)),
        )
    };
    let (stdout, log) = passed(test(&[]));
    assert!(
        log.contains("cached=false"),
        "compiled on the first run: {log}"
    );
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert_eq!(lines[0]["outcome"], "emit");
    // Dead-lettered as `eddy run` would, with its reason.
    let no_key = |l: &Value, reason: &str| {
        assert_eq!(l["outcome"], "failed", "{l}");
        assert_eq!(l["kind"], "key", "{l}");
        assert!(
            l["reason"].as_str().is_some_and(|r| r.contains(reason)),
            "{l}"
        );
    };
    no_key(&lines[1], "no key: the payload is not JSON");
    no_key(&lines[2], "/k");
    // The second event of key `a` sees the first one's count.
    let count = |l: &Value| {
        l["outputs"][0]["headers"]
            .as_array()
            .and_then(|hs| hs.iter().find(|h| h[0] == "Eddy-Count"))
            .map(|h| h[1].clone())
    };
    assert_eq!(count(&lines[0]), Some(Value::from("1")));
    assert_eq!(count(&lines[3]), Some(Value::from("2")));

    std::fs::write(
        dir.path().join("expected.jsonl"),
        "{\"seq\":1,\"outcome\":\"emit\",\"outputs\":[{\"payload\":{\"action\":\"ok\",\"k\":\"a\"}}]}\n{\"seq\":2,\"outcome\":\"failed\",\"kind\":\"key\"}\n{\"seq\":3,\"kind\":\"key\"}\n{\"seq\":4,\"outcome\":\"emit\"}\n",
    )
    .expect("expected");
    let (stdout, log) = passed(test(&["--expect", "expected.jsonl"]));
    assert!(
        log.contains("cached=true"),
        "an unchanged plugin is not compiled again: {log}"
    );
    assert_eq!(stdout.trim(), "ok: 4 lines as expected.jsonl expects");
    std::fs::write(
        dir.path().join("expected.jsonl"),
        "{\"seq\":1,\"outcome\":\"emit\"}\n{\"seq\":2,\"outcome\":\"emit\"}\n",
    )
    .expect("expected");
    let out = test(&["--expect", "expected.jsonl"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("3 of 4 lines differ from expected.jsonl"),
        "{err}"
    );
    assert!(err.contains("line 2 of expected.jsonl"), "{err}");
    assert!(
        err.contains("an extra line, not in expected.jsonl"),
        "{err}"
    );
}

/// A wrong key pointer sends every event to the dead letters: the host says so in its log at
/// once, with the reason and where to look, and not once per event; `eddy check --sample`
/// names the events without a key before any run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kind_of_dead_letter_that_starts_flowing_is_logged_once_with_its_reason() {
    let Fixture {
        nats: _nats,
        dir,
        mut spec,
        conn,
    } = Fixture::start("fraud", "fraud-enrich").await;
    spec.key = r#"{ json = "/customr" }"#.into();
    let config = dir.path().join("typo.toml");
    spec.write(&config).expect("config");
    let log = dir.path().join("typo.log");
    let mut host = HostProcess::spawn("typo", &config, &log);
    let txs = produce::transactions(50, 5, 9, 0);
    publish_txs(&conn.js, "txn.in", &txs).await;
    wait_for_len(&conn.js, "DLQ", 50, Duration::from_secs(60)).await;
    host.stop();
    let text = without_colours(&std::fs::read_to_string(&log).expect("log"));
    let notices: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("events are being dead-lettered"))
        .collect();
    assert_eq!(notices.len(), 1, "{text}");
    assert!(notices[0].contains("/customr"), "{}", notices[0]);
    assert!(notices[0].contains("eddy tail txn.dlq"), "{}", notices[0]);
    assert!(
        notices[0].contains("dead-lettered as `key`"),
        "{}",
        notices[0]
    );
    // `eddy check --sample` would have said so before the run.
    let sample = dir.path().join("events.jsonl");
    let lines: Vec<String> = txs
        .iter()
        .take(3)
        .map(|t| serde_json::to_string(t).expect("json"))
        .collect();
    std::fs::write(&sample, lines.join("\n")).expect("sample");
    let out = Command::new(eddy_bin())
        .arg("check")
        .arg(&config)
        .arg("--sample")
        .arg(&sample)
        .output()
        .expect("eddy check");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("3 of the 3 events in") && err.contains("have no key"),
        "{err}"
    );
    assert!(
        err.contains("line 1: no key: the payload has no `/customr`"),
        "{err}"
    );
}

/// `--log-format json`: every line a host writes is one JSON object a log shipper can read,
/// with the message and the line's own fields at the top level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line_with_their_fields() {
    let Fixture {
        nats: _nats,
        dir,
        mut spec,
        conn,
    } = Fixture::start("fraud", "fraud-enrich").await;
    // A key pointer that matches nothing: the dead-letter notice carries fields of its own.
    spec.key = r#"{ json = "/customr" }"#.into();
    let config = dir.path().join("pipeline.toml");
    spec.write(&config).expect("write config");
    let log = dir.path().join("json.log");
    let mut host = HostProcess::spawn_with("a", &config, &log, &["--log-format", "json"]);
    publish_txs(&conn.js, "txn.in", &produce::transactions(20, 5, 3, 0)).await;
    wait_for_len(&conn.js, "DLQ", 20, Duration::from_secs(60)).await;
    host.signal("-TERM");
    assert!(host.wait_exit_within(Duration::from_secs(20)).success());
    let text = std::fs::read_to_string(&log).expect("log");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not one JSON object ({e}): {l}"))
        })
        .collect();
    assert!(lines.len() >= 3, "{text}");
    for l in &lines {
        for field in ["timestamp", "level", "target", "message"] {
            assert!(l[field].is_string(), "{field} in {l}");
        }
        assert!(
            !l["message"].as_str().unwrap_or_default().contains('\x1b'),
            "{l}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "pipeline stopped cleanly" && l["level"] == "INFO"),
        "{text}"
    );
    let summary = lines
        .iter()
        .find(|l| l["message"] == "stopped")
        .unwrap_or_else(|| panic!("the summary: {text}"));
    assert_eq!(summary["events_in"], 20, "{summary}");
    assert_eq!(summary["dead_lettered"], 20, "{summary}");
    let notice = lines
        .iter()
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.contains("events are being dead-lettered"))
        })
        .unwrap_or_else(|| panic!("the dead-letter notice: {text}"));
    assert_eq!(notice["level"], "WARN", "{notice}");
    assert_eq!(
        notice["kind"], "key",
        "its own fields at the top level: {notice}"
    );
    assert_eq!(notice["subject"], "txn.dlq", "{notice}");
}

/// `eddy dlq`: dead letters listed by kind, then replayed to the input once their cause is
/// fixed; each is handled exactly once, however often it is replayed: with `--keep` and then
/// again, the input stream stores one copy (same message id), and without `--keep` the dead
/// letters are gone, so a third replay finds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_replayed_twice_are_handled_once() {
    let Fixture {
        nats: _nats,
        dir,
        mut spec,
        conn,
    } = Fixture::start("fraud", "fraud-enrich").await;
    let fixed = dir.path().join("pipeline.toml");
    spec.write(&fixed).expect("config");
    // A key pointer with a typo: every event is dead-lettered as `key`.
    spec.key = r#"{ json = "/customr" }"#.into();
    let typo = dir.path().join("typo.toml");
    spec.write(&typo).expect("config");
    let txs = produce::transactions(40, 6, 17, 0);
    let mut host = HostProcess::spawn("typo", &typo, &dir.path().join("typo.log"));
    publish_txs(&conn.js, "txn.in", &txs).await;
    wait_for_len(&conn.js, "DLQ", 40, Duration::from_secs(60)).await;
    host.stop();

    let eddy = |args: &[&str]| {
        let out = Command::new(eddy_bin())
            .arg("dlq")
            .args(args)
            .output()
            .expect("eddy dlq");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "eddy dlq {args:?}: {text}");
        text
    };
    let f = fixed.to_str().expect("path");
    let listed = eddy(&["list", f, "-n", "3"]);
    assert!(listed.contains("40 dead letters on txn.dlq"), "{listed}");
    assert!(listed.contains("      40  key"), "{listed}");
    assert!(listed.contains("the last 3:"), "{listed}");
    assert!(listed.contains("/customr"), "the reason: {listed}");
    let first_letter = tail::read(&conn.js, "txn.dlq", 1, Duration::from_secs(2))
        .await
        .expect("read")
        .remove(0);
    let first = first_letter.sequence;
    let header = |m: &tail::Stored, name: &str| {
        m.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{name} in {:?}", m.headers))
    };
    let shown = eddy(&["show", f, &first.to_string()]);
    assert!(shown.contains("Eddy-Error-Kind: key"), "{shown}");
    assert!(shown.contains(&txs[0].id), "the payload: {shown}");
    assert!(
        eddy(&["replay", f, "--kind", "trap"]).contains("replayed 0 dead letters"),
        "another kind takes none"
    );

    let mut host = HostProcess::spawn("fixed", &fixed, &dir.path().join("fixed.log"));
    let once = eddy(&["replay", f, "--keep"]);
    assert!(once.contains("replayed 40 dead letters"), "{once}");
    wait_for_len(&conn.js, "OUT", 40, Duration::from_secs(60)).await;
    assert_eq!(stream_len(&conn.js, "DLQ").await.expect("len"), 40, "kept");
    let twice = eddy(&["replay", f]);
    assert!(
        twice.contains("replayed 40 dead letters") && twice.contains("40 already there"),
        "{twice}"
    );
    assert_eq!(
        stream_len(&conn.js, "DLQ").await.expect("len"),
        0,
        "removed"
    );
    assert!(eddy(&["replay", f]).contains("replayed 0 dead letters"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    host.signal("-TERM");
    assert!(host.wait_exit_within(Duration::from_secs(20)).success());

    assert_eq!(
        stream_len(&conn.js, "TXN").await.expect("len"),
        80,
        "each event once as published, once as replayed"
    );
    let inputs = eddy_tests::read_stored(&conn.js, "txn.in")
        .await
        .expect("read");
    let replay = inputs
        .iter()
        .find(|m| {
            m.headers
                .iter()
                .any(|(n, v)| n == "Eddy-Replay-Of" && *v == format!("DLQ:{first}"))
        })
        .unwrap_or_else(|| panic!("the replay of dead letter {first}"));
    assert_eq!(
        header(replay, "Eddy-Original-Position"),
        format!("txn.in:{}", header(&first_letter, "Eddy-Source-Sequence"))
    );
    assert_eq!(replay.payload, first_letter.payload);
    // Handled once each, in their order: the outputs are the reference's.
    let outs = eddy_tests::read_stored(&conn.js, "txn.out")
        .await
        .expect("read");
    assert_eq!(outs.len(), 40, "no event handled twice");
    let mut got: Vec<Value> = outs
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).expect("json"))
        .collect();
    let mut want = eddy_tests::fraud_reference(&txs, 70);
    let id = |v: &Value| v["id"].as_str().unwrap_or_default().to_string();
    got.sort_by_key(id);
    want.sort_by_key(id);
    assert_eq!(got, want);
}

/// `text` without the terminal colour sequences a log may carry.
fn without_colours(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            chars.by_ref().find(|c| *c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}
