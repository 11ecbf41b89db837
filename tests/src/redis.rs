//! A real Redis server for lookup tests, on a free loopback port, in memory.

use std::process::{Child, Command, Stdio};

use anyhow::Context;

use crate::*;

/// A Redis server on loopback, in memory (no persistence), in a temporary directory.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts one; fails with a clear message if `redis-server` is not installed.
    pub fn start() -> anyhow::Result<RedisServer> {
        let mut r = RedisServer {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir()?,
        };
        r.spawn()?;
        Ok(r)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start redis-server: install it (apt-get install redis-server; scripts/test.sh does)")?;
        self.child = Some(child);
        wait_listening(self.port, "redis-server")
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Runs a Redis command (through `redis-cli`), e.g. `["SET", "k", "v"]`.
    pub fn cmd(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .context("redis-cli")?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Loads many commands at once (`redis-cli --pipe` with inline commands).
    pub fn pipe(&self, commands: &[Vec<String>]) -> anyhow::Result<()> {
        use std::io::Write;
        let mut child = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "--pipe"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .context("redis-cli --pipe")?;
        let mut stdin = child.stdin.take().context("stdin")?;
        for c in commands {
            let mut line = format!("*{}\r\n", c.len());
            for a in c {
                line.push_str(&format!("${}\r\n{a}\r\n", a.len()));
            }
            stdin.write_all(line.as_bytes())?;
        }
        drop(stdin);
        child.wait()?;
        Ok(())
    }

    /// Stops the server (an outage).
    pub fn stop(&mut self) {
        stop_child(&mut self.child);
    }

    /// Starts it again on the same port (empty: no persistence).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
