//! Tests of the stores' counters and once-a-period warnings (against ports nothing listens
//! on), and of keys encoded for URLs.

use super::*;

/// The pipeline's one lookup store `h`: HTTP on 127.0.0.1:`port`, no cache, one attempt of
/// at most `timeout_ms`.
async fn http_store_at(port: u16, timeout_ms: u64) -> (Arc<Lookups>, Arc<Store>) {
    let toml = format!(
        "[pipeline]\nname = \"p\"\nstate_dir = \"s\"\n\n[input]\nstream = \"IN\"\nsubjects = [\"in\"]\nkey = {{ json = \"/k\" }}\n\n[plugin]\npath = \"p.wasm\"\n\n[output]\nsubject = \"out\"\n\n[dead_letter]\nsubject = \"dlq\"\n\n[lookup.h]\nkind = \"http\"\nurl_template = \"http://127.0.0.1:{port}/{{key}}\"\ncache = {{ mode = \"none\" }}\ntimeout_ms = {timeout_ms}\nretry = {{ attempts = 1, backoff_ms = 1 }}\n"
    );
    let cfg = crate::config::PipelineConfig::parse(&toml).expect("config");
    let lookups = Lookups::connect(&cfg, None)
        .await
        .expect("connect")
        .expect("a store");
    let store = lookups.stores["h"].clone();
    (lookups, store)
}

/// A store that refuses every connection: each request fails and is counted, and the
/// warnings are held back after the first.
#[tokio::test]
async fn a_store_that_is_down_counts_every_failure_and_warns_once_a_period() {
    // A port nothing listens on: bound, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let (_lookups, store) = http_store_at(port, 2_000).await;
    for i in 0..20 {
        let answers = store.clone().request(vec![format!("k{i}")]).await;
        assert!(answers[0].is_err(), "{:?}", answers[0]);
    }
    assert_eq!(store.stats.failures.load(Ordering::Relaxed), 20);
    let (logged, held) = *store
        .failure_warnings
        .state
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    assert!(logged.is_some(), "the first failure was logged");
    assert_eq!(held, 19, "the other 19 were held back");
}

/// Keys the plugin asks for without a plan are counted, and the warning that names the fix
/// goes out once a period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_asked_without_a_plan_are_counted_and_warned_of_once_a_period() {
    // Port 9 (discard): nothing listens on it here.
    let (lookups, store) = http_store_at(9, 500).await;
    for keys in [
        vec!["a".to_string(), "b".to_string()],
        vec!["c".to_string()],
    ] {
        let l = lookups.clone();
        let answers = tokio::task::spawn_blocking(move || l.fetch_blocking("h", &keys))
            .await
            .expect("fetched");
        assert!(
            answers.iter().all(Result::is_err),
            "nothing listens: {answers:?}"
        );
    }
    assert_eq!(store.stats.unplanned.load(Ordering::Relaxed), 3);
    let (warned, held) = *store
        .unplanned_warnings
        .state
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    assert!(warned.is_some(), "the first was logged");
    assert_eq!(held, 1, "the second was held back");
}

#[test]
fn keys_are_encoded_for_urls() {
    assert_eq!(url_encode("m-7"), "m-7");
    assert_eq!(url_encode("a b/c?d"), "a%20b%2Fc%3Fd");
    assert_eq!(url_encode("é"), "%C3%A9");
}
