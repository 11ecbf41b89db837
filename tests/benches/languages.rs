//! Events/s of the fraud enrichment and the dedupe filter in each guest language, through the
//! same in-process worker as `benches/engine.rs` (plugin call + keyed state + RocksDB commit
//! per batch), as a ratio to the Rust plugin measured in the same run.
//!
//! The machine's speed drifts by 10-20% within minutes, which moves single-shot ratios by as
//! much. So each language runs in rounds paired with a fresh Rust run (Rust, then the
//! language, alternately), and the table shows the median of the rounds' rates and ratios with
//! the lowest and highest ratio beside it.
//!
//! Run: `cargo bench --profile dev -p eddy-tests --bench languages` (`-- --quick` for a short
//! run). Components come from `scripts/guests/<lang>.sh` (the README's test command builds
//! them); a language whose component is missing is listed as such. `-- --only <lang>` runs one
//! language beside Rust; with `EDDY_WASM_PROFILE=perfmap`, `perf` names the guests' functions.
//! `-- --one <plugin> <lang> <list|packed|lookups> <events>` runs one component once
//! (`lookups`: packed, with a profile lookup per event planned and answered in memory), for
//! `valgrind --tool=callgrind --smc-check=all`: two event counts, subtracted, give its
//! instructions per event, which this machine's drifting speed does not move. With
//! `EDDY_BENCH_ENGINE_CACHE=<dir>` the compiled component is kept between runs: compile it in
//! a native run first, or valgrind spends most of its time in the compiler; with
//! `EDDY_BENCH_CPU_MS_PER_EVENT=60000` a batch slowed down by valgrind is not cut by the
//! plugin's CPU budget and re-run event by event (a Python batch there takes about the one
//! second a call may). The first 20 batches run twice (a warm-up, as in every rate here): two
//! event counts of at least 5,120 each cancel it; below that, every event is counted twice.

eddy_tests::host_allocator!();

use eddy_tests::bench::{
    median, only_arg, spread, transactions, worker_rate, worker_rate_listed_batches,
    worker_rate_single_calls, worker_rate_with_lookups,
};
use eddy_tests::{plugin, plugin_target_dir};

/// One way of running a component over events (a batch size), as the bench helpers do.
type Measure =
    fn(&std::path::Path, &str, &[eddy_host::engine::Event], usize) -> eddy_tests::bench::Rate;

/// Paired rounds per language.
const ROUNDS: usize = 3;

/// The component of `name` in `lang` ("Rust"/"rust": the Rust sample; otherwise built by
/// `scripts/guests/<lang>.sh`).
fn component(name: &str, lang: &str) -> std::path::PathBuf {
    if lang.eq_ignore_ascii_case("rust") {
        plugin(name)
    } else {
        plugin_target_dir()
            .join("guests")
            .join(format!("{name}-{lang}.wasm"))
    }
}

/// `ROUNDS` paired runs of `a` then `b` (events/s each): the rates of `a`, of `b`, and b / a.
fn paired(a: impl Fn() -> f64, b: impl Fn() -> f64) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (mut first, mut second, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let (x, y) = (a(), b());
        first.push(x);
        second.push(y);
        ratios.push(y / x);
    }
    (first, second, ratios)
}

fn main() {
    // As the `eddy` binary runs: no transparent huge pages.
    eddy_host::no_huge_page_churn();
    let quick = std::env::args().any(|a| a == "--quick");
    // `-- --only c`: one guest language beside Rust (for profiling).
    let only = only_arg();
    let n = if quick { 20_000 } else { 100_000 };
    // `-- --one <plugin> <lang> <list|packed|lookups> <events>`: one run of one component,
    // for counting its instructions (`valgrind --tool=callgrind`), which, unlike the rates,
    // do not move with the machine's speed.
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--one") {
        let [name, lang, crossing, events] = &args[at + 1..at + 5] else {
            panic!("--one takes <plugin> <lang> <list|packed|lookups> <events>");
        };
        let wasm = component(name, lang);
        let txs = transactions(events.parse().expect("a number of events"));
        let r = match crossing.as_str() {
            "list" => worker_rate_listed_batches(&wasm, "{}", &txs, 256),
            "packed" => worker_rate(&wasm, "{}", &txs, 256),
            // Packed, with the customer's profile planned in `prepare` and answered from
            // memory: the in-process cost of a lookup per event.
            "lookups" => worker_rate_with_lookups(
                &wasm,
                r#"{"profiles": "profiles"}"#,
                &txs,
                256,
                |_, key| Some(format!(r#"{{"segment":"s{}"}}"#, key.len() % 7).into_bytes()),
            ),
            other => panic!("--one: `{other}` is neither list, packed nor lookups"),
        };
        println!(
            "{name} {lang} {crossing}: {} events in {:.3} s",
            r.events, r.secs
        );
        return;
    }
    let txs = transactions(n);
    println!(
        "\nGuest languages: {n} transactions, 10,000 keys, 256 events per call, one core; \
         median of {ROUNDS} rounds, each paired with a Rust run\n"
    );
    println!("| plugin | language | component | events/s | vs Rust | lowest..highest |");
    println!("|---|---|---:|---:|---:|---:|");
    let size = |p: &std::path::Path| {
        std::fs::metadata(p)
            .map(|m| format!("{} KB", m.len() / 1024))
            .unwrap_or_default()
    };
    // Events/s of one run of `wasm`, measured by `measure` (the pipeline's crossing, or one
    // with a part of it off).
    let rate_by = |measure: Measure, wasm: &std::path::Path, config: &str| {
        let r = measure(wasm, config, &txs, 256);
        r.events as f64 / r.secs
    };
    let rate = |wasm: &std::path::Path, config: &str| rate_by(worker_rate, wasm, config);
    for (name, config) in [("fraud-enrich", "{}"), ("dedupe-filter", "{}")] {
        let rust = plugin(name);
        let mut rust_rates = Vec::new();
        let mut rows = Vec::new();
        for lang in ["js", "python", "go", "c"] {
            if only.as_deref().is_some_and(|o| o != lang) {
                continue;
            }
            let wasm = component(name, lang);
            if !wasm.is_file() {
                rows.push(format!(
                    "| {name} | {lang} | missing: run scripts/guests/{lang}.sh | | | |"
                ));
                continue;
            }
            let (base, rates, ratios) = paired(|| rate(&rust, config), || rate(&wasm, config));
            rust_rates.extend(base);
            let (lo, hi) = spread(&ratios);
            rows.push(format!(
                "| {name} | {lang} | {} | {:.0} | {:.2} | {lo:.2}..{hi:.2} |",
                size(&wasm),
                median(rates),
                median(ratios),
            ));
        }
        if rust_rates.is_empty() {
            rust_rates.push(rate(&rust, config));
        }
        println!(
            "| {name} | Rust | {} | {:.0} | 1.00 | |",
            size(&rust),
            median(rust_rates)
        );
        for row in rows {
            println!("{row}");
        }
    }

    // The keyed-state batch calls, off (the host answers `batchable` false: one import call
    // per read and write) against on, for the layers that use them (Rust, C and Go; the JS
    // and Python layers were measured slower with them, docs/BENCHMARKS.md), paired rounds,
    // off first.
    println!(
        "\n| fraud-enrich | single calls, events/s | batch calls, events/s | batch / single |"
    );
    println!("|---|---:|---:|---:|");
    for lang in ["Rust", "c", "go"] {
        if only.as_deref().is_some_and(|o| o != lang && lang != "Rust") {
            continue;
        }
        let wasm = component("fraud-enrich", lang);
        if !wasm.is_file() {
            println!("| {lang} | missing: run scripts/guests/{lang}.sh | | |");
            continue;
        }
        let (single, batched, ratios) = paired(
            || rate_by(worker_rate_single_calls, &wasm, "{}"),
            || rate(&wasm, "{}"),
        );
        println!(
            "| {lang} | {:.0} | {:.0} | {:.2} |",
            median(single),
            median(batched),
            median(ratios)
        );
    }

    // Keyed batches handed over as `list<event>` against packed (`handle-packed`), the same
    // component both ways, for the layers that export `packed-handler` (Rust, C and Go),
    // paired rounds, the list first.
    println!(
        "\n| plugin | language | list<event>, events/s | packed, events/s | packed / list | lowest..highest |"
    );
    println!("|---|---|---:|---:|---:|---:|");
    for name in ["fraud-enrich", "dedupe-filter"] {
        for lang in ["Rust", "c", "go"] {
            if only.as_deref().is_some_and(|o| o != lang && lang != "Rust") {
                continue;
            }
            let wasm = component(name, lang);
            if !wasm.is_file() {
                println!("| {name} | {lang} | missing: run scripts/guests/{lang}.sh | | | |");
                continue;
            }
            let (listed, packed, ratios) = paired(
                || rate_by(worker_rate_listed_batches, &wasm, "{}"),
                || rate(&wasm, "{}"),
            );
            let (lo, hi) = spread(&ratios);
            println!(
                "| {name} | {lang} | {:.0} | {:.0} | {:.2} | {lo:.2}..{hi:.2} |",
                median(listed),
                median(packed),
                median(ratios)
            );
        }
    }
}
