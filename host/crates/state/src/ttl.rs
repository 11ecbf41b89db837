//! State time-to-live: configuration, the processing-time clock, and the expiry rule.
//!
//! Semantics are Flink's `StateTtlConfig` (see `shared/SPEC-STATE.md`): an entry written at
//! `ts` is expired when `ts + ttl <= now` (equality counts as expired; the sum saturates, so a
//! huge TTL never wraps into the past). Every stored value carries its last-update timestamp,
//! so TTL can be switched on for existing state without a migration.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// When an entry's time-to-live restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TtlUpdate {
    /// Creating or writing stamps the entry (Flink's default).
    OnCreateAndWrite,
    /// Reads stamp it too.
    OnReadAndWrite,
}

/// Whether an expired entry not yet cleaned up may be returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TtlVisibility {
    /// Never (Flink's default).
    NeverReturnExpired,
    /// Once; the read removes it.
    ReturnExpiredIfNotCleanedUp,
}

/// A state's TTL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ttl {
    /// Time to live in milliseconds.
    pub ttl_ms: u64,
    /// Update type.
    pub update: TtlUpdate,
    /// Visibility of expired entries.
    pub visibility: TtlVisibility,
}

impl Ttl {
    /// Whether an entry last stamped at `ts` is expired at `now`.
    pub fn is_expired(&self, ts: u64, now: u64) -> bool {
        ts.saturating_add(self.ttl_ms) <= now
    }
}

/// Processing time in milliseconds since the Unix epoch. Shared by TTL and the plugin's
/// `clock` import so a test clock drives both.
pub trait Clock: Send + Sync + 'static {
    /// Now, in milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The machine's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A clock that moves only when told to: for tests.
#[derive(Debug, Default, Clone)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock showing `ms`.
    pub fn new(ms: u64) -> ManualClock {
        ManualClock(Arc::new(AtomicU64::new(ms)))
    }
    /// Sets the time.
    pub fn set(&self, ms: u64) {
        self.0.store(ms, Ordering::SeqCst);
    }
    /// Moves the time forward.
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}
