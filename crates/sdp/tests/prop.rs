//! Property test: random valid bodies parse to exactly what was generated, a
//! no-edit rewrite is the identity, and random edits change exactly the
//! edited fields.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;
use sdp::{Address, Connection, Direction, LineEnding, Sdp};

// ---------------------------------------------------------------- model --

#[derive(Debug, Clone, PartialEq)]
enum GAddr {
    Ip(IpAddr),
    /// A host name and whether it is declared `IP6`.
    Host(String, bool),
}

impl GAddr {
    fn addrtype(&self) -> &'static str {
        match self {
            GAddr::Ip(IpAddr::V4(_)) | GAddr::Host(_, false) => "IP4",
            GAddr::Ip(IpAddr::V6(_)) | GAddr::Host(_, true) => "IP6",
        }
    }

    fn text(&self) -> String {
        match self {
            GAddr::Ip(ip) => ip.to_string(),
            GAddr::Host(h, _) => h.clone(),
        }
    }

    fn expected(&self) -> Address<'_> {
        match self {
            GAddr::Ip(ip) => Address::Ip(*ip),
            GAddr::Host(h, _) => Address::Host(h),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct GConn {
    addr: GAddr,
    suffix: Option<String>,
}

impl GConn {
    fn render(&self) -> String {
        let mut s = format!("c=IN {} {}", self.addr.addrtype(), self.addr.text());
        if let Some(suffix) = &self.suffix {
            s.push('/');
            s.push_str(suffix);
        }
        s
    }

    /// What the rewriter promises for a `c=` edit.
    fn rewritten(&self, ip: IpAddr) -> GConn {
        let new = GAddr::Ip(ip);
        let keep = ip.is_multicast() && self.addr.addrtype() == new.addrtype();
        GConn {
            suffix: if keep { self.suffix.clone() } else { None },
            addr: new,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Item {
    Rtcp(u16, Option<GAddr>),
    Mux,
    Dir(Direction),
    Attr(String, Option<String>),
    Other(char, String),
}

impl Item {
    fn render(&self) -> String {
        match self {
            Item::Other(kind, value) => format!("{kind}={value}"),
            _ => {
                let (name, value) = self.attribute().unwrap();
                match value {
                    Some(v) => format!("a={name}:{v}"),
                    None => format!("a={name}"),
                }
            }
        }
    }

    fn attribute(&self) -> Option<(String, Option<String>)> {
        match self {
            Item::Rtcp(port, addr) => {
                let mut v = port.to_string();
                if let Some(a) = addr {
                    v.push_str(&format!(" IN {} {}", a.addrtype(), a.text()));
                }
                Some(("rtcp".into(), Some(v)))
            }
            Item::Mux => Some(("rtcp-mux".into(), None)),
            Item::Dir(d) => Some((d.as_str().into(), None)),
            Item::Attr(n, v) => Some((n.clone(), v.clone())),
            Item::Other(..) => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct GMedia {
    media_type: String,
    port: u16,
    count: Option<u16>,
    proto: String,
    formats: Vec<String>,
    info: Option<String>,
    conn: Option<GConn>,
    bandwidth: Option<u32>,
    items: Vec<Item>,
}

#[derive(Debug, Clone, PartialEq)]
struct GSdp {
    username: String,
    session_id: String,
    session_version: String,
    origin: GAddr,
    name: String,
    info: Option<String>,
    conn: Option<GConn>,
    bandwidth: Option<u32>,
    items: Vec<Item>,
    media: Vec<GMedia>,
    crlf: Vec<bool>,
    unterminated: bool,
    trailing_blank: bool,
}

fn render_lines(m: &GSdp) -> Vec<String> {
    let mut lines = vec![
        "v=0".to_owned(),
        format!(
            "o={} {} {} IN {} {}",
            m.username,
            m.session_id,
            m.session_version,
            m.origin.addrtype(),
            m.origin.text()
        ),
        format!("s={}", m.name),
    ];
    if let Some(i) = &m.info {
        lines.push(format!("i={i}"));
    }
    if let Some(c) = &m.conn {
        lines.push(c.render());
    }
    if let Some(b) = m.bandwidth {
        lines.push(format!("b=AS:{b}"));
    }
    lines.push("t=0 0".to_owned());
    lines.extend(m.items.iter().map(Item::render));
    for media in &m.media {
        let port = match media.count {
            Some(c) => format!("{}/{c}", media.port),
            None => media.port.to_string(),
        };
        lines.push(format!(
            "m={} {port} {} {}",
            media.media_type,
            media.proto,
            media.formats.join(" ")
        ));
        if let Some(i) = &media.info {
            lines.push(format!("i={i}"));
        }
        if let Some(c) = &media.conn {
            lines.push(c.render());
        }
        if let Some(b) = media.bandwidth {
            lines.push(format!("b=AS:{b}"));
        }
        lines.extend(media.items.iter().map(Item::render));
    }
    lines
}

fn render(m: &GSdp) -> Vec<u8> {
    let lines = render_lines(m);
    let mut out = Vec::new();
    let last = lines.len() - 1;
    for (i, line) in lines.iter().enumerate() {
        out.extend_from_slice(line.as_bytes());
        if i == last && m.unterminated {
            break;
        }
        out.extend_from_slice(if m.crlf[i % m.crlf.len()] {
            b"\r\n"
        } else {
            b"\n"
        });
    }
    if m.trailing_blank && !m.unterminated {
        out.extend_from_slice(b"\r\n");
    }
    out
}

// ----------------------------------------------------------- strategies --

fn arb_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|o| IpAddr::V4(Ipv4Addr::from(o))),
        (224u8..=239, any::<[u8; 3]>())
            .prop_map(|(a, [b, c, d])| IpAddr::V4(Ipv4Addr::new(a, b, c, d))),
        any::<u128>().prop_map(|v| IpAddr::V6(Ipv6Addr::from(v))),
        any::<[u8; 4]>().prop_map(|o| IpAddr::V6(Ipv4Addr::from(o).to_ipv6_mapped())),
        (any::<u16>(), any::<u32>()).prop_map(|(g, h)| IpAddr::V6(Ipv6Addr::new(
            0xff15,
            0,
            0,
            0,
            0,
            g,
            (h >> 16) as u16,
            h as u16
        ))),
        Just(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
    ]
}

fn arb_addr() -> impl Strategy<Value = GAddr> {
    prop_oneof![
        3 => arb_ip().prop_map(GAddr::Ip),
        1 => ("[a-z]{1,8}(\\.[a-z]{1,8}){0,2}", any::<bool>()).prop_map(|(h, v6)| GAddr::Host(h, v6)),
    ]
}

fn arb_conn() -> impl Strategy<Value = GConn> {
    (
        arb_addr(),
        prop::option::of((any::<u8>(), prop::option::of(1u8..16))),
    )
        .prop_map(|(addr, suffix)| {
            let suffix = match (&addr, suffix) {
                (GAddr::Ip(IpAddr::V4(_)), Some((ttl, Some(count)))) => {
                    Some(format!("{ttl}/{count}"))
                }
                (GAddr::Ip(IpAddr::V4(_)), Some((ttl, None))) => Some(ttl.to_string()),
                (GAddr::Ip(IpAddr::V6(_)), Some((count, _))) => Some(count.to_string()),
                _ => None,
            };
            GConn { addr, suffix }
        })
}

fn arb_direction() -> impl Strategy<Value = Direction> {
    prop::sample::select(vec![
        Direction::SendRecv,
        Direction::SendOnly,
        Direction::RecvOnly,
        Direction::Inactive,
    ])
}

fn arb_generic_item() -> impl Strategy<Value = Item> {
    prop_oneof![
        "[A-Za-z0-9+/]{40}".prop_map(|k| Item::Attr(
            "crypto".into(),
            Some(format!("1 AES_CM_128_HMAC_SHA1_80 inline:{k}"))
        )),
        prop::collection::vec(any::<u8>(), 32).prop_map(|b| {
            let hex: Vec<String> = b.iter().map(|x| format!("{x:02X}")).collect();
            Item::Attr(
                "fingerprint".into(),
                Some(format!("sha-256 {}", hex.join(":"))),
            )
        }),
        "[a-zA-Z0-9]{4,8}".prop_map(|u| Item::Attr("ice-ufrag".into(), Some(u))),
        (any::<u32>(), any::<[u8; 4]>(), any::<u16>()).prop_map(|(f, ip, port)| Item::Attr(
            "candidate".into(),
            Some(format!(
                "{f} 1 udp 2122260223 {} {port} typ host",
                Ipv4Addr::from(ip)
            ))
        )),
        ("x-[a-z]{1,6}", prop::option::of("[ -~]{0,16}")).prop_map(|(n, v)| Item::Attr(n, v)),
        ("[kyz]", "[ -~]{0,12}").prop_map(|(k, v)| Item::Other(k.chars().next().unwrap(), v)),
    ]
}

fn arb_media_items() -> impl Strategy<Value = Vec<Item>> {
    (
        prop::option::of((any::<u16>(), prop::option::of(arb_addr()))),
        any::<bool>(),
        prop::option::of(arb_direction()),
        prop::collection::vec(arb_generic_item(), 0..6),
    )
        .prop_flat_map(|(rtcp, mux, dir, mut items)| {
            if let Some((port, addr)) = rtcp {
                items.push(Item::Rtcp(port, addr));
            }
            if mux {
                items.push(Item::Mux);
            }
            if let Some(d) = dir {
                items.push(Item::Dir(d));
            }
            Just(items).prop_shuffle()
        })
}

fn arb_session_items() -> impl Strategy<Value = Vec<Item>> {
    (
        prop::option::of(arb_direction()),
        prop::collection::vec(arb_generic_item(), 0..4),
    )
        .prop_flat_map(|(dir, mut items)| {
            if let Some(d) = dir {
                items.push(Item::Dir(d));
            }
            Just(items).prop_shuffle()
        })
}

prop_compose! {
    fn arb_media()(
        media_type in prop::sample::select(vec!["audio", "video", "application", "text", "message", "image"]),
        port in any::<u16>(),
        count in prop::option::of(1u16..=8),
        proto in prop::sample::select(vec![
            "RTP/AVP", "RTP/SAVP", "RTP/AVPF", "RTP/SAVPF", "UDP/TLS/RTP/SAVPF",
            "udp", "TCP/MSRP", "TCP/TLS/RTP/SAVP", "UDP/DTLS/SCTP",
        ]),
        formats in prop::collection::vec("[0-9]{1,3}|\\*|[a-z][a-z0-9-]{0,10}", 1..5),
        info in prop::option::of("[ -~]{0,12}"),
        conn in prop::option::of(arb_conn()),
        bandwidth in prop::option::of(0u32..100_000),
        items in arb_media_items(),
    ) -> GMedia {
        GMedia {
            media_type: media_type.to_owned(),
            port,
            count,
            proto: proto.to_owned(),
            formats,
            info,
            conn,
            bandwidth,
            items,
        }
    }
}

prop_compose! {
    fn arb_sdp()(
        username in "[a-z-]{1,8}",
        session_id in "[0-9]{1,12}",
        session_version in "[0-9]{1,12}",
        origin in arb_addr(),
        name in "[ -~]{0,12}",
        info in prop::option::of("[ -~]{0,12}"),
        conn in prop::option::of(arb_conn()),
        bandwidth in prop::option::of(0u32..100_000),
        items in arb_session_items(),
        media in prop::collection::vec(arb_media(), 0..6),
        crlf in prop::collection::vec(any::<bool>(), 1..16),
        unterminated in any::<bool>(),
        trailing_blank in any::<bool>(),
    ) -> GSdp {
        GSdp {
            username, session_id, session_version, origin, name, info, conn,
            bandwidth, items, media, crlf, unterminated, trailing_blank,
        }
    }
}

#[derive(Debug, Clone, Default)]
struct MediaEdits {
    conn: Option<IpAddr>,
    port: Option<u16>,
    rtcp: Option<(u16, Option<IpAddr>)>,
}

#[derive(Debug, Clone)]
struct Edits {
    origin: Option<IpAddr>,
    session: Option<IpAddr>,
    media: Vec<MediaEdits>,
}

fn arb_edits() -> impl Strategy<Value = Edits> {
    let media = (
        prop::option::of(arb_ip()),
        prop::option::of(any::<u16>()),
        prop::option::of((any::<u16>(), prop::option::of(arb_ip()))),
    )
        .prop_map(|(conn, port, rtcp)| MediaEdits { conn, port, rtcp });
    (
        prop::option::of(arb_ip()),
        prop::option::of(arb_ip()),
        prop::collection::vec(media, 6),
    )
        .prop_map(|(origin, session, media)| Edits {
            origin,
            session,
            media,
        })
}

/// The model after the edits, as the rewriter documents them.
fn apply(model: &GSdp, edits: &Edits) -> GSdp {
    let mut m = model.clone();
    if let Some(ip) = edits.origin {
        m.origin = GAddr::Ip(ip);
    }
    if let Some(ip) = edits.session {
        m.conn = Some(match &m.conn {
            Some(c) => c.rewritten(ip),
            None => GConn {
                addr: GAddr::Ip(ip),
                suffix: None,
            },
        });
    }
    for (media, e) in m.media.iter_mut().zip(&edits.media) {
        if let Some(port) = e.port {
            media.port = port;
        }
        if let Some(ip) = e.conn {
            media.conn = Some(match &media.conn {
                Some(c) => c.rewritten(ip),
                None => GConn {
                    addr: GAddr::Ip(ip),
                    suffix: None,
                },
            });
        }
        if let Some((port, ip)) = e.rtcp {
            match media.items.iter_mut().find(|i| matches!(i, Item::Rtcp(..))) {
                Some(Item::Rtcp(p, addr)) => {
                    *p = port;
                    if let Some(ip) = ip {
                        *addr = Some(GAddr::Ip(ip));
                    }
                }
                _ => media.items.push(Item::Rtcp(port, ip.map(GAddr::Ip))),
            }
        }
    }
    m
}

// --------------------------------------------------------------- checks --

fn check_conn(got: Option<&Connection<'_>>, want: Option<&GConn>) -> Result<(), TestCaseError> {
    match (got, want) {
        (None, None) => {}
        (Some(g), Some(w)) => {
            prop_assert_eq!(g.nettype(), "IN");
            prop_assert_eq!(g.addrtype(), w.addr.addrtype());
            prop_assert_eq!(g.address_text(), w.addr.text());
            prop_assert_eq!(g.address(), w.addr.expected());
            prop_assert_eq!(g.suffix(), w.suffix.as_deref());
        }
        _ => prop_assert!(false, "connection mismatch: {:?} vs {:?}", got, want),
    }
    Ok(())
}

fn expected_attributes(items: &[Item]) -> Vec<(String, Option<Vec<u8>>)> {
    items
        .iter()
        .filter_map(Item::attribute)
        .map(|(n, v)| (n, v.map(String::into_bytes)))
        .collect()
}

fn got_attributes(iter: sdp::Attributes<'_, '_>) -> Vec<(String, Option<Vec<u8>>)> {
    iter.map(|a| (a.name().to_owned(), a.value().map(<[u8]>::to_vec)))
        .collect()
}

/// Everything the parser exposes equals the model.
fn check(sdp: &Sdp<'_>, m: &GSdp) -> Result<(), TestCaseError> {
    let o = sdp.origin();
    prop_assert_eq!(o.username(), m.username.as_str());
    prop_assert_eq!(o.session_id(), m.session_id.as_str());
    prop_assert_eq!(o.session_version(), m.session_version.as_str());
    prop_assert_eq!(o.nettype(), "IN");
    prop_assert_eq!(o.addrtype(), m.origin.addrtype());
    prop_assert_eq!(o.address_text(), m.origin.text());
    prop_assert_eq!(o.address(), m.origin.expected());
    prop_assert_eq!(sdp.session_name(), Some(m.name.as_bytes()));
    check_conn(sdp.session_connection(), m.conn.as_ref())?;
    prop_assert!(sdp.session_connections().len() == usize::from(m.conn.is_some()));
    let session_dir = m.items.iter().find_map(|i| match i {
        Item::Dir(d) => Some(*d),
        _ => None,
    });
    prop_assert_eq!(sdp.session_direction(), session_dir);
    prop_assert_eq!(
        got_attributes(sdp.session_attributes()),
        expected_attributes(&m.items)
    );

    prop_assert_eq!(sdp.media().len(), m.media.len());
    for (i, (got, want)) in sdp.media().iter().zip(&m.media).enumerate() {
        prop_assert_eq!(got.media_type(), want.media_type.as_str());
        prop_assert_eq!(got.port(), want.port);
        prop_assert_eq!(got.port_count(), want.count);
        prop_assert_eq!(got.proto(), want.proto.as_str());
        prop_assert_eq!(
            got.formats().collect::<Vec<_>>(),
            want.formats.iter().map(String::as_str).collect::<Vec<_>>()
        );
        check_conn(got.connection(), want.conn.as_ref())?;
        prop_assert!(got.connections().len() == usize::from(want.conn.is_some()));
        let effective = want.conn.as_ref().or(m.conn.as_ref());
        check_conn(sdp.effective_connection(i), effective)?;
        let rtcp = want.items.iter().find_map(|it| match it {
            Item::Rtcp(p, a) => Some((*p, a.clone())),
            _ => None,
        });
        match (got.rtcp(), rtcp) {
            (None, None) => {}
            (Some(g), Some((port, addr))) => {
                prop_assert_eq!(g.port(), port);
                let addr = addr.map(|addr| GConn { addr, suffix: None });
                check_conn(g.connection(), addr.as_ref())?;
            }
            (g, w) => prop_assert!(false, "rtcp mismatch {:?} vs {:?}", g, w),
        }
        prop_assert_eq!(got.rtcp_mux(), want.items.contains(&Item::Mux));
        let dir = want.items.iter().find_map(|it| match it {
            Item::Dir(d) => Some(*d),
            _ => None,
        });
        prop_assert_eq!(got.direction(), dir);
        prop_assert_eq!(
            sdp.effective_direction(i),
            Some(dir.or(session_dir).unwrap_or(Direction::SendRecv))
        );
        prop_assert_eq!(
            got_attributes(sdp.media_attributes(i).unwrap()),
            expected_attributes(&want.items)
        );
    }
    Ok(())
}

/// Walks input and output lines together: unedited lines must be
/// byte-identical with the same terminator, edited lines keep their type
/// and terminator, and the only extra lines are the expected insertions.
fn check_line_diff(before: &Sdp<'_>, after: &Sdp<'_>, edits: &Edits) -> Result<(), TestCaseError> {
    let mut edited = std::collections::HashSet::new();
    let mut expected_inserts = 0usize;
    if edits.origin.is_some() {
        edited.insert(before.origin().line_index());
    }
    if edits.session.is_some() {
        if before.session_connections().is_empty() {
            expected_inserts += 1;
        }
        edited.extend(
            before
                .session_connections()
                .iter()
                .map(Connection::line_index),
        );
    }
    for (media, e) in before.media().iter().zip(&edits.media) {
        if e.port.is_some() {
            edited.insert(media.line_range().start);
        }
        if e.conn.is_some() {
            if media.connections().is_empty() {
                expected_inserts += 1;
            }
            edited.extend(media.connections().iter().map(Connection::line_index));
        }
        if e.rtcp.is_some() {
            match media.rtcp() {
                Some(r) => {
                    edited.insert(r.line_index());
                }
                None => expected_inserts += 1,
            }
        }
    }

    let (inp, out) = (before.lines(), after.lines());
    let (mut i, mut j, mut inserted) = (0usize, 0usize, 0usize);
    while j < out.len() {
        let o = &out[j];
        let same_ending = |a: LineEnding, b: LineEnding| {
            a == b || (a == LineEnding::Unterminated && b == before.line_ending())
        };
        if let Some(l) = inp.get(i) {
            if edited.contains(&i) && l.kind() == o.kind() {
                prop_assert!(
                    same_ending(l.ending(), o.ending()),
                    "ending of edited line {}",
                    i
                );
                i += 1;
                j += 1;
                continue;
            }
            if !edited.contains(&i) && l.kind() == o.kind() && l.value() == o.value() {
                prop_assert!(same_ending(l.ending(), o.ending()), "ending of line {}", i);
                i += 1;
                j += 1;
                continue;
            }
        }
        // Anything else must be an inserted c= or a=rtcp line whose
        // terminator follows its predecessor (or that ends the body).
        let is_insert = o.kind() == 'c' || (o.kind() == 'a' && o.value().starts_with(b"rtcp:"));
        prop_assert!(is_insert, "unexpected output line {} {:?}", j, o);
        // RFC 8866 order: c= right after m=/i= (or the session's v..p lines),
        // and a new a=rtcp closes its media section.
        let next_kind = out.get(j + 1).map(|l| l.kind());
        if o.kind() == 'c' {
            prop_assert!(
                "vosiuepmi".contains(out[j - 1].kind()),
                "c= inserted after {:?}",
                out[j - 1]
            );
            prop_assert!(next_kind != Some('i'), "c= inserted before i=");
        } else {
            prop_assert!(
                matches!(next_kind, None | Some('m')),
                "a=rtcp inserted mid-section"
            );
        }
        match o.ending() {
            LineEnding::Unterminated => prop_assert_eq!(j + 1, out.len()),
            e => prop_assert_eq!(e, out[j - 1].ending()),
        }
        inserted += 1;
        j += 1;
    }
    prop_assert_eq!(i, inp.len(), "input lines left over");
    prop_assert_eq!(inserted, expected_inserts);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn generated_bodies_parse_rewrite_and_reparse(model in arb_sdp(), edits in arb_edits()) {
        let body = render(&model);
        let sdp = Sdp::parse(&body).map_err(|e| TestCaseError::fail(format!("{e}: {}", String::from_utf8_lossy(&body))))?;
        check(&sdp, &model)?;
        prop_assert_eq!(sdp.lines().len(), render_lines(&model).len());

        // No edits: byte-identical.
        prop_assert_eq!(sdp.rewriter().finish(), body.clone());

        let mut rw = sdp.rewriter();
        if let Some(ip) = edits.origin {
            rw.set_origin_address(ip);
        }
        if let Some(ip) = edits.session {
            rw.set_session_connection(ip);
        }
        for (i, e) in edits.media.iter().enumerate().take(model.media.len()) {
            if let Some(ip) = e.conn {
                rw.set_media_connection(i, ip).unwrap();
            }
            if let Some(port) = e.port {
                rw.set_media_port(i, port).unwrap();
            }
            if let Some((port, ip)) = e.rtcp {
                rw.set_rtcp(i, port, ip).unwrap();
            }
        }
        let out = rw.finish();
        let re = Sdp::parse(&out).map_err(|e| TestCaseError::fail(format!("{e}: {}", String::from_utf8_lossy(&out))))?;
        check(&re, &apply(&model, &edits))?;
        check_line_diff(&sdp, &re, &edits)?;
    }
}
