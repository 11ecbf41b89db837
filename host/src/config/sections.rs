//! The pipeline file's sections beyond input, plugin and output: checkpoints, broadcast
//! inputs, lookup stores, hot reload, queries and partitions. Each section validates itself and
//! names the field and the fix.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

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

/// `[lookup.<name>]`: an external store plugins may read.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LookupStoreConfig {
    /// Which kind of store.
    pub kind: StoreKind,
    /// Redis: `redis://host:port[/db]`; PostgreSQL: a connection string
    /// (`postgres://user@host:port/db` or `host=... user=...`).
    #[serde(default)]
    pub url: Option<String>,
    /// Redis: `get` (default) or `hgetall` (the hash as a JSON object).
    #[serde(default)]
    pub command: Option<String>,
    /// Prefix added to every key before asking the store (Redis, NATS KV).
    #[serde(default)]
    pub key_prefix: String,
    /// NATS KV: the bucket.
    #[serde(default)]
    pub bucket: Option<String>,
    /// HTTP: the URL with `{key}` where the (URL-encoded) key goes.
    #[serde(default)]
    pub url_template: Option<String>,
    /// HTTP: headers sent with every request (e.g. authorization).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// PostgreSQL: a query with one parameter, `$1`, the key (as text); the first row is the
    /// value, as a JSON object of its columns.
    #[serde(default)]
    pub query: Option<String>,
    /// For `cache.mode = "full"`: how to load everything. PostgreSQL: a query returning two
    /// columns, key (text) and value (json or text). HTTP: a URL returning a JSON object of
    /// key → value. Redis and NATS KV scan their keys (with `key_prefix`).
    #[serde(default)]
    pub load: Option<String>,
    /// One event's time for this store, every retry included, in milliseconds.
    #[serde(default = "default_lookup_timeout_ms")]
    pub timeout_ms: u64,
    /// Retries.
    #[serde(default)]
    pub retry: RetryConfig,
    /// What happens to an event whose lookup failed after every retry.
    #[serde(default)]
    pub on_failure: FailurePolicy,
    /// The cache in front of the store.
    #[serde(default)]
    pub cache: CacheConfig,
    /// At most this many keys in one request to the store: the keys that events ask for while
    /// a request is being made go together in the next (one Redis `MGET` or pipeline, one
    /// round of NATS KV gets, pipelined PostgreSQL queries; HTTP asks per key, concurrently).
    /// 1 asks for every key on its own.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
}

fn default_lookup_timeout_ms() -> u64 {
    1_000
}

fn default_max_batch() -> usize {
    256
}

/// The kinds of lookup store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoreKind {
    /// Redis (`GET`, `HGETALL`; `MGET` for several keys).
    Redis,
    /// A NATS JetStream key-value bucket.
    NatsKv,
    /// HTTP GET with a URL template.
    Http,
    /// A PostgreSQL query with one parameter.
    Postgres,
}

/// `retry` of a lookup store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts in all, the first included (1: no retry).
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// Wait before the first retry; it doubles each time.
    #[serde(default = "default_backoff_ms")]
    pub backoff_ms: u64,
    /// Longest wait between retries.
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// What is retried: `error` (the store failed or timed out), `not-found`.
    #[serde(default = "default_retry_on")]
    pub on: Vec<RetryOn>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            attempts: default_attempts(),
            backoff_ms: default_backoff_ms(),
            max_backoff_ms: default_max_backoff_ms(),
            on: default_retry_on(),
        }
    }
}

fn default_attempts() -> u32 {
    3
}
fn default_backoff_ms() -> u64 {
    10
}
fn default_max_backoff_ms() -> u64 {
    500
}
fn default_retry_on() -> Vec<RetryOn> {
    vec![RetryOn::Error]
}

/// What a retry predicate matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RetryOn {
    /// The store failed or did not answer in time.
    Error,
    /// The store has no such key.
    NotFound,
}

/// What happens to an event whose lookup failed after every retry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailurePolicy {
    /// The event goes to the dead-letter subject with the reason (the default).
    #[default]
    DeadLetter,
    /// The plugin is told the key was not found.
    NotFound,
    /// The event is dropped (counted).
    Drop,
    /// The plugin sees the error and decides.
    Plugin,
}

/// `cache` of a lookup store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// `none`, `partial` (the default) or `full`.
    #[serde(default)]
    pub mode: CacheMode,
    /// Partial: most entries kept; the least recently used goes first.
    #[serde(default = "default_max_entries")]
    pub max_entries: usize,
    /// Partial: an entry is dropped this long after it was fetched (0: never).
    #[serde(default)]
    pub expire_after_write_ms: u64,
    /// Partial: an entry is dropped this long after it was last used (0: never).
    #[serde(default)]
    pub expire_after_access_ms: u64,
    /// Partial: remember "not found" answers too (Flink's default).
    #[serde(default = "default_true")]
    pub cache_missing: bool,
    /// Full: reload everything this often (0: never after the first load).
    #[serde(default)]
    pub reload_interval_ms: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            mode: CacheMode::default(),
            max_entries: default_max_entries(),
            expire_after_write_ms: 0,
            expire_after_access_ms: 0,
            cache_missing: true,
            reload_interval_ms: 0,
        }
    }
}

fn default_max_entries() -> usize {
    10_000
}
fn default_true() -> bool {
    true
}

/// Cache modes (Flink's lookup cache options).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CacheMode {
    /// Every lookup goes to the store.
    None,
    /// Recently used keys are kept.
    #[default]
    Partial,
    /// Everything is loaded up front (and reloaded on an interval); the store is not asked
    /// per key.
    Full,
}

impl LookupStoreConfig {
    pub(super) fn validate(&self, name: &str) -> Result<(), ConfigError> {
        let f = |field: &str| format!("lookup.{name}.{field}");
        check_name(&format!("lookup.{name}"), name)?;
        if self.max_batch == 0 || self.max_batch > 10_000 {
            return Err(err(
                &f("max_batch"),
                format!("{} is out of range; use 1 to 10000", self.max_batch),
            ));
        }
        let need = |field: &str, v: &Option<String>, example: &str| match v {
            Some(s) if !s.trim().is_empty() => Ok(()),
            _ => Err(err(
                &f(field),
                format!("is required for a {:?} store, e.g. {example}", self.kind),
            )),
        };
        match self.kind {
            StoreKind::Redis => {
                need("url", &self.url, "url = \"redis://127.0.0.1:6379\"")?;
                match self.command.as_deref().unwrap_or("get") {
                    "get" | "hgetall" => {}
                    other => {
                        return Err(err(
                            &f("command"),
                            format!("`{other}` is not supported; use \"get\" or \"hgetall\""),
                        ));
                    }
                }
            }
            StoreKind::NatsKv => need("bucket", &self.bucket, "bucket = \"profiles\"")?,
            StoreKind::Http => {
                need(
                    "url_template",
                    &self.url_template,
                    "url_template = \"http://127.0.0.1:8080/merchants/{key}\"",
                )?;
                if self
                    .url_template
                    .as_deref()
                    .is_some_and(|t| !t.contains("{key}"))
                {
                    return Err(err(
                        &f("url_template"),
                        "has no `{key}`; put it where the key goes".into(),
                    ));
                }
            }
            StoreKind::Postgres => {
                need(
                    "url",
                    &self.url,
                    "url = \"postgres://eddy@127.0.0.1:5432/shop\"",
                )?;
                need(
                    "query",
                    &self.query,
                    "query = \"SELECT name, risk FROM merchants WHERE id = $1\"",
                )?;
            }
        }
        if self.cache.mode == CacheMode::Full
            && self.load.is_none()
            && matches!(self.kind, StoreKind::Http | StoreKind::Postgres)
        {
            return Err(err(
                &f("load"),
                "is required with cache.mode = \"full\" for this kind of store: say how to load everything".into(),
            ));
        }
        if self.timeout_ms == 0 {
            return Err(err(&f("timeout_ms"), "must be at least 1".into()));
        }
        if self.retry.attempts == 0 {
            return Err(err(
                &f("retry.attempts"),
                "must be at least 1 (the first attempt counts)".into(),
            ));
        }
        if self.cache.mode == CacheMode::Partial && self.cache.max_entries == 0 {
            return Err(err(
                &f("cache.max_entries"),
                "must be at least 1; use cache.mode = \"none\" for no cache".into(),
            ));
        }
        Ok(())
    }

    /// The timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// `[lookups]`: how events wait for their lookups.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LookupsConfig {
    /// Most events waiting on lookups at once; a full window holds back the input.
    #[serde(default = "default_capacity")]
    pub capacity: usize,
    /// `ordered` (outputs in input order) or `unordered` (as lookups complete; events of one
    /// key still keep their order).
    #[serde(default)]
    pub mode: OrderMode,
}

impl Default for LookupsConfig {
    fn default() -> Self {
        LookupsConfig {
            capacity: default_capacity(),
            mode: OrderMode::default(),
        }
    }
}

fn default_capacity() -> usize {
    100
}

/// Output order with lookups.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OrderMode {
    /// Input order.
    #[default]
    Ordered,
    /// As completed, per key in order.
    Unordered,
}

impl LookupsConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.capacity == 0 || self.capacity > 100_000 {
            return Err(err(
                "lookups.capacity",
                format!("{} is out of range; use 1 to 100000", self.capacity),
            ));
        }
        Ok(())
    }
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
