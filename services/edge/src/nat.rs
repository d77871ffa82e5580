//! NAT: is a sender behind one (its Via or Contact names another address than the packet
//! came from), is an address private, can a contact be reached directly.

use sip_core::{Editor, SipMessage, SipUri, Uri};
use sip_txn::Target;

/// Can a new connection reach this contact? Not when it names a private address other
/// than the one the REGISTER came from (the UA is behind a NAT).
pub(crate) fn contact_reachable(c: &SipUri<'_>, remote: std::net::SocketAddr) -> bool {
    match c.host.ip() {
        Some(ip) => ip == remote.ip() || !is_private(ip),
        None => true,
    }
}

/// Is the sender of this REGISTER behind a NAT? The tests Kamailio's `nat_uac_test`
/// uses: the top Via's sent-by differs from the packet's source address or port, or a
/// Contact names a private address other than the source.
pub fn is_natted(msg: &SipMessage, source: Target) -> bool {
    if let Ok(v) = msg.top_via()
        && (v.sent_by.host.ip() != Some(source.addr.ip())
            || v.sent_by.port.unwrap_or(5060) != source.addr.port())
    {
        return true;
    }
    msg.contacts().flatten().any(|c| match c {
        sip_core::Contact::Addr(a) => match a.addr.parsed_uri() {
            Ok(Uri::Sip(u)) => u
                .host
                .ip()
                .is_some_and(|ip| is_private(ip) && ip != source.addr.ip()),
            _ => false,
        },
        sip_core::Contact::Star => false,
    })
}

/// RFC 1918, RFC 6598 (carrier-grade NAT), link-local and IPv6 unique-local addresses.
pub(crate) fn is_private(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(a) => {
            let o = a.octets();
            a.is_private() || a.is_link_local() || (o[0] == 100 && (64..128).contains(&o[1]))
        }
        std::net::IpAddr::V6(a) => {
            (a.segments()[0] & 0xfe00) == 0xfc00 || (a.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sip_core::Uri;
    use sip_txn::Transport;
    use std::net::SocketAddr;

    fn register(via: &str, contact: &str) -> SipMessage {
        let text = format!(
            "REGISTER sip:example.com SIP/2.0\r\nVia: {via}\r\nFrom: <sip:a@example.com>;tag=1\r\n\
             To: <sip:a@example.com>\r\nCall-ID: c\r\nCSeq: 1 REGISTER\r\nContact: {contact}\r\nContent-Length: 0\r\n\r\n"
        );
        SipMessage::parse(text.into_bytes()).expect("parses")
    }

    fn from(addr: &str) -> Target {
        Target {
            transport: Transport::Udp,
            addr: addr.parse().expect("address"),
            flow: None,
        }
    }

    #[test]
    fn nat_detection() {
        let direct = register(
            "SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK1",
            "<sip:a@198.51.100.7:5060>",
        );
        assert!(!is_natted(&direct, from("198.51.100.7:5060")));
        // Source port rewritten by a NAT.
        assert!(is_natted(&direct, from("198.51.100.7:33333")));
        // Via and Contact both private, packet from a public address.
        let behind = register(
            "SIP/2.0/UDP 192.168.1.20:5060;branch=z9hG4bK1",
            "<sip:a@192.168.1.20:5060>",
        );
        assert!(is_natted(&behind, from("203.0.113.9:5060")));
        // A Via that matches (a NAT-aware phone using STUN) but a private Contact.
        let stun = register(
            "SIP/2.0/UDP 203.0.113.9:5060;branch=z9hG4bK1",
            "<sip:a@10.0.0.3:5060>",
        );
        assert!(is_natted(&stun, from("203.0.113.9:5060")));
        // A private Contact that *is* the source (same LAN as the edge) is not NAT.
        let lan = register(
            "SIP/2.0/UDP 10.0.0.3:5060;branch=z9hG4bK1",
            "<sip:a@10.0.0.3:5060>",
        );
        assert!(!is_natted(&lan, from("10.0.0.3:5060")));
    }

    #[test]
    fn private_ranges_and_reachability() {
        for ip in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.0.1",
            "100.64.0.1",
            "169.254.1.1",
            "fd00::1",
            "fe80::1",
        ] {
            assert!(is_private(ip.parse().expect("ip")), "{ip}");
        }
        for ip in ["8.8.8.8", "100.128.0.1", "2001:db8::1", "127.0.0.1"] {
            assert!(!is_private(ip.parse().expect("ip")), "{ip}");
        }
        let uri = |s: &'static str| match Uri::parse(s.as_bytes()) {
            Ok(Uri::Sip(u)) => u,
            _ => panic!("{s}"),
        };
        let remote: SocketAddr = "203.0.113.9:40000".parse().expect("address");
        assert!(!contact_reachable(&uri("sip:a@10.0.0.3:5060"), remote));
        assert!(contact_reachable(&uri("sip:a@203.0.113.9:5060"), remote));
        assert!(contact_reachable(&uri("sip:a@198.51.100.1"), remote));
        assert!(contact_reachable(&uri("sip:a@phone.example.com"), remote));
    }
}

/// §18.2.1 and RFC 3581 §4: the server transport records the source in the top Via of
/// every request it receives, so that every response, generated here or relayed back from
/// downstream, tells the client where it was seen from and routes back through its NAT.
pub(crate) fn with_received(msg: SipMessage, source: Target) -> SipMessage {
    let Some(via) = nat_via(&msg, source) else {
        return msg;
    };
    let mut ed = Editor::new(&msg);
    if ed.remove_top_via().is_err() {
        return msg;
    }
    ed.prepend_via(via.as_bytes());
    ed.finish_message().unwrap_or(msg)
}

/// The client's top Via with `received` and `rport` recording where the request really
/// came from; see [`SipMessage::top_via_seen_from`].
pub fn nat_via(msg: &SipMessage, source: Target) -> Option<String> {
    msg.top_via_seen_from(source.addr)
}

#[cfg(test)]
mod via_tests {
    use super::*;

    fn msg(via: &str) -> SipMessage {
        let text = format!(
            "OPTIONS sip:x@example.com SIP/2.0\r\nVia: {via}\r\nVia: SIP/2.0/UDP 192.0.2.9;branch=z9hG4bKlower\r\n\
             From: <sip:a@example.com>;tag=1\r\nTo: <sip:x@example.com>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\
             Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        );
        SipMessage::parse(text.into_bytes()).expect("parses")
    }

    fn from(addr: &str) -> Target {
        Target {
            transport: sip_txn::Transport::Udp,
            addr: addr.parse().expect("address"),
            flow: None,
        }
    }

    #[test]
    fn received_and_rport_only_when_needed() {
        // Sent-by matches the source and no rport asked: the Via stays untouched.
        assert_eq!(
            nat_via(
                &msg("SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1"),
                from("10.0.0.1:5060")
            ),
            None
        );
        // rport asked: filled in even when everything matches (RFC 3581 §4).
        assert_eq!(
            nat_via(
                &msg("SIP/2.0/UDP 10.0.0.1:5060;rport;branch=z9hG4bK1"),
                from("10.0.0.1:5060")
            )
            .as_deref(),
            Some("SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1;rport=5060")
        );
        // Behind a NAT: received and rport, other parameters kept in order.
        assert_eq!(
            nat_via(
                &msg("SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1;x=\"q\""),
                from("203.0.113.5:40000")
            )
            .as_deref(),
            Some("SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1;x=\"q\";received=203.0.113.5;rport=40000")
        );
    }

    #[test]
    fn with_received_rewrites_only_the_top_via_and_is_idempotent() {
        let m = with_received(
            msg("SIP/2.0/UDP 10.0.0.1;rport;branch=z9hG4bK1"),
            from("203.0.113.5:40000"),
        );
        let vias: Vec<String> = m
            .via()
            .flatten()
            .map(|v| String::from_utf8_lossy(v.raw).into_owned())
            .collect();
        assert_eq!(
            vias,
            [
                "SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1;received=203.0.113.5;rport=40000",
                "SIP/2.0/UDP 192.0.2.9;branch=z9hG4bKlower"
            ]
        );
        // Already recorded: nothing more to do (a spiral through this edge or a retransmission).
        assert_eq!(nat_via(&m, from("203.0.113.5:40000")), None);
        assert_eq!(
            m.top_via().expect("via").branch,
            Some("z9hG4bK1"),
            "matching still works"
        );
    }
}
