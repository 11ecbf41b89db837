//! `eddy streams`: creates the JetStream streams a pipeline file needs (input, outputs,
//! dead letters, broadcast inputs) where they do not exist yet. Existing streams are left as
//! they are.

use anyhow::Context;
use async_nats::jetstream::stream;

use crate::config::PipelineConfig;
use crate::transport::Nats;

/// Creates missing streams; returns a line per stream saying what was done.
pub async fn ensure(
    nats: &Nats,
    cfg: &PipelineConfig,
    input_subjects: &[String],
) -> anyhow::Result<Vec<String>> {
    let mut report = Vec::new();
    let mut wanted: Vec<(String, Vec<String>)> =
        vec![(cfg.input.stream.clone(), input_subjects.to_vec())];
    let mut outputs = vec![cfg.output.subject.clone()];
    outputs.extend(cfg.output.allow.iter().cloned());
    wanted.push((format!("{}_OUT", cfg.pipeline.name.to_uppercase()), outputs));
    wanted.push((
        format!("{}_DLQ", cfg.pipeline.name.to_uppercase()),
        vec![cfg.dead_letter.subject.clone()],
    ));
    for b in cfg.broadcast.values() {
        let subjects = if b.subjects.is_empty() {
            vec![format!("{}.>", b.stream.to_lowercase())]
        } else {
            b.subjects.clone()
        };
        wanted.push((b.stream.clone(), subjects));
    }
    for (name, subjects) in wanted {
        let mut missing = Vec::new();
        for s in &subjects {
            if nats.js.stream_by_subject(s.as_str()).await.is_err() {
                missing.push(s.clone());
            }
        }
        if nats.js.get_stream(&name).await.is_ok() {
            report.push(format!("stream {name}: exists"));
            continue;
        }
        if missing.is_empty() {
            report.push(format!(
                "stream {name}: not needed, subjects already captured"
            ));
            continue;
        }
        nats.js
            .create_stream(stream::Config {
                name: name.clone(),
                subjects: missing.clone(),
                ..Default::default()
            })
            .await
            .with_context(|| format!("cannot create stream {name} for {missing:?}"))?;
        report.push(format!("stream {name}: created for {}", missing.join(", ")));
    }
    Ok(report)
}
