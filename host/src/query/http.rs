//! Queryable state over HTTP, with the same operations and answers as the NATS service.
//!
//! Routes (all `GET`, JSON answers; query parameters as in [`Query`]):
//!
//! | route | operation |
//! | --- | --- |
//! | `/v1/state/{state}/{key}` | value state |
//! | `/v1/state/{state}/{key}/map?prefix=&start_after=&limit=` | map state entries |
//! | `/v1/state/{state}/{key}/list` | list state |
//! | `/v1/broadcast/{map}/{key}` | one broadcast entry |
//! | `/v1/broadcast/{map}?start_after=&limit=` | broadcast entries |
//! | `/v1/owner/{key}` | partition and ownership of a key |
//! | `/v1/describe` | the states and maps |
//!
//! Every route takes `freshness=latest|checkpoint`, or `as_of=<checkpoint id|RFC 3339 time|
//! duration ago>` for the state as of a retained checkpoint. With `query.token` set, a request must carry
//! `Authorization: Bearer <token>` (401 otherwise). Keys owned by another host are fetched from
//! it over NATS; a cluster host ([`Source::Cluster`]), whose partitions come and go, asks the
//! pipeline's query service over NATS for every answer. Errors answer `{"error": "...", "code": N}` with that status (bad parameters,
//! unknown routes and methods included).
//!
//! With `query.tls_cert` and `tls_key` it serves HTTPS. Connections are served under the
//! limits of [`crate::web`]: no client can take the host down.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query as UrlQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use super::{Freshness, Op, Query, QueryEngine, QueryError};
use crate::transport::Nats;

/// Where the answers come from.
#[derive(Clone)]
pub enum Source {
    /// This run's state; keys owned elsewhere are fetched from their owner over NATS.
    Local(Arc<QueryEngine>),
    /// The pipeline's query service over NATS, which routes each key to the current owner of
    /// its partition (a cluster host).
    Cluster {
        /// The pipeline's name.
        pipeline: String,
    },
}

#[derive(Clone)]
struct Ctx {
    source: Source,
    nats: Option<Nats>,
    token: Option<Arc<str>>,
}

/// URL query parameters.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    #[serde(default)]
    freshness: Freshness,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    start_after: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    as_of: Option<super::AsOf>,
}

/// Serves the routes on `listen` (HTTPS with `query.tls_cert`) until the task is dropped.
pub async fn serve(
    listen: &str,
    cfg: &crate::config::QueryConfig,
    source: Source,
    nats: Option<Nats>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let tls = match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(cert), Some(key)) => Some(crate::web::tls(cert, key, "query")?),
        _ => None,
    };
    let ctx = Ctx {
        source,
        nats,
        token: cfg.token.clone().map(Into::into),
    };
    let app = Router::new()
        .route("/v1/state/{state}/{key}", get(value))
        .route("/v1/state/{state}/{key}/map", get(map))
        .route("/v1/state/{state}/{key}/list", get(list))
        .route("/v1/broadcast/{map}", get(broadcast_all))
        .route("/v1/broadcast/{map}/{key}", get(broadcast_one))
        .route("/v1/owner/{key}", get(owner))
        .route("/v1/describe", get(describe))
        .fallback(not_found)
        .layer(axum::middleware::map_response(as_json_error))
        .with_state(ctx);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot serve queries on {listen}: {e}; change query.http"))?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(%listen, "queryable state at {scheme}://{listen}/v1/");
    Ok(tokio::spawn(crate::web::accept(
        listener,
        app,
        tls,
        "query endpoint",
    )))
}

async fn not_found() -> Response {
    error(QueryError::NotFound(
        "no such route; see /v1/describe and the routes in docs/OPERATIONS.md".into(),
    ))
}

/// Error answers that are not yet the documented JSON (axum's own, for a bad parameter or a
/// method other than GET) become `{"error": <their text>, "code": N}`.
async fn as_json_error(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let text = match axum::body::to_bytes(response.into_body(), 64 * 1024).await {
        Ok(b) if !b.is_empty() => String::from_utf8_lossy(&b).into_owned(),
        _ => status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_string(),
    };
    let text = if status == StatusCode::METHOD_NOT_ALLOWED {
        format!("{text}: every route answers GET only")
    } else {
        text
    };
    (
        status,
        axum::Json(serde_json::json!({ "error": text, "code": status.as_u16() })),
    )
        .into_response()
}

fn error(e: QueryError) -> Response {
    let status = StatusCode::from_u16(e.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        axum::Json(serde_json::json!({ "error": e.message(), "code": e.code() })),
    )
        .into_response()
}

/// Whether the request carries the configured bearer token (or none is configured).
fn authorised(ctx: &Ctx, headers: &HeaderMap) -> bool {
    let Some(token) = &ctx.token else {
        return true;
    };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    given.is_some_and(|g| same_secret(g.as_bytes(), token.as_bytes()))
}

/// Compares a given secret with the expected one in time that depends only on their lengths,
/// so response times do not reveal how much of a guess was right.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = given.len() ^ expected.len();
    for (i, e) in expected.iter().enumerate() {
        diff |= usize::from(given.get(i).copied().unwrap_or(!e) ^ e);
    }
    diff == 0
}

async fn run(ctx: Ctx, headers: HeaderMap, op: Op, q: Query) -> Response {
    if !authorised(&ctx, &headers) {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(serde_json::json!({
                "error": "missing or wrong bearer token: send Authorization: Bearer <query.token>",
                "code": 401
            })),
        )
            .into_response();
    }
    let key = match QueryEngine::key_of(&q) {
        Ok(k) => k,
        Err(e) => return error(e),
    };
    let result = match (&ctx.source, &ctx.nats, key) {
        (Source::Cluster { pipeline }, Some(nats), _) => {
            super::nats::ask(nats, pipeline, op, &q).await
        }
        (Source::Cluster { .. }, None, _) => Err(QueryError::Internal(
            "a cluster host answers queries over NATS, and has no connection".into(),
        )),
        (Source::Local(engine), Some(nats), Some(key)) if op.keyed() && !engine.owns(&key) => {
            match serde_json::to_vec(&q) {
                Ok(body) => super::nats::forward(nats, engine, op, &key, &body).await,
                Err(e) => Err(QueryError::Internal(e.to_string())),
            }
        }
        (Source::Local(engine), _, _) => {
            let engine = engine.clone();
            tokio::task::spawn_blocking(move || engine.execute(op, &q))
                .await
                .unwrap_or_else(|e| Err(QueryError::Internal(e.to_string())))
        }
    };
    match result {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => error(e),
    }
}

fn query(p: Params) -> Query {
    Query {
        freshness: p.freshness,
        prefix: p.prefix,
        start_after: p.start_after,
        limit: p.limit,
        as_of: p.as_of,
        ..Query::default()
    }
}

/// A keyed-state route (`get`, `map` or `list`).
async fn keyed(
    op: Op,
    ctx: Ctx,
    headers: HeaderMap,
    (state, key): (String, String),
    p: Params,
) -> Response {
    let q = Query {
        state: Some(state),
        key: Some(key),
        ..query(p)
    };
    run(ctx, headers, op, q).await
}

async fn value(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Path(path): Path<(String, String)>,
    UrlQuery(p): UrlQuery<Params>,
) -> Response {
    keyed(Op::Get, ctx, headers, path, p).await
}

async fn map(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Path(path): Path<(String, String)>,
    UrlQuery(p): UrlQuery<Params>,
) -> Response {
    keyed(Op::Map, ctx, headers, path, p).await
}

async fn list(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Path(path): Path<(String, String)>,
    UrlQuery(p): UrlQuery<Params>,
) -> Response {
    keyed(Op::List, ctx, headers, path, p).await
}

async fn broadcast_one(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Path((name, key)): Path<(String, String)>,
    UrlQuery(p): UrlQuery<Params>,
) -> Response {
    let q = Query {
        broadcast_map: Some(name),
        key: Some(key),
        ..query(p)
    };
    run(ctx, headers, Op::Broadcast, q).await
}

async fn broadcast_all(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Path(name): Path<String>,
    UrlQuery(p): UrlQuery<Params>,
) -> Response {
    let q = Query {
        broadcast_map: Some(name),
        ..query(p)
    };
    run(ctx, headers, Op::Broadcast, q).await
}

async fn owner(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Path(key): Path<String>,
    UrlQuery(p): UrlQuery<Params>,
) -> Response {
    let q = Query {
        key: Some(key),
        ..query(p)
    };
    run(ctx, headers, Op::Owner, q).await
}

async fn describe(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    UrlQuery(p): UrlQuery<Params>,
) -> Response {
    run(ctx, headers, Op::Describe, query(p)).await
}
