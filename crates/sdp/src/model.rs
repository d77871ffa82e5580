//! The borrowed view of a parsed session description.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Range;
use std::str::FromStr;

use crate::error::SdpError;
use crate::rewrite::Rewriter;

/// Upper bound on `m=` sections; a real call has a handful, so anything near
/// this is an attack or a bug and is refused rather than processed.
pub const MAX_MEDIA: usize = 64;

/// Upper bound on physical lines (empty ones included), which bounds the
/// memory and time spent on one body regardless of its byte length.
pub const MAX_LINES: usize = 1024;

/// How a line was terminated in the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LineEnding {
    /// `\r\n`, as RFC 8866 prescribes.
    CrLf,
    /// A bare `\n`, which RFC 8866 asks parsers to accept.
    Lf,
    /// The last line of the body, with no terminator at all.
    Unterminated,
}

impl LineEnding {
    /// The terminator bytes (empty for [`LineEnding::Unterminated`]).
    #[must_use]
    pub const fn as_bytes(self) -> &'static [u8] {
        match self {
            Self::CrLf => b"\r\n",
            Self::Lf => b"\n",
            Self::Unterminated => b"",
        }
    }

    /// The terminator as text (empty for [`LineEnding::Unterminated`]).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::CrLf => "\r\n",
            Self::Lf => "\n",
            Self::Unterminated => "",
        }
    }
}

/// Absolute byte range into the input; kept private so that the rewriter can
/// trust every span it receives to come from the parser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Span {
    pub(crate) start: usize,
    pub(crate) end: usize,
}

/// One non-empty `<type>=<value>` line of the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line<'a> {
    pub(crate) kind: u8,
    pub(crate) value: &'a [u8],
    pub(crate) start: usize,
    pub(crate) ending: LineEnding,
    pub(crate) number: usize,
}

impl<'a> Line<'a> {
    /// The type letter before the `=`.
    #[must_use]
    pub fn kind(&self) -> char {
        char::from(self.kind)
    }

    /// The bytes after the `=`, without the terminator.
    #[must_use]
    pub fn value(&self) -> &'a [u8] {
        self.value
    }

    /// The value as text, if it is valid UTF-8.
    #[must_use]
    pub fn value_str(&self) -> Option<&'a str> {
        std::str::from_utf8(self.value).ok()
    }

    /// How this line was terminated.
    #[must_use]
    pub fn ending(&self) -> LineEnding {
        self.ending
    }

    /// 1-based physical line number in the input (empty lines counted).
    #[must_use]
    pub fn number(&self) -> usize {
        self.number
    }

    /// Byte range of the line in the input, terminator excluded.
    #[must_use]
    pub fn span(&self) -> Range<usize> {
        self.start..self.content_end()
    }

    /// Byte range of the line in the input, terminator included.
    #[must_use]
    pub fn span_with_ending(&self) -> Range<usize> {
        self.start..self.end()
    }

    pub(crate) fn value_start(&self) -> usize {
        self.start + 2
    }

    pub(crate) fn content_end(&self) -> usize {
        self.value_start() + self.value.len()
    }

    pub(crate) fn end(&self) -> usize {
        self.content_end() + self.ending.as_bytes().len()
    }
}

/// A connection or origin address: an IP literal when it is one, otherwise
/// the raw text (SDP allows fully qualified domain names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Address<'a> {
    /// An IP literal whose family matches the address type (`IP4` dotted
    /// quad, or `IP6` including IPv4-mapped forms such as `::ffff:192.0.2.2`,
    /// which stay [`IpAddr::V6`]).
    Ip(IpAddr),
    /// Anything else: a host name, or a literal that does not match its
    /// address type or whose address type is neither `IP4` nor `IP6`.
    Host(&'a str),
}

impl Address<'_> {
    /// The IP address, if this is a literal.
    #[must_use]
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Self::Ip(ip) => Some(*ip),
            Self::Host(_) => None,
        }
    }
}

/// Interprets `text` according to `addrtype`; a mismatch such as `IP4 ::1`
/// is kept as text because silently trusting either half would be a guess.
pub(crate) fn parse_address<'a>(addrtype: &str, text: &'a str) -> Address<'a> {
    let ip = if addrtype.eq_ignore_ascii_case("IP4") {
        Ipv4Addr::from_str(text).ok().map(IpAddr::V4)
    } else if addrtype.eq_ignore_ascii_case("IP6") {
        Ipv6Addr::from_str(text).ok().map(IpAddr::V6)
    } else {
        None
    };
    ip.map_or(Address::Host(text), Address::Ip)
}

/// The address type token SDP uses for an IP family.
pub(crate) fn addrtype_of(ip: IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(_) => "IP4",
        IpAddr::V6(_) => "IP6",
    }
}

/// Connection data: a `c=` line, or the address part of `a=rtcp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connection<'a> {
    pub(crate) line: usize,
    pub(crate) nettype: &'a str,
    pub(crate) addrtype: &'a str,
    pub(crate) address_text: &'a str,
    pub(crate) suffix: Option<&'a str>,
    pub(crate) address: Address<'a>,
    pub(crate) addrtype_span: Span,
    pub(crate) address_span: Span,
    pub(crate) suffix_span: Option<Span>,
}

impl<'a> Connection<'a> {
    /// Index of the carrying line in [`Sdp::lines`].
    #[must_use]
    pub fn line_index(&self) -> usize {
        self.line
    }

    /// Network type, normally `IN`.
    #[must_use]
    pub fn nettype(&self) -> &'a str {
        self.nettype
    }

    /// Address type as written, normally `IP4` or `IP6`.
    #[must_use]
    pub fn addrtype(&self) -> &'a str {
        self.addrtype
    }

    /// The base address text, without any multicast suffix.
    #[must_use]
    pub fn address_text(&self) -> &'a str {
        self.address_text
    }

    /// The multicast suffix after the first `/` (`"127"`, `"127/3"`, or the
    /// IPv6 `"3"`), if any.
    #[must_use]
    pub fn suffix(&self) -> Option<&'a str> {
        self.suffix
    }

    /// The base address, parsed as an IP literal when possible.
    #[must_use]
    pub fn address(&self) -> Address<'a> {
        self.address
    }
}

/// The `o=` line: `<username> <sess-id> <sess-version> <nettype> <addrtype> <unicast-address>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin<'a> {
    pub(crate) line: usize,
    pub(crate) username: &'a str,
    pub(crate) session_id: &'a str,
    pub(crate) session_version: &'a str,
    pub(crate) nettype: &'a str,
    pub(crate) addrtype: &'a str,
    pub(crate) address_text: &'a str,
    pub(crate) addrtype_span: Span,
    pub(crate) address_span: Span,
}

impl<'a> Origin<'a> {
    /// Index of the `o=` line in [`Sdp::lines`].
    #[must_use]
    pub fn line_index(&self) -> usize {
        self.line
    }

    /// The username field (`-` when the originator has none).
    #[must_use]
    pub fn username(&self) -> &'a str {
        self.username
    }

    /// The session id field, as written.
    #[must_use]
    pub fn session_id(&self) -> &'a str {
        self.session_id
    }

    /// The session version field, as written.
    #[must_use]
    pub fn session_version(&self) -> &'a str {
        self.session_version
    }

    /// Network type, normally `IN`.
    #[must_use]
    pub fn nettype(&self) -> &'a str {
        self.nettype
    }

    /// Address type as written, normally `IP4` or `IP6`.
    #[must_use]
    pub fn addrtype(&self) -> &'a str {
        self.addrtype
    }

    /// The unicast address text.
    #[must_use]
    pub fn address_text(&self) -> &'a str {
        self.address_text
    }

    /// The unicast address, parsed as an IP literal when possible.
    #[must_use]
    pub fn address(&self) -> Address<'a> {
        parse_address(self.addrtype, self.address_text)
    }
}

/// An `a=rtcp:<port> [<nettype> <addrtype> <address>]` attribute (RFC 3605).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rtcp<'a> {
    pub(crate) line: usize,
    pub(crate) port: u16,
    pub(crate) port_span: Span,
    pub(crate) connection: Option<Connection<'a>>,
}

impl<'a> Rtcp<'a> {
    /// Index of the `a=rtcp` line in [`Sdp::lines`].
    #[must_use]
    pub fn line_index(&self) -> usize {
        self.line
    }

    /// The RTCP port.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The explicit RTCP address, when the attribute carries one.
    #[must_use]
    pub fn connection(&self) -> Option<&Connection<'a>> {
        self.connection.as_ref()
    }
}

/// A media direction attribute (RFC 3264 / RFC 8866 §6.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// `a=sendrecv`, also the default when nothing is said.
    SendRecv,
    /// `a=sendonly`.
    SendOnly,
    /// `a=recvonly`.
    RecvOnly,
    /// `a=inactive`.
    Inactive,
}

impl Direction {
    /// The attribute name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::SendRecv => "sendrecv",
            Self::SendOnly => "sendonly",
            Self::RecvOnly => "recvonly",
            Self::Inactive => "inactive",
        }
    }

    /// The direction named by an attribute name, if it is one.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "sendrecv" => Some(Self::SendRecv),
            "sendonly" => Some(Self::SendOnly),
            "recvonly" => Some(Self::RecvOnly),
            "inactive" => Some(Self::Inactive),
            _ => None,
        }
    }
}

/// One `a=` line split into name and optional value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attribute<'a> {
    pub(crate) line: usize,
    pub(crate) name: &'a str,
    pub(crate) value: Option<&'a [u8]>,
}

impl<'a> Attribute<'a> {
    /// Index of the `a=` line in [`Sdp::lines`].
    #[must_use]
    pub fn line_index(&self) -> usize {
        self.line
    }

    /// The attribute name (text before the first `:`).
    #[must_use]
    pub fn name(&self) -> &'a str {
        self.name
    }

    /// The raw value after the first `:`; `None` for flag attributes.
    ///
    /// Values stay bytes because RFC 8866 allows any charset in some of them.
    #[must_use]
    pub fn value(&self) -> Option<&'a [u8]> {
        self.value
    }

    /// The value as text, if present and valid UTF-8.
    #[must_use]
    pub fn value_str(&self) -> Option<&'a str> {
        self.value.and_then(|v| std::str::from_utf8(v).ok())
    }
}

/// Splits an `a=` line into name and value. The name must be text because
/// callers match on it; the value is left as bytes.
pub(crate) fn split_attribute_at<'a>(
    line: &Line<'a>,
    index: usize,
) -> Result<Attribute<'a>, SdpError> {
    let (name, value) = match memchr::memchr(b':', line.value) {
        Some(colon) => (
            line.value.get(..colon).unwrap_or_default(),
            Some(line.value.get(colon + 1..).unwrap_or_default()),
        ),
        None => (line.value, None),
    };
    let name = std::str::from_utf8(name).map_err(|_| SdpError::NonUtf8 { line: line.number })?;
    Ok(Attribute {
        line: index,
        name,
        value,
    })
}

/// Iterator over the `a=` lines of one section, in input order.
#[derive(Debug, Clone)]
pub struct Attributes<'s, 'a> {
    lines: std::iter::Enumerate<std::slice::Iter<'s, Line<'a>>>,
    base: usize,
}

impl<'s, 'a> Attributes<'s, 'a> {
    pub(crate) fn new(lines: &'s [Line<'a>], base: usize) -> Self {
        Self {
            lines: lines.iter().enumerate(),
            base,
        }
    }
}

impl<'a> Iterator for Attributes<'_, 'a> {
    type Item = Attribute<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        for (offset, line) in self.lines.by_ref() {
            if line.kind != b'a' {
                continue;
            }
            // The parser already rejected attribute names that are not UTF-8,
            // so a failure here cannot happen; skipping keeps it panic-free.
            if let Ok(attr) = split_attribute_at(line, self.base + offset) {
                return Some(attr);
            }
        }
        None
    }
}

/// One `m=` section and what the relay cares about in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Media<'a> {
    pub(crate) lines: Range<usize>,
    pub(crate) media_type: &'a str,
    pub(crate) port: u16,
    pub(crate) port_span: Span,
    pub(crate) port_count: Option<u16>,
    pub(crate) proto: &'a str,
    pub(crate) formats: &'a str,
    pub(crate) connections: Vec<Connection<'a>>,
    pub(crate) rtcp: Option<Rtcp<'a>>,
    pub(crate) rtcp_mux: bool,
    pub(crate) direction: Option<Direction>,
}

impl<'a> Media<'a> {
    /// Range of indices into [`Sdp::lines`], starting with the `m=` line.
    #[must_use]
    pub fn line_range(&self) -> Range<usize> {
        self.lines.clone()
    }

    /// Media type: `audio`, `video`, `application`, ...
    #[must_use]
    pub fn media_type(&self) -> &'a str {
        self.media_type
    }

    /// The transport port (0 means the stream is rejected or disabled).
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The `/<count>` after the port, if present.
    #[must_use]
    pub fn port_count(&self) -> Option<u16> {
        self.port_count
    }

    /// Transport protocol as written: `RTP/AVP`, `UDP/TLS/RTP/SAVPF`, ...
    #[must_use]
    pub fn proto(&self) -> &'a str {
        self.proto
    }

    /// The format list exactly as written (may be empty).
    #[must_use]
    pub fn format_list(&self) -> &'a str {
        self.formats
    }

    /// The individual formats (payload types for RTP).
    pub fn formats(&self) -> impl Iterator<Item = &'a str> + 'a {
        self.formats.split_ascii_whitespace()
    }

    /// The first media-level `c=` line, which is the one that counts.
    #[must_use]
    pub fn connection(&self) -> Option<&Connection<'a>> {
        self.connections.first()
    }

    /// Every media-level `c=` line (more than one only for layered multicast).
    #[must_use]
    pub fn connections(&self) -> &[Connection<'a>] {
        &self.connections
    }

    /// The first `a=rtcp:` attribute, if any.
    #[must_use]
    pub fn rtcp(&self) -> Option<&Rtcp<'a>> {
        self.rtcp.as_ref()
    }

    /// Whether `a=rtcp-mux` is present.
    #[must_use]
    pub fn rtcp_mux(&self) -> bool {
        self.rtcp_mux
    }

    /// The first direction attribute of this section, if any.
    #[must_use]
    pub fn direction(&self) -> Option<Direction> {
        self.direction
    }
}

/// A parsed session description borrowing from its input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sdp<'a> {
    pub(crate) input: &'a [u8],
    pub(crate) lines: Vec<Line<'a>>,
    pub(crate) session_end: usize,
    pub(crate) origin: Origin<'a>,
    pub(crate) session_name: Option<&'a [u8]>,
    pub(crate) session_connections: Vec<Connection<'a>>,
    pub(crate) session_direction: Option<Direction>,
    pub(crate) media: Vec<Media<'a>>,
    pub(crate) line_ending: LineEnding,
}

impl<'a> Sdp<'a> {
    /// Parses an SDP body. Linear in the input, bounded by [`MAX_LINES`]
    /// and [`MAX_MEDIA`], and never panics.
    ///
    /// # Errors
    /// Any [`SdpError`] variant except [`SdpError::MediaIndexOutOfRange`].
    pub fn parse(input: &'a [u8]) -> Result<Self, SdpError> {
        crate::parse::parse(input)
    }

    /// The bytes this description was parsed from.
    #[must_use]
    pub fn input(&self) -> &'a [u8] {
        self.input
    }

    /// Every non-empty line, in input order.
    #[must_use]
    pub fn lines(&self) -> &[Line<'a>] {
        &self.lines
    }

    /// The session-level lines (everything before the first `m=`).
    #[must_use]
    pub fn session_lines(&self) -> &[Line<'a>] {
        self.lines.get(..self.session_end).unwrap_or_default()
    }

    /// The `o=` line.
    #[must_use]
    pub fn origin(&self) -> &Origin<'a> {
        &self.origin
    }

    /// The value of the first session-level `s=` line, if any.
    #[must_use]
    pub fn session_name(&self) -> Option<&'a [u8]> {
        self.session_name
    }

    /// The first session-level `c=` line, if any.
    #[must_use]
    pub fn session_connection(&self) -> Option<&Connection<'a>> {
        self.session_connections.first()
    }

    /// Every session-level `c=` line.
    #[must_use]
    pub fn session_connections(&self) -> &[Connection<'a>] {
        &self.session_connections
    }

    /// The first session-level direction attribute, if any.
    #[must_use]
    pub fn session_direction(&self) -> Option<Direction> {
        self.session_direction
    }

    /// The session-level `a=` lines.
    #[must_use]
    pub fn session_attributes(&self) -> Attributes<'_, 'a> {
        Attributes::new(self.session_lines(), 0)
    }

    /// The media sections, in order.
    #[must_use]
    pub fn media(&self) -> &[Media<'a>] {
        &self.media
    }

    /// The lines of media section `index`, starting with its `m=` line.
    #[must_use]
    pub fn media_lines(&self, index: usize) -> Option<&[Line<'a>]> {
        self.lines.get(self.media.get(index)?.lines.clone())
    }

    /// The `a=` lines of media section `index`.
    #[must_use]
    pub fn media_attributes(&self, index: usize) -> Option<Attributes<'_, 'a>> {
        let range = self.media.get(index)?.lines.clone();
        let start = range.start;
        Some(Attributes::new(self.lines.get(range)?, start))
    }

    /// The connection that applies to media section `index`: its own first
    /// `c=`, else the session-level one.
    #[must_use]
    pub fn effective_connection(&self, index: usize) -> Option<&Connection<'a>> {
        let media = self.media.get(index)?;
        media.connection().or_else(|| self.session_connection())
    }

    /// The address that applies to media section `index` (see
    /// [`Sdp::effective_connection`]).
    #[must_use]
    pub fn effective_address(&self, index: usize) -> Option<Address<'a>> {
        self.effective_connection(index).map(Connection::address)
    }

    /// The direction that applies to media section `index`: its own, else the
    /// session's, else [`Direction::SendRecv`] (the RFC 3264 default).
    /// `None` only when `index` is out of range.
    #[must_use]
    pub fn effective_direction(&self, index: usize) -> Option<Direction> {
        let media = self.media.get(index)?;
        Some(
            media
                .direction
                .or(self.session_direction)
                .unwrap_or(Direction::SendRecv),
        )
    }

    /// The terminator used for inserted lines when their neighbour has none:
    /// the first terminator of the input, or CRLF if it has none at all.
    #[must_use]
    pub fn line_ending(&self) -> LineEnding {
        self.line_ending
    }

    /// Starts collecting edits against this description.
    #[must_use]
    pub fn rewriter(&self) -> Rewriter<'_, 'a> {
        Rewriter::new(self)
    }
}
