//! `eddy tail`: prints the last messages stored on a subject, oldest first, and follows new
//! ones if asked, without consuming them for anyone else (ephemeral ordered consumers), with
//! what a payload could do to the operator's terminal escaped ([`for_terminal`]).

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
    let stream = stream_of(js, subject).await?;
    let mut out = Vec::new();
    each(&stream, subject, 1, Some(max), Some(idle), |m| {
        out.push(m);
        Ok(())
    })
    .await?;
    Ok(out)
}

/// The last `n` messages on `subject` in `stream` (fewer if it has fewer), oldest first, and
/// the stream sequence to follow on from.
pub async fn last(
    stream: &jetstream::stream::Stream,
    subject: &str,
    n: usize,
) -> anyhow::Result<(Vec<Stored>, u64)> {
    let last_seq = stream.cached_info().state.last_sequence;
    let first_seq = stream.cached_info().state.first_sequence.max(1);
    if n == 0 {
        return Ok((Vec::new(), last_seq + 1));
    }
    // The latest start sequence from which at least `n` messages match: the pending count
    // of a consumer starting at `s` falls as `s` grows, so search for it.
    let (mut lo, mut hi) = (first_seq, last_seq.max(first_seq));
    if pending_from(stream, subject, lo).await? > n as u64 {
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if pending_from(stream, subject, mid).await? >= n as u64 {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
    }
    let mut out = Vec::new();
    each(
        stream,
        subject,
        lo,
        Some(n),
        Some(Duration::from_secs(2)),
        |m| {
            out.push(m);
            Ok(())
        },
    )
    .await?;
    let next = out.last().map_or(last_seq + 1, |m| m.sequence + 1);
    Ok((out, next))
}

/// Calls `f` with each message on `subject` in `stream` from stream sequence `from`, up to
/// `max` of them, until none arrives for `idle` (`None`: forever, for `eddy tail -f`) or `f`
/// fails.
pub async fn each(
    stream: &jetstream::stream::Stream,
    subject: &str,
    from: u64,
    max: Option<usize>,
    idle: Option<Duration>,
    mut f: impl FnMut(Stored) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: subject.to_string(),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: from.max(1),
            },
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let mut seen = 0;
    while max.is_none_or(|m| seen < m) {
        let next = match idle {
            Some(idle) => match tokio::time::timeout(idle, messages.next()).await {
                Ok(next) => next,
                Err(_) => break,
            },
            None => messages.next().await,
        };
        match next {
            Some(Ok(m)) => {
                seen += 1;
                f(stored(&m))?;
            }
            Some(Err(e)) => return Err(e.into()),
            None => break,
        }
    }
    Ok(())
}

/// The stream that captures `subject`.
pub async fn stream_of(
    js: &jetstream::Context,
    subject: &str,
) -> anyhow::Result<jetstream::stream::Stream> {
    let stream_name = js
        .stream_by_subject(subject)
        .await
        .with_context(|| format!("no stream captures `{subject}`; `eddy streams <pipeline.toml>` creates a pipeline's streams"))?;
    Ok(js.get_stream(&stream_name).await?)
}

/// How many messages on `subject` a consumer starting at `from` would deliver.
pub async fn pending_from(
    stream: &jetstream::stream::Stream,
    subject: &str,
    from: u64,
) -> anyhow::Result<u64> {
    let (consumer, pending) = counted(stream, subject, from).await?;
    let _ = stream.delete_consumer(&consumer.cached_info().name).await;
    Ok(pending)
}

/// An ephemeral pull consumer (no acks) of `subject` from sequence `from`, and how many
/// messages it has to deliver; the caller deletes it (the server does after 30 s idle).
pub(crate) async fn counted(
    stream: &jetstream::stream::Stream,
    subject: &str,
    from: u64,
) -> anyhow::Result<(consumer::PullConsumer, u64)> {
    let mut consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            filter_subject: subject.to_string(),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: from.max(1),
            },
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await?;
    let pending = consumer.info().await?.num_pending;
    Ok((consumer, pending))
}

impl Stored {
    /// The value of header `name` (any case), if it has one.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A delivered message as [`Stored`].
pub(crate) fn stored(m: &jetstream::Message) -> Stored {
    let (sequence, stored_us) = m
        .info()
        .map(|i| {
            (
                i.stream_sequence,
                (i.published.unix_timestamp_nanos() / 1_000) as u64,
            )
        })
        .unwrap_or((0, 0));
    Stored {
        subject: m.subject.to_string(),
        headers: m
            .headers
            .as_ref()
            .map(|h| {
                h.iter()
                    .flat_map(|(n, vs)| vs.iter().map(move |v| (n.to_string(), v.to_string())))
                    .collect()
            })
            .unwrap_or_default(),
        payload: m.payload.clone(),
        sequence,
        stored_us,
    }
}

/// `bytes` as one line that is safe to print to a terminal: control characters (C0, DEL,
/// C1: escape sequences, carriage returns, bells, newlines) and bytes that are not UTF-8
/// are written as escapes (`\e`, `\n`, `\x07`, `\u{9b}`), and a backslash as `\\`, so what
/// is printed can be read back unambiguously.
pub fn for_terminal(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{1b}' => out.push_str("\\e"),
                c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                    out.push_str(&format!("\\x{:02x}", c as u32));
                }
                c if (0x80..0xa0).contains(&(c as u32)) => {
                    out.push_str(&format!("\\u{{{:x}}}", c as u32));
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::for_terminal;

    #[test]
    fn escape_sequences_and_odd_bytes_never_reach_the_terminal_raw() {
        // Clear the screen, set the window title, ring the bell, overwrite the line.
        let hostile = b"{\"a\":\"\x1b[2J\x1b]0;pwned\x07\rok\"}\n\t\x7f\xc2\x9b31m\xff\\";
        let shown = for_terminal(hostile);
        assert!(
            shown.chars().all(|c| !c.is_control()),
            "no control character left: {shown:?}"
        );
        assert_eq!(
            shown,
            r#"{"a":"\e[2J\e]0;pwned\x07\rok"}\n\t\x7f\u{9b}31m\xff\\"#
        );
        assert_eq!(
            for_terminal("plain €, ü and 日本".as_bytes()),
            "plain €, ü and 日本"
        );
    }
}
