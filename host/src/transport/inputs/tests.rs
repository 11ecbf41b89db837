//! The batching of `next_batch` against streams of deliveries made up in memory.

use super::*;

/// A message that says how many the consumer had after it.
struct Msg {
    pending: u64,
}

impl Delivered for Msg {
    fn pending(&self) -> u64 {
        self.pending
    }
}

type Item = Result<Msg, consumer::pull::MessagesError>;

/// `n` messages, each saying how many come after it; each after the first arrives `gap`
/// later, or (with no gap) on the next poll, as deliveries already on their way do.
fn arriving(n: usize, gap: Duration) -> impl futures::Stream<Item = Item> + Unpin {
    Box::pin(futures::stream::iter(0..n).then(move |i| async move {
        if i > 0 && gap.is_zero() {
            tokio::task::yield_now().await;
        } else if i > 0 {
            tokio::time::sleep(gap).await;
        }
        Ok(Msg {
            pending: (n - i - 1) as u64,
        })
    }))
}

fn len(p: Pulled<Msg>) -> usize {
    match p {
        Pulled::Batch(b, _) => b.len(),
        _ => panic!("a batch"),
    }
}

#[tokio::test]
async fn a_short_batch_behind_the_stream_waits_for_the_deliveries_on_their_way() {
    let wait = Duration::from_millis(500);
    // Behind by more than a batch: the deliveries on their way join it, up to `max`; the
    // backlog's last few, fewer than a batch lacks, go as they come.
    let mut behind = arriving(20, Duration::ZERO);
    assert_eq!(len(next_batch(&mut behind, 8, wait, later()).await), 8);
    assert_eq!(len(next_batch(&mut behind, 8, wait, later()).await), 8);
    assert_eq!(len(next_batch(&mut behind, 8, wait, later()).await), 1);
    // Without a wait, a batch is what has arrived: one message.
    let mut at_once = arriving(10, Duration::ZERO);
    assert_eq!(
        len(next_batch(&mut at_once, 8, Duration::ZERO, later()).await),
        1
    );
    // The wait is bounded: deliveries slower than it are left for the next batch.
    let mut slow = arriving(10, Duration::from_secs(5));
    let started = std::time::Instant::now();
    assert_eq!(len(next_batch(&mut slow, 8, wait, later()).await), 1);
    let took = started.elapsed();
    assert!(took >= wait && took < Duration::from_secs(5), "{took:?}");
}

/// A first message due long after any test's end.
fn later() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(600)
}

#[tokio::test]
async fn a_reader_that_has_caught_up_or_is_just_behind_a_steady_flow_never_waits() {
    let wait = Duration::from_secs(30);
    let started = std::time::Instant::now();
    // Nothing more in the stream after it (and nothing ever arrives): handed on at once.
    let mut caught_up = arriving(1, Duration::ZERO).chain(futures::stream::pending());
    assert_eq!(len(next_batch(&mut caught_up, 8, wait, later()).await), 1);
    // Fewer in the stream than the batch lacks, each published a while after the one
    // before: handed on at once, not held for them.
    let mut steady = arriving(3, Duration::from_secs(60));
    assert_eq!(len(next_batch(&mut steady, 8, wait, later()).await), 1);
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// `n` messages on their way behind a long backlog, then the pull lost (`kind`).
fn lost_after(
    n: usize,
    kind: consumer::pull::MessagesErrorKind,
) -> impl futures::Stream<Item = Item> + Unpin {
    let delivered = (0..n).map(|_| Ok(Msg { pending: 1000 }));
    futures::stream::iter(delivered)
        .chain(futures::stream::iter([Err(
            consumer::pull::MessagesError::new(kind),
        )]))
        .chain(futures::stream::pending())
}

#[tokio::test]
async fn a_pull_lost_while_a_batch_fills_hands_the_batch_on_and_says_so() {
    use consumer::pull::MessagesErrorKind as K;
    let wait = Duration::from_secs(30);
    let started = std::time::Instant::now();
    for kind in [K::NoResponders, K::ConsumerDeleted] {
        // Lost after three of eight: the three go on at once, with the loss, not after
        // the wait (and not dropped).
        match next_batch(&mut lost_after(3, kind), 8, wait, later()).await {
            Pulled::Batch(batch, Some(e)) => {
                assert_eq!(batch.len(), 3);
                assert_eq!(e.kind(), kind);
            }
            _ => panic!("a batch of three and the lost pull ({kind:?})"),
        }
    }
    // Lost before any message: an empty batch, the loss.
    assert!(matches!(
        next_batch(&mut lost_after(0, K::NoResponders), 8, wait, later()).await,
        Pulled::Batch(b, Some(_)) if b.is_empty()
    ));
    assert!(started.elapsed() < Duration::from_secs(10));
    // A heartbeat missed is not a loss (the client asks again by itself): the batch
    // waits its time for more as usual, then goes on without a loss.
    let short_wait = Duration::from_millis(50);
    match next_batch(
        &mut lost_after(3, K::MissingHeartbeat),
        8,
        short_wait,
        later(),
    )
    .await
    {
        Pulled::Batch(batch, None) => assert_eq!(batch.len(), 3),
        _ => panic!("a batch of three, no loss"),
    }
}

#[tokio::test]
async fn no_first_message_in_time_is_idle_and_a_started_batch_is_never_cut_short() {
    let mut nothing = futures::stream::pending::<Item>();
    let soon = tokio::time::Instant::now() + Duration::from_millis(50);
    assert!(matches!(
        next_batch(&mut nothing, 8, Duration::from_millis(2), soon).await,
        Pulled::Idle
    ));
    // The first message came in time; the wait for the rest runs past `first_by`.
    let mut behind = arriving(20, Duration::from_millis(20));
    let soon = tokio::time::Instant::now() + Duration::from_millis(10);
    let batch = next_batch(&mut behind, 8, Duration::from_secs(5), soon).await;
    assert_eq!(len(batch), 8);
}

#[test]
fn a_failure_that_goes_on_is_warned_of_first_then_once_a_period_then_its_end() {
    // As the reader counts its re-pulls: one attempt a second, through `Throttle`.
    let start = std::time::Instant::now();
    let at = |ms: u64| start + Duration::from_millis(ms);
    let mut warnings = Throttle::default();
    assert_eq!(
        warnings.admit(at(0), WARN_AGAIN_AFTER),
        Some(0),
        "the first is warned of"
    );
    // Quiet until the period has passed since the last warning.
    for s in 1..30 {
        assert_eq!(
            warnings.admit(at(s * 1_000), WARN_AGAIN_AFTER),
            None,
            "attempt {}",
            s + 1
        );
    }
    assert_eq!(
        warnings.admit(at(30_000), WARN_AGAIN_AFTER),
        Some(29),
        "warned again after the period, with the attempts not logged"
    );
    assert_eq!(warnings.admit(at(31_000), WARN_AGAIN_AFTER), None);
    // The reader starts over at a success: a new outage is warned of at once.
    warnings = Throttle::default();
    assert_eq!(warnings.admit(at(32_000), WARN_AGAIN_AFTER), Some(0));
}
