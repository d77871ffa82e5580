//! The single error type of the crate.

/// Everything that can go wrong while parsing an SDP body or preparing a rewrite.
///
/// Line numbers are 1-based and count every physical line of the input,
/// including empty ones, so they match what a person sees in a packet capture.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SdpError {
    /// The body is empty or its first non-empty line is not a `v=` line.
    #[error("SDP body does not start with a v= line")]
    MissingVersion,
    /// The `v=` line carries something other than `0`.
    #[error("line {line}: unsupported SDP version (only v=0 exists)")]
    UnsupportedVersion {
        /// Line number of the `v=` line.
        line: usize,
    },
    /// A non-empty line is not of the shape `<letter>=<value>`.
    #[error("line {line}: not of the form <type>=<value>")]
    MalformedLine {
        /// Line number of the offending line.
        line: usize,
    },
    /// A field that has to be interpreted as text is not valid UTF-8.
    #[error("line {line}: text field is not valid UTF-8")]
    NonUtf8 {
        /// Line number of the offending line.
        line: usize,
    },
    /// The session description has no `o=` line.
    #[error("SDP body has no o= line")]
    MissingOrigin,
    /// The `o=` line does not have its six fields.
    #[error("line {line}: malformed o= line")]
    MalformedOrigin {
        /// Line number of the `o=` line.
        line: usize,
    },
    /// A `c=` line is not `<nettype> <addrtype> <address>[/ttl[/count]]`.
    #[error("line {line}: malformed c= line")]
    MalformedConnection {
        /// Line number of the `c=` line.
        line: usize,
    },
    /// An `m=` line lacks its media type, port or transport protocol.
    #[error("line {line}: malformed m= line")]
    MalformedMedia {
        /// Line number of the `m=` line.
        line: usize,
    },
    /// A port or port count is not a decimal integer in `0..=65535`.
    #[error("line {line}: port is not an integer in 0..=65535")]
    BadPort {
        /// Line number of the `m=` or `a=rtcp:` line.
        line: usize,
    },
    /// An `a=rtcp` attribute is not `a=rtcp:<port> [<nettype> <addrtype> <address>]`.
    #[error("line {line}: malformed a=rtcp attribute")]
    MalformedRtcp {
        /// Line number of the `a=rtcp` line.
        line: usize,
    },
    /// More media sections than [`MAX_MEDIA`](crate::MAX_MEDIA).
    #[error("more than {limit} media sections")]
    TooManyMedia {
        /// The limit that was exceeded.
        limit: usize,
    },
    /// More physical lines than [`MAX_LINES`](crate::MAX_LINES).
    #[error("more than {limit} lines")]
    TooManyLines {
        /// The limit that was exceeded.
        limit: usize,
    },
    /// A rewrite named a media section that does not exist.
    #[error("media index {index} out of range ({count} media sections)")]
    MediaIndexOutOfRange {
        /// The index that was asked for.
        index: usize,
        /// How many media sections the description has.
        count: usize,
    },
}
