//! `eddy produce`, `eddy publish` and `eddy tail`: test data in, messages out.

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;

use super::{produce, tail};
use crate::config::NatsConfig;
use crate::transport;

fn nats_config(url: &str) -> NatsConfig {
    NatsConfig {
        url: url.to_string(),
        ..Default::default()
    }
}

/// `eddy produce`: publishes synthetic card transactions to `subject`.
pub async fn produce(
    nats: &str,
    subject: &str,
    count: usize,
    customers: usize,
    seed: u64,
    duplicate_every: usize,
) -> anyhow::Result<()> {
    let conn = transport::connect(&nats_config(nats), "eddy-produce").await?;
    // A `*` in the subject takes each transaction's customer: the key a cluster's input
    // stream partitions by.
    let messages = produce::transactions(count, customers, seed, duplicate_every)
        .iter()
        .map(|t| serde_json::to_vec(t).map(|p| (produce::subject_for(subject, t), Bytes::from(p))))
        .collect::<Result<Vec<_>, _>>()?;
    let rate = produce::publish_each(&conn.js, messages)
        .await
        .with_context(|| format!("publishing to {subject} (is a stream capturing it?)"))?;
    println!("published {count} transactions to {subject} ({rate:.0}/s)");
    Ok(())
}

/// `eddy publish`: one message, waiting until a stream stored it.
pub async fn publish(nats: &str, subject: &str, payload: String) -> anyhow::Result<()> {
    let conn = transport::connect(&nats_config(nats), "eddy-publish").await?;
    let ack = conn
        .js
        .publish(subject.to_string(), Bytes::from(payload))
        .await
        .with_context(|| format!("publishing to {subject}"))?
        .await
        .with_context(|| {
            format!("{subject} was not stored (does a stream capture it? `eddy streams`)")
        })?;
    println!("stored in {} as message {}", ack.stream, ack.sequence);
    Ok(())
}

/// `eddy tail`: prints messages stored on `subject`.
pub async fn tail(nats: &str, subject: &str, count: usize) -> anyhow::Result<()> {
    let conn = transport::connect(&nats_config(nats), "eddy-tail").await?;
    for m in tail::read(&conn.js, subject, count, Duration::from_secs(2)).await? {
        let headers: Vec<String> = m
            .headers
            .iter()
            .filter(|(n, _)| !n.starts_with("Nats-"))
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        println!(
            "{} [{}] {}",
            m.subject,
            headers.join(" "),
            String::from_utf8_lossy(&m.payload)
        );
    }
    Ok(())
}
