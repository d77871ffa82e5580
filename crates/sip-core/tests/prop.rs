//! Property tests over generated valid messages.
//!
//! * The header index accounts for every byte: start line + header lines + empty line +
//!   body re-assembled from the index is the input, byte for byte.
//! * Typed accessors return the generated values, whatever the spelling (compact forms,
//!   case, white space around the colon, folded lines, several values per line).
//! * Forwarding edits change only what they edit: every other header line comes out
//!   byte-identical and in order, and the result parses and validates.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use proptest::prelude::*;
use sip_core::{Editor, HeaderName, Method, SipMessage};

#[derive(Debug, Clone)]
struct Gen {
    bytes: Vec<u8>,
    request: bool,
    method: String,
    uri: String,
    call_id: String,
    cseq: u32,
    branches: Vec<String>,
    via_hosts: Vec<String>,
    from_tag: String,
    to_tag: Option<String>,
    max_forwards: Option<u8>,
    routes: Vec<String>,
    record_routes: Vec<String>,
    contacts: Vec<String>,
    ext: Vec<(String, String)>,
    body: Vec<u8>,
}

fn token() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9][a-zA-Z0-9.!%*_+`'~-]{0,12}"
}

fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9-]{0,8}(\\.[a-z][a-z0-9]{0,8}){0,3}",
        any::<[u8; 4]>().prop_map(|o| std::net::Ipv4Addr::from(o).to_string()),
        any::<[u16; 8]>().prop_map(|s| format!("[{}]", std::net::Ipv6Addr::from(s))),
    ]
}

fn sip_uri() -> impl Strategy<Value = String> {
    (
        proptest::option::of("[a-z0-9]{1,8}"),
        host(),
        proptest::option::of(1u16..),
        proptest::collection::vec(
            prop_oneof![
                Just(";lr".to_string()),
                Just(";transport=tcp".to_string()),
                "(;[a-z]{1,5}=[a-z0-9]{1,5})"
            ],
            0..3,
        ),
    )
        .prop_map(|(user, host, port, params)| {
            let mut s = String::from("sip:");
            if let Some(u) = user {
                s.push_str(&u);
                s.push('@');
            }
            s.push_str(&host);
            if let Some(p) = port {
                s.push_str(&format!(":{p}"));
            }
            s.extend(params);
            s
        })
}

/// Spelling of a header name: canonical, lower, upper, or compact when it has one.
fn name(canonical: &'static str, compact: Option<&'static str>, style: u8) -> String {
    match (style % 4, compact) {
        (1, _) => canonical.to_ascii_lowercase(),
        (2, _) => canonical.to_ascii_uppercase(),
        (3, Some(c)) => c.to_string(),
        _ => canonical.to_string(),
    }
}

/// `: ` with random white space, including a fold right after the colon.
fn colon(ws: u8) -> &'static str {
    match ws % 5 {
        0 => ": ",
        1 => ":",
        2 => " :  ",
        3 => "\t: ",
        _ => ":\r\n ",
    }
}

fn display() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[A-Za-z]{1,8}( [A-Za-z]{1,8}){0,2} ",
        "[a-zA-Z ,<>;é€\"\\\\]{0,10}".prop_map(|s| {
            let esc: String = s
                .chars()
                .flat_map(|c| {
                    if c == '"' || c == '\\' {
                        vec!['\\', c]
                    } else {
                        vec![c]
                    }
                })
                .collect();
            format!("\"{esc}\" ")
        }),
    ]
}

prop_compose! {
    fn message()(
        request in any::<bool>(),
        method in prop_oneof![Just("INVITE".to_string()), Just("REGISTER".to_string()), Just("OPTIONS".to_string()), "[A-Z]{3,10}"],
        code in 100u16..700,
        reason in "[a-zA-Z é]{0,20}",
        uri in sip_uri(),
        call_id in "[a-zA-Z0-9.!%*_+`'~()<>:\\\\\"/\\[\\]?{}-]{1,20}(@[a-z0-9.]{1,12})?",
        cseq in any::<u32>(),
        vias in proptest::collection::vec((prop_oneof![Just("UDP"), Just("TCP"), Just("TLS"), Just("WS")], host(), proptest::option::of(1u16..), token(), any::<bool>()), 1..5),
        via_split in any::<u8>(),
        from in (display(), sip_uri(), token()),
        to in (display(), sip_uri(), proptest::option::of(token())),
        max_forwards in proptest::option::of(any::<u8>()),
        routes in proptest::collection::vec(sip_uri(), 0..4),
        record_routes in proptest::collection::vec(sip_uri(), 0..3),
        contacts in proptest::collection::vec((display(), sip_uri(), proptest::option::of(0u32..100_000)), 0..3),
        ext in proptest::collection::vec(("X-[A-Za-z0-9-]{1,10}", "[ -~]{0,30}", any::<bool>()), 0..4),
        styles in proptest::collection::vec(any::<u8>(), 16),
        body in proptest::collection::vec(any::<u8>(), 0..200),
        with_cl in any::<bool>(),
        shuffle in any::<u64>(),
    ) -> Gen {
        let s = |i: usize| styles[i];
        let mut lines: Vec<String> = Vec::new();
        // Via: split the hops over one or two lines; several per line comma-separated.
        let via_elems: Vec<String> = vias.iter().map(|(t, h, p, b, rport)| {
            let port = p.map(|p| format!(":{p}")).unwrap_or_default();
            format!("SIP/2.0/{t} {h}{port};branch=z9hG4bK{b}{}", if *rport { ";rport" } else { "" })
        }).collect();
        let cut = usize::from(via_split) % via_elems.len() + 1;
        lines.push(format!("{}{}{}", name("Via", Some("v"), s(0)), colon(s(1)), via_elems[..cut].join(", ")));
        if cut < via_elems.len() {
            lines.push(format!("{}{}{}", name("Via", Some("v"), s(2)), colon(s(1)), via_elems[cut..].join(" ,\r\n ")));
        }
        let from_line = format!("{}{}{}<{}>;tag={}", name("From", Some("f"), s(3)), colon(s(4)), from.0, from.1, from.2);
        let to_tag = to.2.clone();
        let to_line = format!("{}{}{}<{}>{}", name("To", Some("t"), s(5)), colon(s(6)), to.0, to.1, to_tag.as_ref().map(|t| format!(" ; tag = {t}")).unwrap_or_default());
        let m = if request { method.clone() } else { "INVITE".to_string() };
        let mut rest = vec![
            from_line,
            to_line,
            format!("{}{}{call_id}", name("Call-ID", Some("i"), s(7)), colon(s(8))),
            format!("{}{}{cseq}{}{m}", name("CSeq", None, s(9)), colon(s(10)), if s(11) % 2 == 0 { " " } else { "\r\n  " }),
        ];
        if let Some(mf) = max_forwards {
            rest.push(format!("{}{}{mf}", name("Max-Forwards", None, s(12)), colon(s(1))));
        }
        if !routes.is_empty() {
            rest.push(format!("Route: {}", routes.iter().map(|r| format!("<{r}>")).collect::<Vec<_>>().join(", ")));
        }
        for rr in &record_routes {
            rest.push(format!("{}{}<{rr}>", name("Record-Route", None, s(13)), colon(s(14))));
        }
        if !contacts.is_empty() {
            let c: Vec<String> = contacts.iter().map(|(d, u, e)| format!("{d}<{u}>{}", e.map(|e| format!(";expires={e}")).unwrap_or_default())).collect();
            rest.push(format!("{}{}{}", name("Contact", Some("m"), s(15)), colon(s(4)), c.join(",\r\n\t")));
        }
        let ext: Vec<(String, String, bool)> = ext.into_iter().enumerate().map(|(i, (n, v, f))| (format!("{n}-{i}"), v, f)).collect();
        for (n, v, fold) in &ext {
            let v = v.trim();
            let v = if *fold && !v.is_empty() { format!("{v}\r\n continued") } else { v.to_string() };
            rest.push(format!("{n}: {v}"));
        }
        // Header order is free: rotate the non-Via lines.
        let k = (shuffle as usize) % rest.len();
        rest.rotate_left(k);
        lines.extend(rest);
        if with_cl || request {
            lines.push(format!("Content-Length: {}", body.len()));
        }
        let start = if request { format!("{method} {uri} SIP/2.0") } else { format!("SIP/2.0 {code} {reason}") };
        let mut bytes = start.into_bytes();
        bytes.extend_from_slice(b"\r\n");
        for l in &lines {
            bytes.extend_from_slice(l.as_bytes());
            bytes.extend_from_slice(b"\r\n");
        }
        bytes.extend_from_slice(b"\r\n");
        bytes.extend_from_slice(&body);
        Gen {
            bytes,
            request,
            method: m,
            uri,
            call_id,
            cseq,
            branches: vias.iter().map(|v| format!("z9hG4bK{}", v.3)).collect(),
            via_hosts: vias.iter().map(|v| v.1.clone()).collect(),
            from_tag: from.2,
            to_tag,
            max_forwards,
            routes,
            record_routes,
            contacts: contacts.into_iter().map(|c| c.1).collect(),
            ext: ext.into_iter().map(|(n, v, _)| (n, v)).collect(),
            body,
        }
    }
}

fn reassemble(m: &SipMessage) -> Vec<u8> {
    let bytes = m.as_bytes();
    let start_end = m.headers().next().map_or(m.body_offset(), |h| {
        h.raw.as_ptr() as usize - bytes.as_ptr() as usize
    });
    let mut out = bytes[..start_end].to_vec();
    for h in m.headers() {
        out.extend_from_slice(h.raw);
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(m.body());
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn parse_is_lossless_and_typed_values_match(g in message()) {
        let m = SipMessage::parse(g.bytes.clone()).expect("generated message parses");
        prop_assert_eq!(m.as_bytes(), &g.bytes[..]);
        prop_assert_eq!(reassemble(&m), g.bytes.clone());
        if g.request {
            m.validate_request().expect("generated request validates");
            prop_assert_eq!(m.method().map(|x| x.as_str().to_string()), Some(g.method.clone()));
            prop_assert_eq!(m.request_uri_raw(), Some(g.uri.as_bytes()));
        } else {
            m.validate_response().expect("generated response validates");
        }
        prop_assert_eq!(m.call_id().unwrap(), g.call_id.as_str());
        let cseq = m.cseq().unwrap();
        prop_assert_eq!(cseq.seq, g.cseq);
        prop_assert_eq!(cseq.method.as_str(), g.method.as_str());
        let vias: Vec<_> = m.via().map(Result::unwrap).collect();
        prop_assert_eq!(vias.iter().map(|v| v.branch.unwrap().to_string()).collect::<Vec<_>>(), g.branches.clone());
        prop_assert_eq!(vias.iter().map(|v| v.sent_by.host.to_string()).collect::<Vec<_>>(), g.via_hosts.clone());
        prop_assert_eq!(m.from_tag().unwrap(), Some(g.from_tag.as_str()));
        prop_assert_eq!(m.to_tag().unwrap(), g.to_tag.as_deref());
        prop_assert_eq!(m.max_forwards().unwrap(), g.max_forwards);
        prop_assert_eq!(m.routes().map(|r| r.unwrap().uri.to_vec()).collect::<Vec<_>>(), g.routes.iter().map(|r| r.as_bytes().to_vec()).collect::<Vec<_>>());
        prop_assert_eq!(m.record_routes().count(), g.record_routes.len());
        let contacts: Vec<Vec<u8>> = m.contacts().map(|c| match c.unwrap() {
            sip_core::Contact::Addr(a) => a.addr.uri.to_vec(),
            sip_core::Contact::Star => b"*".to_vec(),
        }).collect();
        prop_assert_eq!(contacts, g.contacts.iter().map(|c| c.as_bytes().to_vec()).collect::<Vec<_>>());
        for (n, v) in &g.ext {
            let h = m.headers_named(n).next().expect("extension header present");
            prop_assert!(h.value.starts_with(v.trim().as_bytes()));
        }
        prop_assert_eq!(m.body(), &g.body[..]);
        if g.request {
            // The typed key is the magic-cookie one for every generated request.
            let k = m.server_key().unwrap();
            let rfc3261 = matches!(k, sip_core::ServerKey::Rfc3261 { .. });
            prop_assert!(rfc3261, "expected an RFC 3261 key: {:?}", k);
        }
    }

    #[test]
    fn edits_touch_only_what_they_edit(
        g in message().prop_filter("requests", |g| g.request),
        ops in proptest::collection::vec(0u8..6, 1..6),
        new_body in proptest::collection::vec(any::<u8>(), 0..100),
    ) {
        let m = SipMessage::parse(g.bytes.clone()).unwrap();
        let mut ed = Editor::new(&m);
        let mut expect_vias = g.branches.len();
        let mut removed_routes = 0;
        let mut mf = g.max_forwards;
        let mut mf_edited = false;
        let mut rr_added = 0;
        let mut uri_set = false;
        let mut body_set = false;
        let mut inserted = 0usize;
        for op in &ops {
            match op {
                0 => { ed.prepend_via(&b"SIP/2.0/UDP 192.0.2.99:5060;branch=z9hG4bKprop"[..]); expect_vias += 1; inserted += 1; }
                1 => if removed_routes < g.routes.len() { ed.remove_top_route().unwrap(); removed_routes += 1; },
                2 => if !mf_edited && mf != Some(0) {
                    let new = ed.decrement_max_forwards().unwrap();
                    if mf.is_none() { inserted += 1; }
                    prop_assert_eq!(new, mf.map_or(70, |x| x - 1));
                    mf = Some(new);
                    mf_edited = true;
                },
                3 => { ed.add_record_route(&b"<sip:192.0.2.99;lr>"[..]); rr_added += 1; inserted += 1; }
                4 => { ed.set_request_uri(&b"sip:new@192.0.2.50:5070"[..]).unwrap(); uri_set = true; }
                _ => { ed.set_body(&new_body[..]); body_set = true; }
            }
        }
        let out = ed.finish();
        let e = SipMessage::parse(out.clone()).expect("edited message parses");
        e.validate_request().expect("edited message validates");
        prop_assert_eq!(e.via_count(), expect_vias);
        prop_assert_eq!(e.routes().count(), g.routes.len() - removed_routes);
        prop_assert_eq!(e.max_forwards().unwrap(), mf);
        prop_assert_eq!(e.record_routes().count(), g.record_routes.len() + rr_added);
        if rr_added > 0 {
            prop_assert_eq!(e.record_routes().next().unwrap().unwrap().uri, &b"sip:192.0.2.99;lr"[..]);
        }
        prop_assert_eq!(e.request_uri_raw().unwrap(), if uri_set { &b"sip:new@192.0.2.50:5070"[..] } else { g.uri.as_bytes() });
        prop_assert_eq!(e.body(), if body_set { &new_body[..] } else { &g.body[..] });
        prop_assert_eq!(e.content_length(), Some(e.body().len() as u32));

        // Every header line the edits did not touch is present, byte-identical, in order.
        let touched = |h: &sip_core::Header<'_>| match h.name {
            HeaderName::Route => removed_routes > 0,
            HeaderName::MaxForwards => mf_edited,
            HeaderName::ContentLength => body_set,
            _ => false,
        };
        let kept: Vec<&[u8]> = m.headers().filter(|h| !touched(h)).map(|h| h.raw).collect();
        let out_lines: Vec<&[u8]> = e.headers().map(|h| h.raw).collect();
        let mut it = out_lines.iter();
        for k in &kept {
            prop_assert!(it.any(|o| o == k), "line {:?} lost or changed", String::from_utf8_lossy(k));
        }
        let route_lines_removed = if removed_routes > 0 { m.headers_of(HeaderName::Route).count() - e.headers_of(HeaderName::Route).count() } else { 0 };
        prop_assert_eq!(e.header_count(), m.header_count() + inserted - route_lines_removed);
        prop_assert_eq!(e.method(), Some(Method::parse(g.method.as_bytes()).unwrap()));
    }
}
