//! A relay for the network lab: iroh-relay's own server
//! (`iroh_relay::server::Server`), started from arguments instead of its
//! binary's TOML so that it builds with the tests from this lockfile.
//!
//! `lab_relay --http IP:PORT [--https IP:PORT --quic IP:PORT --cert PEM
//! --key PEM]`: plain HTTP only (no QUIC address discovery, so paths never
//! go direct), or HTTPS with the certificate given (a leaf signed by a CA
//! of the test's own) and QUIC address discovery. Prints `ready` on stdout
//! once every socket is bound; runs until SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;

use iroh_relay::server::{CertConfig, QuicConfig, RelayConfig, Server, ServerConfig, TlsConfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Default)]
struct Args {
    http: Option<SocketAddr>,
    https: Option<SocketAddr>,
    quic: Option<SocketAddr>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

fn args() -> Result<Args, String> {
    let mut args = Args::default();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let addr = || {
            value
                .parse::<SocketAddr>()
                .map_err(|e| format!("{flag}: {e}"))
        };
        match flag.as_str() {
            "--http" => args.http = Some(addr()?),
            "--https" => args.https = Some(addr()?),
            "--quic" => args.quic = Some(addr()?),
            "--cert" => args.cert = Some(value.into()),
            "--key" => args.key = Some(value.into()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

fn tls(args: &Args) -> Result<Option<rustls::ServerConfig>, String> {
    let (Some(cert), Some(key)) = (&args.cert, &args.key) else {
        return Ok(None);
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map(Some)
    .map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args = args()?;
    let http = args.http.ok_or("--http is required")?;
    let mut relay = RelayConfig::new(http);
    let mut config = ServerConfig::default();
    if let Some(server_config) = tls(&args)? {
        let https = args.https.ok_or("--https is required with --cert")?;
        if let Some(quic) = args.quic {
            let mut q = QuicConfig::new(quic);
            q.server_config = Some(server_config.clone());
            config.quic = Some(q);
        }
        relay.tls = Some(TlsConfig::new(https, CertConfig::Manual { server_config }));
    }
    config.relay = Some(relay);
    let server = Server::spawn(config).await.map_err(|e| e.to_string())?;
    println!("ready");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    server.shutdown().await.map_err(|e| e.to_string())
}
