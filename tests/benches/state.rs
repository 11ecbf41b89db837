//! State at scale, in process: checkpoints of 1M and 10M keys (the cut's pause frozen and
//! written at once, also with the hot working set deferred; duration, size, incremental delta,
//! restore time), the memory the process holds with them, keyed reads of present and absent
//! keys at those sizes against a store of 100,000, and keyed events reading a 1M-entry
//! broadcast table.
//!
//! Run: `cargo bench --profile dev -p eddy-tests --bench state` (`-- --quick`: 100k and 1M keys,
//! a shorter broadcast run; `-- --keys N`: checkpoints of N keys alone; `-- --partitions`: the
//! CPU of a checkpoint a second for one store against sixteen, alone).

eddy_tests::host_allocator!();

use std::sync::Arc;
use std::time::Instant;

use eddy_host::checkpoint::{Checkpoints, Cut};
use eddy_host::state::{BroadcastAccess, KeyedAccess, StateKind, StateStore, SystemClock};
use eddy_tests::bench::{events, store_options, worker_rate_on};
use eddy_tests::plugin;

/// A fraud-like statistics value, as the Rust SDK stores it (compact JSON).
fn stats(i: u64) -> Vec<u8> {
    format!(
        r#"{{"count":{},"sum_cents":{},"max_cents":{},"last_ts":{}}}"#,
        i % 97 + 1,
        i * 13 % 1_000_000,
        i % 50_000,
        1_700_000_000_000u64 + i
    )
    .into_bytes()
}

fn write_keys(store: &StateStore, from: u64, to: u64, salt: u64) {
    let state = store
        .open_state("stats", StateKind::Value, None)
        .expect("state");
    let mut i = from;
    while i < to {
        let mut batch = store.batch();
        let end = (i + 50_000).min(to);
        {
            let mut access = KeyedAccess::new(store, &mut batch);
            for k in i..end {
                let key = format!("c-{k}");
                let kg = store.key_group(key.as_bytes());
                access.value_set(&state, kg, key.as_bytes(), &stats(k ^ salt));
            }
        }
        store.commit(batch).expect("commit");
        i = end;
    }
}

/// Keyed reads/s of `n` keys drawn at random from `0..keys` (present) and from beyond them
/// (absent: a customer seen for the first time), one commit per 256 reads as a batch does.
fn reads(store: &StateStore, keys: u64, n: u64) -> (f64, f64) {
    let state = store
        .open_state("stats", StateKind::Value, None)
        .expect("state");
    let rate = |offset: u64| {
        let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ offset;
        let started = Instant::now();
        let mut found = 0u64;
        for chunk in 0..n.div_ceil(256) {
            let mut batch = store.batch();
            let mut access = KeyedAccess::new(store, &mut batch);
            for _ in 0..256.min(n - chunk * 256) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let key = format!("c-{}", offset + x % keys);
                let kg = store.key_group(key.as_bytes());
                found += u64::from(
                    access
                        .value_get(&state, kg, key.as_bytes())
                        .expect("read")
                        .is_some(),
                );
            }
        }
        let rate = n as f64 / started.elapsed().as_secs_f64();
        (rate, found)
    };
    let (present, found) = rate(0);
    assert_eq!(found, n, "every present key found");
    let (absent, found) = rate(keys);
    assert_eq!(found, 0, "no absent key found");
    (present, absent)
}

/// The process's resident memory now and at its peak, MiB.
fn rss_mib() -> (f64, f64) {
    eddy_tests::bench::rss_mib("/proc/self/status")
}

fn checkpoints(keys: u64) -> (f64, f64) {
    let (rss_before, _) = rss_mib();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("db");
    // As a pipeline opens it: value writes wait in the hot values, and the cut settles them.
    let store =
        StateStore::open_with(&db, 128, Arc::new(SystemClock), store_options()).expect("state");
    let started = Instant::now();
    write_keys(&store, 0, keys, 0);
    store.flush().expect("flush");
    let write_s = started.elapsed().as_secs_f64();
    let read_rates = reads(&store, keys, 100_000);
    let cps = Checkpoints::new(
        &dir.path().join("checkpoints"),
        &dir.path().join("staging"),
        "bench",
        3,
    );
    let first = cps
        .complete(&cps.cut(&store, 1, Cut::default()).expect("cut"))
        .expect("complete");
    // 1% of the keys change, and the whole checkpoint is written while the caller waits:
    // the pause a cut cost before cuts were frozen (the baseline).
    write_keys(&store, 0, keys / 100, 7);
    let started = Instant::now();
    store
        .create_checkpoint(&dir.path().join("at-once"))
        .expect("checkpoint");
    let at_once_ms = started.elapsed().as_secs_f64() * 1000.0;
    // Another 1% change, then the next checkpoint as the run loop takes it: frozen (the
    // pause), then written and completed off the loop.
    write_keys(&store, keys / 100, 2 * keys / 100, 7);
    let started = Instant::now();
    let frozen = cps.freeze(&store, 2, Cut::default()).expect("freeze");
    let frozen_ms = started.elapsed().as_secs_f64() * 1000.0;
    let second = cps
        .complete(&frozen.stage(&store).expect("stage"))
        .expect("complete");
    // What the process holds with the store open, its hot values filled, after two
    // checkpoints: RocksDB's memtables and block cache, the hot values, the allocator's.
    let (rss_open, rss_peak) = rss_mib();
    drop(store);
    let restored = dir.path().join("restored");
    let started = Instant::now();
    cps.restore_newest(&restored)
        .expect("restore")
        .expect("a checkpoint");
    let reopened = StateStore::open(&restored, 128, Arc::new(SystemClock)).expect("reopen");
    let restore_ms = started.elapsed().as_millis();
    let entries = reopened.count_entries().expect("count");
    assert_eq!(entries, keys, "every key restored");
    let mb = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "| {keys} | {write_s:.1} s | {} ms | {} ms | {:.1} MiB | {at_once_ms:.1} ms | {frozen_ms:.1} ms | {:.3} | {} ms | {:.1} MiB ({:.1}%) | {restore_ms} ms | {rss_open:.0} MiB (before: {rss_before:.0}) | {rss_peak:.0} MiB |",
        first.cut_ms,
        first.complete_ms,
        mb(first.total_bytes),
        frozen_ms / at_once_ms.max(0.001),
        second.complete_ms,
        mb(second.new_bytes),
        second.new_bytes as f64 * 100.0 / second.total_bytes.max(1) as f64,
    );
    read_rates
}

/// Reads/s of a store of `keys` keys written and flushed, as [`reads`] measures them.
fn read_baseline(keys: u64) -> (f64, f64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = StateStore::open_with(dir.path(), 128, Arc::new(SystemClock), store_options())
        .expect("state");
    write_keys(&store, 0, keys, 0);
    store.flush().expect("flush");
    reads(&store, keys, 100_000)
}

/// The pause of a cut when the hot working set is still deferred: `keys` keys rewritten three
/// times (so deferring pays and stays on), then a cut written at once in one store and a frozen
/// cut in another, each fresh.
fn hot_cut(keys: u64) {
    let pause = |frozen: bool| {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = StateStore::open_with(
            &dir.path().join("db"),
            128,
            Arc::new(SystemClock),
            store_options(),
        )
        .expect("state");
        for salt in 1..=3 {
            write_keys(&store, 0, keys, salt);
        }
        let cps = Checkpoints::new(
            &dir.path().join("checkpoints"),
            &dir.path().join("staging"),
            "bench",
            3,
        );
        let started = Instant::now();
        if frozen {
            let f = cps.freeze(&store, 1, Cut::default()).expect("freeze");
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            f.stage(&store).expect("stage");
            ms
        } else {
            store
                .create_checkpoint(&dir.path().join("at-once"))
                .expect("checkpoint");
            started.elapsed().as_secs_f64() * 1000.0
        }
    };
    let (at_once, frozen) = (pause(false), pause(true));
    println!(
        "| {keys} keys rewritten 3 times, deferred | {at_once:.1} ms | {frozen:.1} ms | {:.3} |",
        frozen / at_once.max(0.001)
    );
}

/// What a checkpoint a second costs when a host's state is split into partitions: the same
/// writes (2,000 a second over 5,000 customers) into one store or spread by key over 16, each
/// store cutting, staging, completing and retaining a checkpoint every simulated second as a
/// partition run does (`local` checkpoints, no store beyond the host). Prints the process's
/// CPU (user and system, from `/proc`) per simulated second, in ms, and its ratio to one store.
fn partitioned_checkpoints(quick: bool) {
    let seconds: u64 = if quick { 20 } else { 60 };
    let per_second = 2_000u64;
    let customers = 5_000u64;
    let run = |partitions: u64| -> (f64, f64) {
        let dir = tempfile::tempdir().expect("tempdir");
        let parts: Vec<(StateStore, Checkpoints)> = (0..partitions)
            .map(|p| {
                let root = dir.path().join(format!("p{p}"));
                let store = StateStore::open_with(
                    &root.join("db"),
                    128,
                    Arc::new(SystemClock),
                    store_options(),
                )
                .expect("state");
                let cps =
                    Checkpoints::new(&root.join("checkpoints"), &root.join("staging"), "bench", 3);
                (store, cps)
            })
            .collect();
        let states: Vec<_> = parts
            .iter()
            .map(|(store, _)| {
                store
                    .open_state("stats", StateKind::Value, None)
                    .expect("state")
            })
            .collect();
        let mut id = 0u64;
        let mut second = |n: u64| {
            let mut batches: Vec<_> = parts.iter().map(|(store, _)| store.batch()).collect();
            for i in n * per_second..(n + 1) * per_second {
                let c = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) % customers;
                let key = format!("c-{c}");
                let p = (c % partitions) as usize;
                let store = &parts[p].0;
                let kg = store.key_group(key.as_bytes());
                KeyedAccess::new(store, &mut batches[p]).value_set(
                    &states[p],
                    kg,
                    key.as_bytes(),
                    &stats(i),
                );
            }
            id += 1;
            for ((store, cps), batch) in parts.iter().zip(batches) {
                store.commit(batch).expect("commit");
                let staged = cps
                    .freeze(store, id, Cut::default())
                    .expect("freeze")
                    .stage(store)
                    .expect("stage");
                cps.complete(&staged).expect("complete");
                cps.retain(Some(id)).expect("retain");
            }
        };
        // Warm-up: the stores hold every customer, and retention has something to remove.
        for n in 0..5 {
            second(n);
        }
        let pid = std::process::id();
        let cpu = eddy_tests::bench::process_cpu_time(pid);
        let started = Instant::now();
        for n in 5..5 + seconds {
            second(n);
        }
        let cpu = eddy_tests::bench::process_cpu_time(pid) - cpu;
        (
            cpu.as_secs_f64() * 1000.0 / seconds as f64,
            started.elapsed().as_secs_f64() * 1000.0 / seconds as f64,
        )
    };
    println!(
        "\nA checkpoint a second: {per_second} writes a second over {customers} customers, {seconds} simulated seconds after 5, one store or spread over 16 (one checkpoint each a second)\n"
    );
    println!("| stores | CPU per second, ms | ratio | wall per second, ms |");
    println!("|---:|---:|---:|---:|");
    let (one, one_wall) = run(1);
    println!("| 1 (baseline) | {one:.1} | 1.00 | {one_wall:.1} |");
    let (many, many_wall) = run(16);
    println!("| 16 | {many:.1} | {:.2} | {many_wall:.1} |", many / one);
}

fn broadcast(quick: bool) {
    let n = if quick { 20_000 } else { 200_000 };
    let table = 1_000_000u64;
    let lookups = events(n, 10_000, |i| {
        format!(
            r#"{{"action":"rule","rule":"r-{}"}}"#,
            (i as u64 * 7_919) % table
        )
        .into_bytes()
    });
    let fill = |store: &StateStore| {
        let map = store.open_broadcast_map("rules").expect("map");
        let mut i = 0;
        while i < table {
            let mut batch = store.batch();
            {
                let mut access = BroadcastAccess::new(store, &mut batch);
                for k in i..(i + 50_000).min(table) {
                    access.put(
                        map,
                        format!("r-{k}").as_bytes(),
                        format!("{k}").into_bytes(),
                    );
                }
            }
            store.commit(batch).expect("commit");
            i += 50_000;
        }
        store.flush().expect("flush");
    };
    let chaos = plugin("chaos");
    let empty = worker_rate_on(&chaos, "{}", &lookups, 256, store_options(), |_| {});
    let full = worker_rate_on(&chaos, "{}", &lookups, 256, store_options(), fill);
    let eps = |r: &eddy_tests::bench::Rate| r.events as f64 / r.secs;
    println!(
        "\nKeyed events each reading one broadcast entry ({n} events, 256 per call, chaos `rule`)\n"
    );
    println!("| broadcast table `rules` | events/s | vs empty table |");
    println!("|---|---:|---:|");
    println!("| empty (every read misses) | {:.0} | 1.00 |", eps(&empty));
    println!(
        "| 1,000,000 entries (every read hits) | {:.0} | {:.2} |",
        eps(&full),
        eps(&full) / eps(&empty)
    );
}

fn main() {
    // As the `eddy` binary runs: no transparent huge pages.
    eddy_host::no_huge_page_churn();
    let quick = std::env::args().any(|a| a == "--quick");
    let partitions_only = std::env::args().any(|a| a == "--partitions");
    partitioned_checkpoints(quick);
    if partitions_only {
        return;
    }
    // `-- --keys N`: that size alone, in a fresh process (its memory figures then hold only
    // that store).
    let only: Option<u64> = std::env::args()
        .skip_while(|a| a != "--keys")
        .nth(1)
        .map(|n| n.parse().expect("--keys takes a number"));
    let sizes: Vec<u64> = match (only, quick) {
        (Some(n), _) => vec![n],
        (None, true) => vec![100_000, 1_000_000],
        (None, false) => vec![1_000_000, 10_000_000],
    };
    println!("\nCheckpoints of value state (fraud-like JSON values, 128 key groups)\n");
    println!(
        "| keys | write | 1st cut (pause) | 1st complete | 1st size | 1% changed: cut written at once (pause) | 1% changed: frozen cut (pause) | frozen / at once | frozen cut: complete | its delta | restore + open | process RSS, store open | peak RSS so far |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let baseline = read_baseline(100_000);
    let mut read_rows = Vec::new();
    for &keys in &sizes {
        read_rows.push((keys, checkpoints(keys)));
    }
    println!(
        "\nKeyed reads at scale: 100,000 reads of random keys, present and absent (a customer not seen before), one commit per 256; the baseline is a store of 100,000 keys, same process\n"
    );
    println!("| keys | present, reads/s | vs 100,000 keys | absent, reads/s | vs 100,000 keys |");
    println!("|---:|---:|---:|---:|---:|");
    println!(
        "| 100000 (baseline) | {:.0} | 1.00 | {:.0} | 1.00 |",
        baseline.0, baseline.1
    );
    for (keys, (present, absent)) in read_rows {
        println!(
            "| {keys} | {present:.0} | {:.2} | {absent:.0} | {:.2} |",
            present / baseline.0,
            absent / baseline.1
        );
    }
    println!("\nThe same with the hot working set still deferred at the cut (fresh stores)\n");
    println!("| writes | cut written at once (pause) | frozen cut (pause) | frozen / at once |");
    println!("|---|---:|---:|---:|");
    for keys in [10_000, 100_000] {
        hot_cut(keys);
    }
    if only.is_none() {
        broadcast(quick);
    }
}
