//! `eddy test`: runs a plugin on events from a file, with state in a temporary directory, and
//! prints what it does: a local harness for plugin authors, no NATS needed.
//!
//! Input: JSON Lines. Each line is an event payload (its key found with `--key`, a JSON
//! pointer), or, with `--envelope`, an object `{"key": "...", "payload": <JSON or text>,
//! "subject": "...", "headers": [["name", "value"]], "broadcast": "<input name>"}` (with
//! `broadcast`, the line is a broadcast event). Output: one JSON line per event:
//! `{"seq": 1, "outcome": "emit", "outputs": [{"subject": null, "headers": [...], "payload":
//! ...}]}`, `{"seq": 2, "outcome": "drop"}`, `{"seq": 3, "outcome": "reject", "reason": "..."}`,
//! `{"seq": 4, "outcome": "failed", "kind": "trap", "reason": "..."}`; with `--dump-state`, then
//! every state entry, decoded like the query service shows them.

use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};

use crate::engine::Worker;
use crate::engine::{BroadcastEvent, Engine, Event, InstanceContext, Limits, Outcome};
use crate::metrics::Metrics;
use crate::state::layout::{PREFIX_LEN, decode_list, decode_value};
use crate::state::{StateKind, StateStore, SystemClock};

/// What `eddy test` is asked to do.
#[derive(Debug, Clone)]
pub struct HarnessOptions {
    /// CPU budget per event, ms (`limits.cpu_ms_per_event`).
    pub cpu_ms_per_event: u64,
    /// JSON pointer to the key in each payload (ignored with `envelope`).
    pub key: String,
    /// Lines are envelopes.
    pub envelope: bool,
    /// The plugin config (JSON).
    pub config: String,
    /// Events per plugin call.
    pub batch: usize,
    /// Print every state entry at the end.
    pub dump_state: bool,
}

enum Line {
    Keyed(Event),
    Broadcast(BroadcastEvent),
}

fn parse_line(n: u64, line: &str, opts: &HarnessOptions) -> anyhow::Result<Line> {
    let v: serde_json::Value =
        serde_json::from_str(line).with_context(|| format!("line {n} is not JSON"))?;
    let bytes = |p: &serde_json::Value| match p {
        serde_json::Value::String(s) => s.as_bytes().to_vec(),
        other => other.to_string().into_bytes(),
    };
    if !opts.envelope {
        let key = match v.pointer(&opts.key) {
            Some(serde_json::Value::String(s)) => s.as_bytes().to_vec(),
            Some(other) if !other.is_null() => other.to_string().into_bytes(),
            _ => bail!("line {n} has no key at `{}` (--key)", opts.key),
        };
        return Ok(Line::Keyed(Event {
            key,
            subject: "test.in".into(),
            headers: Vec::new(),
            payload: line.as_bytes().to_vec(),
            timestamp_ms: n,
            sequence: n,
        }));
    }
    let payload = bytes(v.get("payload").unwrap_or(&serde_json::Value::Null));
    let subject = v["subject"].as_str().unwrap_or("test.in").to_string();
    let headers: Vec<(String, String)> = v["headers"]
        .as_array()
        .map(|hs| {
            hs.iter()
                .filter_map(|h| Some((h[0].as_str()?.to_string(), h[1].as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    if let Some(input) = v["broadcast"].as_str() {
        return Ok(Line::Broadcast(BroadcastEvent {
            input: input.to_string(),
            subject,
            headers,
            payload,
            timestamp_ms: n,
            sequence: n,
        }));
    }
    let key = v["key"]
        .as_str()
        .with_context(|| format!("line {n}: an envelope needs a string \"key\""))?;
    Ok(Line::Keyed(Event {
        key: key.as_bytes().to_vec(),
        subject,
        headers,
        payload,
        timestamp_ms: n,
        sequence: n,
    }))
}

fn show_payload(p: &[u8]) -> serde_json::Value {
    serde_json::from_slice(p)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(p).into_owned()))
}

/// Runs `plugin` on the events in `events` (a file, or `-` for standard input), writing one
/// JSON line per event to `out`.
pub fn run(
    plugin: &Path,
    events: &Path,
    opts: &HarnessOptions,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let state = Arc::new(StateStore::open(
        &dir.path().join("db"),
        crate::state::DEFAULT_KEY_GROUPS,
        Arc::new(SystemClock),
    )?);
    let engine = Engine::new(None)?;
    let p = engine.load_file(plugin)?;
    let ctx = InstanceContext {
        state: state.clone(),
        limits: Limits {
            cpu_per_event: std::time::Duration::from_millis(opts.cpu_ms_per_event),
            ..Limits::default()
        },
        lookups: None,
    };
    let mut worker = Worker::new(p, ctx, opts.config.clone(), Metrics::new("test"))?;
    let reader: Box<dyn BufRead> = if events == Path::new("-") {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(events)
                .with_context(|| format!("cannot read {}", events.display()))?,
        ))
    };
    let mut pending: Vec<Event> = Vec::new();
    let mut n = 0u64;
    let flush = |worker: &mut Worker,
                 pending: &mut Vec<Event>,
                 out: &mut dyn Write|
     -> anyhow::Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        let kgs: Vec<u16> = pending.iter().map(|e| state.key_group(&e.key)).collect();
        let results = worker.handle(pending, &kgs, &Arc::default())?;
        for (e, r) in pending.iter().zip(results) {
            let line = match r {
                Ok(Outcome::Emit(outputs)) => serde_json::json!({
                    "seq": e.sequence,
                    "outcome": "emit",
                    "outputs": outputs.iter().map(|o| serde_json::json!({
                        "subject": o.subject,
                        "headers": o.headers,
                        "payload": show_payload(&o.payload),
                    })).collect::<Vec<_>>(),
                }),
                Ok(Outcome::Drop) => serde_json::json!({"seq": e.sequence, "outcome": "drop"}),
                Ok(Outcome::Reject(reason)) => {
                    serde_json::json!({"seq": e.sequence, "outcome": "reject", "reason": reason})
                }
                Err(f) => serde_json::json!({
                    "seq": e.sequence, "outcome": "failed",
                    "kind": f.kind.label(), "reason": f.message,
                }),
            };
            writeln!(out, "{line}")?;
        }
        pending.clear();
        Ok(())
    };
    for line in reader.lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        n += 1;
        match parse_line(n, &line, opts)? {
            Line::Keyed(e) => {
                pending.push(e);
                if pending.len() >= opts.batch.max(1) {
                    flush(&mut worker, &mut pending, out)?;
                }
            }
            Line::Broadcast(b) => {
                flush(&mut worker, &mut pending, out)?;
                let seq = b.sequence;
                let r = worker.handle_broadcast(std::slice::from_ref(&b))?;
                let line = match r.into_iter().next().unwrap_or(Ok(())) {
                    Ok(()) => serde_json::json!({"seq": seq, "outcome": "broadcast"}),
                    Err(reason) => {
                        serde_json::json!({"seq": seq, "outcome": "reject", "reason": reason})
                    }
                };
                writeln!(out, "{line}")?;
            }
        }
    }
    flush(&mut worker, &mut pending, out)?;
    if opts.dump_state {
        for line in dump(&state)? {
            writeln!(out, "{line}")?;
        }
    }
    Ok(())
}

/// Every keyed state entry and broadcast entry, one JSON value each, in storage order:
/// `{"state", "key", "map_key"?, "value"}` / `{"broadcast", "key", "value"}`.
pub fn dump(state: &StateStore) -> anyhow::Result<Vec<serde_json::Value>> {
    let names: std::collections::HashMap<u32, (String, StateKind)> = state
        .states()
        .into_iter()
        .map(|s| (s.id, (s.name, s.kind)))
        .collect();
    let mut out = Vec::new();
    state.settle()?;
    let mut it = state.db().raw_iterator_cf(state.keyed_cf());
    it.seek_to_first();
    while it.valid() {
        if let (Some(k), Some(v)) = (it.key(), it.value())
            && let Some(id) = crate::state::layout::state_id_of(k)
            && let Some((name, kind)) = names.get(&id)
            && k.len() >= PREFIX_LEN
        {
            let len = u32::from_be_bytes([k[6], k[7], k[8], k[9]]) as usize;
            let rest = &k[PREFIX_LEN..];
            let (key, map_key) = rest.split_at(len.min(rest.len()));
            let value = match kind {
                StateKind::List => serde_json::Value::Array(
                    decode_list(v)
                        .unwrap_or_default()
                        .iter()
                        .map(|(_, e)| crate::query::show_value(e))
                        .collect(),
                ),
                _ => decode_value(v)
                    .map(|(_, b)| crate::query::show_value(b))
                    .unwrap_or(serde_json::Value::Null),
            };
            let mut entry = serde_json::json!({
                "state": name,
                "key": crate::query::show_key(key),
                "value": value,
            });
            if *kind == StateKind::Map {
                entry["map_key"] = crate::query::show_key(map_key);
            }
            out.push(entry);
        }
        it.next();
    }
    it.status()?;
    let maps: std::collections::HashMap<u32, String> = state
        .broadcast_maps()
        .into_iter()
        .map(|(n, id)| (id, n))
        .collect();
    let mut it = state.db().raw_iterator_cf(state.broadcast_cf());
    it.seek_to_first();
    while it.valid() {
        if let (Some(k), Some(v)) = (it.key(), it.value())
            && let Some((map, key)) = crate::state::broadcast::split_key(k)
            && let Some(name) = maps.get(&map)
        {
            out.push(serde_json::json!({
                "broadcast": name,
                "key": crate::query::show_key(key),
                "value": crate::query::show_value(v),
            }));
        }
        it.next();
    }
    it.status()?;
    Ok(out)
}

/// `eddy test`: runs the harness on a blocking thread, printing to stdout.
pub async fn command(
    plugin: std::path::PathBuf,
    events: std::path::PathBuf,
    opts: HarnessOptions,
) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || {
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        run(&plugin, &events, &opts, &mut out)
    })
    .await?
}
