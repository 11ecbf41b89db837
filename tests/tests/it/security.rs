//! NATS with its security on, as production servers run it: TLS with the server verified
//! against the operator's certificate authority and a client certificate the server checks,
//! users known by nkey, and operator mode (decentralised JWT auth, as `nsc` sets it up and
//! Synadia Cloud runs it) with a `.creds` file. Certificates, keys and JWTs are made by the
//! test (`rcgen`, `nkeys`); the servers are real nats-server processes configured for each.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use eddy_host::cli::produce;
use eddy_host::config::NatsConfig;
use eddy_host::transport;
use eddy_tests::hosts::HostProcess;
use eddy_tests::{NatsServer, PipelineSpec, create_streams, plugin, publish_txs, wait_for_len};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// A certificate authority: its certificate (PEM file) and what signs with it.
struct Authority {
    pem: PathBuf,
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn authority(dir: &Path, name: &str) -> Authority {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, format!("{name} test authority"));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).expect("self-signed");
    let pem = dir.join(format!("{name}-ca.pem"));
    std::fs::write(&pem, cert.pem()).expect("write");
    Authority { pem, cert, key }
}

/// A certificate for `names` signed by `ca`, for `usage`: (certificate file, key file).
fn issue(
    dir: &Path,
    ca: &Authority,
    file: &str,
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> (PathBuf, PathBuf) {
    let key = KeyPair::generate().expect("key");
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("params");
    params.distinguished_name.push(DnType::CommonName, file);
    params.extended_key_usages = vec![usage];
    let cert = params.signed_by(&key, &ca.cert, &ca.key).expect("signed");
    let (c, k) = (
        dir.join(format!("{file}.pem")),
        dir.join(format!("{file}-key.pem")),
    );
    std::fs::write(&c, cert.pem()).expect("write");
    std::fs::write(&k, key.serialize_pem()).expect("write");
    (c, k)
}

fn nats_config(url: &str) -> NatsConfig {
    NatsConfig {
        url: url.to_string(),
        connect_timeout_ms: 3_000,
        ..Default::default()
    }
}

/// Connects with `cfg`, which the server must refuse, and returns the refusal: said at once
/// (within 5 s), and not as "unreachable", which a host would wait out.
async fn refused_at_once(cfg: &NatsConfig, what: &str) -> String {
    let started = Instant::now();
    let e = transport::connect(cfg, "eddy-tests")
        .await
        .err()
        .expect(what);
    let msg = format!("{e:#}");
    assert!(
        e.downcast_ref::<transport::Unreachable>().is_none(),
        "not worth waiting for: {msg}"
    );
    assert!(started.elapsed() < Duration::from_secs(5), "{msg}");
    msg
}

/// Writes `spec` to `path` with TLS in its `[nats]` section: the authority `ca` and the
/// client certificate and key `client`.
fn write_tls_pipeline(
    path: &Path,
    spec: &PipelineSpec,
    url: &str,
    ca: &Path,
    client: (&Path, &Path),
) {
    let toml = spec.toml();
    let at = format!("url = \"{url}\"");
    assert!(toml.contains(&at), "the spec writes {at}");
    let tls = format!(
        "{at}\ntls_ca = \"{}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"",
        ca.display(),
        client.0.display(),
        client.1.display()
    );
    std::fs::write(path, toml.replace(&at, &tls)).expect("config");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_runs_over_tls_with_a_client_certificate_and_a_stranger_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = authority(dir.path(), "eddy");
    let (server_cert, server_key) = issue(
        dir.path(),
        &ca,
        "server",
        &["127.0.0.1", "localhost"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client_cert, client_key) = issue(
        dir.path(),
        &ca,
        "client",
        &["eddy-host"],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let nats = NatsServer::start_with_conf(Some(&format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n  timeout: 2\n}}\n",
        server_cert.display(),
        server_key.display(),
        ca.pem.display()
    )))
    .expect("nats-server with TLS");
    let url = nats.url();
    let trusted = NatsConfig {
        tls_ca: Some(ca.pem.clone()),
        tls_cert: Some(client_cert.clone()),
        tls_key: Some(client_key.clone()),
        ..nats_config(&url)
    };
    let conn = transport::connect(&trusted, "eddy-tests")
        .await
        .expect("a client with the authority and a certificate it signed connects");

    // A whole pipeline, the `eddy` binary as operators run it, over TLS.
    let spec = PipelineSpec::new("fraud", &url, dir.path(), plugin("fraud-enrich"));
    create_streams(&conn.js, &spec).await.expect("streams");
    let config = dir.path().join("pipeline.toml");
    write_tls_pipeline(&config, &spec, &url, &ca.pem, (&client_cert, &client_key));
    let mut host = HostProcess::spawn("tls", &config, &dir.path().join("tls.log"));
    let txs = produce::transactions(2_000, 50, 31, 0);
    publish_txs(&conn.js, &spec.input_subject, &txs).await;
    let got = wait_for_len(&conn.js, "OUT", 2_000, Duration::from_secs(60)).await;
    assert_eq!(
        got,
        2_000,
        "{}",
        std::fs::read_to_string(dir.path().join("tls.log")).unwrap_or_default()
    );
    let outs = eddy_tests::read_stored(&conn.js, &spec.output)
        .await
        .expect("outputs");
    let mut want = eddy_tests::fraud_reference(&txs, 70);
    let mut have: Vec<serde_json::Value> = outs
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).expect("json"))
        .collect();
    let id = |v: &serde_json::Value| v["id"].as_str().unwrap_or_default().to_string();
    want.sort_by_key(id);
    have.sort_by_key(id);
    assert_eq!(have, want, "outputs over TLS equal the reference");
    let _ = host.stop();
    // The I/O commands connect as the pipeline file says (TLS, client certificate).
    let out = std::process::Command::new(eddy_tests::eddy_bin())
        .args(["tail", &spec.output, "--count", "3", "--pipeline"])
        .arg(&config)
        .output()
        .expect("eddy tail");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 3);

    // A server certificate from another authority is refused at once, with the fix.
    let stranger = authority(dir.path(), "stranger");
    let msg = refused_at_once(
        &NatsConfig {
            tls_ca: Some(stranger.pem.clone()),
            ..trusted.clone()
        },
        "a server the configured authority did not sign is refused",
    )
    .await;
    assert!(msg.contains("TLS") && msg.contains("nats.tls_ca"), "{msg}");

    // Without a client certificate the server refuses the client.
    assert!(
        transport::connect(
            &NatsConfig {
                tls_ca: Some(ca.pem.clone()),
                ..nats_config(&url)
            },
            "eddy-tests",
        )
        .await
        .is_err(),
        "no client certificate, no connection"
    );

    // `eddy run` with the wrong authority stops with the reason instead of waiting forever.
    write_tls_pipeline(
        &config,
        &spec,
        &url,
        &stranger.pem,
        (&client_cert, &client_key),
    );
    let log = dir.path().join("stranger.log");
    let mut refused = HostProcess::spawn("stranger", &config, &log);
    let status = refused.wait_exit_within(Duration::from_secs(30));
    assert!(!status.success());
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(text.contains("nats.tls_ca"), "{text}");
}

/// Connects to `url` as the user whose seed is in `seed_file`.
async fn connect_as(url: &str, seed_file: &Path) -> anyhow::Result<transport::Nats> {
    transport::connect(
        &NatsConfig {
            nkey_file: Some(seed_file.to_path_buf()),
            ..nats_config(url)
        },
        "eddy-tests",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_known_by_nkey_connects_and_a_wrong_seed_is_refused_with_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let user = nkeys::KeyPair::new_user();
    let nats = NatsServer::start_with_conf(Some(&format!(
        "authorization {{\n  users = [ {{ nkey: \"{}\" }} ]\n}}\n",
        user.public_key()
    )))
    .expect("nats-server with nkey users");
    let url = nats.url();
    let seed_file = dir.path().join("user.nk");
    std::fs::write(&seed_file, format!("{}\n", user.seed().expect("seed"))).expect("seed");
    let conn = connect_as(&url, &seed_file)
        .await
        .expect("the listed user connects");
    // JetStream works for it: a stream, a message stored.
    eddy_tests::create_stream(&conn.js, "NK", &["nk.>"])
        .await
        .expect("stream");
    conn.js
        .publish("nk.one", "hi".into())
        .await
        .expect("publish")
        .await
        .expect("stored");

    // Someone else's seed: refused, said at once, naming the field.
    let other = dir.path().join("other.nk");
    std::fs::write(&other, nkeys::KeyPair::new_user().seed().expect("seed")).expect("seed");
    let msg = refused_at_once(
        &NatsConfig {
            nkey_file: Some(other),
            ..nats_config(&url)
        },
        "an unknown user is refused",
    )
    .await;
    assert!(msg.contains("nats.nkey_file"), "{msg}");

    // A file that holds no seed: named, with how to make one.
    let junk = dir.path().join("junk.nk");
    std::fs::write(&junk, "not a seed").expect("junk");
    let e = connect_as(&url, &junk).await.err().expect("junk refused");
    assert!(format!("{e:#}").contains("user nkey seed"), "{e:#}");
}

/// A NATS JWT (v2): `claims` about `subject`, signed by `issuer`, as `nsc` writes them.
fn jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let iat = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let claims = serde_json::json!({
        "jti": format!("{name}-{subject}"),
        "iat": iat,
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let signed = format!(
        "{}.{}",
        b64.encode(r#"{"typ":"JWT","alg":"ed25519-nkey"}"#),
        b64.encode(claims.to_string())
    );
    let signature = issuer.sign(signed.as_bytes()).expect("sign");
    format!("{signed}.{}", b64.encode(signature))
}

/// An account's claims: nothing limited, JetStream on if `jetstream` (never for the system
/// account, which the server refuses).
fn account_claims(jetstream: bool) -> serde_json::Value {
    let js = if jetstream { -1 } else { 0 };
    serde_json::json!({
        "limits": {
            "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
            "wildcards": true, "conn": -1, "leaf": -1,
            "mem_storage": js, "disk_storage": js, "streams": js, "consumer": js,
        },
        "default_permissions": { "pub": {}, "sub": {} },
        "type": "account",
        "version": 2,
    })
}

/// A `.creds` file for a new user of `account`: its JWT and its seed.
fn creds_file(path: &Path, account: &nkeys::KeyPair, name: &str) {
    let user = nkeys::KeyPair::new_user();
    let claims = serde_json::json!({
        "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
        "type": "user", "version": 2,
    });
    let token = jwt(account, &user.public_key(), name, claims);
    std::fs::write(
        path,
        format!(
            "-----BEGIN NATS USER JWT-----\n{token}\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            user.seed().expect("seed")
        ),
    )
    .expect("creds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_runs_with_a_creds_file_on_an_operator_mode_server_and_a_stranger_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The chain of trust: an operator signs the accounts, an account signs its users. The
    // server trusts the operator and knows the accounts (a memory resolver).
    let operator = nkeys::KeyPair::new_operator();
    let (system, account) = (nkeys::KeyPair::new_account(), nkeys::KeyPair::new_account());
    let operator_jwt = jwt(
        &operator,
        &operator.public_key(),
        "eddy-operator",
        serde_json::json!({ "type": "operator", "version": 2 }),
    );
    let system_jwt = jwt(
        &operator,
        &system.public_key(),
        "SYS",
        account_claims(false),
    );
    let account_jwt = jwt(
        &operator,
        &account.public_key(),
        "APP",
        account_claims(true),
    );
    let nats = NatsServer::start_with_conf(Some(&format!(
        "operator: {operator_jwt}\nsystem_account: {}\nresolver: MEMORY\nresolver_preload: {{\n  {}: {system_jwt}\n  {}: {account_jwt}\n}}\n",
        system.public_key(),
        system.public_key(),
        account.public_key()
    )))
    .expect("nats-server in operator mode");
    let url = nats.url();
    let creds = dir.path().join("eddy.creds");
    creds_file(&creds, &account, "eddy");
    let conn = transport::connect(
        &NatsConfig {
            creds: Some(creds.clone()),
            ..nats_config(&url)
        },
        "eddy-tests",
    )
    .await
    .expect("a user the account signed connects with its creds file");

    // A whole pipeline, the `eddy` binary, as a user of the account.
    let spec = PipelineSpec::new("fraud", &url, dir.path(), plugin("fraud-enrich"));
    create_streams(&conn.js, &spec).await.expect("streams");
    let config = dir.path().join("pipeline.toml");
    let toml = spec.toml();
    let at = format!("url = \"{url}\"");
    assert!(toml.contains(&at), "the spec writes {at}");
    std::fs::write(
        &config,
        toml.replace(&at, &format!("{at}\ncreds = \"{}\"", creds.display())),
    )
    .expect("config");
    let log = dir.path().join("creds.log");
    let mut host = HostProcess::spawn("creds", &config, &log);
    let txs = produce::transactions(1_000, 40, 7, 0);
    publish_txs(&conn.js, &spec.input_subject, &txs).await;
    let got = wait_for_len(&conn.js, "OUT", 1_000, Duration::from_secs(60)).await;
    assert_eq!(
        got,
        1_000,
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let _ = host.stop();

    // A user signed by an account the server does not know: refused at once, naming the field.
    let stranger = dir.path().join("stranger.creds");
    creds_file(&stranger, &nkeys::KeyPair::new_account(), "stranger");
    let msg = refused_at_once(
        &NatsConfig {
            creds: Some(stranger),
            ..nats_config(&url)
        },
        "a user of an unknown account is refused",
    )
    .await;
    assert!(msg.contains("nats.creds"), "{msg}");

    // A creds file that is not one: named, before anything is sent.
    let junk = dir.path().join("junk.creds");
    std::fs::write(&junk, "not creds").expect("junk");
    let e = transport::connect(
        &NatsConfig {
            creds: Some(junk),
            ..nats_config(&url)
        },
        "eddy-tests",
    )
    .await
    .err()
    .expect("junk refused");
    assert!(format!("{e:#}").contains("nats.creds"), "{e:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_and_the_console_are_served_over_https_with_the_configured_certificate() {
    let eddy_tests::Fixture {
        nats: _nats,
        dir,
        mut spec,
        conn,
    } = eddy_tests::Fixture::start("fraud", "fraud-enrich").await;
    let ca = authority(dir.path(), "web");
    let (cert, key) = issue(
        dir.path(),
        &ca,
        "web",
        &["localhost", "127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (query_port, console_port) = (eddy_tests::free_port(), eddy_tests::free_port());
    spec.extra.push_str(&format!(
        "\n[query]\nhttp = \"127.0.0.1:{query_port}\"\ntoken = \"q-secret\"\ntls_cert = \"{c}\"\ntls_key = \"{k}\"\n\n[console]\nlisten = \"127.0.0.1:{console_port}\"\ntoken = \"look\"\noperator_token = \"act\"\ntls_cert = \"{c}\"\ntls_key = \"{k}\"\n",
        c = cert.display(),
        k = key.display()
    ));
    let config = dir.path().join("pipeline.toml");
    spec.write(&config).expect("config");
    let txs = produce::transactions(200, 5, 41, 0);
    publish_txs(&conn.js, "txn.in", &txs).await;
    let mut host = HostProcess::spawn("a", &config, &dir.path().join("host.log"));
    wait_for_len(&conn.js, "OUT", 200, Duration::from_secs(60)).await;
    let mut console = std::process::Command::new(eddy_tests::eddy_bin())
        .args(["console", config.to_str().expect("path")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("eddy console");

    let trusted = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&ca.pem).expect("ca")).expect("pem"),
        )
        .build()
        .expect("client");
    let customer = &txs[0].customer;
    let query = format!("https://127.0.0.1:{query_port}/v1/state/stats/{customer}");
    let answer = until_json(&trusted, &query, "q-secret").await;
    assert_eq!(answer["found"], true, "{answer}");
    // The console over HTTPS, with its roles.
    let whoami = format!("https://127.0.0.1:{console_port}/api/whoami");
    let me = until_json(&trusted, &whoami, "act").await;
    assert_eq!(me["role"], "operator", "{me}");

    // A client that does not trust the certificate is refused by its own TLS check, and plain
    // HTTP gets no answer from either endpoint.
    let stranger = reqwest::Client::new();
    let e = stranger
        .get(&query)
        .send()
        .await
        .expect_err("an untrusted certificate");
    assert!(e.is_connect(), "{e:?}");
    for port in [query_port, console_port] {
        let plain = stranger
            .get(format!("http://127.0.0.1:{port}/"))
            .timeout(Duration::from_secs(8))
            .send()
            .await;
        assert!(
            plain.is_err() || plain.as_ref().is_ok_and(|r| r.status() != 200),
            "plain HTTP on {port}: {plain:?}"
        );
    }
    let _ = console.kill();
    let _ = console.wait();
    host.stop();
}

/// The first 200 answer of `url` (asked every 100 ms for up to 20 s), as JSON.
async fn until_json(client: &reqwest::Client, url: &str, token: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let last = match client.get(url).bearer_auth(token).send().await {
            Ok(r) if r.status() == 200 => {
                return serde_json::from_str(&r.text().await.expect("body")).expect("json");
            }
            Ok(r) => format!("{}: {}", r.status(), r.text().await.unwrap_or_default()),
            Err(e) => format!("{e:?}"),
        };
        assert!(Instant::now() < deadline, "{url}: {last}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
