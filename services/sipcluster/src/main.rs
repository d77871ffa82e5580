//! `sipcluster`: the command that runs sipcluster.
//!
//! `sipcluster all-in-one` runs every role in one process with embedded defaults (the
//! edge proxy and registrar over in-memory registrations and the demo users). Settings
//! come from a TOML file (`--config`), then `SIPCLUSTER_*` environment variables, then
//! flags; the result is validated before anything binds.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use edge::EdgeConfig;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "sipcluster", version, about = "A cloud-native SIP cluster")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every role in one process (edge proxy + registrar, in-memory location).
    AllInOne(RunArgs),
    /// Validate a configuration (file + environment + flags) and print the result.
    CheckConfig(RunArgs),
}

#[derive(Args, Clone)]
struct RunArgs {
    /// TOML configuration file (see deploy/all-in-one/sipcluster.toml).
    #[arg(long, env = "SIPCLUSTER_CONFIG")]
    config: Option<PathBuf>,
    /// Listen on this address for both UDP and TCP (e.g. 0.0.0.0:5060).
    #[arg(long, env = "SIPCLUSTER_LISTEN")]
    listen: Option<SocketAddr>,
    /// UDP listening addresses (repeatable; replaces the configured ones).
    #[arg(long, env = "SIPCLUSTER_UDP", value_delimiter = ',')]
    udp: Vec<SocketAddr>,
    /// TCP listening addresses (repeatable; replaces the configured ones).
    #[arg(long, env = "SIPCLUSTER_TCP", value_delimiter = ',')]
    tcp: Vec<SocketAddr>,
    /// Address written into Via and Record-Route.
    #[arg(long, env = "SIPCLUSTER_ADVERTISE")]
    advertise: Option<IpAddr>,
    /// Local SIP domains (comma-separated; the first is the default).
    #[arg(long = "domain", env = "SIPCLUSTER_DOMAINS", value_delimiter = ',')]
    domains: Vec<String>,
    /// Metrics/health HTTP address, or `off`.
    #[arg(long, env = "SIPCLUSTER_METRICS")]
    metrics: Option<String>,
    /// Users file (TOML).
    #[arg(long, env = "SIPCLUSTER_USERS")]
    users: Option<PathBuf>,
    /// Nonce secret shared by all edges.
    #[arg(long, env = "SIPCLUSTER_NONCE_SECRET", hide_env_values = true)]
    nonce_secret: Option<String>,
    /// Disable digest authentication (REGISTER and calls).
    #[arg(long, env = "SIPCLUSTER_NO_AUTH")]
    no_auth: bool,
    /// Log format: plain or json.
    #[arg(long, env = "SIPCLUSTER_LOG_FORMAT")]
    log_format: Option<String>,
    /// Log filter, e.g. info or edge=debug.
    #[arg(long, env = "SIPCLUSTER_LOG")]
    log_level: Option<String>,
    /// Worker threads (0 = one per CPU).
    #[arg(long, env = "SIPCLUSTER_WORKERS")]
    workers: Option<usize>,
}

fn build_config(a: &RunArgs) -> Result<EdgeConfig> {
    let mut cfg = match &a.config {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            EdgeConfig::from_toml(&text).with_context(|| format!("in {}", p.display()))?
        }
        None => EdgeConfig::default(),
    };
    if let Some(l) = a.listen {
        cfg.sip.udp = vec![l];
        cfg.sip.tcp = vec![l];
    }
    if !a.udp.is_empty() {
        cfg.sip.udp = a.udp.clone();
    }
    if !a.tcp.is_empty() {
        cfg.sip.tcp = a.tcp.clone();
    }
    if a.advertise.is_some() {
        cfg.sip.advertise = a.advertise;
    }
    if !a.domains.is_empty() {
        cfg.sip.domains = a.domains.clone();
    }
    if let Some(m) = &a.metrics {
        cfg.metrics.listen = if m == "off" {
            None
        } else {
            Some(
                m.parse()
                    .with_context(|| format!("--metrics {m:?}: expected ADDR:PORT or off"))?,
            )
        };
    }
    if a.users.is_some() {
        cfg.auth.users_file = a.users.clone();
    }
    if a.nonce_secret.is_some() {
        cfg.auth.nonce_secret = a.nonce_secret.clone();
    }
    if a.no_auth {
        cfg.auth.register = false;
        cfg.auth.invite = false;
    }
    if let Some(f) = &a.log_format {
        cfg.log.format = f.clone();
    }
    if let Some(l) = &a.log_level {
        cfg.log.level = l.clone();
    }
    if let Some(w) = a.workers {
        cfg.runtime.workers = w;
    }
    cfg.validate()?;
    Ok(cfg)
}

fn init_logging(cfg: &EdgeConfig) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&cfg.log.level)
        .with_context(|| format!("log.level {:?}", cfg.log.level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true);
    if cfg.log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig(a) => {
            let cfg = build_config(&a)?;
            edge::load_users(&cfg)?;
            println!("{cfg:#?}");
            Ok(())
        }
        Command::AllInOne(a) => {
            let cfg = build_config(&a)?;
            init_logging(&cfg)?;
            // The runtime is built from the configuration, so it cannot be `#[tokio::main]`.
            let mut rt = tokio::runtime::Builder::new_multi_thread();
            rt.enable_all();
            if cfg.runtime.workers > 0 {
                rt.worker_threads(cfg.runtime.workers);
            }
            rt.build().context("starting the runtime")?.block_on(async {
                let handle = edge::start(cfg).await?;
                shutdown_signal().await;
                tracing::info!("stopping");
                handle.stop().await;
                Ok(())
            })
        }
    }
}
