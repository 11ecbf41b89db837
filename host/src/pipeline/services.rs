//! The services a running pipeline offers beside its loop: queries over NATS and HTTP,
//! control requests, and the watcher that brings new plugin versions. Started after the
//! checks, stopped before the state closes.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::PipelineConfig;
use crate::control::Command;
use crate::query::QueryEngine;
use crate::reload::{self, ReloadEvent, Validator};
use crate::state::StateStore;
use crate::transport::{self, Nats};

pub(super) struct Services {
    pub(super) query: Arc<QueryEngine>,
    query_service: Option<crate::query::nats::QueryService>,
    tasks: Vec<JoinHandle<()>>,
}

impl Services {
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn start(
        cfg: &Arc<PipelineConfig>,
        nats: &Nats,
        state: &Arc<StateStore>,
        control_tx: mpsc::Sender<Command>,
        validator: Arc<Validator>,
        running_version: String,
        reload_tx: mpsc::Sender<ReloadEvent>,
        fence: Option<Arc<dyn super::Fence>>,
        caught_up: Arc<std::sync::atomic::AtomicBool>,
        checkpoints: Arc<crate::checkpoint::Checkpoints>,
    ) -> anyhow::Result<Services> {
        let history = crate::query::TimeTravel::new(
            checkpoints,
            cfg.pipeline.state_dir.join("as-of"),
            state.clock(),
        );
        let mut query = QueryEngine::new(cfg, state.clone())
            .with_history(history)
            .with_catch_up(caught_up);
        if let Some(fence) = fence {
            query = query.with_lease_check(Arc::new(move || fence.check()));
        }
        let query = Arc::new(query);
        let mut tasks = Vec::new();
        let query_service = if cfg.query.nats {
            // Its own connection: answers do not queue behind the pipeline's outputs in one
            // connection's write buffer, nor the outputs behind them.
            let conn =
                transport::connect(&cfg.nats, &format!("eddy:{}:query", cfg.pipeline.name)).await?;
            Some(crate::query::nats::serve(&conn, query.clone()).await?)
        } else {
            None
        };
        if let Some(listen) = &cfg.query.http {
            tasks.push(
                crate::query::http::serve(
                    listen,
                    &cfg.query,
                    crate::query::http::Source::Local(query.clone()),
                    Some(nats.clone()),
                )
                .await?,
            );
        }
        tasks.push(crate::control::serve(nats, &cfg.pipeline.name, control_tx).await?);
        if let Some(t) = reload::watch(
            cfg.clone(),
            nats.clone(),
            validator,
            running_version,
            reload_tx,
        )
        .await?
        {
            tasks.push(t);
        }
        Ok(Services {
            query,
            query_service,
            tasks,
        })
    }

    pub(super) async fn stop(self) {
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
        if let Some(s) = self.query_service {
            s.stop().await;
        }
    }
}
