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
    #[command(flatten)]
    pub trace: TraceArgs,
}

/// OpenTelemetry traces (every service): off unless an OTLP endpoint is given.
#[derive(clap::Args, Clone, Default)]
pub struct TraceArgs {
    /// Export spans (a SIP transaction, a gRPC call) to this OTLP/gRPC collector,
    /// `http://host:4317`. Unset: no traces.
    #[arg(long, env = "SIPCLUSTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Share of requests traced, 0 to 1, drawn where a request enters the cluster (later
    /// hops follow that decision).
    #[arg(long, env = "SIPCLUSTER_TRACE_SAMPLE_RATIO", default_value_t = 0.01)]
    pub trace_sample_ratio: f64,
}

impl TraceArgs {
    /// The settings these flags describe.
    pub fn settings(&self) -> telemetry::trace::TraceSettings {
        telemetry::trace::TraceSettings {
            otlp_endpoint: self.otlp_endpoint.clone(),
            sample_ratio: self.trace_sample_ratio,
        }
    }

    /// The flags as given again on a command line (none when off).
    pub fn as_flags(&self) -> String {
        match &self.otlp_endpoint {
            Some(e) => format!(
                " --otlp-endpoint {e} --trace-sample-ratio {}",
                self.trace_sample_ratio
            ),
            None => String::new(),
        }
    }
}

impl LogArgs {
    /// Install the subscriber these flags describe (refused when they would print
    /// nothing).
    pub fn init(&self, service: &str) -> Result<Option<telemetry::trace::TraceGuard>> {
        init_logging(&self.log_level, &self.log_format, &self.trace, service)
    }

    /// What [`LogArgs::init`] refuses, refused without installing anything
    /// (`check-config`).
    pub fn check(&self) -> Result<()> {
        telemetry::logging::check_level(&self.log_level)?;
        telemetry::logging::check_format(&self.log_format)?;
        self.trace.settings().validate()?;
        Ok(())
    }

    /// The flags as given again on a command line: these services' files have no `[log]`.
    pub fn as_flags(&self) -> String {
        format!(
            "--log-level {} --log-format {}{}",
            self.log_level,
            self.log_format,
            self.trace.as_flags()
        )
    }
}

/// Install the log subscriber (and the trace exporter when `trace` names an endpoint:
/// keep the guard until exit); a level or format that would print nothing (a typo) is
/// refused here, before anything binds.
pub fn init_logging(
    level: &str,
    format: &str,
    trace: &TraceArgs,
    service: &str,
) -> Result<Option<telemetry::trace::TraceGuard>> {
    telemetry::logging::init(level, format, &trace.settings(), service).map_err(anyhow::Error::from)
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
