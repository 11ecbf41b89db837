//! The engine and metrics without NATS: compile cache, WIT contract checks, the Prometheus
//! endpoint.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use eddy_host::engine::Worker;
use eddy_host::engine::{Engine, Event, InstanceContext, Limits, Outcome};
use eddy_host::metrics::{self, Metrics};
use eddy_host::state::StateStore;
use eddy_tests::plugin;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[test]
fn compiled_components_are_cached_on_disk_across_engines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("cache");
    let first = Engine::new(Some(&cache)).expect("engine");
    let p = first.load_file(&plugin("fraud-enrich")).expect("compile");
    assert!(!p.was_cached());
    // A new engine, as after a restart: loads the native code instead of compiling.
    let second = Engine::new(Some(&cache)).expect("engine");
    let p2 = second.load_file(&plugin("fraud-enrich")).expect("load");
    assert!(p2.was_cached());
    assert_eq!(p.version(), p2.version());
    // Loaded native code maps the cache file: release it before damaging the file.
    drop((p, p2, first, second));
    // A corrupt cache entry is recompiled, not trusted: the component's, and those of its
    // compiled functions (kept in `functions/<shard>/`).
    let mut entries = vec![];
    for entry in std::fs::read_dir(&cache).expect("cache dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            for shard in std::fs::read_dir(&path).expect("functions").flatten() {
                entries.extend(
                    std::fs::read_dir(shard.path())
                        .expect("shard")
                        .flatten()
                        .map(|e| e.path()),
                );
            }
        } else {
            entries.push(path);
        }
    }
    assert!(
        entries.len() > 100,
        "the component and its functions: {}",
        entries.len()
    );
    for path in entries {
        let tmp = path.with_extension("corrupt");
        std::fs::write(&tmp, b"garbage").expect("corrupt");
        std::fs::rename(&tmp, &path).expect("replace");
    }
    let third = Engine::new(Some(&cache)).expect("engine");
    let p3 = third.load_file(&plugin("fraud-enrich")).expect("recompile");
    assert!(!p3.was_cached());
}

#[test]
fn something_that_is_not_a_processor_is_refused_with_the_reason() {
    let engine = Engine::new(None).expect("engine");
    let e = engine
        .load(b"not wasm at all", "junk")
        .err()
        .expect("refused");
    let msg = format!("{e:#}");
    assert!(msg.contains("not a valid WebAssembly component"), "{msg}");
    assert!(msg.contains("not WebAssembly at all"), "{msg}");
    assert!(msg.contains("wasm32-wasip2"), "the fix: {msg}");
    // A core module (not a component) is refused with the fix.
    let core = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];
    let e = engine.load(&core, "core").err().expect("refused");
    let msg = format!("{e:#}");
    assert!(msg.contains("plugin core"), "{msg}");
    assert!(msg.contains("core WebAssembly module"), "{msg}");
    assert!(msg.contains("wasm-tools component new"), "{msg}");
    // From a file: the message names the file and the field that points at it.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("enrich.wasm");
    std::fs::write(&path, core).expect("write");
    let msg = format!("{:#}", engine.load_file(&path).err().expect("refused"));
    assert!(
        msg.contains(&path.display().to_string()) && msg.contains("plugin.path"),
        "{msg}"
    );
}

#[test]
fn a_batch_reads_its_own_writes_and_state_is_per_key() {
    let mut h = Harness::new("chaos", "{}", &[]);
    let (state, w) = (h.state.clone(), &mut h.worker);
    let ev = |k: &str| Event {
        key: k.as_bytes().to_vec(),
        subject: "s".into(),
        headers: vec![],
        payload: br#"{"action":"ok"}"#.to_vec(),
        timestamp_ms: 0,
        sequence: 0,
    };
    let events = vec![ev("a"), ev("a"), ev("b"), ev("a")];
    let kgs: Vec<u16> = events.iter().map(|e| state.key_group(&e.key)).collect();
    let r = w.handle(&events, &kgs, &Arc::default()).expect("run");
    let counts: Vec<String> = r
        .iter()
        .map(|o| match o {
            Ok(Outcome::Emit(outs)) => outs[0]
                .headers
                .iter()
                .find(|(k, _)| k == "Eddy-Count")
                .map(|(_, v)| v.clone())
                .unwrap_or_default(),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(counts, vec!["1", "2", "1", "3"]);
}

#[tokio::test]
async fn the_metrics_endpoint_serves_prometheus_text() {
    let m = Metrics::new("demo");
    m.events_in
        .fetch_add(42, std::sync::atomic::Ordering::Relaxed);
    m.dead_letter(eddy_host::metrics::DeadLetterReason::Trap);
    m.call_seconds.observe(0.002);
    let stats = std::sync::Arc::new(eddy_host::state::StateStats::default());
    stats
        .hot_hits
        .fetch_add(7, std::sync::atomic::Ordering::Relaxed);
    stats
        .deferred_writes
        .fetch_add(500, std::sync::atomic::Ordering::Relaxed);
    stats
        .settled_writes
        .fetch_add(20, std::sync::atomic::Ordering::Relaxed);
    m.attach_state(stats);
    // Three partitions' inputs: one has not read a batch yet, one stopped (dropped).
    use std::sync::atomic::AtomicU64;
    let inputs: Vec<std::sync::Arc<AtomicU64>> = [12, 30, u64::MAX]
        .into_iter()
        .map(|n| std::sync::Arc::new(AtomicU64::new(n)))
        .collect();
    for p in &inputs {
        m.attach_input_pending(p);
    }
    let stopped = std::sync::Arc::new(AtomicU64::new(1_000));
    m.attach_input_pending(&stopped);
    drop(stopped);
    let port = eddy_tests::free_port();
    let addr = format!("127.0.0.1:{port}");
    let _server = metrics::serve(&addr, m.clone()).await.expect("serve");
    let mut sock = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    sock.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    let mut body = String::new();
    tokio::time::timeout(Duration::from_secs(5), sock.read_to_string(&mut body))
        .await
        .expect("answer in time")
        .expect("read");
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
    assert!(
        body.contains("eddy_events_in_total{pipeline=\"demo\"} 42"),
        "{body}"
    );
    assert!(
        body.contains("eddy_events_dead_lettered_total{pipeline=\"demo\",reason=\"trap\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("eddy_plugin_call_seconds_count{pipeline=\"demo\"} 1"),
        "{body}"
    );
    for line in [
        "eddy_input_pending{pipeline=\"demo\"} 42",
        "eddy_state_hot_reads_total{pipeline=\"demo\",result=\"hit\"} 7",
        "eddy_state_hot_reads_total{pipeline=\"demo\",result=\"miss\"} 0",
        "eddy_state_deferred_writes_total{pipeline=\"demo\",stage=\"deferred\"} 500",
        "eddy_state_deferred_writes_total{pipeline=\"demo\",stage=\"written\"} 20",
    ] {
        assert!(body.contains(line), "{line} in {body}");
    }
}

/// The sandbox is closed whatever the guest imports: no files, no sockets, no environment.
#[test]
fn a_plugin_cannot_reach_files_sockets_or_the_environment() {
    // Something to connect to, so a refusal is the sandbox's and not an empty port's.
    let listener = std::net::TcpListener::bind("127.0.0.1:4222").ok();
    let mut h = Harness::new("chaos", "{}", &[]);
    let (state, w) = (h.state.clone(), &mut h.worker);
    let e = Event {
        key: b"k".to_vec(),
        subject: "s".into(),
        headers: vec![],
        payload: br#"{"action":"escape"}"#.to_vec(),
        timestamp_ms: 0,
        sequence: 1,
    };
    let r = w
        .handle(&[e], &[state.key_group(b"k")], &Arc::default())
        .expect("run");
    let Ok(Outcome::Emit(outs)) = &r[0] else {
        panic!("unexpected {:?}", r[0]);
    };
    let report: serde_json::Value = serde_json::from_slice(&outs[0].payload).expect("json");
    for what in ["file", "dir", "socket"] {
        let v = report[what].as_str().unwrap_or_default();
        assert!(v.starts_with("denied"), "{what}: {v} (report {report})");
    }
    assert_eq!(report["env_vars"], 0, "no environment variables: {report}");
    drop(listener);
}

/// A looping event costs about its own CPU budget, not a batch's second: the batch holding it
/// fails after about one event's budget (its usual time with a wide margin), then its events
/// are re-run one by one and only the looping one fails.
#[test]
fn a_looping_event_costs_about_its_own_budget() {
    let mut h = Harness::new("chaos", "{}", &[]);
    let mut batch = |round: u64, looping: Option<usize>| {
        let events: Vec<Event> = (0..256u64)
            .map(|i| Event {
                key: format!("k{i}").into_bytes(),
                subject: "s".into(),
                headers: vec![],
                payload: if looping == Some(i as usize) {
                    br#"{"action":"loop"}"#.to_vec()
                } else {
                    br#"{"action":"ok"}"#.to_vec()
                },
                timestamp_ms: 0,
                sequence: round * 256 + i + 1,
            })
            .collect();
        let groups: Vec<u16> = events.iter().map(|e| h.state.key_group(&e.key)).collect();
        h.worker
            .handle(&events, &groups, &Arc::default())
            .expect("run")
    };
    // Clean batches first: the worker learns what a batch usually takes.
    for round in 0..10 {
        assert!(batch(round, None).iter().all(Result::is_ok));
    }
    let started = std::time::Instant::now();
    for round in 10..15 {
        let r = batch(round, Some(100));
        let failed: Vec<usize> = (0..r.len()).filter(|i| r[*i].is_err()).collect();
        assert_eq!(failed, vec![100], "only the looping event fails");
        let reason = &r[100].as_ref().expect_err("looped").message;
        assert!(reason.contains("CPU budget"), "{reason}");
    }
    let per_batch = started.elapsed() / 5;
    // About 100 ms for the batch call, 100 ms for the looping event alone, a new instance;
    // the whole batch's budget (one second) would be spent otherwise.
    assert!(
        per_batch < Duration::from_millis(600),
        "a batch with one looping event took {per_batch:?} (budget 100 ms per event)"
    );
}

/// One plugin instance on a fresh state directory with a manual clock, fed one event at a
/// time as successive batches would be.
struct Harness {
    _dir: tempfile::TempDir,
    clock: eddy_host::state::ManualClock,
    state: Arc<StateStore>,
    worker: Worker,
}

impl Harness {
    fn new(
        plugin_name: &str,
        config: &str,
        overrides: &[(&str, Option<eddy_host::state::Ttl>)],
    ) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = eddy_host::state::ManualClock::new(0);
        let state =
            Arc::new(StateStore::open(dir.path(), 128, Arc::new(clock.clone())).expect("state"));
        state.set_ttl_overrides(overrides.iter().map(|(n, t)| (n.to_string(), *t)).collect());
        let engine = Engine::new(None).expect("engine");
        let p = engine.load_file(&plugin(plugin_name)).expect("plugin");
        let ctx = InstanceContext {
            state: state.clone(),
            limits: Limits::default(),
            lookups: None,
            batch_calls: true,
            packed_batches: true,
        };
        let worker = Worker::new(p, ctx, config.into(), Metrics::new("t")).expect("worker");
        Harness {
            _dir: dir,
            clock,
            state,
            worker,
        }
    }

    /// Handles one event for key `k` at time `t` (its writes are committed); returns its
    /// outcome.
    fn event(&mut self, t: u64, payload: &str) -> Outcome {
        self.clock.set(t);
        let e = Event {
            key: b"k".to_vec(),
            subject: "s".into(),
            headers: vec![],
            payload: payload.as_bytes().to_vec(),
            timestamp_ms: t,
            sequence: t + 1,
        };
        let mut r = self
            .worker
            .handle(&[e], &[self.state.key_group(b"k")], &Arc::default())
            .expect("run");
        r.remove(0).expect("plugin handled the event")
    }
}

fn header(outcome: &Outcome, name: &str) -> String {
    let Outcome::Emit(outs) = outcome else {
        panic!("expected an emit, got {outcome:?}");
    };
    outs[0]
        .headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

/// TTL through a real plugin over the WIT: dedupe-filter declares a TTL on its `seen` map
/// (config `ttl_ms`); the host's manual clock decides when an id may pass again.
#[test]
fn ttl_declared_by_a_plugin_expires_entries_on_the_host_clock() {
    let run = |overrides: &[(&str, Option<eddy_host::state::Ttl>)]| -> Vec<&'static str> {
        let mut h = Harness::new("dedupe-filter", r#"{"ttl_ms":100}"#, overrides);
        [0u64, 50, 99, 100, 150]
            .into_iter()
            .map(
                |t| match h.event(t, &format!(r#"{{"id":"tx-1","customer":"k","ts":{t}}}"#)) {
                    Outcome::Emit(_) => "pass",
                    Outcome::Drop => "drop",
                    other => panic!("unexpected {other:?}"),
                },
            )
            .collect()
    };
    // Seen at 0 → expires at 100 (equality counts as expired) → passes again, re-stamped.
    assert_eq!(run(&[]), vec!["pass", "drop", "drop", "pass", "drop"]);
    // The operator's override wins over the plugin's declaration: TTL off.
    assert_eq!(
        run(&[("seen", None)]),
        vec!["pass", "drop", "drop", "drop", "drop"]
    );
}

/// Value and list TTL through a real plugin: chaos keeps a `count` (value) and a `history`
/// (list) with `ttl_ms = 100`; the host's manual clock decides what has expired.
#[test]
fn value_and_list_ttl_through_a_plugin_follow_the_host_clock() {
    let mut h = Harness::new("chaos", r#"{"ttl_ms":100}"#, &[]);
    let seen: Vec<(u64, String, String)> = [0u64, 50, 120, 260]
        .into_iter()
        .map(|t| {
            let o = h.event(t, r#"{"action":"ok"}"#);
            (t, header(&o, "Eddy-Count"), header(&o, "Eddy-History"))
        })
        .collect();
    let want = [
        (0, "1", "1"),   // first write
        (50, "2", "2"),  // count written at 0 is live (0 + 100 > 50)
        (120, "3", "2"), // count re-stamped at 50 lives; the list element of t0 expired alone
        (260, "1", "1"), // everything written at 120 expired at 220
    ];
    let want: Vec<(u64, String, String)> = want
        .iter()
        .map(|(t, c, l)| (*t, c.to_string(), l.to_string()))
        .collect();
    assert_eq!(seen, want);
}

/// A per-write TTL (`set-with-ttl`) through a real plugin: chaos's `flash` writes a value that
/// lives `ttl_ms` from the payload, in a state that has no TTL of its own.
#[test]
fn a_per_write_ttl_through_a_plugin_expires_that_value() {
    let mut h = Harness::new("chaos", "{}", &[]);
    let seen: Vec<String> = [(0u64, 100u64), (99, 10), (109, 500), (608, 1), (609, 1)]
        .into_iter()
        .map(|(t, ttl)| {
            header(
                &h.event(t, &format!(r#"{{"action":"flash","ttl_ms":{ttl}}}"#)),
                "Eddy-Flash",
            )
        })
        .collect();
    // Each write's own TTL decides: 0+100 > 99; 99+10 <= 109; 109+500 > 608; 608+1 <= 609.
    assert_eq!(
        seen,
        vec!["absent", "present", "absent", "present", "absent"]
    );
}

/// fraud-enrich over `events`, 256 per call, with the `keyed-state` batch calls on or off and
/// the batches crossing packed (`handle-packed`) or not: each event's outcome (payload and
/// headers, or the reason), each customer's `stats` and `recent` state afterwards, and how
/// many writes the plugin handed over with `write-batch`.
fn fraud_run(
    events: &[Event],
    customers: usize,
    batch_calls: bool,
    packed_batches: bool,
) -> (Vec<String>, Vec<String>, u64) {
    use eddy_host::state::{KeyedAccess, StateKind};
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = eddy_host::state::ManualClock::new(1_000);
    let state = Arc::new(StateStore::open(dir.path(), 128, Arc::new(clock)).expect("state"));
    let engine = Engine::new(None).expect("engine");
    let p = engine.load_file(&plugin("fraud-enrich")).expect("plugin");
    assert!(
        p.capabilities().packed,
        "the Rust SDK exports packed-handler"
    );
    let ctx = InstanceContext {
        state: state.clone(),
        limits: Limits::default(),
        lookups: None,
        batch_calls,
        packed_batches,
    };
    let mut worker = Worker::new(p, ctx, "{}".into(), Metrics::new("t")).expect("worker");
    let mut outcomes = Vec::new();
    for chunk in events.chunks(256) {
        let kgs: Vec<u16> = chunk.iter().map(|e| state.key_group(&e.key)).collect();
        for r in worker.handle(chunk, &kgs, &Arc::default()).expect("run") {
            outcomes.push(match r.expect("no event fails") {
                Outcome::Emit(outs) => format!(
                    "{} {:?}",
                    String::from_utf8_lossy(&outs[0].payload),
                    outs[0].headers
                ),
                other => format!("{other:?}"),
            });
        }
    }
    let stats = state
        .open_state("stats", StateKind::Value, None)
        .expect("stats");
    let recent = state
        .open_state("recent", StateKind::List, None)
        .expect("recent");
    let mut batch = state.batch();
    let mut access = KeyedAccess::new(&state, &mut batch);
    let stored = (0..customers)
        .map(|c| {
            let key = format!("c-{c}").into_bytes();
            let kg = state.key_group(&key);
            let s = access.value_get(&stats, kg, &key).expect("stats");
            let r = access.list_get(&recent, kg, &key).expect("recent");
            format!(
                "{} {:?}",
                String::from_utf8_lossy(&s.unwrap_or_default()),
                r.iter()
                    .map(|e| String::from_utf8_lossy(e).into_owned())
                    .collect::<Vec<_>>()
            )
        })
        .collect();
    let batched = state.stats().batched_writes.load(Ordering::Relaxed);
    (outcomes, stored, batched)
}

/// The batch calls (value and list state read once per state and batch, written once at
/// its end) and packed batches (`handle-packed`) are optimisations only: with 40 customers,
/// every call of 256 events has each customer several times, so a read must see the writes of
/// earlier events of the same call. Outcomes and state must equal those of one import call
/// per read and write with the batch crossing as `list<event>`.
#[test]
fn the_batch_calls_and_packed_batches_give_the_outcomes_and_state_of_the_single_calls() {
    let customers = 40;
    let events: Vec<Event> = (0..3_000)
        .map(|i| {
            let customer = format!("c-{}", (i * 7) % customers);
            let payload = if i == 1_000 {
                // One event the plugin rejects, mid-call: its neighbours are unaffected.
                "not a transaction".to_string()
            } else {
                format!(
                    r#"{{"id":"tx-{i}","customer":"{customer}","amount_cents":{},"merchant":"m-{}","category":"grocery","ts":{}}}"#,
                    100 + (i * 37) % 200_000,
                    i % 13,
                    1_700_000_000_000u64 + i as u64 * 3_000
                )
            };
            // Headers on some events: packed, they sit between subject and payload, so a
            // mistake in their count would shift every payload after them.
            let headers = (0..i % 3)
                .map(|h| (format!("H-{h}"), "v".repeat(i % 5)))
                .collect();
            Event {
                key: customer.into_bytes(),
                subject: format!("txn.in.{}", i % 4),
                headers,
                payload: payload.into_bytes(),
                timestamp_ms: 0,
                sequence: i as u64 + 1,
            }
        })
        .collect();
    let (batched, batched_state, writes_in_batches) = fraud_run(&events, customers, true, true);
    let (single, single_state, writes_single) = fraud_run(&events, customers, false, false);
    let (listed, listed_state, _) = fraud_run(&events, customers, true, false);
    // Two writes per transaction (stats and recent), 2,999 transactions.
    assert_eq!((writes_in_batches, writes_single), (5_998, 0));
    assert_eq!(batched.len(), 3_000);
    for (i, ((b, s), l)) in batched.iter().zip(&single).zip(&listed).enumerate() {
        assert_eq!(b, s, "event {i}: batch calls and single calls differ");
        assert_eq!(b, l, "event {i}: packed and listed batches differ");
    }
    assert_eq!(batched_state, single_state);
    assert_eq!(batched_state, listed_state);
    // The state is what 3,000 transactions over 40 customers leave: customer c-0 has the
    // events whose index is a multiple of 40 (i * 7 % 40 == 0), 75 of them, one of which
    // (i = 1,000) the plugin rejected.
    assert!(
        batched_state[0].contains(r#""count":74"#),
        "{}",
        batched_state[0]
    );
    assert!(
        batched[1_000].contains("not a transaction"),
        "{}",
        batched[1_000]
    );
    assert!(
        batched[2_960].contains(r#""customer_count":74"#),
        "{}",
        batched[2_960]
    );
}
