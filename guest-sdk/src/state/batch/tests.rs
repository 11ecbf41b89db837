//! Tests of the batch overlay against a stand-in for the host.

use super::*;
use wit::ChangeKind as C;

/// A stand-in for the host: events' key slots and each state's stored values, counting
/// the fetches.
struct Stored {
    slots: Vec<u32>,
    values: Vec<Option<&'static str>>,
    lists: Vec<Vec<&'static str>>,
    fetches: usize,
    single: usize,
}

fn pack<'a>(values: impl IntoIterator<Item = &'a str>) -> wit::PackedValues {
    let mut packed = wit::PackedValues {
        bytes: Vec::new(),
        ends: Vec::new(),
    };
    for v in values {
        packed.bytes.extend_from_slice(v.as_bytes());
        packed.ends.push(packed.bytes.len() as u32);
    }
    packed
}

impl Source for Stored {
    fn key_slots(&mut self) -> Vec<u32> {
        self.fetches += 1;
        self.slots.clone()
    }
    fn values(&mut self, _: wit::StateId) -> Result<(Vec<bool>, wit::PackedValues), StateError> {
        self.fetches += 1;
        let present = self.values.iter().map(Option::is_some).collect();
        Ok((present, pack(self.values.iter().flatten().copied())))
    }
    fn lists(&mut self, _: wit::StateId) -> Result<(Vec<u32>, wit::PackedValues), StateError> {
        self.fetches += 1;
        let counts = self.lists.iter().map(|l| l.len() as u32).collect();
        Ok((counts, pack(self.lists.iter().flatten().copied())))
    }
    fn value(&mut self, _: wit::StateId, event: u32) -> Result<Option<Vec<u8>>, StateError> {
        self.single += 1;
        let slot = self.slots[event as usize] as usize;
        Ok(self.values[slot].map(|v| v.as_bytes().to_vec()))
    }
    fn list(&mut self, _: wit::StateId, event: u32) -> Result<Vec<Vec<u8>>, StateError> {
        self.single += 1;
        let slot = self.slots[event as usize] as usize;
        Ok(self.lists[slot]
            .iter()
            .map(|v| v.as_bytes().to_vec())
            .collect())
    }
}

fn stored(slots: &[u32]) -> Stored {
    Stored {
        slots: slots.to_vec(),
        values: Vec::new(),
        lists: Vec::new(),
        fetches: 0,
        single: 0,
    }
}

fn value(b: &mut Batch, src: &mut Stored, event: u32) -> Option<String> {
    b.read_value(src, 1, event, |v| {
        v.map(|v| String::from_utf8_lossy(v).into_owned())
    })
    .expect("read")
}

fn list(b: &mut Batch, src: &mut Stored, event: u32) -> Vec<String> {
    b.read_list(src, 2, event, |l| {
        l.map(|v| String::from_utf8_lossy(v).into_owned()).collect()
    })
    .expect("read")
}

fn write(b: &mut Batch, src: &mut Stored, state: u32, event: u32, kind: C, values: &[&str]) {
    b.write(src, state, event, kind, |out| {
        values.iter().try_for_each(|v| {
            out.push(|buf| {
                buf.extend_from_slice(v.as_bytes());
                Ok(())
            })
        })
    })
    .expect("write");
}

/// The writes handed to the host: per write, its event, kind and values.
fn handed(b: &mut Batch) -> Vec<(u32, C, Vec<String>)> {
    let (writes, packed) = b.take_writes();
    let mut spans = fetched_spans(0, &packed).expect("spans");
    writes
        .iter()
        .map(|w| {
            let values = spans
                .by_ref()
                .take(w.values as usize)
                .map(|s| {
                    String::from_utf8_lossy(&packed.bytes[s.start as usize..s.end as usize])
                        .into_owned()
                })
                .collect();
            (w.event, w.change, values)
        })
        .collect()
}

#[test]
fn a_write_is_seen_by_later_events_of_the_same_key_only() {
    // Events 0 and 2 share key slot 0; event 1 has slot 1.
    let mut src = stored(&[0, 1, 0]);
    src.values = vec![Some("a0"), None];
    let mut b = Batch::default();
    assert_eq!(value(&mut b, &mut src, 0).as_deref(), Some("a0"));
    write(&mut b, &mut src, 1, 0, C::ValueSet, &["a1"]);
    assert_eq!(value(&mut b, &mut src, 1), None);
    assert_eq!(value(&mut b, &mut src, 2).as_deref(), Some("a1"));
    write(&mut b, &mut src, 1, 2, C::ValueClear, &[]);
    assert_eq!(value(&mut b, &mut src, 0), None);
    // key-slots once, the state's values once.
    assert_eq!(src.fetches, 2);
    assert_eq!(
        handed(&mut b),
        [
            (0, C::ValueSet, vec!["a1".to_owned()]),
            (2, C::ValueClear, vec![])
        ]
    );
    assert!(handed(&mut b).is_empty());
}

#[test]
fn a_blind_write_wins_over_the_fetched_value() {
    let mut src = stored(&[0, 1]);
    src.values = vec![Some("old0"), Some("old1")];
    let mut b = Batch::default();
    b.write(&mut src, 1, 0, C::ValueSet, |out| {
        out.push(|buf| {
            buf.extend_from_slice(b"new0");
            Ok(())
        })
    })
    .expect("write");
    assert_eq!(value(&mut b, &mut src, 1).as_deref(), Some("old1"));
    assert_eq!(value(&mut b, &mut src, 0).as_deref(), Some("new0"));
    let (writes, _) = b.take_writes();
    assert_eq!(writes[0].ttl_ms, None);
    assert_eq!(writes[0].change, C::ValueSet);
}

#[test]
fn elements_added_before_the_first_read_follow_the_stored_ones() {
    let mut src = stored(&[0, 0, 1]);
    src.lists = vec![vec!["s1", "s2"], Vec::new()];
    let mut b = Batch::default();
    write(&mut b, &mut src, 2, 0, C::ListAddAll, &["x"]);
    write(&mut b, &mut src, 2, 1, C::ListAddAll, &["y"]);
    assert_eq!(list(&mut b, &mut src, 1), ["s1", "s2", "x", "y"]);
    assert!(list(&mut b, &mut src, 2).is_empty());
    write(&mut b, &mut src, 2, 2, C::ListUpdate, &["z", "z2"]);
    write(&mut b, &mut src, 2, 2, C::ListAddAll, &["w"]);
    assert_eq!(list(&mut b, &mut src, 2), ["z", "z2", "w"]);
    write(&mut b, &mut src, 2, 0, C::ListClear, &[]);
    assert!(list(&mut b, &mut src, 1).is_empty());
    assert_eq!(src.fetches, 2);
    let handed = handed(&mut b);
    assert_eq!(handed.len(), 5);
    assert_eq!(handed[2], (2, C::ListUpdate, vec!["z".into(), "z2".into()]));
}

#[test]
fn a_failed_encoding_logs_nothing() {
    let mut src = stored(&[0]);
    src.values = vec![Some("kept")];
    let mut b = Batch::default();
    let err = b
        .write(&mut src, 1, 0, C::ValueSet, |out| {
            out.push(|buf| {
                buf.extend_from_slice(b"half");
                Err(StateError::Encode("no".into()))
            })
        })
        .expect_err("fails");
    assert_eq!(err, StateError::Encode("no".into()));
    assert_eq!(value(&mut b, &mut src, 0).as_deref(), Some("kept"));
    let (writes, packed) = b.take_writes();
    assert!(writes.is_empty() && packed.bytes.is_empty() && packed.ends.is_empty());
}

#[test]
fn an_event_outside_the_batch_is_no_such_event() {
    let mut src = stored(&[0]);
    src.values = vec![None];
    let mut b = Batch::default();
    let err = b.read_value(&mut src, 1, 3, |_| ()).expect_err("event 3");
    assert_eq!(err, StateError::NoSuchEvent);
}

#[test]
fn a_malformed_answer_is_an_error_not_a_panic() {
    let mut src = stored(&[0, 1]);
    // Two keys, one value answered.
    src.values = vec![Some("only")];
    let mut b = Batch::default();
    let err = b.read_value(&mut src, 1, 0, |_| ()).expect_err("short");
    assert!(
        err.to_string().contains("1 entries for the batch's 2 keys"),
        "{err}"
    );
}

#[test]
fn a_state_read_for_few_events_is_then_read_one_key_at_a_time() {
    // Eight events, eight keys.
    let slots: Vec<u32> = (0..8).collect();
    let mut b = Batch::default();
    let mut src = stored(&slots);
    src.values = vec![Some("v"); 8];
    src.lists = vec![vec!["l"]; 8];
    // First batch: one read of each state (fewer than a quarter of 8 events): fetched for
    // every key, as nothing is known of the state yet.
    assert_eq!(value(&mut b, &mut src, 3).as_deref(), Some("v"));
    write(&mut b, &mut src, 2, 5, C::ListAddAll, &["x"]);
    assert_eq!(list(&mut b, &mut src, 5), ["l", "x"]);
    assert_eq!((src.fetches, src.single), (3, 0));
    b.take_writes();
    // Second batch: both states are read one key at a time, and the batch's own writes
    // still come first.
    let mut src = stored(&slots);
    src.values = vec![Some("v2"); 8];
    src.lists = vec![vec!["l2"]; 8];
    write(&mut b, &mut src, 1, 0, C::ValueSet, &["mine"]);
    assert_eq!(value(&mut b, &mut src, 0).as_deref(), Some("mine"));
    assert_eq!(value(&mut b, &mut src, 1).as_deref(), Some("v2"));
    write(&mut b, &mut src, 2, 2, C::ListAddAll, &["y"]);
    assert_eq!(list(&mut b, &mut src, 2), ["l2", "y"]);
    assert_eq!((src.fetches, src.single), (1, 2));
    // Reading state 1 for every event makes it dense again for the batch after.
    for e in 2..8 {
        value(&mut b, &mut src, e);
    }
    b.take_writes();
    let mut src = stored(&slots);
    src.values = vec![Some("v3"); 8];
    assert_eq!(value(&mut b, &mut src, 4).as_deref(), Some("v3"));
    assert_eq!((src.fetches, src.single), (2, 0));
}

#[test]
fn a_hand_over_mid_batch_sends_each_write_once_and_keeps_what_reads_see() {
    let mut src = stored(&[0, 1, 2]);
    src.values = vec![None, None, None];
    let mut b = Batch::default();
    write(&mut b, &mut src, 1, 0, C::ValueSet, &["aa"]);
    write(&mut b, &mut src, 1, 1, C::ValueSet, &["bbb"]);
    let (writes, packed) = b.take_pending();
    assert_eq!(writes.len(), 2);
    assert_eq!(
        (packed.bytes.as_slice(), packed.ends.as_slice()),
        (&b"aabbb"[..], &[2, 5][..])
    );
    // The batch still answers its reads from what it wrote.
    assert_eq!(value(&mut b, &mut src, 0).as_deref(), Some("aa"));
    b.leave(1);
    write(&mut b, &mut src, 2, 2, C::ListAddAll, &["c"]);
    // Only what came after the hand-over, its values from offset 0.
    assert_eq!(handed(&mut b), [(2, C::ListAddAll, vec!["c".to_owned()])]);
    assert!(handed(&mut b).is_empty());
    assert!(
        b.direct.is_empty(),
        "a new batch starts with every state in it"
    );
}
