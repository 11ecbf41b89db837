use super::attached::LookupTotals;
use super::*;
use crate::state::StateStats;

/// A run's lookup stores, as far as the metrics see them: answers by store and result.
#[derive(Debug, Default)]
struct Answers(std::sync::Mutex<LookupTotals>);

impl LookupCounters for Answers {
    fn each(&self, f: &mut dyn FnMut(&str, &str, u64)) {
        for ((store, result), count) in self.0.lock().expect("answers").iter() {
            f(store, result, *count);
        }
    }
}

impl Answers {
    fn add(&self, result: &str, n: u64) {
        *self
            .0
            .lock()
            .expect("answers")
            .entry(("users".into(), result.into()))
            .or_default() += n;
    }
}

fn line(m: &Metrics, prefix: &str) -> String {
    m.render()
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_default()
        .to_string()
}

/// A cluster host runs a partition per run, each with its own state store and lookup
/// stores: the exposition sums all of them, and a sum keeps what a run counted after the
/// run ends (its partition moved away), so counters never go back.
#[test]
fn sums_cover_every_run_and_keep_what_ended_runs_counted() {
    let m = Metrics::new("p");
    assert!(!m.render().contains("eddy_lookups_total"), "no lookups yet");
    let (a, b) = (
        Arc::new(StateStats::default()),
        Arc::new(StateStats::default()),
    );
    m.attach_state(a.clone());
    m.attach_state(b.clone());
    m.attach_state(b.clone());
    a.hot_hits.fetch_add(3, Ordering::Relaxed);
    b.hot_hits.fetch_add(4, Ordering::Relaxed);
    let hits = "eddy_state_hot_reads_total{pipeline=\"p\",result=\"hit\"}";
    assert_eq!(line(&m, hits), format!("{hits} 7"));
    drop(a);
    b.hot_hits.fetch_add(1, Ordering::Relaxed);
    assert_eq!(line(&m, hits), format!("{hits} 8"));
    let c = Arc::new(StateStats::default());
    m.attach_state(c.clone());
    c.hot_hits.fetch_add(2, Ordering::Relaxed);
    assert_eq!(line(&m, hits), format!("{hits} 10"));
    assert_eq!(
        m.state.lock().expect("state").live.len(),
        2,
        "a is not kept"
    );
    // A shadow promoted to live counted every event beside the live store: only what it
    // counts from then on is summed, before and after its store ends.
    let shadow = Arc::new(StateStats::default());
    shadow.hot_hits.fetch_add(100, Ordering::Relaxed);
    m.attach_state_from_now(shadow.clone());
    assert_eq!(line(&m, hits), format!("{hits} 10"));
    shadow.hot_hits.fetch_add(5, Ordering::Relaxed);
    assert_eq!(line(&m, hits), format!("{hits} 15"));
    drop(shadow);
    assert_eq!(line(&m, hits), format!("{hits} 15"));

    let (x, y) = (Arc::new(Answers::default()), Arc::new(Answers::default()));
    m.attach_lookups(x.clone());
    m.attach_lookups(y.clone());
    x.add("hit", 5);
    y.add("hit", 6);
    y.add("miss", 1);
    let lookup_hits = "eddy_lookups_total{pipeline=\"p\",store=\"users\",result=\"hit\"}";
    assert_eq!(line(&m, lookup_hits), format!("{lookup_hits} 11"));
    drop(y);
    x.add("hit", 1);
    assert_eq!(line(&m, lookup_hits), format!("{lookup_hits} 12"));
    let misses = "eddy_lookups_total{pipeline=\"p\",store=\"users\",result=\"miss\"}";
    assert_eq!(line(&m, misses), format!("{misses} 1"));
}

/// A plugin that writes one subject per key must not make a series per key.
#[test]
fn shadow_comparisons_of_more_subjects_than_the_bound_are_counted_together() {
    let m = Metrics::new("p");
    for i in 0..SHADOW_SERIES + 500 {
        m.shadow_compared(&format!("alerts.{i}"), "same");
    }
    m.shadow_compared("alerts.0", "different");
    m.shadow_compared("alerts.0", "same");
    let text = m.render();
    let series = text
        .lines()
        .filter(|l| l.starts_with("eddy_shadow_messages_total{"))
        .count();
    assert_eq!(
        series,
        SHADOW_SERIES + 2,
        "the bound, (other), one more verdict"
    );
    let other = "eddy_shadow_messages_total{pipeline=\"p\",subject=\"(other)\",verdict=\"same\"}";
    assert_eq!(line(&m, other), format!("{other} 500"));
    let first = "eddy_shadow_messages_total{pipeline=\"p\",subject=\"alerts.0\",verdict=\"same\"}";
    assert_eq!(
        line(&m, first),
        format!("{first} 2"),
        "a subject seen keeps its series"
    );
}
