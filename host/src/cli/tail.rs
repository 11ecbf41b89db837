//! `eddy tail`: prints messages stored on a subject, oldest first, without consuming them
//! for anyone else (an ephemeral ordered consumer).

use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{self, consumer};
use futures::StreamExt;

/// One stored message.
#[derive(Debug, Clone)]
pub struct Stored {
    /// Subject.
    pub subject: String,
    /// Headers as (name, value).
    pub headers: Vec<(String, String)>,
    /// Payload.
    pub payload: bytes::Bytes,
    /// Stream sequence.
    pub sequence: u64,
    /// When the stream stored it, µs since the epoch.
    pub stored_us: u64,
}

/// Reads up to `max` messages on `subject` (wildcards allowed), waiting at most `idle` for
/// each next one.
pub async fn read(
    js: &jetstream::Context,
    subject: &str,
    max: usize,
    idle: Duration,
) -> anyhow::Result<Vec<Stored>> {
    let stream_name = js
        .stream_by_subject(subject)
        .await
        .with_context(|| format!("no stream captures `{subject}`"))?;
    let stream = js.get_stream(&stream_name).await?;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: subject.to_string(),
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let mut out = Vec::new();
    while out.len() < max {
        match tokio::time::timeout(idle, messages.next()).await {
            Ok(Some(Ok(m))) => {
                let (sequence, stored_us) = m
                    .info()
                    .map(|i| {
                        (
                            i.stream_sequence,
                            (i.published.unix_timestamp_nanos() / 1_000) as u64,
                        )
                    })
                    .unwrap_or((0, 0));
                out.push(Stored {
                    subject: m.subject.to_string(),
                    headers: m
                        .headers
                        .as_ref()
                        .map(|h| {
                            h.iter()
                                .flat_map(|(n, vs)| {
                                    vs.iter().map(move |v| (n.to_string(), v.to_string()))
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                    payload: m.payload.clone(),
                    sequence,
                    stored_us,
                })
            }
            Ok(Some(Err(e))) => return Err(e.into()),
            _ => break,
        }
    }
    Ok(out)
}
