//! Datagram classification and the RTP/RTCP headers the relay reads.
//!
//! Everything here borrows the datagram and returns plain values: no copy, no
//! allocation, no panic on any input. Payloads are never interpreted, so an SRTP body
//! (RFC 3711 keeps the RTP header in the clear) is counted like any other.

/// What a datagram on a media port is, by its first bytes (RFC 7983 demultiplexing, and
/// RFC 5761 to tell RTCP from RTP on a multiplexed port).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// RTP (version 2, payload type outside the RTCP range).
    Rtp,
    /// RTCP (version 2, packet type 192–223).
    Rtcp,
    /// STUN (ICE connectivity checks, consent).
    Stun,
    /// DTLS (DTLS-SRTP key exchange).
    Dtls,
    /// Anything else: forwarded untouched, counted apart.
    Other,
}

/// Classify a datagram.
#[must_use]
pub fn classify(d: &[u8]) -> Kind {
    let Some(&b0) = d.first() else {
        return Kind::Other;
    };
    match b0 {
        0..=3 => Kind::Stun,
        20..=63 => Kind::Dtls,
        128..=191 if d.len() >= 8 => match d[1] {
            // RFC 5761 §4: RTCP packet types 192–223 overlap RTP payload types 64–95
            // with the marker bit set, which RTP must therefore not use.
            192..=223 => Kind::Rtcp,
            _ if d.len() >= 12 => Kind::Rtp,
            _ => Kind::Other,
        },
        _ => Kind::Other,
    }
}

/// The fixed RTP header fields the statistics need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeader {
    /// Payload type (7 bits).
    pub payload_type: u8,
    /// The marker bit.
    pub marker: bool,
    /// Sequence number.
    pub seq: u16,
    /// Media timestamp, in the payload's clock.
    pub timestamp: u32,
    /// Synchronisation source.
    pub ssrc: u32,
    /// Bytes of payload after the header, CSRCs, extension and padding.
    pub payload_len: usize,
}

impl RtpHeader {
    /// Read an RTP header; `None` when it is not a well-formed RTP version 2 packet.
    #[must_use]
    pub fn parse(d: &[u8]) -> Option<RtpHeader> {
        if d.len() < 12 || d[0] >> 6 != 2 {
            return None;
        }
        let csrc = usize::from(d[0] & 0x0f);
        let mut header = 12 + 4 * csrc;
        if d[0] & 0x10 != 0 {
            // Extension: 16-bit profile, 16-bit length in 32-bit words.
            let ext = d.get(header..header + 4)?;
            header += 4 + 4 * usize::from(u16::from_be_bytes([ext[2], ext[3]]));
        }
        let padding = if d[0] & 0x20 != 0 {
            usize::from(*d.last()?)
        } else {
            0
        };
        let payload_len = d.len().checked_sub(header)?.checked_sub(padding)?;
        Some(RtpHeader {
            payload_type: d[1] & 0x7f,
            marker: d[1] & 0x80 != 0,
            seq: u16::from_be_bytes([d[2], d[3]]),
            timestamp: u32::from_be_bytes([d[4], d[5], d[6], d[7]]),
            ssrc: u32::from_be_bytes([d[8], d[9], d[10], d[11]]),
            payload_len,
        })
    }
}

/// One report block of an RTCP SR or RR (RFC 3550 §6.4.1): what the sender of the
/// report observed about the stream of `ssrc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReportBlock {
    /// The source the report is about.
    pub ssrc: u32,
    /// Fraction lost since the previous report, in 1/256.
    pub fraction_lost: u8,
    /// Cumulative packets lost (signed 24 bits: duplicates can make it negative).
    pub cumulative_lost: i32,
    /// Extended highest sequence number received.
    pub highest_seq: u32,
    /// Interarrival jitter, in timestamp units.
    pub jitter: u32,
}

/// The first report block of an RTCP compound packet, if it carries one. SRTCP (whose
/// report blocks are encrypted) must not be passed here; the caller knows the profile.
#[must_use]
pub fn first_report_block(d: &[u8]) -> Option<ReportBlock> {
    let mut rest = d;
    // A compound packet is a chain of RTCP packets; bounded by the datagram length.
    while rest.len() >= 8 {
        if rest[0] >> 6 != 2 {
            return None;
        }
        let count = usize::from(rest[0] & 0x1f);
        let len = 4 * (usize::from(u16::from_be_bytes([rest[2], rest[3]])) + 1);
        let packet = rest.get(..len)?;
        let blocks_at = match packet[1] {
            200 => 28, // SR: header 4, SSRC 4, sender info 20.
            201 => 8,  // RR: header 4, SSRC 4.
            _ => {
                rest = &rest[len..];
                continue;
            }
        };
        if count == 0 {
            rest = &rest[len..];
            continue;
        }
        let b = packet.get(blocks_at..blocks_at + 24)?;
        let be = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        // Sign-extend the 24-bit cumulative count.
        let cumulative = (be(4) << 8) as i32 >> 8;
        return Some(ReportBlock {
            ssrc: be(0),
            fraction_lost: b[4],
            cumulative_lost: cumulative,
            highest_seq: be(8),
            jitter: be(12),
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtp(seq: u16, ts: u32, payload: usize) -> Vec<u8> {
        let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef];
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p[4..8].copy_from_slice(&ts.to_be_bytes());
        p.resize(12 + payload, 0xd5);
        p
    }

    #[test]
    fn classifies_by_first_bytes() {
        assert_eq!(classify(&rtp(1, 2, 160)), Kind::Rtp);
        let mut rr = vec![0x81, 201, 0, 7];
        rr.resize(32, 0);
        assert_eq!(classify(&rr), Kind::Rtcp);
        assert_eq!(classify(&[0, 1, 0, 0]), Kind::Stun);
        assert_eq!(classify(&[22, 254, 253]), Kind::Dtls);
        assert_eq!(classify(&[]), Kind::Other);
        assert_eq!(classify(&[0x80, 0]), Kind::Other);
        assert_eq!(classify(b"hello"), Kind::Other);
    }

    #[test]
    fn rtp_header_with_csrc_extension_and_padding() {
        let mut p = rtp(0xfffe, 1234, 0);
        p[0] = 0x80 | 0x20 | 0x10 | 1; // padding, extension, one CSRC
        p[1] = 0x80 | 8;
        p.extend_from_slice(&[1, 2, 3, 4]); // CSRC
        p.extend_from_slice(&[0xbe, 0xde, 0, 1, 9, 9, 9, 9]); // one-word extension
        p.extend_from_slice(&[7; 160]);
        p.extend_from_slice(&[0, 0, 3]); // 3 bytes of padding
        let h = RtpHeader::parse(&p).expect("rtp");
        assert_eq!(
            (
                h.payload_type,
                h.marker,
                h.seq,
                h.timestamp,
                h.ssrc,
                h.payload_len
            ),
            (8, true, 0xfffe, 1234, 0xdead_beef, 160)
        );
    }

    #[test]
    fn rtp_header_refuses_short_or_lying_packets() {
        assert!(RtpHeader::parse(&[0x80; 11]).is_none());
        let mut p = rtp(1, 1, 0);
        p[0] = 0x8f; // 15 CSRCs that are not there
        assert!(RtpHeader::parse(&p).is_none());
        let mut p = rtp(1, 1, 4);
        p[0] |= 0x20;
        *p.last_mut().expect("byte") = 200; // more padding than payload
        assert!(RtpHeader::parse(&p).is_none());
        assert!(RtpHeader::parse(&[0x40; 20]).is_none()); // version 1
    }

    #[test]
    fn report_block_from_rr_and_sr() {
        let mut rr = vec![0x81, 201, 0, 7, 0, 0, 0, 1];
        rr.extend_from_slice(&0xdead_beef_u32.to_be_bytes());
        rr.push(64); // 25 %
        rr.extend_from_slice(&[0xff, 0xff, 0xfe]); // -2
        rr.extend_from_slice(&70_000u32.to_be_bytes());
        rr.extend_from_slice(&80u32.to_be_bytes());
        rr.extend_from_slice(&[0; 8]);
        let b = first_report_block(&rr).expect("block");
        assert_eq!(
            (
                b.ssrc,
                b.fraction_lost,
                b.cumulative_lost,
                b.highest_seq,
                b.jitter
            ),
            (0xdead_beef, 64, -2, 70_000, 80)
        );
        // An SR with no blocks, then an SDES, then that RR: the RR's block is found.
        let mut compound = vec![0x80, 200, 0, 6];
        compound.resize(28, 0);
        compound.extend_from_slice(&[0x81, 202, 0, 1, 0, 0, 0, 1]);
        compound.extend_from_slice(&rr);
        assert_eq!(first_report_block(&compound), Some(b));
        // Truncated: nothing, no panic.
        assert_eq!(first_report_block(&rr[..20]), None);
    }

    proptest::proptest! {
        #[test]
        fn never_panics(d in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = classify(&d);
            let _ = RtpHeader::parse(&d);
            let _ = first_report_block(&d);
        }
    }
}
