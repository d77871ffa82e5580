//! # sip-flood: REGISTERs at a fixed rate, retransmitted like a UA would
//!
//! For overload runs. SIPp keeps a full call state per REGISTER and needs about a core
//! for 20,000/s on these machines, so on the same two cores it cannot offer twice what
//! the server sustains: what it measured as "overload" was mostly SIPp's own limit. This
//! offers `--rate` REGISTERs per second for `--secs` seconds from one UDP socket, each a
//! new transaction (its own Call-ID and branch) for one of `--users` subscribers,
//! retransmitted on RFC 3261 Timer E (0.5, 1, 2, 4, 4 … s) until a final response comes,
//! as real phones do under overload, and reports what came back: 200s (goodput), 503s,
//! other codes, nothing, and the latency of the 200s from the first send.
//!
//! The run is bounded: `--secs` of sending, then `--drain-secs` to collect answers.
//! Loopback only by default.
//!
//! `--echo ADDR` makes it the other end instead: the physical floor of a SIP server on
//! this machine, one receive and one send per request (the request's bytes sent back
//! with a `SIP/2.0 200 OK` start line), for `--secs` + `--drain-secs` seconds.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "REGISTERs at a fixed rate, retransmitted like a UA, for overload runs")]
struct Args {
    /// The server's SIP address.
    #[arg(long, required_unless_present = "echo")]
    target: Option<SocketAddr>,
    /// REGISTERs per second (new transactions; retransmissions come on top).
    #[arg(long, required_unless_present = "echo")]
    rate: Option<u32>,
    /// Be the echo floor on this address instead (see the module docs).
    #[arg(long, conflicts_with_all = ["target", "rate"])]
    echo: Option<SocketAddr>,
    /// Seconds of sending.
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// Seconds to wait for late answers after the last new request.
    #[arg(long, default_value_t = 5)]
    drain_secs: u64,
    /// Subscribers, `user0` … (the domain below).
    #[arg(long, default_value_t = 10_000)]
    users: u32,
    /// The SIP domain.
    #[arg(long, default_value = "sipcluster.local")]
    domain: String,
    /// Local address to send from.
    #[arg(long, default_value = "127.0.0.1:0")]
    bind: SocketAddr,
    /// Only loopback targets unless this is given.
    #[arg(long)]
    allow_non_loopback: bool,
}

/// Timer E for a non-INVITE over UDP: T1 doubling, capped at T2 (RFC 3261 §17.1.2.2).
const RETRANSMIT_AFTER_MS: [u64; 9] = [
    500, 1500, 3500, 7500, 11_500, 15_500, 19_500, 23_500, 27_500,
];

struct Shared {
    /// Per request: the final status that came back (0: none yet).
    status: Vec<AtomicU16>,
    /// Per request: µs from the first send to the final response.
    latency_us: Vec<AtomicU32>,
    /// Per request: µs since the start at its first send.
    sent_at_us: Vec<AtomicU64>,
    start: Instant,
    done: AtomicBool,
    retransmissions: AtomicU64,
    unknown: AtomicU64,
}

fn main() -> Result<()> {
    let a = Args::parse();
    if let Some(listen) = a.echo {
        return echo(listen, Duration::from_secs(a.secs + a.drain_secs));
    }
    let (Some(target), Some(rate)) = (a.target, a.rate) else {
        bail!("--target and --rate, or --echo");
    };
    if !target.ip().is_loopback() && !a.allow_non_loopback {
        bail!("{target}: not a loopback address (--allow-non-loopback)");
    }
    if rate == 0 || a.secs == 0 {
        bail!("--rate and --secs must be positive");
    }
    let total = usize::try_from(u64::from(rate) * a.secs).context("too many requests")?;
    let sock = UdpSocket::bind(a.bind).context("bind")?;
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    let local = sock.local_addr()?;
    let shared = Arc::new(Shared {
        status: (0..total).map(|_| AtomicU16::new(0)).collect(),
        latency_us: (0..total).map(|_| AtomicU32::new(0)).collect(),
        sent_at_us: (0..total).map(|_| AtomicU64::new(0)).collect(),
        start: Instant::now(),
        done: AtomicBool::new(false),
        retransmissions: AtomicU64::new(0),
        unknown: AtomicU64::new(0),
    });
    let receiver = {
        let (sock, shared) = (sock.try_clone()?, shared.clone());
        std::thread::spawn(move || receive(&sock, &shared))
    };
    send(&a, target, rate, &sock, local, &shared, total)?;
    shared.done.store(true, Ordering::Relaxed);
    receiver
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))?;
    report(&a, rate, &shared, total);
    Ok(())
}

/// Answer every datagram with its own bytes under a `SIP/2.0 200 OK` start line, until
/// `for_how_long` has passed.
fn echo(listen: SocketAddr, for_how_long: Duration) -> Result<()> {
    let sock = UdpSocket::bind(listen).context("bind")?;
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut buf = vec![0u8; 65_536];
    let mut out = Vec::with_capacity(65_536);
    let end = Instant::now() + for_how_long;
    while Instant::now() < end {
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let rest = memchr::memmem::find(&buf[..n], b"\r\n").map_or(n, |i| i + 2);
        out.clear();
        out.extend_from_slice(b"SIP/2.0 200 OK\r\n");
        out.extend_from_slice(&buf[rest..n]);
        let _ = sock.send_to(&out, from);
    }
    Ok(())
}

fn request(a: &Args, local: SocketAddr, i: usize) -> Vec<u8> {
    let user = i as u64 % u64::from(a.users);
    let d = &a.domain;
    format!(
        "REGISTER sip:{d} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-flood-{i}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:user{user}@{d}>;tag=f{i}\r\nTo: <sip:user{user}@{d}>\r\n\
         Call-ID: flood-{i}@{local}\r\nCSeq: 1 REGISTER\r\nContact: <sip:user{user}@{local}>\r\n\
         Expires: 3600\r\nUser-Agent: sip-flood\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// Send new requests evenly paced, and retransmissions when due.
fn send(
    a: &Args,
    target: SocketAddr,
    rate: u32,
    sock: &UdpSocket,
    local: SocketAddr,
    sh: &Shared,
    total: usize,
) -> Result<()> {
    let interval_ns = 1_000_000_000u64 / u64::from(rate);
    // One FIFO per retransmission: requests enter each in the order of their first send,
    // so each FIFO is sorted by deadline.
    let mut pending: Vec<std::collections::VecDeque<usize>> =
        vec![Default::default(); RETRANSMIT_AFTER_MS.len()];
    let mut next = 0usize;
    let end = Duration::from_secs(a.secs + a.drain_secs);
    loop {
        let now = sh.start.elapsed();
        if now >= end {
            return Ok(());
        }
        let now_ns = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
        // New requests due by now.
        while next < total && (next as u64) * interval_ns <= now_ns {
            let bytes = request(a, local, next);
            sh.sent_at_us[next].store(now_ns / 1000, Ordering::Relaxed);
            // A full socket buffer is the server not reading: the request is still offered
            // (and retransmitted), as it would be from a phone.
            let _ = sock.send_to(&bytes, target);
            pending[0].push_back(next);
            next += 1;
        }
        // Retransmissions due by now.
        for level in 0..pending.len() {
            while let Some(&i) = pending[level].front() {
                let due =
                    sh.sent_at_us[i].load(Ordering::Relaxed) + RETRANSMIT_AFTER_MS[level] * 1000;
                if due > now_ns / 1000 {
                    break;
                }
                pending[level].pop_front();
                if sh.status[i].load(Ordering::Relaxed) >= 200 {
                    continue;
                }
                let _ = sock.send_to(&request(a, local, i), target);
                sh.retransmissions.fetch_add(1, Ordering::Relaxed);
                if let Some(q) = pending.get_mut(level + 1) {
                    q.push_back(i);
                }
            }
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Take responses until the sender is done; the first final response of each request
/// counts.
fn receive(sock: &UdpSocket, sh: &Shared) {
    let mut buf = vec![0u8; 65_536];
    while !sh.done.load(Ordering::Relaxed) {
        let Ok((n, _)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let at_us = u64::try_from(sh.start.elapsed().as_micros()).unwrap_or(u64::MAX);
        match parse(&buf[..n]) {
            Some((code, i)) if i < sh.status.len() && code >= 200 => {
                if sh.status[i]
                    .compare_exchange(0, code, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
                {
                    let sent = sh.sent_at_us[i].load(Ordering::Relaxed);
                    let us = u32::try_from(at_us.saturating_sub(sent)).unwrap_or(u32::MAX);
                    sh.latency_us[i].store(us, Ordering::Relaxed);
                }
            }
            Some(_) => {}
            None => {
                sh.unknown.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The status code and the request index (from `Call-ID: flood-<i>@`) of a response.
fn parse(b: &[u8]) -> Option<(u16, usize)> {
    let code = std::str::from_utf8(b.get(8..11)?).ok()?.parse().ok()?;
    let at = memchr::memmem::find(b, b"flood-")? + 6;
    // The Via's branch carries the same index; the Call-ID comes after it either way.
    let digits = b[at..].iter().take_while(|c| c.is_ascii_digit()).count();
    let i = std::str::from_utf8(&b[at..at + digits])
        .ok()?
        .parse()
        .ok()?;
    Some((code, i))
}

fn report(a: &Args, rate: u32, sh: &Shared, total: usize) {
    let mut ok = 0u64;
    let mut unavailable = 0u64;
    let mut other = 0u64;
    let mut none = 0u64;
    let mut lat = Vec::with_capacity(total);
    for i in 0..total {
        match sh.status[i].load(Ordering::Relaxed) {
            0 => none += 1,
            200..=299 => {
                ok += 1;
                lat.push(sh.latency_us[i].load(Ordering::Relaxed));
            }
            503 => unavailable += 1,
            _ => other += 1,
        }
    }
    lat.sort_unstable();
    let pct = |p: usize| {
        lat.get((lat.len() * p / 100).min(lat.len().saturating_sub(1)))
            .map_or(0.0, |us| f64::from(*us) / 1000.0)
    };
    let secs = a.secs as f64;
    println!(
        "offered={}/s requests={total} ok={ok} goodput={:.0}/s unavailable_503={unavailable} other={other} unanswered={none} retransmissions={} p50_ms={:.1} p99_ms={:.1} unparsed={}",
        rate,
        ok as f64 / secs,
        sh.retransmissions.load(Ordering::Relaxed),
        pct(50),
        pct(99),
        sh.unknown.load(Ordering::Relaxed),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_code_and_the_index() {
        let r = b"SIP/2.0 503 Service Unavailable\r\nVia: SIP/2.0/UDP 127.0.0.1:5;branch=z9hG4bK-flood-42\r\nCall-ID: flood-42@127.0.0.1:5\r\n\r\n";
        assert_eq!(parse(r), Some((503, 42)));
        assert_eq!(parse(b"garbage"), None);
    }
}
