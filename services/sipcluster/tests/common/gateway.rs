//! A minimal SIP gateway (UAS over UDP or TCP) of our own, for destination-set tests: answers
//! OPTIONS probes 200, INVITEs with a fixed final status (after a 100), BYEs 200, and
//! counts what it received. SIPp cannot play this part: a probe OPTIONS arriving where
//! its scenario expects an INVITE aborts the scenario.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::tcp_ua::header;

/// A running gateway; stops when dropped.
pub struct Gateway {
    pub addr: SocketAddr,
    pub invites: Arc<AtomicU64>,
    pub byes: Arc<AtomicU64>,
    pub options: Arc<AtomicU64>,
    /// Each request's method and top Via, in arrival order.
    pub via: Arc<Mutex<Vec<String>>>,
    contact: Arc<Mutex<String>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Gateway {
    /// Listen on a free loopback port; answer INVITEs with `status`.
    pub fn spawn(status: u16) -> Gateway {
        Gateway::spawn_with(status, false)
    }

    /// [`Gateway::spawn`], ringing (180) before the final status.
    pub fn spawn_ringing(status: u16) -> Gateway {
        Gateway::spawn_with(status, true)
    }

    fn spawn_with(status: u16, ring: bool) -> Gateway {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind gateway");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let addr = sock.local_addr().expect("addr");
        let (seen, stop) = (Seen::default(), Arc::new(AtomicBool::new(false)));
        let (counts, st) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !st.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                for r in answer(&msg, status, ring, addr, &counts) {
                    let _ = sock.send_to(r.as_bytes(), from);
                }
            }
        });
        Gateway::running(addr, seen, stop, thread)
    }

    /// A gateway over TCP (a trunk's SBC behind a TLS terminator, in the TLS tests):
    /// each connection's messages framed by Content-Length, answered on it.
    pub fn spawn_tcp(status: u16) -> Gateway {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind gateway");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let (seen, stop) = (Seen::default(), Arc::new(AtomicBool::new(false)));
        let (counts, st) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                let Ok((mut conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let (counts, st) = (counts.clone(), st.clone());
                std::thread::spawn(move || {
                    let _ = conn.set_nonblocking(false);
                    let _ = conn.set_read_timeout(Some(Duration::from_millis(100)));
                    let mut pending = Vec::new();
                    let mut buf = vec![0u8; 65536];
                    while !st.load(Ordering::Relaxed) {
                        match conn.read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => pending.extend_from_slice(&buf[..n]),
                            Err(e)
                                if e.kind() == std::io::ErrorKind::WouldBlock
                                    || e.kind() == std::io::ErrorKind::TimedOut =>
                            {
                                continue;
                            }
                            Err(_) => break,
                        }
                        while let Some(msg) = next_message(&mut pending) {
                            for r in answer(&msg, status, false, addr, &counts) {
                                let _ = conn.write_all(r.as_bytes());
                            }
                        }
                    }
                });
            }
        });
        Gateway::running(addr, seen, stop, thread)
    }

    fn running(
        addr: SocketAddr,
        seen: Seen,
        stop: Arc<AtomicBool>,
        thread: JoinHandle<()>,
    ) -> Gateway {
        Gateway {
            addr,
            invites: seen.invites,
            byes: seen.byes,
            options: seen.options,
            via: seen.via,
            contact: seen.contact,
            stop,
            thread: Some(thread),
        }
    }

    /// The Contact it answers with (default `sip:gw@<addr>`): behind a TLS terminator, the
    /// terminator's address with `;transport=tls`, as an SBC says where it is reached.
    pub fn set_contact(&self, uri: &str) {
        *self.contact.lock().unwrap_or_else(|p| p.into_inner()) = uri.to_owned();
    }
}

/// What a gateway counts, shared with its threads.
#[derive(Clone, Default)]
struct Seen {
    invites: Arc<AtomicU64>,
    byes: Arc<AtomicU64>,
    options: Arc<AtomicU64>,
    via: Arc<Mutex<Vec<String>>>,
    /// Empty: `sip:gw@<addr>`.
    contact: Arc<Mutex<String>>,
}

/// One whole message from the front of a stream's bytes (CRLF keep-alives skipped).
fn next_message(pending: &mut Vec<u8>) -> Option<String> {
    while pending.starts_with(b"\r\n") {
        pending.drain(..2);
    }
    let head_end = pending.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&pending[..head_end]).into_owned();
    let body: usize = header(&head, "Content-Length")
        .first()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    if pending.len() < head_end + body {
        return None;
    }
    let msg = String::from_utf8_lossy(&pending[..head_end + body]).into_owned();
    pending.drain(..head_end + body);
    Some(msg)
}

/// The gateway's answers to `msg` (none to what it does not answer), counted in `seen`.
fn answer(msg: &str, status: u16, ring: bool, addr: SocketAddr, seen: &Seen) -> Vec<String> {
    let method = msg.split(' ').next().unwrap_or_default();
    if let Some(v) = header(msg, "Via").first() {
        seen.via
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(format!("{method} {v}"));
    }
    let reply = |code: u16, reason: &str| {
        let mut r = format!("SIP/2.0 {code} {reason}\r\n");
        for v in header(msg, "Via") {
            r += &format!("Via: {v}\r\n");
        }
        for h in ["From", "Call-ID", "CSeq"] {
            if let Some(v) = header(msg, h).first() {
                r += &format!("{h}: {v}\r\n");
            }
        }
        let to = header(msg, "To").first().copied().unwrap_or_default();
        if code > 100 && !to.contains("tag=") {
            r += &format!("To: {to};tag=gw{}\r\n", addr.port());
        } else {
            r += &format!("To: {to}\r\n");
        }
        for v in header(msg, "Record-Route") {
            r += &format!("Record-Route: {v}\r\n");
        }
        let contact = seen
            .contact
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if contact.is_empty() {
            r += &format!("Contact: <sip:gw@{addr}>\r\n");
        } else {
            r += &format!("Contact: <{contact}>\r\n");
        }
        r += "Content-Length: 0\r\n\r\n";
        r
    };
    match method {
        "OPTIONS" => {
            seen.options.fetch_add(1, Ordering::Relaxed);
            vec![reply(200, "OK")]
        }
        "INVITE" => {
            seen.invites.fetch_add(1, Ordering::Relaxed);
            let mut out = vec![reply(100, "Trying")];
            if ring {
                out.push(reply(180, "Ringing"));
            }
            out.push(reply(
                status,
                match status {
                    200 => "OK",
                    486 => "Busy Here",
                    _ => "Unavailable",
                },
            ));
            out
        }
        "BYE" => {
            seen.byes.fetch_add(1, Ordering::Relaxed);
            vec![reply(200, "OK")]
        }
        _ => Vec::new(),
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
