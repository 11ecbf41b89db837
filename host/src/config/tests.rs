use super::*;

const GOOD: &str = r#"
[pipeline]
name = "fraud"
state_dir = "state"

[input]
stream = "TXN"
subjects = ["txn.in"]
key = { json = "/customer" }

[plugin]
path = "fraud.wasm"
config = { flag_threshold = 70 }

[output]
subject = "txn.enriched"
allow = ["alerts.>"]

[dead_letter]
subject = "txn.dlq"
"#;

fn with(replace: &str, by: &str) -> Result<PipelineConfig, ConfigError> {
    assert!(
        GOOD.contains(replace),
        "test edits a line that exists: {replace}"
    );
    PipelineConfig::parse(&GOOD.replace(replace, by))
}

#[test]
fn a_complete_file_parses_with_defaults() {
    let c = PipelineConfig::parse(GOOD).expect("valid");
    assert_eq!(c.input.batch, 256);
    assert_eq!(c.pipeline.key_groups, 128);
    assert_eq!(c.consumer_name(), "fraud");
    assert_eq!(c.plugin.config_json(), r#"{"flag_threshold":70}"#);
    assert!(c.output_allowed("txn.enriched"));
    assert!(c.output_allowed("alerts.high.risk"));
    assert!(!c.output_allowed("forbidden.subject"));
}

#[test]
fn an_empty_state_dir_and_a_malformed_nats_url_are_refused() {
    let e = with("state_dir = \"state\"", "state_dir = \"\"").expect_err("empty state_dir");
    assert_eq!(e.field, "pipeline.state_dir", "{e}");
    for bad in [
        "nats://127.0.0.1:notaport",
        "http://[::1",
        "nats://a:1, nats://b:x",
    ] {
        let text = format!("{GOOD}\n[nats]\nurl = \"{bad}\"\n");
        let e = PipelineConfig::parse(&text).expect_err(bad);
        assert_eq!(e.field, "nats.url", "{bad}: {e}");
    }
    for good in [
        "nats://127.0.0.1:4222",
        "tls://nats.example:4443",
        "n1:4222, n2:4222",
    ] {
        let text = format!("{GOOD}\n[nats]\nurl = \"{good}\"\n");
        PipelineConfig::parse(&text).unwrap_or_else(|e| panic!("{good}: {e}"));
    }
}

#[test]
fn a_batch_wait_beyond_a_second_is_refused_and_two_milliseconds_is_the_default() {
    assert_eq!(
        PipelineConfig::parse(GOOD)
            .expect("valid")
            .input
            .batch_wait_ms,
        2
    );
    let wait = |ms: u64| {
        with(
            "key = { json = \"/customer\" }",
            &format!("key = {{ json = \"/customer\" }}\nbatch_wait_ms = {ms}"),
        )
    };
    let e = wait(5000).expect_err("too long a wait");
    assert_eq!(e.field, "input.batch_wait_ms", "{e}");
    assert!(e.message.contains("use 0 to 1000"), "{e}");
    let off = wait(0).expect("0 turns it off");
    assert_eq!(off.input.batch_wait_ms, 0);
}

#[test]
fn a_value_of_the_wrong_type_names_its_field_not_a_byte_offset() {
    let e = with(
        "[input]\nstream = \"TXN\"",
        "[input]\nstream = \"TXN\"\nbatch = \"many\"",
    )
    .expect_err("a string batch");
    assert_eq!(e.field, "input.batch", "{e}");
    let e = with("name = \"fraud\"", "name = 42").expect_err("a number name");
    assert_eq!(e.field, "pipeline.name", "{e}");
    let e = PipelineConfig::parse("= 1").expect_err("a value without a key");
    assert!(e.field.starts_with("line 1, column"), "{e}");
}

#[test]
fn errors_name_the_field_and_the_fix() {
    let e = with(
        "key = { json = \"/customer\" }",
        "key = { json = \"customer\" }",
    )
    .expect_err("bad pointer");
    assert_eq!(e.field, "input.key.json");
    assert!(e.message.contains("must start with `/`"), "{e}");

    let e = with("subject = \"txn.enriched\"", "subject = \"txn.*\"").expect_err("wildcard output");
    assert_eq!(e.field, "output.subject");
    assert!(e.message.contains("publish subject must be literal"), "{e}");

    let e = with("stream = \"TXN\"", "stream = \"TXN\"\nbacth = 10").expect_err("typo");
    assert_eq!(e.field, "bacth");
    assert!(e.message.contains("unknown field"), "{e}");

    let e = with("[dead_letter]\nsubject = \"txn.dlq\"", "").expect_err("missing section");
    assert_eq!(e.field, "dead_letter");

    let e = with("name = \"fraud\"", "name = \"fr aud\"").expect_err("bad name");
    assert_eq!(e.field, "pipeline.name");

    let e = with(
        "state_dir = \"state\"",
        "state_dir = \"state\"\nkey_groups = 0",
    )
    .expect_err("kg");
    assert!(e.message.contains("use 1 to 65536"), "{e}");

    let e = with(
        "[dead_letter]",
        "[state]\nblock_cache_mb = 2\n\n[dead_letter]",
    )
    .expect_err("a block cache too small");
    assert_eq!(e.field, "state.block_cache_mb");
    assert!(e.message.contains("use 8 to 1048576 (default 64)"), "{e}");
    let c = with(
        "[dead_letter]",
        "[state]\nblock_cache_mb = 512\n\n[dead_letter]",
    )
    .expect("a larger block cache");
    assert_eq!(c.state.block_cache_mb, 512);
}

#[test]
fn subject_matching_follows_nats_wildcards() {
    assert!(subject_matches("a.*.c", "a.b.c"));
    assert!(!subject_matches("a.*.c", "a.b.d"));
    assert!(subject_matches("a.>", "a.b.c"));
    assert!(!subject_matches("a.>", "a"));
    assert!(subject_matches("a.b", "a.b"));
    assert!(!subject_matches("a.b", "a.b.c"));
}

#[test]
fn an_output_read_back_by_an_input_is_refused() {
    for (output, dlq, field) in [
        ("txn.in", "txn.dlq", "output.subject"),
        ("txn.enriched", "txn.in", "dead_letter.subject"),
    ] {
        let text = GOOD
            .replace(
                "subject = \"txn.enriched\"",
                &format!("subject = \"{output}\""),
            )
            .replace("subject = \"txn.dlq\"", &format!("subject = \"{dlq}\""));
        let e = PipelineConfig::parse(&text).expect_err("a loop");
        assert_eq!(e.field, field, "{e}");
        assert!(
            e.message.contains("read back by input.subjects `txn.in`"),
            "{e}"
        );
    }
    let wildcard = GOOD
        .replace("subjects = [\"txn.in\"]", "subjects = [\"txn.>\"]")
        .replace("subject = \"txn.dlq\"", "subject = \"dlq.txn\"");
    let e = PipelineConfig::parse(&wildcard).expect_err("captured by a wildcard");
    assert_eq!(e.field, "output.subject", "{e}");
}

#[test]
fn a_cluster_serves_http_queries_through_its_nats_query_service() {
    let cluster =
        "[partitions]\ncount = 4\n\n[cluster]\npartition_subject = \"txn.p.{partition}.>\"\n";
    let c = PipelineConfig::parse(&format!(
        "{GOOD}\n{cluster}\n[query]\nhttp = \"127.0.0.1:8088\"\n"
    ))
    .expect("query.http with [cluster]");
    assert_eq!(c.query.http.as_deref(), Some("127.0.0.1:8088"));
    let e = PipelineConfig::parse(&format!(
        "{GOOD}\n{cluster}\n[query]\nhttp = \"127.0.0.1:8088\"\nnats = false\n"
    ))
    .expect_err("HTTP without the NATS service it asks");
    assert_eq!(e.field, "query.http", "{e}");
    assert!(e.to_string().contains("set query.nats = true"), "{e}");
}

#[test]
fn a_cluster_keeps_its_checkpoints_where_every_host_reads_them() {
    let cluster =
        "[partitions]\ncount = 4\n\n[cluster]\npartition_subject = \"txn.p.{partition}.>\"\n";
    for store in [
        "store = \"nats\"\n",
        "store = \"s3\"\n\n[checkpoint.s3]\nbucket = \"b\"\n",
    ] {
        PipelineConfig::parse(&format!("{GOOD}\n{cluster}\n[checkpoint]\n{store}"))
            .unwrap_or_else(|e| panic!("{store} with [cluster]: {e}"));
    }
    let e = PipelineConfig::parse(&format!(
        "{GOOD}\n{cluster}\n[checkpoint]\nstore = \"local\"\n"
    ))
    .expect_err("local checkpoints in a cluster");
    assert_eq!(e.field, "checkpoint.store", "{e}");
    assert!(
        e.message.contains("use \"nats\" (the default) or \"s3\""),
        "{e}"
    );
    PipelineConfig::parse(&format!("{GOOD}\n[checkpoint]\nstore = \"local\"\n"))
        .expect("local checkpoints on a single host");
}

#[test]
fn console_and_query_tls_and_tokens_are_checked() {
    let parse = |extra: &str| PipelineConfig::parse(&format!("{GOOD}\n{extra}"));
    let e = parse("[console]\ntls_cert = \"c.pem\"\n").expect_err("a certificate without key");
    assert_eq!(e.field, "console.tls_key", "{e}");
    assert!(e.message.contains("set both or neither"), "{e}");
    let e = parse("[query]\ntls_key = \"k.pem\"\n").expect_err("a key without certificate");
    assert_eq!(e.field, "query.tls_key", "{e}");
    let e = parse("[console]\ntoken = \"same\"\noperator_token = \"same\"\n")
        .expect_err("one secret for both roles");
    assert_eq!(e.field, "console.operator_token", "{e}");
    let e = parse("[console]\nlisten = \"8089\"\n").expect_err("not an address");
    assert_eq!(e.field, "console.listen", "{e}");
    let c = parse("[console]\ntoken = \"look\"\noperator_token = \"act\"\n").expect("roles");
    assert_eq!(c.console.listen, "127.0.0.1:8089");
}

#[test]
fn retention_by_age_is_bounded_and_needs_its_window() {
    let c = PipelineConfig::parse(&format!(
        "{GOOD}\n[checkpoint]\nretain = 2\nretain_for_ms = 86400000\nretain_every_ms = 600000\n"
    ))
    .expect("a day, one per 10 minutes");
    let r = c.checkpoint.retention();
    assert_eq!((r.count, r.for_ms, r.every_ms), (2, 86_400_000, 600_000));
    let e = PipelineConfig::parse(&format!("{GOOD}\n[checkpoint]\nretain_every_ms = 60000\n"))
        .expect_err("spacing without a window");
    assert_eq!(e.field, "checkpoint.retain_every_ms", "{e}");
    // A week of checkpoints every 5 s would be 120,960 of them: the error names the spacing
    // that fits.
    let e = PipelineConfig::parse(&format!(
        "{GOOD}\n[checkpoint]\nretain_for_ms = 604800000\n"
    ))
    .expect_err("too many");
    assert_eq!(e.field, "checkpoint.retain_for_ms", "{e}");
    assert!(
        e.to_string().contains("retain_every_ms to at least 60480"),
        "{e}"
    );
}

#[test]
fn quotas_need_a_bound_and_name_their_policy() {
    let c = PipelineConfig::parse(&format!(
        "{GOOD}\n[state.quota.recent]\nmax_entries = 100\npolicy = \"evict\"\n[state.quota.profile]\nmax_bytes = 4096\n"
    ))
    .expect("two quotas");
    let q = c.state.quota["recent"];
    assert_eq!(
        (q.max_entries, q.max_bytes, q.policy),
        (Some(100), None, crate::state::QuotaPolicy::Evict)
    );
    assert_eq!(
        c.state.quota["profile"].policy,
        crate::state::QuotaPolicy::Reject,
        "reject unless told otherwise"
    );
    let e = PipelineConfig::parse(&format!(
        "{GOOD}\n[state.quota.recent]\npolicy = \"evict\"\n"
    ))
    .expect_err("no bound");
    assert_eq!(e.field, "state.quota.recent", "{e}");
    assert!(e.to_string().contains("max_entries"), "{e}");
    let e = PipelineConfig::parse(&format!(
        "{GOOD}\n[state.quota.recent]\nmax_entries = 3\npolicy = \"drop\"\n"
    ))
    .expect_err("unknown policy");
    assert!(
        e.to_string().contains("reject") && e.to_string().contains("evict"),
        "{e}"
    );
}

#[test]
fn a_partition_subject_without_the_key_token_needs_a_key_from_the_payload_or_a_header() {
    let literal =
        "[partitions]\ncount = 4\n\n[cluster]\npartition_subject = \"txn.p.{partition}\"\n";
    let c = PipelineConfig::parse(&format!("{GOOD}\n{literal}")).expect("a JSON key");
    let cluster = c.cluster.as_ref().expect("[cluster]");
    assert!(!cluster.keeps_key_token());
    assert_eq!(
        c.for_partition(3).input.subjects,
        vec!["txn.p.3".to_string()]
    );
    let by_token = GOOD.replace(
        "key = { json = \"/customer\" }",
        "key = { subject_token = 1 }",
    );
    assert_ne!(by_token, GOOD, "the fixture's key line changed");
    let e = PipelineConfig::parse(&format!("{by_token}\n{literal}"))
        .expect_err("a subject-token key the stored subject no longer has");
    assert_eq!(e.field, "input.key", "{e}");
    assert!(e.message.contains("ending in `.>`"), "{e}");
    let kept = literal.replace("{partition}\"", "{partition}.>\"");
    let c = PipelineConfig::parse(&format!("{by_token}\n{kept}")).expect("the token kept");
    assert!(c.cluster.as_ref().expect("[cluster]").keeps_key_token());
}
