//! `eddy state load` and `eddy state export`: a state (or broadcast map) from a JSON Lines,
//! CSV or Parquet file into a savepoint a pipeline starts from, and a savepoint's state out to
//! one.
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
//! `ttl_ms`; a `value` cell that is not JSON is taken as a JSON string. Parquet files have
//! the same columns, with more types (see `parquet`).

mod parquet;
mod read;

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use base64::Engine as _;

use crate::checkpoint::savepoint::bulk::{Builder, Entry, Target};
use crate::config::PipelineConfig;
use crate::state::StateKind;
use crate::state::layout::{decode_list, decode_value_ttl, encode_value_ttl};
pub use read::{Parsed, parse_csv, parse_jsonl};
use read::{csv_entries, jsonl_entries, parsed_beside};

/// The file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One JSON object per line.
    Jsonl,
    /// Comma-separated, with a header row.
    Csv,
    /// Apache Parquet.
    Parquet,
}

impl Format {
    /// The format a file's name says (`.csv`: CSV, `.parquet` or `.pq`: Parquet, anything
    /// else JSON Lines).
    fn of(path: &Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("csv") => Format::Csv,
            Some(e) if e.eq_ignore_ascii_case("parquet") || e.eq_ignore_ascii_case("pq") => {
                Format::Parquet
            }
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
        (Some(StateKind::List), None) => b.list_element(p.key, ts, &p.value),
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
    let bar = match format {
        Format::Parquet => super::progress(parquet::rows(file)?, "loading", "rows"),
        _ => super::progress(
            input.metadata().map(|m| m.len()).unwrap_or(0),
            "loading",
            "bytes",
        ),
    };
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
    // What a file is made of, in messages.
    let line = if format == Format::Parquet {
        "row"
    } else {
        "line"
    };
    let take = |n: u64, entry: Result<Parsed, String>| -> anyhow::Result<()> {
        lines += 1;
        if let Err(why) = entry.and_then(|p| add(&mut b, kind, p, now)) {
            let at = match format {
                Format::Parquet => format!("{}: row {n}: {why}", file.display()),
                _ => format!("{}:{n}: {why}", file.display()),
            };
            if on_error == OnError::Fail {
                bail!("{at}; nothing was loaded (fix the {line}, or pass --on-error skip)");
            }
            bad.push(at);
        }
        Ok(())
    };
    match format {
        Format::Jsonl => parsed_beside(|emit| jsonl_entries(reader, file, emit), take)?,
        Format::Csv => parsed_beside(|emit| csv_entries(reader, file, emit), take)?,
        Format::Parquet => {
            let rows = bar.clone();
            parsed_beside(
                move |emit| {
                    parquet::parquet_entries(file, &mut |n, p| {
                        if n % 4096 == 0 {
                            rows.set_position(n);
                        }
                        emit(n, p)
                    })
                },
                take,
            )?
        }
    }
    bar.finish_and_clear();
    let before = b.base_entries();
    let meta = b.finish()?;
    for at in bad.iter().take(20) {
        eprintln!("skipped {at}");
    }
    if bad.len() > 20 {
        eprintln!("skipped {} more {line}s", bad.len() - 20);
    }
    println!(
        "loaded {} entries of `{name}` from {lines} {line}s ({} skipped) into {}",
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
    let kind = target.kind();
    let map_state = kind == Some(StateKind::Map);
    let keyed = kind.is_some();
    let mut columns = match (format, &out) {
        (Format::Parquet, Some(p)) => Some(parquet::Writer::create(p, map_state, keyed)?),
        (Format::Parquet, None) => {
            bail!("Parquet is not written to a terminal: name the file with --out")
        }
        _ => None,
    };
    let sink: Box<dyn Write> = match (&out, &columns) {
        (_, Some(_)) => Box::new(std::io::sink()),
        (Some(p), None) => Box::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        ),
        (None, None) => Box::new(std::io::stdout().lock()),
    };
    let mut w = BufWriter::new(sink);
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
                    Format::Parquet => columns
                        .as_mut()
                        .context("the Parquet file is open")?
                        .push(e.key, e.map_key, v, ts, ttl)?,
                }
            }
            Ok(())
        },
        |p| bar.set_position(p.done as u64),
    )?;
    bar.finish_and_clear();
    w.flush()?;
    if let Some(columns) = columns {
        columns.finish()?;
    }
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
