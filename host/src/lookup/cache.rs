//! The cache in front of a lookup store (Flink's lookup cache options): none, partial (least
//! recently used entries go first, with expiry after write and after access, "not found"
//! remembered or not), or full (everything loaded, reloaded on an interval).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::{CacheConfig, CacheMode};

struct Entry {
    value: Option<Vec<u8>>,
    written: Instant,
    accessed: Instant,
    /// Position in the recency order.
    tick: u64,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    /// Recency order: tick → key; the smallest tick is the least recently used.
    order: BTreeMap<u64, String>,
    tick: u64,
}

/// A store's cache.
pub struct Cache {
    mode: CacheMode,
    max_entries: usize,
    after_write: Option<Duration>,
    after_access: Option<Duration>,
    cache_missing: bool,
    inner: Mutex<Inner>,
}

impl Cache {
    /// A cache as configured.
    pub fn new(cfg: &CacheConfig) -> Cache {
        let ms = |v: u64| (v > 0).then(|| Duration::from_millis(v));
        Cache {
            mode: cfg.mode,
            max_entries: cfg.max_entries,
            after_write: ms(cfg.expire_after_write_ms),
            after_access: ms(cfg.expire_after_access_ms),
            cache_missing: cfg.cache_missing,
            inner: Mutex::default(),
        }
    }

    /// The mode.
    pub fn mode(&self) -> CacheMode {
        self.mode
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached answer for `key`: `Some(Some(v))` a value, `Some(None)` a remembered "not
    /// found", `None` not cached (or expired).
    pub fn get(&self, key: &str) -> Option<Option<Vec<u8>>> {
        if self.mode == CacheMode::None {
            return None;
        }
        let now = Instant::now();
        let mut inner = self.lock();
        let Inner {
            entries,
            order,
            tick,
        } = &mut *inner;
        let expired = {
            let e = entries.get(key)?;
            self.mode == CacheMode::Partial
                && (self.after_write.is_some_and(|d| now - e.written >= d)
                    || self.after_access.is_some_and(|d| now - e.accessed >= d))
        };
        if expired {
            if let Some(e) = entries.remove(key) {
                order.remove(&e.tick);
            }
            return None;
        }
        let e = entries.get_mut(key)?;
        if self.mode == CacheMode::Partial {
            order.remove(&e.tick);
            *tick += 1;
            e.tick = *tick;
            order.insert(*tick, key.to_string());
            e.accessed = now;
        }
        Some(e.value.clone())
    }

    /// Remembers a fetched answer (partial mode only), evicting the least recently used entry
    /// when full.
    pub fn put(&self, key: &str, value: Option<Vec<u8>>) {
        if self.mode != CacheMode::Partial || (value.is_none() && !self.cache_missing) {
            return;
        }
        let now = Instant::now();
        let mut inner = self.lock();
        inner.tick += 1;
        let tick = inner.tick;
        if let Some(old) = inner.entries.insert(
            key.to_string(),
            Entry {
                value,
                written: now,
                accessed: now,
                tick,
            },
        ) {
            inner.order.remove(&old.tick);
        }
        inner.order.insert(tick, key.to_string());
        while inner.entries.len() > self.max_entries {
            let Some((_, oldest)) = inner.order.pop_first() else {
                break;
            };
            inner.entries.remove(&oldest);
        }
    }

    /// Replaces everything (full mode).
    pub fn replace_all(&self, all: Vec<(String, Vec<u8>)>) {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.order.clear();
        inner.entries = all
            .into_iter()
            .map(|(k, v)| {
                (
                    k,
                    Entry {
                        value: Some(v),
                        written: now,
                        accessed: now,
                        tick: 0,
                    },
                )
            })
            .collect();
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partial(max: usize, write_ms: u64, access_ms: u64, missing: bool) -> Cache {
        Cache::new(&CacheConfig {
            mode: CacheMode::Partial,
            max_entries: max,
            expire_after_write_ms: write_ms,
            expire_after_access_ms: access_ms,
            cache_missing: missing,
            reload_interval_ms: 0,
        })
    }

    #[test]
    fn least_recently_used_goes_first() {
        let c = partial(2, 0, 0, true);
        c.put("a", Some(b"1".to_vec()));
        c.put("b", Some(b"2".to_vec()));
        assert_eq!(c.get("a"), Some(Some(b"1".to_vec())));
        c.put("c", Some(b"3".to_vec()));
        assert_eq!(c.get("b"), None, "b was least recently used");
        assert_eq!(c.get("a"), Some(Some(b"1".to_vec())));
        assert_eq!(c.get("c"), Some(Some(b"3".to_vec())));
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn entries_expire_after_write_and_after_access() {
        let c = partial(10, 40, 0, true);
        c.put("a", Some(b"1".to_vec()));
        std::thread::sleep(Duration::from_millis(20));
        assert!(c.get("a").is_some());
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(c.get("a"), None, "40 ms after write");

        let c = partial(10, 0, 40, true);
        c.put("a", Some(b"1".to_vec()));
        for _ in 0..4 {
            std::thread::sleep(Duration::from_millis(20));
            assert!(c.get("a").is_some(), "each access extends it");
        }
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(c.get("a"), None, "40 ms after the last access");
    }

    #[test]
    fn not_found_is_remembered_only_when_asked() {
        let c = partial(10, 0, 0, true);
        c.put("x", None);
        assert_eq!(c.get("x"), Some(None));
        let c = partial(10, 0, 0, false);
        c.put("x", None);
        assert_eq!(c.get("x"), None);
    }

    #[test]
    fn none_mode_caches_nothing() {
        let c = Cache::new(&CacheConfig {
            mode: CacheMode::None,
            ..CacheConfig::default()
        });
        c.put("a", Some(vec![1]));
        assert_eq!(c.get("a"), None);
    }
}
