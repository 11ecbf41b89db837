//! `eddy run` and `eddy check`.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::config::{KeySource, PipelineConfig};
use crate::metrics::{self, Metrics};
use crate::pipeline::keys::KeyExtractor;
use crate::pipeline::{self, RunOptions};

/// `eddy run`: runs the pipeline until SIGINT/SIGTERM, then prints what it did.
pub async fn run(pipeline: &Path, from_savepoint: Option<PathBuf>) -> anyhow::Result<()> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    pipeline::stop_on_signals(tx)?;
    let cfg = PipelineConfig::load(pipeline)?;
    let metrics = Metrics::new(&cfg.pipeline.name);
    let _server = match &cfg.metrics.listen {
        Some(listen) => Some(metrics::serve(listen, metrics.clone()).await?),
        None => None,
    };
    let opts = RunOptions {
        from_savepoint,
        ..RunOptions::default()
    };
    let summary = if cfg.cluster.is_some() {
        crate::cluster::run(cfg, opts, rx, metrics).await?
    } else {
        pipeline::run(cfg, opts, rx, metrics).await?
    };
    // A log line like the others (one JSON object with `--log-format json`).
    tracing::info!(
        events_in = summary.events_in,
        outputs = summary.outputs,
        dropped = summary.dropped,
        dead_lettered = summary.dead_lettered,
        checkpoints = summary.checkpoints,
        "stopped"
    );
    Ok(())
}

/// `eddy check`: validates the file and initialises the plugin, without NATS; with a sample
/// file (JSON Lines of event payloads), also finds each line's key as `eddy run` would.
pub async fn check(pipeline: &Path, sample: Option<&Path>) -> anyhow::Result<()> {
    let cfg = PipelineConfig::load(pipeline)?;
    let samples = match sample {
        Some(path) => Some((
            path,
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?,
        )),
        None => None,
    };
    let key = cfg.input.key.clone();
    let subject = cfg.input.subjects.first().cloned().unwrap_or_default();
    let metrics = Metrics::new(&cfg.pipeline.name);
    let worker = tokio::task::spawn_blocking(move || {
        pipeline::build_worker(&cfg, &RunOptions::default(), metrics)
    })
    .await??;
    println!(
        "ok: plugin {} (version {}) initialised; state opened",
        worker.plugin().name(),
        worker.plugin().version()
    );
    if let Some((path, text)) = samples {
        println!("{}", check_keys(&key, &subject, path, &text)?);
    }
    Ok(())
}

/// Finds the key of every line of `text` (event payloads on `subject`) as `input.key`
/// says: `Ok(summary)` when each has one, else an error naming the lines without one.
fn check_keys(key: &KeySource, subject: &str, path: &Path, text: &str) -> anyhow::Result<String> {
    let extractor = KeyExtractor::new(key);
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| (i + 1, l))
        .collect();
    let missing: Vec<String> = lines
        .iter()
        .filter_map(|(n, l)| {
            extractor
                .extract(subject, None, l.as_bytes())
                .err()
                .map(|why| format!("  line {n}: {why}"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(format!(
            "ok: every one of the {} events in {} has a key (input.key = {})",
            lines.len(),
            path.display(),
            describe(key)
        ));
    }
    anyhow::bail!(
        "{} of the {} events in {} have no key, and `eddy run` would dead-letter them (kind `key`):\n{}\nfix `input.key` in the pipeline file, or the events",
        missing.len(),
        lines.len(),
        path.display(),
        super::first_lines(&missing, 5)
    )
}

/// `input.key` as it is written in the pipeline file.
fn describe(key: &KeySource) -> String {
    match key {
        KeySource::Json(pointer) => format!("{{ json = \"{pointer}\" }}"),
        KeySource::Header(name) => format!("{{ header = \"{name}\" }}"),
        KeySource::SubjectToken(i) => format!("{{ subject_token = {i} }}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_without_a_key_are_named_with_their_line() {
        let text = "{\"customer\":\"c-1\"}\n\n{\"custmer\":\"c-2\"}\nnot json\n";
        let path = Path::new("events.jsonl");
        let e = check_keys(&KeySource::Json("/customer".into()), "txn.in", path, text)
            .expect_err("two lines have no key")
            .to_string();
        assert!(
            e.starts_with("2 of the 3 events in events.jsonl have no key"),
            "{e}"
        );
        assert!(
            e.contains("  line 3: no key: the payload has no `/customer`"),
            "{e}"
        );
        assert!(
            e.contains("  line 4: no key: the payload is not JSON"),
            "{e}"
        );
        assert!(e.contains("fix `input.key`"), "{e}");
        let ok = check_keys(
            &KeySource::Json("/customer".into()),
            "txn.in",
            path,
            "{\"customer\":\"c-1\"}\n",
        )
        .expect("every line has a key");
        assert_eq!(
            ok,
            "ok: every one of the 1 events in events.jsonl has a key (input.key = { json = \"/customer\" })"
        );
    }
}
