//! Hot reload from the run loop's side: swapping a new plugin version in between two batches,
//! its probation (writes held in an overlay, outputs held back), and the rollback that hands
//! what it handled to the previous version.
//!
//! Owns the deployment history (remembered in NATS for restarts when versions come from the
//! plugin bucket: `reload::record`), the version on probation and the one waiting behind it
//! ([`Reloading`]).
//!
//! Never: publishes an output or commits a write of a version still on probation.

use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::mpsc;

use super::Runner;
use crate::engine::Plugin;
use crate::pipeline::plan;
use crate::pipeline::window::Released;
use crate::reload::{
    Candidate, DeployStatus, Deployment, History, Judgement, Probation, ReloadEvent, record,
};
use crate::transport::Nats;
use crate::transport::publisher::OutMessage;

/// New versions arriving, the one on probation, and what happened to each.
pub(in crate::pipeline) struct Reloading {
    rx: mpsc::Receiver<ReloadEvent>,
    pub(super) history: History,
    pub(super) probation: Option<OnProbation>,
    /// A version that arrived during another's probation: swapped in after it.
    next: Option<Box<Candidate>>,
    /// Where the history is remembered: NATS, the plugin bucket, the pipeline.
    keep: Option<(Nats, String, String)>,
}

/// A new version on probation.
pub(super) struct OnProbation {
    pub(super) previous: Plugin,
    pub(super) rule: Probation,
    /// Outputs held until it passes.
    outputs: Vec<OutMessage>,
    /// What it handled, to hand to the previous version if it fails.
    groups: Vec<Released>,
}

impl Reloading {
    /// `keep`: where to remember the history (NATS, plugin bucket, pipeline), if anywhere.
    pub(in crate::pipeline) fn new(
        rx: mpsc::Receiver<ReloadEvent>,
        history: History,
        keep: Option<(Nats, String, String)>,
    ) -> Self {
        Reloading {
            rx,
            history,
            probation: None,
            next: None,
            keep,
        }
    }

    /// The version waiting for the current probation to end, if one is.
    pub(super) fn waiting_version(&self) -> Option<&str> {
        self.next.as_ref().map(|c| c.plugin.version())
    }

    /// Whether a version is on probation.
    pub(super) fn on_probation(&self) -> bool {
        self.probation.is_some()
    }

    /// The next reload event (pending forever once the watcher is gone).
    pub(super) async fn next_event(&mut self) -> Option<ReloadEvent> {
        self.rx.recv().await
    }
}

impl Runner {
    /// Remembers the history for restarts (a failure is logged: the run goes on).
    pub(super) async fn remember(&mut self) {
        if let Some((nats, bucket, pipeline)) = &self.reloading.keep {
            record::save(nats, bucket, pipeline, &self.reloading.history).await;
        }
    }

    /// Records a version that cannot run.
    async fn rejected(&mut self, version: String, source: String, reason: String) {
        self.metrics
            .reload_rejections
            .fetch_add(1, Ordering::Relaxed);
        self.reloading.history.push(Deployment {
            version,
            source,
            at_ms: crate::checkpoint::now_ms(),
            status: DeployStatus::Rejected,
            reason: Some(reason),
            swap_pause_us: None,
        });
        self.remember().await;
    }

    pub(super) async fn reload(&mut self, ev: ReloadEvent) -> anyhow::Result<()> {
        match ev {
            ReloadEvent::Rejected {
                version,
                source,
                reason,
            } => {
                self.rejected(version, source, reason).await;
                Ok(())
            }
            ReloadEvent::Shadow(c) => self.shadow_declared(c).await,
            ReloadEvent::ShadowGone => {
                self.shadow_gone().await;
                Ok(())
            }
            ReloadEvent::Ready(c) => {
                if self.reloading.on_probation() {
                    // The newest version waits for the current probation to end.
                    self.reloading.next = Some(c);
                    Ok(())
                } else {
                    self.swap_in(*c).await
                }
            }
        }
    }

    /// Runs a group handled while a version is on probation: its outputs are held, and the
    /// probation rule is told how it went.
    pub(super) async fn process_on_probation(&mut self, group: Released) -> anyhow::Result<()> {
        let kept = group.clone();
        let run = self.run_group(group).await?;
        let Some(p) = self.reloading.probation.as_mut() else {
            return Ok(());
        };
        p.outputs.extend(run.out.into_vec());
        p.groups.push(kept);
        let judgement = p.rule.record(run.handed, run.failed);
        self.apply_judgement(judgement).await
    }

    /// Swaps `c` in at this batch boundary, runs its `migrate`, and starts its probation.
    async fn swap_in(&mut self, c: Candidate) -> anyhow::Result<()> {
        if self.is_shadow(c.plugin.version()) {
            // Deploying the shadow's version as live promotes it, state and all: it has run
            // beside the live version on every event, so it needs no probation.
            return self.promote_shadow(c.source).await;
        }
        let started = Instant::now();
        let Candidate {
            plugin,
            instance,
            planner,
            source,
            state,
        } = c;
        let version = plugin.version().to_string();
        // Validated on a state that is no longer the live one (a shadow was promoted since):
        // made again on the live state.
        let (instance, planner) = if std::sync::Arc::ptr_eq(&state, &self.state) {
            (instance, planner)
        } else {
            drop((instance, planner, state));
            let p = plugin.clone();
            let cfg = self.cfg.clone();
            let remade = self
                .on_worker(move |w| {
                    let (ctx, config) = (w.context(), w.config_json());
                    let instance = p.instantiate(ctx, config)?;
                    let planner = plan::planner(&p, ctx, config, &cfg)?;
                    anyhow::Ok((instance, planner))
                })
                .await?;
            match remade {
                Ok(made) => made,
                Err(e) => {
                    self.rejected(version, source, format!("{e:#}")).await;
                    return Ok(());
                }
            }
        };
        let (previous, migrated) = self
            .on_worker(move |worker| {
                let previous = worker.swap(plugin, instance);
                worker.hold();
                let r = worker.migrate(previous.version());
                (previous, r)
            })
            .await?;
        let pause = started.elapsed();
        self.metrics.swap_pause_seconds.observe(pause.as_secs_f64());
        let refused = match migrated? {
            Ok(()) => None,
            Err(msg) => Some(format!("migrate refused: {msg}")),
        };
        if let Some(reason) = refused {
            self.reloading.history.push(Deployment {
                version: version.clone(),
                source,
                at_ms: crate::checkpoint::now_ms(),
                status: DeployStatus::Rejected,
                reason: Some(reason.clone()),
                swap_pause_us: Some(pause.as_micros() as u64),
            });
            self.metrics
                .reload_rejections
                .fetch_add(1, Ordering::Relaxed);
            self.go_back(previous).await?;
            self.remember().await;
            tracing::warn!(%version, "new plugin version rejected: {reason}");
            return Ok(());
        }
        if self.lookups.is_some() {
            self.planner = planner;
        }
        self.metrics.reloads.fetch_add(1, Ordering::Relaxed);
        self.reloading.history.push(Deployment {
            version: version.clone(),
            source,
            at_ms: crate::checkpoint::now_ms(),
            status: DeployStatus::Probation,
            reason: None,
            swap_pause_us: Some(pause.as_micros() as u64),
        });
        self.remember().await;
        tracing::info!(
            %version,
            previous = previous.version(),
            pause_us = pause.as_micros() as u64,
            "plugin swapped; on probation"
        );
        self.reloading.probation = Some(OnProbation {
            previous,
            rule: Probation::new(&self.cfg.reload),
            outputs: Vec::new(),
            groups: Vec::new(),
        });
        Ok(())
    }

    /// Drops the held writes and puts `previous` back (a fresh instance of it).
    async fn go_back(&mut self, previous: Plugin) -> anyhow::Result<()> {
        let cfg = self.cfg.clone();
        let restored = self
            .on_worker(move |worker| {
                worker.discard();
                let (ctx, config) = (worker.context().clone(), worker.config_json().to_string());
                let instance = previous.instantiate(&ctx, &config)?;
                let planner = plan::planner(&previous, &ctx, &config, &cfg).ok().flatten();
                worker.swap(previous, instance);
                anyhow::Ok(planner)
            })
            .await?;
        let planner = restored
            .map_err(|e| e.context("the previous plugin version cannot be instantiated again"))?;
        if self.lookups.is_some() {
            self.planner = planner;
        }
        Ok(())
    }

    /// Ends probation when its time is up (or, with `now`, at once).
    pub(super) async fn judge_probation(&mut self, now: bool) -> anyhow::Result<()> {
        let Some(p) = &self.reloading.probation else {
            return Ok(());
        };
        let judgement = match p.rule.judge() {
            Judgement::Pending if now => {
                if p.rule.events > 0 && p.rule.failures * 2 > p.rule.events {
                    Judgement::Fail("most of its events failed before the host stopped".into())
                } else {
                    Judgement::Pass
                }
            }
            j => j,
        };
        self.apply_judgement(judgement).await
    }

    async fn apply_judgement(&mut self, judgement: Judgement) -> anyhow::Result<()> {
        match judgement {
            Judgement::Pending => Ok(()),
            Judgement::Pass => {
                let Some(p) = self.reloading.probation.take() else {
                    return Ok(());
                };
                if let Some(w) = self.worker.as_mut() {
                    w.release()?;
                    let version = w.plugin().version().to_string();
                    self.reloading
                        .history
                        .set(&version, DeployStatus::Live, None);
                    tracing::info!(%version, events = p.rule.events, failures = p.rule.failures, "plugin passed probation");
                }
                self.remember().await;
                self.publish(p.outputs.into()).await?;
                self.next_swap().await
            }
            Judgement::Fail(reason) => {
                let Some(p) = self.reloading.probation.take() else {
                    return Ok(());
                };
                let bad = self
                    .worker
                    .as_ref()
                    .map(|w| w.plugin().version().to_string())
                    .unwrap_or_default();
                tracing::warn!(
                    version = %bad,
                    previous = p.previous.version(),
                    "plugin rolled back: {reason}"
                );
                self.metrics.rollbacks.fetch_add(1, Ordering::Relaxed);
                self.reloading
                    .history
                    .set(&bad, DeployStatus::RolledBack, Some(reason));
                let previous_version = p.previous.version().to_string();
                self.go_back(p.previous).await?;
                self.reloading
                    .history
                    .set(&previous_version, DeployStatus::Live, None);
                self.remember().await;
                // What the bad version handled is handled again by the previous one: its
                // outputs and writes were never published or committed. A shadow has handled
                // those events already, and is left out.
                let shadow = self.shadowing.set_aside();
                for group in p.groups {
                    let run = self.run_group(group).await?;
                    self.publish(run.out).await?;
                }
                self.shadowing.put_back(shadow);
                self.next_swap().await
            }
        }
    }

    async fn next_swap(&mut self) -> anyhow::Result<()> {
        match self.reloading.next.take() {
            Some(c) => self.swap_in(*c).await,
            None => Ok(()),
        }
    }
}
