//! `sipcluster check-config [SERVICE]`: resolve a service's configuration (file,
//! `SIPCLUSTER_*` environment, flags) exactly as the service does at start, validate it,
//! read every file it names (token files, users file, secret files), and print it as TOML
//! that the service's `--config` reads back to the same settings. Nothing binds or
//! connects, so a deployment's settings can be checked without running it.
//!
//! Without a service it checks the edge / all-in-one configuration, as it did before the
//! services had their own (the README and the tests use that form).
//!
//! No secret is ever printed, whether it came from the file, the environment or a flag:
//! the output gets copied, pasted and committed. Token, password and users files are
//! printed by path; the edges' nonce secret, the dispatcher's secret and a Redis password
//! given in the environment are left out with a comment saying how to give them again.

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use edge::EdgeConfig;

use crate::cmd::all_in_one::AllInOneArgs;
use crate::cmd::dispatcher::{DispatcherArgs, build_dispatcher_config};
use crate::cmd::edge::EdgeArgs;
use crate::cmd::location::{LocationArgs, build_location_config};
use crate::cmd::media_relay::{MediaRelayArgs, build_media_relay_config};
use telemetry::config_file::to_toml;

/// A service to check, or (none) the edge / all-in-one flags.
#[derive(Args)]
#[command(
    args_conflicts_with_subcommands = true,
    subcommand_value_name = "SERVICE",
    subcommand_help_heading = "Services"
)]
pub struct CheckConfigArgs {
    #[command(subcommand)]
    service: Option<Service>,
    #[command(flatten)]
    edge: AllInOneArgs,
}

/// The services, each taking exactly the flags and environment of its own subcommand.
#[derive(Subcommand)]
enum Service {
    /// `sipcluster all-in-one`'s configuration (also refuses what only a cluster edge may
    /// use: a location service, control APIs off loopback).
    AllInOne(AllInOneArgs),
    /// `sipcluster edge`'s configuration (cluster mode: a location service is required).
    Edge(EdgeArgs),
    /// `sipcluster location`'s configuration (reads its token files, users file and Redis
    /// password file).
    Location(LocationArgs),
    /// `sipcluster dispatcher`'s configuration (reads its admin token file and kubeconfig).
    Dispatcher(DispatcherArgs),
    /// `sipcluster media-relay`'s configuration (reads its token files).
    MediaRelay(MediaRelayArgs),
}

/// Print the resolved configuration, or say what is wrong with it.
pub fn run(a: &CheckConfigArgs) -> Result<()> {
    let text = match &a.service {
        None => {
            let cfg = crate::cmd::all_in_one::resolve(&a.edge)?;
            cfg.validate()?;
            a.edge.edge.trace.settings().validate()?;
            all_in_one_files(&cfg)?
        }
        Some(Service::AllInOne(x)) => {
            x.edge.trace.settings().validate()?;
            all_in_one_files(&crate::cmd::all_in_one::build_config(x)?)?
        }
        Some(Service::Edge(x)) => edge(x)?,
        Some(Service::Location(x)) => location(x)?,
        Some(Service::Dispatcher(x)) => dispatcher(x)?,
        Some(Service::MediaRelay(x)) => media_relay(x)?,
    };
    print!("{text}");
    Ok(())
}

/// The all-in-one reads its users file and its token files at start.
fn all_in_one_files(cfg: &EdgeConfig) -> Result<String> {
    edge::load_users(cfg)?;
    edge_token_files(cfg)?;
    if let Some(f) = &cfg.all_in_one.admin_token_file {
        grpc_auth::Token::from_file(f).context("all_in_one.admin_token_file")?;
    }
    if let Some(tls) = cfg.tls.config() {
        sip_transport::tls::check_files(&tls).context("tls")?;
    }
    Ok(cfg.to_toml())
}

/// The edge's token files. Every one set is read, used or not yet: a bad one should show
/// now, not when an endpoint or a relay is added.
fn edge_token_files(cfg: &EdgeConfig) -> Result<()> {
    edge::config::read_token("location.token_file", cfg.location.token_file.as_deref())?;
    edge::config::read_token("media.token_file", cfg.media.token_file.as_deref())?;
    Ok(())
}

/// A cluster edge: its users are the location service's, so it reads no users file.
fn edge(a: &EdgeArgs) -> Result<String> {
    let cfg = crate::cmd::edge::build_cluster_config(a)?;
    edge_token_files(&cfg)?;
    a.trace.settings().validate()?;
    Ok(cfg.to_toml())
}

fn location(a: &LocationArgs) -> Result<String> {
    let cfg = build_location_config(a)?;
    a.log.check()?;
    location::check_before_start(&cfg)?;
    let mut notes = vec![flags_only(&format!(
        "{} --workers {}",
        a.log.as_flags(),
        a.workers
    ))];
    if cfg.backend.password.is_some() {
        notes.push(
            "The Redis password is set but not printed: pass it again \
             (SIPCLUSTER_REDIS_PASSWORD)."
                .into(),
        );
    }
    Ok(to_toml("location", &cfg, &notes))
}

fn dispatcher(a: &DispatcherArgs) -> Result<String> {
    let cfg = build_dispatcher_config(a)?;
    a.log.check()?;
    dispatcher::check_before_start(&cfg)?;
    let mut notes = vec![flags_only(&a.log.as_flags())];
    if cfg.secret.is_some() {
        notes.push(
            "secret is set but not printed: pass it again (SIPCLUSTER_DISPATCHER_SECRET).".into(),
        );
    }
    Ok(to_toml("dispatcher", &cfg, &notes))
}

fn media_relay(a: &MediaRelayArgs) -> Result<String> {
    let cfg = build_media_relay_config(a)?;
    a.log.check()?;
    // What `media_relay::start` reads before it binds.
    cfg.api.load()?;
    let (file, mut notes) = MediaRelayFile::of(&cfg);
    notes.insert(0, flags_only(&a.log.as_flags()));
    Ok(to_toml("media-relay", &file, &notes))
}

/// The note on the settings these services take from flags and the environment only
/// (their files have no key for them).
fn flags_only(flags: &str) -> String {
    format!("Flags and environment only (not in this file): {flags}")
}

/// The media relay's settings as its file spells them, for printing. The media relay's
/// configuration type is not `Serialize`, so this names every field: the destructuring
/// in [`MediaRelayFile::of`] has no `..`, and a field added there fails to compile here
/// until it is printed too.
#[derive(serde::Serialize)]
struct MediaRelayFile<'a> {
    instance: &'a str,
    control_listen: SocketAddr,
    metrics_listen: Option<SocketAddr>,
    bind_v4: Option<IpAddr>,
    bind_v6: Option<IpAddr>,
    advertise_v4: Option<IpAddr>,
    advertise_v6: Option<IpAddr>,
    port_min: u16,
    port_max: u16,
    quarantine_secs: u64,
    idle_timeout_secs: u64,
    max_duration_secs: u64,
    max_sessions: usize,
    relatch_after_ms: u64,
    workers: usize,
    drain_secs: u64,
    coalesce_us: u64,
    api: &'a grpc_auth::TokenFiles,
}

impl<'a> MediaRelayFile<'a> {
    /// The file, and a note for each setting its format cannot say: an address turned
    /// off whose default is on (the file has no "off" for those) is left out, and would
    /// read back as the default.
    fn of(c: &'a media_relay::MediaRelayConfig) -> (MediaRelayFile<'a>, Vec<String>) {
        let media_relay::MediaRelayConfig {
            instance,
            control_listen,
            api,
            metrics_listen,
            bind_v4,
            bind_v6,
            advertise_v4,
            advertise_v6,
            port_min,
            port_max,
            quarantine_secs,
            idle_timeout_secs,
            max_duration_secs,
            max_sessions,
            relatch_after_ms,
            workers,
            drain_secs,
            coalesce_us,
        } = c;
        let defaults = media_relay::MediaRelayConfig::default();
        let mut notes = Vec::new();
        for (key, off, default_on, how) in [
            (
                "metrics_listen",
                metrics_listen.is_none(),
                defaults.metrics_listen.is_some(),
                "--metrics off (SIPCLUSTER_METRICS=off)",
            ),
            (
                "bind_v4",
                bind_v4.is_none(),
                defaults.bind_v4.is_some(),
                "--bind-v4 off (SIPCLUSTER_MEDIA_BIND_V4=off)",
            ),
            (
                "bind_v6",
                bind_v6.is_none(),
                defaults.bind_v6.is_some(),
                "--bind-v6 off (SIPCLUSTER_MEDIA_BIND_V6=off)",
            ),
        ] {
            if off && default_on {
                notes.push(format!(
                    "{key} is off, which this file cannot say: pass {how} again."
                ));
            }
        }
        let file = MediaRelayFile {
            instance,
            control_listen: *control_listen,
            metrics_listen: *metrics_listen,
            bind_v4: *bind_v4,
            bind_v6: *bind_v6,
            advertise_v4: *advertise_v4,
            advertise_v6: *advertise_v6,
            port_min: *port_min,
            port_max: *port_max,
            quarantine_secs: *quarantine_secs,
            idle_timeout_secs: *idle_timeout_secs,
            max_duration_secs: *max_duration_secs,
            max_sessions: *max_sessions,
            relatch_after_ms: *relatch_after_ms,
            workers: *workers,
            drain_secs: *drain_secs,
            coalesce_us: *coalesce_us,
            api,
        };
        (file, notes)
    }
}
