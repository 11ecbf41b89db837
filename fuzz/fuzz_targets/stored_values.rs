//! Stored state values and lists as read back from RocksDB, a checkpoint or a savepoint:
//! decoding arbitrary bytes never panics, and what is encoded decodes to itself.
#![no_main]

use eddy_host::state::layout::{
    decode_list, decode_value_ttl, encode_value_ttl, key_group_of, push_list_element, state_id_of,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode_value_ttl(data);
    let _ = decode_list(data);
    let _ = key_group_of(data);
    let _ = state_id_of(data);

    let Some((head, value)) = data.split_first_chunk::<17>() else {
        return;
    };
    let ts = u64::from_be_bytes(head[..8].try_into().expect("8 bytes")) & !(1 << 63);
    let ttl = (head[16] & 1 == 1).then(|| u64::from_be_bytes(head[8..16].try_into().expect("8")));
    let stored = encode_value_ttl(ts, ttl, value);
    assert_eq!(decode_value_ttl(&stored), Some((ts, ttl, value)));

    let mut list = Vec::new();
    let elements: Vec<&[u8]> = value.chunks(7).collect();
    for (i, e) in elements.iter().enumerate() {
        push_list_element(&mut list, ts + i as u64, e);
    }
    let back = decode_list(&list).expect("an encoded list decodes");
    assert_eq!(back.len(), elements.len());
    for (i, (t, e)) in back.iter().enumerate() {
        assert_eq!((*t, *e), (ts + i as u64, elements[i]));
    }
});
