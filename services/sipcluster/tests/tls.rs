//! SIP over TLS through the all-in-one's public side (its dispatcher ends TLS):
//!
//! * SIPp registers and calls over TLS. Debian's SIPp is built without TLS (its source
//!   package build-conflicts with libssl-dev), so SIPp speaks TCP to a local `stunnel`
//!   that makes a real TLS connection to us, verifying our certificate against the test
//!   CA for 127.0.0.1.
//! * The certificate swapped on disk is what the next connection gets (read by `openssl
//!   s_client`), and a call over a new connection succeeds, with no restart.
//! * A phone registered over TLS is called over its own connection; a SIPS request that
//!   arrived in the clear is refused (RFC 5630).
//! * A trunk's client certificate, verified by the dispatcher, makes it a trusted peer
//!   at the edge (`trusted_peers = ["tls:NAME"]`): its P-Asserted-Identity is kept; the
//!   same request over TLS with another certificate or none loses it.
//! * Outbound: a standalone dispatcher reaches a carrier's SBC over mutual TLS, verified
//!   for its address; SIPS never leaves toward a set reached in the clear.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;
#[path = "../../../crates/sip-transport/tests/pki/mod.rs"]
mod pki;

use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::gateway::Gateway;
use common::tcp_ua::{TcpUa, header};
use common::{Proto, Server, Sipp, free_addr, status, which, workdir};

const DOMAIN: &str = "sipcluster.local";

/// A `stunnel`: a client (plain TCP in at `addr`, TLS out) or a server (TLS in at
/// `addr`, plain TCP out). Stopped (by its PID) when dropped.
struct Stunnel {
    child: Child,
    addr: SocketAddr,
}

impl Stunnel {
    /// TLS out to `to`, verifying the server's certificate against `ca` for 127.0.0.1.
    fn client(dir: &Path, name: &str, to: SocketAddr, ca: &Path) -> Stunnel {
        Stunnel::start(
            dir,
            name,
            &format!(
                "client = yes\nconnect = {to}\nverifyChain = yes\nCAfile = {ca}\n\
                 checkIP = 127.0.0.1\n",
                ca = ca.display()
            ),
        )
    }

    /// TLS in with `cert`/`key`, requiring a client certificate that verifies against
    /// `ca`; plain TCP on to `to` (a trunk's SBC taking mutual TLS).
    fn server(
        dir: &Path,
        name: &str,
        to: SocketAddr,
        (cert, key): (&Path, &Path),
        ca: &Path,
    ) -> Stunnel {
        Stunnel::start(
            dir,
            name,
            &format!(
                "connect = {to}\ncert = {cert}\nkey = {key}\nverifyChain = yes\nCAfile = {ca}\n",
                cert = cert.display(),
                key = key.display(),
                ca = ca.display()
            ),
        )
    }

    fn start(dir: &Path, name: &str, service: &str) -> Stunnel {
        let stunnel = which("stunnel4")
            .or_else(|| which("stunnel"))
            .expect("stunnel (apt stunnel4; ./scripts/test.sh installs it)");
        let addr = free_addr();
        let conf = dir.join(format!("{name}.conf"));
        std::fs::write(
            &conf,
            format!(
                "foreground = yes\npid =\nsyslog = no\noutput = {log}\n[sip]\naccept = {addr}\n{service}",
                log = dir.join(format!("{name}.log")).display(),
            ),
        )
        .unwrap();
        let child = Command::new(stunnel)
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start stunnel");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "stunnel never listened on {addr}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Stunnel { child, addr }
    }
}

impl Drop for Stunnel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The subject CN of the certificate served at `addr`, as `openssl s_client` reads it
/// (verified against `ca`).
fn served_cn(addr: SocketAddr, ca: &Path) -> Option<String> {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string(), "-CAfile"])
        .arg(ca)
        .args(["-verify_return_error", "-brief"])
        .stdin(Stdio::null())
        .output()
        .expect("openssl s_client");
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("Peer certificate: "))
        .and_then(|s| s.rsplit("CN = ").next())
        .map(|s| s.trim().to_owned())
}

/// Make `name`'s pair the one served, as a Secret update does (written aside, renamed).
fn serve(dir: &Path, name: &str) {
    for ext in ["crt", "key"] {
        let tmp = dir.join(format!("live.{ext}.tmp"));
        std::fs::copy(dir.join(format!("{name}.{ext}")), &tmp).unwrap();
        std::fs::rename(&tmp, dir.join(format!("live.{ext}"))).unwrap();
    }
}

fn tls_flags(dir: &Path, tls: SocketAddr) -> Vec<String> {
    vec![
        "--tls-listen".into(),
        tls.to_string(),
        "--tls-cert-file".into(),
        dir.join("live.crt").display().to_string(),
        "--tls-key-file".into(),
        dir.join("live.key").display().to_string(),
        "--tls-reload-secs".into(),
        "1".into(),
    ]
}

fn start(dir: &Path, flags: &[String]) -> Server {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    Server::start(dir, &flags)
}

/// bob's SIPp answering over UDP, registered.
fn bob_over_udp(srv: &Server, dir: &Path) -> common::RunningSipp {
    let uas = Sipp::new("uas", "uas_answer.xml", Proto::Udp);
    Sipp::new("register-bob", "register.xml", Proto::Udp)
        .inf(&format!("bob;{DOMAIN};;127.0.0.1:{};3600", uas.port))
        .auth("bob", "bob-secret", DOMAIN)
        .to(srv.sip)
        .run(dir)
        .assert_ok(1, "bob registers over UDP");
    let callee = uas.spawn(dir);
    std::thread::sleep(Duration::from_millis(300));
    callee
}

/// alice (SIPp over TCP into `stunnel`, TLS from there) calls bob.
fn alice_calls_over_tls(dir: &Path, name: &str, stunnel: &Stunnel) {
    Sipp::new(name, "uac_call.xml", Proto::Tcp)
        .inf(&format!("alice;{DOMAIN};alice-secret;bob"))
        .auth("alice", "alice-secret", &format!("bob@{DOMAIN}"))
        .to(stunnel.addr)
        .run(dir)
        .assert_ok(1, name);
}

#[test]
fn sipp_over_tls_registers_and_calls_and_a_certificate_swapped_on_disk_is_used_without_restart() {
    let dir = workdir("tls_sipp");
    let pki = pki::Pki::new(&dir.join("pki"), "test-ca");
    let sans = "IP:127.0.0.1,DNS:sipcluster.local";
    pki.leaf("server-a", sans);
    pki.leaf("server-b", sans);
    serve(&pki.dir, "server-a");
    let tls = free_addr();
    let mut srv = start(&dir, &tls_flags(&pki.dir, tls));
    let pid = srv.pid();

    // alice registers over TLS, then calls bob (on UDP) over TLS.
    let tunnel = Stunnel::client(&dir, "stunnel-1", tls, &pki.ca());
    Sipp::new("register-alice", "register.xml", Proto::Tcp)
        .inf(&format!("alice;{DOMAIN};;127.0.0.1:5999;3600"))
        .auth("alice", "alice-secret", DOMAIN)
        .to(tunnel.addr)
        .run(&dir)
        .assert_ok(1, "alice registers over TLS");
    let callee = bob_over_udp(&srv, &dir);
    alice_calls_over_tls(&dir, "call-1", &tunnel);
    callee.wait().assert_ok(1, "bob answers the first call");
    let text = srv.scrape();
    let tls_in = common::metric_value(
        &text,
        "sipcluster_dispatcher_sip_transport_messages_received_total{side=\"public\",transport=\"tls\"}",
    );
    // REGISTER twice (challenge, credentials), INVITE twice, ACK twice, BYE: at least 7.
    assert!(tls_in >= 7.0, "{tls_in} messages over TLS\n{text}");
    assert!(
        common::metric_value(
            &text,
            "sipcluster_dispatcher_sip_transport_tls_handshakes_total{side=\"public\",result=\"ok\"}"
        ) >= 1.0
    );
    assert_eq!(served_cn(tls, &pki.ca()).as_deref(), Some("server-a"));

    // The certificate is replaced on disk: new connections get it, within the reload
    // interval (1 s), from the same process.
    serve(&pki.dir, "server-b");
    let deadline = Instant::now() + Duration::from_secs(10);
    while served_cn(tls, &pki.ca()).as_deref() != Some("server-b") {
        assert!(
            Instant::now() < deadline,
            "the new certificate never served"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(srv.log().contains("tls certificate reloaded"));
    assert_eq!(
        common::metric_value(
            &srv.scrape(),
            "sipcluster_dispatcher_sip_transport_tls_certificate_reloads_total{side=\"public\",result=\"ok\"}"
        ),
        1.0
    );
    // A new connection (a new stunnel: no session to resume) calls with it.
    let tunnel2 = Stunnel::client(&dir, "stunnel-2", tls, &pki.ca());
    let callee = bob_over_udp(&srv, &dir);
    alice_calls_over_tls(&dir, "call-2", &tunnel2);
    callee.wait().assert_ok(1, "bob answers the second call");
    srv.assert_alive();
    assert_eq!(srv.pid(), pid, "no restart");
    assert!(
        !srv.log().contains("ERROR"),
        "errors in the log:\n{}",
        srv.log()
    );
}

fn options(uri: &str, transport: &str, local: SocketAddr) -> String {
    format!(
        "OPTIONS {uri} SIP/2.0\r\nVia: SIP/2.0/{transport} {local};branch=z9hG4bK-sips-{}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:probe@{DOMAIN}>;tag=p1\r\nTo: <{uri}>\r\n\
         Call-ID: sips-{}@test\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        local.port(),
        local.port()
    )
}

fn invite(to: &str, from: &str, local: SocketAddr, call_id: &str) -> String {
    format!(
        "INVITE {to} SIP/2.0\r\nVia: SIP/2.0/TLS {local};branch=z9hG4bK-{call_id}\r\n\
         Max-Forwards: 70\r\nFrom: <{from}>;tag=t-{call_id}\r\nTo: <{to}>\r\n\
         Call-ID: {call_id}@test\r\nCSeq: 1 INVITE\r\nContact: <sip:trunk@{local};transport=tls>\r\n\
         P-Asserted-Identity: <{from}>\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

/// The first final response to the request with this Call-ID (provisional ones skipped).
fn final_response(ua: &mut TcpUa, wait: Duration) -> String {
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        if let Some(m) = ua.next(Duration::from_millis(500))
            && m.starts_with("SIP/2.0")
            && status(&m) >= 200
        {
            return m;
        }
    }
    panic!("no final response within {wait:?}");
}

#[test]
fn a_tls_phone_is_called_on_its_connection_sips_is_never_downgraded_and_a_trunk_certificate_is_trusted()
 {
    let dir = workdir("tls_phone");
    let pki = pki::Pki::new(&dir.join("pki"), "test-ca");
    pki.leaf("live", "IP:127.0.0.1,DNS:sipcluster.local");
    let (trunk_crt, trunk_key) = pki.leaf("trunk", "DNS:trunk.example.net");
    let (other_crt, other_key) = pki.leaf("other", "DNS:other.example.net");
    let cfg = dir.join("sipcluster.toml");
    std::fs::write(
        &cfg,
        "[security]\ntrusted_peers = [\"tls:trunk.example.net\"]\n",
    )
    .unwrap();
    let tls = free_addr();
    let mut flags = tls_flags(&pki.dir, tls);
    flags.extend([
        "--tls-client-auth".into(),
        "optional".into(),
        "--tls-client-ca-file".into(),
        pki.ca().display().to_string(),
        "--config".into(),
        cfg.display().to_string(),
    ]);
    let srv = start(&dir, &flags);

    // bob's phone, over TLS, with a SIPS contact nobody can reach: only its connection
    // leads to it.
    let mut bob = TcpUa::connect_tls(tls, &pki.ca(), None);
    bob.register("bob", "bob-secret", "sips:bob@10.255.255.1:5999");
    let phone = std::thread::spawn(move || {
        let seen = bob.answer_call(Duration::from_secs(20));
        (bob, seen)
    });
    // alice calls from SIPp over UDP: the INVITE reaches bob over his TLS connection.
    Sipp::new("alice", "uac_call.xml", Proto::Udp)
        .inf(&format!("alice;{DOMAIN};alice-secret;bob"))
        .auth("alice", "alice-secret", &format!("bob@{DOMAIN}"))
        .to(srv.sip)
        .run(&dir)
        .assert_ok(1, "alice calls bob's TLS phone");
    let (mut bob, seen) = phone.join().unwrap();
    assert_eq!(seen, ["INVITE", "ACK", "BYE"], "what bob's phone got");

    // A SIPS request in the clear is refused (416), never carried on as if secure; the
    // same over TLS is relayed (an edge answers it).
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let local = udp.local_addr().unwrap();
    udp.send_to(
        options(&format!("sips:bob@{DOMAIN}"), "UDP", local).as_bytes(),
        srv.sip,
    )
    .unwrap();
    let mut buf = [0u8; 4096];
    let n = udp.recv(&mut buf).unwrap();
    let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert_eq!(status(&reply), 416, "{reply}");
    // The edge answers the SIPS one over TLS as it answers the plain one over UDP.
    let other = UdpSocket::bind("127.0.0.1:0").unwrap();
    other
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let local = other.local_addr().unwrap();
    other
        .send_to(
            options(&format!("sip:{DOMAIN}"), "UDP", local).as_bytes(),
            srv.sip,
        )
        .unwrap();
    let n = other.recv(&mut buf).unwrap();
    let plain = status(&String::from_utf8_lossy(&buf[..n]));
    let mut probe = TcpUa::connect_tls(tls, &pki.ca(), None);
    let local = probe.local();
    probe.send(&options(&format!("sips:{DOMAIN}"), "TLS", local));
    let reply = final_response(&mut probe, Duration::from_secs(5));
    assert_ne!(plain, 416);
    assert_eq!(status(&reply), plain, "{reply}");

    // A trunk with a certificate the dispatcher verifies, named in trusted_peers, is a
    // trusted peer: its P-Asserted-Identity reaches bob (RFC 3325 §9.1). The same INVITE
    // over TLS with another certificate, or none, loses it.
    let bob_thread = std::thread::spawn(move || {
        let mut asserted = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline && asserted.len() < 3 {
            if let Some(m) = bob.next(Duration::from_millis(500))
                && m.starts_with("INVITE")
            {
                let call_id = header(&m, "Call-ID")[0].to_owned();
                let pai = header(&m, "P-Asserted-Identity").len();
                asserted.push((call_id, pai));
                bob.respond(&m, 486, "Busy Here", true);
            }
        }
        asserted
    });
    let calls = [
        ("trunk", Some((trunk_crt.as_path(), trunk_key.as_path()))),
        ("other", Some((other_crt.as_path(), other_key.as_path()))),
        ("none", None),
    ];
    for (name, cert) in calls {
        let mut c = TcpUa::connect_tls(tls, &pki.ca(), cert);
        let local = c.local();
        c.send(&invite(
            &format!("sip:bob@{DOMAIN}"),
            "sip:+15550100@trunk.example.net",
            local,
            &format!("from-{name}"),
        ));
        let reply = final_response(&mut c, Duration::from_secs(10));
        assert_eq!(status(&reply), 486, "{name}: the call reached bob: {reply}");
    }
    let asserted = bob_thread.join().unwrap();
    assert_eq!(
        asserted,
        [
            ("from-trunk@test".to_owned(), 1),
            ("from-other@test".to_owned(), 0),
            ("from-none@test".to_owned(), 0),
        ],
        "(call, P-Asserted-Identity headers bob got)"
    );
}

/// Outbound TLS through a standalone dispatcher: a carrier's SBC takes mutual TLS (a
/// `stunnel` server requiring a client certificate from the test CA, in front of our TCP
/// gateway). The dispatcher verifies it for its IP address and presents its own
/// certificate: a call from SIPp over UDP to +1… reaches the gateway over TLS and ends
/// there. An SBC whose certificate names another address is never used (its probes fail
/// verification: down). A SIPS call toward a set with no TLS member gets 480 and never
/// reaches that set's gateway (RFC 5630: never downgraded).
#[test]
fn calls_leave_for_a_tls_trunk_over_verified_mutual_tls_and_sips_never_leaves_in_the_clear() {
    let dir = workdir("tls_outbound");
    let pki = pki::Pki::new(&dir.join("pki"), "test-ca");
    let (disp_crt, disp_key) = pki.leaf("dispatcher", "IP:127.0.0.1,DNS:sip.cluster.test");
    let (carrier_crt, carrier_key) = pki.leaf("carrier", "IP:127.0.0.1");
    let (wrong_crt, wrong_key) = pki.leaf("wrong", "IP:127.0.0.9");
    let ca = pki.ca();
    let gw = Gateway::spawn_tcp(200);
    let sbc = Stunnel::server(&dir, "sbc", gw.addr, (&carrier_crt, &carrier_key), &ca);
    gw.set_contact(&format!("sip:gw@{};transport=tls", sbc.addr));
    let gw_wrong = Gateway::spawn_tcp(200);
    let sbc_wrong = Stunnel::server(
        &dir,
        "sbc-wrong",
        gw_wrong.addr,
        (&wrong_crt, &wrong_key),
        &ca,
    );
    let clear = Gateway::spawn(200);

    let internal = SocketAddr::from(([127, 0, 0, 1], common::free_port()));
    let tls = free_addr();
    let disp_cfg = dir.join("dispatcher.toml");
    std::fs::write(
        &disp_cfg,
        format!(
            "[tls]\nlisten = [\"{tls}\"]\ncert_file = \"{}\"\nkey_file = \"{}\"\nca_file = \"{}\"\n\
             client_auth = \"optional\"\nclient_ca_file = \"{}\"\n\
             [[sets]]\nname = \"carrier\"\ntargets = [{{ address = \"{}\", transport = \"tls\" }}]\n\
             [[sets]]\nname = \"wrong\"\ntargets = [{{ address = \"{}\", transport = \"tls\" }}]\n\
             [[sets]]\nname = \"clear\"\ntargets = [{{ address = \"{}\" }}]\n",
            disp_crt.display(),
            disp_key.display(),
            ca.display(),
            ca.display(),
            sbc.addr,
            sbc_wrong.addr,
            clear.addr,
        ),
    )
    .unwrap();
    let edge_cfg = dir.join("edge.toml");
    std::fs::write(
        &edge_cfg,
        format!(
            "[outbound]\ndispatcher = \"sip:{internal}\"\n\
             [[outbound.rules]]\nprefix = \"+1\"\nset = \"carrier\"\n\
             [[outbound.rules]]\nprefix = \"+2\"\nset = \"clear\"\n"
        ),
    )
    .unwrap();
    let (_loc, _edge, disp, _admin) =
        Server::one_edge_cluster(&dir, internal, &edge_cfg, &disp_cfg);
    let up =
        |set: &str| disp.metric_sum(&format!("sipcluster_dispatcher_target_up{{set=\"{set}\""));
    let deadline = Instant::now() + Duration::from_secs(10);
    while up("carrier") < 1.0 || up("clear") < 1.0 {
        assert!(Instant::now() < deadline, "{}", disp.scrape());
        std::thread::sleep(Duration::from_millis(50));
    }
    // Probes every 200 ms: the wrong SBC has failed several by now.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        up("wrong"),
        0.0,
        "an SBC with another address's certificate is up"
    );
    assert_eq!(
        gw_wrong.options.load(Ordering::Relaxed),
        0,
        "a probe crossed the wrong SBC"
    );
    assert!(gw.options.load(Ordering::Relaxed) >= 1, "probes over TLS");

    // A call to +1…: over mutual TLS to the carrier, and the BYE after it.
    Sipp::new("alice", "uac_call.xml", Proto::Udp)
        .inf(&format!("alice;{DOMAIN};alice-secret;+15551234"))
        .auth("alice", "alice-secret", &format!("+15551234@{DOMAIN}"))
        .to(disp.sip)
        .run(&dir)
        .assert_ok(1, "alice calls the carrier over TLS");
    assert_eq!(gw.invites.load(Ordering::Relaxed), 1);
    assert_eq!(
        gw.byes.load(Ordering::Relaxed),
        1,
        "the BYE went the same way"
    );
    let vias = gw.via.lock().unwrap().clone();
    let invite_via = vias
        .iter()
        .find(|v| v.starts_with("INVITE "))
        .expect("INVITE seen");
    assert!(
        invite_via.starts_with("INVITE SIP/2.0/TLS "),
        "the dispatcher's Via names TLS: {invite_via}"
    );
    assert!(
        disp.metric("sipcluster_dispatcher_sip_transport_messages_sent_total{side=\"public\",transport=\"tls\"}")
            >= 3.0,
        "INVITE, ACK and BYE sent over TLS"
    );

    // alice over TLS: a SIPS call toward the set with no TLS member gets 480 and nothing
    // leaves; the same call as sip: reaches that set's gateway (the rule refused it).
    let mut alice = TcpUa::connect_tls(tls, &ca, None);
    let sips = alice.invite(
        "alice",
        "alice-secret",
        &format!("sips:+25551234@{DOMAIN}"),
        "sips-to-clear",
    );
    assert_eq!(status(&sips), 480, "{sips}");
    assert_eq!(
        clear.invites.load(Ordering::Relaxed),
        0,
        "a SIPS call left in the clear"
    );
    let plain = alice.invite(
        "alice",
        "alice-secret",
        &format!("sip:+25551234@{DOMAIN}"),
        "sip-to-clear",
    );
    assert_eq!(status(&plain), 200, "{plain}");
    assert_eq!(clear.invites.load(Ordering::Relaxed), 1);
    // And a SIPS call to the carrier's TLS set goes through.
    let secure = alice.invite(
        "alice",
        "alice-secret",
        &format!("sips:+15551234@{DOMAIN}"),
        "sips-to-carrier",
    );
    assert_eq!(status(&secure), 200, "{secure}");
    assert_eq!(gw.invites.load(Ordering::Relaxed), 2);
}
