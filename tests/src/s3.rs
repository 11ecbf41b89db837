//! A real S3-compatible server (moto, from PyPI) for the checkpoint-store tests, on a free
//! loopback port, in memory.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};

use anyhow::Context;

use crate::{free_port, stop_child, wait_listening};

/// An S3-compatible server with one bucket.
pub struct S3Server {
    port: u16,
    child: Option<Child>,
    /// The bucket made at start.
    pub bucket: String,
}

impl S3Server {
    /// Starts `moto_server` and creates bucket `eddy`.
    pub fn start() -> anyhow::Result<S3Server> {
        let port = free_port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context(
                "cannot start moto_server (pip install 'moto[server]'; scripts/test.sh does)",
            )?;
        let server = S3Server {
            port,
            child: Some(child),
            bucket: "eddy".into(),
        };
        wait_listening(port, "moto_server")?;
        // Path-style `PUT /<bucket>` creates it; moto does not check signatures.
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", port))?;
        write!(
            conn,
            "PUT /{} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            server.bucket
        )?;
        let mut answer = String::new();
        conn.read_to_string(&mut answer)?;
        anyhow::ensure!(
            answer.starts_with("HTTP/1.1 200"),
            "moto did not create the bucket: {answer}"
        );
        Ok(server)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The `[checkpoint.s3]` table that names this server (with credentials moto accepts).
    pub fn table(&self) -> String {
        self.table_via(self.port)
    }

    /// The `[checkpoint.s3]` table that reaches this server through loopback port `port` (a
    /// [`crate::Relay`] in front of it).
    pub fn table_via(&self, port: u16) -> String {
        format!(
            "[checkpoint.s3]\nbucket = \"{}\"\nendpoint = \"http://127.0.0.1:{port}\"\nregion = \"us-east-1\"\naccess_key_id = \"testing\"\nsecret_access_key = \"testing\"\n",
            self.bucket
        )
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}
