//! Hot reload: new plugin versions reach running hosts, are compiled and validated off the hot
//! path, swapped in between two batches, judged on probation, and rolled back by themselves.
//!
//! Owns: where versions come from (`eddy deploy` puts a component into the NATS object store
//! bucket `reload.bucket` under the pipeline's name, and every host of the pipeline watches it;
//! or, for development, the file at `plugin.path` is watched), their validation (it compiles,
//! links against the WIT, instantiates, and `init` accepts the pipeline's plugin config), the
//! probation rule, and the deployment history reported by `eddy status` and the metrics.
//!
//! The swap itself is the run loop's (`pipeline`): at a batch boundary it replaces the plugin
//! by the ready instance (microseconds), runs `migrate` if the new version exports it, and
//! starts probation: for its first `reload.probation_events` events (or, once `probation_ms` has
//! passed, however many it has seen, if at least ten: a version deployed at a quiet time stays
//! on probation until events come), the new
//! version's state writes are held in an overlay and its outputs are held back. If more than
//! `reload.max_failure_share` of them trap or exceed a budget, the host goes back to the
//! previous version, drops the held writes and outputs, and handles those events again with the
//! previous version: nothing is lost and nothing is published twice. Otherwise the writes are
//! committed and the outputs published. No checkpoint is cut during probation.
//!
//! The history and every deployed component are remembered in NATS (`record`): a restart starts
//! the version that was live, and a rolled-back version never comes back by itself.
//!
//! Never: blocks the run loop on compiling or instantiating a plugin.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use crate::engine::Planner;
use crate::engine::{Engine, Instance, InstanceContext, Plugin};
use crate::transport::Nats;

pub mod record;
pub mod shadow;
mod watch;

pub use watch::watch;

/// A validated new version, ready to swap in.
pub struct Candidate {
    /// The compiled plugin.
    pub plugin: Plugin,
    /// An instance whose `init` succeeded.
    pub instance: Instance,
    /// Its lookup planner, if the pipeline has lookups.
    pub planner: Option<Planner>,
    /// Where it came from.
    pub source: String,
    /// The state its instance and planner were made on (a promoted shadow's state replaces
    /// the live one: a candidate validated before that is made again on the new state).
    pub state: Arc<crate::state::StateStore>,
}

/// What the watcher found.
pub enum ReloadEvent {
    /// A version ready to swap in.
    Ready(Box<Candidate>),
    /// A version declared the shadow (`eddy deploy --shadow`), ready to start beside the live
    /// one.
    Shadow(Box<Candidate>),
    /// The shadow is no longer declared (discarded, or promoted: the promoted version arrives
    /// first, as [`ReloadEvent::Ready`]).
    ShadowGone,
    /// A version that cannot run, and why.
    Rejected {
        /// Its version (content hash).
        version: String,
        /// Where it came from.
        source: String,
        /// Why it was rejected.
        reason: String,
    },
}

/// The state of one deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeployStatus {
    /// Running.
    Live,
    /// Swapped in, on probation.
    Probation,
    /// Refused before it ran.
    Rejected,
    /// Ran, failed probation, replaced by the previous version.
    RolledBack,
    /// Replaced by a newer version.
    Superseded,
    /// Running as shadow: beside the live version, its outputs compared, never published.
    Shadow,
    /// A shadow the operator discarded.
    Discarded,
}

/// One version's deployment, as `eddy status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Deployment {
    /// Content hash.
    pub version: String,
    /// Where it came from.
    pub source: String,
    /// When it was swapped in (or rejected), ms since the Unix epoch.
    pub at_ms: u64,
    /// Its state.
    pub status: DeployStatus,
    /// Why it was rejected or rolled back.
    pub reason: Option<String>,
    /// Processing pause of its swap, µs.
    pub swap_pause_us: Option<u64>,
}

/// The most recent deployments, newest last.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct History {
    /// Deployments.
    pub deployments: Vec<Deployment>,
}

impl History {
    /// Records a deployment (keeping the last 50).
    pub fn push(&mut self, d: Deployment) {
        if d.status == DeployStatus::Probation || d.status == DeployStatus::Live {
            for old in &mut self.deployments {
                if matches!(old.status, DeployStatus::Live | DeployStatus::Probation) {
                    old.status = DeployStatus::Superseded;
                }
            }
        }
        self.deployments.push(d);
        if self.deployments.len() > 50 {
            self.deployments.remove(0);
        }
    }

    /// Sets the status of the newest deployment of `version` that runs as shadow, if one does.
    pub fn set_shadow(&mut self, version: &str, status: DeployStatus) {
        if let Some(d) = self
            .deployments
            .iter_mut()
            .rev()
            .find(|d| d.version == version && d.status == DeployStatus::Shadow)
        {
            d.status = status;
        }
    }

    /// Sets the status of the newest deployment of `version`.
    pub fn set(&mut self, version: &str, status: DeployStatus, reason: Option<String>) {
        if let Some(d) = self
            .deployments
            .iter_mut()
            .rev()
            .find(|d| d.version == version)
        {
            d.status = status;
            if reason.is_some() {
                d.reason = reason;
            }
        }
    }
}

/// Events a version must have handled before `reload.probation_ms` alone can end its probation.
const MIN_JUDGED_EVENTS: u64 = 10;

/// The probation rule of a freshly swapped version: how many of its first events may fail.
#[derive(Debug, Clone)]
pub struct Probation {
    /// Events it handled so far.
    pub events: u64,
    /// Of those, how many failed (trap, CPU budget, memory limit).
    pub failures: u64,
    limit: u64,
    share: f64,
    until: Instant,
}

/// What probation says after a batch.
#[derive(Debug, PartialEq)]
pub enum Judgement {
    /// Keep watching.
    Pending,
    /// Passed: commit and publish what was held.
    Pass,
    /// Failed: roll back.
    Fail(String),
}

impl Probation {
    /// Probation per the pipeline's `[reload]`.
    pub fn new(cfg: &crate::config::ReloadConfig) -> Probation {
        Probation {
            events: 0,
            failures: 0,
            limit: cfg.probation_events,
            share: cfg.max_failure_share,
            until: Instant::now() + Duration::from_millis(cfg.probation_ms),
        }
    }

    /// Counts a batch's results and judges.
    pub fn record(&mut self, events: u64, failures: u64) -> Judgement {
        self.events += events;
        self.failures += failures;
        self.judge()
    }

    /// Judges what was seen so far (also when time is up with few events).
    pub fn judge(&self) -> Judgement {
        let allowed = (self.share * self.limit as f64).floor() as u64;
        if self.failures > allowed {
            return Judgement::Fail(format!(
                "{} of its first {} events failed (trap or budget); reload.max_failure_share allows {allowed} of {}",
                self.failures, self.events, self.limit
            ));
        }
        if self.events >= self.limit {
            return Judgement::Pass;
        }
        if Instant::now() >= self.until && self.events >= self.limit.min(MIN_JUDGED_EVENTS) {
            // Fewer events than the probation asks for: judge by the share seen. With fewer
            // still (a deploy at a quiet time), it stays on probation until events come.
            if self.failures as f64 > self.share * self.events as f64 {
                return Judgement::Fail(format!(
                    "{} of its {} events failed (trap or budget) during probation",
                    self.failures, self.events
                ));
            }
            return Judgement::Pass;
        }
        Judgement::Pending
    }
}

/// What the watcher needs to validate versions.
pub struct Validator {
    /// The engine plugins are compiled with.
    pub engine: Arc<Engine>,
    /// What instances get (the state changes when a shadow is promoted).
    pub ctx: std::sync::RwLock<InstanceContext>,
    /// The plugin config.
    pub config_json: String,
    /// Whether the pipeline has broadcast inputs (the version must handle them).
    pub needs_broadcast: bool,
    /// Whether the plugin's `prepare` plans lookups (some store has no `plan` in the file):
    /// only then does a version get a planning instance.
    pub prepare_plans: bool,
}

impl Validator {
    /// What instances get now.
    pub fn context(&self) -> InstanceContext {
        self.ctx.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Instances made from now on work on `state` (a promoted shadow's).
    pub fn use_state(&self, state: Arc<crate::state::StateStore>) {
        self.ctx.write().unwrap_or_else(|p| p.into_inner()).state = state;
    }

    /// Compiles and validates `wasm`: a candidate, or the reason it cannot run.
    pub fn validate(&self, wasm: &[u8], name: &str, source: &str) -> Result<Candidate, String> {
        let plugin = self.engine.load(wasm, name).map_err(|e| format!("{e:#}"))?;
        if self.needs_broadcast && !plugin.capabilities().broadcast {
            return Err(format!(
                "plugin {name} does not export broadcast-handler but the pipeline has broadcast inputs"
            ));
        }
        let ctx = self.context();
        let instance = plugin
            .instantiate(&ctx, &self.config_json)
            .map_err(|e| format!("{e:#}"))?;
        let planner = if ctx.lookups.is_some() && self.prepare_plans {
            Planner::new(&plugin, &ctx, &self.config_json).map_err(|e| format!("{e:#}"))?
        } else {
            None
        };
        Ok(Candidate {
            plugin,
            instance,
            planner,
            source: source.to_string(),
            state: ctx.state,
        })
    }
}

/// The deployed component of `pipeline` in the object store, if any: `(bytes, version)`.
pub async fn deployed(
    nats: &Nats,
    bucket: &str,
    pipeline: &str,
) -> anyhow::Result<Option<Vec<u8>>> {
    let Ok(store) = nats.js.get_object_store(bucket).await else {
        return Ok(None);
    };
    let mut object = match store.get(pipeline).await {
        Ok(o) => o,
        Err(e) if e.kind() == async_nats::jetstream::object_store::GetErrorKind::NotFound => {
            return Ok(None);
        }
        Err(e) => {
            return Err(anyhow::anyhow!(
                "reading deployed plugin {bucket}/{pipeline}: {e}"
            ));
        }
    };
    let mut wasm = Vec::new();
    object
        .read_to_end(&mut wasm)
        .await
        .with_context(|| format!("reading deployed plugin {bucket}/{pipeline}"))?;
    Ok(Some(wasm))
}

/// The plugin bucket `bucket` (`reload.bucket`), created where missing.
async fn plugin_bucket(
    nats: &Nats,
    bucket: &str,
) -> anyhow::Result<async_nats::jetstream::object_store::ObjectStore> {
    crate::transport::object_bucket(
        nats,
        async_nats::jetstream::object_store::Config {
            bucket: bucket.to_string(),
            description: Some("Eddy plugins, by pipeline".into()),
            // Replicated like the rest: every partition a host takes reads it, so on one
            // server it would stop them all when that server goes.
            num_replicas: crate::transport::replicas(nats),
            ..Default::default()
        },
    )
    .await
    .with_context(|| format!("the plugin bucket `{bucket}` (reload.bucket)"))
}

/// Uploads `wasm` as the deployed plugin of `pipeline` (creating the bucket if needed); returns
/// its version.
pub async fn deploy(
    nats: &Nats,
    bucket: &str,
    pipeline: &str,
    wasm: &[u8],
    note: &str,
) -> anyhow::Result<String> {
    let store = plugin_bucket(nats, bucket).await?;
    // By version first, so a host that sees the new deployment can always find it again.
    let version = keep_in(&store, bucket, pipeline, wasm, note).await?;
    let metadata = [("version".to_string(), version.clone())].into();
    put(&store, bucket, pipeline, note, metadata, wasm).await?;
    Ok(version)
}

/// Stores `wasm` in the plugin bucket as `name`, with `note` as its description.
async fn put(
    store: &async_nats::jetstream::object_store::ObjectStore,
    bucket: &str,
    name: &str,
    note: &str,
    metadata: std::collections::HashMap<String, String>,
    wasm: &[u8],
) -> anyhow::Result<()> {
    let meta = async_nats::jetstream::object_store::ObjectMetadata {
        name: name.to_string(),
        description: Some(note.to_string()),
        metadata,
        ..Default::default()
    };
    let mut reader = wasm;
    store
        .put(meta, &mut reader)
        .await
        .with_context(|| format!("cannot upload to {bucket}/{name}"))?;
    Ok(())
}

/// Keeps `wasm` in the plugin bucket under its version, unless it is there already (a version
/// is its content's hash); returns the version. Every deployed version is kept, and so is a
/// version a host loaded from its own file: a rollback, or the fallback from a rolled-back
/// deployment, can return to either.
pub async fn keep(
    nats: &Nats,
    bucket: &str,
    pipeline: &str,
    wasm: &[u8],
    note: &str,
) -> anyhow::Result<String> {
    let store = plugin_bucket(nats, bucket).await?;
    keep_in(&store, bucket, pipeline, wasm, note).await
}

/// [`keep`] in the opened plugin bucket.
async fn keep_in(
    store: &async_nats::jetstream::object_store::ObjectStore,
    bucket: &str,
    pipeline: &str,
    wasm: &[u8],
    note: &str,
) -> anyhow::Result<String> {
    let version = crate::engine::version_of(wasm);
    let name = record::versioned(pipeline, &version);
    if !is_kept(store, &name).await {
        put(store, bucket, &name, note, Default::default(), wasm).await?;
    }
    Ok(version)
}

/// Whether the plugin bucket keeps `version` of `pipeline` (asked before reading a file to
/// keep: every partition run of a host starts with the same one).
pub async fn keeps(nats: &Nats, bucket: &str, pipeline: &str, version: &str) -> bool {
    match nats.js.get_object_store(bucket).await {
        Ok(store) => is_kept(&store, &record::versioned(pipeline, version)).await,
        Err(_) => false,
    }
}

async fn is_kept(store: &async_nats::jetstream::object_store::ObjectStore, name: &str) -> bool {
    store.info(name).await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(events: u64, share: f64, ms: u64) -> crate::config::ReloadConfig {
        crate::config::ReloadConfig {
            probation_events: events,
            max_failure_share: share,
            probation_ms: ms,
            ..Default::default()
        }
    }

    #[test]
    fn probation_passes_fails_and_times_out_by_the_rule() {
        let judge = |events: u64, failures: u64, c: &crate::config::ReloadConfig| {
            Probation::new(c).record(events, failures)
        };
        let c = cfg(100, 0.1, 60_000);
        assert_eq!(judge(50, 0, &c), Judgement::Pending);
        assert_eq!(judge(100, 10, &c), Judgement::Pass, "10 of 100 is allowed");
        assert!(
            matches!(judge(60, 11, &c), Judgement::Fail(_)),
            "11 can never pass"
        );
        let c = cfg(100, 0.1, 0);
        assert_eq!(
            judge(5, 0, &c),
            Judgement::Pending,
            "time is up, but 5 events are too few to judge"
        );
        assert_eq!(judge(0, 0, &c), Judgement::Pending, "no events at all");
        assert_eq!(
            judge(12, 1, &c),
            Judgement::Pass,
            "time is up, 1 of 12 failed"
        );
        assert!(matches!(judge(12, 3, &c), Judgement::Fail(_)));
        let c = cfg(4, 0.1, 0);
        assert_eq!(
            judge(4, 0, &c),
            Judgement::Pass,
            "a short probation, all seen"
        );
    }
}
