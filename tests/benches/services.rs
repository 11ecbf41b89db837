//! Queryable state and lookups over a real nats-server, each against a baseline in the same
//! run:
//! - queries: p50/p99 latency and queries/s over NATS and HTTP on a running fraud pipeline;
//!   pipeline throughput with 1,000 queries/s running vs none;
//! - lookups: a 1 ms HTTP store with capacity 100 (limit: 100 / 1 ms = 100k events/s); the
//!   cache-hit path; Redis with every profile cached; a 1 ms Redis and a 1 ms PostgreSQL
//!   (behind a relay), one key per request and batched, planned by the plugin's `prepare` or
//!   by the pipeline file; each vs the same pipeline reading only keyed state, on the same
//!   events;
//! - checkpoints: throughput with a checkpoint every 10 s vs none during the run;
//! - console: throughput with `eddy console` running and its overview open in headless
//!   Chromium (a status request a second, the page polling the console) vs neither, two rounds
//!   each, alternated; and the overview's time to first paint on loopback;
//! - bulk load: entries/s of `eddy state load` plus the restore that starts a pipeline from
//!   it, against the same entries written by the pipeline from events (one new customer per
//!   event, two entries each), same run;
//! - quotas: throughput with a per-key quota on the `recent` list (evicting at 3, so every
//!   write past the third of a customer evicts) against none, same events, alternated;
//! - shadow: live throughput with a shadow version (fraud-enrich's `strict` build) running
//!   beside it on every event, against none, same events, alternated;
//! - memory: the resident memory of an `eddy run` process holding 10M customers' fraud state
//!   (1M with `--quick`), loaded with `eddy state load`, at start and after events spread over
//!   them;
//! - time travel: `as_of` query latency (a checkpoint's first query, which opens it, and
//!   later ones) against `latest` queries, same pipeline, same keys.
//!
//! Run: `cargo bench --profile dev -p eddy-tests --bench services` (`-- --quick`: fewer events;
//! `-- bulk --events 7910000`: the bulk load of about 10M entries).

eddy_tests::host_allocator!();

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use eddy_host::cli::produce;
use eddy_host::query::{self, Freshness, Op, Query};
use eddy_tests::bench::cpu_time;
use eddy_tests::{
    NatsServer, PipelineSpec, Running, SlowHttp, create_streams, free_port, plugin, stream_len,
};

struct Bench {
    _nats: NatsServer,
    _dir: tempfile::TempDir,
    conn: eddy_host::transport::Nats,
    spec: PipelineSpec,
}

async fn setup(extra: &str, config: Option<&str>) -> Bench {
    setup_plugin("fraud-enrich", extra, config).await
}

/// [`setup`] with another sample plugin.
async fn setup_plugin(plugin_name: &str, extra: &str, config: Option<&str>) -> Bench {
    let nats = NatsServer::start().expect("nats-server");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = PipelineSpec::new("bench", &nats.url(), dir.path(), plugin(plugin_name));
    spec.extra = extra.to_string();
    spec.plugin_config = config.map(str::to_string);
    let conn = nats.connect().await.expect("connect");
    create_streams(&conn.js, &spec).await.expect("streams");
    Bench {
        _nats: nats,
        _dir: dir,
        conn,
        spec,
    }
}

async fn publish(b: &Bench, n: usize, customers: usize, seed: u64) {
    let payloads: Vec<Bytes> = produce::transactions(n, customers, seed, 0)
        .iter()
        .map(|t| Bytes::from(serde_json::to_vec(t).expect("json")))
        .collect();
    produce::publish(&b.conn.js, "txn.in", payloads)
        .await
        .expect("publish");
}

/// Events/s from the first output until `n` outputs are stored.
async fn throughput(b: &Bench, n: u64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(600);
    let (mut t0, mut first) = (None, 0);
    loop {
        let len = stream_len(&b.conn.js, "OUT").await.unwrap_or(0);
        if t0.is_none() && len > 0 {
            t0 = Some(Instant::now());
            first = len;
        }
        if len >= n || Instant::now() > deadline {
            let secs = t0.map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0);
            return (len - first) as f64 / secs.max(1e-9);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn stats_query(customer: usize) -> Query {
    Query {
        state: Some("stats".into()),
        key: Some(format!("c-{customer}")),
        freshness: Freshness::Latest,
        ..Query::default()
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or(f64::NAN)
}

async fn queries(quick: bool) {
    let n = if quick { 20_000 } else { 100_000 };
    let port = free_port();
    let b = setup(&format!("[query]\nhttp = \"127.0.0.1:{port}\"\n"), None).await;
    publish(&b, n, 1_000, 1).await;
    let run = Running::start(&b.spec);
    let server = b._nats.pid().expect("nats-server runs");
    // CPU µs per event of one phase: this process (pipeline, query load, polling) and
    // nats-server together; on two cores, what queries burn the pipeline cannot use.
    let cpu = || cpu_time(std::process::id()) + cpu_time(server);
    let c0 = cpu();
    let base_eps = throughput(&b, n as u64).await;
    let base_cpu = (cpu() - c0).as_secs_f64() * 1e6 / n as f64;

    // Latency, one query at a time; then queries/s with 16 in flight.
    let samples = if quick { 1_000 } else { 5_000 };
    let mut nats_ms = Vec::with_capacity(samples);
    for i in 0..samples {
        let t = Instant::now();
        query::nats::ask(&b.conn, "bench", Op::Get, &stats_query(i % 1_000))
            .await
            .expect("query");
        nats_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let http = reqwest::Client::new();
    let url = |i: usize| format!("http://127.0.0.1:{port}/v1/state/stats/c-{}", i % 1_000);
    let mut http_ms = Vec::with_capacity(samples);
    for i in 0..samples {
        let t = Instant::now();
        let r = http.get(url(i)).send().await.expect("http");
        assert!(r.status().is_success());
        r.bytes().await.expect("body");
        http_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    nats_ms.sort_by(f64::total_cmp);
    http_ms.sort_by(f64::total_cmp);
    let burst = |over_http: bool| {
        let (conn, http) = (b.conn.clone(), http.clone());
        async move {
            let started = Instant::now();
            let mut tasks = Vec::new();
            for w in 0..16 {
                let (conn, http) = (conn.clone(), http.clone());
                tasks.push(tokio::spawn(async move {
                    let mut done = 0u64;
                    let mut i = w;
                    while started.elapsed() < Duration::from_secs(3) {
                        if over_http {
                            let r = http
                                .get(format!(
                                    "http://127.0.0.1:{port}/v1/state/stats/c-{}",
                                    i % 1_000
                                ))
                                .send()
                                .await
                                .expect("http");
                            r.bytes().await.expect("body");
                        } else {
                            query::nats::ask(&conn, "bench", Op::Get, &stats_query(i % 1_000))
                                .await
                                .expect("query");
                        }
                        done += 1;
                        i += 16;
                    }
                    done
                }));
            }
            let mut total = 0;
            for t in tasks {
                total += t.await.expect("task");
            }
            total as f64 / started.elapsed().as_secs_f64()
        }
    };
    let nats_qps = burst(false).await;
    let http_qps = burst(true).await;

    // Throughput with 1,000 queries/s running, same pipeline, next n events.
    // Throughput with 1,000 queries/s, asked by an outside application: its own thread,
    // runtime and NATS connection, so its work does not run on the pipeline's threads.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let url = b.spec.nats_url.clone();
    let load = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let cfg = eddy_host::config::NatsConfig {
                url,
                ..Default::default()
            };
            let conn = eddy_host::transport::connect(&cfg, "bench-client")
                .await
                .expect("connect");
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            let answered = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
            let mut i = 0;
            while !*stop_rx.borrow() {
                tick.tick().await;
                // One query per millisecond whatever each takes: they overlap when slow.
                let (conn, answered) = (conn.clone(), answered.clone());
                tokio::spawn(async move {
                    if query::nats::ask(&conn, "bench", Op::Get, &stats_query(i % 1_000))
                        .await
                        .is_ok()
                    {
                        answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                });
                i += 1;
            }
            answered.load(std::sync::atomic::Ordering::Relaxed)
        })
    });
    let started = Instant::now();
    publish(&b, n, 1_000, 2).await;
    let c0 = cpu();
    let loaded_eps = throughput(&b, 2 * n as u64).await;
    let loaded_cpu = (cpu() - c0).as_secs_f64() * 1e6 / n as f64;
    let _ = stop_tx.send(true);
    let asked = load.join().expect("load");
    let qps = asked as f64 / started.elapsed().as_secs_f64();
    // And the next n events without queries again: the baseline is the mean of the phases
    // before and after, so drift over the run falls on both sides.
    publish(&b, n, 1_000, 3).await;
    let c0 = cpu();
    let after_eps = throughput(&b, 3 * n as u64).await;
    let after_cpu = (cpu() - c0).as_secs_f64() * 1e6 / n as f64;
    let base_eps = (base_eps + after_eps) / 2.0;
    let base_cpu = (base_cpu + after_cpu) / 2.0;
    run.stop().await;

    println!("\nQueryable state, fraud pipeline with 1,000 customers ({n} events)\n");
    println!("| transport | p50 ms | p99 ms | queries/s (16 in flight) |");
    println!("|---|---:|---:|---:|");
    println!(
        "| NATS service | {:.3} | {:.3} | {nats_qps:.0} |",
        pct(&nats_ms, 0.5),
        pct(&nats_ms, 0.99)
    );
    println!(
        "| HTTP | {:.3} | {:.3} | {http_qps:.0} |",
        pct(&http_ms, 0.5),
        pct(&http_ms, 0.99)
    );
    println!("\n| pipeline | events/s | vs no queries | CPU µs/event (all processes) |");
    println!("|---|---:|---:|---:|");
    println!(
        "| no queries (mean of the phases before and after) | {base_eps:.0} | 1.00 | {base_cpu:.1} |"
    );
    println!(
        "| {qps:.0} queries/s over NATS | {loaded_eps:.0} | {:.2} | {loaded_cpu:.1} |",
        loaded_eps / base_eps
    );
}

async fn lookups(quick: bool) {
    let n = if quick { 20_000 } else { 100_000 };
    let customers = 50_000;
    // Every customer has a profile; the store answers after 1 ms.
    let profiles: HashMap<String, String> = (0..customers)
        .map(|i| (format!("c-{i}"), format!(r#"{{"segment":"s{}"}}"#, i % 7)))
        .collect();
    let http = SlowHttp::start(profiles.clone(), 1)
        .await
        .expect("http store");
    let store = |cache: &str| {
        format!(
            "[lookups]\ncapacity = 100\nmode = \"ordered\"\n\n[lookup.profiles]\nkind = \"http\"\nurl_template = \"{}/{{key}}\"\ntimeout_ms = 2000\ncache = {cache}\n",
            http.url()
        )
    };
    let config = Some("{ profiles = \"profiles\" }");

    // 1 ms store, no cache: every event waits for its lookup.
    let b = setup(&store("{ mode = \"none\" }"), config).await;
    publish(&b, n, customers, 3).await;
    let run = Running::start(&b.spec);
    let uncached = throughput(&b, n as u64).await;
    eprintln!(
        "uncached: {uncached:.0} events/s, {} store requests",
        http.requests()
    );
    run.stop().await;

    // Cache hits: 1,000 customers, warmed, then measured; vs keyed state only.
    let b = setup(
        &store("{ mode = \"partial\", max_entries = 10000 }"),
        config,
    )
    .await;
    publish(&b, 2_000, 1_000, 4).await;
    let run = Running::start(&b.spec);
    throughput(&b, 2_000).await;
    publish(&b, n, 1_000, 5).await;
    let cached = throughput(&b, 2_000 + n as u64).await;
    run.stop().await;
    let b = setup("", None).await;
    publish(&b, n, 1_000, 5).await;
    let run = Running::start(&b.spec);
    let keyed_only = throughput(&b, n as u64).await;
    run.stop().await;
    // The stores' rows read the events of 50,000 customers: their baseline is the same events.
    let b = setup("", None).await;
    publish(&b, n, customers, 3).await;
    let run = Running::start(&b.spec);
    let keyed_only_wide = throughput(&b, n as u64).await;
    run.stop().await;

    // A 1 ms Redis and a 1 ms PostgreSQL (0.5 ms each way through a relay), no cache: one
    // key per request, then the keys asked meanwhile in one request (the default).
    let redis = eddy_tests::RedisServer::start().expect("redis-server");
    let sets: Vec<Vec<String>> = profiles
        .iter()
        .map(|(k, v)| vec!["SET".into(), k.clone(), v.clone()])
        .collect();
    redis.pipe(&sets).expect("load profiles");
    let pg = eddy_tests::PostgresServer::start().expect("postgres");
    pg.sql("CREATE TABLE profiles (customer text PRIMARY KEY, segment text)")
        .expect("table");
    pg.sql(&format!(
        "INSERT INTO profiles SELECT 'c-' || i, 's' || (i % 7) FROM generate_series(0, {}) AS i",
        customers - 1
    ))
    .expect("load profiles");
    let latency = Duration::from_micros(500);
    let slow_redis = eddy_tests::Relay::start_with_latency(redis.port(), latency)
        .await
        .expect("relay");
    let slow_pg = eddy_tests::Relay::start_with_latency(pg.port(), latency)
        .await
        .expect("relay");
    let rtt = round_trip(slow_redis.port()).await;
    let redis_store = format!(
        "kind = \"redis\"\nurl = \"redis://127.0.0.1:{}\"",
        slow_redis.port()
    );
    let pg_store = format!(
        "kind = \"postgres\"\nurl = \"postgres://eddy@127.0.0.1:{}/postgres\"\nquery = \"SELECT segment FROM profiles WHERE customer = $1\"",
        slow_pg.port()
    );
    // Every profile held in memory (loaded from Redis at start): the lookups' cost without a
    // round trip, the most a store's rows can reach. Each store's lookups are planned by the
    // plugin's `prepare` or by the pipeline file (`plan = "key"`: the profile's key is the
    // event's key), which spares the plugin call.
    let planners = [("prepare", ""), ("the pipeline file", "plan = \"key\"\n")];
    let mut full_cache = Vec::new();
    for (planner, plan) in planners {
        let b = setup(
            &format!(
                "[lookups]\ncapacity = 100\nmode = \"ordered\"\n\n[lookup.profiles]\n{redis_store}\ntimeout_ms = 2000\ncache = {{ mode = \"full\" }}\n{plan}"
            ),
            config,
        )
        .await;
        publish(&b, n, customers, 3).await;
        let run = Running::start(&b.spec);
        full_cache.push((planner, throughput(&b, n as u64).await));
        run.stop().await;
    }
    let mut store_rows = Vec::new();
    for (name, store) in [("Redis", &redis_store), ("PostgreSQL", &pg_store)] {
        for (max_batch, (planner, plan)) in
            [(1, planners[0]), (256, planners[0]), (256, planners[1])]
        {
            let b = setup(
                &format!(
                    "[lookups]\ncapacity = 100\nmode = \"ordered\"\n\n[lookup.profiles]\n{store}\ntimeout_ms = 2000\nmax_batch = {max_batch}\ncache = {{ mode = \"none\" }}\n{plan}"
                ),
                config,
            )
            .await;
            publish(&b, n, customers, 3).await;
            let run = Running::start(&b.spec);
            store_rows.push((name, max_batch, planner, throughput(&b, n as u64).await));
            run.stop().await;
        }
    }

    println!("\nLookups, fraud pipeline, capacity 100, ordered ({n} events)\n");
    println!("| case | events/s | ratio |");
    println!("|---|---:|---:|");
    println!(
        "| 1 ms HTTP store, no cache, 50,000 customers | {uncached:.0} | {:.2} of the 100k/s limit |",
        uncached / 100_000.0
    );
    println!(
        "| keyed state only, no lookup, 1,000 customers (baseline) | {keyed_only:.0} | 1.00 |"
    );
    println!(
        "| profile lookup served from the cache, 1,000 customers | {cached:.0} | {:.2} of baseline |",
        cached / keyed_only
    );
    println!(
        "| keyed state only, no lookup, 50,000 customers (baseline of the rows below) | {keyed_only_wide:.0} | 1.00 |"
    );
    for (planner, eps) in &full_cache {
        println!(
            "| Redis, full cache (every profile in memory), planned by {planner} | {eps:.0} | {:.2} of baseline |",
            eps / keyed_only_wide
        );
    }
    for (name, max_batch, planner, eps) in &store_rows {
        println!(
            "| 1 ms {name}, no cache, 50,000 customers, max_batch = {max_batch}, planned by {planner} | {eps:.0} | {:.2} of baseline |",
            eps / keyed_only_wide
        );
    }
    println!(
        "\nRound trip through the relay (Redis PING, one at a time): p50 {:.2} ms",
        rtt * 1e3
    );
    println!("HTTP store requests: {}", http.requests());
}

/// The median time of a Redis `PING` answered through `port`, one at a time.
async fn round_trip(port: u16) -> f64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    conn.set_nodelay(true).expect("nodelay");
    let mut times = Vec::new();
    let mut buf = [0u8; 16];
    for _ in 0..200 {
        let t = Instant::now();
        conn.write_all(b"PING\r\n").await.expect("ping");
        let mut got = 0;
        while got < 7 {
            got += conn.read(&mut buf[got..]).await.expect("pong");
        }
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// The same pipeline with a checkpoint every 10 s and with none during the run (interval 1 h,
/// input acknowledgements allowed to pile up past the run), same events.
async fn checkpoints(quick: bool) {
    let n = if quick { 200_000 } else { 600_000 };
    let mut rows = Vec::new();
    for (label, interval) in [
        ("none during the run", 3_600_000u64),
        ("every 10 s", 10_000),
    ] {
        let b = setup(
            &format!("[checkpoint]\ninterval_ms = {interval}\ndedupe_check = \"warn\"\n"),
            None,
        )
        .await;
        publish(&b, n, 10_000, 6).await;
        let mut spec = b.spec.clone();
        spec.max_pending = Some(4_000_000);
        let metrics_run = Running::start(&spec);
        let eps = throughput(&b, n as u64).await;
        let summary = metrics_run.stop().await;
        rows.push((label, eps, summary.checkpoints));
    }
    println!("\nCheckpoints during a run of {n} events (fraud pipeline, 10,000 customers)\n");
    println!("| checkpoints | events/s | checkpoints taken | vs none |");
    println!("|---|---:|---:|---:|");
    for (label, eps, taken) in &rows {
        println!("| {label} | {eps:.0} | {taken} | {:.2} |", eps / rows[0].1);
    }
}

/// `eddy console` and a headless Chromium watching its overview; both stopped when dropped.
struct Watching(Vec<std::process::Child>);

impl Drop for Watching {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn watch(file: &std::path::Path, port: u16) -> Watching {
    use std::process::{Command, Stdio};
    let console = Command::new(eddy_tests::eddy_bin())
        .args(["console", file.to_str().expect("path")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("eddy console");
    let tools = std::env::var("EDDY_BROWSER_TOOLS").unwrap_or_else(|_| {
        format!(
            "{}/.cache/eddy/tools/browser",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    let browser = Command::new("node")
        .arg(eddy_tests::workspace_root().join("tests/browser/console.mjs"))
        .arg("watch")
        .env("EDDY_BROWSER_TOOLS", tools)
        .env("CONSOLE_URL", format!("http://127.0.0.1:{port}"))
        .env("SHOTS", std::env::temp_dir())
        .env("WATCH_MS", "600000")
        .stdout(Stdio::null())
        .spawn()
        .expect("node (scripts/env.sh installs playwright-core)");
    Watching(vec![browser, console])
}

async fn console(quick: bool) {
    let n = if quick { 200_000 } else { 600_000 };
    let mut rows: Vec<(&str, f64)> = Vec::new();
    for _round in 0..2 {
        for watched in [false, true] {
            let port = free_port();
            let b = setup(&format!("[console]\nlisten = \"127.0.0.1:{port}\"\n"), None).await;
            publish(&b, n, 10_000, 7).await;
            let mut spec = b.spec.clone();
            spec.max_pending = Some(4_000_000);
            let file = b._dir.path().join("pipeline.toml");
            spec.write(&file).expect("config");
            let watching = watched.then(|| watch(&file, port));
            if watched {
                // Chromium's start is not part of the cost of a console left open.
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            let run = Running::start(&spec);
            let eps = throughput(&b, n as u64).await;
            run.stop().await;
            drop(watching);
            rows.push((if watched { "console open" } else { "none" }, eps));
        }
    }
    println!("\nConsole cost: a run of {n} events (fraud pipeline), alternated, two rounds each\n");
    alternated_table("watching", &rows);
    let mean = |label: &str| mean_of(&rows, label);
    println!(
        "\nmean with the console open / mean without: {:.3}",
        mean("console open") / mean("none")
    );
}

async fn time_travel(quick: bool) {
    let n = if quick { 30_000 } else { 150_000 };
    let b = setup(
        "[checkpoint]\ninterval_ms = 3600000\ndedupe_check = \"warn\"\nretain = 1\nretain_for_ms = 3600000\n",
        None,
    )
    .await;
    let run = Running::start(&b.spec);
    let mut ids = Vec::new();
    for round in 0..3u64 {
        publish(&b, n / 3, 1_000, 10 + round).await;
        throughput(&b, (round + 1) * (n as u64 / 3)).await;
        ids.push(eddy_tests::checkpoint_now(&b.conn, "bench").await);
    }
    let samples = if quick { 1_000 } else { 5_000 };
    let ask = |q: Query| {
        let conn = b.conn.clone();
        async move {
            let t = Instant::now();
            query::nats::ask(&conn, "bench", Op::Get, &q)
                .await
                .expect("query");
            t.elapsed().as_secs_f64() * 1e3
        }
    };
    let as_of = |i: usize, id: u64| Query {
        as_of: Some(query::AsOf::Checkpoint(id)),
        ..stats_query(i % 1_000)
    };
    let mut first_ms = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        first_ms.push(ask(as_of(i, *id)).await);
    }
    let (mut latest_ms, mut past_ms) = (Vec::new(), Vec::new());
    for i in 0..samples {
        latest_ms.push(ask(stats_query(i % 1_000)).await);
        past_ms.push(ask(as_of(i, ids[i % ids.len()])).await);
    }
    run.stop().await;
    latest_ms.sort_by(f64::total_cmp);
    past_ms.sort_by(f64::total_cmp);
    first_ms.sort_by(f64::total_cmp);
    let (l50, l99) = (pct(&latest_ms, 0.5), pct(&latest_ms, 0.99));
    println!(
        "\nTime-travel queries over NATS, fraud pipeline with 1,000 customers ({n} events, 3 checkpoints; {samples} queries each, alternated)\n"
    );
    println!("| query | p50 ms | p99 ms | p50 vs latest |");
    println!("|---|---:|---:|---:|");
    println!("| latest | {l50:.3} | {l99:.3} | 1.00 |");
    println!(
        "| as_of (checkpoint open) | {:.3} | {:.3} | {:.2} |",
        pct(&past_ms, 0.5),
        pct(&past_ms, 0.99),
        pct(&past_ms, 0.5) / l50
    );
    println!(
        "| as_of, first query of each checkpoint (opens it) | {:.3} | {:.3} (max) | {:.1} |",
        pct(&first_ms, 0.5),
        first_ms.last().copied().unwrap_or(f64::NAN),
        pct(&first_ms, 0.5) / l50
    );
}

async fn quotas(quick: bool) {
    let n = if quick { 200_000 } else { 600_000 };
    let mut rows: Vec<(&str, f64)> = Vec::new();
    for round in 0..4 {
        let (label, extra) = if round % 2 == 0 {
            ("none", "")
        } else {
            (
                "recent: max_entries = 3, evict",
                "[state.quota.recent]\nmax_entries = 3\npolicy = \"evict\"\n",
            )
        };
        let b = setup(extra, None).await;
        publish(&b, n, 1_000, 12).await;
        let run = Running::start(&b.spec);
        let eps = throughput(&b, n as u64).await;
        let summary = run.stop().await;
        assert_eq!(summary.dead_lettered, 0, "evicting refuses nothing");
        rows.push((label, eps));
    }
    println!("\nPer-key quota, fraud pipeline with 1,000 customers ({n} events per run)\n");
    alternated_table("quota", &rows);

    // A map quota: dedupe-filter's `seen` (one new id per event) kept to the 16 written last,
    // so every write past a customer's 16th scans its entries and evicts one.
    let mut rows: Vec<(&str, f64)> = Vec::new();
    for round in 0..4 {
        let (label, extra) = if round % 2 == 0 {
            ("none", "")
        } else {
            (
                "seen: max_entries = 16, evict",
                "[state.quota.seen]\nmax_entries = 16\npolicy = \"evict\"\n",
            )
        };
        let b = setup_plugin("dedupe-filter", extra, None).await;
        publish(&b, n, 1_000, 14).await;
        let run = Running::start(&b.spec);
        let eps = throughput(&b, n as u64).await;
        run.stop().await;
        rows.push((label, eps));
    }
    println!(
        "\nPer-key map quota, dedupe-filter with 1,000 customers ({n} events per run, one new id each)\n"
    );
    alternated_table("quota", &rows);
}

async fn shadow(quick: bool) {
    let n = if quick { 200_000 } else { 600_000 };
    let strict = std::fs::read(plugin("fraud-enrich-strict")).expect("the strict build");
    let label = "fraud-enrich strict as shadow";
    let mut rows: Vec<(&str, f64)> = Vec::new();
    let mut compared = Vec::new();
    for round in 0..4 {
        let b = setup("", None).await;
        publish(&b, n, 1_000, 13).await;
        if round % 2 == 0 {
            let run = Running::start(&b.spec);
            rows.push(("none", throughput(&b, n as u64).await));
            run.stop().await;
            continue;
        }
        // Declared before the start: the host starts it once validated, a moment into the
        // backlog; events/s count from then.
        eddy_host::reload::shadow::deploy(&b.conn, "eddy-plugins", "bench", &strict, "bench")
            .await
            .expect("declare the shadow");
        let run = Running::start(&b.spec);
        let (mut t0, mut first) = (None, 0);
        let deadline = Instant::now() + Duration::from_secs(600);
        let report = loop {
            let len = stream_len(&b.conn.js, "OUT").await.unwrap_or(0);
            if t0.is_none() && shadow_report(&b).await.is_some_and(|r| r.events > 0) {
                t0 = Some(Instant::now());
                first = stream_len(&b.conn.js, "OUT").await.unwrap_or(0);
            }
            if len >= n as u64 || Instant::now() > deadline {
                let secs = t0.map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0);
                rows.push((label, (len - first) as f64 / secs.max(1e-9)));
                break shadow_report(&b).await;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let report = report.expect("the shadow's report");
        compared.push((
            n as u64 - first,
            report.events,
            report.differing_events,
            report.seed_pause_us,
        ));
        run.stop().await;
    }
    println!("\nShadow deploy, fraud pipeline with 1,000 customers ({n} events per run)\n");
    alternated_table("shadow", &rows);
    for (measured, events, differing, seed_us) in compared {
        println!(
            "shadow compared {events} events ({differing} differing); {measured} measured after it started; seeding its state paused the loop {seed_us} µs"
        );
    }
}

/// The running host's shadow report, if it answers and has one.
async fn shadow_report(b: &Bench) -> Option<eddy_host::reload::shadow::ShadowReport> {
    let status: Vec<eddy_host::control::HostStatus> = eddy_host::cli::hosts::ask(
        &b.conn,
        "bench",
        "status",
        serde_json::json!({}),
        Duration::from_secs(5),
    )
    .await
    .ok()?;
    status.into_iter().next().and_then(|s| s.shadow)
}

/// The mean events/s of the runs labelled `label`.
fn mean_of(rows: &[(&str, f64)], label: &str) -> f64 {
    let v: Vec<f64> = rows.iter().filter(|r| r.0 == label).map(|r| r.1).collect();
    v.iter().sum::<f64>() / v.len() as f64
}

/// Alternated runs as a table, each against the mean of the `none` runs.
fn alternated_table(column: &str, rows: &[(&str, f64)]) {
    println!("| run | {column} | events/s | vs none (mean) |");
    println!("|---:|---|---:|---:|");
    for (i, (label, eps)) in rows.iter().enumerate() {
        println!(
            "| {} | {label} | {eps:.0} | {:.3} |",
            i + 1,
            eps / mean_of(rows, "none")
        );
    }
}

/// Seconds of a command that must succeed.
fn timed(cmd: &mut std::process::Command) -> f64 {
    let t = Instant::now();
    let out = cmd.output().expect("eddy");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.elapsed().as_secs_f64()
}

/// Loads `stats.jsonl` and `recent.jsonl` of `work` into the savepoint `loaded` with two
/// `eddy state load` runs; their seconds.
fn load_fraud_state(
    pipeline: &std::path::Path,
    work: &std::path::Path,
    loaded: &std::path::Path,
) -> f64 {
    let mut secs = 0.0;
    for (state, kind, flag) in [("stats", "value", "--to"), ("recent", "list", "--into")] {
        let mut cmd = std::process::Command::new(eddy_tests::eddy_bin());
        cmd.args(["state", "load"])
            .arg(pipeline)
            .arg(work.join(format!("{state}.jsonl")))
            .args(["--state", state, "--kind", kind, flag])
            .arg(loaded);
        secs += timed(&mut cmd);
    }
    secs
}

async fn bulk(quick: bool, events: Option<usize>) {
    let n = events.unwrap_or(if quick { 200_000 } else { 1_000_000 });
    // Through the stream: customers drawn at random from as many as there are events, so most
    // events write a customer not seen before (its `stats` value and `recent` list).
    let b = setup(
        "[checkpoint]\ninterval_ms = 3600000\ndedupe_check = \"warn\"\n",
        None,
    )
    .await;
    publish(&b, n, n, 9).await;
    let mut spec = b.spec.clone();
    spec.max_pending = Some(4_000_000);
    let run = Running::start(&spec);
    let started = Instant::now();
    while stream_len(&b.conn.js, "OUT").await.unwrap_or(0) < n as u64 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stream_secs = started.elapsed().as_secs_f64();
    let sp =
        eddy_tests::savepoint_now(&b.conn, "bench", &b._dir.path().join("sp"), "streamed").await;
    run.stop().await;
    let work = b._dir.path();
    for state in ["stats", "recent"] {
        let mut cmd = std::process::Command::new(eddy_tests::eddy_bin());
        cmd.args(["state", "export"])
            .arg(&sp)
            .args(["--state", state, "--out"])
            .arg(work.join(format!("{state}.jsonl")));
        timed(&mut cmd);
    }
    // Loaded: the two files into a savepoint, then a pipeline started from it, until it
    // answers a query.
    let pipeline = work.join("other.toml");
    let other = tempfile::tempdir().expect("tempdir");
    let mut spec2 = b.spec.clone();
    spec2.state_dir = other.path().join("state");
    // A pipeline of its own: its own consumer, and none of the streamed events left in the
    // input (a loaded savepoint has no input position: it would read the stream from the
    // start, and answer `latest` only once past what it had delivered).
    spec2.consumer = Some("loaded".into());
    b.conn
        .js
        .get_stream(&b.spec.stream)
        .await
        .expect("input stream")
        .purge()
        .await
        .expect("purge");
    spec2.write(&pipeline).expect("pipeline");
    let loaded = work.join("loaded");
    let load_secs = load_fraud_state(&pipeline, work, &loaded);
    let started = Instant::now();
    let run = Running::start_with(
        spec2.config(),
        eddy_host::pipeline::RunOptions {
            from_savepoint: Some(loaded),
            ..Default::default()
        },
    );
    while query::nats::ask(&b.conn, "bench", Op::Get, &stats_query(0))
        .await
        .is_err()
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let restore_secs = started.elapsed().as_secs_f64();
    run.stop().await;
    // Customers are drawn at random: the state holds fewer entries than two per event.
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sp.join("savepoint.json")).expect("savepoint.json"))
            .expect("savepoint meta");
    let entries = meta["entries"].as_u64().expect("entries") as f64;
    let streamed = entries / stream_secs;
    let bulk = entries / (load_secs + restore_secs);
    println!(
        "\nBulk load: {n} events over {n} customers drawn at random; the state holds {entries} entries (a `stats` value and a `recent` list per customer seen)\n"
    );
    println!("| path | seconds | entries/s | vs the stream |");
    println!("|---|---:|---:|---:|");
    println!("| events through the pipeline | {stream_secs:.1} | {streamed:.0} | 1.00 |");
    println!(
        "| eddy state load (two files) + start from the savepoint | {:.1} ({load_secs:.1} + {restore_secs:.1}) | {bulk:.0} | {:.2} |",
        load_secs + restore_secs,
        bulk / streamed
    );
}

/// The memory of an `eddy run` process holding `customers` customers' fraud state (a `stats`
/// value and a `recent` list of 5 amounts each), loaded with `eddy state load`: at start, and
/// after events for customers spread over all of them.
async fn memory(quick: bool) {
    let customers: usize = if quick { 1_000_000 } else { 10_000_000 };
    let b = setup("", None).await;
    let work = b._dir.path();
    {
        use std::io::Write as _;
        let mut stats =
            std::io::BufWriter::new(std::fs::File::create(work.join("stats.jsonl")).expect("file"));
        let mut recent = std::io::BufWriter::new(
            std::fs::File::create(work.join("recent.jsonl")).expect("file"),
        );
        for c in 0..customers {
            let amount = |i: usize| 100 + (c * 7919 + i * 104_729) % 90_000;
            writeln!(
                stats,
                r#"{{"key":"c-{c}","value":{{"count":5,"sum_cents":{},"max_cents":{},"last_ts":{}}}}}"#,
                (0..5).map(amount).sum::<usize>(),
                (0..5).map(amount).max().unwrap_or(0),
                1_700_000_000_000u64 + c as u64
            )
            .expect("write");
            for i in 0..5 {
                writeln!(recent, r#"{{"key":"c-{c}","value":{}}}"#, amount(i)).expect("write");
            }
        }
    }
    let pipeline = work.join("pipeline.toml");
    b.spec.write(&pipeline).expect("pipeline");
    let loaded = work.join("loaded");
    load_fraud_state(&pipeline, work, &loaded);
    let mut host = eddy_tests::hosts::HostProcess::spawn_with(
        "mem",
        &pipeline,
        &work.join("host.log"),
        &["--from-savepoint", loaded.to_str().expect("utf-8 path")],
    );
    let started = Instant::now();
    while query::nats::ask(&b.conn, "bench", Op::Get, &stats_query(customers - 1))
        .await
        .is_err()
    {
        assert!(
            host.running(),
            "the host stopped; see {}",
            work.join("host.log").display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let start_secs = started.elapsed().as_secs_f64();
    let (at_start, _) = host.rss_mib();
    let events = if quick { 50_000 } else { 200_000 };
    publish(&b, events, customers, 11).await;
    while stream_len(&b.conn.js, "OUT").await.unwrap_or(0) < events as u64 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (after, peak) = host.rss_mib();
    host.stop();
    println!(
        "\nMemory of an `eddy run` process holding {customers} customers (a `stats` value and a 5-amount `recent` list each), started from a loaded savepoint in {start_secs:.1} s\n"
    );
    println!(
        "| customers | keyed entries | RSS at start | RSS after {events} events | peak RSS | goal |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {customers} | {} | {at_start:.0} MiB | {after:.0} MiB | {peak:.0} MiB | 300 MB (286 MiB) |",
        2 * customers
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // As the `eddy` binary runs: no transparent huge pages.
    eddy_host::no_huge_page_churn();
    // The hosts' logs (with `RUST_LOG`), such as how long a savepoint's restore took.
    eddy_tests::init_logging();
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let sections = [
        "queries",
        "lookups",
        "checkpoints",
        "console",
        "time-travel",
        "bulk",
        "quotas",
        "shadow",
        "memory",
    ];
    let only = |name: &str| {
        !args.iter().any(|a| sections.contains(&a.as_str())) || args.iter().any(|a| a == name)
    };
    if only("queries") {
        queries(quick).await;
    }
    if only("lookups") {
        lookups(quick).await;
    }
    if only("checkpoints") {
        checkpoints(quick).await;
    }
    if only("console") {
        console(quick).await;
    }
    if only("time-travel") {
        time_travel(quick).await;
    }
    if only("bulk") {
        // `--events N`: N events over N customers instead of the default.
        let events = args
            .iter()
            .position(|a| a == "--events")
            .and_then(|i| args.get(i + 1))
            .map(|n| n.parse().expect("--events N"));
        bulk(quick, events).await;
    }
    if only("quotas") {
        quotas(quick).await;
    }
    if only("shadow") {
        shadow(quick).await;
    }
    if only("memory") {
        memory(quick).await;
    }
}
