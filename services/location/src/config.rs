//! The location service's configuration: one typed struct from TOML, overridden by the
//! binary's `SIPCLUSTER_LOCATION_*` environment and flags, validated at start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sip_registrar::Policy;

use crate::backend::{RedisOptions, RedisPassword, redacted, url_has_password};
pub use crate::integrity::OnDataLoss;

/// Everything the location service needs. Serialized, it is the TOML file that reads
/// back to the same settings (`sipcluster check-config location`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
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
    /// `/metrics`, `/healthz`, `/readyz` address, or `"off"`.
    #[serde(with = "telemetry::listen")]
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
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BackendConfig {
    /// `memory`, `redis` or `redis-cluster`.
    pub kind: String,
    /// `redis://host:port` URLs (one for `redis`, seed nodes for `redis-cluster`). A
    /// password may be written in them (`redis://:PASSWORD@host:port`), but that puts it
    /// in the configuration: prefer `password_file`.
    pub urls: Vec<String>,
    /// File holding the Redis password (`AUTH`), e.g. a Kubernetes Secret mount
    /// (`SIPCLUSTER_REDIS_PASSWORD_FILE`, `--redis-password-file`); read at start, its
    /// trailing newline trimmed. It is used on every connection: a standalone server, a
    /// cluster's seeds and every node found through them (with `requirepass` on every
    /// node, and `masterauth` for their replication). Only the path is ever printed.
    pub password_file: Option<PathBuf>,
    /// The Redis 6 ACL user the password belongs to (`SIPCLUSTER_REDIS_USERNAME`,
    /// `--redis-username`); unset: the `default` user (plain `requirepass`).
    pub username: Option<String>,
    /// The password itself, from the environment (`SIPCLUSTER_REDIS_PASSWORD`, e.g. an
    /// env var from a Secret) instead of `password_file`. Never read from the file (a
    /// `password` key there is refused, as unknown: files are no place for it) nor
    /// printed.
    #[serde(skip)]
    pub password: Option<RedisPassword>,
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
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
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
            password_file: None,
            username: None,
            password: None,
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
                        return Err(bad(
                            "backend.urls",
                            format!("{:?} is not a redis:// URL", redacted(u)),
                        ));
                    }
                    // Two passwords for one connection: which one is meant is a guess, and
                    // a wrong guess shows only as an outage.
                    if url_has_password(u) && (b.password.is_some() || b.password_file.is_some()) {
                        return Err(bad(
                            "backend.password_file",
                            format!(
                                "{} already carries a password: give it in the URL or in \
                                 backend.password_file / SIPCLUSTER_REDIS_PASSWORD, not both",
                                redacted(u)
                            ),
                        ));
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
        if b.password.is_some() && b.password_file.is_some() {
            return Err(bad(
                "backend.password_file",
                "set together with SIPCLUSTER_REDIS_PASSWORD (--redis-password): give the \
                 Redis password one way",
            ));
        }
        if b.username.is_some() && b.password.is_none() && b.password_file.is_none() {
            return Err(bad(
                "backend.username",
                "an ACL user needs its password: backend.password_file \
                 (SIPCLUSTER_REDIS_PASSWORD_FILE) or SIPCLUSTER_REDIS_PASSWORD",
            ));
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

    /// The Redis options, for the Redis kinds; reads the password file (so it fails when
    /// that file cannot be read, naming `backend.password_file`).
    pub fn redis_options(&self) -> Result<RedisOptions, ConfigError> {
        let b = &self.backend;
        Ok(RedisOptions {
            password: self.redis_password()?,
            username: b.username.clone(),
            urls: b.urls.clone(),
            cluster: b.kind == "redis-cluster",
            prefix: b.prefix.clone(),
            pool_size: b.pool_size,
            response_timeout: Duration::from_millis(b.response_timeout_ms),
            connect_timeout: Duration::from_millis(b.connect_timeout_ms),
            publish_events: b.publish_events,
        })
    }

    /// The Redis password: the environment's (`backend.password`), else the content of
    /// `backend.password_file` with its trailing newline trimmed (the one `echo` or an
    /// editor leaves, kept by `kubectl create secret --from-file`); any other character,
    /// a space too, is part of the password.
    pub fn redis_password(&self) -> Result<Option<RedisPassword>, ConfigError> {
        let b = &self.backend;
        if let Some(p) = &b.password {
            return Ok(Some(p.clone()));
        }
        let Some(file) = &b.password_file else {
            return Ok(None);
        };
        let problem = |what: String| {
            bad(
                "backend.password_file",
                format!("{}: {what}", file.display()),
            )
        };
        // A path given by mistake to a large file is refused rather than read whole.
        let len = std::fs::metadata(file)
            .map_err(|e| problem(e.to_string()))?
            .len();
        if len > MAX_PASSWORD_FILE_LEN {
            return Err(problem(format!(
                "{len} bytes is no password (a wrong path?)"
            )));
        }
        let text = std::fs::read_to_string(file).map_err(|e| problem(e.to_string()))?;
        let password = text.trim_end_matches(['\n', '\r']);
        if password.is_empty() {
            return Err(problem("empty".into()));
        }
        Ok(Some(RedisPassword::new(password)))
    }
}

/// Bytes of a password file beyond which it cannot be a password.
const MAX_PASSWORD_FILE_LEN: u64 = 4096;

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
        assert!(c.redis_options().unwrap().cluster);
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

    #[test]
    fn the_redis_password_is_read_from_its_file_and_never_shown() {
        let dir = std::env::temp_dir().join(format!("location-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("redis-password");
        std::fs::write(&file, "s3cret word\n").unwrap();
        let text = format!(
            "[backend]\nkind = \"redis\"\nurls = [\"redis://127.0.0.1:6379\"]\n\
             password_file = \"{}\"\nusername = \"app\"\n",
            file.display()
        );
        let mut c = LocationConfig::from_toml(&text).unwrap();
        c.validate().unwrap();
        let o = c.redis_options().unwrap();
        // Only the final newline goes: the space inside is the password's.
        assert_eq!(o.password.as_ref().unwrap().expose(), "s3cret word");
        assert_eq!(o.username.as_deref(), Some("app"));
        let printed = toml::to_string(&c).unwrap();
        assert!(printed.contains("password_file"), "{printed}");
        c.backend.password = Some(RedisPassword::new("from-the-env"));
        c.backend.password_file = None;
        assert_eq!(
            c.redis_options().unwrap().password.unwrap().expose(),
            "from-the-env"
        );
        let shown = format!(
            "{c:?} {:?} {}",
            c.redis_options().unwrap(),
            toml::to_string(&c).unwrap()
        );
        assert!(
            !shown.contains("s3cret") && !shown.contains("from-the-env"),
            "{shown}"
        );
        // The printed file reads back to the same settings, the password aside.
        let back = LocationConfig::from_toml(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(back.backend.password, None);
        assert_eq!(
            back,
            LocationConfig {
                backend: BackendConfig {
                    password: None,
                    ..c.backend.clone()
                },
                ..c.clone()
            }
        );

        let field = |c: &LocationConfig| c.redis_options().unwrap_err().field;
        c.backend.password = None;
        for (content, problem) in [(None, "No such file"), (Some("\n"), "empty")] {
            let f = dir.join(format!("pw-{problem}"));
            if let Some(t) = content {
                std::fs::write(&f, t).unwrap();
            }
            c.backend.password_file = Some(f);
            assert_eq!(field(&c), "backend.password_file");
            assert!(c.redis_options().unwrap_err().problem.contains(problem));
        }
        let invalid = |t: &str| {
            LocationConfig::from_toml(t)
                .unwrap()
                .validate()
                .unwrap_err()
                .field
        };
        // Two passwords for one connection, a user without one: refused before start.
        assert_eq!(
            invalid(&format!(
                "[backend]\nkind = \"redis\"\nurls = [\"redis://:pw@127.0.0.1:6379\"]\n\
                 password_file = \"{}\"\n",
                file.display()
            )),
            "backend.password_file"
        );
        assert_eq!(
            invalid("[backend]\nusername = \"app\"\n"),
            "backend.username"
        );
        let mut both = LocationConfig::default();
        both.backend.password = Some(RedisPassword::new("x"));
        both.backend.password_file = Some(file.clone());
        assert_eq!(both.validate().unwrap_err().field, "backend.password_file");
        // Never from the file: it is no place for a password.
        assert!(LocationConfig::from_toml("[backend]\npassword = \"x\"\n").is_err());
        // A password in the URL still works, with nothing else set.
        let url = LocationConfig::from_toml(
            "[backend]\nkind = \"redis\"\nurls = [\"redis://:pw@127.0.0.1:6379\"]\n",
        )
        .unwrap();
        url.validate().unwrap();
        assert!(url.redis_options().unwrap().password.is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn metrics_can_be_turned_off_in_the_file() {
        let c = LocationConfig::from_toml("metrics_listen = \"off\"\n").unwrap();
        assert_eq!(c.metrics_listen, None);
        assert!(
            toml::to_string(&c)
                .unwrap()
                .contains("metrics_listen = \"off\"")
        );
    }
}
