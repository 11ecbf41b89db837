//! The console's deployment actions: the versions each host runs and their history, uploads
//! (live or as shadow), promoting or discarding the shadow, and rolling back to a kept
//! version. Every action goes through the plugin bucket, as `eddy deploy` does.

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query as UrlQuery, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiResult, Console, Ctx};

pub(super) async fn deployments(State(c): Ctx, headers: HeaderMap) -> ApiResult {
    c.role(&headers)?;
    let hosts: Vec<Value> = c
        .live()
        .into_iter()
        .map(|s| {
            json!({
                "host": s.host,
                "plugin": s.plugin,
                "probation": s.probation,
                "shadow": s.shadow,
                "deployments": s.deployments,
            })
        })
        .collect();
    Ok(axum::Json(
        json!({ "hosts": hosts, "kept": kept_versions(&c).await }),
    ))
}

/// The versions of this pipeline the plugin bucket keeps: those a rollback can go back to (a
/// version a host loaded from its own file is not among them).
async fn kept_versions(c: &Console) -> Vec<String> {
    use futures::StreamExt;
    let prefix = crate::reload::record::versioned(&c.cfg.pipeline.name, "");
    let Ok(store) = c.nats.js.get_object_store(&c.cfg.reload.bucket).await else {
        return Vec::new();
    };
    let Ok(list) = store.list().await else {
        return Vec::new();
    };
    list.filter_map(|o| async move { o.ok() })
        .filter(|o| std::future::ready(!o.deleted))
        .filter_map(|o| {
            let v = o.name.strip_prefix(&prefix).map(str::to_string);
            async move { v }
        })
        .collect()
        .await
}

#[derive(Deserialize)]
pub(super) struct DeployParams {
    #[serde(default)]
    shadow: bool,
}

pub(super) async fn deploy(
    State(c): Ctx,
    headers: HeaderMap,
    UrlQuery(params): UrlQuery<DeployParams>,
    body: Bytes,
) -> ApiResult {
    c.operator(&headers)?;
    if body.is_empty() {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "the request carries no plugin: send the component's bytes as the body".into(),
        ));
    }
    // Refused here, not by every host in turn: what is not a component never reaches them.
    if !body.starts_with(b"\0asm") {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "this is not a WebAssembly component (no \\0asm header): upload the .wasm the plugin's build writes".into(),
        ));
    }
    let name = headers
        .get("x-eddy-file-name")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("an upload");
    let (nats, bucket, pipeline) = (&c.nats, &c.cfg.reload.bucket, &c.cfg.pipeline.name);
    let note = format!("deployed from the console ({name})");
    let version = if params.shadow {
        crate::reload::shadow::deploy(nats, bucket, pipeline, &body, &note).await?
    } else {
        crate::reload::deploy(nats, bucket, pipeline, &body, &note).await?
    };
    Ok(axum::Json(json!({ "version": version })))
}

/// `promote` or `discard` the shadow.
pub(super) async fn shadow_action(
    State(c): Ctx,
    headers: HeaderMap,
    UrlPath(action): UrlPath<String>,
) -> ApiResult {
    c.operator(&headers)?;
    let (nats, bucket, pipeline) = (&c.nats, &c.cfg.reload.bucket, &c.cfg.pipeline.name);
    let done = match action.as_str() {
        "promote" => {
            crate::reload::shadow::promote(nats, bucket, pipeline, "promoted from the console")
                .await
        }
        "discard" => crate::reload::shadow::discard(nats, bucket, pipeline).await,
        other => {
            return Err(ApiError(
                StatusCode::NOT_FOUND,
                format!("no shadow action `{other}`: use promote or discard"),
            ));
        }
    };
    let version = done.map_err(|e| ApiError(StatusCode::CONFLICT, format!("{e:#}")))?;
    Ok(axum::Json(json!({ "version": version })))
}

#[derive(Deserialize)]
pub(super) struct RollbackBody {
    version: String,
}

pub(super) async fn rollback(State(c): Ctx, headers: HeaderMap, body: Bytes) -> ApiResult {
    c.operator(&headers)?;
    let req: RollbackBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("send {{\"version\": \"<version>\"}} ({e})"),
        )
    })?;
    let bucket = &c.cfg.reload.bucket;
    let pipeline = &c.cfg.pipeline.name;
    let wasm = crate::reload::record::component(&c.nats, bucket, pipeline, &req.version)
        .await
        .ok_or_else(|| {
            ApiError(
                StatusCode::NOT_FOUND,
                format!(
                    "the plugin bucket `{bucket}` keeps no version {} of {pipeline}",
                    req.version
                ),
            )
        })?;
    let version = crate::reload::deploy(
        &c.nats,
        bucket,
        pipeline,
        &wasm,
        &format!("rolled back to {} from the console", req.version),
    )
    .await?;
    Ok(axum::Json(json!({ "version": version })))
}
