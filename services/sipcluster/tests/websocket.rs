//! SIP over WebSocket (RFC 7118) through the all-in-one's public side: a phone that
//! registers over a WebSocket, with a contact nobody can reach (`.invalid`, as browsers
//! register), is called over its own connection, and its calls out work.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::time::Duration;

use common::tcp_ua::TcpUa;
use common::{Proto, Server, Sipp, free_addr, workdir};

const DOMAIN: &str = "sipcluster.local";

#[test]
fn a_websocket_phone_registers_and_is_called_on_its_connection() {
    let dir = workdir("ws_phone");
    let ws = free_addr();
    let srv = Server::start(&dir, &["--ws-listen", &ws.to_string()]);
    let mut bob = TcpUa::connect_ws(ws);
    bob.register(
        "bob",
        "bob-secret",
        "sip:bob@df7jal23ls0d.invalid;transport=ws",
    );
    let phone = std::thread::spawn(move || bob.answer_call(Duration::from_secs(20)));
    Sipp::new("alice", "uac_call.xml", Proto::Udp)
        .inf(&format!("alice;{DOMAIN};alice-secret;bob"))
        .auth("alice", "alice-secret", &format!("bob@{DOMAIN}"))
        .to(srv.sip)
        .run(&dir)
        .assert_ok(1, "alice calls bob's WebSocket phone");
    assert_eq!(phone.join().unwrap(), ["INVITE", "ACK", "BYE"]);
    let text = srv.scrape();
    for (sample, at_least) in [
        (
            "sipcluster_dispatcher_sip_transport_ws_upgrades_total{side=\"public\",result=\"ok\"}",
            1.0,
        ),
        // REGISTER twice, the 180 and 200 of the INVITE, the BYE's 200.
        (
            "sipcluster_dispatcher_sip_transport_messages_received_total{side=\"public\",transport=\"ws\"}",
            5.0,
        ),
    ] {
        let v = common::metric_value(&text, sample);
        assert!(v >= at_least, "{sample} = {v}\n{text}");
    }
}

/// What the browser phones reported, in order: (role, event, data).
type Events = std::sync::Arc<std::sync::Mutex<Vec<(String, String, String)>>>;

/// The phones' web server: `/phone.html` and `/phone.js` from `tests/browser`, the JsSIP
/// bundle the test script builds, and `POST /event` where the phones report.
fn serve_phones(jssip: std::path::PathBuf) -> (std::net::SocketAddr, Events) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let events: Events = Default::default();
    let ev = events.clone();
    let page_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/browser");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let (page_dir, jssip, ev) = (page_dir.clone(), jssip.clone(), ev.clone());
            std::thread::spawn(move || {
                let mut r = BufReader::new(conn.try_clone().unwrap());
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut len = 0usize;
                    loop {
                        let mut h = String::new();
                        if r.read_line(&mut h).unwrap_or(0) == 0 {
                            return;
                        }
                        if h == "\r\n" {
                            break;
                        }
                        if let Some((n, v)) = h.split_once(':')
                            && n.eq_ignore_ascii_case("content-length")
                        {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0u8; len];
                    r.read_exact(&mut body).unwrap();
                    let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    let (status, ctype, content) = if line.starts_with("POST /event") {
                        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                        let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
                        ev.lock().unwrap().push((s("role"), s("ev"), s("data")));
                        ("204 No Content", "text/plain", Vec::new())
                    } else {
                        let file = match path.split('?').next().unwrap_or_default() {
                            "/phone.html" => Some((page_dir.join("phone.html"), "text/html")),
                            "/phone.js" => Some((page_dir.join("phone.js"), "text/javascript")),
                            "/jssip.js" => Some((jssip.clone(), "text/javascript")),
                            _ => None,
                        };
                        match file.and_then(|(p, t)| Some((std::fs::read(p).ok()?, t))) {
                            Some((c, t)) => ("200 OK", t, c),
                            None => ("404 Not Found", "text/plain", Vec::new()),
                        }
                    };
                    let head = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n\r\n",
                        content.len()
                    );
                    if conn.write_all(head.as_bytes()).is_err() || conn.write_all(&content).is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (addr, events)
}

/// A headless Chromium on a phone page; stopped (by its PID) when dropped.
struct Browser(std::process::Child);

impl Browser {
    fn open(dir: &std::path::Path, name: &str, url: &str) -> Browser {
        let chromium = common::which("chromium")
            .expect("chromium (apt chromium; ./scripts/test.sh installs it)");
        let profile = dir.join(format!("chromium-{name}"));
        let log = std::fs::File::create(dir.join(format!("chromium-{name}.log"))).unwrap();
        let child = std::process::Command::new(chromium)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--use-fake-device-for-media-stream",
                "--use-fake-ui-for-media-stream",
                // The test CA is not the browser's: accept our certificate on the WSS.
                "--ignore-certificate-errors",
                // Media candidates on loopback only: no test traffic leaves lo.
                "--allow-loopback-in-peer-connection",
                "--force-webrtc-ip-handling-policy",
                "--webrtc-ip-handling-policy=disable_non_proxied_udp",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start chromium");
        Browser(child)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Wait until `role` reported `ev`; the events so far on failure.
fn wait_for(events: &Events, role: &str, ev: &str, within: Duration) {
    let deadline = std::time::Instant::now() + within;
    loop {
        {
            let e = events.lock().unwrap();
            if e.iter().any(|(r, x, _)| r == role && x == ev) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{role} never reported {ev}; events: {:?}",
                *e
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[path = "../../../crates/sip-transport/tests/pki/mod.rs"]
mod pki;

#[test]
fn two_browser_phones_register_over_wss_call_each_other_and_hang_up() {
    let jssip = std::env::var_os("SIPCLUSTER_TEST_JSSIP")
        .map(std::path::PathBuf::from)
        .filter(|p| p.exists())
        .expect("SIPCLUSTER_TEST_JSSIP: the JsSIP bundle ./scripts/test.sh builds with npm");
    let dir = workdir("ws_browsers");
    let pki = pki::Pki::new(&dir.join("pki"), "test-ca");
    let (crt, key) = pki.leaf("server", "IP:127.0.0.1,DNS:sipcluster.local");
    let wss = free_addr();
    let srv = Server::start(
        &dir,
        &[
            "--wss-listen",
            &wss.to_string(),
            "--tls-cert-file",
            &crt.display().to_string(),
            "--tls-key-file",
            &key.display().to_string(),
        ],
    );
    let (web, events) = serve_phones(jssip);
    let page = |role: &str, user: &str, call: &str| {
        format!(
            "http://{web}/phone.html?role={role}&user={user}&password={user}-secret&ws=wss://{wss}&call={call}"
        )
    };
    // bob's browser first; alice's calls him once both are registered.
    let _bob = Browser::open(&dir, "bob", &page("callee", "bob", ""));
    wait_for(&events, "callee", "registered", Duration::from_secs(30));
    let _alice = Browser::open(&dir, "alice", &page("caller", "alice", "bob"));
    wait_for(&events, "caller", "registered", Duration::from_secs(30));
    wait_for(&events, "callee", "incoming", Duration::from_secs(20));
    wait_for(&events, "caller", "confirmed", Duration::from_secs(20));
    wait_for(&events, "callee", "confirmed", Duration::from_secs(20));
    // alice hangs up a second later; both see the call end by her BYE.
    wait_for(&events, "caller", "ended", Duration::from_secs(20));
    wait_for(&events, "callee", "ended", Duration::from_secs(20));
    let got = events.lock().unwrap().clone();
    eprintln!("browser events: {got:#?}");
    let of = |role: &str| -> Vec<(String, String)> {
        got.iter()
            .filter(|(r, _, _)| r == role)
            .map(|(_, e, d)| (e.clone(), d.clone()))
            .collect()
    };
    assert!(
        !got.iter()
            .any(|(_, e, _)| e == "failed" || e == "error" || e == "registrationFailed"),
        "{got:?}"
    );
    assert!(
        of("callee").contains(&("incoming".into(), "alice".into())),
        "{got:?}"
    );
    assert!(
        of("callee").contains(&("ended".into(), "remote:Terminated".into())),
        "{got:?}"
    );
    assert!(
        of("caller").contains(&("ended".into(), "local:Terminated".into())),
        "{got:?}"
    );
    // No media address off loopback was offered (the ICE policy gathers none: no test
    // traffic leaves lo; the signalling is what is under test).
    for (_, _, sdp) in got.iter().filter(|(_, e, _)| e == "sdp") {
        for cand in sdp.split('|').filter(|l| l.contains("a=candidate")) {
            assert!(
                cand.contains(" 127.0.0.1 ") || cand.contains(" ::1 "),
                "{cand}"
            );
        }
    }
    // The server saw both browsers over WSS.
    let text = srv.scrape();
    let upgrades = common::metric_value(
        &text,
        "sipcluster_dispatcher_sip_transport_ws_upgrades_total{side=\"public\",result=\"ok\"}",
    );
    assert!(upgrades >= 2.0, "{upgrades} upgrades\n{text}");
    let over_wss = common::metric_value(
        &text,
        "sipcluster_dispatcher_sip_transport_messages_received_total{side=\"public\",transport=\"wss\"}",
    );
    // Two REGISTERs each (challenge, credentials), INVITE twice, 180/200, ACK, BYE, 200.
    assert!(over_wss >= 10.0, "{over_wss} messages over WSS\n{text}");
}
