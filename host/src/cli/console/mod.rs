//! `eddy console`: a web application to see and steer a running pipeline, served by this
//! binary with its page, script and style embedded.
//!
//! It finds the pipeline's hosts through NATS, as the CLI does, so it runs anywhere NATS is
//! reachable: status every second ([`sampler`]), control requests for checkpoints and
//! savepoints, the plugin bucket for deploys and rollbacks, the dead-letter stream, and the
//! query service for state.
//!
//! Access: with `console.token` or `console.operator_token` set, every `/api` request carries
//! `Authorization: Bearer <token>`; the first token may look, the second may also act (POST
//! routes). With neither set, anyone who reaches the address may do both: keep it on loopback.
//!
//! | route | what |
//! | --- | --- |
//! | `GET /api/overview` | hosts, their partitions, rates, lag, plugin-call quantiles; series |
//! | `GET /api/checkpoints` | recent checkpoints per host; savepoints on this machine |
//! | `POST /api/checkpoint` | a checkpoint now, on every host |
//! | `POST /api/savepoint` | starts a savepoint; `GET /api/jobs/{id}` follows it |
//! | `GET /api/deployments` | versions, probation, rollbacks and their reasons |
//! | `POST /api/deploy?shadow=` | the body (a component) deployed as the next version (or, with `shadow=true`, as the shadow) |
//! | `POST /api/shadow/promote`, `POST /api/shadow/discard` | the shadow made live, or dropped |
//! | `POST /api/rollback` | `{"version": v}`: a version the bucket keeps, deployed again |
//! | `GET /api/dlq?kind=&limit=` | dead letters per kind and the newest |
//! | `GET /api/dlq/{sequence}` | one dead letter whole |
//! | `POST /api/dlq/replay` | `{"sequences": [..]}` or `{"kind": k}`: replayed to the input |
//! | `GET /api/describe` | the states and broadcast maps |
//! | `GET /api/state?state=&key=&op=get\|map\|list&freshness=&as_of=` | keyed state of one key |
//! | `GET /api/broadcast?map=&start_after=&limit=&freshness=&as_of=` | a broadcast map's entries |

mod deploys;
pub mod sampler;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, Query as UrlQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::dlq;
use crate::config::PipelineConfig;
use crate::control::{CheckpointSummary, SavepointProgress};
use crate::query::{Freshness, Op, Query};
use crate::transport::{self, Nats};
use sampler::Samples;

/// The page, its script and its style.
const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// The largest plugin an upload may carry.
const MAX_UPLOAD: usize = 256 << 20;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Look only.
    Viewer,
    /// Look and act.
    Operator,
}

struct Console {
    cfg: PipelineConfig,
    nats: Nats,
    samples: Arc<Mutex<Samples>>,
    jobs: Mutex<BTreeMap<u64, Job>>,
    next_job: AtomicU64,
}

/// A savepoint being written for the console, followed by `GET /api/jobs/{id}`.
#[derive(Debug, Clone, Serialize)]
struct Job {
    id: u64,
    what: String,
    started_ms: u64,
    /// `running`, `done` or `failed`.
    state: &'static str,
    progress: Option<SavepointProgress>,
    result: Option<Value>,
    error: Option<String>,
}

/// An answer that is an error: `{"error": ..., "code": ...}` with that status.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.1, "code": self.0.as_u16() });
        (self.0, axum::Json(body)).into_response()
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        ApiError(StatusCode::BAD_GATEWAY, format!("{e:#}"))
    }
}

type ApiResult = Result<axum::Json<Value>, ApiError>;

type Ctx = State<Arc<Console>>;

/// Serves the console of the pipeline in `pipeline` on `listen` (or `console.listen`) until
/// the process ends. Prints where to open it.
pub async fn serve(pipeline: &Path, listen: Option<String>) -> anyhow::Result<()> {
    let cfg = PipelineConfig::load_remote(pipeline)?;
    let listen = listen.unwrap_or_else(|| cfg.console.listen.clone());
    let nats = transport::connect(&cfg.nats, "eddy-console").await?;
    let samples = Arc::new(Mutex::new(Samples::default()));
    tokio::spawn(sampler::run(
        nats.clone(),
        cfg.pipeline.name.clone(),
        samples.clone(),
    ));
    let open = cfg.console.token.is_none() && cfg.console.operator_token.is_none();
    let tls = match (&cfg.console.tls_cert, &cfg.console.tls_key) {
        (Some(cert), Some(key)) => Some(crate::web::tls(cert, key, "console")?),
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let console = Arc::new(Console {
        cfg,
        nats,
        samples,
        jobs: Mutex::new(BTreeMap::new()),
        next_job: AtomicU64::new(1),
    });
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (console.listen or --listen)"))?;
    let addr = listener.local_addr()?;
    if open && !addr.ip().is_loopback() {
        tracing::warn!(
            "the console on {addr} asks for no token: anyone who reaches it may deploy and replay; set console.token and console.operator_token"
        );
    }
    println!(
        "console of pipeline {} on {scheme}://{addr}/{}",
        console.cfg.pipeline.name,
        if open {
            ""
        } else {
            "  (sign in with console.token or console.operator_token)"
        }
    );
    crate::web::accept(listener, router(console), tls, "console").await;
    Ok(())
}

fn router(console: Arc<Console>) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { asset(INDEX_HTML, "text/html; charset=utf-8") }),
        )
        .route(
            "/app.js",
            get(|| async { asset(APP_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/app.css",
            get(|| async { asset(APP_CSS, "text/css; charset=utf-8") }),
        )
        .route("/api/whoami", get(whoami))
        .route("/api/overview", get(overview))
        .route("/api/checkpoints", get(checkpoints))
        .route("/api/checkpoint", post(take_checkpoint))
        .route("/api/savepoint", post(take_savepoint))
        .route("/api/jobs/{id}", get(job))
        .route("/api/deployments", get(deploys::deployments))
        .route(
            "/api/deploy",
            post(deploys::deploy).layer(DefaultBodyLimit::max(MAX_UPLOAD)),
        )
        .route("/api/rollback", post(deploys::rollback))
        .route("/api/shadow/{action}", post(deploys::shadow_action))
        .route("/api/dlq", get(dead_letters))
        .route("/api/dlq/replay", post(replay))
        .route("/api/dlq/{sequence}", get(dead_letter))
        .route("/api/describe", get(describe))
        .route("/api/state", get(state))
        .route("/api/broadcast", get(broadcast))
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such page or route".into()) })
        .with_state(console)
}

fn asset(body: &'static str, kind: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

impl Console {
    /// The role the request's token gives, or 401.
    fn role(&self, headers: &HeaderMap) -> Result<Role, ApiError> {
        let c = &self.cfg.console;
        if c.token.is_none() && c.operator_token.is_none() {
            return Ok(Role::Operator);
        }
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let matches = |want: &Option<String>| matches!((given, want), (Some(g), Some(w)) if constant_time_eq(g.as_bytes(), w.as_bytes()));
        if matches(&c.operator_token) {
            Ok(Role::Operator)
        } else if matches(&c.token) {
            Ok(Role::Viewer)
        } else {
            Err(ApiError(
                StatusCode::UNAUTHORIZED,
                "sign in with the console's token (console.token to look, console.operator_token to act)".into(),
            ))
        }
    }

    /// 403 unless the request may act.
    fn operator(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        match self.role(headers)? {
            Role::Operator => Ok(()),
            Role::Viewer => Err(ApiError(
                StatusCode::FORBIDDEN,
                "this token may look but not act; actions need console.operator_token".into(),
            )),
        }
    }

    fn live(&self) -> Vec<crate::control::HostStatus> {
        self.samples.lock().expect("samples").live()
    }
}

/// Compares without stopping at the first difference (a token's prefix is not revealed by
/// timing).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn whoami(State(c): Ctx, headers: HeaderMap) -> ApiResult {
    let role = c.role(&headers)?;
    Ok(axum::Json(json!({
        "pipeline": c.cfg.pipeline.name,
        "role": role,
        "nats": c.cfg.nats.url,
    })))
}

async fn overview(State(c): Ctx, headers: HeaderMap) -> ApiResult {
    c.role(&headers)?;
    let o = c
        .samples
        .lock()
        .expect("samples")
        .overview(&c.cfg.pipeline.name);
    Ok(axum::Json(serde_json::to_value(o).unwrap_or_default()))
}

async fn checkpoints(State(c): Ctx, headers: HeaderMap) -> ApiResult {
    c.role(&headers)?;
    let hosts: Vec<Value> = c
        .live()
        .into_iter()
        .map(|s| json!({ "host": s.host, "checkpoints": s.checkpoints }))
        .collect();
    let jobs: Vec<Job> = c.jobs.lock().expect("jobs").values().cloned().collect();
    Ok(axum::Json(json!({
        "hosts": hosts,
        "savepoints_here": super::checkpoints::savepoint_lines(&c.cfg),
        "jobs": jobs,
    })))
}

/// The hosts' answers to a control request, or the errors they gave.
async fn ask<T: serde::de::DeserializeOwned>(
    c: &Console,
    verb: &str,
    body: Value,
    timeout: Duration,
    on_progress: impl FnMut(SavepointProgress),
) -> anyhow::Result<Vec<T>> {
    super::hosts::ask_with(
        &c.nats,
        &c.cfg.pipeline.name,
        verb,
        body,
        timeout,
        on_progress,
    )
    .await
}

async fn take_checkpoint(State(c): Ctx, headers: HeaderMap) -> ApiResult {
    c.operator(&headers)?;
    let done: Vec<CheckpointSummary> = ask(
        &c,
        "checkpoint",
        json!({}),
        Duration::from_secs(120),
        |_| {},
    )
    .await?;
    Ok(axum::Json(json!({ "checkpoints": done })))
}

#[derive(Deserialize, Default)]
struct SavepointBody {
    #[serde(default)]
    name: Option<String>,
}

async fn take_savepoint(State(c): Ctx, headers: HeaderMap, body: Bytes) -> ApiResult {
    c.operator(&headers)?;
    let req: SavepointBody = if body.is_empty() {
        SavepointBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!("bad savepoint request: {e}"),
            )
        })?
    };
    let id = c.next_job.fetch_add(1, Ordering::Relaxed);
    let name = req
        .name
        .unwrap_or_else(|| format!("sp-{}", crate::checkpoint::now_ms()));
    c.jobs.lock().expect("jobs").insert(
        id,
        Job {
            id,
            what: format!("savepoint {name}"),
            started_ms: crate::checkpoint::now_ms(),
            state: "running",
            progress: None,
            result: None,
            error: None,
        },
    );
    let console = c.clone();
    tokio::spawn(async move {
        let progress_of = console.clone();
        let answers: anyhow::Result<Vec<Value>> = ask(
            &console,
            "savepoint",
            json!({ "name": name }),
            Duration::from_secs(3600),
            move |p| {
                if let Some(j) = progress_of.jobs.lock().expect("jobs").get_mut(&id) {
                    j.progress = Some(p);
                }
            },
        )
        .await;
        if let Some(j) = console.jobs.lock().expect("jobs").get_mut(&id) {
            match answers {
                Ok(a) => {
                    j.state = "done";
                    j.result = Some(Value::Array(a));
                }
                Err(e) => {
                    j.state = "failed";
                    j.error = Some(format!("{e:#}"));
                }
            }
        }
    });
    Ok(axum::Json(json!({ "job": id })))
}

async fn job(State(c): Ctx, headers: HeaderMap, UrlPath(id): UrlPath<u64>) -> ApiResult {
    c.role(&headers)?;
    let jobs = c.jobs.lock().expect("jobs");
    let j = jobs
        .get(&id)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no job {id}")))?;
    Ok(axum::Json(serde_json::to_value(j).unwrap_or_default()))
}

#[derive(Deserialize)]
struct DlqParams {
    kind: Option<String>,
    limit: Option<usize>,
}

/// A dead letter for the page: its headers, and its payload as text where it is.
fn letter(m: &super::tail::Stored, whole: bool) -> Value {
    use crate::pipeline::route::{HEADER_ERROR, HEADER_ERROR_KIND, HEADER_SOURCE_SUBJECT};
    let text = String::from_utf8_lossy(&m.payload);
    let payload: String = if whole {
        text.into_owned()
    } else {
        text.chars().take(200).collect()
    };
    json!({
        "sequence": m.sequence,
        "stored_ms": m.stored_us / 1_000,
        "kind": m.header(HEADER_ERROR_KIND),
        "error": m.header(HEADER_ERROR),
        "source": m.header(HEADER_SOURCE_SUBJECT),
        "size": m.payload.len(),
        "payload": payload,
        "headers": if whole { json!(m.headers) } else { Value::Null },
    })
}

async fn dead_letters(
    State(c): Ctx,
    headers: HeaderMap,
    UrlQuery(p): UrlQuery<DlqParams>,
) -> ApiResult {
    c.role(&headers)?;
    let limit = p.limit.unwrap_or(100).min(1_000);
    let kind = p.kind.filter(|k| !k.is_empty());
    let scan = dlq::scan(&c.cfg, limit, kind.as_deref()).await?;
    let letters: Vec<Value> = scan.recent.iter().rev().map(|m| letter(m, false)).collect();
    Ok(axum::Json(json!({
        "subject": c.cfg.dead_letter.subject,
        "kinds": scan.kinds,
        "letters": letters,
    })))
}

async fn dead_letter(State(c): Ctx, headers: HeaderMap, UrlPath(seq): UrlPath<u64>) -> ApiResult {
    c.role(&headers)?;
    let m = dlq::fetch(&c.cfg, seq)
        .await
        .map_err(|e| ApiError(StatusCode::NOT_FOUND, format!("{e:#}")))?;
    Ok(axum::Json(letter(&m, true)))
}

#[derive(Deserialize)]
struct ReplayBody {
    #[serde(default)]
    sequences: Option<Vec<u64>>,
    #[serde(default)]
    kind: Option<String>,
}

async fn replay(State(c): Ctx, headers: HeaderMap, body: Bytes) -> ApiResult {
    c.operator(&headers)?;
    let req: ReplayBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("send {{\"sequences\": [..]}} or {{\"kind\": \"..\"}} ({e})"),
        )
    })?;
    if req.sequences.is_none() && req.kind.is_none() {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "name the dead letters: {\"sequences\": [..]} or {\"kind\": \"..\"}".into(),
        ));
    }
    let filter = dlq::Filter {
        kind: req.kind,
        sequences: req.sequences.map(|s| s.into_iter().collect()),
        ..Default::default()
    };
    let done = dlq::replay(&c.cfg, &filter, false).await?;
    Ok(axum::Json(json!({
        "published": done.published,
        "duplicates": done.duplicates,
        "skipped": done.skipped.iter().map(|(s, why)| json!({"sequence": s, "why": why})).collect::<Vec<_>>(),
    })))
}

/// Asks the pipeline's query service; its errors keep their status.
async fn query(c: &Console, op: Op, q: Query) -> ApiResult {
    crate::query::nats::ask(&c.nats, &c.cfg.pipeline.name, op, &q)
        .await
        .map(axum::Json)
        .map_err(|e| {
            ApiError(
                StatusCode::from_u16(e.code()).unwrap_or(StatusCode::BAD_GATEWAY),
                e.to_string(),
            )
        })
}

async fn describe(State(c): Ctx, headers: HeaderMap) -> ApiResult {
    c.role(&headers)?;
    query(&c, Op::Describe, Query::default()).await
}

#[derive(Deserialize)]
struct StateParams {
    state: String,
    key: String,
    #[serde(default)]
    op: Option<String>,
    #[serde(default)]
    freshness: Freshness,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    as_of: Option<crate::query::AsOf>,
}

async fn state(State(c): Ctx, headers: HeaderMap, UrlQuery(p): UrlQuery<StateParams>) -> ApiResult {
    c.role(&headers)?;
    let op = match p.op.as_deref().unwrap_or("get") {
        "get" | "value" => Op::Get,
        "map" => Op::Map,
        "list" => Op::List,
        other => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!("op={other}: use get (a value state), map or list"),
            ));
        }
    };
    let q = Query {
        state: Some(p.state),
        key: Some(p.key),
        prefix: p.prefix,
        limit: p.limit,
        freshness: p.freshness,
        as_of: p.as_of,
        ..Default::default()
    };
    query(&c, op, q).await
}

#[derive(Deserialize)]
struct BroadcastParams {
    map: String,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    start_after: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    freshness: Freshness,
    #[serde(default)]
    as_of: Option<crate::query::AsOf>,
}

async fn broadcast(
    State(c): Ctx,
    headers: HeaderMap,
    UrlQuery(p): UrlQuery<BroadcastParams>,
) -> ApiResult {
    c.role(&headers)?;
    let q = Query {
        broadcast_map: Some(p.map),
        key: p.key.filter(|k| !k.is_empty()),
        start_after: p.start_after,
        limit: p.limit,
        freshness: p.freshness,
        as_of: p.as_of,
        ..Default::default()
    };
    query(&c, Op::Broadcast, q).await
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
