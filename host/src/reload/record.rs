//! What the hosts of a pipeline remember of its deployments across restarts: the deployment
//! history (`eddy status`), kept in the NATS KV bucket `<reload.bucket>-history` under the
//! pipeline's name, and every deployed component by version in the plugin bucket
//! (`<pipeline>@<version>`). With both, a restart starts the version that was live and never
//! brings a rolled-back one back by itself: a rolled-back version runs again only if it is
//! deployed again (a new version, after a fix).

use async_nats::jetstream::kv;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use tokio::io::AsyncReadExt;

use super::{DeployStatus, History};
use crate::transport::Nats;

/// The KV bucket holding the histories of the pipelines deploying to plugin bucket `bucket`.
fn history_bucket(bucket: &str) -> String {
    format!("{bucket}-history")
}

/// The name a deployed component is kept under by version.
pub fn versioned(pipeline: &str, version: &str) -> String {
    format!("{pipeline}@{version}")
}

async fn open(nats: &Nats, bucket: &str) -> anyhow::Result<kv::Store> {
    crate::transport::kv_bucket(
        nats,
        kv::Config {
            bucket: history_bucket(bucket),
            description: "Eddy deployment histories, by pipeline".into(),
            history: 1,
            num_replicas: crate::transport::replicas(nats),
            ..Default::default()
        },
    )
    .await
}

/// The remembered history of `pipeline` (empty when there is none, or it cannot be read: then
/// with a warning, since a restart may then run a version that was rolled back).
///
/// Read from the bucket stream's leader, not with a KV get: KV gets are direct gets, which
/// any replica may answer, and one behind the leader would hand a host restarting just after
/// a rollback the history from before it.
pub async fn load(nats: &Nats, bucket: &str, pipeline: &str) -> History {
    let read = async {
        let store = open(nats, bucket).await?;
        let last = match store
            .stream
            .get_last_raw_message_by_subject(&format!("{}{pipeline}", store.prefix))
            .await
        {
            Ok(m) => m,
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => {
                return Ok(History::default());
            }
            Err(e) => return Err(e.into()),
        };
        let removed = last
            .headers
            .get("KV-Operation")
            .is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE"));
        if removed {
            return Ok(History::default());
        }
        Ok::<_, anyhow::Error>(serde_json::from_slice(&last.payload)?)
    };
    match read.await {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(
                "cannot read the deployment history of {pipeline} from {}: {e:#}; starting without it",
                history_bucket(bucket)
            );
            History::default()
        }
    }
}

/// Remembers `history` for `pipeline`.
pub async fn save(nats: &Nats, bucket: &str, pipeline: &str, history: &History) {
    let write = async {
        let store = open(nats, bucket).await?;
        store
            .put(pipeline, serde_json::to_vec(history)?.into())
            .await?;
        Ok::<_, anyhow::Error>(())
    };
    if let Err(e) = write.await {
        tracing::warn!(
            "cannot save the deployment history of {pipeline} to {}: {e:#}; a restart would not know it",
            history_bucket(bucket)
        );
    }
}

/// The component of `version` kept in the plugin bucket, if it is there.
pub async fn component(
    nats: &Nats,
    bucket: &str,
    pipeline: &str,
    version: &str,
) -> Option<Vec<u8>> {
    let store = nats.js.get_object_store(bucket).await.ok()?;
    let mut object = store.get(versioned(pipeline, version)).await.ok()?;
    let mut wasm = Vec::new();
    object.read_to_end(&mut wasm).await.ok()?;
    Some(wasm)
}

impl History {
    /// The newest deployment of `version`.
    fn newest(&self, version: &str) -> Option<&super::Deployment> {
        self.deployments.iter().rev().find(|d| d.version == version)
    }

    /// Why `version` was rolled back, if it was (its newest deployment says so).
    pub fn rolled_back(&self, version: &str) -> Option<String> {
        self.newest(version)
            .filter(|d| d.status == DeployStatus::RolledBack)
            .map(|d| d.reason.clone().unwrap_or_default())
    }

    /// Whether the newest deployment of `version` is still on probation (its host stopped
    /// before probation ended).
    pub fn on_probation(&self, version: &str) -> bool {
        self.newest(version)
            .is_some_and(|d| d.status == DeployStatus::Probation)
    }

    /// The newest version other than `version` that ran without failing (live, replaced
    /// since, or on probation when the host stopped).
    pub fn last_good_besides(&self, version: &str) -> Option<&str> {
        self.deployments
            .iter()
            .rev()
            .find(|d| {
                d.version != version
                    && matches!(
                        d.status,
                        DeployStatus::Live | DeployStatus::Probation | DeployStatus::Superseded
                    )
            })
            .map(|d| d.version.as_str())
    }
}
