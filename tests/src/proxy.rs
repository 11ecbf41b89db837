//! A TCP relay in front of a real server that a test can cut and restore, as a network
//! partition cuts a host off a store while the store keeps its data: [`Relay`].

use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// Relays connections from its own loopback port to `127.0.0.1:<target>`, until cut.
pub struct Relay {
    port: u16,
    cut: Arc<std::sync::atomic::AtomicBool>,
    open: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
}

impl Relay {
    /// Starts relaying to `target` on a free port; runs on the caller's tokio runtime.
    pub async fn start(target: u16) -> anyhow::Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let open: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let (c, o) = (cut.clone(), open.clone());
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if c.load(std::sync::atomic::Ordering::SeqCst) {
                    // Cut: the connection is closed at once, as a reset would.
                    drop(client);
                    continue;
                }
                let task = tokio::spawn(relay(client, target));
                let mut open = o.lock().unwrap_or_else(|p| p.into_inner());
                open.retain(|t| !t.is_finished());
                open.push(task.abort_handle());
            }
        })
        .abort_handle();
        Ok(Relay {
            port,
            cut,
            open,
            accept,
        })
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Closes every relayed connection and refuses new ones until [`Relay::restore`].
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for t in self
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            t.abort();
        }
    }

    /// Relays new connections again.
    pub fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

async fn relay(mut client: TcpStream, target: u16) {
    if let Ok(mut server) = TcpStream::connect(("127.0.0.1", target)).await {
        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
    }
}
