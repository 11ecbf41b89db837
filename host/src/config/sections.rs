//! The pipeline file's sections beyond input, plugin, output, checkpoints, lookups and the
//! cluster: broadcast inputs, hot reload, queries, the console and partitions. Each section validates itself and
//! names the field and the fix.

use std::path::PathBuf;

use serde::Deserialize;

use super::{ConfigError, check_name, check_subject, err};

/// `[broadcast.<name>]`: a broadcast input. Every host reads all of it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BroadcastInputConfig {
    /// The JetStream stream.
    pub stream: String,
    /// Subject filters inside it; empty means the whole stream.
    #[serde(default)]
    pub subjects: Vec<String>,
    /// When no keyed event arrives, how long after its stream stored it a broadcast update is
    /// applied anyway (keyed events stored before it may still be on their way until then).
    /// With several broadcast inputs the largest value holds for all, so their updates apply
    /// in stored order.
    #[serde(default = "default_idle_apply_ms")]
    pub idle_apply_ms: u64,
}

fn default_idle_apply_ms() -> u64 {
    500
}

impl BroadcastInputConfig {
    pub(super) fn validate(&self, name: &str) -> Result<(), ConfigError> {
        check_name(&format!("broadcast.{name}"), name)?;
        check_name(&format!("broadcast.{name}.stream"), &self.stream)?;
        for s in &self.subjects {
            check_subject(&format!("broadcast.{name}.subjects"), s, true)?;
        }
        Ok(())
    }
}

fn default_true() -> bool {
    true
}

/// `[reload]`: how new plugin versions arrive and how they are judged.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadConfig {
    /// `object-store` (the default: `eddy deploy` uploads, every host watches), `file` (the
    /// plugin file is watched, for development) or `off`.
    #[serde(default)]
    pub watch: ReloadWatch,
    /// The object store bucket of deployed plugins.
    #[serde(default = "default_bucket")]
    pub bucket: String,
    /// A new version is on probation for its first this many events: its outputs and state
    /// writes are held until it passes.
    #[serde(default = "default_probation_events")]
    pub probation_events: u64,
    /// The share of probation events that may fail (trap, budget) before the host returns to
    /// the previous version.
    #[serde(default = "default_failure_share")]
    pub max_failure_share: f64,
    /// Probation ends after this many milliseconds even if fewer events came (judged by the
    /// share of those that did).
    #[serde(default = "default_probation_ms")]
    pub probation_ms: u64,
    /// How often a watched file is checked, in milliseconds.
    #[serde(default = "default_poll_ms")]
    pub poll_ms: u64,
    /// How many differing output pairs a shadow deploy's report keeps (the first ones).
    #[serde(default = "default_shadow_samples")]
    pub shadow_samples: usize,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        ReloadConfig {
            watch: ReloadWatch::default(),
            bucket: default_bucket(),
            probation_events: default_probation_events(),
            max_failure_share: default_failure_share(),
            probation_ms: default_probation_ms(),
            poll_ms: default_poll_ms(),
            shadow_samples: default_shadow_samples(),
        }
    }
}

fn default_bucket() -> String {
    "eddy-plugins".into()
}
fn default_probation_events() -> u64 {
    100
}
fn default_failure_share() -> f64 {
    0.1
}
fn default_poll_ms() -> u64 {
    1_000
}
fn default_probation_ms() -> u64 {
    5_000
}
fn default_shadow_samples() -> usize {
    20
}

/// Where new plugin versions come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReloadWatch {
    /// The NATS object store bucket `reload.bucket`, key = pipeline name.
    #[default]
    ObjectStore,
    /// The file at `plugin.path`.
    File,
    /// No hot reload.
    Off,
}

impl ReloadConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        check_name("reload.bucket", &self.bucket)?;
        if !(0.0..=1.0).contains(&self.max_failure_share) {
            return Err(err(
                "reload.max_failure_share",
                format!("{} is not a share; use 0.0 to 1.0", self.max_failure_share),
            ));
        }
        if self.shadow_samples > 1_000 {
            return Err(err(
                "reload.shadow_samples",
                format!(
                    "{} is more than a status reply should carry; use 0 to 1000",
                    self.shadow_samples
                ),
            ));
        }
        if self.probation_events == 0 || self.probation_events > 1_000_000 {
            return Err(err(
                "reload.probation_events",
                format!(
                    "{} is out of range; use 1 to 1000000",
                    self.probation_events
                ),
            ));
        }
        Ok(())
    }
}

/// `[query]`: queryable state.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryConfig {
    /// Serve the NATS service `eddy-query` (default on).
    #[serde(default = "default_true")]
    pub nats: bool,
    /// Serve HTTP on this address, e.g. `127.0.0.1:8080` (default off).
    #[serde(default)]
    pub http: Option<String>,
    /// If set, HTTP requests must carry `Authorization: Bearer <token>`.
    #[serde(default)]
    pub token: Option<String>,
    /// PEM certificate chain: serve HTTPS (with `tls_key`).
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
}

impl Default for QueryConfig {
    fn default() -> Self {
        QueryConfig {
            nats: true,
            http: None,
            token: None,
            tls_cert: None,
            tls_key: None,
        }
    }
}

/// `tls_cert` and `tls_key` of `section`: both or neither.
fn check_tls_pair(
    section: &str,
    cert: &Option<PathBuf>,
    key: &Option<PathBuf>,
) -> Result<(), ConfigError> {
    if cert.is_some() != key.is_some() {
        return Err(err(
            &format!("{section}.tls_key"),
            "tls_cert and tls_key go together (the server's certificate and its private key); set both or neither".into(),
        ));
    }
    Ok(())
}

impl QueryConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if let Some(listen) = &self.http
            && listen.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(err(
                "query.http",
                format!("`{listen}` is not an address; use host:port, e.g. 127.0.0.1:8080"),
            ));
        }
        if self.token.as_deref().is_some_and(|t| t.trim().is_empty()) {
            return Err(err(
                "query.token",
                "is empty; remove it or set a secret".into(),
            ));
        }
        check_tls_pair("query", &self.tls_cert, &self.tls_key)
    }
}

/// `[console]`: the operations console `eddy console` serves.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Address to serve it on (default `127.0.0.1:8089`; `eddy console --listen` overrides).
    #[serde(default = "default_console_listen")]
    pub listen: String,
    /// If set, the console asks for a token: this one may look (read-only role).
    #[serde(default)]
    pub token: Option<String>,
    /// If set, the console asks for a token: this one may also act (checkpoints, savepoints,
    /// deploys, rollbacks, dead-letter replays).
    #[serde(default)]
    pub operator_token: Option<String>,
    /// PEM certificate chain: serve HTTPS (with `tls_key`).
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
}

fn default_console_listen() -> String {
    "127.0.0.1:8089".into()
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            listen: default_console_listen(),
            token: None,
            operator_token: None,
            tls_cert: None,
            tls_key: None,
        }
    }
}

impl ConsoleConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(err(
                "console.listen",
                format!(
                    "`{}` is not an address; use host:port, e.g. 127.0.0.1:8089",
                    self.listen
                ),
            ));
        }
        for (field, token) in [
            ("console.token", &self.token),
            ("console.operator_token", &self.operator_token),
        ] {
            if token.as_deref().is_some_and(|t| t.trim().is_empty()) {
                return Err(err(field, "is empty; remove it or set a secret".into()));
            }
        }
        if self.token.is_some() && self.token == self.operator_token {
            return Err(err(
                "console.operator_token",
                "equals console.token, so looking and acting could not be told apart; give each role its own secret".into(),
            ));
        }
        check_tls_pair("console", &self.tls_cert, &self.tls_key)
    }
}

/// `[partitions]`: which partitions of the key space this host owns. Partition of a key =
/// `key_group % count`, so `count` must divide `pipeline.key_groups`; the input subjects of
/// this host must carry exactly the keys of its partitions (NATS subject mapping
/// `{{partition(count, token)}}` does this with the same hash).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionsConfig {
    /// Partitions in all.
    #[serde(default = "default_partitions")]
    pub count: u32,
    /// The ones this host owns (default: all).
    #[serde(default)]
    pub owned: Option<Vec<u32>>,
    /// This host's name, as queries report it (default: the machine's host name).
    #[serde(default)]
    pub host: Option<String>,
}

impl Default for PartitionsConfig {
    fn default() -> Self {
        PartitionsConfig {
            count: default_partitions(),
            owned: None,
            host: None,
        }
    }
}

fn default_partitions() -> u32 {
    1
}

impl PartitionsConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.count == 0 || self.count > crate::state::MAX_KEY_GROUPS {
            return Err(err(
                "partitions.count",
                format!("{} is out of range", self.count),
            ));
        }
        if let Some(owned) = &self.owned
            && let Some(bad) = owned.iter().find(|p| **p >= self.count)
        {
            return Err(err(
                "partitions.owned",
                format!(
                    "partition {bad} does not exist; partitions are 0 to {}",
                    self.count - 1
                ),
            ));
        }
        Ok(())
    }

    /// Whether this host owns partition `p`.
    pub fn owns(&self, p: u32) -> bool {
        self.owned.as_ref().is_none_or(|o| o.contains(&p))
    }

    /// This host's name.
    pub fn host_name(&self) -> String {
        self.host.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .map(|s| s.trim().to_string())
                .ok()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "localhost".into())
        })
    }
}
