//! `eddy state load` and `eddy state export`: a state (or broadcast map) from a JSON Lines or
//! CSV file into a savepoint a pipeline starts from, and a savepoint's state out to one.
//!
//! One line (or CSV row) per entry; a list has one line per element, oldest first:
//!
//! ```text
//! {"key": "c-42", "value": {"tier": "gold"}}
//! {"key": "c-42", "map_key": "tx-1", "value": 1250, "written_ms": 1764755000000, "ttl_ms": 86400000}
//! ```
//!
//! `value` is kept exactly as written (the bytes between its first and last character), so an
//! export loaded again gives byte-identical state. Keys and values that are not UTF-8 text or
//! JSON travel as `key_base64` / `map_key_base64` / `value_base64`. `written_ms` (default: the
//! load's time) is the entry's write time, from which TTL counts; `ttl_ms` its own TTL.
//! CSV files have a header naming the columns `key`, `map_key`, `value`, `written_ms`,
//! `ttl_ms`; a `value` cell that is not JSON is taken as a JSON string.

use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use base64::Engine as _;
use serde::Deserialize;

use crate::checkpoint::savepoint::bulk::{Builder, Entry, Target};
use crate::config::PipelineConfig;
use crate::state::StateKind;
use crate::state::layout::{decode_list, decode_value_ttl, encode_value_ttl};

/// The file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One JSON object per line.
    Jsonl,
    /// Comma-separated, with a header row.
    Csv,
}

impl Format {
    /// The format a file's name says (`.csv`: CSV, anything else JSON Lines).
    fn of(path: &Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("csv") => Format::Csv,
            _ => Format::Jsonl,
        }
    }
}

/// What a bad line does to a load.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OnError {
    /// Stop: nothing is loaded.
    #[default]
    Fail,
    /// Report it and go on.
    Skip,
}

/// One entry as a line (or CSV row) gives it.
#[derive(Debug)]
pub struct Parsed {
    /// The state's key.
    pub key: Vec<u8>,
    /// The map key, for a map state.
    pub map_key: Option<Vec<u8>>,
    /// The value, byte for byte as written.
    pub value: Vec<u8>,
    /// When it was written (TTL counts from it).
    pub written_ms: Option<u64>,
    /// Its own TTL.
    pub ttl_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    key_base64: Option<String>,
    #[serde(default)]
    map_key: Option<String>,
    #[serde(default)]
    map_key_base64: Option<String>,
    /// Checked as a plugin's JSON reader would read it; the bytes are taken from the line.
    #[serde(default)]
    value: Option<crate::pipeline::json::Checked>,
    #[serde(default)]
    value_base64: Option<String>,
    #[serde(default)]
    written_ms: Option<u64>,
    #[serde(default)]
    ttl_ms: Option<u64>,
}

fn text_or_base64(
    text: Option<String>,
    b64: Option<String>,
    field: &str,
) -> Result<Option<Vec<u8>>, String> {
    match (text, b64) {
        (Some(_), Some(_)) => Err(format!("give `{field}` or `{field}_base64`, not both")),
        (Some(t), None) => Ok(Some(t.into_bytes())),
        (None, Some(b)) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .map(Some)
            .map_err(|e| format!("`{field}_base64` is not base64: {e}")),
        (None, None) => Ok(None),
    }
}

/// Parses one JSON Lines entry; `Err` says what is wrong with the line.
pub fn parse_jsonl(line: &str) -> Result<Parsed, String> {
    let l: Line =
        serde_json::from_str(line).map_err(|e| format!("not a JSON object of an entry: {e}"))?;
    let key = text_or_base64(l.key, l.key_base64, "key")?.ok_or("`key` is missing")?;
    let map_key = text_or_base64(l.map_key, l.map_key_base64, "map_key")?;
    let value = match (l.value.is_some(), l.value_base64) {
        (true, Some(_)) => return Err("give `value` or `value_base64`, not both".into()),
        (true, None) => value_span(line.as_bytes())
            .ok_or("cannot find `value` in the line")?
            .to_vec(),
        (false, Some(b)) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .map_err(|e| format!("`value_base64` is not base64: {e}"))?,
        (false, None) => return Err("`value` is missing".into()),
    };
    Ok(Parsed {
        key,
        map_key,
        value,
        written_ms: l.written_ms,
        ttl_ms: l.ttl_ms,
    })
}

/// The exact text of the top-level `"value"` member of a JSON object on one line.
fn value_span(line: &[u8]) -> Option<&[u8]> {
    let mut i = skip_ws(line, 0);
    if line.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    loop {
        i = skip_ws(line, i);
        let key_start = i;
        i = skip_value(line, i)?;
        let key = &line[key_start..i];
        i = skip_ws(line, i);
        if line.get(i) != Some(&b':') {
            return None;
        }
        let start = skip_ws(line, i + 1);
        let end = skip_value(line, start)?;
        if key == b"\"value\"" {
            return Some(&line[start..end]);
        }
        i = skip_ws(line, end);
        match line.get(i) {
            Some(b',') => i += 1,
            _ => return None,
        }
    }
}

fn skip_ws(s: &[u8], mut i: usize) -> usize {
    while s.get(i).is_some_and(|b| b.is_ascii_whitespace()) {
        i += 1;
    }
    i
}

/// The end of the JSON value starting at `i` (strings, numbers, literals, nested objects and
/// arrays, skipping brackets inside strings).
fn skip_value(s: &[u8], mut i: usize) -> Option<usize> {
    let mut depth = 0usize;
    loop {
        match *s.get(i)? {
            b'"' => {
                i += 1;
                loop {
                    match *s.get(i)? {
                        b'\\' => i += 2,
                        b'"' => break,
                        _ => i += 1,
                    }
                }
                i += 1;
            }
            b'{' | b'[' => {
                depth += 1;
                i += 1;
            }
            b'}' | b']' => {
                depth = depth.checked_sub(1)?;
                i += 1;
            }
            _ if depth == 0 => {
                while s.get(i).is_some_and(|b| !b",}] \t\r\n".contains(b)) {
                    i += 1;
                }
            }
            _ => i += 1,
        }
        if depth == 0 {
            return Some(i);
        }
    }
}

/// Parses one CSV row under the file's header row; `Err` says what is wrong with the row.
pub fn parse_csv(headers: &csv::StringRecord, row: &csv::StringRecord) -> Result<Parsed, String> {
    let cell = |name: &str| -> Option<&str> {
        headers
            .iter()
            .position(|h| h.trim() == name)
            .and_then(|i| row.get(i))
            .filter(|c| !c.is_empty())
    };
    let number = |name: &str| -> Result<Option<u64>, String> {
        cell(name)
            .map(|c| c.trim().parse().map_err(|e| format!("`{name}` {c:?}: {e}")))
            .transpose()
    };
    let key = cell("key")
        .ok_or("the `key` cell is empty")?
        .as_bytes()
        .to_vec();
    let value = cell("value").ok_or("the `value` cell is empty")?;
    let value = if crate::pipeline::json::check(value.as_bytes()).is_ok() {
        value.as_bytes().to_vec()
    } else {
        serde_json::to_vec(value).map_err(|e| e.to_string())?
    };
    Ok(Parsed {
        key,
        map_key: cell("map_key").map(|m| m.as_bytes().to_vec()),
        value,
        written_ms: number("written_ms")?,
        ttl_ms: number("ttl_ms")?,
    })
}

/// Adds one entry to the savepoint being built.
fn add(b: &mut Builder, kind: Option<StateKind>, p: Parsed, now: u64) -> Result<(), String> {
    let ts = p.written_ms.unwrap_or(now);
    let r = match (kind, p.map_key) {
        (Some(StateKind::Map), Some(mk)) => {
            b.map_entry(&p.key, &mk, &encode_value_ttl(ts, p.ttl_ms, &p.value))
        }
        (Some(StateKind::Map), None) => return Err("a map entry needs `map_key`".into()),
        (_, Some(_)) => return Err("`map_key` is only for map states".into()),
        (Some(StateKind::List), None) if p.ttl_ms.is_some() => {
            return Err("list elements have no TTL of their own; remove `ttl_ms`".into());
        }
        (Some(StateKind::List), None) => b.list_element(&p.key, ts, &p.value),
        (Some(StateKind::Value), None) => {
            b.value(&p.key, &encode_value_ttl(ts, p.ttl_ms, &p.value))
        }
        (None, None) if p.written_ms.is_some() || p.ttl_ms.is_some() => {
            return Err("broadcast entries have no write time or TTL; remove them".into());
        }
        (None, None) => b.value(&p.key, &p.value),
    };
    r.map_err(|e| format!("{e:#}"))
}

/// Takes a parsed entry (with its line number); `false` once the load stopped taking them.
type Emit<'a> = &'a mut dyn FnMut(u64, Result<Parsed, String>) -> bool;

/// The entries of a JSON Lines file, with their line numbers.
fn jsonl_entries(mut reader: impl BufRead, file: &Path, emit: Emit) -> anyhow::Result<()> {
    let mut line = String::new();
    let mut n = 0u64;
    loop {
        line.clear();
        let read = reader
            .read_line(&mut line)
            .with_context(|| format!("cannot read {}", file.display()))?;
        if read == 0 {
            return Ok(());
        }
        n += 1;
        if !line.trim().is_empty() && !emit(n, parse_jsonl(line.trim_end_matches(['\n', '\r']))) {
            return Ok(());
        }
    }
}

/// The entries of a CSV file, with their line numbers (the header row counts as line 1).
fn csv_entries(reader: impl BufRead, file: &Path, emit: Emit) -> anyhow::Result<()> {
    let mut r = csv::ReaderBuilder::new().flexible(true).from_reader(reader);
    let headers = r
        .headers()
        .with_context(|| format!("{}: no header row", file.display()))?
        .clone();
    if !headers.iter().any(|h| h.trim() == "key") || !headers.iter().any(|h| h.trim() == "value") {
        bail!(
            "{}: the header row must name the columns `key` and `value` (and `map_key` for a map state); it is {:?}",
            file.display(),
            headers.iter().collect::<Vec<_>>()
        );
    }
    let mut row = csv::StringRecord::new();
    for n in 2u64.. {
        let parsed = match r.read_record(&mut row) {
            Ok(false) => return Ok(()),
            Ok(true) => parse_csv(&headers, &row),
            Err(e) => Err(e.to_string()),
        };
        if !emit(n, parsed) {
            break;
        }
    }
    Ok(())
}

/// Entries parsed per batch on a thread of their own.
const PARSED_BATCH: usize = 4096;

/// Runs `produce` (reading and parsing the file) on a thread of its own and hands what it
/// parses, in file order, to `take` (which builds the savepoint): parsing is about half a
/// load's work. An error of `take` stops both; an error of `produce` ends the load after
/// what it parsed before.
fn parsed_beside(
    produce: impl FnOnce(Emit) -> anyhow::Result<()> + Send,
    mut take: impl FnMut(u64, Result<Parsed, String>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<(u64, Result<Parsed, String>)>>(8);
        let parser = scope.spawn(move || {
            let mut batch = Vec::with_capacity(PARSED_BATCH);
            let produced = produce(&mut |n, parsed| {
                batch.push((n, parsed));
                batch.len() < PARSED_BATCH
                    || tx
                        .send(std::mem::replace(
                            &mut batch,
                            Vec::with_capacity(PARSED_BATCH),
                        ))
                        .is_ok()
            });
            if !batch.is_empty() {
                let _ = tx.send(batch);
            }
            produced
        });
        let mut taken = Ok(());
        'batches: for batch in rx.iter() {
            for (n, parsed) in batch {
                taken = take(n, parsed);
                if taken.is_err() {
                    break 'batches;
                }
            }
        }
        // The parser's next send fails once the receiver is gone: it stops there.
        drop(rx);
        let produced = parser
            .join()
            .map_err(|_| anyhow::anyhow!("the thread parsing the file panicked"))?;
        taken.and(produced)
    })
}

/// `eddy state load`.
pub fn load(
    pipeline: &Path,
    file: &Path,
    target: Target,
    format: Option<Format>,
    on_error: OnError,
    to: Option<PathBuf>,
    into: Option<PathBuf>,
) -> anyhow::Result<()> {
    let cfg = PipelineConfig::load(pipeline)?;
    let name = target.name().to_string();
    let kind = target.kind();
    let to = to.or_else(|| into.clone()).unwrap_or_else(|| {
        cfg.savepoint_dir()
            .join(format!("load-{name}-{}", crate::checkpoint::now_ms()))
    });
    let format = format.unwrap_or_else(|| Format::of(file));
    let input =
        std::fs::File::open(file).with_context(|| format!("cannot read {}", file.display()))?;
    let size = input.metadata().map(|m| m.len()).unwrap_or(0);
    let bar = super::progress(size, "loading", "bytes");
    let reader = std::io::BufReader::new(bar.wrap_read(input));
    let mut b = Builder::create(
        &to,
        into.as_deref(),
        &cfg.pipeline.name,
        cfg.pipeline.key_groups,
        target,
    )?;
    let now = crate::checkpoint::now_ms();
    let mut bad: Vec<String> = Vec::new();
    let mut lines = 0u64;
    let take = |n: u64, entry: Result<Parsed, String>| -> anyhow::Result<()> {
        lines += 1;
        if let Err(why) = entry.and_then(|p| add(&mut b, kind, p, now)) {
            let at = format!("{}:{n}: {why}", file.display());
            if on_error == OnError::Fail {
                bail!("{at}; nothing was loaded (fix the line, or pass --on-error skip)");
            }
            bad.push(at);
        }
        Ok(())
    };
    match format {
        Format::Jsonl => parsed_beside(|emit| jsonl_entries(reader, file, emit), take)?,
        Format::Csv => parsed_beside(|emit| csv_entries(reader, file, emit), take)?,
    }
    bar.finish_and_clear();
    let before = b.base_entries();
    let meta = b.finish()?;
    for at in bad.iter().take(20) {
        eprintln!("skipped {at}");
    }
    if bad.len() > 20 {
        eprintln!("skipped {} more lines", bad.len() - 20);
    }
    println!(
        "loaded {} entries of `{name}` from {lines} lines ({} skipped) into {}",
        meta.entries - before,
        bad.len(),
        to.display()
    );
    println!(
        "start the pipeline from it: eddy run {} --from-savepoint {}",
        pipeline.display(),
        to.display()
    );
    Ok(())
}

/// `eddy state export`.
pub fn export(
    savepoint: &Path,
    state: Option<String>,
    map: Option<String>,
    format: Format,
    out: Option<PathBuf>,
) -> anyhow::Result<()> {
    let meta = crate::checkpoint::savepoint::read_meta(savepoint)?;
    let target = match (state, map) {
        (Some(name), None) => {
            let kind = meta
                .states
                .iter()
                .find(|s| s.name == name)
                .map(|s| s.kind)
                .with_context(|| {
                    let known: Vec<&str> = meta.states.iter().map(|s| s.name.as_str()).collect();
                    format!(
                        "savepoint {} has no state `{name}`; it has {known:?}",
                        savepoint.display()
                    )
                })?;
            Target::State { name, kind }
        }
        (None, Some(name)) => Target::Map(name),
        _ => bail!("name one state (--state NAME) or one broadcast map (--map NAME)"),
    };
    let sink: Box<dyn Write> = match &out {
        Some(p) => Box::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut w = BufWriter::new(sink);
    let kind = target.kind();
    let map_state = kind == Some(StateKind::Map);
    let keyed = kind.is_some();
    if format == Format::Csv {
        let mut cols = vec!["key"];
        if map_state {
            cols.push("map_key");
        }
        cols.push("value");
        if keyed {
            cols.extend(["written_ms", "ttl_ms"]);
        }
        writeln!(w, "{}", cols.join(","))?;
    }
    let files = meta.files.len() as u64;
    let bar = super::progress(files, "exporting", "files");
    let mut written = 0u64;
    crate::checkpoint::savepoint::bulk::entries(
        savepoint,
        &target,
        |e: Entry<'_>| {
            let rows: Vec<(Option<u64>, Option<u64>, &[u8])> = match kind {
                Some(StateKind::List) => decode_list(e.stored)
                    .context("a list entry is damaged")?
                    .into_iter()
                    .map(|(ts, v)| (Some(ts), None, v))
                    .collect(),
                Some(_) => {
                    let (ts, own, v) = decode_value_ttl(e.stored).context("an entry is damaged")?;
                    vec![(Some(ts), own, v)]
                }
                None => vec![(None, None, e.stored)],
            };
            for (ts, ttl, v) in rows {
                written += 1;
                match format {
                    Format::Jsonl => write_jsonl(&mut w, e, ts, ttl, v)?,
                    Format::Csv => write_csv(&mut w, e, map_state, keyed, ts, ttl, v)?,
                }
            }
            Ok(())
        },
        |p| bar.set_position(p.done as u64),
    )?;
    bar.finish_and_clear();
    w.flush()?;
    if let Some(p) = out {
        eprintln!("exported {written} entries to {}", p.display());
    }
    Ok(())
}

/// Whether `v` can travel as JSON text on one line, exactly.
fn one_line_json(v: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(v).ok()?;
    let trimmed = text.trim();
    (trimmed.len() == text.len()
        && !text.contains(['\n', '\r'])
        && serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok())
    .then_some(text)
}

fn field(w: &mut impl Write, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    match std::str::from_utf8(bytes) {
        Ok(t) => write!(w, "\"{name}\":{}", serde_json::to_string(t)?)?,
        Err(_) => write!(
            w,
            "\"{name}_base64\":\"{}\"",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        )?,
    }
    Ok(())
}

fn write_jsonl(
    w: &mut impl Write,
    e: Entry<'_>,
    ts: Option<u64>,
    ttl: Option<u64>,
    v: &[u8],
) -> anyhow::Result<()> {
    w.write_all(b"{")?;
    field(w, "key", e.key)?;
    if let Some(mk) = e.map_key {
        w.write_all(b",")?;
        field(w, "map_key", mk)?;
    }
    match one_line_json(v) {
        Some(json) => write!(w, ",\"value\":{json}")?,
        None => write!(
            w,
            ",\"value_base64\":\"{}\"",
            base64::engine::general_purpose::STANDARD.encode(v)
        )?,
    }
    if let Some(ts) = ts {
        write!(w, ",\"written_ms\":{ts}")?;
    }
    if let Some(ttl) = ttl {
        write!(w, ",\"ttl_ms\":{ttl}")?;
    }
    w.write_all(b"}\n")?;
    Ok(())
}

fn write_csv(
    w: &mut impl Write,
    e: Entry<'_>,
    map_state: bool,
    keyed: bool,
    ts: Option<u64>,
    ttl: Option<u64>,
    v: &[u8],
) -> anyhow::Result<()> {
    let text = |b: &[u8]| -> anyhow::Result<String> {
        std::str::from_utf8(b)
            .map(str::to_string)
            .map_err(|_| anyhow::anyhow!("a key or value is not UTF-8 text: export it as JSON Lines (--format jsonl), which carries bytes as base64"))
    };
    let mut row = vec![text(e.key)?];
    if map_state {
        row.push(text(e.map_key.unwrap_or_default())?);
    }
    row.push(text(v)?);
    if keyed {
        row.push(ts.map(|t| t.to_string()).unwrap_or_default());
        row.push(ttl.map(|t| t.to_string()).unwrap_or_default());
    }
    let quoted: Vec<String> = row
        .into_iter()
        .map(|c| {
            if c.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", c.replace('"', "\"\""))
            } else {
                c
            }
        })
        .collect();
    writeln!(w, "{}", quoted.join(","))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_value_is_found_exactly_whatever_its_shape_and_place() {
        for (line, want) in [
            (
                r#"{"key":"a","value":{"b":[1,2,{"c":"}"}],"a":1}}"#,
                r#"{"b":[1,2,{"c":"}"}],"a":1}"#,
            ),
            (r#"{"value": "x\"y" , "key":"a"}"#, r#""x\"y""#),
            (
                r#"{"key":"a","map_key":"m","value":-1.5e3,"written_ms":1}"#,
                "-1.5e3",
            ),
            (r#"{"key":"value","value":null}"#, "null"),
        ] {
            assert_eq!(value_span(line.as_bytes()), Some(want.as_bytes()), "{line}");
        }
        assert_eq!(value_span(br#"{"key":"a"}"#), None);
    }

    #[test]
    fn bad_lines_say_what_is_wrong() {
        let e = parse_jsonl(r#"{"key":"a"}"#).expect_err("no value");
        assert!(e.contains("`value` is missing"), "{e}");
        let e = parse_jsonl(r#"{"kee":"a","value":1}"#).expect_err("typo");
        assert!(e.contains("unknown field `kee`"), "{e}");
        let e = parse_jsonl("not json").expect_err("not json");
        assert!(e.contains("not a JSON object"), "{e}");
        // Found by fuzzing (fuzz/fuzz_targets/bulk_line.rs): values no JSON reader of a plugin
        // accepts were loaded as they were.
        for bad in [r#"1e400"#, r#""\ud800""#] {
            let line = format!(r#"{{"key":"a","value":{bad}}}"#);
            let e = parse_jsonl(&line).expect_err(bad);
            assert!(e.contains("not a JSON object"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_csv_value_that_is_not_json_becomes_a_string() {
        let headers = csv::StringRecord::from(vec!["key", "value"]);
        for (cell, kept) in [
            ("{\"a\":1}", "{\"a\":1}"),
            ("gold", "\"gold\""),
            ("1e400", "\"1e400\""),
        ] {
            let row = csv::StringRecord::from(vec!["c-1", cell]);
            let p = parse_csv(&headers, &row).expect(cell);
            assert_eq!(p.value, kept.as_bytes(), "{cell}");
        }
    }

    /// Lines parsed on the other thread arrive in file order across batches; an error while
    /// taking them stops the parsing too, and a reading error ends the load after what came
    /// before it.
    #[test]
    fn entries_parsed_beside_arrive_in_order_and_an_error_stops_both_sides() {
        let lines = 3 * PARSED_BATCH as u64 + 17;
        let text: String = (1..=lines)
            .map(|n| format!("{{\"key\":\"k{n}\",\"value\":{n}}}\n"))
            .collect();
        let mut seen = Vec::new();
        parsed_beside(
            |emit| jsonl_entries(text.as_bytes(), Path::new("f.jsonl"), emit),
            |n, p| {
                let p = p.map_err(|e| anyhow::anyhow!(e))?;
                assert_eq!(p.key, format!("k{n}").into_bytes());
                seen.push(n);
                Ok(())
            },
        )
        .expect("load");
        assert_eq!(seen, (1..=lines).collect::<Vec<_>>());

        let emitted = std::sync::atomic::AtomicU64::new(0);
        let many = 20 * PARSED_BATCH as u64;
        let e = parsed_beside(
            |emit| {
                for n in 1..=many {
                    emitted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if !emit(n, parse_jsonl(r#"{"key":"a","value":1}"#)) {
                        return Ok(());
                    }
                }
                Ok(())
            },
            |n, _| {
                if n == 10 {
                    bail!("line {n} is bad");
                }
                Ok(())
            },
        )
        .expect_err("stopped");
        assert_eq!(e.to_string(), "line 10 is bad");
        // The parser stops at its first send after the taker gave up: beyond the batch with
        // line 10, at most the 8 batches the channel holds and the one being filled.
        let parsed = emitted.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            parsed <= 10 * PARSED_BATCH as u64,
            "the parser went on: {parsed} of {many} lines"
        );

        let e = parsed_beside(
            |emit| {
                emit(1, parse_jsonl(r#"{"key":"a","value":1}"#));
                bail!("cannot read f.jsonl: disk gone")
            },
            |_, _| Ok(()),
        )
        .expect_err("read error");
        assert!(e.to_string().contains("disk gone"), "{e}");
    }
}
