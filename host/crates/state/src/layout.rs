//! The byte layout of keyed state in RocksDB. Changing it is a state format change.
//!
//! Key (column family `keyed`):
//! `key_group: u16 BE | state_id: u32 BE | key_len: u32 BE | key bytes | [map key bytes]`.
//! Key group first, so a key group's state is one contiguous range (savepoints by key group,
//! rescaling by range deletes); the length prefix makes one key's map entries a contiguous
//! range that no other key's entries can interleave with.
//!
//! Value (value state and each map entry): `last_update_ms: u64 BE | value bytes`, or, for an
//! entry written with its own TTL, `last_update_ms | 1 << 63: u64 BE | ttl_ms: u64 BE | value
//! bytes` (timestamps stay below 2^63, so the top bit is free to flag the longer header).
//! List: a sequence of `last_update_ms: u64 BE | len: u32 BE | element bytes`, so elements
//! expire individually.

/// Bytes before the user key: key group, state id, key length.
pub const PREFIX_LEN: usize = 2 + 4 + 4;

/// The key of value/list state, and the prefix of one key's map entries.
pub fn state_key(key_group: u16, state_id: u32, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(PREFIX_LEN + key.len() + 16);
    out.extend_from_slice(&key_group.to_be_bytes());
    out.extend_from_slice(&state_id.to_be_bytes());
    out.extend_from_slice(&(key.len() as u32).to_be_bytes());
    out.extend_from_slice(key);
    out
}

/// The key of one map entry.
pub fn map_entry_key(key_group: u16, state_id: u32, key: &[u8], map_key: &[u8]) -> Vec<u8> {
    let mut out = state_key(key_group, state_id, key);
    out.extend_from_slice(map_key);
    out
}

/// The smallest byte string greater than every string starting with `prefix`, or None when
/// the prefix is all 0xff.
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// The state id of a stored key (for the compaction filter and savepoints).
pub fn state_id_of(stored_key: &[u8]) -> Option<u32> {
    let b = stored_key.get(2..6)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// The key group of a stored key.
pub fn key_group_of(stored_key: &[u8]) -> Option<u16> {
    let b = stored_key.get(0..2)?;
    Some(u16::from_be_bytes([b[0], b[1]]))
}

const OWN_TTL: u64 = 1 << 63;

/// Wraps a value with its timestamp.
pub fn encode_value(ts: u64, value: &[u8]) -> Vec<u8> {
    encode_value_ttl(ts, None, value)
}

/// Wraps a value with its timestamp and, if given, its own TTL.
pub fn encode_value_ttl(ts: u64, own_ttl_ms: Option<u64>, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + value.len());
    match own_ttl_ms {
        Some(ttl) => {
            out.extend_from_slice(&((ts & !OWN_TTL) | OWN_TTL).to_be_bytes());
            out.extend_from_slice(&ttl.to_be_bytes());
        }
        None => out.extend_from_slice(&(ts & !OWN_TTL).to_be_bytes()),
    }
    out.extend_from_slice(value);
    out
}

/// Splits a stored value into timestamp and bytes. None if it is too short (corrupt).
pub fn decode_value(stored: &[u8]) -> Option<(u64, &[u8])> {
    decode_value_ttl(stored).map(|(ts, _, v)| (ts, v))
}

/// Splits a stored value into timestamp, own TTL (if written with one) and bytes.
pub fn decode_value_ttl(stored: &[u8]) -> Option<(u64, Option<u64>, &[u8])> {
    let (ts, rest) = stored.split_first_chunk::<8>()?;
    let ts = u64::from_be_bytes(*ts);
    if ts & OWN_TTL == 0 {
        return Some((ts, None, rest));
    }
    let (ttl, rest) = rest.split_first_chunk::<8>()?;
    Some((ts & !OWN_TTL, Some(u64::from_be_bytes(*ttl)), rest))
}

/// Appends one list element.
pub fn push_list_element(out: &mut Vec<u8>, ts: u64, value: &[u8]) {
    out.extend_from_slice(&ts.to_be_bytes());
    out.extend_from_slice(&(value.len() as u32).to_be_bytes());
    out.extend_from_slice(value);
}

/// Decodes a stored list. None if it is corrupt.
pub fn decode_list(mut stored: &[u8]) -> Option<Vec<(u64, &[u8])>> {
    let mut out = Vec::new();
    while !stored.is_empty() {
        let (ts, rest) = stored.split_first_chunk::<8>()?;
        let (len, rest) = rest.split_first_chunk::<4>()?;
        let len = u32::from_be_bytes(*len) as usize;
        if rest.len() < len {
            return None;
        }
        out.push((u64::from_be_bytes(*ts), &rest[..len]));
        stored = &rest[len..];
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_keys_map_entries_are_contiguous() {
        // "ab" with map key "c" must not fall between "a"'s entries.
        let a_prefix = state_key(1, 7, b"a");
        let ab_entry = map_entry_key(1, 7, b"ab", b"c");
        let end = prefix_end(&a_prefix).expect("prefix has a non-0xff byte");
        assert!(!(ab_entry.as_slice() >= a_prefix.as_slice() && ab_entry < end));
        assert_eq!(state_id_of(&ab_entry), Some(7));
        assert_eq!(key_group_of(&ab_entry), Some(1));
    }

    #[test]
    fn values_and_lists_round_trip() {
        let v = encode_value(42, b"hello");
        assert_eq!(decode_value(&v), Some((42, &b"hello"[..])));
        let own = encode_value_ttl(42, Some(500), b"hi");
        assert_eq!(decode_value_ttl(&own), Some((42, Some(500), &b"hi"[..])));
        assert_eq!(decode_value(&own), Some((42, &b"hi"[..])));
        let mut l = Vec::new();
        push_list_element(&mut l, 1, b"x");
        push_list_element(&mut l, 2, b"");
        push_list_element(&mut l, 3, b"zz");
        let d = decode_list(&l).expect("valid list");
        assert_eq!(d, vec![(1, &b"x"[..]), (2, &b""[..]), (3, &b"zz"[..])]);
        assert!(decode_list(&l[..l.len() - 1]).is_none());
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff]), None);
    }
}
