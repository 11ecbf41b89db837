//! The sections every pipeline has: `[pipeline]`, `[nats]`, `[input]`, `[plugin]`, `[output]`,
//! `[dead_letter]`, `[limits]`, `[state]` and `[metrics]`, each with the checks it can make on
//! its own.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, check_name, check_subject, err};

/// `[state]`: operator overrides of what plugins declare.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// TTL per state name (`[state.ttl.seen]`), overriding the plugin's declaration.
    #[serde(default)]
    pub ttl: std::collections::BTreeMap<String, TtlOverride>,
    /// Recompact SST files older than this many seconds, so expired entries of keys never
    /// read again are reclaimed too.
    #[serde(default = "default_periodic_compaction")]
    pub periodic_compaction_secs: u64,
    /// Memory for hot values: keyed entries recently read or written, kept in front of RocksDB
    /// for point reads, and value/list writes waiting for the next checkpoint, in MiB (0: none,
    /// every write goes to RocksDB at once).
    #[serde(default = "default_hot_values_mb")]
    pub hot_values_mb: u64,
    /// RocksDB's block cache for keyed state, in MiB: the blocks of values read from disk,
    /// and the index and filter blocks. A store much larger than it reads most values from
    /// the page cache, decompressing a block each time.
    #[serde(default = "default_block_cache_mb")]
    pub block_cache_mb: u64,
    /// Per-key quota per state name (`[state.quota.recent]`).
    #[serde(default)]
    pub quota: std::collections::BTreeMap<String, crate::state::Quota>,
}

impl StateConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !(8..=1 << 20).contains(&self.block_cache_mb) {
            return Err(err(
                "state.block_cache_mb",
                format!(
                    "{} is out of range; use 8 to 1048576 (default {})",
                    self.block_cache_mb,
                    default_block_cache_mb()
                ),
            ));
        }
        for (name, q) in &self.quota {
            let field = format!("state.quota.{name}");
            if q.max_entries.is_none() && q.max_bytes.is_none() {
                return Err(err(
                    &field,
                    "sets no bound; give max_entries (map entries or list elements per key), max_bytes (bytes per key), or both".into(),
                ));
            }
            if q.max_entries == Some(0) || q.max_bytes == Some(0) {
                return Err(err(
                    &field,
                    "a bound of 0 refuses every write; remove the state's writes instead, or use at least 1".into(),
                ));
            }
        }
        Ok(())
    }
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            ttl: Default::default(),
            periodic_compaction_secs: default_periodic_compaction(),
            hot_values_mb: default_hot_values_mb(),
            block_cache_mb: default_block_cache_mb(),
            quota: Default::default(),
        }
    }
}

fn default_hot_values_mb() -> u64 {
    (crate::state::hot::DEFAULT_BUDGET >> 20) as u64
}

fn default_block_cache_mb() -> u64 {
    (crate::state::DEFAULT_BLOCK_CACHE >> 20) as u64
}

fn default_periodic_compaction() -> u64 {
    6 * 3600
}

/// A TTL set by the operator for one state. `ttl_ms = 0` turns TTL off for it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TtlOverride {
    /// Time to live, ms; 0 disables TTL.
    pub ttl_ms: u64,
    /// `on-create-and-write` (default) or `on-read-and-write`.
    #[serde(default)]
    pub update: TtlUpdateName,
    /// `never-return-expired` (default) or `return-expired-if-not-cleaned-up`.
    #[serde(default)]
    pub visibility: TtlVisibilityName,
}

/// TTL update type, as written in the config.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TtlUpdateName {
    /// Writes stamp.
    #[default]
    OnCreateAndWrite,
    /// Reads stamp too.
    OnReadAndWrite,
}

/// TTL visibility, as written in the config.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TtlVisibilityName {
    /// Never return expired.
    #[default]
    NeverReturnExpired,
    /// Return once if not cleaned up.
    ReturnExpiredIfNotCleanedUp,
}

impl TtlOverride {
    /// The TTL it sets, or None when it turns TTL off.
    pub fn to_ttl(&self) -> Option<crate::state::Ttl> {
        use crate::state::{Ttl, TtlUpdate, TtlVisibility};
        (self.ttl_ms > 0).then_some(Ttl {
            ttl_ms: self.ttl_ms,
            update: match self.update {
                TtlUpdateName::OnCreateAndWrite => TtlUpdate::OnCreateAndWrite,
                TtlUpdateName::OnReadAndWrite => TtlUpdate::OnReadAndWrite,
            },
            visibility: match self.visibility {
                TtlVisibilityName::NeverReturnExpired => TtlVisibility::NeverReturnExpired,
                TtlVisibilityName::ReturnExpiredIfNotCleanedUp => {
                    TtlVisibility::ReturnExpiredIfNotCleanedUp
                }
            },
        })
    }
}

/// `[pipeline]`: identity and state.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSection {
    /// Unique name of the pipeline: part of output message ids and metric labels.
    pub name: String,
    /// Directory holding the pipeline's RocksDB state. Relative paths are resolved against the
    /// directory of the config file.
    pub state_dir: PathBuf,
    /// Number of key groups the key space is split into (fixed for the life of the state).
    #[serde(default = "default_key_groups")]
    pub key_groups: u32,
}

fn default_key_groups() -> u32 {
    crate::state::DEFAULT_KEY_GROUPS
}

/// `[nats]`: server address and credentials.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URL(s), comma separated.
    #[serde(default = "default_nats_url")]
    pub url: String,
    /// Token authentication.
    #[serde(default)]
    pub token: Option<String>,
    /// User for user/password authentication.
    #[serde(default)]
    pub user: Option<String>,
    /// Password for user/password authentication.
    #[serde(default)]
    pub password: Option<String>,
    /// Path to a `.creds` file (JWT + nkey seed).
    #[serde(default)]
    pub creds: Option<PathBuf>,
    /// Path to a file holding a user nkey seed (`SU...`), for servers that list users by nkey.
    #[serde(default)]
    pub nkey_file: Option<PathBuf>,
    /// PEM file of the certificate authorities that signed the server's certificate; TLS is
    /// then required and the server verified against them (instead of the system's roots).
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate, for servers that verify clients (with `tls_key`).
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Require TLS even with neither a `tls://` URL nor `tls_ca` (the server verified against
    /// the system's roots).
    #[serde(default)]
    pub tls_required: bool,
    /// How long to wait for the first connection before giving up, in milliseconds.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: default_nats_url(),
            token: None,
            user: None,
            password: None,
            creds: None,
            nkey_file: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            tls_required: false,
            connect_timeout_ms: default_connect_timeout_ms(),
        }
    }
}

fn default_nats_url() -> String {
    "nats://127.0.0.1:4222".to_string()
}
fn default_connect_timeout_ms() -> u64 {
    5_000
}

/// `[input]`: the JetStream stream and durable consumer the pipeline reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputConfig {
    /// The JetStream stream to read.
    pub stream: String,
    /// Subject filters inside the stream; empty means the whole stream.
    #[serde(default)]
    pub subjects: Vec<String>,
    /// Durable consumer name; defaults to the pipeline name.
    #[serde(default)]
    pub consumer: Option<String>,
    /// How to find an event's key.
    pub key: KeySource,
    /// Most events handed to the plugin in one call.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Most events read but not yet acknowledged (the consumer's `max_ack_pending`). The
    /// input is acknowledged at checkpoints, so this bounds the events between two of them: a
    /// checkpoint is taken early when half of it is reached.
    #[serde(default = "default_max_pending")]
    pub max_pending: i64,
    /// How long a batch short of `batch` waits for more events while the stream holds at
    /// least as many more as it lacks (a backlog), in milliseconds: those events are on their
    /// way, and a full batch costs less per event. 0 hands every batch on as it is. A reader
    /// that has caught up, or is just behind a steady flow, never waits.
    #[serde(default = "default_batch_wait_ms")]
    pub batch_wait_ms: u64,
}

fn default_batch() -> usize {
    256
}
fn default_batch_wait_ms() -> u64 {
    2
}
fn default_max_pending() -> i64 {
    1_000_000
}

/// Where an event's key comes from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum KeySource {
    /// The value of this NATS header.
    Header(String),
    /// The subject token at this 0-based position (`txn.c-42.new` token 1 is `c-42`).
    SubjectToken(usize),
    /// The JSON value at this JSON pointer (RFC 6901) in the payload. Strings are used as
    /// their UTF-8 bytes, numbers and booleans as their JSON text.
    Json(String),
}

/// `[plugin]`: the component and its configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// Path to the `.wasm` component. Relative to the config file's directory.
    pub path: PathBuf,
    /// Free-form configuration handed to the plugin's `init` as JSON.
    #[serde(default)]
    pub config: Option<toml::Table>,
}

impl PluginConfig {
    /// The plugin configuration as the JSON text `init` receives.
    pub fn config_json(&self) -> String {
        match &self.config {
            Some(table) => serde_json::to_string(table).unwrap_or_else(|_| "{}".to_string()),
            None => "{}".to_string(),
        }
    }
}

/// `[output]`: where the plugin's outputs go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// The default subject for outputs that name none.
    pub subject: String,
    /// Subjects (NATS wildcards allowed) the plugin may publish to. The default subject is
    /// always allowed.
    #[serde(default)]
    pub allow: Vec<String>,
}

/// `[dead_letter]`: where unhandled events go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterConfig {
    /// Subject for dead letters; must be captured by a JetStream stream.
    pub subject: String,
}

/// `[limits]`: the plugin's sandbox budgets.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// CPU time one event may use, in milliseconds. A batch call gets this times its size.
    #[serde(default = "default_cpu_ms")]
    pub cpu_ms_per_event: u64,
    /// Linear memory one plugin instance may use, in MiB.
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            cpu_ms_per_event: default_cpu_ms(),
            memory_mb: default_memory_mb(),
        }
    }
}

fn default_cpu_ms() -> u64 {
    100
}
fn default_memory_mb() -> u64 {
    64
}

impl LimitsConfig {
    /// The per-event CPU budget.
    pub fn cpu_per_event(&self) -> Duration {
        Duration::from_millis(self.cpu_ms_per_event)
    }
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address to serve `/metrics` on, e.g. `127.0.0.1:9464`. None: no endpoint.
    #[serde(default)]
    pub listen: Option<String>,
}

impl PipelineSection {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        check_name("pipeline.name", &self.name)?;
        if self.state_dir.as_os_str().is_empty() {
            return Err(err(
                "pipeline.state_dir",
                "is empty; name the directory for this pipeline's RocksDB state and checkpoints, e.g. state_dir = \"state\" (relative to the pipeline file)".into(),
            ));
        }
        let kg = self.key_groups;
        if kg == 0 || kg > crate::state::MAX_KEY_GROUPS {
            return Err(err(
                "pipeline.key_groups",
                format!(
                    "{kg} is out of range; use 1 to {} (default {})",
                    crate::state::MAX_KEY_GROUPS,
                    crate::state::DEFAULT_KEY_GROUPS
                ),
            ));
        }
        Ok(())
    }
}

impl NatsConfig {
    /// Whether the connection must use TLS.
    pub fn tls(&self) -> bool {
        self.tls_required
            || self.tls_ca.is_some()
            || self.tls_cert.is_some()
            || self.url.split(',').any(|u| u.trim().starts_with("tls://"))
    }

    /// The files this section names, with their field names.
    pub fn files(&mut self) -> [(&'static str, &mut Option<PathBuf>); 5] {
        [
            ("nats.creds", &mut self.creds),
            ("nats.nkey_file", &mut self.nkey_file),
            ("nats.tls_ca", &mut self.tls_ca),
            ("nats.tls_cert", &mut self.tls_cert),
            ("nats.tls_key", &mut self.tls_key),
        ]
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.url.trim().is_empty() {
            return Err(err(
                "nats.url",
                "is empty; set it to e.g. nats://127.0.0.1:4222".into(),
            ));
        }
        for url in self.url.split(',').map(str::trim).filter(|u| !u.is_empty()) {
            if let Err(e) = url.parse::<async_nats::ServerAddr>() {
                return Err(err(
                    "nats.url",
                    format!(
                        "`{url}` is not a server address ({e}); write nats://host:port (tls:// for TLS), several separated by commas"
                    ),
                ));
            }
        }
        let ways = [
            self.token.is_some(),
            self.user.is_some(),
            self.creds.is_some(),
            self.nkey_file.is_some(),
        ];
        if ways.iter().filter(|w| **w).count() > 1 {
            return Err(err(
                "nats.token",
                "set only one of token, user/password, creds or nkey_file".into(),
            ));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(err(
                "nats.tls_key",
                "tls_cert and tls_key go together (a client certificate and its private key); set both or neither".into(),
            ));
        }
        if self.user.is_some() != self.password.is_some() {
            return Err(err(
                "nats.password",
                "user and password go together; set both or neither".into(),
            ));
        }
        Ok(())
    }
}

impl InputConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        check_name("input.stream", &self.stream)?;
        if let Some(consumer) = &self.consumer {
            check_name("input.consumer", consumer)?;
        }
        for s in &self.subjects {
            check_subject("input.subjects", s, true)?;
        }
        if self.batch == 0 || self.batch > 10_000 {
            return Err(err(
                "input.batch",
                format!("{} is out of range; use 1 to 10000", self.batch),
            ));
        }
        if self.batch_wait_ms > 1_000 {
            return Err(err(
                "input.batch_wait_ms",
                format!(
                    "{} is out of range; use 0 to 1000 (a few milliseconds fill a batch from a backlog)",
                    self.batch_wait_ms
                ),
            ));
        }
        if self.max_pending < self.batch as i64 {
            return Err(err(
                "input.max_pending",
                format!(
                    "{} is smaller than input.batch ({}); raise it",
                    self.max_pending, self.batch
                ),
            ));
        }
        match &self.key {
            KeySource::Header(name) if name.is_empty() => {
                Err(err("input.key.header", "is empty; name a header".into()))
            }
            KeySource::Json(pointer) if !pointer.starts_with('/') => Err(err(
                "input.key.json",
                format!(
                    "`{pointer}` is not a JSON pointer; it must start with `/`, e.g. \"/customer\""
                ),
            )),
            _ => Ok(()),
        }
    }
}

impl OutputConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        check_subject("output.subject", &self.subject, false)?;
        for s in &self.allow {
            check_subject("output.allow", s, true)?;
        }
        Ok(())
    }
}

impl DeadLetterConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        check_subject("dead_letter.subject", &self.subject, false)
    }
}

impl LimitsConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.cpu_ms_per_event == 0 || self.cpu_ms_per_event > 60_000 {
            return Err(err(
                "limits.cpu_ms_per_event",
                format!("{} is out of range; use 1 to 60000", self.cpu_ms_per_event),
            ));
        }
        if self.memory_mb < 2 || self.memory_mb > 4096 {
            return Err(err(
                "limits.memory_mb",
                format!(
                    "{} is out of range; use 2 to 4096 (a plugin needs at least its initial memory)",
                    self.memory_mb
                ),
            ));
        }
        Ok(())
    }
}

impl MetricsConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if let Some(listen) = &self.listen
            && listen.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(err(
                "metrics.listen",
                format!("`{listen}` is not an address; use host:port, e.g. 127.0.0.1:9464"),
            ));
        }
        Ok(())
    }
}
