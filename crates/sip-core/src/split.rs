//! Splitting a header value into its comma-separated elements (RFC 3261 §7.3.1).
//!
//! Commas inside quoted strings and inside `<...>` do not separate. The scan is a single
//! forward pass with two flags, so hostile nesting (`<<<<...`) or an unterminated quote
//! costs linear time; the typed parser of the element reports the defect.

use crate::chars::trim_lws;

/// Iterator over the trimmed elements of a header value.
#[derive(Debug, Clone)]
pub struct Elements<'a> {
    rest: Option<&'a [u8]>,
    list: bool,
}

impl<'a> Elements<'a> {
    /// Elements of `value`; when `list` is false the whole value is the only element.
    pub fn new(value: &'a [u8], list: bool) -> Self {
        let v = trim_lws(value);
        // An empty list header (`Supported:`) has no elements, while an empty single-valued
        // header still yields one (empty) element for its parser to reject.
        let rest = if v.is_empty() && list { None } else { Some(v) };
        Elements { rest, list }
    }
}

/// Offset of the first comma of `s` that is outside quotes and angle brackets.
///
/// Jumps between the three interesting bytes with `memchr3`, so a value without commas is
/// one SIMD scan.
pub(crate) fn top_level_comma(s: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(p) = memchr::memchr3(b',', b'"', b'<', s.get(i..)?) {
        let at = i + p;
        match s[at] {
            b',' => return Some(at),
            // Skip the quoted string; an unterminated one swallows the rest.
            b'"' => i = crate::params::quoted_end(s, at)?,
            _ => {
                // Inside <...> commas belong to the URI; an unclosed < swallows the rest.
                i = at + 1 + memchr::memchr(b'>', &s[at + 1..])? + 1;
            }
        }
    }
    None
}

impl<'a> Iterator for Elements<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let s = self.rest?;
        if !self.list {
            self.rest = None;
            return Some(s);
        }
        match top_level_comma(s) {
            Some(i) => {
                self.rest = Some(&s[i + 1..]);
                Some(trim_lws(&s[..i]))
            }
            None => {
                self.rest = None;
                Some(trim_lws(s))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(s: &str) -> Vec<String> {
        Elements::new(s.as_bytes(), true)
            .map(|e| String::from_utf8_lossy(e).into_owned())
            .collect()
    }

    #[test]
    fn commas() {
        assert_eq!(split("a, b ,c"), ["a", "b", "c"]);
        assert_eq!(
            split("\"x, y\" <sip:a,b>;p=1, <sip:c>"),
            ["\"x, y\" <sip:a,b>;p=1", "<sip:c>"]
        );
        assert_eq!(split("\"a\\\",b\" <x>, y"), ["\"a\\\",b\" <x>", "y"]);
        assert_eq!(split(""), Vec::<String>::new());
        assert_eq!(split("  "), Vec::<String>::new());
        assert_eq!(split("a,,b"), ["a", "", "b"]);
        assert_eq!(split("a,"), ["a", ""]);
        assert_eq!(split("\"unterminated, x"), ["\"unterminated, x"]);
        assert_eq!(split("a,\r\n b"), ["a", "b"]);
        let single: Vec<&[u8]> = Elements::new(b"a, b", false).collect();
        assert_eq!(single, [b"a, b"]);
        let empty: Vec<&[u8]> = Elements::new(b"", false).collect();
        assert_eq!(empty, [b""]);
    }

    #[test]
    fn hostile_nesting_is_linear() {
        let mut s = vec![b'<'; 200_000];
        s.extend_from_slice(b", x");
        assert_eq!(Elements::new(&s, true).count(), 1);
    }
}
