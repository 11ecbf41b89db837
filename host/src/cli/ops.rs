//! Operator commands: checkpoints and savepoints on disk, deploying a plugin version, asking
//! running hosts for status and savepoints, and reading state from outside.

use std::path::Path;
use std::time::Duration;

use crate::checkpoint::{Checkpoints, savepoint};
use crate::config::PipelineConfig;
use crate::transport::Nats;

/// The checkpoints of a pipeline on this machine.
pub fn checkpoints(cfg: &PipelineConfig) -> Checkpoints {
    Checkpoints::new(
        &cfg.checkpoint_dir(),
        &cfg.pipeline.state_dir.join("staging"),
        &cfg.pipeline.name,
        cfg.checkpoint.retain,
    )
}

/// `eddy checkpoints list`: one line per completed checkpoint.
pub fn list_checkpoints(cfg: &PipelineConfig) -> Vec<String> {
    checkpoints(cfg)
        .list()
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
pub fn list_savepoints(cfg: &PipelineConfig) -> Vec<String> {
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
pub fn inspect_savepoint(dir: &Path) -> anyhow::Result<String> {
    Ok(serde_json::to_string_pretty(&savepoint::read_meta(dir)?)?)
}

/// `eddy savepoint delete`: removes a savepoint directory (only if it is one).
pub fn delete_savepoint(dir: &Path) -> anyhow::Result<()> {
    savepoint::read_meta(dir)?;
    std::fs::remove_dir_all(dir)?;
    Ok(())
}

/// A timestamp for people: seconds since the Unix epoch, UTC.
fn time(ms: u64) -> String {
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

/// Sends a control request to the running hosts and prints their answers; errors if any
/// host answered with an error.
pub async fn control(
    nats: &Nats,
    pipeline: &str,
    verb: &str,
    body: serde_json::Value,
    timeout: Duration,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let answers = crate::control::request(nats, pipeline, verb, body, timeout, |p| {
        eprintln!(
            "  progress: {}/{} files, {} entries",
            p["done"], p["total"], p["entries"]
        );
    })
    .await?;
    let errors: Vec<String> = answers
        .iter()
        .filter_map(|a| a.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .collect();
    if !errors.is_empty() {
        anyhow::bail!("{}", errors.join("; "));
    }
    Ok(answers
        .into_iter()
        .filter_map(|a| a.get("ok").cloned())
        .collect())
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
