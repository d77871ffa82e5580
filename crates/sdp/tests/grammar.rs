//! Parsing of well-formed bodies: every grammar feature the relay relies on.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use sdp::{Address, Direction, LineEnding, Sdp};

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn attrs(sdp: &Sdp<'_>, media: Option<usize>) -> Vec<(String, Option<String>)> {
    let iter = match media {
        Some(i) => sdp.media_attributes(i).unwrap(),
        None => sdp.session_attributes(),
    };
    iter.map(|a| {
        (
            a.name().to_owned(),
            a.value().map(|v| String::from_utf8_lossy(v).into_owned()),
        )
    })
    .collect()
}

const RFC5118_MULT_IP: &[u8] = b"v=0\r\no=bob 280744730 28977631 IN IP4 host.example.com\r\ns=\r\nt=0 0\r\nm=audio 22334 RTP/AVP 0\r\nc=IN IP4 192.0.2.1\r\nm=video 6024 RTP/AVP 107\r\nc=IN IP6 2001:db8::1\r\na=rtpmap:107 H263-1998/90000\r\n";

const WEBRTC_OFFER: &[u8] = b"v=0\r\n\
o=- 4611731400430051336 2 IN IP4 127.0.0.1\r\n\
s=-\r\n\
t=0 0\r\n\
a=group:BUNDLE 0 1\r\n\
a=extmap-allow-mixed\r\n\
a=msid-semantic: WMS stream1\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126\r\n\
c=IN IP4 0.0.0.0\r\n\
a=rtcp:9 IN IP4 0.0.0.0\r\n\
a=candidate:1467250027 1 udp 2122260223 192.168.0.196 46243 typ host generation 0\r\n\
a=candidate:1853887674 1 udp 1518280447 203.0.113.7 46243 typ srflx raddr 192.168.0.196 rport 46243 generation 0\r\n\
a=ice-ufrag:Oyef\r\n\
a=ice-pwd:7NLS3/yKxV1T1VztOE0lQvxa\r\n\
a=ice-options:trickle\r\n\
a=fingerprint:sha-256 49:66:12:17:0D:1C:91:AE:57:4C:C6:36:DD:D5:97:D2:7D:62:C9:9A:7F:B9:A3:F4:70:03:E7:43:91:73:23:5E\r\n\
a=setup:actpass\r\n\
a=mid:0\r\n\
a=sendrecv\r\n\
a=msid:stream1 track1\r\n\
a=rtcp-mux\r\n\
a=rtpmap:111 opus/48000/2\r\n\
a=rtcp-fb:111 transport-cc\r\n\
a=fmtp:111 minptime=10;useinbandfec=1\r\n\
a=ssrc:1001 cname:abcd\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\n\
c=IN IP4 0.0.0.0\r\n\
a=rtcp:9 IN IP4 0.0.0.0\r\n\
a=ice-ufrag:Oyef\r\n\
a=ice-pwd:7NLS3/yKxV1T1VztOE0lQvxa\r\n\
a=fingerprint:sha-256 49:66:12:17:0D:1C:91:AE:57:4C:C6:36:DD:D5:97:D2:7D:62:C9:9A:7F:B9:A3:F4:70:03:E7:43:91:73:23:5E\r\n\
a=setup:actpass\r\n\
a=mid:1\r\n\
a=recvonly\r\n\
a=rtcp-mux\r\n\
a=rtcp-rsize\r\n\
a=rtpmap:96 VP8/90000\r\n\
a=rtpmap:97 rtx/90000\r\n\
a=fmtp:97 apt=96\r\n";

#[test]
fn rfc5118_multiple_media_each_with_own_connection() {
    let sdp = Sdp::parse(RFC5118_MULT_IP).unwrap();
    let o = sdp.origin();
    assert_eq!(o.username(), "bob");
    assert_eq!(o.session_id(), "280744730");
    assert_eq!(o.session_version(), "28977631");
    assert_eq!(o.nettype(), "IN");
    assert_eq!(o.addrtype(), "IP4");
    assert_eq!(o.address_text(), "host.example.com");
    assert_eq!(o.address(), Address::Host("host.example.com"));
    assert_eq!(sdp.session_name(), Some(&b""[..]));
    assert!(sdp.session_connection().is_none());

    assert_eq!(sdp.media().len(), 2);
    let audio = &sdp.media()[0];
    assert_eq!(audio.media_type(), "audio");
    assert_eq!(audio.port(), 22334);
    assert_eq!(audio.port_count(), None);
    assert_eq!(audio.proto(), "RTP/AVP");
    assert_eq!(audio.formats().collect::<Vec<_>>(), ["0"]);
    assert_eq!(
        audio.connection().unwrap().address(),
        Address::Ip(ip("192.0.2.1"))
    );
    assert_eq!(sdp.effective_address(0), Some(Address::Ip(ip("192.0.2.1"))));

    let video = &sdp.media()[1];
    assert_eq!(video.media_type(), "video");
    assert_eq!(video.port(), 6024);
    assert_eq!(video.formats().collect::<Vec<_>>(), ["107"]);
    let c = video.connection().unwrap();
    assert_eq!(c.addrtype(), "IP6");
    assert_eq!(c.address(), Address::Ip(ip("2001:db8::1")));
    assert_eq!(
        sdp.effective_address(1),
        Some(Address::Ip(ip("2001:db8::1")))
    );
    assert_eq!(
        attrs(&sdp, Some(1)),
        [("rtpmap".to_owned(), Some("107 H263-1998/90000".to_owned()))]
    );
    assert_eq!(sdp.effective_address(2), None);
    assert_eq!(sdp.lines().len(), 9);
    assert_eq!(sdp.media()[0].line_range(), 4..6);
    assert_eq!(sdp.media()[1].line_range(), 6..9);
    assert_eq!(sdp.session_lines().len(), 4);
}

#[test]
fn webrtc_offer_exposes_security_and_ice_lines() {
    let sdp = Sdp::parse(WEBRTC_OFFER).unwrap();
    assert_eq!(sdp.media().len(), 2);
    assert_eq!(sdp.session_direction(), None);
    assert_eq!(
        attrs(&sdp, None),
        [
            ("group".to_owned(), Some("BUNDLE 0 1".to_owned())),
            ("extmap-allow-mixed".to_owned(), None),
            ("msid-semantic".to_owned(), Some(" WMS stream1".to_owned())),
        ]
    );
    let audio = &sdp.media()[0];
    assert_eq!(audio.proto(), "UDP/TLS/RTP/SAVPF");
    assert_eq!(audio.port(), 9);
    assert_eq!(audio.format_list(), "111 63 9 0 8 13 110 126");
    assert_eq!(audio.formats().count(), 8);
    assert!(audio.rtcp_mux());
    let rtcp = audio.rtcp().unwrap();
    assert_eq!(rtcp.port(), 9);
    let rc = rtcp.connection().unwrap();
    assert_eq!((rc.nettype(), rc.addrtype()), ("IN", "IP4"));
    assert_eq!(rc.address(), Address::Ip(IpAddr::V4(Ipv4Addr::UNSPECIFIED)));
    assert_eq!(audio.direction(), Some(Direction::SendRecv));
    assert_eq!(sdp.media()[1].direction(), Some(Direction::RecvOnly));
    assert_eq!(sdp.effective_direction(1), Some(Direction::RecvOnly));

    let count = |i: usize, name: &str| {
        sdp.media_attributes(i)
            .unwrap()
            .filter(|a| a.name() == name)
            .count()
    };
    assert_eq!(count(0, "candidate"), 2);
    assert_eq!(count(0, "ice-ufrag"), 1);
    assert_eq!(count(0, "fingerprint"), 1);
    assert_eq!(count(1, "candidate"), 0);
    assert_eq!(count(1, "fingerprint"), 1);
    assert_eq!(count(1, "rtcp-mux"), 1);
    let fp = sdp
        .media_attributes(0)
        .unwrap()
        .find(|a| a.name() == "fingerprint")
        .unwrap();
    assert_eq!(
        fp.value_str().unwrap(),
        "sha-256 49:66:12:17:0D:1C:91:AE:57:4C:C6:36:DD:D5:97:D2:7D:62:C9:9A:7F:B9:A3:F4:70:03:E7:43:91:73:23:5E"
    );
    assert_eq!(sdp.lines()[fp.line_index()].kind(), 'a');
    assert_eq!(fp.line_index(), 15);
}

#[test]
fn crlf_lf_and_mixed_endings_give_the_same_fields() {
    let crlf = b"v=0\r\no=- 1 2 IN IP4 192.0.2.1\r\ns=x\r\nc=IN IP4 192.0.2.2\r\nt=0 0\r\nm=audio 1000 RTP/AVP 0 8\r\na=sendonly\r\n";
    let lf: Vec<u8> = String::from_utf8_lossy(crlf)
        .replace("\r\n", "\n")
        .into_bytes();
    let mixed = b"v=0\no=- 1 2 IN IP4 192.0.2.1\r\ns=x\nc=IN IP4 192.0.2.2\r\nt=0 0\nm=audio 1000 RTP/AVP 0 8\r\na=sendonly";
    let a = Sdp::parse(crlf).unwrap();
    let b = Sdp::parse(&lf).unwrap();
    let c = Sdp::parse(mixed).unwrap();
    for sdp in [&a, &b, &c] {
        assert_eq!(sdp.origin().address(), Address::Ip(ip("192.0.2.1")));
        assert_eq!(sdp.session_name(), Some(&b"x"[..]));
        assert_eq!(sdp.effective_address(0), Some(Address::Ip(ip("192.0.2.2"))));
        assert_eq!(sdp.media()[0].port(), 1000);
        assert_eq!(sdp.media()[0].formats().collect::<Vec<_>>(), ["0", "8"]);
        assert_eq!(sdp.effective_direction(0), Some(Direction::SendOnly));
        assert_eq!(sdp.lines().len(), 7);
    }
    assert!(a.lines().iter().all(|l| l.ending() == LineEnding::CrLf));
    assert!(b.lines().iter().all(|l| l.ending() == LineEnding::Lf));
    assert_eq!(a.line_ending(), LineEnding::CrLf);
    assert_eq!(b.line_ending(), LineEnding::Lf);
    let endings: Vec<_> = c.lines().iter().map(|l| l.ending()).collect();
    use LineEnding::*;
    assert_eq!(endings, [Lf, CrLf, Lf, CrLf, Lf, CrLf, Unterminated]);
    assert_eq!(c.line_ending(), Lf);
    assert_eq!(c.lines()[1].span(), 4..28);
    assert_eq!(c.lines()[1].span_with_ending(), 4..30);
}

#[test]
fn empty_lines_are_tolerated_and_counted_in_line_numbers() {
    let body =
        b"\r\n\nv=0\r\no=- 1 1 IN IP4 192.0.2.1\r\n\r\ns=-\r\nm=audio 5 RTP/AVP 0\r\n\r\n\r\n";
    let sdp = Sdp::parse(body).unwrap();
    let numbers: Vec<_> = sdp.lines().iter().map(|l| (l.kind(), l.number())).collect();
    assert_eq!(numbers, [('v', 3), ('o', 4), ('s', 6), ('m', 7)]);
    assert_eq!(sdp.media()[0].line_range(), 3..4);
}

#[test]
fn session_connection_applies_unless_media_overrides() {
    let body = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 198.51.100.1\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0\r\nm=video 5002 RTP/AVP 96\r\nc=IN IP4 198.51.100.2\r\nc=IN IP4 198.51.100.3\r\n";
    let sdp = Sdp::parse(body).unwrap();
    assert_eq!(sdp.session_connections().len(), 1);
    assert!(sdp.media()[0].connection().is_none());
    assert_eq!(
        sdp.effective_address(0),
        Some(Address::Ip(ip("198.51.100.1")))
    );
    assert_eq!(sdp.effective_connection(0).unwrap().line_index(), 3);
    // The first of several media c= lines is the one that counts.
    assert_eq!(sdp.media()[1].connections().len(), 2);
    assert_eq!(
        sdp.effective_address(1),
        Some(Address::Ip(ip("198.51.100.2")))
    );
    assert_eq!(
        sdp.media()[1].connections()[1].address(),
        Address::Ip(ip("198.51.100.3"))
    );
}

#[test]
fn multicast_suffixes_are_kept_apart_from_the_address() {
    let body = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 224.2.1.1/127/3\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0\r\nc=IN IP4 233.252.0.1/64\r\nm=video 5002 RTP/AVP 96\r\nc=IN IP6 ff15::101/3\r\n";
    let sdp = Sdp::parse(body).unwrap();
    let s = sdp.session_connection().unwrap();
    assert_eq!(s.address_text(), "224.2.1.1");
    assert_eq!(s.suffix(), Some("127/3"));
    assert_eq!(s.address(), Address::Ip(ip("224.2.1.1")));
    let a = sdp.media()[0].connection().unwrap();
    assert_eq!((a.address_text(), a.suffix()), ("233.252.0.1", Some("64")));
    let v = sdp.media()[1].connection().unwrap();
    assert_eq!((v.address_text(), v.suffix()), ("ff15::101", Some("3")));
    assert_eq!(v.address(), Address::Ip(ip("ff15::101")));
}

#[test]
fn media_port_count_and_protocols() {
    let body = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\n\
m=video 49170/2 RTP/AVP 31\r\n\
m=audio 0 RTP/SAVP 0\r\n\
m=audio 1 RTP/AVPF 0\r\n\
m=audio 2 RTP/SAVPF 0\r\n\
m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n\
m=message 7394 TCP/MSRP *\r\n\
m=audio 3 udp 0\r\n\
m=image 4 udptl t38\r\n\
m=audio 65535 RTP/AVP\r\n";
    let sdp = Sdp::parse(body).unwrap();
    let got: Vec<_> = sdp
        .media()
        .iter()
        .map(|m| {
            (
                m.media_type(),
                m.port(),
                m.port_count(),
                m.proto(),
                m.format_list(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("video", 49170, Some(2), "RTP/AVP", "31"),
            ("audio", 0, None, "RTP/SAVP", "0"),
            ("audio", 1, None, "RTP/AVPF", "0"),
            ("audio", 2, None, "RTP/SAVPF", "0"),
            (
                "application",
                9,
                None,
                "UDP/DTLS/SCTP",
                "webrtc-datachannel"
            ),
            ("message", 7394, None, "TCP/MSRP", "*"),
            ("audio", 3, None, "udp", "0"),
            ("image", 4, None, "udptl", "t38"),
            ("audio", 65535, None, "RTP/AVP", ""),
        ]
    );
}

#[test]
fn rtcp_with_and_without_address_and_rtcp_mux() {
    let body = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\n\
m=audio 49170 RTP/AVP 0\r\na=rtcp:53020\r\n\
m=audio 49172 RTP/AVP 0\r\na=rtcp:53022 IN IP6 2001:db8::7\r\na=rtcp:1 IN IP4 192.0.2.9\r\n\
m=audio 49174 RTP/AVP 0\r\na=rtcp-mux\r\n\
m=audio 49176 RTP/AVP 0\r\na=rtcp-fb:0 nack\r\na=rtcp-rsize\r\n";
    let sdp = Sdp::parse(body).unwrap();
    let m = sdp.media();
    let r0 = m[0].rtcp().unwrap();
    assert_eq!(r0.port(), 53020);
    assert!(r0.connection().is_none());
    assert!(!m[0].rtcp_mux());
    // The first a=rtcp is the one used.
    let r1 = m[1].rtcp().unwrap();
    assert_eq!(r1.port(), 53022);
    assert_eq!(r1.line_index(), 7);
    assert_eq!(
        r1.connection().unwrap().address(),
        Address::Ip(ip("2001:db8::7"))
    );
    assert!(m[2].rtcp().is_none());
    assert!(m[2].rtcp_mux());
    assert!(m[3].rtcp().is_none());
    assert!(!m[3].rtcp_mux());
}

#[test]
fn session_level_rtcp_attributes_are_opaque() {
    let body = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\na=rtcp:garbage\r\nt=0 0\r\nm=audio 1 RTP/AVP 0\r\n";
    let sdp = Sdp::parse(body).unwrap();
    assert_eq!(
        attrs(&sdp, None),
        [("rtcp".to_owned(), Some("garbage".to_owned()))]
    );
}

#[test]
fn every_direction_at_both_levels_media_overrides_session() {
    let all = [
        Direction::SendRecv,
        Direction::SendOnly,
        Direction::RecvOnly,
        Direction::Inactive,
    ];
    for session in all {
        for media in all {
            let body = format!(
                "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\na={}\r\nm=audio 1 RTP/AVP 0\r\na={}\r\nm=audio 2 RTP/AVP 0\r\n",
                session.as_str(),
                media.as_str()
            );
            let sdp = Sdp::parse(body.as_bytes()).unwrap();
            assert_eq!(sdp.session_direction(), Some(session));
            assert_eq!(sdp.media()[0].direction(), Some(media));
            assert_eq!(sdp.effective_direction(0), Some(media));
            assert_eq!(sdp.media()[1].direction(), None);
            assert_eq!(sdp.effective_direction(1), Some(session));
        }
    }
    let none =
        Sdp::parse(b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nm=audio 1 RTP/AVP 0\r\n").unwrap();
    assert_eq!(none.session_direction(), None);
    assert_eq!(none.effective_direction(0), Some(Direction::SendRecv));
    assert_eq!(none.effective_direction(1), None);
    assert_eq!(Direction::from_name("sendonly"), Some(Direction::SendOnly));
    assert_eq!(Direction::from_name("send"), None);
}

#[test]
fn crypto_lines_are_visible() {
    let body = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\nm=audio 1 RTP/SAVP 0\r\n\
a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20|1:32\r\n\
a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:NzB4d1BINUAvLEw6UzF3WSJ+PSdFcGdUJShpX1Zj|2^20|1:32\r\n";
    let sdp = Sdp::parse(body).unwrap();
    let crypto: Vec<_> = sdp
        .media_attributes(0)
        .unwrap()
        .filter(|a| a.name() == "crypto")
        .map(|a| a.value_str().unwrap().split(' ').next().unwrap().to_owned())
        .collect();
    assert_eq!(crypto, ["1", "2"]);
}

#[test]
fn hostname_ipv6_and_ipv4_mapped_addresses() {
    let body =
        b"v=0\r\no=- 1 1 IN IP6 ::ffff:192.0.2.2\r\ns=-\r\nc=IN IP4 media.example.com\r\nt=0 0\r\n\
m=audio 1 RTP/AVP 0\r\nc=IN IP6 2001:DB8:0:0::10\r\n\
m=audio 2 RTP/AVP 0\r\nc=IN IP6 ::ffff:192.0.2.3\r\n\
m=audio 3 RTP/AVP 0\r\nc=IN IP4 ::1\r\n\
m=audio 4 RTP/AVP 0\r\nc=IN XY foo\r\n\
m=audio 5 RTP/AVP 0\r\nc=IN ip4 10.1.2.3\r\n";
    let sdp = Sdp::parse(body).unwrap();
    let mapped = Ipv4Addr::new(192, 0, 2, 2).to_ipv6_mapped();
    assert_eq!(sdp.origin().address(), Address::Ip(IpAddr::V6(mapped)));
    assert_eq!(
        sdp.session_connection().unwrap().address(),
        Address::Host("media.example.com")
    );
    assert_eq!(
        sdp.effective_address(0),
        Some(Address::Ip(IpAddr::V6(Ipv6Addr::new(
            0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10
        ))))
    );
    assert_eq!(
        sdp.media()[0].connection().unwrap().address_text(),
        "2001:DB8:0:0::10"
    );
    assert_eq!(
        sdp.effective_address(1).unwrap().ip(),
        Some(IpAddr::V6(Ipv4Addr::new(192, 0, 2, 3).to_ipv6_mapped()))
    );
    // A literal of the wrong family is kept as text, not trusted.
    assert_eq!(sdp.effective_address(2), Some(Address::Host("::1")));
    assert_eq!(sdp.effective_address(3), Some(Address::Host("foo")));
    assert_eq!(sdp.effective_address(4), Some(Address::Ip(ip("10.1.2.3"))));
    assert_eq!(Address::Host("x").ip(), None);
}

#[test]
fn unknown_lines_and_non_utf8_free_text_are_kept_opaque() {
    let body = b"v=0\r\no=alice smith 1 2 IN IP4 192.0.2.1\r\ns=caf\xe9\r\ni=\xff\xfe\r\nt=0 0\r\nq=what\r\nm=audio 1 RTP/AVP 0\r\nb=AS:64\r\na=label:\xe9t\xe9\r\nZ=upper\r\n";
    let sdp = Sdp::parse(body).unwrap();
    // Usernames with blanks are accepted: the last five fields are unambiguous.
    assert_eq!(sdp.origin().username(), "alice smith");
    assert_eq!(sdp.origin().session_id(), "1");
    assert_eq!(sdp.session_name(), Some(&b"caf\xe9"[..]));
    let kinds: String = sdp.lines().iter().map(|l| l.kind()).collect();
    assert_eq!(kinds, "vositqmbaZ");
    assert_eq!(sdp.lines()[5].value(), b"what");
    assert_eq!(sdp.lines()[3].value_str(), None);
    let label = sdp.media_attributes(0).unwrap().next().unwrap();
    assert_eq!(label.name(), "label");
    assert_eq!(label.value(), Some(&b"\xe9t\xe9"[..]));
    assert_eq!(label.value_str(), None);
    assert_eq!(sdp.input(), body);
}

#[test]
fn later_origin_and_name_lines_are_opaque() {
    let body = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=first\r\no=garbage\r\ns=second\r\nm=audio 1 RTP/AVP 0\r\no=x\r\n";
    let sdp = Sdp::parse(body).unwrap();
    assert_eq!(sdp.origin().line_index(), 1);
    assert_eq!(sdp.session_name(), Some(&b"first"[..]));
}

#[test]
fn blanks_between_fields_are_tolerated() {
    let body = b"v=0\r\no=-  1 1 IN\tIP4 192.0.2.1\r\ns=-\r\nc=IN  IP4  192.0.2.5 \r\nm=audio  7  RTP/AVP  0  8 \r\na=rtcp:9  IN IP4 192.0.2.6\r\n";
    let sdp = Sdp::parse(body).unwrap();
    assert_eq!(sdp.origin().address_text(), "192.0.2.1");
    assert_eq!(
        sdp.session_connection().unwrap().address_text(),
        "192.0.2.5"
    );
    let m = &sdp.media()[0];
    assert_eq!(
        (m.port(), m.proto(), m.format_list()),
        (7, "RTP/AVP", "0  8")
    );
    assert_eq!(
        m.rtcp().unwrap().connection().unwrap().address_text(),
        "192.0.2.6"
    );
}
