//! The rewriter: exact outputs, and proof that unedited bytes are untouched.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::net::IpAddr;

use sdp::{Address, Sdp};

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// Physical lines with their terminators, so endings are compared too.
fn physical_lines(body: &[u8]) -> Vec<&[u8]> {
    body.split_inclusive(|b| *b == b'\n').collect()
}

const WEBRTC: &[u8] = b"v=0\r\n\
o=- 4611731400430051336 2 IN IP4 127.0.0.1\r\n\
s=-\r\n\
t=0 0\r\n\
a=group:BUNDLE 0\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\n\
c=IN IP4 0.0.0.0\r\n\
a=rtcp:9 IN IP4 0.0.0.0\r\n\
a=candidate:1467250027 1 udp 2122260223 192.168.0.196 46243 typ host generation 0\r\n\
a=ice-ufrag:Oyef\r\n\
a=ice-pwd:7NLS3/yKxV1T1VztOE0lQvxa\r\n\
a=fingerprint:sha-256 49:66:12:17:0D:1C:91:AE:57:4C:C6:36:DD:D5:97:D2:7D:62:C9:9A:7F:B9:A3:F4:70:03:E7:43:91:73:23:5E\r\n\
a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR\r\n\
a=setup:actpass\r\n\
a=sendrecv\r\n\
a=rtcp-mux\r\n\
a=rtpmap:111 opus/48000/2\r\n";

#[test]
fn no_edit_rewrite_is_byte_identical() {
    let bodies: [&[u8]; 6] = [
        WEBRTC,
        b"v=0\no=- 1 1 IN IP4 192.0.2.1\ns=-\nm=audio 1 RTP/AVP 0",
        b"\r\nv=0\r\no=- 1 1 IN IP4 192.0.2.1\r\n\r\ns=-\nm=audio 1 RTP/AVP 0\r\n\r\n\r\n",
        b"v=0\r\no=x 1 1 IN IP4 h\r\ns=\xff\r\na=x:\xe9\r\n",
        b"v=0\no=- 1 1 IN IP4 192.0.2.1",
        b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\nc=IN IP4 224.2.1.1/127/3\r\nm=audio 1/2 RTP/AVP 0\r\na=rtcp:3\r\n",
    ];
    for body in bodies {
        let sdp = Sdp::parse(body).unwrap();
        let rw = sdp.rewriter();
        assert!(!rw.has_edits());
        assert_eq!(rw.finish(), body);
        assert_eq!(&rw.finish_bytes()[..], body);
        let mut appended = b"prefix".to_vec();
        rw.write_to(&mut appended);
        assert_eq!(&appended[6..], body);
    }
}

#[test]
fn webrtc_relay_edit_changes_only_the_edited_fields() {
    let sdp = Sdp::parse(WEBRTC).unwrap();
    let mut rw = sdp.rewriter();
    rw.set_origin_address(ip("203.0.113.1"))
        .set_media_connection(0, ip("203.0.113.1"))
        .unwrap()
        .set_media_port(0, 40000)
        .unwrap()
        .set_rtcp(0, 40000, Some(ip("203.0.113.1")))
        .unwrap();
    let out = rw.finish();

    let before = physical_lines(WEBRTC);
    let after = physical_lines(&out);
    assert_eq!(before.len(), after.len());
    let edited: [(usize, &[u8]); 4] = [
        (1, b"o=- 4611731400430051336 2 IN IP4 203.0.113.1\r\n"),
        (5, b"m=audio 40000 UDP/TLS/RTP/SAVPF 111 0\r\n"),
        (6, b"c=IN IP4 203.0.113.1\r\n"),
        (7, b"a=rtcp:40000 IN IP4 203.0.113.1\r\n"),
    ];
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        match edited.iter().find(|(n, _)| *n == i) {
            Some((_, expected)) => {
                assert_ne!(b, a, "line {i} should have changed");
                assert_eq!(a, expected, "line {i}");
            }
            None => assert_eq!(b, a, "line {i} must be byte-identical"),
        }
    }

    // Security and ICE attributes survive exactly.
    let re = Sdp::parse(&out).unwrap();
    let names = |s: &Sdp<'_>| -> Vec<(String, Option<Vec<u8>>)> {
        s.media_attributes(0)
            .unwrap()
            .filter(|a| a.name() != "rtcp")
            .map(|a| (a.name().to_owned(), a.value().map(<[u8]>::to_vec)))
            .collect()
    };
    assert_eq!(names(&sdp), names(&re));
    assert!(re.media()[0].rtcp_mux());
    assert_eq!(re.media()[0].rtcp().unwrap().port(), 40000);
}

#[test]
fn ipv4_to_ipv6_and_back() {
    let v4 = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.2\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0\r\nc=IN IP4 192.0.2.3\r\na=rtcp:5001 IN IP4 192.0.2.4\r\n";
    let sdp = Sdp::parse(v4).unwrap();
    let mut rw = sdp.rewriter();
    rw.set_origin_address(ip("2001:db8:0:0:0:0:0:1"))
        .set_session_connection(ip("2001:DB8::2"));
    rw.set_media_connection(0, ip("2001:db8::3")).unwrap();
    rw.set_rtcp(0, 5001, Some(ip("::ffff:192.0.2.9"))).unwrap();
    let v6 = rw.finish();
    assert_eq!(
        v6,
        b"v=0\r\no=- 1 1 IN IP6 2001:db8::1\r\ns=-\r\nc=IN IP6 2001:db8::2\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0\r\nc=IN IP6 2001:db8::3\r\na=rtcp:5001 IN IP6 ::ffff:192.0.2.9\r\n"
    );

    let sdp6 = Sdp::parse(&v6).unwrap();
    assert_eq!(
        sdp6.effective_address(0),
        Some(Address::Ip(ip("2001:db8::3")))
    );
    let mut back = sdp6.rewriter();
    back.set_origin_address(ip("192.0.2.1"))
        .set_session_connection(ip("192.0.2.2"));
    back.set_media_connection(0, ip("192.0.2.3")).unwrap();
    back.set_rtcp(0, 5001, Some(ip("192.0.2.4"))).unwrap();
    assert_eq!(back.finish(), v4);
}

#[test]
fn port_rewrite_keeps_count_and_everything_else() {
    let body = b"v=0\no=- 1 1 IN IP4 192.0.2.1\ns=-\nm=video 49170/2 RTP/AVP 31 32\nm=audio 0049170 RTP/AVP 0\n";
    let sdp = Sdp::parse(body).unwrap();
    let mut rw = sdp.rewriter();
    rw.set_media_port(0, 7)
        .unwrap()
        .set_media_port(1, 65535)
        .unwrap();
    assert_eq!(
        rw.finish(),
        b"v=0\no=- 1 1 IN IP4 192.0.2.1\ns=-\nm=video 7/2 RTP/AVP 31 32\nm=audio 65535 RTP/AVP 0\n"
    );
}

#[test]
fn session_connection_is_inserted_in_rfc_position() {
    let body = b"v=0\no=- 1 1 IN IP4 192.0.2.1\ns=-\ni=info\nu=http://example.com\ne=a@example.com\np=+1 555\nb=AS:64\nt=0 0\na=sendrecv\nm=audio 1 RTP/AVP 0\n";
    let sdp = Sdp::parse(body).unwrap();
    let mut rw = sdp.rewriter();
    rw.set_session_connection(ip("192.0.2.50"));
    let out = rw.finish();
    assert_eq!(
        out,
        b"v=0\no=- 1 1 IN IP4 192.0.2.1\ns=-\ni=info\nu=http://example.com\ne=a@example.com\np=+1 555\nc=IN IP4 192.0.2.50\nb=AS:64\nt=0 0\na=sendrecv\nm=audio 1 RTP/AVP 0\n"
    );
    let re = Sdp::parse(&out).unwrap();
    assert_eq!(
        re.session_connection().unwrap().address(),
        Address::Ip(ip("192.0.2.50"))
    );
    assert!(re.media()[0].connection().is_none());

    // Minimal body, CRLF, no t=: right after s=.
    let body = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nm=audio 1 RTP/AVP 0\r\n";
    let sdp = Sdp::parse(body).unwrap();
    let mut rw = sdp.rewriter();
    rw.set_session_connection(ip("::1"));
    assert_eq!(
        rw.finish(),
        b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP6 ::1\r\nm=audio 1 RTP/AVP 0\r\n"
    );
}

#[test]
fn media_connection_is_inserted_after_m_and_i() {
    let body = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.2\r\nt=0 0\r\nm=audio 1 RTP/AVP 0\r\ni=voice\r\nb=AS:64\r\na=sendonly\r\nm=video 2 RTP/AVP 31\nb=AS:128\n";
    let sdp = Sdp::parse(body).unwrap();
    let mut rw = sdp.rewriter();
    rw.set_media_connection(0, ip("198.51.100.1")).unwrap();
    rw.set_media_connection(1, ip("198.51.100.2")).unwrap();
    let out = rw.finish();
    // The second section's lines end in LF, and so does its inserted c=.
    assert_eq!(
        out,
        b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.2\r\nt=0 0\r\nm=audio 1 RTP/AVP 0\r\ni=voice\r\nc=IN IP4 198.51.100.1\r\nb=AS:64\r\na=sendonly\r\nm=video 2 RTP/AVP 31\nc=IN IP4 198.51.100.2\nb=AS:128\n"
    );
    let re = Sdp::parse(&out).unwrap();
    assert_eq!(re.session_connection().unwrap().address_text(), "192.0.2.2");
    assert_eq!(
        re.effective_address(0),
        Some(Address::Ip(ip("198.51.100.1")))
    );
    assert_eq!(
        re.effective_address(1),
        Some(Address::Ip(ip("198.51.100.2")))
    );
}

#[test]
fn every_media_connection_line_is_rewritten() {
    let body = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nm=audio 1 RTP/AVP 0\r\nc=IN IP4 224.2.1.1/127\r\nc=IN IP4 224.2.1.2/127\r\n";
    let sdp = Sdp::parse(body).unwrap();
    let mut rw = sdp.rewriter();
    rw.set_media_connection(0, ip("192.0.2.7")).unwrap();
    assert_eq!(
        rw.finish(),
        b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nm=audio 1 RTP/AVP 0\r\nc=IN IP4 192.0.2.7\r\nc=IN IP4 192.0.2.7\r\n"
    );
}

#[test]
fn multicast_suffix_is_kept_only_for_same_family_multicast() {
    let body = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 224.2.1.1/127/3\r\nm=audio 1 RTP/AVP 0\r\nc=IN IP6 ff15::101/3\r\n";
    let sdp = Sdp::parse(body).unwrap();

    let cases: [(&str, &str, &[u8], &[u8]); 4] = [
        (
            "233.252.0.9",
            "ff15::9",
            b"c=IN IP4 233.252.0.9/127/3",
            b"c=IN IP6 ff15::9/3",
        ),
        (
            "192.0.2.9",
            "2001:db8::9",
            b"c=IN IP4 192.0.2.9",
            b"c=IN IP6 2001:db8::9",
        ),
        (
            "ff15::9",
            "233.252.0.9",
            b"c=IN IP6 ff15::9",
            b"c=IN IP4 233.252.0.9",
        ),
        (
            "2001:db8::9",
            "192.0.2.9",
            b"c=IN IP6 2001:db8::9",
            b"c=IN IP4 192.0.2.9",
        ),
    ];
    for (session, media, session_line, media_line) in cases {
        let mut rw = sdp.rewriter();
        rw.set_session_connection(ip(session));
        rw.set_media_connection(0, ip(media)).unwrap();
        let mut expected = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\n".to_vec();
        expected.extend_from_slice(session_line);
        expected.extend_from_slice(b"\r\nm=audio 1 RTP/AVP 0\r\n");
        expected.extend_from_slice(media_line);
        expected.extend_from_slice(b"\r\n");
        assert_eq!(
            String::from_utf8(rw.finish()).unwrap(),
            String::from_utf8(expected).unwrap()
        );
    }
}

#[test]
fn rtcp_edits() {
    let body = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\n\
m=audio 1 RTP/AVP 0\r\na=rtcp:53020\r\na=sendrecv\r\n\
m=audio 2 RTP/AVP 0\r\na=rtcp:53022 IN IP4 192.0.2.5\r\na=rtcp-mux\r\n\
m=audio 3 RTP/AVP 0\r\na=rtcp-mux\r\na=ptime:20\r\n\
m=audio 4 RTP/AVP 0\r\n";
    let sdp = Sdp::parse(body).unwrap();

    let mut rw = sdp.rewriter();
    rw.set_rtcp(0, 10001, Some(ip("2001:db8::1"))).unwrap();
    rw.set_rtcp(1, 10003, None).unwrap();
    rw.set_rtcp(2, 10005, Some(ip("192.0.2.99"))).unwrap();
    rw.set_rtcp(3, 10007, None).unwrap();
    let out = rw.finish();
    assert_eq!(
        String::from_utf8(out.clone()).unwrap(),
        "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\n\
m=audio 1 RTP/AVP 0\r\na=rtcp:10001 IN IP6 2001:db8::1\r\na=sendrecv\r\n\
m=audio 2 RTP/AVP 0\r\na=rtcp:10003 IN IP4 192.0.2.5\r\na=rtcp-mux\r\n\
m=audio 3 RTP/AVP 0\r\na=rtcp-mux\r\na=ptime:20\r\na=rtcp:10005 IN IP4 192.0.2.99\r\n\
m=audio 4 RTP/AVP 0\r\na=rtcp:10007\r\n"
    );
    let re = Sdp::parse(&out).unwrap();
    let ports: Vec<_> = re
        .media()
        .iter()
        .map(|m| m.rtcp().unwrap().port())
        .collect();
    assert_eq!(ports, [10001, 10003, 10005, 10007]);
    assert!(re.media()[1].rtcp_mux() && re.media()[2].rtcp_mux());

    // An existing address is replaced when a new one is given.
    let mut rw = sdp.rewriter();
    rw.set_rtcp(1, 9, Some(ip("::2"))).unwrap();
    let out = rw.finish();
    let re = Sdp::parse(&out).unwrap();
    let rtcp = re.media()[1].rtcp().unwrap();
    assert_eq!(rtcp.port(), 9);
    assert_eq!(rtcp.connection().unwrap().addrtype(), "IP6");
    assert_eq!(rtcp.connection().unwrap().address(), Address::Ip(ip("::2")));
}

#[test]
fn repeated_setter_last_wins_and_different_setters_compose() {
    let body =
        b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.2\r\nm=audio 1 RTP/AVP 0\r\n";
    let sdp = Sdp::parse(body).unwrap();
    let mut rw = sdp.rewriter();
    rw.set_origin_address(ip("10.0.0.1"))
        .set_origin_address(ip("10.0.0.2"))
        .set_session_connection(ip("10.0.0.3"));
    rw.set_media_port(0, 100)
        .unwrap()
        .set_media_port(0, 200)
        .unwrap();
    rw.set_rtcp(0, 201, Some(ip("10.0.0.4"))).unwrap();
    rw.set_rtcp(0, 202, None).unwrap();
    rw.set_media_connection(0, ip("10.0.0.5")).unwrap();
    assert_eq!(
        rw.finish(),
        b"v=0\r\no=- 1 1 IN IP4 10.0.0.2\r\ns=-\r\nc=IN IP4 10.0.0.3\r\nm=audio 200 RTP/AVP 0\r\nc=IN IP4 10.0.0.5\r\na=rtcp:202\r\n"
    );
}

#[test]
fn address_type_text_is_kept_when_family_is_unchanged() {
    let body = b"v=0\r\no=- 1 1 IN ip4 192.0.2.1\r\ns=-\r\nc=IN ip4 192.0.2.2\r\n";
    let sdp = Sdp::parse(body).unwrap();
    let mut rw = sdp.rewriter();
    rw.set_origin_address(ip("192.0.2.10"))
        .set_session_connection(ip("192.0.2.20"));
    assert_eq!(
        rw.finish(),
        b"v=0\r\no=- 1 1 IN ip4 192.0.2.10\r\ns=-\r\nc=IN ip4 192.0.2.20\r\n"
    );
}

#[test]
fn hostname_origin_and_connection_are_replaced_by_literals() {
    let body = b"v=0\no=bob 1 1 IN IP4 host.example.com\ns=\nc=IN IP4 media.example.com\nt=0 0\n";
    let sdp = Sdp::parse(body).unwrap();
    let mut rw = sdp.rewriter();
    rw.set_origin_address(ip("2001:db8::5"))
        .set_session_connection(ip("192.0.2.5"));
    assert_eq!(
        rw.finish(),
        b"v=0\no=bob 1 1 IN IP6 2001:db8::5\ns=\nc=IN IP4 192.0.2.5\nt=0 0\n"
    );
}

#[test]
fn rfc5118_body_rewritten_for_the_relay() {
    let body: &[u8] = b"v=0\r\no=bob 280744730 28977631 IN IP4 host.example.com\r\ns=\r\nt=0 0\r\nm=audio 22334 RTP/AVP 0\r\nc=IN IP4 192.0.2.1\r\nm=video 6024 RTP/AVP 107\r\nc=IN IP6 2001:db8::1\r\na=rtpmap:107 H263-1998/90000\r\n";
    let sdp = Sdp::parse(body).unwrap();
    let mut rw = sdp.rewriter();
    rw.set_media_connection(0, ip("2001:db8::100")).unwrap();
    rw.set_media_port(0, 30000).unwrap();
    rw.set_media_connection(1, ip("198.51.100.100")).unwrap();
    rw.set_media_port(1, 30002).unwrap();
    assert_eq!(
        String::from_utf8(rw.finish_bytes().to_vec()).unwrap(),
        "v=0\r\no=bob 280744730 28977631 IN IP4 host.example.com\r\ns=\r\nt=0 0\r\nm=audio 30000 RTP/AVP 0\r\nc=IN IP6 2001:db8::100\r\nm=video 30002 RTP/AVP 107\r\nc=IN IP4 198.51.100.100\r\na=rtpmap:107 H263-1998/90000\r\n"
    );
}

#[test]
fn insertion_after_unterminated_session_line() {
    let body = b"v=0\no=- 1 1 IN IP4 192.0.2.1\ns=-";
    let sdp = Sdp::parse(body).unwrap();
    let mut rw = sdp.rewriter();
    rw.set_session_connection(ip("192.0.2.9"));
    assert_eq!(
        rw.finish(),
        b"v=0\no=- 1 1 IN IP4 192.0.2.1\ns=-\nc=IN IP4 192.0.2.9"
    );
}

#[test]
fn inserted_connection_never_moves_past_other_line_types() {
    // Oddly ordered input: u= after t=. The new c= still goes right after
    // the leading v/o/s run, and in the media right after m= (the i= is not
    // directly after m=, so it is not part of the run).
    let body = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\nu=http://x\r\nm=audio 1 RTP/AVP 0\r\nb=AS:1\r\ni=late\r\n";
    let sdp = Sdp::parse(body).unwrap();
    let mut rw = sdp.rewriter();
    rw.set_session_connection(ip("192.0.2.8"));
    rw.set_media_connection(0, ip("192.0.2.9")).unwrap();
    assert_eq!(
        rw.finish(),
        b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.8\r\nt=0 0\r\nu=http://x\r\nm=audio 1 RTP/AVP 0\r\nc=IN IP4 192.0.2.9\r\nb=AS:1\r\ni=late\r\n"
    );
}
