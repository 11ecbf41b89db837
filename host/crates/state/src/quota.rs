//! Per-key quotas: a bound, set by the operator per state, on what one key may hold (map
//! entries or list elements, and bytes), so one hot key cannot grow without end.
//!
//! Checked after each plugin write to a state with a quota, against the key's live content
//! (TTL applied: expired entries do not count). Over the bound, the policy decides:
//! - [`QuotaPolicy::Reject`]: the write is refused, and with it the event (the caller
//!   dead-letters it; none of its writes are kept);
//! - [`QuotaPolicy::Evict`]: the oldest list elements, or the map entries written longest ago
//!   (by their write time, ties by map key), are removed until the key fits. A value state
//!   has nothing to evict: a value over `max_bytes` is refused under either policy, as is an
//!   entry that alone exceeds `max_bytes`.
//!
//! Bytes are what the plugin stored: values, plus map keys for map entries.

use serde::{Deserialize, Serialize};

use super::batch::KeyedAccess;
use super::layout::{decode_list, decode_value_ttl, map_entry_key, push_list_element, state_key};
use super::{Result, StateError, StateInfo, StateKind};

/// What happens to a write that takes a key over its quota.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QuotaPolicy {
    /// The event is refused (dead-lettered, kind `quota`).
    #[default]
    Reject,
    /// The oldest entries go.
    Evict,
}

/// The bound on one key of a state, as the operator writes it (`[state.quota.<state>]`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    /// Map entries or list elements per key.
    #[serde(default)]
    pub max_entries: Option<u64>,
    /// Bytes per key (values, plus map keys for map entries).
    #[serde(default)]
    pub max_bytes: Option<u64>,
    /// Over the bound: refuse (default: the event is dead-lettered, kind `quota`) or evict.
    #[serde(default)]
    pub policy: QuotaPolicy,
}

/// What a quota check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enforced {
    /// The key is within its quota.
    Within,
    /// It was over; this many entries were evicted to bring it back.
    Evicted(u64),
    /// It is over and stays over: the write must be refused. Says by how much.
    Over(String),
}

impl Quota {
    fn fits(&self, entries: u64, bytes: u64) -> bool {
        self.max_entries.is_none_or(|m| entries <= m) && self.max_bytes.is_none_or(|m| bytes <= m)
    }

    fn describe(&self, state: &StateInfo, entries: u64, bytes: u64) -> String {
        let mut limits = Vec::new();
        if let Some(m) = self.max_entries {
            limits.push(format!("max_entries = {m}"));
        }
        if let Some(m) = self.max_bytes {
            limits.push(format!("max_bytes = {m}"));
        }
        let holds = match state.kind {
            StateKind::Value => format!("{bytes} bytes"),
            _ => format!("{entries} entries, {bytes} bytes"),
        };
        format!(
            "quota: the key would hold {holds} in state `{}`, over [state.quota.{}] {} (policy {})",
            state.name,
            state.name,
            limits.join(", "),
            match self.policy {
                QuotaPolicy::Reject => "reject",
                QuotaPolicy::Evict => "evict",
            }
        )
    }
}

impl KeyedAccess<'_> {
    /// Checks `key` of `state` against `quota` after a write, evicting under
    /// [`QuotaPolicy::Evict`].
    pub fn enforce_quota(
        &mut self,
        state: &StateInfo,
        kg: u16,
        key: &[u8],
        quota: &Quota,
    ) -> Result<Enforced> {
        match state.kind {
            StateKind::Value => {
                let bytes = self
                    .value_get(state, kg, key)?
                    .map_or(0, |v| v.len() as u64);
                Ok(match quota.max_bytes {
                    Some(m) if bytes > m => Enforced::Over(quota.describe(state, 1, bytes)),
                    _ => Enforced::Within,
                })
            }
            StateKind::List => self.enforce_list(state, kg, key, quota),
            StateKind::Map => self.enforce_map(state, kg, key, quota),
        }
    }

    fn enforce_list(
        &mut self,
        state: &StateInfo,
        kg: u16,
        key: &[u8],
        quota: &Quota,
    ) -> Result<Enforced> {
        // Drops expired elements from the stored list first (TTL), so they do not count.
        self.list_get(state, kg, key)?;
        let k = state_key(kg, state.id, key);
        let Some(stored) = self.lookup(&k)? else {
            return Ok(Enforced::Within);
        };
        let elements = decode_list(&stored)
            .ok_or_else(|| StateError::Corrupt(format!("list of state `{}`", state.name)))?;
        let mut bytes: u64 = elements.iter().map(|(_, v)| v.len() as u64).sum();
        let mut entries = elements.len() as u64;
        if quota.fits(entries, bytes) {
            return Ok(Enforced::Within);
        }
        if quota.policy == QuotaPolicy::Reject {
            return Ok(Enforced::Over(quota.describe(state, entries, bytes)));
        }
        // Oldest first: drop from the front, keeping at least the newest element.
        let mut drop = 0;
        while !quota.fits(entries, bytes) && drop + 1 < elements.len() {
            bytes -= elements[drop].1.len() as u64;
            entries -= 1;
            drop += 1;
        }
        if !quota.fits(entries, bytes) {
            return Ok(Enforced::Over(quota.describe(state, entries, bytes)));
        }
        let mut kept = Vec::with_capacity(stored.len());
        for (ts, v) in &elements[drop..] {
            push_list_element(&mut kept, *ts, v);
        }
        self.put_raw(k, kept);
        Ok(Enforced::Evicted(drop as u64))
    }

    fn enforce_map(
        &mut self,
        state: &StateInfo,
        kg: u16,
        key: &[u8],
        quota: &Quota,
    ) -> Result<Enforced> {
        let prefix = state_key(kg, state.id, key);
        // (write time, map key, bytes) of every live entry.
        let mut live: Vec<(u64, Vec<u8>, u64)> = Vec::new();
        let mut cursor: Option<Vec<u8>> = None;
        loop {
            let chunk = self.scan(&prefix, cursor.as_deref(), 256)?;
            let Some((last, _)) = chunk.last() else {
                break;
            };
            cursor = Some(last.clone());
            for (k, stored) in chunk {
                let (ts, _, _) = decode_value_ttl(&stored).ok_or_else(|| {
                    StateError::Corrupt(format!("map entry of state `{}`", state.name))
                })?;
                let map_key = k[prefix.len()..].to_vec();
                // TTL decides whether it still counts (and removes it if expired).
                if let Some(v) = self.read_entry(state, k, &stored)? {
                    let size = (map_key.len() + v.len()) as u64;
                    live.push((ts, map_key, size));
                }
            }
        }
        let mut entries = live.len() as u64;
        let mut bytes: u64 = live.iter().map(|(_, _, b)| b).sum();
        if quota.fits(entries, bytes) {
            return Ok(Enforced::Within);
        }
        if quota.policy == QuotaPolicy::Reject {
            return Ok(Enforced::Over(quota.describe(state, entries, bytes)));
        }
        live.sort();
        let mut evicted = 0;
        for (_, map_key, size) in &live[..live.len().saturating_sub(1)] {
            if quota.fits(entries, bytes) {
                break;
            }
            self.delete_raw(map_entry_key(kg, state.id, key, map_key));
            entries -= 1;
            bytes -= size;
            evicted += 1;
        }
        if !quota.fits(entries, bytes) {
            return Ok(Enforced::Over(quota.describe(state, entries, bytes)));
        }
        Ok(Enforced::Evicted(evicted))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{ManualClock, StateStore, Ttl, TtlUpdate, TtlVisibility};

    fn open() -> (tempfile::TempDir, ManualClock, StateStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = ManualClock::new(1_000);
        let st = StateStore::open(dir.path(), 128, Arc::new(clock.clone())).expect("open");
        (dir, clock, st)
    }

    fn map_keys(a: &mut KeyedAccess<'_>, m: &StateInfo, kg: u16) -> Vec<Vec<u8>> {
        let entries = a.map_entries(m, kg, b"k", None, 10).expect("entries");
        entries.into_iter().map(|(k, _)| k).collect()
    }

    fn evict(max_entries: Option<u64>, max_bytes: Option<u64>) -> Quota {
        Quota {
            max_entries,
            max_bytes,
            policy: QuotaPolicy::Evict,
        }
    }

    #[test]
    fn map_eviction_removes_the_entries_written_longest_ago_across_batches() {
        let (_dir, clock, st) = open();
        let m = st.open_state("seen", StateKind::Map, None).expect("map");
        let kg = st.key_group(b"k");
        let q = evict(Some(3), None);
        // Written in the order z, a, m, then b (later): z goes first, though it sorts last.
        for (i, mk) in [b"z", b"a", b"m", b"b"].iter().enumerate() {
            clock.set(1_000 + i as u64);
            let mut b = st.batch();
            let mut a = KeyedAccess::new(&st, &mut b);
            a.map_put(&m, kg, b"k", *mk, b"v");
            let e = a.enforce_quota(&m, kg, b"k", &q).expect("enforce");
            assert_eq!(
                e,
                if i < 3 {
                    Enforced::Within
                } else {
                    Enforced::Evicted(1)
                }
            );
            st.commit(b).expect("commit");
        }
        let mut b = st.batch();
        let mut a = KeyedAccess::new(&st, &mut b);
        assert_eq!(
            map_keys(&mut a, &m, kg),
            vec![b"a".to_vec(), b"b".to_vec(), b"m".to_vec()]
        );
        // Rewriting `a` makes it the newest: the next new entry evicts `m`.
        clock.set(2_000);
        a.map_put(&m, kg, b"k", b"a", b"v2");
        clock.set(2_001);
        a.map_put(&m, kg, b"k", b"c", b"v");
        assert_eq!(
            a.enforce_quota(&m, kg, b"k", &q).expect("enforce"),
            Enforced::Evicted(1)
        );
        assert_eq!(
            map_keys(&mut a, &m, kg),
            vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
        );
    }

    #[test]
    fn bytes_bound_lists_by_eviction_and_refuses_what_cannot_fit() {
        let (_dir, _clock, st) = open();
        let l = st
            .open_state("recent", StateKind::List, None)
            .expect("list");
        let v = st
            .open_state("blob", StateKind::Value, None)
            .expect("value");
        let kg = st.key_group(b"k");
        let mut b = st.batch();
        let mut a = KeyedAccess::new(&st, &mut b);
        // 10 bytes per key: "aaaa" + "bbbb" fit, "cccc" pushes "aaaa" out.
        let q = evict(None, Some(10));
        for e in [b"aaaa", b"bbbb", b"cccc"] {
            a.list_add_all(&l, kg, b"k", &[e.to_vec()]).expect("add");
            a.enforce_quota(&l, kg, b"k", &q).expect("enforce");
        }
        assert_eq!(
            a.list_get(&l, kg, b"k").expect("get"),
            vec![b"bbbb".to_vec(), b"cccc".to_vec()]
        );
        // One element larger than the bound cannot be made to fit by evicting.
        a.list_add_all(&l, kg, b"k", &[vec![b'x'; 11]])
            .expect("add");
        assert!(matches!(
            a.enforce_quota(&l, kg, b"k", &q).expect("enforce"),
            Enforced::Over(_)
        ));
        // A value over max_bytes is refused under either policy, and the message says why.
        a.value_set(&v, kg, b"k", &[b'v'; 12]);
        let Enforced::Over(why) = a.enforce_quota(&v, kg, b"k", &q).expect("enforce") else {
            panic!("a value over max_bytes is refused");
        };
        assert!(
            why.contains("12 bytes") && why.contains("[state.quota.blob] max_bytes = 10"),
            "{why}"
        );
    }

    #[test]
    fn expired_entries_do_not_count_and_reject_leaves_the_list_alone() {
        let (_dir, clock, st) = open();
        let ttl = Ttl {
            ttl_ms: 100,
            update: TtlUpdate::OnCreateAndWrite,
            visibility: TtlVisibility::NeverReturnExpired,
        };
        let l = st
            .open_state("recent", StateKind::List, Some(ttl))
            .expect("list");
        let kg = st.key_group(b"k");
        let q = Quota {
            max_entries: Some(2),
            max_bytes: None,
            policy: QuotaPolicy::Reject,
        };
        let mut b = st.batch();
        let mut a = KeyedAccess::new(&st, &mut b);
        a.list_add_all(&l, kg, b"k", &[b"1".to_vec(), b"2".to_vec()])
            .expect("add");
        assert_eq!(
            a.enforce_quota(&l, kg, b"k", &q).expect("ok"),
            Enforced::Within
        );
        st.commit(b).expect("commit");
        let mut refused = st.batch();
        let mut a = KeyedAccess::new(&st, &mut refused);
        a.list_add_all(&l, kg, b"k", &[b"3".to_vec()]).expect("add");
        assert!(matches!(
            a.enforce_quota(&l, kg, b"k", &q).expect("over"),
            Enforced::Over(m) if m.contains("3 entries")
        ));
        drop(refused);
        // Later the two have expired: two new elements fit.
        clock.set(1_200);
        let mut b = st.batch();
        let mut a = KeyedAccess::new(&st, &mut b);
        a.list_add_all(&l, kg, b"k", &[b"3".to_vec(), b"4".to_vec()])
            .expect("add");
        assert_eq!(
            a.enforce_quota(&l, kg, b"k", &q).expect("ok"),
            Enforced::Within
        );
        assert_eq!(
            a.list_get(&l, kg, b"k").expect("get"),
            vec![b"3".to_vec(), b"4".to_vec()]
        );
    }
}
