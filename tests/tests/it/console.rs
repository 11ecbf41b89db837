//! `eddy console` in a real headless Chromium (Debian's chromium, driven by playwright-core
//! from `tests/browser/console.mjs`), against a real pipeline on a real nats-server: every
//! view shows figures that move with the events, and every action does what it says.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use eddy_host::cli::produce;
use eddy_tests::hosts::HostProcess;
use eddy_tests::{Fixture, eddy_bin, free_port, plugin, publish_txs, variant, wait_for_len};
use serde_json::Value;

const VIEWER: &str = "look-only-3f9a";
const OPERATOR: &str = "may-act-81c2";

/// Where screenshots go: the overview one (README's picture) and any failure's.
fn shots() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

/// `eddy console`, stopped when dropped.
struct ConsoleProcess(Child);

impl Drop for ConsoleProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Publishes `txs` in chunks of `chunk`, `pause` apart, until `stop` is set (or they run
/// out); how many it published. Events keep flowing however long the browser takes to start.
fn keep_publishing(
    js: async_nats::jetstream::Context,
    txs: Vec<produce::Transaction>,
    chunk: usize,
    pause: Duration,
) -> (
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    tokio::task::JoinHandle<usize>,
) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    let task = tokio::spawn(async move {
        let mut sent = 0;
        for c in txs.chunks(chunk) {
            if stopped.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            publish_txs(&js, "txn.in", c).await;
            sent += c.len();
            tokio::time::sleep(pause).await;
        }
        sent
    });
    (stop, task)
}

/// Runs one step of the browser script; what it saw, or the panic with its reason.
fn browser(step: &str, url: &str, env: &[(&str, &str)]) -> Value {
    let tools = std::env::var("EDDY_BROWSER_TOOLS").unwrap_or_else(|_| {
        format!(
            "{}/.cache/eddy/tools/browser",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    let script = eddy_tests::workspace_root().join("tests/browser/console.mjs");
    let out = Command::new("node")
        .arg(&script)
        .arg(step)
        .env("EDDY_BROWSER_TOOLS", &tools)
        .env("CONSOLE_URL", url)
        .env("SHOTS", shots())
        .env("OPERATOR_TOKEN", OPERATOR)
        .env("VIEWER_TOKEN", VIEWER)
        .envs(env.iter().copied())
        .output()
        .expect(
            "node: the console tests need node and playwright-core (scripts/test.sh installs them)",
        );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "browser step `{step}` failed (screenshot in {}): {stderr}{stdout}",
        shots().display()
    );
    let seen: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("browser step `{step}` printed no JSON ({e}): {stdout}{stderr}")
    });
    eprintln!("browser step {step}: {seen}");
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_view_shows_a_live_pipeline_and_its_actions_work() {
    let Fixture {
        mut nats,
        dir,
        mut spec,
        conn,
    } = Fixture::start("fraud", "fraud-enrich").await;
    let console_port = free_port();
    // Checkpoints stay an hour, so the state view can ask one by id (`as_of`).
    spec.checkpoint.push_str("retain_for_ms = 3600000\n");
    // A broadcast table for the state view: category limits, as rules.
    spec.extra.push_str(
        "\n[broadcast.rules]\nstream = \"RULES\"\nsubjects = [\"rules.fraud\"]\nidle_apply_ms = 100\n",
    );
    eddy_tests::create_stream(&conn.js, "RULES", &["rules.fraud"])
        .await
        .expect("rules stream");
    for rule in [
        r#"{"category":"travel","limit_cents":50000}"#,
        r#"{"category":"groceries","limit_cents":12000}"#,
    ] {
        conn.js
            .publish("rules.fraud", rule.as_bytes().to_vec().into())
            .await
            .expect("publish rule")
            .await
            .expect("rule stored");
    }
    spec.extra.push_str(&format!(
        "\n[console]\nlisten = \"127.0.0.1:{console_port}\"\ntoken = \"{VIEWER}\"\noperator_token = \"{OPERATOR}\"\n[partitions]\nhost = \"a\"\n"
    ));
    let fixed = dir.path().join("pipeline.toml");
    spec.write(&fixed).expect("config");
    // Dead letters to replay: a key pointer with a typo sends every event there.
    spec.key = r#"{ json = "/customr" }"#.into();
    let typo = dir.path().join("typo.toml");
    spec.write(&typo).expect("config");
    let txs = produce::transactions(20_000, 40, 31, 0);
    let mut host = HostProcess::spawn("typo", &typo, &dir.path().join("typo.log"));
    publish_txs(&conn.js, "txn.in", &txs[..20]).await;
    wait_for_len(&conn.js, "DLQ", 20, Duration::from_secs(60)).await;
    host.stop();

    let mut host = HostProcess::spawn("a", &fixed, &dir.path().join("a.log"));
    let console = ConsoleProcess(
        Command::new(eddy_bin())
            .args(["console", fixed.to_str().expect("path")])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("console.log")).expect("log"))
            .spawn()
            .expect("eddy console"),
    );
    let url = format!("http://127.0.0.1:{console_port}");

    // Overview: events flow while the page watches.
    let (stop, flowing) = keep_publishing(
        conn.js.clone(),
        txs[20..].to_vec(),
        50,
        Duration::from_millis(100),
    );
    let url2 = url.clone();
    let seen = tokio::task::spawn_blocking(move || browser("overview", &url2, &[("HOST", "a")]))
        .await
        .expect("overview");
    assert_eq!(seen["state"], "running", "{seen}");
    assert!(
        seen["partitions"]
            .as_str()
            .unwrap_or("")
            .starts_with("1 of 1"),
        "{seen}"
    );
    assert!(
        seen["plugin"]
            .as_str()
            .unwrap_or("")
            .starts_with("fraud_enrich"),
        "{seen}"
    );
    assert!(
        seen["events_after"].as_u64() > seen["events_before"].as_u64(),
        "counts move: {seen}"
    );
    assert!(seen["in_rate"].as_f64().unwrap_or(0.0) > 0.0, "{seen}");
    assert!(
        seen["plotted"].as_u64().unwrap_or(0) >= 3,
        "the plot has points: {seen}"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut outputs = flowing.await.expect("publisher") as u64;
    wait_for_len(&conn.js, "OUT", outputs, Duration::from_secs(60)).await;

    // Checkpoints: a checkpoint and a savepoint from the buttons.
    let url2 = url.clone();
    let seen = tokio::task::spawn_blocking(move || browser("checkpoints", &url2, &[]))
        .await
        .expect("checkpoints");
    let asked_checkpoint = seen["checkpoint"].as_u64().unwrap_or(0);
    assert!(asked_checkpoint > 0, "{seen}");
    let sp = seen["savepoint"].as_str().unwrap_or("");
    assert!(sp.contains(": done") && sp.contains("sp-"), "{seen}");

    // Dead letters: one shown whole and replayed: its output appears, once.
    let url2 = url.clone();
    let seen = tokio::task::spawn_blocking(move || browser("dlq", &url2, &[]))
        .await
        .expect("dlq");
    assert!(
        seen["kinds"].as_str().unwrap_or("").contains("20 key"),
        "{seen}"
    );
    assert_eq!(seen["rows"], 20, "{seen}");
    assert!(
        seen["headers"]
            .as_str()
            .unwrap_or("")
            .contains("Eddy-Error-Kind"),
        "{seen}"
    );
    assert!(
        seen["replayed"]
            .as_str()
            .unwrap_or("")
            .starts_with("replayed: 1 published"),
        "{seen}"
    );
    let payload: Value =
        serde_json::from_str(seen["payload"].as_str().unwrap_or("")).expect("payload");
    let replayed_id = payload["id"].as_str().expect("an id").to_string();
    outputs += 1;
    let out = wait_for_len(&conn.js, "OUT", outputs, Duration::from_secs(30)).await;
    assert_eq!(out, outputs, "the replayed event's output, once");
    let outs = eddy_tests::read_stored(&conn.js, "txn.out")
        .await
        .expect("outputs");
    let with_id = outs
        .iter()
        .filter(|o| {
            serde_json::from_slice::<Value>(&o.payload)
                .is_ok_and(|v| v["id"] == replayed_id.as_str())
        })
        .count();
    assert_eq!(
        with_id, 1,
        "the replayed dead letter {replayed_id} produced its output"
    );

    // State: the stats of a customer that had events.
    let key = txs[100].customer.clone();
    let url2 = url.clone();
    let as_of = asked_checkpoint.to_string();
    let seen = tokio::task::spawn_blocking(move || {
        browser("state", &url2, &[("KEY", &key), ("AS_OF", &as_of)])
    })
    .await
    .expect("state");
    let states = seen["states"].to_string();
    assert!(
        states.contains("stats") && states.contains("recent"),
        "{seen}"
    );
    assert!(
        !seen["answer"]["value"].is_null(),
        "a value for the key: {seen}"
    );
    assert!(
        seen["list"]["values"]
            .as_array()
            .is_some_and(|v| !v.is_empty()),
        "the list state of the key: {seen}"
    );
    // The same key as of the checkpoint taken from the page: named in the answer.
    assert_eq!(
        seen["past"]["as_of"]["checkpoint"], asked_checkpoint,
        "{seen}"
    );
    assert!(!seen["past"]["value"].is_null(), "{seen}");
    let table = seen["broadcast"].to_string();
    assert!(
        table.contains("travel") && table.contains("50000") && table.contains("groceries"),
        "the broadcast table: {seen}"
    );

    // Deploy: an uploaded component becomes the running version.
    let next = dir.path().join("fraud-enrich-next.wasm");
    let wasm = std::fs::read(plugin("fraud-enrich")).expect("plugin");
    std::fs::write(&next, variant(&wasm, 7)).expect("variant");
    let url2 = url.clone();
    let next2 = next.to_str().expect("path").to_string();
    let seen = tokio::task::spawn_blocking(move || {
        browser("deploy", &url2, &[("DEPLOY_WASM", next2.as_str())])
    })
    .await
    .expect("deploy");
    let version = seen["version"].as_str().expect("a version").to_string();
    assert_eq!(
        version,
        eddy_host::engine::version_of(&variant(&wasm, 7)),
        "{seen}"
    );
    assert!(
        seen["history"]
            .as_str()
            .unwrap_or("")
            .contains("deployed from the console (fraud-enrich-next.wasm)"),
        "{seen}"
    );
    // Probation of the new version ends after its first 100 events.
    let more = produce::transactions(200, 40, 32, 0);
    publish_txs(&conn.js, "txn.in", &more).await;
    outputs += 200;
    wait_for_len(&conn.js, "OUT", outputs, Duration::from_secs(60)).await;

    // Rollback: a second upload, then back to the first with its row's button. Events flow
    // meanwhile: a version waits for the probation of the one before it, which judges events.
    let (stop, flowing) = keep_publishing(
        conn.js.clone(),
        produce::transactions(20_000, 40, 33, 0),
        20,
        Duration::from_millis(50),
    );
    let third = dir.path().join("fraud-enrich-third.wasm");
    std::fs::write(&third, variant(&wasm, 8)).expect("variant");
    let url2 = url.clone();
    let third2 = third.to_str().expect("path").to_string();
    let seen = tokio::task::spawn_blocking(move || {
        browser("rollback", &url2, &[("DEPLOY_WASM", third2.as_str())])
    })
    .await
    .expect("rollback");
    assert_eq!(
        seen["deployed"].as_str(),
        Some(eddy_host::engine::version_of(&variant(&wasm, 8)).as_str()),
        "{seen}"
    );
    assert_eq!(
        seen["rolled_back_to"].as_str(),
        Some(version.as_str()),
        "rolled back to the version the upload replaced: {seen}"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    flowing.await.expect("publisher");

    // Shadow: uploaded with "as shadow", its report shows while events flow, Discard ends it.
    let (stop, flowing) = keep_publishing(
        conn.js.clone(),
        produce::transactions(20_000, 400, 34, 0),
        20,
        Duration::from_millis(50),
    );
    let strict = plugin("fraud-enrich-strict");
    let url2 = url.clone();
    let strict2 = strict.to_str().expect("path").to_string();
    let seen = tokio::task::spawn_blocking(move || {
        browser("shadow", &url2, &[("SHADOW_WASM", strict2.as_str())])
    })
    .await
    .expect("shadow");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    flowing.await.expect("publisher");
    let strict_version = eddy_host::engine::version_of(&std::fs::read(&strict).expect("strict"));
    assert_eq!(
        seen["version"].as_str(),
        Some(strict_version.as_str()),
        "{seen}"
    );
    assert!(
        seen["summary"]
            .as_str()
            .is_some_and(|s| s.contains(&strict_version) && s.contains(" differ")),
        "{seen}"
    );
    let row = seen["subjects"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r[1] == "txn.out"))
        .unwrap_or_else(|| panic!("a txn.out row: {seen}"));
    assert!(
        row[3].as_str().and_then(|n| n.parse::<u64>().ok()) > Some(0),
        "{seen}"
    );
    assert!(
        seen["samples"].as_array().is_some_and(|s| !s.is_empty()),
        "{seen}"
    );
    assert!(
        seen["history"]
            .as_str()
            .is_some_and(|h| h.contains("discarded")),
        "{seen}"
    );

    // The version the host first loaded from its file is kept too: a rollback can go back
    // to it.
    let deployments: Value = serde_json::from_str(
        &reqwest::Client::new()
            .get(format!("{url}/api/deployments"))
            .bearer_auth(OPERATOR)
            .send()
            .await
            .expect("deployments")
            .text()
            .await
            .expect("body"),
    )
    .expect("json");
    let kept = deployments["kept"].to_string();
    for v in [
        eddy_host::engine::version_of(&wasm),
        version.clone(),
        eddy_host::engine::version_of(&variant(&wasm, 8)),
    ] {
        assert!(kept.contains(&v), "{v} kept: {kept}");
    }

    // Read-only: every action refused, and a wrong token asked to sign in.
    let url2 = url.clone();
    let seen = tokio::task::spawn_blocking(move || browser("readonly", &url2, &[]))
        .await
        .expect("readonly");
    assert_eq!(seen["role"], "read-only", "{seen}");
    let disabled = seen["disabled"].as_array().expect("buttons");
    assert!(
        !disabled.is_empty() && disabled.iter().all(|d| d == true),
        "{seen}"
    );
    assert_eq!(seen["forced"]["status"], 403, "{seen}");
    assert!(
        seen["signin"].as_str().unwrap_or("").contains("sign in"),
        "{seen}"
    );

    // A host that dies is shown gone, and back once it runs again.
    host.signal("-KILL");
    host.wait_exit();
    let url2 = url.clone();
    let seen = tokio::task::spawn_blocking(move || {
        browser("host", &url2, &[("HOST", "a"), ("EXPECT", "gone")])
    })
    .await
    .expect("gone");
    assert!(
        seen["state"].as_str().unwrap_or("").starts_with("gone"),
        "{seen}"
    );
    let mut host = HostProcess::spawn("a", &fixed, &dir.path().join("a2.log"));
    let url2 = url.clone();
    let seen = tokio::task::spawn_blocking(move || {
        browser("host", &url2, &[("HOST", "a"), ("EXPECT", "running")])
    })
    .await
    .expect("back");
    assert_eq!(seen["state"], "running", "{seen}");

    // NATS down under both: the console shows the host unreachable, then, once NATS is
    // back, reconnects and shows it running again.
    nats.stop();
    let url2 = url.clone();
    let seen = tokio::task::spawn_blocking(move || {
        browser("host", &url2, &[("HOST", "a"), ("EXPECT", "gone")])
    })
    .await
    .expect("while NATS is down");
    assert!(
        seen["state"].as_str().unwrap_or("").starts_with("gone"),
        "{seen}"
    );
    nats.restart().expect("restart nats-server");
    let url2 = url.clone();
    let seen = tokio::task::spawn_blocking(move || {
        browser("host", &url2, &[("HOST", "a"), ("EXPECT", "running")])
    })
    .await
    .expect("after NATS restart");
    assert_eq!(seen["state"], "running", "{seen}");
    host.stop();
    drop(console);
}
