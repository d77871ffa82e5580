//! `sipcluster`: the command that runs sipcluster, one file per subcommand in [`cmd`].
//!
//! * `all-in-one` runs every role in one process with embedded defaults;
//! * `edge`, `location`, `dispatcher`, `media-relay` run one service each (cluster mode);
//! * `users`, `registrations` and `dispatcher-admin` are the operator's commands against
//!   the location API and the dispatcher's admin API, presenting the admin token (both
//!   served on loopback by the all-in-one, where these commands look without a flag, with
//!   the token it writes to a per-user file: [`tokens`]);
//! * `check-config [SERVICE]` validates a service's configuration (the edge /
//!   all-in-one's without one), reads the files it names, and prints it as reusable TOML;
//! * `cdr tail` reads the accounting topics and prints the decoded call events and CDRs;
//! * `calls list|show|end` shows and ends the calls in progress across the cluster;
//! * `top` shows rates and state from the services' `/metrics`, refreshed in place.
//!
//! Settings come from a TOML file (`--config`), then `SIPCLUSTER_*` environment
//! variables, then flags; the result is validated before anything binds. Process-wide
//! helpers (runtime, logging, signals) are in [`process`].

mod cmd;
mod process;
mod tokens;

use anyhow::Result;
use clap::{Parser, Subcommand};

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
    /// Run every role in one process (dispatcher, edge proxy + registrar, in-memory
    /// location service and its API, dispatcher admin API).
    AllInOne(cmd::all_in_one::AllInOneArgs),
    /// Run an edge proxy against a location service (cluster mode).
    Edge(cmd::edge::EdgeArgs),
    /// Run the location service.
    Location(cmd::location::LocationArgs),
    /// Provision subscribers through the location service.
    Users(cmd::users::UsersArgs),
    /// List, show and remove registrations through the location service.
    Registrations(cmd::registrations::RegistrationsArgs),
    /// Run the dispatcher (public SIP entry point and load balancer in front of edges).
    Dispatcher(cmd::dispatcher::DispatcherArgs),
    /// Inspect and steer a dispatcher: targets, weights, drain, destination sets.
    DispatcherAdmin(cmd::dispatcher_admin::AdminArgs),
    /// Run a media relay (RTP/RTCP forwarding between call legs, controlled over gRPC).
    MediaRelay(cmd::media_relay::MediaRelayArgs),
    /// Read the accounting topics: call events and CDRs, decoded.
    Cdr(cmd::cdr::CdrArgs),
    /// List, show and end the calls in progress across the cluster (dialog records).
    Calls(cmd::calls::CallsArgs),
    /// Validate a service's configuration (file + environment + flags; without a service,
    /// the edge / all-in-one's), read the files it names, and print it as TOML that its
    /// --config reads back. Nothing is started.
    // Boxed: it holds every service's flags.
    CheckConfig(Box<cmd::check_config::CheckConfigArgs>),
    /// Show the services' traffic and state from their /metrics, rates per second,
    /// refreshed every interval (the all-in-one's 127.0.0.1:9090 without an address).
    Top(cmd::top::TopArgs),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::AllInOne(a) => cmd::all_in_one::run(&a),
        Command::Edge(a) => cmd::edge::run(&a),
        Command::Location(a) => cmd::location::run(&a),
        Command::Users(a) => process::runtime(1)?.block_on(cmd::users::run(a)),
        Command::Registrations(a) => process::runtime(1)?.block_on(cmd::registrations::run(a)),
        Command::Dispatcher(a) => cmd::dispatcher::run(&a),
        Command::DispatcherAdmin(a) => process::runtime(1)?.block_on(cmd::dispatcher_admin::run(a)),
        Command::MediaRelay(a) => cmd::media_relay::run(&a),
        Command::CheckConfig(a) => cmd::check_config::run(&a),
        Command::Cdr(a) => cmd::cdr::run(&a),
        Command::Calls(a) => process::runtime(1)?.block_on(cmd::calls::run(a)),
        Command::Top(a) => cmd::top::run(&a),
    }
}
