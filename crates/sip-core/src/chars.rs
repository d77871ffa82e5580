//! Byte classes of the RFC 3261 §25 grammar, as one lookup table.
//!
//! One table lookup per byte keeps the scanners branch-light; each class is a bit so a
//! scanner can test several classes with one load.

/// `token` (RFC 3261 §25.1): alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~".
pub(crate) const TOKEN: u16 = 1 << 0;
/// `word` adds `( ) < > : \ " / [ ] ? { }` to token.
pub(crate) const WORD: u16 = 1 << 1;
/// `unreserved` = alphanum / mark.
pub(crate) const UNRESERVED: u16 = 1 << 2;
/// `user-unreserved` = "&" / "=" / "+" / "$" / "," / ";" / "?" / "/".
pub(crate) const USER_UNRESERVED: u16 = 1 << 3;
/// Password extras: "&" / "=" / "+" / "$" / ",".
pub(crate) const PASSWORD_EXTRA: u16 = 1 << 4;
/// `param-unreserved` = "[" / "]" / "/" / ":" / "&" / "+" / "$".
pub(crate) const PARAM_UNRESERVED: u16 = 1 << 5;
/// `hnv-unreserved` = "[" / "]" / "/" / "?" / ":" / "+" / "$".
pub(crate) const HNV_UNRESERVED: u16 = 1 << 6;
/// Host name characters (alphanum, "-", "."), plus "_" which real deployments use.
pub(crate) const HOSTNAME: u16 = 1 << 7;
/// Unquoted generic parameter value (`gen-value = token / host`): token plus `:` `[` `]`.
pub(crate) const GEN_VALUE: u16 = 1 << 8;

const fn build() -> [u16; 256] {
    let mut t = [0u16; 256];
    let mut c = 0usize;
    while c < 256 {
        let b = c as u8;
        let alnum = b.is_ascii_alphanumeric();
        let mut v = 0u16;
        if alnum {
            v |= TOKEN | WORD | UNRESERVED | HOSTNAME;
        }
        match b {
            b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~' => {
                v |= TOKEN | WORD
            }
            _ => {}
        }
        match b {
            b'(' | b')' | b'<' | b'>' | b':' | b'\\' | b'"' | b'/' | b'[' | b']' | b'?' | b'{'
            | b'}' => v |= WORD,
            _ => {}
        }
        // mark = "-" / "_" / "." / "!" / "~" / "*" / "'" / "(" / ")"
        match b {
            b'-' | b'_' | b'.' | b'!' | b'~' | b'*' | b'\'' | b'(' | b')' => v |= UNRESERVED,
            _ => {}
        }
        match b {
            b'&' | b'=' | b'+' | b'$' | b',' | b';' | b'?' | b'/' => v |= USER_UNRESERVED,
            _ => {}
        }
        match b {
            b'&' | b'=' | b'+' | b'$' | b',' => v |= PASSWORD_EXTRA,
            _ => {}
        }
        match b {
            b'[' | b']' | b'/' | b':' | b'&' | b'+' | b'$' => v |= PARAM_UNRESERVED,
            _ => {}
        }
        match b {
            b'[' | b']' | b'/' | b'?' | b':' | b'+' | b'$' => v |= HNV_UNRESERVED,
            _ => {}
        }
        match b {
            b'-' | b'.' | b'_' => v |= HOSTNAME,
            _ => {}
        }
        if v & TOKEN != 0 || b == b':' || b == b'[' || b == b']' {
            v |= GEN_VALUE;
        }
        t[c] = v;
        c += 1;
    }
    t
}

static TABLE: [u16; 256] = build();

#[inline(always)]
pub(crate) fn is(b: u8, class: u16) -> bool {
    TABLE[b as usize] & class != 0
}

#[inline(always)]
pub(crate) fn is_token(b: u8) -> bool {
    is(b, TOKEN)
}

/// SP or HTAB.
#[inline(always)]
pub(crate) fn is_wsp(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Linear white space inside an already delimited header value. Folds (CRLF followed by
/// WSP) stay in the value's byte range; treating CR and LF as white space there is what
/// makes folded values parse without copying them.
#[inline(always)]
pub(crate) fn is_lws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// Index of the first byte at or after `i` that is not LWS.
#[inline]
pub(crate) fn skip_lws(s: &[u8], i: usize) -> usize {
    match s.get(i..) {
        // Most separators have no white space around them: answer without a loop.
        Some([b, ..]) if !is_lws(*b) => i,
        Some(rest) => i + rest.iter().position(|&b| !is_lws(b)).unwrap_or(rest.len()),
        None => i,
    }
}

/// `s` without leading and trailing LWS.
#[inline]
pub(crate) fn trim_lws(s: &[u8]) -> &[u8] {
    let mut a = 0;
    let mut b = s.len();
    while a < b && is_lws(s[a]) {
        a += 1;
    }
    while b > a && is_lws(s[b - 1]) {
        b -= 1;
    }
    &s[a..b]
}

/// End of the run of bytes in `class` starting at `i`.
#[inline]
pub(crate) fn scan(s: &[u8], i: usize, class: u16) -> usize {
    match s.get(i..) {
        Some(rest) => {
            i + rest
                .iter()
                .position(|&b| !is(b, class))
                .unwrap_or(rest.len())
        }
        None => i,
    }
}

/// True when every byte of `s` is printable ASCII other than space (0x21–0x7E). An OR
/// reduction without early exit, so that it vectorises.
#[inline]
pub(crate) fn is_visible_ascii(s: &[u8]) -> bool {
    s.iter()
        .fold(0u8, |acc, &b| acc | u8::from(b.wrapping_sub(0x21) >= 0x5e))
        == 0
}

/// True when `s` contains LWS, `<` or `"` (not allowed inside `<...>`); vectorises like
/// [`is_visible_ascii`].
#[inline]
pub(crate) fn has_lws_or_bracket(s: &[u8]) -> bool {
    s.iter().fold(0u8, |acc, &b| {
        acc | u8::from(matches!(b, b' ' | b'\t' | b'\r' | b'\n' | b'<' | b'"'))
    }) != 0
}

/// True when `s` is a non-empty token.
#[inline]
pub(crate) fn is_token_str(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_token(b))
}

/// `%HH` escapes must carry two hex digits; every other byte must be in `class`.
pub(crate) fn is_escaped_class(s: &[u8], class: u16) -> bool {
    let mut i = 0;
    while i < s.len() {
        let b = s[i];
        if b == b'%' {
            if i + 2 >= s.len() {
                return false;
            }
            if !(s[i + 1].is_ascii_hexdigit() && s[i + 2].is_ascii_hexdigit()) {
                return false;
            }
            i += 3;
        } else if is(b, class) {
            i += 1;
        } else {
            return false;
        }
    }
    true
}

/// `1*DIGIT` as a `u32`: digits only, leading zeros allowed, `None` when empty, when
/// anything else appears, or when the value does not fit 32 bits (Content-Length, CSeq,
/// delta-seconds, ports and Max-Forwards all go through here).
#[inline]
pub(crate) fn decimal_u32(v: &[u8]) -> Option<u32> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let significant = &v[v.iter().take_while(|&&b| b == b'0').count()..];
    if significant.len() > 10 {
        return None;
    }
    u32::try_from(
        significant
            .iter()
            .fold(0u64, |a, d| a * 10 + u64::from(d - b'0')),
    )
    .ok()
}

/// ASCII bytes as `&str`; `None` for anything else.
///
/// Typed accessors hand out token-like fields (branches, tags, hosts, parameter names) as
/// `&str` after validating them byte by byte; `str::from_utf8` on each such 5–40 byte
/// field cost a third of transaction-key access in the benchmark.
#[inline]
#[allow(unsafe_code)]
pub(crate) fn ascii(s: &[u8]) -> Option<&str> {
    if s.is_ascii() {
        // SAFETY: every byte is below 0x80, and ASCII is valid UTF-8.
        Some(unsafe { std::str::from_utf8_unchecked(s) })
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_class() {
        for b in b"abcXYZ019-.!%*_+`'~" {
            assert!(is_token(*b), "{}", *b as char);
        }
        for b in b" \t\r\n\"(),/:;<=>?@[\\]{}\0" {
            assert!(!is_token(*b), "{}", *b as char);
        }
    }

    #[test]
    fn escapes() {
        assert!(is_escaped_class(b"a%20b", UNRESERVED));
        assert!(!is_escaped_class(b"a%2", UNRESERVED));
        assert!(!is_escaped_class(b"a%", UNRESERVED));
        assert!(!is_escaped_class(b"a%zz", UNRESERVED));
        assert!(!is_escaped_class(b"a b", UNRESERVED));
    }

    #[test]
    fn decimals() {
        assert_eq!(decimal_u32(b"0"), Some(0));
        assert_eq!(decimal_u32(b"000000000000004294967295"), Some(u32::MAX));
        assert_eq!(decimal_u32(b"4294967296"), None);
        assert_eq!(decimal_u32(b"99999999999999999999999"), None);
        assert_eq!(decimal_u32(b""), None);
        assert_eq!(decimal_u32(b"-1"), None);
        assert_eq!(decimal_u32(b"1 "), None);
    }

    #[test]
    fn ascii_only() {
        assert_eq!(ascii(b"z9hG4bK-1"), Some("z9hG4bK-1"));
        assert_eq!(ascii(b""), Some(""));
        assert_eq!(ascii("\u{e9}".as_bytes()), None);
        assert_eq!(ascii(b"a\xff"), None);
    }

    #[test]
    fn trimming() {
        assert_eq!(trim_lws(b" \r\n a b \t"), b"a b");
        assert_eq!(trim_lws(b"   "), b"");
    }
}
