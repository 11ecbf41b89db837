//! Which lookups each event needs, from the pipeline file: `lookup.<store>.plan` names where
//! an event's keys in that store are (JSON pointers into the payload, or the event's key).
//!
//! A store planned here costs no plugin call: the host reads the keys beside the input, and
//! the plugin's `prepare` (a second crossing of the whole batch into the plugin) is called only
//! while some store has no `plan`. Both kinds of plan go to the same resolution
//! (`crate::lookup::Lookups::resolve`), and `handle` finds the answers in place either way.
//! Where `prepare` is never called, no instance of the plugin is made for it ([`planner`]).

use super::keys::Pointer;
use crate::config::PipelineConfig;
use crate::engine::{Event, InstanceContext, LookupRequest, Planner, Plugin};

/// The plugin's planning instance, for a run, a new version or a shadow: only when the
/// pipeline has lookup stores and some of them have no `plan` in the file (the others are
/// planned by the input reader, and `prepare` is then never called).
pub(super) fn planner(
    plugin: &Plugin,
    ctx: &InstanceContext,
    config_json: &str,
    cfg: &PipelineConfig,
) -> anyhow::Result<Option<Planner>> {
    if ctx.lookups.is_none() || !cfg.prepare_plans_lookups() {
        return Ok(None);
    }
    Planner::new(plugin, ctx, config_json)
}

/// Where one of an event's keys is.
enum Source {
    /// The event's own key (`plan = "key"`).
    Key,
    /// A JSON pointer into the payload.
    Pointer(Pointer),
}

/// The pipeline file's lookup plans, made once per run.
pub(super) struct FilePlans {
    /// Each store with a `plan`, and where its keys are.
    stores: Vec<(String, Vec<Source>)>,
}

impl FilePlans {
    /// The plans `cfg` declares (its `plan` entries are checked when the file is loaded).
    pub(super) fn new(cfg: &PipelineConfig) -> FilePlans {
        let stores = cfg
            .lookup
            .iter()
            .filter(|(_, store)| !store.plan.is_empty())
            .map(|(name, store)| {
                let sources = store
                    .plan
                    .iter()
                    .filter_map(|p| match p.as_str() {
                        "key" => Some(Source::Key),
                        pointer => Pointer::new(pointer).map(Source::Pointer),
                    })
                    .collect();
                (name.clone(), sources)
            })
            .collect();
        FilePlans { stores }
    }

    /// Adds the lookups `event` needs by the file's plans to `plan`, each key once. A pointer
    /// that finds no string or integer plans nothing: the plugin may still ask, and is then
    /// answered on the spot.
    pub(super) fn add(&self, event: &Event, plan: &mut Vec<LookupRequest>) {
        for (store, sources) in &self.stores {
            for source in sources {
                let key = match source {
                    Source::Key => String::from_utf8(event.key.clone()).ok(),
                    Source::Pointer(p) => p.text_in(&event.payload),
                };
                let Some(key) = key else { continue };
                if !plan.iter().any(|r| r.store == *store && r.key == key) {
                    plan.push(LookupRequest {
                        store: store.clone(),
                        key,
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pipeline file with `lookups` for its lookup sections.
    fn file(lookups: &str) -> String {
        format!(
            "[pipeline]\nname = \"p\"\nstate_dir = \"/tmp/p\"\n[input]\nstream = \"IN\"\nsubjects = [\"in\"]\nkey = {{ json = \"/customer\" }}\n[plugin]\npath = \"p.wasm\"\n[output]\nsubject = \"out\"\n[dead_letter]\nsubject = \"dlq\"\n{lookups}"
        )
    }

    fn cfg(lookups: &str) -> PipelineConfig {
        PipelineConfig::parse(&file(lookups)).expect("valid")
    }

    fn plans(lookups: &str) -> FilePlans {
        FilePlans::new(&cfg(lookups))
    }

    fn event(key: &str, payload: &str) -> Event {
        Event {
            key: key.as_bytes().to_vec(),
            subject: "in".into(),
            headers: Vec::new(),
            payload: payload.as_bytes().to_vec(),
            timestamp_ms: 0,
            sequence: 1,
        }
    }

    fn planned(p: &FilePlans, e: &Event) -> Vec<(String, String)> {
        let mut plan = Vec::new();
        p.add(e, &mut plan);
        plan.into_iter().map(|r| (r.store, r.key)).collect()
    }

    #[test]
    fn keys_come_from_the_payload_and_the_event_key_each_once() {
        let lookups = "[lookup.profiles]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:1\"\nplan = \"key\"\n\
             [lookup.merchants]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:1\"\nplan = [\"/merchant\", \"/via/0\", \"/merchant\"]\n";
        assert!(
            !cfg(lookups).prepare_plans_lookups(),
            "every store is planned by the file"
        );
        let p = plans(lookups);
        let e = event(
            "c-1",
            r#"{"customer":"c-1","merchant":"m-\u0037","via":[42,"x"]}"#,
        );
        let mut got = planned(&p, &e);
        got.sort();
        assert_eq!(
            got,
            vec![
                ("merchants".to_string(), "42".to_string()),
                ("merchants".to_string(), "m-7".to_string()),
                ("profiles".to_string(), "c-1".to_string()),
            ]
        );
    }

    #[test]
    fn a_payload_without_the_key_plans_nothing_for_it() {
        let p = plans(
            "[lookup.merchants]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:1\"\nplan = \"/merchant\"\n",
        );
        for payload in [
            r#"{"customer":"c-1"}"#,
            r#"{"merchant":null}"#,
            r#"{"merchant":""}"#,
            r#"{"merchant":{"id":"m-1"}}"#,
            r#"{"merchant":true}"#,
            r#"{"merchant":1e2}"#,
            r#"{"merchant":7.5}"#,
            "not json",
            r#"{"merchant":"m-1""#,
        ] {
            assert_eq!(planned(&p, &event("c-1", payload)), vec![], "{payload}");
        }
        assert_eq!(
            planned(&p, &event("c-1", r#"{"merchant":-7}"#)),
            vec![("merchants".to_string(), "-7".to_string())]
        );
    }

    #[test]
    fn prepare_still_plans_the_stores_without_a_plan() {
        let mixed = cfg(
            "[lookup.profiles]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:1\"\nplan = \"key\"\n\
             [lookup.merchants]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:1\"\n",
        );
        assert!(mixed.prepare_plans_lookups());
        let none = cfg("[lookup.merchants]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:1\"\n");
        assert!(none.prepare_plans_lookups());
        assert_eq!(planned(&FilePlans::new(&none), &event("c-1", "{}")), vec![]);
    }

    #[test]
    fn a_plan_that_is_not_a_pointer_is_refused_with_the_fix() {
        let toml = file(
            "[lookup.profiles]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:1\"\nplan = \"customer\"\n",
        );
        let e = PipelineConfig::parse(&toml)
            .expect_err("refused")
            .to_string();
        assert!(e.contains("lookup.profiles.plan"), "{e}");
        assert!(e.contains("\"/customer\""), "{e}");
        let bad = toml.replace("plan = \"customer\"", "plan = 3");
        let e = PipelineConfig::parse(&bad)
            .expect_err("refused")
            .to_string();
        assert!(e.contains("a JSON pointer or a list of them"), "{e}");
    }
}
