//! `[lookup.<name>]` and `[lookups]`: the external stores plugins may read (their kind,
//! address, retries, failure policy, cache and request size) and how events wait for them.
//! Each validates itself and names the field and the fix.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, check_name, err};

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
    /// At most this many keys in one request to the store: the keys an input batch's events
    /// ask for go together (one Redis `MGET` or pipeline, one PostgreSQL statement). HTTP and
    /// NATS KV ask per key, concurrently, and ignore it. 1 asks for every key on its own.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Where each event's keys in this store are: JSON pointers into the payload
    /// (`"/customer"`), or `"key"` for the event's own key. With it the host plans this
    /// store's lookups from the events itself, without calling the plugin's `prepare`. A
    /// payload without a string or an integer there plans nothing for that pointer. Every
    /// event whose payload has one is planned, whether or not the plugin then asks for it, so
    /// `on_failure` applies to it as to any planned lookup.
    #[serde(default, deserialize_with = "one_or_many")]
    pub plan: Vec<String>,
}

/// A string or a list of strings, as a list.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    match OneOrMany::deserialize(d).map_err(|_| {
        serde::de::Error::custom(
            "expected a JSON pointer or a list of them, e.g. plan = \"/customer\" or plan = [\"/from\", \"/to\"]",
        )
    })? {
        OneOrMany::One(s) => Ok(vec![s]),
        OneOrMany::Many(v) => Ok(v),
    }
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
    #[serde(default = "remember_missing")]
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
fn remember_missing() -> bool {
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
        for p in &self.plan {
            if p != "key" && !p.starts_with('/') {
                return Err(err(
                    &f("plan"),
                    format!(
                        "`{p}` is neither a JSON pointer nor `key`; a pointer starts with `/`, e.g. \"/customer\" for the payload's `customer` field"
                    ),
                ));
            }
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
    /// Most events waiting on lookups at once; a full window holds back the input. Events
    /// whose lookups are answered wait for the plugin apart from these, up to two input
    /// batches (`input.batch`).
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
