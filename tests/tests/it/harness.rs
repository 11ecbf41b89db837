//! `eddy test` with lookups: a plugin that enriches from lookup stores runs with its answers
//! from a file, planned by its own `prepare` as in `eddy run`, and a missing answer file or
//! store gives an error that names the fix.

use std::process::Command;

use eddy_tests::{eddy_bin, plugin};
use serde_json::Value;

/// Runs `eddy test` on fraud-enrich in `dir` over `events.jsonl`: the lines it printed, and
/// what it wrote to standard error. Fails the test if the command failed.
fn fraud_enrich(dir: &std::path::Path, config: &str, extra: &[&str]) -> (Vec<Value>, String) {
    let out = Command::new(eddy_bin())
        .current_dir(dir)
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .arg("test")
        .arg(plugin("fraud-enrich"))
        .args(["events.jsonl", "--key", "/customer", "--config", config])
        .args(extra)
        .output()
        .expect("eddy test");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    (lines, stderr)
}

fn transaction(id: u32, customer: &str) -> String {
    format!(
        r#"{{"id":"tx-{id}","customer":"{customer}","amount_cents":1250,"merchant":"m-7","category":"grocery","ts":{}}}"#,
        1_700_000_000_000u64 + u64::from(id)
    )
}

#[test]
fn eddy_test_answers_lookups_from_a_file_as_prepare_plans_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let events: Vec<String> = [(1, "c1"), (2, "c2"), (3, "c3"), (4, "c1")]
        .iter()
        .map(|(id, c)| transaction(*id, c))
        .collect();
    std::fs::write(dir.path().join("events.jsonl"), events.join("\n") + "\n").expect("events");
    std::fs::write(
        dir.path().join("answers.json"),
        r#"{"profiles": {"c1": {"tier": "gold", "since": 2019}, "c2": null}}"#,
    )
    .expect("answers");

    // c1's profile as the file gives it, c2 (null) and c3 (absent) not in the store. The two
    // events of c1 fall in one call: `prepare` plans each (store, key) once a call.
    let profiles = r#"{"profiles": "profiles"}"#;
    let (lines, stderr) = fraud_enrich(dir.path(), profiles, &["--lookups", "answers.json"]);
    let profile = |l: &Value| {
        assert_eq!(l["outcome"], "emit", "{l}");
        l["outputs"][0]["payload"]["profile"].clone()
    };
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert_eq!(
        profile(&lines[0]),
        serde_json::json!({"tier": "gold", "since": 2019})
    );
    assert_eq!(profile(&lines[1]), Value::Null);
    assert_eq!(profile(&lines[2]), Value::Null);
    assert_eq!(profile(&lines[3]), profile(&lines[0]));
    assert!(
        stderr.contains(
            "3 lookups answered from answers.json: 3 planned by prepare, 0 made from handle"
        ),
        "{stderr}"
    );

    // A store the file has no answers for: the plugin sees an unknown store, and its error
    // (fraud-enrich rejects the event with it) names the file and what to add.
    let both = r#"{"profiles": "profiles", "merchants": "merchants"}"#;
    let (lines, _) = fraud_enrich(dir.path(), both, &["--lookups", "answers.json"]);
    for l in &lines {
        assert_eq!(l["outcome"], "reject", "{l}");
        let reason = l["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains("answers.json has no answers for this store")
                && reason.contains(r#""merchants""#),
            "{reason}"
        );
    }

    // Without --lookups, the error names the flag.
    let (lines, stderr) = fraud_enrich(dir.path(), profiles, &[]);
    assert_eq!(lines.len(), 4);
    for l in &lines {
        assert_eq!(l["outcome"], "reject", "{l}");
        assert!(
            l["reason"]
                .as_str()
                .is_some_and(|r| r.contains("pass --lookups answers.json")),
            "{l}"
        );
    }
    assert!(
        stderr.contains("lookups answered from nowhere (no --lookups)"),
        "{stderr}"
    );

    // A file that is not stores of keys is refused before any event runs, with its shape.
    std::fs::write(dir.path().join("bad.json"), r#"{"profiles": ["c1"]}"#).expect("bad");
    let out = Command::new(eddy_bin())
        .current_dir(dir.path())
        .env("XDG_CACHE_HOME", dir.path().join("cache"))
        .arg("test")
        .arg(plugin("fraud-enrich"))
        .args(["events.jsonl", "--key", "/customer", "--config", profiles])
        .args(["--lookups", "bad.json"])
        .output()
        .expect("eddy test");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "no event ran");
    assert!(
        stderr.contains("bad.json") && stderr.contains("store `profiles` is not an object"),
        "{stderr}"
    );
}
