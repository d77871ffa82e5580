//! # sip-ws: SIP over WebSocket (RFC 7118), sans-IO
//!
//! What a WebSocket server needs to carry SIP, as bytes in and bytes or events out, with
//! no socket: the transports (`sip-transport`) drive it.
//!
//! * [`handshake`]: the opening handshake (RFC 6455 §4.2). A browser's HTTP/1.1 `GET` with
//!   `Upgrade: websocket`, version 13, a key, and the `sip` subprotocol (RFC 7118 §4.1:
//!   a server that does not see `sip` among the offered protocols refuses) is answered
//!   `101 Switching Protocols`; anything else gets a 400 (or 426 for another version)
//!   and the connection ends.
//! * [`frame`]: the framing (RFC 6455 §5). Client frames must be masked; fragmented
//!   messages are reassembled up to a cap; control frames (ping, pong, close) are
//!   answered; each complete message is one SIP message (RFC 7118 §5.2). What breaks the
//!   protocol is an error naming the close code to send.
//!
//! Both are bounded: the handshake head to [`handshake::MAX_HEAD`], a message to the
//! decoder's cap (the SIP parser's maximum message size), so a client cannot make us
//! buffer without limit.

pub mod frame;
pub mod handshake;

pub use frame::{Decoder, Event, FrameError, Opcode};
pub use handshake::{HandshakeError, Upgrade};
