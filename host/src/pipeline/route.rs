//! Routing: what each event's outcome publishes (outputs, or a dead letter with the reason),
//! and the headers that make publishing idempotent.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_nats::HeaderMap;
use bytes::Bytes;

use crate::config::PipelineConfig;
use crate::engine::{Failure, FailureKind, Outcome};
use crate::metrics::{DeadLetterReason, Metrics};
use crate::transport::publisher::{Fallback, OutKind, OutMessage};

/// Header carrying the dead-letter reason.
pub const HEADER_ERROR: &str = "Eddy-Error";
/// Header carrying the dead-letter reason's kind (`key`, `rejected`, `trap`, ...).
pub const HEADER_ERROR_KIND: &str = "Eddy-Error-Kind";
/// Header carrying the input subject of a dead letter.
pub const HEADER_SOURCE_SUBJECT: &str = "Eddy-Source-Subject";
/// Header carrying the input stream sequence of an output or dead letter.
pub const HEADER_SOURCE_SEQUENCE: &str = "Eddy-Source-Sequence";
/// Header carrying the plugin version that produced an output.
pub const HEADER_PLUGIN_VERSION: &str = "Eddy-Plugin-Version";

/// An input message as routing needs it: enough to build its dead letter.
#[derive(Debug, Clone)]
pub struct Source {
    /// Which input: `keyed`, or `broadcast:<name>`; part of message ids.
    pub input: Arc<str>,
    /// The subject it arrived on.
    pub subject: async_nats::Subject,
    /// Its stream sequence.
    pub seq: u64,
    /// Its payload.
    pub payload: Bytes,
    /// Its headers.
    pub headers: Option<HeaderMap>,
}

/// Where routing publishes.
#[derive(Debug, Clone)]
pub struct Routes {
    pipeline: Arc<str>,
    output: Arc<str>,
    allow: Arc<[String]>,
    dead_letter: Arc<str>,
    notices: Arc<Notices>,
}

/// How often a kind of dead letter that keeps flowing is logged again.
const NOTICE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// When each kind of dead letter was last logged and how many came since: a kind that starts
/// flowing is logged at once with its reason (a wrong key pointer sends every event there),
/// then at most once a minute with the count.
#[derive(Debug, Default)]
struct Notices(
    std::sync::Mutex<std::collections::HashMap<&'static str, (std::time::Instant, u64)>>,
);

impl Notices {
    fn note(&self, kind: &'static str, reason: &str, subject: &str) {
        let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match seen.get_mut(kind) {
            Some((at, since)) if at.elapsed() < NOTICE_EVERY => *since += 1,
            last => {
                let since = last.map(|(_, n)| *n);
                match since {
                    None => tracing::warn!(
                        kind,
                        subject,
                        "events are being dead-lettered as `{kind}`: {reason}. See them with `eddy tail {subject}`"
                    ),
                    Some(n) => tracing::warn!(
                        kind,
                        subject,
                        "{} more events dead-lettered as `{kind}` in the last {NOTICE_EVERY:?}, the latest: {reason}",
                        n + 1
                    ),
                }
                seen.insert(kind, (std::time::Instant::now(), 0));
            }
        }
    }
}

impl Routes {
    /// The routes of a pipeline.
    pub fn new(cfg: &PipelineConfig) -> Routes {
        Routes {
            pipeline: cfg.pipeline.name.as_str().into(),
            output: cfg.output.subject.as_str().into(),
            allow: cfg.output.allow.clone().into(),
            dead_letter: cfg.dead_letter.subject.as_str().into(),
            notices: Arc::default(),
        }
    }

    fn allowed(&self, subject: &str) -> bool {
        subject == &*self.output
            || self
                .allow
                .iter()
                .any(|p| crate::config::subject_matches(p, subject))
    }

    /// The messages for one keyed event's outcome, counting drops (outputs and dead letters
    /// are counted by the publisher once stored).
    pub fn outcome(
        &self,
        source: &Arc<Source>,
        outcome: Result<Outcome, Failure>,
        version: &str,
        metrics: &Metrics,
        out: &mut Vec<OutMessage>,
    ) {
        match outcome {
            Ok(Outcome::Emit(outputs)) => {
                if let Some(bad) = outputs
                    .iter()
                    .filter_map(|o| o.subject.as_deref())
                    .find(|s| !self.allowed(s))
                {
                    let reason = format!(
                        "plugin emitted to `{bad}`, which the pipeline does not allow; add it to output.allow or fix the plugin"
                    );
                    out.push(self.dead_letter(source, DeadLetterReason::Contract, &reason));
                    return;
                }
                let fallback: Option<Fallback> = (!outputs.is_empty()).then(|| {
                    let routes = self.clone();
                    let source = source.clone();
                    Arc::new(move |kind: DeadLetterReason, reason: &str| {
                        routes.dead_letter(&source, kind, reason)
                    }) as Fallback
                });
                for (i, o) in outputs.into_iter().enumerate() {
                    let mut headers = HeaderMap::new();
                    for (k, v) in &o.headers {
                        headers.append(k.as_str(), v.as_str());
                    }
                    headers.insert(
                        "Nats-Msg-Id",
                        format!("{}:{}:{}:{}", self.pipeline, source.input, source.seq, i).as_str(),
                    );
                    headers.insert(HEADER_PLUGIN_VERSION, version);
                    out.push(OutMessage {
                        subject: o.subject.unwrap_or_else(|| self.output.to_string()),
                        headers,
                        payload: Bytes::from(o.payload),
                        kind: OutKind::Output,
                        fallback: fallback.clone(),
                    });
                }
            }
            Ok(Outcome::Drop) => {
                metrics.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Outcome::Reject(reason)) => {
                out.push(self.dead_letter(source, DeadLetterReason::Rejected, &reason));
            }
            Err(failure) => {
                out.push(self.failure(source, &failure));
            }
        }
    }

    /// The dead letter of an event whose call failed.
    pub fn failure(&self, source: &Source, failure: &Failure) -> OutMessage {
        let reason = match failure.kind {
            FailureKind::Trap => DeadLetterReason::Trap,
            FailureKind::CpuBudget => DeadLetterReason::CpuBudget,
            FailureKind::MemoryLimit => DeadLetterReason::MemoryLimit,
            FailureKind::Contract => DeadLetterReason::Contract,
            FailureKind::Quota => DeadLetterReason::Quota,
        };
        self.dead_letter(source, reason, &failure.message)
    }

    /// A dead letter: the original payload and headers, plus the reason. Its message id is
    /// derived from the input position, like outputs, so a replay does not duplicate it.
    pub fn dead_letter(
        &self,
        source: &Source,
        reason: DeadLetterReason,
        message: &str,
    ) -> OutMessage {
        let mut headers = HeaderMap::new();
        if let Some(h) = source.headers.as_ref() {
            for (name, values) in h.iter() {
                let n: &str = name.as_ref();
                if n.starts_with("Nats-") {
                    continue;
                }
                for v in values {
                    headers.append(n, v.as_str());
                }
            }
        }
        // Header values are single lines.
        let one_line: String = message.replace(['\r', '\n'], " ");
        self.notices
            .note(reason.label(), &one_line, &self.dead_letter);
        headers.insert(HEADER_ERROR, one_line.as_str());
        headers.insert(HEADER_ERROR_KIND, reason.label());
        headers.insert(HEADER_SOURCE_SUBJECT, source.subject.as_str());
        headers.insert(HEADER_SOURCE_SEQUENCE, source.seq.to_string().as_str());
        headers.insert(
            "Nats-Msg-Id",
            format!("{}:{}:{}:dlq", self.pipeline, source.input, source.seq).as_str(),
        );
        OutMessage {
            subject: self.dead_letter.to_string(),
            headers,
            payload: source.payload.clone(),
            kind: OutKind::DeadLetter(reason),
            fallback: None,
        }
    }
}

/// The NATS headers of a message as WIT `(name, value)` pairs.
pub fn headers_to_wit(headers: Option<&HeaderMap>) -> Vec<(String, String)> {
    let Some(h) = headers else { return Vec::new() };
    let mut out = Vec::new();
    for (name, values) in h.iter() {
        for v in values {
            out.push((name.to_string(), v.as_str().to_string()));
        }
    }
    out
}
