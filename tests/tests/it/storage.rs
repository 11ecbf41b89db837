//! Checkpoints beyond the host: a host whose state directory is wiped gets its state back
//! from the checkpoint store (the NATS object store, the default; and an S3-compatible
//! server) and goes on exactly where it stopped: every output once, state equal to the
//! reference.

use std::collections::BTreeMap;
use std::time::Duration;

use eddy_host::cli::produce;
use eddy_host::query::{self, Op, Query};
use eddy_tests::{
    NatsServer, PipelineSpec, Running, S3Server, create_streams, plugin, publish_txs, stream_len,
    wait_for_len,
};

/// Runs half the events, stops, wipes the state directory, runs the rest: the second run
/// must start from the stored checkpoint, not from empty state.
async fn a_wiped_host_continues_from_the_store(nats: &NatsServer, spec: PipelineSpec) {
    let conn = nats.connect().await.expect("connect");
    create_streams(&conn.js, &spec).await.expect("streams");
    let txs = produce::transactions(6_000, 40, 11, 0);
    publish_txs(&conn.js, "txn.in", &txs[..3_000]).await;
    let run = Running::start(&spec);
    wait_for_len(&conn.js, "OUT", 3_000, Duration::from_secs(60)).await;
    run.stop().await;
    let local = spec.config().checkpoints();
    assert!(!local.list().is_empty(), "the first run checkpointed");

    std::fs::remove_dir_all(&spec.state_dir).expect("wipe the state directory");
    publish_txs(&conn.js, "txn.in", &txs[3_000..]).await;
    let run = Running::start(&spec);
    let got = wait_for_len(&conn.js, "OUT", 6_000, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // State as the running host answers it: counts over all 6,000 events, so the first
    // 3,000 came back from the store (from empty state they would count 3,000 only).
    let mut want: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for t in &txs {
        let e = want.entry(t.customer.clone()).or_default();
        e.0 += 1;
        e.1 += t.amount_cents;
    }
    for (customer, (count, sum)) in &want {
        let q = Query {
            state: Some("stats".into()),
            key: Some(customer.clone()),
            ..Query::default()
        };
        let v = query::nats::ask(&conn, &spec.name, Op::Get, &q)
            .await
            .expect("query answered");
        assert_eq!(v["value"]["count"], *count, "{customer}: count");
        assert_eq!(v["value"]["sum_cents"], *sum, "{customer}: sum");
    }
    run.stop().await;
    assert_eq!(got, 6_000);
    assert_eq!(
        stream_len(&conn.js, "OUT").await.expect("len"),
        6_000,
        "the restart replayed nothing twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_host_gets_its_state_back_from_the_nats_object_store() {
    let nats = NatsServer::start().expect("nats-server");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = PipelineSpec::new("fraud", &nats.url(), dir.path(), plugin("fraud-enrich"));
    spec.extra = "[checkpoint]\ninterval_ms = 200\n".into();
    a_wiped_host_continues_from_the_store(&nats, spec).await;
    // The objects are there, under the pipeline's name.
    let conn = nats.connect().await.expect("connect");
    let bucket = conn
        .js
        .get_object_store("eddy-checkpoints")
        .await
        .expect("the default bucket exists");
    use futures::TryStreamExt;
    let names: Vec<String> = bucket
        .list()
        .await
        .expect("list")
        .map_ok(|i| i.name)
        .try_collect()
        .await
        .expect("names");
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("fraud/shared/") && n.ends_with(".sst"))
    );
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("fraud/chk-") && n.ends_with("/manifest.json"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_host_gets_its_state_back_from_s3() {
    let nats = NatsServer::start().expect("nats-server");
    let s3 = S3Server::start().expect("moto_server");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = PipelineSpec::new("fraud", &nats.url(), dir.path(), plugin("fraud-enrich"))
        .s3_checkpoints(&s3);
    spec.extra = "[checkpoint]\ninterval_ms = 200\n".into();
    a_wiped_host_continues_from_the_store(&nats, spec).await;
}
