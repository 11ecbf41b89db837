//! Parquet files in and out of `eddy state load` and `eddy state export`.
//!
//! Read: the columns `key`, `map_key`, `value`, `written_ms` and `ttl_ms`, as in CSV. A key
//! may be text, bytes or an integer (taken as its decimal text); a `value` of text (or of
//! bytes that are UTF-8, as older writers store text) that is JSON is kept exactly, other text
//! becomes a JSON string, other bytes are kept as they are, and any other type (numbers,
//! structs, lists, maps) becomes its JSON. A file without a `value` column, as a warehouse
//! exports a table, gives each row's other columns as one JSON object, in the file's column
//! order. `written_ms` may be an integer of milliseconds or a timestamp (milli-, micro- or
//! nanoseconds); `ttl_ms` an integer of milliseconds.
//!
//! Written: `key` and `map_key` as text, `value` as JSON text (Parquet's JSON type),
//! `written_ms` and `ttl_ms` as 64-bit integers, Snappy-compressed, in row groups of
//! [`ROW_GROUP`] entries, into `<file>.partial`, renamed to the file once complete.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use parquet::basic::{LogicalType, TimeUnit};
use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::file::writer::SerializedFileWriter;
use parquet::record::{Field, Row};

use super::read::{Emit, Parsed};

/// The columns an entry's file may name; any other makes the row its value (see the module).
const COLUMNS: [&str; 5] = ["key", "map_key", "value", "written_ms", "ttl_ms"];

/// Entries per row group written.
pub(super) const ROW_GROUP: usize = 65_536;

/// The rows in a Parquet file (for the progress bar).
pub(super) fn rows(file: &Path) -> anyhow::Result<u64> {
    Ok(open(file)?.metadata().file_metadata().num_rows().max(0) as u64)
}

fn open(file: &Path) -> anyhow::Result<SerializedFileReader<std::fs::File>> {
    let f = std::fs::File::open(file).with_context(|| format!("cannot read {}", file.display()))?;
    SerializedFileReader::new(f).with_context(|| {
        format!(
            "{} is not a Parquet file (name the format with --format if its extension misleads)",
            file.display()
        )
    })
}

/// The entries of a Parquet file, numbered by row from 1.
pub(super) fn parquet_entries(file: &Path, emit: Emit) -> anyhow::Result<()> {
    let reader = open(file)?;
    let schema = reader.metadata().file_metadata().schema_descr_ptr();
    let names: Vec<String> = schema
        .root_schema()
        .get_fields()
        .iter()
        .map(|f| f.name().to_string())
        .collect();
    if !names.iter().any(|n| n == "key") {
        bail!(
            "{}: no `key` column; its columns are {names:?}",
            file.display()
        );
    }
    let whole_row = !names.iter().any(|n| n == "value");
    if !whole_row && let Some(other) = names.iter().find(|n| !COLUMNS.contains(&n.as_str())) {
        bail!(
            "{}: column `{other}` is none of {COLUMNS:?}: drop it, or drop `value` to make each row's other columns its value",
            file.display()
        );
    }
    // The record API gives nanosecond timestamps as plain integers: known by the schema.
    let nanos = (0..schema.num_columns())
        .map(|i| schema.column(i))
        .any(|c| {
            c.path().parts().len() == 1
                && c.name() == "written_ms"
                && matches!(
                    c.logical_type_ref(),
                    Some(LogicalType::Timestamp(t)) if t.unit == TimeUnit::NANOS
                )
        });
    let iter = reader
        .get_row_iter(None)
        .with_context(|| format!("cannot read the rows of {}", file.display()))?;
    for (i, row) in iter.enumerate() {
        let row =
            row.with_context(|| format!("cannot read row {} of {}", i + 1, file.display()))?;
        if !emit(i as u64 + 1, parse_row(&row, whole_row, nanos)) {
            break;
        }
    }
    Ok(())
}

/// One row as an entry; with `whole_row`, the columns that are not the entry's own make up
/// its value, a JSON object with the columns in the file's order. `nanos`: `written_ms` is a
/// timestamp in nanoseconds.
fn parse_row(row: &Row, whole_row: bool, nanos: bool) -> Result<Parsed, String> {
    let (mut key, mut map_key, mut value) = (None, None, None);
    let (mut written_ms, mut ttl_ms) = (None, None);
    let mut rest = String::from("{");
    for (name, field) in row.get_column_iter() {
        match name.as_str() {
            "key" => key = key_bytes(field, "key")?,
            "map_key" => map_key = key_bytes(field, "map_key")?,
            "value" => value = Some(value_bytes(field)?),
            "written_ms" => written_ms = written(field, nanos)?,
            "ttl_ms" => ttl_ms = duration_ms(field)?,
            _ => {
                if rest.len() > 1 {
                    rest.push(',');
                }
                let member = (
                    serde_json::to_string(name),
                    serde_json::to_string(&field.to_json_value()),
                );
                let (Ok(name), Ok(value)) = member else {
                    return Err(format!("column `{name}` cannot be written as JSON"));
                };
                rest.push_str(&name);
                rest.push(':');
                rest.push_str(&value);
            }
        }
    }
    rest.push('}');
    let value = match value {
        Some(v) => v,
        None if whole_row => rest.into_bytes(),
        None => return Err("`value` is missing".into()),
    };
    Ok(Parsed {
        key: key.ok_or("`key` is null")?,
        map_key,
        value,
        written_ms,
        ttl_ms,
    })
}

fn key_bytes(field: &Field, name: &str) -> Result<Option<Vec<u8>>, String> {
    Ok(Some(match field {
        Field::Null => return Ok(None),
        Field::Str(s) => s.as_bytes().to_vec(),
        Field::Bytes(b) => b.data().to_vec(),
        other => match integer(other) {
            Some(n) => n.to_string().into_bytes(),
            None => {
                return Err(format!(
                    "`{name}` must be text, bytes or an integer, not {other}"
                ));
            }
        },
    }))
}

fn integer(field: &Field) -> Option<i128> {
    Some(match field {
        Field::Byte(n) => (*n).into(),
        Field::Short(n) => (*n).into(),
        Field::Int(n) => (*n).into(),
        Field::Long(n) => (*n).into(),
        Field::UByte(n) => (*n).into(),
        Field::UShort(n) => (*n).into(),
        Field::UInt(n) => (*n).into(),
        Field::ULong(n) => (*n).into(),
        _ => return None,
    })
}

/// Text is kept if it is JSON and becomes a JSON string if not, as a CSV cell is; bytes that
/// are not UTF-8 are kept as they are; other types become their JSON.
fn value_bytes(field: &Field) -> Result<Vec<u8>, String> {
    let text = match field {
        Field::Null => return Err("`value` is null".into()),
        Field::Str(s) => s.as_str(),
        Field::Bytes(b) => match std::str::from_utf8(b.data()) {
            Ok(t) => t,
            Err(_) => return Ok(b.data().to_vec()),
        },
        other => return serde_json::to_vec(&other.to_json_value()).map_err(|e| e.to_string()),
    };
    if crate::pipeline::json::check(text.as_bytes()).is_ok() {
        Ok(text.as_bytes().to_vec())
    } else {
        serde_json::to_vec(text).map_err(|e| e.to_string())
    }
}

/// `written_ms`: an integer of milliseconds, or a timestamp.
fn written(field: &Field, nanos: bool) -> Result<Option<u64>, String> {
    let ms = match field {
        Field::Null => return Ok(None),
        Field::TimestampMillis(ms) => i128::from(*ms),
        Field::TimestampMicros(us) => i128::from(us.div_euclid(1_000)),
        Field::Long(ns) if nanos => i128::from(ns.div_euclid(1_000_000)),
        other => integer(other).ok_or_else(|| {
            format!("`written_ms` must be an integer of milliseconds or a timestamp, not {other}")
        })?,
    };
    u64::try_from(ms)
        .map(Some)
        .map_err(|_| format!("`written_ms` is before 1970: {ms} ms"))
}

/// `ttl_ms`: an integer of milliseconds (a timestamp is not a duration).
fn duration_ms(field: &Field) -> Result<Option<u64>, String> {
    if matches!(field, Field::Null) {
        return Ok(None);
    }
    let n = integer(field)
        .ok_or_else(|| format!("`ttl_ms` must be an integer of milliseconds, not {field}"))?;
    u64::try_from(n)
        .map(Some)
        .map_err(|_| format!("`ttl_ms` is negative: {n}"))
}

/// A Parquet file being exported: entries buffered a row group at a time.
pub(super) struct Writer {
    file: SerializedFileWriter<std::fs::File>,
    /// Where it is written, and where it goes once complete.
    partial: std::path::PathBuf,
    path: std::path::PathBuf,
    map_state: bool,
    keyed: bool,
    keys: Vec<ByteArray>,
    map_keys: Vec<ByteArray>,
    values: Vec<ByteArray>,
    written: Vec<Option<i64>>,
    ttls: Vec<Option<i64>>,
}

impl Writer {
    /// A file of entries of a map state (`map_state`: with `map_key`), of a keyed state
    /// (`keyed`: with `written_ms` and `ttl_ms`) or of a broadcast map (neither).
    pub(super) fn create(path: &Path, map_state: bool, keyed: bool) -> anyhow::Result<Writer> {
        let mut schema = String::from("message entry {\n  required binary key (STRING);\n");
        if map_state {
            schema.push_str("  required binary map_key (STRING);\n");
        }
        schema.push_str("  required binary value (JSON);\n");
        if keyed {
            schema.push_str("  optional int64 written_ms;\n  optional int64 ttl_ms;\n");
        }
        schema.push('}');
        let schema = Arc::new(parquet::schema::parser::parse_message_type(&schema)?);
        let props = WriterProperties::builder()
            .set_compression(parquet::basic::Compression::SNAPPY)
            .build();
        let mut partial = path.as_os_str().to_owned();
        partial.push(".partial");
        let partial = std::path::PathBuf::from(partial);
        let out = std::fs::File::create(&partial)
            .with_context(|| format!("cannot create {}", partial.display()))?;
        Ok(Writer {
            file: SerializedFileWriter::new(out, schema, Arc::new(props))?,
            partial,
            path: path.to_path_buf(),
            map_state,
            keyed,
            keys: Vec::new(),
            map_keys: Vec::new(),
            values: Vec::new(),
            written: Vec::new(),
            ttls: Vec::new(),
        })
    }

    /// Adds an entry; a key that is not text or a value that is not JSON is refused.
    pub(super) fn push(
        &mut self,
        key: &[u8],
        map_key: Option<&[u8]>,
        value: &[u8],
        written_ms: Option<u64>,
        ttl_ms: Option<u64>,
    ) -> anyhow::Result<()> {
        const BYTES: &str =
            "export it as JSON Lines (--format jsonl), which carries bytes as base64";
        let text = |b: &[u8], what: &str| -> anyhow::Result<ByteArray> {
            std::str::from_utf8(b)
                .map(|_| ByteArray::from(b.to_vec()))
                .map_err(|_| anyhow::anyhow!("a {what} is not UTF-8 text: {BYTES}"))
        };
        let key = text(key, "key")?;
        let map_key = match self.map_state {
            true => Some(text(map_key.unwrap_or_default(), "map key")?),
            false => None,
        };
        if crate::pipeline::json::check(value).is_err() {
            bail!("a value is not JSON: {BYTES}");
        }
        self.keys.push(key);
        self.map_keys.extend(map_key);
        self.values.push(ByteArray::from(value.to_vec()));
        if self.keyed {
            self.written.push(written_ms.map(|t| t as i64));
            self.ttls.push(ttl_ms.map(|t| t as i64));
        }
        if self.keys.len() >= ROW_GROUP {
            self.row_group()?;
        }
        Ok(())
    }

    fn row_group(&mut self) -> anyhow::Result<()> {
        if self.keys.is_empty() {
            return Ok(());
        }
        let mut group = self.file.next_row_group()?;
        let mut bytes = vec![std::mem::take(&mut self.keys)];
        if self.map_state {
            bytes.push(std::mem::take(&mut self.map_keys));
        }
        bytes.push(std::mem::take(&mut self.values));
        for column in bytes {
            let mut w = group
                .next_column()?
                .context("a byte column of the schema")?;
            w.typed::<ByteArrayType>()
                .write_batch(&column, None, None)?;
            w.close()?;
        }
        if self.keyed {
            for column in [
                std::mem::take(&mut self.written),
                std::mem::take(&mut self.ttls),
            ] {
                let levels: Vec<i16> = column.iter().map(|v| i16::from(v.is_some())).collect();
                let present: Vec<i64> = column.into_iter().flatten().collect();
                let mut w = group
                    .next_column()?
                    .context("an integer column of the schema")?;
                w.typed::<Int64Type>()
                    .write_batch(&present, Some(&levels), None)?;
                w.close()?;
            }
        }
        group.close()?;
        Ok(())
    }

    /// Writes what is buffered and the file's footer, and moves the file into place.
    pub(super) fn finish(mut self) -> anyhow::Result<()> {
        self.row_group()?;
        self.file.finish()?;
        std::fs::rename(&self.partial, &self.path)
            .with_context(|| format!("cannot move {} into place", self.partial.display()))?;
        Ok(())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Unfinished (an export that failed): no truncated file is left. Once finished, the
        // partial file is gone already.
        let _ = std::fs::remove_file(&self.partial);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parquet::data_type::DoubleType;

    fn read_all(file: &Path) -> anyhow::Result<Vec<(u64, Result<Parsed, String>)>> {
        let mut got = Vec::new();
        parquet_entries(file, &mut |n, p| {
            got.push((n, p));
            true
        })?;
        Ok(got)
    }

    #[test]
    fn written_entries_read_back_exactly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.parquet");
        let mut w = Writer::create(&path, true, true).expect("create");
        let n = ROW_GROUP + 3;
        for i in 0..n {
            let ttl = (i % 2 == 0).then_some(60_000);
            let value = format!(r#"{{"cents":{i},"note":"a,\"b\""}}"#);
            w.push(
                b"c-1",
                Some(format!("tx-{i}").as_bytes()),
                value.as_bytes(),
                Some(1_000 + i as u64),
                ttl,
            )
            .expect("push");
        }
        w.finish().expect("finish");
        assert_eq!(rows(&path).expect("rows"), n as u64);
        let got = read_all(&path).expect("read");
        assert_eq!(got.len(), n);
        for (i, (row, p)) in got.into_iter().enumerate() {
            let p = p.expect("parsed");
            assert_eq!(row, i as u64 + 1);
            assert_eq!(p.key, b"c-1");
            assert_eq!(p.map_key, Some(format!("tx-{i}").into_bytes()));
            assert_eq!(
                p.value,
                format!(r#"{{"cents":{i},"note":"a,\"b\""}}"#).into_bytes()
            );
            assert_eq!(p.written_ms, Some(1_000 + i as u64));
            assert_eq!(p.ttl_ms, (i % 2 == 0).then_some(60_000));
        }
        // What Parquet cannot carry as text is refused with the way out.
        let mut w = Writer::create(&dir.path().join("b.parquet"), false, true).expect("create");
        let e = w
            .push(&[0xff, 0x00], None, b"1", None, None)
            .expect_err("binary key");
        assert!(e.to_string().contains("--format jsonl"), "{e}");
        let e = w
            .push(b"k", None, b"not json", None, None)
            .expect_err("not json");
        assert!(e.to_string().contains("not JSON"), "{e}");
        // An export that stops leaves no file; a finished one leaves only its own.
        drop(w);
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["m.parquet"]);
    }

    /// A table as a warehouse exports it: an integer key, the other columns the value.
    #[test]
    fn a_table_without_a_value_column_gives_each_row_as_a_json_object() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("customers.parquet");
        let schema = "message customers {\n  required int64 key;\n  optional binary tier (STRING);\n  required double score;\n}";
        let schema = Arc::new(parquet::schema::parser::parse_message_type(schema).expect("schema"));
        let out = std::fs::File::create(&path).expect("file");
        let mut file =
            SerializedFileWriter::new(out, schema, Arc::new(WriterProperties::builder().build()))
                .expect("writer");
        let mut group = file.next_row_group().expect("group");
        let mut c = group.next_column().expect("column").expect("key");
        c.typed::<Int64Type>()
            .write_batch(&[7, 8], None, None)
            .expect("keys");
        c.close().expect("close");
        let mut c = group.next_column().expect("column").expect("tier");
        c.typed::<ByteArrayType>()
            .write_batch(&[ByteArray::from("gold")], Some(&[1, 0]), None)
            .expect("tiers");
        c.close().expect("close");
        let mut c = group.next_column().expect("column").expect("score");
        c.typed::<DoubleType>()
            .write_batch(&[1.5, 2.0], None, None)
            .expect("scores");
        c.close().expect("close");
        group.close().expect("group");
        file.close().expect("file");

        let got = read_all(&path).expect("read");
        let values: Vec<(String, String)> = got
            .into_iter()
            .map(|(_, p)| {
                let p = p.expect("parsed");
                (
                    String::from_utf8(p.key).expect("utf-8"),
                    String::from_utf8(p.value).expect("utf-8"),
                )
            })
            .collect();
        // The columns in the file's order.
        assert_eq!(
            values,
            [
                ("7".into(), r#"{"tier":"gold","score":1.5}"#.into()),
                ("8".into(), r#"{"tier":null,"score":2.0}"#.into()),
            ]
        );
    }

    /// Writes one row group of `rows` rows: `key` text, then each column's values (`None`:
    /// null) in an `optional int64` column under its type annotation.
    fn int_columns(path: &Path, rows: usize, columns: &[(&str, &str, Vec<Option<i64>>)]) {
        let mut schema = String::from("message t {\n  required binary key (STRING);\n");
        for (name, annotation, _) in columns {
            schema.push_str(&format!("  optional int64 {name} {annotation};\n"));
        }
        schema.push('}');
        let schema =
            Arc::new(parquet::schema::parser::parse_message_type(&schema).expect("schema"));
        let out = std::fs::File::create(path).expect("file");
        let mut file =
            SerializedFileWriter::new(out, schema, Arc::new(WriterProperties::builder().build()))
                .expect("writer");
        let mut group = file.next_row_group().expect("group");
        let keys: Vec<ByteArray> = (0..rows)
            .map(|i| ByteArray::from(format!("k{i}").as_str()))
            .collect();
        let mut c = group.next_column().expect("column").expect("key");
        c.typed::<ByteArrayType>()
            .write_batch(&keys, None, None)
            .expect("keys");
        c.close().expect("close");
        for (_, _, values) in columns {
            let levels: Vec<i16> = values.iter().map(|v| i16::from(v.is_some())).collect();
            let present: Vec<i64> = values.iter().flatten().copied().collect();
            let mut c = group.next_column().expect("column").expect("int column");
            c.typed::<Int64Type>()
                .write_batch(&present, Some(&levels), None)
                .expect("values");
            c.close().expect("close");
        }
        group.close().expect("group");
        file.close().expect("file");
    }

    /// Write times as milli-, micro- and nanosecond timestamps all come out in milliseconds;
    /// a TTL must be a plain integer; a row with no value, or a null key, is refused.
    #[test]
    fn timestamps_of_every_unit_are_milliseconds_and_nulls_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ms: i64 = 1_764_900_000_123;
        for (unit, stored) in [
            ("MILLIS", ms),
            ("MICROS", ms * 1_000 + 999),
            ("NANOS", ms * 1_000_000 + 999_999),
        ] {
            let path = dir.path().join(format!("{unit}.parquet"));
            int_columns(
                &path,
                1,
                &[
                    (
                        "written_ms",
                        &format!("(TIMESTAMP({unit},true))"),
                        vec![Some(stored)],
                    ),
                    ("value", "", vec![Some(5)]),
                ],
            );
            let got = read_all(&path).expect("read");
            let p = got[0].1.as_ref().expect("parsed");
            assert_eq!(p.written_ms, Some(ms as u64), "{unit}");
            assert_eq!(p.value, b"5", "{unit}");
        }
        let path = dir.path().join("ttl.parquet");
        int_columns(
            &path,
            1,
            &[
                ("ttl_ms", "(TIMESTAMP(MILLIS,true))", vec![Some(ms)]),
                ("value", "", vec![Some(1)]),
            ],
        );
        let got = read_all(&path).expect("read");
        let e = got[0].1.as_ref().map(|_| ()).expect_err("timestamp TTL");
        assert!(
            e.contains("`ttl_ms` must be an integer of milliseconds"),
            "{e}"
        );
        let path = dir.path().join("nulls.parquet");
        int_columns(
            &path,
            2,
            &[
                ("value", "", vec![None, Some(1)]),
                ("written_ms", "", vec![Some(-5), None]),
            ],
        );
        let got = read_all(&path).expect("read");
        let e = got[0].1.as_ref().map(|_| ()).expect_err("null value");
        assert!(e.contains("`value` is null"), "{e}");
        let p = got[1].1.as_ref().expect("second row");
        assert_eq!((p.value.as_slice(), p.written_ms), (b"1".as_slice(), None));
    }

    /// Bytes that are UTF-8 (as older writers store text) follow the text rule; others are
    /// kept as they are.
    #[test]
    fn a_value_of_bytes_is_text_when_it_is_utf8() {
        for (bytes, kept) in [
            (&b"gold"[..], &b"\"gold\""[..]),
            (br#"{"a":1}"#, br#"{"a":1}"#),
            (&[0xff, 0x01], &[0xff, 0x01]),
        ] {
            let field = Field::Bytes(ByteArray::from(bytes.to_vec()));
            assert_eq!(value_bytes(&field).expect("value"), kept);
        }
        assert!(key_bytes(&Field::Null, "key").expect("null").is_none());
        assert_eq!(
            key_bytes(&Field::Short(-3), "key").expect("short"),
            Some(b"-3".to_vec())
        );
    }

    #[test]
    fn a_file_with_a_value_column_and_another_names_the_other() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("odd.parquet");
        let schema = "message odd {\n  required binary key (STRING);\n  required binary value (STRING);\n  required int64 extra;\n}";
        let schema = Arc::new(parquet::schema::parser::parse_message_type(schema).expect("schema"));
        let out = std::fs::File::create(&path).expect("file");
        let file =
            SerializedFileWriter::new(out, schema, Arc::new(WriterProperties::builder().build()))
                .expect("writer");
        file.close().expect("file");
        let e = read_all(&path).expect_err("extra column");
        assert!(e.to_string().contains("column `extra`"), "{e}");
        let e = read_all(&dir.path().join("missing.parquet")).expect_err("no file");
        assert!(e.to_string().contains("cannot read"), "{e}");
        std::fs::write(dir.path().join("text.parquet"), "key,value\n").expect("write");
        let e = read_all(&dir.path().join("text.parquet")).expect_err("not parquet");
        assert!(e.to_string().contains("is not a Parquet file"), "{e}");
    }
}
