//! Which completed checkpoints are kept: always the newest `count` (recovery falls back
//! through them), and, for time-travel queries, the checkpoints of the last `for_ms`,
//! thinned to one per `every_ms` if that is set.
//!
//! Thinning keeps the *oldest* checkpoint of each `every_ms` slot of wall-clock time, so a
//! kept checkpoint stays kept as newer ones arrive, until it ages out of `for_ms`.

use std::collections::{BTreeMap, HashSet};

/// How long checkpoints are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// The newest this many are always kept (at least 1).
    pub count: usize,
    /// Checkpoints younger than this are kept too (0: none beyond `count`).
    pub for_ms: u64,
    /// Of those, one per this much wall-clock time (0: every one).
    pub every_ms: u64,
}

impl Retention {
    /// The newest `count`, nothing kept by age.
    pub fn newest(count: usize) -> Retention {
        Retention {
            count: count.max(1),
            for_ms: 0,
            every_ms: 0,
        }
    }

    /// Whether ages matter (otherwise ids alone decide).
    pub fn by_age(&self) -> bool {
        self.for_ms > 0
    }

    /// The ids to keep out of `checkpoints` (id → creation time in ms since the epoch).
    pub fn keep(&self, checkpoints: &BTreeMap<u64, u64>, now_ms: u64) -> HashSet<u64> {
        let mut keep: HashSet<u64> = checkpoints
            .keys()
            .rev()
            .take(self.count.max(1))
            .copied()
            .collect();
        if !self.by_age() {
            return keep;
        }
        let since = now_ms.saturating_sub(self.for_ms);
        let mut slots = HashSet::new();
        let mut by_time: Vec<(u64, u64)> = checkpoints
            .iter()
            .filter(|(_, created)| **created >= since)
            .map(|(id, created)| (*created, *id))
            .collect();
        by_time.sort_unstable();
        for (created, id) in by_time {
            if self.every_ms == 0 || slots.insert(created / self.every_ms) {
                keep.insert(id);
            }
        }
        keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(pairs: &[(u64, u64)]) -> BTreeMap<u64, u64> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn the_newest_count_are_kept_whatever_their_age() {
        let r = Retention::newest(2);
        let cps = at(&[(1, 100), (2, 200), (3, 300)]);
        assert_eq!(r.keep(&cps, 1_000_000), HashSet::from([2, 3]));
    }

    #[test]
    fn checkpoints_younger_than_for_ms_are_kept() {
        let r = Retention {
            count: 1,
            for_ms: 250,
            every_ms: 0,
        };
        let cps = at(&[(1, 100), (2, 200), (3, 300), (4, 400)]);
        // now 450: 200 and newer are younger than 250 ms.
        assert_eq!(r.keep(&cps, 450), HashSet::from([2, 3, 4]));
    }

    #[test]
    fn thinning_keeps_the_oldest_of_each_slot_and_it_stays_kept() {
        let r = Retention {
            count: 1,
            for_ms: 10_000,
            every_ms: 1_000,
        };
        let mut cps = at(&[(1, 1_000), (2, 1_400), (3, 1_900), (4, 2_100), (5, 2_600)]);
        assert_eq!(r.keep(&cps, 3_000), HashSet::from([1, 4, 5]));
        cps.insert(6, 3_100);
        // 5 was only the newest: 6 replaces it; 1 and 4 keep their slots.
        assert_eq!(r.keep(&cps, 3_200), HashSet::from([1, 4, 6]));
        // What was not kept is deleted; once 1 is older than for_ms it goes too.
        cps.retain(|id, _| [1, 4, 6].contains(id));
        assert_eq!(r.keep(&cps, 11_500), HashSet::from([4, 6]));
    }
}
