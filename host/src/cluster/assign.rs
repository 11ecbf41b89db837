//! Which partitions a host should own: an even spread over the live hosts that moves a
//! partition only when it must (its owner died, or owns more than its share while another
//! host owns less). Every host computes this for itself from the same view (the live hosts,
//! the current owners); the leases, taken by compare-and-set, settle any race.

use std::collections::{BTreeMap, BTreeSet};

/// What a host should do now.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Moves {
    /// Free partitions to try to take, in order.
    pub(crate) acquire: Vec<u32>,
    /// Owned partitions to hand off (checkpoint, then release).
    pub(crate) release: Vec<u32>,
}

/// How many partitions `host` should own: `count / hosts`, one more for the first
/// `count % hosts` hosts in id order.
pub(crate) fn share(count: u32, hosts: &BTreeSet<String>, host: &str) -> u32 {
    let n = hosts.len().max(1) as u32;
    let rank = hosts.iter().position(|h| h == host).unwrap_or(hosts.len()) as u32;
    count / n + u32::from(rank < count % n)
}

/// The moves of `me`, given the live hosts (including `me`) and each owned partition's
/// owner (partitions of hosts no longer live count as free).
pub(crate) fn moves(
    count: u32,
    hosts: &BTreeSet<String>,
    owners: &BTreeMap<u32, String>,
    me: &str,
) -> Moves {
    let target = share(count, hosts, me) as usize;
    let mine: Vec<u32> = owners
        .iter()
        .filter(|(_, o)| o.as_str() == me)
        .map(|(p, _)| *p)
        .collect();
    if mine.len() > target {
        // Hand off only while some live host is below its share: otherwise the extra
        // partitions would just be taken back.
        let below: u32 = hosts
            .iter()
            .map(|h| {
                let owned = owners.values().filter(|o| *o == h).count() as u32;
                share(count, hosts, h).saturating_sub(owned)
            })
            .sum();
        let give = (mine.len() - target).min(below as usize);
        return Moves {
            acquire: Vec::new(),
            release: mine.iter().rev().take(give).copied().collect(),
        };
    }
    let free: Vec<u32> = (0..count)
        .filter(|p| owners.get(p).is_none_or(|o| !hosts.contains(o)))
        .collect();
    Moves {
        acquire: free.into_iter().take(target - mine.len()).collect(),
        release: Vec::new(),
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
                let m = moves(count, live, &owners, h);
                for p in m.release {
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
}
