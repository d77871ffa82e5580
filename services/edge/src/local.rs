//! Who this edge is: its addresses, ports and domains, and the Via / Record-Route values
//! it writes; "is this URI me?" for Route processing (RFC 3261 §16.4).

use std::net::{IpAddr, SocketAddr};

use sip_core::{Host, SipUri, Via};
use sip_txn::Transport;

/// This edge's identity.
#[derive(Debug, Clone)]
pub struct Local {
    /// The address peers reach this edge at (Via sent-by, Record-Route host).
    pub advertise: IpAddr,
    /// UDP port, if listening on UDP.
    pub udp_port: Option<u16>,
    /// TCP port, if listening on TCP.
    pub tcp_port: Option<u16>,
    /// Local domains, lower-case; the first is the default.
    pub domains: Vec<String>,
    /// Addresses that mean this edge (advertise, specific listening addresses, loopback
    /// when listening on all interfaces).
    pub addresses: Vec<IpAddr>,
    /// Other `ip:port`s that mean this edge (a dispatcher's public address).
    pub aliases: Vec<SocketAddr>,
}

impl Local {
    /// From the configuration and the actually bound sockets.
    pub fn new(
        advertise: Option<IpAddr>,
        udp: &[SocketAddr],
        tcp: &[SocketAddr],
        domains: &[String],
    ) -> Local {
        let (advertise, addresses) = sip_transport::own_addresses(advertise, udp, tcp);
        Local {
            advertise,
            udp_port: udp.first().map(|a| a.port()),
            tcp_port: tcp.first().map(|a| a.port()),
            domains: domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
            addresses,
            aliases: Vec::new(),
        }
    }

    /// The port for a transport (falling back to the other one's).
    pub fn port(&self, t: Transport) -> u16 {
        let p = match t {
            Transport::Udp => self.udp_port.or(self.tcp_port),
            _ => self.tcp_port.or(self.udp_port),
        };
        p.unwrap_or(5060)
    }

    fn host_text(&self) -> String {
        match self.advertise {
            IpAddr::V4(a) => a.to_string(),
            IpAddr::V6(a) => format!("[{a}]"),
        }
    }

    /// A Via value for a request this edge sends over `t`.
    pub fn via(&self, t: Transport, branch: &str) -> String {
        format!(
            "SIP/2.0/{} {}:{};branch={branch}",
            t.as_str(),
            self.host_text(),
            self.port(t)
        )
    }

    /// A Record-Route / Path value for `t` (loose routing).
    pub fn route_uri(&self, t: Transport) -> String {
        match t {
            Transport::Udp => format!("<sip:{}:{};lr>", self.host_text(), self.port(t)),
            _ => format!(
                "<sip:{}:{};transport={};lr>",
                self.host_text(),
                self.port(t),
                t.as_str().to_ascii_lowercase()
            ),
        }
    }

    /// The URI other edges use to reach a client connection of this edge: the flow
    /// token as user part, over UDP when this edge listens on it (edge-to-edge traffic
    /// stays on the cluster network), else TCP.
    pub fn flow_uri(&self, token: &str) -> String {
        match self.udp_port {
            Some(p) => format!("sip:{token}@{}:{p};lr", self.host_text()),
            None => format!(
                "sip:{token}@{}:{};transport=tcp;lr",
                self.host_text(),
                self.port(Transport::Tcp)
            ),
        }
    }

    /// Is `host` one of this edge's addresses?
    pub fn is_my_host(&self, host: &Host<'_>) -> bool {
        host.ip().is_some_and(|ip| self.addresses.contains(&ip))
    }

    /// Is this URI this edge (host and port)? Used on Route values and for strict routing.
    pub fn is_me(&self, uri: &SipUri<'_>) -> bool {
        let port = uri.port_or_default();
        // A dispatcher's flow token at an alias address is the dispatcher's to act on.
        let dispatcher_token = uri
            .user
            .is_some_and(|u| u.starts_with(dispatch_core::token::PREFIX));
        if let Some(ip) = uri.host.ip()
            && !dispatcher_token
            && self.aliases.contains(&SocketAddr::new(ip, port))
        {
            return true;
        }
        if !self.is_my_host(&uri.host) {
            return false;
        }
        self.udp_port == Some(port) || self.tcp_port == Some(port)
    }

    /// Did this edge write this Via hop?
    pub fn is_my_via(&self, via: &Via<'_>) -> bool {
        self.is_my_host(&via.sent_by.host)
            && via
                .sent_by
                .port
                .is_some_and(|p| self.udp_port == Some(p) || self.tcp_port == Some(p))
    }

    /// The local domain a URI names: one of the configured domains (any port), or the
    /// default domain when the URI is this edge's address *and* port (another port on the
    /// same host is another element, e.g. a UA on the same machine). `None` otherwise.
    pub fn local_domain(&self, uri: &SipUri<'_>) -> Option<&str> {
        match &uri.host {
            Host::Domain(d) => self
                .domains
                .iter()
                .find(|x| x.eq_ignore_ascii_case(d))
                .map(String::as_str),
            _ if self.is_me(uri) => self.domains.first().map(String::as_str),
            _ => None,
        }
    }

    /// The default domain (also the realm of users reaching the edge by address).
    pub fn default_domain(&self) -> &str {
        self.domains.first().map_or("localhost", String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sip_core::Uri;

    fn local() -> Local {
        Local::new(
            None,
            &["127.0.0.1:5070".parse().unwrap()],
            &["127.0.0.1:5071".parse().unwrap()],
            &["Example.COM".into(), "other.org".into()],
        )
    }

    fn sip(s: &str) -> SipUri<'_> {
        *Uri::parse(s.as_bytes()).unwrap().as_sip().unwrap()
    }

    #[test]
    fn identity() {
        let l = local();
        assert_eq!(l.advertise, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(
            l.via(Transport::Udp, "z9hG4bK1"),
            "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1"
        );
        assert_eq!(
            l.route_uri(Transport::Tcp),
            "<sip:127.0.0.1:5071;transport=tcp;lr>"
        );
        assert!(l.is_me(&sip("sip:127.0.0.1:5070;lr")));
        assert!(l.is_me(&sip("sip:127.0.0.1:5071;transport=tcp;lr")));
        assert!(!l.is_me(&sip("sip:127.0.0.1;lr")), "5060 is not ours here");
        assert!(!l.is_me(&sip("sip:127.0.0.2:5070;lr")));
        assert_eq!(
            l.local_domain(&sip("sip:a@example.com")),
            Some("example.com")
        );
        assert_eq!(
            l.local_domain(&sip("sip:a@example.com:9999")),
            Some("example.com")
        );
        assert_eq!(
            l.local_domain(&sip("sip:a@127.0.0.1:5070")),
            Some("example.com"),
            "own address = default domain"
        );
        assert_eq!(
            l.local_domain(&sip("sip:a@127.0.0.1:6001")),
            None,
            "another port on our host is someone else"
        );
        assert_eq!(l.local_domain(&sip("sip:a@elsewhere.net")), None);
    }

    #[test]
    fn unspecified_listen_uses_primary_and_loopback() {
        let l = Local::new(None, &["0.0.0.0:5060".parse().unwrap()], &[], &["d".into()]);
        assert!(!l.advertise.is_unspecified());
        assert!(l.addresses.contains(&"127.0.0.1".parse().unwrap()));
        let l = Local::new(
            Some("203.0.113.5".parse().unwrap()),
            &["0.0.0.0:5060".parse().unwrap()],
            &[],
            &["d".into()],
        );
        assert_eq!(l.advertise, "203.0.113.5".parse::<IpAddr>().unwrap());
        assert_eq!(
            l.via(Transport::Tcp, "b"),
            "SIP/2.0/TCP 203.0.113.5:5060;branch=b",
            "TCP falls back to the UDP port"
        );
    }
}
