//! The one error type of the crate, and how each error maps to a SIP response.

use std::borrow::Cow;

/// Everything that can be wrong with a SIP message, from framing to typed header values.
///
/// Each variant says what the defect is, so that an edge can answer with a response that
/// names it ([`Error::status`], [`Error::reason_phrase`]) and count it in a metric
/// ([`Error::kind`]). Variants carry only static data: building an error never allocates.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // ---- framing ----
    /// No bytes, or only the CRLFs of a keep-alive where a message was required.
    #[error("Empty message")]
    Empty,
    /// The message exceeds [`Limits::max_message_size`](crate::Limits).
    #[error("Message too large (limit {limit} bytes)")]
    MessageTooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// More header fields than [`Limits::max_headers`](crate::Limits).
    #[error("Too many header fields (limit {limit})")]
    TooManyHeaders {
        /// The configured limit.
        limit: usize,
    },
    /// A start line or header field longer than [`Limits::max_line_len`](crate::Limits).
    #[error("Header line too long (limit {limit} bytes)")]
    LineTooLong {
        /// The configured limit.
        limit: usize,
    },
    /// The datagram ends before the empty line that closes the header section.
    #[error("Incomplete header section")]
    IncompleteHeaders,
    /// Content-Length announces more bytes than the datagram carries (RFC 3261 §18.3).
    #[error("Content-Length larger than body")]
    BodyTruncated,
    /// Content-Length is not a decimal number that fits in 32 bits (negative, garbage, 2^64...).
    #[error("Invalid Content-Length")]
    InvalidContentLength,
    /// Two Content-Length header fields with different values: the framing is ambiguous.
    #[error("Conflicting Content-Length headers")]
    ConflictingContentLength,
    /// Stream transports cannot frame a message without Content-Length (RFC 3261 §18.3).
    #[error("Missing Content-Length on stream transport")]
    MissingContentLength,
    /// A NUL byte outside a quoted-pair: C-based peers would see a truncated message.
    #[error("NUL byte in header section")]
    NulByte,
    /// A CR not followed by LF: peers disagree on where such a line ends.
    #[error("Bare CR in header section")]
    BareCr,

    // ---- start line ----
    /// The request line is not `Method SP Request-URI SP SIP-Version`.
    #[error("Malformed request line: {0}")]
    BadRequestLine(&'static str),
    /// The status line is not `SIP-Version SP 3DIGIT SP Reason-Phrase`.
    #[error("Malformed status line: {0}")]
    BadStatusLine(&'static str),
    /// A header line without a token name followed by a colon.
    #[error("Malformed header line")]
    BadHeaderLine,
    /// The SIP version is syntactically valid but not 2.0.
    #[error("Version Not Supported")]
    UnsupportedVersion,

    // ---- semantics and typed values ----
    /// A header field the message must carry is absent.
    #[error("Missing {0} header")]
    MissingHeader(&'static str),
    /// A header field that may appear once appears several times.
    #[error("Multiple {0} headers")]
    DuplicateHeader(&'static str),
    /// A header value does not follow its grammar; the second field names the defect.
    #[error("Malformed {0} header: {1}")]
    BadHeader(&'static str, &'static str),
    /// The Request-URI does not follow its grammar.
    #[error("Malformed Request-URI: {0}")]
    BadRequestUri(&'static str),
    /// The Request-URI scheme is neither sip, sips nor tel.
    #[error("Unsupported URI Scheme")]
    UnsupportedUriScheme,
    /// The CSeq method differs from the request method (RFC 3261 §8.1.1.5).
    #[error("CSeq method does not match request method")]
    CSeqMethodMismatch,
    /// A URI (outside the Request-URI) does not follow its grammar.
    #[error("Malformed URI: {0}")]
    BadUri(&'static str),
    /// Max-Forwards is 0 on a request that would have to be forwarded (RFC 3261 §16.3).
    #[error("Too Many Hops")]
    TooManyHops,
    /// An edit cannot be applied (e.g. removing a Route from a message that has none).
    #[error("Cannot edit message: {0}")]
    Edit(&'static str),
}

/// Coarse class of an error, for metrics labels and for deciding what to do with a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Size, header-count or line-length caps.
    Limit,
    /// The bytes cannot be framed as one message; a stream connection must be closed.
    Framing,
    /// Start line defects.
    StartLine,
    /// Header syntax or semantics.
    Header,
    /// Request-URI problems.
    Uri,
}

impl ErrorKind {
    /// Every class, for metrics that create their series at start (at 0).
    pub const ALL: [ErrorKind; 5] = [
        ErrorKind::Limit,
        ErrorKind::Framing,
        ErrorKind::StartLine,
        ErrorKind::Header,
        ErrorKind::Uri,
    ];

    /// Short stable label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Limit => "limit",
            ErrorKind::Framing => "framing",
            ErrorKind::StartLine => "start_line",
            ErrorKind::Header => "header",
            ErrorKind::Uri => "uri",
        }
    }
}

impl Error {
    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        use Error::*;
        match self {
            MessageTooLarge { .. } | TooManyHeaders { .. } | LineTooLong { .. } => ErrorKind::Limit,
            Empty
            | IncompleteHeaders
            | BodyTruncated
            | InvalidContentLength
            | ConflictingContentLength
            | MissingContentLength
            | NulByte
            | BareCr => ErrorKind::Framing,
            BadRequestLine(_) | BadStatusLine(_) | UnsupportedVersion => ErrorKind::StartLine,
            BadHeaderLine | MissingHeader(_) | DuplicateHeader(_) | BadHeader(..)
            | CSeqMethodMismatch | BadUri(_) | TooManyHops | Edit(_) => ErrorKind::Header,
            BadRequestUri(_) | UnsupportedUriScheme => ErrorKind::Uri,
        }
    }

    /// The status code a request with this defect should be answered with.
    ///
    /// 513 for the size caps, 505 for a foreign SIP version, 416 for an unknown
    /// Request-URI scheme, 483 for exhausted Max-Forwards, 500 for an edit this element
    /// got wrong, 400 for everything else. Responses with defects are never
    /// answered; RFC 3261 §16.7/§18.1.2 has them discarded.
    pub fn status(&self) -> u16 {
        match self {
            Error::MessageTooLarge { .. }
            | Error::TooManyHeaders { .. }
            | Error::LineTooLong { .. } => 513,
            Error::UnsupportedVersion => 505,
            Error::TooManyHops => 483,
            Error::Edit(_) => 500,
            Error::UnsupportedUriScheme => 416,
            _ => 400,
        }
    }

    /// Reason phrase for the error response: the standard phrase for 505/416/513, the
    /// defect itself for 400 so that the sender can see what to fix.
    pub fn reason_phrase(&self) -> Cow<'static, str> {
        match self.status() {
            513 => Cow::Borrowed("Message Too Large"),
            505 => Cow::Borrowed("Version Not Supported"),
            416 => Cow::Borrowed("Unsupported URI Scheme"),
            483 => Cow::Borrowed("Too Many Hops"),
            500 => Cow::Borrowed("Server Internal Error"),
            _ => Cow::Owned(self.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_listed() {
        // Adding a kind breaks this match: add it to `ALL` too.
        for k in ErrorKind::ALL {
            match k {
                ErrorKind::Limit
                | ErrorKind::Framing
                | ErrorKind::StartLine
                | ErrorKind::Header
                | ErrorKind::Uri => {}
            }
        }
        let mut labels: Vec<&str> = ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), ErrorKind::ALL.len());
    }

    #[test]
    fn statuses() {
        assert_eq!(Error::MessageTooLarge { limit: 1 }.status(), 513);
        assert_eq!(Error::TooManyHeaders { limit: 1 }.status(), 513);
        assert_eq!(Error::UnsupportedVersion.status(), 505);
        assert_eq!(Error::UnsupportedUriScheme.status(), 416);
        assert_eq!(Error::MissingHeader("Call-ID").status(), 400);
        assert_eq!(
            Error::MissingHeader("Call-ID").reason_phrase(),
            "Missing Call-ID header"
        );
        assert_eq!(
            Error::BadHeader("Via", "missing sent-by").reason_phrase(),
            "Malformed Via header: missing sent-by"
        );
        assert_eq!(
            Error::LineTooLong { limit: 8 }.reason_phrase(),
            "Message Too Large"
        );
    }
}
