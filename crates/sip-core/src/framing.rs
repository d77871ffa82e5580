//! Framing: where one message ends, for datagrams (UDP) and byte streams (TCP, TLS, WS).
//!
//! RFC 3261 §18.3: on a datagram the packet bounds the message and Content-Length, when
//! present, bounds the body; on a stream Content-Length is mandatory. RFC 5626 §4.4.1:
//! a stream carries CRLF keep-alives between messages.

use bytes::{Buf, BytesMut};

use crate::error::Error;
use crate::message::{Head, Limits, SipMessage, parse_head};

/// What one datagram held.
#[derive(Debug, Clone)]
// Boxing the message would cost an allocation per datagram; the index is inline on purpose.
#[allow(clippy::large_enum_variant)]
pub enum Datagram {
    /// A SIP message.
    Message(SipMessage),
    /// Only CR/LF bytes: a keep-alive (RFC 5626 §3.5.1 style `CRLFCRLF` ping over UDP).
    KeepAlive,
}

/// Parse the message in one datagram.
///
/// Leading CRLFs are skipped. Bytes after Content-Length are discarded (RFC 3261 §18.3,
/// RFC 4475 §3.1.1.8); without Content-Length the body is the rest of the datagram.
pub fn parse_datagram(buf: bytes::Bytes, limits: &Limits) -> Result<Datagram, Error> {
    if buf.len() > limits.max_message_size {
        return Err(Error::MessageTooLarge {
            limit: limits.max_message_size,
        });
    }
    let skip = buf
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count();
    if skip == buf.len() {
        return Ok(Datagram::KeepAlive);
    }
    let buf = if skip > 0 { buf.slice(skip..) } else { buf };
    let head = parse_head(&buf, limits)?;
    let body_start = head.body_start as usize;
    let end = match head.content_length {
        Some(cl) => {
            let end = body_start + cl as usize;
            if end > buf.len() {
                return Err(Error::BodyTruncated);
            }
            end
        }
        None => buf.len(),
    };
    let buf = if end < buf.len() {
        buf.slice(..end)
    } else {
        buf
    };
    Ok(Datagram::Message(SipMessage::from_parts(buf, head)))
}

/// A keep-alive seen on a stream (RFC 5626 §4.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepAlive {
    /// `CRLFCRLF`: the peer expects a `CRLF` pong.
    Ping,
    /// A lone `CRLF` (or bare LF): a pong, or padding before a message; needs no answer.
    Pong,
}

/// What the stream decoder produced.
#[derive(Debug, Clone)]
// As for `Datagram`: no allocation per message.
#[allow(clippy::large_enum_variant)]
pub enum Frame {
    /// One complete message.
    Message(SipMessage),
    /// A keep-alive between messages.
    KeepAlive(KeepAlive),
}

/// Incremental decoder for stream transports.
///
/// Feed it the connection's read buffer; it consumes complete messages from the front.
/// State survives between calls so that a message trickling in a byte at a time is
/// scanned once, not once per byte.
///
/// Every error it returns is fatal for the connection: the decoder cannot tell where the
/// next message starts. Answer if [`error_reply`](crate::error_reply) can, then close.
#[derive(Debug)]
pub struct StreamDecoder {
    limits: Limits,
    /// Bytes at the front of the buffer already searched for the end of the head.
    scanned: usize,
    /// Head parsed, waiting for the body: the head and the total message length.
    pending: Option<(Head, usize)>,
    /// The last keep-alive was a lone CRLF with nothing after it yet: the first half of a
    /// `CRLFCRLF` ping that TCP split, or a pong.
    lone_crlf: bool,
}

impl StreamDecoder {
    /// A decoder with the given limits.
    pub fn new(limits: Limits) -> Self {
        StreamDecoder {
            limits,
            scanned: 0,
            pending: None,
            lone_crlf: false,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Take the next frame from the front of `buf`.
    ///
    /// `Ok(None)` means more bytes are needed. After an error the connection's framing is
    /// lost; the caller should answer if it can and close the connection.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, Error> {
        if let Some((_, total)) = &self.pending {
            let total = *total;
            if buf.len() < total {
                return Ok(None);
            }
            let Some((head, _)) = self.pending.take() else {
                return Ok(None);
            };
            let bytes = buf.split_to(total).freeze();
            self.scanned = 0;
            return Ok(Some(Frame::Message(SipMessage::from_parts(bytes, head))));
        }
        if self.scanned == 0
            && let Some(ka) = self.keep_alive(buf)
        {
            return Ok(ka);
        }
        if !buf.is_empty() {
            self.lone_crlf = false;
        }
        // Find the empty line that ends the head, resuming where the last call stopped.
        let from = self.scanned.saturating_sub(3);
        let Some(head_end) = find_head_end(&buf[..], from) else {
            if buf.len() > self.limits.max_message_size {
                return Err(Error::MessageTooLarge {
                    limit: self.limits.max_message_size,
                });
            }
            self.scanned = buf.len();
            return Ok(None);
        };
        if head_end > self.limits.max_message_size {
            return Err(Error::MessageTooLarge {
                limit: self.limits.max_message_size,
            });
        }
        let head = parse_head(&buf[..head_end], &self.limits)?;
        let cl = head.content_length.ok_or(Error::MissingContentLength)? as usize;
        let total = head.body_start as usize + cl;
        if total > self.limits.max_message_size {
            return Err(Error::MessageTooLarge {
                limit: self.limits.max_message_size,
            });
        }
        if buf.len() < total {
            self.pending = Some((head, total));
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        let bytes = buf.split_to(total).freeze();
        self.scanned = 0;
        Ok(Some(Frame::Message(SipMessage::from_parts(bytes, head))))
    }

    /// Keep-alive CRLFs at the front of the buffer, before any message byte.
    ///
    /// A lone CRLF is reported at once (a pong must not wait for more traffic); if another
    /// CRLF follows it before any message byte, the pair is a ping that TCP split, and the
    /// second half is reported as [`KeepAlive::Ping`] so that it gets its pong.
    fn keep_alive(&mut self, buf: &mut BytesMut) -> Option<Option<Frame>> {
        match buf.first()? {
            b'\n' => {
                buf.advance(1);
                Some(Some(Frame::KeepAlive(KeepAlive::Pong)))
            }
            b'\r' => {
                if buf.len() < 2 {
                    return Some(None);
                }
                if buf[1] != b'\n' {
                    // A bare CR: leave it to the parser, which reports the defect.
                    return None;
                }
                if buf.get(2..4) == Some(b"\r\n") {
                    buf.advance(4);
                    self.lone_crlf = false;
                    return Some(Some(Frame::KeepAlive(KeepAlive::Ping)));
                }
                buf.advance(2);
                let rest_is_crlf_start = buf.first().is_none_or(|&b| b == b'\r');
                let ka = if self.lone_crlf {
                    self.lone_crlf = false;
                    KeepAlive::Ping
                } else {
                    self.lone_crlf = rest_is_crlf_start;
                    KeepAlive::Pong
                };
                Some(Some(Frame::KeepAlive(ka)))
            }
            _ => None,
        }
    }
}

/// Offset just past the empty line ending the head (`\n\r\n` or `\n\n`), searching from
/// `from`.
fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(p) = memchr::memchr(b'\n', buf.get(i..)?) {
        let nl = i + p;
        match (buf.get(nl + 1), buf.get(nl + 2)) {
            (Some(b'\n'), _) => return Some(nl + 2),
            (Some(b'\r'), Some(b'\n')) => return Some(nl + 3),
            _ => {}
        }
        i = nl + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPT: &[u8] = b"OPTIONS sip:a SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\nContent-Length: 4\r\n\r\nbody";

    fn msg(d: Datagram) -> SipMessage {
        match d {
            Datagram::Message(m) => m,
            Datagram::KeepAlive => panic!("keep-alive"),
        }
    }

    #[test]
    fn datagram_bodies() {
        let lim = Limits::default();
        let m = msg(parse_datagram(
            bytes::Bytes::from_static(b"OPTIONS sip:a SIP/2.0\r\nl: 2\r\n\r\nabEXTRA"),
            &lim,
        )
        .unwrap());
        assert_eq!(m.body(), b"ab");
        assert_eq!(m.as_bytes().len(), 33);
        let m = msg(parse_datagram(
            bytes::Bytes::from_static(b"OPTIONS sip:a SIP/2.0\r\nVia: x\r\n\r\nrest of datagram"),
            &lim,
        )
        .unwrap());
        assert_eq!(m.body(), b"rest of datagram");
        assert_eq!(m.content_length(), None);
        let e = parse_datagram(
            bytes::Bytes::from_static(b"OPTIONS sip:a SIP/2.0\r\nl: 9999\r\n\r\nshort"),
            &lim,
        )
        .unwrap_err();
        assert_eq!(e, Error::BodyTruncated);
        let m = msg(parse_datagram(
            bytes::Bytes::from_static(b"\r\n\r\nOPTIONS sip:a SIP/2.0\r\nl: 0\r\n\r\n"),
            &lim,
        )
        .unwrap());
        assert!(m.as_bytes().starts_with(b"OPTIONS"));
        assert!(matches!(
            parse_datagram(bytes::Bytes::from_static(b"\r\n\r\n"), &lim).unwrap(),
            Datagram::KeepAlive
        ));
        assert!(matches!(
            parse_datagram(bytes::Bytes::new(), &lim).unwrap(),
            Datagram::KeepAlive
        ));
        let big = vec![b'a'; 70_000];
        assert_eq!(
            parse_datagram(big.into(), &lim).unwrap_err(),
            Error::MessageTooLarge { limit: 65_535 }
        );
    }

    #[test]
    fn stream_whole_and_pipelined() {
        let mut d = StreamDecoder::new(Limits::default());
        let mut buf = BytesMut::new();
        buf.extend_from_slice(b"\r\n\r\n");
        buf.extend_from_slice(OPT);
        buf.extend_from_slice(b"\r\n");
        buf.extend_from_slice(OPT);
        let mut frames = vec![];
        while let Some(f) = d.decode(&mut buf).unwrap() {
            frames.push(f);
        }
        assert!(buf.is_empty());
        assert_eq!(frames.len(), 4);
        assert!(matches!(frames[0], Frame::KeepAlive(KeepAlive::Ping)));
        assert!(
            matches!(&frames[1], Frame::Message(m) if m.as_bytes() == OPT && m.body() == b"body")
        );
        assert!(matches!(frames[2], Frame::KeepAlive(KeepAlive::Pong)));
        assert!(matches!(&frames[3], Frame::Message(m) if m.as_bytes() == OPT));
    }

    #[test]
    fn stream_byte_by_byte() {
        let mut d = StreamDecoder::new(Limits::default());
        let mut buf = BytesMut::new();
        let mut input = b"\r\n\r\n".to_vec();
        input.extend_from_slice(OPT);
        input.extend_from_slice(OPT);
        let mut frames = vec![];
        for &b in &input {
            buf.extend_from_slice(&[b]);
            while let Some(f) = d.decode(&mut buf).unwrap() {
                frames.push(f);
            }
        }
        // The ping arrives split: its first half reads as a pong, its second as the ping.
        assert_eq!(frames.len(), 4);
        assert!(matches!(frames[0], Frame::KeepAlive(KeepAlive::Pong)));
        assert!(matches!(frames[1], Frame::KeepAlive(KeepAlive::Ping)));
        for f in &frames[2..] {
            assert!(matches!(f, Frame::Message(m) if m.as_bytes() == OPT));
        }
    }

    #[test]
    fn stream_errors() {
        let mut d = StreamDecoder::new(Limits::default());
        let mut buf = BytesMut::from(&b"OPTIONS sip:a SIP/2.0\r\nVia: x\r\n\r\n"[..]);
        assert_eq!(d.decode(&mut buf).unwrap_err(), Error::MissingContentLength);

        let lim = Limits {
            max_message_size: 100,
            ..Limits::default()
        };
        let mut d = StreamDecoder::new(lim);
        let mut buf = BytesMut::from(&b"OPTIONS sip:a SIP/2.0\r\nl: 500\r\n\r\n"[..]);
        assert_eq!(
            d.decode(&mut buf).unwrap_err(),
            Error::MessageTooLarge { limit: 100 }
        );

        let mut d = StreamDecoder::new(lim);
        let mut buf = BytesMut::from(&vec![b'a'; 101][..]);
        assert_eq!(
            d.decode(&mut buf).unwrap_err(),
            Error::MessageTooLarge { limit: 100 }
        );

        let mut d = StreamDecoder::new(Limits::default());
        let mut buf =
            BytesMut::from(&b"OPTIONS sip:a SIP/2.0\r\nl: 18446744073709551616\r\n\r\n"[..]);
        assert_eq!(d.decode(&mut buf).unwrap_err(), Error::InvalidContentLength);
    }

    #[test]
    fn stream_keepalives() {
        let mut d = StreamDecoder::new(Limits::default());
        // A lone pong is reported at once.
        let mut buf = BytesMut::from(&b"\r\n"[..]);
        assert!(matches!(
            d.decode(&mut buf).unwrap(),
            Some(Frame::KeepAlive(KeepAlive::Pong))
        ));
        assert!(buf.is_empty());
        // A ping split by TCP: the second half is answered as a ping.
        buf.extend_from_slice(b"\r\n");
        assert!(matches!(
            d.decode(&mut buf).unwrap(),
            Some(Frame::KeepAlive(KeepAlive::Ping))
        ));
        // Split after three bytes.
        let mut d = StreamDecoder::new(Limits::default());
        let mut buf = BytesMut::from(&b"\r\n\r"[..]);
        assert!(matches!(
            d.decode(&mut buf).unwrap(),
            Some(Frame::KeepAlive(KeepAlive::Pong))
        ));
        assert!(d.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(b"\n");
        assert!(matches!(
            d.decode(&mut buf).unwrap(),
            Some(Frame::KeepAlive(KeepAlive::Ping))
        ));
        // A pong followed by a message stays a pong, and the message decodes.
        let mut d = StreamDecoder::new(Limits::default());
        let mut buf = BytesMut::from(&b"\r\n"[..]);
        buf.extend_from_slice(OPT);
        assert!(matches!(
            d.decode(&mut buf).unwrap(),
            Some(Frame::KeepAlive(KeepAlive::Pong))
        ));
        assert!(matches!(
            d.decode(&mut buf).unwrap(),
            Some(Frame::Message(_))
        ));
        buf.extend_from_slice(b"\r\n");
        assert!(matches!(
            d.decode(&mut buf).unwrap(),
            Some(Frame::KeepAlive(KeepAlive::Pong))
        ));
    }

    #[test]
    fn start_line_errors_are_reported_not_skipped() {
        let mut d = StreamDecoder::new(Limits::default());
        let mut buf = BytesMut::from(&b"INVITE  sip:a SIP/2.0\r\nl: 0\r\n\r\n"[..]);
        assert!(matches!(d.decode(&mut buf), Err(Error::BadRequestLine(_))));
    }

    #[test]
    fn head_end() {
        assert_eq!(find_head_end(b"a\r\n\r\nb", 0), Some(5));
        assert_eq!(find_head_end(b"a\n\nb", 0), Some(3));
        assert_eq!(find_head_end(b"a\r\nb\r\n", 0), None);
        assert_eq!(find_head_end(b"a\r\n\r", 0), None);
    }
}
