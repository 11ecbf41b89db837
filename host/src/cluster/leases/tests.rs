use super::*;

#[test]
fn sightings_of_hosts_that_left_are_forgotten() {
    let seen = Sightings::default();
    for key in ["h.a-1-0", "h.b-2-0", "l.p3"] {
        assert_eq!(seen.unchanged_for(key, 7), Duration::ZERO);
    }
    seen.keep_only("h.", &BTreeSet::from(["h.a-1-0".to_string()]));
    let keys: BTreeSet<String> = seen.0.lock().expect("seen").keys().cloned().collect();
    assert_eq!(
        keys,
        BTreeSet::from(["h.a-1-0".to_string(), "l.p3".to_string()])
    );
    assert_eq!(
        seen.stale("h.a-1-0", Duration::ZERO),
        Some(7),
        "still known"
    );
}

fn pointer(checkpoint: Option<u64>, epoch: u64, generation: u64) -> Pointer {
    Pointer {
        checkpoint,
        epoch,
        host: "a".into(),
        generation,
    }
}

#[test]
fn each_owner_s_ids_start_above_the_last_owner_s_whatever_the_epoch() {
    // The first owner.
    assert_eq!(next_generation(None).expect("valid"), 1);
    // Claimed by an owner from before generations (epoch 9, ids from 9 << 32).
    assert_eq!(
        next_generation(Some(&pointer(None, 9, 0))).expect("valid"),
        10
    );
    // Epochs are revisions of the whole leases bucket: past 2^32 they no longer fit an
    // id's upper half, and the generation does not depend on them.
    let epoch = (1 << 32) + 7;
    let committed = (3 << 32) + 9;
    let g = next_generation(Some(&pointer(Some(committed), epoch, 3))).expect("valid");
    assert_eq!(g, 4);
    assert!(g << 32 > committed);
    // A pointer from before generations were counted: its owner's ids started at its
    // epoch's, so the next owner's start above the committed one's.
    let old = (40_000u64 << 32) + 12;
    let old_pointer: Pointer = serde_json::from_str(&format!(
        r#"{{"checkpoint": {old}, "epoch": 40000, "host": "a"}}"#
    ))
    .expect("valid");
    assert_eq!(old_pointer.generation, 0);
    let g = next_generation(Some(&old_pointer)).expect("valid");
    assert_eq!(g, 40_001);
    assert!(g << 32 > old);
    // A claimed partition that never committed still counts its owners.
    assert_eq!(
        next_generation(Some(&pointer(None, 50, 6))).expect("valid"),
        7
    );
    // An owner from before generations claimed (epoch 90) and may have stored checkpoints
    // of its own (ids from 90 << 32) without committing one: the next starts above them.
    let claimed_only: Pointer = serde_json::from_str(&format!(
        r#"{{"checkpoint": {old}, "epoch": 90000, "host": "b"}}"#
    ))
    .expect("valid");
    assert_eq!(next_generation(Some(&claimed_only)).expect("valid"), 90_001);
    // The last generation that fits, and then a clear error rather than ids that wrap.
    let last = (1u64 << 32) - 2;
    assert_eq!(
        next_generation(Some(&pointer(None, 1, last))).expect("valid"),
        last + 1
    );
    let e = next_generation(Some(&pointer(None, 1, last + 1))).expect_err("an error");
    assert!(e.to_string().contains("exhausted"), "{e}");
}

#[test]
fn bucket_names_are_valid_kv_names() {
    assert_eq!(super::bucket_name("fraud", "leases"), "eddy-fraud-leases");
    assert_eq!(super::bucket_name("a:b.c", "hosts"), "eddy-a_b_c-hosts");
}
