//! A line of an `eddy state load` file: parsing never panics; a JSON Lines value is kept byte
//! for byte and is the line's `value` member as serde_json reads the same line; a CSV value is
//! kept as JSON a plugin can read.
#![no_main]

use eddy_host::cli::bulk::{parse_csv, parse_jsonl};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(entry) = parse_jsonl(line) {
        let doc: serde_json::Value = serde_json::from_str(line).expect("a parsed line is JSON");
        if let Some(value) = doc.get("value") {
            let kept: serde_json::Value =
                serde_json::from_slice(&entry.value).expect("the kept value is JSON");
            assert_eq!(&kept, value, "line {line:?}");
        }
    }
    // The same bytes as a CSV file: a header row, then rows.
    let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(data);
    let Ok(headers) = reader.headers().cloned() else {
        return;
    };
    for row in reader.records().flatten() {
        if let Ok(entry) = parse_csv(&headers, &row) {
            serde_json::from_slice::<serde_json::Value>(&entry.value)
                .expect("a CSV value is kept as JSON");
        }
    }
});
