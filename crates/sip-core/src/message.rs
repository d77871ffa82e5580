//! The message model: one `Bytes` buffer, the start line, and an index of header byte ranges.
//!
//! Parsing never copies the message and never allocates for up to [`INLINE_HEADERS`]
//! header fields: the index lives inline in [`SipMessage`]. Typed values are parsed lazily
//! by the accessors in [`crate::headers`], straight from the indexed ranges.

use bytes::Bytes;

use crate::chars::{self, is_token, is_wsp};
use crate::error::Error;
use crate::header_name::HeaderName;
use crate::method::Method;

/// Header fields indexed without touching the heap. A realistic INVITE carries 15–25.
pub const INLINE_HEADERS: usize = 32;

/// Caps that bound the work and memory one message can cost. Each violation is its own
/// [`Error`] variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Whole message (start line, headers, body), in bytes.
    pub max_message_size: usize,
    /// Number of header fields (lines, not comma-separated values).
    pub max_headers: usize,
    /// Length of the start line and of each header field including its folded lines;
    /// values above 65,535 act as 65,535.
    pub max_line_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_size: 65_535,
            max_headers: 256,
            max_line_len: 8_192,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    #[inline]
    pub(crate) fn new(start: usize, end: usize) -> Span {
        Span {
            start: start as u32,
            end: end as u32,
        }
    }
    #[inline]
    pub(crate) fn get<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        buf.get(self.start as usize..self.end as usize)
            .unwrap_or_default()
    }
}

/// One header field line in the index, 12 bytes: offsets are relative to the line start
/// so that 32 entries fit in 384 bytes inline (a field is at most 64 KiB, see
/// [`Limits::max_line_len`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeaderEntry {
    pub name: HeaderName,
    name_len: u8,
    value_off: u16,
    pub line_start: u32,
    value_len: u16,
    line_len: u16,
}

impl HeaderEntry {
    const EMPTY: HeaderEntry = HeaderEntry {
        name: HeaderName::Other,
        name_len: 0,
        value_off: 0,
        line_start: 0,
        value_len: 0,
        line_len: 0,
    };

    #[inline]
    pub(crate) fn name_span(&self) -> Span {
        Span {
            start: self.line_start,
            end: self.line_start + u32::from(self.name_len),
        }
    }
    /// Value without surrounding white space; folds inside it stay in the range.
    #[inline]
    pub(crate) fn value(&self) -> Span {
        let start = self.line_start + u32::from(self.value_off);
        Span {
            start,
            end: start + u32::from(self.value_len),
        }
    }
    /// The same field moved to `line_start`.
    #[inline]
    pub(crate) fn moved_to(&self, line_start: u32) -> HeaderEntry {
        HeaderEntry {
            line_start,
            ..*self
        }
    }
    /// Offset just past the line terminator (CRLF or bare LF) of the last folded line.
    #[inline]
    pub(crate) fn line_end(&self) -> u32 {
        self.line_start + u32::from(self.line_len)
    }
}

/// The header index: inline for up to [`INLINE_HEADERS`] fields, one heap vector beyond.
///
/// A plain array plus length (rather than a general small-vector) keeps `push` to a store
/// and an increment on the hot path.
#[derive(Debug, Clone)]
pub(crate) struct HeaderIndex {
    inline: [HeaderEntry; INLINE_HEADERS],
    len: u8,
    spill: Vec<HeaderEntry>,
}

impl HeaderIndex {
    #[inline]
    pub(crate) fn new() -> Self {
        HeaderIndex {
            inline: [HeaderEntry::EMPTY; INLINE_HEADERS],
            len: 0,
            spill: Vec::new(),
        }
    }

    #[inline]
    pub(crate) fn push(&mut self, e: HeaderEntry) {
        let n = self.len as usize;
        if n < INLINE_HEADERS {
            self.inline[n] = e;
            self.len += 1;
        } else {
            if self.spill.is_empty() {
                self.spill.reserve(INLINE_HEADERS * 2);
                self.spill.extend_from_slice(&self.inline);
            }
            self.spill.push(e);
        }
    }
}

impl std::ops::Deref for HeaderIndex {
    type Target = [HeaderEntry];
    #[inline]
    fn deref(&self) -> &[HeaderEntry] {
        if self.spill.is_empty() {
            &self.inline[..self.len as usize]
        } else {
            &self.spill
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum StartLine {
    Request {
        method: Option<Method<'static>>,
        method_span: Span,
        uri: Span,
        version: Span,
    },
    Response {
        version: Span,
        code: u16,
        reason: Span,
    },
}

/// The parsed head of a message: what framing needs to know before the body is complete.
#[derive(Debug, Clone)]
pub(crate) struct Head {
    pub start: StartLine,
    /// Offset just past the start line's terminator.
    pub start_line_end: u32,
    pub headers: HeaderIndex,
    /// Offset of the first body byte (just past the empty line).
    pub body_start: u32,
    pub content_length: Option<u32>,
}

/// A parsed SIP request or response over a shared, immutable buffer.
///
/// Cloning is cheap (a reference count and the inline index). Accessors return slices
/// of the original bytes; nothing is re-serialised unless edited through
/// [`Editor`](crate::Editor).
#[derive(Debug, Clone)]
pub struct SipMessage {
    pub(crate) buf: Bytes,
    pub(crate) head: Head,
    /// The top Via, parsed on first use and kept as offsets: every hop reads it several
    /// times (transaction key, response target, loop and origin checks), and re-parsing
    /// it was 9 % of a REGISTER's CPU.
    pub(crate) top_via: std::sync::OnceLock<Result<crate::headers::via::TopVia, Error>>,
}

/// A view of one header field line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    /// Classified name.
    pub name: HeaderName,
    /// The name as written (compact or full, any case).
    pub raw_name: &'a [u8],
    /// The value without surrounding white space; may contain folds.
    pub value: &'a [u8],
    /// The whole field as received, from the name to the line terminator inclusive.
    pub raw: &'a [u8],
}

/// Whether a message is a request or a response, with the start line's typed fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartLineRef<'a> {
    /// `Method SP Request-URI SP SIP-Version`
    Request {
        /// The method.
        method: Method<'a>,
        /// The Request-URI as written.
        uri: &'a [u8],
        /// `SIP/2.0`, or another version that validation rejects with 505.
        version: &'a [u8],
    },
    /// `SIP-Version SP Status-Code SP Reason-Phrase`
    Response {
        /// `SIP/2.0` normally.
        version: &'a [u8],
        /// Any three digits (000–999); validation accepts 100–699.
        code: u16,
        /// Reason phrase bytes; UTF-8 is allowed and not checked.
        reason: &'a [u8],
    },
}

// ---------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------

/// Offset of the first `:` in `s`. Header names are a handful of bytes, so the first 32
/// are searched eight at a time in registers (cheaper than a memchr call for such short
/// distances); the rest falls back to memchr.
#[inline]
fn find_colon(s: &[u8]) -> Option<usize> {
    const COLONS: u64 = 0x3a3a_3a3a_3a3a_3a3a;
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let mut i = 0;
    while i < 32 {
        let Some(Ok(w)) = s.get(i..i + 8).map(<[u8; 8]>::try_from) else {
            break;
        };
        let x = u64::from_le_bytes(w) ^ COLONS;
        // Lowest set bit marks the first zero byte of x, i.e. the first colon (bits above
        // it may be spurious, which trailing_zeros ignores).
        let m = x.wrapping_sub(LO) & !x & HI;
        if m != 0 {
            return Some(i + (m.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    memchr::memchr(b':', s.get(i..)?).map(|p| i + p)
}

/// Finds the first CR or LF. Built once per message: a one-shot `memchr2` call re-creates
/// its searcher and dispatches through a function pointer on every line, which cost more
/// than the scan itself on 20–100 byte header lines.
pub(crate) struct LineEnds {
    #[cfg(target_arch = "x86_64")]
    two: Option<memchr::arch::x86_64::sse2::memchr::Two>,
}

impl LineEnds {
    #[inline]
    pub(crate) fn new() -> Self {
        LineEnds {
            #[cfg(target_arch = "x86_64")]
            two: memchr::arch::x86_64::sse2::memchr::Two::new(b'\r', b'\n'),
        }
    }

    #[inline]
    fn find(&self, hay: &[u8]) -> Option<usize> {
        #[cfg(target_arch = "x86_64")]
        if let Some(two) = &self.two {
            return two.find(hay);
        }
        memchr::memchr2(b'\r', b'\n', hay)
    }

    /// The end of the line starting at `from`: (offset of the terminator, offset past
    /// it). CRLF and bare LF end a line; a CR not followed by LF is an error, so finding
    /// the first CR or LF also proves the line holds no bare CR.
    #[inline]
    fn terminator(&self, buf: &[u8], from: usize) -> Result<(usize, usize), Error> {
        let rest = buf.get(from..).unwrap_or_default();
        let t = from + self.find(rest).ok_or(Error::IncompleteHeaders)?;
        if buf[t] == b'\n' {
            return Ok((t, t + 1));
        }
        match buf.get(t + 1) {
            Some(b'\n') => Ok((t, t + 2)),
            Some(_) => Err(Error::BareCr),
            None => Err(Error::IncompleteHeaders),
        }
    }
}

fn is_version(v: &[u8]) -> bool {
    if v == b"SIP/2.0" {
        return true;
    }
    // SIP-Version = "SIP" "/" 1*DIGIT "." 1*DIGIT; ABNF literals are case-insensitive.
    if v.len() < 7 || !v[..4].eq_ignore_ascii_case(b"SIP/") {
        return false;
    }
    let rest = &v[4..];
    let Some(dot) = memchr::memchr(b'.', rest) else {
        return false;
    };
    let (major, minor) = (&rest[..dot], &rest[dot + 1..]);
    !major.is_empty()
        && !minor.is_empty()
        && major.iter().all(u8::is_ascii_digit)
        && minor.iter().all(u8::is_ascii_digit)
}

pub(crate) fn parse_start_line(buf: &[u8], end: usize) -> Result<StartLine, Error> {
    let line = &buf[..end];
    if line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"SIP/") {
        let sp = memchr::memchr(b' ', line).ok_or(Error::BadStatusLine("missing status code"))?;
        if !is_version(&line[..sp]) {
            return Err(Error::BadStatusLine("bad SIP version"));
        }
        let rest = &line[sp + 1..];
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits != 3 {
            return Err(Error::BadStatusLine("status code is not 3 digits"));
        }
        if rest.len() > 3 && rest[3] != b' ' {
            return Err(Error::BadStatusLine("status code is not 3 digits"));
        }
        // Any three digits frame; validate_response rejects classes outside 1xx–6xx.
        let code = rest[..3]
            .iter()
            .fold(0u16, |a, d| a * 10 + u16::from(d - b'0'));
        let reason_start = (sp + 1 + 4).min(end);
        if line[reason_start..].iter().any(|&b| b < 0x20 && b != b'\t') {
            return Err(Error::BadStatusLine("control character in reason phrase"));
        }
        return Ok(StartLine::Response {
            version: Span::new(0, sp),
            code,
            reason: Span::new(reason_start, end),
        });
    }
    // One pass per element: the method is a run of token bytes ended by SP; the URI a run
    // of visible bytes ended by SP; the version the rest of the line.
    let sp1 = chars::scan(line, 0, chars::TOKEN);
    match line.get(sp1) {
        Some(b' ') if sp1 > 0 => {}
        Some(b' ') => return Err(Error::BadRequestLine("line starts with white space")),
        Some(_) => return Err(Error::BadRequestLine("method is not a token")),
        None => return Err(Error::BadRequestLine("missing Request-URI")),
    }
    let method_b = &line[..sp1];
    let uri_start = sp1 + 1;
    let uri_len = line[uri_start..]
        .iter()
        .position(|&b| b <= 0x20 || b == 0x7f);
    let sp2 = match uri_len.map(|n| (uri_start + n, line[uri_start + n])) {
        Some((at, b' ')) if at == uri_start => {
            return Err(Error::BadRequestLine("extra white space"));
        }
        Some((at, b' ')) => at,
        Some(_) => return Err(Error::BadRequestLine("control character in Request-URI")),
        None => return Err(Error::BadRequestLine("missing SIP version")),
    };
    let version = &line[sp2 + 1..];
    if version != b"SIP/2.0" {
        if memchr::memchr2(b' ', b'\t', version).is_some() {
            return Err(Error::BadRequestLine(
                "white space after SIP version or in Request-URI",
            ));
        }
        if !is_version(version) {
            return Err(Error::BadRequestLine("bad SIP version"));
        }
    }
    Ok(StartLine::Request {
        method: Method::known(method_b),
        method_span: Span::new(0, sp1),
        uri: Span::new(uri_start, sp2),
        version: Span::new(sp2 + 1, end),
    })
}

/// Content-Length value: decimal digits only (leading zeros allowed), at most 32 bits.
pub(crate) fn parse_content_length(v: &[u8]) -> Result<u32, Error> {
    chars::decimal_u32(v).ok_or(Error::InvalidContentLength)
}

/// Index the header field starting at `pos` (not a continuation line): its entry and the
/// offset just past its last (folded) line.
#[inline]
pub(crate) fn index_field(
    buf: &[u8],
    pos: usize,
    ends: &LineEnds,
    max_line: usize,
) -> Result<(HeaderEntry, usize), Error> {
    let line_start = pos;
    let colon = pos + find_colon(&buf[pos..]).ok_or(Error::BadHeaderLine)?;
    let mut name_end = colon;
    while name_end > pos && is_wsp(buf[name_end - 1]) {
        name_end -= 1;
    }
    let raw_name = &buf[pos..name_end];
    if raw_name.is_empty() || raw_name.len() > u8::MAX as usize {
        return Err(Error::BadHeaderLine);
    }
    let name = HeaderName::from_bytes(raw_name);
    // A name that matched a known one (case-insensitively, see `eq_lower`) consists of
    // token bytes, except that a CR would pass for `-`; such a CR is not followed by LF
    // and `terminator` rejects it. Unknown names are checked here.
    if name == HeaderName::Other && !raw_name.iter().all(|&b| is_token(b)) {
        return Err(Error::BadHeaderLine);
    }
    // Searched from the line start so that a CR inside the name is seen too.
    let (term, mut next) = ends.terminator(buf, pos)?;
    if term < colon {
        return Err(Error::BadHeaderLine);
    }
    let mut vend = term;
    // The field goes on while the next line starts with SP/HT (a fold).
    while let Some(b' ' | b'\t') = buf.get(next) {
        (vend, next) = ends.terminator(buf, next)?;
    }
    if next - line_start > max_line {
        return Err(Error::LineTooLong { limit: max_line });
    }
    let mut vstart = colon + 1;
    if vstart < vend && buf[vstart] == b' ' {
        vstart += 1;
    }
    while vstart < vend && chars::is_lws(buf[vstart]) {
        vstart += 1;
    }
    while vend > vstart && chars::is_lws(buf[vend - 1]) {
        vend -= 1;
    }
    // Every offset below is within one field, which is at most `max_line` <= u16::MAX.
    let entry = HeaderEntry {
        name,
        name_len: raw_name.len() as u8,
        value_off: (vstart - line_start) as u16,
        line_start: line_start as u32,
        value_len: (vend - vstart) as u16,
        line_len: (next - line_start) as u16,
    };
    Ok((entry, next))
}

/// Parse the start line and index the headers of the message at the start of `buf`.
///
/// `buf` must hold the whole header section; the body is not looked at. Leading CRLFs
/// must already be stripped.
pub(crate) fn parse_head(buf: &[u8], limits: &Limits) -> Result<Head, Error> {
    if buf.is_empty() {
        return Err(Error::Empty);
    }
    let max_line = limits.max_line_len.min(u16::MAX as usize);
    let ends = LineEnds::new();
    let (sl_end, mut pos) = ends.terminator(buf, 0).map_err(|e| match e {
        Error::IncompleteHeaders if buf.len() > max_line => Error::LineTooLong { limit: max_line },
        e => e,
    })?;
    if sl_end > max_line {
        return Err(Error::LineTooLong { limit: max_line });
    }
    let start = parse_start_line(buf, sl_end)?;
    let start_line_end = pos;
    let mut headers = HeaderIndex::new();
    let mut content_length: Option<u32> = None;

    let body_start = loop {
        let Some(&first) = buf.get(pos) else {
            return Err(Error::IncompleteHeaders);
        };
        if first == b'\n' {
            break pos + 1;
        }
        if first == b'\r' {
            match buf.get(pos + 1) {
                Some(b'\n') => break pos + 2,
                Some(_) => return Err(Error::BareCr),
                None => return Err(Error::IncompleteHeaders),
            }
        }
        if is_wsp(first) {
            // A continuation line with no field before it to continue.
            return Err(Error::BadHeaderLine);
        }
        let (entry, next) = index_field(buf, pos, &ends, max_line)?;
        if entry.name == HeaderName::ContentLength {
            let n = parse_content_length(entry.value().get(buf))?;
            match content_length {
                Some(prev) if prev != n => return Err(Error::ConflictingContentLength),
                _ => content_length = Some(n),
            }
        }
        if headers.len() == limits.max_headers {
            return Err(Error::TooManyHeaders {
                limit: limits.max_headers,
            });
        }
        headers.push(entry);
        pos = next;
        if pos > limits.max_message_size {
            return Err(Error::MessageTooLarge {
                limit: limits.max_message_size,
            });
        }
    };
    if memchr::memchr(0, &buf[..body_start]).is_some() {
        check_nul(buf, start_line_end, &headers)?;
    }
    Ok(Head {
        start,
        start_line_end: start_line_end as u32,
        headers,
        body_start: body_start as u32,
        content_length,
    })
}

/// A NUL is only legal as a quoted-pair (`\\` NUL inside a quoted string): C-based peers
/// would otherwise see a truncated message. Runs only when a NUL was seen at all (one
/// memchr over the head), then walks each affected value tracking quotes.
fn check_nul(buf: &[u8], start_line_end: usize, headers: &HeaderIndex) -> Result<(), Error> {
    if memchr::memchr(0, &buf[..start_line_end]).is_some() {
        return Err(Error::NulByte);
    }
    for e in headers.iter() {
        let v = e.value().get(buf);
        if memchr::memchr(0, v).is_none() {
            continue;
        }
        let mut in_quote = false;
        let mut i = 0;
        while i < v.len() {
            match v[i] {
                b'\\' if in_quote => i += 1,
                b'"' => in_quote = !in_quote,
                0 => return Err(Error::NulByte),
                _ => {}
            }
            i += 1;
        }
    }
    Ok(())
}

impl SipMessage {
    pub(crate) fn from_parts(buf: Bytes, head: Head) -> SipMessage {
        SipMessage {
            buf,
            head,
            top_via: std::sync::OnceLock::new(),
        }
    }

    /// Parse one complete message from a datagram with default [`Limits`].
    ///
    /// A convenience for tests and tools; transports use [`crate::parse_datagram`] or
    /// [`crate::StreamDecoder`], which also report keep-alives.
    pub fn parse(buf: impl Into<Bytes>) -> Result<SipMessage, Error> {
        match crate::framing::parse_datagram(buf.into(), &Limits::default())? {
            crate::framing::Datagram::Message(m) => Ok(m),
            crate::framing::Datagram::KeepAlive => Err(Error::Empty),
        }
    }

    /// The whole message as received (after framing: leading CRLFs and trailing datagram
    /// bytes beyond Content-Length are not included).
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// The shared buffer (cheap clone).
    #[inline]
    pub fn bytes(&self) -> &Bytes {
        &self.buf
    }

    /// Consume the message, returning its buffer.
    pub fn into_bytes(self) -> Bytes {
        self.buf
    }

    /// True for requests.
    #[inline]
    pub fn is_request(&self) -> bool {
        matches!(self.head.start, StartLine::Request { .. })
    }

    /// True for responses.
    #[inline]
    pub fn is_response(&self) -> bool {
        !self.is_request()
    }

    /// The typed start line.
    pub fn start_line(&self) -> StartLineRef<'_> {
        match self.head.start {
            StartLine::Request {
                method,
                method_span,
                uri,
                version,
            } => StartLineRef::Request {
                method: method.unwrap_or_else(|| {
                    // Validated as a token while parsing, hence ASCII.
                    Method::Other(chars::ascii(method_span.get(&self.buf)).unwrap_or_default())
                }),
                uri: uri.get(&self.buf),
                version: version.get(&self.buf),
            },
            StartLine::Response {
                version,
                code,
                reason,
            } => StartLineRef::Response {
                version: version.get(&self.buf),
                code,
                reason: reason.get(&self.buf),
            },
        }
    }

    /// The start line as received, without its terminator.
    pub fn raw_start_line(&self) -> &[u8] {
        let end = self.head.start_line_end as usize;
        let s = &self.buf[..end];
        let s = s.strip_suffix(b"\n").unwrap_or(s);
        s.strip_suffix(b"\r").unwrap_or(s)
    }

    /// Request method; `None` for responses.
    #[inline]
    pub fn method(&self) -> Option<Method<'_>> {
        match self.start_line() {
            StartLineRef::Request { method, .. } => Some(method),
            StartLineRef::Response { .. } => None,
        }
    }

    /// Request-URI bytes as written; `None` for responses. See
    /// [`request_uri`](Self::request_uri) for the parsed form.
    pub fn request_uri_raw(&self) -> Option<&[u8]> {
        match self.head.start {
            StartLine::Request { uri, .. } => Some(uri.get(&self.buf)),
            StartLine::Response { .. } => None,
        }
    }

    /// Status code; `None` for requests.
    #[inline]
    pub fn status(&self) -> Option<u16> {
        match self.head.start {
            StartLine::Response { code, .. } => Some(code),
            StartLine::Request { .. } => None,
        }
    }

    /// Reason phrase bytes; `None` for requests.
    pub fn reason(&self) -> Option<&[u8]> {
        match self.head.start {
            StartLine::Response { reason, .. } => Some(reason.get(&self.buf)),
            StartLine::Request { .. } => None,
        }
    }

    /// The SIP version token of the start line (`SIP/2.0`).
    pub fn version(&self) -> &[u8] {
        match self.head.start {
            StartLine::Request { version, .. } | StartLine::Response { version, .. } => {
                version.get(&self.buf)
            }
        }
    }

    /// Number of header field lines.
    #[inline]
    pub fn header_count(&self) -> usize {
        self.head.headers.len()
    }

    #[inline]
    pub(crate) fn view(&self, e: &HeaderEntry) -> Header<'_> {
        Header {
            name: e.name,
            raw_name: e.name_span().get(&self.buf),
            value: e.value().get(&self.buf),
            raw: Span {
                start: e.line_start,
                end: e.line_end(),
            }
            .get(&self.buf),
        }
    }

    /// Every header field line, in order.
    pub fn headers(&self) -> impl ExactSizeIterator<Item = Header<'_>> + DoubleEndedIterator + '_ {
        self.head.headers.iter().map(move |e| self.view(e))
    }

    /// Every line of the header `name` (which must not be `Other`; see
    /// [`headers_named`](Self::headers_named)), in order.
    #[inline]
    pub fn headers_of(&self, name: HeaderName) -> impl DoubleEndedIterator<Item = Header<'_>> + '_ {
        self.head
            .headers
            .iter()
            .filter(move |e| e.name == name)
            .map(move |e| self.view(e))
    }

    /// Value of the first line of the header `name`.
    #[inline]
    pub fn header(&self, name: HeaderName) -> Option<&[u8]> {
        self.head
            .headers
            .iter()
            .find(|e| e.name == name)
            .map(|e| e.value().get(&self.buf))
    }

    /// Number of lines of the header `name`.
    pub fn count_of(&self, name: HeaderName) -> usize {
        self.head.headers.iter().filter(|e| e.name == name).count()
    }

    /// Every line whose name matches `name` case-insensitively (including compact forms of
    /// known headers); works for extension headers.
    pub fn headers_named<'s>(&'s self, name: &'s str) -> impl Iterator<Item = Header<'s>> + 's {
        let kind = HeaderName::from_bytes(name.as_bytes());
        self.headers().filter(move |h| {
            if kind == HeaderName::Other {
                h.name == HeaderName::Other && h.raw_name.eq_ignore_ascii_case(name.as_bytes())
            } else {
                h.name == kind
            }
        })
    }

    /// Values of the header `name`, split at top-level commas for list headers
    /// (RFC 3261 §7.3.1), in order across all its lines. Elements are trimmed; an
    /// element may be empty where the sender wrote `,,`.
    pub fn header_values(&self, name: HeaderName) -> impl Iterator<Item = &[u8]> + '_ {
        let list = name.is_list();
        self.headers_of(name)
            .flat_map(move |h| crate::split::Elements::new(h.value, list))
    }

    /// Values of a list header that needs at least one value on each of its lines (Via,
    /// Contact, Route, Record-Route, Path): an empty line is an error, not "no value".
    pub(crate) fn required_list(
        &self,
        name: HeaderName,
        label: &'static str,
    ) -> impl Iterator<Item = Result<&[u8], Error>> + '_ {
        self.headers_of(name).flat_map(move |h| {
            let empty = chars::trim_lws(h.value).is_empty();
            let err = empty.then_some(Err(Error::BadHeader(label, "empty value")));
            err.into_iter()
                .chain(crate::split::Elements::new(h.value, true).map(Ok))
        })
    }

    /// Offset of the first body byte.
    #[inline]
    pub fn body_offset(&self) -> usize {
        self.head.body_start as usize
    }

    /// The body bytes.
    #[inline]
    pub fn body(&self) -> &[u8] {
        &self.buf[self.head.body_start as usize..]
    }

    /// The body as a shared slice of the buffer (no copy).
    pub fn body_bytes(&self) -> Bytes {
        self.buf.slice(self.head.body_start as usize..)
    }

    /// The Content-Length value, if the header was present (already validated by framing).
    #[inline]
    pub fn content_length(&self) -> Option<u32> {
        self.head.content_length
    }

    /// Bytes of the header section from the first header line up to (not including) the
    /// empty line.
    pub(crate) fn headers_end(&self) -> usize {
        self.head
            .headers
            .last()
            .map_or(self.head.start_line_end, |e| e.line_end()) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(s: &[u8]) -> Result<Head, Error> {
        parse_head(s, &Limits::default())
    }

    #[test]
    fn request_line() {
        let h = head(b"INVITE sip:a@b SIP/2.0\r\nVia: x\r\n\r\n").unwrap();
        match h.start {
            StartLine::Request { method, .. } => assert_eq!(method, Some(Method::Invite)),
            _ => panic!(),
        }
        assert_eq!(h.headers.len(), 1);
        assert_eq!(
            h.body_start as usize,
            b"INVITE sip:a@b SIP/2.0\r\nVia: x\r\n\r\n".len()
        );
    }

    #[test]
    fn request_line_errors() {
        let cases: &[(&[u8], Error)] = &[
            (
                b"INVITE  sip:a@b SIP/2.0\r\n\r\n",
                Error::BadRequestLine("extra white space"),
            ),
            (
                b"INVITE sip:a@b  SIP/2.0\r\n\r\n",
                Error::BadRequestLine("white space after SIP version or in Request-URI"),
            ),
            (
                b"INVITE sip:a@b SIP/2.0 \r\n\r\n",
                Error::BadRequestLine("white space after SIP version or in Request-URI"),
            ),
            (
                b"INVITE sip:a@b\r\n\r\n",
                Error::BadRequestLine("missing SIP version"),
            ),
            (
                b"INVITE\r\n\r\n",
                Error::BadRequestLine("missing Request-URI"),
            ),
            (
                b" INVITE sip:a@b SIP/2.0\r\n\r\n",
                Error::BadRequestLine("line starts with white space"),
            ),
            (
                b"IN(VITE sip:a@b SIP/2.0\r\n\r\n",
                Error::BadRequestLine("method is not a token"),
            ),
            (
                b"INVITE sip:a@b HTTP/1.1\r\n\r\n",
                Error::BadRequestLine("bad SIP version"),
            ),
            (
                b"INVITE sip:a@b SIP/2\r\n\r\n",
                Error::BadRequestLine("bad SIP version"),
            ),
            (
                b"INVITE sip:a\x01b SIP/2.0\r\n\r\n",
                Error::BadRequestLine("control character in Request-URI"),
            ),
        ];
        for (input, err) in cases {
            assert_eq!(
                head(input).unwrap_err(),
                *err,
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn status_line() {
        let h = head(b"SIP/2.0 180 Ringing\r\n\r\n").unwrap();
        assert!(matches!(h.start, StartLine::Response { code: 180, .. }));
        let h = head(b"SIP/2.0 100 \r\n\r\n").unwrap();
        assert!(
            matches!(h.start, StartLine::Response { code: 100, reason, .. } if reason.start == reason.end)
        );
        let h = head(b"SIP/2.0 100\r\n\r\n").unwrap();
        assert!(matches!(h.start, StartLine::Response { code: 100, .. }));
        assert_eq!(
            head(b"SIP/2.0 4294967301 big\r\n\r\n").unwrap_err(),
            Error::BadStatusLine("status code is not 3 digits")
        );
        assert_eq!(
            head(b"SIP/2.0 42 x\r\n\r\n").unwrap_err(),
            Error::BadStatusLine("status code is not 3 digits")
        );
        assert!(matches!(
            head(
                b"SIP/2.0 099 x

"
            )
            .unwrap()
            .start,
            StartLine::Response { code: 99, .. }
        ));
        assert!(matches!(
            head(
                b"SIP/2.0 999 x

"
            )
            .unwrap()
            .start,
            StartLine::Response { code: 999, .. }
        ));
        assert_eq!(
            head(b"SIP/2.0x 200 OK\r\n\r\n").unwrap_err(),
            Error::BadStatusLine("bad SIP version")
        );
        assert_eq!(
            head(b"SIP/2.0 200 O\x01K\r\n\r\n").unwrap_err(),
            Error::BadStatusLine("control character in reason phrase")
        );
    }

    #[test]
    fn header_lines() {
        let msg = b"OPTIONS sip:a SIP/2.0\r\nTO :\r\n sip:x ;tag = 1\r\nfrom   : a\r\n  ;\r\n  tag=2\r\nX-Empty:\r\nl: 0\r\n\r\n";
        let h = head(msg).unwrap();
        assert_eq!(h.headers.len(), 4);
        let vals: Vec<&[u8]> = h.headers.iter().map(|e| e.value().get(msg)).collect();
        assert_eq!(vals[0], b"sip:x ;tag = 1");
        assert_eq!(vals[1], b"a\r\n  ;\r\n  tag=2");
        assert_eq!(vals[2], b"");
        assert_eq!(vals[3], b"0");
        assert_eq!(h.headers[0].name, HeaderName::To);
        assert_eq!(h.headers[3].name, HeaderName::ContentLength);
        assert_eq!(h.content_length, Some(0));
    }

    #[test]
    fn bare_lf_lines() {
        let h = head(b"OPTIONS sip:a SIP/2.0\nVia: x\nl: 0\n\n").unwrap();
        assert_eq!(h.headers.len(), 2);
        assert_eq!(h.body_start, 35);
    }

    #[test]
    fn header_errors() {
        assert_eq!(
            head(b"OPTIONS sip:a SIP/2.0\r\nNoColon\r\n\r\n").unwrap_err(),
            Error::BadHeaderLine
        );
        assert_eq!(
            head(b"OPTIONS sip:a SIP/2.0\r\n: novalue\r\n\r\n").unwrap_err(),
            Error::BadHeaderLine
        );
        assert_eq!(
            head(b"OPTIONS sip:a SIP/2.0\r\n folded: x\r\n\r\n").unwrap_err(),
            Error::BadHeaderLine
        );
        assert_eq!(
            head(b"OPTIONS sip:a SIP/2.0\r\nBad Name: x\r\n\r\n").unwrap_err(),
            Error::BadHeaderLine
        );
        assert_eq!(
            head(b"OPTIONS sip:a SIP/2.0\r\nVia: x\r\n").unwrap_err(),
            Error::IncompleteHeaders
        );
        assert_eq!(
            head(b"OPTIONS sip:a SIP/2.0\r\nVia: x").unwrap_err(),
            Error::IncompleteHeaders
        );
        assert_eq!(
            head(b"OPTIONS sip:a SIP/2.0").unwrap_err(),
            Error::IncompleteHeaders
        );
        assert_eq!(head(b"").unwrap_err(), Error::Empty);
        assert_eq!(
            head(b"OPTIONS sip:a SIP/2.0\r\nX: a\0b\r\n\r\n").unwrap_err(),
            Error::NulByte
        );
        assert_eq!(
            head(b"OPTIONS sip:a SIP/2.0\r\nX: \"a\\\0b\"\r\n\r\n")
                .unwrap()
                .headers
                .len(),
            1
        );
        assert_eq!(
            head(b"OPTIONS sip:a SIP/2.0\r\nX: a\rb\r\n\r\n").unwrap_err(),
            Error::BareCr
        );
    }

    #[test]
    fn colon_search() {
        assert_eq!(find_colon(b"Via: x"), Some(3));
        assert_eq!(find_colon(b"Proxy-Authorization: x"), Some(19));
        assert_eq!(find_colon(b"abcdefgh:"), Some(8));
        assert_eq!(find_colon(b"a\x3b\x3a"), Some(2));
        let long = [b"x".repeat(100), b":".to_vec()].concat();
        assert_eq!(find_colon(&long), Some(100));
        assert_eq!(find_colon(b"no colon here at all, none"), None);
        assert_eq!(find_colon(b""), None);
        for n in 0..40 {
            let s = [b"\xff".repeat(n), b":".to_vec(), b"::".to_vec()].concat();
            assert_eq!(find_colon(&s), Some(n));
        }
    }

    #[test]
    fn cr_in_a_known_name_is_caught() {
        // `\r` | 0x20 == `-`: "Call\rID" matches Call-ID case-insensitively; the CR count
        // must still reject it.
        assert_eq!(
            head(b"OPTIONS sip:a SIP/2.0\r\nCall\rID: x\r\n\r\n").unwrap_err(),
            Error::BareCr
        );
    }

    #[test]
    fn nul_only_as_quoted_pair() {
        assert_eq!(
            head(b"OPTIONS sip:a SIP/2.0\r\nX: a\0b\r\n\r\n").unwrap_err(),
            Error::NulByte
        );
        // A backslash outside quotes does not make a quoted-pair, nor does an escaped one.
        assert_eq!(
            head(b"OPTIONS sip:a SIP/2.0\r\nX: a\\\0b\r\n\r\n").unwrap_err(),
            Error::NulByte
        );
        assert_eq!(
            head(b"OPTIONS sip:a SIP/2.0\r\nX: \"\\\\\0\"\r\n\r\n").unwrap_err(),
            Error::NulByte
        );
        assert!(head(b"OPTIONS sip:a SIP/2.0\r\nX: \"a\\\0b\"\r\n\r\n").is_ok());
        assert_eq!(
            head(b"OPTIONS sip:a\0 SIP/2.0\r\n\r\n").unwrap_err(),
            Error::BadRequestLine("control character in Request-URI")
        );
        assert_eq!(
            head(b"SIP/2.0 200 O\0K\r\n\r\n").unwrap_err(),
            Error::BadStatusLine("control character in reason phrase")
        );
    }

    #[test]
    fn content_length_values() {
        assert_eq!(parse_content_length(b"0"), Ok(0));
        assert_eq!(parse_content_length(b"0009"), Ok(9));
        assert_eq!(parse_content_length(b"4294967295"), Ok(u32::MAX));
        assert_eq!(
            parse_content_length(b"000000000000004294967295"),
            Ok(u32::MAX)
        );
        assert_eq!(
            parse_content_length(b"4294967296"),
            Err(Error::InvalidContentLength)
        );
        assert_eq!(
            parse_content_length(b"18446744073709551616"),
            Err(Error::InvalidContentLength)
        );
        assert_eq!(
            parse_content_length(b"-999"),
            Err(Error::InvalidContentLength)
        );
        assert_eq!(
            parse_content_length(b"1 2"),
            Err(Error::InvalidContentLength)
        );
        assert_eq!(parse_content_length(b""), Err(Error::InvalidContentLength));
        assert_eq!(
            parse_content_length(b"0x10"),
            Err(Error::InvalidContentLength)
        );
        assert_eq!(parse_content_length(b"0000000000"), Ok(0));
    }

    #[test]
    fn content_length_conflicts() {
        let e = head(b"OPTIONS sip:a SIP/2.0\r\nl: 13\r\nContent-Length: 5\r\n\r\n").unwrap_err();
        assert_eq!(e, Error::ConflictingContentLength);
        let h = head(b"OPTIONS sip:a SIP/2.0\r\nl: 5\r\nContent-Length: 005\r\n\r\n").unwrap();
        assert_eq!(h.content_length, Some(5));
    }

    #[test]
    fn limits() {
        let lim = Limits {
            max_message_size: 1000,
            max_headers: 3,
            max_line_len: 40,
        };
        let many = b"OPTIONS sip:a SIP/2.0\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n";
        assert_eq!(
            parse_head(many, &lim).unwrap_err(),
            Error::TooManyHeaders { limit: 3 }
        );
        let long = b"OPTIONS sip:a SIP/2.0\r\nA: 1234567890123456789012345678901234567890\r\n\r\n";
        assert_eq!(
            parse_head(long, &lim).unwrap_err(),
            Error::LineTooLong { limit: 40 }
        );
        let folded =
            b"OPTIONS sip:a SIP/2.0\r\nA: 12345678901234567890\r\n 12345678901234567890\r\n\r\n";
        assert_eq!(
            parse_head(folded, &lim).unwrap_err(),
            Error::LineTooLong { limit: 40 }
        );
        let long_start =
            b"OPTIONS sip:a12345678901234567890123456789012345678901234567890 SIP/2.0\r\n\r\n";
        assert_eq!(
            parse_head(long_start, &lim).unwrap_err(),
            Error::LineTooLong { limit: 40 }
        );
    }
}
