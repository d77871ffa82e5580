//! # sip-core: the sans-IO SIP message layer of sipcluster
//!
//! Everything in sipcluster that reads or writes SIP goes through this crate: the
//! dispatcher, the edge proxy and registrar, the test tools. It takes bytes and returns
//! values and bytes; it owns no socket, clock or task (the quinn-proto / mini-redis split).
//!
//! * **Framing** ([`parse_datagram`], [`StreamDecoder`]): where a message ends on UDP and
//!   on TCP/TLS/WS, CRLF keep-alives, size/header-count/line-length caps ([`Limits`]).
//! * **Message model** ([`SipMessage`]): one shared [`bytes::Bytes`] buffer, the start line,
//!   and an inline index of header byte ranges. Indexing copies nothing and, up to
//!   [`INLINE_HEADERS`] header fields, allocates nothing.
//! * **Typed headers** ([`headers`]): lazy accessors that parse the indexed bytes on demand
//!   (Via, From/To, Contact, CSeq, Route/Record-Route/Path, auth headers, ...), and
//!   [`Uri`] for sip/sips/tel/opaque URIs.
//! * **Validation** ([`SipMessage::validate_request`]): the checks an edge runs before acting;
//!   each failure is an [`Error`] that maps to the response to send (400 naming the defect,
//!   416, 505, 513) via [`error_reply`].
//! * **Writing**: [`ResponseBuilder`] / [`RequestBuilder`] for new messages, [`Editor`] for
//!   forwarding by byte-editing (everything not edited stays byte-identical).
//! * **Identifiers** ([`txn`]): transaction keys (§17.1.3/§17.2.3 with the RFC 2543
//!   fallback) and dialog ids.
//!
//! Nothing here panics on network input: every accessor returns `Result`, every loop is
//! linear in the input.
//!
//! ```
//! use sip_core::{SipMessage, Method};
//!
//! let msg = SipMessage::parse(&b"OPTIONS sip:alice@example.com SIP/2.0\r\n\
//!     Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKabc\r\n\
//!     From: <sip:bob@example.com>;tag=1\r\nTo: <sip:alice@example.com>\r\n\
//!     Call-ID: x@192.0.2.1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"[..])?;
//! assert_eq!(msg.method(), Some(Method::Options));
//! assert_eq!(msg.top_via()?.branch, Some("z9hG4bKabc"));
//! msg.validate_request()?;
//! # Ok::<(), sip_core::Error>(())
//! ```

#![deny(unsafe_code)]

mod builder;
mod chars;
mod edit;
mod error;
pub mod fnv;
mod framing;
mod header_name;
pub mod headers;
mod message;
mod method;
mod params;
mod split;
pub mod txn;
mod uri;
mod validate;

pub use builder::{ReplyContext, RequestBuilder, ResponseBuilder, default_reason, error_reply};
pub use edit::Editor;
pub use error::{Error, ErrorKind};
pub use framing::{Datagram, Frame, KeepAlive, StreamDecoder, parse_datagram};
pub use header_name::HeaderName;
pub use headers::auth::{Auth, AuthParam};
pub use headers::name_addr::{Contact, ContactAddr, DisplayName, NameAddr, QValue};
pub use headers::simple::{CSeq, MediaType, Timestamp};
pub use headers::via::{HostPort, MAGIC_COOKIE, Transport, Via};
pub use message::{Header, INLINE_HEADERS, Limits, SipMessage, StartLineRef};
pub use method::Method;
pub use params::{Param, ParamIter, ParamValue, Params, unescape_percent, unescape_quoted};
pub use split::Elements;
pub use txn::{ClientKey, DialogId, OwnedServerKey, ServerKey};
pub use uri::{Host, SipUri, TelUri, Uri, UriParam, UriParams};
