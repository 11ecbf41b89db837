//! Tests of the typed state handles that need no host: key encodings and their order.

use super::*;
use std::collections::BTreeMap;

fn round_trip<K: MapKey<Borrowed = K> + PartialEq + fmt::Debug>(key: K) {
    assert_eq!(K::decode_key(K::encode_key(&key)), Ok(key));
}

/// Byte order of the encodings equals the natural order of the values.
fn assert_order_preserved<K: MapKey<Borrowed = K> + Ord + Copy + fmt::Debug>(values: &[K]) {
    let mut by_value = values.to_vec();
    by_value.sort();
    let mut by_bytes = values.to_vec();
    by_bytes.sort_by_key(|k| K::encode_key(k));
    assert_eq!(by_value, by_bytes);
}

#[test]
fn string_keys_are_utf8() {
    assert_eq!(String::encode_key("tx-1"), b"tx-1".to_vec());
    assert_eq!(String::encode_key("é"), vec![0xc3, 0xa9]);
    assert_eq!(String::encode_key(""), Vec::<u8>::new());
    assert_eq!(String::decode_key(b"abc".to_vec()), Ok("abc".to_owned()));
    let err = String::decode_key(vec![0xff]).expect_err("not UTF-8");
    assert!(err.starts_with("key is not UTF-8"), "{err}");
}

#[test]
fn byte_keys_are_raw() {
    assert_eq!(Vec::<u8>::encode_key(&[0, 255, 7]), vec![0, 255, 7]);
    assert_eq!(Vec::<u8>::decode_key(vec![9, 8]), Ok(vec![9, 8]));
}

#[test]
fn unsigned_keys_are_big_endian() {
    assert_eq!(u32::encode_key(&1), vec![0, 0, 0, 1]);
    assert_eq!(u32::encode_key(&0x0102_0304), vec![1, 2, 3, 4]);
    assert_eq!(u64::encode_key(&1), vec![0, 0, 0, 0, 0, 0, 0, 1]);
    assert_eq!(u64::encode_key(&u64::MAX), vec![0xff; 8]);
    for k in [0, 1, 255, 256, u32::MAX] {
        round_trip(k);
    }
    for k in [0, 1, 1 << 40, u64::MAX] {
        round_trip(k);
    }
}

#[test]
fn signed_keys_flip_the_sign_bit() {
    assert_eq!(i32::encode_key(&i32::MIN), vec![0, 0, 0, 0]);
    assert_eq!(i32::encode_key(&-1), vec![0x7f, 0xff, 0xff, 0xff]);
    assert_eq!(i32::encode_key(&0), vec![0x80, 0, 0, 0]);
    assert_eq!(i32::encode_key(&1), vec![0x80, 0, 0, 1]);
    assert_eq!(i32::encode_key(&i32::MAX), vec![0xff; 4]);
    assert_eq!(
        i64::encode_key(&-1),
        vec![0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]
    );
    assert_eq!(i64::encode_key(&0), vec![0x80, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(i64::encode_key(&i64::MIN), vec![0; 8]);
    for k in [i32::MIN, -256, -1, 0, 1, 256, i32::MAX] {
        round_trip(k);
    }
    for k in [i64::MIN, -(1 << 40), -1, 0, 1, 1 << 40, i64::MAX] {
        round_trip(k);
    }
}

#[test]
fn byte_order_is_numeric_order() {
    assert_order_preserved(&[5u32, 0, 256, 255, 1, u32::MAX, 65_536]);
    assert_order_preserved(&[5u64, 0, 1 << 33, 255, u64::MAX, 256]);
    assert_order_preserved(&[5i32, -5, 0, i32::MIN, i32::MAX, -1, 1, 256, -256]);
    assert_order_preserved(&[5i64, -5, 0, i64::MIN, i64::MAX, -1, 1, 1 << 40, -(1 << 40)]);
    // Strings order by code point, which is UTF-8 byte order.
    let mut words = vec!["b", "a", "ab", "", "é", "z"];
    let mut by_bytes = words.clone();
    words.sort();
    by_bytes.sort_by_key(|w| String::encode_key(w));
    assert_eq!(words, by_bytes);
}

#[test]
fn integer_keys_of_the_wrong_width_do_not_decode() {
    assert_eq!(
        u64::decode_key(vec![1, 2, 3]),
        Err("a u64 key is 8 bytes, this one is 3".to_owned())
    );
    assert!(u32::decode_key(vec![0; 8]).is_err());
    assert!(i32::decode_key(Vec::new()).is_err());
    assert!(i64::decode_key(vec![0; 4]).is_err());
}

#[test]
fn decode_errors_name_the_state() {
    let slot = Slot::new("stats".to_owned(), wit::StateKind::Value);
    let err = slot
        .decode::<u64>(b"\"x\"")
        .expect_err("a string is not a u64");
    assert!(
        matches!(&err, StateError::Decode(m) if m.starts_with("cannot decode a value of state `stats`: ")),
        "{err:?}"
    );
    let err = slot.decode_key::<u32>(vec![1]).expect_err("too short");
    assert_eq!(
        err.to_string(),
        "cannot decode a key of state `stats`: a u32 key is 4 bytes, this one is 1"
    );
    let mut bad = BTreeMap::new();
    bad.insert(vec![1u8], 1u8);
    let err = slot
        .encode(&bad)
        .expect_err("byte-vector keys are not JSON");
    assert!(matches!(err, StateError::Encode(m) if m.contains("state `stats`")));
}

#[test]
fn values_are_compact_json() {
    #[derive(Serialize)]
    struct Stats {
        count: u64,
        last_ts: Option<u64>,
    }
    let slot = Slot::new("s".to_owned(), wit::StateKind::Value);
    assert_eq!(
        slot.encode(&Stats {
            count: 3,
            last_ts: None
        }),
        Ok(br#"{"count":3,"last_ts":null}"#.to_vec())
    );
    assert_eq!(slot.encode(&1250u64), Ok(b"1250".to_vec()));
    assert_eq!(slot.encode("tx"), Ok(br#""tx""#.to_vec()));
    assert_eq!(slot.decode::<Vec<u64>>(b" [1, 2] "), Ok(vec![1, 2]));
}

#[test]
fn ttl_builder_and_wit_conversion() {
    let ttl = Ttl::new(Duration::from_millis(1500));
    assert_eq!(ttl.ttl_ms(), 1500);
    assert!(!ttl.updates_on_read());
    assert!(!ttl.returns_expired());
    let config = wit::TtlConfig::from(ttl);
    assert_eq!(config.ttl_ms, 1500);
    assert_eq!(config.update, wit::TtlUpdate::OnCreateAndWrite);
    assert_eq!(config.visibility, wit::TtlVisibility::NeverReturnExpired);

    let ttl = Ttl::from_millis(10)
        .update_on_read_and_write()
        .return_expired_if_not_cleaned_up();
    let config = wit::TtlConfig::from(ttl);
    assert_eq!(config.update, wit::TtlUpdate::OnReadAndWrite);
    assert_eq!(
        config.visibility,
        wit::TtlVisibility::ReturnExpiredIfNotCleanedUp
    );

    assert_eq!(Ttl::new(Duration::MAX).ttl_ms(), u64::MAX);
    assert_eq!(Ttl::new(Duration::from_micros(999)).ttl_ms(), 0);
}

#[test]
fn handles_keep_name_and_ttl() {
    let value = ValueState::<u64>::new("count");
    assert_eq!(value.name(), "count");
    assert_eq!(value.ttl(), None);
    let ttl = Ttl::from_millis(5);
    let map = MapState::<String, u64>::new("seen").with_ttl(ttl);
    assert_eq!((map.name(), map.ttl()), ("seen", Some(ttl)));
    let list = ListState::<u64>::new("recent").with_ttl(ttl);
    assert_eq!((list.name(), list.ttl()), ("recent", Some(ttl)));
    assert_eq!(
        format!("{value:?}"),
        r#"ValueState { name: "count", ttl: None, id: None }"#
    );
}

#[test]
fn keyed_calls_outside_process_fail_without_calling_the_host() {
    let value = ValueState::<u64>::new("count");
    assert_eq!(value.get(), Err(StateError::NoSuchEvent));
    assert_eq!(value.set(&1), Err(StateError::NoSuchEvent));
    assert_eq!(
        value.update(|n| n.unwrap_or(0)),
        Err(StateError::NoSuchEvent)
    );
    let map = MapState::<String, u64>::new("seen");
    assert_eq!(map.contains("x"), Err(StateError::NoSuchEvent));
    let mut entries = map.entries();
    assert_eq!(entries.next(), Some(Err(StateError::NoSuchEvent)));
    assert_eq!(entries.next(), None);
    assert_eq!(map.keys().next(), Some(Err(StateError::NoSuchEvent)));
    let list = ListState::<u64>::new("recent");
    assert_eq!(list.get(), Err(StateError::NoSuchEvent));
    assert_eq!(list.add_all(&[1, 2]), Err(StateError::NoSuchEvent));
}

#[test]
fn state_errors_display() {
    assert_eq!(
        StateError::from(wit::StateError::WrongKind(
            "seen: value, not map".to_owned()
        ))
        .to_string(),
        "state exists with another kind: seen: value, not map"
    );
    assert_eq!(
        StateError::from(wit::StateError::Storage("io".to_owned())),
        StateError::Storage("io".to_owned())
    );
    assert_eq!(
        StateError::from(wit::StateError::UnknownState).to_string(),
        "state is not open in this plugin instance"
    );
    assert_eq!(
        StateError::from(wit::StateError::ReadOnly("query".to_owned())).to_string(),
        "state is read-only here: query"
    );
    let err: Box<dyn std::error::Error> = Box::new(StateError::NoSuchEvent);
    assert!(err.to_string().starts_with("no event is being processed"));
}
