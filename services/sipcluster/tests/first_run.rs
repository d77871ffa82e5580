//! What a new user and an operator meet in their first hour with the all-in-one (and each
//! service), end to end over real sockets:
//!
//! * a second instance on a port in use fails at start instead of sharing it;
//! * every service is not ready (`/readyz` 503) for the whole of its drain;
//! * failed logins and refused requests are logged (rate-limited, no secret) and counted
//!   by status code; transactions are logged at debug;
//! * the challenge algorithms follow `--auth-algorithms` (MD5 alone by default);
//! * `registrations`, `users` and `dispatcher-admin` work against the all-in-one's APIs
//!   and say what they did;
//! * `check-config` prints TOML that reads back; a log level that would print nothing,
//!   and `--location` on the all-in-one, are refused with a clear message;
//! * `check-config SERVICE` does the same for each service (its own flags, environment
//!   and file; unknown keys, wrong types and missing token files named; no secret
//!   printed), without starting it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{RawSip, Server, Sipp, run_cli, run_cli_env, status, workdir};

const DOMAIN: &str = "sipcluster.local";

fn options(to: SocketAddr, branch: &str, local: SocketAddr) -> String {
    format!(
        "OPTIONS sip:{to} SIP/2.0\r\nVia: SIP/2.0/UDP {local};rport;branch=z9hG4bK{branch}\r\nMax-Forwards: 70\r\nFrom: <sip:probe@example.org>;tag={branch}\r\nTo: <sip:{to}>\r\nCall-ID: {branch}@t\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
}

#[test]
fn a_second_instance_on_a_busy_port_fails_at_start() {
    let dir = workdir("busy_port");
    let first = Server::start(&dir, &[]);
    // The same SIP address: UDP is bound first and must be refused (it used to be shared,
    // with the newcomer taking the first instance's traffic).
    let second = run_cli(&[
        "all-in-one",
        "--listen",
        &first.sip.to_string(),
        "--metrics",
        "off",
        "--location-listen",
        "off",
        "--admin",
        "off",
    ]);
    assert_ne!(second.code, Some(0), "{second:?}");
    assert!(second.code.is_some(), "the second instance did not exit");
    assert!(
        second
            .stderr
            .contains(&format!("cannot listen on UDP {}", first.sip))
            && second.stderr.contains("in use"),
        "{}",
        second.stderr
    );
    // A busy control-API port is an error too.
    let api = first.location_api.expect("location API").to_string();
    let third = run_cli(&[
        "all-in-one",
        "--listen",
        &common::free_addr().to_string(),
        "--metrics",
        "off",
        "--admin",
        "off",
        "--location-listen",
        &api,
    ]);
    assert_ne!(third.code, Some(0), "{third:?}");
    assert!(third.stderr.contains("location API"), "{}", third.stderr);
    // The first instance still gets all of its traffic.
    let raw = RawSip::new(first.sip);
    for i in 0..20 {
        let r = raw
            .request(options(first.sip, &format!("busy{i}"), raw.local()).as_bytes())
            .expect("the first instance answers");
        assert_eq!(status(&r), 200, "{r}");
    }
}

/// SIGTERM, then `/readyz` every 50 ms until the process exits: the codes seen once the
/// process has taken the signal (the first 503, within 2 s of it on a busy machine).
fn drain_readyz(srv: &mut Server, sip_probe: Option<SocketAddr>) -> (Vec<u16>, Vec<u16>) {
    srv.sigterm();
    let taken = Instant::now() + Duration::from_secs(2);
    while common::http_get(srv.metrics, "/readyz").is_some_and(|(c, _)| c == 200) {
        assert!(
            Instant::now() < taken,
            "{}: still ready 2 s after SIGTERM",
            srv.name
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        !srv.exited(),
        "{} stopped without ever answering /readyz 503 during its drain",
        srv.name
    );
    let (mut readyz, mut options_codes) = (Vec::new(), Vec::new());
    let raw = sip_probe.map(RawSip::new);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut i = 0;
    while !srv.exited() {
        assert!(Instant::now() < deadline, "{} did not stop", srv.name);
        if let Some((code, _)) = common::http_get(srv.metrics, "/readyz") {
            readyz.push(code);
        }
        if let (Some(raw), Some(to)) = (&raw, sip_probe) {
            i += 1;
            if let Some(r) = raw.request(options(to, &format!("drain{i}"), raw.local()).as_bytes())
            {
                options_codes.push(status(&r));
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (readyz, options_codes)
}

#[test]
fn every_service_is_not_ready_for_its_whole_drain() {
    let dir = workdir("drain_readiness");
    // The all-in-one: its drain is the dispatcher's (OPTIONS 503) and /readyz says so.
    let mut aio = Server::start(&dir, &["--drain-secs", "2"]);
    let sip = aio.sip;
    let (readyz, opts) = drain_readyz(&mut aio, Some(sip));
    assert!(readyz.len() >= 5, "all-in-one: {readyz:?}");
    assert!(readyz.iter().all(|c| *c == 503), "all-in-one: {readyz:?}");
    assert!(
        !opts.is_empty() && opts.iter().all(|c| *c == 503),
        "all-in-one OPTIONS during drain: {opts:?}"
    );

    // An edge in cluster mode. (The location service has no drain window to check: on
    // SIGTERM it stops taking calls at once and its clients go to another replica.)
    let loc = Server::location(&dir, "location", &[]);
    let mut edge = Server::edge(&dir, "edge", loc.sip, &["--drain-secs", "2"]);
    let (readyz, _) = drain_readyz(&mut edge, None);
    assert!(readyz.len() >= 5, "edge: {readyz:?}");
    assert!(readyz.iter().all(|c| *c == 503), "edge: {readyz:?}");

    // A dispatcher (the harness gives it one second of drain).
    let (mut disp, _) = Server::dispatcher(&dir, "dispatcher", &[common::free_addr()], &[]);
    let (readyz, _) = drain_readyz(&mut disp, None);
    assert!(readyz.len() >= 3, "dispatcher: {readyz:?}");
    assert!(readyz.iter().all(|c| *c == 503), "dispatcher: {readyz:?}");

    // A media relay with a session open: it drains until the deadline.
    let mut relay = Server::media_relay(&dir, "relay", "43900-43949", &["--drain-secs", "2"]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut c = common::media_client(relay.sip, Some(common::EDGE_TOKEN)).await;
        c.offer(common::new_session_offer("drain-call"))
            .await
            .expect("offer");
    });
    let (readyz, _) = drain_readyz(&mut relay, None);
    assert!(readyz.len() >= 5, "media relay: {readyz:?}");
    assert!(readyz.iter().all(|c| *c == 503), "media relay: {readyz:?}");
}

/// The JSON log lines of a server whose message is `message`.
fn log_lines(srv: &Server, message: &str) -> Vec<serde_json::Value> {
    srv.log()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["fields"]["message"] == message)
        .collect()
}

fn field<'a>(v: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    &v["fields"][name]
}

fn invite(from: &str, to: &str, branch: &str, local: SocketAddr) -> String {
    format!(
        "INVITE sip:{to} SIP/2.0\r\nVia: SIP/2.0/UDP {local};rport;branch=z9hG4bK{branch}\r\nMax-Forwards: 70\r\nFrom: <sip:{from}>;tag={branch}\r\nTo: <sip:{to}>\r\nCall-ID: {branch}@t\r\nCSeq: 1 INVITE\r\nContact: <sip:x@{local}>\r\nContent-Length: 0\r\n\r\n"
    )
}

#[test]
fn auth_failures_and_refusals_are_logged_without_secrets_and_counted_by_code() {
    let dir = workdir("operator_logs");
    // Nothing is shed in this test: the flood below must meet the relay refusal, not the
    // overload 503 a busy CI machine could otherwise give part of it.
    let cfg = dir.join("no-shedding.toml");
    std::fs::write(&cfg, "[limits]\nmax_queue_delay_ms = 10000\n").expect("config");
    let srv = Server::start(
        &dir,
        &[
            "--config",
            &cfg.display().to_string(),
            "--log-format",
            "json",
            "--log-level",
            "edge::audit=debug,info",
        ],
    );
    // A login with the wrong password: challenged again, logged with who and why.
    let bad_sipp = Sipp::new("register-bad", "register.xml", common::Proto::Udp)
        .inf(&format!("bob;{DOMAIN};;127.0.0.1:6001;3600"))
        .auth("bob", "not-the-password", DOMAIN)
        .to(srv.sip)
        .timeout(5);
    let bad_port = bad_sipp.port;
    let bad = bad_sipp.run(&dir);
    assert_eq!((bad.successful, bad.failed), (0, 1), "{bad:?}");
    // A good one: one transaction line at debug.
    Sipp::new("register-alice", "register.xml", common::Proto::Udp)
        .inf(&format!("alice;{DOMAIN};;127.0.0.1:6002;3600"))
        .auth("alice", "alice-secret", DOMAIN)
        .to(srv.sip)
        .run(&dir)
        .assert_ok(1, "REGISTER alice");

    let raw = RawSip::new(srv.sip);
    // Refusals: an unknown user and a known one not registered (480 both: which users
    // exist stays unknown), a malformed request (400), and a flood of relay attempts for
    // a foreign domain (403).
    let r = raw
        .request(
            invite(
                "x@example.org",
                "nobody@sipcluster.local",
                "unknown",
                raw.local(),
            )
            .as_bytes(),
        )
        .expect("answer");
    assert_eq!(status(&r), 480, "{r}");
    let r = raw
        .request(
            invite(
                "x@example.org",
                "carol@sipcluster.local",
                "offline",
                raw.local(),
            )
            .as_bytes(),
        )
        .expect("answer");
    assert_eq!(status(&r), 480, "{r}");
    let malformed = format!(
        "OPTIONS sip:{} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bKnocallid\r\nMax-Forwards: 70\r\nFrom: <sip:x@example.org>;tag=1\r\nTo: <sip:y@example.org>\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        srv.sip,
        raw.local()
    );
    let r = raw.request(malformed.as_bytes()).expect("answer");
    assert_eq!(status(&r), 400, "{r}");
    const FLOOD: usize = 300;
    for i in 0..FLOOD {
        raw.send(
            invite(
                "x@example.org",
                "+15551234567@gateway.example.net",
                &format!("relay{i}"),
                raw.local(),
            )
            .as_bytes(),
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut refused = 0;
    while refused < FLOOD && Instant::now() < deadline {
        match raw.recv() {
            Some(r) if r.contains("branch=z9hG4bKrelay") && status(&r) == 403 => refused += 1,
            Some(_) => {}
            None => break,
        }
    }
    assert_eq!(refused, FLOOD, "every relay attempt refused with 403");
    // One more after a pause: it passes the rate limit and says how many were held back.
    std::thread::sleep(Duration::from_millis(1200));
    let r = raw
        .request(
            invite(
                "x@example.org",
                "+15551234567@gateway.example.net",
                "relaylast",
                raw.local(),
            )
            .as_bytes(),
        )
        .expect("answer");
    assert_eq!(status(&r), 403, "{r}");
    std::thread::sleep(Duration::from_millis(200));

    let auth = log_lines(&srv, "authentication failed");
    let bob = auth
        .iter()
        .find(|v| field(v, "user") == "bob")
        .unwrap_or_else(|| panic!("no failed-login line for bob:\n{}", srv.log()));
    assert_eq!(field(bob, "reason"), "wrong_response");
    assert_eq!(field(bob, "method"), "REGISTER");
    assert_eq!(field(bob, "code"), 401);
    assert_eq!(field(bob, "transport"), "UDP");
    // The phone's own address, not the dispatcher's internal socket it came through.
    assert_eq!(field(bob, "src"), format!("127.0.0.1:{bad_port}").as_str());
    assert!(
        field(bob, "call_id")
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );

    let rejected = log_lines(&srv, "request rejected");
    let code = |c: u64| rejected.iter().filter(|v| field(v, "code") == c).count();
    assert!(code(480) >= 2 && code(400) >= 1, "{rejected:?}");
    let nobody = rejected
        .iter()
        .find(|v| field(v, "call_id") == "unknown@t")
        .expect("the unknown user's line");
    assert_eq!(field(nobody, "code"), 480);
    assert_eq!(field(nobody, "method"), "INVITE");
    assert_eq!(field(nobody, "call_id"), "unknown@t");
    assert_eq!(field(nobody, "user"), "x");
    assert_eq!(field(nobody, "ruri"), "sip:nobody@sipcluster.local");
    assert_eq!(field(nobody, "src"), raw.local().to_string().as_str());
    // Rate-limited: a burst of 50, then 20 a second, and the count of what was held.
    let flood_lines = code(403);
    assert!(
        (20..=120).contains(&flood_lines),
        "{flood_lines} lines for {FLOOD} refusals"
    );
    let held: u64 = rejected
        .iter()
        .filter_map(|v| field(v, "suppressed").as_u64())
        .sum();
    assert!(held > 0, "no line said how many were held back");
    assert_eq!(
        held as usize + flood_lines,
        FLOOD + 1,
        "every refusal is either logged or counted as held back"
    );

    // Debug: one line per transaction.
    let txns = log_lines(&srv, "transaction");
    assert!(
        txns.iter().any(|v| field(v, "method") == "REGISTER"
            && field(v, "code") == 200
            && field(v, "user") == "alice"
            && field(v, "duration_ms").is_number()),
        "{txns:?}"
    );

    // Never a password or an HA1, nor the digest itself.
    let log = srv.log();
    for secret in [
        "not-the-password".to_owned(),
        "alice-secret".to_owned(),
        sip_auth::Credentials::from_password("bob", DOMAIN, "not-the-password")
            .ha1(sip_auth::Algorithm::Md5)
            .expect("md5")
            .to_owned(),
        sip_auth::Credentials::from_password("alice", DOMAIN, "alice-secret")
            .ha1(sip_auth::Algorithm::Md5)
            .expect("md5")
            .to_owned(),
        "response=".to_owned(),
    ] {
        assert!(!log.contains(&secret), "{secret:?} in the log");
    }

    // Counted by code (a bounded label set) and by reason.
    let m = srv.scrape();
    let v = |s: &str| common::metric_value(&m, s);
    assert!(
        v("sipcluster_sip_responses_total{class=\"4xx\",code=\"480\"}") >= 2.0,
        "{m}"
    );
    assert!(v("sipcluster_sip_responses_total{class=\"4xx\",code=\"403\"}") >= FLOOD as f64);
    assert!(v("sipcluster_sip_responses_total{class=\"4xx\",code=\"401\"}") >= 2.0);
    assert!(v("sipcluster_sip_auth_failures_total{reason=\"wrong_response\"}") >= 1.0);
}

/// The WWW-Authenticate values of a REGISTER's challenge.
fn challenges(srv: &Server) -> Vec<String> {
    let raw = RawSip::new(srv.sip);
    let reg = format!(
        "REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {};rport;branch=z9hG4bKchal\r\nMax-Forwards: 70\r\nFrom: <sip:alice@{DOMAIN}>;tag=1\r\nTo: <sip:alice@{DOMAIN}>\r\nCall-ID: chal@t\r\nCSeq: 1 REGISTER\r\nContact: <sip:alice@{}>\r\nContent-Length: 0\r\n\r\n",
        raw.local(),
        raw.local()
    );
    let r = raw.request(reg.as_bytes()).expect("challenge");
    assert_eq!(status(&r), 401, "{r}");
    r.lines()
        .filter_map(|l| l.strip_prefix("WWW-Authenticate: "))
        .map(str::to_owned)
        .collect()
}

#[test]
fn challenges_follow_auth_algorithms() {
    let dir = workdir("auth_algorithms");
    // The default: MD5 alone (what every phone answers; libre fails on a second one).
    let srv = Server::start(&dir, &[]);
    let c = challenges(&srv);
    assert_eq!(c.len(), 1, "{c:?}");
    assert!(c[0].contains("algorithm=MD5"), "{c:?}");
    drop(srv);
    let srv = Server::start_named(&dir, "sha", &["--auth-algorithms", "SHA-256,MD5"]);
    let c = challenges(&srv);
    assert_eq!(c.len(), 2, "{c:?}");
    assert!(
        c[0].contains("algorithm=SHA-256") && c[1].contains("algorithm=MD5"),
        "{c:?}"
    );
    let bad = run_cli(&["check-config", "--auth-algorithms", "SHA-512"]);
    assert_ne!(bad.code, Some(0));
    assert!(bad.stderr.contains("auth.algorithms"), "{}", bad.stderr);
}

#[test]
fn operator_commands_work_against_the_all_in_one() {
    let dir = workdir("operator_commands");
    // As a new user runs it: no token flag; the commands find the token it generated.
    let srv = Server::start_generating_admin_token(&dir, &[]);
    let state = common::state_home(&dir).display().to_string();
    for (user, port) in [("alice", 6101), ("bob", 6102)] {
        Sipp::new(
            &format!("register-{user}"),
            "register.xml",
            common::Proto::Udp,
        )
        .inf(&format!("{user};{DOMAIN};;127.0.0.1:{port};3600"))
        .auth(user, &format!("{user}-secret"), DOMAIN)
        .to(srv.sip)
        .run(&dir)
        .assert_ok(1, "REGISTER");
    }
    let loc = format!("http://{}", srv.location_api.expect("location API"));
    let admin = format!("http://{}", srv.admin_api.expect("admin API"));
    let cli = |args: &[&str]| run_cli_env(args, &[("XDG_STATE_HOME", &state)]);
    let ok = |args: &[&str]| {
        let o = cli(args);
        assert_eq!(o.code, Some(0), "{args:?}: {o:?}");
        o.stdout
    };

    let list = ok(&["registrations", "--location", &loc, "list"]);
    assert!(
        list.contains("sip:alice@sipcluster.local") && list.contains("sip:bob@sipcluster.local"),
        "{list}"
    );
    assert!(list.contains("sip:alice@127.0.0.1:6101"), "{list}");
    assert!(list.trim_end().ends_with("2 AORs, 2 contacts"), "{list}");
    let show = ok(&[
        "registrations",
        "--location",
        &loc,
        "show",
        "alice@sipcluster.local",
    ]);
    assert!(
        show.contains("sip:alice@sipcluster.local (1 contacts)"),
        "{show}"
    );
    assert!(show.contains("agent     SIPp register"), "{show}");
    assert!(show.contains("expires   in "), "{show}");
    let removed = ok(&[
        "registrations",
        "--location",
        &loc,
        "remove",
        "sip:alice@sipcluster.local",
    ]);
    assert!(removed.contains("removed 1 binding(s)"), "{removed}");
    let gone = cli(&[
        "registrations",
        "--location",
        &loc,
        "show",
        "alice@sipcluster.local",
    ]);
    assert_eq!(gone.code, Some(1), "{gone:?}");
    assert!(gone.stderr.contains("not registered"), "{}", gone.stderr);
    assert!(ok(&["registrations", "--location", &loc, "list"]).contains("1 AORs, 1 contacts"));
    let bad = cli(&["registrations", "--location", &loc, "show", "alice"]);
    assert!(bad.stderr.contains("user@domain"), "{bad:?}");

    let users = ok(&["users", "--location", &loc, "list", "--realm", DOMAIN]);
    assert!(users.contains("alice") && users.contains("bob"), "{users}");
    // The API takes only the admin token it generated, and hands out no HA1 for it.
    let token_file = common::state_home(&dir).join("sipcluster/admin-token");
    let token = std::fs::read_to_string(&token_file).expect("the generated admin token");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let _in_runtime = rt.enter();
    let client = |token: Option<&str>| common::location_client(&loc, token);
    let code = |e: location_client::ClientError| match e {
        location_client::ClientError::Call(s) => s.code(),
        other => panic!("{other}"),
    };
    let denied = rt
        .block_on(client(Some(&token)).fetch_credentials("alice", DOMAIN))
        .expect_err("HA1s over the all-in-one's API");
    assert_eq!(code(denied), tonic::Code::PermissionDenied);
    for anonymous in [None, Some(common::ADMIN_TOKEN)] {
        let refused = rt
            .block_on(client(anonymous).list_users(DOMAIN))
            .expect_err("users without the generated token");
        assert_eq!(code(refused), tonic::Code::Unauthenticated, "{anonymous:?}");
    }

    let targets = ok(&["dispatcher-admin", "--admin", &admin, "targets"]);
    let edge = targets
        .lines()
        .find(|l| l.starts_with("edge"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_else(|| panic!("no edge target in {targets}"))
        .to_owned();
    let drained = ok(&["dispatcher-admin", "--admin", &admin, "drain", &edge]);
    assert!(
        drained.contains(&format!(
            "edge target {edge}: draining: gets no new dialogs"
        )),
        "{drained}"
    );
    let weighted = ok(&["dispatcher-admin", "--admin", &admin, "weight", &edge, "3"]);
    assert!(
        weighted.contains(&format!("edge target {edge}: weight 1 -> 3")),
        "{weighted}"
    );
    let undrained = ok(&["dispatcher-admin", "--admin", &admin, "undrain", &edge]);
    assert!(undrained.contains("takes new dialogs again"), "{undrained}");
    let missing = cli(&[
        "dispatcher-admin",
        "--admin",
        &admin,
        "drain",
        "10.9.9.9:5060",
    ]);
    assert_ne!(missing.code, Some(0));
    assert!(missing.stderr.contains("no target"), "{missing:?}");
}

#[test]
fn check_config_prints_toml_that_reads_back_and_bad_settings_are_refused() {
    let dir = workdir("check_config");
    let first = run_cli(&[
        "check-config",
        "--listen",
        "127.0.0.1:5099",
        "--auth-algorithms",
        "SHA-256,MD5",
        "--metrics",
        "off",
        "--admin",
        "off",
        "--domain",
        "example.com,sipcluster.local",
        "--nonce-secret",
        "a-secret-that-never-shows-0123",
    ]);
    assert_eq!(first.code, Some(0), "{first:?}");
    assert!(
        first.stdout.contains("[sip]")
            && first
                .stdout
                .contains("algorithms = [\n    \"SHA-256\",\n    \"MD5\",\n]")
            || first.stdout.contains("algorithms = [\"SHA-256\", \"MD5\"]"),
        "{}",
        first.stdout
    );
    assert!(
        !first.stdout.contains("a-secret-that-never-shows"),
        "{}",
        first.stdout
    );
    assert!(
        !first.stdout.contains("Some("),
        "a Debug dump: {}",
        first.stdout
    );
    let file = dir.join("resolved.toml");
    std::fs::write(&file, &first.stdout).expect("write");
    let again = run_cli(&["check-config", "--config", &file.display().to_string()]);
    assert_eq!(again.code, Some(0), "{again:?}");
    // The same settings (the note about the unprinted secret aside).
    let body = |s: &str| {
        s.lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(body(&again.stdout), body(&first.stdout));

    // A log level that would print nothing is refused by every service, before it binds.
    let metrics = common::free_addr().to_string();
    for args in [
        vec!["all-in-one", "--metrics", &metrics],
        vec![
            "edge",
            "--location",
            "http://127.0.0.1:1",
            "--nonce-secret",
            "0123456789abcdef0123",
            "--edge-token-file",
            "/nonexistent/edge-token",
            "--metrics",
            &metrics,
        ],
        vec!["location", "--listen", "127.0.0.1:0", "--metrics", &metrics],
        vec![
            "dispatcher",
            "--secret",
            "0123456789abcdef0123",
            "--listen",
            "127.0.0.1:0",
            "--internal",
            "127.0.0.1:0",
            "--admin",
            "off",
            "--metrics",
            &metrics,
        ],
        vec![
            "media-relay",
            "--control",
            "127.0.0.1:0",
            "--metrics",
            &metrics,
        ],
    ] {
        let mut a = args.clone();
        a.extend(["--log-level", "verbose"]);
        let o = run_cli(&a);
        assert_ne!(o.code, Some(0), "{a:?} accepted: {o:?}");
        assert!(
            o.stderr.contains("log.level") && o.stderr.contains("verbose"),
            "{a:?}: {}",
            o.stderr
        );
        assert!(common::http_get(metrics.parse().expect("address"), "/healthz").is_none());
    }
    let o = run_cli(&["all-in-one", "--log-format", "xml"]);
    assert!(o.stderr.contains("log.format"), "{o:?}");

    // Its control APIs are unauthenticated: loopback only.
    for flag in ["--location-listen", "--admin"] {
        let o = run_cli(&["all-in-one", flag, "0.0.0.0:50051"]);
        assert_ne!(o.code, Some(0), "{flag} on every interface accepted");
        assert!(o.stderr.contains("loopback only"), "{}", o.stderr);
    }

    // --location means a location service; the all-in-one has its own in process.
    let o = run_cli(&["all-in-one", "--location", "http://10.0.0.1:50051"]);
    assert_ne!(o.code, Some(0));
    assert!(
        o.stderr.contains("does not use a location service")
            && o.stderr.contains("sipcluster edge"),
        "{}",
        o.stderr
    );
}

/// One service's `check-config` case: a valid file, what a run needs besides it (a
/// secret, which is never printed), a mistake of type, and a token setting.
struct ServiceCheck<'a> {
    service: &'a str,
    file: String,
    env: Vec<(&'a str, String)>,
    /// `(text in the file, its replacement of the wrong type, the key)`.
    wrong_type: (&'a str, &'a str, &'a str),
    /// `(environment variable of a token file, the setting an error names)`.
    token: (&'a str, &'a str),
    /// `(environment variable, value, what the printed file then says)`.
    honoured: (&'a str, String, String),
}

/// The settings of a printed file: its lines but the comments.
fn settings(printed: &str) -> String {
    printed
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
}

impl ServiceCheck<'_> {
    fn run(&self, file: &std::path::Path, env: &[(&str, String)]) -> common::CliOutput {
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .chain(env)
            .map(|(k, v)| (*k, v.as_str()))
            .collect();
        let path = file.display().to_string();
        common::run_cli_env(&["check-config", self.service, "--config", &path], &env)
    }

    /// A valid file passes and its printed form reads back to the same print; an
    /// unknown key and a wrong type fail naming the key; a missing token file fails
    /// naming its setting; an environment variable is honoured. Returns the first print.
    fn check(&self, dir: &std::path::Path) -> String {
        let s = self.service;
        let file = dir.join(format!("{s}.toml"));
        std::fs::write(&file, &self.file).expect("write");
        let first = self.run(&file, &[]);
        assert_eq!(first.code, Some(0), "{s}: {first:?}");
        let printed = dir.join(format!("{s}-printed.toml"));
        std::fs::write(&printed, &first.stdout).expect("write");
        let again = self.run(&printed, &[]);
        assert_eq!(again.code, Some(0), "{s}: {again:?}");
        assert_eq!(settings(&again.stdout), settings(&first.stdout), "{s}");
        assert!(!first.stdout.contains("Some("), "{s}: {}", first.stdout);

        let unknown = dir.join(format!("{s}-unknown.toml"));
        std::fs::write(&unknown, format!("surprise_key = 1\n{}", self.file)).expect("write");
        let o = self.run(&unknown, &[]);
        assert_ne!(o.code, Some(0), "{s}: {o:?}");
        assert!(
            o.stderr.contains("unknown field `surprise_key`"),
            "{s}: {}",
            o.stderr
        );

        let (from, to, key) = self.wrong_type;
        assert!(self.file.contains(from), "{s}: {from}");
        let wrong = dir.join(format!("{s}-wrong.toml"));
        std::fs::write(&wrong, self.file.replacen(from, to, 1)).expect("write");
        let o = self.run(&wrong, &[]);
        assert_ne!(o.code, Some(0), "{s}: {o:?}");
        assert!(
            o.stderr.contains("invalid type") && o.stderr.contains(key),
            "{s}: {}",
            o.stderr
        );

        let (var, setting) = self.token;
        let o = self.run(&file, &[(var, "/nonexistent/token".to_owned())]);
        assert_ne!(o.code, Some(0), "{s}: {o:?}");
        assert!(
            o.stderr.contains(setting) && o.stderr.contains("/nonexistent/token"),
            "{s}: {}",
            o.stderr
        );

        let (var, value, says) = &self.honoured;
        let o = self.run(&file, &[(var, value.clone())]);
        assert_eq!(o.code, Some(0), "{s}: {o:?}");
        assert!(o.stdout.contains(says.as_str()), "{s} {var}: {}", o.stdout);
        first.stdout
    }
}

#[test]
fn check_config_checks_each_service_without_starting_it() {
    let dir = workdir("check_config_services");
    let tokens = common::token_files(&dir);
    let (edge, admin) = (tokens.edge_str(), tokens.admin_str());
    let users = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/all-in-one/users.toml")
        .display()
        .to_string();
    let password_file = dir.join("redis-password");
    std::fs::write(&password_file, "a-redis-password-never-printed\n").expect("write");
    let password_file = password_file.display().to_string();
    // Addresses only: nothing binds, so they need not be free.
    let location = ServiceCheck {
        service: "location",
        file: format!(
            "listen = \"127.0.0.1:50071\"\nmetrics_listen = \"off\"\nusers_file = \"{users}\"\n\
             drain_secs = 7\n\
             [api]\nedge_token_file = \"{edge}\"\nadmin_token_file = \"{admin}\"\n\
             [backend]\nkind = \"redis-cluster\"\n\
             urls = [\"redis://127.0.0.1:7001\", \"redis://127.0.0.1:7002\"]\n\
             password_file = \"{password_file}\"\nusername = \"sipcluster\"\nprefix = \"checked\"\n"
        ),
        env: vec![],
        wrong_type: ("drain_secs = 7", "drain_secs = \"soon\"", "drain_secs"),
        token: ("SIPCLUSTER_EDGE_TOKEN_FILE", "api.edge_token_file"),
        honoured: (
            "SIPCLUSTER_REDIS",
            "redis://127.0.0.1:7010".into(),
            "urls = [\"redis://127.0.0.1:7010\"]".into(),
        ),
    };
    let printed = location.check(&dir);
    assert!(
        printed.contains(&format!("password_file = \"{password_file}\""))
            && !printed.contains("a-redis-password-never-printed"),
        "{printed}"
    );
    let dispatcher = ServiceCheck {
        service: "dispatcher",
        file: format!(
            "secret = \"a-file-secret-never-printed\"\nadmin_listen = \"127.0.0.1:50072\"\n\
             metrics_listen = \"off\"\ndrain_secs = 3\n\
             [api]\nadmin_token_file = \"{admin}\"\n\
             [public]\nudp = [\"127.0.0.1:5091\"]\ntcp = [\"127.0.0.1:5091\"]\n\
             [internal]\nudp = [\"127.0.0.1:5092\"]\n\
             [discovery]\nkind = \"static\"\nedges = [\"127.0.0.1:5093\"]\n\
             [[sets]]\nname = \"carrier\"\nalgorithm = \"priority\"\n\
             targets = [{{ address = \"192.0.2.10:5060\", priority = 1 }}]\n"
        ),
        // The printed file has no secret: it is given again, as a pod's Secret would.
        env: vec![(
            "SIPCLUSTER_DISPATCHER_SECRET",
            "an-env-secret-never-printed".into(),
        )],
        wrong_type: ("drain_secs = 3", "drain_secs = \"soon\"", "drain_secs"),
        token: ("SIPCLUSTER_ADMIN_TOKEN_FILE", "api.admin_token_file"),
        honoured: (
            "SIPCLUSTER_DISPATCHER_EDGES",
            "127.0.0.1:5095,127.0.0.1:5096".into(),
            "edges = [\n    \"127.0.0.1:5095\",\n    \"127.0.0.1:5096\",\n]".into(),
        ),
    };
    let printed = dispatcher.check(&dir);
    assert!(
        !printed.contains("never-printed") && printed.contains("secret is set but not printed"),
        "{printed}"
    );
    let media = ServiceCheck {
        service: "media-relay",
        file: format!(
            "instance = \"relay-a\"\ncontrol_listen = \"127.0.0.1:50073\"\n\
             metrics_listen = \"127.0.0.1:9193\"\nbind_v4 = \"127.0.0.1\"\n\
             port_min = 31000\nport_max = 31999\n\
             [api]\nedge_token_file = \"{edge}\"\n"
        ),
        env: vec![],
        wrong_type: ("port_min = 31000", "port_min = \"low\"", "port_min"),
        token: ("SIPCLUSTER_EDGE_TOKEN_FILE", "api.edge_token_file"),
        honoured: (
            "SIPCLUSTER_MEDIA_PORTS",
            "32000-32999".into(),
            "port_min = 32000\nport_max = 32999".into(),
        ),
    };
    media.check(&dir);
    let edge_check = ServiceCheck {
        service: "edge",
        file: format!(
            "[sip]\nudp = [\"127.0.0.1:5094\"]\ntcp = [\"127.0.0.1:5094\"]\n\
             domains = [\"example.com\"]\nrecord_route = false\n\
             [location]\nendpoint = \"http://127.0.0.1:50071\"\ntoken_file = \"{edge}\"\n\
             [metrics]\nlisten = \"off\"\n"
        ),
        env: vec![(
            "SIPCLUSTER_NONCE_SECRET",
            "a-nonce-secret-never-printed".into(),
        )],
        wrong_type: (
            "record_route = false",
            "record_route = \"no\"",
            "record_route",
        ),
        token: ("SIPCLUSTER_EDGE_TOKEN_FILE", "location.token_file"),
        honoured: (
            "SIPCLUSTER_LOCATION",
            "http://127.0.0.1:50099".into(),
            "endpoint = \"http://127.0.0.1:50099\"".into(),
        ),
    };
    let printed = edge_check.check(&dir);
    assert!(!printed.contains("never-printed"), "{printed}");

    // The dispatcher's secret from its file alone: accepted, and not printed either.
    let file = dir.join("dispatcher.toml").display().to_string();
    let o = run_cli(&["check-config", "dispatcher", "--config", &file]);
    assert_eq!(o.code, Some(0), "{o:?}");
    assert!(!o.stdout.contains("never-printed"), "{}", o.stdout);
    // A Redis password from the environment replaces the file's password_file: used,
    // said to be set, not printed. Both ways from the environment at once are refused.
    let file = dir.join("location.toml").display().to_string();
    let o = run_cli_env(
        &["check-config", "location", "--config", &file],
        &[
            ("SIPCLUSTER_REDIS_PASSWORD_FILE", password_file.as_str()),
            ("SIPCLUSTER_REDIS_PASSWORD", "an-env-password-never-printed"),
        ],
    );
    assert_ne!(o.code, Some(0), "both ways at once: {o:?}");
    assert!(o.stderr.contains("one way"), "{}", o.stderr);
    let o = run_cli_env(
        &["check-config", "location", "--config", &file],
        &[("SIPCLUSTER_REDIS_PASSWORD", "an-env-password-never-printed")],
    );
    assert_eq!(o.code, Some(0), "{o:?}");
    assert!(
        !o.stdout.contains("never-printed")
            && !o.stdout.contains("password_file")
            && o.stdout.contains("Redis password is set but not printed"),
        "{}",
        o.stdout
    );
    // A missing password file and a missing users file are named.
    for (var, setting) in [
        ("SIPCLUSTER_REDIS_PASSWORD_FILE", "backend.password_file"),
        ("SIPCLUSTER_USERS", "users file"),
    ] {
        let o = run_cli_env(
            &["check-config", "location", "--config", &file],
            &[(var, "/nonexistent/file")],
        );
        assert_ne!(o.code, Some(0), "{var}: {o:?}");
        assert!(
            o.stderr.contains(setting) && o.stderr.contains("/nonexistent/file"),
            "{var}: {}",
            o.stderr
        );
    }
    // An edge needs a location service; a service's flags are its own.
    let o = run_cli_env(
        &["check-config", "edge"],
        &[("SIPCLUSTER_NONCE_SECRET", "a-nonce-secret-0123456789")],
    );
    assert!(o.stderr.contains("needs a location service"), "{o:?}");
    let o = run_cli(&["check-config", "location", "--domain", "example.com"]);
    assert_eq!(o.code, Some(2), "{o:?}");
    // The log flags these services take outside their file are checked too.
    let o = run_cli(&[
        "check-config",
        "media-relay",
        "--edge-token-file",
        &edge,
        "--log-level",
        "verbose",
    ]);
    assert!(o.stderr.contains("log.level"), "{o:?}");
}

#[test]
fn start_lines_say_what_is_served() {
    let dir = workdir("start_lines");
    let srv = Server::start(&dir, &[]);
    let log = srv.log();
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a log file:\n{log}"
    );
    assert!(
        log.contains(&format!(
            "serving /metrics, /healthz and /readyz addr={}",
            srv.metrics
        )),
        "{log}"
    );
    assert!(
        !log.contains("metrics=None") && !log.contains("Some("),
        "{log}"
    );
    assert!(log.contains("all-in-one started"), "{log}");
    assert!(
        log.contains(&format!("location_api={}", srv.location_api.expect("api")))
            && log.contains(&format!("admin_api={}", srv.admin_api.expect("api"))),
        "{log}"
    );
    let loc = Server::location(&dir, "location", &[]);
    let log = loc.log();
    assert!(log.contains("backend=memory (4 users)"), "{log}");
    assert!(!log.to_lowercase().contains("ha1"), "{log}");
}
