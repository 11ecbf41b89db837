//! Moving a partition between two live hosts (a rebalance), from both sides, so that the
//! partition pauses only for the stop, the take and the start:
//! - the receiver ([`Incoming`]) fetches the partition's committed checkpoint into its
//!   local cache while the owner runs on, then writes a want naming that checkpoint; while
//!   it waits it follows the pointer (an owner may commit once more), and it takes the
//!   partition the moment the lease is free;
//! - the owner ([`owner_step`]) holds its checkpoints once the receiver wants the partition,
//!   so the fetched checkpoint stays the committed one, and stops the run at once (no last
//!   checkpoint) when the want names its committed checkpoint. A receiver that has not got
//!   there within [`WARM_WAIT`] gets the partition anyway, and fetches while it waits.
//!
//! The new owner replays from the committed checkpoint what the old one did after it; the
//! replayed outputs carry the same ids, and the output streams drop them as duplicates.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use super::leases::{Coordination, Want};
use crate::config::PipelineConfig;
use crate::transport;

pub(super) use crate::pipeline::WARM_WAIT;

/// How long a receiver waits before fetching again after a failed fetch.
const RETRY: Duration = Duration::from_secs(5);

/// What the owner of a partition planned to move does now.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// The receiver is not ready: run on as usual.
    Run,
    /// The receiver has fetched an older checkpoint than the committed one: cut no new
    /// checkpoint until it has caught up.
    Hold,
    /// Stop now and let go; `warmed`: the receiver has the committed checkpoint.
    Go { warmed: bool },
}

/// The owner's step for a partition planned to go to `to`, given its want (if any), the
/// checkpoint the owner last committed, and how long the move has been planned.
pub(crate) fn owner_step(
    want: Option<&Want>,
    to: &str,
    committed: Option<u64>,
    planned_for: Duration,
) -> Step {
    match want {
        // A newer checkpoint than this owner's is its own commit whose answer was lost (ids
        // only grow): the receiver has what the pointer names.
        Some(w) if w.host == to && w.checkpoint >= committed => Step::Go { warmed: true },
        _ if planned_for >= WARM_WAIT => Step::Go { warmed: false },
        Some(w) if w.host == to => Step::Hold,
        _ => Step::Run,
    }
}

/// Where the receiver stands with one incoming partition.
enum Warm {
    /// Fetching the committed checkpoint (the pointer's id when the fetch began).
    Fetching(JoinHandle<anyhow::Result<Option<u64>>>),
    /// Fetched, and the want names it: take the partition the moment its owner lets go.
    Ready(Option<u64>),
    /// The fetch failed at this moment: tried again after [`RETRY`].
    Failed(Instant),
}

/// The partitions planned to come to this host.
#[derive(Default)]
pub(crate) struct Incoming {
    parts: BTreeMap<u32, Warm>,
}

impl Incoming {
    /// Follows the plan: fetches ahead for partitions newly planned to come here, drops
    /// (and withdraws the wants of) those no longer planned.
    pub(crate) async fn follow(
        &mut self,
        planned: &[u32],
        cfg: &Arc<PipelineConfig>,
        nats: &transport::Nats,
        coord: &Coordination,
    ) {
        let dropped: Vec<u32> = self
            .parts
            .keys()
            .filter(|p| !planned.contains(p))
            .copied()
            .collect();
        for p in dropped {
            self.remove(p, coord).await;
        }
        for p in planned {
            let fetch = match self.parts.get(p) {
                None => true,
                Some(Warm::Failed(at)) => at.elapsed() >= RETRY,
                Some(_) => false,
            };
            if fetch {
                let task = tokio::spawn(fetch_ahead(cfg.clone(), nats.clone(), coord.clone(), *p));
                self.parts.insert(*p, Warm::Fetching(task));
            }
        }
    }

    /// Fetches that finished become wants; a ready partition whose pointer moved on is
    /// fetched again (its want keeps naming the older checkpoint meanwhile, so its owner
    /// holds on).
    pub(crate) async fn poll(
        &mut self,
        cfg: &Arc<PipelineConfig>,
        nats: &transport::Nats,
        coord: &Coordination,
    ) {
        for (p, w) in self.parts.iter_mut() {
            match w {
                Warm::Fetching(task) if task.is_finished() => {
                    *w = match task.await {
                        Ok(Ok(id)) => match coord.want(*p, id).await {
                            Ok(()) => {
                                tracing::info!(
                                    partition = *p,
                                    checkpoint = ?id,
                                    "fetched the partition's checkpoint; waiting for its owner to let go"
                                );
                                Warm::Ready(id)
                            }
                            Err(e) => {
                                tracing::warn!(partition = *p, "{e:#}");
                                Warm::Failed(Instant::now())
                            }
                        },
                        Ok(Err(e)) => {
                            tracing::warn!(
                                partition = *p,
                                "cannot fetch the partition's checkpoint ahead ({e:#}); trying again in {RETRY:?}"
                            );
                            Warm::Failed(Instant::now())
                        }
                        Err(_) => Warm::Failed(Instant::now()),
                    };
                }
                Warm::Ready(id) => {
                    if let Ok(now) = coord.committed(*p).await
                        && now != *id
                    {
                        let task =
                            tokio::spawn(fetch_ahead(cfg.clone(), nats.clone(), coord.clone(), *p));
                        *w = Warm::Fetching(task);
                    }
                }
                _ => {}
            }
        }
    }

    /// Partitions this host is ready to take.
    pub(crate) fn ready(&self) -> Vec<u32> {
        self.parts
            .iter()
            .filter(|(_, w)| matches!(w, Warm::Ready(_)))
            .map(|(p, _)| *p)
            .collect()
    }

    /// Whether a partition is on its way here.
    pub(crate) fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// Rewrites the wants of the ready partitions (they lapse like leases).
    pub(crate) async fn renew(&self, coord: &Coordination) {
        let wants = self.parts.iter().filter_map(|(p, w)| match w {
            Warm::Ready(id) => Some(coord.want(*p, *id)),
            _ => None,
        });
        for r in futures::future::join_all(wants).await {
            if let Err(e) = r {
                tracing::warn!("{e:#}");
            }
        }
    }

    /// Forgets partition `p` (taken, or no longer planned) and withdraws its want.
    pub(crate) async fn remove(&mut self, p: u32, coord: &Coordination) {
        if let Some(w) = self.parts.remove(&p) {
            if let Warm::Fetching(task) = w {
                task.abort();
            }
            coord.unwant(p).await;
        }
    }

    /// Forgets every partition (the host stops).
    pub(crate) async fn clear(&mut self, coord: &Coordination) {
        let all: Vec<u32> = self.parts.keys().copied().collect();
        for p in all {
            self.remove(p, coord).await;
        }
    }
}

/// Fetches partition `p`'s committed checkpoint into this host's cache for it; returns the
/// checkpoint's id (none: nothing committed yet, or checkpoints kept on local disks, which
/// cannot be fetched ahead).
async fn fetch_ahead(
    cfg: Arc<PipelineConfig>,
    nats: transport::Nats,
    coord: Coordination,
    p: u32,
) -> anyhow::Result<Option<u64>> {
    let pcfg = cfg.for_partition(p);
    let Some(storage) = crate::storage::open(&pcfg, &nats).await? else {
        return coord.committed(p).await;
    };
    let checkpoints = Arc::new(pcfg.checkpoints().with_storage(storage));
    let mut committed = coord.committed(p).await?;
    let mut tries = 0;
    loop {
        tries += 1;
        let Some(id) = committed else {
            return Ok(None);
        };
        let fetching = checkpoints.clone();
        let Err(e) = tokio::task::spawn_blocking(move || fetching.prefetch(id)).await? else {
            return Ok(Some(id));
        };
        // The owner committed a newer checkpoint meanwhile, and its retention removed files
        // of this one (reported as missing): fetch the newer one instead.
        committed = coord.committed(p).await?;
        if tries >= 3 || committed == Some(id) {
            return Err(e.into());
        }
        tracing::debug!(
            partition = p,
            checkpoint = id,
            "the owner committed a newer checkpoint while this one was fetched ({e}); fetching that"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn want(host: &str, checkpoint: Option<u64>) -> Want {
        Want {
            host: host.into(),
            checkpoint,
        }
    }

    #[test]
    fn the_owner_lets_go_only_once_the_receiver_has_the_committed_checkpoint() {
        let soon = Duration::from_secs(1);
        assert_eq!(owner_step(None, "b", Some(7), soon), Step::Run);
        assert_eq!(
            owner_step(Some(&want("b", Some(6))), "b", Some(7), soon),
            Step::Hold,
            "the receiver fetched an older checkpoint: no new one until it catches up"
        );
        assert_eq!(
            owner_step(Some(&want("b", Some(7))), "b", Some(7), soon),
            Step::Go { warmed: true }
        );
        assert_eq!(
            owner_step(Some(&want("b", None)), "b", None, soon),
            Step::Go { warmed: true },
            "nothing committed yet: nothing to fetch"
        );
        assert_eq!(
            owner_step(Some(&want("b", Some(8))), "b", Some(7), soon),
            Step::Go { warmed: true },
            "the pointer names a newer checkpoint of this owner's (a commit whose answer was lost)"
        );
        assert_eq!(
            owner_step(Some(&want("c", Some(7))), "b", Some(7), soon),
            Step::Run,
            "a want of another host than the planned receiver"
        );
        assert_eq!(
            owner_step(None, "b", Some(7), WARM_WAIT),
            Step::Go { warmed: false },
            "a receiver that never gets ready does not keep the partition here"
        );
    }
}
