//! What every long-running subcommand does the same way: read its TOML file, build the
//! runtime its configuration asks for, set up logging, wait for SIGTERM or Ctrl-C.

use std::net::SocketAddr;

use anyhow::{Context, Result};

/// The configuration file's settings, or the defaults without a file.
pub fn read_config<T: Default, E: std::error::Error + Send + Sync + 'static>(
    path: Option<&std::path::Path>,
    parse: fn(&str) -> Result<T, E>,
) -> Result<T> {
    let Some(p) = path else {
        return Ok(T::default());
    };
    let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    parse(&text).with_context(|| format!("in {}", p.display()))
}

/// A listening address flag: `ADDR:PORT`, or `off`.
pub fn listen_flag(flag: &str, value: &str) -> Result<Option<SocketAddr>> {
    telemetry::listen::parse(value).map_err(|e| anyhow::anyhow!("--{flag} {e}"))
}

/// The log flags of the services configured by flags alone (location, dispatcher, media
/// relay); the edge and the all-in-one read theirs into their configuration file's
/// `[log]` section instead.
#[derive(clap::Args, Clone)]
pub struct LogArgs {
    /// Log format: plain or json.
    #[arg(long, env = "SIPCLUSTER_LOG_FORMAT", default_value = "plain")]
    pub log_format: String,
    /// Log filter: a level (error, warn, info, debug, trace) or target=level pairs.
    #[arg(long, env = "SIPCLUSTER_LOG", default_value = "info")]
    pub log_level: String,
}

impl LogArgs {
    /// Install the subscriber these flags describe (refused when they would print
    /// nothing).
    pub fn init(&self) -> Result<()> {
        init_logging(&self.log_level, &self.log_format)
    }

    /// What [`LogArgs::init`] refuses, refused without installing anything
    /// (`check-config`).
    pub fn check(&self) -> Result<()> {
        telemetry::logging::check_level(&self.log_level)?;
        telemetry::logging::check_format(&self.log_format)?;
        Ok(())
    }

    /// The flags as given again on a command line: these services' files have no `[log]`.
    pub fn as_flags(&self) -> String {
        format!(
            "--log-level {} --log-format {}",
            self.log_level, self.log_format
        )
    }
}

/// Install the log subscriber; a level or format that would print nothing (a typo) is
/// refused here, before anything binds.
pub fn init_logging(level: &str, format: &str) -> Result<()> {
    telemetry::logging::init(level, format).map_err(anyhow::Error::from)
}

/// Resolves on SIGTERM (Kubernetes, systemd) or Ctrl-C.
pub async fn shutdown_signal() {
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

/// A multi-threaded runtime with `workers` threads (0: one per CPU). Built from the
/// configuration, so it cannot be `#[tokio::main]`.
pub fn runtime(workers: usize) -> Result<tokio::runtime::Runtime> {
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if workers > 0 {
        rt.worker_threads(workers);
    }
    rt.build().context("starting the runtime")
}
