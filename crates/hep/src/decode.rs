//! Reading HEP3 packets back: for tests (this crate's and its callers') and tools. The
//! exporter never reads HEP; nothing here is on the SIP path.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::HepError;
use crate::encode::{AF_INET6, MAGIC, chunk};

/// A decoded HEP3 packet: the generic chunks this crate writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// [`crate::encode::AF_INET`] or [`AF_INET6`].
    pub family: u8,
    /// IP protocol number (17 UDP, 6 TCP).
    pub ip_proto: u8,
    /// Source address and port.
    pub src: SocketAddr,
    /// Destination address and port.
    pub dst: SocketAddr,
    /// Seconds since the epoch.
    pub time_sec: u32,
    /// Microseconds.
    pub time_usec: u32,
    /// Protocol type (1: SIP).
    pub proto_type: u8,
    /// Capture agent id.
    pub capture_id: u32,
    /// The password, when one was sent.
    pub auth_key: Option<Vec<u8>>,
    /// The captured message.
    pub payload: Vec<u8>,
    /// The correlation id (Call-ID), when one was sent.
    pub call_id: Option<String>,
    /// Every chunk's type, in order (vendor chunks included).
    pub chunk_types: Vec<u16>,
}

/// The length of the HEP3 packet at the start of `buf`, once its 6-byte header is there:
/// how a reader of a TCP stream of HEP packets frames it. `None` until 6 bytes have come.
pub fn packet_len(buf: &[u8]) -> Result<Option<usize>, HepError> {
    if buf.len() < 6 {
        return Ok(None);
    }
    if &buf[..4] != MAGIC {
        return Err(HepError::Malformed("does not start with HEP3"));
    }
    Ok(Some(usize::from(u16::from_be_bytes([buf[4], buf[5]]))))
}

/// Decode one whole packet (exactly its bytes).
pub fn decode(packet: &[u8]) -> Result<Decoded, HepError> {
    let Some(total) = packet_len(packet)? else {
        return Err(HepError::Malformed("shorter than the HEP3 header"));
    };
    if total != packet.len() {
        return Err(HepError::Malformed(
            "total length differs from the bytes given",
        ));
    }
    let mut d = Decoded {
        family: 0,
        ip_proto: 0,
        src: SocketAddr::from(([0, 0, 0, 0], 0)),
        dst: SocketAddr::from(([0, 0, 0, 0], 0)),
        time_sec: 0,
        time_usec: 0,
        proto_type: 0,
        capture_id: 0,
        auth_key: None,
        payload: Vec::new(),
        call_id: None,
        chunk_types: Vec::new(),
    };
    let (mut src_ip, mut dst_ip): (Option<IpAddr>, Option<IpAddr>) = (None, None);
    let (mut src_port, mut dst_port) = (0u16, 0u16);
    let mut payload = false;
    let mut rest = &packet[6..];
    while !rest.is_empty() {
        if rest.len() < 6 {
            return Err(HepError::Malformed("chunk header cut short"));
        }
        let vendor = u16::from_be_bytes([rest[0], rest[1]]);
        let type_id = u16::from_be_bytes([rest[2], rest[3]]);
        let len = usize::from(u16::from_be_bytes([rest[4], rest[5]]));
        if len < 6 || len > rest.len() {
            return Err(HepError::Malformed("chunk length out of bounds"));
        }
        let v = &rest[6..len];
        rest = &rest[len..];
        d.chunk_types.push(type_id);
        if vendor != 0 {
            continue;
        }
        match type_id {
            chunk::IP_FAMILY => d.family = byte(v)?,
            chunk::IP_PROTO => d.ip_proto = byte(v)?,
            chunk::SRC_IP4 => src_ip = Some(IpAddr::V4(Ipv4Addr::from(array::<4>(v)?))),
            chunk::DST_IP4 => dst_ip = Some(IpAddr::V4(Ipv4Addr::from(array::<4>(v)?))),
            chunk::SRC_IP6 => src_ip = Some(IpAddr::V6(Ipv6Addr::from(array::<16>(v)?))),
            chunk::DST_IP6 => dst_ip = Some(IpAddr::V6(Ipv6Addr::from(array::<16>(v)?))),
            chunk::SRC_PORT => src_port = u16::from_be_bytes(array(v)?),
            chunk::DST_PORT => dst_port = u16::from_be_bytes(array(v)?),
            chunk::TIME_SEC => d.time_sec = u32::from_be_bytes(array(v)?),
            chunk::TIME_USEC => d.time_usec = u32::from_be_bytes(array(v)?),
            chunk::PROTO_TYPE => d.proto_type = byte(v)?,
            chunk::CAPTURE_ID => d.capture_id = u32::from_be_bytes(array(v)?),
            chunk::AUTH_KEY => d.auth_key = Some(v.to_vec()),
            chunk::PAYLOAD => {
                d.payload = v.to_vec();
                payload = true;
            }
            chunk::CORRELATION_ID => {
                let s = std::str::from_utf8(v)
                    .map_err(|_| HepError::Malformed("correlation id is not UTF-8"))?;
                d.call_id = Some(s.to_owned());
            }
            _ => {}
        }
    }
    let (Some(s), Some(t)) = (src_ip, dst_ip) else {
        return Err(HepError::Malformed("no source or destination address"));
    };
    if s.is_ipv6() != (d.family == AF_INET6) || t.is_ipv6() != (d.family == AF_INET6) {
        return Err(HepError::Malformed("addresses disagree with the IP family"));
    }
    if !payload {
        return Err(HepError::Malformed("no payload chunk"));
    }
    d.src = SocketAddr::new(s, src_port);
    d.dst = SocketAddr::new(t, dst_port);
    Ok(d)
}

fn byte(v: &[u8]) -> Result<u8, HepError> {
    Ok(array::<1>(v)?[0])
}

fn array<const N: usize>(v: &[u8]) -> Result<[u8; N], HepError> {
    v.try_into()
        .map_err(|_| HepError::Malformed("chunk value of the wrong size"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_packets_are_errors_not_panics() {
        for bad in [
            &b""[..],
            b"HEP",
            b"HEP2\x00\x06",
            b"HEP3\x00\x07",                             // length says 7, 6 given
            b"HEP3\x00\x0a\x00\x00\x00\x01",             // chunk header cut short
            b"HEP3\x00\x0c\x00\x00\x00\x01\x00\x05",     // chunk length below 6
            b"HEP3\x00\x0d\x00\x00\x00\x01\x00\x08\x02", // chunk longer than the packet
            b"HEP3\x00\x0d\x00\x00\x00\x01\x00\x07\x02", // no addresses, no payload
        ] {
            assert!(decode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn packet_len_frames_a_stream() {
        assert_eq!(packet_len(b"HEP3\x00").unwrap(), None);
        assert_eq!(packet_len(b"HEP3\x01\x00rest").unwrap(), Some(256));
        assert!(packet_len(b"GET / HTTP/1.1").is_err());
    }
}
