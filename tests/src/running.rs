//! Pipelines running in the test process, what their hosts report, and waiting for it.

use std::time::{Duration, Instant};

use crate::*;

/// Runs a pipeline in this process until [`Running::stop`].
pub struct Running {
    stop: tokio::sync::watch::Sender<bool>,
    handle: tokio::task::JoinHandle<anyhow::Result<eddy_host::pipeline::RunSummary>>,
    /// Its metrics.
    pub metrics: std::sync::Arc<eddy_host::metrics::Metrics>,
}

impl Running {
    /// Starts `cfg` with `opts`.
    pub fn start_with(
        cfg: eddy_host::config::PipelineConfig,
        opts: eddy_host::pipeline::RunOptions,
    ) -> Running {
        init_logging();
        let (stop, rx) = tokio::sync::watch::channel(false);
        let metrics = eddy_host::metrics::Metrics::new(&cfg.pipeline.name);
        let handle = tokio::spawn(eddy_host::pipeline::run(cfg, opts, rx, metrics.clone()));
        Running {
            stop,
            handle,
            metrics,
        }
    }

    /// Starts the pipeline of `spec` with default options.
    pub fn start(spec: &PipelineSpec) -> Running {
        Running::start_with(spec.config(), eddy_host::pipeline::RunOptions::default())
    }

    /// Stops it cleanly; panics if it failed.
    pub async fn stop(self) -> eddy_host::pipeline::RunSummary {
        let _ = self.stop.send(true);
        self.handle
            .await
            .expect("pipeline task")
            .expect("pipeline ran without error")
    }

    /// Waits for it to fail on its own; returns the error.
    pub async fn failure(self, within: Duration) -> anyhow::Error {
        match tokio::time::timeout(within, self.handle).await {
            Ok(Ok(Err(e))) => e,
            Ok(Ok(Ok(s))) => panic!("the pipeline ended without error: {s:?}"),
            Ok(Err(e)) => panic!("pipeline task: {e}"),
            Err(_) => panic!("the pipeline did not fail within {within:?}"),
        }
    }
}

/// The status each running host of `pipeline` reports on its control subject (at most
/// `hosts` answers, waiting up to 5 s for them).
pub async fn host_status(
    nats: &eddy_host::transport::Nats,
    pipeline: &str,
    hosts: usize,
) -> Vec<serde_json::Value> {
    eddy_host::control::request_from(
        nats,
        pipeline,
        "status",
        serde_json::json!({}),
        Duration::from_secs(5),
        Some(hosts),
        |_| {},
    )
    .await
    .unwrap_or_default()
    .into_iter()
    .filter_map(|a| a.get("ok").cloned())
    .collect()
}

/// Asks the one running host of `pipeline` for a checkpoint now; returns its id once it is
/// complete (panics if it fails: the tests that ask expect one).
pub async fn checkpoint_now(nats: &eddy_host::transport::Nats, pipeline: &str) -> u64 {
    let answers = eddy_host::control::request(
        nats,
        pipeline,
        "checkpoint",
        serde_json::json!({}),
        Duration::from_secs(60),
        |_| {},
    )
    .await
    .expect("checkpoint");
    answers
        .first()
        .and_then(|a| a["ok"]["id"].as_u64())
        .unwrap_or_else(|| panic!("a completed checkpoint: {answers:?}"))
}

/// Asks the one running host of `pipeline` for a savepoint `name` under `dir` and waits for
/// it; returns its directory (panics if it fails).
pub async fn savepoint_now(
    nats: &eddy_host::transport::Nats,
    pipeline: &str,
    dir: &std::path::Path,
    name: &str,
) -> std::path::PathBuf {
    let answers = eddy_host::control::request(
        nats,
        pipeline,
        "savepoint",
        serde_json::json!({"name": name, "dir": dir}),
        Duration::from_secs(600),
        |_| {},
    )
    .await
    .expect("savepoint");
    assert!(
        answers.len() == 1 && answers[0].get("ok").is_some(),
        "one host wrote the savepoint: {answers:?}"
    );
    dir.join(name)
}

/// The latest record of `version` in a host status's deployment history.
pub fn deployment(status: &serde_json::Value, version: &str) -> Option<serde_json::Value> {
    status["deployments"]
        .as_array()?
        .iter()
        .rev()
        .find(|d| d["version"] == version)
        .cloned()
}

/// Waits until `hosts` hosts of `pipeline` report `version` with status `want` (`live`,
/// `probation`, `rejected`, `rolled-back`); returns their statuses. Panics after `within`.
pub async fn wait_deployment(
    nats: &eddy_host::transport::Nats,
    pipeline: &str,
    version: &str,
    want: &str,
    hosts: usize,
    within: Duration,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + within;
    loop {
        let all = host_status(nats, pipeline, hosts).await;
        let done = all
            .iter()
            .filter(|s| deployment(s, version).is_some_and(|d| d["status"] == want))
            .count();
        if done == hosts {
            return all;
        }
        assert!(
            Instant::now() < deadline,
            "version {version} not {want} on {hosts} hosts: {all:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `check` returns true, or panics with `what` after `within`.
pub async fn eventually(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
