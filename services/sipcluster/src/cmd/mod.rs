//! One file per subcommand: its flags, how they become the service's configuration, and
//! how it runs.

pub mod all_in_one;
pub mod calls;
pub mod cdr;
pub mod check_config;
pub mod dispatcher;
pub mod dispatcher_admin;
pub mod edge;
pub mod location;
pub mod media_relay;
pub mod registrations;
pub mod top;
pub mod users;

/// The HEP export flags of the commands that carry SIP (edge, dispatcher, all-in-one):
/// each overrides the `[hep]` section of the configuration file.
#[derive(clap::Args, Clone, Default)]
pub struct HepArgs {
    /// Send a copy of every SIP message to this HEP collector, host:port (Homer,
    /// heplify-server, sngrep); turns `hep.enabled` on.
    #[arg(long = "hep", env = "SIPCLUSTER_HEP")]
    pub address: Option<String>,
    /// How to reach the collector: udp (default) or tcp.
    #[arg(long = "hep-transport", env = "SIPCLUSTER_HEP_TRANSPORT")]
    pub transport: Option<String>,
    /// Share of calls exported, 0 to 1 (whole calls: chosen on the Call-ID).
    #[arg(long = "hep-sample-ratio", env = "SIPCLUSTER_HEP_SAMPLE_RATIO")]
    pub sample_ratio: Option<f64>,
}

impl HepArgs {
    /// Override `c` with the flags given.
    pub fn apply(&self, c: &mut hep::HepConfig) -> anyhow::Result<()> {
        if let Some(a) = &self.address {
            c.address.clone_from(a);
            c.enabled = true;
        }
        if let Some(t) = &self.transport {
            c.transport = match t.as_str() {
                "udp" => hep::HepTransport::Udp,
                "tcp" => hep::HepTransport::Tcp,
                other => anyhow::bail!("--hep-transport {other:?}: udp or tcp"),
            };
        }
        if let Some(r) = self.sample_ratio {
            c.sample_ratio = r;
        }
        Ok(())
    }
}

/// The TLS flags of the commands that serve clients (dispatcher, all-in-one): each
/// overrides the `[tls]` section of the configuration file.
#[derive(clap::Args, Clone, Default)]
pub struct TlsArgs {
    /// Listen for SIP over TLS (sips:) on this address, e.g. 0.0.0.0:5061 (replaces
    /// tls.listen).
    #[arg(id = "tls_listen", long = "tls-listen", env = "SIPCLUSTER_TLS_LISTEN")]
    pub listen: Option<std::net::SocketAddr>,
    /// PEM certificate chain (re-read when it changes).
    #[arg(
        id = "tls_cert_file",
        long = "tls-cert-file",
        env = "SIPCLUSTER_TLS_CERT_FILE"
    )]
    pub cert_file: Option<std::path::PathBuf>,
    /// PEM private key (re-read when it changes).
    #[arg(
        id = "tls_key_file",
        long = "tls-key-file",
        env = "SIPCLUSTER_TLS_KEY_FILE"
    )]
    pub key_file: Option<std::path::PathBuf>,
    /// Ask clients for a certificate: off, optional or required.
    #[arg(
        id = "tls_client_auth",
        long = "tls-client-auth",
        env = "SIPCLUSTER_TLS_CLIENT_AUTH"
    )]
    pub client_auth: Option<String>,
    /// PEM CA certificates client certificates must chain to.
    #[arg(
        id = "tls_client_ca_file",
        long = "tls-client-ca-file",
        env = "SIPCLUSTER_TLS_CLIENT_CA_FILE"
    )]
    pub client_ca_file: Option<std::path::PathBuf>,
    /// PEM CA certificates servers we connect to must chain to (default: the system's).
    #[arg(
        id = "tls_ca_file",
        long = "tls-ca-file",
        env = "SIPCLUSTER_TLS_CA_FILE"
    )]
    pub ca_file: Option<std::path::PathBuf>,
    /// Seconds between checks of the certificate files for a change.
    #[arg(
        id = "tls_reload_secs",
        long = "tls-reload-secs",
        env = "SIPCLUSTER_TLS_RELOAD_SECS"
    )]
    pub reload_secs: Option<u64>,
}

impl TlsArgs {
    /// Override `c` with the flags given.
    pub fn apply(&self, c: &mut sip_transport::TlsSettings) {
        if let Some(l) = self.listen {
            c.listen = vec![l];
        }
        let set = |to: &mut Option<std::path::PathBuf>, from: &Option<std::path::PathBuf>| {
            if from.is_some() {
                to.clone_from(from);
            }
        };
        set(&mut c.cert_file, &self.cert_file);
        set(&mut c.key_file, &self.key_file);
        set(&mut c.client_ca_file, &self.client_ca_file);
        set(&mut c.ca_file, &self.ca_file);
        if let Some(a) = &self.client_auth {
            c.client_auth.clone_from(a);
        }
        if let Some(r) = self.reload_secs {
            c.reload_secs = r;
        }
    }
}

/// The WebSocket flags of the commands that serve clients (dispatcher, all-in-one): each
/// overrides the `[websocket]` section of the configuration file.
#[derive(clap::Args, Clone, Default)]
pub struct WsArgs {
    /// Listen for SIP over WebSocket (ws:, browsers) on this address, e.g. 0.0.0.0:8080.
    #[arg(id = "ws_listen", long = "ws-listen", env = "SIPCLUSTER_WS_LISTEN")]
    pub listen: Option<std::net::SocketAddr>,
    /// Listen for SIP over secure WebSocket (wss:) on this address, e.g. 0.0.0.0:8443
    /// (uses the TLS certificate).
    #[arg(id = "wss_listen", long = "wss-listen", env = "SIPCLUSTER_WSS_LISTEN")]
    pub tls_listen: Option<std::net::SocketAddr>,
    /// Origins a WebSocket may come from (comma-separated; default any).
    #[arg(
        id = "ws_allowed_origins",
        long = "ws-allowed-origins",
        env = "SIPCLUSTER_WS_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,
}

impl WsArgs {
    /// Override `c` with the flags given.
    pub fn apply(&self, c: &mut sip_transport::WebSocketSettings) {
        if let Some(l) = self.listen {
            c.listen = vec![l];
        }
        if let Some(l) = self.tls_listen {
            c.tls_listen = vec![l];
        }
        if !self.allowed_origins.is_empty() {
            c.allowed_origins.clone_from(&self.allowed_origins);
        }
    }
}

/// The `--location` and `--token-file` of the commands that talk to the location API.
#[derive(clap::Args, Clone)]
pub struct LocationApi {
    /// The location service (the all-in-one serves it on this address by default).
    #[arg(
        long = "location",
        env = "SIPCLUSTER_LOCATION",
        default_value = "http://127.0.0.1:50051"
    )]
    pub url: String,
    #[command(flatten)]
    pub token: crate::tokens::CliToken,
}

impl LocationApi {
    /// A client of the location API for the admin commands, with the admin token: short
    /// deadlines, a couple of retries, no credentials cache (they read what is stored
    /// now).
    pub fn client(&self) -> anyhow::Result<location_client::LocationClient> {
        Ok(location_client::LocationClient::new(
            location_client::ClientConfig {
                endpoint: self.url.clone(),
                timeout: std::time::Duration::from_secs(5),
                connect_timeout: std::time::Duration::from_secs(3),
                retries: 2,
                credentials_ttl: std::time::Duration::ZERO,
                token: Some(self.token.load()?),
            },
        )?)
    }
}
