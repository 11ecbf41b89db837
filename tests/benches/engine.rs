//! In-process engine benchmark, no NATS: plugin calls/s and events/s through the worker
//! (plugin call + keyed state + RocksDB commit per batch), on one core.
//!
//! Baseline, same process: the pass-through plugin called once per event (one component
//! call per event, the "raw wasmtime call" cost). Every other row is a ratio to it.
//!
//! Run: `cargo bench --profile dev -p eddy-tests --bench engine` (add `-- --quick` for a short
//! run; `-- --only <plugin>` for one plugin's rows, e.g. under `perf record`). The dev profile
//! optimises dependencies and the host and shares the cached RocksDB build.

eddy_tests::host_allocator!();

use eddy_host::engine::Event;
use eddy_tests::bench::{
    events, only_arg, state_rate, store_options, transactions, worker_rate,
    worker_rate_listed_batches, worker_rate_on, worker_rate_single_calls,
    worker_rate_with_failures,
};
use eddy_tests::plugin;

struct Row {
    name: String,
    events: usize,
    calls: usize,
    secs: f64,
}

fn run(name: &str, plugin_name: &str, config: &str, evs: &[Event], batch: usize) -> Row {
    // `-- --only <plugin>`: the other rows run nothing and are not printed.
    if only_arg().is_some_and(|o| o != plugin_name) {
        return Row {
            name: name.to_string(),
            events: 0,
            calls: 0,
            secs: 1.0,
        };
    }
    let r = worker_rate(&plugin(plugin_name), config, evs, batch);
    Row {
        name: name.to_string(),
        events: r.events,
        calls: r.calls,
        secs: r.secs,
    }
}

fn main() {
    // As the `eddy` binary runs: no transparent huge pages.
    eddy_host::no_huge_page_churn();
    let quick = std::env::args().any(|a| a == "--quick");
    let n = if quick { 50_000 } else { 400_000 };
    let txs = transactions(n);
    let chaos = events(n, 10_000, |i| {
        format!(r#"{{"k":"c-{}","action":"count"}}"#, i % 10_000).into_bytes()
    });
    let small = events(n, 10_000, |_| b"{}".to_vec());

    let rows = [
        run(
            "pass-through, 1 event per call (baseline)",
            "passthrough",
            "{}",
            &small[..n / 4],
            1,
        ),
        run("pass-through, 64 per call", "passthrough", "{}", &small, 64),
        run(
            "pass-through, 256 per call",
            "passthrough",
            "{}",
            &small,
            256,
        ),
        run(
            "pass-through, 1024 per call",
            "passthrough",
            "{}",
            &small,
            1024,
        ),
        run(
            "keyed state: 1 read + 1 write per event, 256 per call (counter)",
            "counter",
            "{}",
            &chaos,
            256,
        ),
        run(
            "same, plus a JSON parse and a header per event (chaos `count`)",
            "chaos",
            "{}",
            &chaos,
            256,
        ),
        {
            let r = state_rate(&chaos, 256);
            Row {
                name: "host only, no plugin: 1 read + 1 write per event, 256 per commit".into(),
                events: r.events,
                calls: r.calls,
                secs: r.secs,
            }
        },
        run(
            "fraud-enrich (2 reads + 2 writes, JSON), 256 per call",
            "fraud-enrich",
            "{}",
            &txs,
            256,
        ),
    ];
    // With `--only` and the baseline not run, ratios are left out.
    let base = rows[0].events as f64 / rows[0].secs;
    let ratio = |eps: f64| {
        if base > 0.0 {
            format!("{:.2}x", eps / base)
        } else {
            "n/a".to_string()
        }
    };
    println!(
        "\nIn-process engine benchmark ({n} events, 10,000 keys, one core, state committed per call)\n"
    );
    println!("| case | events/s | calls/s | µs/event | vs baseline |");
    println!("|---|---:|---:|---:|---:|");
    for r in rows.iter().filter(|r| r.events > 0) {
        let eps = r.events as f64 / r.secs;
        println!(
            "| {} | {:.0} | {:.0} | {:.2} | {} |",
            r.name,
            eps,
            r.calls as f64 / r.secs,
            1e6 / eps,
            ratio(eps)
        );
    }
    // One event that loops forever, about once a second: each costs its own CPU budget
    // (100 ms) and a re-run of its batch one event at a time; the rest of the stream flows.
    if only_arg().is_none_or(|o| o == "chaos") {
        let clean = &rows[5];
        let clean_eps = clean.events as f64 / clean.secs;
        let every = (clean_eps as usize).max(256);
        // Five of them (four with `--quick`), over about as many seconds.
        let looping_n = every * if quick { 4 } else { 5 };
        let looping = events(looping_n, 10_000, |i| {
            if i % every == every / 2 {
                br#"{"action":"loop"}"#.to_vec()
            } else {
                format!(r#"{{"k":"c-{}","action":"count"}}"#, i % 10_000).into_bytes()
            }
        });
        let (r, failed) = worker_rate_with_failures(&plugin("chaos"), "{}", &looping, 256);
        let eps = r.events as f64 / r.secs;
        println!(
            "\n| chaos `count`, 256 per call | events/s | looping events | looping events/s | ratio |"
        );
        println!("|---|---:|---:|---:|---:|");
        println!("| no looping event (baseline) | {clean_eps:.0} | 0 | 0 | 1.00 |");
        println!(
            "| one looping event every {every} events | {eps:.0} | {failed} | {:.2} | {:.2} |",
            failed as f64 / r.secs,
            eps / clean_eps
        );
    }

    // The keyed-state batch calls (value and list state read once per state and batch,
    // written once at its end) off vs on, same run, alternating (A B B A).
    let batch_rows = [
        ("counter (1 read + 1 write)", "counter", &chaos),
        ("chaos `count` (1 read + 1 write, JSON)", "chaos", &chaos),
        (
            "fraud-enrich (2 reads + 2 writes, JSON)",
            "fraud-enrich",
            &txs,
        ),
    ];
    alternating(
        &batch_rows,
        "| 256 per call | single calls, events/s | batch calls, events/s | batch / single |",
        worker_rate_single_calls,
    );

    // Batches crossing as `list<event>` (`handle`) vs packed (`handle-packed`), same run,
    // alternating (A B B A).
    let packed_rows = [
        ("pass-through", "passthrough", &small),
        ("counter (1 read + 1 write)", "counter", &chaos),
        (
            "fraud-enrich (2 reads + 2 writes, JSON)",
            "fraud-enrich",
            &txs,
        ),
    ];
    alternating(
        &packed_rows,
        "| 256 per call | list<event>, events/s | packed, events/s | packed / list |",
        worker_rate_listed_batches,
    );

    // Hot values (state::hot) off vs on, same run, alternating (A B B A) as below.
    if only_arg().is_some() {
        return;
    }
    println!(
        "\n| hot values (and deferred writes), 256 per call | off, events/s | on, events/s | on / off |"
    );
    println!("|---|---:|---:|---:|");
    for (name, plugin_name, evs) in [
        ("counter (1 read + 1 write)", "counter", &chaos),
        ("fraud-enrich", "fraud-enrich", &txs),
    ] {
        let wasm = plugin(plugin_name);
        let (mut off, mut on) = (Vec::new(), Vec::new());
        for hot in [false, true, true, false] {
            let mut options = store_options();
            if !hot {
                options.hot_values_bytes = 0;
            }
            let r = worker_rate_on(&wasm, "{}", evs, 256, options, |_| {});
            let eps = r.events as f64 / r.secs;
            if hot { on.push(eps) } else { off.push(eps) }
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let (a, b) = (mean(&off), mean(&on));
        println!("| {name} | {a:.0} | {b:.0} | {:.2} |", b / a);
    }

    // TTL overhead: dedupe-filter (map contains + put per event) with and without a TTL on
    // its map. Runs alternate (A B B A A B) so drift in the machine's state (RocksDB
    // background work, page cache) falls on both sides alike; means are compared.
    let (mut plain, mut ttl) = (Vec::new(), Vec::new());
    for with_ttl in [false, true, true, false, false, true] {
        let config = if with_ttl {
            r#"{"ttl_ms":86400000}"#
        } else {
            "{}"
        };
        let r = run("dedupe", "dedupe-filter", config, &txs, 256);
        let eps = r.events as f64 / r.secs;
        if with_ttl {
            ttl.push(eps);
        } else {
            plain.push(eps);
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (p, t) = (mean(&plain), mean(&ttl));
    println!("\n| dedupe-filter, 256 per call | events/s (mean of 3 runs) |");
    println!("|---|---:|");
    println!("| map state without TTL | {p:.0} |");
    println!("| map state with TTL (1 day) | {t:.0} |");
    println!("\nTTL overhead, same run: {:+.1}%", (p / t - 1.0) * 100.0);
}

/// One table row per `(name, plugin, events)` (those `--only` leaves): the plugin run by
/// `other` and as a pipeline runs it (`worker_rate`), 256 events per call, alternating
/// other, pipeline, pipeline, other; the means and their ratio.
fn alternating(
    rows: &[(&str, &str, &Vec<Event>)],
    header: &str,
    other: fn(&std::path::Path, &str, &[Event], usize) -> eddy_tests::bench::Rate,
) {
    let wanted: Vec<_> = rows
        .iter()
        .filter(|(_, p, _)| only_arg().is_none_or(|o| o == *p))
        .collect();
    if wanted.is_empty() {
        return;
    }
    println!("\n{header}");
    println!("|---|---:|---:|---:|");
    for (name, plugin_name, evs) in wanted {
        let wasm = plugin(plugin_name);
        let (mut others, mut pipeline) = (Vec::new(), Vec::new());
        for as_pipeline in [false, true, true, false] {
            let r = if as_pipeline {
                worker_rate(&wasm, "{}", evs, 256)
            } else {
                other(&wasm, "{}", evs, 256)
            };
            let eps = r.events as f64 / r.secs;
            if as_pipeline {
                pipeline.push(eps)
            } else {
                others.push(eps)
            }
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let (a, b) = (mean(&others), mean(&pipeline));
        println!("| {name} | {a:.0} | {b:.0} | {:.2} |", b / a);
    }
}
