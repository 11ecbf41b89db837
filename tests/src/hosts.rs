//! Eddy hosts as operators run them: `eddy run <pipeline.toml>` processes with their own log
//! file, signalled as an operator or a crash would ([`HostProcess`]), and what
//! `eddy cluster status` says about them ([`owners`], [`pointers`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::eddy_bin;

/// The hosts' log filter: `EDDY_HOST_LOG` if set (e.g. `info,eddy_host::pipeline=debug`).
fn log_filter() -> String {
    std::env::var("EDDY_HOST_LOG").unwrap_or_else(|_| "info,async_nats=warn".into())
}

/// One `eddy run` process; killed when dropped.
pub struct HostProcess {
    /// The name it was started as (the first part of its host id).
    pub name: String,
    /// Its pipeline file.
    pub config: PathBuf,
    child: Child,
}

impl HostProcess {
    /// Runs `eddy run config`, logging to `log` (`RUST_LOG=info`, or `EDDY_HOST_LOG`).
    pub fn spawn(name: &str, config: &Path, log: &Path) -> HostProcess {
        HostProcess::start(name, config, log, None, &[])
    }

    /// Runs `eddy run config <args>`, logging to `log`.
    pub fn spawn_with(name: &str, config: &Path, log: &Path, args: &[&str]) -> HostProcess {
        HostProcess::start(name, config, log, None, args)
    }

    /// Runs `eddy run config` allowed at most `open_files` file descriptors (`prlimit`), as
    /// on a machine with a tight limit.
    pub fn spawn_limited(name: &str, config: &Path, log: &Path, open_files: u64) -> HostProcess {
        HostProcess::start(name, config, log, Some(open_files), &[])
    }

    fn start(
        name: &str,
        config: &Path,
        log: &Path,
        open_files: Option<u64>,
        args: &[&str],
    ) -> HostProcess {
        let log = std::fs::File::create(log).expect("log file");
        let mut cmd = match open_files {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg(eddy_bin());
                c
            }
            None => Command::new(eddy_bin()),
        };
        let child = cmd
            .arg("run")
            .arg(config)
            .args(args)
            .env("RUST_LOG", log_filter())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the eddy binary (cargo build --bin eddy), and prlimit for a limited one");
        HostProcess {
            name: name.into(),
            config: config.to_path_buf(),
            child,
        }
    }

    /// Its resident memory now and at its peak, MiB (`/proc/<pid>/status`; NaN once gone).
    pub fn rss_mib(&self) -> (f64, f64) {
        crate::bench::rss_mib(&format!("/proc/{}/status", self.pid()))
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_none()
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `sig` (`-KILL`, `-TERM`, `-INT`, `-STOP`, `-CONT`); panics if it cannot be
    /// delivered (the process is gone).
    pub fn signal(&self, sig: &str) {
        let delivered = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(delivered, "signal {sig} delivered to {}", self.name);
    }

    /// Waits up to a minute for it to exit; panics if it does not.
    pub fn wait_exit(&mut self) -> ExitStatus {
        self.wait_exit_within(Duration::from_secs(60))
    }

    /// Waits up to `timeout` for it to exit; panics if it does not.
    pub fn wait_exit_within(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {timeout:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM (hand-off), then waits for the exit.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal("-TERM");
        self.wait_exit()
    }
}

/// Stops every host with SIGTERM at once (so their hand-offs overlap), then waits for each.
pub fn stop_all<'a>(hosts: impl IntoIterator<Item = &'a mut HostProcess>) {
    let hosts: Vec<&mut HostProcess> = hosts.into_iter().collect();
    for h in &hosts {
        h.signal("-TERM");
    }
    for h in hosts {
        h.wait_exit();
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The partition of `customer` among `partitions`, as the hosts compute it (its key group of
/// the default 128, modulo the partition count).
pub fn partition_of(customer: &str, partitions: u32) -> u32 {
    u32::from(eddy_host::state::keygroup::key_group(
        customer.as_bytes(),
        eddy_host::state::DEFAULT_KEY_GROUPS,
    )) % partitions
}

/// `eddy cluster status --json` for the cluster of `config`, read again a few times if a busy
/// cluster (an election, a server catching up) fails one read.
pub fn cluster_status(config: &Path) -> Value {
    let read = || {
        Command::new(eddy_bin())
            .args(["cluster", "status", "--json"])
            .arg(config)
            .output()
            .expect("the eddy binary")
    };
    let mut out = read();
    for _ in 0..10 {
        if out.status.success() {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
        out = read();
    }
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

/// Each owned partition's owner (the host name: the part of its id before the first `-`).
pub fn owners(config: &Path) -> BTreeMap<u32, String> {
    let v = cluster_status(config);
    let mut m = BTreeMap::new();
    for p in v["partitions"].as_array().expect("partitions") {
        if let Some(o) = p["owner"].as_str() {
            let host = o.split('-').next().unwrap_or(o).to_string();
            m.insert(p["partition"].as_u64().expect("n") as u32, host);
        }
    }
    m
}

/// Every partition's committed (epoch, checkpoint).
pub fn pointers(config: &Path) -> BTreeMap<u32, (u64, u64)> {
    let v = cluster_status(config);
    let mut m = BTreeMap::new();
    for p in v["partitions"].as_array().expect("partitions") {
        if let (Some(e), Some(c)) = (p["epoch"].as_u64(), p["checkpoint"].as_u64()) {
            m.insert(p["partition"].as_u64().expect("n") as u32, (e, c));
        }
    }
    m
}

/// All `count` partitions owned, each of `hosts` holding between `min` and `max` of them.
pub fn shared(config: &Path, count: u32, hosts: &[&str], min: usize, max: usize) -> bool {
    let o = owners(config);
    o.len() == count as usize
        && hosts.iter().all(|h| {
            let n = o.values().filter(|v| v == h).count();
            (min..=max).contains(&n)
        })
}

/// Every run's answer to `status` for `pipeline` (one per partition run in a cluster; empty
/// while none answers).
pub async fn ask_status(
    conn: &eddy_host::transport::Nats,
    pipeline: &str,
) -> Vec<eddy_host::control::HostStatus> {
    eddy_host::cli::hosts::ask(
        conn,
        pipeline,
        "status",
        serde_json::json!({}),
        std::time::Duration::from_secs(5),
    )
    .await
    .unwrap_or_default()
}
