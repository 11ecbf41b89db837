//! `eddy deploy` and `eddy status`, and asking running hosts (control requests) for the other
//! commands.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;

use crate::config::PipelineConfig;
use crate::control::{Answer, HostStatus};
use crate::reload::DeployStatus;
use crate::transport::{self, Nats};

/// `eddy deploy`: stores a plugin version where every host of the pipeline picks it up, then
/// waits (up to `wait` seconds) until each reports it live, rejected or rolled back.
pub async fn deploy(pipeline: &Path, plugin: &Path, wait: u64) -> anyhow::Result<()> {
    let cfg = PipelineConfig::load_remote(pipeline)?;
    let wasm =
        std::fs::read(plugin).with_context(|| format!("cannot read {}", plugin.display()))?;
    let nats = transport::connect(&cfg.nats, "eddy-deploy").await?;
    let note = format!("deployed from {}", plugin.display());
    let version =
        crate::reload::deploy(&nats, &cfg.reload.bucket, &cfg.pipeline.name, &wasm, &note).await?;
    println!(
        "deployed {} as version {version} to {}/{}",
        plugin.display(),
        cfg.reload.bucket,
        cfg.pipeline.name
    );
    if wait > 0 {
        wait_for_version(&nats, &cfg.pipeline.name, &version, wait).await?;
    }
    Ok(())
}

/// `eddy status`: what each running host of the pipeline reports.
pub async fn status(pipeline: &Path) -> anyhow::Result<()> {
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
    for a in answers {
        println!("{}", serde_json::to_string_pretty(&a)?);
    }
    Ok(())
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
    let answers = crate::control::request(nats, pipeline, verb, body, timeout, |p| {
        eprintln!(
            "  progress: {}/{} files, {} entries",
            p.done, p.total, p.entries
        );
    })
    .await?;
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
    secs: u64,
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
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
                DeployStatus::Live => verdicts.push((a.host.clone(), Ok("live".to_string()))),
                DeployStatus::Rejected => {
                    verdicts.push((a.host.clone(), Err(format!("rejected: {reason}"))))
                }
                DeployStatus::RolledBack => {
                    verdicts.push((a.host.clone(), Err(format!("rolled-back: {reason}"))))
                }
                DeployStatus::Probation | DeployStatus::Superseded => {}
            }
        }
        if !answers.is_empty() && verdicts.len() == answers.len() {
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
            anyhow::ensure!(!failed, "version {version} did not go live everywhere");
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
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
