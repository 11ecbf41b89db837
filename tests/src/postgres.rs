//! A real PostgreSQL server for lookup tests, with a fresh cluster in a temporary directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::*;

/// A PostgreSQL server on loopback with a fresh cluster in a temporary directory. As root
/// (PostgreSQL refuses to run as root) it runs as the `postgres` user.
pub struct PostgresServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

fn pg_bin(name: &str) -> PathBuf {
    if let Ok(read) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<PathBuf> = read.flatten().map(|e| e.path()).collect();
        versions.sort();
        if let Some(v) = versions.last() {
            return v.join("bin").join(name);
        }
    }
    PathBuf::from(name)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A command, run as `postgres` when we are root.
fn as_pg(bin: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

impl PostgresServer {
    /// Initialises a cluster and starts it.
    pub fn start() -> anyhow::Result<PostgresServer> {
        let dir = tempfile::tempdir()?;
        if is_root() {
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()?;
        }
        let data = dir.path().join("data");
        let out = as_pg(&pg_bin("initdb"))
            .args(["-D"])
            .arg(&data)
            .args(["-U", "eddy", "--auth=trust", "--no-sync"])
            .output()
            .context("cannot run initdb: install PostgreSQL (apt-get install postgresql; scripts/test.sh does)")?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let port = free_port();
        let child = as_pg(&pg_bin("postgres"))
            .args(["-D"])
            .arg(&data)
            .args(["-p", &port.to_string(), "-h", "127.0.0.1", "-k"])
            .arg(dir.path())
            .args(["-c", "fsync=off", "-c", "max_connections=200"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start postgres")?;
        let pg = PostgresServer {
            child: Some(child),
            port,
            dir,
        };
        wait_listening(port, "postgres")?;
        // Listening is not ready: wait until a query works.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if pg.sql("SELECT 1").is_ok() {
                return Ok(pg);
            }
            if Instant::now() > deadline {
                bail!("postgres does not answer queries");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The port it listens on (loopback).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://eddy@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://eddy@127.0.0.1:{}/postgres", self.port)
    }

    /// Runs SQL through `psql`; errors with its message if it fails.
    pub fn sql(&self, sql: &str) -> anyhow::Result<String> {
        let out = Command::new(pg_bin("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "eddy",
            ])
            .args(["-d", "postgres", "-v", "ON_ERROR_STOP=1", "-tA", "-c", sql])
            .output()
            .context("psql")?;
        if !out.status.success() {
            bail!("psql: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        stop_child(&mut self.child);
        let _ = &self.dir;
    }
}
