//! `[checkpoint]`: how often state is cut, how many cuts are kept, and where they are kept
//! (the NATS object store, S3, or the state directory alone).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, check_name, err};

/// `[checkpoint]`: consistent cuts of all state and input positions, from which a host
/// recovers after a crash.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Milliseconds between checkpoints (the most work a crash makes the host redo).
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// How many completed checkpoints are kept (the newest; recovery falls back through them).
    #[serde(default = "default_retain")]
    pub retain: usize,
    /// Checkpoints younger than this are kept too, for time-travel queries (`as_of`); 0 (the
    /// default): only the newest `retain`.
    #[serde(default)]
    pub retain_for_ms: u64,
    /// Of the checkpoints kept by `retain_for_ms`, one per this many milliseconds of wall-clock
    /// time (the oldest of each span); 0 (the default): every one.
    #[serde(default)]
    pub retain_every_ms: u64,
    /// Where checkpoints are kept; default `<state_dir>/checkpoints`.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Where `eddy savepoint create` writes; default `<state_dir>/savepoints`.
    #[serde(default)]
    pub savepoint_dir: Option<PathBuf>,
    /// What to do when the output stream's duplicate window is shorter than a checkpoint
    /// interval plus `recovery_allowance_ms` (replayed outputs could then be stored twice).
    #[serde(default)]
    pub dedupe_check: DedupeCheck,
    /// How long a crashed host may take to come back, for the duplicate-window check.
    #[serde(default = "default_recovery_allowance_ms")]
    pub recovery_allowance_ms: u64,
    /// Where checkpoints are kept beyond this host: `nats` (the default: the NATS object
    /// store bucket `bucket`), `s3` (`[checkpoint.s3]`), or `local` (the state directory
    /// alone, for development: a lost disk loses the state).
    #[serde(default)]
    pub store: CheckpointStore,
    /// The NATS object store bucket (`store = "nats"`); pipelines share it by name prefix.
    #[serde(default = "default_bucket")]
    pub bucket: String,
    /// Replicas of the bucket when Eddy creates it; 0 (the default): as many servers as the
    /// cluster has, up to 3.
    #[serde(default)]
    pub replicas: usize,
    /// The S3-compatible store (`store = "s3"`).
    #[serde(default)]
    pub s3: S3Config,
}

/// `checkpoint.store`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckpointStore {
    /// The NATS object store.
    #[default]
    Nats,
    /// An S3-compatible store.
    S3,
    /// The state directory only.
    Local,
}

/// `[checkpoint.s3]`: an S3-compatible store. Credentials not given here come from the usual
/// AWS environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, ...).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// The bucket (must exist).
    #[serde(default)]
    pub bucket: String,
    /// The endpoint of a server other than AWS, e.g. `http://127.0.0.1:9000`.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The region (default from `AWS_REGION`, else `us-east-1`).
    #[serde(default)]
    pub region: Option<String>,
    /// A prefix for every object name, e.g. `eddy/`.
    #[serde(default)]
    pub prefix: String,
    /// The access key id.
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// The environment variable holding the secret access key (keeps the secret out of the
    /// file; preferred).
    #[serde(default)]
    pub secret_access_key_env: Option<String>,
    /// The secret access key itself (for development stores; use `secret_access_key_env`
    /// elsewhere).
    #[serde(default)]
    pub secret_access_key: Option<String>,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            interval_ms: default_interval_ms(),
            retain: default_retain(),
            retain_for_ms: 0,
            retain_every_ms: 0,
            dir: None,
            savepoint_dir: None,
            dedupe_check: DedupeCheck::default(),
            recovery_allowance_ms: default_recovery_allowance_ms(),
            store: CheckpointStore::default(),
            bucket: default_bucket(),
            replicas: 0,
            s3: S3Config::default(),
        }
    }
}

/// The longest `retain_for_ms`: 30 days.
const MAX_RETAIN_FOR_MS: u64 = 30 * 24 * 3_600_000;

/// The most checkpoints `retain_for_ms` may keep: each holds on to the SST files compaction
/// has since replaced, so disk use grows with the count.
const MAX_RETAINED_BY_AGE: u64 = 10_000;

fn default_interval_ms() -> u64 {
    5_000
}
fn default_retain() -> usize {
    3
}
fn default_recovery_allowance_ms() -> u64 {
    60_000
}
fn default_bucket() -> String {
    "eddy-checkpoints".into()
}

/// `checkpoint.dedupe_check`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DedupeCheck {
    /// Refuse to start (the default): exactly-once output is not guaranteed.
    #[default]
    Refuse,
    /// Start, with a warning in the log.
    Warn,
}

impl CheckpointConfig {
    /// The interval.
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }

    /// How completed checkpoints are kept.
    pub fn retention(&self) -> crate::checkpoint::Retention {
        crate::checkpoint::Retention {
            count: self.retain,
            for_ms: self.retain_for_ms,
            every_ms: self.retain_every_ms,
        }
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.interval_ms < 50 || self.interval_ms > 3_600_000 {
            return Err(err(
                "checkpoint.interval_ms",
                format!(
                    "{} is out of range; use 50 to 3600000 (default 5000)",
                    self.interval_ms
                ),
            ));
        }
        if self.retain == 0 || self.retain > 100 {
            return Err(err(
                "checkpoint.retain",
                format!(
                    "{} is out of range; keep 1 to 100 checkpoints (default 3; 2 or more lets a corrupt newest one fall back)",
                    self.retain
                ),
            ));
        }
        if self.retain_for_ms > MAX_RETAIN_FOR_MS {
            return Err(err(
                "checkpoint.retain_for_ms",
                format!(
                    "{} is out of range; keep checkpoints for at most {MAX_RETAIN_FOR_MS} ms (30 days)",
                    self.retain_for_ms
                ),
            ));
        }
        if self.retain_every_ms > 0 && self.retain_for_ms == 0 {
            return Err(err(
                "checkpoint.retain_every_ms",
                "is set but retain_for_ms is 0; set retain_for_ms to how long checkpoints are kept for time-travel queries".into(),
            ));
        }
        let spacing = self.retain_every_ms.max(self.interval_ms);
        if self.retain_for_ms / spacing > MAX_RETAINED_BY_AGE {
            return Err(err(
                "checkpoint.retain_for_ms",
                format!(
                    "keeps up to {} checkpoints ({} ms, one per {spacing} ms); at most {MAX_RETAINED_BY_AGE}: set retain_every_ms to at least {} to keep one per span",
                    self.retain_for_ms / spacing,
                    self.retain_for_ms,
                    self.retain_for_ms.div_ceil(MAX_RETAINED_BY_AGE)
                ),
            ));
        }
        match self.store {
            CheckpointStore::Nats => check_name("checkpoint.bucket", &self.bucket)?,
            CheckpointStore::S3 if self.s3.bucket.trim().is_empty() => {
                return Err(err(
                    "checkpoint.s3.bucket",
                    "is empty; name the bucket checkpoints go to (store = \"s3\")".into(),
                ));
            }
            CheckpointStore::S3 | CheckpointStore::Local => {}
        }
        if self.replicas > 5 {
            return Err(err(
                "checkpoint.replicas",
                format!(
                    "{} is out of range; use 0 (as the cluster) to 5",
                    self.replicas
                ),
            ));
        }
        Ok(())
    }
}
