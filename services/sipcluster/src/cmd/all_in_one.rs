//! `sipcluster all-in-one`: every role in one process with embedded defaults. A
//! dispatcher holds the public sockets and relays to an edge (the path of a cluster),
//! handing the datagrams over in process (or, with `--in-process-hop false`, over an
//! internal loopback socket); registrations and users live in the location
//! service's in-memory backend, used in process and served on loopback for the admin
//! commands, as is the dispatcher's admin API. Those APIs take the admin token: the one
//! in `--admin-token-file`, or one generated at start and left in a per-user file
//! (`crate::tokens::default_admin_token_path`) where the commands find it.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use clap::Args;
use edge::EdgeConfig;
use grpc_auth::Token;
use location::LocationConfig;

use crate::cmd::edge::EdgeArgs;
use crate::process::{init_logging, listen_flag, runtime, shutdown_signal};
use crate::tokens::default_admin_token_path;

/// The edge's flags and the all-in-one's own.
#[derive(Args, Clone)]
pub struct AllInOneArgs {
    #[command(flatten)]
    pub edge: EdgeArgs,
    /// Serve the in-process location service's gRPC API here (`sipcluster users`,
    /// `sipcluster registrations`), or `off`. Default 127.0.0.1:50051.
    #[arg(long, env = "SIPCLUSTER_LOCATION_LISTEN")]
    pub location_listen: Option<String>,
    /// Serve the dispatcher's admin gRPC API here (`sipcluster dispatcher-admin`), or
    /// `off`. Default 127.0.0.1:50052.
    #[arg(long, env = "SIPCLUSTER_DISPATCHER_ADMIN")]
    pub admin: Option<String>,
    /// Hand requests from the dispatcher to the edge in process (`true`, the default:
    /// less CPU, and it holds up better under overload) or over loopback UDP (`false`:
    /// the internal hop shows in tcpdump/sngrep on `lo`).
    #[arg(long, env = "SIPCLUSTER_IN_PROCESS_HOP")]
    pub in_process_hop: Option<bool>,
    // The admin token's file; without it one is generated at each start.
    #[command(flatten)]
    pub admin_token: crate::tokens::AdminTokenArg,
    #[command(flatten)]
    pub tls: crate::cmd::TlsArgs,
    #[command(flatten)]
    pub ws: crate::cmd::WsArgs,
}

/// The edge configuration with the all-in-one's flags applied, not yet validated.
pub fn resolve(a: &AllInOneArgs) -> Result<EdgeConfig> {
    let mut cfg = crate::cmd::edge::resolve(&a.edge)?;
    if let Some(l) = &a.location_listen {
        cfg.all_in_one.location_listen = listen_flag("location-listen", l)?;
    }
    if let Some(l) = &a.admin {
        cfg.all_in_one.admin_listen = listen_flag("admin", l)?;
    }
    a.admin_token.apply(&mut cfg.all_in_one.admin_token_file);
    if let Some(on) = a.in_process_hop {
        cfg.all_in_one.in_process_hop = on;
    }
    a.tls.apply(&mut cfg.tls);
    a.ws.apply(&mut cfg.websocket);
    Ok(cfg)
}

/// The all-in-one's configuration: resolved, checked for what only a cluster edge can
/// use, validated.
pub fn build_config(a: &AllInOneArgs) -> Result<EdgeConfig> {
    let cfg = resolve(a)?;
    if let Some(e) = &cfg.location.endpoint {
        bail!(
            "the all-in-one keeps registrations and users in process, so it does not use a \
             location service ({e}, from --location, SIPCLUSTER_LOCATION or location.endpoint). \
             Run `sipcluster edge --location {e}` for an edge in a cluster; the all-in-one \
             serves its own location API on --location-listen (now {})",
            shown(cfg.all_in_one.location_listen)
        );
    }
    // The control APIs stay on this machine: their admin token would cross the network
    // in clear (no TLS), and whoever holds it can add users and remove registrations.
    for (flag, addr) in [
        ("location-listen", cfg.all_in_one.location_listen),
        ("admin", cfg.all_in_one.admin_listen),
    ] {
        if let Some(a) = addr
            && !a.ip().is_loopback()
        {
            bail!(
                "--{flag} {a}: the all-in-one's control APIs carry their admin token without \
                 TLS, so they listen on loopback only (127.0.0.1 or ::1); reach them from \
                 elsewhere through an SSH tunnel, or give `off`"
            );
        }
    }
    cfg.validate()?;
    Ok(cfg)
}

/// Run until SIGTERM, then drain.
pub fn run(a: &AllInOneArgs) -> Result<()> {
    let cfg = build_config(a)?;
    let _trace = init_logging(&cfg.log.level, &cfg.log.format, &a.edge.trace, "sipcluster")?;
    runtime(cfg.runtime.workers)?.block_on(serve(cfg))
}

/// The admin token of the control APIs, and where to leave it for the commands when it
/// was generated here (`None` when it came from a file, or no API is served).
fn admin_token(cfg: &EdgeConfig) -> Result<Option<(Token, Option<PathBuf>)>> {
    let a = &cfg.all_in_one;
    if a.location_listen.is_none() && a.admin_listen.is_none() {
        return Ok(None);
    }
    Ok(Some(match &a.admin_token_file {
        Some(f) => (
            Token::from_file(f).context("the admin token (--admin-token-file)")?,
            None,
        ),
        // Where it goes is settled before anything binds: no HOME is an error at start.
        None => (Token::generate()?, Some(default_admin_token_path()?)),
    }))
}

async fn serve(cfg: EdgeConfig) -> Result<()> {
    let admin = admin_token(&cfg)?;
    // One rejection counter for both APIs, on the one /metrics.
    let auth_metrics = grpc_auth::AuthMetrics::default();
    let users = edge::load_users(&cfg)?.into_inner();
    let r = &cfg.registrar;
    let policy = sip_registrar::Policy {
        default_expires: r.default_expires,
        min_expires: r.min_expires,
        max_expires: r.max_expires,
        max_contacts: r.max_contacts,
    };
    let backend: Arc<dyn location::Backend> = Arc::new(location::MemoryBackend::new(policy, users));
    let loc = match (cfg.all_in_one.location_listen, &admin) {
        (Some(listen), Some((token, _))) => {
            // Admin calls only: the edge uses the store in process, so nothing needs the
            // API to hand out HA1s or take bindings.
            let lcfg = LocationConfig {
                listen,
                registrar: policy,
                metrics_listen: None,
                admin_only: true,
                ..LocationConfig::default()
            };
            Some(
                location::start_with(
                    lcfg,
                    backend.clone(),
                    grpc_auth::Tokens::admin(token.clone()),
                    auth_metrics.clone(),
                )
                .await
                .context("the all-in-one's location API (--location-listen)")?,
            )
        }
        _ => None,
    };
    let store = Arc::new(location::InProcess(backend.clone()));

    // The same path as a cluster: the dispatcher takes the public sockets and relays to
    // an edge on an internal loopback socket. They share the flow-token secret.
    let secret = match &cfg.auth.nonce_secret {
        Some(s) => s.clone(),
        None => edge::random_hex(24)?,
    };
    let mut ecfg = cfg.clone();
    ecfg.sip.udp = vec![SocketAddr::from(([127, 0, 0, 1], 0))];
    ecfg.sip.tcp = Vec::new();
    ecfg.sip.advertise = Some(IpAddr::from([127, 0, 0, 1]));
    ecfg.sip.record_route = false;
    // Requests for the public address are for this edge (REGISTER sip:<public>, ...).
    let public = edge::local::Local::new(cfg.sip.advertise, &cfg.sip.udp, &cfg.sip.tcp, &[]);
    let ports: Vec<u16> = cfg
        .sip
        .udp
        .iter()
        .chain(&cfg.sip.tcp)
        .map(|a| a.port())
        .collect();
    ecfg.sip.aliases = public
        .addresses
        .iter()
        .flat_map(|ip| ports.iter().map(move |p| SocketAddr::new(*ip, *p)))
        .collect();
    ecfg.auth.nonce_secret = Some(secret.clone());
    // HEP from the dispatcher, which holds the client-facing sockets (and the hop to the
    // edge): one exporter, one set of `sipcluster_hep_*` series.
    ecfg.hep = hep::HepConfig::default();
    // One /metrics for every role, served below.
    ecfg.metrics.listen = None;
    // Accounting by default: JSON lines beside the admin token, with the spool there;
    // named after the SIP port, so that two all-in-ones of one user (on two ports) never
    // share a spool, and a restart on the same port finds what it left.
    // Whatever the destination (Kafka too): the spool and the file are never left in the
    // working directory unless the configuration names them.
    if ecfg.accounting.destination != Some(accounting::Destination::Off) {
        let state = crate::tokens::state_dir()?;
        let port = ports.first().copied().unwrap_or(5060);
        let defaults = accounting::AccountingSettings::default();
        if ecfg.accounting.jsonl_path == defaults.jsonl_path {
            ecfg.accounting.jsonl_path = state.join(format!("cdrs-{port}.jsonl"));
        }
        if ecfg.accounting.spool_dir == defaults.spool_dir {
            ecfg.accounting.spool_dir = state.join(format!("spool-{port}"));
        }
        crate::tokens::create_private_dir(&state)?;
    }
    let cdr_file = (ecfg
        .accounting
        .destination_or(accounting::Destination::Jsonl)
        == accounting::Destination::Jsonl)
        .then(|| ecfg.accounting.jsonl_path.clone());
    // The edge's bans are dropped where clients' packets arrive: the dispatcher's public
    // side (the edge hears every client from the dispatcher's loopback address).
    let blocklist = Arc::new(sip_transport::Blocklist::default());
    // The in-process location store also holds the used nonces and the dialog records.
    let edge = edge::start_with(
        ecfg,
        edge::shared::Stores {
            users: store.clone(),
            store: store.clone(),
            nonce_uses: store,
            dialogs: Arc::new(InProcessDialogs(backend.clone())),
            // The whole cluster is this process: its limits are counted in memory.
            limits: Arc::new(edge::limit::MemoryLimits::default()),
            // One process: its guard's bans are all the cluster's.
            bans: None,
            blocklist: Some(blocklist.clone()),
        },
        accounting::Destination::Jsonl,
    )
    .await?;
    let dcfg = dispatcher::DispatcherConfig {
        public: dispatcher::config::SideConfig {
            udp: cfg.sip.udp.clone(),
            tcp: cfg.sip.tcp.clone(),
            advertise: cfg.sip.advertise,
        },
        tls: cfg.tls.clone(),
        websocket: cfg.websocket.clone(),
        internal: dispatcher::config::SideConfig {
            udp: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
            tcp: Vec::new(),
            advertise: Some(IpAddr::from([127, 0, 0, 1])),
        },
        secret: Some(secret),
        discovery: dispatcher::config::DiscoveryConfig {
            kind: "static".into(),
            edges: edge.udp.clone(),
            ..Default::default()
        },
        tcp_idle_timeout_secs: cfg.limits.tcp_idle_timeout_secs,
        tcp_message_timeout_secs: cfg.limits.tcp_message_timeout_secs,
        tcp_max_connections: cfg.limits.tcp_max_connections,
        tcp_max_connections_per_source: cfg.limits.tcp_max_connections_per_source,
        retry_after_secs: cfg.limits.overload_retry_after,
        admin_listen: cfg.all_in_one.admin_listen,
        metrics_listen: None,
        drain_secs: cfg.runtime.drain_secs,
        hep: cfg.hep.clone(),
        // The edge's guard detects floods (with its allow-list) and bans into the
        // blocklist the public side drops from: one detector, one set of settings.
        bans: dispatcher::config::BansConfig {
            flood_rate: 0,
            ..Default::default()
        },
        ..Default::default()
    };
    let discovery = dispatcher::discovery_from(&dcfg)?;
    // The admin API takes the admin token too; its refusals are counted in the shared
    // counter, which the dispatcher registers with its metrics below.
    let admin_api_tokens = match (&dcfg.admin_listen, &admin) {
        (Some(_), Some((token, _))) => Some(grpc_auth::Tokens::admin(token.clone())),
        _ => None,
    };
    let disp = dispatcher::start_authenticated(
        dcfg,
        discovery,
        admin_api_tokens,
        auth_metrics.clone(),
        Some(blocklist),
    )
    .await?;
    // The dispatcher -> edge hop stays in the process: the same relay and proxy code,
    // with datagrams handed over through each other's queue instead of loopback UDP.
    // (Probes and anything sent before this line went by socket; they still work.)
    if cfg.all_in_one.in_process_hop {
        sip_transport::link_in_process(disp.internal_transports(), edge.transports())
            .context("linking the dispatcher and the edge in process")?;
    }
    // Ready when every role is: the dispatcher not draining and its edge joined (answering
    // its probe: before, every request would get 503), the edge not draining, a media
    // relay answering when calls need one.
    // And, on the first start, once the generated admin token is in its file: whoever
    // waits for /readyz (a script, the tests) may run the commands at once.
    let token_written = Arc::new(AtomicBool::new(!matches!(&admin, Some((_, Some(_))))));
    let readiness = telemetry::Readiness::new("draining", disp.ready.clone())
        .and("edge not joined the dispatcher yet", disp.edge_up.clone())
        .join(edge.readiness())
        .and("admin token not written yet", token_written.clone());
    let metrics_task = match cfg.metrics.listen {
        Some(addr) => {
            let mut registry = prometheus_client::registry::Registry::default();
            edge.register_metrics(&mut registry);
            // The dispatcher's include the shared `grpc_auth_rejected` of both APIs.
            disp.register_metrics(&mut registry);
            let (_, task) = telemetry::spawn_endpoint(addr, registry, readiness)
                .await
                .with_context(|| format!("metrics listener {addr}"))?;
            Some(task)
        }
        None => None,
    };
    // Only once every socket is bound: an instance that fails at start (a busy port) must
    // not replace the token of the one already running.
    if let Some((token, Some(path))) = &admin {
        crate::tokens::write_private(path, token)?;
        token_written.store(true, Ordering::Relaxed);
        tracing::info!(
            file = %path.display(),
            "admin token generated for this run (sipcluster users, registrations and \
             dispatcher-admin read it there)"
        );
    }
    tracing::info!(
        sip_udp = ?disp.public_udp,
        sip_tcp = ?disp.public_tcp,
        domains = ?cfg.sip.domains,
        auth_algorithms = ?cfg.auth.algorithms,
        location_api = %shown(loc.as_ref().map(|l| l.addr)),
        admin_api = %shown(disp.admin),
        media_relays = ?cfg.media.relays,
        cdrs = %cdr_file.as_ref().map_or_else(|| "not in a file".into(), |p| p.display().to_string()),
        "all-in-one started"
    );
    shutdown_signal().await;
    tracing::info!(secs = cfg.runtime.drain_secs, "stopping: draining");
    disp.drain_and_stop().await;
    edge.stop().await;
    if let Some(t) = metrics_task {
        t.abort();
    }
    if let Some(l) = loc {
        l.stop().await;
    }
    Ok(())
}

/// An optional listening address as the operator writes it: `ip:port` or `off`.
fn shown(a: Option<SocketAddr>) -> String {
    a.map_or_else(|| "off".to_owned(), |a| a.to_string())
}

/// The dialog records of the all-in-one: in the in-process location backend, where the
/// location API (and `sipcluster calls`) sees them.
struct InProcessDialogs(Arc<dyn location::Backend>);

/// How long an ended record stays readable, s (as the location service's default).
const ENDED_TTL_SECS: u32 = 3600;

#[async_trait::async_trait]
impl edge::dialogs::DialogStore for InProcessDialogs {
    async fn put(
        &self,
        d: location_client::pb::Dialog,
        ttl: std::time::Duration,
        touch_only: bool,
    ) -> Result<bool, String> {
        let ttl = u32::try_from(ttl.as_secs().max(1)).unwrap_or(u32::MAX);
        self.0
            .put_dialog(&d, ttl, touch_only)
            .await
            .map(|d| d.is_some())
            .map_err(|e| e.to_string())
    }

    async fn reap(&self, limit: u32) -> Result<Vec<location_client::pb::Dialog>, String> {
        self.0
            .reap_dialogs(sip_registrar::unix_now_ms(), limit as usize, ENDED_TTL_SECS)
            .await
            .map_err(|e| e.to_string())
    }

    async fn end(
        &self,
        end: location_client::pb::EndDialogRequest,
    ) -> Result<Option<location_client::pb::Dialog>, String> {
        let key = location::backend::DialogKey {
            call_id: end.call_id,
            from_tag: end.from_tag,
        };
        let e = location::backend::DialogEnd {
            ended_at_ms: end.ended_at_ms,
            reason: end.end_reason,
            status: end.status,
        };
        let ttl = if end.ttl_secs == 0 {
            ENDED_TTL_SECS
        } else {
            end.ttl_secs
        };
        self.0
            .end_dialog(&key, &e, ttl)
            .await
            .map_err(|e| e.to_string())
    }
}
