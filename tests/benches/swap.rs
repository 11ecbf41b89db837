//! Hot-swap pause for a large component: 20 deploys of the JavaScript fraud enrichment (a
//! 1.8 MB component with its QuickJS runtime) under a steady stream, p50/p99 of the pause each
//! host records, next to the same for the Rust plugin in the same run.
//!
//! Run: `cargo bench --profile dev -p eddy-tests --bench swap` (the JavaScript component comes
//! from `scripts/guests/js.sh`, which the README's test command runs).

eddy_tests::host_allocator!();

use std::time::Duration;

use bytes::Bytes;
use eddy_host::cli::produce;
use eddy_tests::{
    NatsServer, PipelineSpec, Running, create_streams, host_status, plugin, plugin_target_dir,
    variant, wait_deployment,
};

/// A deploy compiles the component before it swaps.
const WITHIN: Duration = Duration::from_secs(120);

/// p50 and p99 swap pauses (µs) over 20 deploys of `wasm`.
async fn swaps(wasm: &std::path::Path) -> (u64, u64, usize) {
    let nats = NatsServer::start().expect("nats-server");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = PipelineSpec::new("swap", &nats.url(), dir.path(), wasm.to_path_buf());
    spec.memory_mb = 256;
    spec.extra = "[reload]\nprobation_events = 20\nprobation_ms = 300\n".into();
    let conn = nats.connect().await.expect("connect");
    create_streams(&conn.js, &spec).await.expect("streams");
    // Compiled components cached in the run's directory: each variant compiles once, off the
    // run loop, before its swap.
    let options = eddy_host::pipeline::RunOptions {
        compile_cache: Some(dir.path().join("compiled")),
        ..Default::default()
    };
    let run = Running::start_with(spec.config(), options);
    let base = std::fs::read(wasm).expect("component");
    wait_deployment(
        &conn,
        "swap",
        &eddy_host::engine::version_of(&base),
        "live",
        1,
        WITHIN,
    )
    .await;

    // A steady stream: 100 transactions every 10 ms until the swaps are done.
    let js = conn.js.clone();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let producer = tokio::spawn(async move {
        let mut seed = 0;
        while !*stop_rx.borrow() {
            let payloads: Vec<Bytes> = produce::transactions(100, 1_000, seed, 0)
                .iter()
                .map(|t| Bytes::from(serde_json::to_vec(t).expect("json")))
                .collect();
            produce::publish(&js, "txn.in", payloads)
                .await
                .expect("publish");
            seed += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    for n in 1..=20u32 {
        let v = eddy_host::reload::deploy(&conn, "eddy-plugins", "swap", &variant(&base, n), "b")
            .await
            .expect("deploy");
        wait_deployment(&conn, "swap", &v, "live", 1, WITHIN).await;
    }
    let _ = stop_tx.send(true);
    producer.await.expect("producer");
    let status = host_status(&conn, "swap", 1).await;
    let mut pauses: Vec<u64> = status[0]["deployments"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["swap_pause_us"].as_u64())
        .collect();
    run.stop().await;
    pauses.sort_unstable();
    let at = |p: f64| pauses[((pauses.len() as f64 * p) as usize).min(pauses.len() - 1)];
    (at(0.5), at(0.99), pauses.len())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // As the `eddy` binary runs: no transparent huge pages.
    eddy_host::no_huge_page_churn();
    let js = plugin_target_dir().join("guests/fraud-enrich-js.wasm");
    let mut rows = vec![("Rust fraud-enrich", plugin("fraud-enrich"))];
    if js.is_file() {
        rows.push(("JavaScript fraud-enrich", js));
    } else {
        println!("JavaScript component missing: run scripts/guests/js.sh");
    }
    println!("\nSwap pause over 20 deploys under a steady stream\n");
    println!("| plugin | component | swaps | p50 µs | p99 µs |");
    println!("|---|---:|---:|---:|---:|");
    for (name, wasm) in rows {
        let size = std::fs::metadata(&wasm)
            .map(|m| m.len() / 1024)
            .unwrap_or(0);
        let (p50, p99, n) = swaps(&wasm).await;
        println!("| {name} | {size} KB | {n} | {p50} | {p99} |");
    }
}
