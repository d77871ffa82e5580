//! Bad input: every error variant is reachable, and nothing panics.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::time::{Duration, Instant};

use sdp::{MAX_LINES, MAX_MEDIA, Sdp, SdpError};

const HEAD: &str = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\n";

fn err(body: &[u8]) -> SdpError {
    Sdp::parse(body).unwrap_err()
}

fn err_with_head(rest: &str) -> SdpError {
    err(format!("{HEAD}{rest}").as_bytes())
}

#[test]
fn missing_version() {
    assert_eq!(err(b""), SdpError::MissingVersion);
    assert_eq!(err(b"\r\n\r\n\n"), SdpError::MissingVersion);
    assert_eq!(
        err(b"o=- 1 1 IN IP4 192.0.2.1\r\nv=0\r\n"),
        SdpError::MissingVersion
    );
}

#[test]
fn unsupported_version() {
    assert_eq!(err(b"v=1\r\n"), SdpError::UnsupportedVersion { line: 1 });
    assert_eq!(err(b"\r\nv=\r\n"), SdpError::UnsupportedVersion { line: 2 });
    assert_eq!(err(b"v=0 \r\n"), SdpError::UnsupportedVersion { line: 1 });
}

#[test]
fn malformed_lines() {
    assert_eq!(err(b"v"), SdpError::MalformedLine { line: 1 });
    assert_eq!(err(b"v0\r\n"), SdpError::MalformedLine { line: 1 });
    assert_eq!(err(b"v=0\r\n=x\r\n"), SdpError::MalformedLine { line: 2 });
    assert_eq!(err(b"v=0\r\n1=x\r\n"), SdpError::MalformedLine { line: 2 });
    assert_eq!(err(b"v=0\r\n \r\n"), SdpError::MalformedLine { line: 2 });
    assert_eq!(err(b"v=0\r\nab=c\r\n"), SdpError::MalformedLine { line: 2 });
    // A lone CR is not a terminator, so it is part of a malformed line.
    assert_eq!(err(b"v=0\r\n\r"), SdpError::MalformedLine { line: 2 });
    assert_eq!(err(b"\xff=0\r\n"), SdpError::MalformedLine { line: 1 });
}

#[test]
fn non_utf8_where_text_is_required() {
    assert_eq!(
        err(b"v=0\r\no=- 1 1 IN IP4 \xff\r\n"),
        SdpError::NonUtf8 { line: 2 }
    );
    let mut body = HEAD.as_bytes().to_vec();
    body.extend_from_slice(b"c=IN IP4 \xc3\r\n");
    assert_eq!(err(&body), SdpError::NonUtf8 { line: 5 });
    let mut body = HEAD.as_bytes().to_vec();
    body.extend_from_slice(b"m=audio\xa0 1 RTP/AVP 0\r\n");
    assert_eq!(err(&body), SdpError::NonUtf8 { line: 5 });
    let mut body = HEAD.as_bytes().to_vec();
    body.extend_from_slice(b"a=f\xf6o:bar\r\n");
    assert_eq!(err(&body), SdpError::NonUtf8 { line: 5 });
    let mut body = HEAD.as_bytes().to_vec();
    body.extend_from_slice(b"m=audio 1 RTP/AVP 0\r\na=rtcp:9 IN IP4 \xff\r\n");
    assert_eq!(err(&body), SdpError::NonUtf8 { line: 6 });
}

#[test]
fn missing_and_malformed_origin() {
    assert_eq!(err(b"v=0\r\ns=-\r\nt=0 0\r\n"), SdpError::MissingOrigin);
    assert_eq!(
        err(b"v=0\r\ns=-\r\nm=audio 1 RTP/AVP 0\r\no=- 1 1 IN IP4 192.0.2.1\r\n"),
        SdpError::MissingOrigin
    );
    assert_eq!(
        err(b"v=0\r\no=1 1 IN IP4 192.0.2.1\r\n"),
        SdpError::MalformedOrigin { line: 2 }
    );
    assert_eq!(err(b"v=0\r\no=\r\n"), SdpError::MalformedOrigin { line: 2 });
    assert_eq!(
        err(b"v=0\r\no=- 1 1 IN IP4"),
        SdpError::MalformedOrigin { line: 2 }
    );
}

#[test]
fn malformed_connection() {
    for bad in [
        "c=IN IP4\r\n",
        "c=\r\n",
        "c=IN IP4 192.0.2.1 extra\r\n",
        "c=IN IP4 224.2.1.1/\r\n",
        "c=IN IP4 224.2.1.1/ttl\r\n",
        "c=IN IP4 224.2.1.1/1/2/3\r\n",
        "c=IN IP4 /127\r\n",
    ] {
        assert_eq!(
            err_with_head(bad),
            SdpError::MalformedConnection { line: 5 },
            "{bad}"
        );
        let in_media = format!("m=audio 1 RTP/AVP 0\r\n{bad}");
        assert_eq!(
            err_with_head(&in_media),
            SdpError::MalformedConnection { line: 6 },
            "{bad}"
        );
    }
}

#[test]
fn malformed_media() {
    for bad in ["m=audio 49170\r\n", "m=audio\r\n", "m=\r\n", "m= \r\n"] {
        assert_eq!(
            err_with_head(bad),
            SdpError::MalformedMedia { line: 5 },
            "{bad}"
        );
    }
}

#[test]
fn bad_ports() {
    for bad in [
        "m=audio 70000 RTP/AVP 0\r\n",
        "m=audio 65536 RTP/AVP 0\r\n",
        "m=audio -1 RTP/AVP 0\r\n",
        "m=audio +5 RTP/AVP 0\r\n",
        "m=audio x RTP/AVP 0\r\n",
        "m=audio 5/ RTP/AVP 0\r\n",
        "m=audio /2 RTP/AVP 0\r\n",
        "m=audio 5/70000 RTP/AVP 0\r\n",
        "m=audio 5/2/3 RTP/AVP 0\r\n",
        "m=audio 99999999999999999999999999 RTP/AVP 0\r\n",
    ] {
        assert_eq!(err_with_head(bad), SdpError::BadPort { line: 5 }, "{bad}");
    }
    assert_eq!(
        err_with_head("m=audio 1 RTP/AVP 0\r\na=rtcp:70000\r\n"),
        SdpError::BadPort { line: 6 }
    );
}

#[test]
fn malformed_rtcp() {
    for bad in [
        "a=rtcp\r\n",
        "a=rtcp:\r\n",
        "a=rtcp: \r\n",
        "a=rtcp:9 IN\r\n",
        "a=rtcp:9 IN IP4\r\n",
        "a=rtcp:9 IN IP4 192.0.2.1 extra\r\n",
        "a=rtcp:9 IN IP4 192.0.2.1/\r\n",
    ] {
        let body = format!("m=audio 1 RTP/AVP 0\r\n{bad}");
        assert_eq!(
            err_with_head(&body),
            SdpError::MalformedRtcp { line: 6 },
            "{bad}"
        );
    }
}

#[test]
fn too_many_media() {
    let mut body = HEAD.to_owned();
    for i in 0..MAX_MEDIA {
        body.push_str(&format!("m=audio {} RTP/AVP 0\r\n", 1000 + i));
    }
    assert_eq!(
        Sdp::parse(body.as_bytes()).unwrap().media().len(),
        MAX_MEDIA
    );
    body.push_str("m=audio 1 RTP/AVP 0\r\n");
    assert_eq!(
        Sdp::parse(body.as_bytes()).unwrap_err(),
        SdpError::TooManyMedia { limit: 64 }
    );
}

#[test]
fn too_many_lines_stops_early_in_linear_time() {
    let mut body = HEAD.to_owned();
    while body.lines().count() < MAX_LINES {
        body.push_str("a=x\r\n");
    }
    assert_eq!(
        Sdp::parse(body.as_bytes()).unwrap().lines().len(),
        MAX_LINES
    );
    body.push_str("a=x\r\n");
    assert_eq!(
        Sdp::parse(body.as_bytes()).unwrap_err(),
        SdpError::TooManyLines { limit: 1024 }
    );
    // Empty lines count towards the cap too.
    let blanks = format!("{HEAD}{}", "\r\n".repeat(MAX_LINES));
    assert_eq!(
        Sdp::parse(blanks.as_bytes()).unwrap_err(),
        SdpError::TooManyLines { limit: 1024 }
    );

    // Ten million lines: the parser stops at the cap, so this is as fast as
    // a small body. The bound is loose on purpose (shared, slow CI machines);
    // a quadratic parser would take minutes.
    let huge = "a=x\n".repeat(10_000_000);
    let huge = format!("{HEAD}{huge}");
    let started = Instant::now();
    assert_eq!(
        Sdp::parse(huge.as_bytes()).unwrap_err(),
        SdpError::TooManyLines { limit: 1024 }
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    // Few but very long lines: linear in bytes.
    let long = format!(
        "{HEAD}a=x:{}\r\nm=audio 1 RTP/AVP {}\r\n",
        "y".repeat(5_000_000),
        "0 ".repeat(2_000_000)
    );
    let started = Instant::now();
    let sdp = Sdp::parse(long.as_bytes()).unwrap();
    assert_eq!(sdp.media()[0].formats().count(), 2_000_000);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn media_index_out_of_range() {
    let body = format!("{HEAD}m=audio 1 RTP/AVP 0\r\n");
    let sdp = Sdp::parse(body.as_bytes()).unwrap();
    let mut rw = sdp.rewriter();
    let expected = SdpError::MediaIndexOutOfRange { index: 1, count: 1 };
    assert_eq!(rw.set_media_port(1, 5).unwrap_err(), expected);
    assert_eq!(
        rw.set_media_connection(1, "192.0.2.1".parse().unwrap())
            .unwrap_err(),
        expected
    );
    assert_eq!(rw.set_rtcp(1, 5, None).unwrap_err(), expected);
    assert_eq!(
        rw.set_rtcp(usize::MAX, 5, None).unwrap_err(),
        SdpError::MediaIndexOutOfRange {
            index: usize::MAX,
            count: 1
        }
    );
    assert!(!rw.has_edits());
    assert_eq!(rw.finish(), body.as_bytes());
}

#[test]
fn errors_render_useful_messages() {
    assert_eq!(
        SdpError::BadPort { line: 7 }.to_string(),
        "line 7: port is not an integer in 0..=65535"
    );
    assert_eq!(
        SdpError::MediaIndexOutOfRange { index: 3, count: 2 }.to_string(),
        "media index 3 out of range (2 media sections)"
    );
}

const FULL: &[u8] =
    b"v=0\r\no=alice 2890844526 2890844527 IN IP4 host.atlanta.example.com\r\ns=\r\n\
c=IN IP4 224.2.1.1/127/3\r\nt=0 0\r\na=sendonly\r\nm=audio 49170/2 RTP/SAVPF 0 8 97\r\ni=talk\r\n\
c=IN IP6 2001:db8::1\r\na=rtcp:53020 IN IP6 2001:db8::2\r\na=rtcp-mux\r\n\
a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR\r\n\
a=candidate:1 1 udp 1 192.0.2.3 5000 typ host\r\nm=video 0 RTP/AVP 31\r\na=inactive\r\n";

/// Every prefix, and every single-byte corruption, parses or fails cleanly,
/// and whatever parses can be rewritten without panicking.
#[test]
fn truncations_and_corruptions_never_panic() {
    assert!(Sdp::parse(FULL).is_ok());
    let exercise = |body: &[u8]| {
        if let Ok(sdp) = Sdp::parse(body) {
            let mut rw = sdp.rewriter();
            rw.set_origin_address("::1".parse().unwrap());
            rw.set_session_connection("192.0.2.200".parse().unwrap());
            for i in 0..sdp.media().len() {
                rw.set_media_port(i, 1).unwrap();
                rw.set_media_connection(i, "2001:db8::9".parse().unwrap())
                    .unwrap();
                rw.set_rtcp(i, 2, Some("192.0.2.201".parse().unwrap()))
                    .unwrap();
            }
            let out = rw.finish();
            // What we produce from valid input must itself be valid.
            Sdp::parse(&out).unwrap();
        }
    };
    let mut ok_prefixes = 0;
    for end in 0..=FULL.len() {
        if Sdp::parse(&FULL[..end]).is_ok() {
            ok_prefixes += 1;
        }
        exercise(&FULL[..end]);
    }
    assert!(ok_prefixes > 100, "{ok_prefixes}");
    for i in 0..FULL.len() {
        for b in [0u8, b'\n', b'\r', b'=', b' ', b'/', b':', 0xff, b'9'] {
            let mut body = FULL.to_vec();
            body[i] = b;
            exercise(&body);
        }
        let mut body = FULL.to_vec();
        body.remove(i);
        exercise(&body);
    }
}
