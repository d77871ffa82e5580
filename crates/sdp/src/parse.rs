//! Line splitting and the per-line grammars the relay relies on.

use crate::error::SdpError;
use crate::model::{
    Connection, Direction, Line, LineEnding, MAX_LINES, MAX_MEDIA, Media, Origin, Rtcp, Sdp, Span,
    parse_address, split_attribute_at,
};

pub(crate) fn parse(input: &[u8]) -> Result<Sdp<'_>, SdpError> {
    let lines = split_lines(input)?;
    let first = lines.first().ok_or(SdpError::MissingVersion)?;
    if first.kind != b'v' {
        return Err(SdpError::MissingVersion);
    }
    if first.value != b"0" {
        return Err(SdpError::UnsupportedVersion { line: first.number });
    }

    let mut origin = None;
    let mut session_name = None;
    let mut session_connections = Vec::new();
    let mut session_direction = None;
    let mut media: Vec<Media<'_>> = Vec::new();
    let mut session_end = lines.len();

    for (idx, line) in lines.iter().enumerate() {
        match line.kind {
            b'm' => {
                if media.len() >= MAX_MEDIA {
                    return Err(SdpError::TooManyMedia { limit: MAX_MEDIA });
                }
                match media.last_mut() {
                    Some(previous) => previous.lines.end = idx,
                    None => session_end = idx,
                }
                media.push(parse_media(line, idx)?);
            }
            // Later o=/s= lines, and any inside media sections, are not part
            // of the grammar; they are kept as opaque lines instead of failing
            // a call over them.
            b'o' if media.is_empty() && origin.is_none() => {
                origin = Some(parse_origin(line, idx)?);
            }
            b's' if media.is_empty() && session_name.is_none() => {
                session_name = Some(line.value);
            }
            b'c' => {
                let text = text_of(line)?;
                let conn = parse_connection(text, line.value_start(), idx)
                    .ok_or(SdpError::MalformedConnection { line: line.number })?;
                match media.last_mut() {
                    Some(m) => m.connections.push(conn),
                    None => session_connections.push(conn),
                }
            }
            b'a' => {
                let attr = split_attribute_at(line, idx)?;
                let direction = Direction::from_name(attr.name);
                match media.last_mut() {
                    Some(m) => {
                        if attr.name == "rtcp" {
                            if m.rtcp.is_none() {
                                m.rtcp = Some(parse_rtcp(line, idx)?);
                            }
                        } else if attr.name == "rtcp-mux" {
                            m.rtcp_mux = true;
                        } else if direction.is_some() && m.direction.is_none() {
                            m.direction = direction;
                        }
                    }
                    None => {
                        if session_direction.is_none() {
                            session_direction = direction;
                        }
                    }
                }
            }
            _ => {}
        }
    }
    if let Some(last) = media.last_mut() {
        last.lines.end = lines.len();
    }

    let line_ending = lines
        .iter()
        .map(|l| l.ending)
        .find(|e| *e != LineEnding::Unterminated)
        .unwrap_or(LineEnding::CrLf);

    Ok(Sdp {
        input,
        origin: origin.ok_or(SdpError::MissingOrigin)?,
        lines,
        session_end,
        session_name,
        session_connections,
        session_direction,
        media,
        line_ending,
    })
}

/// Splits into non-empty lines. Each `memchr` call scans only its own line
/// and the line cap stops the loop early, so cost is linear in the bytes
/// actually consumed.
fn split_lines(input: &[u8]) -> Result<Vec<Line<'_>>, SdpError> {
    let mut lines = Vec::new();
    let mut pos = 0usize;
    let mut number = 0usize;
    while let Some(rest) = input.get(pos..).filter(|r| !r.is_empty()) {
        number += 1;
        if number > MAX_LINES {
            return Err(SdpError::TooManyLines { limit: MAX_LINES });
        }
        let (content_len, consumed, ending) = match memchr::memchr(b'\n', rest) {
            Some(nl) if nl > 0 && rest.get(nl - 1) == Some(&b'\r') => {
                (nl - 1, nl + 1, LineEnding::CrLf)
            }
            Some(nl) => (nl, nl + 1, LineEnding::Lf),
            None => (rest.len(), rest.len(), LineEnding::Unterminated),
        };
        match rest.get(..content_len).unwrap_or_default() {
            [] => {}
            [kind, b'=', value @ ..] if kind.is_ascii_alphabetic() => lines.push(Line {
                kind: *kind,
                value,
                start: pos,
                ending,
                number,
            }),
            _ => return Err(SdpError::MalformedLine { line: number }),
        }
        pos += consumed;
    }
    Ok(lines)
}

fn text_of<'a>(line: &Line<'a>) -> Result<&'a str, SdpError> {
    std::str::from_utf8(line.value).map_err(|_| SdpError::NonUtf8 { line: line.number })
}

fn is_separator(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Splits on runs of SP/HTAB. RFC 8866 mandates single spaces, but
/// tolerating runs costs nothing and the spans keep the original bytes intact.
fn tokens(text: &str, base: usize) -> impl Iterator<Item = (&str, Span)> {
    let bytes = text.as_bytes();
    let mut i = 0usize;
    std::iter::from_fn(move || {
        while bytes.get(i).is_some_and(|b| is_separator(*b)) {
            i += 1;
        }
        let start = i;
        while bytes.get(i).is_some_and(|b| !is_separator(*b)) {
            i += 1;
        }
        if start == i {
            return None;
        }
        // Separators are ASCII, so both ends are char boundaries.
        let token = text.get(start..i)?;
        Some((
            token,
            Span {
                start: base + start,
                end: base + i,
            },
        ))
    })
}

/// `u16::from_str` accepts a leading `+`, which is not SDP; digits only.
fn parse_port(text: &str) -> Option<u16> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Shared by `c=` and `a=rtcp`, whose address parts have the same grammar.
/// `None` means malformed; the caller knows which error that is.
fn connection_from_tokens<'a>(
    nettype: (&'a str, Span),
    addrtype: (&'a str, Span),
    address: (&'a str, Span),
    line: usize,
) -> Option<Connection<'a>> {
    let (text, span) = address;
    let (base, suffix, base_span, suffix_span) = match text.find('/') {
        Some(slash) => {
            let suffix = text.get(slash + 1..)?;
            let parts_ok = suffix.split('/').count() <= 2
                && suffix
                    .split('/')
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
            if !parts_ok {
                return None;
            }
            (
                text.get(..slash)?,
                Some(suffix),
                Span {
                    start: span.start,
                    end: span.start + slash,
                },
                Some(Span {
                    start: span.start + slash,
                    end: span.end,
                }),
            )
        }
        None => (text, None, span, None),
    };
    if base.is_empty() {
        return None;
    }
    Some(Connection {
        line,
        nettype: nettype.0,
        addrtype: addrtype.0,
        address_text: base,
        suffix,
        address: parse_address(addrtype.0, base),
        addrtype_span: addrtype.1,
        address_span: base_span,
        suffix_span,
    })
}

fn parse_connection(text: &str, base: usize, line: usize) -> Option<Connection<'_>> {
    let mut it = tokens(text, base);
    match (it.next(), it.next(), it.next(), it.next()) {
        (Some(n), Some(t), Some(a), None) => connection_from_tokens(n, t, a, line),
        _ => None,
    }
}

fn parse_origin<'a>(line: &Line<'a>, idx: usize) -> Result<Origin<'a>, SdpError> {
    let text = text_of(line)?;
    let malformed = SdpError::MalformedOrigin { line: line.number };
    let fields: Vec<(&str, Span)> = tokens(text, line.value_start()).collect();
    // Some user agents put spaces in the username; the last five fields are
    // unambiguous, so everything before them is taken as the username.
    let split = fields
        .len()
        .checked_sub(5)
        .filter(|n| *n >= 1)
        .ok_or(malformed.clone())?;
    let (user_fields, rest) = fields.split_at(split);
    let (Some(first), Some(last)) = (user_fields.first(), user_fields.last()) else {
        return Err(malformed);
    };
    let username = text
        .get(first.1.start - line.value_start()..last.1.end - line.value_start())
        .ok_or(malformed.clone())?;
    let [id, version, nettype, addrtype, address] = rest else {
        return Err(malformed);
    };
    Ok(Origin {
        line: idx,
        username,
        session_id: id.0,
        session_version: version.0,
        nettype: nettype.0,
        addrtype: addrtype.0,
        address_text: address.0,
        addrtype_span: addrtype.1,
        address_span: address.1,
    })
}

fn parse_media<'a>(line: &Line<'a>, idx: usize) -> Result<Media<'a>, SdpError> {
    let text = text_of(line)?;
    let malformed = SdpError::MalformedMedia { line: line.number };
    let bad_port = SdpError::BadPort { line: line.number };
    let base = line.value_start();
    let mut it = tokens(text, base);
    let (Some((media_type, _)), Some((port_text, port_span)), Some((proto, _))) =
        (it.next(), it.next(), it.next())
    else {
        return Err(malformed);
    };
    let (port_digits, count) = match port_text.split_once('/') {
        Some((p, c)) => (p, Some(parse_port(c).ok_or(bad_port.clone())?)),
        None => (port_text, None),
    };
    let port = parse_port(port_digits).ok_or(bad_port)?;
    // RFC 8866 requires at least one format, but rejected streams from some
    // user agents omit it; an empty list is harmless to a relay.
    let formats = match it.next() {
        Some((_, first)) => {
            let end = it.last().map_or(first.end, |(_, s)| s.end);
            text.get(first.start - base..end - base).unwrap_or_default()
        }
        None => "",
    };
    Ok(Media {
        lines: idx..idx + 1,
        media_type,
        port,
        port_span: Span {
            start: port_span.start,
            end: port_span.start + port_digits.len(),
        },
        port_count: count,
        proto,
        formats,
        connections: Vec::new(),
        rtcp: None,
        rtcp_mux: false,
        direction: None,
    })
}

fn parse_rtcp<'a>(line: &Line<'a>, idx: usize) -> Result<Rtcp<'a>, SdpError> {
    let malformed = SdpError::MalformedRtcp { line: line.number };
    let text = text_of(line)?;
    let prefix = "rtcp:";
    let value = text.strip_prefix(prefix).ok_or(malformed.clone())?;
    let mut it = tokens(value, line.value_start() + prefix.len());
    let (port_text, port_span) = it.next().ok_or(malformed.clone())?;
    let port = parse_port(port_text).ok_or(SdpError::BadPort { line: line.number })?;
    let connection = match (it.next(), it.next(), it.next(), it.next()) {
        (None, ..) => None,
        (Some(n), Some(t), Some(a), None) => {
            Some(connection_from_tokens(n, t, a, idx).ok_or(malformed)?)
        }
        _ => return Err(malformed),
    };
    Ok(Rtcp {
        line: idx,
        port,
        port_span,
        connection,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_keep_absolute_spans_across_runs_of_blanks() {
        let got: Vec<_> = tokens(" a  bc\td ", 10).collect();
        assert_eq!(
            got,
            vec![
                ("a", Span { start: 11, end: 12 }),
                ("bc", Span { start: 14, end: 16 }),
                ("d", Span { start: 17, end: 18 }),
            ]
        );
        assert_eq!(tokens("", 0).count(), 0);
        assert_eq!(tokens("   ", 0).count(), 0);
    }

    #[test]
    fn port_accepts_only_plain_decimal_u16() {
        assert_eq!(parse_port("0"), Some(0));
        assert_eq!(parse_port("65535"), Some(65535));
        assert_eq!(parse_port("0049170"), Some(49170));
        assert_eq!(parse_port("65536"), None);
        assert_eq!(parse_port("+5"), None);
        assert_eq!(parse_port("-1"), None);
        assert_eq!(parse_port(""), None);
        assert_eq!(parse_port("99999999999999999999999"), None);
    }

    #[test]
    fn split_lines_records_each_terminator() {
        let lines = split_lines(b"v=0\r\no=x\n\r\n\ns=y").unwrap();
        let summary: Vec<_> = lines
            .iter()
            .map(|l| (l.kind, l.value, l.start, l.ending, l.number))
            .collect();
        assert_eq!(
            summary,
            vec![
                (b'v', &b"0"[..], 0, LineEnding::CrLf, 1),
                (b'o', &b"x"[..], 5, LineEnding::Lf, 2),
                (b's', &b"y"[..], 12, LineEnding::Unterminated, 5),
            ]
        );
    }

    #[test]
    fn connection_suffix_grammar() {
        let c = parse_connection("IN IP4 224.2.1.1/127/3", 0, 0).unwrap();
        assert_eq!(c.address_text, "224.2.1.1");
        assert_eq!(c.suffix, Some("127/3"));
        assert_eq!(c.address_span, Span { start: 7, end: 16 });
        assert_eq!(c.suffix_span, Some(Span { start: 16, end: 22 }));
        assert!(parse_connection("IN IP4 224.2.1.1/", 0, 0).is_none());
        assert!(parse_connection("IN IP4 224.2.1.1/1/2/3", 0, 0).is_none());
        assert!(parse_connection("IN IP4 224.2.1.1/x", 0, 0).is_none());
        assert!(parse_connection("IN IP4 /127", 0, 0).is_none());
        assert!(parse_connection("IN IP4", 0, 0).is_none());
        assert!(parse_connection("IN IP4 1.2.3.4 x", 0, 0).is_none());
    }
}
