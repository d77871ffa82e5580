//! A minimal SIP gateway (UAS over UDP) of our own, for destination-set tests: answers
//! OPTIONS probes 200, INVITEs with a fixed final status (after a 100), BYEs 200, and
//! counts what it received. SIPp cannot play this part: a probe OPTIONS arriving where
//! its scenario expects an INVITE aborts the scenario.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use super::tcp_ua::header;

/// A running gateway; stops when dropped.
pub struct Gateway {
    pub addr: SocketAddr,
    pub invites: Arc<AtomicU64>,
    pub byes: Arc<AtomicU64>,
    pub options: Arc<AtomicU64>,
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
        let (invites, byes, options) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let (i, b, o, st) = (invites.clone(), byes.clone(), options.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !st.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                let method = msg.split(' ').next().unwrap_or_default();
                let reply = |code: u16, reason: &str| {
                    let mut r = format!("SIP/2.0 {code} {reason}\r\n");
                    for v in header(&msg, "Via") {
                        r += &format!("Via: {v}\r\n");
                    }
                    for h in ["From", "Call-ID", "CSeq"] {
                        if let Some(v) = header(&msg, h).first() {
                            r += &format!("{h}: {v}\r\n");
                        }
                    }
                    let to = header(&msg, "To").first().copied().unwrap_or_default();
                    if code > 100 && !to.contains("tag=") {
                        r += &format!("To: {to};tag=gw{}\r\n", addr.port());
                    } else {
                        r += &format!("To: {to}\r\n");
                    }
                    for v in header(&msg, "Record-Route") {
                        r += &format!("Record-Route: {v}\r\n");
                    }
                    r += &format!("Contact: <sip:gw@{addr}>\r\nContent-Length: 0\r\n\r\n");
                    let _ = sock.send_to(r.as_bytes(), from);
                };
                match method {
                    "OPTIONS" => {
                        o.fetch_add(1, Ordering::Relaxed);
                        reply(200, "OK");
                    }
                    "INVITE" => {
                        i.fetch_add(1, Ordering::Relaxed);
                        reply(100, "Trying");
                        if ring {
                            reply(180, "Ringing");
                        }
                        reply(
                            status,
                            match status {
                                200 => "OK",
                                486 => "Busy Here",
                                _ => "Unavailable",
                            },
                        );
                    }
                    "BYE" => {
                        b.fetch_add(1, Ordering::Relaxed);
                        reply(200, "OK");
                    }
                    _ => {}
                }
            }
        });
        Gateway {
            addr,
            invites,
            byes,
            options,
            stop,
            thread: Some(thread),
        }
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
