//! siptrace: a copy of every SIP message a transport reads or writes goes to the HEP
//! collector (crate `hep`) when the operator turns it on. The sink decides sampling and
//! queues without waiting; a disabled one costs a branch per message.

use std::net::SocketAddr;

use sip_core::SipMessage;
use sip_txn::Transport;

use crate::Inner;

/// A message read from `src` on our socket `dst`.
pub(crate) fn received(
    inner: &Inner,
    transport: Transport,
    src: SocketAddr,
    dst: SocketAddr,
    msg: &SipMessage,
) {
    let sink = &inner.config.capture;
    if sink.is_enabled() {
        sink.capture(
            src,
            dst,
            transport,
            msg.as_bytes(),
            msg.call_id().unwrap_or_default(),
        );
    }
}

/// Bytes written from our socket `src` to `dst` (a message, or a keep-alive pong,
/// which is not exported).
pub(crate) fn sent(
    inner: &Inner,
    transport: Transport,
    src: SocketAddr,
    dst: SocketAddr,
    bytes: &[u8],
) {
    let sink = &inner.config.capture;
    if sink.is_enabled() && bytes.len() > 4 {
        sink.capture(src, dst, transport, bytes, call_id_of(bytes));
    }
}

/// The Call-ID of a message we wrote (bytes we built, so well-formed): the value of the
/// first `Call-ID` or compact `i` header in the head, trimmed; empty if none. Scanned
/// rather than parsed: a full parse of every outbound message would cost more than the
/// export itself.
fn call_id_of(bytes: &[u8]) -> &str {
    let head_end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(bytes.len());
    for line in bytes[..head_end].split(|&b| b == b'\n').skip(1) {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = line[..colon].trim_ascii();
        if name.eq_ignore_ascii_case(b"call-id") || name.eq_ignore_ascii_case(b"i") {
            let value = line[colon + 1..].trim_ascii();
            return std::str::from_utf8(value).unwrap_or_default();
        }
    }
    ""
}

#[cfg(test)]
mod tests {
    use super::call_id_of;

    #[test]
    fn the_call_id_is_found_in_either_form_and_not_in_the_body() {
        let full = b"INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nCALL-ID:  abc@h \r\nCSeq: 1 INVITE\r\n\r\n";
        assert_eq!(call_id_of(full), "abc@h");
        let compact = b"SIP/2.0 200 OK\r\nv: SIP/2.0/UDP h\r\ni: x1\r\n\r\n";
        assert_eq!(call_id_of(compact), "x1");
        let body_only = b"MESSAGE sip:a@b SIP/2.0\r\nContent-Length: 12\r\n\r\nCall-ID: no\r\n";
        assert_eq!(call_id_of(body_only), "");
        assert_eq!(call_id_of(b"\r\n"), "");
    }
}
