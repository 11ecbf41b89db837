//! `eddy state …`: reads live state from the running hosts (the queryable state service);
//! `load` and `export` (in `bulk`) work on savepoints without them.

use super::{KindArg, StateAction};
use crate::checkpoint::savepoint::bulk::Target;
use crate::config::PipelineConfig;
use crate::query::{self, Freshness, Op, Query};
use crate::state::StateKind;
use crate::transport;

/// `eddy state get|broadcast|owner`.
pub async fn command(action: StateAction) -> anyhow::Result<()> {
    let (pipeline, op, q) = match action {
        StateAction::Load {
            pipeline,
            file,
            state,
            kind,
            map,
            format,
            on_error,
            to,
            into,
        } => {
            let target = match (state, map) {
                (Some(name), _) => Target::State {
                    name,
                    kind: match kind {
                        KindArg::Value => StateKind::Value,
                        KindArg::Map => StateKind::Map,
                        KindArg::List => StateKind::List,
                    },
                },
                (None, Some(name)) => Target::Map(name),
                (None, None) => anyhow::bail!("name a state (--state) or a broadcast map (--map)"),
            };
            return tokio::task::spawn_blocking(move || {
                super::bulk::load(&pipeline, &file, target, format, on_error, to, into)
            })
            .await?;
        }
        StateAction::Export {
            savepoint,
            state,
            map,
            format,
            out,
        } => {
            return tokio::task::spawn_blocking(move || {
                super::bulk::export(&savepoint, state, map, format, out)
            })
            .await?;
        }
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
