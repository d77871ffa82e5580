//! `sipcluster top` against running services: an all-in-one taking REGISTERs while the
//! command scrapes it, a location service beside it, and an address where nothing
//! listens. The frame must name each target and its role, show the REGISTER rate of the
//! window, the build's version, and DOWN for the dead address, and the command must end
//! with 0.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{RawSip, Server, free_addr, run_cli, status, workdir};

const DOMAIN: &str = "sipcluster.local";

/// Unauthenticated REGISTERs (each answered 401) to `to` for `d`, one every 50 ms.
fn register_for(to: SocketAddr, d: Duration) -> u32 {
    let raw = RawSip::new(to);
    let local = raw.local();
    let end = Instant::now() + d;
    let mut sent = 0;
    while Instant::now() < end {
        sent += 1;
        let reg = format!(
            "REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {local};rport;branch=z9hG4bKtop{sent}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:alice@{DOMAIN}>;tag=t{sent}\r\nTo: <sip:alice@{DOMAIN}>\r\n\
             Call-ID: top-{sent}@test\r\nCSeq: 1 REGISTER\r\nContact: <sip:alice@{local}>\r\n\
             Content-Length: 0\r\n\r\n"
        );
        let r = raw.request(reg.as_bytes()).expect("an answer to REGISTER");
        assert_eq!(status(&r), 401, "{r}");
        std::thread::sleep(Duration::from_millis(50));
    }
    sent
}

/// The cells of `instance`'s line in the section whose heading starts with `section`.
fn cells<'a>(frame: &'a str, section: &str, instance: &str) -> Vec<&'a str> {
    let mut lines = frame
        .lines()
        .skip_while(|l| !l.starts_with(section))
        .take_while(|l| !l.is_empty());
    let head: Vec<&str> = lines.next().expect("section").split_whitespace().collect();
    let row = lines
        .find(|l| l.split_whitespace().next() == Some(instance))
        .unwrap_or_else(|| panic!("no {instance} in {section}:\n{frame}"));
    assert!(head.len() > 1, "{frame}");
    row.split_whitespace().collect()
}

#[test]
fn top_shows_roles_rates_version_and_down_targets() {
    let dir = workdir("top");
    let aio = Server::start(&dir, &[]);
    let loc = Server::location(&dir, "location", &[]);
    let dead = free_addr();
    let (aio_m, loc_m) = (
        aio.metrics.to_string(),
        format!("http://{}/metrics", loc.metrics),
    );
    let dead_s = dead.to_string();

    // REGISTERs throughout the command's window (two scrapes one second apart).
    let args: Vec<String> = ["top", &aio_m, &loc_m, &dead_s, "--once", "--interval", "1"]
        .map(str::to_owned)
        .into();
    let top =
        std::thread::spawn(move || run_cli(&args.iter().map(String::as_str).collect::<Vec<_>>()));
    let sent = register_for(aio.sip, Duration::from_secs(3));
    let out = top.join().unwrap();
    assert_eq!(out.code, Some(0), "{out:?}");
    let frame = &out.stdout;
    assert!(sent > 10, "{sent} REGISTERs");
    // A pipe gets plain text, no terminal control.
    assert!(!frame.contains('\x1b'), "{frame}");
    assert_eq!(frame.matches("sipcluster top:").count(), 1, "{frame}");

    let version = env!("CARGO_PKG_VERSION");
    let aio_row = cells(frame, "INSTANCE", &aio_m);
    assert_eq!(&aio_row[1..3], ["all-in-one", version], "{frame}");
    assert_eq!(aio_row.last(), Some(&"up"), "{frame}");
    let loc_row = cells(frame, "INSTANCE", &loc.metrics.to_string());
    assert_eq!(&loc_row[1..3], ["location", version], "{frame}");
    let dead_row = cells(frame, "INSTANCE", &dead_s);
    assert!(dead_row.contains(&"DOWN"), "{frame}");
    assert!(frame.contains("refused"), "the error is shown:\n{frame}");

    // SIP/s columns: instance, INVITE, REGISTER, BYE, OPTIONS, other, 2xx, 4xx, ...
    let sip = cells(frame, "SIP/s", &aio_m);
    let rate = |i: usize| -> f64 { sip[i].parse().unwrap_or_else(|_| panic!("{frame}")) };
    assert!(rate(2) > 1.0, "REGISTER/s of ~20/s sent:\n{frame}");
    assert!(rate(7) > 1.0, "4xx/s (the 401s):\n{frame}");
    assert_eq!(rate(1), 0.0, "no INVITE sent:\n{frame}");
    // The location service has no SIP metrics: shown as absent, not as 0.
    assert_eq!(
        cells(frame, "SIP/s", &loc.metrics.to_string())[2],
        "-",
        "{frame}"
    );
    let total = cells(frame, "SIP/s", "TOTAL");
    assert!(total[2].parse::<f64>().unwrap() > 1.0, "{frame}");

    // Without --once, --count frames one after the other, a blank line between.
    let out = run_cli(&["top", &aio_m, "--count", "2", "--interval", "0.3"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout.matches("sipcluster top:").count(), 2, "{out:?}");
    assert!(out.stdout.contains("\n\nsipcluster top:"), "{out:?}");
}

#[test]
fn top_refuses_what_it_cannot_read() {
    for args in [
        &["top", "https://127.0.0.1:9090"][..],
        &["top", "127.0.0.1"],
        &["top", "127.0.0.1:9090", "--interval", "0"],
        &["top", "127.0.0.1:9090", "--count", "0"],
    ] {
        let out = run_cli(args);
        assert_eq!(out.code, Some(1), "{args:?}: {out:?}");
        assert!(out.stdout.is_empty(), "{args:?}: {out:?}");
    }
}
