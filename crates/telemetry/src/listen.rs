//! A listening address in a configuration file: `"ip:port"`, or `"off"` for an endpoint
//! that is not served. TOML has no null, so without this an endpoint on by default could
//! not be turned off from a file. Use with `#[serde(with = "telemetry::listen")]` on an
//! `Option<SocketAddr>`.

use std::net::SocketAddr;

use serde::{Deserialize, Deserializer, Serializer};

/// Write `None` as `"off"`.
pub fn serialize<S: Serializer>(addr: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
    match addr {
        Some(a) => s.collect_str(a),
        None => s.serialize_str("off"),
    }
}

/// Read `"off"` as `None`, anything else as an address.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(d)?;
    parse(&text).map_err(serde::de::Error::custom)
}

/// `"off"` → `None`, `"ip:port"` → the address (flags use this too).
pub fn parse(text: &str) -> Result<Option<SocketAddr>, String> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    t.parse()
        .map(Some)
        .map_err(|_| format!("{t:?}: expected ip:port (e.g. 127.0.0.1:9090) or off"))
}

#[cfg(test)]
mod tests {
    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct C {
        #[serde(with = "super")]
        a: Option<std::net::SocketAddr>,
    }

    #[test]
    fn off_and_addresses_round_trip() {
        for (text, v) in [
            ("a = \"off\"\n", None),
            (
                "a = \"127.0.0.1:9090\"\n",
                Some("127.0.0.1:9090".parse().unwrap()),
            ),
            ("a = \"[::1]:5060\"\n", Some("[::1]:5060".parse().unwrap())),
        ] {
            let c: C = toml::from_str(text).unwrap();
            assert_eq!(c.a, v);
            assert_eq!(toml::to_string(&c).unwrap(), text);
        }
        assert!(toml::from_str::<C>("a = \"9090\"\n").is_err());
    }
}
