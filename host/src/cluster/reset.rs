//! `eddy cluster reset`: starts one partition over when it cannot go on from its checkpoints
//! (every one of them corrupt). The partition's pointer then names no checkpoint but keeps
//! its generation, so the next owner's checkpoint ids stay above every old one: that owner
//! starts from empty state (or from a savepoint, on a host started with `--from-savepoint`)
//! and replays the partition's input from the start of the stream. The old checkpoints are
//! deleted from the store (their manifests first), so that no restore falls back into them
//! and no retention stumbles on their corrupt manifests; files shared by content stay, for
//! the next owner's retention to collect once unused.

use std::path::Path;
use std::sync::Arc;
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
    let removed = match crate::storage::open(&cfg.for_partition(partition), &nats).await? {
        Some(storage) => tokio::task::spawn_blocking(move || remove_below(storage, floor))
            .await?
            .map_err(|e| {
                anyhow::anyhow!(
                    "partition {partition} is reset, but deleting its old checkpoints failed ({e:#}): run the command again to delete them"
                )
            })?,
        None => 0,
    };
    Ok(format!(
        "partition {partition} no longer names checkpoint {id} ({removed} old checkpoints deleted): its next owner starts it over, from empty state replaying stream {} from its start (outputs older than the output stream's duplicate window are published again), or from the savepoint of a host started with --from-savepoint",
        cfg.input.stream
    ))
}

/// Deletes from `storage` every checkpoint whose id is below `floor`, manifests first (a
/// checkpoint without one never happened); returns how many.
fn remove_below(
    storage: Arc<dyn crate::checkpoint::storage::Storage>,
    floor: u64,
) -> anyhow::Result<usize> {
    let id_of =
        |name: &str| -> Option<u64> { name.strip_prefix("chk-")?.split('/').next()?.parse().ok() };
    let names = storage.list("chk-")?;
    let old: Vec<&String> = (names.iter())
        .filter(|n| id_of(n).is_some_and(|id| id < floor))
        .collect();
    let (manifests, files): (Vec<&String>, Vec<&String>) =
        old.into_iter().partition(|n| n.ends_with("/manifest.json"));
    for name in manifests.iter().chain(&files) {
        storage.delete(name)?;
    }
    Ok(manifests.len())
}
