//! When a partition's run or its commit fails: a partition one host cannot run (its state
//! directory cannot be created there) is run by another host, beyond that host's share, while
//! the first lets it cool; an owner whose revision of its pointer fell behind its own write
//! (a write whose answer was lost) goes on as the owner; a partition whose every checkpoint is
//! corrupt starts over after `eddy cluster reset`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value;

use eddy_host::cli::produce;
use eddy_tests::hosts::{self, owners, pointers};
use eddy_tests::{eventually, publish_txs_by_customer, stream_len, wait_for_len};

use super::{ONE_AT_A_TIME, PARTITIONS, assert_exact, log_tails, outputs, spawn, start_cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_its_host_cannot_run_is_run_by_another_host() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (nats, conn) = start_cluster(dir.path()).await;
    let sick = PARTITIONS - 1;
    // A file where host a keeps partition 7's state: every run of it there fails at start,
    // as on a disk that refuses the partition's directory.
    let a_state = super::spec("", dir.path(), "a").state_dir;
    std::fs::create_dir_all(&a_state).expect("mkdir");
    std::fs::write(a_state.join(format!("p{sick}")), "not a directory").expect("write");
    let txs = produce::transactions(30_000, 200, 41, 0);
    publish_txs_by_customer(&conn.js, "txn.in.*", &txs[..15_000]).await;

    // b runs every partition alone; then a joins, and the plan gives it b's highest four,
    // the sick one among them. Once a's run of it fails, b is at its share: only a host
    // taking it beyond its share runs it again.
    let mut all = vec![spawn(dir.path(), &nats.url(), "b")];
    super::owns_all(dir.path(), &all[0], "b").await;
    all.push(spawn(dir.path(), &nats.url(), "a"));
    let config = all[0].config.clone();
    // a fails it, b takes it back beyond its share and then hands a a partition it can run.
    // Meanwhile `eddy cluster status` names the host it fails on.
    let half = PARTITIONS as usize / 2;
    let deadline = Instant::now() + Duration::from_secs(150);
    let mut named = false;
    loop {
        let status = hosts::cluster_status(&config);
        named |= status["partitions"][sick as usize]["failing_on"]
            .as_array()
            .is_some_and(|on| on.len() == 1 && on[0].as_str().is_some_and(|h| h.starts_with("a-")));
        let o = owners(&config);
        let of = |h: &str| o.values().filter(|v| *v == h).count();
        if named
            && o.len() == PARTITIONS as usize
            && o.get(&sick).is_some_and(|h| h == "b")
            && of("a") == half
            && of("b") == half
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "b does not run partition {sick} beside a after 150 s (status named a: {named}): {o:?}\n{}",
            log_tails(dir.path(), &["a", "b"])
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    publish_txs_by_customer(&conn.js, "txn.in.*", &txs[15_000..]).await;
    wait_for_len(
        &conn.js,
        "FRAUD_OUT",
        txs.len() as u64,
        Duration::from_secs(180),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        stream_len(&conn.js, "FRAUD_OUT").await.expect("len"),
        txs.len() as u64,
        "{}",
        log_tails(dir.path(), &["a", "b"])
    );
    assert_exact(&conn, &txs, &outputs(&conn.js).await).await;

    let b_log = std::fs::read_to_string(dir.path().join("b.log")).expect("log");
    assert!(
        b_log.contains("took the partition beyond this host's share"),
        "{}",
        log_tails(dir.path(), &["a", "b"])
    );
    let a_log = std::fs::read_to_string(dir.path().join("a.log")).expect("log");
    assert!(
        a_log.contains("not a directory") || a_log.contains("Not a directory"),
        "the failure names its cause: {}",
        log_tails(dir.path(), &["a"])
    );
    hosts::stop_all(&mut all);
}

/// Host a, alone, once it has handled the first half of `txs` and every partition has
/// committed a checkpoint.
async fn first_half_on_a(
    dir: &std::path::Path,
    url: &str,
    conn: &eddy_host::transport::Nats,
    txs: &[produce::Transaction],
) -> hosts::HostProcess {
    let half = txs.len() / 2;
    publish_txs_by_customer(&conn.js, "txn.in.*", &txs[..half]).await;
    let a = spawn(dir, url, "a");
    wait_for_len(&conn.js, "FRAUD_OUT", half as u64, Duration::from_secs(120)).await;
    eventually(
        "every partition committed",
        Duration::from_secs(30),
        async || pointers(&a.config).len() == PARTITIONS as usize,
    )
    .await;
    a
}

/// A commit whose answer was lost may have landed: the owner's next commit finds the pointer
/// at a revision it never saw, reads it back, finds its own write, and commits on as the
/// owner rather than stopping as fenced (a restore and a replay for nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_behind_its_own_pointer_write_commits_on() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (nats, conn) = start_cluster(dir.path()).await;
    let txs = produce::transactions(6_000, 100, 43, 0);
    let mut a = first_half_on_a(dir.path(), &nats.url(), &conn, &txs).await;
    let before = pointers(&a.config);
    // Every pointer written again with the value its owner last wrote: the owner's revision
    // is now behind the pointer's, as after a write whose answer never came.
    let kv = conn
        .js
        .get_key_value("eddy-fraud-pointers")
        .await
        .expect("the pointers bucket");
    for p in 0..PARTITIONS {
        let key = format!("p{p}");
        loop {
            let e = kv.entry(&key).await.expect("read").expect("a pointer");
            // The owner may commit in between: then read again.
            if kv.update(&key, e.value.clone(), e.revision).await.is_ok() {
                break;
            }
        }
    }
    publish_txs_by_customer(&conn.js, "txn.in.*", &txs[3_000..]).await;
    wait_for_len(&conn.js, "FRAUD_OUT", 6_000, Duration::from_secs(120)).await;
    eventually(
        "every partition committed past the rewrite, under the same owner",
        Duration::from_secs(60),
        async || {
            let now = pointers(&a.config);
            (0..PARTITIONS).all(|p| {
                now.get(&p)
                    .is_some_and(|(epoch, id)| *epoch == before[&p].0 && *id > before[&p].1)
            })
        },
    )
    .await;
    let log = std::fs::read_to_string(dir.path().join("a.log")).expect("log");
    assert!(
        !log.contains("fenced"),
        "no partition stopped: {}",
        log_tails(dir.path(), &["a"])
    );
    assert_exact(&conn, &txs, &outputs(&conn.js).await).await;
    assert!(a.stop().success(), "{}", log_tails(dir.path(), &["a"]));
}

/// A partition whose every checkpoint is corrupt fails on every host, with an error that
/// names the way back; `eddy cluster reset` starts it over, and it replays its input from the
/// start of the stream into the same state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_whose_checkpoints_are_all_corrupt_starts_over_after_a_reset() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (nats, conn) = start_cluster(dir.path()).await;
    let txs = produce::transactions(6_000, 100, 47, 0);
    let mut a = first_half_on_a(dir.path(), &nats.url(), &conn, &txs).await;
    assert!(a.stop().success(), "{}", log_tails(dir.path(), &["a"]));

    // Every manifest of partition 3 in the store overwritten with something else.
    let bad = 3;
    let bucket = super::spec(&nats.url(), dir.path(), "a")
        .config()
        .checkpoint
        .bucket;
    let store = conn
        .js
        .get_object_store(&bucket)
        .await
        .expect("the checkpoint bucket");
    let mut listed = store.list().await.expect("list the bucket");
    let mut manifests = Vec::new();
    while let Some(o) = listed.next().await {
        let o = o.expect("an object");
        if o.name.starts_with(&format!("fraud/p{bad}/")) && o.name.ends_with("manifest.json") {
            manifests.push(o.name);
        }
    }
    assert!(!manifests.is_empty(), "partition {bad} has checkpoints");
    for name in &manifests {
        store
            .put(name.as_str(), &mut "not a manifest".as_bytes())
            .await
            .expect("overwrite a manifest");
    }

    // b, with a state directory of its own, runs every other partition; this one fails, and
    // the error names the command that starts it over.
    let mut b = spawn(dir.path(), &nats.url(), "b");
    let b_log = dir.path().join("b.log");
    eventually(
        "b runs every partition but the corrupt one, and names the reset",
        Duration::from_secs(90),
        async || {
            let o = owners(&b.config);
            let log = std::fs::read_to_string(&b_log).unwrap_or_default();
            o.len() == PARTITIONS as usize - 1
                && !o.contains_key(&bad)
                && log.contains(&format!(
                    "eddy cluster reset <pipeline.toml> --partition {bad}"
                ))
        },
    )
    .await;
    // The reset is refused while a host holds the partition (b tries it again every 10 s).
    let mut tries = 0;
    let said = loop {
        let out = std::process::Command::new(eddy_tests::eddy_bin())
            .args(["cluster", "reset"])
            .arg(&b.config)
            .args(["--partition", &bad.to_string()])
            .output()
            .expect("the eddy binary");
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        if out.status.success() {
            break String::from_utf8_lossy(&out.stdout).to_string();
        }
        tries += 1;
        assert!(tries < 40 && stderr.contains("--force"), "{stderr}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(said.contains("no longer names checkpoint"), "{said}");
    // The old checkpoints are gone from the store: no restore falls back into them.
    let mut listed = store.list().await.expect("list the bucket");
    while let Some(o) = listed.next().await {
        let o = o.expect("an object");
        assert!(
            !manifests.contains(&o.name),
            "{} is still in the store",
            o.name
        );
    }

    // b starts it over from empty state and replays the stream from its start: every output
    // the reference has (those replayed after the duplicate window published again, each
    // equal to the first), and its state.
    publish_txs_by_customer(&conn.js, "txn.in.*", &txs[3_000..]).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let outs = loop {
        let stored = eddy_tests::read_stored(&conn.js, "txn.out")
            .await
            .expect("read outputs");
        let mut outs: BTreeMap<String, Value> = BTreeMap::new();
        for m in stored {
            let v: Value = serde_json::from_slice(&m.payload).expect("json");
            let id = v["id"].as_str().expect("id").to_string();
            if let Some(first) = outs.insert(id.clone(), v.clone()) {
                assert_eq!(first, v, "{id}: a replayed output differs from the first");
            }
        }
        if outs.len() >= txs.len() || Instant::now() > deadline {
            break outs;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let reference = eddy_tests::fraud_reference(&txs, 70);
    assert_eq!(
        outs.len(),
        reference.len(),
        "every transaction has its output"
    );
    for e in &reference {
        let id = e["id"].as_str().expect("id");
        assert_eq!(&outs[id], e, "output of {id}");
    }
    super::assert_state(&conn, &txs).await;
    assert!(b.stop().success(), "{}", log_tails(dir.path(), &["b"]));
}
