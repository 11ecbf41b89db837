//! Sums of counters that come and go with runs: a cluster host's partition runs, a promoted
//! shadow's store. Owns folding the counts of a part that ended into the sums, so they never
//! go back.

use std::sync::Arc;

use super::LookupCounters;

/// Counters of parts that come and go while the host runs (a partition run in cluster mode,
/// a promoted shadow's store), shown as sums. A part only this still holds has ended: its
/// counts join those of the parts ended before, so a sum never goes back when a partition
/// moves away, and an ended part is not kept.
pub(super) struct Attached<T: ?Sized + Counted> {
    /// The parts still going, each with the counts it had when attached that are not to be
    /// summed (a promoted shadow's, from its time as a shadow).
    pub(super) live: Vec<(Arc<T>, Option<T::Totals>)>,
    /// What ended parts counted; `None` until one ends.
    ended: Option<T::Totals>,
}

/// Counters that add up: into a total, and totals into each other (and out again).
pub(super) trait Counted {
    type Totals: Default;
    fn add_to(&self, totals: &mut Self::Totals);
    fn merge(from: &Self::Totals, into: &mut Self::Totals);
    fn take_away(from: &Self::Totals, out_of: &mut Self::Totals);
}

impl Counted for crate::state::StateStats {
    type Totals = crate::state::StateStats;
    fn add_to(&self, totals: &mut Self::Totals) {
        self.add_into(totals);
    }
    fn merge(from: &Self::Totals, into: &mut Self::Totals) {
        from.add_into(into);
    }
    fn take_away(from: &Self::Totals, out_of: &mut Self::Totals) {
        from.take_from(out_of);
    }
}

pub(super) type LookupTotals = std::collections::BTreeMap<(String, String), u64>;

impl Counted for dyn LookupCounters {
    type Totals = LookupTotals;
    fn add_to(&self, totals: &mut LookupTotals) {
        self.each(&mut |store, result, count| {
            *totals
                .entry((store.to_string(), result.to_string()))
                .or_default() += count;
        });
    }
    fn merge(from: &LookupTotals, into: &mut LookupTotals) {
        for (k, v) in from {
            *into.entry(k.clone()).or_default() += v;
        }
    }
    fn take_away(from: &LookupTotals, out_of: &mut LookupTotals) {
        for (k, v) in from {
            if let Some(t) = out_of.get_mut(k) {
                *t = t.saturating_sub(*v);
            }
        }
    }
}

impl<T: ?Sized + Counted> Attached<T> {
    pub(super) fn new() -> Attached<T> {
        Attached {
            live: Vec::new(),
            ended: None,
        }
    }

    /// Sums `part`'s counts, those it has now included unless `from_now`.
    pub(super) fn attach(&mut self, part: Arc<T>, from_now: bool) {
        self.settle();
        if !self.live.iter().any(|(p, _)| Arc::ptr_eq(p, &part)) {
            let before = from_now.then(|| {
                let mut now = T::Totals::default();
                part.add_to(&mut now);
                now
            });
            self.live.push((part, before));
        }
    }

    /// Folds the parts that ended into `ended`.
    fn settle(&mut self) {
        let (ended, live): (Vec<_>, Vec<_>) = std::mem::take(&mut self.live)
            .into_iter()
            .partition(|(p, _)| Arc::strong_count(p) == 1);
        self.live = live;
        for (part, before) in ended {
            let totals = self.ended.get_or_insert_with(T::Totals::default);
            part.add_to(totals);
            if let Some(before) = &before {
                T::take_away(before, totals);
            }
        }
    }

    /// The sums over every part attached so far; `None` if none ever was.
    pub(super) fn totals(&mut self) -> Option<T::Totals> {
        self.settle();
        if self.live.is_empty() && self.ended.is_none() {
            return None;
        }
        let mut totals = T::Totals::default();
        if let Some(ended) = &self.ended {
            T::merge(ended, &mut totals);
        }
        for (part, before) in &self.live {
            part.add_to(&mut totals);
            if let Some(before) = before {
                T::take_away(before, &mut totals);
            }
        }
        Some(totals)
    }
}

impl<T: ?Sized + Counted> std::fmt::Debug for Attached<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Attached({} live)", self.live.len())
    }
}
