//! Header parameters (`;name[=value]`), quoted strings, and the small cursor the typed
//! header parsers share.

use std::borrow::Cow;

use crate::chars;
use crate::error::Error;

/// A forward-only position in a header value.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cursor<'a> {
    pub s: &'a [u8],
    pub i: usize,
}

impl<'a> Cursor<'a> {
    #[inline]
    pub fn new(s: &'a [u8]) -> Self {
        Cursor { s, i: 0 }
    }
    #[inline]
    pub fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    #[inline]
    pub fn at_end(&self) -> bool {
        self.i >= self.s.len()
    }
    #[inline]
    pub fn skip_lws(&mut self) -> bool {
        let start = self.i;
        self.i = chars::skip_lws(self.s, self.i);
        self.i > start
    }
    #[inline]
    pub fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    /// Skip LWS, then eat `b` (the SWS-separated punctuation of §25.1).
    #[inline]
    pub fn eat_sep(&mut self, b: u8) -> bool {
        let save = self.i;
        self.skip_lws();
        if self.eat(b) {
            true
        } else {
            self.i = save;
            false
        }
    }
    #[inline]
    pub fn take_class(&mut self, class: u16) -> &'a [u8] {
        let start = self.i;
        self.i = chars::scan(self.s, self.i, class);
        &self.s[start..self.i]
    }
    #[inline]
    pub fn token(&mut self) -> &'a [u8] {
        self.take_class(chars::TOKEN)
    }
    /// A quoted string starting at the cursor; returns the bytes between the quotes,
    /// escapes left in place.
    pub fn quoted(&mut self) -> Option<&'a [u8]> {
        let end = quoted_end(self.s, self.i)?;
        let inner = &self.s[self.i + 1..end - 1];
        self.i = end;
        Some(inner)
    }
    #[inline]
    pub fn rest(&self) -> &'a [u8] {
        self.s.get(self.i..).unwrap_or_default()
    }
}

/// Offset just past the closing quote of the quoted string starting at `s[start]`.
pub(crate) fn quoted_end(s: &[u8], start: usize) -> Option<usize> {
    if s.get(start) != Some(&b'"') {
        return None;
    }
    let mut i = start + 1;
    while i < s.len() {
        match s[i] {
            b'"' => return Some(i + 1),
            // quoted-pair = "\" (%x00-09 / %x0B-0C / %x0E-7F)
            b'\\' => match s.get(i + 1) {
                Some(b'\r') | Some(b'\n') | None => return None,
                Some(c) if *c > 0x7f => return None,
                Some(_) => i += 2,
            },
            _ => i += 1,
        }
    }
    None
}

/// Remove quoted-pair escapes; borrows when there are none.
pub fn unescape_quoted(raw: &[u8]) -> Cow<'_, [u8]> {
    if memchr::memchr(b'\\', raw).is_none() {
        return Cow::Borrowed(raw);
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'\\' && i + 1 < raw.len() {
            out.push(raw[i + 1]);
            i += 2;
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    Cow::Owned(out)
}

/// Decode `%HH` escapes (URI user parts, parameters); borrows when there are none.
pub fn unescape_percent(raw: &[u8]) -> Cow<'_, [u8]> {
    if memchr::memchr(b'%', raw).is_none() {
        return Cow::Borrowed(raw);
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' && i + 2 < raw.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(raw[i + 1]), hex(raw[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(raw[i]);
        i += 1;
    }
    Cow::Owned(out)
}

/// A parameter value as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamValue<'a> {
    raw: &'a [u8],
    quoted: bool,
}

impl<'a> ParamValue<'a> {
    pub(crate) fn new(raw: &'a [u8], quoted: bool) -> Self {
        ParamValue { raw, quoted }
    }

    /// The value bytes; for a quoted string, between the quotes with escapes kept.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }
    /// True when written as a quoted string.
    pub fn is_quoted(&self) -> bool {
        self.quoted
    }
    /// The value as text, if UTF-8 (escapes kept for quoted values).
    pub fn as_str(&self) -> Option<&'a str> {
        chars::ascii(self.raw).or_else(|| std::str::from_utf8(self.raw).ok())
    }
    /// The value with quoted-pair escapes removed.
    pub fn unescaped(&self) -> Cow<'a, [u8]> {
        if self.quoted {
            unescape_quoted(self.raw)
        } else {
            Cow::Borrowed(self.raw)
        }
    }
}

/// One `name[=value]` parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Param<'a> {
    /// Parameter name (a token; compare case-insensitively).
    pub name: &'a str,
    /// `None` for a flag parameter such as `lr` or `rport`.
    pub value: Option<ParamValue<'a>>,
}

/// A validated run of header parameters. Iterating it cannot fail: the syntax was checked
/// when the header was parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Params<'a> {
    raw: &'a [u8],
}

/// Parse one parameter at the cursor (just after the `;`). `None` when the bytes do not
/// form a parameter.
fn param_at<'a>(c: &mut Cursor<'a>) -> Option<Param<'a>> {
    c.skip_lws();
    let name = c.token();
    if name.is_empty() {
        return None;
    }
    let name = chars::ascii(name)?;
    if !c.eat_sep(b'=') {
        return Some(Param { name, value: None });
    }
    c.skip_lws();
    let value = if c.peek() == Some(b'"') {
        ParamValue::new(c.quoted()?, true)
    } else {
        let v = c.take_class(chars::GEN_VALUE);
        if v.is_empty() {
            return None;
        }
        ParamValue::new(v, false)
    };
    Some(Param {
        name,
        value: Some(value),
    })
}

impl<'a> Params<'a> {
    /// Parse `*( SEMI param )` at the cursor, stopping before the first byte that does not
    /// continue the list. Errors name `header`.
    pub(crate) fn parse(c: &mut Cursor<'a>, header: &'static str) -> Result<Params<'a>, Error> {
        Self::parse_with(c, header, |_| Ok(()))
    }

    /// Like [`parse`](Self::parse), handing each parameter to `f` as it is validated, so
    /// that typed headers pick out theirs in the same pass.
    pub(crate) fn parse_with(
        c: &mut Cursor<'a>,
        header: &'static str,
        mut f: impl FnMut(Param<'a>) -> Result<(), Error>,
    ) -> Result<Params<'a>, Error> {
        let start = c.i;
        let mut end = c.i;
        loop {
            let save = c.i;
            if !c.eat_sep(b';') {
                c.i = save;
                break;
            }
            let p = param_at(c).ok_or(Error::BadHeader(header, "malformed parameter"))?;
            f(p)?;
            end = c.i;
        }
        c.i = end;
        Ok(Params {
            raw: &c.s[start..end],
        })
    }

    /// Parameters already validated by an earlier parse of the same bytes.
    pub(crate) fn validated(raw: &'a [u8]) -> Params<'a> {
        Params { raw }
    }

    /// The parameters as written, starting at the first `;` (empty if none).
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// True when there are no parameters.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// Iterate the parameters in order.
    pub fn iter(&self) -> ParamIter<'a> {
        ParamIter {
            c: Cursor::new(self.raw),
        }
    }

    /// The first parameter named `name` (case-insensitive): `Some(None)` for a flag.
    pub fn get(&self, name: &str) -> Option<Option<ParamValue<'a>>> {
        self.iter()
            .find(|p| p.name.eq_ignore_ascii_case(name))
            .map(|p| p.value)
    }

    /// True when a parameter named `name` is present, with or without value.
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

/// Iterator over [`Params`].
#[derive(Debug, Clone)]
pub struct ParamIter<'a> {
    c: Cursor<'a>,
}

impl<'a> Iterator for ParamIter<'a> {
    type Item = Param<'a>;
    fn next(&mut self) -> Option<Param<'a>> {
        if !self.c.eat_sep(b';') {
            return None;
        }
        param_at(&mut self.c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(s: &str) -> Result<(Params<'_>, usize), Error> {
        let mut c = Cursor::new(s.as_bytes());
        let p = Params::parse(&mut c, "X")?;
        Ok((p, c.i))
    }

    #[test]
    fn generic_params() {
        let (p, end) =
            params(";tag=1 ; lr;  q = 0.5 ;x=\"a\\\"b;c\";received=[2001:db8::1]").unwrap();
        assert_eq!(end, 56);
        let v: Vec<_> = p
            .iter()
            .map(|p| (p.name, p.value.map(|v| v.raw())))
            .collect();
        assert_eq!(
            v,
            [
                ("tag", Some(&b"1"[..])),
                ("lr", None),
                ("q", Some(&b"0.5"[..])),
                ("x", Some(&b"a\\\"b;c"[..])),
                ("received", Some(&b"[2001:db8::1]"[..])),
            ]
        );
        assert_eq!(p.get("TAG").unwrap().unwrap().as_str(), Some("1"));
        assert_eq!(p.get("lr"), Some(None));
        assert_eq!(p.get("x").unwrap().unwrap().unescaped().as_ref(), b"a\"b;c");
        assert!(p.get("nope").is_none());
    }

    #[test]
    fn params_stop_at_non_param() {
        let (p, end) = params(";a=1, next").unwrap();
        assert_eq!(p.raw(), b";a=1");
        assert_eq!(end, 4);
        let (p, end) = params("").unwrap();
        assert!(p.is_empty());
        assert_eq!(end, 0);
    }

    #[test]
    fn bad_params() {
        assert!(params(";").is_err());
        assert!(params(";;").is_err());
        assert!(params(";a=").is_err());
        assert!(params(";a=\"unterminated").is_err());
        assert!(params(";=x").is_err());
    }

    #[test]
    fn quoted_strings() {
        assert_eq!(quoted_end(b"\"abc\" x", 0), Some(5));
        assert_eq!(quoted_end(b"\"a\\\"c\"", 0), Some(6));
        assert_eq!(quoted_end(b"\"abc", 0), None);
        assert_eq!(quoted_end(b"\"ab\\", 0), None);
        assert_eq!(quoted_end(b"\"a\\\0\"", 0), Some(5));
        assert_eq!(unescape_quoted(b"a\\\"b\\\\").as_ref(), b"a\"b\\");
        assert_eq!(unescape_percent(b"a%20b%zz%4").as_ref(), b"a b%zz%4");
        assert_eq!(unescape_percent(b"%00").as_ref(), b"\0");
    }
}
