//! Events/s of the fraud enrichment and the dedupe filter in each guest language, through the
//! same in-process worker as `benches/engine.rs` (plugin call + keyed state + RocksDB commit
//! per batch), as a ratio to the Rust plugin measured in the same run.
//!
//! Run: `cargo bench --profile dev -p eddy-tests --bench languages` (`-- --quick` for a short
//! run). Components come from `scripts/guests/<lang>.sh` (the README's test command builds
//! them); a language whose component is missing is listed as such. `-- --only <lang>` runs one
//! language beside Rust; with `EDDY_WASM_PROFILE=perfmap`, `perf` names the guests' functions.

use eddy_tests::bench::{only_arg, transactions, worker_rate};
use eddy_tests::{plugin, plugin_target_dir};

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    // `-- --only c`: one guest language beside Rust (for profiling).
    let only = only_arg();
    let n = if quick { 20_000 } else { 100_000 };
    let txs = transactions(n);
    println!("\nGuest languages: {n} transactions, 10,000 keys, 256 events per call, one core\n");
    println!("| plugin | language | component | events/s | vs Rust |");
    println!("|---|---|---:|---:|---:|");
    for (name, config) in [("fraud-enrich", "{}"), ("dedupe-filter", "{}")] {
        let rust = plugin(name);
        let base = worker_rate(&rust, config, &txs, 256);
        let base_eps = base.events as f64 / base.secs;
        let size = |p: &std::path::Path| {
            std::fs::metadata(p)
                .map(|m| format!("{} KB", m.len() / 1024))
                .unwrap_or_default()
        };
        println!("| {name} | Rust | {} | {base_eps:.0} | 1.00 |", size(&rust));
        for lang in ["js", "python", "go", "c"] {
            if only.as_deref().is_some_and(|o| o != lang) {
                continue;
            }
            let wasm = plugin_target_dir()
                .join("guests")
                .join(format!("{name}-{lang}.wasm"));
            if !wasm.is_file() {
                println!("| {name} | {lang} | missing: run scripts/guests/{lang}.sh | | |");
                continue;
            }
            let r = worker_rate(&wasm, config, &txs, 256);
            let eps = r.events as f64 / r.secs;
            println!(
                "| {name} | {lang} | {} | {eps:.0} | {:.2} |",
                size(&wasm),
                eps / base_eps
            );
        }
    }
}
