//! Nothing acknowledged that is not stored somewhere: an output too large for the server
//! becomes a dead letter of kind `too-large` (without its payload when even that is too
//! large), and dead letters that no stream captures wait, with their input unacknowledged,
//! until an operator creates the stream; deliveries of the input's consumer that another
//! reader took are read again, never acknowledged unread.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use eddy_tests::{
    Fixture, NatsServer, PipelineSpec, Running, create_stream, create_streams, eventually, plugin,
    stream_len, wait_for_len,
};
use futures::StreamExt;

fn chaos_spec(nats_url: &str, dir: &std::path::Path) -> PipelineSpec {
    let mut spec = PipelineSpec::new("chaos", nats_url, dir, plugin("chaos"));
    spec.key = r#"{ json = "/k" }"#.into();
    spec
}

/// The chaos pipeline on a server of its own, checkpointing every 100 ms.
async fn chaos_fixture() -> Fixture {
    Fixture::start_with(|url, dir| {
        let mut spec = chaos_spec(url, dir);
        spec.extra = "[checkpoint]\ninterval_ms = 100\n".into();
        spec
    })
    .await
}

async fn publish(js: &async_nats::jetstream::Context, payloads: &[String]) {
    for p in payloads {
        js.publish("txn.in", Bytes::from(p.clone()))
            .await
            .expect("publish")
            .await
            .expect("stored");
    }
}

/// How many input messages the pipeline's consumer has not had acknowledged.
async fn unacknowledged(js: &async_nats::jetstream::Context) -> u64 {
    let s = js.get_stream("TXN").await.expect("stream");
    let mut c: async_nats::jetstream::consumer::PullConsumer =
        s.get_consumer("chaos").await.expect("consumer");
    let info = c.info().await.expect("info");
    info.num_ack_pending as u64 + info.num_pending
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_too_large_for_the_server_is_dead_lettered_not_lost() {
    let nats = NatsServer::start_with_conf(Some("max_payload: 8192\n")).expect("nats-server");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = chaos_spec(&nats.url(), dir.path());
    spec.extra = "[checkpoint]\ninterval_ms = 100\n".into();
    let conn = nats.connect().await.expect("connect");
    create_streams(&conn.js, &spec).await.expect("streams");
    // An input that fits, whose output (the same payload plus Eddy's headers) does not, and
    // whose dead letter (payload plus the reason) does not either.
    let big = format!(
        r#"{{"action":"ok","k":"big","pad":"{}"}}"#,
        "x".repeat(8_100)
    );
    let small = |i: u32| format!(r#"{{"action":"ok","k":"k{i}"}}"#);
    publish(&conn.js, &[small(1), big.clone(), small(2), small(3)]).await;
    let run = Running::start(&spec);
    wait_for_len(&conn.js, "OUT", 3, Duration::from_secs(30)).await;
    wait_for_len(&conn.js, "DLQ", 1, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let dead = eddy_tests::read_stored(&conn.js, "txn.dlq")
        .await
        .expect("dead letters");
    assert_eq!(dead.len(), 1, "{dead:?}");
    let header = |n: &str| {
        dead[0]
            .headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert_eq!(header("Eddy-Error-Kind"), "too-large");
    assert!(
        header("Eddy-Error").contains("max_payload"),
        "{}",
        header("Eddy-Error")
    );
    assert_eq!(
        header("Eddy-Source-Sequence"),
        "2",
        "names the input to read it from"
    );
    assert!(header("Eddy-Payload-Omitted").contains("bytes"));
    assert!(dead[0].payload.is_empty());
    assert_eq!(stream_len(&conn.js, "OUT").await.expect("len"), 3);
    // Counted as stored, and the input is acknowledged once it is.
    assert_eq!(
        run.metrics.dead_lettered[eddy_host::metrics::DeadLetterReason::TooLarge as usize]
            .load(Ordering::Relaxed),
        1
    );
    let summary = run.stop().await;
    assert_eq!(summary.outputs, 3);
    assert_eq!(summary.dead_lettered, 1);
    assert_eq!(unacknowledged(&conn.js).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_wait_for_a_missing_stream_and_their_input_stays_unacknowledged() {
    let fx = chaos_fixture().await;
    let (spec, conn) = (&fx.spec, &fx.conn);
    let run = Running::start(spec);
    publish(&conn.js, &[r#"{"action":"ok","k":"a"}"#.to_string()]).await;
    wait_for_len(&conn.js, "OUT", 1, Duration::from_secs(30)).await;

    // The operator deletes the dead-letter stream; events keep coming, some rejected.
    conn.js.delete_stream("DLQ").await.expect("delete DLQ");
    let events: Vec<String> = (0..6)
        .map(|i| {
            let action = if i % 2 == 0 { "reject" } else { "ok" };
            format!(r#"{{"action":"{action}","k":"k{i}"}}"#)
        })
        .collect();
    publish(&conn.js, &events).await;
    // Past the grace for a stream that is only restarting (30 s), the dead letters are
    // parked, not dropped, and the alarm metric says so.
    eventually("dead letters parked", Duration::from_secs(60), async || {
        run.metrics.parked.load(Ordering::Relaxed) >= 1
    })
    .await;
    assert!(
        unacknowledged(&conn.js).await >= 3,
        "the input behind them is not acknowledged"
    );

    create_stream(&conn.js, "DLQ", &["txn.dlq"])
        .await
        .expect("DLQ again");
    wait_for_len(&conn.js, "DLQ", 3, Duration::from_secs(30)).await;
    wait_for_len(&conn.js, "OUT", 4, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(run.metrics.parked.load(Ordering::Relaxed), 0);
    let summary = run.stop().await;
    assert_eq!(
        stream_len(&conn.js, "DLQ").await.expect("len"),
        3,
        "each once"
    );
    assert_eq!(summary.dead_lettered, 3);
    assert_eq!(unacknowledged(&conn.js).await, 0);
}

/// The input is acknowledged "all up to" each checkpoint: a delivery that went to another
/// reader of the same consumer (a host that lost the partition while paused, or a delivery
/// lost with a failing server) must be read again, not acknowledged unread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_another_reader_took_are_read_again_not_acknowledged_unread() {
    let fx = chaos_fixture().await;
    let (spec, conn) = (&fx.spec, &fx.conn);
    let event = |i: u32| format!(r#"{{"action":"ok","k":"k{i}"}}"#);
    let run = Running::start(spec);
    publish(&conn.js, &[event(0)]).await;
    wait_for_len(&conn.js, "OUT", 1, Duration::from_secs(30)).await;

    // A stranger pulls from the pipeline's consumer while a burst arrives, and never acks.
    let stream = conn.js.get_stream("TXN").await.expect("stream");
    let stranger: async_nats::jetstream::consumer::PullConsumer =
        stream.get_consumer("chaos").await.expect("consumer");
    let mut taken = stranger
        .fetch()
        .max_messages(5)
        .expires(Duration::from_secs(20))
        .messages()
        .await
        .expect("fetch");
    let burst: Vec<String> = (1..=2_000).map(event).collect();
    let js = conn.js.clone();
    let publisher = tokio::spawn(async move { publish(&js, &burst).await });
    let mut stolen = Vec::new();
    while let Some(m) = taken.next().await {
        stolen.push(m.expect("delivery").info().expect("info").stream_sequence);
    }
    publisher.await.expect("publisher");
    assert!(
        !stolen.is_empty(),
        "the stranger got none of the burst: the test proves nothing"
    );

    wait_for_len(&conn.js, "OUT", 2_001, Duration::from_secs(60)).await;
    // Past a few checkpoints: nothing more arrives, and nothing is missing.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let outs = eddy_tests::read_stored(&conn.js, "txn.out")
        .await
        .expect("outputs");
    let keys: Vec<String> = outs
        .iter()
        .map(|m| {
            let v: serde_json::Value = serde_json::from_slice(&m.payload).expect("json");
            v["k"].as_str().expect("k").to_string()
        })
        .collect();
    let got: std::collections::BTreeSet<&String> = keys.iter().collect();
    let missing: Vec<String> = (0..=2_000)
        .map(|i| format!("k{i}"))
        .filter(|k| !got.contains(k))
        .collect();
    assert!(
        missing.is_empty(),
        "events without output: {missing:?} (the stranger took stream sequences {stolen:?})"
    );
    assert_eq!(keys.len(), 2_001, "each event once");
    assert!(run.metrics.input_reopens.load(Ordering::Relaxed) >= 1);
    let summary = run.stop().await;
    assert_eq!(summary.outputs, 2_001);
    assert_eq!(unacknowledged(&conn.js).await, 0);
}

/// The input reader's answer to a pull that is lost (the consumer gone) when NATS cannot be
/// reached to pull again: it keeps asking, call after call, and reads on once NATS is back.
/// Taking the ended pull for the end of the input would stop the partition for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_pull_that_cannot_be_renewed_while_nats_is_down_is_renewed_when_it_is_back() {
    let mut nats = NatsServer::start().expect("nats-server");
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = chaos_spec(&nats.url(), dir.path());
    let conn = nats.connect().await.expect("connect");
    create_streams(&conn.js, &spec).await.expect("streams");
    let payloads = |range: std::ops::Range<u32>| -> Vec<String> {
        range.map(|i| format!(r#"{{"k":"a","n":{i}}}"#)).collect()
    };
    publish(&conn.js, &payloads(0..3)).await;

    let reader = nats.connect().await.expect("connect");
    let cfg = spec.config();
    let mut input = eddy_host::transport::Input::open(&reader, &cfg, 0)
        .await
        .expect("input");
    let read = |batch: Vec<async_nats::jetstream::Message>| -> Vec<String> {
        batch
            .iter()
            .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
            .collect()
    };
    let wait = Duration::from_millis(50);
    let mut first = Vec::new();
    while first.len() < 3 {
        let batch = input.next_batch(10, wait, Duration::from_secs(5)).await;
        first.extend(read(batch.expect("a batch").expect("not the end")));
    }
    assert_eq!(first, payloads(0..3));

    // The consumer goes (as a restarted server's in-memory consumer does): its pull ends with
    // "consumer deleted". Then NATS goes away before the reader can pull again.
    let stream = conn.js.get_stream(&spec.stream).await.expect("stream");
    stream
        .delete_consumer(input.consumer())
        .await
        .expect("delete consumer");
    tokio::time::sleep(Duration::from_millis(500)).await;
    nats.stop();

    // While NATS is down, every call finds no message and says so, in about the time it was
    // given (the reader's checks run between calls; a request to the absent server would wait
    // 10 s); none says the input ended.
    for call in 0..2 {
        let started = std::time::Instant::now();
        let r = input.next_batch(10, wait, Duration::from_secs(2)).await;
        assert!(
            matches!(r, Err(eddy_host::transport::inputs::Idle)),
            "call {call} while NATS is down: {:?}",
            r.map(|b| b.map(read))
        );
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "call {call} took {:?} for 2 s of idle time",
            started.elapsed()
        );
        // The pull's end was read (else this would test nothing) and is still to be renewed.
        assert!(input.pull_lost(), "call {call}: the lost pull is kept");
    }

    nats.restart().expect("restart");
    let back = nats.connect().await.expect("connect");
    publish(&back.js, &payloads(3..5)).await;
    let mut after = Vec::new();
    let until = tokio::time::Instant::now() + Duration::from_secs(60);
    while after.len() < 2 && tokio::time::Instant::now() < until {
        match input.next_batch(10, wait, Duration::from_secs(2)).await {
            Ok(Some(batch)) => after.extend(read(batch)),
            Ok(None) => panic!("the input ended after NATS came back"),
            Err(_idle) => {}
        }
    }
    assert_eq!(
        after,
        payloads(3..5),
        "the messages stored after the outage, read once each from the consumer created again"
    );
}

/// An output to `subject` with message id `id`.
fn output(subject: &str, id: &str) -> eddy_host::transport::publisher::OutMessage {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", id);
    eddy_host::transport::publisher::OutMessage {
        subject: subject.into(),
        headers,
        payload: Bytes::from(id.to_string()),
        kind: eddy_host::transport::publisher::OutKind::Output,
        fallback: None,
    }
}

/// A gate that is open until the flag is cleared (a fence whose lease may have lapsed).
fn gate() -> (
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    eddy_host::transport::Gate,
) {
    let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flag = open.clone();
    let gate = std::sync::Arc::new(move || {
        if flag.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err("the lease may have lapsed".to_string())
        }
    });
    (open, gate)
}

/// A publisher whose gate closes (a partition's fence: the lease may have lapsed) sends
/// nothing more: the job queued after stays unstored and waiting for it says the publisher
/// stopped; what it dropped was never acknowledged upstream, so the new owner sends it.
#[tokio::test]
async fn a_publisher_whose_gate_closes_sends_nothing_more() {
    use eddy_host::transport::Publisher;
    let nats = NatsServer::start().expect("nats-server");
    let conn = nats.connect().await.expect("connect");
    create_stream(&conn.js, "OUT", &["out.>"])
        .await
        .expect("stream");
    let (open, gate) = gate();
    let metrics = eddy_host::metrics::Metrics::new("gate");
    let mut publisher = Publisher::spawn(conn.js.clone(), metrics, Some(gate));
    let first = publisher
        .publish(vec![output("out.a", "1")])
        .await
        .expect("queued");
    publisher.wait_acked(first).await.expect("stored");
    open.store(false, Ordering::Release);
    let second = publisher
        .publish(vec![output("out.a", "2")])
        .await
        .expect("queued");
    let waited = tokio::time::timeout(Duration::from_secs(10), publisher.wait_acked(second))
        .await
        .expect("the wait ends");
    assert!(
        waited
            .as_ref()
            .is_err_and(|e| e.to_string().contains("stopped")),
        "{waited:?}"
    );
    assert_eq!(stream_len(&conn.js, "OUT").await.expect("len"), 1);
}

/// A publisher dropped while it retries (its run ended without closing it) stops: an output
/// held because no stream captured its subject is not published once an operator creates
/// the stream, possibly long after whoever replayed its event published it.
#[tokio::test]
async fn a_dropped_publisher_stops_retrying() {
    use eddy_host::transport::Publisher;
    let nats = NatsServer::start().expect("nats-server");
    let conn = nats.connect().await.expect("connect");
    let metrics = eddy_host::metrics::Metrics::new("dropped");
    let mut publisher = Publisher::spawn(conn.js.clone(), metrics.clone(), None);
    publisher
        .publish(vec![output("late.a", "1")])
        .await
        .expect("queued");
    // Retried (no stream yet) with growing pauses.
    eventually(
        "the output is being retried",
        Duration::from_secs(10),
        async || metrics.publish_retries.load(Ordering::Relaxed) >= 2,
    )
    .await;
    drop(publisher);
    create_stream(&conn.js, "LATE", &["late.>"])
        .await
        .expect("stream");
    // Past the longest pause between retries (2 s).
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(stream_len(&conn.js, "LATE").await.expect("len"), 0);
}

/// A reader whose partition may have a new owner (its gate closed) never creates its
/// consumer again after a lost pull: the new owner's consumer is the same durable, created at
/// the new owner's position, and must stay as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_reader_leaves_the_new_owner_s_consumer_alone() {
    let nats = NatsServer::start().expect("nats-server");
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = chaos_spec(&nats.url(), dir.path());
    let conn = nats.connect().await.expect("connect");
    create_streams(&conn.js, &spec).await.expect("streams");
    let payloads: Vec<String> = (0..5).map(|i| format!(r#"{{"k":"a","n":{i}}}"#)).collect();
    publish(&conn.js, &payloads).await;
    let cfg = spec.config();
    let (open, gate) = gate();
    let reader = nats.connect().await.expect("connect");
    let mut old = eddy_host::transport::Input::open(&reader, &cfg, 0)
        .await
        .expect("input")
        .with_gate(Some(gate));
    let wait = Duration::from_millis(50);
    let mut read = 0;
    while read < 5 {
        let batch = old.next_batch(10, wait, Duration::from_secs(5)).await;
        read += batch.expect("a batch").expect("not the end").len();
    }
    // The lease lapses; the new owner's start deletes the consumer (the old reader's pull is
    // lost) and creates it after its checkpoint's position, 2.
    open.store(false, Ordering::Release);
    let stream = conn.js.get_stream(&spec.stream).await.expect("stream");
    stream
        .delete_consumer(old.consumer())
        .await
        .expect("delete consumer");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = old.next_batch(10, wait, Duration::from_secs(2)).await;
    assert!(r.is_err(), "the fenced reader reads nothing");
    assert!(old.pull_lost(), "the lost pull is not renewed");
    let consumer_info = |name: String| {
        let stream = stream.clone();
        async move { stream.consumer_info(&name).await }
    };
    assert!(
        consumer_info(old.consumer().to_string()).await.is_err(),
        "the fenced reader did not create the consumer again"
    );
    let new = eddy_host::transport::Input::open(&conn, &cfg, 2)
        .await
        .expect("the new owner's input");
    for _ in 0..2 {
        let _ = old.next_batch(10, wait, Duration::from_secs(1)).await;
    }
    let info = consumer_info(new.consumer().to_string())
        .await
        .expect("the new owner's consumer is there");
    assert_eq!(
        info.config.deliver_policy,
        async_nats::jetstream::consumer::DeliverPolicy::ByStartSequence { start_sequence: 3 },
        "the new owner's consumer as it created it"
    );
    // The new owner has not pulled yet: nothing delivered past its start means the old
    // reader took none of its deliveries.
    assert_eq!(
        info.delivered.stream_sequence, 2,
        "nothing delivered past the new owner's start"
    );
}
