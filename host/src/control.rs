//! Operator requests to running hosts over NATS: savepoints, checkpoints on demand, status.
//!
//! Each host of pipeline `P` listens on `eddy.ctl.P.<verb>` (no queue group: every host of the
//! pipeline answers, so a CLI gathers one reply per host). Requests and replies are JSON.
//! Verbs: `savepoint` (`{"name": ..., "dir": ..., "progress": <subject>}`: a savepoint at a
//! consistent cut; progress messages go to `progress` while it is written), `checkpoint`, and
//! `status`. Access is controlled by NATS permissions on these subjects.
//!
//! Never: touches state itself. It hands commands to the run loop, which acts between batches.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::metrics::HistogramSnapshot;
use crate::reload::Deployment;
use crate::transport::Nats;

/// A host's answer to `status`: what it runs and how far it is. Serialized by the host and
/// read back by the CLI with the same type.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostStatus {
    /// The pipeline's name.
    pub pipeline: String,
    /// The host's name.
    pub host: String,
    /// Partitions of the pipeline and those this host owns.
    pub partitions: PartitionsStatus,
    /// Since the run started, ms.
    pub uptime_ms: u64,
    /// The plugin running now.
    pub plugin: Option<PluginStatus>,
    /// The version on probation, if one is.
    pub probation: Option<ProbationStatus>,
    /// Per-key quota hits since the state was opened, if the pipeline sets quotas.
    #[serde(default)]
    pub quota: Option<QuotaStatus>,
    /// The shadow version and what its comparison found, if one is declared.
    #[serde(default)]
    pub shadow: Option<crate::reload::shadow::ShadowReport>,
    /// Deployment history, oldest first.
    pub deployments: Vec<Deployment>,
    /// Position of every input.
    pub positions: BTreeMap<String, u64>,
    /// The newest completed checkpoint.
    pub last_checkpoint: Option<CheckpointRef>,
    /// Events read.
    pub events_in: u64,
    /// Outputs published.
    pub outputs: u64,
    /// Events dropped by the plugin.
    pub dropped: u64,
    /// Events dead-lettered.
    pub dead_lettered: u64,
    /// Messages of the keyed input not yet delivered to this host: the consumer's pending
    /// count as of the last batch it read (none before the first).
    #[serde(default)]
    pub lag: Option<u64>,
    /// How long plugin calls (one batch each) took since the run started.
    #[serde(default)]
    pub call_seconds: HistogramSnapshot,
    /// The newest checkpoints this run completed, oldest first (at most
    /// [`RECENT_CHECKPOINTS`]).
    #[serde(default)]
    pub checkpoints: Vec<CheckpointSummary>,
}

/// How many completed checkpoints a [`HostStatus`] lists.
pub const RECENT_CHECKPOINTS: usize = 20;

impl HostStatus {
    /// The latest record of `version` in the deployment history.
    pub fn deployment(&self, version: &str) -> Option<&Deployment> {
        self.deployments.iter().rev().find(|d| d.version == version)
    }
}

/// Partitions in a [`HostStatus`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartitionsStatus {
    /// Partitions of the pipeline.
    pub count: u32,
    /// Those this host owns.
    pub owned: Vec<u32>,
}

/// The running plugin in a [`HostStatus`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PluginStatus {
    /// Its name.
    pub name: String,
    /// Its version (content hash).
    pub version: String,
    /// The optional exports it has.
    pub exports: String,
}

/// Per-key quota hits in a [`HostStatus`] (`[state.quota.*]`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaStatus {
    /// Writes refused (policy `reject`: the event was dead-lettered).
    pub rejected: u64,
    /// Entries evicted (policy `evict`).
    pub evicted: u64,
}

/// A version on probation in a [`HostStatus`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbationStatus {
    /// Events it handled so far.
    pub events: u64,
    /// Of those, how many failed.
    pub failures: u64,
    /// The version it replaced (and that comes back if it fails).
    pub previous: String,
}

/// A checkpoint named in a [`HostStatus`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointRef {
    /// Its id.
    pub id: u64,
    /// When it was cut, ms since the Unix epoch.
    pub created_ms: u64,
}

/// The answer to `checkpoint`: the checkpoint completed for it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointSummary {
    /// Its id.
    pub id: u64,
    /// When it was cut, ms since the Unix epoch.
    pub created_ms: u64,
    /// Input positions it records.
    pub positions: BTreeMap<String, u64>,
    /// The plugin version that wrote its state.
    pub plugin_version: String,
    /// Bytes of the database at the cut.
    pub total_bytes: u64,
    /// Bytes it added to storage.
    pub new_bytes: u64,
    /// Files it names.
    pub files: usize,
    /// Milliseconds the pipeline waited for the cut.
    pub cut_ms: u64,
    /// Milliseconds from cut to manifest.
    pub complete_ms: u64,
}

impl From<&crate::checkpoint::Manifest> for CheckpointSummary {
    fn from(m: &crate::checkpoint::Manifest) -> Self {
        CheckpointSummary {
            id: m.id,
            created_ms: m.created_ms,
            positions: m.cut.positions.clone(),
            plugin_version: m.cut.plugin_version.clone(),
            total_bytes: m.total_bytes,
            new_bytes: m.new_bytes,
            files: m.files.len(),
            cut_ms: m.cut_ms,
            complete_ms: m.complete_ms,
        }
    }
}

/// The answer to `savepoint`: where it was written and what it holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavepointSummary {
    /// Its directory, on the host that wrote it.
    pub savepoint: String,
    /// Entries written.
    pub entries: u64,
    /// Entries left out because their TTL had expired.
    pub expired_skipped: u64,
    /// Key groups of the state it was taken from.
    pub key_groups: u32,
    /// Files written.
    pub files: usize,
    /// Input positions it records.
    pub positions: BTreeMap<String, u64>,
    /// The plugin version that wrote its state.
    pub plugin_version: String,
}

/// Progress of a savepoint being written, sent to the request's `progress` subject.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct SavepointProgress {
    /// Files written.
    pub done: usize,
    /// Files to write.
    pub total: usize,
    /// Entries written so far.
    pub entries: u64,
}

/// One host's answer to a control request: `{"ok": ...}` or `{"error": "..."}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Answer<T> {
    /// What was asked for.
    Ok(T),
    /// Why it could not be done.
    Error(String),
}

impl<T> From<Result<T, String>> for Answer<T> {
    fn from(r: Result<T, String>) -> Self {
        match r {
            Ok(v) => Answer::Ok(v),
            Err(e) => Answer::Error(e),
        }
    }
}

/// A request for the run loop.
#[derive(Debug)]
pub enum Command {
    /// Write a savepoint.
    Savepoint {
        /// Its name (a directory under `dir`).
        name: String,
        /// Where; default `checkpoint.savepoint_dir`.
        dir: Option<PathBuf>,
        /// Where to send progress while it is written.
        progress_tx: Option<mpsc::UnboundedSender<SavepointProgress>>,
        /// The answer.
        reply: oneshot::Sender<Result<SavepointSummary, String>>,
    },
    /// Take a checkpoint now.
    Checkpoint {
        /// The answer: the completed checkpoint.
        reply: oneshot::Sender<Result<CheckpointSummary, String>>,
    },
    /// Report status.
    Status {
        /// The answer.
        reply: oneshot::Sender<HostStatus>,
    },
}

/// A savepoint request's body.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct SavepointRequest {
    /// Savepoint name; default `sp-<unix ms>`.
    #[serde(default)]
    pub name: Option<String>,
    /// Directory to write it under (on the host).
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Subject for progress messages.
    #[serde(default)]
    pub progress: Option<String>,
}

/// A savepoint request, checked: what the run loop is asked to write.
#[derive(Debug)]
pub struct SavepointAsk {
    /// The savepoint's name: a plain directory name.
    pub name: String,
    /// The directory to write it under, if not the pipeline's.
    pub dir: Option<PathBuf>,
    /// A literal subject for progress messages.
    pub progress: Option<String>,
}

impl SavepointRequest {
    /// Reads a `savepoint` request body (empty: every default, the name `sp-<now_ms>`) and
    /// checks what the host acts on: the name becomes a directory, progress is published to
    /// the subject.
    pub fn parse(payload: &[u8], now_ms: u64) -> Result<SavepointAsk, String> {
        let req: SavepointRequest = if payload.is_empty() {
            SavepointRequest::default()
        } else {
            serde_json::from_slice(payload).map_err(|e| format!("bad savepoint request: {e}"))?
        };
        let name = req.name.unwrap_or_else(|| format!("sp-{now_ms}"));
        let plain = name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if name.is_empty() || name.len() > 200 || !plain || name.starts_with('.') {
            return Err(format!(
                "{name:?} is not a savepoint name; use up to 200 letters, digits, -, _ and . (not first)"
            ));
        }
        if let Some(subject) = &req.progress {
            crate::config::check_subject("progress", subject, false)
                .map_err(|e| format!("bad savepoint request: {e}"))?;
        }
        Ok(SavepointAsk {
            name,
            dir: req.dir,
            progress: req.progress,
        })
    }
}

/// The control subject prefix of a pipeline.
pub fn subject(pipeline: &str) -> String {
    format!("eddy.ctl.{pipeline}")
}

/// Listens for control requests of `pipeline` and hands them to the run loop.
pub async fn serve(
    nats: &Nats,
    pipeline: &str,
    tx: mpsc::Sender<Command>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let prefix = subject(pipeline);
    let mut sub = nats.client.subscribe(format!("{prefix}.>")).await?;
    let client = nats.client.clone();
    Ok(tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            let Some(reply_to) = msg.reply.clone() else {
                continue;
            };
            let verb = msg
                .subject
                .as_str()
                .rsplit('.')
                .next()
                .unwrap_or_default()
                .to_string();
            let (client, tx) = (client.clone(), tx.clone());
            tokio::spawn(async move {
                let body = handle(&verb, &msg.payload, &tx, &client).await;
                let _ = client.publish(reply_to, Bytes::from(body)).await;
            });
        }
    }))
}

/// Serializes a run-loop answer for the wire.
fn encode<T: Serialize>(answer: Result<T, String>) -> Vec<u8> {
    serde_json::to_vec(&Answer::from(answer)).unwrap_or_default()
}

async fn handle(
    verb: &str,
    payload: &[u8],
    tx: &mpsc::Sender<Command>,
    client: &async_nats::Client,
) -> Vec<u8> {
    const STOPPING: &str = "the pipeline is stopping";
    const STOPPED: &str = "the pipeline stopped";
    match verb {
        "savepoint" => {
            let req = match SavepointRequest::parse(payload, crate::checkpoint::now_ms()) {
                Ok(req) => req,
                Err(e) => return encode::<()>(Err(e)),
            };
            // Progress crosses from the writer's thread over a channel; this task sends it on.
            let progress_tx = req.progress.map(|subject| {
                let (ptx, mut prx) = mpsc::unbounded_channel::<SavepointProgress>();
                let client = client.clone();
                tokio::spawn(async move {
                    while let Some(p) = prx.recv().await {
                        let body = serde_json::to_vec(&p).unwrap_or_default();
                        let _ = client.publish(subject.clone(), body.into()).await;
                    }
                });
                ptx
            });
            let (reply, rx) = oneshot::channel();
            let cmd = Command::Savepoint {
                name: req.name,
                dir: req.dir,
                progress_tx,
                reply,
            };
            if tx.send(cmd).await.is_err() {
                return encode::<()>(Err(STOPPING.into()));
            }
            encode(rx.await.unwrap_or_else(|_| Err(STOPPED.into())))
        }
        "checkpoint" => {
            let (reply, rx) = oneshot::channel();
            if tx.send(Command::Checkpoint { reply }).await.is_err() {
                return encode::<()>(Err(STOPPING.into()));
            }
            encode(rx.await.unwrap_or_else(|_| Err(STOPPED.into())))
        }
        "status" => {
            let (reply, rx) = oneshot::channel();
            if tx.send(Command::Status { reply }).await.is_err() {
                return encode::<()>(Err(STOPPING.into()));
            }
            encode(rx.await.map_err(|_| STOPPED.to_string()))
        }
        other => encode::<()>(Err(format!(
            "unknown control request `{other}`; use savepoint, checkpoint or status"
        ))),
    }
}

/// Sends a control request to every host of `pipeline` and gathers their answers: waits up to
/// `timeout` for the first, then `quiet` for more. Savepoint progress (if `on_progress`) is
/// passed on as it comes. Answers are the JSON each host sent (an [`Answer`]); an unreadable
/// one becomes `{"error": ...}`.
pub async fn request(
    nats: &Nats,
    pipeline: &str,
    verb: &str,
    body: serde_json::Value,
    timeout: Duration,
    on_progress: impl FnMut(SavepointProgress),
) -> anyhow::Result<Vec<serde_json::Value>> {
    request_from(nats, pipeline, verb, body, timeout, None, on_progress).await
}

/// [`request`], returning as soon as `hosts` hosts answered (when the caller knows how many
/// run).
pub async fn request_from(
    nats: &Nats,
    pipeline: &str,
    verb: &str,
    body: serde_json::Value,
    timeout: Duration,
    hosts: Option<usize>,
    mut on_progress: impl FnMut(SavepointProgress),
) -> anyhow::Result<Vec<serde_json::Value>> {
    let inbox = nats.client.new_inbox();
    let progress_inbox = nats.client.new_inbox();
    let mut replies = nats.client.subscribe(inbox.clone()).await?;
    let mut progress = nats.client.subscribe(progress_inbox.clone()).await?;
    let mut body = body;
    if verb == "savepoint"
        && let Some(obj) = body.as_object_mut()
    {
        obj.insert("progress".into(), progress_inbox.into());
    }
    nats.client
        .publish_with_reply(
            format!("{}.{verb}", subject(pipeline)),
            inbox,
            Bytes::from(serde_json::to_vec(&body)?),
        )
        .await?;
    nats.client.flush().await?;
    let mut answers = Vec::new();
    let quiet = Duration::from_millis(500);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if hosts.is_some_and(|n| answers.len() >= n) {
            break;
        }
        let wait_until = if answers.is_empty() {
            deadline
        } else {
            (tokio::time::Instant::now() + quiet).min(deadline)
        };
        tokio::select! {
            m = replies.next() => match m {
                // A status message without payload: nobody listens on the subject.
                Some(m) if m.payload.is_empty() && m.status.is_some() => continue,
                Some(m) => answers.push(serde_json::from_slice(&m.payload).unwrap_or_else(
                    |e| serde_json::json!({ "error": format!("unreadable reply ({e}): {}", String::from_utf8_lossy(&m.payload)) }),
                )),
                None => break,
            },
            Some(p) = progress.next() => {
                if let Ok(v) = serde_json::from_slice(&p.payload) {
                    on_progress(v);
                }
            }
            _ = tokio::time::sleep_until(wait_until) => break,
        }
    }
    if answers.is_empty() {
        anyhow::bail!(
            "no host of pipeline `{pipeline}` answered within {} s: is it running (eddy run) and connected to this NATS server?",
            timeout.as_secs()
        );
    }
    Ok(answers)
}

#[cfg(test)]
mod tests {
    use super::SavepointRequest;

    #[test]
    fn a_savepoint_request_is_checked_before_the_run_loop_sees_it() {
        let ask = SavepointRequest::parse(b"", 42).expect("defaults");
        assert_eq!(ask.name, "sp-42");
        assert!(ask.dir.is_none() && ask.progress.is_none());
        let ask = SavepointRequest::parse(br#"{"name":"before-v1.2","progress":"p.1"}"#, 0)
            .expect("a plain name and a literal subject");
        assert_eq!(
            (ask.name.as_str(), ask.progress.as_deref()),
            ("before-v1.2", Some("p.1"))
        );
        for (body, says) in [
            (r#"{"name":"../x"}"#, "is not a savepoint name"),
            (r#"{"name":".hidden"}"#, "is not a savepoint name"),
            (r#"{"name":"a\u0000b"}"#, "is not a savepoint name"),
            (r#"{"name":""}"#, "is not a savepoint name"),
            (r#"{"progress":"p.*"}"#, "wildcard"),
            (r#"{"progress":"a b"}"#, "not a NATS subject"),
            (r#"{"name":1}"#, "bad savepoint request"),
            ("[", "bad savepoint request"),
        ] {
            let e = SavepointRequest::parse(body.as_bytes(), 0).expect_err(body);
            assert!(e.contains(says), "{body}: {e}");
        }
    }
}
