//! `eddy cluster reset`: starts one partition over when it cannot go on from its checkpoints
//! (every one of them corrupt). The partition's pointer then names no checkpoint but keeps
//! its generation, so the next owner's checkpoint ids stay above every old one: that owner
//! starts from empty state (or from a savepoint, on a host started with `--from-savepoint`)
//! and replays the partition's input from the start of the stream.

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
    let (_, leased, _) = super::view(&nats, &cfg, lease).await?;
    if let Some(owner) = leased.owners.get(&partition)
        && !force
    {
        anyhow::bail!(
            "partition {partition} runs on {owner}: a reset throws its state away and replays its input from the start of the stream. To do that anyway, run again with --force (the owner stops at its next checkpoint, and the partition starts over)"
        );
    }
    let replicas = transport::replicas(&nats);
    let coord = Coordination::open(&nats, &cfg.pipeline.name, "eddy-cli", lease, replicas).await?;
    Ok(match coord.reset_pointer(partition).await? {
        None => format!("partition {partition} has no committed checkpoint: nothing to reset"),
        Some(id) => format!(
            "partition {partition} no longer names checkpoint {id}: its next owner starts it over, from empty state replaying stream {} from its start (outputs older than the output stream's duplicate window are published again), or from the savepoint of a host started with --from-savepoint",
            cfg.input.stream
        ),
    })
}
