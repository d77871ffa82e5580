//! Per-stream statistics from RTP headers (RFC 3550 appendix A.1 and A.8).
//!
//! One [`StreamStats`] counts what a party sends: the relay sees every packet, so loss is
//! measured from sequence-number gaps and jitter from arrival times against RTP
//! timestamps, the way the receiving party would (the relay sits just before it).

use std::time::Instant;

use crate::packet::{ReportBlock, RtpHeader};

/// A jump larger than this is a restart of the sequence, not loss (RFC 3550 A.1).
const MAX_DROPOUT: u16 = 3000;
/// Packets this far behind the highest sequence are late, not a restart.
const MAX_MISORDER: u16 = 100;

/// What a party sent, as seen by the relay.
#[derive(Debug, Clone, Default)]
pub struct StreamStats {
    /// Datagrams received from the party (RTP, RTCP and anything else).
    pub packets: u64,
    /// Bytes of those datagrams.
    pub bytes: u64,
    /// RTP packets among them.
    pub rtp_packets: u64,
    /// RTCP packets among them.
    pub rtcp_packets: u64,
    seq: Option<SeqState>,
    /// Interarrival jitter estimate, in 1/16 timestamp units (the A.8 fixed-point form).
    jitter_q4: u64,
    last_transit: Option<i64>,
    clock_rate: u32,
    /// The last report block the party sent about the stream it receives.
    pub last_report: Option<ReportBlock>,
}

#[derive(Debug, Clone, Copy)]
struct SeqState {
    ssrc: u32,
    base: u32,
    max: u16,
    cycles: u32,
    received: u64,
    bad: Option<u16>,
}

impl StreamStats {
    /// Statistics for a stream whose RTP clock runs at `clock_rate` Hz (8000 for G.711).
    #[must_use]
    pub fn new(clock_rate: u32) -> StreamStats {
        StreamStats {
            clock_rate: clock_rate.max(1),
            ..StreamStats::default()
        }
    }

    /// Count a non-RTP datagram (RTCP, STUN, DTLS, other).
    pub fn count(&mut self, len: usize) {
        self.packets += 1;
        self.bytes += len as u64;
    }

    /// Count an RTP packet that arrived at `arrival` (`epoch` is the session's start, the
    /// origin of the arrival clock).
    pub fn rtp(&mut self, h: &RtpHeader, len: usize, arrival: Instant, epoch: Instant) {
        self.count(len);
        self.rtp_packets += 1;
        let s = match &mut self.seq {
            Some(s) if s.ssrc == h.ssrc => s,
            _ => {
                // A new source (or the first packet): start its sequence afresh.
                self.seq = Some(SeqState {
                    ssrc: h.ssrc,
                    base: u32::from(h.seq),
                    max: h.seq,
                    cycles: 0,
                    received: 1,
                    bad: None,
                });
                self.last_transit = None;
                self.jitter(h, arrival, epoch);
                return;
            }
        };
        let delta = h.seq.wrapping_sub(s.max);
        if delta < MAX_DROPOUT {
            if h.seq < s.max {
                s.cycles += 1 << 16;
            }
            s.max = h.seq;
        } else if delta <= u16::MAX - MAX_MISORDER {
            // A big jump: believe it only when the next packet follows on (a restarted
            // sender), else it is a stray and does not move the sequence.
            if s.bad == Some(h.seq) {
                *s = SeqState {
                    ssrc: h.ssrc,
                    base: u32::from(h.seq),
                    max: h.seq,
                    cycles: 0,
                    received: 0,
                    bad: None,
                };
            } else {
                s.bad = Some(h.seq.wrapping_add(1));
                return;
            }
        }
        // else: a duplicate or late packet; counted, does not move the maximum.
        s.received += 1;
        self.jitter(h, arrival, epoch);
    }

    fn jitter(&mut self, h: &RtpHeader, arrival: Instant, epoch: Instant) {
        let nanos = arrival.saturating_duration_since(epoch).as_nanos();
        let arrival_ts = (nanos * u128::from(self.clock_rate) / 1_000_000_000) as i64;
        let transit = arrival_ts - i64::from(h.timestamp);
        if let Some(last) = self.last_transit {
            // Timestamps wrap at 32 bits; the difference of consecutive transits is small.
            let d = i64::from((transit - last) as i32).unsigned_abs();
            // J += (|D| - J) / 16, in 1/16 units: J16 += |D| - J16/16 (RFC 3550 A.8).
            self.jitter_q4 = self.jitter_q4 + d - (self.jitter_q4 + 8) / 16;
        }
        self.last_transit = Some(transit);
    }

    /// Packets expected from the sequence numbers of the current source.
    #[must_use]
    pub fn expected(&self) -> u64 {
        self.seq.map_or(0, |s| {
            u64::from(s.cycles + u32::from(s.max)) + 1 - u64::from(s.base)
        })
    }

    /// Packets lost so far: expected minus received, never below zero.
    #[must_use]
    pub fn lost(&self) -> u64 {
        self.seq
            .map_or(0, |s| self.expected().saturating_sub(s.received))
    }

    /// Interarrival jitter in timestamp units.
    #[must_use]
    pub fn jitter_ts(&self) -> u32 {
        u32::try_from(self.jitter_q4 / 16).unwrap_or(u32::MAX)
    }

    /// Interarrival jitter in milliseconds.
    #[must_use]
    pub fn jitter_ms(&self) -> f64 {
        self.jitter_q4 as f64 / 16.0 * 1000.0 / f64::from(self.clock_rate)
    }

    /// The RTP clock rate the jitter is measured in.
    #[must_use]
    pub fn clock_rate_hz(&self) -> u32 {
        self.clock_rate
    }

    /// The stream's SSRC, once an RTP packet was seen.
    #[must_use]
    pub fn ssrc(&self) -> Option<u32> {
        self.seq.map(|s| s.ssrc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn h(seq: u16, ts: u32) -> RtpHeader {
        RtpHeader {
            payload_type: 0,
            marker: false,
            seq,
            timestamp: ts,
            ssrc: 7,
            payload_len: 160,
        }
    }

    #[test]
    fn steady_stream_has_no_loss_and_no_jitter() {
        let t0 = Instant::now();
        let mut s = StreamStats::new(8000);
        for i in 0..500u32 {
            let at = t0 + Duration::from_millis(20 * u64::from(i));
            s.rtp(&h(65_000u16.wrapping_add(i as u16), 160 * i), 172, at, t0);
        }
        // The sequence wrapped at 65535 on the way and nothing was lost.
        assert_eq!((s.packets, s.rtp_packets, s.bytes), (500, 500, 86_000));
        assert_eq!((s.expected(), s.lost(), s.jitter_ts()), (500, 0, 0));
    }

    #[test]
    fn gaps_count_as_loss_and_late_packets_do_not() {
        let t0 = Instant::now();
        let mut s = StreamStats::new(8000);
        for seq in (0..100u16).filter(|q| q % 10 != 3) {
            s.rtp(&h(seq, 160 * u32::from(seq)), 172, t0, t0);
        }
        assert_eq!((s.expected(), s.lost()), (100, 10));
        // Two of the missing ones arrive late: loss goes down, the maximum does not move.
        s.rtp(&h(13, 0), 172, t0, t0);
        s.rtp(&h(23, 0), 172, t0, t0);
        assert_eq!((s.expected(), s.lost()), (100, 8));
    }

    #[test]
    fn jitter_follows_rfc3550_a8() {
        let t0 = Instant::now();
        let mut s = StreamStats::new(8000);
        // Every other packet 10 ms late: |D| = 80 timestamp units at each step.
        for i in 0..2000u32 {
            let late = if i % 2 == 1 { 10 } else { 0 };
            let at = t0 + Duration::from_millis(20 * u64::from(i) + late);
            s.rtp(&h(i as u16, 160 * i), 172, at, t0);
        }
        // J converges to |D| = 80 units = 10 ms.
        assert!((78..=80).contains(&s.jitter_ts()), "{}", s.jitter_ts());
        assert!((s.jitter_ms() - 10.0).abs() < 0.3, "{}", s.jitter_ms());
    }

    #[test]
    fn a_restarted_sequence_is_not_loss() {
        let t0 = Instant::now();
        let mut s = StreamStats::new(8000);
        for seq in 0..50 {
            s.rtp(&h(seq, 0), 172, t0, t0);
        }
        // A jump of 30000 once is a stray; twice in order is a restart.
        s.rtp(&h(30_000, 0), 172, t0, t0);
        assert_eq!(s.expected(), 50);
        s.rtp(&h(30_001, 0), 172, t0, t0);
        s.rtp(&h(30_002, 0), 172, t0, t0);
        assert_eq!((s.expected(), s.lost()), (2, 0));
        // A new SSRC starts afresh too.
        let mut other = h(9, 0);
        other.ssrc = 8;
        s.rtp(&other, 172, t0, t0);
        assert_eq!((s.ssrc(), s.expected(), s.lost()), (Some(8), 1, 0));
    }
}
