//! TLS (RFC 3261 §26.2, RFC 5630): listeners whose connections are flows like TCP's, and
//! outbound TLS connections, on rustls.
//!
//! * The certificate and key are read from PEM files and re-read when either file
//!   changes (checked every `reload_interval`; a Kubernetes Secret's atomic symlink swap
//!   counts), with no restart: new handshakes get the new certificate, connections
//!   already up keep theirs. A change that does not load (a key that does not match, a
//!   half-written file) leaves the previous pair in use, logged once per change and
//!   counted.
//! * Client certificates are optional or required per listener set (mutual TLS for
//!   trunks): one that verifies against `client_ca_file` names its peer (the first DNS
//!   name of its subjectAltName), which the flow carries so that trust can follow the
//!   certificate rather than the address.
//! * The handshake has a deadline (`handshake_timeout`) and runs in its own task, so a
//!   client that opens a connection and stays silent holds one slot of the connection
//!   caps for that long and nothing else.
//! * Outbound connections verify the server against `ca_file` (the system's roots when
//!   unset) for the target's IP address, and present our certificate when asked.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SignatureScheme};
use sip_txn::Transport;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::Inner;
use crate::trust::{ClientTrust, ServerTrust};

/// Whether a TLS listener asks its clients for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuth {
    /// No client certificate is asked for.
    #[default]
    Off,
    /// Asked for; a client without one is served (its flow has no peer identity), a
    /// client with one that does not verify is refused.
    Optional,
    /// A client without a certificate that verifies is refused.
    Required,
}

impl ClientAuth {
    /// `off`, `optional`, `required`.
    pub fn parse(s: &str) -> Option<ClientAuth> {
        match s {
            "off" => Some(ClientAuth::Off),
            "optional" => Some(ClientAuth::Optional),
            "required" => Some(ClientAuth::Required),
            _ => None,
        }
    }
}

/// TLS settings of a set of transports.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// Addresses to listen on for TLS (may be empty: outbound TLS only).
    pub listen: Vec<SocketAddr>,
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// Whether inbound clients are asked for a certificate.
    pub client_auth: ClientAuth,
    /// PEM CA certificates client certificates are verified against (required unless
    /// `client_auth` is off).
    pub client_ca_file: Option<PathBuf>,
    /// PEM CA certificates outbound servers are verified against; the system's roots when
    /// unset.
    pub ca_file: Option<PathBuf>,
    /// How often the certificate and key files are checked for a change.
    pub reload_interval: Duration,
    /// A handshake must be done within this time of the connection.
    pub handshake_timeout: Duration,
}

/// The `[tls]` section of a service's configuration: what an operator writes. TLS is on
/// when `cert_file` is given; `listen` may stay empty (outbound TLS only).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// Addresses to listen on for SIP over TLS (`sips:`), e.g. `0.0.0.0:5061`.
    pub listen: Vec<SocketAddr>,
    /// PEM certificate chain, leaf first (a Secret's `tls.crt`). Re-read on change.
    pub cert_file: Option<PathBuf>,
    /// PEM private key (a Secret's `tls.key`). Re-read on change.
    pub key_file: Option<PathBuf>,
    /// Ask clients for a certificate: `off`, `optional` or `required` (mutual TLS for
    /// trunks; a verified certificate's first DNS name can be trusted by the edges,
    /// `security.trusted_peers = ["tls:trunk.example.net"]`).
    pub client_auth: String,
    /// PEM CA certificates client certificates are verified against (a Secret's
    /// `ca.crt`); required unless `client_auth = "off"`.
    pub client_ca_file: Option<PathBuf>,
    /// PEM CA certificates the servers we connect to are verified against; unset: the
    /// system's roots.
    pub ca_file: Option<PathBuf>,
    /// Seconds between checks of the certificate and key files for a change.
    pub reload_secs: u64,
    /// Seconds a client has to complete its handshake.
    pub handshake_timeout_secs: u64,
}

impl Default for TlsSettings {
    fn default() -> TlsSettings {
        TlsSettings {
            listen: Vec::new(),
            cert_file: None,
            key_file: None,
            client_auth: "off".into(),
            client_ca_file: None,
            ca_file: None,
            reload_secs: 10,
            handshake_timeout_secs: 5,
        }
    }
}

impl TlsSettings {
    /// Check every value (not the files' contents: the transports read those at start
    /// and say which file is wrong).
    pub fn validate(&self) -> Result<(), telemetry::ConfigError> {
        let bad = |field, problem: &str| telemetry::ConfigError::new(field, problem);
        let Some(auth) = ClientAuth::parse(&self.client_auth) else {
            return Err(bad(
                "tls.client_auth",
                &format!("{:?}: expected off, optional or required", self.client_auth),
            ));
        };
        if self.cert_file.is_none() {
            if !self.listen.is_empty() {
                return Err(bad(
                    "tls.cert_file",
                    "required with tls.listen (and tls.key_file)",
                ));
            }
            return Ok(());
        }
        if self.key_file.is_none() {
            return Err(bad("tls.key_file", "required with tls.cert_file"));
        }
        if auth != ClientAuth::Off && self.client_ca_file.is_none() {
            return Err(bad(
                "tls.client_ca_file",
                "required when tls.client_auth asks for client certificates: it says which to accept",
            ));
        }
        if self.reload_secs == 0 || self.handshake_timeout_secs == 0 {
            return Err(bad(
                "tls",
                "reload_secs and handshake_timeout_secs must be positive",
            ));
        }
        Ok(())
    }

    /// The transports' TLS settings; `None` when TLS is off (no certificate).
    pub fn config(&self) -> Option<TlsConfig> {
        Some(TlsConfig {
            listen: self.listen.clone(),
            cert_file: self.cert_file.clone()?,
            key_file: self.key_file.clone()?,
            client_auth: ClientAuth::parse(&self.client_auth).unwrap_or_default(),
            client_ca_file: self.client_ca_file.clone(),
            ca_file: self.ca_file.clone(),
            reload_interval: Duration::from_secs(self.reload_secs.max(1)),
            handshake_timeout: Duration::from_secs(self.handshake_timeout_secs.max(1)),
        })
    }
}

/// A TLS setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or is not PEM.
    #[error("{path}: {why}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// rustls refused the settings.
    #[error("TLS settings refused: {0}")]
    Rustls(#[from] rustls::Error),
}

pub(crate) fn file_error(path: &Path, why: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        why: why.to_string(),
    }
}

/// The certificate in use, swapped when its files change.
pub(crate) struct CertStore {
    current: RwLock<Arc<CertifiedKey>>,
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("cert_file", &self.cert_file)
            .finish_non_exhaustive()
    }
}

impl CertStore {
    fn get(&self) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.clone())
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.get()
    }
}

impl ResolvesClientCert for CertStore {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        let ck = self.get()?;
        // Only when our key can sign with one of the schemes the server takes.
        ck.key.choose_scheme(sigschemes).is_some().then_some(ck)
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Read a certificate chain and its key, and check that they belong together.
fn load_pair(
    cert_file: &Path,
    key_file: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let certs = read_certs(cert_file)?;
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| file_error(key_file, e))?;
    let signer = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| file_error(key_file, e))?;
    let ck = CertifiedKey::new(certs, signer);
    match ck.keys_match() {
        // `Unknown`: the provider cannot tell (not the case with ring's keys); the
        // handshake would fail on a mismatch anyway.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(ck),
        Err(e) => Err(file_error(
            key_file,
            format!("not the key of {}: {e}", cert_file.display()),
        )),
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "no PEM certificate in it"));
    }
    Ok(certs)
}

pub(crate) fn read_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in read_certs(path)? {
        roots.add(c).map_err(|e| file_error(path, e))?;
    }
    Ok(roots)
}

/// What a file looked like when last read: a change of any of these is a new file (a
/// rewrite in place changes the time and usually the length; a swap the inode).
type Stamp = Option<(u64, i64, i64, u64)>;

fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.ino(), m.mtime(), m.mtime_nsec(), m.len()))
}

/// The server and client sides of TLS, sharing one certificate.
#[derive(Clone)]
pub(crate) struct Tls {
    pub acceptor: TlsAcceptor,
    pub connector: TlsConnector,
    store: Arc<CertStore>,
    /// Client certificates' CA file and what it says now (mutual TLS).
    client_trust: Option<(Arc<ClientTrust>, PathBuf)>,
    /// The servers' CA file and what it says now (outbound TLS; the system's roots, read
    /// at start, when unset).
    server_trust: Option<(Arc<ServerTrust>, PathBuf)>,
    pub handshake_timeout: Duration,
    reload_interval: Duration,
}

impl Tls {
    /// Read the files and build both sides.
    pub fn new(config: &TlsConfig) -> Result<Tls, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let ck = load_pair(&config.cert_file, &config.key_file, &provider)?;
        let store = Arc::new(CertStore {
            current: RwLock::new(Arc::new(ck)),
            cert_file: config.cert_file.clone(),
            key_file: config.key_file.clone(),
            provider: provider.clone(),
        });
        let client_trust = match config.client_auth {
            ClientAuth::Off => None,
            mode => {
                let Some(ca) = &config.client_ca_file else {
                    return Err(file_error(
                        Path::new("client_ca_file"),
                        "client certificates are asked for but no CA file says which to accept",
                    ));
                };
                Some((Arc::new(ClientTrust::new(ca, mode, &provider)?), ca.clone()))
            }
        };
        let verifier: Arc<dyn ClientCertVerifier> = match &client_trust {
            Some((trust, _)) => trust.clone(),
            None => WebPkiClientVerifier::no_client_auth(),
        };
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(store.clone());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let (builder, server_trust) = match &config.ca_file {
            Some(p) => {
                let trust = Arc::new(ServerTrust::new(p, &provider)?);
                let b = builder
                    .dangerous()
                    .with_custom_certificate_verifier(trust.clone());
                (b, Some((trust, p.clone())))
            }
            None => {
                let mut roots = RootCertStore::empty();
                // Unreadable system certificates are skipped: outbound TLS then fails
                // verification, which is logged per connection.
                roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
                (builder.with_root_certificates(roots), None)
            }
        };
        let client = builder.with_client_cert_resolver(store.clone());
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
            store,
            client_trust,
            server_trust,
            handshake_timeout: config.handshake_timeout,
            reload_interval: config.reload_interval,
        })
    }

    /// Set the expiry gauge from the certificate in use (its leaf).
    pub fn publish_expiry(&self, metrics: &crate::TransportMetrics) {
        let not_after = self
            .store
            .get()
            .and_then(|ck| ck.cert.first().and_then(|c| crate::x509::not_after(c)));
        if not_after.is_none() {
            tracing::warn!(cert_file = %self.store.cert_file.display(), "the TLS certificate's expiry date cannot be read: its gauge stays 0");
        }
        metrics.tls_certificate_expiry.set(not_after.unwrap_or(0));
    }

    /// Watch the certificate and key files; swap the pair in use when they change and
    /// load. Runs until the process ends.
    pub async fn watch(self, inner: Arc<Inner>) {
        let s = &self.store;
        let pair = || (stamp(&s.cert_file), stamp(&s.key_file), None);
        let mut certificate = Watched::new(pair());
        let ca = |t: Option<&PathBuf>| (t.and_then(|p| stamp(p)), None, None);
        let client_ca_file = self.client_trust.as_ref().map(|(_, p)| p);
        let server_ca_file = self.server_trust.as_ref().map(|(_, p)| p);
        let mut client_ca = Watched::new(ca(client_ca_file));
        let mut server_ca = Watched::new(ca(server_ca_file));
        loop {
            tokio::time::sleep(self.reload_interval).await;
            certificate.check(&inner, pair(), "certificate", || {
                let ck = load_pair(&s.cert_file, &s.key_file, &s.provider)?;
                if let Ok(mut cur) = s.current.write() {
                    *cur = Arc::new(ck);
                }
                self.publish_expiry(&inner.metrics);
                Ok(s.cert_file.clone())
            });
            if let Some((trust, path)) = &self.client_trust {
                client_ca.check(&inner, ca(client_ca_file), "client CA file", || {
                    trust.reload(path, &s.provider).map(|()| path.clone())
                });
            }
            if let Some((trust, path)) = &self.server_trust {
                server_ca.check(&inner, ca(server_ca_file), "CA file", || {
                    trust.reload(path, &s.provider).map(|()| path.clone())
                });
            }
        }
    }
}

/// What a file (or pair) looked like when last applied, and when a change of it last
/// failed to load.
struct Watched {
    seen: (Stamp, Stamp, Stamp),
    failed: Option<(Stamp, Stamp, Stamp)>,
}

impl Watched {
    fn new(now: (Stamp, Stamp, Stamp)) -> Watched {
        Watched {
            seen: now,
            failed: None,
        }
    }

    /// When the files changed, `apply` them: counted and logged either way; a change that
    /// does not load leaves what is in use (reported once per change, not every interval
    /// while it stays broken: a key and certificate written one after the other load on
    /// the next check).
    fn check(
        &mut self,
        inner: &Inner,
        now: (Stamp, Stamp, Stamp),
        what: &'static str,
        apply: impl FnOnce() -> Result<PathBuf, TlsError>,
    ) {
        if now == self.seen {
            return;
        }
        match apply() {
            Ok(file) => {
                self.seen = now;
                self.failed = None;
                inner.metrics.tls_reload("ok");
                tracing::info!(file = %file.display(), "tls {what} reloaded: new connections use it");
            }
            Err(e) => {
                if self.failed != Some(now) {
                    self.failed = Some(now);
                    inner.metrics.tls_reload("error");
                    tracing::warn!(error = %e, "tls {what} change not applied: the previous one stays in use");
                }
            }
        }
    }
}

/// Read and check the files `config` names (certificate and key that belong together, CA
/// files), as the transports do at start, without binding anything: `check-config`.
pub fn check_files(config: &TlsConfig) -> Result<(), TlsError> {
    Tls::new(config).map(drop)
}

/// The peer's identity from its verified certificate: the first DNS name of its
/// subjectAltName.
pub(crate) fn peer_name(conn: &rustls::CommonState) -> Option<Arc<str>> {
    let leaf = conn.peer_certificates()?.first()?;
    let cert = webpki::EndEntityCert::try_from(leaf).ok()?;
    let name = cert.valid_dns_names().next()?;
    Some(Arc::from(name.to_ascii_lowercase()))
}

/// The TLS handshake of an accepted connection, within the handshake deadline: the
/// stream and the peer's proven name, or `None` (counted and logged).
pub(crate) async fn accept(
    inner: &Inner,
    tls: &Tls,
    stream: TcpStream,
    remote: SocketAddr,
) -> Option<(tokio_rustls::server::TlsStream<TcpStream>, Option<Arc<str>>)> {
    match tokio::time::timeout(tls.handshake_timeout, tls.acceptor.accept(stream)).await {
        Ok(Ok(s)) => {
            inner.metrics.tls_handshake("ok");
            let peer = peer_name(s.get_ref().1);
            Some((s, peer))
        }
        Ok(Err(e)) => {
            handshake_failed(inner, remote, "failed", &e);
            None
        }
        Err(_) => {
            let e = io::Error::from(io::ErrorKind::TimedOut);
            handshake_failed(inner, remote, "timeout", &e);
            None
        }
    }
}

pub(crate) async fn acceptor(inner: Arc<Inner>, tls: Tls, listener: TcpListener) {
    let mut backoff = telemetry::AcceptBackoff::new("sip tls");
    loop {
        match listener.accept().await {
            Ok((stream, remote)) => {
                backoff.succeeded();
                let Some(slot) = crate::tcp::admit(&inner, remote) else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let inner = inner.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let local = stream
                        .local_addr()
                        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
                    if let Some((s, peer)) = accept(&inner, &tls, stream, remote).await {
                        let (r, w) = tokio::io::split(s);
                        crate::tcp::start_connection(
                            &inner,
                            r,
                            w,
                            (local, remote),
                            Transport::Tls,
                            Some(slot),
                            peer,
                        );
                    }
                });
            }
            Err(e) => {
                inner.metrics.accept_errors.inc();
                backoff.failed(&e).await;
            }
        }
    }
}

fn handshake_failed(inner: &Inner, remote: SocketAddr, result: &'static str, e: &io::Error) {
    inner.metrics.tls_handshake(result);
    if let Some(held_back) = inner.log_limits.handshake.allow(Instant::now()) {
        tracing::info!(%remote, error = %e, result, held_back, "tls handshake failed");
    }
}

/// Open a TLS connection to `addr`, verifying the server for that IP address.
pub(crate) async fn connect(
    tls: &Tls,
    stream: TcpStream,
    addr: SocketAddr,
) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let name = ServerName::IpAddress(addr.ip().into());
    tls.connector.connect(name, stream).await
}

/// The peer identity of an outbound connection once up.
pub(crate) fn server_name(s: &tokio_rustls::client::TlsStream<TcpStream>) -> Option<Arc<str>> {
    peer_name(s.get_ref().1)
}
