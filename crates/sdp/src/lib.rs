//! Sans-IO SDP handling for the sipcluster media relay.
//!
//! A relay anchors RTP by putting its own address and ports into the session
//! descriptions (RFC 8866, formerly RFC 4566) carried by SIP offers and
//! answers. This crate does the two halves of that job and nothing else:
//!
//! - [`Sdp::parse`] reads, without copying, just what a relay needs: the
//!   `o=` line, session and media `c=` lines (with multicast `/ttl[/count]`
//!   suffixes), `m=` lines (media, port, `/count`, protocol, formats),
//!   `a=rtcp` (RFC 3605), `a=rtcp-mux`, direction attributes, and generic
//!   access to every attribute so that callers can see `a=crypto`,
//!   `a=fingerprint` or ICE lines. Every other line is kept as an opaque
//!   [`Line`].
//! - [`Rewriter`] changes addresses and ports at line level: only the fields
//!   that are edited change, and every other byte of the body, line
//!   terminators included, is copied as it was. Keys, fingerprints, ICE
//!   candidates and unknown extensions therefore pass through untouched.
//!
//! There is no I/O, no async and no logging; the crate never panics on any
//! input, runs in time linear in the input, and refuses bodies with more than
//! [`MAX_LINES`] lines or [`MAX_MEDIA`] media sections.
//!
//! ```
//! use sdp::Sdp;
//!
//! let body = b"v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\n\
//!              t=0 0\r\nm=audio 49170 RTP/AVP 0\r\n";
//! let sdp = Sdp::parse(body)?;
//! assert_eq!(sdp.media()[0].port(), 49170);
//!
//! let mut rw = sdp.rewriter();
//! rw.set_session_connection("2001:db8::1".parse().unwrap());
//! rw.set_media_port(0, 30000)?;
//! assert_eq!(
//!     rw.finish(),
//!     b"v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP6 2001:db8::1\r\n\
//!       t=0 0\r\nm=audio 30000 RTP/AVP 0\r\n"
//! );
//! # Ok::<(), sdp::SdpError>(())
//! ```
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

mod error;
mod model;
mod parse;
mod rewrite;

pub use error::SdpError;
pub use model::{
    Address, Attribute, Attributes, Connection, Direction, Line, LineEnding, MAX_LINES, MAX_MEDIA,
    Media, Origin, Rtcp, Sdp,
};
pub use rewrite::Rewriter;
