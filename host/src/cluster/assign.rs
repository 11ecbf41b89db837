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
//!
//! A host whose run of a partition failed (its disk, a store it cannot reach) lets the
//! partition cool and says so (an *unfit* mark). Another live host takes the partition at
//! once, beyond its own share (the hosts without marks share such partitions evenly), and
//! the plan then evens the shares out as after a join: the failing host gets a partition it
//! has no mark for. A marked partition stays where it runs while the mark stands. A partition
//! every live host has marked is free like any other, and waits for a host's cooling to end.

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
    /// Of `acquire`, those taken beyond this host's share for a host that cannot run them.
    pub(crate) rescues: Vec<u32>,
}

/// How many partitions `host` should own: `count / hosts`, one more for the first
/// `count % hosts` hosts in id order.
pub(crate) fn share(count: u32, hosts: &BTreeSet<String>, host: &str) -> u32 {
    let n = hosts.len().max(1) as u32;
    let rank = hosts.iter().position(|h| h == host).unwrap_or(hosts.len()) as u32;
    count / n + u32::from(rank < count % n)
}

/// The partitions that should move between live hosts now, each with its receiver: the
/// surplus of every host above its share (its highest partitions first, never one in
/// `pinned`) goes to the hosts below theirs, in id order. Empty while any partition is free:
/// free partitions fill the hosts below their share first, and only what is left must move.
pub(crate) fn plan(
    count: u32,
    hosts: &BTreeSet<String>,
    owners: &BTreeMap<u32, String>,
    pinned: &BTreeSet<u32>,
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
            let movable = mine.iter().rev().filter(|p| !pinned.contains(p));
            surplus.extend(movable.take(mine.len() - target).copied());
        } else {
            receivers.extend(std::iter::repeat_n(h.clone(), target - mine.len()));
        }
    }
    surplus.into_iter().zip(receivers).collect()
}

/// What every host sees of the cluster at one look.
#[derive(Debug, Default)]
pub(crate) struct View {
    /// The live hosts.
    pub(crate) hosts: BTreeSet<String>,
    /// Each leased partition's owner (partitions of hosts no longer live count as free).
    pub(crate) owners: BTreeMap<u32, String>,
    /// Which host wants which partition.
    pub(crate) wants: BTreeMap<u32, String>,
    /// The hosts that cannot run a partition for now.
    pub(crate) unfit: BTreeMap<u32, BTreeSet<String>>,
}

impl View {
    /// Whether a live host cannot run `p` for now.
    fn is_marked(&self, p: u32) -> bool {
        self.unfit
            .get(&p)
            .is_some_and(|u| u.iter().any(|h| self.hosts.contains(h)))
    }

    /// Whether a live host cannot run `p` for now and another live host can: `p` is run by
    /// a host without a mark, beyond its share if need be.
    fn needs_rescue(&self, p: u32) -> bool {
        self.is_marked(p) && self.hosts.iter().any(|h| !self.is_unfit(p, h))
    }

    /// Whether `host` cannot run `p` for now.
    fn is_unfit(&self, p: u32, host: &str) -> bool {
        self.unfit.get(&p).is_some_and(|u| u.contains(host))
    }

    fn is_free(&self, p: u32) -> bool {
        self.owners.get(&p).is_none_or(|o| !self.hosts.contains(o))
    }
}

/// The moves of `me` (one of `view.hosts`).
pub(crate) fn moves(count: u32, view: &View, me: &str) -> Moves {
    let hosts = &view.hosts;
    // A free partition a live host wants is as good as that host's: a release does not
    // empty the plan (and make every receiver drop what it fetched) until it is taken.
    let mut claimed = view.owners.clone();
    for (p, w) in &view.wants {
        if hosts.contains(w) && view.is_free(*p) {
            claimed.insert(*p, w.clone());
        }
    }
    // A partition a live host cannot run for now stays where it runs.
    let pinned: BTreeSet<u32> = (0..count).filter(|p| view.is_marked(*p)).collect();
    let owners = &view.owners;
    let planned = plan(count, hosts, &claimed, &pinned);
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
    // A free partition another live host cannot run is taken here beyond this host's share,
    // unless this host cannot run it either: up to this host's part of all such partitions,
    // shared by the hosts without marks, so that one host's failing disk does not double the
    // load of the first host to look.
    let rescued: Vec<u32> = (0..count).filter(|p| view.needs_rescue(*p)).collect();
    let marked: BTreeSet<&String> = (view.unfit.values().flatten())
        .filter(|h| hosts.contains(*h))
        .collect();
    let unmarked = hosts.iter().filter(|h| !marked.contains(h)).count();
    let part = rescued.len().div_ceil(unmarked.max(1));
    let rescuing = (rescued.iter())
        .filter(|p| owners.get(p).is_some_and(|o| o == me))
        .count();
    let rescues: Vec<u32> = (rescued.iter().copied())
        .filter(|p| view.is_free(*p) && !view.is_unfit(*p, me))
        .take(part.saturating_sub(rescuing))
        .collect();
    // A free partition another live host has warmed up for is left to it.
    let free = (0..count)
        .filter(|p| view.is_free(*p) && !view.is_unfit(*p, me) && !rescues.contains(p))
        .filter(|p| {
            view.wants
                .get(p)
                .is_none_or(|w| w == me || !hosts.contains(w))
        });
    Moves {
        acquire: (rescues.iter().copied())
            .chain(free.take(target.saturating_sub(mine)))
            .collect(),
        release,
        incoming,
        rescues,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn view(
        hosts: &BTreeSet<String>,
        owners: &BTreeMap<u32, String>,
        wants: &BTreeMap<u32, String>,
    ) -> View {
        View {
            hosts: hosts.clone(),
            owners: owners.clone(),
            wants: wants.clone(),
            unfit: BTreeMap::new(),
        }
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
                let m = moves(count, &view(live, &owners, &BTreeMap::new()), h);
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
        let planned = plan(16, &four, &before, &BTreeSet::new());
        assert_eq!(planned.len(), 4, "{planned:?}");
        assert!(planned.values().all(|to| to == "d"));
        let d = moves(16, &view(&four, &before, &BTreeMap::new()), "d");
        assert_eq!(d.incoming, planned.keys().copied().collect::<Vec<_>>());
        assert!(d.acquire.is_empty(), "nothing is free yet");
        // Every owner hands off exactly what the plan names of its own.
        let mut released = Vec::new();
        for h in ["a", "b", "c"] {
            for (p, to) in moves(16, &view(&four, &before, &BTreeMap::new()), h).release {
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
        assert!(
            !moves(16, &view(&five, &owners, &wants), "e")
                .acquire
                .contains(&p)
        );
        let d = moves(16, &view(&four, &owners, &wants), "d");
        assert!(d.acquire.contains(&p));
        assert_eq!(
            d.incoming,
            released[1..].to_vec(),
            "the rest stays planned while the released one waits to be taken"
        );
        // A want of a host no longer live holds nothing.
        let gone = BTreeMap::from([(p, "z".to_string())]);
        assert!(
            moves(16, &view(&five, &owners, &gone), "e")
                .acquire
                .contains(&p)
        );
    }

    #[test]
    fn nothing_moves_between_live_hosts_while_partitions_are_free() {
        let three = hosts(&["a", "b", "c"]);
        let (mut owners, _) = settle(16, &three, BTreeMap::new());
        owners.remove(&0);
        assert!(plan(16, &hosts(&["a", "b", "c", "d"]), &owners, &BTreeSet::new()).is_empty());
    }

    #[test]
    fn a_partition_its_host_cannot_run_is_run_by_another_and_shares_even_out() {
        let two = hosts(&["a", "b"]);
        let (owners, _) = settle(8, &two, BTreeMap::new());
        let a_owns: Vec<u32> = (0..8).filter(|p| owners[p] == "a").collect();
        let sick = a_owns[0];
        // a's run of `sick` failed: it let go of it and says it cannot run it for now.
        let mut v = view(&two, &owners, &BTreeMap::new());
        v.owners.remove(&sick);
        v.unfit.insert(sick, hosts(&["a"]));
        let b = moves(8, &v, "b");
        assert_eq!(b.acquire, vec![sick], "b takes it beyond its share");
        assert_eq!(b.rescues, vec![sick]);
        assert!(b.release.is_empty() && b.incoming.is_empty(), "{b:?}");
        assert_eq!(moves(8, &v, "a"), Moves::default(), "a takes nothing");

        // Once b runs it, b hands a partition a can run to a, never the sick one.
        v.owners.insert(sick, "b".into());
        let b = moves(8, &v, "b");
        assert_eq!(b.release.len(), 1, "{b:?}");
        let (moved, to) = &b.release[0];
        assert!(*moved != sick && to == "a", "{b:?}");
        assert_eq!(moves(8, &v, "a").incoming, vec![*moved]);
        // A joining host warms up for its share, never for the sick partition.
        v.hosts = hosts(&["a", "b", "c"]);
        assert!(!moves(8, &v, "c").incoming.contains(&sick));
        v.hosts = two.clone();

        // Settled (4 and 4), nothing moves, marked or not.
        v.owners.insert(*moved, "a".into());
        assert_eq!(moves(8, &v, "a"), Moves::default());
        assert_eq!(moves(8, &v, "b"), Moves::default());
        v.unfit.clear();
        assert_eq!(moves(8, &v, "a"), Moves::default());
        assert_eq!(moves(8, &v, "b"), Moves::default());

        // A partition every live host has marked is taken by nobody beyond a share, and its
        // marks move nothing else; a mark of a dead host counts for nothing.
        v.owners.remove(&sick);
        v.unfit.insert(sick, hosts(&["a", "b"]));
        for h in ["a", "b"] {
            let m = moves(8, &v, h);
            assert!(m.rescues.is_empty() && m.release.is_empty(), "{h}: {m:?}");
        }
        v.unfit.insert(sick, hosts(&["z"]));
        assert!(moves(8, &v, "b").acquire.contains(&sick));
    }

    #[test]
    fn partitions_failing_on_one_host_are_shared_by_the_others() {
        let three = hosts(&["a", "b", "c"]);
        let (mut owners, _) = settle(9, &three, BTreeMap::new());
        // a's disk failed: all three of its partitions are marked and free.
        let of_a: Vec<u32> = (0..9).filter(|p| owners[p] == "a").collect();
        let mut v = view(&three, &owners, &BTreeMap::new());
        for p in &of_a {
            owners.remove(p);
            v.owners.remove(p);
            v.unfit.insert(*p, hosts(&["a"]));
        }
        let b = moves(9, &v, "b");
        assert_eq!(
            b.rescues.len(),
            2,
            "b's part of three over two hosts: {b:?}"
        );
        // b took them: c takes what is left, not b's part.
        for p in &b.rescues {
            v.owners.insert(*p, "b".into());
        }
        let c = moves(9, &v, "c");
        assert_eq!(c.rescues.len(), 1, "{c:?}");
        assert!(moves(9, &v, "b").rescues.is_empty());
    }
}
