//! `eddy cluster status`: the live hosts of a pipeline, and per partition its owner, lease
//! epoch, consumer lag and last committed checkpoint (age, size), read from NATS alone.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use crate::config::PipelineConfig;
use crate::transport;

/// One partition's line.
#[derive(Debug, serde::Serialize)]
pub struct PartitionStatus {
    /// The partition.
    pub partition: u32,
    /// Its owner, if a live lease names one.
    pub owner: Option<String>,
    /// The live hosts whose run of it failed, and that let it cool (another host runs it
    /// meanwhile).
    pub failing_on: Vec<String>,
    /// The epoch of the owner that committed the pointer.
    pub epoch: Option<u64>,
    /// Events in its input not yet acknowledged.
    pub lag: Option<u64>,
    /// The committed checkpoint.
    pub checkpoint: Option<u64>,
    /// Its age, ms.
    pub checkpoint_age_ms: Option<u64>,
    /// Its size, bytes.
    pub checkpoint_bytes: Option<u64>,
}

/// The hosts and partitions of the cluster running `pipeline`.
pub async fn collect(pipeline: &Path) -> anyhow::Result<(Vec<String>, Vec<PartitionStatus>)> {
    let cfg = PipelineConfig::load_remote(pipeline)?;
    let Some(cluster) = &cfg.cluster else {
        anyhow::bail!(
            "{} has no [cluster] section: its hosts own the partitions [partitions] names; use `eddy status`",
            pipeline.display()
        );
    };
    let lease = Duration::from_millis(cluster.lease_ms);
    let nats = transport::connect(&cfg.nats, "eddy-cluster-status").await?;
    let (hosts, leased, pointers) = super::view(&nats, &cfg, lease).await?;
    let mut out = Vec::new();
    for p in 0..cfg.partitions.count {
        let part = cfg.for_partition(p);
        let lag = match nats.js.get_stream(&cfg.input.stream).await {
            Ok(stream) => {
                let name = part.consumer_name().to_string();
                let mut consumer: Result<async_nats::jetstream::consumer::PullConsumer, _> =
                    stream.get_consumer(&name).await;
                match consumer.as_mut() {
                    Ok(c) => c
                        .info()
                        .await
                        .ok()
                        .map(|i| i.num_pending + i.num_ack_pending as u64),
                    Err(_) => None,
                }
            }
            Err(_) => None,
        };
        let pointer = pointers.get(&p);
        let checkpoint = pointer.and_then(|ptr| ptr.checkpoint);
        let (mut age, mut bytes) = (None, None);
        if let Some(id) = checkpoint
            && let Some(storage) = crate::storage::open(&part, &nats).await?
        {
            let manifest = tokio::task::spawn_blocking(move || {
                storage.get_bytes(&format!("chk-{id:010}/manifest.json"))
            })
            .await?;
            if let Ok(Ok(m)) =
                manifest.map(|b| serde_json::from_slice::<crate::checkpoint::Manifest>(&b))
            {
                age = Some(crate::checkpoint::now_ms().saturating_sub(m.created_ms));
                bytes = Some(m.total_bytes);
            }
        }
        out.push(PartitionStatus {
            partition: p,
            owner: leased.owners.get(&p).cloned(),
            failing_on: (leased.unfit.get(&p))
                .map(|u| u.iter().cloned().collect())
                .unwrap_or_default(),
            epoch: pointer.map(|ptr| ptr.epoch),
            lag,
            checkpoint,
            checkpoint_age_ms: age,
            checkpoint_bytes: bytes,
        });
    }
    Ok((hosts.into_iter().collect(), out))
}

/// [`collect`] as a table for people.
pub fn table(hosts: &[String], partitions: &[PartitionStatus]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "hosts ({}): {}", hosts.len(), hosts.join(", "));
    let _ = writeln!(
        s,
        "{:>9}  {:<32}  {:>12}  {:>8}  {:>22}  {:>8}  {:>12}  failing on",
        "partition", "owner", "epoch", "lag", "checkpoint", "age s", "bytes"
    );
    let dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    for p in partitions {
        let _ = writeln!(
            s,
            "{:>9}  {:<32}  {:>12}  {:>8}  {:>22}  {:>8}  {:>12}  {}",
            p.partition,
            dash(p.owner.clone()),
            dash(p.epoch.map(|e| e.to_string())),
            dash(p.lag.map(|l| l.to_string())),
            dash(p.checkpoint.map(|c| c.to_string())),
            dash(
                p.checkpoint_age_ms
                    .map(|a| format!("{:.1}", a as f64 / 1000.0))
            ),
            dash(p.checkpoint_bytes.map(|b| b.to_string())),
            if p.failing_on.is_empty() {
                "-".to_string()
            } else {
                p.failing_on.join(", ")
            },
        );
    }
    s
}
