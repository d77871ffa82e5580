//! `sipcluster media-relay`: RTP/RTCP forwarding between call legs, controlled over gRPC
//! by the edges.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::process::{listen_flag, read_config, runtime, shutdown_signal};

/// The media relay's flags.
#[derive(Args, Clone)]
pub struct MediaRelayArgs {
    /// TOML configuration file (see deploy/media-relay.toml).
    #[arg(long, env = "SIPCLUSTER_MEDIA_CONFIG")]
    pub config: Option<PathBuf>,
    /// This relay's name (the pod name).
    #[arg(long, env = "SIPCLUSTER_MEDIA_INSTANCE")]
    pub instance: Option<String>,
    /// gRPC control address (default 127.0.0.1:50053; a pod gives 0.0.0.0:50053).
    #[arg(long, env = "SIPCLUSTER_MEDIA_CONTROL")]
    pub control: Option<SocketAddr>,
    #[command(flatten)]
    pub edge_token: crate::tokens::EdgeTokenArg,
    #[command(flatten)]
    pub admin_token: crate::tokens::AdminTokenArg,
    /// Address the IPv4 media sockets bind, or `off`.
    #[arg(long, env = "SIPCLUSTER_MEDIA_BIND_V4")]
    bind_v4: Option<String>,
    /// Address the IPv6 media sockets bind, or `off`.
    #[arg(long, env = "SIPCLUSTER_MEDIA_BIND_V6")]
    bind_v6: Option<String>,
    /// IPv4 address put into SDP (the pod's reachable address; Downward API status.podIP
    /// or a node's public address).
    #[arg(long, env = "SIPCLUSTER_MEDIA_ADVERTISE_V4")]
    advertise_v4: Option<std::net::IpAddr>,
    /// IPv6 address put into SDP.
    #[arg(long, env = "SIPCLUSTER_MEDIA_ADVERTISE_V6")]
    advertise_v6: Option<std::net::IpAddr>,
    /// Media port range, e.g. 30000-39999.
    #[arg(long, env = "SIPCLUSTER_MEDIA_PORTS")]
    pub ports: Option<String>,
    /// Seconds without media before a session is ended.
    #[arg(long, env = "SIPCLUSTER_MEDIA_IDLE_TIMEOUT")]
    pub idle_timeout_secs: Option<u64>,
    /// Seconds after which any session is ended.
    #[arg(long, env = "SIPCLUSTER_MEDIA_MAX_DURATION")]
    pub max_duration_secs: Option<u64>,
    /// Seconds a released port pair stays unused.
    #[arg(long, env = "SIPCLUSTER_MEDIA_QUARANTINE")]
    pub quarantine_secs: Option<u64>,
    /// Forwarding threads.
    #[arg(long, env = "SIPCLUSTER_MEDIA_WORKERS")]
    pub workers: Option<usize>,
    /// On SIGTERM, keep existing sessions at most this long.
    #[arg(long, env = "SIPCLUSTER_MEDIA_DRAIN_SECS")]
    pub drain_secs: Option<u64>,
    /// Microseconds a worker lets packets gather after each wake-up (0: none).
    #[arg(long, env = "SIPCLUSTER_MEDIA_COALESCE_US")]
    pub coalesce_us: Option<u64>,
    /// Metrics/health HTTP address, or `off`.
    #[arg(long, env = "SIPCLUSTER_METRICS")]
    pub metrics: Option<String>,
    #[command(flatten)]
    pub log: crate::process::LogArgs,
}

/// The file's settings, then the environment's and the flags', validated.
pub fn build_media_relay_config(a: &MediaRelayArgs) -> Result<media_relay::MediaRelayConfig> {
    let mut cfg = read_config(
        a.config.as_deref(),
        media_relay::MediaRelayConfig::from_toml,
    )?;
    let bind = |v: &str, what: &str| -> Result<Option<std::net::IpAddr>> {
        if v == "off" {
            return Ok(None);
        }
        Ok(Some(v.parse().map_err(|_| {
            anyhow::anyhow!("--{what}: an IP address or `off`, not {v:?}")
        })?))
    };
    if let Some(i) = &a.instance {
        cfg.instance = i.clone();
    }
    if let Some(c) = a.control {
        cfg.control_listen = c;
    }
    if let Some(b) = &a.bind_v4 {
        cfg.bind_v4 = bind(b, "bind-v4")?;
    }
    if let Some(b) = &a.bind_v6 {
        cfg.bind_v6 = bind(b, "bind-v6")?;
    }
    if a.advertise_v4.is_some() {
        cfg.advertise_v4 = a.advertise_v4;
    }
    if a.advertise_v6.is_some() {
        cfg.advertise_v6 = a.advertise_v6;
    }
    if let Some(r) = &a.ports {
        let (lo, hi) = r
            .split_once('-')
            .and_then(|(l, h)| Some((l.trim().parse().ok()?, h.trim().parse().ok()?)))
            .ok_or_else(|| anyhow::anyhow!("--ports: MIN-MAX, e.g. 30000-39999, not {r:?}"))?;
        (cfg.port_min, cfg.port_max) = (lo, hi);
    }
    if let Some(v) = a.idle_timeout_secs {
        cfg.idle_timeout_secs = v;
    }
    if let Some(v) = a.max_duration_secs {
        cfg.max_duration_secs = v;
    }
    if let Some(v) = a.quarantine_secs {
        cfg.quarantine_secs = v;
    }
    if let Some(v) = a.workers {
        cfg.workers = v;
    }
    if let Some(v) = a.drain_secs {
        cfg.drain_secs = v;
    }
    if let Some(v) = a.coalesce_us {
        cfg.coalesce_us = v;
    }
    if let Some(m) = &a.metrics {
        cfg.metrics_listen = listen_flag("metrics", m)?;
    }
    a.edge_token.apply(&mut cfg.api.edge_token_file);
    a.admin_token.apply(&mut cfg.api.admin_token_file);
    cfg.validate()?;
    Ok(cfg)
}

/// Run until SIGTERM, then drain.
pub fn run(a: &MediaRelayArgs) -> Result<()> {
    let cfg = build_media_relay_config(a)?;
    let _trace = a.log.init("sipcluster-media-relay")?;
    // The control plane is light; the forwarding threads are the relay's own.
    runtime(1)?.block_on(async {
        let handle = media_relay::start(cfg).await?;
        shutdown_signal().await;
        tracing::info!(sessions = handle.sessions(), "draining");
        handle.drain_and_stop().await;
        Ok(())
    })
}
