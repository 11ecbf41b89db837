//! End-to-end benchmark over a real nats-server: events/s and latency for
//! (a) a raw NATS relay (JetStream pull consume + publish, acks awaited on a task of their own
//!     while the next batches are fetched and published; no Wasm), the baseline, measured in
//!     the same run;
//! (b) the pipeline with the pass-through plugin;
//! (c) the pipeline with `fraud-enrich` and keyed state.
//!
//! Throughput: N events published first, then the consumer started; rate = events between the
//! first and the last output over that time. Latency: events published at a fixed rate while
//! the consumer runs; latency = output stored time - input stored time (same server clock).
//! Latency under load: at a half (issue 21's condition: p99 under 5 ms) and a quarter of each
//! case's measured peak, with a checkpoint every second, on a fresh server. The publisher runs
//! in this process, so at half of the peak the two cores are close to full.
//! CPU: time on the CPU per event during the throughput phase, of this process (relay or
//! pipeline) and of nats-server, from `/proc` (on two cores, what one side burns the other
//! cannot use). Printed to stderr too: how busy the plugin calls kept the worker's thread and
//! the mean events per call.
//!
//! Run: `cargo bench --profile dev -p eddy-tests --bench e2e` (add `-- --quick` for a short run;
//! `-- --only relay|pass|fraud` for one case, e.g. under `perf`; `-- --events N --no-load` for
//! a throughput phase of N events and nothing after it; `-- --rate N` for the latency phase
//! alone at N events/s, so that two builds or settings compare at the same load).

eddy_tests::host_allocator!();

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer};
use bytes::Bytes;
use eddy_host::cli::produce;
use eddy_host::metrics::Metrics;
use eddy_host::pipeline::{self, RunOptions};
use eddy_host::transport::Nats;
use eddy_tests::bench::{cpu_time, only_arg};
use eddy_tests::{
    NatsServer, PipelineSpec, create_streams, plugin, read_stored, stream_len, wait_for_len,
};
use futures::{FutureExt, StreamExt};

#[derive(Clone, Copy, PartialEq)]
enum Case {
    Relay,
    Passthrough,
    Fraud,
}

impl Case {
    fn name(self) -> &'static str {
        match self {
            Case::Relay => "(a) raw NATS relay (baseline)",
            Case::Passthrough => "(b) pipeline, pass-through plugin",
            Case::Fraud => "(c) pipeline, fraud-enrich + keyed state",
        }
    }
}

/// The baseline: the best relay with the pipeline's exactly-once discipline (outputs published
/// under a message id derived from the input, the input acknowledged only once every output
/// before it is stored), with fetching, publishing and acknowledging overlapped as the
/// pipeline overlaps them: batches of up to 256 are published back to back while up to
/// `IN_FLIGHT` earlier batches wait for their publish acks on a task of their own, which
/// acknowledges the input in order.
async fn relay(js: jetstream::Context, stop: tokio::sync::watch::Receiver<bool>) {
    /// Batches whose outputs may await their acks at once (the pipeline's window holds a few
    /// thousand events).
    const IN_FLIGHT: usize = 16;
    let stream = js.get_stream("TXN").await.expect("stream");
    let c: consumer::PullConsumer = stream
        .get_or_create_consumer(
            "relay",
            consumer::pull::Config {
                durable_name: Some("relay".into()),
                ack_policy: consumer::AckPolicy::All,
                max_ack_pending: 20_000,
                ..Default::default()
            },
        )
        .await
        .expect("consumer");
    let mut msgs = c
        .stream()
        .max_messages_per_batch(256)
        .messages()
        .await
        .expect("messages");
    let (to_acker, mut pending) = tokio::sync::mpsc::channel::<(
        Vec<jetstream::context::PublishAckFuture>,
        jetstream::Message,
    )>(IN_FLIGHT);
    let acker = tokio::spawn(async move {
        while let Some((acks, last)) = pending.recv().await {
            for a in acks {
                a.await.expect("ack");
            }
            last.ack().await.expect("ack input");
        }
    });
    while !*stop.borrow() {
        let first = tokio::select! {
            m = msgs.next() => m,
            _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
        };
        let Some(Ok(first)) = first else { break };
        let mut batch = vec![first];
        while batch.len() < 256 {
            match msgs.next().now_or_never() {
                Some(Some(Ok(m))) => batch.push(m),
                _ => break,
            }
        }
        let mut acks = Vec::with_capacity(batch.len());
        for m in &batch {
            let seq = m.info().map(|i| i.stream_sequence).unwrap_or(0);
            let mut h = HeaderMap::new();
            h.insert("Nats-Msg-Id", format!("relay:{seq}:0").as_str());
            acks.push(
                js.publish_with_headers("txn.out", h, m.payload.clone())
                    .await
                    .expect("publish"),
            );
        }
        let last = batch.pop().expect("a batch has a first message");
        if to_acker.send((acks, last)).await.is_err() {
            break;
        }
    }
    drop(to_acker);
    acker.await.expect("acker");
}

struct Result {
    events_per_s: f64,
    /// CPU µs per event from the first output to the last: this process (relay or pipeline,
    /// plus the benchmark's polling) and nats-server.
    host_us: f64,
    server_us: f64,
    /// Share of the throughput phase spent in plugin calls (the worker's thread), and the
    /// mean events per call.
    call_busy: f64,
    mean_batch: f64,
    p50_ms: f64,
    p99_ms: f64,
}

async fn measure(case: Case, n: usize, rate: usize, secs: u64) -> Result {
    let fresh = Fresh::start(case, "").await;
    let conn = &fresh.conn;
    produce::publish(&conn.js, "txn.in", payloads(n, 1))
        .await
        .expect("publish");
    let metrics = Metrics::new("bench");
    let (stop, task) = fresh.spawn(case, &metrics);
    // Throughput: from the first output to the last.
    let server_pid = fresh.nats.pid().expect("nats-server runs");
    let cpu = || {
        (
            cpu_time(std::process::id()),
            cpu_time(server_pid),
            metrics.call_seconds.sum(),
            metrics.batch_size.count(),
        )
    };
    let mut cpu0 = cpu();
    let mut t0 = None;
    let mut first = 0;
    let deadline = Instant::now() + Duration::from_secs(300);
    let t1 = loop {
        let len = stream_len(&conn.js, "OUT").await.unwrap_or(0);
        if t0.is_none() && len > 0 {
            t0 = Some(Instant::now());
            cpu0 = cpu();
            first = len;
        }
        if len >= n as u64 || Instant::now() > deadline {
            break Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let cpu1 = cpu();
    let elapsed = t1 - t0.unwrap_or(t1);
    // For profiles recorded with `perf record -k realtime`: the phase's window in wall time.
    let wall = |at: Instant| {
        let ago = Instant::now() - at;
        (std::time::SystemTime::now() - ago)
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    };
    eprintln!(
        "{}: throughput phase from {:.3} to {:.3} (Unix seconds), {} events",
        case.name(),
        wall(t0.unwrap_or(t1)),
        wall(t1),
        n as u64 - first
    );
    let events_per_s = (n as u64 - first) as f64 / elapsed.as_secs_f64().max(1e-9);
    let counted = (n as u64 - first).max(1) as f64;
    let per_event = |a: Duration, b: Duration| (b - a).as_secs_f64() * 1e6 / counted;
    let (host_us, server_us) = (per_event(cpu0.0, cpu1.0), per_event(cpu0.1, cpu1.1));
    let call_busy = (cpu1.2 - cpu0.2) / elapsed.as_secs_f64().max(1e-9);
    let mean_batch = counted / (cpu1.3 - cpu0.3).max(1) as f64;

    // Latency: a steady trickle while the consumer is idle and waiting.
    publish_paced(&conn.js, payloads(rate * secs as usize, 2), rate).await;
    let total = n + rate * secs as usize;
    wait_for_outputs(&conn.js, total).await;
    let _ = stop.send(true);
    let _ = task.await;

    let lat = latencies(&conn.js, n as u64).await;
    let pct = |p: f64| percentile(&lat, p);
    Result {
        events_per_s,
        host_us,
        server_us,
        call_busy,
        mean_batch,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
    }
}

/// Latency of every output whose input came after the first `skip` inputs, in ms, sorted:
/// output stored time - input stored time, both from the server's clock.
async fn latencies(js: &jetstream::Context, skip: u64) -> Vec<f64> {
    let inputs = read_stored(js, "txn.in").await.expect("inputs");
    let input_time: HashMap<u64, u64> = inputs.iter().map(|m| (m.sequence, m.stored_us)).collect();
    let outputs = read_stored(js, "txn.out").await.expect("outputs");
    let mut lat: Vec<f64> = outputs
        .iter()
        .filter_map(|m| {
            let id = m
                .headers
                .iter()
                .find(|(k, _)| k == "Nats-Msg-Id")?
                .1
                .clone();
            // `relay:<seq>:0` or `<pipeline>:in:<seq>:<index>`: the sequence is next to last.
            let seq: u64 = id.rsplit(':').nth(1)?.parse().ok()?;
            if seq <= skip {
                return None;
            }
            let sent = *input_time.get(&seq)?;
            Some(m.stored_us.saturating_sub(sent) as f64 / 1000.0)
        })
        .collect();
    lat.sort_by(f64::total_cmp);
    lat
}

/// The `p` quantile of sorted values (NaN when there are none).
fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or(f64::NAN)
}

/// What [`latency_under_load`] measured.
struct Loaded {
    /// The rate the publisher reached.
    sent_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    checkpoints: u64,
    /// The longest run-loop pause of a checkpoint cut, in ms (its histogram bucket).
    cut_pause_max_ms: f64,
}

/// Latency under load, the condition issue 21 sets: events published at `rate` for `secs`,
/// with a checkpoint every second, on a fresh server and pipeline warmed by one event first.
async fn latency_under_load(case: Case, rate: usize, secs: u64) -> Loaded {
    let fresh = Fresh::start(case, "interval_ms = 1000\n").await;
    let js = &fresh.conn.js;
    let metrics = Metrics::new("bench");
    let (stop, task) = fresh.spawn(case, &metrics);
    // Warm-up: the first event's output shows the pipeline is consuming.
    publish_paced(js, payloads(1, 4), 1_000).await;
    wait_for_outputs(js, 1).await;
    let pauses = metrics.checkpoint_pause_seconds.snapshot();
    let checkpoints = || metrics.checkpoints.load(Ordering::Relaxed);
    let checkpoints0 = checkpoints();
    let sent = rate * secs as usize;
    let sent_per_s = publish_paced(js, payloads(sent, 3), rate).await;
    let total = 1 + sent;
    wait_for_outputs(js, total).await;
    let checkpoints = checkpoints() - checkpoints0;
    let cut = metrics.checkpoint_pause_seconds.snapshot().since(&pauses);
    let _ = stop.send(true);
    let _ = task.await;
    let lat = latencies(js, 1).await;
    Loaded {
        sent_per_s,
        p50_ms: percentile(&lat, 0.5),
        p99_ms: percentile(&lat, 0.99),
        max_ms: lat.last().copied().unwrap_or(f64::NAN),
        checkpoints,
        cut_pause_max_ms: cut.quantile(1.0).unwrap_or(0.0) * 1000.0,
    }
}

/// A fresh nats-server with the pipeline's streams, for one case.
struct Fresh {
    nats: NatsServer,
    _dir: tempfile::TempDir,
    conn: Nats,
    spec: PipelineSpec,
}

impl Fresh {
    /// `checkpoint`: lines for the pipeline's `[checkpoint]` table.
    async fn start(case: Case, checkpoint: &str) -> Fresh {
        let nats = NatsServer::start().expect("nats-server");
        let dir = tempfile::tempdir().expect("tempdir");
        let plugin_path = match case {
            Case::Fraud => plugin("fraud-enrich"),
            _ => plugin("passthrough"),
        };
        let mut spec = PipelineSpec::new("bench", &nats.url(), dir.path(), plugin_path);
        spec.checkpoint.push_str(checkpoint);
        let conn = nats.connect().await.expect("connect");
        create_streams(&conn.js, &spec).await.expect("streams");
        Fresh {
            nats,
            _dir: dir,
            conn,
            spec,
        }
    }

    /// Starts the relay or the pipeline; stopped by sending `true`.
    fn spawn(
        &self,
        case: Case,
        metrics: &Arc<Metrics>,
    ) -> (
        tokio::sync::watch::Sender<bool>,
        tokio::task::JoinHandle<()>,
    ) {
        let (stop, rx) = tokio::sync::watch::channel(false);
        let task = match case {
            Case::Relay => tokio::spawn(relay(self.conn.js.clone(), rx)),
            _ => tokio::spawn(
                pipeline::run(
                    self.spec.config(),
                    RunOptions::default(),
                    rx,
                    metrics.clone(),
                )
                .map(|r| {
                    r.expect("pipeline");
                }),
            ),
        };
        (stop, task)
    }
}

/// `n` transactions over 10,000 customers, as JSON.
fn payloads(n: usize, seed: u64) -> Vec<Bytes> {
    produce::transactions(n, 10_000, seed, 0)
        .iter()
        .map(|t| Bytes::from(serde_json::to_vec(t).expect("json")))
        .collect()
}

/// Publishes `payloads` to the input at `rate` a second, spread over each millisecond and
/// catching up when the publisher falls behind; returns the rate reached once every publish
/// is acknowledged. Acks are awaited as they come: the client holds publishes back while too
/// many await theirs.
async fn publish_paced(js: &jetstream::Context, payloads: Vec<Bytes>, rate: usize) -> f64 {
    let (ack_tx, mut ack_rx) =
        tokio::sync::mpsc::unbounded_channel::<jetstream::context::PublishAckFuture>();
    let acker = tokio::spawn(async move {
        while let Some(a) = ack_rx.recv().await {
            a.await.expect("ack");
        }
    });
    let total = payloads.len();
    let mut payloads = payloads.into_iter();
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut sent = 0;
    while sent < total {
        tick.tick().await;
        let due = ((started.elapsed().as_secs_f64() * rate as f64).ceil() as usize).min(total);
        for p in payloads.by_ref().take(due - sent) {
            let ack = js.publish("txn.in", p).await.expect("publish");
            ack_tx.send(ack).expect("acker runs");
        }
        sent = sent.max(due);
    }
    let sent_per_s = total as f64 / started.elapsed().as_secs_f64();
    drop(ack_tx);
    acker.await.expect("acker");
    sent_per_s
}

/// Waits until the output stream holds `n` messages (a case that stops short fails here rather
/// than hanging or measuring part of its events).
async fn wait_for_outputs(js: &jetstream::Context, n: usize) {
    let got = wait_for_len(js, "OUT", n as u64, Duration::from_secs(300)).await;
    assert_eq!(got, n as u64, "outputs after 5 minutes");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // As the `eddy` binary runs: no transparent huge pages.
    eddy_host::no_huge_page_churn();
    let quick = std::env::args().any(|a| a == "--quick");
    let (mut n, rate, secs) = if quick {
        (20_000, 1_000, 2)
    } else {
        (100_000, 2_000, 5)
    };
    // `-- --events N`: events of the throughput phase; `-- --no-load`: no phase under load
    // (with `--only`, a profile of the throughput phase alone).
    if let Some(events) = arg_after("--events") {
        n = events.parse().expect("--events takes a count");
    }
    let under_load = !std::env::args().any(|a| a == "--no-load");
    // `-- --only relay|pass|fraud`: one case alone (for profiling); without the relay, ratios read "n/a".
    let only = only_arg();
    let cases: Vec<Case> = [Case::Relay, Case::Passthrough, Case::Fraud]
        .into_iter()
        .filter(|case| only.as_deref().is_none_or(|o| case.name().contains(o)))
        .collect();
    let load_secs = if quick { 4 } else { 10 };
    if let Some(rate) = rate_arg() {
        fixed_load(&cases, rate, load_secs).await;
        return;
    }
    let mut rows = Vec::new();
    for &case in &cases {
        let r = measure(case, n, rate, secs).await;
        if case == Case::Relay {
            eprintln!("{}: {:.0} events/s", case.name(), r.events_per_s);
        } else {
            eprintln!(
                "{}: {:.0} events/s, plugin calls busy {:.0}% of the time, {:.0} events per call",
                case.name(),
                r.events_per_s,
                r.call_busy * 100.0,
                r.mean_batch
            );
        }
        rows.push((case, r));
    }
    // Latency at a half and a quarter of each case's own peak, a checkpoint every second.
    let mut loaded = Vec::new();
    for share in [2.0, 4.0] {
        for (case, r) in rows.iter().filter(|_| under_load) {
            let rate = (r.events_per_s / share) as usize;
            let l = latency_under_load(*case, rate, load_secs).await;
            eprintln!(
                "{} at {rate}/s: p99 {:.2} ms, {} checkpoints",
                case.name(),
                l.p99_ms,
                l.checkpoints
            );
            loaded.push((*case, share, rate, l));
        }
    }
    let base = match rows.first() {
        Some((Case::Relay, r)) => r.events_per_s,
        _ => f64::NAN,
    };
    println!(
        "\nEnd-to-end over nats-server ({n} events pre-published for throughput; {rate}/s for {secs} s for latency)\n"
    );
    println!(
        "| case | events/s | vs relay | CPU µs/event: host | nats-server | p50 latency ms | p99 latency ms |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (case, r) in &rows {
        println!(
            "| {} | {:.0} | {} | {:.1} | {:.1} | {:.2} | {:.2} |",
            case.name(),
            r.events_per_s,
            if base.is_finite() {
                format!("{:.2}", r.events_per_s / base)
            } else {
                "n/a".to_string()
            },
            r.host_us,
            r.server_us,
            r.p50_ms,
            r.p99_ms
        );
    }
    println!(
        "\nLatency at a half and a quarter of each case's peak above, a checkpoint every second ({load_secs} s, fresh server; the publisher runs in this process)\n"
    );
    println!(
        "| case | load | asked events/s | sent events/s | p50 ms | p99 ms | max ms | checkpoints | longest cut pause ≤ ms |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for (case, share, rate, l) in &loaded {
        let pause = if *case == Case::Relay {
            "n/a".to_string()
        } else {
            format!("{:.1}", l.cut_pause_max_ms)
        };
        println!(
            "| {} | 1/{share} | {rate} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {pause} |",
            case.name(),
            l.sent_per_s,
            l.p50_ms,
            l.p99_ms,
            l.max_ms,
            l.checkpoints
        );
    }
}

/// The argument after `flag`, if given.
fn arg_after(flag: &str) -> Option<String> {
    std::env::args().skip_while(|a| a != flag).nth(1)
}

/// `-- --rate N`: events/s of the latency phase, run alone.
fn rate_arg() -> Option<usize> {
    arg_after("--rate").map(|n| n.parse().expect("--rate takes events per second"))
}

/// The latency phase alone, every case at the same `rate`, a checkpoint every second.
async fn fixed_load(cases: &[Case], rate: usize, secs: u64) {
    let mut loaded = Vec::new();
    for &case in cases {
        let l = latency_under_load(case, rate, secs).await;
        eprintln!("{} at {rate}/s: p99 {:.2} ms", case.name(), l.p99_ms);
        loaded.push((case, l));
    }
    println!(
        "\nLatency at {rate} events/s, a checkpoint every second ({secs} s, fresh server; the publisher runs in this process)\n"
    );
    println!(
        "| case | sent events/s | p50 ms | p99 ms | max ms | checkpoints | longest cut pause ≤ ms |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (case, l) in &loaded {
        let pause = if *case == Case::Relay {
            "n/a".to_string()
        } else {
            format!("{:.2}", l.cut_pause_max_ms)
        };
        println!(
            "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {pause} |",
            case.name(),
            l.sent_per_s,
            l.p50_ms,
            l.p99_ms,
            l.max_ms,
            l.checkpoints,
        );
    }
}
