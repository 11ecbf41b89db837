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
//! Every route takes `freshness=latest|checkpoint`. With `query.token` set, a request must carry
//! `Authorization: Bearer <token>` (401 otherwise). Keys owned by another host are fetched from
//! it over NATS. Errors answer `{"error": "...", "code": N}` with that status.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query as UrlQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use super::{Freshness, Op, Query, QueryEngine, QueryError};
use crate::transport::Nats;

#[derive(Clone)]
struct Ctx {
    engine: Arc<QueryEngine>,
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
}

/// Serves the routes on `listen` until the task is dropped.
pub async fn serve(
    listen: &str,
    engine: Arc<QueryEngine>,
    nats: Option<Nats>,
    token: Option<String>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let ctx = Ctx {
        engine,
        nats,
        token: token.map(Into::into),
    };
    let app = Router::new()
        .route("/v1/state/{state}/{key}", get(value))
        .route("/v1/state/{state}/{key}/map", get(map))
        .route("/v1/state/{state}/{key}/list", get(list))
        .route("/v1/broadcast/{map}", get(broadcast_all))
        .route("/v1/broadcast/{map}/{key}", get(broadcast_one))
        .route("/v1/owner/{key}", get(owner))
        .route("/v1/describe", get(describe))
        .with_state(ctx);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot serve queries on {listen}: {e}; change query.http"))?;
    tracing::info!(%listen, "queryable state at http://{listen}/v1/");
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("query HTTP server stopped: {e}");
        }
    }))
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
    given == Some(token.as_ref())
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
    let result = match (&ctx.nats, key) {
        (Some(nats), Some(key)) if op.keyed() && !ctx.engine.owns(&key) => {
            match serde_json::to_vec(&q) {
                Ok(body) => super::nats::forward(nats, &ctx.engine, op, &key, &body).await,
                Err(e) => Err(QueryError::Internal(e.to_string())),
            }
        }
        _ => {
            let engine = ctx.engine.clone();
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
