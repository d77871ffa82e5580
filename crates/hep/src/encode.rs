//! HEP v3 encoding, sans-IO: a [`Capture`] in, the bytes of one HEP packet out.
//!
//! A HEP3 packet is the four bytes `HEP3`, its total length (u16), then chunks. Each
//! chunk is a vendor id (u16, 0 for the generic chunks used here), a type id (u16) and a
//! length (u16, its 6-byte header included), then its value. Every number is in network
//! byte order (the sipcapture HEP specification, `HEP3_Network_Protocol_Specification`).

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::{SystemTime, UNIX_EPOCH};

use sip_txn::Transport;

use crate::HepError;

/// The generic chunk types (vendor 0x0000) this crate writes or reads.
pub mod chunk {
    /// u8: the address family of the captured packet, [`super::AF_INET`] or
    /// [`super::AF_INET6`].
    pub const IP_FAMILY: u16 = 0x0001;
    /// u8: its IP protocol number, [`super::PROTO_UDP`] or [`super::PROTO_TCP`].
    pub const IP_PROTO: u16 = 0x0002;
    /// 4 bytes: IPv4 source address.
    pub const SRC_IP4: u16 = 0x0003;
    /// 4 bytes: IPv4 destination address.
    pub const DST_IP4: u16 = 0x0004;
    /// 16 bytes: IPv6 source address.
    pub const SRC_IP6: u16 = 0x0005;
    /// 16 bytes: IPv6 destination address.
    pub const DST_IP6: u16 = 0x0006;
    /// u16: source port.
    pub const SRC_PORT: u16 = 0x0007;
    /// u16: destination port.
    pub const DST_PORT: u16 = 0x0008;
    /// u32: capture time, seconds since the Unix epoch.
    pub const TIME_SEC: u16 = 0x0009;
    /// u32: microseconds added to [`TIME_SEC`].
    pub const TIME_USEC: u16 = 0x000a;
    /// u8: what the payload is ([`super::PROTO_TYPE_SIP`]).
    pub const PROTO_TYPE: u16 = 0x000b;
    /// u32: the capture agent's id (which node captured it).
    pub const CAPTURE_ID: u16 = 0x000c;
    /// bytes: the collector's password.
    pub const AUTH_KEY: u16 = 0x000e;
    /// bytes: the captured packet's payload (the whole SIP message).
    pub const PAYLOAD: u16 = 0x000f;
    /// bytes: the correlation id (the Call-ID), which Homer groups a call's messages by.
    pub const CORRELATION_ID: u16 = 0x0011;
}

/// The `HEP3` magic that starts every packet.
pub const MAGIC: &[u8; 4] = b"HEP3";
/// IP family value of an IPv4 capture (the BSD `AF_INET` every collector expects).
pub const AF_INET: u8 = 2;
/// IP family value of an IPv6 capture (Linux `AF_INET6`, the value of the specification).
pub const AF_INET6: u8 = 10;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = 17;
/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// Protocol type of a SIP payload.
pub const PROTO_TYPE_SIP: u8 = 1;
/// Length of the packet header (magic and total length) and of a chunk header.
const HEADER_LEN: usize = 6;
/// The largest packet: its total length is a u16.
pub const MAX_PACKET_LEN: usize = u16::MAX as usize;

/// One SIP message as a transport received or sent it, with what the collector needs to
/// tell the capturing node apart. Borrows the message and the Call-ID: the only copy on
/// the SIP path is the one into the encoded packet.
#[derive(Clone, Copy)]
pub struct Capture<'a> {
    /// Where the message came from (our socket for a message we sent).
    pub src: SocketAddr,
    /// Where it went (our socket for a message we received).
    pub dst: SocketAddr,
    /// The transport it travelled over. TLS, WS and WSS run over TCP and are reported as
    /// TCP: HEP has no number for them, and the payload is the decrypted, unframed SIP.
    pub transport: Transport,
    /// When it was received or sent.
    pub time: SystemTime,
    /// The capture agent id ([`chunk::CAPTURE_ID`]).
    pub capture_id: u32,
    /// The collector's password, when it wants one.
    pub auth_key: Option<&'a [u8]>,
    /// The whole SIP message.
    pub payload: &'a [u8],
    /// The Call-ID; empty writes no correlation chunk.
    pub call_id: &'a str,
}

impl std::fmt::Debug for Capture<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The password never reaches a log line, and a message body is the caller's to print.
        f.debug_struct("Capture")
            .field("src", &self.src)
            .field("dst", &self.dst)
            .field("transport", &self.transport)
            .field("time", &self.time)
            .field("capture_id", &self.capture_id)
            .field("auth_key", &self.auth_key.map(|_| "<redacted>"))
            .field("payload_len", &self.payload.len())
            .field("call_id", &self.call_id)
            .finish()
    }
}

/// The IP protocol number HEP reports for a SIP transport.
#[must_use]
pub fn ip_proto(transport: Transport) -> u8 {
    match transport {
        Transport::Udp => PROTO_UDP,
        Transport::Tcp | Transport::Tls | Transport::Ws | Transport::Wss => PROTO_TCP,
    }
}

/// Both addresses in one family: IPv4 when both are IPv4 (an IPv4-mapped IPv6 address of
/// a dual-stack socket counts as IPv4, so a collector shows the address the peer has),
/// else IPv6 with any IPv4 address mapped.
enum Addresses {
    V4([u8; 4], [u8; 4]),
    V6([u8; 16], [u8; 16]),
}

fn addresses(src: IpAddr, dst: IpAddr) -> Addresses {
    let v6 = |ip: IpAddr| -> Ipv6Addr {
        match ip {
            IpAddr::V4(a) => a.to_ipv6_mapped(),
            IpAddr::V6(a) => a,
        }
    };
    match (src.to_canonical(), dst.to_canonical()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => Addresses::V4(s.octets(), d.octets()),
        (s, d) => Addresses::V6(v6(s).octets(), v6(d).octets()),
    }
}

/// Append one HEP3 packet for `capture` to `out` and return its length. The chunks come
/// in the order of hep-c's `hep_generic` (family, protocol, ports, time, protocol type,
/// capture id, then addresses, key, payload, correlation id), the order Kamailio and
/// heplify write: collectors that read chunks at fixed offsets rather than by type (old
/// sngrep, hep-c derived code) parse it too.
///
/// A packet longer than 65535 bytes cannot be written (its length is a u16): nothing is
/// appended and [`HepError::TooLong`] says how long it would have been.
pub fn encode(capture: &Capture<'_>, out: &mut Vec<u8>) -> Result<usize, HepError> {
    let addrs = addresses(capture.src.ip(), capture.dst.ip());
    let ip_len = match addrs {
        Addresses::V4(..) => 2 * (HEADER_LEN + 4),
        Addresses::V6(..) => 2 * (HEADER_LEN + 16),
    };
    let key_len = capture.auth_key.map_or(0, |k| HEADER_LEN + k.len());
    let cid_len = if capture.call_id.is_empty() {
        0
    } else {
        HEADER_LEN + capture.call_id.len()
    };
    // Header, family, protocol, two ports, two time fields, protocol type, capture id.
    let fixed = HEADER_LEN + 7 + 7 + 8 + 8 + 10 + 10 + 7 + 10;
    let total = fixed + ip_len + key_len + HEADER_LEN + capture.payload.len() + cid_len;
    let Ok(total16) = u16::try_from(total) else {
        return Err(HepError::TooLong { len: total });
    };

    // Before the epoch (a broken clock) reads as the epoch; u32 seconds last until 2106.
    let since = capture.time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = u32::try_from(since.as_secs()).unwrap_or(u32::MAX);

    out.reserve(total);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&total16.to_be_bytes());
    let (family, src_ip, dst_ip): (u8, &[u8], &[u8]) = match &addrs {
        Addresses::V4(s, d) => (AF_INET, s, d),
        Addresses::V6(s, d) => (AF_INET6, s, d),
    };
    put(out, chunk::IP_FAMILY, &[family]);
    put(out, chunk::IP_PROTO, &[ip_proto(capture.transport)]);
    put(out, chunk::SRC_PORT, &capture.src.port().to_be_bytes());
    put(out, chunk::DST_PORT, &capture.dst.port().to_be_bytes());
    put(out, chunk::TIME_SEC, &secs.to_be_bytes());
    put(out, chunk::TIME_USEC, &since.subsec_micros().to_be_bytes());
    put(out, chunk::PROTO_TYPE, &[PROTO_TYPE_SIP]);
    put(out, chunk::CAPTURE_ID, &capture.capture_id.to_be_bytes());
    let (src_type, dst_type) = match addrs {
        Addresses::V4(..) => (chunk::SRC_IP4, chunk::DST_IP4),
        Addresses::V6(..) => (chunk::SRC_IP6, chunk::DST_IP6),
    };
    put(out, src_type, src_ip);
    put(out, dst_type, dst_ip);
    if let Some(key) = capture.auth_key {
        put(out, chunk::AUTH_KEY, key);
    }
    put(out, chunk::PAYLOAD, capture.payload);
    if !capture.call_id.is_empty() {
        put(out, chunk::CORRELATION_ID, capture.call_id.as_bytes());
    }
    Ok(total)
}

/// One generic chunk. The caller has checked that the whole packet fits 65535 bytes, so
/// the chunk's length does too.
fn put(out: &mut Vec<u8>, type_id: u16, value: &[u8]) {
    let len = u16::try_from(HEADER_LEN + value.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&type_id.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::decode;
    use std::time::Duration;

    const MSG: &[u8] = b"OPTIONS sip:a SIP/2.0\r\n\r\n";

    fn capture<'a>(src: &str, dst: &str, transport: Transport) -> Capture<'a> {
        Capture {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            transport,
            time: UNIX_EPOCH + Duration::new(0x6543_2100, 123_456_789),
            capture_id: 0x0102_0304,
            auth_key: None,
            payload: MSG,
            call_id: "c1@x",
        }
    }

    /// Chunk header: vendor 0, type, length (value + 6).
    fn chunk(out: &mut Vec<u8>, t: u16, value: &[u8]) {
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&t.to_be_bytes());
        out.extend_from_slice(&((value.len() + 6) as u16).to_be_bytes());
        out.extend_from_slice(value);
    }

    /// The packet built by hand from the specification, chunk by chunk.
    fn expected(
        family: u8,
        proto: u8,
        ips: (u16, &[u8], u16, &[u8]),
        key: Option<&[u8]>,
    ) -> Vec<u8> {
        let mut body = Vec::new();
        chunk(&mut body, 0x0001, &[family]);
        chunk(&mut body, 0x0002, &[proto]);
        chunk(&mut body, 0x0007, &[0x13, 0xc4]); // 5060
        chunk(&mut body, 0x0008, &[0x13, 0xce]); // 5070
        chunk(&mut body, 0x0009, &[0x65, 0x43, 0x21, 0x00]);
        chunk(&mut body, 0x000a, &123_456u32.to_be_bytes());
        chunk(&mut body, 0x000b, &[1]);
        chunk(&mut body, 0x000c, &[1, 2, 3, 4]);
        chunk(&mut body, ips.0, ips.1);
        chunk(&mut body, ips.2, ips.3);
        if let Some(k) = key {
            chunk(&mut body, 0x000e, k);
        }
        chunk(&mut body, 0x000f, MSG);
        chunk(&mut body, 0x0011, b"c1@x");
        let mut p = b"HEP3".to_vec();
        p.extend_from_slice(&((body.len() + 6) as u16).to_be_bytes());
        p.extend_from_slice(&body);
        p
    }

    #[test]
    fn ipv4_udp_is_byte_exact() {
        let c = capture("127.0.0.1:5060", "127.0.0.2:5070", Transport::Udp);
        let mut out = Vec::new();
        let n = encode(&c, &mut out).unwrap();
        let want = expected(
            2,
            17,
            (0x0003, &[127, 0, 0, 1], 0x0004, &[127, 0, 0, 2]),
            None,
        );
        assert_eq!(out, want);
        assert_eq!(n, out.len());
        // The first bytes spelled out: magic, total length, the family chunk.
        assert_eq!(&out[..4], b"HEP3");
        assert_eq!(u16::from_be_bytes([out[4], out[5]]) as usize, out.len());
        assert_eq!(&out[6..13], &[0, 0, 0, 1, 0, 7, 2]);
    }

    #[test]
    fn ipv4_packet_spelled_out() {
        let c = capture("127.0.0.1:5060", "127.0.0.2:5070", Transport::Udp);
        let mut out = Vec::new();
        encode(&c, &mut out).unwrap();
        #[rustfmt::skip]
        let mut want: Vec<u8> = vec![
            b'H', b'E', b'P', b'3', 0x00, 0x86,         // magic, total 134
            0, 0, 0, 0x01, 0, 7, 2,                     // IP family: AF_INET
            0, 0, 0, 0x02, 0, 7, 17,                    // IP protocol: UDP
            0, 0, 0, 0x07, 0, 8, 0x13, 0xc4,            // source port 5060
            0, 0, 0, 0x08, 0, 8, 0x13, 0xce,            // destination port 5070
            0, 0, 0, 0x09, 0, 10, 0x65, 0x43, 0x21, 0x00, // seconds
            0, 0, 0, 0x0a, 0, 10, 0x00, 0x01, 0xe2, 0x40, // microseconds 123456
            0, 0, 0, 0x0b, 0, 7, 1,                     // protocol type: SIP
            0, 0, 0, 0x0c, 0, 10, 1, 2, 3, 4,           // capture id
            0, 0, 0, 0x03, 0, 10, 127, 0, 0, 1,         // source IPv4
            0, 0, 0, 0x04, 0, 10, 127, 0, 0, 2,         // destination IPv4
            0, 0, 0, 0x0f, 0, 31,                       // payload, 25 bytes
        ];
        want.extend_from_slice(MSG);
        want.extend_from_slice(&[0, 0, 0, 0x11, 0, 10, b'c', b'1', b'@', b'x']); // Call-ID
        assert_eq!(out, want);
    }

    #[test]
    fn ipv6_tcp_with_password_is_byte_exact() {
        let mut c = capture("[2001:db8::1]:5060", "[2001:db8::2]:5070", Transport::Tcp);
        c.auth_key = Some(b"s3cret");
        let mut out = Vec::new();
        encode(&c, &mut out).unwrap();
        let mut s = [0u8; 16];
        s[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        let mut d = s;
        s[15] = 1;
        d[15] = 2;
        let want = expected(10, 6, (0x0005, &s, 0x0006, &d), Some(b"s3cret"));
        assert_eq!(out, want);
    }

    #[test]
    fn secure_and_websocket_transports_are_tcp() {
        for t in [
            Transport::Tcp,
            Transport::Tls,
            Transport::Ws,
            Transport::Wss,
        ] {
            assert_eq!(ip_proto(t), PROTO_TCP, "{t:?}");
        }
        assert_eq!(ip_proto(Transport::Udp), PROTO_UDP);
        let c = capture("127.0.0.1:5060", "127.0.0.2:5070", Transport::Wss);
        let mut out = Vec::new();
        encode(&c, &mut out).unwrap();
        assert_eq!(decode(&out).unwrap().ip_proto, PROTO_TCP);
    }

    #[test]
    fn mapped_ipv4_is_reported_as_ipv4_and_mixed_families_as_ipv6() {
        // A dual-stack socket sees an IPv4 peer as ::ffff:a.b.c.d.
        let c = capture("[::ffff:192.0.2.7]:5060", "192.0.2.9:5070", Transport::Udp);
        let mut out = Vec::new();
        encode(&c, &mut out).unwrap();
        let d = decode(&out).unwrap();
        assert_eq!(d.family, AF_INET);
        assert_eq!(d.src, "192.0.2.7:5060".parse().unwrap());

        let c = capture("[2001:db8::1]:5060", "192.0.2.9:5070", Transport::Udp);
        out.clear();
        encode(&c, &mut out).unwrap();
        let d = decode(&out).unwrap();
        assert_eq!(d.family, AF_INET6);
        assert_eq!(d.dst, "[::ffff:192.0.2.9]:5070".parse().unwrap());
    }

    #[test]
    fn decode_reads_back_what_encode_wrote() {
        let mut c = capture("[2001:db8::1]:5060", "[2001:db8::2]:5070", Transport::Udp);
        c.auth_key = Some(b"pw");
        let mut out = vec![0xaa]; // encode appends
        encode(&c, &mut out).unwrap();
        let d = decode(&out[1..]).unwrap();
        assert_eq!(d.src, c.src);
        assert_eq!(d.dst, c.dst);
        assert_eq!(d.ip_proto, PROTO_UDP);
        assert_eq!(d.time_sec, 0x6543_2100);
        assert_eq!(d.time_usec, 123_456);
        assert_eq!(d.proto_type, PROTO_TYPE_SIP);
        assert_eq!(d.capture_id, 0x0102_0304);
        assert_eq!(d.auth_key.as_deref(), Some(&b"pw"[..]));
        assert_eq!(d.payload, MSG);
        assert_eq!(d.call_id.as_deref(), Some("c1@x"));
    }

    #[test]
    fn no_call_id_writes_no_correlation_chunk() {
        let mut c = capture("127.0.0.1:5060", "127.0.0.2:5070", Transport::Udp);
        c.call_id = "";
        let mut out = Vec::new();
        encode(&c, &mut out).unwrap();
        let d = decode(&out).unwrap();
        assert_eq!(d.call_id, None);
        assert!(!d.chunk_types.contains(&chunk::CORRELATION_ID));
    }

    #[test]
    fn a_packet_over_65535_bytes_is_refused_and_nothing_written() {
        let big = vec![b'x'; 65_535];
        let mut c = capture("127.0.0.1:5060", "127.0.0.2:5070", Transport::Tcp);
        c.payload = &big;
        let mut out = b"keep".to_vec();
        let e = encode(&c, &mut out).unwrap_err();
        assert!(
            matches!(e, HepError::TooLong { len } if len > 65_535),
            "{e}"
        );
        assert_eq!(out, b"keep");

        // The largest payload that fits makes a packet of exactly 65535 bytes.
        out.clear();
        c.payload = &[];
        let overhead = encode(&c, &mut out).unwrap();
        let fits = vec![b'x'; MAX_PACKET_LEN - overhead];
        c.payload = &fits;
        out.clear();
        assert_eq!(encode(&c, &mut out).unwrap(), MAX_PACKET_LEN);
        assert_eq!(decode(&out).unwrap().payload.len(), fits.len());
    }

    #[test]
    fn times_before_the_epoch_read_as_the_epoch() {
        let mut c = capture("127.0.0.1:5060", "127.0.0.2:5070", Transport::Udp);
        c.time = UNIX_EPOCH - Duration::from_secs(5);
        let mut out = Vec::new();
        encode(&c, &mut out).unwrap();
        let d = decode(&out).unwrap();
        assert_eq!((d.time_sec, d.time_usec), (0, 0));
    }

    #[test]
    fn debug_hides_the_password() {
        let mut c = capture("127.0.0.1:5060", "127.0.0.2:5070", Transport::Udp);
        c.auth_key = Some(b"hunter2");
        let s = format!("{c:?}");
        assert!(!s.contains("hunter2"), "{s}");
        assert!(s.contains("<redacted>"), "{s}");
    }
}
