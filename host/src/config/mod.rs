//! Pipeline configuration: the TOML file an operator writes, parsed and validated before
//! anything starts.
//!
//! Owns: the shape of `pipeline.toml`, its defaults, and every check that can be made without
//! a network connection. Errors name the file, the field and the fix. It never connects to
//! NATS or opens state: checks that need the server (streams exist, subjects are captured)
//! belong to `transport`.

mod sections;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use sections::{
    BroadcastInputConfig, CacheConfig, CacheMode, CheckpointConfig, DedupeCheck, FailurePolicy,
    LookupStoreConfig, LookupsConfig, OrderMode, PartitionsConfig, QueryConfig, ReloadConfig,
    ReloadWatch, RetryConfig, RetryOn, StoreKind,
};

/// A whole pipeline: where events come from, which plugin handles them, where results go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Name and state settings.
    pub pipeline: PipelineSection,
    /// How to reach NATS.
    #[serde(default)]
    pub nats: NatsConfig,
    /// The keyed input.
    pub input: InputConfig,
    /// The plugin that handles events.
    pub plugin: PluginConfig,
    /// Where outputs are published.
    pub output: OutputConfig,
    /// Where events that could not be handled are published, with the reason.
    pub dead_letter: DeadLetterConfig,
    /// Sandbox budgets for the plugin.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// The Prometheus metrics endpoint.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Keyed state settings: TTL overrides, background cleanup.
    #[serde(default)]
    pub state: StateConfig,
    /// Checkpoints: how often, how many kept, where.
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
    /// Broadcast inputs by name (`[broadcast.rules]`): every host reads all of each.
    #[serde(default)]
    pub broadcast: BTreeMap<String, BroadcastInputConfig>,
    /// Lookup stores by name (`[lookup.profiles]`).
    #[serde(default)]
    pub lookup: BTreeMap<String, LookupStoreConfig>,
    /// How events wait for their lookups: capacity and output order.
    #[serde(default)]
    pub lookups: LookupsConfig,
    /// Hot reload of the plugin.
    #[serde(default)]
    pub reload: ReloadConfig,
    /// Queryable state endpoints.
    #[serde(default)]
    pub query: QueryConfig,
    /// Which partitions of the key space this host owns.
    #[serde(default)]
    pub partitions: PartitionsConfig,
}

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
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            ttl: Default::default(),
            periodic_compaction_secs: default_periodic_compaction(),
            hot_values_mb: default_hot_values_mb(),
        }
    }
}

fn default_hot_values_mb() -> u64 {
    (crate::state::hot::DEFAULT_BUDGET >> 20) as u64
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
}

fn default_batch() -> usize {
    256
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

/// A configuration error: which file, which field, what is wrong and how to fix it.
#[derive(Debug)]
pub struct ConfigError {
    /// The config file, if it came from one.
    pub file: Option<PathBuf>,
    /// The dotted field name (`input.batch`).
    pub field: String,
    /// What is wrong, and the fix.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(file) => write!(f, "{}: `{}`: {}", file.display(), self.field, self.message),
            None => write!(f, "`{}`: {}", self.field, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

impl PipelineConfig {
    /// Reads, parses and validates a pipeline file. Relative paths in it are resolved
    /// against the file's directory.
    pub fn load(path: &Path) -> Result<PipelineConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: Some(path.to_path_buf()),
            field: "(file)".into(),
            message: format!("cannot read the pipeline file: {e}; check the path"),
        })?;
        let mut config = PipelineConfig::parse(&text).map_err(|mut e| {
            e.file = Some(path.to_path_buf());
            e
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_paths(base);
        config.validate_files().map_err(|mut e| {
            e.file = Some(path.to_path_buf());
            e
        })?;
        Ok(config)
    }

    /// Parses and validates TOML text (paths stay as written).
    pub fn parse(text: &str) -> Result<PipelineConfig, ConfigError> {
        let config: PipelineConfig = toml::from_str(text).map_err(|e| ConfigError {
            file: None,
            field: toml_error_field(&e),
            message: format!(
                "{}\nsee examples/fraud/pipeline.toml for a complete, commented file",
                e.to_string().trim_end()
            ),
        })?;
        config.validate()?;
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        if self.pipeline.state_dir.is_relative() {
            self.pipeline.state_dir = base.join(&self.pipeline.state_dir);
        }
        if let Some(dir) = &self.checkpoint.dir
            && dir.is_relative()
        {
            self.checkpoint.dir = Some(base.join(dir));
        }
        if let Some(dir) = &self.checkpoint.savepoint_dir
            && dir.is_relative()
        {
            self.checkpoint.savepoint_dir = Some(base.join(dir));
        }
        if self.plugin.path.is_relative() {
            self.plugin.path = base.join(&self.plugin.path);
        }
        if let Some(creds) = &self.nats.creds
            && creds.is_relative()
        {
            self.nats.creds = Some(base.join(creds));
        }
    }

    /// Checks that need the file system: the plugin exists.
    pub fn validate_files(&self) -> Result<(), ConfigError> {
        if !self.plugin.path.is_file() {
            return Err(err(
                "plugin.path",
                format!(
                    "no plugin file at {}; build it (scripts/build-plugins.sh) or fix the path",
                    self.plugin.path.display()
                ),
            ));
        }
        if let Some(creds) = &self.nats.creds
            && !creds.is_file()
        {
            return Err(err(
                "nats.creds",
                format!("no credentials file at {}", creds.display()),
            ));
        }
        Ok(())
    }

    /// Checks that need nothing but the config itself.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_name("pipeline.name", &self.pipeline.name)?;
        let kg = self.pipeline.key_groups;
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
        if self.nats.url.trim().is_empty() {
            return Err(err(
                "nats.url",
                "is empty; set it to e.g. nats://127.0.0.1:4222".into(),
            ));
        }
        if self.nats.token.is_some() && (self.nats.user.is_some() || self.nats.creds.is_some()) {
            return Err(err(
                "nats.token",
                "set only one of token, user/password or creds".into(),
            ));
        }
        if self.nats.user.is_some() != self.nats.password.is_some() {
            return Err(err(
                "nats.password",
                "user and password go together; set both or neither".into(),
            ));
        }
        check_name("input.stream", &self.input.stream)?;
        if let Some(consumer) = &self.input.consumer {
            check_name("input.consumer", consumer)?;
        }
        for s in &self.input.subjects {
            check_subject("input.subjects", s, true)?;
        }
        if self.input.batch == 0 || self.input.batch > 10_000 {
            return Err(err(
                "input.batch",
                format!("{} is out of range; use 1 to 10000", self.input.batch),
            ));
        }
        if self.input.max_pending < self.input.batch as i64 {
            return Err(err(
                "input.max_pending",
                format!(
                    "{} is smaller than input.batch ({}); raise it",
                    self.input.max_pending, self.input.batch
                ),
            ));
        }
        match &self.input.key {
            KeySource::Header(name) if name.is_empty() => {
                return Err(err("input.key.header", "is empty; name a header".into()));
            }
            KeySource::Json(pointer) if !pointer.starts_with('/') => {
                return Err(err(
                    "input.key.json",
                    format!(
                        "`{pointer}` is not a JSON pointer; it must start with `/`, e.g. \"/customer\""
                    ),
                ));
            }
            _ => {}
        }
        check_subject("output.subject", &self.output.subject, false)?;
        for s in &self.output.allow {
            check_subject("output.allow", s, true)?;
        }
        check_subject("dead_letter.subject", &self.dead_letter.subject, false)?;
        if self.limits.cpu_ms_per_event == 0 || self.limits.cpu_ms_per_event > 60_000 {
            return Err(err(
                "limits.cpu_ms_per_event",
                format!(
                    "{} is out of range; use 1 to 60000",
                    self.limits.cpu_ms_per_event
                ),
            ));
        }
        if self.limits.memory_mb < 2 || self.limits.memory_mb > 4096 {
            return Err(err(
                "limits.memory_mb",
                format!(
                    "{} is out of range; use 2 to 4096 (a plugin needs at least its initial memory)",
                    self.limits.memory_mb
                ),
            ));
        }
        if let Some(listen) = &self.metrics.listen
            && listen.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(err(
                "metrics.listen",
                format!("`{listen}` is not an address; use host:port, e.g. 127.0.0.1:9464"),
            ));
        }
        self.checkpoint.validate()?;
        for (name, b) in &self.broadcast {
            b.validate(name)?;
        }
        for (name, store) in &self.lookup {
            store.validate(name)?;
        }
        self.lookups.validate()?;
        self.reload.validate()?;
        self.query.validate()?;
        self.partitions.validate()?;
        if !self
            .pipeline
            .key_groups
            .is_multiple_of(self.partitions.count)
        {
            return Err(err(
                "partitions.count",
                format!(
                    "{} does not divide pipeline.key_groups ({}); a partition must own whole key groups",
                    self.partitions.count, self.pipeline.key_groups
                ),
            ));
        }
        Ok(())
    }

    /// Where the live database lives: `<state_dir>/db`, rebuilt from the newest checkpoint at
    /// every start.
    pub fn db_dir(&self) -> PathBuf {
        self.pipeline.state_dir.join("db")
    }

    /// Where checkpoints are kept.
    pub fn checkpoint_dir(&self) -> PathBuf {
        self.checkpoint
            .dir
            .clone()
            .unwrap_or_else(|| self.pipeline.state_dir.join("checkpoints"))
    }

    /// Where savepoints are written by default.
    pub fn savepoint_dir(&self) -> PathBuf {
        self.checkpoint
            .savepoint_dir
            .clone()
            .unwrap_or_else(|| self.pipeline.state_dir.join("savepoints"))
    }

    /// The NATS subject prefix of this pipeline's control requests.
    pub fn control_subject(&self) -> String {
        format!("eddy.ctl.{}", self.pipeline.name)
    }

    /// The durable consumer name.
    pub fn consumer_name(&self) -> &str {
        self.input
            .consumer
            .as_deref()
            .unwrap_or(&self.pipeline.name)
    }

    /// Whether the plugin may publish to `subject`.
    pub fn output_allowed(&self, subject: &str) -> bool {
        subject == self.output.subject
            || self
                .output
                .allow
                .iter()
                .any(|p| subject_matches(p, subject))
    }
}

fn err(field: &str, message: String) -> ConfigError {
    ConfigError {
        file: None,
        field: field.to_string(),
        message,
    }
}

/// Names of pipelines, streams and consumers: what JetStream accepts in a name.
fn check_name(field: &str, name: &str) -> Result<(), ConfigError> {
    let bad = name.is_empty()
        || name
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\'));
    if bad {
        return Err(err(
            field,
            format!(
                "`{name}` is not a valid name; use letters, digits, `-` and `_` (no dots, spaces or wildcards)"
            ),
        ));
    }
    Ok(())
}

fn check_subject(field: &str, subject: &str, wildcards: bool) -> Result<(), ConfigError> {
    let tokens: Vec<&str> = subject.split('.').collect();
    let empty = subject.is_empty() || tokens.iter().any(|t| t.is_empty());
    let space = subject.chars().any(char::is_whitespace);
    if empty || space {
        return Err(err(
            field,
            format!("`{subject}` is not a NATS subject; use dot-separated tokens like `txn.in`"),
        ));
    }
    let has_wild = tokens.iter().any(|t| *t == "*" || *t == ">");
    if has_wild && !wildcards {
        return Err(err(
            field,
            format!("`{subject}` has a wildcard; a publish subject must be literal"),
        ));
    }
    if let Some(pos) = tokens.iter().position(|t| *t == ">")
        && pos != tokens.len() - 1
    {
        return Err(err(
            field,
            format!("`{subject}`: `>` may only be the last token"),
        ));
    }
    Ok(())
}

/// NATS subject matching with `*` (one token) and `>` (one or more trailing tokens).
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Best effort at naming the offending field from a TOML error: the key path toml reports
/// in its message, or the line's key.
fn toml_error_field(e: &toml::de::Error) -> String {
    let msg = e.message();
    // serde's messages: "missing field `stream`", "unknown field `bacth`, expected ..."
    for marker in ["missing field `", "unknown field `", "unknown variant `"] {
        if let Some(start) = msg.find(marker) {
            let rest = &msg[start + marker.len()..];
            if let Some(end) = rest.find('`') {
                return rest[..end].to_string();
            }
        }
    }
    match e.span() {
        Some(span) => format!("at byte {}", span.start),
        None => "(document)".into(),
    }
}

#[cfg(test)]
mod tests;
