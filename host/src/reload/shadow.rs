//! Shadow deploys: a candidate version runs beside the live one on the same events. Its state
//! writes go to a state of its own, seeded from the live state when it starts; its outputs are
//! never published but compared with the live version's, event by event. The operator then
//! promotes it (its state and version become live) or discards it (nothing of it remains).
//!
//! Owns: how a shadow is declared in the plugin bucket (the object `<pipeline>.shadow`, next to
//! the live `<pipeline>`; promoting deploys its version as live and removes the object,
//! discarding removes it), the comparison of two versions' outcomes for one event, and the
//! report (`eddy status`, the console, the metrics).
//!
//! The run loop's side (seeding the state, running the shadow beside each batch, promoting) is
//! `pipeline::runner::shadowing`.

use std::collections::BTreeMap;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::engine::{BroadcastEvent, Event, Failure, Outcome};
use crate::transport::Nats;

/// The plugin bucket object that declares the shadow of `pipeline`.
pub fn object_name(pipeline: &str) -> String {
    format!("{pipeline}.shadow")
}

/// Declares `wasm` the shadow of `pipeline`, keeping it by version as every deployment is;
/// returns its version. Every host of the pipeline starts it beside the live version.
pub async fn deploy(
    nats: &Nats,
    bucket: &str,
    pipeline: &str,
    wasm: &[u8],
    note: &str,
) -> anyhow::Result<String> {
    let store = super::plugin_bucket(nats, bucket).await?;
    let version = super::keep_in(&store, bucket, pipeline, wasm, note).await?;
    let metadata = [("version".to_string(), version.clone())].into();
    super::put(&store, bucket, &object_name(pipeline), note, metadata, wasm).await?;
    Ok(version)
}

/// The declared shadow of `pipeline`: its component, if there is one.
pub async fn declared(
    nats: &Nats,
    bucket: &str,
    pipeline: &str,
) -> anyhow::Result<Option<Vec<u8>>> {
    super::deployed(nats, bucket, &object_name(pipeline)).await
}

/// Promotes the shadow of `pipeline`: its version is deployed as live (the hosts running it as
/// shadow keep its state; any other host swaps to it as to any deployment), then the shadow is
/// no longer declared. Returns the version.
pub async fn promote(
    nats: &Nats,
    bucket: &str,
    pipeline: &str,
    note: &str,
) -> anyhow::Result<String> {
    let Some(wasm) = declared(nats, bucket, pipeline).await? else {
        anyhow::bail!(
            "pipeline `{pipeline}` has no shadow in the plugin bucket `{bucket}`: start one with `eddy deploy --shadow <pipeline.toml> <plugin.wasm>`"
        );
    };
    // The hosts would not take these as live: refused here, with the shadow left running.
    let version = crate::engine::version_of(&wasm);
    if let Some(reason) = super::record::load(nats, bucket, pipeline)
        .await
        .rolled_back(&version)
    {
        anyhow::bail!(
            "the shadow's version {version} was rolled back before ({reason}); the hosts do not run it live again: build it anew (a new version) and deploy that as shadow"
        );
    }
    if let Some(live) = super::deployed(nats, bucket, pipeline).await?
        && crate::engine::version_of(&live) == version
    {
        anyhow::bail!(
            "the shadow's version {version} is the deployed live version already: discard the shadow (`eddy deploy --discard`)"
        );
    }
    super::deploy(nats, bucket, pipeline, &wasm, note).await?;
    remove(nats, bucket, pipeline).await?;
    Ok(version)
}

/// Discards the shadow of `pipeline`: the hosts stop it and delete its state. Returns its
/// version.
pub async fn discard(nats: &Nats, bucket: &str, pipeline: &str) -> anyhow::Result<String> {
    let Some(wasm) = declared(nats, bucket, pipeline).await? else {
        anyhow::bail!("pipeline `{pipeline}` has no shadow in the plugin bucket `{bucket}`");
    };
    remove(nats, bucket, pipeline).await?;
    Ok(crate::engine::version_of(&wasm))
}

async fn remove(nats: &Nats, bucket: &str, pipeline: &str) -> anyhow::Result<()> {
    let store = nats
        .js
        .get_object_store(bucket)
        .await
        .with_context(|| format!("cannot open the plugin bucket `{bucket}`"))?;
    let name = object_name(pipeline);
    store
        .delete(&name)
        .await
        .with_context(|| format!("cannot delete {bucket}/{name}"))
}

/// Where outputs without a subject of their own, and dead letters, go.
#[derive(Debug, Clone)]
pub struct Subjects {
    /// `output.subject`.
    pub output: String,
    /// `dead_letter.subject`.
    pub dead_letter: String,
}

/// How many of each verdict one output subject got.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectCounts {
    /// Both versions sent the same message (headers and payload).
    pub same: u64,
    /// Both sent one, and they differ.
    pub different: u64,
    /// Only the live version sent it.
    pub only_live: u64,
    /// Only the shadow sent it.
    pub only_shadow: u64,
}

/// One message as a version would have sent it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sent {
    /// Its payload (lossy UTF-8; a dead letter's is its reason).
    pub payload: String,
    /// The plugin's own headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, String)>,
}

/// The event a difference came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputSample {
    /// Its subject.
    pub subject: String,
    /// Its stream sequence.
    pub seq: u64,
    /// Its key (lossy UTF-8).
    pub key: String,
    /// Its payload (lossy UTF-8).
    pub payload: String,
}

/// One differing pair, with its input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Difference {
    /// The event both versions handled.
    pub input: InputSample,
    /// The subject the message went (or would have gone) to.
    pub subject: String,
    /// The live version's message, if it sent one.
    pub live: Option<Sent>,
    /// The shadow's, if it sent one.
    pub shadow: Option<Sent>,
}

/// What a shadow found so far.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ShadowReport {
    /// The shadow's version.
    pub version: String,
    /// The live version it is compared with (the newest, if the live version changed).
    pub live_version: String,
    /// When it started (its state was seeded), ms since the Unix epoch.
    pub since_ms: u64,
    /// How long seeding its state paused the run loop, µs.
    pub seed_pause_us: u64,
    /// Keyed events both versions handled.
    pub events: u64,
    /// Of those, the events with at least one difference.
    pub differing_events: u64,
    /// Events the shadow failed (trap, budget, memory, quota): they count as dead letters in
    /// the comparison too.
    pub shadow_failures: u64,
    /// Broadcast updates both applied.
    pub broadcast_events: u64,
    /// Per output subject (dead letters under the dead-letter subject).
    pub subjects: BTreeMap<String, SubjectCounts>,
    /// The first differing pairs, oldest first.
    pub samples: Vec<Difference>,
    /// Set when the shadow stopped on an error of its own (the live version runs on; the
    /// report stays until the shadow is discarded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
}

/// The verdict on one message, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The same from both.
    Same,
    /// Both sent one; they differ.
    Different,
    /// Only live sent it.
    OnlyLive,
    /// Only the shadow sent it.
    OnlyShadow,
}

impl Verdict {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Same => "same",
            Verdict::Different => "different",
            Verdict::OnlyLive => "only-live",
            Verdict::OnlyShadow => "only-shadow",
        }
    }
}

/// What an outcome sends, by subject in order: outputs (subject, headers, payload), and a dead
/// letter (its reason) for a rejection or a failure.
fn sent(outcome: &Result<Outcome, Failure>, subjects: &Subjects) -> Vec<(String, Sent)> {
    match outcome {
        Ok(Outcome::Emit(outputs)) => outputs
            .iter()
            .map(|o| {
                (
                    o.subject.clone().unwrap_or_else(|| subjects.output.clone()),
                    Sent {
                        payload: String::from_utf8_lossy(&o.payload).into_owned(),
                        headers: o.headers.clone(),
                    },
                )
            })
            .collect(),
        Ok(Outcome::Drop) => Vec::new(),
        Ok(Outcome::Reject(reason)) => vec![(
            subjects.dead_letter.clone(),
            Sent {
                payload: format!("rejected: {reason}"),
                headers: Vec::new(),
            },
        )],
        // The kind, not the message: a budget's message names the time it took, which differs
        // between any two runs.
        Err(f) => vec![(
            subjects.dead_letter.clone(),
            Sent {
                payload: format!("failed: {}", f.kind.label()),
                headers: Vec::new(),
            },
        )],
    }
}

impl ShadowReport {
    /// A report for `version`, compared with `live_version`, starting now.
    pub fn new(version: &str, live_version: &str, seed_pause_us: u64) -> ShadowReport {
        ShadowReport {
            version: version.to_string(),
            live_version: live_version.to_string(),
            since_ms: crate::checkpoint::now_ms(),
            seed_pause_us,
            ..Default::default()
        }
    }

    /// Compares what both versions did with `event`, keeping up to `max_samples` differing
    /// pairs. Messages pair up by subject in the order sent: the i-th message a version sent
    /// to a subject is compared with the other's i-th to that subject. `tally` hears every
    /// verdict (the metrics).
    pub fn compare(
        &mut self,
        event: &Event,
        live: &Result<Outcome, Failure>,
        shadow: &Result<Outcome, Failure>,
        subjects: &Subjects,
        max_samples: usize,
        tally: &mut dyn FnMut(&str, Verdict),
    ) {
        self.events += 1;
        if shadow.is_err() {
            self.shadow_failures += 1;
        }
        let input = || InputSample {
            subject: event.subject.clone(),
            seq: event.sequence,
            key: String::from_utf8_lossy(&event.key).into_owned(),
            payload: String::from_utf8_lossy(&event.payload).into_owned(),
        };
        let (live, shadow) = (sent(live, subjects), sent(shadow, subjects));
        if self.compare_sent(input, live, shadow, max_samples, tally) {
            self.differing_events += 1;
        }
    }

    /// Compares what both versions did with a broadcast update: nothing, or a dead letter
    /// when one refused it.
    pub fn compare_broadcast(
        &mut self,
        event: &BroadcastEvent,
        live: &Result<(), String>,
        shadow: &Result<(), String>,
        subjects: &Subjects,
        max_samples: usize,
        tally: &mut dyn FnMut(&str, Verdict),
    ) {
        self.broadcast_events += 1;
        let input = || InputSample {
            subject: event.subject.clone(),
            seq: event.sequence,
            key: format!("broadcast {}", event.input),
            payload: String::from_utf8_lossy(&event.payload).into_owned(),
        };
        let as_outcome = |r: &Result<(), String>| match r {
            Ok(()) => Ok(Outcome::Drop),
            Err(reason) => Ok(Outcome::Reject(reason.clone())),
        };
        let (live, shadow) = (
            sent(&as_outcome(live), subjects),
            sent(&as_outcome(shadow), subjects),
        );
        self.compare_sent(input, live, shadow, max_samples, tally);
    }

    /// Pairs and counts two versions' messages for one input; whether any differ.
    fn compare_sent(
        &mut self,
        input: impl Fn() -> InputSample,
        live: Vec<(String, Sent)>,
        mut shadow: Vec<(String, Sent)>,
        max_samples: usize,
        tally: &mut dyn FnMut(&str, Verdict),
    ) -> bool {
        let mut pairs = Vec::with_capacity(live.len() + shadow.len());
        for (subject, l) in live {
            // The shadow's next message to the same subject, if it sent one more.
            let s = shadow
                .iter()
                .position(|(s, _)| *s == subject)
                .map(|i| shadow.remove(i).1);
            pairs.push((subject, Some(l), s));
        }
        pairs.extend(
            shadow
                .into_iter()
                .map(|(subject, s)| (subject, None, Some(s))),
        );
        let mut differs = false;
        for (subject, live, shadow) in pairs {
            let verdict = match (&live, &shadow) {
                (Some(l), Some(s)) if l == s => Verdict::Same,
                (Some(_), Some(_)) => Verdict::Different,
                (Some(_), None) => Verdict::OnlyLive,
                _ => Verdict::OnlyShadow,
            };
            tally(&subject, verdict);
            let counts = self.subjects.entry(subject.clone()).or_default();
            match verdict {
                Verdict::Same => {
                    counts.same += 1;
                    continue;
                }
                Verdict::Different => counts.different += 1,
                Verdict::OnlyLive => counts.only_live += 1,
                Verdict::OnlyShadow => counts.only_shadow += 1,
            }
            differs = true;
            if self.samples.len() < max_samples {
                self.samples.push(Difference {
                    input: input(),
                    subject,
                    live,
                    shadow,
                });
            }
        }
        differs
    }

    /// Events with no difference at all.
    pub fn same_events(&self) -> u64 {
        self.events - self.differing_events
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{FailureKind, Output};

    fn event(seq: u64) -> Event {
        Event {
            key: b"c-1".to_vec(),
            subject: "tx.in".into(),
            headers: Vec::new(),
            payload: format!("{{\"n\":{seq}}}").into_bytes(),
            timestamp_ms: 0,
            sequence: seq,
        }
    }

    fn emit(payloads: &[(&str, Option<&str>)]) -> Result<Outcome, Failure> {
        Ok(Outcome::Emit(
            payloads
                .iter()
                .map(|(p, subject)| Output {
                    subject: subject.map(str::to_string),
                    headers: Vec::new(),
                    payload: p.as_bytes().to_vec(),
                })
                .collect(),
        ))
    }

    fn subjects() -> Subjects {
        Subjects {
            output: "out".into(),
            dead_letter: "dlq".into(),
        }
    }

    #[test]
    fn every_verdict_counts_under_its_subject_and_only_differences_are_sampled() {
        let mut r = ShadowReport::new("v2", "v1", 0);
        let mut tallied = Vec::new();
        let mut tally = |s: &str, v: Verdict| tallied.push((s.to_string(), v));
        let s = subjects();
        // Same.
        r.compare(
            &event(1),
            &emit(&[("a", None)]),
            &emit(&[("a", None)]),
            &s,
            10,
            &mut tally,
        );
        // Different payload.
        r.compare(
            &event(2),
            &emit(&[("a", None)]),
            &emit(&[("b", None)]),
            &s,
            10,
            &mut tally,
        );
        // Live sends one more (to another subject); the shadow drops where live emitted.
        r.compare(
            &event(3),
            &emit(&[("a", None), ("x", Some("alerts"))]),
            &emit(&[("a", None)]),
            &s,
            10,
            &mut tally,
        );
        r.compare(
            &event(4),
            &Ok(Outcome::Drop),
            &emit(&[("n", None)]),
            &s,
            10,
            &mut tally,
        );
        // The shadow traps where live emitted: only-live on out, only-shadow on the dlq.
        let trap = Err(Failure {
            kind: FailureKind::Trap,
            message: "boom".into(),
        });
        r.compare(&event(5), &emit(&[("a", None)]), &trap, &s, 1, &mut tally);
        assert_eq!(r.events, 5);
        assert_eq!(r.differing_events, 4);
        assert_eq!(r.same_events(), 1);
        assert_eq!(r.shadow_failures, 1);
        assert_eq!(
            r.subjects["out"],
            SubjectCounts {
                same: 2,
                different: 1,
                only_live: 1,
                only_shadow: 1,
            }
        );
        assert_eq!(r.subjects["alerts"].only_live, 1);
        assert_eq!(r.subjects["dlq"].only_shadow, 1);
        // Events 2, 3 and 4 were sampled (up to 10); event 5's call allowed 1, already taken.
        let seqs: Vec<u64> = r.samples.iter().map(|d| d.input.seq).collect();
        assert_eq!(seqs, [2, 3, 4], "max_samples bounds the report's samples");
        assert_eq!(
            r.samples[0].live.as_ref().map(|s| s.payload.as_str()),
            Some("a")
        );
        assert_eq!(
            r.samples[0].shadow.as_ref().map(|s| s.payload.as_str()),
            Some("b")
        );
        assert_eq!(tallied.len(), 7, "one verdict per message pair");
        assert_eq!(
            tallied.iter().filter(|(_, v)| *v == Verdict::Same).count(),
            2
        );
    }

    #[test]
    fn rejections_compare_by_reason_and_failures_by_kind() {
        let mut r = ShadowReport::new("v2", "v1", 0);
        let s = subjects();
        let budget = |ms: u64| {
            Err(Failure {
                kind: FailureKind::CpuBudget,
                message: format!("took {ms} ms"),
            })
        };
        r.compare(
            &event(1),
            &budget(101),
            &budget(140),
            &s,
            10,
            &mut |_, _| {},
        );
        r.compare(
            &event(2),
            &Ok(Outcome::Reject("too old".into())),
            &Ok(Outcome::Reject("too new".into())),
            &s,
            10,
            &mut |_, _| {},
        );
        assert_eq!(r.subjects["dlq"].same, 1);
        assert_eq!(r.subjects["dlq"].different, 1);
        assert_eq!(r.differing_events, 1);
    }
}
