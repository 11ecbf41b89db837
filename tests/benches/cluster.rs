//! Cluster benchmark over real servers, every figure from this one run:
//! (a) checkpoint upload throughput through the host's own storage backends: the NATS object
//!     store on a 3-node cluster (R3) and S3 (moto), 64 MB in 16 files of 4 MB;
//! (b) pipeline throughput (fraud-enrich, in process, a checkpoint every 500 ms) with
//!     checkpoints in the NATS object store and in S3, as ratios to local checkpoints;
//! (c) one host in cluster mode (16 partitions, leases) against one host as today (`eddy run`
//!     processes, the same input), with one input subject per partition and with the key
//!     token kept after it (the median of four rounds' ratios); then the host's CPU at a
//!     steady load with every partition checkpointing every second, at the default interval,
//!     and with no load;
//! (d) failover: a 3-node NATS cluster, 3 hosts, 16 partitions, 1M keys in state, steady
//!     load; kill -9 one host: time from the kill to the first output of each moved partition;
//! (e) rebalance: the killed host starts again and takes its share back by hand-off: the
//!     longest output gap of the moved partitions, against that of the partitions that stayed.
//!
//! Run: `cargo build --bin eddy && cargo bench --profile dev -p eddy-tests --bench cluster`
//! (`-- --quick` for smaller volumes; `-- --only upload|remote|mode|failover`).

eddy_tests::host_allocator!();

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use eddy_host::cli::produce::{self, Transaction};
use eddy_host::cli::streams;
use eddy_host::config::CheckpointConfig;
use eddy_tests::bench::{median, only_arg, process_cpu_time, spread};
use eddy_tests::hosts::{self, HostProcess};
use eddy_tests::{
    NatsCluster, NatsServer, PipelineSpec, Running, S3Server, create_streams, plugin,
    publish_txs_by_customer, stream_len,
};
use futures::StreamExt;

const PARTITIONS: u32 = 16;

/// Outputs arriving this soon after the kill were sent by the killed host before it died.
const IN_FLIGHT: Duration = Duration::from_millis(250);

fn quick() -> bool {
    std::env::args().any(|a| a == "--quick")
}

fn wanted(case: &str) -> bool {
    only_arg().is_none_or(|o| o == case)
}

#[tokio::main]
async fn main() {
    // As the `eddy` binary runs: no transparent huge pages.
    eddy_host::no_huge_page_churn();
    if wanted("upload") {
        upload().await;
    }
    if wanted("remote") {
        remote().await;
    }
    if wanted("mode") {
        mode().await;
    }
    if wanted("failover") {
        failover().await;
    }
}

/// (a) MB/s of `put_file` for 16 files of 4 MB, through the configured store of `spec`.
async fn upload_rate(spec: &PipelineSpec, nats: &eddy_host::transport::Nats) -> f64 {
    let storage = eddy_host::storage::open(&spec.config(), nats)
        .await
        .expect("store")
        .expect("a remote store");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let files: Vec<_> = (0..16)
        .map(|i| {
            // Incompressible bytes, as compressed SST files are.
            let bytes: Vec<u8> = (0..4 << 20)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let path = dir.path().join(format!("f{i}.sst"));
            std::fs::write(&path, bytes).expect("write");
            (format!("bench/f{i}.sst"), path)
        })
        .collect();
    let started = Instant::now();
    tokio::task::spawn_blocking(move || {
        for (name, path) in files {
            storage.put_file(&name, &path).expect("upload");
        }
    })
    .await
    .expect("uploads");
    64.0 / started.elapsed().as_secs_f64()
}

async fn upload() {
    let nats = NatsCluster::start(3).await.expect("3 nats-servers");
    let conn = nats.connect().await.expect("connect");
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = PipelineSpec::new("fraud", &nats.url(), dir.path(), plugin("fraud-enrich"));
    let to_nats = upload_rate(&spec, &conn).await;
    let s3 = S3Server::start().expect("moto_server");
    let to_s3 = upload_rate(&spec.clone().s3_checkpoints(&s3), &conn).await;
    println!("\n(a) checkpoint upload, 64 MB in 16 files of 4 MB");
    println!("{:<44} {:>10}", "store", "MB/s");
    println!(
        "{:<44} {:>10.1}",
        "NATS object store, 3-node cluster, R3", to_nats
    );
    println!("{:<44} {:>10.1}", "S3 (moto on loopback)", to_s3);
}

/// Events/s of the fraud pipeline over `n` events published first, timed from the first
/// output to the last.
async fn pipeline_rate(spec: PipelineSpec, nats: &NatsServer, txs: &[Transaction]) -> f64 {
    let conn = nats.connect().await.expect("connect");
    create_streams(&conn.js, &spec).await.expect("streams");
    eddy_tests::publish_txs(&conn.js, "txn.in", txs).await;
    let run = Running::start(&spec);
    let (first, last) = time_outputs(&conn.js, "OUT", txs.len() as u64).await;
    let checkpoints = run
        .metrics
        .checkpoints
        .load(std::sync::atomic::Ordering::Relaxed);
    run.stop().await;
    eprintln!("  {} checkpoints", checkpoints);
    txs.len() as f64 / (last - first).as_secs_f64()
}

/// When stream `name` got its first message and when it reached `n`.
async fn time_outputs(
    js: &async_nats::jetstream::Context,
    name: &str,
    n: u64,
) -> (Instant, Instant) {
    let mut first = None;
    loop {
        let len = stream_len(js, name).await.unwrap_or(0);
        let now = Instant::now();
        if len > 0 && first.is_none() {
            first = Some(now);
        }
        if len >= n {
            return (first.unwrap_or(now), now);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn remote() {
    let n = if quick() { 40_000 } else { 200_000 };
    let txs = produce::transactions(n, 5_000, 41, 0);
    let mut rows = Vec::new();
    // Twice each, interleaved, so a slow moment of the machine does not favour one store.
    for round in 0..2 {
        for store in ["local", "nats", "s3"] {
            // Fresh servers each run: a store holding another run's checkpoints would be
            // restored from.
            let nats = NatsServer::start().expect("nats-server");
            let s3 = S3Server::start().expect("moto_server");
            let dir = tempfile::tempdir().expect("tempdir");
            let mut spec =
                PipelineSpec::new("fraud", &nats.url(), dir.path(), plugin("fraud-enrich"));
            spec.checkpoint = "interval_ms = 500\n".into();
            spec = match store {
                "local" => spec.local_checkpoints(),
                "s3" => spec.s3_checkpoints(&s3),
                _ => spec,
            };
            eprintln!("round {round}: checkpoints in {store}");
            rows.push((store, pipeline_rate(spec, &nats, &txs).await));
        }
    }
    let mean = |s: &str| {
        let r: Vec<f64> = rows.iter().filter(|r| r.0 == s).map(|r| r.1).collect();
        r.iter().sum::<f64>() / r.len() as f64
    };
    let local = mean("local");
    println!("\n(b) fraud-enrich pipeline, {n} events, checkpoint every 500 ms (mean of 2)");
    println!("{:<44} {:>12} {:>8}", "checkpoints in", "events/s", "ratio");
    for (store, label) in [
        ("local", "local directory (baseline)"),
        ("nats", "NATS object store"),
        ("s3", "S3 (moto)"),
    ] {
        println!(
            "{:<44} {:>12.0} {:>8.2}",
            label,
            mean(store),
            mean(store) / local
        );
    }
}

/// Where the input stream keeps partition N's events: one subject per partition.
const PARTITION_SUBJECT: &str = "txn.p.{partition}";

/// The pipeline file of cluster host `name`, checkpointing every `interval_ms` (`None`: the
/// default, 5 s), at the default lease.
fn cluster_spec(url: &str, dir: &Path, name: &str, interval_ms: Option<u64>) -> PipelineSpec {
    let mut spec = PipelineSpec::new("fraud", url, &dir.join(name), plugin("fraud-enrich"));
    spec.input_subject = "txn.in.*".into();
    let interval = interval_ms
        .map(|i| format!("[checkpoint]\ninterval_ms = {i}\n\n"))
        .unwrap_or_default();
    spec.extra = format!(
        "{interval}[partitions]\ncount = {PARTITIONS}\nhost = \"{name}\"\n\n[cluster]\npartition_subject = \"{PARTITION_SUBJECT}\"\n"
    );
    spec
}

/// A nats-server and the spec of one host, `a`: a single host (`layout` `None`) or in cluster
/// mode with `layout` as its partition subject; a checkpoint every `interval_ms` either way.
/// Its metrics are served on the port returned.
async fn one_host(
    layout: Option<&str>,
    interval_ms: u64,
) -> (
    NatsServer,
    eddy_host::transport::Nats,
    tempfile::TempDir,
    PipelineSpec,
    u16,
) {
    let nats = NatsServer::start().expect("nats-server");
    let conn = nats.connect().await.expect("connect");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = cluster_spec(&nats.url(), dir.path(), "a", Some(interval_ms));
    match layout {
        None => spec.extra = format!("[checkpoint]\ninterval_ms = {interval_ms}\n"),
        Some(subject) => spec.extra = spec.extra.replace(PARTITION_SUBJECT, subject),
    }
    let metrics_port = eddy_tests::free_port();
    spec.extra = format!(
        "[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n\n{}",
        spec.extra
    );
    (nats, conn, dir, spec, metrics_port)
}

/// The sum of metric `name` over its labels, as the host on `port` serves it now.
async fn metric(port: u16, name: &str) -> f64 {
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// One `eddy run` process over `txs`, published first: events/s, and from its metrics the mean
/// events per plugin call and the checkpoints taken. `layout`: the cluster's
/// `partition_subject`, or `None` for a single host without `[cluster]`.
async fn process_rate(layout: Option<&str>, txs: &[Transaction]) -> (f64, f64, f64) {
    let (_nats, conn, dir, spec, metrics_port) = one_host(layout, 1_000).await;
    let cfg = spec.config();
    streams::ensure(&conn, &cfg, &cfg.input.subjects)
        .await
        .expect("streams");
    publish_txs_by_customer(&conn.js, "txn.in.*", txs).await;
    let config = dir.path().join("a.toml");
    spec.write(&config).expect("config");
    let mut host = HostProcess::spawn("a", &config, &dir.path().join("a.log"));
    let (first, last) = time_outputs(&conn.js, "FRAUD_OUT", txs.len() as u64).await;
    let per_call = metric(metrics_port, "eddy_batch_size_sum").await
        / metric(metrics_port, "eddy_batch_size_count").await.max(1.0);
    let checkpoints = metric(metrics_port, "eddy_checkpoints_total").await;
    host.stop();
    (
        txs.len() as f64 / (last - first).as_secs_f64(),
        per_call,
        checkpoints,
    )
}

async fn mode() {
    let n = if quick() { 40_000 } else { 200_000 };
    let rounds = if quick() { 2 } else { 4 };
    let txs = produce::transactions(n, 5_000, 43, 0);
    let mut single = Vec::new();
    let mut clustered = Vec::new();
    let mut keyed_subjects = Vec::new();
    // Every other round runs the cases in the reverse order: a run pays for the files the runs
    // before it deleted in the last minutes (ext4 without a journal scans past recently
    // deleted inodes for every new one), which would otherwise always weigh on the same case.
    // A ratio is taken within a round (this machine's speed moves by tens of percent between
    // minutes), and the median of the rounds' ratios is the figure.
    for round in 0..rounds {
        let mut cases = [None, Some(PARTITION_SUBJECT), Some("txn.p.{partition}.>")];
        if round % 2 == 1 {
            cases.reverse();
        }
        for layout in cases {
            let rate = process_rate(layout, &txs).await;
            match layout {
                None => single.push(rate),
                Some(PARTITION_SUBJECT) => clustered.push(rate),
                Some(_) => keyed_subjects.push(rate),
            }
        }
    }
    let mean = |v: &[(f64, f64, f64)], f: fn(&(f64, f64, f64)) -> f64| {
        v.iter().map(f).sum::<f64>() / v.len() as f64
    };
    println!("\n(c) one `eddy run` host, fraud-enrich, {n} events ({rounds} rounds)");
    println!(
        "{:<44} {:>12} {:>14} {:>13} {:>14} {:>12}",
        "mode", "events/s", "median ratio", "lowest..highest", "events/call", "checkpoints"
    );
    for (label, runs) in [
        ("single host, no [cluster] (baseline)".to_string(), &single),
        (
            format!("[cluster], {PARTITIONS} partitions, leases"),
            &clustered,
        ),
        (
            "  the same, key token kept: txn.p.N.<key>".to_string(),
            &keyed_subjects,
        ),
    ] {
        let ratios: Vec<f64> = runs.iter().zip(&single).map(|(r, s)| r.0 / s.0).collect();
        let (lo, hi) = spread(&ratios);
        println!(
            "{:<44} {:>12.0} {:>14.2} {:>15} {:>14.1} {:>12.0}",
            label,
            mean(runs, |r| r.0),
            median(ratios),
            format!("{lo:.2}..{hi:.2}"),
            mean(runs, |r| r.1),
            mean(runs, |r| r.2)
        );
    }
    let (rate, secs) = if quick() { (1_000, 8) } else { (2_000, 20) };
    println!(
        "\n(c) the same host's CPU at a steady {rate} events/s over 5,000 customers, and idle ({secs} s, after 8 s; mean of 2)"
    );
    println!(
        "{:<44} {:>10} {:>14} {:>8} {:>15} {:>12}",
        "mode", "checkpoint", "% of a core", "ratio", "checkpoints/s", "events/call"
    );
    // At a checkpoint every second (every partition of the cluster host cuts one a second), at
    // the default interval, and with no load (what the partitions' readers, leases and timers
    // cost by themselves). Each case runs single, cluster, cluster, single (see the rounds
    // above), each figure the mean of its two.
    for (rate, interval_ms) in [
        (rate, 1_000),
        (rate, CheckpointConfig::default().interval_ms),
        (0, 1_000),
    ] {
        let mut steady = [(0.0, 0.0, 0.0); 2];
        for cluster in [false, true, true, false] {
            let r = steady_cpu(
                cluster.then_some(PARTITION_SUBJECT),
                interval_ms,
                rate,
                secs,
            )
            .await;
            let slot = &mut steady[usize::from(cluster)];
            slot.0 += r.0 / 2.0;
            slot.1 += r.1 / 2.0;
            slot.2 += r.2 / 2.0;
        }
        let [single, clustered] = steady;
        let load = if rate == 0 { " (idle)" } else { "" };
        for (label, (cpu, checkpoints, per_call)) in [
            (format!("single host, no [cluster]{load}"), single),
            (
                format!("[cluster], {PARTITIONS} partitions, leases{load}"),
                clustered,
            ),
        ] {
            println!(
                "{label:<44} {:>10} {cpu:>14.1} {:>8.2} {checkpoints:>15.1} {per_call:>12.1}",
                format!("{:.0} s", interval_ms as f64 / 1e3),
                cpu / single.0
            );
        }
    }
}

/// The `eddy run` host's CPU, in % of a core, the checkpoints it completed a second and the
/// events per plugin call, while `rate` events a second (none if 0) arrive for `secs` seconds
/// (after 8 s of the same load), a checkpoint due every `interval_ms`.
async fn steady_cpu(
    layout: Option<&str>,
    interval_ms: u64,
    rate: usize,
    secs: u64,
) -> (f64, f64, f64) {
    let (_nats, conn, dir, spec, metrics_port) = one_host(layout, interval_ms).await;
    let cfg = spec.config();
    streams::ensure(&conn, &cfg, &cfg.input.subjects)
        .await
        .expect("streams");
    let config = dir.path().join("a.toml");
    spec.write(&config).expect("config");
    let mut host = HostProcess::spawn("a", &config, &dir.path().join("a.log"));
    let load = (rate > 0).then(|| steady_load(conn.js.clone(), 5_000, rate));
    tokio::time::sleep(Duration::from_secs(8)).await;
    let before = process_cpu_time(host.pid());
    let started = window_counts(metrics_port).await;
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let used = process_cpu_time(host.pid()) - before;
    let ended = window_counts(metrics_port).await;
    let [checkpoints, events, calls]: [f64; 3] = std::array::from_fn(|i| ended[i] - started[i]);
    if let Some(load) = load {
        load.abort();
    }
    host.stop();
    (
        used.as_secs_f64() / secs as f64 * 100.0,
        checkpoints / secs as f64,
        events / calls.max(1.0),
    )
}

/// What [`steady_cpu`] counts over its window, from the host's metrics on `port`: checkpoints,
/// events handed to the plugin, plugin calls.
async fn window_counts(port: u16) -> [f64; 3] {
    [
        metric(port, "eddy_checkpoints_total").await,
        metric(port, "eddy_batch_size_sum").await,
        metric(port, "eddy_batch_size_count").await,
    ]
}

/// Arrival times of outputs per partition, recorded from a core subscription to the output
/// subject.
type Arrivals = Arc<std::sync::Mutex<BTreeMap<u32, Vec<Instant>>>>;

async fn record_arrivals(conn: &eddy_host::transport::Nats) -> Arrivals {
    let mut sub = conn.client.subscribe("txn.out").await.expect("subscribe");
    let arrivals: Arrivals = Arc::default();
    let a = arrivals.clone();
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            let now = Instant::now();
            let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap_or_default();
            if let Some(c) = v["customer"].as_str() {
                a.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(hosts::partition_of(c, PARTITIONS))
                    .or_default()
                    .push(now);
            }
        }
    });
    arrivals
}

/// Publishes `per_second` events spread over `keys` customers until dropped.
fn steady_load(
    js: async_nats::jetstream::Context,
    keys: usize,
    per_second: usize,
) -> tokio::task::AbortHandle {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        let mut n = 0usize;
        loop {
            tick.tick().await;
            let batch: Vec<Transaction> = produce::transactions(per_second / 20, keys, n as u64, 0)
                .into_iter()
                .enumerate()
                .map(|(i, mut t)| {
                    t.id = format!("load-{}", n + i);
                    t
                })
                .collect();
            n += batch.len();
            publish_txs_by_customer(&js, "txn.in.*", &batch).await;
        }
    })
    .abort_handle()
}

/// The longest gap between consecutive arrivals of partition `p` within `[from, to]`.
fn longest_gap(arrivals: &Arrivals, p: u32, from: Instant, to: Instant) -> Duration {
    let a = arrivals.lock().unwrap_or_else(|p| p.into_inner());
    let mut last = from;
    let mut gap = Duration::ZERO;
    for &t in a.get(&p).into_iter().flatten() {
        if t <= from || t > to {
            continue;
        }
        gap = gap.max(t - last);
        last = t;
    }
    gap.max(to.saturating_duration_since(last))
}

async fn failover() {
    let keys = if quick() { 100_000 } else { 1_000_000 };
    let nats = NatsCluster::start(3).await.expect("3 nats-servers");
    let conn = nats.connect().await.expect("connect");
    let tmp = tempfile::tempdir().expect("tempdir");
    // EDDY_BENCH_KEEP=1 keeps the hosts' logs and state for a look afterwards.
    let (_removed_at_end, root) = if std::env::var_os("EDDY_BENCH_KEEP").is_some() {
        let kept = tmp.keep();
        eprintln!("hosts' logs and state kept in {}", kept.display());
        (None, kept)
    } else {
        let path = tmp.path().to_path_buf();
        (Some(tmp), path)
    };
    let dir = root.as_path();
    // EDDY_BENCH_INTERVAL_MS: the hosts' checkpoint interval (default: the pipeline default).
    let interval = std::env::var("EDDY_BENCH_INTERVAL_MS")
        .ok()
        .and_then(|v| v.parse().ok());
    let cfg = cluster_spec(&nats.url(), dir, "a", interval).config();
    streams::ensure(&conn, &cfg, &cfg.input.subjects)
        .await
        .expect("streams");
    // One event per key: `keys` customers in state.
    let txs: Vec<Transaction> = produce::transactions(keys, 1, 47, 0)
        .into_iter()
        .enumerate()
        .map(|(i, mut t)| {
            t.customer = format!("c-{i}");
            t
        })
        .collect();
    let started = Instant::now();
    publish_txs_by_customer(&conn.js, "txn.in.*", &txs).await;
    eprintln!(
        "published {keys} events in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let spawn = |name: &str| {
        let config = dir.join(format!("{name}.toml"));
        cluster_spec(&nats.url(), dir, name, interval)
            .write(&config)
            .expect("config");
        HostProcess::spawn(name, &config, &dir.join(format!("{name}.log")))
    };
    let mut hosts: Vec<HostProcess> = ["a", "b", "c"].iter().map(|n| spawn(n)).collect();
    let started = Instant::now();
    let (_, done) = time_outputs(&conn.js, "FRAUD_OUT", keys as u64).await;
    eprintln!(
        "3 hosts processed {keys} events in {:.1} s",
        (done - started).as_secs_f64()
    );
    let config = hosts[0].config.clone();
    while !hosts::shared(&config, PARTITIONS, &["a", "b", "c"], 5, 6) {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Checkpoints of the full state, then steady load.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let arrivals = record_arrivals(&conn).await;
    let load = steady_load(conn.js.clone(), keys, 2_000);
    tokio::time::sleep(Duration::from_secs(5)).await;

    let before = hosts::owners(&config);
    let moved: BTreeSet<u32> = before
        .iter()
        .filter(|(_, o)| *o == "b")
        .map(|(p, _)| *p)
        .collect();
    let status = hosts::cluster_status(&config);
    let bytes: u64 = status["partitions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| moved.contains(&(p["partition"].as_u64().unwrap_or(0) as u32)))
        .filter_map(|p| p["checkpoint_bytes"].as_u64())
        .sum();
    hosts[1].signal("-KILL");
    hosts[1].wait_exit();
    // From the moment it is gone; what it had already sent may still arrive for a few ms.
    let killed = Instant::now() + IN_FLIGHT;
    tokio::time::sleep(Duration::from_secs(25)).await;
    let firsts: Vec<(u32, Option<Duration>)> = {
        let a = arrivals.lock().unwrap_or_else(|p| p.into_inner());
        moved
            .iter()
            .map(|p| {
                let first = a
                    .get(p)
                    .and_then(|v| v.iter().find(|t| **t > killed))
                    .map(|t| *t - killed + IN_FLIGHT);
                (*p, first)
            })
            .collect()
    };

    // (e) b comes back: it takes its share over by hand-off while the load goes on.
    let joined = Instant::now();
    hosts[1] = spawn("b");
    while !hosts::shared(&config, PARTITIONS, &["a", "b", "c"], 5, 6) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let settled = Instant::now();
    let after = hosts::owners(&config);
    let rebalanced: Vec<u32> = (0..PARTITIONS)
        .filter(|p| after.get(p).map(String::as_str) == Some("b"))
        .collect();
    let stayed: Vec<u32> = (0..PARTITIONS)
        .filter(|p| !rebalanced.contains(p))
        .collect();
    load.abort();
    let gaps = |ps: &[u32]| {
        ps.iter()
            .map(|p| longest_gap(&arrivals, *p, joined, settled))
            .max()
            .unwrap_or_default()
    };
    let pause_moved = gaps(&rebalanced);
    let pause_stayed = gaps(&stayed);
    for h in &mut hosts {
        h.signal("-TERM");
    }
    for h in &mut hosts {
        h.wait_exit();
    }

    println!(
        "\n(d) failover: 3-node NATS, 3 hosts, {PARTITIONS} partitions, {keys} keys, 2,000 events/s, default lease (6 s), checkpoint every {} ms",
        interval.unwrap_or(5_000)
    );
    println!(
        "checkpoints of the killed host's partitions: {:.1} MB",
        bytes as f64 / 1e6
    );
    println!("{:<12} {:>28}", "partition", "kill -9 to first output, s");
    for (p, first) in &firsts {
        match first {
            Some(d) => println!("{p:<12} {:>28.2}", d.as_secs_f64()),
            None => println!("{p:<12} {:>28}", "none within 25 s"),
        }
    }
    println!(
        "\n(e) rebalance: b rejoins and takes {} partitions back by hand-off",
        rebalanced.len()
    );
    println!("{:<44} {:>14}", "partitions", "longest gap, s");
    println!(
        "{:<44} {:>14.2}",
        "moved to the joining host",
        pause_moved.as_secs_f64()
    );
    println!(
        "{:<44} {:>14.2}",
        "stayed (baseline: the load's own gaps)",
        pause_stayed.as_secs_f64()
    );
}
