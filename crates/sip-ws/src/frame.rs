//! RFC 6455 §5 framing on the server side: client frames are masked, ours are not.
//! Fragmented data messages are reassembled (up to the decoder's cap), control frames
//! come out as events to answer; anything that breaks the protocol is a [`FrameError`]
//! naming the close code (§7.4.1) to send before the connection ends.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// A frame's opcode (§5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    /// The rest of a fragmented message.
    Continuation,
    /// UTF-8 text.
    Text,
    /// Bytes.
    Binary,
    /// Closing handshake.
    Close,
    /// Ping: answered by a pong with its payload.
    Ping,
    /// Pong.
    Pong,
}

impl Opcode {
    fn from_bits(b: u8) -> Option<Opcode> {
        Some(match b {
            0 => Opcode::Continuation,
            1 => Opcode::Text,
            2 => Opcode::Binary,
            8 => Opcode::Close,
            9 => Opcode::Ping,
            10 => Opcode::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0,
            Opcode::Text => 1,
            Opcode::Binary => 2,
            Opcode::Close => 8,
            Opcode::Ping => 9,
            Opcode::Pong => 10,
        }
    }

    fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

/// What the peer sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A whole data message (text or binary): one SIP message (RFC 7118 §5.2), or a
    /// CRLF keep-alive.
    Message(Bytes),
    /// A ping: answer with a pong carrying this payload.
    Ping(Bytes),
    /// A pong.
    Pong,
    /// The peer starts the closing handshake (with its status code, if any): answer
    /// with a close, then end.
    Close(Option<u16>),
}

/// Bytes that break the protocol; the connection is failed with [`FrameError::close_code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A client frame without a mask (§5.1).
    #[error("unmasked client frame")]
    Unmasked,
    /// A masked frame sent to a client.
    #[error("masked server frame")]
    Masked,
    /// Reserved bits set with no extension agreed (§5.2).
    #[error("reserved bits set")]
    Reserved,
    /// An opcode RFC 6455 does not define.
    #[error("unknown opcode {0}")]
    Opcode(u8),
    /// A control frame fragmented or longer than 125 bytes (§5.5).
    #[error("bad control frame")]
    Control,
    /// A message over the cap.
    #[error("message over {limit} bytes")]
    TooLarge {
        /// The cap.
        limit: usize,
    },
    /// A continuation with no message begun, or a new message before the last ended.
    #[error("bad fragmentation")]
    Fragmentation,
    /// A text message that is not UTF-8 (§8.1).
    #[error("text message not UTF-8")]
    Utf8,
    /// A close frame with a one-byte body or an invalid code.
    #[error("bad close frame")]
    ClosePayload,
}

impl FrameError {
    /// The close code to fail the connection with (§7.4.1): 1009 too big, 1007 bad
    /// data, 1002 protocol error.
    pub fn close_code(&self) -> u16 {
        match self {
            FrameError::TooLarge { .. } => 1009,
            FrameError::Utf8 => 1007,
            _ => 1002,
        }
    }
}

/// Reads frames off a byte stream.
#[derive(Debug)]
pub struct Decoder {
    max_message: usize,
    /// Server side: frames must be masked; client side: must not be.
    server: bool,
    /// A fragmented message being reassembled.
    partial: Option<(Opcode, BytesMut)>,
}

impl Decoder {
    /// A server's decoder: masked frames, messages up to `max_message` bytes.
    pub fn server(max_message: usize) -> Decoder {
        Decoder {
            max_message,
            server: true,
            partial: None,
        }
    }

    /// A client's decoder (tests, load tools): unmasked frames.
    pub fn client(max_message: usize) -> Decoder {
        Decoder {
            server: false,
            ..Decoder::server(max_message)
        }
    }

    /// The next event from the front of `buf`, consuming what it used; `Ok(None)` while
    /// more bytes are needed. A message over the cap is refused as soon as its header
    /// says so, before its payload is read.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Event>, FrameError> {
        loop {
            let Some((fin, opcode, masked, len, header)) = self.header(buf)? else {
                return Ok(None);
            };
            if masked != self.server {
                return Err(if self.server {
                    FrameError::Unmasked
                } else {
                    FrameError::Masked
                });
            }
            let mask_len = if masked { 4 } else { 0 };
            let total = header + mask_len + len;
            if buf.len() < total {
                // Room for the rest of this frame, at most the cap: no more.
                buf.reserve(total - buf.len());
                return Ok(None);
            }
            let mut mask = [0u8; 4];
            buf.advance(header);
            if masked {
                buf.copy_to_slice(&mut mask);
            }
            let mut payload = buf.split_to(len);
            if masked {
                unmask(&mut payload, mask);
            }
            match opcode {
                Opcode::Text | Opcode::Binary => {
                    if self.partial.is_some() {
                        return Err(FrameError::Fragmentation);
                    }
                    if fin {
                        return finish(opcode, payload).map(Some);
                    }
                    self.partial = Some((opcode, payload));
                }
                Opcode::Continuation => {
                    let Some((first, mut whole)) = self.partial.take() else {
                        return Err(FrameError::Fragmentation);
                    };
                    whole.unsplit(payload);
                    if fin {
                        return finish(first, whole).map(Some);
                    }
                    self.partial = Some((first, whole));
                }
                Opcode::Ping => return Ok(Some(Event::Ping(payload.freeze()))),
                Opcode::Pong => return Ok(Some(Event::Pong)),
                Opcode::Close => return close_event(&payload).map(Some),
            }
        }
    }

    /// The frame header at the front of `buf`: (FIN, opcode, masked, payload length,
    /// header length without the mask); `None` while incomplete.
    #[allow(clippy::type_complexity)]
    fn header(&self, buf: &[u8]) -> Result<Option<(bool, Opcode, bool, usize, usize)>, FrameError> {
        let [b0, b1, ..] = *buf else {
            return Ok(None);
        };
        if b0 & 0x70 != 0 {
            return Err(FrameError::Reserved);
        }
        let fin = b0 & 0x80 != 0;
        let opcode = Opcode::from_bits(b0 & 0x0f).ok_or(FrameError::Opcode(b0 & 0x0f))?;
        let masked = b1 & 0x80 != 0;
        let (len, header) = match b1 & 0x7f {
            126 => match buf.get(2..4) {
                Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
                None => return Ok(None),
            },
            127 => match buf.get(2..10) {
                Some(b) => {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    (u64::from_be_bytes(a), 10)
                }
                None => return Ok(None),
            },
            n => (u64::from(n), 2),
        };
        if opcode.is_control() && (!fin || len > 125) {
            return Err(FrameError::Control);
        }
        let so_far = self.partial.as_ref().map_or(0, |(_, p)| p.len() as u64);
        if so_far.saturating_add(len) > self.max_message as u64 {
            return Err(FrameError::TooLarge {
                limit: self.max_message,
            });
        }
        // Within the cap, so within usize.
        Ok(Some((fin, opcode, masked, len as usize, header)))
    }
}

fn finish(opcode: Opcode, payload: BytesMut) -> Result<Event, FrameError> {
    if opcode == Opcode::Text && std::str::from_utf8(&payload).is_err() {
        return Err(FrameError::Utf8);
    }
    Ok(Event::Message(payload.freeze()))
}

fn close_event(payload: &[u8]) -> Result<Event, FrameError> {
    match payload {
        [] => Ok(Event::Close(None)),
        [_] => Err(FrameError::ClosePayload),
        [a, b, reason @ ..] => {
            let code = u16::from_be_bytes([*a, *b]);
            // §7.4: 1000-2999 defined or reserved for the protocol (1004-1006, 1015 never
            // sent), 3000-4999 for applications.
            let valid = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !valid || std::str::from_utf8(reason).is_err() {
                return Err(FrameError::ClosePayload);
            }
            Ok(Event::Close(Some(code)))
        }
    }
}

fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    // Four bytes at a time, then the tail.
    let mut chunks = payload.chunks_exact_mut(4);
    let m = u32::from_ne_bytes(mask);
    for c in &mut chunks {
        let v = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]) ^ m;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i];
    }
}

/// Append one final frame to `out`, masked with `mask` when given (a client's).
pub fn encode(opcode: Opcode, payload: &[u8], mask: Option<[u8; 4]>, out: &mut BytesMut) {
    out.reserve(payload.len() + 14);
    out.put_u8(0x80 | opcode.bits());
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.put_u8(m | n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.put_u8(m | 126);
            out.put_u16(n as u16);
        }
        n => {
            out.put_u8(m | 127);
            out.put_u64(n as u64);
        }
    }
    match mask {
        Some(k) => {
            out.put_slice(&k);
            let start = out.len();
            out.put_slice(payload);
            unmask(&mut out[start..], k);
        }
        None => out.put_slice(payload),
    }
}

/// One SIP message as a server's frame: text when it is UTF-8 (what browsers' SIP
/// stacks expect), binary otherwise.
pub fn message(payload: &[u8]) -> Bytes {
    let op = if std::str::from_utf8(payload).is_ok() {
        Opcode::Text
    } else {
        Opcode::Binary
    };
    let mut out = BytesMut::new();
    encode(op, payload, None, &mut out);
    out.freeze()
}

/// The payload of one of our (unmasked, final) data frames; `None` for a control
/// frame or bytes that are not one.
pub fn data_payload(frame: &[u8]) -> Option<&[u8]> {
    let [b0, b1, ..] = *frame else {
        return None;
    };
    if !matches!(b0 & 0x0f, 1 | 2) || b1 & 0x80 != 0 {
        return None;
    }
    let start = match b1 & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    frame.get(start..)
}

/// A server's close frame with `code`.
pub fn close(code: u16) -> Bytes {
    let mut out = BytesMut::new();
    encode(Opcode::Close, &code.to_be_bytes(), None, &mut out);
    out.freeze()
}

/// A server's pong answering a ping's payload.
pub fn pong(payload: &[u8]) -> Bytes {
    let mut out = BytesMut::new();
    encode(Opcode::Pong, payload, None, &mut out);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(op: Opcode, fin: bool, payload: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        encode(op, payload, Some([0x37, 0xfa, 0x21, 0x3d]), &mut b);
        if !fin {
            b[0] &= 0x7f;
        }
        b
    }

    #[test]
    fn the_rfc_6455_masked_hello() {
        // §5.7: a single-frame masked text message "Hello".
        let mut b = BytesMut::from(
            &[
                0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
            ][..],
        );
        let mut d = Decoder::server(1000);
        assert_eq!(
            d.decode(&mut b),
            Ok(Some(Event::Message(Bytes::from_static(b"Hello"))))
        );
        assert!(b.is_empty());
        // And ours, unmasked, as the RFC shows it.
        assert_eq!(
            &message(b"Hello")[..],
            &[0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]
        );
    }

    #[test]
    fn fragments_with_a_ping_between_come_out_whole_byte_by_byte() {
        let mut stream = masked(Opcode::Text, false, b"INVITE sip:");
        stream.extend_from_slice(&masked(Opcode::Ping, true, b"hi"));
        stream.extend_from_slice(&masked(Opcode::Continuation, true, b"bob SIP/2.0"));
        stream.extend_from_slice(&masked(Opcode::Close, true, &1000u16.to_be_bytes()));
        let mut d = Decoder::server(1000);
        let mut buf = BytesMut::new();
        let mut events = Vec::new();
        for b in stream {
            buf.extend_from_slice(&[b]);
            while let Some(e) = d.decode(&mut buf).unwrap() {
                events.push(e);
            }
        }
        assert_eq!(
            events,
            [
                Event::Ping(Bytes::from_static(b"hi")),
                Event::Message(Bytes::from_static(b"INVITE sip:bob SIP/2.0")),
                Event::Close(Some(1000)),
            ]
        );
    }

    #[test]
    fn large_lengths_round_trip_and_the_cap_is_enforced_before_the_payload() {
        for n in [125, 126, 65535, 65536] {
            let payload = vec![b'a'; n];
            let mut b = masked(Opcode::Binary, true, &payload);
            let mut d = Decoder::server(70_000);
            assert_eq!(
                d.decode(&mut b),
                Ok(Some(Event::Message(Bytes::from(payload))))
            );
        }
        // A header declaring 2^40 bytes: refused at once, with nothing else read.
        let mut b = BytesMut::from(&[0x82, 0xff, 0, 0, 1, 0, 0, 0, 0, 0][..]);
        assert_eq!(
            Decoder::server(65_535).decode(&mut b),
            Err(FrameError::TooLarge { limit: 65_535 })
        );
        // Fragments adding up past the cap.
        let mut b = masked(Opcode::Text, false, &[b'a'; 60]);
        b.extend_from_slice(&masked(Opcode::Continuation, true, &[b'a'; 60]));
        let mut d = Decoder::server(100);
        assert_eq!(d.decode(&mut b), Err(FrameError::TooLarge { limit: 100 }));
        assert_eq!(FrameError::TooLarge { limit: 1 }.close_code(), 1009);
    }

    #[test]
    fn protocol_breaks_are_errors_with_their_close_codes() {
        let server = || Decoder::server(1000);
        let mut unmasked = BytesMut::new();
        encode(Opcode::Text, b"x", None, &mut unmasked);
        assert_eq!(server().decode(&mut unmasked), Err(FrameError::Unmasked));
        let mut rsv = masked(Opcode::Text, true, b"x");
        rsv[0] |= 0x40;
        assert_eq!(server().decode(&mut rsv), Err(FrameError::Reserved));
        let mut op = masked(Opcode::Text, true, b"x");
        op[0] = (op[0] & 0xf0) | 3;
        assert_eq!(server().decode(&mut op), Err(FrameError::Opcode(3)));
        let mut long_ping = masked(Opcode::Ping, true, &[0; 126]);
        assert_eq!(server().decode(&mut long_ping), Err(FrameError::Control));
        let mut cont = masked(Opcode::Continuation, true, b"x");
        assert_eq!(server().decode(&mut cont), Err(FrameError::Fragmentation));
        let mut two = masked(Opcode::Text, false, b"x");
        two.extend_from_slice(&masked(Opcode::Text, true, b"y"));
        assert_eq!(server().decode(&mut two), Err(FrameError::Fragmentation));
        let mut bad_utf8 = masked(Opcode::Text, true, &[0xff, 0xfe]);
        assert_eq!(server().decode(&mut bad_utf8), Err(FrameError::Utf8));
        assert_eq!(FrameError::Utf8.close_code(), 1007);
        let mut close1 = masked(Opcode::Close, true, &[3]);
        assert_eq!(server().decode(&mut close1), Err(FrameError::ClosePayload));
        let mut close_bad = masked(Opcode::Close, true, &1005u16.to_be_bytes());
        assert_eq!(
            server().decode(&mut close_bad),
            Err(FrameError::ClosePayload)
        );
        assert_eq!(FrameError::Unmasked.close_code(), 1002);
        // A client refuses masked frames from a server.
        let mut m = masked(Opcode::Text, true, b"x");
        assert_eq!(Decoder::client(10).decode(&mut m), Err(FrameError::Masked));
    }

    #[test]
    fn binary_sip_goes_out_binary_and_close_and_pong_are_well_formed() {
        assert_eq!(message(&[0xff])[0], 0x82);
        assert_eq!(data_payload(&message(b"INVITE")), Some(&b"INVITE"[..]));
        let big = vec![b'x'; 70_000];
        assert_eq!(data_payload(&message(&big)), Some(&big[..]));
        assert_eq!(data_payload(&close(1000)), None);
        let mut c = BytesMut::from(&close(1001)[..]);
        assert_eq!(
            Decoder::client(10).decode(&mut c),
            Ok(Some(Event::Close(Some(1001))))
        );
        let mut p = BytesMut::from(&pong(b"x")[..]);
        assert_eq!(Decoder::client(10).decode(&mut p), Ok(Some(Event::Pong)));
    }

    proptest::proptest! {
        /// Whatever the bytes, the decoder ends in an event, a need for more, or an
        /// error, never a panic; and what it consumed never exceeds what it was given.
        #[test]
        fn any_bytes_are_handled(data in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let mut d = Decoder::server(200);
            let mut buf = BytesMut::from(&data[..]);
            for _ in 0..300 {
                match d.decode(&mut buf) {
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => break,
                }
            }
        }

        /// Any message, split anywhere into fragments, comes out whole.
        #[test]
        fn fragmented_messages_reassemble(
            payload in proptest::collection::vec(proptest::num::u8::ANY, 0..500),
            cuts in proptest::collection::vec(0usize..500, 0..5),
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().filter(|&c| c < payload.len()).collect();
            cuts.sort_unstable();
            cuts.dedup();
            let mut bounds = vec![0];
            bounds.extend(cuts);
            bounds.push(payload.len());
            let n = bounds.len() - 1;
            let mut stream = BytesMut::new();
            for i in 0..n {
                let op = if i == 0 { Opcode::Binary } else { Opcode::Continuation };
                let mut f = masked(op, i == n - 1, &payload[bounds[i]..bounds[i + 1]]);
                stream.extend_from_slice(&f.split());
            }
            let mut d = Decoder::server(1000);
            proptest::prop_assert_eq!(d.decode(&mut stream), Ok(Some(Event::Message(Bytes::from(payload)))));
        }
    }
}
