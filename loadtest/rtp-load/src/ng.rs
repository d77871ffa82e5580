//! rtpengine's ng control protocol: one datagram per request, `<cookie> <bencoded dict>`,
//! answered by `<cookie> <bencoded dict>` with `result` = `ok` (or `error` and an
//! `error-reason`). A session is an `offer` (the caller's SDP, from its tag) and an
//! `answer` (the callee's SDP, with both tags); each reply carries the SDP rewritten to
//! the relay's address and the port that the other party is to send to.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::bencode::Value;

/// A request unanswered for this long is sent again (same cookie: rtpengine answers a
/// repeated cookie from its cache instead of running the command twice).
const RETRY_AFTER: Duration = Duration::from_millis(500);
const TRIES: u32 = 6;

/// A client of one rtpengine's ng port.
pub struct Ng {
    sock: UdpSocket,
    server: SocketAddr,
    prefix: String,
    next: u64,
    buf: Vec<u8>,
}

impl Ng {
    /// A client of `server`, checked with a `ping`.
    pub fn connect(server: SocketAddr) -> Result<Ng> {
        let any: IpAddr = if server.is_ipv4() {
            [0, 0, 0, 0].into()
        } else {
            std::net::Ipv6Addr::UNSPECIFIED.into()
        };
        let sock = UdpSocket::bind(SocketAddr::new(any, 0))?;
        sock.set_read_timeout(Some(RETRY_AFTER))?;
        let mut ng = Ng {
            sock,
            server,
            // Cookies must not repeat across runs while rtpengine still caches replies.
            prefix: format!("{}-{}", std::process::id(), rand_suffix()),
            next: 0,
            buf: vec![0; 65536],
        };
        let pong = ng.request(Value::dict([("command", Value::str("ping"))]))?;
        if pong.get("result").and_then(Value::as_text).as_deref() != Some("pong") {
            bail!("rtpengine at {server} answered ping with {pong:?}");
        }
        Ok(ng)
    }

    /// One command; its reply when `result` is not `error`.
    pub fn request(&mut self, cmd: Value) -> Result<Value> {
        self.next += 1;
        let cookie = format!("{}-{}", self.prefix, self.next);
        let mut msg = format!("{cookie} ").into_bytes();
        cmd.encode_into(&mut msg);
        for _ in 0..TRIES {
            self.sock.send_to(&msg, self.server)?;
            loop {
                let n = match self.sock.recv_from(&mut self.buf) {
                    Ok((n, from)) if from == self.server => n,
                    Ok(_) => continue,
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        break;
                    }
                    Err(e) => return Err(e.into()),
                };
                let got = &self.buf[..n];
                let Some(body) = got
                    .strip_prefix(cookie.as_bytes())
                    .and_then(|b| b.strip_prefix(b" "))
                else {
                    // A late answer to an earlier, retried request.
                    continue;
                };
                let reply = Value::decode(body).context("rtpengine reply")?;
                if reply.get("result").and_then(Value::as_text).as_deref() == Some("error") {
                    bail!(
                        "rtpengine: {}",
                        reply
                            .get("error-reason")
                            .and_then(Value::as_text)
                            .unwrap_or_default()
                    );
                }
                return Ok(reply);
            }
        }
        bail!("rtpengine at {} did not answer", self.server)
    }

    /// The caller (`from_tag`) receives at `at`: the address the callee is to send to.
    pub fn offer(&mut self, call: &str, from_tag: &str, at: SocketAddr) -> Result<SocketAddr> {
        let reply = self.request(Value::dict([
            ("command", Value::str("offer")),
            ("call-id", Value::str(call)),
            ("from-tag", Value::str(from_tag)),
            ("sdp", Value::str(&phone_sdp(at))),
        ]))?;
        reply_media(&reply)
    }

    /// The callee (`to_tag`) receives at `at`: the address the caller is to send to.
    pub fn answer(
        &mut self,
        call: &str,
        from_tag: &str,
        to_tag: &str,
        at: SocketAddr,
    ) -> Result<SocketAddr> {
        let reply = self.request(Value::dict([
            ("command", Value::str("answer")),
            ("call-id", Value::str(call)),
            ("from-tag", Value::str(from_tag)),
            ("to-tag", Value::str(to_tag)),
            ("sdp", Value::str(&phone_sdp(at))),
        ]))?;
        reply_media(&reply)
    }

    /// End the call now: without `delete-delay` = 0 rtpengine keeps its ports for 30 s,
    /// and the next step's sessions would find fewer.
    pub fn delete(&mut self, call: &str, from_tag: &str) -> Result<()> {
        self.request(Value::dict([
            ("command", Value::str("delete")),
            ("call-id", Value::str(call)),
            ("from-tag", Value::str(from_tag)),
            ("delete-delay", Value::Int(0)),
        ]))
        .map(drop)
    }
}

/// Enough entropy that two runs with the same PID do not share cookies.
fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
}

/// A phone's SDP: one G.711 µ-law audio stream at `at`, as our relay's sessions get it.
pub fn phone_sdp(at: SocketAddr) -> String {
    let fam = if at.is_ipv4() { "IP4" } else { "IP6" };
    let ip = at.ip();
    format!(
        "v=0\r\no=- 1 1 IN {fam} {ip}\r\ns=rtp-load\r\nc=IN {fam} {ip}\r\nt=0 0\r\n\
         m=audio {} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=ptime:20\r\na=sendrecv\r\n",
        at.port()
    )
}

fn reply_media(reply: &Value) -> Result<SocketAddr> {
    let sdp = reply
        .get("sdp")
        .and_then(Value::as_text)
        .context("no sdp in rtpengine's reply")?;
    media_addr(&sdp)
}

/// The address of the first audio stream of `sdp`: its port, at the media-level `c=` if
/// there is one, else the session-level one.
pub fn media_addr(sdp: &str) -> Result<SocketAddr> {
    let mut session_c = None;
    let mut port = None;
    let mut media_c = None;
    for line in sdp.lines().map(str::trim_end) {
        if let Some(m) = line.strip_prefix("m=") {
            if port.is_some() {
                break;
            }
            if let Some(rest) = m.strip_prefix("audio ") {
                let p = rest.split([' ', '/']).next().unwrap_or_default();
                port = Some(p.parse::<u16>().context("m=audio port")?);
            }
        } else if let Some(c) = line.strip_prefix("c=") {
            let ip = c
                .split_whitespace()
                .nth(2)
                .context("c= without address")?
                .parse::<IpAddr>()
                .context("c= address")?;
            if port.is_some() {
                media_c = Some(ip);
            } else {
                session_c = Some(ip);
            }
        }
    }
    let port = port.context("no m=audio in the SDP")?;
    let ip = media_c
        .or(session_c)
        .context("no c= for the audio stream")?;
    Ok(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phone_sdp_round_trips_through_media_addr() {
        for at in ["127.0.0.1:30000", "[::1]:4242"] {
            let at: SocketAddr = at.parse().unwrap();
            assert_eq!(media_addr(&phone_sdp(at)).unwrap(), at);
        }
    }

    #[test]
    fn rtpengine_rewritten_sdp() {
        let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\n\
                   m=audio 40018 RTP/AVP 0\r\nc=IN IP4 127.0.0.3\r\na=rtpmap:0 PCMU/8000\r\n\
                   a=sendrecv\r\na=rtcp:40019\r\n";
        assert_eq!(media_addr(sdp).unwrap(), "127.0.0.3:40018".parse().unwrap());
        let session_only = sdp.replace("c=IN IP4 127.0.0.3\r\n", "");
        assert_eq!(
            media_addr(&session_only).unwrap(),
            "127.0.0.2:40018".parse().unwrap()
        );
        assert!(media_addr("v=0\r\nc=IN IP4 127.0.0.1\r\n").is_err());
    }

    /// A stand-in rtpengine on loopback: answers a ping, ignores the first offer (the
    /// client must retry with the same cookie) and refuses the delete.
    #[test]
    fn request_retries_and_reports_errors() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut cookies = Vec::new();
            let mut offers = 0;
            for _ in 0..4 {
                let (n, from) = server.recv_from(&mut buf).unwrap();
                let msg = &buf[..n];
                let sp = msg.iter().position(|&c| c == b' ').unwrap();
                let cookie = msg[..sp].to_vec();
                let cmd = Value::decode(&msg[sp + 1..]).unwrap();
                let reply = match cmd
                    .get("command")
                    .and_then(Value::as_text)
                    .unwrap()
                    .as_str()
                {
                    "ping" => Value::dict([("result", Value::str("pong"))]),
                    "offer" => {
                        offers += 1;
                        if offers == 1 {
                            cookies.push(cookie);
                            continue;
                        }
                        let sdp = phone_sdp("127.0.0.1:40002".parse().unwrap());
                        Value::dict([("result", Value::str("ok")), ("sdp", Value::str(&sdp))])
                    }
                    _ => Value::dict([
                        ("result", Value::str("error")),
                        ("error-reason", Value::str("Unknown call-id")),
                    ]),
                };
                cookies.push(cookie.clone());
                let mut out = cookie;
                out.push(b' ');
                reply.encode_into(&mut out);
                server.send_to(&out, from).unwrap();
            }
            cookies
        });
        let mut ng = Ng::connect(addr).unwrap();
        let to = ng
            .offer("c1", "x", "127.0.0.1:30000".parse().unwrap())
            .unwrap();
        assert_eq!(to, "127.0.0.1:40002".parse().unwrap());
        let err = ng.delete("c1", "x").unwrap_err().to_string();
        assert!(err.contains("Unknown call-id"), "{err}");
        let cookies = t.join().unwrap();
        assert_eq!(cookies[1], cookies[2], "a retry repeats the cookie");
        assert_ne!(cookies[0], cookies[1]);
    }
}
