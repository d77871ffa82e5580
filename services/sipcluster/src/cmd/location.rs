//! `sipcluster location`: the location service (registrations, users, dialog records)
//! over memory, Redis or Redis Cluster, served over gRPC.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use location::LocationConfig;

use crate::process::{listen_flag, read_config, runtime, shutdown_signal};

/// The location service's flags.
#[derive(Args, Clone)]
pub struct LocationArgs {
    /// TOML configuration file (see deploy/location.toml).
    #[arg(long, env = "SIPCLUSTER_LOCATION_CONFIG")]
    pub config: Option<PathBuf>,
    /// gRPC listening address (default 127.0.0.1:50051; a pod gives 0.0.0.0:50051).
    #[arg(long, env = "SIPCLUSTER_LOCATION_LISTEN")]
    pub listen: Option<SocketAddr>,
    #[command(flatten)]
    pub edge_token: crate::tokens::EdgeTokenArg,
    #[command(flatten)]
    pub admin_token: crate::tokens::AdminTokenArg,
    /// Backend: memory, redis or redis-cluster.
    #[arg(long, env = "SIPCLUSTER_LOCATION_BACKEND")]
    pub backend: Option<String>,
    /// Redis URLs (comma-separated; the seed nodes for a cluster).
    #[arg(long, env = "SIPCLUSTER_REDIS", value_delimiter = ',')]
    pub redis: Vec<String>,
    /// Key prefix in Redis.
    #[arg(long, env = "SIPCLUSTER_REDIS_PREFIX")]
    pub prefix: Option<String>,
    /// File holding the Redis password (e.g. a Kubernetes Secret mount; its trailing
    /// newline is trimmed): backend.password_file.
    #[arg(long, env = "SIPCLUSTER_REDIS_PASSWORD_FILE")]
    pub redis_password_file: Option<PathBuf>,
    /// The Redis password itself (an environment variable from a Secret; on a command line
    /// it would show in `ps`, so prefer --redis-password-file there). Never printed.
    #[arg(long, env = "SIPCLUSTER_REDIS_PASSWORD", hide_env_values = true)]
    pub redis_password: Option<String>,
    /// The Redis 6 ACL user of the password (backend.username; default: the `default`
    /// user).
    #[arg(long, env = "SIPCLUSTER_REDIS_USERNAME")]
    pub redis_username: Option<String>,
    /// Metrics/health HTTP address, or `off`.
    #[arg(long, env = "SIPCLUSTER_METRICS")]
    pub metrics: Option<String>,
    /// Users file (TOML) provisioned at start.
    #[arg(long, env = "SIPCLUSTER_USERS")]
    pub users: Option<PathBuf>,
    /// When Redis lost its data: unready (answer UNAVAILABLE until the marker is back)
    /// or reprovision (provision the users file again).
    #[arg(long, env = "SIPCLUSTER_LOCATION_ON_DATA_LOSS")]
    pub on_data_loss: Option<String>,
    #[command(flatten)]
    pub log: crate::process::LogArgs,
    /// Worker threads (0 = one per CPU).
    #[arg(long, env = "SIPCLUSTER_WORKERS", default_value_t = 0)]
    pub workers: usize,
}

/// The file's settings, then the environment's and the flags', validated.
pub fn build_location_config(a: &LocationArgs) -> Result<LocationConfig> {
    let mut cfg = read_config(a.config.as_deref(), LocationConfig::from_toml)?;
    if let Some(l) = a.listen {
        cfg.listen = l;
    }
    if let Some(b) = &a.backend {
        cfg.backend.kind = b.clone();
    }
    if !a.redis.is_empty() {
        cfg.backend.urls = a.redis.clone();
        if a.backend.is_none() && cfg.backend.kind == "memory" {
            cfg.backend.kind = if a.redis.len() > 1 {
                "redis-cluster".into()
            } else {
                "redis".into()
            };
        }
    }
    if let Some(p) = &a.prefix {
        cfg.backend.prefix = p.clone();
    }
    // The password file and the password are one setting given two ways: either one from
    // the environment or a flag replaces whatever the file said; both at once are refused.
    match (&a.redis_password_file, &a.redis_password) {
        (Some(_), Some(_)) => anyhow::bail!(
            "backend.password_file: both --redis-password-file (SIPCLUSTER_REDIS_PASSWORD_FILE) \
             and --redis-password (SIPCLUSTER_REDIS_PASSWORD) are set: give the Redis password \
             one way"
        ),
        (Some(f), None) => {
            cfg.backend.password_file = Some(f.clone());
            cfg.backend.password = None;
        }
        (None, Some(p)) => {
            cfg.backend.password = Some(location::backend::RedisPassword::new(p.as_str()));
            cfg.backend.password_file = None;
        }
        (None, None) => {}
    }
    if a.redis_username.is_some() {
        cfg.backend.username = a.redis_username.clone();
    }
    if let Some(m) = &a.metrics {
        cfg.metrics_listen = listen_flag("metrics", m)?;
    }
    if a.users.is_some() {
        cfg.users_file = a.users.clone();
    }
    if let Some(o) = &a.on_data_loss {
        cfg.backend.on_data_loss = match o.as_str() {
            "unready" => location::config::OnDataLoss::Unready,
            "reprovision" => location::config::OnDataLoss::Reprovision,
            other => anyhow::bail!("--on-data-loss {other:?}: expected unready or reprovision"),
        };
    }
    a.edge_token.apply(&mut cfg.api.edge_token_file);
    a.admin_token.apply(&mut cfg.api.admin_token_file);
    cfg.validate()?;
    Ok(cfg)
}

/// Run until SIGTERM.
pub fn run(a: &LocationArgs) -> Result<()> {
    let cfg = build_location_config(a)?;
    let _trace = a.log.init("sipcluster-location")?;
    runtime(a.workers)?.block_on(async {
        let handle = location::start(cfg).await?;
        shutdown_signal().await;
        tracing::info!("stopping");
        handle.stop().await;
        Ok(())
    })
}
