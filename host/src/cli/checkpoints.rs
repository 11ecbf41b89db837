//! `eddy checkpoints …` (the checkpoints of a pipeline on this machine) and `eddy savepoint …`
//! (created through the running hosts; listed, inspected and deleted on disk).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};

use super::hosts;
use super::{CheckpointAction, SavepointAction};
use crate::checkpoint::{Checkpoints, savepoint};
use crate::config::{CheckpointStore, PipelineConfig};
use crate::control::SavepointSummary;
use crate::transport;

/// The pipeline's checkpoints, with the store beyond this host it names (through `nats`,
/// connected once for every partition a command reads, for `store = "nats"`).
async fn open(
    cfg: &PipelineConfig,
    nats: &mut Option<transport::Nats>,
) -> anyhow::Result<Checkpoints> {
    if cfg.checkpoint.store == CheckpointStore::Local {
        return Ok(cfg.checkpoints());
    }
    if nats.is_none() {
        *nats = Some(transport::connect(&cfg.nats, "eddy-checkpoints").await?);
    }
    let nats = nats.as_ref().context("connected above")?;
    Ok(match crate::storage::open(cfg, nats).await? {
        Some(storage) => cfg.checkpoints().with_storage(storage),
        None => cfg.checkpoints(),
    })
}

/// The configurations whose checkpoints a command reads: the pipeline's own, or in cluster
/// mode (checkpoints per partition) `partition`'s, or with `every`, every partition's.
fn scopes(
    cfg: &PipelineConfig,
    partition: Option<u32>,
    every: bool,
) -> anyhow::Result<Vec<(Option<u32>, PipelineConfig)>> {
    let count = cfg.partitions.count;
    match (cfg.cluster.is_some(), partition) {
        (false, None) => Ok(vec![(None, cfg.clone())]),
        (false, Some(_)) => bail!(
            "--partition is for pipelines in cluster mode (a `[cluster]` section); {} keeps one set of checkpoints",
            cfg.pipeline.name
        ),
        (true, Some(p)) if p >= count => bail!(
            "pipeline {} has {count} partitions (0..{}); there is no partition {p}",
            cfg.pipeline.name,
            count - 1
        ),
        (true, Some(p)) => Ok(vec![(Some(p), cfg.for_partition(p))]),
        (true, None) if every => Ok((0..count)
            .map(|p| (Some(p), cfg.for_partition(p)))
            .collect()),
        (true, None) => bail!(
            "pipeline {} runs in cluster mode, with checkpoints per partition: name one with --partition N (0..{}); `eddy checkpoints list` shows every partition's",
            cfg.pipeline.name,
            count - 1
        ),
    }
}

/// `eddy checkpoints list|inspect|delete`.
pub async fn checkpoints(action: CheckpointAction) -> anyhow::Result<()> {
    let (pipeline, partition, every) = match &action {
        CheckpointAction::List {
            pipeline,
            partition,
        } => (pipeline, *partition, true),
        CheckpointAction::Inspect {
            pipeline,
            partition,
            ..
        }
        | CheckpointAction::Delete {
            pipeline,
            partition,
            ..
        } => (pipeline, *partition, false),
    };
    let cfg = PipelineConfig::load_remote(pipeline)?;
    let scopes = scopes(&cfg, partition, every)?;
    let (mut opened, mut nats) = (Vec::new(), None);
    for (p, cfg) in scopes {
        let cps = open(&cfg, &mut nats).await?;
        opened.push((p, cfg, cps));
    }
    // The store's calls block: they run on a blocking thread.
    tokio::task::spawn_blocking(move || act(action, opened)).await?
}

/// What a `checkpoints` subcommand does with the checkpoints it opened.
fn act(
    action: CheckpointAction,
    opened: Vec<(Option<u32>, PipelineConfig, Checkpoints)>,
) -> anyhow::Result<()> {
    let at = |p: Option<u32>| p.map(|p| format!(" of partition {p}")).unwrap_or_default();
    for (p, cfg, cps) in opened {
        match &action {
            CheckpointAction::List { .. } => {
                if let Some(p) = p {
                    println!("partition {p}:");
                }
                let lines = list_checkpoints(&cps);
                if lines.is_empty() {
                    let place = match cps.storage() {
                        Some(s) => s.describe(),
                        None => cfg.checkpoint_dir().display().to_string(),
                    };
                    println!("no checkpoints in {place}");
                }
                for l in lines {
                    println!("{l}");
                }
            }
            CheckpointAction::Inspect { id, .. } => {
                let m = cps
                    .list()
                    .into_iter()
                    .find(|m| m.id == *id)
                    .ok_or_else(|| anyhow::anyhow!("no checkpoint {id}{}", at(p)))?;
                println!("{}", serde_json::to_string_pretty(&m)?);
            }
            CheckpointAction::Delete { id, .. } => {
                cps.delete(*id)?;
                println!("deleted checkpoint {id}{}", at(p));
            }
        }
    }
    Ok(())
}

/// `eddy savepoint create|list|inspect|delete`.
pub async fn savepoint(action: SavepointAction) -> anyhow::Result<()> {
    match action {
        SavepointAction::Create {
            pipeline,
            name,
            dir,
        } => {
            let cfg = PipelineConfig::load_remote(&pipeline)?;
            let nats = transport::connect(&cfg.nats, "eddy-savepoint").await?;
            let body = serde_json::json!({ "name": name, "dir": dir });
            // A spinner while the hosts write it (on a terminal only).
            let progress = indicatif::ProgressBar::new_spinner().with_message(
                "the running hosts are writing the savepoint (every key group of their state)",
            );
            progress.enable_steady_tick(Duration::from_millis(120));
            let answers = hosts::ask(
                &nats,
                &cfg.pipeline.name,
                "savepoint",
                body,
                Duration::from_secs(3600),
            )
            .await;
            progress.finish_and_clear();
            let answers: Vec<SavepointSummary> = answers?;
            for a in answers {
                println!("{}", serde_json::to_string_pretty(&a)?);
            }
        }
        SavepointAction::List { pipeline } => {
            let cfg = PipelineConfig::load(&pipeline)?;
            for l in savepoint_lines(&cfg) {
                println!("{l}");
            }
        }
        SavepointAction::Inspect { savepoint } => {
            println!("{}", inspect_savepoint(&savepoint)?);
        }
        SavepointAction::Delete { savepoint } => {
            delete_savepoint(&savepoint)?;
            println!("deleted {}", savepoint.display());
        }
    }
    Ok(())
}

/// `eddy checkpoints list`: one line per completed checkpoint.
fn list_checkpoints(cps: &Checkpoints) -> Vec<String> {
    cps.list()
        .iter()
        .map(|m| {
            format!(
                "{:>6}  {}  {:>10} bytes ({:>9} new)  plugin {}  positions {}",
                m.id,
                time(m.created_ms),
                m.total_bytes,
                m.new_bytes,
                m.cut.plugin_version,
                serde_json::to_string(&m.cut.positions).unwrap_or_default()
            )
        })
        .collect()
}

/// `eddy savepoint list`: the savepoints in the pipeline's savepoint directory.
pub(crate) fn savepoint_lines(cfg: &PipelineConfig) -> Vec<String> {
    let dir = cfg.savepoint_dir();
    let Ok(read) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out: Vec<(u64, String)> = read
        .flatten()
        .filter_map(|e| {
            let meta = savepoint::read_meta(&e.path()).ok()?;
            Some((
                meta.created_ms,
                format!(
                    "{}  {}  {} entries, {} key groups, plugin {}",
                    e.path().display(),
                    time(meta.created_ms),
                    meta.entries,
                    meta.key_groups,
                    meta.cut.plugin_version
                ),
            ))
        })
        .collect();
    out.sort();
    out.into_iter().map(|(_, l)| l).collect()
}

/// `eddy savepoint inspect`: the savepoint's metadata, as JSON.
fn inspect_savepoint(dir: &Path) -> anyhow::Result<String> {
    Ok(serde_json::to_string_pretty(&savepoint::read_meta(dir)?)?)
}

/// `eddy savepoint delete`: removes a savepoint directory (only if it is one).
fn delete_savepoint(dir: &Path) -> anyhow::Result<()> {
    savepoint::read_meta(dir)?;
    std::fs::remove_dir_all(dir)?;
    Ok(())
}

/// A timestamp for people: seconds since the Unix epoch, UTC.
pub(crate) fn time(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's
/// algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps_are_utc_dates() {
        assert_eq!(super::time(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::time(1_700_000_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(super::time(951_782_400_000), "2000-02-29T00:00:00Z");
    }
}
