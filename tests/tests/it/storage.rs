//! Checkpoints beyond the host: a host whose state directory is wiped gets its state back
//! from the checkpoint store (the NATS object store, the default; and an S3-compatible
//! server) and goes on exactly where it stopped: every output once, state equal to the
//! reference.

use std::collections::BTreeMap;
use std::time::Duration;

use eddy_host::cli::produce;
use eddy_host::query::{self, Op, Query};
use std::sync::atomic::Ordering;

use eddy_tests::{
    NatsServer, PipelineSpec, Relay, Running, S3Server, create_streams, eventually, plugin,
    publish_txs, stream_len, wait_for_len,
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
    wipe_and_finish(nats, &spec, &txs, 3_000).await;
}

/// Wipes the state directory, publishes `txs[done..]` and runs the pipeline again: every
/// output once, and the state the host answers counts all of `txs`, so what came before
/// `done` came back from the store (from empty state it would count the rest only).
async fn wipe_and_finish(
    nats: &NatsServer,
    spec: &PipelineSpec,
    txs: &[produce::Transaction],
    done: usize,
) {
    let conn = nats.connect().await.expect("connect");
    std::fs::remove_dir_all(&spec.state_dir).expect("wipe the state directory");
    publish_txs(&conn.js, "txn.in", &txs[done..]).await;
    let run = Running::start(spec);
    let got = wait_for_len(&conn.js, "OUT", txs.len() as u64, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut want: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for t in txs {
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
    assert_eq!(got, txs.len() as u64);
    assert_eq!(
        stream_len(&conn.js, "OUT").await.expect("len"),
        txs.len() as u64,
        "the restart replayed nothing twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_host_gets_its_state_back_from_the_nats_object_store() {
    let nats = NatsServer::start().expect("nats-server");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = PipelineSpec::new("fraud", &nats.url(), dir.path(), plugin("fraud-enrich"));
    // One kept: the second run's checkpoints retire the first run's.
    spec.extra = "[checkpoint]\ninterval_ms = 200\nretain = 1\n".into();
    let retain = spec.config().checkpoint.retain;
    a_wiped_host_continues_from_the_store(&nats, spec).await;
    // The objects are there, under the pipeline's name.
    let conn = nats.connect().await.expect("connect");
    let bucket = conn
        .js
        .get_object_store("eddy-checkpoints")
        .await
        .expect("the default bucket exists");
    use futures::TryStreamExt;
    let infos: Vec<async_nats::jetstream::object_store::ObjectInfo> = bucket
        .list()
        .await
        .expect("list")
        .try_collect()
        .await
        .expect("names");
    // Retention deleted checkpoints, and left no marker of them in the bucket's stream: a
    // listing reads every marker (and skips it), so they would make every later one longer.
    let stream = conn
        .js
        .get_stream("OBJ_eddy-checkpoints")
        .await
        .expect("the bucket's stream");
    let metadata: Vec<(String, usize)> = stream
        .info_with_subjects("$O.eddy-checkpoints.M.>")
        .await
        .expect("subjects")
        .try_collect()
        .await
        .expect("subjects");
    assert_eq!(
        metadata.len(),
        infos.len(),
        "one metadata subject per stored object, none for deleted ones"
    );
    let names: Vec<String> = infos.into_iter().map(|i| i.name).collect();
    let ids: Vec<u64> = names
        .iter()
        .filter_map(|n| n.strip_prefix("fraud/chk-")?.strip_suffix("/manifest.json"))
        .filter_map(|i| i.parse().ok())
        .collect();
    assert!(
        ids.len() <= retain
            && ids
                .iter()
                .max()
                .is_some_and(|newest| *newest > retain as u64),
        "retention deleted checkpoints and kept the newest {retain}: {ids:?}"
    );
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

/// The store out of reach mid-run (a relay in front of it cut, the store keeping its data):
/// events keep flowing, each failed checkpoint is counted in the metrics and the next one
/// tried; once the store is back a checkpoint lands, and a wiped host restores from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_store_keeps_events_flowing_and_checkpoints_are_retried() {
    let nats = NatsServer::start().expect("nats-server");
    let s3 = S3Server::start().expect("moto_server");
    let relay = Relay::start(s3.port()).await.expect("relay");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = PipelineSpec::new("fraud", &nats.url(), dir.path(), plugin("fraud-enrich"))
        .s3_checkpoints_via(&s3, &relay);
    spec.extra = "[checkpoint]\ninterval_ms = 200\n".into();
    let conn = nats.connect().await.expect("connect");
    create_streams(&conn.js, &spec).await.expect("streams");
    let txs = produce::transactions(9_000, 40, 13, 0);
    publish_txs(&conn.js, "txn.in", &txs[..3_000]).await;
    let run = Running::start(&spec);
    wait_for_len(&conn.js, "OUT", 3_000, Duration::from_secs(60)).await;
    let m = run.metrics.clone();
    eventually(
        "a checkpoint is stored",
        Duration::from_secs(30),
        async || m.checkpoints.load(Ordering::Relaxed) >= 1,
    )
    .await;

    relay.cut();
    let failed_before = m.checkpoint_failures.load(Ordering::Relaxed);
    publish_txs(&conn.js, "txn.in", &txs[3_000..6_000]).await;
    wait_for_len(&conn.js, "OUT", 6_000, Duration::from_secs(60)).await;
    eventually(
        "failed checkpoints are counted",
        Duration::from_secs(60),
        async || m.checkpoint_failures.load(Ordering::Relaxed) > failed_before,
    )
    .await;
    let text = m.render();
    assert!(
        text.lines()
            .any(|l| l.starts_with("eddy_checkpoint_failures_total") && !l.ends_with(" 0")),
        "{text}"
    );

    relay.restore();
    let stored = m.checkpoints.load(Ordering::Relaxed);
    eventually(
        "a checkpoint is stored once the store is back",
        Duration::from_secs(60),
        async || m.checkpoints.load(Ordering::Relaxed) > stored,
    )
    .await;
    run.stop().await;
    wipe_and_finish(&nats, &spec, &txs, 6_000).await;
}
