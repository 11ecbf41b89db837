//! Async lookups against external stores (Redis, NATS KV, HTTP, PostgreSQL), with caches,
//! timeouts, retries and failure policies.
//!
//! Owns: the stores a pipeline declares (`[lookup.<name>]`), their connections (`redis`,
//! `nats_kv`, `http`, `postgres`), their caches (`cache`), their failure warnings
//! (`crate::throttle`), and how one event's lookups are resolved. A plugin reaches these stores and
//! nothing else.
//!
//! Design (the "declare, then process" model, chosen over async host imports on fibers): a
//! plugin says in `prepare` which keys each event needs; the host fetches them for many events
//! at once while earlier events are being handled (up to `lookups.capacity` events wait at a
//! time, see `pipeline::window`), and then calls `handle` with the answers ready, so a plugin
//! call never waits on the network. The plugin stays a plain synchronous component in every
//! language, calls stay batched (the boundary, not the guest, is the cost), and a slow store
//! holds back only the events that need it. Keys a plugin did not declare are fetched when it
//! asks (a blocking fetch on the worker thread, not charged to its CPU budget): correct, slower.
//!
//! Failures never stop the pipeline: an event's time per store is capped by `timeout_ms`,
//! retries included; after the last failure the store's `on_failure` policy decides (dead
//! letter, not-found, drop, or hand the error to the plugin).
//!
//! Never: lets a lookup write, or a plugin name a store the pipeline does not declare.

mod cache;
mod http;
mod nats_kv;
mod postgres;
mod redis;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;

use crate::config::{
    CacheMode, FailurePolicy, LookupStoreConfig, PipelineConfig, RetryOn, StoreKind,
};
use crate::engine::{LookupAnswer, LookupFailure, LookupRequest, LookupSource, Prefetched};
use crate::throttle::Throttle;
use crate::transport::Nats;

pub use cache::Cache;

/// Why a store did not answer, and whether asking again can help.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LookupError {
    /// The store could not be reached or answered with a passing failure (connection refused
    /// or dropped, timeout, HTTP 5xx or 429): retried per `retry`.
    #[error("{0}")]
    Unavailable(String),
    /// The store refused the request itself (a query it rejects, HTTP 4xx, a bucket that does
    /// not exist, an answer that does not decode): asking again gives the same answer, so it
    /// is not retried.
    #[error("{0}")]
    Refused(String),
}

impl LookupError {
    /// Whether a retry may succeed.
    pub fn retryable(&self) -> bool {
        matches!(self, LookupError::Unavailable(_))
    }
}

/// A store's raw answer for several keys: one value (or none) per key, or why it failed.
pub(crate) type Fetched = Result<Vec<Option<Vec<u8>>>, LookupError>;
/// Everything a store holds, for a full cache: `(key, value)` pairs, or why it failed.
pub(crate) type Loaded = Result<Vec<(String, Vec<u8>)>, LookupError>;

/// The counters of a run's stores, apart from the stores: the metrics hold them (and sum them
/// after the run ends) without keeping the stores, their caches and reload loops alive.
#[derive(Debug)]
pub struct LookupTally(Vec<(String, Arc<StoreStats>)>);

impl crate::metrics::LookupCounters for LookupTally {
    fn each(&self, f: &mut dyn FnMut(&str, &str, u64)) {
        for (name, st) in &self.0 {
            for (result, c) in [
                ("hit", &st.hits),
                ("miss", &st.misses),
                ("error", &st.errors),
                ("failure", &st.failures),
                ("load", &st.loads),
                ("unplanned", &st.unplanned),
            ] {
                f(name, result, c.load(Ordering::Relaxed));
            }
        }
    }
}

/// A connection to one kind of store.
pub(crate) trait Connector: Send + Sync + 'static {
    /// The values of `keys` (already prefixed), one per key.
    fn get_many(&self, keys: Vec<String>) -> BoxFuture<'static, Fetched>;
    /// Everything, for a full cache: `(key without prefix, value)`.
    fn load_all(&self) -> BoxFuture<'static, Loaded>;
    /// Whether the keys of one `get_many` share a round trip (a Redis `MGET`, one PostgreSQL
    /// statement). Stores that ask per key anyway (HTTP, NATS KV) get one key per request, so
    /// each answer is handed on as soon as it arrives rather than with the slowest of a batch.
    fn shares_round_trips(&self) -> bool {
        true
    }
}

/// Counters of one store.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Answers served from the cache.
    pub hits: AtomicU64,
    /// Answers fetched from the store.
    pub misses: AtomicU64,
    /// Attempts that failed (each retry counts).
    pub errors: AtomicU64,
    /// Events whose lookup exhausted its time or retries.
    pub failures: AtomicU64,
    /// Full-cache loads.
    pub loads: AtomicU64,
    /// Keys the plugin asked for that no plan declared (neither `lookup.<store>.plan` nor the
    /// plugin's `prepare`): fetched while it waited. They count as hits or misses too.
    pub unplanned: AtomicU64,
}

/// A store's answer for one key.
type KeyAnswer = Result<Option<Vec<u8>>, LookupError>;

/// A request under way, shared by every group of events that asks for one of its keys
/// meanwhile: its answers, one per key asked.
type InFlight = futures::future::Shared<BoxFuture<'static, Arc<Vec<KeyAnswer>>>>;

/// One declared store.
pub struct Store {
    name: String,
    cfg: LookupStoreConfig,
    connector: Arc<dyn Connector>,
    cache: Cache,
    /// Keys being fetched, with the request and the key's place in it: events asking for one
    /// meanwhile wait for the same answer instead of asking the store again.
    in_flight: std::sync::Mutex<HashMap<String, (InFlight, usize)>>,
    /// Its counters.
    pub stats: Arc<StoreStats>,
    /// Its `lookup failed` warnings, at most one per [`FAILURE_WARNING_EVERY`].
    failure_warnings: Throttle,
    /// Its warnings of keys asked without a plan, at most one per [`UNPLANNED_WARNING_EVERY`].
    unplanned_warnings: Throttle,
}

/// How often a store's `lookup failed` warning is logged at most. While a store is down every
/// request fails, one per key for stores asked key by key (HTTP, NATS KV): a warning each
/// would flood the log. The counters (`eddy_lookups_total`, results `error` and `failure`)
/// still count every one.
const FAILURE_WARNING_EVERY: Duration = Duration::from_secs(5);

/// How often a store's warning of keys asked without a plan is logged at most: a plugin that
/// plans nothing asks for every event's keys this way, so the warning says how many it held
/// back. `eddy_lookups_unplanned_total` counts each key.
const UNPLANNED_WARNING_EVERY: Duration = Duration::from_secs(60);

/// One key asked of a store: answered already, or by a request under way (and its place in it).
#[derive(Clone)]
enum Asked {
    Ready(LookupAnswer),
    Pending(InFlight, usize),
}

impl Asked {
    /// The answer, once its request is done.
    async fn answer(self) -> LookupAnswer {
        match self {
            Asked::Ready(a) => a,
            Asked::Pending(request, at) => match request.await.get(at) {
                Some(Ok(v)) => Ok(v.clone()),
                Some(Err(e)) => Err(LookupFailure::Failed(e.to_string())),
                None => Err(LookupFailure::Failed("no answer".into())),
            },
        }
    }
}

/// The distinct `keys`, in first-seen order, and how many times each was given.
fn distinct<'a>(
    keys: impl IntoIterator<Item = &'a str>,
) -> (Vec<&'a str>, HashMap<&'a str, usize>) {
    let mut order = Vec::new();
    let mut count: HashMap<&str, usize> = HashMap::new();
    for k in keys {
        let n = count.entry(k).or_insert(0);
        if *n == 0 {
            order.push(k);
        }
        *n += 1;
    }
    (order, count)
}

/// Applies a store's failure policy to one of an event's answers: the event's verdict (the
/// first failure decides it) and the answer the plugin sees.
fn apply_policy(
    resolved: &mut Resolved,
    r: &LookupRequest,
    policy: FailurePolicy,
    answer: LookupAnswer,
) -> LookupAnswer {
    match (answer, policy) {
        (Err(LookupFailure::Failed(reason)), FailurePolicy::DeadLetter) => {
            if resolved.verdict == Verdict::Proceed {
                resolved.verdict = Verdict::DeadLetter(format!(
                    "lookup of `{}` in store `{}` failed: {reason} (lookup.{}.on_failure = \"dead-letter\")",
                    r.key, r.store, r.store
                ));
            }
            Err(LookupFailure::Failed(reason))
        }
        (Err(LookupFailure::Failed(_)), FailurePolicy::NotFound) => Ok(None),
        (Err(LookupFailure::Failed(reason)), FailurePolicy::Drop) => {
            if resolved.verdict == Verdict::Proceed {
                resolved.verdict = Verdict::Drop;
            }
            Err(LookupFailure::Failed(reason))
        }
        (a, _) => a,
    }
}

/// What became of one event's lookups.
#[derive(Debug, Clone, Default)]
pub struct Resolved {
    /// The answers, by store and key.
    pub answers: Prefetched,
    /// What to do with the event.
    pub verdict: Verdict,
}

/// What the failure policies decided for an event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Verdict {
    /// Hand it to the plugin.
    #[default]
    Proceed,
    /// Send it to the dead-letter subject with this reason.
    DeadLetter(String),
    /// Drop it.
    Drop,
}

/// The lookup stores of one pipeline.
pub struct Lookups {
    stores: HashMap<String, Arc<Store>>,
    runtime: tokio::runtime::Handle,
    /// The stores' counters, for the metrics: one more holder than the metrics' own while
    /// these lookups live.
    tally: Arc<LookupTally>,
}

impl Lookups {
    /// Sets up the pipeline's stores (connections are made lazily, so a store that is down at
    /// start-up only fails its lookups). `None` when the pipeline declares none. Full caches
    /// are loaded before this returns (a failed load is logged and retried on its interval).
    pub async fn connect(
        cfg: &PipelineConfig,
        nats: Option<&Nats>,
    ) -> anyhow::Result<Option<Arc<Lookups>>> {
        if cfg.lookup.is_empty() {
            return Ok(None);
        }
        let mut stores = HashMap::new();
        for (name, sc) in &cfg.lookup {
            let connector: Arc<dyn Connector> = match sc.kind {
                StoreKind::Redis => Arc::new(redis::RedisStore::new(sc)?),
                StoreKind::NatsKv => {
                    let nats = nats.ok_or_else(|| {
                        anyhow::anyhow!("lookup.{name}: a NATS KV store needs a NATS connection")
                    })?;
                    Arc::new(nats_kv::KvStore::new(sc, nats.js.clone()))
                }
                StoreKind::Http => Arc::new(http::HttpStore::new(sc)?),
                StoreKind::Postgres => Arc::new(postgres::PgStore::new(sc)?),
            };
            let store = Arc::new(Store {
                name: name.clone(),
                cache: Cache::new(&sc.cache),
                cfg: sc.clone(),
                connector,
                in_flight: std::sync::Mutex::default(),
                stats: Arc::default(),
                failure_warnings: Throttle::default(),
                unplanned_warnings: Throttle::default(),
            });
            if sc.cache.mode == CacheMode::Full {
                store.load().await;
                if sc.cache.reload_interval_ms > 0 {
                    let weak = Arc::downgrade(&store);
                    let every = Duration::from_millis(sc.cache.reload_interval_ms);
                    tokio::spawn(async move {
                        loop {
                            tokio::time::sleep(every).await;
                            match weak.upgrade() {
                                Some(store) => store.load().await,
                                None => break,
                            }
                        }
                    });
                }
            }
            stores.insert(name.clone(), store);
        }
        let tally = Arc::new(LookupTally(
            stores
                .iter()
                .map(|(name, store)| (name.clone(), store.stats.clone()))
                .collect(),
        ));
        Ok(Some(Arc::new(Lookups {
            stores,
            runtime: tokio::runtime::Handle::current(),
            tally,
        })))
    }

    /// The stores' counters, for [`crate::metrics::Metrics::attach_lookups`].
    pub fn tally(&self) -> Arc<LookupTally> {
        self.tally.clone()
    }

    /// The stores, by name.
    pub fn stores(&self) -> impl Iterator<Item = &Arc<Store>> {
        self.stores.values()
    }

    /// Resolves the lookups of a group of events (one plan each): every key the group needs
    /// is asked of its store once, in requests shared by the whole group, and each event is
    /// answered, with its stores' failure policies applied, as soon as its own keys are: one
    /// `(index in plans, Resolved)` per plan, in the order they complete.
    pub fn resolve(
        &self,
        plans: Vec<Vec<LookupRequest>>,
    ) -> impl futures::Stream<Item = (usize, Resolved)> + Send + 'static {
        // Per store, the keys the group asks (an event that names a key twice asks once).
        let mut asks_of: HashMap<&str, Vec<&str>> = HashMap::new();
        for plan in &plans {
            for (j, r) in plan.iter().enumerate() {
                if !plan[..j]
                    .iter()
                    .any(|e| e.store == r.store && e.key == r.key)
                {
                    asks_of.entry(&r.store).or_default().push(&r.key);
                }
            }
        }
        let mut asked: HashMap<(&str, &str), Asked> = HashMap::new();
        for (store, keys) in asks_of {
            let (keys, count) = distinct(keys);
            let answers = match self.stores.get(store) {
                Some(s) => s.ask(&keys, |k| count[k]),
                None => {
                    let failure = self.unknown_store(store);
                    keys.iter()
                        .map(|_| Asked::Ready(Err(failure.clone())))
                        .collect()
                }
            };
            asked.extend(keys.into_iter().map(|k| (store, k)).zip(answers));
        }
        let waits: Vec<Vec<(FailurePolicy, Asked)>> = plans
            .iter()
            .map(|plan| {
                plan.iter()
                    .map(|r| {
                        let policy = self
                            .stores
                            .get(&r.store)
                            .map_or(FailurePolicy::Plugin, |s| s.cfg.on_failure);
                        (policy, asked[&(r.store.as_str(), r.key.as_str())].clone())
                    })
                    .collect()
            })
            .collect();
        let events: futures::stream::FuturesUnordered<_> = plans
            .into_iter()
            .zip(waits)
            .enumerate()
            .map(|(i, (plan, waits))| async move {
                // All of the event's keys at once; the policies then apply in plan order.
                let (policies, asked): (Vec<FailurePolicy>, Vec<Asked>) = waits.into_iter().unzip();
                let answers = futures::future::join_all(asked.into_iter().map(Asked::answer)).await;
                let mut resolved = Resolved::default();
                for ((r, policy), answer) in plan.into_iter().zip(policies).zip(answers) {
                    let answer = apply_policy(&mut resolved, &r, policy, answer);
                    resolved.answers.insert((r.store, r.key), answer);
                }
                (i, resolved)
            })
            .collect();
        events
    }

    fn unknown_store(&self, store: &str) -> LookupFailure {
        let known: Vec<&str> = self.stores.keys().map(String::as_str).collect();
        LookupFailure::UnknownStore(format!(
            "`{store}` is not declared; the pipeline declares {known:?} (add [lookup.{store}])"
        ))
    }

    /// Fetches `keys` from `store`: cache first, then the store, with retries within the
    /// store's timeout. One answer per key.
    pub async fn fetch(&self, store: &str, keys: &[String]) -> Vec<LookupAnswer> {
        match self.stores.get(store) {
            Some(s) => s.fetch(keys).await,
            None => vec![Err(self.unknown_store(store)); keys.len()],
        }
    }
}

impl std::fmt::Debug for Lookups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lookups")
            .field("stores", &self.stores.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl LookupSource for Lookups {
    /// Keys the plugin asks for that no plan declared: fetched now, while it waits.
    fn fetch_blocking(&self, store: &str, keys: &[String]) -> Vec<LookupAnswer> {
        if let Some(s) = self.stores.get(store) {
            s.asked_unplanned(keys.len());
        }
        self.runtime.block_on(self.fetch(store, keys))
    }
}

impl Store {
    /// The store's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Loads everything into a full cache.
    async fn load(&self) {
        match tokio::time::timeout(
            self.cfg.timeout().max(Duration::from_secs(30)),
            self.connector.load_all(),
        )
        .await
        {
            Ok(Ok(all)) => {
                let n = all.len();
                self.cache.replace_all(all);
                self.stats.loads.fetch_add(1, Ordering::Relaxed);
                tracing::info!(store = %self.name, entries = n, "lookup cache loaded");
            }
            Ok(Err(e)) => {
                tracing::warn!(store = %self.name, "lookup cache load failed: {e}; keeping what it had")
            }
            Err(_) => tracing::warn!(store = %self.name, "lookup cache load timed out"),
        }
    }

    /// Counts `n` keys asked without a plan, and says so in the log once a period with the fix.
    fn asked_unplanned(&self, n: usize) {
        self.stats.unplanned.fetch_add(n as u64, Ordering::Relaxed);
        if let Some(held) = self
            .unplanned_warnings
            .admit(std::time::Instant::now(), UNPLANNED_WARNING_EVERY)
        {
            tracing::warn!(
                store = %self.name,
                keys = n,
                "the plugin asked for keys of lookup store `{0}` that no plan declared, so it waited for the store ({held} more such requests since the last warning); declare where an event's key is with `plan = \"/field\"` (or `plan = \"key\"`) under [lookup.{0}], or return it from the plugin's plan_lookups",
                self.name
            );
        }
    }

    /// One answer per key: from the cache, from a request already under way for the key, or
    /// from new requests of up to `max_batch` keys each, run concurrently.
    async fn fetch(self: &Arc<Self>, keys: &[String]) -> Vec<LookupAnswer> {
        let (distinct_keys, count) = distinct(keys.iter().map(String::as_str));
        let asked = self.ask(&distinct_keys, |k| count[k]);
        let answers = futures::future::join_all(asked.into_iter().map(Asked::answer)).await;
        let by_key: HashMap<&str, LookupAnswer> = distinct_keys.into_iter().zip(answers).collect();
        keys.iter().map(|k| by_key[k.as_str()].clone()).collect()
    }

    /// Asks for distinct `keys`, `asks(key)` times each (the events asking, for the counters):
    /// each key's answer is in the cache, or comes from a request under way for it, or from a
    /// new request of up to `max_batch` keys started here.
    fn ask(self: &Arc<Self>, keys: &[&str], asks: impl Fn(&str) -> usize) -> Vec<Asked> {
        let mut answers: Vec<Option<Asked>> = Vec::with_capacity(keys.len());
        let (mut hits, mut misses) = (0, 0);
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let mut new_keys: Vec<usize> = Vec::new();
        for (i, &k) in keys.iter().enumerate() {
            let n = asks(k).max(1);
            let answer = match self.cache.get(k) {
                Some(v) => Some(Asked::Ready(Ok(v))),
                // A full cache holds everything: a key it lacks does not exist.
                None if self.cache.mode() == CacheMode::Full => Some(Asked::Ready(Ok(None))),
                // Asked for already, by events still waiting: the same answer.
                None => in_flight
                    .get(k)
                    .map(|(request, at)| Asked::Pending(request.clone(), *at)),
            };
            match answer {
                Some(a) => {
                    hits += n;
                    answers.push(Some(a));
                }
                None => {
                    // The first ask goes to the store; the others share its answer.
                    misses += 1;
                    hits += n - 1;
                    new_keys.push(i);
                    answers.push(None);
                }
            }
        }
        let per_request = match self.connector.shares_round_trips() {
            true => self.cfg.max_batch.max(1),
            false => 1,
        };
        for chunk in new_keys.chunks(per_request) {
            let asked: Vec<String> = chunk.iter().map(|&i| keys[i].to_string()).collect();
            let request = self.clone().request(asked).boxed().shared();
            for (at, &i) in chunk.iter().enumerate() {
                in_flight.insert(keys[i].to_string(), (request.clone(), at));
                answers[i] = Some(Asked::Pending(request.clone(), at));
            }
        }
        drop(in_flight);
        self.stats.hits.fetch_add(hits as u64, Ordering::Relaxed);
        self.stats.misses.fetch_add(misses, Ordering::Relaxed);
        answers
            .into_iter()
            .map(|a| a.unwrap_or(Asked::Ready(Err(LookupFailure::Failed("no answer".into())))))
            .collect()
    }

    /// Fetches `keys` in one request (retries and timeout included), caches the answers, and
    /// ends their in-flight entries.
    async fn request(self: Arc<Self>, keys: Vec<String>) -> Arc<Vec<KeyAnswer>> {
        // A panic in a connector fails these keys, not every event that shares the request.
        let answers = std::panic::AssertUnwindSafe(self.fetch_with_retries(&keys))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| {
                tracing::error!(store = %self.name, "a request to the store panicked");
                vec![
                    Err(LookupError::Unavailable(format!(
                        "the request to store `{}` panicked",
                        self.name
                    )));
                    keys.len()
                ]
            });
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        for (key, answer) in keys.iter().zip(&answers) {
            if let Ok(v) = answer {
                self.cache.put(key, v.clone());
            }
            in_flight.remove(key);
        }
        Arc::new(answers)
    }

    /// Fetches from the store, retrying per `retry` within `timeout_ms` overall.
    async fn fetch_with_retries(&self, keys: &[String]) -> Vec<KeyAnswer> {
        let retry = &self.cfg.retry;
        let timeout = self.cfg.timeout();
        let prefixed: Vec<String> = keys
            .iter()
            .map(|k| format!("{}{k}", self.cfg.key_prefix))
            .collect();
        let mut results: Vec<Option<KeyAnswer>> = vec![None; keys.len()];
        let attempts = AtomicU64::new(0);
        let work = async {
            let mut backoff = Duration::from_millis(retry.backoff_ms);
            for attempt in 1..=retry.attempts {
                attempts.store(u64::from(attempt), Ordering::Relaxed);
                let todo: Vec<usize> = (0..keys.len())
                    .filter(|&i| match &results[i] {
                        None => true,
                        Some(Err(e)) => e.retryable() && retry.on.contains(&RetryOn::Error),
                        Some(Ok(None)) => retry.on.contains(&RetryOn::NotFound),
                        Some(Ok(Some(_))) => false,
                    })
                    .collect();
                if todo.is_empty() {
                    break;
                }
                let ask: Vec<String> = todo.iter().map(|&i| prefixed[i].clone()).collect();
                match self.connector.get_many(ask).await {
                    Ok(values) => {
                        for (&i, v) in todo.iter().zip(values) {
                            results[i] = Some(Ok(v));
                        }
                    }
                    Err(e) => {
                        self.stats.errors.fetch_add(1, Ordering::Relaxed);
                        for &i in &todo {
                            results[i] = Some(Err(e.clone()));
                        }
                    }
                }
                let again = todo.iter().any(|&i| match &results[i] {
                    Some(Err(e)) => e.retryable() && retry.on.contains(&RetryOn::Error),
                    Some(Ok(None)) => retry.on.contains(&RetryOn::NotFound),
                    _ => false,
                });
                if !again || attempt == retry.attempts {
                    break;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(retry.max_backoff_ms));
            }
        };
        let timed_out = tokio::time::timeout(timeout, work).await.is_err();
        let tried = attempts.load(Ordering::Relaxed);
        let out: Vec<KeyAnswer> = results
            .into_iter()
            .map(|r| match r {
                Some(Ok(v)) => Ok(v),
                Some(Err(LookupError::Unavailable(e))) => Err(LookupError::Unavailable(format!(
                    "{e} (after {tried} attempts)"
                ))),
                Some(Err(e)) => Err(e),
                None if timed_out => Err(LookupError::Unavailable(format!(
                    "no answer within {} ms (lookup.{}.timeout_ms; {tried} attempts)",
                    timeout.as_millis(),
                    self.name
                ))),
                None => Err(LookupError::Unavailable("no answer".to_string())),
            })
            .collect();
        let failed = out.iter().filter(|r| r.is_err()).count() as u64;
        if failed > 0 {
            self.stats.failures.fetch_add(failed, Ordering::Relaxed);
            if let Some(Err(e)) = out.iter().find(|r| r.is_err())
                && let Some(held) = self
                    .failure_warnings
                    .admit(std::time::Instant::now(), FAILURE_WARNING_EVERY)
            {
                if held == 0 {
                    tracing::warn!(store = %self.name, keys = failed, "lookup failed: {e}");
                } else {
                    tracing::warn!(
                        store = %self.name,
                        keys = failed,
                        "lookup failed: {e} ({held} more failed requests not logged in the last {} s)",
                        FAILURE_WARNING_EVERY.as_secs()
                    );
                }
            }
        }
        out
    }
}

/// Percent-encodes a key for a URL path segment (RFC 3986 unreserved characters stay).
pub(crate) fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests;
