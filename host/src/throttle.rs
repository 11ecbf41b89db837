//! Logging a failure that repeats (with every event, with every retry) once a period: the
//! first occurrence goes through, the rest are counted until the period is over. Used by the
//! lookups' failure warnings and the input's re-pulls during a NATS outage.

use std::time::{Duration, Instant};

/// Lets one occurrence through per period and counts the ones it holds back meanwhile.
#[derive(Debug, Default)]
pub(crate) struct Throttle {
    /// When one was last let through, and how many were held back since.
    pub(crate) state: std::sync::Mutex<(Option<Instant>, u64)>,
}

impl Throttle {
    /// `Some(held back since the last one let through)` if this one goes through at `now`.
    pub(crate) fn admit(&self, now: Instant, every: Duration) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match state.0 {
            Some(last) if now.saturating_duration_since(last) < every => {
                state.1 += 1;
                None
            }
            _ => {
                let held = state.1;
                *state = (Some(now), 0);
                Some(held)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_failure_warning_goes_through_per_period_and_counts_the_rest() {
        let t = Throttle::default();
        let every = Duration::from_secs(5);
        let start = Instant::now();
        assert_eq!(t.admit(start, every), Some(0), "the first goes through");
        for ms in [1, 100, 4_999] {
            assert_eq!(t.admit(start + Duration::from_millis(ms), every), None);
        }
        assert_eq!(
            t.admit(start + every, every),
            Some(3),
            "the next period's first says how many were held back"
        );
        assert_eq!(t.admit(start + every * 2, every), Some(0));
    }
}
