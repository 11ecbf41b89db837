//! Serving HTTP: the accept loop the query endpoint and the console share, under limits no
//! client can exhaust, over TLS when the section names a certificate.
//!
//! No client can take the host down: at most [`MAX_CONNECTIONS`] connections are served at
//! once (more are answered 503 and closed), a client has [`HEADER_TIMEOUT`] to finish its TLS
//! handshake and again to send its request headers, and request headers are limited to
//! [`MAX_REQUEST_BYTES`]; the file descriptors state and checkpoints need are never spent on
//! clients.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

/// Connections served at once, per endpoint.
pub const MAX_CONNECTIONS: usize = 256;
/// How long a client has to finish its TLS handshake, and to send a request's headers (also
/// how long an idle connection stays).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest request line plus headers.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;

/// TLS for an endpoint from a PEM certificate chain and its PEM private key; `field` names
/// the config section for the messages (`query`, `console`).
pub fn tls(cert: &Path, key: &Path, field: &str) -> anyhow::Result<TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect())
        .map_err(|e| {
            anyhow::anyhow!(
                "{field}.tls_cert: cannot read a PEM certificate from {} ({e})",
                cert.display()
            )
        })?;
    if chain.is_empty() {
        anyhow::bail!(
            "{field}.tls_cert: {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            cert.display()
        );
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        anyhow::anyhow!(
            "{field}.tls_key: cannot read a PEM private key from {} ({e})",
            key.display()
        )
    })?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS protocol versions")?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(|e| {
        anyhow::anyhow!("{field}.tls_cert and tls_key do not make a certificate and its key: {e}")
    })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Accepts connections on `listener` until the task is dropped, each served by `app` under
/// the limits above; `what` names the endpoint in log lines.
pub async fn accept(
    listener: tokio::net::TcpListener,
    app: Router,
    tls: Option<TlsAcceptor>,
    what: &'static str,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut warned = None::<std::time::Instant>;
    loop {
        let sock = match listener.accept().await {
            Ok((sock, _)) => sock,
            Err(e) => {
                // Out of file descriptors, most likely: wait rather than spin on the error.
                if warned.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
                    tracing::warn!("{what}: cannot accept a connection: {e}");
                    warned = Some(std::time::Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tokio::spawn(refuse(sock, what));
            continue;
        };
        let app = app.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                None => serve(sock, app).await,
                Some(tls) => {
                    if let Ok(Ok(stream)) =
                        tokio::time::timeout(HEADER_TIMEOUT, tls.accept(sock)).await
                    {
                        serve(stream, app).await;
                    }
                }
            }
        });
    }
}

async fn serve<S>(io: S, app: Router)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_REQUEST_BYTES)
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(app));
    let _ = conn.await;
}

/// Answers a connection over the limit with 503 and closes it (in plain HTTP: a TLS client
/// sees a failed handshake, which it retries the same way).
async fn refuse(mut sock: tokio::net::TcpStream, what: &str) {
    let body = format!(
        r#"{{"error":"the {what} serves {MAX_CONNECTIONS} connections at once; try again","code":503}}"#
    );
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\nretry-after: 1\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), sock.write_all(answer.as_bytes())).await;
}
