//! A TCP relay in front of a real server that a test can cut and restore, as a network
//! partition cuts a host off a store while the store keeps its data, and that can add a fixed
//! latency each way, as a store in another zone has: [`Relay`].

use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// Relays connections from its own loopback port to `127.0.0.1:<target>`, until cut.
pub struct Relay {
    port: u16,
    cut: Arc<std::sync::atomic::AtomicBool>,
    open: Arc<Mutex<Vec<AbortHandle>>>,
    /// The sockets of delayed connections, which threads serve: a cut shuts them down.
    sockets: Sockets,
    accept: AbortHandle,
}

type Sockets = Arc<Mutex<Vec<std::net::TcpStream>>>;

impl Relay {
    /// Starts relaying to `target` on a free port; runs on the caller's tokio runtime.
    pub async fn start(target: u16) -> anyhow::Result<Relay> {
        Relay::start_with_latency(target, std::time::Duration::ZERO).await
    }

    /// [`Relay::start`], delivering every byte `latency` after it arrived, in each direction
    /// (a round trip costs twice that); bytes in flight do not wait for each other, so the
    /// link is as fast as loopback, only later.
    pub async fn start_with_latency(
        target: u16,
        latency: std::time::Duration,
    ) -> anyhow::Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let open: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let sockets: Sockets = Arc::default();
        let (c, o, so) = (cut.clone(), open.clone(), sockets.clone());
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if c.load(std::sync::atomic::Ordering::SeqCst) {
                    // Cut: the connection is closed at once, as a reset would.
                    drop(client);
                    continue;
                }
                let task = tokio::spawn(relay(client, target, latency, so.clone()));
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
            sockets,
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
        for s in self
            .sockets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = s.shutdown(std::net::Shutdown::Both);
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

async fn relay(mut client: TcpStream, target: u16, latency: std::time::Duration, sockets: Sockets) {
    let Ok(mut server) = TcpStream::connect(("127.0.0.1", target)).await else {
        return;
    };
    if latency.is_zero() {
        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
        return;
    }
    // Delayed bytes are delivered by threads of their own: tokio's timer has millisecond
    // ticks (a 0.5 ms delay became 1 to 2 ms each way), a thread's sleep is precise to tens
    // of microseconds.
    let (Ok(client), Ok(server)) = (client.into_std(), server.into_std()) else {
        return;
    };
    let blocking = [&client, &server].map(|s| {
        let _ = s.set_nodelay(true);
        s.set_nonblocking(false)
    });
    if blocking.iter().any(Result::is_err) {
        return;
    }
    let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    if let (Ok(c), Ok(s)) = (client.try_clone(), server.try_clone()) {
        sockets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend([c, s]);
    }
    // The threads end with their connection; a cut shuts the sockets down (through
    // `sockets`), which ends them.
    std::thread::spawn(move || delayed(client, server2, latency));
    std::thread::spawn(move || delayed(server, client2, latency));
}

/// Copies `from` to `to` on two threads, each chunk written `latency` after it was read.
fn delayed(
    mut from: std::net::TcpStream,
    mut to: std::net::TcpStream,
    latency: std::time::Duration,
) {
    use std::io::{Read, Write};
    let (tx, rx) = std::sync::mpsc::channel::<(std::time::Instant, Vec<u8>)>();
    let Ok(closer) = from.try_clone() else {
        return;
    };
    let writing = std::thread::spawn(move || {
        while let Ok((due, bytes)) = rx.recv() {
            let now = std::time::Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if to.write_all(&bytes).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
        // The other side is gone: stop reading what is no longer delivered.
        let _ = closer.shutdown(std::net::Shutdown::Read);
    });
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0
            || tx
                .send((std::time::Instant::now() + latency, buf[..n].to_vec()))
                .is_err()
        {
            break;
        }
    }
    drop(tx);
    let _ = writing.join();
}
