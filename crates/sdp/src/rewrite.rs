//! Line-level rewriting that leaves every unedited byte in place.

use std::net::IpAddr;

use bytes::Bytes;

use crate::error::SdpError;
use crate::model::{Connection, Line, LineEnding, Sdp, Span, addrtype_of};

/// Edits requested for one media section; `None` means "leave alone".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct MediaEdit {
    connection: Option<IpAddr>,
    port: Option<u16>,
    rtcp: Option<(u16, Option<IpAddr>)>,
}

/// Collects edits against a parsed [`Sdp`] and renders the rewritten body in
/// one pass, copying every unedited span of the input verbatim.
///
/// Setters only record what is wanted; nothing is rendered until
/// [`Rewriter::finish`]. Calling the same setter twice for the same target
/// replaces the earlier request (last wins). Different setters touch
/// different lines, so they always compose.
#[derive(Debug, Clone)]
pub struct Rewriter<'s, 'a> {
    sdp: &'s Sdp<'a>,
    origin: Option<IpAddr>,
    session_connection: Option<IpAddr>,
    media: Vec<MediaEdit>,
}

/// Replace `start..end` of the input with `text`; insertions have `start == end`.
#[derive(Debug)]
struct Splice {
    start: usize,
    end: usize,
    text: String,
}

impl<'s, 'a> Rewriter<'s, 'a> {
    /// A rewriter with no edits; [`Rewriter::finish`] would return the input.
    #[must_use]
    pub fn new(sdp: &'s Sdp<'a>) -> Self {
        Self {
            sdp,
            origin: None,
            session_connection: None,
            media: vec![MediaEdit::default(); sdp.media.len()],
        }
    }

    fn media_edit(&mut self, index: usize) -> Result<&mut MediaEdit, SdpError> {
        let count = self.media.len();
        self.media
            .get_mut(index)
            .ok_or(SdpError::MediaIndexOutOfRange { index, count })
    }

    /// Rewrites the address type and unicast address of `o=`; username,
    /// session id and version are untouched (bumping the version is the
    /// offer/answer layer's decision, not this crate's).
    pub fn set_origin_address(&mut self, ip: IpAddr) -> &mut Self {
        self.origin = Some(ip);
        self
    }

    /// Rewrites every session-level `c=` line, or, when there is none,
    /// inserts one in the RFC 8866 position: after the leading run of
    /// `v=`/`o=`/`s=`/`i=`/`u=`/`e=`/`p=` lines, i.e. before the first
    /// `b=`, `t=`, `a=` or other line.
    ///
    /// A multicast `/ttl[/count]` suffix is kept only if `ip` is multicast
    /// and of the same family as the line's old address type; otherwise it is
    /// dropped, since a TTL on a unicast address is invalid SDP and IPv4 and
    /// IPv6 suffixes mean different things.
    pub fn set_session_connection(&mut self, ip: IpAddr) -> &mut Self {
        self.session_connection = Some(ip);
        self
    }

    /// Rewrites every `c=` line of media section `index` (same suffix rule as
    /// [`Rewriter::set_session_connection`]), or inserts one right after its
    /// `m=` line (and after an `i=` line directly following it) when it has none.
    ///
    /// # Errors
    /// [`SdpError::MediaIndexOutOfRange`] if there is no such section.
    pub fn set_media_connection(
        &mut self,
        index: usize,
        ip: IpAddr,
    ) -> Result<&mut Self, SdpError> {
        self.media_edit(index)?.connection = Some(ip);
        Ok(self)
    }

    /// Rewrites only the port digits of the `m=` line; a `/count` suffix,
    /// the protocol and the formats stay as they are.
    ///
    /// # Errors
    /// [`SdpError::MediaIndexOutOfRange`] if there is no such section.
    pub fn set_media_port(&mut self, index: usize, port: u16) -> Result<&mut Self, SdpError> {
        self.media_edit(index)?.port = Some(port);
        Ok(self)
    }

    /// Sets the RTCP port (and optionally address) of media section `index`.
    ///
    /// If the section has an `a=rtcp:` line its port is rewritten; with
    /// `Some(ip)` its address part is rewritten (same suffix rule as for
    /// `c=`) or `IN IP4|IP6 <ip>` is appended after the port; with `None` an
    /// existing address part is left untouched. If the section has no
    /// `a=rtcp:` line, `a=rtcp:<port>[ IN IP4|IP6 <ip>]` is inserted after
    /// its last line. `a=rtcp-mux` is never touched.
    ///
    /// # Errors
    /// [`SdpError::MediaIndexOutOfRange`] if there is no such section.
    pub fn set_rtcp(
        &mut self,
        index: usize,
        port: u16,
        ip: Option<IpAddr>,
    ) -> Result<&mut Self, SdpError> {
        self.media_edit(index)?.rtcp = Some((port, ip));
        Ok(self)
    }

    /// Whether any edit has been requested.
    #[must_use]
    pub fn has_edits(&self) -> bool {
        self.origin.is_some()
            || self.session_connection.is_some()
            || self.media.iter().any(|m| *m != MediaEdit::default())
    }

    /// Renders the rewritten body.
    #[must_use]
    pub fn finish(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out);
        out
    }

    /// Renders the rewritten body as [`Bytes`], ready for a SIP message body.
    #[must_use]
    pub fn finish_bytes(&self) -> Bytes {
        Bytes::from(self.finish())
    }

    /// Appends the rewritten body to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let splices = self.splices();
        let input = self.sdp.input;
        let extra: usize = splices.iter().map(|s| s.text.len()).sum();
        out.reserve(input.len() + extra);
        let mut cursor = 0usize;
        for splice in &splices {
            // Spans come from the parser and never overlap; the guard only
            // keeps a logic error from turning into a panic.
            if splice.start < cursor {
                continue;
            }
            out.extend_from_slice(input.get(cursor..splice.start).unwrap_or_default());
            out.extend_from_slice(splice.text.as_bytes());
            cursor = splice.end;
        }
        out.extend_from_slice(input.get(cursor..).unwrap_or_default());
    }

    fn splices(&self) -> Vec<Splice> {
        let sdp = self.sdp;
        let mut splices = Vec::new();

        if let Some(ip) = self.origin {
            let origin = &sdp.origin;
            edit_address(
                &mut splices,
                origin.addrtype,
                origin.addrtype_span,
                origin.address_span,
                ip,
            );
        }

        if let Some(ip) = self.session_connection {
            if sdp.session_connections.is_empty() {
                let anchor = end_of_leading_run(sdp.session_lines(), b"vosiuep");
                if let Some(anchor) = anchor {
                    splices.push(insert_after(anchor, sdp.line_ending, connection_line(ip)));
                }
            } else {
                for conn in &sdp.session_connections {
                    edit_connection(&mut splices, conn, ip);
                }
            }
        }

        for (index, (media, edit)) in sdp.media.iter().zip(&self.media).enumerate() {
            let lines = sdp.media_lines(index).unwrap_or_default();
            if let Some(port) = edit.port {
                splices.push(Splice {
                    start: media.port_span.start,
                    end: media.port_span.end,
                    text: port.to_string(),
                });
            }
            // Pushed before the RTCP insertion: when a section is a bare m=
            // line both insert at the same offset, and c= belongs first.
            if let Some(ip) = edit.connection {
                if media.connections.is_empty() {
                    if let Some(anchor) = end_of_leading_run(lines, b"mi") {
                        splices.push(insert_after(anchor, sdp.line_ending, connection_line(ip)));
                    }
                } else {
                    for conn in &media.connections {
                        edit_connection(&mut splices, conn, ip);
                    }
                }
            }
            if let Some((port, ip)) = edit.rtcp {
                match &media.rtcp {
                    Some(rtcp) => {
                        splices.push(Splice {
                            start: rtcp.port_span.start,
                            end: rtcp.port_span.end,
                            text: port.to_string(),
                        });
                        match (ip, &rtcp.connection) {
                            (Some(ip), Some(conn)) => edit_connection(&mut splices, conn, ip),
                            (Some(ip), None) => splices.push(Splice {
                                start: rtcp.port_span.end,
                                end: rtcp.port_span.end,
                                text: format!(" IN {} {ip}", addrtype_of(ip)),
                            }),
                            (None, _) => {}
                        }
                    }
                    None => {
                        if let Some(anchor) = lines.last() {
                            let mut text = format!("a=rtcp:{port}");
                            if let Some(ip) = ip {
                                text.push_str(&format!(" IN {} {ip}", addrtype_of(ip)));
                            }
                            splices.push(insert_after(anchor, sdp.line_ending, text));
                        }
                    }
                }
            }
        }

        // Stable, so insertions at the same offset keep the order above.
        splices.sort_by_key(|s| s.start);
        splices
    }
}

fn connection_line(ip: IpAddr) -> String {
    format!("c=IN {} {ip}", addrtype_of(ip))
}

/// The last line of the leading run of lines whose type is in `kinds`.
///
/// RFC 8866 fixes the order of line types, so a new `c=` belongs right after
/// the run of types that precede it; stopping at the first other type means
/// an oddly ordered body never gets its `c=` pushed past `b=`, `t=` or `a=`.
fn end_of_leading_run<'l, 'a>(lines: &'l [Line<'a>], kinds: &[u8]) -> Option<&'l Line<'a>> {
    lines.iter().take_while(|l| kinds.contains(&l.kind)).last()
}

/// Inserts `line` (without terminator) after `anchor`, using the anchor's
/// terminator. An unterminated anchor is the last line of the body: it gets
/// `fallback` and the new line stays unterminated, so the body still ends the
/// way it did.
fn insert_after(anchor: &Line<'_>, fallback: LineEnding, line: String) -> Splice {
    let at = anchor.end();
    let text = match anchor.ending {
        LineEnding::Unterminated => {
            let mut text = fallback.as_str().to_owned();
            text.push_str(&line);
            text
        }
        ending => {
            let mut text = line;
            text.push_str(ending.as_str());
            text
        }
    };
    Splice {
        start: at,
        end: at,
        text,
    }
}

/// Rewrites an address-type/address pair, touching the type only when the
/// family changes so that e.g. a lowercase `ip4` survives an IPv4 → IPv4 edit.
fn edit_address(
    splices: &mut Vec<Splice>,
    addrtype: &str,
    addrtype_span: Span,
    address_span: Span,
    ip: IpAddr,
) {
    let new_type = addrtype_of(ip);
    if !addrtype.eq_ignore_ascii_case(new_type) {
        splices.push(Splice {
            start: addrtype_span.start,
            end: addrtype_span.end,
            text: new_type.to_owned(),
        });
    }
    splices.push(Splice {
        start: address_span.start,
        end: address_span.end,
        text: ip.to_string(),
    });
}

fn edit_connection(splices: &mut Vec<Splice>, conn: &Connection<'_>, ip: IpAddr) {
    edit_address(
        splices,
        conn.addrtype,
        conn.addrtype_span,
        conn.address_span,
        ip,
    );
    if let Some(suffix) = conn.suffix_span {
        let keep = ip.is_multicast() && conn.addrtype.eq_ignore_ascii_case(addrtype_of(ip));
        if !keep {
            splices.push(Splice {
                start: suffix.start,
                end: suffix.end,
                text: String::new(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insertion_after_unterminated_last_line_keeps_body_unterminated() {
        let sdp =
            Sdp::parse(b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nm=audio 1 RTP/AVP 0").unwrap();
        let mut rw = sdp.rewriter();
        rw.set_media_connection(0, "10.0.0.1".parse().unwrap())
            .unwrap();
        rw.set_rtcp(0, 9, None).unwrap();
        assert_eq!(
            rw.finish(),
            b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nm=audio 1 RTP/AVP 0\r\nc=IN IP4 10.0.0.1\r\na=rtcp:9"
        );
    }

    #[test]
    fn has_edits_tracks_requests() {
        let sdp = Sdp::parse(b"v=0\no=- 1 1 IN IP4 1.2.3.4\nm=audio 1 RTP/AVP 0\n").unwrap();
        let mut rw = sdp.rewriter();
        assert!(!rw.has_edits());
        rw.set_media_port(0, 2).unwrap();
        assert!(rw.has_edits());
    }

    #[test]
    fn splices_are_sorted_and_disjoint() {
        let sdp = Sdp::parse(
            b"v=0\no=- 1 1 IN IP4 1.2.3.4\ns=-\nc=IN IP4 224.0.0.1/3\nm=audio 1/2 RTP/AVP 0\nc=IN IP4 1.1.1.1\na=rtcp:5\n",
        )
        .unwrap();
        let mut rw = sdp.rewriter();
        rw.set_origin_address("::1".parse().unwrap())
            .set_session_connection("::2".parse().unwrap());
        rw.set_media_port(0, 7).unwrap();
        rw.set_media_connection(0, "::3".parse().unwrap()).unwrap();
        rw.set_rtcp(0, 8, Some("::4".parse().unwrap())).unwrap();
        let splices = rw.splices();
        assert_eq!(splices.len(), 10);
        for pair in splices.windows(2) {
            assert!(pair[0].end <= pair[1].start, "{pair:?}");
        }
    }
}
