//! # rtp-load: G.711 streams through a sipcluster media relay (or rtpengine)
//!
//! Sets up `streams / 2` sessions over the relay's gRPC API, or with `--rtpengine` over
//! rtpengine's ng control protocol (an offer and an answer each, two loopback sockets per
//! session standing for the two phones), then sends every
//! stream at 50 packets/s (172-byte packets: 12 bytes of RTP header and 160 of payload,
//! as G.711 at 20 ms) for the given time, paced evenly over each 20 ms period. Each
//! payload carries its send time, so the receiving side measures the latency the relay
//! adds, the loss (per stream, counted after a warm-up) and the RFC 3550 jitter. With
//! `--relay-pid` it also reads the relay's CPU time and reports µs of CPU per packet.
//!
//! Both relays get the same sessions (each phone sends from the address in its SDP, so
//! both latch at once) and the same streams, measured by the same code: the figures
//! compare.
//!
//! Everything runs on loopback; the run is bounded by `--secs` and stops itself.

mod bencode;
mod ng;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use proto::media::v1 as pb;
use proto::media::v1::media_relay_client::MediaRelayClient;

#[derive(Parser, Debug)]
#[command(about = "G.711 streams through a sipcluster media relay or rtpengine")]
struct Args {
    /// The relay's gRPC control address.
    #[arg(long, default_value = "http://127.0.0.1:50053")]
    control: String,
    /// Drive an rtpengine instead, over its ng control protocol at this address (its
    /// `--listen-ng`); `--control` and `--token-file` are then unused.
    #[arg(long)]
    rtpengine: Option<SocketAddr>,
    /// File holding the edge token the relay accepts (its control API refuses anonymous
    /// calls).
    #[arg(long, env = "SIPCLUSTER_EDGE_TOKEN_FILE")]
    token_file: Option<std::path::PathBuf>,
    /// Concurrent streams (two per session, one each way).
    #[arg(long, default_value_t = 200)]
    streams: usize,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// Seconds of traffic before measuring (latching, caches).
    #[arg(long, default_value_t = 2)]
    warmup_secs: u64,
    /// The relay's PID, to report its CPU per packet.
    #[arg(long)]
    relay_pid: Option<u32>,
    /// Address of the phones' sockets.
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// One socket per phone (as many sockets as streams) instead of one per side.
    #[arg(long)]
    socket_per_phone: bool,
    /// Exit 1 when the loss (percent) is above this.
    #[arg(long)]
    max_loss_pct: Option<f64>,
    /// Exit 1 when the p99 added latency (ms) is above this.
    #[arg(long)]
    max_p99_ms: Option<f64>,
}

const PERIOD: Duration = Duration::from_millis(20);
const PACKET: usize = 172;
/// Latency histogram: 10 µs buckets up to 200 ms.
const BUCKET_US: u64 = 10;
const BUCKETS: usize = 20_000;

struct Stream {
    /// Index of the sending socket in `Senders`.
    from: usize,
    to: SocketAddr,
}

/// The sending sockets and, per socket, the packets waiting for one `sendmmsg`.
struct Senders {
    socks: Vec<Arc<UdpSocket>>,
    pending: Vec<Vec<Queued>>,
    headers: nix::sys::socket::MultiHeaders<nix::sys::socket::SockaddrStorage>,
}

/// A packet waiting for its socket's next `sendmmsg`.
struct Queued {
    packet: [u8; PACKET],
    to: SocketAddr,
    stream: usize,
    /// Due after the warm-up: counted.
    measured: bool,
}

/// Packets per `sendmmsg`.
const SEND_BATCH: usize = 64;

impl Senders {
    fn new() -> Senders {
        Senders {
            socks: Vec::new(),
            pending: Vec::new(),
            headers: nix::sys::socket::MultiHeaders::preallocate(SEND_BATCH, None),
        }
    }

    /// The index of `s`, added if new.
    fn index(&mut self, s: &Arc<UdpSocket>) -> usize {
        if let Some(i) = self.socks.iter().position(|x| Arc::ptr_eq(x, s)) {
            return i;
        }
        self.socks.push(s.clone());
        self.pending.push(Vec::with_capacity(SEND_BATCH));
        self.socks.len() - 1
    }

    /// Queue a packet on socket `from`; sent when the batch is full or on `flush`.
    fn queue(&mut self, from: usize, q: Queued, epoch: Instant, sent: &mut [u64]) {
        self.pending[from].push(q);
        if self.pending[from].len() >= SEND_BATCH {
            self.flush_one(from, epoch, sent);
        }
    }

    fn flush(&mut self, epoch: Instant, sent: &mut [u64]) {
        for i in 0..self.socks.len() {
            if !self.pending[i].is_empty() {
                self.flush_one(i, epoch, sent);
            }
        }
    }

    /// One `sendmmsg` for socket `i`'s queue, stamped with the send time.
    fn flush_one(&mut self, i: usize, epoch: Instant, sent: &mut [u64]) {
        use nix::sys::socket::{MsgFlags, SockaddrStorage, sendmmsg};
        use std::io::IoSlice;
        use std::os::fd::AsRawFd;
        let now = epoch.elapsed().as_nanos() as u64;
        let batch = &mut self.pending[i];
        for q in batch.iter_mut() {
            q.packet[12..20].copy_from_slice(&now.to_be_bytes());
        }
        let addrs: Vec<Option<SockaddrStorage>> = batch
            .iter()
            .map(|q| Some(SockaddrStorage::from(q.to)))
            .collect();
        let iovs: Vec<[IoSlice<'_>; 1]> = batch.iter().map(|q| [IoSlice::new(&q.packet)]).collect();
        let done = sendmmsg(
            self.socks[i].as_raw_fd(),
            &mut self.headers,
            &iovs,
            &addrs,
            [],
            MsgFlags::empty(),
        )
        .map_or(0, |r| r.count());
        for q in batch.iter().take(done) {
            if q.measured {
                sent[q.stream] += 1;
            }
        }
        batch.clear();
    }
}

fn ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn relay_addr(r: &pb::UpdateReply) -> Result<SocketAddr> {
    let ip: IpAddr = r.address.parse().context("relay address")?;
    let port = r.media.first().context("no media in reply")?.port;
    Ok(SocketAddr::new(ip, u16::try_from(port)?))
}

fn main() -> Result<()> {
    let a = Args::parse();
    if a.streams < 2 || a.streams % 2 != 0 {
        bail!("--streams must be an even number ≥ 2 (two per session)");
    }
    let mut control = Control::connect(&a)?;
    let sessions = a.streams / 2;
    let mut streams = Vec::with_capacity(a.streams);
    let mut senders = Senders::new();
    let mut receivers = Vec::with_capacity(a.streams);
    let run = std::process::id();
    let setup = Instant::now();
    // Every calling phone shares one socket and every called phone another: the relay
    // sees one party per leg all the same (it keys on its own ports), and the
    // generator's cost stays far below the relay's, on the same two cores.
    let shared_x = Arc::new(UdpSocket::bind(SocketAddr::new(a.bind, 0))?);
    let shared_y = Arc::new(UdpSocket::bind(SocketAddr::new(a.bind, 0))?);
    for s in [&shared_x, &shared_y] {
        socket_buffers(s);
    }
    for i in 0..sessions {
        let (x, y) = if a.socket_per_phone {
            (
                Arc::new(UdpSocket::bind(SocketAddr::new(a.bind, 0))?),
                Arc::new(UdpSocket::bind(SocketAddr::new(a.bind, 0))?),
            )
        } else {
            (shared_x.clone(), shared_y.clone())
        };
        let call = session_call(run, i);
        let (to_x, to_y) = match control
            .set_up(&call, x.local_addr()?, y.local_addr()?)
            .with_context(|| format!("session {i}"))
        {
            Ok(r) => r,
            Err(e) => {
                // Leave the relay as it was: the sessions set up so far go.
                delete_sessions(&mut control, run, i + 1);
                return Err(e);
            }
        };
        streams.push(Stream {
            from: senders.index(&x),
            to: to_x,
        });
        streams.push(Stream {
            from: senders.index(&y),
            to: to_y,
        });
        if a.socket_per_phone {
            receivers.push(y);
            receivers.push(x);
        }
    }
    if !a.socket_per_phone {
        receivers = vec![shared_x.clone(), shared_y.clone()];
    }
    eprintln!(
        "{} sessions set up in {:.2} s",
        sessions,
        setup.elapsed().as_secs_f64()
    );

    let epoch = Instant::now();
    let warm_until = Duration::from_secs(a.warmup_secs);
    let send_until = warm_until + Duration::from_secs(a.secs);
    // One thread sends and receives: it waits for the next packet's turn in the poll
    // for arrivals, so the generator never competes with itself for the two cores.
    let mut rx = Receiving::new(&receivers, a.streams)?;

    let relay_t0 = std::cell::Cell::new(None);
    let self_t0 = std::cell::Cell::new(None);
    let n = streams.len();
    let mut seq = vec![0u16; n];
    let mut sent_measured = vec![0u64; n];
    let mut packet = [0u8; PACKET];
    packet[0] = 0x80;
    let mut round: u32 = 0;
    let mut measuring = false;
    'send: loop {
        let round_start = PERIOD * round;
        for (k, s) in streams.iter().enumerate() {
            let due = round_start + PERIOD * k as u32 / n as u32;
            let now = epoch.elapsed();
            if due >= send_until {
                break 'send;
            }
            let mut now = now;
            if due > now + Duration::from_micros(100) {
                // Nothing more is due for a while: send what is queued, then listen.
                senders.flush(epoch, &mut sent_measured);
            }
            while due > now + Duration::from_micros(100) {
                rx.pump(epoch, due - now);
                now = epoch.elapsed();
            }
            if !measuring && due >= warm_until {
                measuring = true;
                relay_t0.set(a.relay_pid.and_then(ticks));
                self_t0.set(ticks(std::process::id()));
            }
            packet[2..4].copy_from_slice(&seq[k].to_be_bytes());
            packet[4..8].copy_from_slice(&(u32::from(seq[k]).wrapping_mul(160)).to_be_bytes());
            packet[8..12].copy_from_slice(&(k as u32).to_be_bytes());
            packet[20..24].copy_from_slice(&(k as u32).to_be_bytes());
            // Sender and receiver count the same packets: those due after the warm-up.
            packet[24] = u8::from(due >= warm_until);
            seq[k] = seq[k].wrapping_add(1);
            let q = Queued {
                packet,
                to: s.to,
                stream: k,
                measured: due >= warm_until,
            };
            senders.queue(s.from, q, epoch, &mut sent_measured);
        }
        round += 1;
    }
    senders.flush(epoch, &mut sent_measured);
    let measured = epoch.elapsed().saturating_sub(warm_until);
    let relay_t1 = a.relay_pid.and_then(ticks);
    let self_t1 = ticks(std::process::id());
    // Let the last packets arrive.
    let end = epoch.elapsed() + Duration::from_millis(300);
    while epoch.elapsed() < end {
        rx.pump(epoch, Duration::from_millis(50));
    }
    let got = rx.finish();

    let sent: u64 = sent_measured.iter().sum();
    let received: u64 = got.per_stream.iter().sum();
    let loss_pct = if sent == 0 {
        0.0
    } else {
        100.0 * sent.saturating_sub(received) as f64 / sent as f64
    };
    let pct = |q: f64| -> f64 {
        let total: u64 = got.latency.iter().sum();
        let want = (total as f64 * q).ceil() as u64;
        let mut acc = 0;
        for (i, c) in got.latency.iter().enumerate() {
            acc += c;
            if acc >= want && want > 0 {
                return (i as u64 * BUCKET_US) as f64 / 1000.0;
            }
        }
        f64::NAN
    };
    let secs = measured.as_secs_f64();
    let tick = 100.0; // USER_HZ
    let cpu = |t0: Option<u64>, t1: Option<u64>| -> Option<f64> {
        Some((t1? - t0?) as f64 / tick / secs * 100.0)
    };
    let relay_cpu = cpu(relay_t0.get(), relay_t1);
    let gen_cpu = cpu(self_t0.get(), self_t1);
    let us_per_packet = relay_cpu.map(|c| c / 100.0 * secs * 1e6 / received.max(1) as f64);
    let jitter_ms = got.jitter_sum_ms / a.streams as f64;
    println!(
        "streams={} secs={:.1} sent={} received={} loss_pct={:.4} p50_ms={:.3} p99_ms={:.3} max_ms={:.3} jitter_mean_ms={:.3} relay_cpu_pct={} relay_us_per_packet={} generator_cpu_pct={}",
        a.streams,
        secs,
        sent,
        received,
        loss_pct,
        pct(0.5),
        pct(0.99),
        got.max_ms,
        jitter_ms,
        relay_cpu.map_or("n/a".into(), |c| format!("{c:.1}")),
        us_per_packet.map_or("n/a".into(), |c| format!("{c:.2}")),
        gen_cpu.map_or("n/a".into(), |c| format!("{c:.1}")),
    );

    delete_sessions(&mut control, run, sessions);
    let mut failed = false;
    if let Some(m) = a.max_loss_pct
        && loss_pct > m
    {
        eprintln!("FAIL: loss {loss_pct:.4} % > {m} %");
        failed = true;
    }
    if let Some(m) = a.max_p99_ms
        && pct(0.99) > m
    {
        eprintln!("FAIL: p99 {:.3} ms > {m} ms", pct(0.99));
        failed = true;
    }
    if failed {
        std::process::exit(1);
    }
    Ok(())
}

/// Large kernel buffers on the shared sockets: every stream of a side lands on one.
fn socket_buffers(s: &UdpSocket) {
    let s = socket2::SockRef::from(s);
    let _ = s.set_recv_buffer_size(8 << 20);
    let _ = s.set_send_buffer_size(8 << 20);
}

struct Received {
    per_stream: Vec<u64>,
    latency: Vec<u64>,
    max_ms: f64,
    jitter_sum_ms: f64,
}

fn session_call(run: u32, i: usize) -> String {
    format!("rtp-load-{run}-{i}")
}

/// Delete the first `n` sessions of this run.
fn delete_sessions(control: &mut Control, run: u32, n: usize) {
    for i in 0..n {
        control.delete(&session_call(run, i));
    }
}

/// The relay's control API: how sessions are set up and torn down. Every session is a
/// caller tagged `x` and a callee tagged `y`.
enum Control {
    Grpc {
        rt: tokio::runtime::Runtime,
        client: MediaRelayClient<grpc_auth::AuthChannel>,
    },
    Rtpengine(ng::Ng),
}

impl Control {
    fn connect(a: &Args) -> Result<Control> {
        if let Some(addr) = a.rtpengine {
            let ng = ng::Ng::connect(addr).with_context(|| format!("rtpengine at {addr}"))?;
            return Ok(Control::Rtpengine(ng));
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let token_file = a
            .token_file
            .as_ref()
            .context("--token-file (or SIPCLUSTER_EDGE_TOKEN_FILE) is needed with --control")?;
        let token = grpc_auth::Token::from_file(token_file).context("--token-file")?;
        let channel = rt
            .block_on(tonic::transport::Endpoint::from_shared(a.control.clone())?.connect())
            .with_context(|| format!("connecting to {}", a.control))?;
        let client = MediaRelayClient::new(grpc_auth::Bearer::new(Some(&token)).channel(channel));
        Ok(Control::Grpc { rt, client })
    }

    /// Session `call` between a caller receiving at `x` and a callee receiving at `y`
    /// (offer, then answer): the relay's addresses that x and y send to, in that order.
    fn set_up(
        &mut self,
        call: &str,
        x: SocketAddr,
        y: SocketAddr,
    ) -> Result<(SocketAddr, SocketAddr)> {
        // The offer's reply is the port facing y, the answer's the one facing x.
        match self {
            Control::Grpc { rt, client } => rt.block_on(async {
                let to_y = client
                    .offer(pb::UpdateRequest::audio(call, "x", "", x))
                    .await
                    .context("offer")?
                    .into_inner();
                let to_x = client
                    .answer(pb::UpdateRequest::audio(call, "y", "x", y))
                    .await
                    .context("answer")?
                    .into_inner();
                Ok((relay_addr(&to_x)?, relay_addr(&to_y)?))
            }),
            Control::Rtpengine(ng) => {
                let to_y = ng.offer(call, "x", x).context("offer")?;
                let to_x = ng.answer(call, "x", "y", y).context("answer")?;
                Ok((to_x, to_y))
            }
        }
    }

    /// Best effort: a session that is already gone is no error here.
    fn delete(&mut self, call: &str) {
        match self {
            Control::Grpc { rt, client } => {
                let _ = rt.block_on(client.delete(pb::SessionRef {
                    call_id: call.into(),
                    tag: "x".into(),
                    other_tag: "y".into(),
                }));
            }
            Control::Rtpengine(ng) => {
                let _ = ng.delete(call, "x");
            }
        }
    }
}

/// The receiving half: every phone socket in one poll.
struct Receiving {
    poll: mio::Poll,
    events: mio::Events,
    socks: Vec<mio::net::UdpSocket>,
    out: Received,
    /// RFC 3550 jitter per stream, in ns (the send time stands for the RTP timestamp).
    transit: Vec<Option<i64>>,
    jitter: Vec<f64>,
    rx: media_relay::batch::Receiver,
}

impl Receiving {
    fn new(socks: &[Arc<UdpSocket>], n: usize) -> Result<Receiving> {
        use mio::{Interest, Poll, Token};
        let poll = Poll::new()?;
        let mut mio_socks = Vec::with_capacity(socks.len());
        for (i, s) in socks.iter().enumerate() {
            let c = s.try_clone()?;
            c.set_nonblocking(true)?;
            let mut m = mio::net::UdpSocket::from_std(c);
            poll.registry()
                .register(&mut m, Token(i), Interest::READABLE)?;
            mio_socks.push(m);
        }
        Ok(Receiving {
            poll,
            events: mio::Events::with_capacity(1024),
            socks: mio_socks,
            out: Received {
                per_stream: vec![0; n],
                latency: vec![0; BUCKETS + 1],
                max_ms: 0.0,
                jitter_sum_ms: 0.0,
            },
            transit: vec![None; n],
            jitter: vec![0.0; n],
            rx: media_relay::batch::Receiver::default(),
        })
    }

    /// Wait at most `timeout` for arrivals and take them in.
    fn pump(&mut self, epoch: Instant, timeout: Duration) {
        if self.poll.poll(&mut self.events, Some(timeout)).is_err() {
            return;
        }
        let n = self.out.per_stream.len();
        for ev in &self.events {
            let Some(s) = self.socks.get(ev.token().0) else {
                continue;
            };
            let fd = std::os::fd::AsRawFd::as_raw_fd(s);
            loop {
                let got = self.rx.recv(fd).unwrap_or(0);
                for i in 0..got {
                    let Some((meta, buf)) = self.rx.get(i) else {
                        break;
                    };
                    if meta.len < 25 {
                        continue;
                    }
                    let now = epoch.elapsed().as_nanos() as u64;
                    let k = u32::from_be_bytes([buf[20], buf[21], buf[22], buf[23]]) as usize;
                    let sent = u64::from_be_bytes(buf[12..20].try_into().unwrap_or([0; 8]));
                    if k >= n || buf[24] == 0 {
                        continue;
                    }
                    self.out.per_stream[k] += 1;
                    let lat = now.saturating_sub(sent);
                    let b = ((lat / 1000) / BUCKET_US) as usize;
                    self.out.latency[b.min(BUCKETS)] += 1;
                    self.out.max_ms = self.out.max_ms.max(lat as f64 / 1e6);
                    let t = lat as i64;
                    if let Some(prev) = self.transit[k] {
                        let d = (t - prev).unsigned_abs() as f64;
                        self.jitter[k] += (d - self.jitter[k]) / 16.0;
                    }
                    self.transit[k] = Some(t);
                }
                if got < media_relay::batch::BATCH {
                    break;
                }
            }
        }
    }

    fn finish(mut self) -> Received {
        self.out.jitter_sum_ms = self.jitter.iter().sum::<f64>() / 1e6;
        self.out
    }
}
