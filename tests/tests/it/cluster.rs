//! Eddy hosts in a cluster on a 3-node NATS cluster (R3 streams, KV and object store), each
//! an `eddy run` process with its own state directory, compared with the reference computed
//! from the input: a host killed mid-run, a host paused past its lease, a host joining.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use eddy_host::cli::{produce, streams};
use eddy_host::query::{self, Op, Query};
use eddy_tests::hosts::{self, HostProcess, owners, pointers};
use eddy_tests::{
    NatsCluster, PipelineSpec, eventually, plugin, publish_txs_by_customer, stream_len,
    wait_for_len,
};
use serde_json::Value;

mod failing;

const PARTITIONS: u32 = 8;

/// One cluster test at a time: each runs three nats-servers and three or four hosts, and two
/// of them side by side on two cores starve each other's leases.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The pipeline file of host `host`: its own state directory, the cluster section.
fn spec(url: &str, dir: &Path, host: &str) -> PipelineSpec {
    let mut spec = PipelineSpec::new("fraud", url, &dir.join(host), plugin("fraud-enrich"));
    spec.input_subject = "txn.in.*".into();
    spec.extra = format!(
        "[checkpoint]\ninterval_ms = 500\n\n[partitions]\ncount = {PARTITIONS}\nhost = \"{host}\"\n\n[cluster]\npartition_subject = \"txn.p.{{partition}}\"\nlease_ms = 3000\n"
    );
    spec
}

fn spawn(dir: &Path, url: &str, name: &str) -> HostProcess {
    spawn_with(dir, url, name, "")
}

/// [`spawn`], with `more` tables in the pipeline file.
fn spawn_with(dir: &Path, url: &str, name: &str, more: &str) -> HostProcess {
    let config = dir.join(format!("{name}.toml"));
    let mut spec = spec(url, dir, name);
    spec.extra.push_str(more);
    spec.write(&config).expect("config");
    HostProcess::spawn(name, &config, &dir.join(format!("{name}.log")))
}

fn shared(config: &Path, hosts: &[&str], min: usize, max: usize) -> bool {
    hosts::shared(config, PARTITIONS, hosts, min, max)
}

/// Hosts a, b and c, once they share the partitions evenly (3, 3, 2).
async fn three_hosts(dir: &Path, url: &str) -> Vec<HostProcess> {
    let hosts: Vec<HostProcess> = ["a", "b", "c"].iter().map(|n| spawn(dir, url, n)).collect();
    let deadline = Instant::now() + Duration::from_secs(90);
    while !shared(&hosts[0].config, &["a", "b", "c"], 2, 3) {
        if Instant::now() > deadline {
            panic!(
                "a, b and c do not share the partitions after 90 s: {:?}\n{}",
                owners(&hosts[0].config),
                log_tails(dir, &["a", "b", "c"])
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    hosts
}

/// Waits until `host` (named `name`) owns every partition alone.
async fn owns_all(dir: &Path, host: &HostProcess, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let all = PARTITIONS as usize;
    while !shared(&host.config, &[name], all, all) {
        assert!(
            Instant::now() < deadline,
            "{name} does not own every partition after 60 s: {:?}\n{}",
            owners(&host.config),
            log_tails(dir, &[name])
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The last lines each host logged, for a failure's message (the directory goes with the
/// panic).
fn log_tails(dir: &Path, names: &[&str]) -> String {
    let tails: Vec<String> = names
        .iter()
        .map(|h| {
            let log = std::fs::read_to_string(dir.join(format!("{h}.log"))).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            format!(
                "{h}:\n{}",
                lines[lines.len().saturating_sub(15)..].join("\n")
            )
        })
        .collect();
    tails.join("\n")
}

/// Every output and when it was stored: id → (payload, stored µs).
async fn outputs(js: &async_nats::jetstream::Context) -> BTreeMap<String, (Value, u64)> {
    // Read to the count stored: an election among the servers may hold delivery for seconds,
    // and a read cut short would look like lost outputs.
    let msgs = eddy_tests::read_stored(js, "txn.out")
        .await
        .expect("read outputs");
    let mut out = BTreeMap::new();
    for m in msgs {
        let v: Value = serde_json::from_slice(&m.payload).expect("json");
        let id = v["id"].as_str().expect("id").to_string();
        assert!(
            out.insert(id.clone(), (v, m.stored_us)).is_none(),
            "{id} output twice"
        );
    }
    out
}

/// The outputs equal the reference, each once, and the hosts' state answers every
/// customer's count and sum as the reference does.
async fn assert_exact(
    conn: &eddy_host::transport::Nats,
    txs: &[produce::Transaction],
    outs: &BTreeMap<String, (Value, u64)>,
) {
    assert_eq!(
        outs.len(),
        txs.len(),
        "every transaction has its one output"
    );
    for e in eddy_tests::fraud_reference(txs, 70) {
        let id = e["id"].as_str().expect("id");
        assert_eq!(outs[id].0, e, "output of {id}");
    }
    assert_state(conn, txs).await;
}

/// The hosts' state answers every customer's count and sum as the reference does.
async fn assert_state(conn: &eddy_host::transport::Nats, txs: &[produce::Transaction]) {
    let mut want: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for t in txs {
        let e = want.entry(t.customer.clone()).or_default();
        e.0 += 1;
        e.1 += t.amount_cents;
    }
    for (customer, (count, sum)) in &want {
        let q = Query {
            state: Some("stats".into()),
            key: Some(customer.clone()),
            ..Query::default()
        };
        // While a partition moves nobody answers for it: ask again, as a client would.
        let v = eventually_answer(conn, &q).await;
        assert_eq!(v["value"]["count"], *count, "{customer}: count");
        assert_eq!(v["value"]["sum_cents"], *sum, "{customer}: sum");
    }
}

async fn start_cluster(dir: &Path) -> (NatsCluster, eddy_host::transport::Nats) {
    let nats = NatsCluster::start(3).await.expect("3 nats-servers");
    let conn = nats.connect().await.expect("connect");
    let cfg = spec(&nats.url(), dir, "a").config();
    let report = streams::ensure(&conn, &cfg, &cfg.input.subjects)
        .await
        .expect("streams");
    assert!(
        report.iter().any(|l| l.contains("replicas: 3")),
        "{report:?}"
    );
    (nats, conn)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_killed_mid_run_loses_and_duplicates_nothing() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (nats, conn) = start_cluster(dir.path()).await;
    let txs = produce::transactions(300_000, 400, 21, 0);
    // Half before the kill, half after: the killed host's partitions have work left however
    // fast the hosts ran, so the outputs are complete only once a survivor took them over.
    let (first, second) = txs.split_at(150_000);
    publish_txs_by_customer(&conn.js, "txn.in.*", first).await;
    // Mid-run, once the three hosts share the partitions evenly (3, 3, 2).
    let mut hosts = three_hosts(dir.path(), &nats.url()).await;
    wait_for_len(&conn.js, "FRAUD_OUT", 45_000, Duration::from_secs(180)).await;
    // Still evenly shared (a status read on a loaded machine may catch a partition between
    // owners).
    eventually(
        "a, b and c still share",
        Duration::from_secs(30),
        async || shared(&hosts[0].config, &["a", "b", "c"], 2, 3),
    )
    .await;
    let before = owners(&hosts[0].config);
    let moved: BTreeSet<u32> = before
        .iter()
        .filter(|(_, o)| *o == "b")
        .map(|(p, _)| *p)
        .collect();
    assert!(
        !moved.is_empty(),
        "b owned partitions: {before:?}\n{}",
        log_tails(dir.path(), &["a", "b", "c"])
    );
    let killed_at_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_micros() as u64;
    hosts[1].signal("-KILL");
    hosts[1].wait_exit();
    publish_txs_by_customer(&conn.js, "txn.in.*", second).await;
    let got = wait_for_len(&conn.js, "FRAUD_OUT", 300_000, Duration::from_secs(240)).await;
    // `eddy cluster status` shows the owners the hosts last wrote: wait for both survivors'
    // views to settle rather than catch one mid-move.
    let taken = |after: &BTreeMap<u32, String>| {
        moved
            .iter()
            .all(|p| matches!(after.get(p).map(String::as_str), Some("a" | "c")))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        let after = owners(&hosts[0].config);
        if taken(&after) || Instant::now() > deadline {
            break after;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        taken(&after),
        "b's partitions {moved:?} not taken by a or c: {after:?} ({got} outputs)\n{}",
        log_tails(dir.path(), &["a", "c"])
    );
    let outs = outputs(&conn.js).await;
    // The gap of the moved partitions: the longest silence among their outputs from the
    // kill on (what the dead host had in flight may still land just after the kill).
    let mut times: Vec<u64> = outs
        .values()
        .filter(|(v, _)| {
            moved.contains(&hosts::partition_of(
                v["customer"].as_str().unwrap_or(""),
                PARTITIONS,
            ))
        })
        .map(|(_, at)| *at)
        .collect();
    times.sort_unstable();
    let gap = times
        .windows(2)
        .filter(|w| w[1] > killed_at_us)
        .map(|w| w[1] - w[0].max(killed_at_us))
        .max()
        .unwrap_or_else(|| {
            panic!(
                "the moved partitions {moved:?} produced no output after the kill: {} outputs of theirs, the last at {:?} µs, killed at {killed_at_us} µs; owners before {before:?}, after {after:?}",
                times.len(),
                times.last()
            )
        });
    println!(
        "failover: partitions {moved:?} of the killed host went {:.2} s without output after kill -9 (lease 3 s)",
        gap as f64 / 1e6
    );
    assert_eq!(got, 300_000);
    assert_eq!(
        stream_len(&conn.js, "FRAUD_OUT").await.expect("len"),
        300_000
    );
    assert_exact(&conn, &txs, &outs).await;
    hosts::stop_all(hosts.iter_mut().filter(|h| h.name != "b"));
    checkpoints_are_listed_per_partition(&hosts[0].config);
}

/// `eddy checkpoints` on a cluster's pipeline reads the checkpoints of each partition: every
/// partition's committed checkpoint is listed under it and inspected there by id, and naming
/// no partition where one is needed says how to name it.
fn checkpoints_are_listed_per_partition(config: &Path) {
    let eddy = |args: &[&str]| {
        Command::new(eddy_tests::eddy_bin())
            .arg("checkpoints")
            .args(&args[..1])
            .arg(config)
            .args(&args[1..])
            .output()
            .expect("the eddy binary")
    };
    let pointers = hosts::pointers(config);
    assert_eq!(pointers.len(), PARTITIONS as usize, "{pointers:?}");
    let listed = eddy(&["list"]);
    assert!(listed.status.success(), "{listed:?}");
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    for (p, (_, id)) in &pointers {
        let section = listed
            .split(&format!("partition {p}:\n"))
            .nth(1)
            .and_then(|rest| rest.split("partition ").next())
            .unwrap_or_else(|| panic!("no section of partition {p}:\n{listed}"));
        assert!(
            section
                .lines()
                .any(|l| l.split_whitespace().next() == Some(id.to_string().as_str())),
            "partition {p}'s committed checkpoint {id} is not listed under it:\n{listed}"
        );
        let shown = eddy(&["inspect", &id.to_string(), "--partition", &p.to_string()]);
        assert!(shown.status.success(), "{shown:?}");
        let manifest: Value = serde_json::from_slice(&shown.stdout).expect("a manifest");
        assert_eq!(manifest["id"].as_u64(), Some(*id));
    }
    let (_, (_, id)) = pointers.iter().next().expect("a partition");
    let unnamed = eddy(&["inspect", &id.to_string()]);
    assert!(!unnamed.status.success());
    let said = String::from_utf8_lossy(&unnamed.stderr);
    assert!(said.contains("--partition N"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_paused_past_its_lease_is_fenced_even_where_the_server_keeps_its_keys() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (nats, conn) = start_cluster(dir.path()).await;
    let txs = produce::transactions(40_000, 200, 23, 0);
    publish_txs_by_customer(&conn.js, "txn.in.*", &txs[..20_000]).await;
    let mut a = spawn(dir.path(), &nats.url(), "a");
    let mut b = spawn(dir.path(), &nats.url(), "b");
    wait_for_len(&conn.js, "FRAUD_OUT", 20_000, Duration::from_secs(120)).await;
    eventually(
        "both hosts own partitions",
        Duration::from_secs(30),
        async || {
            let o = owners(&a.config);
            o.len() == PARTITIONS as usize
                && o.values().any(|h| h == "a")
                && o.values().any(|h| h == "b")
        },
    )
    .await;
    // The hosts and leases buckets keep their keys from now on, as a server whose replica
    // fails to expire keys would (nats-server issues 3653, 4754): b must see for itself that
    // a stopped renewing.
    for what in ["hosts", "leases"] {
        let mut stream = conn
            .js
            .get_stream(format!("KV_eddy-fraud-{what}"))
            .await
            .expect("bucket's stream");
        let mut config = stream.info().await.expect("info").config.clone();
        config.max_age = Duration::ZERO;
        conn.js.update_stream(&config).await.expect("no age limit");
    }
    a.signal("-STOP");
    eventually(
        "b took a's partitions",
        Duration::from_secs(30),
        async || {
            let o = owners(&b.config);
            o.len() == PARTITIONS as usize && o.values().all(|h| h == "b")
        },
    )
    .await;
    let taken = pointers(&b.config);
    publish_txs_by_customer(&conn.js, "txn.in.*", &txs[20_000..]).await;
    wait_for_len(&conn.js, "FRAUD_OUT", 40_000, Duration::from_secs(120)).await;
    a.signal("-CONT");
    // a wakes up past its lease: it must not commit, acknowledge or publish for the
    // partitions it held (it may take some back through new leases afterwards).
    tokio::time::sleep(Duration::from_secs(8)).await;
    let later = pointers(&b.config);
    for (p, (epoch, checkpoint)) in &taken {
        let (e, c) = later[p];
        assert!(
            (e, c) >= (*epoch, *checkpoint),
            "partition {p}: pointer went back from {:?} to {:?}",
            (epoch, checkpoint),
            (e, c)
        );
    }
    let log = std::fs::read_to_string(dir.path().join("a.log")).expect("log");
    assert!(
        log.contains("fenced") || log.contains("lease lost"),
        "a noticed it lost its partitions: {log}"
    );
    let log_b = std::fs::read_to_string(dir.path().join("b.log")).expect("log");
    assert!(
        log_b.contains("took over a lease the server kept"),
        "b took a's leases over itself, the server keeping them: {log_b}"
    );
    assert_eq!(
        stream_len(&conn.js, "FRAUD_OUT").await.expect("len"),
        40_000,
        "{}",
        log_tails(dir.path(), &["a", "b"])
    );
    let outs = outputs(&conn.js).await;
    assert_exact(&conn, &txs, &outs).await;
    hosts::stop_all([&mut a, &mut b]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_host_takes_its_share_and_only_moved_partitions_pause() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (nats, conn) = start_cluster(dir.path()).await;
    let txs = produce::transactions(120_000, 300, 29, 0);
    publish_txs_by_customer(&conn.js, "txn.in.*", &txs[..60_000]).await;
    let mut hosts: Vec<HostProcess> = ["a", "b", "c"]
        .iter()
        .map(|n| spawn(dir.path(), &nats.url(), n))
        .collect();
    wait_for_len(&conn.js, "FRAUD_OUT", 60_000, Duration::from_secs(180)).await;
    // The three hosts share the partitions evenly (3, 3, 2) before the fourth joins.
    eventually(
        "a, b and c share the partitions",
        Duration::from_secs(60),
        async || shared(&hosts[0].config, &["a", "b", "c"], 2, 3),
    )
    .await;
    let before = owners(&hosts[0].config);
    // d joins while the second half is published: the partitions move while they have
    // events in hand, and their new owner replays from the committed checkpoint.
    let publishing = {
        let js = conn.js.clone();
        let rest = txs[60_000..].to_vec();
        tokio::spawn(async move { publish_txs_by_customer(&js, "txn.in.*", &rest).await })
    };
    // What a, b and c logged before d joins (hosts starting together may hand off too).
    let logged_before: Vec<usize> = ["a", "b", "c"]
        .iter()
        .map(|h| {
            std::fs::read_to_string(dir.path().join(format!("{h}.log")))
                .map(|l| l.len())
                .unwrap_or(0)
        })
        .collect();
    // d also answers HTTP queries, for keys of every partition, wherever they live.
    let http_port = eddy_tests::free_port();
    hosts.push(spawn_with(
        dir.path(),
        &nats.url(),
        "d",
        &format!("\n[query]\nhttp = \"127.0.0.1:{http_port}\"\ntoken = \"s3cret\"\n"),
    ));
    let deadline = Instant::now() + Duration::from_secs(90);
    while !shared(&hosts[0].config, &["a", "b", "c", "d"], 2, 2) {
        if Instant::now() > deadline {
            panic!(
                "d does not own its share after 90 s: {:?}\n{}",
                owners(&hosts[0].config),
                log_tails(dir.path(), &["a", "b", "c", "d"])
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // One read of the owners that shows every partition owned (a partition whose lease a
    // host starved of CPU let lapse is unowned for a moment before it is taken again).
    let mut after = owners(&hosts[0].config);
    let deadline = Instant::now() + Duration::from_secs(30);
    while after.len() < PARTITIONS as usize && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        after = owners(&hosts[0].config);
    }
    assert_eq!(
        after.len(),
        PARTITIONS as usize,
        "{after:?}\n{}",
        log_tails(dir.path(), &["a", "b", "c", "d"])
    );
    let moved: HashSet<u32> = (0..PARTITIONS).filter(|p| before[p] != after[p]).collect();
    assert_eq!(
        moved.len(),
        2,
        "only d's share moved: {before:?} -> {after:?}"
    );
    publishing.await.expect("publisher");
    wait_for_len(&conn.js, "FRAUD_OUT", 120_000, Duration::from_secs(180)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        stream_len(&conn.js, "FRAUD_OUT").await.expect("len"),
        120_000
    );
    let outs = outputs(&conn.js).await;
    assert_exact(&conn, &txs, &outs).await;
    // HTTP on d: every partition's state, from its owner, behind the token.
    let http = reqwest::Client::new();
    let mut want: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for t in &txs {
        let e = want.entry(t.customer.as_str()).or_default();
        e.0 += 1;
        e.1 += t.amount_cents;
    }
    let mut partitions_seen = BTreeSet::new();
    for (customer, (count, sum)) in want.iter().take(40) {
        let url = format!("http://127.0.0.1:{http_port}/v1/state/stats/{customer}");
        let r = http.get(&url).send().await.expect("http");
        assert_eq!(r.status(), 401, "no token");
        let r = http
            .get(&url)
            .bearer_auth("s3cret")
            .send()
            .await
            .expect("http");
        assert_eq!(r.status(), 200, "{customer}");
        let v: Value = serde_json::from_slice(&r.bytes().await.expect("body")).expect("json");
        assert_eq!(v["value"]["count"], *count, "{customer}: count over HTTP");
        assert_eq!(v["value"]["sum_cents"], *sum, "{customer}: sum over HTTP");
        let owner = http
            .get(format!("http://127.0.0.1:{http_port}/v1/owner/{customer}"))
            .bearer_auth("s3cret")
            .send()
            .await
            .expect("http");
        let o: Value = serde_json::from_slice(&owner.bytes().await.expect("body")).expect("json");
        partitions_seen.insert(o["partition"].to_string());
    }
    assert!(
        partitions_seen.len() >= 4,
        "the customers asked live in several partitions: {partitions_seen:?}"
    );

    // d fetched the moving partitions' checkpoints before their owners let go of them, and
    // every hand-off since d joined went to a host ready for it.
    let log = std::fs::read_to_string(dir.path().join("d.log")).expect("log");
    assert!(log.contains("took the partition"), "{log}");
    assert!(
        log.contains("fetched the partition's checkpoint; waiting"),
        "{log}"
    );
    let handed: String = ["a", "b", "c"]
        .iter()
        .zip(&logged_before)
        .map(|(h, from)| {
            let l = std::fs::read_to_string(dir.path().join(format!("{h}.log"))).expect("log");
            l.get(*from..).unwrap_or_default().to_string()
        })
        .collect();
    let ready = handed
        .matches("handing the partition off to a host ready for it")
        .count();
    assert!(
        ready >= 1 && ready == handed.matches("handing the partition off").count(),
        "{}",
        log_tails(dir.path(), &["a", "b", "c"])
    );
    hosts::stop_all(&mut hosts);
}

/// The leader of stream `name`, once it has one (an election on two busy cores after a
/// server is killed can take tens of seconds).
async fn leader_of(conn: &eddy_host::transport::Nats, name: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let answer = match conn.js.get_stream(name).await {
            Ok(mut stream) => match stream.info().await {
                Ok(info) => match info.cluster.as_ref().and_then(|c| c.leader.clone()) {
                    Some(leader) => return leader,
                    None => "no leader in the stream info".to_string(),
                },
                Err(e) => format!("stream info: {e}"),
            },
            Err(e) => format!("get stream: {e}"),
        };
        assert!(
            Instant::now() < deadline,
            "stream {name} has no leader after 90 s: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Moves the leadership of each of `streams` to the server leading the first one (stepping
/// down until the election lands there), and returns that server's name.
async fn lead_together(conn: &eddy_host::transport::Nats, streams: &[&str]) -> String {
    let leader = leader_of(conn, streams[0]).await;
    for name in &streams[1..] {
        for _ in 0..30 {
            let now = leader_of(conn, name).await;
            if now == leader {
                break;
            }
            let _ = conn
                .client
                .request(
                    format!("$JS.API.STREAM.LEADER.STEPDOWN.{name}"),
                    Bytes::new(),
                )
                .await;
            let deadline = Instant::now() + Duration::from_secs(10);
            while leader_of(conn, name).await == now && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        assert_eq!(
            leader_of(conn, name).await,
            leader,
            "{name} follows {leader}"
        );
    }
    leader
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nats_server_leading_leases_and_checkpoints_killed_mid_run_loses_nothing() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut nats, conn) = start_cluster(dir.path()).await;
    let txs = produce::transactions(150_000, 300, 31, 0);
    publish_txs_by_customer(&conn.js, "txn.in.*", &txs).await;
    let mut hosts = three_hosts(dir.path(), &nats.url()).await;
    wait_for_len(&conn.js, "FRAUD_OUT", 40_000, Duration::from_secs(180)).await;
    // One server leads the lease, pointer and host buckets and the checkpoint store.
    let led = [
        "KV_eddy-fraud-leases",
        "KV_eddy-fraud-pointers",
        "KV_eddy-fraud-hosts",
        "OBJ_eddy-checkpoints",
    ];
    let leader = lead_together(&conn, &led).await;
    nats.kill(&leader);
    println!("killed nats-server {leader}, leader of {led:?}");
    let got = wait_for_len(&conn.js, "FRAUD_OUT", 150_000, Duration::from_secs(300)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for s in &led {
        assert_ne!(
            leader_of(&conn, s).await,
            leader,
            "{s} elected a new leader"
        );
    }
    assert_eq!(got, 150_000);
    assert_eq!(
        stream_len(&conn.js, "FRAUD_OUT").await.expect("len"),
        150_000
    );
    let outs = outputs(&conn.js).await;
    assert_exact(&conn, &txs, &outs).await;
    hosts::stop_all(&mut hosts);
}

/// Every partition run's status (one answer per run), once each of the `runs` runs answered
/// and `done` holds for every answer.
async fn runs_where(
    conn: &eddy_host::transport::Nats,
    dir: &Path,
    runs: usize,
    what: &str,
    done: impl Fn(&eddy_host::control::HostStatus) -> bool,
) -> Vec<eddy_host::control::HostStatus> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let all: Vec<eddy_host::control::HostStatus> = hosts::ask_status(conn, "fraud").await;
        if all.len() == runs && all.iter().all(&done) {
            return all;
        }
        if Instant::now() >= deadline {
            let runs: Vec<String> = all
                .iter()
                .map(|s| {
                    format!(
                        "{} {:?}: checkpoint {:?}, plugin {:?}, shadow {:?}, probation {:?}, last deployment {:?}",
                        s.host,
                        s.partitions,
                        s.last_checkpoint.as_ref().map(|c| c.id),
                        s.plugin.as_ref().map(|p| &p.version),
                        s.shadow.as_ref().map(|r| (&r.version, &r.stopped)),
                        s.probation.as_ref().map(|p| (p.events, &p.previous)),
                        s.deployments.last()
                    )
                })
                .collect();
            panic!(
                "waited 90 s for {what}: {} answers\n{}\n{}",
                all.len(),
                runs.join("\n"),
                log_tails(dir, &["a", "b"])
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A shadow in a cluster: every partition run of both hosts starts it from its own state,
/// their reports together count exactly the events whose output changed, and the promotion
/// makes it live on every partition with every event published once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_runs_and_is_promoted_on_every_partition_of_every_host() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (nats, conn) = start_cluster(dir.path()).await;
    let txs = produce::transactions(800, 100, 31, 0);
    let hosts = [
        spawn(dir.path(), &nats.url(), "a"),
        spawn(dir.path(), &nats.url(), "b"),
    ];
    eventually(
        "a and b share the partitions",
        Duration::from_secs(90),
        async || shared(&hosts[0].config, &["a", "b"], 4, 4),
    )
    .await;
    publish_txs_by_customer(&conn.js, "txn.in.*", &txs[..300]).await;
    wait_for_len(&conn.js, "FRAUD_OUT", 300, Duration::from_secs(90)).await;
    let strict_wasm = std::fs::read(plugin("fraud-enrich-strict")).expect("strict build");
    let strict =
        eddy_host::reload::shadow::deploy(&conn, "eddy-plugins", "fraud", &strict_wasm, "test")
            .await
            .expect("deploy shadow");
    runs_where(
        &conn,
        dir.path(),
        PARTITIONS as usize,
        "a shadow on every run",
        |s| s.shadow.as_ref().is_some_and(|r| r.version == strict),
    )
    .await;
    publish_txs_by_customer(&conn.js, "txn.in.*", &txs[300..600]).await;
    wait_for_len(&conn.js, "FRAUD_OUT", 600, Duration::from_secs(90)).await;
    let total = |all: &[eddy_host::control::HostStatus]| -> (u64, u64) {
        all.iter()
            .filter_map(|s| s.shadow.as_ref())
            .fold((0, 0), |(e, d), r| (e + r.events, d + r.differing_events))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let (events, differing) = loop {
        let all = hosts::ask_status(&conn, "fraud").await;
        let (events, differing) = total(&all);
        if events >= 300 || Instant::now() > deadline {
            break (events, differing);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let outs = outputs(&conn.js).await;
    let changed = txs[300..600]
        .iter()
        .filter(|t| (40..70).contains(&outs[&t.id].0["risk"].as_u64().expect("risk")))
        .count() as u64;
    assert!(
        changed >= 10,
        "the data exercises the difference: {changed}"
    );
    assert_eq!(
        (events, differing),
        (300, changed),
        "the runs' reports together"
    );

    let v = eddy_host::reload::shadow::promote(&conn, "eddy-plugins", "fraud", "test")
        .await
        .expect("promote");
    assert_eq!(v, strict);
    runs_where(
        &conn,
        dir.path(),
        PARTITIONS as usize,
        "the promotion on every run",
        |s| s.shadow.is_none() && s.plugin.as_ref().is_some_and(|p| p.version == strict),
    )
    .await;
    publish_txs_by_customer(&conn.js, "txn.in.*", &txs[600..]).await;
    wait_for_len(&conn.js, "FRAUD_OUT", 800, Duration::from_secs(90)).await;
    let outs = outputs(&conn.js).await;
    assert_eq!(outs.len(), 800, "every event has its one output");
    for t in &txs[600..] {
        let o = &outs[&t.id].0;
        let risk = o["risk"].as_u64().expect("risk");
        assert_eq!(o["flagged"], Value::Bool(risk >= 40), "{o}");
    }
    // `flags`, written only by the shadows, is live with the counts from event 300 on.
    let flagged = |c: &str| {
        txs[300..]
            .iter()
            .filter(|t| t.customer == c && outs[&t.id].0["risk"].as_u64() >= Some(40))
            .count()
    };
    let c = txs[300..]
        .iter()
        .map(|t| t.customer.clone())
        .find(|c| flagged(c) > 0)
        .expect("a flagged customer");
    let q = Query {
        state: Some("flags".into()),
        key: Some(c.clone()),
        ..Query::default()
    };
    let got = eventually_answer(&conn, &q).await;
    assert_eq!(got["value"], flagged(&c), "{c}: {got}");
    drop(hosts);
}

/// A query's answer, asked again while a partition moves or a run restarts.
async fn eventually_answer(conn: &eddy_host::transport::Nats, q: &Query) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match query::nats::ask(conn, "fraud", Op::Get, q).await {
            Ok(v) => return v,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{:?} unanswered for 30 s: {e:?}", q.key),
        }
    }
}

/// Time travel in a cluster: `as_of` a moment between two rounds of events answers each
/// customer's count at that moment, from whichever host owns its partition; after a second
/// host joins and takes half the partitions, the customers that moved get the same answer from
/// it (their old checkpoints fetched from the checkpoint store, never cut on that host).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_travel_answers_the_same_after_a_partition_moves() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (nats, conn) = start_cluster(dir.path()).await;
    // Checkpoints kept an hour, so the moment asked stays retained.
    let keep = |name: &str| {
        let config = dir.path().join(format!("{name}.toml"));
        let mut spec = spec(&nats.url(), dir.path(), name);
        spec.extra = spec.extra.replace(
            "interval_ms = 500\n",
            "interval_ms = 1000\nretain_for_ms = 3600000\n",
        );
        spec.write(&config).expect("config");
        HostProcess::spawn(name, &config, &dir.path().join(format!("{name}.log")))
    };
    let a = keep("a");
    eventually(
        "a owns every partition",
        Duration::from_secs(90),
        async || shared(&a.config, &["a"], PARTITIONS as usize, PARTITIONS as usize),
    )
    .await;
    let txs = produce::transactions(400, 24, 41, 0);
    let count = |c: &str, upto: usize| txs[..upto].iter().filter(|t| t.customer == c).count();
    let customers: BTreeSet<String> = txs.iter().map(|t| t.customer.clone()).collect();
    // Every run cuts a checkpoint now (a run without new events would not cut one by itself).
    let checkpoint_everywhere = async || {
        let answers = eddy_host::control::request_from(
            &conn,
            "fraud",
            "checkpoint",
            serde_json::json!({}),
            Duration::from_secs(60),
            Some(PARTITIONS as usize),
            |_| {},
        )
        .await
        .expect("checkpoint");
        assert_eq!(answers.len(), PARTITIONS as usize, "{answers:?}");
        assert!(
            answers.iter().all(|a| a["ok"]["id"].is_u64()),
            "{answers:?}"
        );
    };

    publish_txs_by_customer(&conn.js, "txn.in.*", &txs[..200]).await;
    wait_for_len(&conn.js, "FRAUD_OUT", 200, Duration::from_secs(90)).await;
    checkpoint_everywhere().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let moment = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    tokio::time::sleep(Duration::from_millis(50)).await;
    publish_txs_by_customer(&conn.js, "txn.in.*", &txs[200..]).await;
    wait_for_len(&conn.js, "FRAUD_OUT", 400, Duration::from_secs(90)).await;
    checkpoint_everywhere().await;

    let as_of = |c: &str| Query {
        state: Some("stats".into()),
        key: Some(c.to_string()),
        as_of: Some(moment.parse().expect("as_of")),
        ..Query::default()
    };
    let before: BTreeMap<String, Value> = {
        let mut m = BTreeMap::new();
        for c in &customers {
            let v = eventually_answer(&conn, &as_of(c)).await;
            assert_eq!(
                v["value"]["count"],
                count(c, 200),
                "{c} as of {moment}: {v}"
            );
            assert!(
                v["host"].as_str().is_some_and(|h| h.starts_with('a')),
                "{v}"
            );
            m.insert(c.clone(), v);
        }
        m
    };

    let b = keep("b");
    eventually(
        "a and b share the partitions",
        Duration::from_secs(90),
        async || shared(&a.config, &["a", "b"], 4, 4),
    )
    .await;
    let on_b = owners(&a.config);
    let moved: Vec<&String> = customers
        .iter()
        .filter(|c| {
            on_b.get(&hosts::partition_of(c, PARTITIONS))
                .map(String::as_str)
                == Some("b")
        })
        .collect();
    assert!(moved.len() >= 4, "customers on b: {moved:?}");
    for c in &moved {
        let deadline = Instant::now() + Duration::from_secs(60);
        let v = loop {
            let v = eventually_answer(&conn, &as_of(c)).await;
            if v["host"].as_str().is_some_and(|h| h.starts_with('b')) || Instant::now() > deadline {
                break v;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        };
        assert!(
            v["host"].as_str().is_some_and(|h| h.starts_with('b')),
            "{c} is answered by b: {v}"
        );
        assert_eq!(v["value"], before[*c]["value"], "{c} as of {moment}: {v}");
        assert_eq!(
            v["as_of"]["checkpoint"], before[*c]["as_of"]["checkpoint"],
            "{c}: the same checkpoint"
        );
        assert_eq!(v["value"]["count"], count(c, 200));
    }
    drop((a, b));
}

/// Checkpoint ids grow from owner to owner when the leases bucket's revisions (the owners'
/// epochs) pass 2^32, as they do within a year of renewals at a few hundred partitions: the
/// third owner of every partition, its state directory wiped, restores the second owner's
/// committed checkpoint from the store and ends with the reference's outputs and state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_ids_keep_growing_when_lease_epochs_pass_32_bits() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (nats, conn) = start_cluster(dir.path()).await;
    let txs = produce::transactions(9_000, 100, 33, 0);
    let rounds: Vec<&[produce::Transaction]> = txs.chunks(3_000).collect();
    // One owner's round: its events processed and, after a few more checkpoints than the
    // store keeps (retention runs at each), every partition committed; then a hand-off stop.
    let round = async |n: usize| -> BTreeMap<u32, (u64, u64)> {
        publish_txs_by_customer(&conn.js, "txn.in.*", rounds[n]).await;
        let mut host = spawn(dir.path(), &nats.url(), "a");
        let want = 3_000 * (n as u64 + 1);
        wait_for_len(&conn.js, "FRAUD_OUT", want, Duration::from_secs(120)).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        eventually(
            "every partition committed",
            Duration::from_secs(30),
            async || pointers(&host.config).len() == PARTITIONS as usize,
        )
        .await;
        assert!(host.stop().success(), "{}", log_tails(dir.path(), &["a"]));
        pointers(&host.config)
    };
    let first = round(0).await;
    // The next revisions of the leases bucket straddle 2^32.
    let leases = conn
        .js
        .get_stream("KV_eddy-fraud-leases")
        .await
        .expect("the leases bucket's stream");
    leases
        .purge()
        .sequence((1 << 32) - 3)
        .await
        .expect("purge up to a revision near 2^32");
    let second = round(1).await;
    assert!(
        second.values().any(|(epoch, _)| *epoch > 1 << 32),
        "the epochs passed 2^32: {second:?}"
    );
    for (p, (_, id)) in &second {
        assert!(
            *id > first[p].1,
            "partition {p}: the second owner's checkpoint {id:#x} is not above the first's {:#x}",
            first[p].1
        );
    }
    // The third owner has only the store to restore from.
    std::fs::remove_dir_all(dir.path().join("a")).expect("wipe the state directory");
    let third = round(2).await;
    for (p, (_, id)) in &third {
        assert!(
            *id > second[p].1,
            "partition {p}: {id:#x} is not above {:#x}",
            second[p].1
        );
    }
    let outs = outputs(&conn.js).await;
    let mut host = spawn(dir.path(), &nats.url(), "a");
    assert_exact(&conn, &txs, &outs).await;
    host.stop();
}

/// Every host of a pipeline runs with the lease the cluster's buckets expire keys after: a
/// host started with another `cluster.lease_ms` while a host runs is refused with the fix;
/// once every host has stopped, the first to start with the new lease changes the buckets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_agree_on_the_lease_or_are_refused_with_the_fix() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (nats, conn) = start_cluster(dir.path()).await;
    let max_age = async |bucket: &str| -> Duration {
        let kv = conn.js.get_key_value(bucket).await.expect("bucket");
        kv.status().await.expect("status").max_age()
    };
    let mut a = spawn(dir.path(), &nats.url(), "a");
    owns_all(dir.path(), &a, "a").await;
    assert_eq!(max_age("eddy-fraud-leases").await, Duration::from_secs(3));

    // b, with a 5 s lease, while a runs with 3 s.
    let with_lease = |name: &str, ms: u64| -> HostProcess {
        let config = dir.path().join(format!("{name}.toml"));
        let mut spec = spec(&nats.url(), dir.path(), name);
        spec.extra = spec
            .extra
            .replace("lease_ms = 3000", &format!("lease_ms = {ms}"));
        spec.write(&config).expect("config");
        HostProcess::spawn(name, &config, &dir.path().join(format!("{name}.log")))
    };
    let mut b = with_lease("b", 5000);
    let status = b.wait_exit_within(Duration::from_secs(60));
    assert!(!status.success(), "b ran beside a with another lease");
    let log = std::fs::read_to_string(dir.path().join("b.log")).expect("b's log");
    assert!(
        log.contains("expires keys after 3000 ms, but this host's cluster.lease_ms is 5000 ms"),
        "{log}"
    );
    assert!(log.contains("Set cluster.lease_ms = 3000"), "{log}");
    assert_eq!(
        max_age("eddy-fraud-leases").await,
        Duration::from_secs(3),
        "a refused host changed the bucket"
    );
    assert!(
        owners(&a.config).values().all(|h| h == "a"),
        "{:?}",
        owners(&a.config)
    );

    // Every host stopped: b starts with the new lease, changes the buckets and runs.
    assert!(a.stop().success(), "{}", log_tails(dir.path(), &["a"]));
    let b = with_lease("b", 5000);
    owns_all(dir.path(), &b, "b").await;
    assert_eq!(max_age("eddy-fraud-leases").await, Duration::from_secs(5));
    assert_eq!(max_age("eddy-fraud-hosts").await, Duration::from_secs(5));
    drop(b);
}

/// A cluster seeded from a savepoint (`eddy state load`, then `eddy run --from-savepoint` on
/// its hosts) commits the savepoint's state for every partition before it reads any input: a
/// host started later without the option restores that state from the store, and a host
/// started with the option again goes on from what was committed since, not from the
/// savepoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_seeded_from_a_savepoint_keeps_that_state_and_never_returns_to_it() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (nats, conn) = start_cluster(dir.path()).await;
    // 100 customers seeded with five transactions of 100 cents each.
    let lines: String = (0..100)
        .map(|i| {
            format!(
                "{{\"key\": \"s-{i}\", \"value\": {{\"count\": 5, \"sum_cents\": 500, \"max_cents\": 100, \"last_ts\": 0}}}}\n"
            )
        })
        .collect();
    let file = dir.path().join("stats.jsonl");
    std::fs::write(&file, lines).expect("stats file");
    let load_config = dir.path().join("load.toml");
    spec(&nats.url(), dir.path(), "load")
        .write(&load_config)
        .expect("config");
    let sp = dir.path().join("sp");
    let loaded = Command::new(eddy_tests::eddy_bin())
        .args(["state", "load"])
        .arg(&load_config)
        .arg(&file)
        .args(["--state", "stats", "--to"])
        .arg(&sp)
        .output()
        .expect("eddy state load");
    assert!(
        loaded.status.success(),
        "{}",
        String::from_utf8_lossy(&loaded.stderr)
    );
    let count_of = async |customer: &str| -> Value {
        let q = Query {
            state: Some("stats".into()),
            key: Some(customer.to_string()),
            ..Query::default()
        };
        eventually_answer(&conn, &q).await["value"]["count"].clone()
    };
    let sp_arg = sp.to_str().expect("utf-8 path").to_string();
    let start = |name: &str, from_savepoint: bool| -> HostProcess {
        let config = dir.path().join(format!("{name}.toml"));
        spec(&nats.url(), dir.path(), name)
            .write(&config)
            .expect("config");
        let args: Vec<&str> = if from_savepoint {
            vec!["--from-savepoint", &sp_arg]
        } else {
            vec![]
        };
        let log = dir.path().join(format!("{name}.log"));
        HostProcess::spawn_with(name, &config, &log, &args)
    };

    // a seeds every partition from the savepoint, reads no event, and hands them all off.
    let mut a = start("a", true);
    owns_all(dir.path(), &a, "a").await;
    assert_eq!(count_of("s-7").await, 5);
    eventually(
        "every partition committed the savepoint's state",
        Duration::from_secs(30),
        async || pointers(&a.config).len() == PARTITIONS as usize,
    )
    .await;
    assert!(a.stop().success(), "{}", log_tails(dir.path(), &["a"]));

    // b, without the option and with a state directory of its own, restores it from the
    // store; events then add to it.
    let mut b = start("b", false);
    owns_all(dir.path(), &b, "b").await;
    for i in [7, 42, 99] {
        assert_eq!(count_of(&format!("s-{i}")).await, 5, "s-{i} on b");
    }
    let mut txs = produce::transactions(20, 1, 5, 0);
    for t in &mut txs {
        t.customer = "s-7".into();
    }
    publish_txs_by_customer(&conn.js, "txn.in.*", &txs).await;
    wait_for_len(&conn.js, "FRAUD_OUT", 20, Duration::from_secs(60)).await;
    assert_eq!(count_of("s-7").await, 25);
    let p = hosts::partition_of("s-7", PARTITIONS);
    let seeded = pointers(&b.config)[&p].1;
    eventually(
        "s-7's partition committed the events",
        Duration::from_secs(30),
        async || pointers(&b.config)[&p].1 > seeded,
    )
    .await;
    assert!(b.stop().success(), "{}", log_tails(dir.path(), &["b"]));
    // The stream no longer holds those events (its retention, say): only the committed state
    // has them.
    let input = spec(&nats.url(), dir.path(), "b").config().input.stream;
    conn.js
        .get_stream(&input)
        .await
        .expect("input stream")
        .purge()
        .await
        .expect("purge the input");

    // a again, with the option: every partition has committed state, which wins.
    let a = start("a", true);
    owns_all(dir.path(), &a, "a").await;
    assert_eq!(count_of("s-7").await, 25, "a went back to the savepoint");
    assert_eq!(count_of("s-42").await, 5);
    let log = std::fs::read_to_string(dir.path().join("a.log")).expect("a's log");
    assert!(log.contains("not from the savepoint"), "{log}");
    drop(a);
}
