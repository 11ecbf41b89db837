//! Eddy hosts in a cluster on a 3-node NATS cluster (R3 streams, KV and object store), each
//! an `eddy run` process with its own state directory, compared with the reference computed
//! from the input: a host killed mid-run, a host paused past its lease, a host joining.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use eddy_host::cli::{produce, streams, tail};
use eddy_host::query::{self, Op, Query};
use eddy_tests::{
    NatsCluster, PipelineSpec, eddy_bin, eventually, plugin, stream_len, wait_for_len,
};
use serde_json::Value;

const PARTITIONS: u32 = 8;

/// One cluster test at a time: each runs three nats-servers and three or four hosts, and two
/// of them side by side on two cores starve each other's leases.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The pipeline file of host `host`: its own state directory, the cluster section.
fn spec(url: &str, dir: &Path, host: &str) -> PipelineSpec {
    let mut spec = PipelineSpec::new("fraud", url, &dir.join(host), plugin("fraud-enrich"));
    spec.input_subject = "txn.in.*".into();
    spec.extra = format!(
        "[checkpoint]\ninterval_ms = 500\n\n[partitions]\ncount = {PARTITIONS}\nhost = \"{host}\"\n\n[cluster]\npartition_subject = \"txn.p.{{partition}}.>\"\nlease_ms = 3000\n"
    );
    spec
}

struct Host {
    name: String,
    config: PathBuf,
    child: Child,
}

fn spawn(dir: &Path, url: &str, name: &str) -> Host {
    let config = dir.join(format!("{name}.toml"));
    spec(url, dir, name).write(&config).expect("config");
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("log");
    let child = Command::new(eddy_bin())
        .arg("run")
        .arg(&config)
        .env("RUST_LOG", "info,async_nats=warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("eddy binary");
    Host {
        name: name.into(),
        config,
        child,
    }
}

fn signal(h: &Host, sig: &str) {
    let _ = Command::new("kill")
        .args([sig, &h.child.id().to_string()])
        .status();
}

fn wait_exit(h: &mut Host) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while h.child.try_wait().ok().flatten().is_none() {
        assert!(Instant::now() < deadline, "{} did not exit", h.name);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `eddy cluster status --json`: each partition's owner (the host name prefix of its id).
fn owners(config: &Path) -> BTreeMap<u32, String> {
    // A busy cluster (an election, a server catching up) may fail one read: try a few times.
    let mut out = status_json(config);
    for _ in 0..10 {
        if out.status.success() {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
        out = status_json(config);
    }
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    let mut m = BTreeMap::new();
    for p in v["partitions"].as_array().expect("partitions") {
        if let Some(o) = p["owner"].as_str() {
            let host = o.split('-').next().unwrap_or(o).to_string();
            m.insert(p["partition"].as_u64().expect("n") as u32, host);
        }
    }
    m
}

fn status_json(config: &Path) -> std::process::Output {
    Command::new(eddy_bin())
        .args(["cluster", "status", "--json"])
        .arg(config)
        .output()
        .expect("eddy binary")
}

/// Every partition's committed (epoch, checkpoint), from `eddy cluster status --json`.
fn pointers(config: &Path) -> BTreeMap<u32, (u64, u64)> {
    let out = Command::new(eddy_bin())
        .args(["cluster", "status", "--json"])
        .arg(config)
        .output()
        .expect("eddy binary");
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    let mut m = BTreeMap::new();
    for p in v["partitions"].as_array().expect("partitions") {
        if let (Some(e), Some(c)) = (p["epoch"].as_u64(), p["checkpoint"].as_u64()) {
            m.insert(p["partition"].as_u64().expect("n") as u32, (e, c));
        }
    }
    m
}

fn partition_of(customer: &str) -> u32 {
    u32::from(eddy_host::state::keygroup::key_group(
        customer.as_bytes(),
        128,
    )) % PARTITIONS
}

async fn publish(js: &async_nats::jetstream::Context, txs: &[produce::Transaction]) {
    produce::publish_each(
        js,
        txs.iter().map(|t| {
            (
                produce::subject_for("txn.in.*", t),
                Bytes::from(serde_json::to_vec(t).expect("json")),
            )
        }),
    )
    .await
    .expect("publish");
}

/// Every output and when it was stored: id → (payload, stored µs).
async fn outputs(
    js: &async_nats::jetstream::Context,
    max: usize,
) -> BTreeMap<String, (Value, u64)> {
    let msgs = tail::read(js, "txn.out", max, Duration::from_secs(3))
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
        let v = query::nats::ask(conn, "fraud", Op::Get, &q)
            .await
            .expect("query answered by the partition's owner");
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
    publish(&conn.js, &txs).await;
    let mut hosts: Vec<Host> = ["a", "b", "c"]
        .iter()
        .map(|n| spawn(dir.path(), &nats.url(), n))
        .collect();
    // Mid-run, once the three hosts share the partitions evenly (3, 3, 2).
    eventually(
        "a, b and c share the partitions",
        Duration::from_secs(90),
        async || {
            let o = owners(&hosts[0].config);
            o.len() == PARTITIONS as usize
                && ["a", "b", "c"]
                    .iter()
                    .all(|h| (2..=3).contains(&o.values().filter(|v| v == h).count()))
        },
    )
    .await;
    wait_for_len(&conn.js, "FRAUD_OUT", 90_000, Duration::from_secs(180)).await;
    let before = owners(&hosts[0].config);
    let moved: BTreeSet<u32> = before
        .iter()
        .filter(|(_, o)| *o == "b")
        .map(|(p, _)| *p)
        .collect();
    assert!(!moved.is_empty(), "b owned partitions: {before:?}");
    let killed_at_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_micros() as u64;
    signal(&hosts[1], "-KILL");
    wait_exit(&mut hosts[1]);
    let got = wait_for_len(&conn.js, "FRAUD_OUT", 300_000, Duration::from_secs(240)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = owners(&hosts[0].config);
    for p in &moved {
        assert!(
            matches!(after.get(p).map(String::as_str), Some("a" | "c")),
            "{after:?}"
        );
    }
    let outs = outputs(&conn.js, 310_000).await;
    // The gap of the moved partitions: the longest silence among their outputs from the
    // kill on (what the dead host had in flight may still land just after the kill).
    let mut times: Vec<u64> = outs
        .values()
        .filter(|(v, _)| moved.contains(&partition_of(v["customer"].as_str().unwrap_or(""))))
        .map(|(_, at)| *at)
        .collect();
    times.sort_unstable();
    let gap = times
        .windows(2)
        .filter(|w| w[1] > killed_at_us)
        .map(|w| w[1] - w[0].max(killed_at_us))
        .max()
        .expect("the moved partitions produced output after the kill");
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
    for h in hosts.iter_mut().filter(|h| h.name != "b") {
        signal(h, "-TERM");
        wait_exit(h);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_paused_past_its_lease_is_fenced() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (nats, conn) = start_cluster(dir.path()).await;
    let txs = produce::transactions(40_000, 200, 23, 0);
    publish(&conn.js, &txs[..20_000]).await;
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
    signal(&a, "-STOP");
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
    publish(&conn.js, &txs[20_000..]).await;
    wait_for_len(&conn.js, "FRAUD_OUT", 40_000, Duration::from_secs(120)).await;
    signal(&a, "-CONT");
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
    assert_eq!(
        stream_len(&conn.js, "FRAUD_OUT").await.expect("len"),
        40_000
    );
    let outs = outputs(&conn.js, 41_000).await;
    assert_exact(&conn, &txs, &outs).await;
    for h in [&mut a, &mut b] {
        signal(h, "-TERM");
        wait_exit(h);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_host_takes_its_share_and_only_moved_partitions_pause() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (nats, conn) = start_cluster(dir.path()).await;
    let txs = produce::transactions(120_000, 300, 29, 0);
    publish(&conn.js, &txs[..60_000]).await;
    let mut hosts: Vec<Host> = ["a", "b", "c"]
        .iter()
        .map(|n| spawn(dir.path(), &nats.url(), n))
        .collect();
    wait_for_len(&conn.js, "FRAUD_OUT", 60_000, Duration::from_secs(180)).await;
    // The three hosts share the partitions evenly (3, 3, 2) before the fourth joins.
    eventually(
        "a, b and c share the partitions",
        Duration::from_secs(60),
        async || {
            let o = owners(&hosts[0].config);
            o.len() == PARTITIONS as usize
                && ["a", "b", "c"]
                    .iter()
                    .all(|h| (2..=3).contains(&o.values().filter(|v| v == h).count()))
        },
    )
    .await;
    let before = owners(&hosts[0].config);
    hosts.push(spawn(dir.path(), &nats.url(), "d"));
    eventually("d owns its share", Duration::from_secs(60), async || {
        let o = owners(&hosts[0].config);
        o.len() == PARTITIONS as usize
            && ["a", "b", "c", "d"]
                .iter()
                .all(|h| o.values().filter(|v| v == h).count() == 2)
    })
    .await;
    let after = owners(&hosts[0].config);
    let moved: HashSet<u32> = (0..PARTITIONS).filter(|p| before[p] != after[p]).collect();
    assert_eq!(
        moved.len(),
        2,
        "only d's share moved: {before:?} -> {after:?}"
    );
    publish(&conn.js, &txs[60_000..]).await;
    wait_for_len(&conn.js, "FRAUD_OUT", 120_000, Duration::from_secs(180)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        stream_len(&conn.js, "FRAUD_OUT").await.expect("len"),
        120_000
    );
    let outs = outputs(&conn.js, 121_000).await;
    assert_exact(&conn, &txs, &outs).await;
    let log = std::fs::read_to_string(dir.path().join("d.log")).expect("log");
    assert!(log.contains("took the partition"), "{log}");
    for h in &mut hosts {
        signal(h, "-TERM");
    }
    for h in &mut hosts {
        wait_exit(h);
    }
}
