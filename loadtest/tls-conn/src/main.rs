//! # tls-conn: TLS (or secure WebSocket) connections opened and held
//!
//! For the load harness's transports section: `--connections` TLS connections to
//! `--target`, `--concurrency` handshakes at a time, each verified against `--ca` for the
//! target's IP address; with `--ws` each then upgrades to a SIP WebSocket (RFC 7118).
//! It reports the set-up rate (`established N in S s: R/s`), then holds every connection
//! `--hold-secs` (the harness reads the server's memory meanwhile) and closes them.
//! Bounded in count and time; loopback targets only unless told otherwise.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Parser, Debug)]
#[command(about = "TLS or WSS connections opened and held: set-up rate, memory per connection")]
struct Args {
    /// The server's TLS (or WSS) address.
    #[arg(long)]
    target: SocketAddr,
    /// Connections to open (at most 50,000).
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 50)]
    concurrency: usize,
    /// PEM CA the server's certificate must chain to.
    #[arg(long)]
    ca: std::path::PathBuf,
    /// Upgrade each connection to a SIP WebSocket.
    #[arg(long)]
    ws: bool,
    /// Seconds to hold the connections once all are up.
    #[arg(long, default_value_t = 5)]
    hold_secs: u64,
    /// Only loopback targets unless this is given.
    #[arg(long)]
    allow_non_loopback: bool,
}

type Conn = tokio_rustls::client::TlsStream<TcpStream>;

async fn open(cfg: Arc<rustls::ClientConfig>, target: SocketAddr, ws: bool) -> Result<Conn> {
    let tcp = TcpStream::connect(target).await?;
    tcp.set_nodelay(true)?;
    let mut s = tokio_rustls::TlsConnector::from(cfg)
        .connect(ServerName::IpAddress(target.ip().into()), tcp)
        .await?;
    if ws {
        s.write_all(&sip_ws::handshake::client_request(
            &target.to_string(),
            "/",
            "dGhlIHNhbXBsZSBub25jZQ==",
        ))
        .await?;
        let mut head = Vec::with_capacity(256);
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            if s.read(&mut b).await? == 0 {
                bail!("closed during the upgrade");
            }
            head.push(b[0]);
        }
        if !head.starts_with(b"HTTP/1.1 101 ") {
            bail!("upgrade refused: {}", String::from_utf8_lossy(&head));
        }
    }
    Ok(s)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let a = Args::parse();
    if !a.target.ip().is_loopback() && !a.allow_non_loopback {
        bail!(
            "{} is not a loopback address (--allow-non-loopback)",
            a.target
        );
    }
    let n = a.connections.min(50_000);
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&a.ca).context("--ca")? {
        roots.add(c?)?;
    }
    let cfg = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    let start = Instant::now();
    let mut held = Vec::with_capacity(n);
    let mut failed = 0usize;
    let mut pending = tokio::task::JoinSet::new();
    let mut next = 0;
    while held.len() + failed < n {
        while next < n && pending.len() < a.concurrency.max(1) {
            pending.spawn(tokio::time::timeout(
                Duration::from_secs(10),
                open(cfg.clone(), a.target, a.ws),
            ));
            next += 1;
        }
        match pending.join_next().await {
            Some(Ok(Ok(Ok(c)))) => held.push(c),
            Some(Ok(Ok(Err(e)))) => {
                failed += 1;
                if failed == 1 {
                    eprintln!("a connection failed: {e}");
                }
            }
            _ => failed += 1,
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "established {} in {secs:.2} s: {:.0}/s ({failed} failed){}",
        held.len(),
        held.len() as f64 / secs,
        if a.ws { " wss" } else { " tls" }
    );
    tokio::time::sleep(Duration::from_secs(a.hold_secs)).await;
    drop(held);
    Ok(())
}
