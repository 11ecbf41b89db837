//! `eddy test`: runs a plugin on events from a file, with state in a temporary directory, and
//! prints what it does: a local harness for plugin authors, no NATS needed.
//!
//! Input: JSON Lines. Each line is an event payload, its key found where the pipeline's
//! `input.key` says (`--key` for a JSON pointer; else the `pipeline.toml` beside, else
//! `/key`), or, with `--envelope`, an object `{"key": "...", "payload": <JSON or text>,
//! "subject": "...", "headers": [["name", "value"]], "broadcast": "<input name>"}` (with
//! `broadcast`, the line is a broadcast event; without `key`, the key is found in the
//! envelope's subject, headers or payload as `eddy run` would).
//!
//! Output: one JSON line per event: `{"seq": 1, "outcome": "emit", "outputs": [{"subject":
//! null, "headers": [...], "payload": ...}]}`, `{"seq": 2, "outcome": "drop"}`, `{"seq": 3,
//! "outcome": "reject", "reason": "..."}`, `{"seq": 4, "outcome": "failed", "kind": "trap",
//! "reason": "..."}`; with `--dump-state`, then every state entry, decoded like the query
//! service shows them. A line `eddy run` would dead-letter before the plugin sees it (not
//! JSON, no key) is the outcome `failed` of kind `key` with the same reason, and the lines
//! after it run as usual.
//!
//! With `--expect expected.jsonl`, the lines are compared with the file's instead of printed:
//! an expected object matches when every field it names is equal (fields it leaves out, such
//! as headers, are not compared); the command fails with each difference shown.
//!
//! Lookups are answered from `--lookups answers.json` (`answers`), never from a store; how
//! many the plugin's `prepare` planned and how many it made from `handle` is printed to
//! standard error.

mod answers;

use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};

use crate::config::KeySource;
use crate::engine::{BroadcastEvent, Engine, Event, InstanceContext, Limits, Outcome};
use crate::engine::{LookupSource, Planner, Worker};
use crate::metrics::Metrics;
use crate::pipeline::keys::KeyExtractor;
use crate::state::layout::{PREFIX_LEN, decode_list, decode_value};
use crate::state::{StateKind, StateStore, SystemClock};
use answers::Answers;

/// What `eddy test` is asked to do.
#[derive(Debug, Clone)]
pub struct HarnessOptions {
    /// CPU budget per event, ms (`limits.cpu_ms_per_event`).
    pub cpu_ms_per_event: u64,
    /// Where each event's key is (an envelope's `key` field comes first).
    pub key: KeySource,
    /// Lines are envelopes.
    pub envelope: bool,
    /// The plugin config (JSON).
    pub config: String,
    /// Events per plugin call.
    pub batch: usize,
    /// Print every state entry at the end.
    pub dump_state: bool,
    /// Compare the lines with this file's instead of printing them.
    pub expect: Option<std::path::PathBuf>,
    /// Answer lookups from this file (`answers`).
    pub lookups: Option<std::path::PathBuf>,
}

/// Where `eddy test` finds keys when `--key` is not given: the `input.key` of the pipeline
/// file, if there is one, else the JSON pointer `/key`.
pub fn key_source(key: Option<String>, pipeline: &Path) -> anyhow::Result<KeySource> {
    if let Some(pointer) = key {
        return Ok(KeySource::Json(pointer));
    }
    if !pipeline.exists() {
        return Ok(KeySource::Json("/key".into()));
    }
    #[derive(serde::Deserialize)]
    struct File {
        input: Input,
    }
    #[derive(serde::Deserialize)]
    struct Input {
        key: KeySource,
    }
    let text = std::fs::read_to_string(pipeline)
        .with_context(|| format!("cannot read {}", pipeline.display()))?;
    let file: File = toml::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{}: no usable `input.key` ({}); give the key's JSON pointer with --key",
            pipeline.display(),
            e.message()
        )
    })?;
    Ok(file.input.key)
}

enum Line {
    Keyed(Event),
    Broadcast(BroadcastEvent),
    /// What `eddy run` dead-letters as kind `key`, with its reason.
    NoKey(String),
}

fn parse_line(n: u64, line: &str, opts: &HarnessOptions, key_of: &KeyExtractor) -> Line {
    if !opts.envelope {
        return match key_of.extract("test.in", None, line.as_bytes()) {
            Ok(key) => Line::Keyed(Event {
                key,
                subject: "test.in".into(),
                headers: Vec::new(),
                payload: line.as_bytes().to_vec(),
                timestamp_ms: n,
                sequence: n,
            }),
            Err(reason) => Line::NoKey(reason),
        };
    }
    let v: serde_json::Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => return Line::NoKey(format!("line {n} is not a JSON envelope ({e})")),
    };
    let bytes = |p: &serde_json::Value| match p {
        serde_json::Value::String(s) => s.as_bytes().to_vec(),
        other => other.to_string().into_bytes(),
    };
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
        return Line::Broadcast(BroadcastEvent {
            input: input.to_string(),
            subject,
            headers,
            payload,
            timestamp_ms: n,
            sequence: n,
        });
    }
    let key = match v["key"].as_str() {
        Some(k) => k.as_bytes().to_vec(),
        None => {
            let mut map = async_nats::HeaderMap::new();
            for (k, v) in &headers {
                map.append(k.as_str(), v.as_str());
            }
            match key_of.extract(&subject, Some(&map), &payload) {
                Ok(k) => k,
                Err(reason) => return Line::NoKey(reason),
            }
        }
    };
    Line::Keyed(Event {
        key,
        subject,
        headers,
        payload,
        timestamp_ms: n,
        sequence: n,
    })
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
    let answers = Arc::new(match &opts.lookups {
        Some(path) => Answers::load(path)?,
        None => Answers::none(),
    });
    let dir = tempfile::tempdir()?;
    let state = Arc::new(StateStore::open(
        &dir.path().join("db"),
        crate::state::DEFAULT_KEY_GROUPS,
        Arc::new(SystemClock),
    )?);
    let cache = compile_cache_dir();
    let engine = Engine::new(cache.as_deref())?;
    let p = engine.load_file(plugin)?;
    if let Some(dir) = &cache {
        prune(dir, KEEP_COMPILED);
    }
    let ctx = InstanceContext {
        state: state.clone(),
        limits: Limits {
            cpu_per_event: std::time::Duration::from_millis(opts.cpu_ms_per_event),
            ..Limits::default()
        },
        lookups: Some(answers.clone() as Arc<dyn LookupSource>),
        batch_calls: true,
        packed_batches: true,
    };
    let mut planner = Planner::new(&p, &ctx, &opts.config)?;
    let mut worker = Worker::new(p, ctx, opts.config.clone(), Metrics::new("test"))?;
    let reader: Box<dyn BufRead> = if events == Path::new("-") {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(events)
                .with_context(|| format!("cannot read {}", events.display()))?,
        ))
    };
    let key_of = KeyExtractor::new(&opts.key);
    let mut pending: Vec<Event> = Vec::new();
    let mut n = 0u64;
    let mut flush = |worker: &mut Worker,
                     pending: &mut Vec<Event>,
                     out: &mut dyn Write|
     -> anyhow::Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        let kgs: Vec<u16> = pending.iter().map(|e| state.key_group(&e.key)).collect();
        // As `eddy run` does: what `prepare` plans is answered before `handle` is called.
        let prefetched = match planner.as_mut() {
            Some(planner) => Arc::new(answers.prefetch(&planner.prepare(pending))),
            None => Arc::default(),
        };
        let results = worker.handle(pending, &kgs, &prefetched)?;
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
        match parse_line(n, &line, opts, &key_of) {
            Line::NoKey(reason) => {
                flush(&mut worker, &mut pending, out)?;
                let line = serde_json::json!({
                    "seq": n, "outcome": "failed", "kind": "key", "reason": reason,
                });
                writeln!(out, "{line}")?;
            }
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
    let (planned, unplanned) = answers.counts();
    if planned + unplanned > 0 {
        let from = match &opts.lookups {
            Some(path) => path.display().to_string(),
            None => "nowhere (no --lookups)".to_string(),
        };
        eprintln!(
            "eddy test: {} lookups answered from {from}: {planned} planned by prepare, {unplanned} made from handle",
            planned + unplanned
        );
        if unplanned > 0 {
            eprintln!(
                "  a running pipeline waits for each lookup made from handle; plan them in the plugin's prepare, or with the pipeline file's `lookup.<store>.plan`"
            );
        }
    }
    if opts.dump_state {
        for line in dump(&state)? {
            writeln!(out, "{line}")?;
        }
    }
    Ok(())
}

/// Where `eddy test` keeps compiled components between runs (a JavaScript or Python plugin
/// takes seconds to compile; an unchanged one then loads at once): `$XDG_CACHE_HOME/eddy/
/// compiled`, else `~/.cache/eddy/compiled`.
fn compile_cache_dir() -> Option<std::path::PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))?;
    Some(base.join("eddy").join("compiled"))
}

/// How many compiled components `eddy test` keeps (each edit adds one).
const KEEP_COMPILED: usize = 8;

/// Removes all but the `keep` most recently written files of `dir` (not its directories).
fn prune(dir: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<(std::time::SystemTime, std::path::PathBuf)> = entries
        .filter_map(|e| {
            let e = e.ok()?;
            let meta = e.metadata().ok()?;
            // Components only: the compiled functions have a directory of their own.
            meta.is_file().then_some(())?;
            Some((meta.modified().ok()?, e.path()))
        })
        .collect();
    files.sort_by_key(|f| std::cmp::Reverse(f.0));
    for (_, path) in files.into_iter().skip(keep) {
        let _ = std::fs::remove_file(path);
    }
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

/// `eddy test`: runs the harness on a blocking thread, printing to stdout, or comparing with
/// `--expect`'s file.
pub async fn command(
    plugin: std::path::PathBuf,
    events: std::path::PathBuf,
    opts: HarnessOptions,
) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || {
        let Some(expected) = &opts.expect else {
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            return run(&plugin, &events, &opts, &mut out);
        };
        let want = std::fs::read_to_string(expected)
            .with_context(|| format!("cannot read {}", expected.display()))?;
        let mut got = Vec::new();
        run(&plugin, &events, &opts, &mut got)?;
        let report = compare(&String::from_utf8_lossy(&got), &want, expected)?;
        println!("{report}");
        Ok(())
    })
    .await?
}

/// Compares the harness's lines with the expected ones: `Ok(summary)` when every line
/// matches, else an error listing the differences (the first 10).
pub fn compare(got: &str, want: &str, expected: &Path) -> anyhow::Result<String> {
    let parse = |text: &str, what: &str| -> anyhow::Result<Vec<(usize, serde_json::Value)>> {
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                serde_json::from_str(l)
                    .map(|v| (i + 1, v))
                    .with_context(|| format!("{what} line {} is not JSON", i + 1))
            })
            .collect()
    };
    let got = parse(got, "output")?;
    let want = parse(want, &expected.display().to_string())?;
    let mut diffs = Vec::new();
    for i in 0..got.len().max(want.len()) {
        match (want.get(i), got.get(i)) {
            (Some((line, w)), Some((_, g))) if !matches(w, g) => diffs.push(format!(
                "line {line} of {}:\n  expected: {w}\n  got:      {g}",
                expected.display()
            )),
            (Some((line, w)), None) => diffs.push(format!(
                "line {line} of {}: expected {w}, but the run has no more lines",
                expected.display()
            )),
            (None, Some((_, g))) => {
                diffs.push(format!("an extra line, not in {}: {g}", expected.display()))
            }
            _ => {}
        }
    }
    if diffs.is_empty() {
        return Ok(format!(
            "ok: {} lines as {} expects",
            got.len(),
            expected.display()
        ));
    }
    bail!(
        "{} of {} lines differ from {}:\n{}\n(run without --expect to see every line)",
        diffs.len(),
        got.len().max(want.len()),
        expected.display(),
        super::first_lines(&diffs, 10)
    )
}

/// Whether `got` matches `want`: objects field by field for the fields `want` names; anything
/// else by equality.
fn matches(want: &serde_json::Value, got: &serde_json::Value) -> bool {
    match (want, got) {
        (serde_json::Value::Object(w), serde_json::Value::Object(g)) => w
            .iter()
            .all(|(k, wv)| g.get(k).is_some_and(|gv| matches(wv, gv))),
        (serde_json::Value::Array(w), serde_json::Value::Array(g)) => {
            w.len() == g.len() && w.iter().zip(g).all(|(a, b)| matches(a, b))
        }
        _ => want == got,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_lines_match_on_the_fields_they_name() {
        let got = r#"{"seq":1,"outcome":"emit","outputs":[{"headers":[["a","b"]],"payload":{"x":1}}]}
{"seq":2,"outcome":"failed","kind":"key","reason":"no key"}"#;
        let path = Path::new("expected.jsonl");
        let want = r#"{"seq":1,"outputs":[{"payload":{"x":1}}]}
{"seq":2,"outcome":"failed","kind":"key"}"#;
        assert_eq!(
            compare(got, want, path).expect("matches"),
            "ok: 2 lines as expected.jsonl expects"
        );
        let wrong = r#"{"seq":1,"outputs":[{"payload":{"x":2}}]}"#;
        let e = compare(got, wrong, path).expect_err("differs").to_string();
        assert!(e.starts_with("2 of 2 lines differ"), "{e}");
        assert!(
            e.contains(r#"expected: {"outputs":[{"payload":{"x":2}}],"seq":1}"#),
            "{e}"
        );
        assert!(e.contains("an extra line, not in expected.jsonl"), "{e}");
    }

    #[test]
    fn the_compile_cache_keeps_the_newest_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        for i in 0..5 {
            let f = dir.path().join(format!("{i}.cwasm"));
            std::fs::write(&f, b"x").expect("write");
            let at = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000 + i);
            std::fs::File::options()
                .write(true)
                .open(&f)
                .and_then(|h| h.set_modified(at))
                .expect("mtime");
        }
        prune(dir.path(), 2);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["3.cwasm", "4.cwasm"]);
    }

    #[test]
    fn the_key_comes_from_the_flag_then_the_pipeline_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("pipeline.toml");
        assert_eq!(
            key_source(None, &file).expect("default"),
            KeySource::Json("/key".into())
        );
        std::fs::write(
            &file,
            "[pipeline]\nname = \"x\"\n[input]\nkey = { json = \"/customer\" }\n",
        )
        .expect("write");
        assert_eq!(
            key_source(None, &file).expect("from file"),
            KeySource::Json("/customer".into())
        );
        assert_eq!(
            key_source(Some("/k".into()), &file).expect("flag"),
            KeySource::Json("/k".into())
        );
        std::fs::write(&file, "[input]\nkey = 3\n").expect("write");
        let e = key_source(None, &file).expect_err("bad").to_string();
        assert!(e.contains("give the key's JSON pointer with --key"), "{e}");
    }
}
