//! `eddy dlq`: what a pipeline's dead-letter subject holds (`list`, `show`), and replay of dead
//! letters to the pipeline's input once their cause is fixed (`replay`).
//!
//! A replay publishes each chosen dead letter's payload to the subject its event first came on
//! (`Eddy-Source-Subject`), with the event's own headers and two more: `Eddy-Replay-Of`
//! (`<stream>:<sequence>` of the dead letter) and `Eddy-Original-Position` (`<subject>:<sequence>`
//! of the event's first delivery). Its message id is `eddy-replay:<stream>:<sequence>`, so the
//! input stream stores one copy however often the same dead letter is replayed within its
//! duplicate window; once the input stream has stored it, the dead letter is deleted (unless
//! `--keep`), so a later replay does not find it again. The pipeline then handles the replayed
//! event like any other: exactly once.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use async_nats::HeaderMap;
use async_nats::jetstream;
use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::message::PublishMessage;
use futures::StreamExt;

use super::tail::{self, Stored};
use crate::config::PipelineConfig;
use crate::pipeline::route::{
    HEADER_ERROR, HEADER_ERROR_KIND, HEADER_SOURCE_SEQUENCE, HEADER_SOURCE_SUBJECT,
};
use crate::transport::{self, publisher::HEADER_PAYLOAD_OMITTED};

/// Header of a replayed event: the dead letter it came from, `<stream>:<sequence>`.
pub const HEADER_REPLAY_OF: &str = "Eddy-Replay-Of";
/// Header of a replayed event: where it was first delivered, `<subject>:<sequence>`.
pub const HEADER_ORIGINAL_POSITION: &str = "Eddy-Original-Position";

/// Which dead letters a replay takes.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this kind (`Eddy-Error-Kind`: `key`, `trap`, `cpu-budget`, …).
    pub kind: Option<String>,
    /// Only those stored at or after this time (ms since the epoch).
    pub since_ms: Option<u64>,
    /// At most this many, oldest first.
    pub limit: Option<usize>,
    /// Only these dead letters (their sequences in the dead-letter stream).
    pub sequences: Option<std::collections::BTreeSet<u64>>,
}

impl Filter {
    fn takes(&self, m: &Stored) -> bool {
        self.sequences
            .as_ref()
            .is_none_or(|s| s.contains(&m.sequence))
            && self
                .kind
                .as_deref()
                .is_none_or(|k| m.header(HEADER_ERROR_KIND) == Some(k))
            && self.since_ms.is_none_or(|t| m.stored_us / 1_000 >= t)
    }
}

/// What a replay did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Replayed {
    /// Dead letters published to the input (stored there now).
    pub published: u64,
    /// Of those, how many the input stream already had (an earlier replay of the same dead
    /// letter within its duplicate window): stored once.
    pub duplicates: u64,
    /// Dead letters that could not be replayed, with why.
    pub skipped: Vec<(u64, String)>,
}

/// `<n>s`, `<n>m`, `<n>h` or `<n>d` ago, as ms since the epoch.
pub fn since(ago: &str, now_ms: u64) -> anyhow::Result<u64> {
    let (n, unit) = ago.split_at(
        ago.trim_end_matches(|c: char| c.is_ascii_alphabetic())
            .len(),
    );
    let n: u64 = n
        .parse()
        .ok()
        .filter(|_| !unit.is_empty())
        .with_context(|| format!("--since {ago}: give an age such as 30s, 15m, 2h or 1d"))?;
    let ms = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => anyhow::bail!("--since {ago}: the unit is s, m, h or d (30s, 15m, 2h, 1d)"),
    };
    Ok(now_ms.saturating_sub(n * ms))
}

/// What the dead-letter subject holds: counts per kind and the newest letters.
#[derive(Debug, Default)]
pub struct Scan {
    /// Dead letters per `Eddy-Error-Kind` (`?` for none).
    pub kinds: BTreeMap<String, u64>,
    /// The newest of them (those `kind` takes, if given), oldest first.
    pub recent: Vec<Stored>,
}

/// Reads the dead-letter subject through: counts per kind, and the last `last` letters of
/// `kind` (or of every kind).
pub async fn scan(cfg: &PipelineConfig, last: usize, kind: Option<&str>) -> anyhow::Result<Scan> {
    let (_, stream) = open(cfg).await?;
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    let mut recent = std::collections::VecDeque::new();
    every(&stream, &cfg.dead_letter.subject, |m| {
        let k = m.header(HEADER_ERROR_KIND).unwrap_or("?");
        *kinds.entry(k.to_string()).or_default() += 1;
        if kind.is_none_or(|want| want == k) {
            recent.push_back(m);
            if recent.len() > last {
                recent.pop_front();
            }
        }
    })
    .await?;
    Ok(Scan {
        kinds,
        recent: recent.into(),
    })
}

/// One dead letter by its sequence in the dead-letter stream.
pub async fn fetch(cfg: &PipelineConfig, sequence: u64) -> anyhow::Result<Stored> {
    let (_, stream) = open(cfg).await?;
    let m = stream.get_raw_message(sequence).await.with_context(|| {
        format!("no message {sequence} in the dead-letter stream; `eddy dlq list` names them")
    })?;
    if m.subject.as_str() != cfg.dead_letter.subject {
        anyhow::bail!(
            "message {sequence} is on {}, not on the dead-letter subject {}",
            m.subject,
            cfg.dead_letter.subject
        );
    }
    Ok(Stored {
        subject: m.subject.to_string(),
        headers: m
            .headers
            .iter()
            .flat_map(|(name, values)| {
                values
                    .iter()
                    .map(move |v| (name.to_string(), v.as_str().to_string()))
            })
            .collect(),
        payload: m.payload,
        sequence,
        stored_us: (m.time.unix_timestamp_nanos() / 1_000).max(0) as u64,
    })
}

/// `eddy dlq list`: how many dead letters of each kind, and the last `last` of them.
pub async fn list(cfg: &PipelineConfig, last: usize) -> anyhow::Result<()> {
    let subject = &cfg.dead_letter.subject;
    let Scan { kinds, recent } = scan(cfg, last, None).await?;
    let total: u64 = kinds.values().sum();
    println!("{total} dead letters on {subject}");
    for (kind, n) in &kinds {
        println!("  {n:>8}  {kind}");
    }
    if !recent.is_empty() {
        println!("\nthe last {}:", recent.len());
        println!(
            "{:>10}  {:<20}  {:<12}  error",
            "sequence", "stored", "kind"
        );
        for m in &recent {
            let error = m.header(HEADER_ERROR).unwrap_or("");
            let short: String = error.chars().take(100).collect();
            println!(
                "{:>10}  {:<20}  {:<12}  {}",
                m.sequence,
                super::checkpoints::time(m.stored_us / 1_000),
                tail::for_terminal(m.header(HEADER_ERROR_KIND).unwrap_or("?").as_bytes()),
                tail::for_terminal(short.as_bytes())
            );
        }
        println!("\n`eddy dlq show <pipeline.toml> <sequence>` prints one whole.");
    }
    Ok(())
}

/// `eddy dlq show`: one dead letter's headers and payload (control characters escaped).
pub async fn show(cfg: &PipelineConfig, sequence: u64) -> anyhow::Result<()> {
    let m = fetch(cfg, sequence).await?;
    println!("sequence: {sequence}");
    for (name, v) in &m.headers {
        println!(
            "{}: {}",
            tail::for_terminal(name.as_bytes()),
            tail::for_terminal(v.as_bytes())
        );
    }
    println!("payload ({} bytes):", m.payload.len());
    println!("{}", tail::for_terminal(&m.payload));
    Ok(())
}

/// `eddy dlq replay`: publishes the dead letters `filter` takes to the subjects their events
/// came on, oldest first, and deletes each from the dead-letter stream once the input stream
/// has stored it (unless `keep`). A progress bar on a terminal.
pub async fn replay(cfg: &PipelineConfig, filter: &Filter, keep: bool) -> anyhow::Result<Replayed> {
    let (js, stream) = open(cfg).await?;
    let stream_name = stream.cached_info().config.name.clone();
    let mut chosen = Vec::new();
    every(&stream, &cfg.dead_letter.subject, |m| {
        if filter.takes(&m) && filter.limit.is_none_or(|l| chosen.len() < l) {
            chosen.push(m);
        }
    })
    .await?;
    let bar = super::progress(chosen.len() as u64, "replaying", "dead letters");
    let mut done = Replayed::default();
    // Published one after another, in order (events of one key keep their order); the acks
    // are awaited a few hundred at a time, each dead letter deleted once its event is stored.
    let mut in_flight = Vec::new();
    for m in &chosen {
        match send(&js, &stream_name, m).await {
            Ok(ack) => in_flight.push((m.sequence, ack)),
            Err(e) => {
                done.skipped.push((m.sequence, format!("{e:#}")));
                bar.inc(1);
            }
        }
        if in_flight.len() >= 256 {
            settle(&stream, &stream_name, keep, &mut in_flight, &mut done, &bar).await;
        }
    }
    settle(&stream, &stream_name, keep, &mut in_flight, &mut done, &bar).await;
    bar.finish_and_clear();
    Ok(done)
}

/// Awaits the input stream's acks of `in_flight`, deleting each dead letter stored (unless
/// `keep`).
async fn settle(
    dlq: &jetstream::stream::Stream,
    dlq_name: &str,
    keep: bool,
    in_flight: &mut Vec<(u64, PublishAckFuture)>,
    done: &mut Replayed,
    bar: &indicatif::ProgressBar,
) {
    let acked = futures::future::join_all(in_flight.drain(..).map(|(seq, ack)| async move {
        let stored = async {
            let stored = ack.await.context("the input stream did not store it")?;
            if !keep {
                dlq.delete_message(seq)
                    .await
                    .with_context(|| format!("replayed, but not deleted from {dlq_name}"))?;
            }
            anyhow::Ok(stored.duplicate)
        };
        (seq, stored.await)
    }))
    .await;
    for (seq, r) in acked {
        match r {
            Ok(duplicate) => {
                done.published += 1;
                done.duplicates += u64::from(duplicate);
            }
            Err(e) => done.skipped.push((seq, format!("{e:#}"))),
        }
        bar.inc(1);
    }
}

/// Publishes one dead letter to the subject its event came on; the ack to await.
async fn send(
    js: &jetstream::Context,
    dlq_name: &str,
    m: &Stored,
) -> anyhow::Result<PublishAckFuture> {
    let subject = m
        .header(HEADER_SOURCE_SUBJECT)
        .context("it has no Eddy-Source-Subject header: not a dead letter Eddy wrote")?
        .to_string();
    let source_seq = m.header(HEADER_SOURCE_SEQUENCE).unwrap_or("?").to_string();
    let payload = if m.header(HEADER_PAYLOAD_OMITTED).is_some() {
        // Too large for a dead letter: the input stream still has it, unless its retention
        // dropped it since.
        let seq: u64 = source_seq
            .parse()
            .context("its payload was omitted and it names no source sequence")?;
        let input = tail::stream_of(js, &subject).await?;
        input
            .get_raw_message(seq)
            .await
            .with_context(|| {
                format!("its payload was omitted and {subject} no longer holds sequence {seq}")
            })?
            .payload
    } else {
        m.payload.clone()
    };
    let eddy_own = [
        HEADER_ERROR,
        HEADER_ERROR_KIND,
        HEADER_SOURCE_SUBJECT,
        HEADER_SOURCE_SEQUENCE,
        HEADER_PAYLOAD_OMITTED,
        HEADER_REPLAY_OF,
        HEADER_ORIGINAL_POSITION,
    ];
    let mut headers = HeaderMap::new();
    for (name, value) in &m.headers {
        if !name.starts_with("Nats-") && !eddy_own.iter().any(|h| h.eq_ignore_ascii_case(name)) {
            headers.append(name.as_str(), value.as_str());
        }
    }
    let replay_of = format!("{dlq_name}:{}", m.sequence);
    headers.insert(HEADER_REPLAY_OF, replay_of.as_str());
    // A dead letter of a replayed event keeps the first delivery's position.
    let original = m
        .header(HEADER_ORIGINAL_POSITION)
        .map(str::to_string)
        .unwrap_or_else(|| format!("{subject}:{source_seq}"));
    headers.insert(HEADER_ORIGINAL_POSITION, original.as_str());
    js.send_publish(
        subject.clone(),
        PublishMessage::build()
            .payload(payload)
            .headers(headers)
            .message_id(format!("eddy-replay:{replay_of}")),
    )
    .await
    .with_context(|| format!("publish to {subject}"))
}

/// The connection and the stream that captures the pipeline's dead-letter subject.
async fn open(
    cfg: &PipelineConfig,
) -> anyhow::Result<(jetstream::Context, jetstream::stream::Stream)> {
    let conn = transport::connect(&cfg.nats, "eddy-dlq").await?;
    let stream = tail::stream_of(&conn.js, &cfg.dead_letter.subject).await?;
    Ok((conn.js, stream))
}

/// Calls `f` with every message on `subject` in `stream`, oldest first: those stored when it
/// starts (later ones wait for the next run).
async fn every(
    stream: &jetstream::stream::Stream,
    subject: &str,
    mut f: impl FnMut(Stored),
) -> anyhow::Result<()> {
    let (consumer, pending) = tail::counted(stream, subject, 1).await?;
    let name = consumer.cached_info().name.clone();
    let read = async {
        if pending == 0 {
            return Ok(());
        }
        let mut messages = consumer.messages().await?;
        for _ in 0..pending {
            match tokio::time::timeout(Duration::from_secs(10), messages.next()).await {
                Ok(Some(Ok(m))) => f(tail::stored(&m)),
                Ok(Some(Err(e))) => return Err(anyhow::Error::from(e)),
                // Deleted meanwhile (another replay, retention): fewer than counted.
                Ok(None) | Err(_) => break,
            }
        }
        anyhow::Ok(())
    };
    let r = read.await;
    let _ = stream.delete_consumer(&name).await;
    r
}

#[cfg(test)]
mod tests {
    use super::since;

    #[test]
    fn since_reads_ages_and_refuses_what_it_cannot() {
        let now = 10 * 86_400_000;
        assert_eq!(since("30s", now).expect("30s"), now - 30_000);
        assert_eq!(since("15m", now).expect("15m"), now - 900_000);
        assert_eq!(since("2h", now).expect("2h"), now - 7_200_000);
        assert_eq!(since("1d", now).expect("1d"), now - 86_400_000);
        for bad in ["", "15", "m", "15x", "-1h", "1.5h"] {
            let e = since(bad, now).expect_err(bad).to_string();
            assert!(e.contains("--since"), "{bad}: {e}");
        }
    }
}
