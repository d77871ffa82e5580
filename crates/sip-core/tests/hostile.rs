//! Hostile input: every case ends in a typed error (or a correct parse), never a panic,
//! and in linear time.
//!
//! No test here measures time. The linear-time cases are sized (and repeated) so that a
//! quadratic implementation would need 10^11 or more byte visits, i.e. minutes to hours,
//! while a linear one needs milliseconds: a regression shows up as a CI timeout rather
//! than as a flaky threshold. One header field is at most 64 KiB (`Limits::max_line_len`
//! is capped there), which bounds the damage per field; the repetitions are what make a
//! per-field quadratic path visible.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use bytes::{Bytes, BytesMut};
use sip_core::{
    Datagram, Error, Frame, HeaderName, Limits, SipMessage, StreamDecoder, error_reply,
    parse_datagram,
};

const HEAD: &str = "INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\nFrom: <sip:a@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\nCall-ID: c@h\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n";

fn dgram(bytes: Vec<u8>, limits: &Limits) -> Result<SipMessage, Error> {
    match parse_datagram(Bytes::from(bytes), limits)? {
        Datagram::Message(m) => Ok(m),
        Datagram::KeepAlive => Err(Error::Empty),
    }
}

fn with(extra: &str, body: &[u8]) -> Vec<u8> {
    let mut v = HEAD.as_bytes().to_vec();
    v.extend_from_slice(extra.as_bytes());
    v.extend_from_slice(b"\r\n");
    v.extend_from_slice(body);
    v
}

/// The error, and the reply an edge would send (which must itself parse).
fn err_and_reply(bytes: Vec<u8>, limits: &Limits) -> (Error, Option<SipMessage>) {
    let (e, reply) = match dgram(bytes.clone(), limits) {
        Ok(m) => {
            let e = m.validate_request().expect_err("expected a defect");
            let r = error_reply(Some(&m), m.as_bytes(), &e);
            (e, r)
        }
        Err(e) => {
            let r = error_reply(None, &bytes, &e);
            (e, r)
        }
    };
    (
        e,
        reply.map(|r| SipMessage::parse(r).expect("reply parses")),
    )
}

#[test]
fn content_length_larger_than_body() {
    let (e, r) = err_and_reply(
        with("Content-Length: 100\r\n", b"short"),
        &Limits::default(),
    );
    assert_eq!(e, Error::BodyTruncated);
    let r = r.expect("a 400 is sent");
    assert_eq!(r.status(), Some(400));
    assert_eq!(r.reason(), Some(&b"Content-Length larger than body"[..]));

    // On a stream the decoder waits for the body, up to the size cap.
    let mut d = StreamDecoder::new(Limits::default());
    let mut buf = BytesMut::from(&with("Content-Length: 100\r\n", b"short")[..]);
    assert!(d.decode(&mut buf).unwrap().is_none());
    let mut d = StreamDecoder::new(Limits::default());
    let mut buf = BytesMut::from(&with("Content-Length: 4000000000\r\n", b"short")[..]);
    assert_eq!(
        d.decode(&mut buf).unwrap_err(),
        Error::MessageTooLarge { limit: 65_535 }
    );
}

#[test]
fn content_length_negative_huge_or_garbage() {
    for cl in [
        "-1",
        "-999",
        "18446744073709551616",
        "18446744073709551615",
        "4294967296",
        "1e3",
        "0x10",
        "",
        "+5",
        "5 5",
    ] {
        let (e, r) = err_and_reply(
            with(&format!("Content-Length: {cl}\r\n"), b""),
            &Limits::default(),
        );
        assert_eq!(e, Error::InvalidContentLength, "Content-Length: {cl}");
        assert_eq!(r.unwrap().status(), Some(400));
    }
}

#[test]
fn conflicting_content_lengths() {
    for extra in [
        "Content-Length: 5\r\nContent-Length: 6\r\n",
        "l: 5\r\nContent-Length: 0\r\n",
        "Content-Length: 0\r\nl: 00001\r\n",
    ] {
        let (e, r) = err_and_reply(with(extra, b"hello"), &Limits::default());
        assert_eq!(e, Error::ConflictingContentLength, "{extra:?}");
        assert_eq!(r.unwrap().status(), Some(400));
        let mut d = StreamDecoder::new(Limits::default());
        let mut buf = BytesMut::from(&with(extra, b"hello")[..]);
        assert_eq!(
            d.decode(&mut buf).unwrap_err(),
            Error::ConflictingContentLength
        );
    }
    // Equal duplicates frame unambiguously but are still a defect of a single-valued header.
    let (e, _) = err_and_reply(
        with("Content-Length: 5\r\nl: 5\r\n", b"hello"),
        &Limits::default(),
    );
    assert_eq!(e, Error::DuplicateHeader("Content-Length"));
}

#[test]
fn nul_bytes() {
    let (e, r) = err_and_reply(
        with("X-Evil: a\0b\r\nContent-Length: 0\r\n", b""),
        &Limits::default(),
    );
    assert_eq!(e, Error::NulByte);
    assert_eq!(
        r.unwrap().reason(),
        Some(&b"NUL byte in header section"[..])
    );
    assert!(
        dgram(
            b"INVITE sip:a\0b SIP/2.0\r\n\r\n".to_vec(),
            &Limits::default()
        )
        .is_err()
    );
    assert_eq!(
        dgram(with("X\0: a\r\n", b""), &Limits::default()).unwrap_err(),
        Error::BadHeaderLine
    );
    // Legal as a quoted-pair, and anywhere in a body.
    let m = dgram(
        with("X-Q: \"a\\\0b\"\r\nContent-Length: 3\r\n", b"\0\0\0"),
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(m.body(), b"\0\0\0");
}

#[test]
fn hundred_thousand_headers() {
    let mut extra = String::new();
    for i in 0..100_000 {
        extra.push_str(&format!("X-H: {i}\r\n"));
    }
    extra.push_str("Content-Length: 0\r\n");
    let msg = with(&extra, b"");
    // Default limits: refused at header 257 with a 513; the bytes are over the size cap too.
    let (e, r) = err_and_reply(
        msg.clone(),
        &Limits {
            max_message_size: 10 << 20,
            ..Limits::default()
        },
    );
    assert_eq!(e, Error::TooManyHeaders { limit: 256 });
    assert_eq!(r.unwrap().status(), Some(513));
    assert_eq!(
        dgram(msg.clone(), &Limits::default()).unwrap_err(),
        Error::MessageTooLarge { limit: 65_535 }
    );
    // Raised limits: all indexed, in linear time.
    let big = Limits {
        max_message_size: 10 << 20,
        max_headers: 200_000,
        max_line_len: 8192,
    };
    let m = dgram(msg.clone(), &big).unwrap();
    assert_eq!(m.header_count(), 100_007);
    assert_eq!(m.headers_named("x-h").count(), 100_000);
    assert_eq!(m.headers_named("X-H").last().unwrap().value, b"99999");
    m.validate_request().unwrap();
    let mut d = StreamDecoder::new(big);
    let mut buf = BytesMut::from(&msg[..]);
    assert!(
        matches!(d.decode(&mut buf).unwrap(), Some(Frame::Message(m)) if m.header_count() == 100_007)
    );
}

#[test]
fn sixty_four_kib_of_distinct_header_names() {
    let mut extra = String::new();
    let mut i = 0;
    while extra.len() < 64 * 1024 {
        extra.push_str(&format!("X-Distinct-Header-Name-{i:06}: v\r\n"));
        i += 1;
    }
    let msg = with(&format!("{extra}Content-Length: 0\r\n"), b"");
    let (e, r) = err_and_reply(
        msg.clone(),
        &Limits {
            max_message_size: 1 << 20,
            ..Limits::default()
        },
    );
    assert_eq!(e, Error::TooManyHeaders { limit: 256 });
    assert_eq!(r.unwrap().status(), Some(513));
    let big = Limits {
        max_message_size: 1 << 20,
        max_headers: 10_000,
        max_line_len: 8192,
    };
    let m = dgram(msg, &big).unwrap();
    assert_eq!(
        m.headers().filter(|h| h.name == HeaderName::Other).count(),
        i
    );
    let last = format!("X-Distinct-Header-Name-{:06}", i - 1);
    assert_eq!(m.headers_named(&last).count(), 1);
    // One 64 KiB name: longer than any name may be, refused without scanning twice.
    let name = "N".repeat(64 * 1024);
    let e = dgram(
        with(&format!("{name}: v\r\n"), b""),
        &Limits {
            max_message_size: 1 << 20,
            max_line_len: 1 << 20,
            max_headers: 256,
        },
    )
    .unwrap_err();
    assert_eq!(e, Error::BadHeaderLine);
    let e = dgram(
        with(&format!("{name}: v\r\n"), b""),
        &Limits {
            max_message_size: 1 << 20,
            ..Limits::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(e, Error::BadHeaderLine | Error::LineTooLong { .. }),
        "{e:?}"
    );
}

#[test]
fn oversized_message_and_lines() {
    let big_value = "x".repeat(10_000);
    let (e, r) = err_and_reply(
        with(&format!("X-Big: {big_value}\r\nContent-Length: 0\r\n"), b""),
        &Limits::default(),
    );
    assert_eq!(e, Error::LineTooLong { limit: 8192 });
    assert_eq!(r.unwrap().status(), Some(513));
    // A 70 KB datagram: 513, and the reply is still built from the first 64 KiB.
    let body = vec![b'a'; 70_000];
    let msg = with(&format!("Content-Length: {}\r\n", body.len()), &body);
    let (e, r) = err_and_reply(msg, &Limits::default());
    assert_eq!(e, Error::MessageTooLarge { limit: 65_535 });
    let r = r.unwrap();
    assert_eq!(
        (r.status(), r.reason()),
        (Some(513), Some(&b"Message Too Large"[..]))
    );
    assert_eq!(r.call_id(), Ok("c@h"));
}

#[test]
fn unterminated_quotes() {
    let (e, _) = err_and_reply(
        HEAD.replace(
            "From: <sip:a@example.com>;tag=1",
            "From: \"Mr. X <sip:a@example.com>;tag=1",
        )
        .into_bytes()
        .into_iter()
        .chain(*b"l: 0\r\n\r\n")
        .collect(),
        &Limits::default(),
    );
    assert_eq!(e, Error::BadHeader("From", "unterminated quoted string"));
    let m = dgram(
        with("Contact: \"a, <sip:x@y>, <sip:z@w>\r\nl: 0\r\n", b""),
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(
        m.contacts().count(),
        1,
        "the open quote swallows the commas"
    );
    assert_eq!(
        m.contacts().next().unwrap(),
        Err(Error::BadHeader("Contact", "unterminated quoted string"))
    );
    assert_eq!(
        m.validate_request(),
        Err(Error::BadHeader("Contact", "unterminated quoted string"))
    );
    // In an extension header the value is opaque and passes through.
    let q = "\"".repeat(50_000);
    let m = dgram(
        with(&format!("X-Q: {q}\r\nl: 0\r\n"), b""),
        &Limits {
            max_line_len: 60_000,
            max_message_size: 100_000,
            ..Limits::default()
        },
    )
    .unwrap();
    m.validate_request().unwrap();
    let auth = format!(
        "Authorization: Digest realm=\"{}\r\nl: 0\r\n",
        "a".repeat(1000)
    );
    let (e, _) = err_and_reply(with(&auth, b""), &Limits::default());
    assert_eq!(
        e,
        Error::BadHeader("Authorization", "malformed auth parameter")
    );
}

#[test]
fn deeply_nested_angle_brackets() {
    let depth = 30_000;
    let route = format!("{}sip:x@y{}", "<".repeat(depth), ">".repeat(depth));
    let contact = format!("{},{}", "<".repeat(depth / 2), ">,".repeat(depth / 2));
    let limits = Limits {
        max_message_size: 1 << 20,
        max_line_len: 1 << 20,
        max_headers: 256,
    };
    let route_msg = with(&format!("Route: {route}\r\nl: 0\r\n"), b"");
    let contact_msg = with(&format!("Contact: {contact}\r\nl: 0\r\n"), b"");
    // 200 rounds: 200 * 60_000^2 byte visits if any step were quadratic.
    for _ in 0..200 {
        let m = dgram(route_msg.clone(), &limits).unwrap();
        assert_eq!(
            m.routes().next().unwrap(),
            Err(Error::BadHeader("Route", "white space or < inside <>"))
        );
        assert_eq!(m.validate_request().unwrap_err().status(), 400);
        // As a list header value, with commas inside: still one linear scan.
        let m = dgram(contact_msg.clone(), &limits).unwrap();
        assert!(m.contacts().count() > 1);
        assert!(m.validate_request().is_err());
    }
}

#[test]
fn non_utf8_bytes_in_values() {
    // Latin-1 display name: tolerated (many deployed phones send it), bytes kept as is.
    let m = dgram(
        HEAD.replace(
            "From: <sip:a@example.com>",
            "From: \"M\u{fc}ller\" <sip:a@example.com>",
        )
        .replace('\u{fc}', "\u{1}")
        .into_bytes()
        .into_iter()
        .map(|b| if b == 1 { 0xfc } else { b })
        .chain(*b"l: 0\r\n\r\n")
        .collect(),
        &Limits::default(),
    )
    .unwrap();
    m.validate_request().unwrap();
    let dn = m.from_header().unwrap().display_name.unwrap();
    assert_eq!(dn.unescaped().as_ref(), b"M\xfcller");
    assert_eq!(dn.to_string_lossy(), "M\u{fffd}ller");
    // Where the grammar is ASCII, non-ASCII is a defect with its own message.
    let bad_cid = [&b"Call-ID: \xff\xfe"[..], b"\r\n"].concat();
    let mut msg = HEAD.replace("Call-ID: c@h\r\n", "").into_bytes();
    msg.extend_from_slice(&bad_cid);
    msg.extend_from_slice(b"l: 0\r\n\r\n");
    let (e, r) = err_and_reply(msg, &Limits::default());
    assert_eq!(e, Error::BadHeader("Call-ID", "not word[@word]"));
    assert_eq!(r.unwrap().status(), Some(400));
    let mut msg = b"INVITE sip:b\xffb@example.com SIP/2.0\r\n".to_vec();
    msg.extend_from_slice(&HEAD.as_bytes()[HEAD.find('\n').unwrap() + 1..]);
    msg.extend_from_slice(b"l: 0\r\n\r\n");
    let (e, _) = err_and_reply(msg, &Limits::default());
    assert_eq!(e, Error::BadRequestUri("non-UTF-8 URI"));
    // UTF-8 reason phrases are fine in responses.
    let m = SipMessage::parse(
        "SIP/2.0 486 Besetzt \u{2013} bitte sp\u{e4}ter\r\nl: 0\r\n\r\n".as_bytes(),
    )
    .unwrap();
    assert_eq!(m.status(), Some(486));
}

#[test]
fn byte_by_byte_stream_of_a_large_message_is_linear() {
    // 1 MiB message arriving one byte per read: a decoder that rescans from the start on
    // every read would visit ~5 * 10^11 bytes.
    let body = vec![b'b'; 900 * 1024];
    let mut extra = String::new();
    for i in 0..2_000 {
        extra.push_str(&format!("X-Pad-{i}: {}\r\n", "p".repeat(40)));
    }
    let msg = with(&format!("{extra}Content-Length: {}\r\n", body.len()), &body);
    let limits = Limits {
        max_message_size: 2 << 20,
        max_headers: 5_000,
        max_line_len: 8192,
    };
    let mut d = StreamDecoder::new(limits);
    let mut buf = BytesMut::new();
    let mut got = None;
    for &b in &msg {
        buf.extend_from_slice(&[b]);
        if let Some(f) = d.decode(&mut buf).unwrap() {
            got = Some(f);
        }
    }
    match got {
        Some(Frame::Message(m)) => {
            assert_eq!(m.as_bytes().len(), msg.len());
            assert_eq!(m.body().len(), body.len());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn hostile_lists_and_params() {
    let limits = Limits {
        max_message_size: 4 << 20,
        max_line_len: 1 << 20,
        max_headers: 256,
    };
    let commas = with(&format!("Via: {}\r\nl: 0\r\n", ",".repeat(60_000)), b"");
    let params = String::from_utf8(with("l: 0\r\n", b"")).unwrap().replace(
        "branch=z9hG4bK1",
        &format!("branch=z9hG4bK1{}", ";a".repeat(30_000)),
    );
    let folded = with(
        &format!("X-F: a{}\r\nl: 0\r\n", "\r\n b".repeat(15_000)),
        b"",
    );
    for _ in 0..100 {
        // 60k empty Via elements: each is an error, found in one pass.
        let m = dgram(commas.clone(), &limits).unwrap();
        assert_eq!(m.via().count(), 2 + 60_000);
        assert!(m.validate_request().is_err());
        // 30k parameters on the top Via: parsed once, linear.
        let m = dgram(params.clone().into_bytes(), &limits).unwrap();
        let v = m.top_via().unwrap();
        assert_eq!(v.branch, Some("z9hG4bK1"));
        assert_eq!(v.params.iter().count(), 30_001);
        // A 60 KB folded header of 15k continuation lines.
        let m = dgram(folded.clone(), &limits).unwrap();
        assert_eq!(
            m.headers_named("X-F").next().unwrap().value.len(),
            1 + 15_000 * 4
        );
    }
    // Past 64 KiB a single field is refused outright.
    let e = dgram(
        with(&format!("X-F: {}\r\nl: 0\r\n", "a".repeat(70_000)), b""),
        &limits,
    )
    .unwrap_err();
    assert_eq!(e, Error::LineTooLong { limit: 65_535 });
}

#[test]
fn malformed_lines_and_garbage() {
    for garbage in [
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x00\x01\x00\x00\x21\x12\xa4\x42stunstunstun",
        b"INVITE sip:a SIP/2.0\r\n\r\n\r\n\r\n",
        b"INVITE sip:a SIP/2.0\r\nVia\r\n\r\n",
        b"INVITE sip:a SIP/2.0\r\n:\r\n\r\n",
        b"INVITE sip:a SIP/2.0\r\n \r\n\r\n",
        b"SIP/2.0 200\r\nVia: x\r\n\r",
        b"\r\n\r\nSIP/2.0",
        b"REGISTER sip:a SIP/2.0\r\nContact: <sip:a@b>;expires=\r\nl: 0\r\n\r\n",
    ] {
        match parse_datagram(Bytes::copy_from_slice(garbage), &Limits::default()) {
            Ok(Datagram::Message(m)) => {
                let _ = m.validate_request();
                let _ = m.validate_response();
            }
            Ok(Datagram::KeepAlive) => {}
            Err(e) => {
                let _ = (e.status(), e.reason_phrase(), e.kind());
                if let Some(r) = error_reply(None, garbage, &e) {
                    SipMessage::parse(r).expect("reply parses");
                }
            }
        }
    }
}

#[test]
fn editing_messages_with_huge_header_counts() {
    // More lines than a u16 can index, then the Route: edits must land on the right line.
    let mut extra = String::new();
    for _ in 0..70_000 {
        extra.push_str("X: a\r\n");
    }
    extra.push_str("Route: <sip:p1;lr>, <sip:p2;lr>\r\nl: 0\r\n");
    let limits = Limits {
        max_message_size: 1 << 20,
        max_headers: 100_000,
        max_line_len: 8192,
    };
    let m = dgram(with(&extra, b""), &limits).unwrap();
    let mut ed = sip_core::Editor::new(&m);
    assert_eq!(ed.remove_top_route().unwrap(), b"<sip:p1;lr>");
    assert_eq!(ed.remove_top_route().unwrap(), b"<sip:p2;lr>");
    assert!(ed.remove_top_route().is_err());
    let out = dgram(ed.finish().to_vec(), &limits).unwrap();
    assert_eq!(out.routes().count(), 0);
    assert_eq!(out.headers_named("X").count(), 70_000);

    // Removing 70k lines is one edit each, not a rescan of every earlier edit.
    for _ in 0..20 {
        let mut ed = sip_core::Editor::new(&m);
        ed.remove_header_named("X");
        let out = dgram(ed.finish().to_vec(), &limits).unwrap();
        assert_eq!(out.header_count(), m.header_count() - 70_000);
        assert_eq!(out.headers_named("X").count(), 0);
    }
}
