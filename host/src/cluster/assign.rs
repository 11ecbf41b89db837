//! Which partitions a host should own: an even spread over the live hosts that moves a
//! partition only when it must (its owner died, or owns more than its share while another
//! host owns less). Every host computes this for itself from the same view (the live hosts,
//! the current owners, the partitions hosts are warming up for); the leases, taken by
//! compare-and-set, settle any race.
//!
//! A partition that moves between two live hosts goes where [`plan`] says: the receiving
//! host fetches its committed checkpoint first and then says it wants it (a `want`), and only
//! then does the owner let go, so the partition pauses for the hand-off itself rather than
//! for the download.

use std::collections::{BTreeMap, BTreeSet};

/// What a host should do now.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Moves {
    /// Free partitions to try to take, in order.
    pub(crate) acquire: Vec<u32>,
    /// Owned partitions to hand off, each with the host that should take it.
    pub(crate) release: Vec<(u32, String)>,
    /// Partitions another live host owns that should come here: warm up for them.
    pub(crate) incoming: Vec<u32>,
}

/// How many partitions `host` should own: `count / hosts`, one more for the first
/// `count % hosts` hosts in id order.
pub(crate) fn share(count: u32, hosts: &BTreeSet<String>, host: &str) -> u32 {
    let n = hosts.len().max(1) as u32;
    let rank = hosts.iter().position(|h| h == host).unwrap_or(hosts.len()) as u32;
    count / n + u32::from(rank < count % n)
}

/// The partitions that should move between live hosts now, each with its receiver: the
/// surplus of every host above its share (its highest partitions first) goes to the hosts
/// below theirs, in id order. Empty while any partition is free: free partitions fill the
/// hosts below their share first, and only what is left must move.
pub(crate) fn plan(
    count: u32,
    hosts: &BTreeSet<String>,
    owners: &BTreeMap<u32, String>,
) -> BTreeMap<u32, String> {
    let live_owned = |h: &String| -> Vec<u32> {
        owners
            .iter()
            .filter(|(_, o)| *o == h)
            .map(|(p, _)| *p)
            .collect()
    };
    let owned_live = owners.values().filter(|o| hosts.contains(*o)).count() as u32;
    if owned_live < count {
        return BTreeMap::new();
    }
    let mut surplus = Vec::new();
    let mut receivers = Vec::new();
    for h in hosts {
        let mine = live_owned(h);
        let target = share(count, hosts, h) as usize;
        if mine.len() > target {
            surplus.extend(mine.iter().rev().take(mine.len() - target).copied());
        } else {
            receivers.extend(std::iter::repeat_n(h.clone(), target - mine.len()));
        }
    }
    surplus.into_iter().zip(receivers).collect()
}

/// The moves of `me`, given the live hosts (including `me`), each owned partition's owner
/// (partitions of hosts no longer live count as free), and who wants which partition.
pub(crate) fn moves(
    count: u32,
    hosts: &BTreeSet<String>,
    owners: &BTreeMap<u32, String>,
    wants: &BTreeMap<u32, String>,
    me: &str,
) -> Moves {
    // A free partition a live host wants is as good as that host's: a release does not
    // empty the plan (and make every receiver drop what it fetched) until it is taken.
    let mut claimed = owners.clone();
    for (p, w) in wants {
        if hosts.contains(w) && owners.get(p).is_none_or(|o| !hosts.contains(o)) {
            claimed.insert(*p, w.clone());
        }
    }
    let planned = plan(count, hosts, &claimed);
    let release: Vec<(u32, String)> = planned
        .iter()
        .filter(|(p, _)| owners.get(p).is_some_and(|o| o == me))
        .map(|(p, to)| (*p, to.clone()))
        .collect();
    let incoming: Vec<u32> = planned
        .iter()
        .filter(|(_, to)| *to == me)
        .map(|(p, _)| *p)
        .collect();
    let target = share(count, hosts, me) as usize;
    let mine = owners.values().filter(|o| *o == me).count();
    // A free partition another live host has warmed up for is left to it.
    let free: Vec<u32> = (0..count)
        .filter(|p| owners.get(p).is_none_or(|o| !hosts.contains(o)))
        .filter(|p| wants.get(p).is_none_or(|w| w == me || !hosts.contains(w)))
        .collect();
    Moves {
        acquire: free.into_iter().take(target.saturating_sub(mine)).collect(),
        release,
        incoming,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    /// Runs every host's moves against a shared owner map until nothing changes, the way
    /// the leases settle it (first come, first served); returns the final owners and how many
    /// partitions changed hands.
    fn settle(
        count: u32,
        live: &BTreeSet<String>,
        mut owners: BTreeMap<u32, String>,
    ) -> (BTreeMap<u32, String>, usize) {
        let mut moved = 0;
        for _ in 0..100 {
            let mut changed = false;
            for h in live {
                let m = moves(count, live, &owners, &BTreeMap::new(), h);
                for (p, _) in m.release {
                    owners.remove(&p);
                    changed = true;
                }
                for p in m.acquire {
                    let free = owners.get(&p).is_none_or(|o| !live.contains(o));
                    if free {
                        owners.insert(p, h.clone());
                        moved += 1;
                        changed = true;
                    }
                }
            }
            if !changed {
                return (owners, moved);
            }
        }
        panic!("did not settle: {owners:?}");
    }

    fn counts(owners: &BTreeMap<u32, String>) -> BTreeMap<String, usize> {
        let mut c = BTreeMap::new();
        for o in owners.values() {
            *c.entry(o.clone()).or_default() += 1;
        }
        c
    }

    #[test]
    fn partitions_spread_evenly_over_live_hosts() {
        let live = hosts(&["a", "b", "c"]);
        let (owners, _) = settle(16, &live, BTreeMap::new());
        assert_eq!(owners.len(), 16, "every partition owned");
        let c = counts(&owners);
        assert_eq!(c.values().copied().collect::<Vec<_>>(), vec![6, 5, 5]);
    }

    #[test]
    fn a_dead_hosts_partitions_go_to_the_survivors_and_nothing_else_moves() {
        let three = hosts(&["a", "b", "c"]);
        let (before, _) = settle(16, &three, BTreeMap::new());
        let two = hosts(&["a", "c"]);
        let (after, moved) = settle(16, &two, before.clone());
        let of_b = before.values().filter(|o| *o == "b").count();
        assert_eq!(moved, of_b, "only b's partitions moved");
        for (p, o) in &before {
            if o != "b" {
                assert_eq!(&after[p], o, "partition {p} stayed");
            }
        }
        assert_eq!(
            counts(&after).values().copied().collect::<Vec<_>>(),
            vec![8, 8]
        );
    }

    #[test]
    fn a_joining_host_takes_only_its_share() {
        let three = hosts(&["a", "b", "c"]);
        let (before, _) = settle(16, &three, BTreeMap::new());
        let four = hosts(&["a", "b", "c", "d"]);
        let (after, moved) = settle(16, &four, before.clone());
        assert_eq!(moved, 4, "d took four partitions and nothing else moved");
        let c = counts(&after);
        assert!(c.values().all(|n| *n == 4), "{c:?}");
        let changed = before.iter().filter(|(p, o)| &after[*p] != *o).count();
        assert_eq!(changed, 4);
    }

    #[test]
    fn more_hosts_than_partitions_leaves_some_idle() {
        let live = hosts(&["a", "b", "c"]);
        let (owners, _) = settle(2, &live, BTreeMap::new());
        assert_eq!(owners.len(), 2);
        assert_eq!(share(2, &live, "c"), 0);
    }

    #[test]
    fn a_joining_host_is_told_what_comes_to_it_and_others_leave_what_it_wants() {
        let three = hosts(&["a", "b", "c"]);
        let (before, _) = settle(16, &three, BTreeMap::new());
        let four = hosts(&["a", "b", "c", "d"]);
        let planned = plan(16, &four, &before);
        assert_eq!(planned.len(), 4, "{planned:?}");
        assert!(planned.values().all(|to| to == "d"));
        let d = moves(16, &four, &before, &BTreeMap::new(), "d");
        assert_eq!(d.incoming, planned.keys().copied().collect::<Vec<_>>());
        assert!(d.acquire.is_empty(), "nothing is free yet");
        // Every owner hands off exactly what the plan names of its own.
        let mut released = Vec::new();
        for h in ["a", "b", "c"] {
            for (p, to) in moves(16, &four, &before, &BTreeMap::new(), h).release {
                assert_eq!(before[&p], h);
                assert_eq!(to, "d");
                released.push(p);
            }
        }
        released.sort_unstable();
        assert_eq!(released, planned.keys().copied().collect::<Vec<_>>());

        // Once released, a partition d wants is left to d by every other host below its
        // share, and taken by d.
        let p = released[0];
        let mut owners = before.clone();
        owners.remove(&p);
        let wants = BTreeMap::from([(p, "d".to_string())]);
        let five = hosts(&["a", "b", "c", "d", "e"]);
        assert!(!moves(16, &five, &owners, &wants, "e").acquire.contains(&p));
        let d = moves(16, &four, &owners, &wants, "d");
        assert!(d.acquire.contains(&p));
        assert_eq!(
            d.incoming,
            released[1..].to_vec(),
            "the rest stays planned while the released one waits to be taken"
        );
        // A want of a host no longer live holds nothing.
        let gone = BTreeMap::from([(p, "z".to_string())]);
        assert!(moves(16, &five, &owners, &gone, "e").acquire.contains(&p));
    }

    #[test]
    fn nothing_moves_between_live_hosts_while_partitions_are_free() {
        let three = hosts(&["a", "b", "c"]);
        let (mut owners, _) = settle(16, &three, BTreeMap::new());
        owners.remove(&0);
        assert!(plan(16, &hosts(&["a", "b", "c", "d"]), &owners).is_empty());
    }
}
