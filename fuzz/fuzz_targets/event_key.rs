//! The key of an event found by a JSON pointer, against the reference: the same pointer asked
//! of the document serde_json builds. Input: the pointer, a newline, the payload.
#![no_main]

use eddy_host::config::KeySource;
use eddy_host::pipeline::keys::KeyExtractor;
use libfuzzer_sys::fuzz_target;

/// How a refusal for a payload that is not JSON begins (the rest may quote the pointer).
const NOT_JSON: &str = "no key: the payload is not JSON";

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    // `eddy check` refuses a pointer that does not start with `/`: none reaches a run.
    let Ok(pointer) = std::str::from_utf8(&data[..split]) else {
        return;
    };
    if !pointer.starts_with('/') {
        return;
    }
    let payload = data.get(split + 1..).unwrap_or(&[]);
    let got = KeyExtractor::new(&KeySource::Json(pointer.to_string())).extract("s", None, payload);
    let expected = match serde_json::from_slice::<serde_json::Value>(payload) {
        Err(_) => None,
        Ok(doc) => Some(match doc.pointer(pointer) {
            Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s.clone().into_bytes()),
            Some(serde_json::Value::Number(n)) => Some(n.to_string().into_bytes()),
            Some(serde_json::Value::Bool(b)) => Some(b.to_string().into_bytes()),
            _ => None,
        }),
    };
    match expected {
        // Not JSON: refused as not JSON.
        None => {
            let e = got.expect_err("a payload serde_json refuses has no key");
            assert!(e.starts_with(NOT_JSON), "{e}");
        }
        Some(Some(key)) => assert_eq!(got.as_deref(), Ok(&key[..]), "pointer {pointer:?}"),
        Some(None) => {
            let e = got.expect_err("the reference finds no usable key");
            assert!(!e.starts_with(NOT_JSON), "JSON refused: {e}");
        }
    }
});
