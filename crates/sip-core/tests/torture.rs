//! RFC 4475 (SIP torture tests) and RFC 5118 (IPv6 torture tests), every message.
//!
//! Each message gets the outcome its RFC section asks of a proxy/registrar front end:
//! valid ones parse and validate with the right typed values; invalid requests are
//! answered with the right status (and the answer itself is a valid response); invalid
//! responses are dropped. The corpus is in `tests/torture/` (see SOURCES.md there).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::net::{IpAddr, Ipv4Addr};

use bytes::Bytes;
use sip_core::{
    Contact, Datagram, DisplayName, Editor, Error, HeaderName, Host, Limits, Method, ServerKey,
    SipMessage, Transport, Uri, error_reply, parse_datagram,
};

fn raw(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/torture/{name}.dat", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn parse(name: &str) -> Result<SipMessage, Error> {
    match parse_datagram(Bytes::from(raw(name)), &Limits::default())? {
        Datagram::Message(m) => Ok(m),
        Datagram::KeepAlive => panic!("{name}: keep-alive"),
    }
}

fn valid(name: &str) -> SipMessage {
    let m = parse(name).unwrap_or_else(|e| panic!("{name}: parse failed: {e}"));
    let v = if m.is_request() {
        m.validate_request()
    } else {
        m.validate_response()
    };
    v.unwrap_or_else(|e| panic!("{name}: validation failed: {e}"));
    m
}

/// The request must be rejected with `status`, and the reply must be a well-formed
/// response that carries the request's Via.
fn rejected(name: &str, status: u16) -> Error {
    let bytes = raw(name);
    let (err, reply) = match parse(name) {
        Err(e) => {
            let r = error_reply(None, &bytes, &e);
            (e, r)
        }
        Ok(m) => {
            let e = m.validate_request().expect_err(name);
            let r = error_reply(Some(&m), m.as_bytes(), &e);
            (e, r)
        }
    };
    assert_eq!(err.status(), status, "{name}: {err}");
    let reply = reply.unwrap_or_else(|| panic!("{name}: no reply built for {err}"));
    let r = SipMessage::parse(reply.clone())
        .unwrap_or_else(|e| panic!("{name}: reply does not parse: {e}"));
    assert_eq!(r.status(), Some(status), "{name}");
    assert!(
        r.header(HeaderName::Via).is_some(),
        "{name}: reply without Via"
    );
    err
}

/// A response that a proxy must discard.
fn dropped(name: &str) -> Error {
    let bytes = raw(name);
    let err = match parse(name) {
        Err(e) => e,
        Ok(m) => m.validate_response().expect_err(name),
    };
    assert!(
        error_reply(None, &bytes, &err).is_none(),
        "{name}: responses are never answered"
    );
    err
}

fn sip_uri<'a>(u: &Uri<'a>) -> sip_core::SipUri<'a> {
    *u.as_sip().unwrap_or_else(|| panic!("not a SIP URI: {u:?}"))
}

// ---------------------------------------------------------------- RFC 4475 §3.1.1 valid

#[test]
fn wsinv_short_tortuous_invite() {
    let m = valid("wsinv");
    assert_eq!(m.method(), Some(Method::Invite));
    let to = m.to_header().unwrap();
    assert_eq!(to.uri, b"sip:vivekg@chair-dnrc.example.com");
    assert_eq!(to.tag(), Some("1918181833n"));
    let from = m.from_header().unwrap();
    assert_eq!(
        from.display_name.unwrap().unescaped().as_ref(),
        b"J Rosenberg \\\""
    );
    assert_eq!(from.tag(), Some("98asjd8"));
    assert_eq!(m.max_forwards(), Ok(Some(68)));
    assert_eq!(m.call_id(), Ok("wsinv.ndaksdj@192.0.2.1"));
    assert_eq!(m.content_length(), Some(150));
    assert_eq!(m.body().len(), 150);
    let cseq = m.cseq().unwrap();
    assert_eq!((cseq.seq, cseq.method), (9, Method::Invite));
    let vias: Vec<_> = m.via().map(Result::unwrap).collect();
    assert_eq!(vias.len(), 3);
    assert_eq!(
        (vias[0].transport, vias[0].branch),
        (Transport::Udp, Some("390skdjuw"))
    );
    assert_eq!(
        vias[0].sent_by.host,
        Host::Ipv4(Ipv4Addr::new(192, 0, 2, 2))
    );
    assert_eq!(
        (vias[1].transport, vias[1].branch),
        (Transport::Tcp, Some("z9hG4bK9ikj8"))
    );
    assert_eq!(vias[1].sent_by.host, Host::Domain("spindle.example.com"));
    assert_eq!(
        (vias[2].transport, vias[2].branch),
        (Transport::Udp, Some("z9hG4bK30239"))
    );
    assert_eq!(m.header(HeaderName::Subject), Some(&b""[..]));
    assert_eq!(
        m.headers_named("NewFangledHeader").next().unwrap().value,
        b"newfangled value\r\n continued newfangled value"
    );
    assert_eq!(
        m.headers_named("UnknownHeaderWithUnusualValue")
            .next()
            .unwrap()
            .value,
        b";;,,;;,;"
    );
    let route = m.routes().next().unwrap().unwrap();
    let ru = sip_uri(&route.parsed_uri().unwrap());
    assert!(ru.lr());
    assert_eq!(ru.params.get("unknownwith"), Some(Some("value")));
    let Contact::Addr(c) = m.contacts().next().unwrap().unwrap() else {
        panic!()
    };
    assert_eq!(
        c.addr.display_name.unwrap().unescaped().as_ref(),
        b"Quoted string \"\""
    );
    assert_eq!(c.q.unwrap().0, 330);
    assert_eq!(
        c.addr.params.get("newparam").unwrap().unwrap().as_str(),
        Some("newvalue")
    );
    assert!(c.addr.params.contains("secondparam"));
    assert!(m.content_type().unwrap().unwrap().is_sdp());
    // RFC 2543 branch on top: the fallback key is used.
    assert!(matches!(
        m.server_key().unwrap(),
        ServerKey::Rfc2543 { cseq: 9, .. }
    ));
}

#[test]
fn intmeth_wide_range_of_valid_characters() {
    let m = valid("intmeth");
    let method = m.method().unwrap();
    assert_eq!(
        method,
        Method::Other("!interesting-Method0123456789_*+`.%indeed'~")
    );
    assert_eq!(m.cseq().unwrap().method, method);
    let ru = sip_uri(&m.request_uri().unwrap());
    assert_eq!(
        ru.user,
        Some("1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*")
    );
    assert_eq!(
        ru.password,
        Some("&it+has=1,weird!*pas$wo~d_too.(doesn't-it)")
    );
    assert_eq!(m.top_via().unwrap().branch, Some("z9hG4bK-.!%66*_+`'~"));
    let to = m.to_header().unwrap();
    assert_eq!(
        to.display_name.unwrap().unescaped().as_ref(),
        b"BEL:\x07 NUL:\0 DEL:\x7f"
    );
    let from = m.from_header().unwrap();
    assert_eq!(
        from.display_name,
        Some(DisplayName::Tokens(b"token1~` token2'+_ token3*%!.-"))
    );
    assert_eq!(from.tag(), Some("_token~1'+`*%!-."));
    let fp = from.params.get("fromParam''~+*_!.-%").unwrap().unwrap();
    assert_eq!(
        fp.as_str(),
        Some("\u{440}\u{430}\u{431}\u{43e}\u{442}\u{430}\u{44e}\u{449}\u{438}\u{439}")
    );
    assert_eq!(
        m.call_id(),
        Ok("intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{")
    );
    assert_eq!(m.max_forwards(), Ok(Some(255)));
    let ext = m.headers_named("extensionHeader-!.%*+_`'~").next().unwrap();
    assert_eq!(
        std::str::from_utf8(ext.value).unwrap(),
        "\u{feff}\u{5927}\u{505c}\u{96fb}"
    );
}

#[test]
fn esc01_valid_percent_escapes() {
    let m = valid("esc01");
    let ru = sip_uri(&m.request_uri().unwrap());
    assert_eq!(
        ru.user_unescaped().unwrap().as_ref(),
        b"sips:user@example.com"
    );
    assert_eq!(ru.host, Host::Domain("example.net"));
    let to = sip_uri(&m.to_header().unwrap().parsed_uri().unwrap());
    assert_eq!(to.user_unescaped().unwrap().as_ref(), b"user");
    let from = sip_uri(&m.from_header().unwrap().parsed_uri().unwrap());
    assert_eq!(from.user_unescaped().unwrap().as_ref(), b"I have spaces");
    let Contact::Addr(c) = m.contacts().next().unwrap().unwrap() else {
        panic!()
    };
    let cu = sip_uri(&c.addr.parsed_uri().unwrap());
    assert_eq!(cu.user_unescaped().unwrap().as_ref(), b"caller");
    assert_eq!(cu.params.iter().count(), 2);
    assert_eq!(m.call_id(), Ok("esc01.239409asdfakjkn23onasd0-3234"));
}

#[test]
fn escnull_escaped_nulls() {
    let m = valid("escnull");
    let to = sip_uri(&m.to_header().unwrap().parsed_uri().unwrap());
    assert_eq!(to.user_unescaped().unwrap().as_ref(), b"null-\0-null");
    let users: Vec<Vec<u8>> = m
        .contacts()
        .map(|c| match c.unwrap() {
            Contact::Addr(a) => sip_uri(&a.addr.parsed_uri().unwrap())
                .user_unescaped()
                .unwrap()
                .into_owned(),
            Contact::Star => panic!(),
        })
        .collect();
    assert_eq!(users, [b"\0".to_vec(), b"\0\0".to_vec()]);
}

#[test]
fn esc02_percent_that_is_not_an_escape() {
    let m = valid("esc02");
    assert_eq!(m.method(), Some(Method::Other("RE%47IST%45R")));
    assert_eq!(
        m.contacts().count(),
        2,
        "C%6Fntact is an extension header, not Contact"
    );
    assert_eq!(m.headers_named("C%6Fntact").count(), 1);
    assert_eq!(m.top_via().unwrap().branch, Some("z9hG4bK209%fzsnel234"));
    assert_eq!(
        m.to_header().unwrap().display_name,
        Some(DisplayName::Quoted(b"%Z%45"))
    );
}

#[test]
fn lwsdisp_no_space_before_laquot() {
    let m = valid("lwsdisp");
    assert_eq!(
        m.from_header().unwrap().display_name,
        Some(DisplayName::Tokens(b"caller"))
    );
}

#[test]
fn longreq_long_values() {
    let m = valid("longreq");
    assert_eq!(m.via_count(), 34);
    let hosts: Vec<String> = m
        .via()
        .map(|v| v.unwrap().sent_by.host.to_string())
        .collect();
    assert_eq!(hosts.first().map(String::as_str), Some("sip33.example.com"));
    assert_eq!(hosts.last().map(String::as_str), Some("host.example.com"));
    assert!(m.via().last().unwrap().unwrap().branch.unwrap().len() > 50);
    assert!(
        m.to_header()
            .unwrap()
            .display_name
            .unwrap()
            .unescaped()
            .len()
            > 80
    );
    assert!(m.from_header().unwrap().tag().unwrap().len() > 100);
    assert!(m.call_id().unwrap().len() > 100);
    assert_eq!(m.content_length(), Some(150));
}

#[test]
fn dblreq_trailing_octets_ignored() {
    let m = valid("dblreq");
    assert_eq!(m.method(), Some(Method::Register));
    assert!(m.body().is_empty());
    assert!(
        !m.as_bytes().windows(6).any(|w| w == b"INVITE"),
        "the second request is not part of the message"
    );
    assert!(raw("dblreq").len() > m.as_bytes().len());
}

#[test]
fn semiuri_semicolon_in_user_part() {
    let m = valid("semiuri");
    let ru = sip_uri(&m.request_uri().unwrap());
    assert_eq!(ru.user, Some("user;par=u%40example.net"));
    assert_eq!(ru.host, Host::Domain("example.com"));
    assert!(ru.params.is_empty());
    assert_eq!(m.header_values(HeaderName::Accept).count(), 6);
}

#[test]
fn transports_varied_and_unknown() {
    let m = valid("transports");
    let t: Vec<_> = m.via().map(|v| v.unwrap().transport).collect();
    assert_eq!(
        t,
        [
            Transport::Udp,
            Transport::Sctp,
            Transport::Tls,
            Transport::Other("UNKNOWN"),
            Transport::Tcp
        ]
    );
}

#[test]
fn mpart01_multipart_binary_body() {
    let m = valid("mpart01");
    assert_eq!(m.method(), Some(Method::Message));
    assert_eq!(m.body().len(), 553);
    let ct = m.content_type().unwrap().unwrap();
    assert_eq!((ct.mtype, ct.subtype), ("multipart", "mixed"));
    assert_eq!(
        ct.params.get("boundary").unwrap().unwrap().as_str(),
        Some("7a9cbec02ceef655")
    );
    assert_eq!(m.user_agent(), Some(&b"SIPimp.org/0.2.5 (curses)"[..]));
    assert_eq!(m.top_via().unwrap().rport, Some(None));
}

#[test]
fn unreason_utf8_reason_phrase() {
    let m = valid("unreason");
    assert_eq!(m.status(), Some(200));
    let reason = std::str::from_utf8(m.reason().unwrap()).unwrap();
    assert!(reason.starts_with("= 2**3 * 5**2 \u{43d}\u{43e}"));
}

#[test]
fn noreason_empty_reason_phrase() {
    let m = valid("noreason");
    assert_eq!(m.status(), Some(100));
    assert_eq!(m.reason(), Some(&b""[..]));
}

// -------------------------------------------------------------- RFC 4475 §3.1.2 invalid

#[test]
fn badinv01_extraneous_separators() {
    assert_eq!(
        rejected("badinv01", 400),
        Error::BadHeader("Via", "malformed parameter")
    );
}

#[test]
fn clerr_content_length_larger_than_message() {
    assert_eq!(rejected("clerr", 400), Error::BodyTruncated);
}

#[test]
fn ncl_negative_content_length() {
    assert_eq!(rejected("ncl", 400), Error::InvalidContentLength);
}

#[test]
fn scalar02_overlarge_request_scalars() {
    assert_eq!(
        rejected("scalar02", 400),
        Error::BadHeader("CSeq", "sequence number out of range")
    );
    let m = parse("scalar02").unwrap();
    assert!(m.max_forwards().is_err(), "Max-Forwards 300");
    assert!(m.expires().is_err(), "Expires 10^100");
    assert!(
        m.contacts().next().unwrap().is_err(),
        "expires=280297596632815"
    );
}

#[test]
fn scalarlg_overlarge_response_scalars() {
    assert_eq!(
        dropped("scalarlg"),
        Error::BadHeader("CSeq", "sequence number out of range")
    );
    assert!(parse("scalarlg").unwrap().retry_after().is_err());
}

#[test]
fn quotbal_unterminated_quoted_string() {
    assert_eq!(
        rejected("quotbal", 400),
        Error::BadHeader("To", "unterminated quoted string")
    );
}

#[test]
fn ltgtruri_angle_brackets_around_request_uri() {
    assert_eq!(
        rejected("ltgtruri", 400),
        Error::BadRequestUri("missing or bad scheme")
    );
}

#[test]
fn lwsruri_lws_in_request_uri() {
    assert!(matches!(rejected("lwsruri", 400), Error::BadRequestLine(_)));
}

#[test]
fn lwsstart_multiple_spaces_in_request_line() {
    assert_eq!(
        rejected("lwsstart", 400),
        Error::BadRequestLine("extra white space")
    );
}

#[test]
fn trws_trailing_space_after_version() {
    assert!(matches!(rejected("trws", 400), Error::BadRequestLine(_)));
}

#[test]
fn escruri_escaped_headers_in_request_uri() {
    assert_eq!(
        rejected("escruri", 400),
        Error::BadRequestUri("headers are not allowed")
    );
}

#[test]
fn baddate_non_gmt_date_is_ignored_by_a_proxy() {
    // §3.1.2.12 allows ignoring Date; a proxy never reads it.
    let m = valid("baddate");
    assert_eq!(
        m.header(HeaderName::Date),
        Some(&b"Fri, 01 Jan 2010 16:00:00 EST"[..])
    );
}

#[test]
fn regbadct_contact_with_headers_not_in_angle_brackets() {
    assert_eq!(
        rejected("regbadct", 400),
        Error::BadHeader("Contact", "URI with ? or , must be enclosed in <>")
    );
}

#[test]
fn badaspec_spaces_inside_angle_brackets() {
    assert_eq!(
        rejected("badaspec", 400),
        Error::BadHeader("To", "white space or < inside <>")
    );
}

#[test]
fn baddn_unquoted_display_name_with_comma() {
    assert!(matches!(
        rejected("baddn", 400),
        Error::BadHeader("From", _)
    ));
}

#[test]
fn badvers_unknown_sip_version() {
    assert_eq!(rejected("badvers", 505), Error::UnsupportedVersion);
}

#[test]
fn mismatch01_cseq_method_mismatch() {
    assert_eq!(rejected("mismatch01", 400), Error::CSeqMethodMismatch);
}

#[test]
fn mismatch02_unknown_method_with_cseq_mismatch() {
    assert_eq!(rejected("mismatch02", 400), Error::CSeqMethodMismatch);
}

#[test]
fn bigcode_overlarge_status_code() {
    assert_eq!(
        dropped("bigcode"),
        Error::BadStatusLine("status code is not 3 digits")
    );
}

// ------------------------------------------------------ RFC 4475 §3.2 transaction layer

#[test]
fn badbranch_bare_magic_cookie() {
    let m = valid("badbranch");
    assert!(!m.top_via().unwrap().is_rfc3261_branch());
    assert!(matches!(m.server_key().unwrap(), ServerKey::Rfc2543 { .. }));
}

// ------------------------------------------------------ RFC 4475 §3.3 application layer

#[test]
fn insuf_missing_required_headers() {
    assert_eq!(rejected("insuf", 400), Error::MissingHeader("From"));
    let m = parse("insuf").unwrap();
    let reply = SipMessage::parse(
        error_reply(Some(&m), m.as_bytes(), &Error::MissingHeader("From")).unwrap(),
    )
    .unwrap();
    assert_eq!(reply.reason(), Some(&b"Missing From header"[..]));
    assert_eq!(reply.header(HeaderName::CSeq), Some(&b"193942 INVITE"[..]));
}

#[test]
fn unksm2_unknown_schemes_in_headers() {
    // Valid for a proxy; the registrar answers 416 for the isbn: To (edge issue).
    let m = valid("unksm2");
    assert_eq!(
        m.to_header().unwrap().parsed_uri().unwrap(),
        Uri::Other {
            scheme: "isbn",
            opaque: "2983792873"
        }
    );
    assert_eq!(
        m.from_header().unwrap().parsed_uri().unwrap().scheme(),
        "http"
    );
    let Contact::Addr(c) = m.contacts().next().unwrap().unwrap() else {
        panic!()
    };
    assert_eq!(c.addr.parsed_uri().unwrap().scheme(), "name");
}

#[test]
fn unkscm_unknown_request_uri_scheme() {
    assert_eq!(rejected("unkscm", 416), Error::UnsupportedUriScheme);
}

#[test]
fn novelsc_atypical_request_uri_scheme() {
    assert_eq!(rejected("novelsc", 416), Error::UnsupportedUriScheme);
}

#[test]
fn cparam01_contact_header_parameter() {
    let m = valid("cparam01");
    let Contact::Addr(c) = m.contacts().next().unwrap().unwrap() else {
        panic!()
    };
    assert!(!c.addr.angle);
    assert!(
        c.addr.params.contains("unknownparam"),
        "addr-spec form: the parameter belongs to the header"
    );
    assert!(sip_uri(&c.addr.parsed_uri().unwrap()).params.is_empty());
}

#[test]
fn cparam02_contact_uri_parameter() {
    let m = valid("cparam02");
    let Contact::Addr(c) = m.contacts().next().unwrap().unwrap() else {
        panic!()
    };
    assert!(c.addr.params.is_empty());
    assert!(
        sip_uri(&c.addr.parsed_uri().unwrap())
            .params
            .contains("unknownparam")
    );
}

#[test]
fn regescrt_escaped_headers_in_contact_name_addr() {
    let m = valid("regescrt");
    let Contact::Addr(c) = m.contacts().next().unwrap().unwrap() else {
        panic!()
    };
    let u = sip_uri(&c.addr.parsed_uri().unwrap());
    assert_eq!(
        u.header_pairs().collect::<Vec<_>>(),
        [("Route", "%3Csip:sip.example.com%3E")]
    );
}

#[test]
fn sdp01_unacceptable_accept_is_valid_syntax() {
    let m = valid("sdp01");
    assert_eq!(
        m.header_values(HeaderName::Accept).collect::<Vec<_>>(),
        [&b"text/nobodyKnowsThis"[..]]
    );
}

#[test]
fn inv2543_rfc2543_syntax() {
    let m = valid("inv2543");
    assert_eq!(m.max_forwards(), Ok(None));
    assert_eq!(m.content_length(), None);
    assert!(
        m.body().starts_with(b"v=0"),
        "UDP without Content-Length: body is the rest of the datagram"
    );
    assert_eq!(m.top_via().unwrap().branch, None);
    assert!(matches!(
        m.server_key().unwrap(),
        ServerKey::Rfc2543 {
            cseq: 56,
            from_tag: None,
            ..
        }
    ));
    let rr = m.record_routes().next().unwrap().unwrap();
    assert_eq!(
        sip_uri(&rr.parsed_uri().unwrap()).maddr(),
        Some("ss1.example.com")
    );
}

#[test]
fn zeromf_max_forwards_zero() {
    let m = valid("zeromf");
    assert_eq!(m.max_forwards(), Ok(Some(0)));
    let e = Editor::new(&m).decrement_max_forwards().unwrap_err();
    assert_eq!(e, Error::TooManyHops);
    assert_eq!(e.status(), 483);
}

#[test]
fn regaut01_unknown_authorization_scheme() {
    let m = valid("regaut01");
    let a = m.authorizations().next().unwrap().unwrap();
    assert_eq!(a.scheme, "NoOneKnowsThisScheme");
    assert!(!a.is_digest());
    assert_eq!(a.param("opaque-data").unwrap().as_str(), Some("here"));
}

#[test]
fn multi01_multiple_single_value_headers() {
    assert!(matches!(
        rejected("multi01", 400),
        Error::DuplicateHeader(_)
    ));
}

#[test]
fn mcl01_multiple_content_length() {
    assert_eq!(rejected("mcl01", 400), Error::ConflictingContentLength);
}

#[test]
fn bcast_broadcast_via_in_response() {
    let m = valid("bcast");
    let second = m.via().nth(1).unwrap().unwrap();
    assert_eq!(second.sent_by.host, Host::Ipv4(Ipv4Addr::BROADCAST));
}

#[test]
fn bext01_unknown_require_and_proxy_require() {
    let m = valid("bext01");
    assert_eq!(
        m.require().collect::<Result<Vec<_>, _>>().unwrap(),
        ["nothingSupportsThis", "nothingSupportsThisEither"]
    );
    assert_eq!(
        m.proxy_require().collect::<Result<Vec<_>, _>>().unwrap(),
        ["noProxiesSupportThis", "norDoAnyProxiesSupportThis"]
    );
    assert_eq!(m.top_via().unwrap().transport, Transport::Tls);
}

#[test]
fn invut_unknown_content_type() {
    let m = valid("invut");
    let ct = m.content_type().unwrap().unwrap();
    assert_eq!((ct.mtype, ct.subtype), ("application", "unknownformat"));
    assert_eq!(m.body().len(), 40);
}

// ------------------------------------------------------------------------ RFC 5118

fn v6(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn ipv6_good() {
    let m = valid("ipv6-good");
    assert_eq!(
        sip_uri(&m.request_uri().unwrap()).host.ip(),
        Some(v6("2001:db8::10"))
    );
    assert_eq!(
        m.top_via().unwrap().sent_by.host.ip(),
        Some(v6("2001:db8::9:1"))
    );
    let Contact::Addr(c) = m.contacts().next().unwrap().unwrap() else {
        panic!()
    };
    assert_eq!(
        sip_uri(&c.addr.parsed_uri().unwrap()).host.ip(),
        Some(v6("2001:db8::1"))
    );
}

#[test]
fn ipv6_port_ambiguous() {
    let m = valid("port-ambiguous");
    let u = sip_uri(&m.request_uri().unwrap());
    assert_eq!((u.host.ip(), u.port), (Some(v6("2001:db8::10:5070")), None));
}

#[test]
fn ipv6_port_unambiguous() {
    let m = valid("port-unambiguous");
    let u = sip_uri(&m.request_uri().unwrap());
    assert_eq!(
        (u.host.ip(), u.port),
        (Some(v6("2001:db8::10")), Some(5070))
    );
}

#[test]
fn ipv6_without_brackets_is_rejected() {
    assert!(matches!(rejected("ipv6-bad", 400), Error::BadRequestUri(_)));
}

#[test]
fn ipv6_received_with_and_without_brackets() {
    for name in [
        "via-received-param-with-delim",
        "via-received-param-no-delim",
    ] {
        let m = valid(name);
        let via = m.top_via().unwrap();
        assert_eq!(via.received_ip(), Some(v6("2001:db8::9:255")), "{name}");
    }
}

#[test]
fn ipv6_mixed_vias() {
    let m = valid("mult-ip-in-header");
    let v: Vec<_> = m.via().map(Result::unwrap).collect();
    assert_eq!(
        (v[0].sent_by.host.ip(), v[0].sent_by.port),
        (Some(v6("2001:db8::9:1")), Some(6050))
    );
    assert_eq!(v[1].sent_by.host.ip(), Some(v6("192.0.2.1")));
    assert_eq!(v[2].sent_by.host.ip(), Some(v6("2001:db8::9:255")));
    assert_eq!(v[2].received_ip(), Some(v6("192.0.2.200")));
}

#[test]
fn ipv4_mapped_ipv6() {
    let m = valid("ipv4-mapped-ipv6");
    let v: Vec<_> = m.via().map(Result::unwrap).collect();
    assert_eq!(
        (v[0].sent_by.host.ip(), v[0].sent_by.port),
        (Some(v6("::ffff:192.0.2.10")), Some(19823))
    );
    assert_eq!(m.body().len(), 245);
}

#[test]
fn ipv6_three_colon_bug_is_rejected() {
    // RFC 5954 corrected the RFC 3261 ABNF that allowed `::` followed by `:`.
    assert_eq!(
        rejected("ipv6-bug-abnf-3-colons", 400),
        Error::BadRequestUri("bad IPv6 reference")
    );
}

#[test]
fn ipv6_two_colon_form() {
    let m = valid("ipv6-correct-abnf-2-colons");
    let u = sip_uri(&m.request_uri().unwrap());
    assert_eq!(u.host.ip(), Some(v6("2001:db8::c000:201")));
}

#[test]
fn ipv6_in_sdp_bodies() {
    for (name, len) in [("ipv6-in-sdp", 251), ("mult-ip-in-sdp", 189)] {
        let m = valid(name);
        assert_eq!(m.body().len(), len, "{name}");
        assert!(m.content_type().unwrap().unwrap().is_sdp());
    }
}

/// Every file in the corpus is covered by a test above.
#[test]
fn corpus_is_complete() {
    let dir = format!("{}/tests/torture", env!("CARGO_MANIFEST_DIR"));
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| n.strip_suffix(".dat").map(str::to_owned))
        .collect();
    names.sort();
    assert_eq!(names.len(), 61);
    let me = include_str!("torture.rs");
    for n in names {
        assert!(me.contains(&format!("\"{n}\"")), "{n} has no test");
    }
}
