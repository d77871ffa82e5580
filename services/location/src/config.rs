//! The location service's configuration: one typed struct from TOML, overridden by the
//! binary's `SIPCLUSTER_LOCATION_*` environment and flags, validated at start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use sip_registrar::Policy;

use crate::backend::RedisOptions;
pub use crate::integrity::OnDataLoss;

/// Everything the location service needs.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LocationConfig {
    /// gRPC listening address.
    pub listen: SocketAddr,
    /// Storage.
    pub backend: BackendConfig,
    /// Registrar policy, the same for every edge (RFC 3261 §10.3).
    pub registrar: Policy,
    /// Dialog record lifetimes.
    pub dialogs: DialogConfig,
    /// Users to provision at start (TOML, the edge's users-file format); existing users
    /// are overwritten, others kept.
    pub users_file: Option<PathBuf>,
    /// Seconds between two counts of AORs/bindings/users (a scan in Redis).
    pub stats_interval_secs: u64,
    /// `/metrics`, `/healthz`, `/readyz` address; none disables.
    pub metrics_listen: Option<SocketAddr>,
    /// Seconds granted to in-flight calls on SIGTERM.
    pub drain_secs: u64,
    /// Serve only the administrative calls (users, registrations, counts: what
    /// `sipcluster users` and `sipcluster registrations` use). The edges' calls
    /// (Register, GetCredentials, dialog records) answer PERMISSION_DENIED, so the API
    /// hands out no HA1 and takes no binding. The all-in-one serves its API this way (its
    /// edge uses the store in process).
    pub admin_only: bool,
    /// The bearer tokens the API accepts (`[api]`): the edges' and the operators'. At
    /// least one is required; see `server::POLICY` for what each role may call.
    pub api: grpc_auth::TokenFiles,
}

/// Which store, and how to reach it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BackendConfig {
    /// `memory`, `redis` or `redis-cluster`.
    pub kind: String,
    /// `redis://host:port` URLs (one for `redis`, seed nodes for `redis-cluster`).
    pub urls: Vec<String>,
    /// Key prefix.
    pub prefix: String,
    /// Multiplexed connections to a standalone Redis.
    pub pool_size: usize,
    /// Per-command timeout, ms.
    pub response_timeout_ms: u64,
    /// Connect timeout, ms.
    pub connect_timeout_ms: u64,
    /// Publish binding changes through Redis, so WatchBindings on any replica sees every
    /// change.
    pub publish_events: bool,
    /// When the store lost its data (its provisioning marker is gone: Redis restarted
    /// empty or was flushed): `unready` (default) answers UNAVAILABLE and is not ready
    /// until the marker is back (a restore, or a location replica restarted);
    /// `reprovision` provisions `users_file` again and serves. See [`OnDataLoss`].
    pub on_data_loss: OnDataLoss,
}

/// Dialog record lifetimes.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DialogConfig {
    /// TTL of a live dialog record unless the writer gives one (the longest call kept
    /// without refresh), s.
    pub ttl_secs: u32,
    /// How long an ended record stays readable (for accounting to collect it), s.
    pub ended_ttl_secs: u32,
}

impl Default for LocationConfig {
    fn default() -> LocationConfig {
        LocationConfig {
            // Loopback unless configured: the API serves credentials, so reaching it from
            // other hosts is a deliberate setting (deploy/location.toml, with tokens).
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            backend: BackendConfig::default(),
            registrar: Policy::default(),
            dialogs: DialogConfig::default(),
            users_file: None,
            stats_interval_secs: 15,
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9091))),
            drain_secs: 5,
            admin_only: false,
            api: grpc_auth::TokenFiles::default(),
        }
    }
}

impl Default for BackendConfig {
    fn default() -> BackendConfig {
        BackendConfig {
            kind: "memory".into(),
            urls: Vec::new(),
            prefix: "sc".into(),
            pool_size: 2,
            response_timeout_ms: 250,
            connect_timeout_ms: 500,
            publish_events: true,
            on_data_loss: OnDataLoss::Unready,
        }
    }
}

impl Default for DialogConfig {
    fn default() -> DialogConfig {
        DialogConfig {
            ttl_secs: 12 * 3600,
            ended_ttl_secs: 3600,
        }
    }
}

pub use telemetry::ConfigError;

fn bad(field: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::new(field, problem)
}

impl LocationConfig {
    /// Parse TOML (unknown keys are errors).
    pub fn from_toml(text: &str) -> Result<LocationConfig, ConfigError> {
        toml::from_str(text).map_err(|e| bad("config", e.to_string()))
    }

    /// Check every value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let b = &self.backend;
        match b.kind.as_str() {
            "memory" => {}
            "redis" | "redis-cluster" => {
                if b.urls.is_empty() {
                    return Err(bad(
                        "backend.urls",
                        format!("{} needs at least one redis://host:port URL", b.kind),
                    ));
                }
                if b.kind == "redis" && b.urls.len() > 1 {
                    return Err(bad(
                        "backend.urls",
                        "a standalone Redis takes one URL (use kind = \"redis-cluster\" for several)",
                    ));
                }
                for u in &b.urls {
                    if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
                        return Err(bad("backend.urls", format!("{u:?} is not a redis:// URL")));
                    }
                }
            }
            other => {
                return Err(bad(
                    "backend.kind",
                    format!("{other:?}: expected memory, redis or redis-cluster"),
                ));
            }
        }
        if b.prefix.is_empty() || b.prefix.contains(['{', '}', ' ']) {
            return Err(bad("backend.prefix", "non-empty, without braces or spaces"));
        }
        if !(1..=64).contains(&b.pool_size) {
            return Err(bad("backend.pool_size", "between 1 and 64"));
        }
        if b.response_timeout_ms == 0 || b.connect_timeout_ms == 0 {
            return Err(bad("backend.*_timeout_ms", "must be positive"));
        }
        if b.on_data_loss == OnDataLoss::Reprovision && self.users_file.is_none() {
            return Err(bad(
                "backend.on_data_loss",
                "\"reprovision\" provisions users_file again: give one (or use \"unready\")",
            ));
        }
        let r = &self.registrar;
        if r.min_expires == 0 || r.min_expires > r.max_expires {
            return Err(bad(
                "registrar.min_expires",
                "positive and not above registrar.max_expires",
            ));
        }
        if !(r.min_expires..=r.max_expires).contains(&r.default_expires) {
            return Err(bad(
                "registrar.default_expires",
                "between min_expires and max_expires",
            ));
        }
        if r.max_contacts == 0 {
            return Err(bad("registrar.max_contacts", "at least 1"));
        }
        if self.dialogs.ttl_secs == 0 || self.dialogs.ended_ttl_secs == 0 {
            return Err(bad("dialogs.*ttl_secs", "must be positive"));
        }
        if self.stats_interval_secs == 0 {
            return Err(bad("stats_interval_secs", "must be positive"));
        }
        Ok(())
    }

    /// The Redis options, for the Redis kinds.
    pub fn redis_options(&self) -> RedisOptions {
        let b = &self.backend;
        RedisOptions {
            urls: b.urls.clone(),
            cluster: b.kind == "redis-cluster",
            prefix: b.prefix.clone(),
            pool_size: b.pool_size,
            response_timeout: Duration::from_millis(b.response_timeout_ms),
            connect_timeout: Duration::from_millis(b.connect_timeout_ms),
            publish_events: b.publish_events,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pod_file_is_the_defaults_but_its_addresses_and_tokens() {
        let sample = include_str!("../../../deploy/location.toml");
        let c = LocationConfig::from_toml(sample).unwrap();
        c.validate().unwrap();
        assert_eq!(c.listen, "0.0.0.0:50051".parse().unwrap());
        assert_eq!(c.metrics_listen, Some("0.0.0.0:9091".parse().unwrap()));
        assert!(c.api.edge_token_file.is_some() && c.api.admin_token_file.is_some());
        let d = LocationConfig::default();
        assert!(d.listen.ip().is_loopback() && d.metrics_listen.unwrap().ip().is_loopback());
        assert_eq!(
            LocationConfig {
                listen: d.listen,
                metrics_listen: d.metrics_listen,
                api: d.api.clone(),
                ..c
            },
            d
        );
    }

    #[test]
    fn defaults_validate_and_mistakes_name_their_field() {
        LocationConfig::default().validate().unwrap();
        let c = LocationConfig::from_toml(
            "[backend]\nkind = \"redis-cluster\"\nurls = [\"redis://127.0.0.1:7000\", \"redis://127.0.0.1:7001\"]\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert!(c.redis_options().cluster);
        let err = |t: &str| LocationConfig::from_toml(t).and_then(|c| c.validate().map(|_| c));
        assert_eq!(
            err("[backend]\nkind = \"redis\"\n").unwrap_err().field,
            "backend.urls"
        );
        assert_eq!(
            err("[backend]\nkind = \"etcd\"\n").unwrap_err().field,
            "backend.kind"
        );
        assert_eq!(
            err("[backend]\nkind = \"redis\"\nurls = [\"127.0.0.1:6379\"]\n")
                .unwrap_err()
                .field,
            "backend.urls"
        );
        assert_eq!(
            err("[registrar]\nmin_expires = 600\nmax_expires = 60\n")
                .unwrap_err()
                .field,
            "registrar.min_expires"
        );
        assert_eq!(err("typo = 1\n").unwrap_err().field, "config");
        assert_eq!(
            err("[backend]\non_data_loss = \"reprovision\"\n")
                .unwrap_err()
                .field,
            "backend.on_data_loss"
        );
        assert_eq!(
            err("[backend]\non_data_loss = \"ignore\"\n")
                .unwrap_err()
                .field,
            "config"
        );
        let c = LocationConfig::from_toml(
            "users_file = \"u.toml\"\n[backend]\non_data_loss = \"reprovision\"\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.backend.on_data_loss, OnDataLoss::Reprovision);
    }
}
