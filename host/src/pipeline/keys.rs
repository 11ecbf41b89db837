//! Key extraction: finding an event's key where the pipeline config says it is.

use async_nats::HeaderMap;

use crate::config::KeySource;

/// Extracts the key of a message, or says why it cannot (the event is then dead-lettered
/// with that reason).
pub fn extract(
    source: &KeySource,
    subject: &str,
    headers: Option<&HeaderMap>,
    payload: &[u8],
) -> Result<Vec<u8>, String> {
    match source {
        KeySource::Header(name) => headers
            .and_then(|h| h.get(name.as_str()))
            .map(|v| v.as_str().as_bytes().to_vec())
            .filter(|k| !k.is_empty())
            .ok_or_else(|| format!("no key: the message has no `{name}` header (input.key.header)")),
        KeySource::SubjectToken(i) => subject
            .split('.')
            .nth(*i)
            .map(|t| t.as_bytes().to_vec())
            .ok_or_else(|| {
                format!("no key: subject `{subject}` has no token {i} (input.key.subject_token counts from 0)")
            }),
        KeySource::Json(pointer) => {
            let value: serde_json::Value = serde_json::from_slice(payload).map_err(|e| {
                format!("no key: the payload is not JSON ({e}); input.key.json needs a JSON payload")
            })?;
            match value.pointer(pointer) {
                Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(s.as_bytes().to_vec()),
                Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                    Ok(v.to_string().into_bytes())
                }
                Some(serde_json::Value::String(_)) => Err(format!("no key: `{pointer}` is an empty string")),
                Some(other) => Err(format!(
                    "no key: `{pointer}` is {}, not a string or number",
                    json_kind(other)
                )),
                None => Err(format!("no key: the payload has no `{pointer}` (input.key.json)")),
            }
        }
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
        _ => "a scalar",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_source_finds_the_key_or_says_why_not() {
        let json = KeySource::Json("/customer".into());
        assert_eq!(
            extract(&json, "t", None, br#"{"customer":"c-1"}"#),
            Ok(b"c-1".to_vec())
        );
        assert_eq!(
            extract(&json, "t", None, br#"{"customer":7}"#),
            Ok(b"7".to_vec())
        );
        let e = extract(&json, "t", None, b"not json").expect_err("bad payload");
        assert!(e.contains("not JSON"), "{e}");
        let e = extract(&json, "t", None, br#"{"other":1}"#).expect_err("missing");
        assert!(e.contains("has no `/customer`"), "{e}");
        let tok = KeySource::SubjectToken(1);
        assert_eq!(extract(&tok, "txn.c-9.new", None, b""), Ok(b"c-9".to_vec()));
        assert!(extract(&tok, "txn", None, b"").is_err());
        let mut h = HeaderMap::new();
        h.insert("customer", "c-3");
        let hdr = KeySource::Header("customer".into());
        assert_eq!(extract(&hdr, "t", Some(&h), b""), Ok(b"c-3".to_vec()));
        assert!(extract(&hdr, "t", None, b"").is_err());
    }
}
