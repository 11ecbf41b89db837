//! Queryable state as a NATS service (`eddy-query`, discoverable with `$SRV.PING`).
//!
//! Subjects, for pipeline `P`, with a JSON [`Query`] as request and a JSON answer:
//!
//! - `eddy.query.P.<op>`: any host of the pipeline answers (queue group); a keyed query for a
//!   key it does not own is forwarded to the owner's partition endpoint;
//! - `eddy.query.P.p<N>.<op>`: the host that owns partition `N` answers (for clients that
//!   compute the partition themselves, see `query::QueryEngine::partition_of`).
//!
//! `<op>` is `get`, `map`, `list`, `broadcast`, `owner` or `describe`. An error answers with the
//! service error headers (`Nats-Service-Error`, `Nats-Service-Error-Code`: 400, 404, 500, 503)
//! and the body `{"error": "...", "code": N}`.

use std::sync::Arc;
use std::time::Duration;

use async_nats::service::{self, ServiceExt};
use bytes::Bytes;
use futures::StreamExt;

use super::{Freshness, Op, Query, QueryEngine, QueryError};
use crate::transport::Nats;

/// The service's subject prefix for pipeline `pipeline`.
pub fn prefix(pipeline: &str) -> String {
    format!("eddy.query.{pipeline}")
}

/// The running service; [`QueryService::stop`] ends it (and releases the state it reads).
pub struct QueryService {
    service: service::Service,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl QueryService {
    /// Stops answering.
    pub async fn stop(self) {
        let _ = self.service.stop().await;
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
    }
}

/// Starts the service; it runs until [`QueryService::stop`].
pub async fn serve(nats: &Nats, engine: Arc<QueryEngine>) -> anyhow::Result<QueryService> {
    let pipeline = engine.pipeline().to_string();
    let service = nats
        .client
        .service_builder()
        .description(format!("Eddy queryable state of pipeline {pipeline}"))
        .start("eddy-query", env!("CARGO_PKG_VERSION"))
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the query service: {e}"))?;
    let group = service.group(prefix(&pipeline));
    let mut tasks = Vec::new();
    for op in Op::ALL {
        let endpoint = group
            .endpoint(op.name())
            .await
            .map_err(|e| anyhow::anyhow!("query endpoint {}: {e}", op.name()))?;
        tasks.push(spawn_endpoint(
            endpoint,
            op,
            engine.clone(),
            nats.clone(),
            true,
        ));
    }
    for p in engine.owned().to_vec() {
        let part =
            service.group_with_queue_group(format!("{}.p{p}", prefix(&pipeline)), format!("p{p}"));
        for op in Op::ALL.into_iter().filter(|o| o.keyed()) {
            let endpoint = part
                .endpoint(op.name())
                .await
                .map_err(|e| anyhow::anyhow!("query endpoint p{p}.{}: {e}", op.name()))?;
            tasks.push(spawn_endpoint(
                endpoint,
                op,
                engine.clone(),
                nats.clone(),
                false,
            ));
        }
    }
    Ok(QueryService { service, tasks })
}

fn spawn_endpoint(
    mut endpoint: service::endpoint::Endpoint,
    op: Op,
    engine: Arc<QueryEngine>,
    nats: Nats,
    route: bool,
) -> tokio::task::JoinHandle<()> {
    // A point read on a host that owns every partition never waits on anything: answered
    // here, without a task per request (a spawn and, often, a wake-up of another thread).
    // Everything else may wait (a forward, a page off the runtime): a task each.
    let inline = matches!(op, Op::Get | Op::Owner | Op::Describe) && engine.owns_all();
    tokio::spawn(async move {
        while let Some(request) = endpoint.next().await {
            let (engine, nats) = (engine.clone(), nats.clone());
            let respond = async move {
                let answer = answer(&engine, &nats, op, &request.message.payload, route).await;
                let response = match answer {
                    Ok(v) => Ok(Bytes::from(serde_json::to_vec(&v).unwrap_or_default())),
                    Err(e) => Err(service::error::Error {
                        status: e.message().to_string(),
                        code: e.code() as usize,
                    }),
                };
                let body_on_error = response.as_ref().err().map(|e| {
                    Bytes::from(
                        serde_json::to_vec(&serde_json::json!({"error": e.status, "code": e.code}))
                            .unwrap_or_default(),
                    )
                });
                match (response, body_on_error) {
                    (Ok(b), _) => {
                        let _ = request.respond(Ok(b)).await;
                    }
                    (Err(e), Some(body)) => {
                        // The error headers, and a body that says the same for clients that
                        // read only bodies.
                        let mut headers = async_nats::HeaderMap::new();
                        headers.insert("Nats-Service-Error", e.status.as_str());
                        headers.insert("Nats-Service-Error-Code", e.code.to_string().as_str());
                        if let Some(reply) = request.message.reply.clone() {
                            let _ = nats.client.publish_with_headers(reply, headers, body).await;
                        }
                    }
                    (Err(_), None) => {}
                }
            };
            if inline {
                respond.await;
            } else {
                tokio::spawn(respond);
            }
        }
    })
}

/// Answers one request, forwarding keyed queries for keys owned elsewhere when `route`.
pub(crate) async fn answer(
    engine: &Arc<QueryEngine>,
    nats: &Nats,
    op: Op,
    payload: &[u8],
    route: bool,
) -> Result<serde_json::Value, QueryError> {
    let q: Query = if payload.is_empty() {
        Query::default()
    } else {
        serde_json::from_slice(payload)
            .map_err(|e| QueryError::BadRequest(format!("the request is not a valid query: {e}")))?
    };
    if op.keyed()
        && let Some(key) = QueryEngine::key_of(&q)?
        && !engine.owns(&key)
    {
        if !route {
            return Err(QueryError::NotFound(format!(
                "this host does not own partition {} of that key",
                engine.partition_of(&key)
            )));
        }
        return forward(nats, engine, op, &key, payload).await;
    }
    // A point read (`get`, `owner`, one broadcast entry) of the live state takes
    // microseconds: answered in place. Pages and lists may read many entries, and `as_of` or
    // `checkpoint` freshness may open a checkpoint: on the blocking pool, off the runtime.
    if matches!(op, Op::Get | Op::Owner | Op::Describe)
        && q.as_of.is_none()
        && q.freshness == Freshness::Latest
    {
        return engine.execute(op, &q);
    }
    let engine = engine.clone();
    tokio::task::spawn_blocking(move || engine.execute(op, &q))
        .await
        .map_err(|e| QueryError::Internal(format!("query task failed: {e}")))?
}

/// A query answer as received: the value, or the error its body carries.
fn decode_reply(payload: &[u8], from: &str) -> Result<serde_json::Value, QueryError> {
    let v: serde_json::Value = serde_json::from_slice(payload)
        .map_err(|e| QueryError::Internal(format!("unreadable answer from {from}: {e}")))?;
    if let Some(err) = v.get("error").and_then(|e| e.as_str()) {
        let code = v.get("code").and_then(|c| c.as_u64()).unwrap_or(500);
        return Err(match code {
            400 => QueryError::BadRequest(err.to_string()),
            404 => QueryError::NotFound(err.to_string()),
            503 => QueryError::Unavailable(err.to_string()),
            _ => QueryError::Internal(err.to_string()),
        });
    }
    Ok(v)
}

/// Asks the owner of `key` over NATS.
pub(crate) async fn forward(
    nats: &Nats,
    engine: &QueryEngine,
    op: Op,
    key: &[u8],
    payload: &[u8],
) -> Result<serde_json::Value, QueryError> {
    let p = engine.partition_of(key);
    let subject = format!("{}.p{p}.{}", prefix(engine.pipeline()), op.name());
    let reply = tokio::time::timeout(
        Duration::from_secs(5),
        nats.client
            .request(subject.clone(), Bytes::copy_from_slice(payload)),
    )
    .await
    .map_err(|_| {
        QueryError::Unavailable(format!("the owner of partition {p} did not answer in 5 s"))
    })?
    .map_err(|e| {
        QueryError::Unavailable(format!("no host serves partition {p} ({subject}): {e}"))
    })?;
    decode_reply(&reply.payload, &format!("partition {p}"))
}

/// Asks the service (as a client: the CLI, tests): one answer or the error it carries.
pub async fn ask(
    nats: &Nats,
    pipeline: &str,
    op: Op,
    query: &Query,
) -> Result<serde_json::Value, QueryError> {
    let subject = format!("{}.{}", prefix(pipeline), op.name());
    let body = serde_json::to_vec(query).map_err(|e| QueryError::BadRequest(e.to_string()))?;
    let reply = tokio::time::timeout(Duration::from_secs(10), nats.client.request(subject, body.into()))
        .await
        .map_err(|_| QueryError::Unavailable("no answer in 10 s".into()))?
        .map_err(|e| {
            QueryError::Unavailable(format!(
                "no host serves queries of pipeline {pipeline}: {e} (is it running, with query.nats on?)"
            ))
        })?;
    decode_reply(&reply.payload, "the query service")
}
