//! The Rust guest SDK's map-key codecs, natively: any stored key bytes decode to a key or a
//! reason (never a panic), every key encodes to bytes that decode to itself, and integer keys
//! encode in their numeric order (map entries are ordered, and paged, by key bytes).
#![no_main]

use eddy_sdk::MapKey;
use libfuzzer_sys::fuzz_target;

/// `K`'s codec over the first `N` bytes of `data` and of `data` shifted by one.
fn check<K, const N: usize>(data: &[u8], key: impl Fn(&[u8; N]) -> K)
where
    K: MapKey<Borrowed = K> + Ord + Copy + std::fmt::Debug,
{
    let _ = K::decode_key(data.to_vec());
    let (Some(a), Some(b)) = (
        data.first_chunk::<N>(),
        data.get(1..).and_then(|d| d.first_chunk::<N>()),
    ) else {
        return;
    };
    let (a, b) = (key(a), key(b));
    let (ea, eb) = (K::encode_key(&a), K::encode_key(&b));
    assert_eq!(K::decode_key(ea.clone()), Ok(a));
    assert_eq!(
        a.cmp(&b),
        ea.cmp(&eb),
        "{a:?} and {b:?} encode out of order"
    );
}

fuzz_target!(|data: &[u8]| {
    check::<u32, 4>(data, |b| u32::from_le_bytes(*b));
    check::<u64, 8>(data, |b| u64::from_le_bytes(*b));
    check::<i32, 4>(data, |b| i32::from_le_bytes(*b));
    check::<i64, 8>(data, |b| i64::from_le_bytes(*b));
    match String::decode_key(data.to_vec()) {
        Ok(s) => assert_eq!(String::encode_key(&s), data),
        Err(reason) => assert!(reason.contains("UTF-8")),
    }
    assert_eq!(Vec::<u8>::decode_key(data.to_vec()).as_deref(), Ok(data));
});
