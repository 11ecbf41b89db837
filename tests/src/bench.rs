//! Shared by the benchmarks: in-process rates (`benches/engine.rs`, `benches/languages.rs`),
//! process CPU, and the median and spread of repeated rounds.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use eddy_host::engine::{Engine, Event, InstanceContext, Limits, Prefetched};
use eddy_host::engine::{Planner, Worker};
use eddy_host::metrics::Metrics;
use eddy_host::state::{KeyedAccess, StateKind, StateStore, StoreOptions, SystemClock};

/// What follows `--only` on a benchmark's command line: the one case to run (for
/// profiling).
pub fn only_arg() -> Option<String> {
    std::env::args().skip_while(|a| a != "--only").nth(1)
}

/// The median of `v` (the mean of the two middle values of an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    (v[(n - 1) / 2] + v[n / 2]) / 2.0
}

/// The lowest and highest of `ratios`.
pub fn spread(ratios: &[f64]) -> (f64, f64) {
    (
        ratios.iter().copied().fold(f64::INFINITY, f64::min),
        ratios.iter().copied().fold(0.0, f64::max),
    )
}

/// CPU time used so far by process `pid` (all its live threads), from Linux's
/// `/proc/<pid>/task/*/schedstat` (nanoseconds on the CPU). Zero where that is unreadable.
pub fn cpu_time(pid: u32) -> std::time::Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return std::time::Duration::ZERO;
    };
    let ns: u64 = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    std::time::Duration::from_nanos(ns)
}

/// CPU time used so far by process `pid`, user and system, threads that have exited
/// included (`/proc/<pid>/stat`, in clock ticks of 10 ms): for a host measured over many
/// seconds, whose blocking threads come and go, where [`cpu_time`] sees only live threads.
/// Zero where that is unreadable.
pub fn process_cpu_time(pid: u32) -> std::time::Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return std::time::Duration::ZERO;
    };
    // After the command name in parentheses, utime and stime are the 12th and 13th fields.
    let ticks: u64 = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse::<u64>().ok())
        .sum();
    // Linux's clock tick (`getconf CLK_TCK`) is 1/100 s.
    std::time::Duration::from_millis(ticks * 10)
}

/// `n` events over `keys` keys (`c-<i % keys>`), payloads from `payload(i)`.
pub fn events(n: usize, keys: usize, payload: impl Fn(usize) -> Vec<u8>) -> Vec<Event> {
    (0..n)
        .map(|i| Event {
            key: format!("c-{}", i % keys).into_bytes(),
            subject: "txn.in".into(),
            headers: Vec::new(),
            payload: payload(i),
            timestamp_ms: 1_700_000_000_000 + i as u64,
            sequence: i as u64 + 1,
        })
        .collect()
}

/// Card transactions over 10,000 customers, amounts and merchants varying.
pub fn transactions(n: usize) -> Vec<Event> {
    events(n, 10_000, |i| {
        format!(
            r#"{{"id":"tx-{i}","customer":"c-{}","amount_cents":{},"merchant":"m-{}","category":"grocery","ts":{}}}"#,
            i % 10_000,
            100 + i % 5_000,
            i % 50,
            1_700_000_000_000u64 + i as u64 * 1000
        )
        .into_bytes()
    })
}

/// How fast a worker ran a plugin over events.
pub struct Rate {
    /// Events handled.
    pub events: usize,
    /// Plugin calls made.
    pub calls: usize,
    /// Seconds taken.
    pub secs: f64,
}

/// Runs `evs` through one worker of the component at `wasm` (fresh state, compiled
/// beforehand, 20 batches of warm-up), `batch` events per call, each batch's writes
/// committed to RocksDB.
pub fn worker_rate(wasm: &Path, config: &str, evs: &[Event], batch: usize) -> Rate {
    worker_rate_on(wasm, config, evs, batch, store_options(), |_| {})
}

/// The store options a pipeline opens its live state with: no write-ahead log, hot values
/// at their default size.
pub fn store_options() -> StoreOptions {
    StoreOptions {
        write_ahead_log: false,
        ..StoreOptions::default()
    }
}

/// The host's share of one keyed read + write per event, without a plugin: per batch of
/// `batch` events, a value read and a value write of 8 bytes through the batch overlay,
/// then one commit. The floor under the plugin rows of the engine benchmark.
pub fn state_rate(evs: &[Event], batch: usize) -> Rate {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = StateStore::open_with(dir.path(), 128, Arc::new(SystemClock), store_options())
        .expect("state");
    let info = state
        .open_state("count", StateKind::Value, None)
        .expect("open state");
    let kgs: Vec<u16> = evs.iter().map(|e| state.key_group(&e.key)).collect();
    timed_batches(evs, &kgs, batch, |evs, kgs| {
        let mut b = state.batch();
        let mut access = KeyedAccess::new(&state, &mut b);
        for (e, kg) in evs.iter().zip(kgs) {
            let n = access
                .value_get(&info, *kg, &e.key)
                .expect("read")
                .and_then(|v| v.try_into().ok())
                .map(u64::from_le_bytes)
                .unwrap_or(0);
            access.value_set(&info, *kg, &e.key, &(n + 1).to_le_bytes());
        }
        state.commit(b).expect("commit");
    })
}

/// Runs `run` on `evs` (with their key groups `kgs`) `batch` at a time: 20 batches of
/// warm-up, then every batch timed.
fn timed_batches(
    evs: &[Event],
    kgs: &[u16],
    batch: usize,
    mut run: impl FnMut(&[Event], &[u16]),
) -> Rate {
    for (c, k) in evs.chunks(batch).zip(kgs.chunks(batch)).take(20) {
        run(c, k);
    }
    let started = Instant::now();
    let mut calls = 0;
    for (c, k) in evs.chunks(batch).zip(kgs.chunks(batch)) {
        run(c, k);
        calls += 1;
    }
    Rate {
        events: evs.len(),
        calls,
        secs: started.elapsed().as_secs_f64(),
    }
}

/// [`worker_rate`] on a state opened with `options` that `setup` prepared first.
pub fn worker_rate_on(
    wasm: &Path,
    config: &str,
    evs: &[Event],
    batch: usize,
    options: StoreOptions,
    setup: impl FnOnce(&StateStore),
) -> Rate {
    let (rate, failed) = rate_counting_failures(wasm, config, evs, batch, options, PIPELINE, setup);
    assert_eq!(failed, 0, "{}: all events succeed", wasm.display());
    rate
}

/// [`worker_rate`] with the `keyed-state` batch calls off: the plugin's value and list state
/// crosses the component boundary once per read and write, as before the batch calls.
pub fn worker_rate_single_calls(wasm: &Path, config: &str, evs: &[Event], batch: usize) -> Rate {
    let crossing = Crossing {
        batch_calls: false,
        ..PIPELINE
    };
    rate_all_succeeding(wasm, config, evs, batch, crossing)
}

/// [`worker_rate`] with batches crossing as `handler.handle(list<event>)` rather than packed
/// (`handle-packed`), as for a plugin that does not export `packed-handler`.
pub fn worker_rate_listed_batches(wasm: &Path, config: &str, evs: &[Event], batch: usize) -> Rate {
    let crossing = Crossing {
        packed_batches: false,
        ..PIPELINE
    };
    rate_all_succeeding(wasm, config, evs, batch, crossing)
}

fn rate_all_succeeding(
    wasm: &Path,
    config: &str,
    evs: &[Event],
    batch: usize,
    crossing: Crossing,
) -> Rate {
    let (rate, failed) =
        rate_counting_failures(wasm, config, evs, batch, store_options(), crossing, |_| {});
    assert_eq!(failed, 0, "{}: all events succeed", wasm.display());
    rate
}

/// [`worker_rate`] over events some of which fail (they would be dead-lettered): the rate,
/// and how many failed (warm-up batches not counted).
pub fn worker_rate_with_failures(
    wasm: &Path,
    config: &str,
    evs: &[Event],
    batch: usize,
) -> (Rate, usize) {
    rate_counting_failures(wasm, config, evs, batch, store_options(), PIPELINE, |_| {})
}

/// How a plugin's state and batches cross the component boundary: the `keyed-state` batch
/// calls, and batches packed for `handle-packed` (both on in a pipeline).
#[derive(Clone, Copy)]
struct Crossing {
    batch_calls: bool,
    packed_batches: bool,
}

/// As a pipeline runs plugins.
const PIPELINE: Crossing = Crossing {
    batch_calls: true,
    packed_batches: true,
};

fn rate_counting_failures(
    wasm: &Path,
    config: &str,
    evs: &[Event],
    batch: usize,
    options: StoreOptions,
    crossing: Crossing,
    setup: impl FnOnce(&StateStore),
) -> (Rate, usize) {
    let (_dir, state, mut worker, _) = bench_worker(wasm, config, options, crossing, setup);
    let kgs: Vec<u16> = evs.iter().map(|e| state.key_group(&e.key)).collect();
    let none = Arc::default();
    let mut failed = 0;
    let mut calls = 0;
    let rate = timed_batches(evs, &kgs, batch, |c, k| {
        let r = worker.handle(c, k, &none).expect("run");
        calls += 1;
        if calls > 20 {
            failed += r.iter().filter(|r| r.is_err()).count();
        }
    });
    (rate, failed)
}

/// [`worker_rate`] for a plugin that plans lookups: per batch, its `prepare` call, the
/// planned keys answered by `answer(store, key)` and handed over as the pipeline hands over
/// what it fetched, then `handle`. What lookups cost in process, without a store.
pub fn worker_rate_with_lookups(
    wasm: &Path,
    config: &str,
    evs: &[Event],
    batch: usize,
    answer: impl Fn(&str, &str) -> Option<Vec<u8>>,
) -> Rate {
    let (_dir, state, mut worker, planner) =
        bench_worker(wasm, config, store_options(), PIPELINE, |_| {});
    let mut planner = planner.expect("the plugin exports lookup-planner");
    let kgs: Vec<u16> = evs.iter().map(|e| state.key_group(&e.key)).collect();
    let mut failed = 0;
    let mut planned = 0;
    let rate = timed_batches(evs, &kgs, batch, |c, k| {
        let mut answers = Prefetched::new();
        for r in planner.prepare(c).into_iter().flatten() {
            planned += 1;
            let value = answer(&r.store, &r.key);
            answers.insert((r.store, r.key), Ok(value));
        }
        let r = worker.handle(c, k, &Arc::new(answers)).expect("run");
        failed += r.iter().filter(|r| r.is_err()).count();
    });
    assert_eq!(failed, 0, "{}: all events succeed", wasm.display());
    assert!(planned > 0, "{}: the plugin plans lookups", wasm.display());
    rate
}

/// A worker for `wasm` over a fresh state store (in the returned directory), and the
/// planner instance the pipeline gives a plugin that exports `lookup-planner`.
fn bench_worker(
    wasm: &Path,
    config: &str,
    options: StoreOptions,
    crossing: Crossing,
    setup: impl FnOnce(&StateStore),
) -> (tempfile::TempDir, Arc<StateStore>, Worker, Option<Planner>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = Arc::new(
        StateStore::open_with(dir.path(), 128, Arc::new(SystemClock), options).expect("state"),
    );
    setup(&state);
    // `EDDY_BENCH_ENGINE_CACHE`: a compilation cache kept between runs (so that a run under
    // valgrind loads what a native run compiled).
    let cache = std::env::var_os("EDDY_BENCH_ENGINE_CACHE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| dir.path().join("cache"));
    let engine = Engine::new(Some(&cache)).expect("engine");
    let p = engine.load_file(wasm).expect("plugin");
    // `EDDY_BENCH_CPU_MS_PER_EVENT`: the plugin's CPU budget per event. Under valgrind a
    // batch of a slow guest (Python, ~4 ms an event there) comes near the default's one-second
    // cap on a call; past it, the worker re-runs the batch event by event, and the
    // instructions counted would be those of both runs.
    let cpu_per_event = std::env::var("EDDY_BENCH_CPU_MS_PER_EVENT")
        .ok()
        .map(|ms| {
            let ms = ms.parse().unwrap_or_else(|_| {
                panic!("EDDY_BENCH_CPU_MS_PER_EVENT={ms}: a whole number of milliseconds")
            });
            std::time::Duration::from_millis(ms)
        })
        .unwrap_or(Limits::default().cpu_per_event);
    let ctx = InstanceContext {
        state: state.clone(),
        limits: Limits {
            memory_bytes: 512 << 20,
            cpu_per_event,
        },
        lookups: None,
        batch_calls: crossing.batch_calls,
        packed_batches: crossing.packed_batches,
    };
    let planner = Planner::new(&p, &ctx, config).expect("planner");
    let worker = Worker::new(p, ctx, config.to_string(), Metrics::new("bench")).expect("worker");
    (dir, state, worker, planner)
}

/// A process's resident memory now and at its peak, MiB, from its `status` file in `/proc`
/// (`/proc/self/status` for this one); NaN where it cannot be read.
pub fn rss_mib(status_file: &str) -> (f64, f64) {
    let status = std::fs::read_to_string(status_file).unwrap_or_default();
    let field = |name: &str| -> f64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}
