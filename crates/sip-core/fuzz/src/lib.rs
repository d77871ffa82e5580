//! What every fuzz target runs on a parsed message: every typed accessor, validation,
//! the builders and the editor, plus invariants that must hold for any input.
//!
//! A violated invariant panics, which libFuzzer reports as a crash.

use bytes::Bytes;
use sip_core::{
    Contact, Editor, Error, HeaderName, ReplyContext, ResponseBuilder, SipMessage, error_reply,
};

/// Run every accessor on `m` and check the invariants.
pub fn exercise(m: &SipMessage) {
    let _ = m.start_line();
    let _ = m.raw_start_line();
    for h in m.headers() {
        let _ = HeaderName::from_bytes(h.raw_name);
    }
    for v in m.via().flatten() {
        let _ = (
            v.received_ip(),
            v.is_rfc3261_branch(),
            v.sent_by.to_string(),
        );
    }
    let _ = m.top_via();
    let _ = m.via_count();
    for a in [m.from_header(), m.to_header()].into_iter().flatten() {
        let _ = (
            a.tag(),
            a.parsed_uri(),
            a.display_name.map(|d| d.to_string_lossy()),
        );
    }
    let _ = (
        m.call_id(),
        m.cseq(),
        m.max_forwards(),
        m.expires(),
        m.min_expires(),
        m.retry_after(),
    );
    let _ = (
        m.content_type(),
        m.timestamp(),
        m.user_agent(),
        m.server(),
        m.request_uri(),
    );
    for c in m.contacts().flatten() {
        if let Contact::Addr(a) = c {
            let _ = a.addr.parsed_uri().map(|u| {
                u.as_sip()
                    .map(|s| (s.user_unescaped(), s.transport(), s.lr()))
            });
        }
    }
    for r in m
        .routes()
        .chain(m.record_routes())
        .chain(m.paths())
        .chain(m.service_routes())
        .flatten()
    {
        let _ = r.parsed_uri();
    }
    for a in m
        .authorizations()
        .chain(m.proxy_authorizations())
        .chain(m.www_authenticates())
        .chain(m.proxy_authenticates())
        .flatten()
    {
        let _ = (
            a.username(),
            a.realm(),
            a.nonce(),
            a.uri(),
            a.response(),
            a.algorithm(),
            a.qop(),
            a.stale(),
        );
        let _ = a.params().count();
    }
    let _ = m
        .require()
        .chain(m.proxy_require())
        .chain(m.supported())
        .chain(m.unsupported())
        .chain(m.allow())
        .count();
    let _ = (
        m.server_key(),
        m.client_key(),
        m.dialog_id(),
        m.cancelled_invite_key(),
    );

    index_covers_head(m);

    // Editing nothing reproduces the message byte for byte.
    assert_eq!(
        Editor::new(m).finish().as_ref(),
        m.as_bytes(),
        "no-op edit changed the message"
    );

    if m.is_request() {
        let valid = m.validate_request();
        if let Err(e) = &valid {
            reply_parses(error_reply(Some(m), m.as_bytes(), e));
        } else {
            forward_stays_valid(m);
            if let Some(b) = ResponseBuilder::new(m, 486) {
                let r = SipMessage::parse(b.to_tag("fz").build()).expect("built response parses");
                r.validate_response()
                    .expect("a response to a valid request is valid");
            }
        }
    } else {
        let _ = m.validate_response();
    }

    let body = m.body();
    if !body.is_empty() {
        sdp(body);
    }
}

/// The header index covers the head exactly: header lines are contiguous from the end of
/// the start line, in order, with no gap or overlap.
fn index_covers_head(m: &SipMessage) {
    let base = m.as_bytes().as_ptr() as usize;
    let mut expect = None;
    for h in m.headers() {
        let start = h.raw.as_ptr() as usize - base;
        if let Some(e) = expect {
            assert_eq!(start, e, "gap or overlap in the header index");
        }
        expect = Some(start + h.raw.len());
        assert!(h.raw.starts_with(h.raw_name));
    }
    if let Some(e) = expect {
        assert!(e <= m.body_offset());
    }
}

/// A proxy's forwarding edits on a valid request yield a valid request.
fn forward_stays_valid(m: &SipMessage) {
    let mut ed = Editor::new(m);
    ed.prepend_via(&b"SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKfuzz"[..]);
    match ed.decrement_max_forwards() {
        Ok(_) => {}
        Err(Error::TooManyHops) => return,
        Err(e) => panic!("valid request, Max-Forwards edit failed: {e}"),
    }
    if m.routes().next().is_some() {
        ed.remove_top_route()
            .expect("a valid request's Route can be removed");
    }
    ed.add_record_route(&b"<sip:192.0.2.1;lr>"[..]);
    if m.body().len() % 2 == 1 {
        // Vary the framing too: a new body moves everything after the head.
        ed.set_body(&b"v=0\r\n"[..]);
    }
    // The copy comes parsed from the editor (its carried-over index is checked against a
    // full parse in debug builds, which fuzzing uses); the bytes are `finish`'s.
    let re = ed
        .finish_message()
        .unwrap_or_else(|e| panic!("forwarded request does not parse: {e}"));
    assert_eq!(re.as_bytes(), &ed.finish()[..]);
    let full = SipMessage::parse(re.bytes().clone()).expect("the edited copy parses");
    assert!(
        re.headers().eq(full.headers()),
        "carried-over index differs from a full parse"
    );
    assert_eq!(re.start_line(), full.start_line());
    assert_eq!(re.body(), full.body());
    re.validate_request()
        .unwrap_or_else(|e| panic!("forwarded request is invalid: {e}"));
    if m.body().len() % 2 == 0 {
        assert_eq!(re.body(), m.body());
    }
    assert_eq!(re.via_count(), m.via_count() + 1);
}

/// An error reply, when one is built, is a well-framed SIP response.
pub fn reply_parses(reply: Option<Bytes>) {
    if let Some(r) = reply {
        let p = SipMessage::parse(r.clone())
            .unwrap_or_else(|e| panic!("error reply does not parse ({e}): {r:?}"));
        assert!(p.is_response());
    }
}

/// For bytes that did not parse: try the salvage path.
pub fn unparsed(data: &[u8], err: &Error) {
    let _ = err.status();
    let _ = err.reason_phrase();
    let _ = ReplyContext::salvage(data, 65_536).map(|c| c.stateless_tag());
    reply_parses(error_reply(None, data, err));
}

/// SDP: parse, then rewrite; a no-op rewrite is the identity and an edited body parses.
pub fn sdp(body: &[u8]) {
    let Ok(s) = sdp::Sdp::parse(body) else {
        return;
    };
    for i in 0..s.media().len() {
        let _ = (
            s.effective_address(i),
            s.effective_direction(i),
            s.media_attributes(i).map(|a| a.count()),
        );
    }
    assert_eq!(
        s.rewriter().finish(),
        body,
        "no-op SDP rewrite changed the body"
    );
    let mut rw = s.rewriter();
    rw.set_origin_address("2001:db8::7".parse().expect("literal"));
    rw.set_session_connection("192.0.2.7".parse().expect("literal"));
    for i in 0..s.media().len() {
        let _ = rw.set_media_port(i, 40_000);
        let _ = rw.set_rtcp(i, 40_001, None);
    }
    let out = rw.finish();
    sdp::Sdp::parse(&out).unwrap_or_else(|e| panic!("rewritten SDP does not parse: {e}"));
}
