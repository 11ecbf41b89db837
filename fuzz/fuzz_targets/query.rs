//! A query as it arrives over NATS or HTTP (the `Query` JSON, and the operation), answered
//! from a real store holding value, map, list and broadcast state: never a panic, every
//! refusal says why, and a page never holds more entries than asked. Input: one byte choosing
//! the operation, then the query's JSON.
#![no_main]

use std::sync::{Arc, OnceLock};

use eddy_host::config::PipelineConfig;
use eddy_host::query::{Op, Query, QueryEngine};
use eddy_host::state::{BroadcastAccess, KeyedAccess, StateKind, StateStore, SystemClock};
use libfuzzer_sys::fuzz_target;

const CFG: &str = r#"
[pipeline]
name = "q"
state_dir = "state"
key_groups = 8

[input]
stream = "IN"
key = { json = "/k" }

[plugin]
path = "p.wasm"

[output]
subject = "out"

[dead_letter]
subject = "dlq"

[partitions]
count = 2
owned = [0]
host = "host-a"
"#;

/// The store and its engine, made once per process (the directory lives as long).
fn engine() -> &'static QueryEngine {
    static ENGINE: OnceLock<(tempfile::TempDir, QueryEngine)> = OnceLock::new();
    &ENGINE
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("tempdir");
            let store = Arc::new(
                StateStore::open(&dir.path().join("db"), 8, Arc::new(SystemClock)).expect("open"),
            );
            fill(&store);
            let cfg = PipelineConfig::parse(CFG).expect("config");
            let engine = QueryEngine::new(&cfg, store);
            (dir, engine)
        })
        .1
}

fn fill(store: &StateStore) {
    let stats = store
        .open_state("stats", StateKind::Value, None)
        .expect("state");
    let seen = store
        .open_state("seen", StateKind::Map, None)
        .expect("state");
    let recent = store
        .open_state("recent", StateKind::List, None)
        .expect("state");
    let rules = store.open_broadcast_map("rules").expect("map");
    let mut b = store.batch();
    {
        let mut a = KeyedAccess::new(store, &mut b);
        for c in 0..20 {
            let key = format!("c-{c}");
            let kg = store.key_group(key.as_bytes());
            a.value_set(
                &stats,
                kg,
                key.as_bytes(),
                format!(r#"{{"count":{c}}}"#).as_bytes(),
            );
            for i in 0..c {
                a.map_put(
                    &seen,
                    kg,
                    key.as_bytes(),
                    format!("tx-{i:02}").as_bytes(),
                    b"true",
                );
            }
            a.map_put(
                &seen,
                kg,
                key.as_bytes(),
                &[0xff, 0x00, c as u8],
                b"\x01\x02",
            );
            a.list_add_all(
                &recent,
                kg,
                key.as_bytes(),
                &[b"10".to_vec(), vec![0xff; c]],
            )
            .expect("list");
        }
    }
    let mut ba = BroadcastAccess::new(store, &mut b);
    for r in ["travel", "food", "", "\u{0}", "ÿ"] {
        ba.put(rules, r.as_bytes(), br#"{"limit":500}"#.to_vec());
    }
    store.commit(b).expect("commit");
}

fuzz_target!(|data: &[u8]| {
    let Some((op, json)) = data.split_first() else {
        return;
    };
    let op = Op::ALL[*op as usize % Op::ALL.len()];
    let Ok(q) = serde_json::from_slice::<Query>(json) else {
        return;
    };
    match engine().execute(op, &q) {
        Ok(answer) => {
            if let (Some(limit), Some(entries)) = (q.limit, answer["entries"].as_array()) {
                assert!(
                    entries.len() <= limit.max(1),
                    "{} entries for limit {limit}",
                    entries.len()
                );
            }
        }
        Err(e) => assert!(!e.message().trim().is_empty(), "{e:?}"),
    }
});
