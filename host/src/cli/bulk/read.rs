//! Entries read from the files `eddy state load` takes: a JSON Lines line or a CSV row into
//! a [`Parsed`] entry (the value kept byte for byte), and a whole file read and parsed on a
//! thread of its own while the caller builds the savepoint ([`parsed_beside`]).

use std::io::BufRead;
use std::path::Path;

use anyhow::{Context, bail};
use base64::Engine as _;
use serde::Deserialize;

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

/// Takes a parsed entry (with its line number); `false` once the load stopped taking them.
pub(super) type Emit<'a> = &'a mut dyn FnMut(u64, Result<Parsed, String>) -> bool;

/// The entries of a JSON Lines file, with their line numbers.
pub(super) fn jsonl_entries(
    mut reader: impl BufRead,
    file: &Path,
    emit: Emit,
) -> anyhow::Result<()> {
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
pub(super) fn csv_entries(reader: impl BufRead, file: &Path, emit: Emit) -> anyhow::Result<()> {
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
pub(super) fn parsed_beside(
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
