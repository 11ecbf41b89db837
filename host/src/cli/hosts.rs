//! `eddy deploy` and `eddy status`, and asking running hosts (control requests) for the other
//! commands.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;

use crate::config::PipelineConfig;
use crate::control::{Answer, HostStatus};
use crate::reload::DeployStatus;
use crate::transport::{self, Nats};

/// What `eddy deploy` does with the plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeployMode {
    /// Live, on probation (hot reload).
    Live,
    /// As shadow, beside the live version.
    Shadow,
    /// Promote the shadow: its version and state become live.
    Promote,
    /// Discard the shadow.
    Discard,
}

/// `eddy deploy`: stores a plugin version where every host of the pipeline picks it up (live,
/// or as shadow), or promotes or discards the shadow; then waits (up to `wait` seconds) until
/// each host reports the outcome.
pub async fn deploy(
    pipeline: &Path,
    plugin: Option<&Path>,
    mode: DeployMode,
    wait: u64,
) -> anyhow::Result<()> {
    let cfg = PipelineConfig::load_remote(pipeline)?;
    if mode != DeployMode::Live && cfg.reload.watch != crate::config::ReloadWatch::ObjectStore {
        anyhow::bail!(
            "shadow deploys come through the plugin bucket, but reload.watch is not \"object-store\" in {}",
            pipeline.display()
        );
    }
    let nats = transport::connect(&cfg.nats, "eddy-deploy").await?;
    let (bucket, name) = (&cfg.reload.bucket, &cfg.pipeline.name);
    let (version, goal) = match (mode, plugin) {
        (DeployMode::Live | DeployMode::Shadow, Some(plugin)) => {
            let wasm = std::fs::read(plugin)
                .with_context(|| format!("cannot read {}", plugin.display()))?;
            let note = format!("deployed from {}", plugin.display());
            if mode == DeployMode::Shadow {
                let v = crate::reload::shadow::deploy(&nats, bucket, name, &wasm, &note).await?;
                println!(
                    "deployed {} as the shadow of {name}, version {v}: it runs beside the live version, its outputs compared and never published; see `eddy status`, then `eddy deploy --promote` or `--discard`",
                    plugin.display()
                );
                (v, DeployStatus::Shadow)
            } else {
                let v = crate::reload::deploy(&nats, bucket, name, &wasm, &note).await?;
                println!(
                    "deployed {} as version {v} to {bucket}/{name}",
                    plugin.display()
                );
                (v, DeployStatus::Live)
            }
        }
        (DeployMode::Live | DeployMode::Shadow, None) => {
            anyhow::bail!(
                "name the plugin component to deploy: eddy deploy <pipeline.toml> <plugin.wasm>"
            )
        }
        (DeployMode::Promote, _) => {
            let v =
                crate::reload::shadow::promote(&nats, bucket, name, "promoted from shadow").await?;
            println!(
                "promoting the shadow of {name}, version {v}: its state and version become live"
            );
            (v, DeployStatus::Live)
        }
        (DeployMode::Discard, _) => {
            let v = crate::reload::shadow::discard(&nats, bucket, name).await?;
            println!("discarding the shadow of {name}, version {v}");
            (v, DeployStatus::Discarded)
        }
    };
    if wait > 0 {
        wait_for_version(&nats, name, &version, goal, wait).await?;
    }
    Ok(())
}

/// `eddy status`: what each running host of the pipeline reports.
pub async fn status(pipeline: &Path, json: bool) -> anyhow::Result<()> {
    let cfg = PipelineConfig::load_remote(pipeline)?;
    let nats = transport::connect(&cfg.nats, "eddy-status").await?;
    let answers: Vec<HostStatus> = ask(
        &nats,
        &cfg.pipeline.name,
        "status",
        serde_json::json!({}),
        Duration::from_secs(5),
    )
    .await?;
    if answers.is_empty() {
        anyhow::bail!(
            "no host of pipeline `{}` answered on {}: is `eddy run {}` running?",
            cfg.pipeline.name,
            cfg.nats.url,
            pipeline.display()
        );
    }
    for a in answers {
        if json {
            println!("{}", serde_json::to_string_pretty(&a)?);
        } else {
            print!("{}", status_table(&a, crate::checkpoint::now_ms()));
        }
    }
    Ok(())
}

/// How long ago `then_ms` was, for people: `12 s ago`, `3 min ago`, `5 h ago`, `2 d ago`.
fn ago(then_ms: u64, now_ms: u64) -> String {
    let s = now_ms.saturating_sub(then_ms) / 1000;
    match s {
        0..120 => format!("{s} s ago"),
        120..7_200 => format!("{} min ago", s / 60),
        7_200..172_800 => format!("{} h ago", s / 3_600),
        _ => format!("{} d ago", s / 86_400),
    }
}

/// One host's status for people (`eddy status`; `--json` gives [`HostStatus`] itself).
pub fn status_table(a: &HostStatus, now_ms: u64) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let up = a.uptime_ms / 1000;
    let _ = writeln!(
        s,
        "{} on host {} (up {}h {:02}m {:02}s)",
        a.pipeline,
        a.host,
        up / 3600,
        up / 60 % 60,
        up % 60
    );
    match &a.plugin {
        Some(p) => {
            let _ = writeln!(s, "  plugin       {} {} ({})", p.name, p.version, p.exports);
        }
        None => {
            let _ = writeln!(s, "  plugin       none running");
        }
    }
    if let Some(p) = &a.probation {
        let _ = writeln!(
            s,
            "  probation    {} events, {} failed (falls back to {})",
            p.events, p.failures, p.previous
        );
    }
    if let Some(r) = &a.shadow {
        shadow_lines(&mut s, r, now_ms);
    }
    let owned: Vec<String> = a.partitions.owned.iter().map(u32::to_string).collect();
    let _ = writeln!(
        s,
        "  partitions   {} of {}: {}",
        owned.len(),
        a.partitions.count,
        if owned.is_empty() {
            "none".to_string()
        } else {
            owned.join(", ")
        }
    );
    let _ = writeln!(
        s,
        "  events       {} in, {} out, {} dropped, {} dead-lettered",
        a.events_in, a.outputs, a.dropped, a.dead_lettered
    );
    if let Some(q) = &a.quota {
        let _ = writeln!(
            s,
            "  quota        {} writes refused (events dead-lettered), {} entries evicted",
            q.rejected, q.evicted
        );
    }
    for (input, position) in &a.positions {
        let _ = writeln!(s, "  position     {input} at {position}");
    }
    match &a.last_checkpoint {
        Some(c) => {
            let _ = writeln!(s, "  checkpoint   {} ({})", c.id, ago(c.created_ms, now_ms));
        }
        None => {
            let _ = writeln!(s, "  checkpoint   none yet");
        }
    }
    if !a.deployments.is_empty() {
        let _ = writeln!(s, "  deployments  (newest first)");
    }
    for d in a.deployments.iter().rev() {
        let status = serde_json::to_value(d.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let _ = write!(
            s,
            "    {:<14} {:<12} {:<12} {}",
            ago(d.at_ms, now_ms),
            d.version,
            status,
            d.source
        );
        if let Some(why) = &d.reason {
            let _ = write!(s, ": {why}");
        }
        let _ = writeln!(s);
    }
    s
}

/// The shadow's report for people: totals, counts per subject, the first differences.
fn shadow_lines(s: &mut String, r: &crate::reload::shadow::ShadowReport, now_ms: u64) {
    use std::fmt::Write;
    let _ = writeln!(
        s,
        "  shadow       {} beside {} (since {}): {} events, {} the same, {} differ, {} failed in the shadow",
        r.version,
        r.live_version,
        ago(r.since_ms, now_ms),
        r.events,
        r.same_events(),
        r.differing_events,
        r.shadow_failures
    );
    if let Some(why) = &r.stopped {
        let _ = writeln!(s, "               stopped: {why}");
    }
    for (subject, c) in &r.subjects {
        let _ = writeln!(
            s,
            "               {subject}: {} same, {} different, {} only live, {} only shadow",
            c.same, c.different, c.only_live, c.only_shadow
        );
    }
    let shown = |sent: &Option<crate::reload::shadow::Sent>| match sent {
        Some(m) => super::tail::for_terminal(m.payload.as_bytes()),
        None => "(nothing)".to_string(),
    };
    for d in r.samples.iter().take(3) {
        let _ = writeln!(
            s,
            "               seq {} key {} on {}:\n                 live   {}\n                 shadow {}",
            d.input.seq,
            super::tail::for_terminal(d.input.key.as_bytes()),
            d.subject,
            shown(&d.live),
            shown(&d.shadow)
        );
    }
    if r.samples.len() > 3 {
        let _ = writeln!(
            s,
            "               ({} more differences kept: eddy status --json)",
            r.samples.len() - 3
        );
    }
}

/// Sends a control request to the running hosts and returns their answers; errors if any
/// host answered with an error.
pub async fn ask<T: serde::de::DeserializeOwned>(
    nats: &Nats,
    pipeline: &str,
    verb: &str,
    body: serde_json::Value,
    timeout: Duration,
) -> anyhow::Result<Vec<T>> {
    ask_with(nats, pipeline, verb, body, timeout, |p| {
        eprintln!(
            "  progress: {}/{} files, {} entries",
            p.done, p.total, p.entries
        );
    })
    .await
}

/// [`ask`], passing savepoint progress to `on_progress`.
pub async fn ask_with<T: serde::de::DeserializeOwned>(
    nats: &Nats,
    pipeline: &str,
    verb: &str,
    body: serde_json::Value,
    timeout: Duration,
    on_progress: impl FnMut(crate::control::SavepointProgress),
) -> anyhow::Result<Vec<T>> {
    let answers = crate::control::request(nats, pipeline, verb, body, timeout, on_progress).await?;
    let mut oks = Vec::with_capacity(answers.len());
    let mut errors = Vec::new();
    for a in answers {
        let a = serde_json::from_value(a)
            .unwrap_or_else(|e| Answer::Error(format!("a host's answer does not read ({e})")));
        match a {
            Answer::Ok(v) => oks.push(v),
            Answer::Error(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        anyhow::bail!("{}", errors.join("; "));
    }
    Ok(oks)
}

/// Waits until every host that answers status runs `version` (or reports it rejected or
/// rolled back).
async fn wait_for_version(
    nats: &Nats,
    pipeline: &str,
    version: &str,
    goal: DeployStatus,
    secs: u64,
) -> anyhow::Result<()> {
    let label = serde_json::to_value(goal)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    // A spinner with the count so far, on a terminal only.
    let progress = indicatif::ProgressBar::new_spinner();
    progress.enable_steady_tick(Duration::from_millis(120));
    loop {
        let answers: Vec<HostStatus> = ask(
            nats,
            pipeline,
            "status",
            serde_json::json!({}),
            Duration::from_secs(5),
        )
        .await
        .unwrap_or_default();
        let mut verdicts = Vec::new();
        for a in &answers {
            let Some(d) = a.deployment(version) else {
                continue;
            };
            let reason = d.reason.as_deref().unwrap_or("");
            match d.status {
                s if s == goal => verdicts.push((a.host.clone(), Ok(label.clone()))),
                DeployStatus::Rejected => {
                    verdicts.push((a.host.clone(), Err(format!("rejected: {reason}"))))
                }
                DeployStatus::RolledBack => {
                    verdicts.push((a.host.clone(), Err(format!("rolled-back: {reason}"))))
                }
                _ => {}
            }
        }
        progress.set_message(format!(
            "{version}: {} of {} hosts decided ({label}, rejected or rolled back); the rest on probation or swapping",
            verdicts.len(),
            answers.len()
        ));
        if !answers.is_empty() && verdicts.len() == answers.len() {
            progress.finish_and_clear();
            let mut failed = false;
            for (host, v) in verdicts {
                match v {
                    Ok(s) => println!("  {host}: {version} {s}"),
                    Err(e) => {
                        failed = true;
                        println!("  {host}: {version} {e}");
                    }
                }
            }
            anyhow::ensure!(
                !failed,
                "version {version} did not become {label} everywhere"
            );
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            progress.finish_and_clear();
            let on_probation = answers
                .iter()
                .filter(|a| {
                    a.deployment(version)
                        .is_some_and(|d| d.status == DeployStatus::Probation)
                })
                .count();
            let why = if on_probation > 0 {
                format!(
                    " ({on_probation} on probation: a version goes live only after it has handled events, reload.probation_events or at least ten)"
                )
            } else {
                String::new()
            };
            anyhow::bail!(
                "not every host reported version {version} live within {secs} s{why}; see `eddy status`"
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{CheckpointRef, PartitionsStatus, PluginStatus};
    use crate::reload::Deployment;

    #[test]
    fn status_for_people_shows_ages_and_the_newest_deployment_first() {
        let now = 1_800_000_000_000;
        let deployment = |version: &str, ago_ms: u64, status, reason: Option<&str>| Deployment {
            version: version.into(),
            source: format!("deployed from {version}.wasm"),
            at_ms: now - ago_ms,
            status,
            reason: reason.map(str::to_string),
            swap_pause_us: None,
        };
        let status = HostStatus {
            quota: Some(crate::control::QuotaStatus {
                rejected: 2,
                evicted: 0,
            }),
            shadow: None,
            pipeline: "fraud".into(),
            host: "a".into(),
            partitions: PartitionsStatus {
                count: 8,
                owned: vec![1, 5],
            },
            uptime_ms: 3_723_000,
            plugin: Some(PluginStatus {
                name: "fraud_enrich".into(),
                version: "v1".into(),
                exports: "handler".into(),
            }),
            probation: None,
            deployments: vec![
                deployment("v1", 3_600_000, DeployStatus::Live, None),
                deployment(
                    "v2",
                    90_000,
                    DeployStatus::RolledBack,
                    Some("1 of its 2 events failed during probation"),
                ),
            ],
            positions: [("keyed:TXN/fraud".to_string(), 42)].into(),
            last_checkpoint: Some(CheckpointRef {
                id: 7,
                created_ms: now - 4_000,
            }),
            events_in: 42,
            outputs: 40,
            dropped: 1,
            dead_lettered: 1,
            lag: Some(3),
            call_seconds: Default::default(),
            checkpoints: Vec::new(),
        };
        assert_eq!(
            status_table(&status, now),
            "fraud on host a (up 1h 02m 03s)
  plugin       fraud_enrich v1 (handler)
  partitions   2 of 8: 1, 5
  events       42 in, 40 out, 1 dropped, 1 dead-lettered
  quota        2 writes refused (events dead-lettered), 0 entries evicted
  position     keyed:TXN/fraud at 42
  checkpoint   7 (4 s ago)
  deployments  (newest first)
    90 s ago       v2           rolled-back  deployed from v2.wasm: 1 of its 2 events failed during probation
    60 min ago     v1           live         deployed from v1.wasm
"
        );
    }

    #[test]
    fn status_for_people_shows_the_shadow_and_its_first_differences_escaped() {
        use crate::reload::shadow::{Difference, InputSample, Sent, ShadowReport, SubjectCounts};
        let now = 1_700_000_000_000;
        let sent = |p: &str| {
            Some(Sent {
                payload: p.into(),
                headers: Vec::new(),
            })
        };
        let report = ShadowReport {
            version: "v3".into(),
            live_version: "v1".into(),
            since_ms: now - 30_000,
            events: 10,
            differing_events: 1,
            subjects: [(
                "txn.out".to_string(),
                SubjectCounts {
                    same: 9,
                    different: 1,
                    ..Default::default()
                },
            )]
            .into(),
            samples: vec![Difference {
                input: InputSample {
                    subject: "txn.in".into(),
                    seq: 7,
                    key: "c-\u{1b}[31m".into(),
                    payload: "{}".into(),
                },
                subject: "txn.out".into(),
                live: sent("{\"flagged\":false}"),
                shadow: sent("{\"flagged\":true}"),
            }],
            ..Default::default()
        };
        let mut s = String::new();
        shadow_lines(&mut s, &report, now);
        assert_eq!(
            s,
            "  shadow       v3 beside v1 (since 30 s ago): 10 events, 9 the same, 1 differ, 0 failed in the shadow
               txn.out: 9 same, 1 different, 0 only live, 0 only shadow
               seq 7 key c-\\e[31m on txn.out:
                 live   {\"flagged\":false}
                 shadow {\"flagged\":true}
"
        );
    }
}
