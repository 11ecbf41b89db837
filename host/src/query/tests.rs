use std::sync::Arc;

use super::*;
use crate::state::{ManualClock, Ttl, TtlUpdate};

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

fn engine() -> (tempfile::TempDir, ManualClock, Arc<StateStore>, QueryEngine) {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(1_000);
    let store = Arc::new(
        StateStore::open(&dir.path().join("db"), 8, Arc::new(clock.clone())).expect("open"),
    );
    let cfg = PipelineConfig::parse(CFG).expect("config");
    let q = QueryEngine::new(&cfg, store.clone());
    (dir, clock, store, q)
}

fn write(store: &StateStore) {
    let stats = store
        .open_state("stats", StateKind::Value, None)
        .expect("state");
    let seen = store
        .open_state("seen", StateKind::Map, None)
        .expect("state");
    let recent = store
        .open_state("recent", StateKind::List, None)
        .expect("state");
    let short = store
        .open_state(
            "short",
            StateKind::Value,
            Some(Ttl {
                ttl_ms: 100,
                update: TtlUpdate::OnCreateAndWrite,
                visibility: TtlVisibility::ReturnExpiredIfNotCleanedUp,
            }),
        )
        .expect("state");
    let rules = store.open_broadcast_map("rules").expect("map");
    let mut b = store.batch();
    {
        let mut a = KeyedAccess::new(store, &mut b);
        let kg = store.key_group(b"c-1");
        a.value_set(&stats, kg, b"c-1", br#"{"count":3}"#);
        a.value_set(&short, kg, b"c-1", b"1");
        for i in 0..30 {
            a.map_put(&seen, kg, b"c-1", format!("tx-{i:02}").as_bytes(), b"true");
            a.map_put(&seen, kg, b"c-1", format!("zz-{i:02}").as_bytes(), b"false");
        }
        a.map_put(&seen, kg, b"c-1", &[0xff, 0x00], b"\x01\x02");
        a.list_add_all(&recent, kg, b"c-1", &[b"10".to_vec(), b"20".to_vec()])
            .expect("list");
    }
    let mut ba = BroadcastAccess::new(store, &mut b);
    ba.put(rules, b"travel", br#"{"limit":500}"#.to_vec());
    ba.put(rules, b"food", br#"{"limit":50}"#.to_vec());
    store.commit(b).expect("commit");
}

fn q(state: &str, key: &str) -> Query {
    Query {
        state: Some(state.into()),
        key: Some(key.into()),
        ..Query::default()
    }
}

#[test]
fn values_lists_and_broadcast_entries_are_decoded_for_display() {
    let (_d, _c, store, engine) = engine();
    write(&store);
    let v = engine.execute(Op::Get, &q("stats", "c-1")).expect("get");
    assert_eq!(v["value"], serde_json::json!({"count": 3}));
    assert_eq!(v["found"], true);
    assert_eq!(v["host"], "host-a");
    let v = engine.execute(Op::Get, &q("stats", "nobody")).expect("get");
    assert_eq!(v["found"], false);
    assert!(v["value"].is_null());
    let v = engine.execute(Op::List, &q("recent", "c-1")).expect("list");
    assert_eq!(v["values"], serde_json::json!([10, 20]));
    let b = engine
        .execute(
            Op::Broadcast,
            &Query {
                broadcast_map: Some("rules".into()),
                key: Some("travel".into()),
                ..Query::default()
            },
        )
        .expect("broadcast");
    assert_eq!(b["value"]["limit"], 500);
    let all = engine
        .execute(
            Op::Broadcast,
            &Query {
                broadcast_map: Some("rules".into()),
                limit: Some(1),
                ..Query::default()
            },
        )
        .expect("broadcast");
    assert_eq!(all["entries"][0]["key"], "food");
    assert_eq!(all["next"], "food");
}

/// A run whose lease may have lapsed stops answering as the owner (its state stopped when
/// it lost the partition); while it holds the lease it answers as before.
#[test]
fn a_run_past_its_lease_refuses_queries() {
    let (_d, _c, store, engine) = engine();
    write(&store);
    let holds = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let h = holds.clone();
    let engine = engine.with_lease_check(Arc::new(move || {
        if h.load(std::sync::atomic::Ordering::SeqCst) {
            Ok(())
        } else {
            Err("lease of partition 0 not renewed for 5 s".into())
        }
    }));
    let v = engine.execute(Op::Get, &q("stats", "c-1")).expect("get");
    assert_eq!(v["value"], serde_json::json!({"count": 3}));
    holds.store(false, std::sync::atomic::Ordering::SeqCst);
    let e = engine
        .execute(Op::Get, &q("stats", "c-1"))
        .expect_err("refused past the lease");
    assert_eq!(e.code(), 503);
    assert!(
        e.message().contains("not renewed for 5 s"),
        "{}",
        e.message()
    );
}

#[test]
fn map_entries_page_by_prefix_and_show_raw_bytes_as_base64() {
    let (_d, _c, store, engine) = engine();
    write(&store);
    let mut query = q("seen", "c-1");
    query.prefix = Some("tx-".into());
    query.limit = Some(12);
    let mut keys = Vec::new();
    loop {
        let page = engine.execute(Op::Map, &query).expect("map");
        for e in page["entries"].as_array().expect("entries") {
            keys.push(e["key"].as_str().expect("text key").to_string());
            assert_eq!(e["value"], true);
        }
        match page["next"].as_str() {
            Some(next) => query.start_after = Some(next.to_string()),
            None => break,
        }
    }
    let expected: Vec<String> = (0..30).map(|i| format!("tx-{i:02}")).collect();
    assert_eq!(
        keys, expected,
        "every tx- entry once, in order, none of zz-"
    );
    let all = engine
        .execute(
            Op::Map,
            &Query {
                limit: Some(1000),
                ..q("seen", "c-1")
            },
        )
        .expect("map");
    let last = all["entries"]
        .as_array()
        .expect("entries")
        .last()
        .cloned()
        .expect("some");
    assert_eq!(last["key"], serde_json::json!({"base64": "/wA="}));
    assert_eq!(last["value"], serde_json::json!({"base64": "AQI="}));
}

#[test]
fn expired_entries_are_hidden_and_not_removed() {
    let (_d, clock, store, engine) = engine();
    write(&store);
    clock.set(1_100);
    let v = engine.execute(Op::Get, &q("short", "c-1")).expect("get");
    assert_eq!(
        v["found"], false,
        "expired: hidden even with return-expired visibility"
    );
    let s = store.state("short").expect("state");
    let mut b = store.batch();
    let a = KeyedAccess::new(&store, &mut b);
    let k = crate::state::layout::state_key(store.key_group(b"c-1"), s.id, b"c-1");
    assert!(
        a.physically_present(&k).expect("present"),
        "a query never deletes"
    );
}

#[test]
fn bad_requests_say_what_is_wrong() {
    let (_d, _c, store, engine) = engine();
    write(&store);
    let e = engine
        .execute(Op::Get, &q("nope", "c-1"))
        .expect_err("unknown state");
    assert_eq!(e.code(), 404);
    assert!(e.message().contains("no state `nope`"), "{e}");
    assert!(
        e.message().contains("stats"),
        "lists the states there are: {e}"
    );
    let e = engine
        .execute(Op::Map, &q("stats", "c-1"))
        .expect_err("wrong kind");
    assert_eq!(e.code(), 400);
    assert!(e.message().contains("ask `get`"), "{e}");
    let e = engine
        .execute(Op::Get, &q("recent", "c-1"))
        .expect_err("a list state asked for a value");
    assert!(
        e.message().contains("ask `list`") && e.message().contains("eddy state get --list"),
        "names the command's flag: {e}"
    );
    let e = engine
        .execute(
            Op::Get,
            &Query {
                state: Some("stats".into()),
                ..Query::default()
            },
        )
        .expect_err("no key");
    assert!(e.message().contains("`key` is required"), "{e}");
    let e = engine
        .execute(
            Op::Get,
            &Query {
                key_base64: Some("***".into()),
                ..q("stats", "c-1")
            },
        )
        .expect_err("both keys");
    assert_eq!(e.code(), 400);
    let e = engine
        .execute(
            Op::Get,
            &Query {
                freshness: Freshness::Checkpoint,
                ..q("stats", "c-1")
            },
        )
        .expect_err("no checkpoint yet");
    assert_eq!(e.code(), 503);
}

#[test]
fn owner_metadata_follows_the_documented_hash() {
    let (_d, _c, _store, engine) = engine();
    let v = engine
        .execute(
            Op::Owner,
            &Query {
                key: Some("c-1".into()),
                ..Query::default()
            },
        )
        .expect("owner");
    let kg = u64::from(crate::state::keygroup::fnv1a_32(b"c-1") % 8);
    assert_eq!(v["key_group"], kg);
    assert_eq!(v["partition"], kg % 2);
    assert_eq!(v["owned_here"], kg % 2 == 0);
    assert_eq!(engine.owns(b"c-1"), kg % 2 == 0);
}

#[test]
fn checkpoint_freshness_opens_the_checkpoint_at_the_first_query() {
    let (dir, _c, store, engine) = engine();
    write(&store);
    let staging = dir.path().join("staging");
    std::fs::create_dir_all(&staging).expect("staging");
    let first = staging.join("chk-0000000001");
    store.create_checkpoint(&first).expect("checkpoint 1");
    // A write after the first cut, in the second only.
    let stats = store
        .open_state("stats", StateKind::Value, None)
        .expect("state");
    let mut b = store.batch();
    KeyedAccess::new(&store, &mut b).value_set(
        &stats,
        store.key_group(b"c-1"),
        b"c-1",
        br#"{"count":4}"#,
    );
    store.commit(b).expect("commit");
    let second = staging.join("chk-0000000002");
    store.create_checkpoint(&second).expect("checkpoint 2");
    let at_checkpoint = || {
        engine.execute(
            Op::Get,
            &Query {
                freshness: Freshness::Checkpoint,
                ..q("stats", "c-1")
            },
        )
    };

    engine.set_checkpoint(1, first.clone());
    let v = at_checkpoint().expect("checkpoint 1");
    assert_eq!(
        (v["checkpoint"].as_u64(), &v["value"]),
        (Some(1), &serde_json::json!({"count": 3}))
    );
    // Opened by that query: retention may remove its directory now, it still answers.
    std::fs::remove_dir_all(&first).expect("remove 1");
    let v = at_checkpoint().expect("checkpoint 1, opened");
    assert_eq!(v["value"], serde_json::json!({"count": 3}));

    engine.set_checkpoint(2, second.clone());
    let v = at_checkpoint().expect("checkpoint 2");
    assert_eq!(
        (v["checkpoint"].as_u64(), &v["value"]),
        (Some(2), &serde_json::json!({"count": 4}))
    );

    // Named but gone before anyone opened it (retention, as the next one completed): the
    // query is asked to come again, not answered from anything else.
    engine.set_checkpoint(3, staging.join("chk-0000000003"));
    let e = at_checkpoint().expect_err("checkpoint 3 is gone");
    assert_eq!(e.code(), 503, "{e}");
    assert!(e.message().contains("replaced by a newer one"), "{e}");

    // There but not a checkpoint (a broken link, say): 500 with the cause, as long as it is
    // the newest, and opened afresh once a newer one is named.
    let broken = staging.join("chk-0000000004");
    std::fs::create_dir_all(&broken).expect("broken");
    engine.set_checkpoint(4, broken);
    for _ in 0..2 {
        let e = at_checkpoint().expect_err("checkpoint 4 is broken");
        assert_eq!(e.code(), 500, "{e}");
        assert!(e.message().contains("cannot open checkpoint 4"), "{e}");
    }
    let fifth = staging.join("chk-0000000005");
    store.create_checkpoint(&fifth).expect("checkpoint 5");
    engine.set_checkpoint(5, fifth);
    assert_eq!(at_checkpoint().expect("checkpoint 5")["checkpoint"], 5);
}
