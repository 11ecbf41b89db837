//! Key groups: the stable, language-neutral mapping from an event key to the unit of state
//! partitioning.
//!
//! `key_group(key) = fnv1a_32(key bytes) mod key_groups`, with FNV-1a 32-bit (offset basis
//! 2166136261, prime 16777619) over the exact key bytes. It is the hash NATS uses for
//! `{{partition(n, token)}}` subject mapping, so a client in any language (or the NATS server
//! itself) computes the same owner of a key. A partition owns a contiguous range of key
//! groups; key groups, not keys, move between hosts and are the unit of savepoint layout.

/// FNV-1a, 32-bit.
pub fn fnv1a_32(bytes: &[u8]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for b in bytes {
        hash ^= u32::from(*b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

/// The key group of `key` among `key_groups` groups.
pub fn key_group(key: &[u8], key_groups: u32) -> u16 {
    // key_groups <= MAX_KEY_GROUPS (65536), so the remainder fits in u16.
    (fnv1a_32(key) % key_groups.max(1)) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_published_vectors() {
        // Test vectors from the FNV reference (draft-eastlake-fnv): "", "a", "foobar".
        assert_eq!(fnv1a_32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a_32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a_32(b"foobar"), 0xbf9c_f968);
    }

    #[test]
    fn key_groups_spread_and_stay_in_range() {
        let mut counts = vec![0u32; 128];
        for i in 0..128_000 {
            let kg = key_group(format!("customer-{i}").as_bytes(), 128);
            counts[kg as usize] += 1;
        }
        let (min, max) = (
            counts.iter().min().copied().unwrap_or(0),
            counts.iter().max().copied().unwrap_or(0),
        );
        assert!(
            min > 800 && max < 1200,
            "uneven spread: min {min} max {max}"
        );
    }
}
