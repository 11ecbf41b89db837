//! `eddy run` and `eddy check`.

use std::path::{Path, PathBuf};

use crate::config::PipelineConfig;
use crate::metrics::{self, Metrics};
use crate::pipeline::{self, RunOptions};

/// `eddy run`: runs the pipeline until SIGINT/SIGTERM, then prints what it did.
pub async fn run(pipeline: &Path, from_savepoint: Option<PathBuf>) -> anyhow::Result<()> {
    let cfg = PipelineConfig::load(pipeline)?;
    let metrics = Metrics::new(&cfg.pipeline.name);
    let _server = match &cfg.metrics.listen {
        Some(listen) => Some(metrics::serve(listen, metrics.clone()).await?),
        None => None,
    };
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(pipeline::stop_on_signals(tx));
    let opts = RunOptions {
        from_savepoint,
        ..RunOptions::default()
    };
    let summary = if cfg.cluster.is_some() {
        crate::cluster::run(cfg, opts, rx, metrics).await?
    } else {
        pipeline::run(cfg, opts, rx, metrics).await?
    };
    eprintln!(
        "stopped: {} events in, {} outputs, {} dropped, {} dead-lettered, {} checkpoints",
        summary.events_in,
        summary.outputs,
        summary.dropped,
        summary.dead_lettered,
        summary.checkpoints
    );
    Ok(())
}

/// `eddy check`: validates the file and initialises the plugin, without NATS.
pub async fn check(pipeline: &Path) -> anyhow::Result<()> {
    let cfg = PipelineConfig::load(pipeline)?;
    let metrics = Metrics::new(&cfg.pipeline.name);
    let worker = tokio::task::spawn_blocking(move || {
        pipeline::build_worker(&cfg, &RunOptions::default(), metrics)
    })
    .await??;
    println!(
        "ok: plugin {} (version {}) initialised; state opened",
        worker.plugin().name(),
        worker.plugin().version()
    );
    Ok(())
}
