//! `eddy cluster reset`: starts one partition over when it cannot go on from its checkpoints
//! (every one of them corrupt). The partition's pointer then names no checkpoint but keeps
//! its generation, so the next owner's checkpoint ids stay above every old one: that owner
//! starts from empty state (or from a savepoint, on a host started with `--from-savepoint`)
//! and replays the partition's input from the start of the stream. The old checkpoints are
//! deleted from the store (their manifests first), so that no restore falls back into them
//! and no retention stumbles on their corrupt manifests; files shared by content stay, for
//! the next owner's retention to collect once unused.

use std::path::Path;
use std::time::Duration;

use super::leases::Coordination;
use crate::config::PipelineConfig;
use crate::transport;

/// Resets partition `partition` of the cluster running `pipeline`; with `force` even while a
/// live host runs it. Returns what was done, for people.
pub async fn reset(pipeline: &Path, partition: u32, force: bool) -> anyhow::Result<String> {
    let cfg = PipelineConfig::load_remote(pipeline)?;
    let Some(cluster) = &cfg.cluster else {
        anyhow::bail!(
            "{} has no [cluster] section: a single host's checkpoints are in its state directory; restore a savepoint (eddy run --from-savepoint) or move the checkpoints away",
            pipeline.display()
        );
    };
    let count = cfg.partitions.count;
    if partition >= count {
        anyhow::bail!(
            "{} has partitions 0 to {}: there is no partition {partition}",
            pipeline.display(),
            count - 1
        );
    }
    let lease = Duration::from_millis(cluster.lease_ms);
    let nats = transport::connect(&cfg.nats, "eddy-cluster-reset").await?;
    let replicas = transport::replicas(&nats);
    let coord = Coordination::open(&nats, &cfg.pipeline.name, "eddy-cli", lease, replicas).await?;
    let Some((id, floor)) = coord.reset_pointer(partition, force).await? else {
        return Ok(format!(
            "partition {partition} has no committed checkpoint: nothing to reset"
        ));
    };
    let pcfg = cfg.for_partition(partition);
    let removed = match crate::storage::open(&pcfg, &nats).await? {
        Some(storage) => {
            let checkpoints = pcfg.checkpoints().with_storage(storage);
            tokio::task::spawn_blocking(move || -> anyhow::Result<usize> {
                let old: Vec<u64> = (checkpoints.ids()?.into_iter())
                    .filter(|id| *id < floor)
                    .collect();
                for id in &old {
                    checkpoints.delete(*id)?;
                }
                Ok(old.len())
            })
            .await?
            .map_err(|e| {
                anyhow::anyhow!(
                    "partition {partition} is reset, but deleting its old checkpoints failed ({e:#}): run the command again to delete them"
                )
            })?
        }
        None => 0,
    };
    Ok(format!(
        "partition {partition} no longer names checkpoint {id} ({removed} old checkpoints deleted): its next owner starts it over, from empty state replaying stream {} from its start (outputs older than the output stream's duplicate window are published again), or from the savepoint of a host started with --from-savepoint",
        cfg.input.stream
    ))
}
