//! Byte-level editing for forwarding (RFC 3261 §16.6, §16.7).
//!
//! A proxy changes a handful of fields and must pass everything else on untouched. The
//! [`Editor`] records edits as byte ranges of the original buffer and writes the result in
//! one pass with one allocation: unchanged spans are copied, never re-serialised.

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};
use smallvec::SmallVec;

use crate::builder::put_decimal;
use crate::error::Error;
use crate::header_name::HeaderName;
use crate::message::{
    Head, HeaderEntry, HeaderIndex, INLINE_HEADERS, LineEnds, SipMessage, StartLine, index_field,
    parse_content_length, parse_start_line,
};
use crate::split::Elements;

#[derive(Debug, Clone)]
enum EntryOp<'e> {
    Delete,
    Replace(Cow<'e, [u8]>),
    ReplaceNum(u32),
    /// Bit i set: element i of the (comma-separated) value is removed.
    RemoveElements(u64),
}

#[derive(Debug, Clone)]
struct Insert<'e> {
    pos: u32,
    name: Cow<'e, str>,
    value: Cow<'e, [u8]>,
}

/// Collects edits to a message and writes the edited copy.
///
/// Edits never overlap by construction: header edits are per field line, inserts go at
/// line starts, the Request-URI and the body are separate slots. Applying several edits
/// of the same kind to one field keeps the last one, except element removals, which
/// accumulate.
#[derive(Debug, Clone)]
pub struct Editor<'m, 'e> {
    msg: &'m SipMessage,
    /// One slot per header line, created on the first header edit: O(1) per edit.
    ops: SmallVec<[Option<EntryOp<'e>>; INLINE_HEADERS]>,
    inserts: SmallVec<[Insert<'e>; 4]>,
    request_uri: Option<Cow<'e, [u8]>>,
    body: Option<Cow<'e, [u8]>>,
}

/// One span of the output.
enum Piece<'a> {
    Bytes(&'a [u8]),
    Num(u32),
    Line(&'a str, &'a [u8]),
    Nothing,
}

impl Piece<'_> {
    fn len(&self) -> usize {
        match self {
            Piece::Bytes(b) => b.len(),
            Piece::Num(n) => decimal_len(*n),
            Piece::Line(n, v) => n.len() + 2 + v.len() + 2,
            Piece::Nothing => 0,
        }
    }
    fn write(&self, out: &mut BytesMut) {
        match self {
            Piece::Bytes(b) => out.put_slice(b),
            Piece::Num(n) => put_decimal(out, *n),
            Piece::Line(n, v) => {
                out.put_slice(n.as_bytes());
                out.put_slice(b": ");
                out.put_slice(v);
                out.put_slice(b"\r\n");
            }
            Piece::Nothing => {}
        }
    }
}

fn decimal_len(mut n: u32) -> usize {
    let mut l = 1;
    while n >= 10 {
        n /= 10;
        l += 1;
    }
    l
}

impl<'m, 'e> Editor<'m, 'e> {
    /// Start editing `msg`.
    pub fn new(msg: &'m SipMessage) -> Self {
        Editor {
            msg,
            ops: SmallVec::new(),
            inserts: SmallVec::new(),
            request_uri: None,
            body: None,
        }
    }

    fn entries(&self) -> impl Iterator<Item = (usize, &'m HeaderEntry)> + 'm {
        self.msg.head.headers.iter().enumerate()
    }

    fn op(&self, idx: usize) -> Option<&EntryOp<'e>> {
        self.ops.get(idx).and_then(Option::as_ref)
    }

    fn set_op(&mut self, idx: usize, op: EntryOp<'e>) {
        if self.ops.is_empty() {
            self.ops.resize(self.msg.head.headers.len(), None);
        }
        if let Some(slot) = self.ops.get_mut(idx) {
            *slot = Some(op);
        }
    }

    fn first_pos(&self, name: HeaderName) -> Option<u32> {
        self.msg
            .head
            .headers
            .iter()
            .find(|e| e.name == name)
            .map(|e| e.line_start)
    }

    fn end_of_headers(&self) -> u32 {
        self.msg.headers_end() as u32
    }

    fn insert(&mut self, pos: u32, name: impl Into<Cow<'e, str>>, value: impl Into<Cow<'e, [u8]>>) {
        self.inserts.push(Insert {
            pos,
            name: name.into(),
            value: value.into(),
        });
    }

    /// Add a Via on top (§16.6 step 8). A later call goes above an earlier one, as
    /// "prepend" says: an element that re-adds the Via it received (edited) and then its
    /// own gets its own on top.
    pub fn prepend_via(&mut self, value: impl Into<Cow<'e, [u8]>>) -> &mut Self {
        let pos = self
            .first_pos(HeaderName::Via)
            .unwrap_or(self.msg.head.start_line_end);
        let before = self
            .inserts
            .iter()
            .position(|i| i.pos == pos && i.name == "Via")
            .unwrap_or(self.inserts.len());
        self.inserts.insert(
            before,
            Insert {
                pos,
                name: "Via".into(),
                value: value.into(),
            },
        );
        self
    }

    /// Remove the topmost remaining value of a list header; returns it.
    fn remove_top_element(
        &mut self,
        name: HeaderName,
        what: &'static str,
    ) -> Result<&'m [u8], Error> {
        let msg: &'m SipMessage = self.msg;
        for (idx, e) in self.entries() {
            if e.name != name {
                continue;
            }
            let mask = match self.op(idx) {
                Some(EntryOp::Delete) => continue,
                Some(EntryOp::RemoveElements(m)) => *m,
                Some(_) => return Err(Error::Edit("header value was replaced")),
                None => 0,
            };
            for (i, elem) in Elements::new(e.value().get(msg.as_bytes()), true).enumerate() {
                if i >= 64 {
                    return Err(Error::Edit("too many values in one header line"));
                }
                if mask & (1 << i) == 0 {
                    self.set_op(idx, EntryOp::RemoveElements(mask | (1 << i)));
                    return Ok(elem);
                }
            }
        }
        Err(Error::Edit(what))
    }

    /// Remove the bottom-most remaining value of a list header; returns it.
    fn remove_last_element(
        &mut self,
        name: HeaderName,
        what: &'static str,
    ) -> Result<&'m [u8], Error> {
        let msg: &'m SipMessage = self.msg;
        let entries: SmallVec<[(usize, &'m HeaderEntry); 4]> =
            self.entries().filter(|(_, e)| e.name == name).collect();
        for &(idx, e) in entries.iter().rev() {
            let mask = match self.op(idx) {
                Some(EntryOp::Delete) => continue,
                Some(EntryOp::RemoveElements(m)) => *m,
                Some(_) => return Err(Error::Edit("header value was replaced")),
                None => 0,
            };
            let elems: SmallVec<[&'m [u8]; 8]> =
                Elements::new(e.value().get(msg.as_bytes()), true).collect();
            for (i, elem) in elems.iter().enumerate().rev() {
                if i >= 64 {
                    return Err(Error::Edit("too many values in one header line"));
                }
                if mask & (1 << i) == 0 {
                    self.set_op(idx, EntryOp::RemoveElements(mask | (1 << i)));
                    return Ok(elem);
                }
            }
        }
        Err(Error::Edit(what))
    }

    /// Remove the last Route value (strict-routing compatibility, RFC 3261 §16.4: the
    /// Request-URI is replaced by it); returns it.
    pub fn remove_last_route(&mut self) -> Result<&'m [u8], Error> {
        self.remove_last_element(HeaderName::Route, "no Route to remove")
    }

    /// Remove the topmost Route value (§16.4 when it names this proxy); returns it.
    pub fn remove_top_route(&mut self) -> Result<&'m [u8], Error> {
        self.remove_top_element(HeaderName::Route, "no Route to remove")
    }

    /// Remove the topmost Via value (§16.7 step 3, responses); returns it.
    pub fn remove_top_via(&mut self) -> Result<&'m [u8], Error> {
        self.remove_top_element(HeaderName::Via, "no Via to remove")
    }

    /// Decrement Max-Forwards, or add `Max-Forwards: 70` when absent (§16.6 step 3).
    /// Returns the new value; [`Error::TooManyHops`] when it is already 0.
    pub fn decrement_max_forwards(&mut self) -> Result<u8, Error> {
        match self.msg.max_forwards()? {
            Some(0) => Err(Error::TooManyHops),
            Some(n) => {
                let idx = self
                    .entries()
                    .find(|(_, e)| e.name == HeaderName::MaxForwards)
                    .map(|(i, _)| i);
                if let Some(idx) = idx {
                    self.set_op(idx, EntryOp::ReplaceNum(u32::from(n - 1)));
                }
                Ok(n - 1)
            }
            None => {
                let pos = self.end_of_headers();
                self.insert(pos, "Max-Forwards", &b"70"[..]);
                Ok(70)
            }
        }
    }

    /// Add a Record-Route value above any existing one (§16.6 step 4). Several calls keep
    /// call order: the first added ends up topmost.
    pub fn add_record_route(&mut self, value: impl Into<Cow<'e, [u8]>>) -> &mut Self {
        let pos = self
            .first_pos(HeaderName::RecordRoute)
            .unwrap_or_else(|| self.end_of_headers());
        self.insert(pos, "Record-Route", value);
        self
    }

    /// Add a Path value above any existing one (RFC 3327 §5.2).
    pub fn add_path(&mut self, value: impl Into<Cow<'e, [u8]>>) -> &mut Self {
        let pos = self
            .first_pos(HeaderName::Path)
            .unwrap_or_else(|| self.end_of_headers());
        self.insert(pos, "Path", value);
        self
    }

    /// Add a Route value above any existing one (e.g. a pre-loaded outbound proxy).
    pub fn prepend_route(&mut self, value: impl Into<Cow<'e, [u8]>>) -> &mut Self {
        let pos = self
            .first_pos(HeaderName::Route)
            .unwrap_or_else(|| self.end_of_headers());
        self.insert(pos, "Route", value);
        self
    }

    /// Replace the Request-URI (§16.6 step 2 / 6). Errors on a response.
    pub fn set_request_uri(&mut self, uri: impl Into<Cow<'e, [u8]>>) -> Result<&mut Self, Error> {
        if !self.msg.is_request() {
            return Err(Error::Edit("responses have no Request-URI"));
        }
        self.request_uri = Some(uri.into());
        Ok(self)
    }

    /// Replace the body and fix Content-Length (adding it if absent). Content-Type is
    /// left as is; see [`set_header`](Self::set_header) / [`remove_header`](Self::remove_header).
    pub fn set_body(&mut self, body: impl Into<Cow<'e, [u8]>>) -> &mut Self {
        let body = body.into();
        let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
        let cls: SmallVec<[usize; 2]> = self
            .entries()
            .filter(|(_, e)| e.name == HeaderName::ContentLength)
            .map(|(i, _)| i)
            .collect();
        if cls.is_empty() {
            let pos = self.end_of_headers();
            self.inserts.push(Insert {
                pos,
                name: Cow::Borrowed("Content-Length"),
                value: Cow::Owned(len.to_string().into_bytes()),
            });
        }
        for i in cls {
            self.set_op(i, EntryOp::ReplaceNum(len));
        }
        self.body = Some(body);
        self
    }

    /// Append a header at the end of the header section.
    pub fn add_header(
        &mut self,
        name: impl Into<Cow<'e, str>>,
        value: impl Into<Cow<'e, [u8]>>,
    ) -> &mut Self {
        let pos = self.end_of_headers();
        self.insert(pos, name, value);
        self
    }

    /// Replace the value of the first `name` line and remove its other lines; add the
    /// header at the end when absent.
    pub fn set_header(
        &mut self,
        name: HeaderName,
        value: impl Into<Cow<'e, [u8]>>,
    ) -> Result<&mut Self, Error> {
        if name == HeaderName::Other {
            return Err(Error::Edit("use add_header for extension headers"));
        }
        let idxs: SmallVec<[usize; 4]> = self
            .entries()
            .filter(|(_, e)| e.name == name)
            .map(|(i, _)| i)
            .collect();
        let value = value.into();
        match idxs.split_first() {
            None => {
                let pos = self.end_of_headers();
                self.insert(pos, name.as_str(), value);
            }
            Some((first, rest)) => {
                self.set_op(*first, EntryOp::Replace(value));
                for &i in rest {
                    self.set_op(i, EntryOp::Delete);
                }
            }
        }
        Ok(self)
    }

    /// Remove every line of `name` (for `Other`, use the raw name with
    /// [`remove_header_named`](Self::remove_header_named)).
    pub fn remove_header(&mut self, name: HeaderName) -> &mut Self {
        let idxs: SmallVec<[usize; 4]> = self
            .entries()
            .filter(|(_, e)| e.name == name)
            .map(|(i, _)| i)
            .collect();
        for i in idxs {
            self.set_op(i, EntryOp::Delete);
        }
        self
    }

    /// Remove every line whose raw name matches `name` case-insensitively.
    pub fn remove_header_named(&mut self, name: &str) -> &mut Self {
        let kind = HeaderName::from_bytes(name.as_bytes());
        if kind != HeaderName::Other {
            return self.remove_header(kind);
        }
        let buf = self.msg.as_bytes();
        let idxs: SmallVec<[usize; 4]> = self
            .entries()
            .filter(|(_, e)| {
                e.name == HeaderName::Other
                    && e.name_span().get(buf).eq_ignore_ascii_case(name.as_bytes())
            })
            .map(|(i, _)| i)
            .collect();
        for i in idxs {
            self.set_op(i, EntryOp::Delete);
        }
        self
    }

    /// Write the edited message.
    pub fn finish(&self) -> Bytes {
        let mut out = BytesMut::new();
        self.finish_into(&mut out);
        out.freeze()
    }

    /// Write the edited message and return it parsed, without parsing it again: the
    /// original's index is carried over (untouched fields moved, edited and inserted
    /// fields indexed where they were written). What forwards a message hands on the
    /// parsed copy, so the next stage in the process reads it as is.
    ///
    /// An edit that left the message unparseable (a value with a line break, a field
    /// grown past 64 KiB) gets the error a full parse gives.
    pub fn finish_message(&self) -> Result<SipMessage, Error> {
        let mut out = BytesMut::new();
        self.finish_into(&mut out);
        let out = out.freeze();
        match self.index_written(&out) {
            Some(head) => {
                let msg = SipMessage::from_parts(out, head);
                #[cfg(debug_assertions)]
                same_index(&msg);
                Ok(msg)
            }
            None => SipMessage::parse(out),
        }
    }

    /// The index of `out`, the bytes [`finish_into`](Self::finish_into) wrote; `None` when
    /// an edited field does not index as the field it replaced, or the framing does not
    /// add up (a full parse then says why).
    fn index_written(&self, out: &[u8]) -> Option<Head> {
        let head = &self.msg.head;
        let buf = self.msg.as_bytes();
        let ends = LineEnds::new();
        let max_line = u16::MAX as usize;
        let mut delta: isize = 0;
        let start = match (&self.request_uri, &head.start) {
            (Some(uri), StartLine::Request { uri: old, .. }) => {
                delta = uri.len() as isize - (old.end - old.start) as isize;
                let end = head.start_line_end as usize;
                let terminator = if buf.get(end.wrapping_sub(2)) == Some(&b'\r') {
                    2
                } else {
                    1
                };
                parse_start_line(out, end.checked_add_signed(delta)? - terminator).ok()?
            }
            _ => head.start,
        };
        let at = |pos: u32, delta: isize| (pos as usize).checked_add_signed(delta);
        let start_line_end = at(head.start_line_end, delta)?;
        let mut order: SmallVec<[&Insert<'e>; 4]> = self.inserts.iter().collect();
        order.sort_by_key(|i| i.pos);
        let mut inserts = order.into_iter().peekable();
        let mut headers = HeaderIndex::new();
        let index_at = |pos: usize, headers: &mut HeaderIndex| -> Option<usize> {
            let (entry, next) = index_field(out, pos, &ends, max_line).ok()?;
            headers.push(entry);
            Some(next - pos)
        };
        for (idx, e) in head.headers.iter().enumerate() {
            while let Some(ins) = inserts.next_if(|i| i.pos <= e.line_start) {
                delta += index_at(at(ins.pos, delta)?, &mut headers)? as isize;
            }
            let old_len = (e.line_end() - e.line_start) as isize;
            match self.op(idx) {
                None => headers.push(e.moved_to(u32::try_from(at(e.line_start, delta)?).ok()?)),
                Some(EntryOp::Delete) => delta -= old_len,
                Some(EntryOp::RemoveElements(mask)) if removes_all(buf, e, *mask) => {
                    delta -= old_len
                }
                Some(_) => {
                    let len = index_at(at(e.line_start, delta)?, &mut headers)?;
                    if headers.last().map(|n| n.name) != Some(e.name) {
                        return None;
                    }
                    delta += len as isize - old_len;
                }
            }
        }
        for ins in inserts {
            delta += index_at(at(ins.pos, delta)?, &mut headers)? as isize;
        }
        let body_start = at(head.body_start, delta)?;
        let mut content_length = None;
        for e in headers
            .iter()
            .filter(|e| e.name == HeaderName::ContentLength)
        {
            let n = parse_content_length(e.value().get(out)).ok()?;
            if content_length.is_some_and(|c| c != n) {
                return None;
            }
            content_length = Some(n);
        }
        let framed = match content_length {
            Some(n) => body_start.checked_add(n as usize)? == out.len(),
            None => body_start <= out.len(),
        };
        if !framed || !matches!(out.get(body_start.checked_sub(1)?), Some(b'\n')) {
            return None;
        }
        Some(Head {
            start,
            start_line_end: u32::try_from(start_line_end).ok()?,
            headers,
            body_start: u32::try_from(body_start).ok()?,
            content_length,
        })
    }

    /// Write the edited message at the end of `out` (reusing its allocation).
    pub fn finish_into(&self, out: &mut BytesMut) {
        let buf = self.msg.as_bytes();
        // (start, end, order, piece): order keeps inserts at one position in call order
        // and ahead of a range starting there.
        let mut pieces: SmallVec<[(u32, u32, u32, Piece<'_>); 16]> = SmallVec::new();
        for (n, ins) in self.inserts.iter().enumerate() {
            pieces.push((
                ins.pos,
                ins.pos,
                n as u32,
                Piece::Line(&ins.name, &ins.value),
            ));
        }
        let late = self.inserts.len() as u32;
        if let (Some(uri), StartLine::Request { uri: span, .. }) =
            (&self.request_uri, &self.msg.head.start)
        {
            pieces.push((span.start, span.end, late, Piece::Bytes(uri)));
        }
        for (e, op) in self.msg.head.headers.iter().zip(&self.ops) {
            let Some(op) = op else { continue };
            match op {
                EntryOp::Delete => pieces.push((e.line_start, e.line_end(), late, Piece::Nothing)),
                EntryOp::Replace(v) => {
                    pieces.push((e.value().start, e.value().end, late, Piece::Bytes(v)))
                }
                EntryOp::ReplaceNum(n) => {
                    pieces.push((e.value().start, e.value().end, late, Piece::Num(*n)))
                }
                EntryOp::RemoveElements(mask) => element_removals(buf, e, *mask, late, &mut pieces),
            }
        }
        if let Some(body) = &self.body {
            pieces.push((
                self.msg.head.body_start,
                buf.len() as u32,
                late,
                Piece::Bytes(body),
            ));
        }
        pieces.sort_by_key(|p| (p.0, p.2));

        let mut total = 0usize;
        let mut cursor = 0usize;
        for (s, e, _, p) in &pieces {
            let (s, e) = (*s as usize, *e as usize);
            if s < cursor {
                continue;
            }
            total += s - cursor + p.len();
            cursor = e;
        }
        total += buf.len() - cursor;
        out.reserve(total);
        let mut cursor = 0usize;
        for (s, e, _, p) in &pieces {
            let (s, e) = (*s as usize, *e as usize);
            if s < cursor {
                continue;
            }
            out.put_slice(&buf[cursor..s]);
            p.write(out);
            cursor = e;
        }
        out.put_slice(&buf[cursor..]);
    }
}

/// Byte ranges that delete the masked elements of one list header line while keeping its
/// separators well-formed: a run of removed elements followed by a kept one is cut up to
/// that kept element; a run reaching the end is cut from the end of the kept element
/// before it; all removed means the whole line goes.
fn element_removals<'a>(
    buf: &[u8],
    e: &HeaderEntry,
    mask: u64,
    order: u32,
    out: &mut SmallVec<[(u32, u32, u32, Piece<'a>); 16]>,
) {
    let value = e.value().get(buf);
    let base = e.value().start as usize;
    // Element spans relative to the buffer.
    let mut spans: SmallVec<[(usize, usize); 8]> = SmallVec::new();
    for el in Elements::new(value, true) {
        let off = el.as_ptr() as usize - value.as_ptr() as usize;
        spans.push((base + off, base + off + el.len()));
    }
    let removed = |i: usize| removed_at(mask, i);
    if (0..spans.len()).all(removed) {
        out.push((e.line_start, e.line_end(), order, Piece::Nothing));
        return;
    }
    let mut i = 0;
    while i < spans.len() {
        if !removed(i) {
            i += 1;
            continue;
        }
        let mut j = i;
        while j + 1 < spans.len() && removed(j + 1) {
            j += 1;
        }
        let (s, e) = if j + 1 < spans.len() {
            (spans[i].0, spans[j + 1].0)
        } else {
            (spans[i - 1].1, spans[j].1)
        };
        out.push((s as u32, e as u32, order, Piece::Nothing));
        i = j + 1;
    }
}

fn removed_at(mask: u64, i: usize) -> bool {
    i < 64 && mask & (1 << i) != 0
}

/// Whether removing the masked elements empties the field, so the whole line goes.
fn removes_all(buf: &[u8], e: &HeaderEntry, mask: u64) -> bool {
    Elements::new(e.value().get(buf), true)
        .enumerate()
        .all(|(i, _)| removed_at(mask, i))
}

/// Debug builds check every carried-over index against a full parse of the same bytes.
#[cfg(debug_assertions)]
fn same_index(msg: &SipMessage) {
    let fresh = SipMessage::parse(msg.bytes().clone());
    assert!(
        fresh.is_ok(),
        "an edited message that indexes also parses: {fresh:?}"
    );
    let Ok(fresh) = fresh else { return };
    let (a, b) = (&msg.head, &fresh.head);
    let entry = |e: &HeaderEntry| (e.name, e.name_span(), e.value(), e.line_end());
    assert_eq!(
        a.headers.iter().map(entry).collect::<Vec<_>>(),
        b.headers.iter().map(entry).collect::<Vec<_>>(),
        "carried-over header index"
    );
    assert_eq!(
        (a.start_line_end, a.body_start, a.content_length),
        (b.start_line_end, b.body_start, b.content_length),
        "carried-over framing"
    );
    assert_eq!(
        msg.start_line(),
        fresh.start_line(),
        "carried-over start line"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const INV: &[u8] = b"INVITE sip:bob@biloxi.com SIP/2.0\r\nVia: SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bK776asdhds\r\nMax-Forwards: 70\r\nRoute: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>\r\nRoute: <sip:p3.example.com;lr>\r\nTo: Bob <sip:bob@biloxi.com>\r\nFrom: Alice <sip:alice@atlanta.com>;tag=1928301774\r\nCall-ID: a84b4c76e66710\r\nCSeq: 314159 INVITE\r\nRecord-Route: <sip:rr0;lr>\r\nX-Custom:  keep  me \r\nContent-Type: application/sdp\r\nContent-Length: 4\r\n\r\nv=0\n";

    fn parse(b: &[u8]) -> SipMessage {
        SipMessage::parse(b.to_vec()).unwrap()
    }

    /// The edited copy through `finish_message`, whose index debug builds check against a
    /// full parse; its bytes are `finish`'s.
    fn finished(ed: &Editor<'_, '_>) -> SipMessage {
        let msg = ed.finish_message().expect("indexes");
        assert_eq!(msg.as_bytes(), &ed.finish()[..]);
        msg
    }

    /// Every kind of edit, on CRLF and bare-LF messages, with folded fields and a body:
    /// the carried-over index is the one a full parse builds (checked in `finished`).
    #[test]
    fn finish_message_indexes_like_a_parse() {
        let lf = String::from_utf8_lossy(INV).replace("\r\n", "\n");
        let folded = String::from_utf8_lossy(INV).replace(
            "Route: <sip:p3.example.com;lr>\r\n",
            "Route: <sip:p3.example.com;lr>,\r\n  <sip:p4.example.com;lr>\r\n",
        );
        for text in [INV.to_vec(), lf.into_bytes(), folded.into_bytes()] {
            let m = parse(&text);
            let edits: [&dyn Fn(&mut Editor<'_, '_>); 9] = [
                &|_| {},
                &|ed| {
                    ed.prepend_via(&b"SIP/2.0/UDP p.example;branch=z9hG4bKa"[..]);
                    ed.decrement_max_forwards().unwrap();
                    ed.add_record_route(&b"<sip:p.example;lr>"[..]);
                },
                &|ed| {
                    ed.remove_top_route().unwrap();
                    ed.remove_top_route().unwrap();
                    ed.remove_top_via().unwrap();
                },
                &|ed| {
                    ed.remove_last_route().unwrap();
                },
                &|ed| {
                    ed.set_request_uri(&b"sip:bob@192.0.2.4:5060;transport=tcp"[..])
                        .unwrap();
                    ed.set_body(&b"v=0\r\no=longer body\r\n"[..]);
                },
                &|ed| {
                    ed.set_request_uri(&b"sip:b@c"[..]).unwrap();
                    ed.set_body(&b""[..]);
                    ed.remove_header(HeaderName::ContentType);
                },
                &|ed| {
                    ed.set_header(HeaderName::CSeq, &b"7 INVITE"[..]).unwrap();
                    ed.set_header(HeaderName::Subject, &b"new"[..]).unwrap();
                    ed.add_header("X-New", &b"1"[..]);
                    ed.remove_header_named("x-custom");
                },
                &|ed| {
                    while ed.remove_top_route().is_ok() {}
                    ed.add_path(&b"<sip:path.example;lr>"[..]);
                    ed.prepend_route(&b"<sip:first.example;lr>"[..]);
                },
                &|ed| {
                    ed.remove_header(HeaderName::ContentLength);
                    ed.set_body(&b"abc"[..]);
                },
            ];
            for edit in edits {
                let mut ed = Editor::new(&m);
                edit(&mut ed);
                finished(&ed);
            }
        }
    }

    #[test]
    fn no_edits_is_identity() {
        let m = parse(INV);
        assert_eq!(Editor::new(&m).finish().as_ref(), INV);
    }

    #[test]
    fn forwarding_edits() {
        let m = parse(INV);
        let mut ed = Editor::new(&m);
        ed.prepend_via(&b"SIP/2.0/UDP proxy.example.com;branch=z9hG4bKnew"[..]);
        assert_eq!(ed.remove_top_route().unwrap(), b"<sip:p1.example.com;lr>");
        assert_eq!(ed.decrement_max_forwards().unwrap(), 69);
        ed.add_record_route(&b"<sip:proxy.example.com;lr>"[..]);
        ed.set_request_uri(&b"sip:bob@192.0.2.4:5060"[..]).unwrap();
        ed.set_body(&b"v=0\r\no=x\r\n"[..]);
        let out = ed.finish();
        let expected = b"INVITE sip:bob@192.0.2.4:5060 SIP/2.0\r\nVia: SIP/2.0/UDP proxy.example.com;branch=z9hG4bKnew\r\nVia: SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bK776asdhds\r\nMax-Forwards: 69\r\nRoute: <sip:p2.example.com;lr>\r\nRoute: <sip:p3.example.com;lr>\r\nTo: Bob <sip:bob@biloxi.com>\r\nFrom: Alice <sip:alice@atlanta.com>;tag=1928301774\r\nCall-ID: a84b4c76e66710\r\nCSeq: 314159 INVITE\r\nRecord-Route: <sip:proxy.example.com;lr>\r\nRecord-Route: <sip:rr0;lr>\r\nX-Custom:  keep  me \r\nContent-Type: application/sdp\r\nContent-Length: 10\r\n\r\nv=0\r\no=x\r\n";
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(expected)
        );
        let re = parse(&out);
        assert!(re.validate_request().is_ok());
    }

    #[test]
    fn a_later_prepended_via_goes_on_top() {
        // An edge replaces the Via it received with an edited copy, then adds its own:
        // its own must be the topmost, or responses come back to the wrong hop.
        let m = parse(INV);
        let mut ed = Editor::new(&m);
        ed.remove_top_via().unwrap();
        ed.prepend_via(&b"SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bK776asdhds;edited"[..]);
        ed.prepend_via(&b"SIP/2.0/UDP proxy.example.com;branch=z9hG4bKnew"[..]);
        let out = finished(&ed);
        let vias: Vec<String> = out
            .via()
            .map(|v| String::from_utf8_lossy(v.unwrap().raw).into_owned())
            .collect();
        assert_eq!(
            vias,
            [
                "SIP/2.0/UDP proxy.example.com;branch=z9hG4bKnew",
                "SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bK776asdhds;edited"
            ]
        );
    }

    #[test]
    fn route_removal_across_lines() {
        let m = parse(INV);
        let mut ed = Editor::new(&m);
        assert_eq!(ed.remove_top_route().unwrap(), b"<sip:p1.example.com;lr>");
        assert_eq!(ed.remove_top_route().unwrap(), b"<sip:p2.example.com;lr>");
        assert_eq!(ed.remove_top_route().unwrap(), b"<sip:p3.example.com;lr>");
        assert!(ed.remove_top_route().is_err());
        let out = finished(&ed);
        assert_eq!(out.routes().count(), 0);
        assert_eq!(out.header_count(), m.header_count() - 2);
    }

    #[test]
    fn last_route_removal() {
        let m = parse(INV);
        let mut ed = Editor::new(&m);
        assert_eq!(ed.remove_last_route().unwrap(), b"<sip:p3.example.com;lr>");
        assert_eq!(ed.remove_last_route().unwrap(), b"<sip:p2.example.com;lr>");
        assert_eq!(ed.remove_top_route().unwrap(), b"<sip:p1.example.com;lr>");
        assert!(ed.remove_last_route().is_err());
        assert_eq!(finished(&ed).routes().count(), 0);
    }

    #[test]
    fn trailing_element_removal() {
        let m = parse(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1 ,  SIP/2.0/UDP b;branch=z9hG4bK2,SIP/2.0/UDP c;branch=z9hG4bK3\r\nl: 0\r\n\r\n");
        let mut ed = Editor::new(&m);
        ed.remove_top_via().unwrap();
        let out = ed.finish();
        assert_eq!(&out[..], b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP b;branch=z9hG4bK2,SIP/2.0/UDP c;branch=z9hG4bK3\r\nl: 0\r\n\r\n");
        let mut ed = Editor::new(&m);
        ed.remove_top_via().unwrap();
        ed.remove_top_via().unwrap();
        assert_eq!(
            &ed.finish()[..],
            b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP c;branch=z9hG4bK3\r\nl: 0\r\n\r\n"
        );
        // element_removals: a trailing run is cut from the previous kept element's end.
        let mut pieces = SmallVec::new();
        element_removals(m.as_bytes(), &m.head.headers[0], 0b110, 0, &mut pieces);
        let (s, e) = (pieces[0].0 as usize, pieces[0].1 as usize);
        let mut kept = m.as_bytes()[..s].to_vec();
        kept.extend_from_slice(&m.as_bytes()[e..]);
        assert_eq!(
            &kept[..],
            b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\nl: 0\r\n\r\n"
        );
    }

    #[test]
    fn max_forwards_cases() {
        let m = parse(b"OPTIONS sip:a SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nMax-Forwards: 0\r\nl: 0\r\n\r\n");
        assert_eq!(
            Editor::new(&m).decrement_max_forwards(),
            Err(Error::TooManyHops)
        );
        let m =
            parse(b"OPTIONS sip:a SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nl: 0\r\n\r\n");
        let mut ed = Editor::new(&m);
        assert_eq!(ed.decrement_max_forwards(), Ok(70));
        assert_eq!(&ed.finish()[..], b"OPTIONS sip:a SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nl: 0\r\nMax-Forwards: 70\r\n\r\n");
    }

    #[test]
    fn header_edits() {
        let m = parse(b"REGISTER sip:a SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nContact: <sip:u@10.0.0.1>\r\nX-A: 1\r\nx-a: 2\r\n\r\n");
        let mut ed = Editor::new(&m);
        ed.set_header(HeaderName::Contact, &b"<sip:u@203.0.113.9:40000>"[..])
            .unwrap();
        ed.remove_header_named("X-A");
        ed.add_path(&b"<sip:edge;lr>"[..]);
        ed.set_body(&b""[..]);
        assert_eq!(
            &ed.finish()[..],
            b"REGISTER sip:a SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nContact: <sip:u@203.0.113.9:40000>\r\nPath: <sip:edge;lr>\r\nContent-Length: 0\r\n\r\n"
        );
        let resp = parse(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nl: 0\r\n\r\n");
        assert!(Editor::new(&resp).set_request_uri(&b"sip:x"[..]).is_err());
        assert!(
            Editor::new(&resp)
                .set_header(HeaderName::Other, &b"x"[..])
                .is_err()
        );
    }
}
