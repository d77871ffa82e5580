//! What the cluster's entry points refuse before any work: the senders it trusts by
//! address ([`Cidr`]) and the scanners it drops silently ([`UserAgentDeny`]). Used by the
//! dispatcher's relay and by the edge, so both judge a request alike.

use std::net::IpAddr;
use std::str::FromStr;

/// An address block, `10.0.0.0/8` or `2001:db8::/32`; a bare address is a /32 or /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    len: u8,
}

/// A block that does not parse: the text and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not an address block (like 10.0.0.0/8 or 2001:db8::/32): {why}")]
pub struct CidrError {
    /// As given.
    pub text: String,
    /// What is wrong.
    pub why: &'static str,
}

impl FromStr for Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let err = |why| CidrError {
            text: s.to_owned(),
            why,
        };
        let (addr, len) = match s.trim().split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s.trim(), None),
        };
        let net: IpAddr = addr.parse().map_err(|_| err("not an IP address"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let len = match len {
            Some(l) => l.parse::<u8>().map_err(|_| err("bad prefix length"))?,
            None => max,
        };
        if len > max {
            return Err(err("prefix length too long"));
        }
        Ok(Cidr { net, len })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.net, self.len)
    }
}

impl Cidr {
    /// Is `ip` inside? An IPv4-mapped IPv6 address counts as its IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// Is `ip` in any of `blocks`?
pub fn any_contains(blocks: &[Cidr], ip: IpAddr) -> bool {
    blocks.iter().any(|b| b.contains(ip))
}

/// The User-Agent values of well-known SIP scanners (SIPVicious and its copies), as
/// Kamailio's and OpenSIPS's sample configurations list them.
pub const DEFAULT_DENIED_USER_AGENTS: &[&str] = &[
    "friendly-scanner",
    "sipvicious",
    "sipcli",
    "sip-scan",
    "sipsak-scan",
    "vaxsipuseragent",
    "sundayddr",
    "iwar",
    "sipbomber",
    "pplsip",
    "smap",
];

/// Scanners to drop silently: a request whose User-Agent contains one of the patterns
/// (ASCII case-insensitive) gets no answer at all, so the scanner learns nothing, not
/// even that a SIP server listens.
#[derive(Debug, Clone, Default)]
pub struct UserAgentDeny {
    patterns: Vec<Vec<u8>>,
}

impl UserAgentDeny {
    /// From the configured patterns (empty ones are ignored).
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> UserAgentDeny {
        UserAgentDeny {
            patterns: patterns
                .iter()
                .map(|p| p.as_ref().trim().to_ascii_lowercase().into_bytes())
                .filter(|p| !p.is_empty())
                .collect(),
        }
    }

    /// Does this User-Agent value match a pattern?
    pub fn denies(&self, user_agent: &[u8]) -> bool {
        !self.patterns.is_empty()
            && self.patterns.iter().any(|p| {
                user_agent
                    .windows(p.len())
                    .any(|w| w.eq_ignore_ascii_case(p))
            })
    }

    /// Does this request come from a denied scanner?
    pub fn denies_message(&self, msg: &sip_core::SipMessage) -> bool {
        !self.patterns.is_empty()
            && msg
                .headers_of(sip_core::HeaderName::UserAgent)
                .any(|h| self.denies(h.value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_blocks() {
        let b: Cidr = "10.0.0.0/8".parse().expect("cidr");
        assert!(b.contains("10.200.1.1".parse().expect("ip")));
        assert!(!b.contains("11.0.0.1".parse().expect("ip")));
        assert!(b.contains("::ffff:10.1.2.3".parse().expect("ip")));
        let one: Cidr = "203.0.113.9".parse().expect("cidr");
        assert!(one.contains("203.0.113.9".parse().expect("ip")));
        assert!(!one.contains("203.0.113.8".parse().expect("ip")));
        let all: Cidr = "0.0.0.0/0".parse().expect("cidr");
        assert!(all.contains("8.8.8.8".parse().expect("ip")));
        let v6: Cidr = "2001:db8::/32".parse().expect("cidr");
        assert!(v6.contains("2001:db8:1::5".parse().expect("ip")));
        assert!(!v6.contains("2001:db9::5".parse().expect("ip")));
        assert!(!v6.contains("10.0.0.1".parse().expect("ip")));
        for bad in ["10.0.0.0/33", "banana", "10.0.0.0/x", "::/129"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        assert_eq!(b.to_string(), "10.0.0.0/8");
    }

    #[test]
    fn scanners_by_user_agent() {
        let d = UserAgentDeny::new(DEFAULT_DENIED_USER_AGENTS);
        assert!(d.denies(b"friendly-scanner"));
        assert!(d.denies(b"SIPVicious 0.3.4"));
        assert!(!d.denies(b"baresip v1.0.0 (x86_64/linux)"));
        assert!(!UserAgentDeny::new::<&str>(&[]).denies(b"friendly-scanner"));
        let msg = sip_core::SipMessage::parse(
            b"OPTIONS sip:100@198.51.100.1 SIP/2.0\r\nVia: SIP/2.0/UDP 1.2.3.4;branch=z9hG4bK1\r\n\
              From: <sip:a@b>;tag=1\r\nTo: <sip:100@c>\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\n\
              User-Agent: friendly-scanner\r\nContent-Length: 0\r\n\r\n"
                .to_vec(),
        )
        .expect("parses");
        assert!(d.denies_message(&msg));
    }
}
