//! The media relay's configuration: one typed struct from TOML, overridden by the
//! binary's `SIPCLUSTER_MEDIA_*` environment and flags, validated at start.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use media_core::EngineConfig;
use serde::Deserialize;
use telemetry::ConfigError;

/// Everything the media relay needs to start.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MediaRelayConfig {
    /// This relay's name in replies and logs (the pod name in Kubernetes).
    pub instance: String,
    /// gRPC control address.
    pub control_listen: SocketAddr,
    /// The bearer tokens the control API accepts (`[api]`): the edges' (every call) and
    /// the operators' (looking and draining). At least one is required.
    pub api: grpc_auth::TokenFiles,
    /// `/metrics`, `/healthz`, `/readyz`; `None` to disable.
    pub metrics_listen: Option<SocketAddr>,
    /// Address the IPv4 media sockets bind (`0.0.0.0` for all); `None`: no IPv4.
    pub bind_v4: Option<IpAddr>,
    /// Address the IPv6 media sockets bind (`::` for all); `None`: no IPv6.
    pub bind_v6: Option<IpAddr>,
    /// The IPv4 address put into SDP (the pod's public address, e.g. from the Downward
    /// API); defaults to `bind_v4` when that is a concrete address.
    pub advertise_v4: Option<IpAddr>,
    /// The IPv6 address put into SDP.
    pub advertise_v6: Option<IpAddr>,
    /// Lowest media port.
    pub port_min: u16,
    /// Highest media port. Every port of the range may be an open socket: at start the
    /// soft `RLIMIT_NOFILE` is raised to fit, and when the hard limit is too low only the
    /// ports that fit are used ([`crate::descriptors`]).
    pub port_max: u16,
    /// Seconds a released port pair stays unused.
    pub quarantine_secs: u64,
    /// Seconds without any packet after which a session is ended.
    pub idle_timeout_secs: u64,
    /// Seconds after which any session is ended.
    pub max_duration_secs: u64,
    /// Sessions at most (over all workers); lowered at start when `RLIMIT_NOFILE` is too
    /// low for the whole port range ([`crate::descriptors`]).
    pub max_sessions: usize,
    /// Milliseconds a latched source must be silent before any other may replace it (a
    /// source matching the party's signalled address better replaces it at once).
    pub relatch_after_ms: u64,
    /// Forwarding threads; each owns a slice of the port range and its sessions.
    pub workers: usize,
    /// On SIGTERM: refuse new sessions, keep the existing ones at most this long.
    pub drain_secs: u64,
    /// Microseconds a worker lets packets gather after each wake-up (0: none). A few
    /// hundred trade that much added delay for far fewer context switches under load.
    pub coalesce_us: u64,
}

impl Default for MediaRelayConfig {
    fn default() -> Self {
        MediaRelayConfig {
            instance: "media-relay".into(),
            control_listen: SocketAddr::from(([127, 0, 0, 1], 50053)),
            api: grpc_auth::TokenFiles::default(),
            // Loopback unless configured, as every control and metrics listener: a pod
            // config (deploy/media-relay.toml) opens them deliberately.
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9093))),
            bind_v4: Some(IpAddr::from([127, 0, 0, 1])),
            bind_v6: None,
            advertise_v4: None,
            advertise_v6: None,
            port_min: 30_000,
            port_max: 39_999,
            quarantine_secs: 10,
            idle_timeout_secs: 60,
            max_duration_secs: 4 * 3600,
            max_sessions: 100_000,
            relatch_after_ms: 2000,
            workers: 1,
            drain_secs: 3600,
            coalesce_us: 200,
        }
    }
}

impl MediaRelayConfig {
    /// Parse a TOML file's text.
    pub fn from_toml(text: &str) -> Result<MediaRelayConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::new("file", e.to_string()))
    }

    /// The address put into SDP for `v6`, if that family is served.
    #[must_use]
    pub fn advertised(&self, v6: bool) -> Option<IpAddr> {
        let (bind, adv) = if v6 {
            (self.bind_v6, self.advertise_v6)
        } else {
            (self.bind_v4, self.advertise_v4)
        };
        bind?;
        adv.or(bind.filter(|ip| !ip.is_unspecified()))
    }

    /// Check everything that can be checked before binding.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.bind_v4.is_none() && self.bind_v6.is_none() {
            return Err(ConfigError::new(
                "bind_v4/bind_v6",
                "at least one address family must be served",
            ));
        }
        for (v6, bind) in [(false, self.bind_v4), (true, self.bind_v6)] {
            let Some(ip) = bind else { continue };
            if ip.is_ipv6() != v6 {
                return Err(ConfigError::new(
                    if v6 { "bind_v6" } else { "bind_v4" },
                    format!("{ip} is not of that family"),
                ));
            }
            if self.advertised(v6).is_none() {
                return Err(ConfigError::new(
                    if v6 { "advertise_v6" } else { "advertise_v4" },
                    format!(
                        "required when binding {ip}: the address clients send media to (the pod's address)"
                    ),
                ));
            }
        }
        if self.workers == 0 || self.workers > 64 {
            return Err(ConfigError::new("workers", "between 1 and 64"));
        }
        let pairs = usize::from(self.port_max.saturating_sub(self.port_min)) / 2;
        if self.port_min < 1024 || pairs < 2 * self.workers {
            return Err(ConfigError::new(
                "port_min/port_max",
                format!(
                    "a range above 1023 with at least two port pairs per worker ({}..={} has {pairs})",
                    self.port_min, self.port_max
                ),
            ));
        }
        if self.idle_timeout_secs == 0 || self.max_duration_secs == 0 {
            return Err(ConfigError::new(
                "idle_timeout_secs/max_duration_secs",
                "must be positive",
            ));
        }
        if self.coalesce_us > 5000 {
            return Err(ConfigError::new(
                "coalesce_us",
                "at most 5000: it is added to every packet's delay",
            ));
        }
        if self.instance.is_empty() {
            return Err(ConfigError::new("instance", "must not be empty"));
        }
        Ok(())
    }

    /// The engine configuration of worker `i` of `n`: its slice of the port range.
    #[must_use]
    pub fn engine(&self, i: usize, n: usize) -> EngineConfig {
        let pairs = usize::from(self.port_max - self.port_min).div_ceil(2);
        let per = pairs / n;
        let min = usize::from(self.port_min) + 2 * per * i;
        let max = if i + 1 == n {
            usize::from(self.port_max)
        } else {
            min + 2 * per - 1
        };
        EngineConfig {
            port_min: u16::try_from(min).unwrap_or(u16::MAX),
            port_max: u16::try_from(max).unwrap_or(u16::MAX),
            quarantine: Duration::from_secs(self.quarantine_secs),
            idle_timeout: Duration::from_secs(self.idle_timeout_secs),
            max_duration: Duration::from_secs(self.max_duration_secs),
            max_sessions: self.max_sessions.div_ceil(n),
            relatch_after: Duration::from_millis(self.relatch_after_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_workers_split_the_range() {
        let c = MediaRelayConfig::default();
        c.validate().expect("defaults");
        let (a, b) = (c.engine(0, 2), c.engine(1, 2));
        assert_eq!((a.port_min, b.port_max), (30_000, 39_999));
        assert_eq!(a.port_max + 1, b.port_min);
        assert_eq!(b.port_min % 2, 0);
    }

    #[test]
    fn the_pod_file_is_the_defaults_but_its_addresses_and_tokens() {
        let text = include_str!("../../../deploy/media-relay.toml");
        let c = MediaRelayConfig::from_toml(text).expect("deploy/media-relay.toml");
        assert_eq!(c.control_listen, "0.0.0.0:50053".parse().expect("addr"));
        assert_eq!(
            c.metrics_listen,
            Some("0.0.0.0:9093".parse().expect("addr"))
        );
        assert!(c.api.edge_token_file.is_some() && c.api.admin_token_file.is_some());
        let d = MediaRelayConfig::default();
        assert!(d.control_listen.ip().is_loopback());
        assert!(d.metrics_listen.is_some_and(|m| m.ip().is_loopback()));
        assert_eq!(
            MediaRelayConfig {
                control_listen: d.control_listen,
                metrics_listen: d.metrics_listen,
                api: d.api.clone(),
                ..c
            },
            d
        );
    }

    #[test]
    fn a_wildcard_bind_needs_an_advertised_address() {
        let c = MediaRelayConfig::from_toml("bind_v4 = \"0.0.0.0\"").expect("toml");
        let e = c.validate().expect_err("no advertise");
        assert_eq!(e.field, "advertise_v4");
        let c =
            MediaRelayConfig::from_toml("bind_v4 = \"0.0.0.0\"\nadvertise_v4 = \"198.51.100.7\"")
                .expect("toml");
        c.validate().expect("valid");
        assert_eq!(
            c.advertised(false),
            Some("198.51.100.7".parse().expect("ip"))
        );
        assert!(MediaRelayConfig::from_toml("bogus = 1").is_err());
        let c = MediaRelayConfig {
            port_min: 30_000,
            port_max: 30_002,
            ..MediaRelayConfig::default()
        };
        assert_eq!(c.validate().expect_err("tiny").field, "port_min/port_max");
    }
}
