//! A cap on what plugins put in the host's log: a plugin that fails or prints on every event
//! would otherwise write several lines per event (a Rust panic alone is three) and fill the
//! operator's disk. At most [`LINES_PER_SECOND`] plugin lines a second reach the log; the
//! rest are counted, and one line says how many were left out. Each failure's reason still
//! travels with its event (dead-letter headers, metrics), whatever the log keeps.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Plugin lines logged per second, all plugins of the process together.
pub(crate) const LINES_PER_SECOND: u32 = 50;

/// One second's count.
pub(crate) struct LogLimit {
    per_second: u32,
    window: Option<Instant>,
    used: u32,
    dropped: u64,
}

impl LogLimit {
    pub(crate) const fn new(per_second: u32) -> LogLimit {
        LogLimit {
            per_second,
            window: None,
            used: 0,
            dropped: 0,
        }
    }

    /// Whether a line may be logged at `now`, and how many were left out in the second
    /// that just ended (to be said once, when it is over).
    pub(crate) fn check(&mut self, now: Instant) -> (bool, u64) {
        let mut ended_dropped = 0;
        if self
            .window
            .is_none_or(|w| now.duration_since(w) >= Duration::from_secs(1))
        {
            ended_dropped = std::mem::take(&mut self.dropped);
            self.window = Some(now);
            self.used = 0;
        }
        if self.used < self.per_second {
            self.used += 1;
            (true, ended_dropped)
        } else {
            self.dropped += 1;
            (false, ended_dropped)
        }
    }
}

static LIMIT: Mutex<LogLimit> = Mutex::new(LogLimit::new(LINES_PER_SECOND));

/// Whether one more plugin line may be logged now; says how many were left out before.
pub(crate) fn allow() -> bool {
    let (ok, dropped) = LIMIT
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .check(Instant::now());
    if dropped > 0 {
        tracing::warn!(
            target: "plugin",
            "{dropped} plugin log lines left out in the last second (at most {LINES_PER_SECOND} a second are logged; each failed event's reason is in its dead-letter headers)"
        );
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_cut_to_the_limit_and_the_rest_counted() {
        let mut limit = LogLimit::new(5);
        let t0 = Instant::now();
        let allowed = (0..100).filter(|_| limit.check(t0).0).count();
        assert_eq!(allowed, 5);
        // The next second: allowed again, and told what the last one left out.
        let (ok, dropped) = limit.check(t0 + Duration::from_millis(1_001));
        assert!(ok);
        assert_eq!(dropped, 95);
        let (ok, dropped) = limit.check(t0 + Duration::from_millis(1_002));
        assert!(ok);
        assert_eq!(dropped, 0, "said once");
    }
}
