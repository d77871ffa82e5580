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
pub mod users;

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
