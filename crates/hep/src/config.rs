//! The `[hep]` section of a service's configuration: where traced SIP messages go.

use std::fmt;

use serde::{Deserialize, Serialize};
use telemetry::ConfigError;

/// How packets reach the collector.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum HepTransport {
    /// One datagram per packet (Homer's and sngrep's default listener).
    #[default]
    Udp,
    /// One connection, packets back to back; reconnected when it breaks.
    Tcp,
}

/// HEP export settings. Off by default: a copy of every message costs an encode and a
/// send, and a collector must be there to take it.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HepConfig {
    /// Export at all.
    pub enabled: bool,
    /// The collector, `host:port` (`[v6]:port` for an IPv6 literal). A name is resolved
    /// when the exporter starts (UDP) or at each connection (TCP).
    pub address: String,
    /// `udp` or `tcp`.
    pub transport: HepTransport,
    /// Share of calls exported, 0 to 1. The choice is made on a hash of the Call-ID, the
    /// same in every process of the cluster: a call is exported whole (every message, at
    /// every node it crosses) or not at all.
    pub sample_ratio: f64,
    /// The capture agent id the collector shows for this node.
    pub capture_id: u32,
    /// The collector's password (HEP auth key chunk), when it wants one. Never logged,
    /// never printed by `check-config`.
    #[serde(skip_serializing)]
    pub password: Option<String>,
    /// Packets waiting for the collector, at most; past it new ones are dropped and
    /// counted (`sipcluster_hep_dropped_total{reason="queue_full"}`).
    pub queue: usize,
    /// TCP: a write the collector has not taken within this time is given up and the
    /// connection reopened, ms. A collector that stops reading costs drops, never a wait.
    pub write_timeout_ms: u64,
}

impl Default for HepConfig {
    fn default() -> Self {
        HepConfig {
            enabled: false,
            address: "127.0.0.1:9060".into(),
            transport: HepTransport::Udp,
            sample_ratio: 1.0,
            // Kamailio's and OpenSIPS's default capture id.
            capture_id: 1,
            password: None,
            // ~10 MB of typical SIP messages: a few seconds of a busy edge's traffic,
            // enough to ride out a collector's hiccup.
            queue: 10_000,
            write_timeout_ms: 1000,
        }
    }
}

impl fmt::Debug for HepConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HepConfig")
            .field("enabled", &self.enabled)
            .field("address", &self.address)
            .field("transport", &self.transport)
            .field("sample_ratio", &self.sample_ratio)
            .field("capture_id", &self.capture_id)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("queue", &self.queue)
            .field("write_timeout_ms", &self.write_timeout_ms)
            .finish()
    }
}

/// The most packets the queue may hold: past it a stalled collector would cost the
/// process gigabytes before the first drop.
const MAX_QUEUE: usize = 1_000_000;

impl HepConfig {
    /// Whether these settings can run, with what to fix. Checked whether or not export is
    /// enabled, so that a mistake shows before someone turns it on during an incident.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(ConfigError::new(
                "hep.sample_ratio",
                format!("{}: a share of calls between 0 and 1", self.sample_ratio),
            ));
        }
        if self.queue == 0 || self.queue > MAX_QUEUE {
            return Err(ConfigError::new(
                "hep.queue",
                format!("{}: between 1 and {MAX_QUEUE} packets", self.queue),
            ));
        }
        if self.write_timeout_ms == 0 {
            return Err(ConfigError::new("hep.write_timeout_ms", "at least 1"));
        }
        if let Some(p) = &self.password {
            // The key chunk and the message share one packet of at most 64 KiB.
            if p.is_empty() || p.len() > 1024 {
                return Err(ConfigError::new(
                    "hep.password",
                    "1 to 1024 bytes, or leave it out",
                ));
            }
        }
        host_port(&self.address).map(|_| ())
    }
}

/// `address` split into host and port, or what is wrong with it.
pub(crate) fn host_port(address: &str) -> Result<(&str, u16), ConfigError> {
    let bad = |why: &str| {
        ConfigError::new(
            "hep.address",
            format!(
                "{address:?}: {why}; give host:port, e.g. \"127.0.0.1:9060\" or \"homer:9060\""
            ),
        )
    };
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err(bad("no port"));
    };
    let port: u16 = match port.parse() {
        Ok(p) if p != 0 => p,
        _ => return Err(bad("the port is not 1 to 65535")),
    };
    let host = match host.strip_prefix('[') {
        Some(h) => h.strip_suffix(']').ok_or_else(|| bad("unclosed ["))?,
        None if host.contains(':') => return Err(bad("an IPv6 address needs [brackets]")),
        None => host,
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_off_and_valid() {
        let c = HepConfig::default();
        assert!(!c.enabled);
        assert_eq!(c.address, "127.0.0.1:9060");
        assert_eq!(c.transport, HepTransport::Udp);
        assert!((c.sample_ratio - 1.0).abs() < f64::EPSILON);
        assert_eq!(c.queue, 10_000);
        c.validate().unwrap();
    }

    #[test]
    fn reads_toml_and_refuses_unknown_keys() {
        let c: HepConfig = toml::from_str(
            "enabled = true\naddress = \"[::1]:9061\"\ntransport = \"tcp\"\nsample_ratio = 0.25\ncapture_id = 7\npassword = \"pw\"\n",
        )
        .unwrap();
        assert!(c.enabled);
        assert_eq!(c.transport, HepTransport::Tcp);
        assert_eq!(c.capture_id, 7);
        assert_eq!(c.password.as_deref(), Some("pw"));
        assert_eq!(c.queue, 10_000, "unset keys keep their default");
        c.validate().unwrap();
        assert_eq!(host_port(&c.address).unwrap(), ("::1", 9061));

        let e = toml::from_str::<HepConfig>("adress = \"x:1\"\n").unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        let e = toml::from_str::<HepConfig>("transport = \"sctp\"\n").unwrap_err();
        assert!(e.to_string().contains("unknown variant"), "{e}");
    }

    #[test]
    fn validate_names_the_field_and_the_fix() {
        let bad = |f: fn(&mut HepConfig)| {
            let mut c = HepConfig::default();
            f(&mut c);
            c.validate().unwrap_err()
        };
        let e = bad(|c| c.sample_ratio = 1.5);
        assert_eq!(e.field, "hep.sample_ratio");
        assert!(e.to_string().contains("between 0 and 1"), "{e}");
        assert_eq!(bad(|c| c.sample_ratio = f64::NAN).field, "hep.sample_ratio");
        assert_eq!(bad(|c| c.queue = 0).field, "hep.queue");
        assert_eq!(
            bad(|c| c.write_timeout_ms = 0).field,
            "hep.write_timeout_ms"
        );
        assert_eq!(
            bad(|c| c.password = Some(String::new())).field,
            "hep.password"
        );
        for a in [
            "127.0.0.1",
            "127.0.0.1:0",
            ":9060",
            "::1:9060",
            "[::1:9060",
            "h:port",
        ] {
            let c = HepConfig {
                address: a.into(),
                ..HepConfig::default()
            };
            let e = c.validate().unwrap_err();
            assert_eq!(e.field, "hep.address", "{a}");
            assert!(e.to_string().contains("host:port"), "{a}: {e}");
        }
        assert_eq!(host_port("homer:9060").unwrap(), ("homer", 9060));
    }

    #[test]
    fn the_password_is_never_printed() {
        let c = HepConfig {
            password: Some("hunter2".into()),
            ..HepConfig::default()
        };
        let dbg = format!("{c:?}");
        assert!(
            !dbg.contains("hunter2") && dbg.contains("<redacted>"),
            "{dbg}"
        );
        let toml = toml::to_string(&c).unwrap();
        assert!(
            !toml.contains("hunter2") && !toml.contains("password"),
            "{toml}"
        );
    }
}
