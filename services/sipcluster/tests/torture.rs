//! Every RFC 4475 and RFC 5118 torture message, sent unchanged to a running all-in-one,
//! once by UDP (one datagram each) and once by TCP (a fresh connection each), with the
//! handling its RFC section describes asserted for each (the parser-level checks of the
//! same corpus are in crates/sip-core/tests/torture.rs; this is the whole server).
//!
//! * A request that came on a connection is answered on that connection, and one that
//!   came by datagram by datagram, whatever transport its Via names (RFC 3261 §18.2.2;
//!   many of these messages say TCP or TLS in their Via).
//! * Every request is answered within 2 s, unless its section says to wait or drop it.
//! * A valid request never gets a 5xx; "accept" below means any answer but 400 or 5xx
//!   (the server is a registrar for example.com that challenges, so a valid message
//!   mostly gets 401/407/404/480).
//! * Before each message the server must still answer an OPTIONS.
//!
//! Several messages share one RFC 3261 transaction key (branch + sent-by): sent to one
//! server within a transaction's lifetime the later one would rightly be absorbed as a
//! retransmission, so each of those goes to a server that has not seen that key.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Server, workdir};

/// What a message should get, from its RFC section.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// A valid request: answered within 2 s, not 400, not 5xx.
    Accept,
    /// Answered with exactly this status within 2 s.
    Status(u16),
    /// Answered within 2 s with one of these.
    OneOf(&'static [u16]),
    /// The RFC allows rejecting with 400 or being liberal: answered within 2 s, not 5xx.
    BadRequestOrAccept,
    /// A response: never answered.
    Drop,
    /// TCP, Content-Length beyond the data: the server waits for the rest (no answer).
    Wait,
    /// TCP, framing broken beyond repair: the connection is closed (a 400 may come first).
    Close,
}

use Expect::*;

/// (file, section, over UDP, over TCP). Each expectation is the RFC section's own words
/// for a proxy/registrar, quoted in part where the choice is not obvious.
const CORPUS: &[(&str, &str, Expect, Expect)] = &[
    // RFC 4475 §3.1.1: valid messages. "All elements should treat this as a well-formed
    // request" (§3.1.1.1), and alike for each.
    (
        "wsinv",
        "RFC 4475 §3.1.1.1 short tortuous INVITE",
        Accept,
        Accept,
    ),
    (
        "intmeth",
        "RFC 4475 §3.1.1.2 wide range of valid characters",
        Accept,
        Accept,
    ),
    (
        "esc01",
        "RFC 4475 §3.1.1.3 valid use of % escaping",
        Accept,
        Accept,
    ),
    (
        "escnull",
        "RFC 4475 §3.1.1.4 escaped nulls in URIs",
        Accept,
        Accept,
    ),
    (
        "esc02",
        "RFC 4475 §3.1.1.5 % when it is not an escape",
        Accept,
        Accept,
    ),
    (
        "lwsdisp",
        "RFC 4475 §3.1.1.6 no LWS between display name and <",
        Accept,
        Accept,
    ),
    (
        "longreq",
        "RFC 4475 §3.1.1.7 long values in header fields",
        Accept,
        Accept,
    ),
    // "the element should process the REGISTER and ignore the trailing octets" (UDP); on a
    // stream the trailing INVITE is a message of its own: the REGISTER's answer comes first.
    (
        "dblreq",
        "RFC 4475 §3.1.1.8 extra trailing octets in a UDP datagram",
        Accept,
        Accept,
    ),
    (
        "semiuri",
        "RFC 4475 §3.1.1.9 semicolon-separated parameters in URI user part",
        Accept,
        Accept,
    ),
    (
        "transports",
        "RFC 4475 §3.1.1.10 varied and unknown transport types",
        Accept,
        Accept,
    ),
    (
        "mpart01",
        "RFC 4475 §3.1.1.11 multipart MIME message",
        Accept,
        Accept,
    ),
    (
        "unreason",
        "RFC 4475 §3.1.1.12 unusual reason phrase (a response)",
        Drop,
        Drop,
    ),
    (
        "noreason",
        "RFC 4475 §3.1.1.13 empty reason phrase (a response)",
        Drop,
        Drop,
    ),
    // §3.1.2: invalid messages.
    (
        "badinv01",
        "RFC 4475 §3.1.2.1 extraneous header field separators: 400",
        Status(400),
        Status(400),
    ),
    // UDP: RFC 3261 §18.3 "the element SHOULD generate a 400"; TCP: the rest may still come.
    (
        "clerr",
        "RFC 4475 §3.1.2.2 Content-Length larger than message",
        Status(400),
        Wait,
    ),
    // "If a request like this arrives over TCP, the framing error is not recoverable, and
    // the connection should be closed."
    (
        "ncl",
        "RFC 4475 §3.1.2.3 negative Content-Length",
        Status(400),
        Close,
    ),
    (
        "scalar02",
        "RFC 4475 §3.1.2.4 request scalar fields with overlarge values: 400",
        Status(400),
        Status(400),
    ),
    (
        "scalarlg",
        "RFC 4475 §3.1.2.5 response scalar fields with overlarge values: discard",
        Drop,
        Drop,
    ),
    (
        "quotbal",
        "RFC 4475 §3.1.2.6 unterminated quoted string in display name",
        BadRequestOrAccept,
        BadRequestOrAccept,
    ),
    (
        "ltgtruri",
        "RFC 4475 §3.1.2.7 <> enclosing Request-URI",
        BadRequestOrAccept,
        BadRequestOrAccept,
    ),
    (
        "lwsruri",
        "RFC 4475 §3.1.2.8 malformed SIP Request-URI (embedded LWS)",
        BadRequestOrAccept,
        BadRequestOrAccept,
    ),
    (
        "lwsstart",
        "RFC 4475 §3.1.2.9 multiple SP separating request-line elements",
        BadRequestOrAccept,
        BadRequestOrAccept,
    ),
    (
        "trws",
        "RFC 4475 §3.1.2.10 SP characters at end of request-line",
        BadRequestOrAccept,
        BadRequestOrAccept,
    ),
    (
        "escruri",
        "RFC 4475 §3.1.2.11 escaped headers in SIP Request-URI",
        BadRequestOrAccept,
        BadRequestOrAccept,
    ),
    (
        "baddate",
        "RFC 4475 §3.1.2.12 invalid time zone in Date header field",
        BadRequestOrAccept,
        BadRequestOrAccept,
    ),
    (
        "regbadct",
        "RFC 4475 §3.1.2.13 failure to enclose name-addr URI in <>",
        BadRequestOrAccept,
        BadRequestOrAccept,
    ),
    (
        "badaspec",
        "RFC 4475 §3.1.2.14 spaces within addr-spec",
        BadRequestOrAccept,
        BadRequestOrAccept,
    ),
    (
        "baddn",
        "RFC 4475 §3.1.2.15 non-token characters in display name",
        BadRequestOrAccept,
        BadRequestOrAccept,
    ),
    (
        "badvers",
        "RFC 4475 §3.1.2.16 unknown protocol version: 505",
        Status(505),
        Status(505),
    ),
    (
        "mismatch01",
        "RFC 4475 §3.1.2.17 start line and CSeq method mismatch: 400",
        Status(400),
        Status(400),
    ),
    // "should respond with a 501 ... A 400 Bad Request is also acceptable"
    (
        "mismatch02",
        "RFC 4475 §3.1.2.18 unknown method with CSeq method mismatch",
        OneOf(&[501, 400]),
        OneOf(&[501, 400]),
    ),
    (
        "bigcode",
        "RFC 4475 §3.1.2.19 overlarge response code: drop",
        Drop,
        Drop,
    ),
    // §3.2: "could reject the request with a 400 ... or fall back to the RFC 2543-style
    // transaction identifier"
    (
        "badbranch",
        "RFC 4475 §3.2.1 missing transaction identifier",
        BadRequestOrAccept,
        BadRequestOrAccept,
    ),
    // §3.3: application layer semantics.
    (
        "insuf",
        "RFC 4475 §3.3.1 missing required header fields: ideally 400",
        Status(400),
        Status(400),
    ),
    (
        "unkscm",
        "RFC 4475 §3.3.2 Request-URI with unknown scheme: 416",
        Status(416),
        Status(416),
    ),
    (
        "novelsc",
        "RFC 4475 §3.3.3 Request-URI with known but atypical scheme: 416",
        Status(416),
        Status(416),
    ),
    // A registrar "would reject this request with a 400"; after its challenge (RFC 3261
    // §10.3 authenticates before it reads the AOR) a 401 is as right.
    (
        "unksm2",
        "RFC 4475 §3.3.4 unknown URI schemes in header fields",
        BadRequestOrAccept,
        BadRequestOrAccept,
    ),
    (
        "bext01",
        "RFC 4475 §3.3.5 Proxy-Require and Require: 420",
        Status(420),
        Status(420),
    ),
    (
        "invut",
        "RFC 4475 §3.3.6 unknown Content-Type (a proxy processes it)",
        Accept,
        Accept,
    ),
    // "A registrar that does care about challenge-response authentication will reject
    // this request with a 401"
    (
        "regaut01",
        "RFC 4475 §3.3.7 unknown authorization scheme",
        Status(401),
        Status(401),
    ),
    (
        "multi01",
        "RFC 4475 §3.3.8 multiple values in single value required fields: 400",
        Status(400),
        Status(400),
    ),
    (
        "mcl01",
        "RFC 4475 §3.3.9 multiple Content-Length values",
        Status(400),
        Close,
    ),
    (
        "bcast",
        "RFC 4475 §3.3.10 200 OK with broadcast Via: proxies should drop",
        Drop,
        Drop,
    ),
    (
        "zeromf",
        "RFC 4475 §3.3.11 Max-Forwards of zero: 483",
        Status(483),
        Status(483),
    ),
    (
        "cparam01",
        "RFC 4475 §3.3.12 REGISTER with a contact header parameter",
        Accept,
        Accept,
    ),
    (
        "cparam02",
        "RFC 4475 §3.3.13 REGISTER with a url parameter",
        Accept,
        Accept,
    ),
    (
        "regescrt",
        "RFC 4475 §3.3.14 REGISTER with a URL escaped header",
        Accept,
        Accept,
    ),
    (
        "sdp01",
        "RFC 4475 §3.3.15 unacceptable Accept offering (a proxy processes it)",
        Accept,
        Accept,
    ),
    // §3.4.1 "should be accepted by RFC 3261 elements"; on a stream Content-Length is
    // mandatory (RFC 3261 §18.3), so there the framing cannot be recovered.
    (
        "inv2543",
        "RFC 4475 §3.4.1 INVITE with RFC 2543 syntax",
        Accept,
        Close,
    ),
    // RFC 5118 §4.
    (
        "ipv6-good",
        "RFC 5118 §4.1 valid SIP message with an IPv6 reference",
        Accept,
        Accept,
    ),
    (
        "ipv6-bad",
        "RFC 5118 §4.2 IPv6 reference without brackets: 400",
        Status(400),
        Status(400),
    ),
    (
        "port-ambiguous",
        "RFC 5118 §4.3 port ambiguous in a SIP URI (well-formed)",
        Accept,
        Accept,
    ),
    (
        "port-unambiguous",
        "RFC 5118 §4.4 port unambiguous in a SIP URI",
        Accept,
        Accept,
    ),
    (
        "via-received-param-with-delim",
        "RFC 5118 §4.5 IPv6 in received with delimiters",
        Accept,
        Accept,
    ),
    (
        "via-received-param-no-delim",
        "RFC 5118 §4.5 IPv6 in received without delimiters",
        Accept,
        Accept,
    ),
    (
        "ipv6-in-sdp",
        "RFC 5118 §4.6 SIP request with IPv6 addresses in SDP body",
        Accept,
        Accept,
    ),
    (
        "mult-ip-in-header",
        "RFC 5118 §4.7 multiple IP addresses in SIP headers",
        Accept,
        Accept,
    ),
    (
        "mult-ip-in-sdp",
        "RFC 5118 §4.8 multiple IP addresses in SDP",
        Accept,
        Accept,
    ),
    (
        "ipv4-mapped-ipv6",
        "RFC 5118 §4.9 IPv4-mapped IPv6 addresses",
        Accept,
        Accept,
    ),
    // "an implementation must tolerate both"; RFC 5954 later corrected the RFC 3261 ABNF
    // that made the 3-colon form look valid, and this parser follows RFC 5954: a 400
    // (never a 5xx, never silence) is what it gives.
    (
        "ipv6-bug-abnf-3-colons",
        "RFC 5118 §4.10 IPv6 reference bug in RFC 3261 ABNF (3 colons)",
        BadRequestOrAccept,
        BadRequestOrAccept,
    ),
    (
        "ipv6-correct-abnf-2-colons",
        "RFC 5118 §4.10 the corrected 2-colon form",
        Accept,
        Accept,
    ),
];

/// How long a request may wait for its answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../crates/sip-core/tests/torture")
}

/// The status codes of the responses in `data` (a stream, or one datagram).
fn statuses(data: &[u8]) -> Vec<u16> {
    let mut out = Vec::new();
    let mut rest = data;
    while let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&rest[..end]);
        if let Some(code) = head
            .strip_prefix("SIP/2.0 ")
            .and_then(|s| s.get(..3))
            .and_then(|c| c.parse().ok())
        {
            out.push(code);
        }
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                let name = name.trim().to_ascii_lowercase();
                (name == "content-length" || name == "l").then(|| value.trim().parse().ok())?
            })
            .unwrap_or(0);
        rest = rest.get(end + 4 + len..).unwrap_or_default();
    }
    out
}

/// What came back for one message.
#[derive(Debug, Default)]
struct Seen {
    codes: Vec<u16>,
    closed: bool,
}

impl Seen {
    fn final_code(&self) -> Option<u16> {
        self.codes.iter().copied().find(|c| *c >= 200)
    }
}

fn over_udp(server: SocketAddr, bytes: &[u8], wait: Duration) -> Seen {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    sock.send_to(bytes, server).unwrap();
    let mut seen = Seen::default();
    let deadline = Instant::now() + wait;
    let mut buf = vec![0u8; 65536];
    while Instant::now() < deadline && seen.final_code().is_none() {
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            seen.codes.extend(statuses(&buf[..n]));
        }
    }
    seen
}

fn over_tcp(server: SocketAddr, bytes: &[u8], wait: Duration, until_closed: bool) -> Seen {
    let mut conn = TcpStream::connect(server).unwrap();
    conn.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    conn.write_all(bytes).unwrap();
    let mut seen = Seen::default();
    let mut data = Vec::new();
    let deadline = Instant::now() + wait;
    let mut buf = vec![0u8; 65536];
    while Instant::now() < deadline && (until_closed || seen.final_code().is_none()) {
        match conn.read(&mut buf) {
            Ok(0) => {
                seen.closed = true;
                break;
            }
            Ok(n) => {
                data.extend_from_slice(&buf[..n]);
                seen.codes = statuses(&data);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                seen.closed = true;
                break;
            }
        }
    }
    seen
}

/// Does `seen` meet `expect`? `None` when it does, else why not.
fn check(expect: Expect, seen: &Seen) -> Option<String> {
    let code = seen.final_code();
    let bad = |why: &str| {
        Some(format!(
            "{why}; got {:?} (closed: {})",
            seen.codes, seen.closed
        ))
    };
    match expect {
        Accept => match code {
            None => bad("no final answer within 2 s"),
            Some(c) if c == 400 || c >= 500 => bad("a valid request must not get 400 or 5xx"),
            Some(_) => None,
        },
        Status(want) => (code != Some(want)).then(|| format!("want {want}; got {:?}", seen.codes)),
        OneOf(want) => match code {
            Some(c) if want.contains(&c) => None,
            _ => bad(&format!("want one of {want:?}")),
        },
        BadRequestOrAccept => match code {
            None => bad("no final answer within 2 s"),
            Some(c) if c >= 500 => bad("400 or a liberal acceptance, never a 5xx"),
            Some(_) => None,
        },
        Drop | Wait => {
            if seen.codes.is_empty() {
                None
            } else {
                bad("must not be answered")
            }
        }
        Close => {
            if !seen.closed {
                bad("the connection must be closed")
            } else if seen.codes.iter().any(|c| *c != 400) {
                bad("only a 400 may come before the close")
            } else {
                None
            }
        }
    }
}

/// The top Via line as written: with the branch and sent-by it carries the transaction
/// key, so two messages with the same one go to different servers.
fn top_via_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .lines()
        .skip(1)
        .find(|l| {
            let l = l.to_ascii_lowercase();
            l.starts_with("via") || l.starts_with("v:") || l.starts_with("v ")
        })
        .unwrap_or_default()
        .to_owned()
}

/// An OPTIONS to the server itself must still get its 200.
fn assert_alive(server: &mut Server, n: usize, after: &str) {
    server.assert_alive();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let me = sock.local_addr().unwrap();
    let host = server.sip;
    let ping = format!(
        "OPTIONS sip:{host} SIP/2.0\r\nVia: SIP/2.0/UDP {me};rport;branch=z9hG4bK-alive-{n}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:probe@{host}>;tag=p{n}\r\nTo: <sip:{host}>\r\n\
         Call-ID: alive-{n}@{me}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    let seen = over_udp(server.sip, ping.as_bytes(), Duration::from_secs(2));
    assert_eq!(
        seen.final_code(),
        Some(200),
        "server not answering after {after}"
    );
}

#[test]
fn every_torture_message_gets_what_its_rfc_section_says_over_udp_and_tcp() {
    let dir = workdir("torture");
    let mut servers: Vec<Server> = Vec::new();
    let mut failures = Vec::new();
    let mut report = String::new();
    for (pass, tcp) in [("UDP", false), ("TCP", true)] {
        // The servers of this pass, each with the transaction keys it has seen.
        let mut seen_keys: Vec<(usize, Vec<String>)> = Vec::new();
        for (i, (file, section, udp_expect, tcp_expect)) in CORPUS.iter().enumerate() {
            let bytes = std::fs::read(corpus_dir().join(format!("{file}.dat"))).unwrap();
            let key = top_via_line(&bytes);
            let slot = match seen_keys.iter().position(|(_, keys)| !keys.contains(&key)) {
                Some(s) => s,
                None => {
                    let n = servers.len();
                    servers.push(Server::start_named(
                        &dir,
                        &format!("torture-{n}"),
                        &["--domain", "example.com"],
                    ));
                    seen_keys.push((n, Vec::new()));
                    seen_keys.len() - 1
                }
            };
            seen_keys[slot].1.push(key);
            let server = &mut servers[seen_keys[slot].0];
            assert_alive(server, i, "the previous message");
            let expect = if tcp { *tcp_expect } else { *udp_expect };
            let wait = match expect {
                Drop => Duration::from_millis(500),
                Wait => Duration::from_secs(1),
                _ => ANSWER_WITHIN,
            };
            let seen = if tcp {
                over_tcp(
                    server.sip,
                    &bytes,
                    wait,
                    matches!(expect, Close | Drop | Wait),
                )
            } else {
                over_udp(server.sip, &bytes, wait)
            };
            let verdict = check(expect, &seen);
            report.push_str(&format!(
                "{pass} {file:<32} {:<22} {:?}{}\n",
                format!("{expect:?}"),
                seen.codes,
                if seen.closed { " closed" } else { "" }
            ));
            if let Some(why) = verdict {
                failures.push(format!("{pass} {file} ({section}): {why}"));
            }
            assert_alive(server, i + 1000, file);
        }
    }
    println!("{report}");
    assert!(
        failures.is_empty(),
        "{} of {} replays not handled as their RFC says:\n{}\n\nall:\n{report}",
        failures.len(),
        CORPUS.len() * 2,
        failures.join("\n")
    );
    // One server per transaction key collision at most, not one per message.
    assert!(servers.len() <= 10, "{} servers", servers.len());
}

#[test]
fn the_corpus_is_complete() {
    // Every message of the corpus has its expectation here, and nothing else is listed.
    let mut files: Vec<String> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".dat").map(str::to_owned)
        })
        .collect();
    files.sort();
    let mut listed: Vec<String> = CORPUS.iter().map(|c| c.0.to_owned()).collect();
    listed.sort();
    assert_eq!(files, listed);
    assert_eq!(files.len(), 61);
}
