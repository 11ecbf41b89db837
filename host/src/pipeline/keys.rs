//! Key extraction: finding an event's key where the pipeline config says it is.

use async_nats::HeaderMap;

use super::json::Skip;
use crate::config::KeySource;

/// Finds keys where the pipeline's `input.key` says. Built once per pipeline: a JSON pointer
/// is split into its tokens here, not for every event.
pub struct KeyExtractor {
    source: KeySource,
    /// The JSON pointer's unescaped tokens (`None`: not a pointer, or not a JSON source).
    tokens: Option<Vec<String>>,
}

impl KeyExtractor {
    /// An extractor for `source`.
    pub fn new(source: &KeySource) -> KeyExtractor {
        let tokens = match source {
            KeySource::Json(pointer) => pointer_tokens(pointer),
            _ => None,
        };
        KeyExtractor {
            source: source.clone(),
            tokens,
        }
    }

    /// Extracts the key of a message, or says why it cannot (the event is then dead-lettered
    /// with that reason).
    pub fn extract(
        &self,
        subject: &str,
        headers: Option<&HeaderMap>,
        payload: &[u8],
    ) -> Result<Vec<u8>, String> {
        match &self.source {
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
            KeySource::Json(pointer) => match json_at(payload, self.tokens.as_deref()) {
                Err(e) => Err(format!(
                    "no key: the payload is not JSON ({e}); input.key.json needs a JSON payload"
                )),
                Ok(Some(Leaf::Str(s))) if !s.is_empty() => Ok(s.into_bytes()),
                Ok(Some(Leaf::Str(_))) => Err(format!("no key: `{pointer}` is an empty string")),
                Ok(Some(Leaf::Number(n))) => Ok(n.to_string().into_bytes()),
                Ok(Some(Leaf::Bool(b))) => Ok(b.to_string().into_bytes()),
                Ok(Some(Leaf::Other(kind))) => Err(format!(
                    "no key: `{pointer}` is {kind}, not a string or number"
                )),
                Ok(None) => Err(format!(
                    "no key: the payload has no `{pointer}` (input.key.json)"
                )),
            },
        }
    }
}

/// A JSON pointer split into its tokens once, to find a text in many payloads.
pub struct Pointer(Vec<String>);

impl Pointer {
    /// `pointer` split, or `None` if it is not a JSON pointer (it must be empty or start
    /// with `/`).
    pub fn new(pointer: &str) -> Option<Pointer> {
        pointer_tokens(pointer).map(Pointer)
    }

    /// What the pointer finds in `payload` as a lookup key: a non-empty string (unescaped) or
    /// an integer (its decimal digits). `None` when the payload is not JSON or holds anything
    /// else there: a fraction or an exponent has several texts (`1e2`, `100.0`, `100`), and a
    /// key the plugin writes differently would be fetched for nothing.
    pub fn text_in(&self, payload: &[u8]) -> Option<String> {
        match json_at(payload, Some(&self.0)).ok()?? {
            Leaf::Str(s) if !s.is_empty() => Some(s),
            Leaf::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
            Leaf::Str(_) | Leaf::Number(_) | Leaf::Bool(_) | Leaf::Other(_) => None,
        }
    }
}

/// What a JSON pointer found.
#[derive(Debug, PartialEq)]
enum Leaf {
    Str(String),
    Number(serde_json::Number),
    Bool(bool),
    /// `null`, an array or an object.
    Other(&'static str),
}

/// The unescaped tokens of JSON pointer `pointer` (RFC 6901); `None` if it is not one (it
/// must be empty or start with `/`).
fn pointer_tokens(pointer: &str) -> Option<Vec<String>> {
    if !pointer.is_empty() && !pointer.starts_with('/') {
        return None;
    }
    let unescape = |t: &str| t.replace("~1", "/").replace("~0", "~");
    Some(pointer.split('/').skip(1).map(unescape).collect())
}

/// The value at the JSON pointer of `tokens` (see [`pointer_tokens`]; `None` finds nothing)
/// in `payload`, found in one pass over the payload without building the document: the key is
/// looked up for every event. The whole payload is still checked as building it would (UTF-8,
/// escapes, number range, depth); of duplicate object members the last counts, as when the
/// document is built.
fn json_at(payload: &[u8], tokens: Option<&[String]>) -> Result<Option<Leaf>, serde_json::Error> {
    let Some(tokens) = tokens else {
        return Ok(None);
    };
    let mut de = serde_json::Deserializer::from_slice(payload);
    let found = serde::de::DeserializeSeed::deserialize(Walk(tokens), &mut de)?;
    de.end()?;
    Ok(found)
}

/// Follows the remaining pointer tokens through one JSON value.
struct Walk<'t>(&'t [String]);

impl<'de> serde::de::DeserializeSeed<'de> for Walk<'_> {
    type Value = Option<Leaf>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Option<Leaf>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Walk<'_> {
    type Value = Option<Leaf>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        let (first, rest) = match self.0.split_first() {
            Some((first, rest)) => (Some(first.as_ref()), rest),
            None => (None, self.0),
        };
        while let Some(hit) = map.next_key_seed(KeyIs(first))? {
            if hit {
                found = map.next_value_seed(Walk(rest))?;
            } else {
                map.next_value_seed(Skip)?;
            }
        }
        Ok(match first {
            Some(_) => found,
            None => Some(Leaf::Other("an object")),
        })
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        // An index is digits without leading zeros (RFC 6901).
        let index = self.0.first().and_then(|t| {
            let ok = !t.is_empty()
                && t.bytes().all(|b| b.is_ascii_digit())
                && (t.len() == 1 || !t.starts_with('0'));
            ok.then(|| t.parse::<usize>().ok()).flatten()
        });
        let mut found = None;
        let mut i = 0;
        loop {
            let more = if Some(i) == index {
                seq.next_element_seed(Walk(&self.0[1..]))?
                    .map(|f| found = f)
            } else {
                seq.next_element_seed(Skip)?
            };
            if more.is_none() {
                break;
            }
            i += 1;
        }
        Ok(match self.0.is_empty() {
            true => Some(Leaf::Other("an array")),
            false => found,
        })
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(self.0.is_empty().then(|| Leaf::Str(v.to_owned())))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(self.0.is_empty().then(|| Leaf::Number(v.into())))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(self.0.is_empty().then(|| Leaf::Number(v.into())))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(self
            .0
            .is_empty()
            .then(|| serde_json::Number::from_f64(v).map_or(Leaf::Other("null"), Leaf::Number)))
    }

    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(self.0.is_empty().then_some(Leaf::Bool(v)))
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(self.0.is_empty().then_some(Leaf::Other("null")))
    }
}

/// Whether an object member's name is the pointer token (`None`: no token, never).
struct KeyIs<'t>(Option<&'t str>);

impl<'de> serde::de::DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> serde::de::Visitor<'de> for KeyIs<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an object member name")
    }

    fn visit_str<E>(self, v: &str) -> Result<bool, E> {
        Ok(self.0 == Some(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extract(
        source: &KeySource,
        subject: &str,
        headers: Option<&HeaderMap>,
        payload: &[u8],
    ) -> Result<Vec<u8>, String> {
        KeyExtractor::new(source).extract(subject, headers, payload)
    }

    fn json_at(payload: &[u8], pointer: &str) -> Result<Option<Leaf>, serde_json::Error> {
        super::json_at(payload, pointer_tokens(pointer).as_deref())
    }

    fn json_kind(v: &serde_json::Value) -> &'static str {
        match v {
            serde_json::Value::Null => "null",
            serde_json::Value::Array(_) => "an array",
            _ => "an object",
        }
    }

    /// The one-pass walk finds what building the document and `Value::pointer` find.
    #[test]
    fn the_one_pass_walk_agrees_with_the_built_document() {
        let docs = [
            r#"{"a":{"b":[10,{"c":"x"},-3,2.5,true,null]},"a/b":1,"m~n":"t","d":"first","d":"last"}"#,
            r#"[1,[2,3],{"":"empty name"}]"#,
            r#""just a string""#,
            r#"{"big":18446744073709551615,"neg":-9223372036854775808,"esc":"a\"b\u00e9"}"#,
        ];
        let pointers = [
            "", "/a", "/a/b", "/a/b/0", "/a/b/1/c", "/a/b/2", "/a/b/3", "/a/b/4", "/a/b/5",
            "/a/b/6", "/a/b/01", "/a/b/-", "/a~1b", "/m~0n", "/d", "/1/1", "/2/", "/0/x", "/big",
            "/neg", "/esc", "/missing",
        ];
        for doc in docs {
            let value: serde_json::Value = serde_json::from_str(doc).expect("json");
            for pointer in pointers {
                let expected = value.pointer(pointer).map(|v| match v {
                    serde_json::Value::String(s) => Leaf::Str(s.clone()),
                    serde_json::Value::Number(n) => Leaf::Number(n.clone()),
                    serde_json::Value::Bool(b) => Leaf::Bool(*b),
                    other => Leaf::Other(json_kind(other)),
                });
                let found = json_at(doc.as_bytes(), pointer).expect("json");
                assert_eq!(found, expected, "{pointer} in {doc}");
            }
        }
    }

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
        let e = extract(&json, "t", None, br#"{"customer":"c-1"} trailing"#).expect_err("bad");
        assert!(e.contains("not JSON"), "{e}");
        let e = extract(&json, "t", None, br#"{"customer":"c-1","x":[1,}"#).expect_err("bad");
        assert!(e.contains("not JSON"), "the whole payload is checked: {e}");
        // What building the document refuses, the one pass refuses too, off the path as well.
        for bad in [
            &b"{\"customer\":\"c\",\"x\":\"\xff\"}"[..],
            br#"{"customer":"c","x":"\ud800"}"#,
            br#"{"customer":"c","x":1e400}"#,
            format!(
                r#"{{"customer":"c","x":{}{}}}"#,
                "[".repeat(200),
                "]".repeat(200)
            )
            .as_bytes(),
        ] {
            assert!(serde_json::from_slice::<serde_json::Value>(bad).is_err());
            let e = extract(&json, "t", None, bad).expect_err("not JSON");
            assert!(e.contains("not JSON"), "{e}");
        }
        assert_eq!(
            json_at(br#"{"customer":"c"}"#, "customer").expect("json"),
            None
        );
        let e = extract(&json, "t", None, br#"{"customer":""}"#).expect_err("empty");
        assert!(e.contains("is an empty string"), "{e}");
        let e = extract(&json, "t", None, br#"{"customer":{"id":1}}"#).expect_err("object");
        assert!(e.contains("is an object, not a string or number"), "{e}");
        let e = extract(&json, "t", None, br#"{"customer":null}"#).expect_err("null");
        assert!(e.contains("is null"), "{e}");
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
