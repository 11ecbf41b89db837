//! The lookups of `eddy test`: answered from a file (`--lookups answers.json`) instead of the
//! pipeline's stores, so a plugin that enriches from Redis, PostgreSQL, NATS KV or HTTP runs
//! with no store and gives the same outcomes every time.
//!
//! The file is one JSON object, store by store, key by key:
//!
//! ```json
//! {"profiles": {"c1": {"tier": "gold"}, "c2": "plain text", "c3": null}}
//! ```
//!
//! A string answers with its UTF-8 bytes as they are; any other JSON value with its compact
//! JSON text (what a store holding JSON returns); `null`, or a key the file leaves out, is a
//! key the store does not have. A store the file leaves out is unknown, as one the pipeline
//! does not declare is to `eddy run`, and the plugin's error names the file.
//!
//! Lookups go the way `eddy run` makes them: those the plugin's `prepare` plans are answered
//! before `handle` is called, the rest from inside it. The counts of each are kept for the
//! summary `eddy test` prints, since an unplanned lookup is one a running pipeline waits for.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, bail};

use crate::engine::{LookupAnswer, LookupFailure, LookupRequest, LookupSource, Prefetched};

/// Answers to lookups, by store and key, and what was asked of them.
#[derive(Debug, Default)]
pub(super) struct Answers {
    /// Where the answers came from (`None`: no `--lookups` given).
    file: Option<PathBuf>,
    stores: HashMap<String, HashMap<String, Option<Vec<u8>>>>,
    planned: AtomicU64,
    unplanned: AtomicU64,
}

impl Answers {
    /// No answers: every lookup fails, naming the flag that gives them.
    pub(super) fn none() -> Answers {
        Answers::default()
    }

    /// The answers in `path` (see the module's notes for its shape).
    pub(super) fn load(path: &Path) -> anyhow::Result<Answers> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the lookup answers {}", path.display()))?;
        let mut answers = Answers::parse(&text).with_context(|| {
            format!(
                "{}: lookup answers are one JSON object, store by store, key by key: \
                 {{\"profiles\": {{\"c1\": {{\"tier\": \"gold\"}}, \"c2\": null}}}}",
                path.display()
            )
        })?;
        answers.file = Some(path.to_path_buf());
        Ok(answers)
    }

    fn parse(text: &str) -> anyhow::Result<Answers> {
        let serde_json::Value::Object(stores) = serde_json::from_str(text)? else {
            bail!("the file is not a JSON object");
        };
        let mut out = Answers::default();
        for (store, keys) in stores {
            let serde_json::Value::Object(keys) = keys else {
                bail!("store `{store}` is not an object of keys and their values");
            };
            let keys = keys
                .into_iter()
                .map(|(key, value)| {
                    let bytes = match value {
                        serde_json::Value::Null => None,
                        serde_json::Value::String(s) => Some(s.into_bytes()),
                        other => Some(other.to_string().into_bytes()),
                    };
                    (key, bytes)
                })
                .collect();
            out.stores.insert(store, keys);
        }
        Ok(out)
    }

    fn answer(&self, store: &str, key: &str) -> LookupAnswer {
        match (self.stores.get(store), &self.file) {
            (Some(keys), _) => Ok(keys.get(key).cloned().flatten()),
            (None, Some(file)) => Err(LookupFailure::UnknownStore(format!(
                "`{store}`: {} has no answers for this store; add \"{store}\": {{\"<key>\": <value>}}",
                file.display()
            ))),
            (None, None) => Err(LookupFailure::UnknownStore(format!(
                "`{store}`: eddy test answers lookups from a file; pass --lookups answers.json \
                 with {{\"{store}\": {{\"<key>\": <value>}}}}"
            ))),
        }
    }

    /// The answers to what `prepare` planned for a batch, to hand to `handle`.
    pub(super) fn prefetch(&self, plans: &[Vec<LookupRequest>]) -> Prefetched {
        let mut out = Prefetched::new();
        for r in plans.iter().flatten() {
            out.entry((r.store.clone(), r.key.clone()))
                .or_insert_with(|| {
                    self.planned.fetch_add(1, Ordering::Relaxed);
                    self.answer(&r.store, &r.key)
                });
        }
        out
    }

    /// Lookups answered before `handle` (planned) and from inside it (not planned).
    pub(super) fn counts(&self) -> (u64, u64) {
        (
            self.planned.load(Ordering::Relaxed),
            self.unplanned.load(Ordering::Relaxed),
        )
    }
}

impl LookupSource for Answers {
    fn fetch_blocking(&self, store: &str, keys: &[String]) -> Vec<LookupAnswer> {
        self.unplanned
            .fetch_add(keys.len() as u64, Ordering::Relaxed);
        keys.iter().map(|k| self.answer(store, k)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(store: &str, key: &str) -> LookupRequest {
        LookupRequest {
            store: store.into(),
            key: key.into(),
        }
    }

    #[test]
    fn strings_answer_as_they_are_other_values_as_json_and_null_or_absent_keys_as_missing() {
        let a = Answers::parse(
            r#"{"profiles": {"c1": {"tier": "gold", "n": 2}, "c2": "plain", "c3": null, "c4": 7}}"#,
        )
        .expect("valid");
        let got = a.fetch_blocking(
            "profiles",
            &["c1", "c2", "c3", "c4", "c5"].map(String::from),
        );
        let got: Vec<Option<Vec<u8>>> = got.into_iter().map(|a| a.expect("an answer")).collect();
        assert_eq!(
            got,
            vec![
                Some(br#"{"n":2,"tier":"gold"}"#.to_vec()),
                Some(b"plain".to_vec()),
                None,
                Some(b"7".to_vec()),
                None,
            ]
        );
        assert_eq!(a.counts(), (0, 5));
    }

    #[test]
    fn a_store_without_answers_is_unknown_and_the_error_names_the_fix() {
        let mut a = Answers::parse(r#"{"profiles": {}}"#).expect("valid");
        a.file = Some(PathBuf::from("answers.json"));
        match a.fetch_blocking("merchants", &["m1".into()]).pop() {
            Some(Err(LookupFailure::UnknownStore(m))) => {
                assert!(
                    m.contains("answers.json") && m.contains("\"merchants\""),
                    "{m}"
                )
            }
            other => panic!("expected an unknown store, got {other:?}"),
        }
        match Answers::none()
            .fetch_blocking("profiles", &["c1".into()])
            .pop()
        {
            Some(Err(LookupFailure::UnknownStore(m))) => assert!(m.contains("--lookups"), "{m}"),
            other => panic!("expected an unknown store, got {other:?}"),
        }
    }

    #[test]
    fn planned_lookups_are_answered_once_each_and_counted_apart_from_the_rest() {
        let a = Answers::parse(r#"{"profiles": {"c1": "x"}}"#).expect("valid");
        let plans = vec![
            vec![request("profiles", "c1")],
            vec![request("profiles", "c1"), request("profiles", "c2")],
        ];
        let pre = a.prefetch(&plans);
        assert_eq!(pre.len(), 2);
        assert_eq!(
            pre.get(&("profiles".into(), "c1".into())),
            Some(&Ok(Some(b"x".to_vec())))
        );
        assert_eq!(pre.get(&("profiles".into(), "c2".into())), Some(&Ok(None)));
        a.fetch_blocking("profiles", &["c9".into()]);
        assert_eq!(a.counts(), (2, 1));
    }

    #[test]
    fn a_file_that_is_not_stores_of_keys_is_refused() {
        for bad in [r#"[1, 2]"#, r#"{"profiles": [1]}"#, r#"{"profiles": "#] {
            assert!(Answers::parse(bad).is_err(), "{bad}");
        }
    }
}
