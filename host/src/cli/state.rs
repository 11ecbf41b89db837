//! `eddy state …`: reads live state from the running hosts (the queryable state service).

use super::StateAction;
use crate::config::PipelineConfig;
use crate::query::{self, Freshness, Op, Query};
use crate::transport;

/// `eddy state get|broadcast|owner`.
pub async fn command(action: StateAction) -> anyhow::Result<()> {
    let (pipeline, op, q) = match action {
        StateAction::Get {
            pipeline,
            state,
            key,
            map,
            list,
            prefix,
            checkpoint,
            as_of,
        } => {
            let op = if map {
                Op::Map
            } else if list {
                Op::List
            } else {
                Op::Get
            };
            let q = Query {
                state: Some(state),
                key: Some(key),
                prefix,
                freshness: if checkpoint {
                    Freshness::Checkpoint
                } else {
                    Freshness::Latest
                },
                as_of,
                ..Query::default()
            };
            (pipeline, op, q)
        }
        StateAction::Broadcast {
            pipeline,
            map,
            key,
            as_of,
        } => (
            pipeline,
            Op::Broadcast,
            Query {
                broadcast_map: Some(map),
                key,
                as_of,
                ..Query::default()
            },
        ),
        StateAction::Owner { pipeline, key } => (
            pipeline,
            Op::Owner,
            Query {
                key: Some(key),
                ..Query::default()
            },
        ),
    };
    let cfg = PipelineConfig::load_remote(&pipeline)?;
    let nats = transport::connect(&cfg.nats, "eddy-state").await?;
    let answer = query::nats::ask(&nats, &cfg.pipeline.name, op, &q)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(())
}
