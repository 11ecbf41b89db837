//! Operator requests to running hosts over NATS: savepoints, checkpoints on demand, status.
//!
//! Each host of pipeline `P` listens on `eddy.ctl.P.<verb>` (no queue group: every host of the
//! pipeline answers, so a CLI gathers one reply per host). Requests and replies are JSON.
//! Verbs: `savepoint` (`{"name": ..., "dir": ..., "progress": <subject>}`: a savepoint at a
//! consistent cut; progress messages go to `progress` while it is written), `checkpoint`, and
//! `status`. Access is controlled by NATS permissions on these subjects.
//!
//! Never: touches state itself. It hands commands to the run loop, which acts between batches.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::transport::Nats;

/// A request for the run loop.
#[derive(Debug)]
pub enum Command {
    /// Write a savepoint.
    Savepoint {
        /// Its name (a directory under `dir`).
        name: String,
        /// Where; default `checkpoint.savepoint_dir`.
        dir: Option<PathBuf>,
        /// A subject to send progress to.
        progress: Option<String>,
        /// The answer.
        reply: oneshot::Sender<Result<serde_json::Value, String>>,
    },
    /// Take a checkpoint now.
    Checkpoint {
        /// The answer: the completed checkpoint.
        reply: oneshot::Sender<Result<serde_json::Value, String>>,
    },
    /// Report status.
    Status {
        /// The answer.
        reply: oneshot::Sender<serde_json::Value>,
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
                let answer = handle(&verb, &msg.payload, &tx).await;
                let body = serde_json::to_vec(&answer).unwrap_or_default();
                let _ = client.publish(reply_to, Bytes::from(body)).await;
            });
        }
    }))
}

async fn handle(verb: &str, payload: &[u8], tx: &mpsc::Sender<Command>) -> serde_json::Value {
    let result: Result<serde_json::Value, String> = async {
        match verb {
            "savepoint" => {
                let req: SavepointRequest = if payload.is_empty() {
                    SavepointRequest::default()
                } else {
                    serde_json::from_slice(payload)
                        .map_err(|e| format!("bad savepoint request: {e}"))?
                };
                let (reply, rx) = oneshot::channel();
                let name = req
                    .name
                    .unwrap_or_else(|| format!("sp-{}", crate::checkpoint::now_ms()));
                if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
                    return Err(format!(
                        "`{name}` is not a savepoint name; use letters, digits, - and _"
                    ));
                }
                tx.send(Command::Savepoint {
                    name,
                    dir: req.dir,
                    progress: req.progress,
                    reply,
                })
                .await
                .map_err(|_| "the pipeline is stopping".to_string())?;
                rx.await.map_err(|_| "the pipeline stopped".to_string())?
            }
            "checkpoint" => {
                let (reply, rx) = oneshot::channel();
                tx.send(Command::Checkpoint { reply })
                    .await
                    .map_err(|_| "the pipeline is stopping".to_string())?;
                rx.await.map_err(|_| "the pipeline stopped".to_string())?
            }
            "status" => {
                let (reply, rx) = oneshot::channel();
                tx.send(Command::Status { reply })
                    .await
                    .map_err(|_| "the pipeline is stopping".to_string())?;
                rx.await.map_err(|_| "the pipeline stopped".to_string())
            }
            other => Err(format!(
                "unknown control request `{other}`; use savepoint, checkpoint or status"
            )),
        }
    }
    .await;
    match result {
        Ok(v) => serde_json::json!({ "ok": v }),
        Err(e) => serde_json::json!({ "error": e }),
    }
}

/// Sends a control request to every host of `pipeline` and gathers their answers: waits up to
/// `timeout` for the first, then `quiet` for more. Progress messages (if `on_progress`) are
/// passed on as they come.
pub async fn request(
    nats: &Nats,
    pipeline: &str,
    verb: &str,
    body: serde_json::Value,
    timeout: Duration,
    on_progress: impl FnMut(serde_json::Value),
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
    mut on_progress: impl FnMut(serde_json::Value),
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
