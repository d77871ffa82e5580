//! The exporter: a [`HepSink`] on the SIP path that samples, encodes and queues without
//! ever waiting, and one background task that sends the queue to the collector.
//!
//! ```text
//!  SIP tasks ── HepSink::capture ──► sampled? ─► encode into a spare buffer ─► try_send
//!                  (never awaits)       │ no: counted                  │ full: dropped, counted
//!                                                                      ▼
//!                        bounded queue (hep.queue) ──► sender task ──► UDP datagram | TCP stream
//!                        spare buffers ◄───────────────── (sent) ◄──┘  (no collector: drained,
//!                                                                      dropped, counted)
//! ```

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use sip_core::fnv::Fnv1a;
use sip_txn::Transport;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::task::JoinHandle;

use crate::config::{HepConfig, HepTransport};
use crate::encode::{Capture, encode};
use crate::{HepError, HepMetrics};

/// First wait before reconnecting to (or re-resolving) a collector that failed.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest wait between attempts: a collector that comes back is used within this.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A TCP connection that lived this long was healthy: the next failure starts the backoff
/// afresh. One that breaks sooner (a collector that accepts and closes) keeps backing off
/// instead of being reopened ten times a second.
const HEALTHY: Duration = Duration::from_secs(10);
/// Connecting gives up after this long (a collector behind a firewall that drops SYNs).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Spare buffers kept for reuse. The sender returns each buffer it sent, so in a steady
/// state the SIP path allocates nothing; more than this would only sit in memory.
const SPARES: usize = 256;
/// A buffer that grew past this (a very large message) is freed rather than kept.
const SPARE_CAPACITY: usize = 16 * 1024;

/// Buffers the sender hands back to the SIP path.
#[derive(Default)]
struct Spares(Mutex<Vec<Vec<u8>>>);

impl Spares {
    /// A cleared buffer: a spare when one is free and the pool is not busy (a SIP task
    /// never waits for the lock), else a new one.
    fn take(&self) -> Vec<u8> {
        if let Ok(mut v) = self.0.try_lock()
            && let Some(b) = v.pop()
        {
            return b;
        }
        Vec::with_capacity(1024)
    }

    fn give_back(&self, mut b: Vec<u8>) {
        if b.capacity() > SPARE_CAPACITY {
            return;
        }
        b.clear();
        if let Ok(mut v) = self.0.try_lock()
            && v.len() < SPARES
        {
            v.push(b);
        }
    }
}

/// What every clone of a sink shares.
struct Shared {
    tx: mpsc::Sender<Vec<u8>>,
    /// A call is exported when the 32-bit hash of its Call-ID is below this; 2^32 means
    /// every call (the hash is then not computed).
    threshold: u64,
    capture_id: u32,
    password: Option<Box<[u8]>>,
    spares: Arc<Spares>,
    metrics: HepMetrics,
}

/// The handle the SIP path holds: cheap to clone, never blocks. A disabled exporter's
/// sink does nothing but test one `Option`.
#[derive(Clone, Default)]
pub struct HepSink {
    shared: Option<Arc<Shared>>,
}

impl std::fmt::Debug for HepSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not derived: the password is in there.
        f.debug_struct("HepSink")
            .field("enabled", &self.shared.is_some())
            .finish()
    }
}

impl HepSink {
    /// A sink that exports nothing.
    #[must_use]
    pub fn disabled() -> HepSink {
        HepSink::default()
    }

    /// Whether messages given to [`HepSink::capture`] may be exported at all (a caller may
    /// skip work it does only for tracing).
    #[must_use]
    pub fn is_enabled(&self) -> bool {
        self.shared.is_some()
    }

    /// Export one SIP message that `transport` received from `src` at `dst`, or sent from
    /// `src` to `dst`, if its call is sampled. Returns at once whatever the collector
    /// does: the packet is queued, or dropped and counted.
    pub fn capture(
        &self,
        src: SocketAddr,
        dst: SocketAddr,
        transport: Transport,
        payload: &[u8],
        call_id: &str,
    ) {
        let Some(s) = &self.shared else { return };
        if s.threshold <= u64::from(u32::MAX) && u64::from(sample_hash(call_id)) >= s.threshold {
            s.metrics.sampled_out.inc();
            return;
        }
        let mut buf = s.spares.take();
        let capture = Capture {
            src,
            dst,
            transport,
            time: SystemTime::now(),
            capture_id: s.capture_id,
            auth_key: s.password.as_deref(),
            payload,
            call_id,
        };
        if encode(&capture, &mut buf).is_err() {
            s.metrics.too_large.inc();
            s.spares.give_back(buf);
            return;
        }
        match s.tx.try_send(buf) {
            Ok(()) => {}
            Err(TrySendError::Full(buf)) => {
                s.metrics.queue_full.inc();
                s.spares.give_back(buf);
            }
            // The sender task is gone (the exporter was dropped).
            Err(TrySendError::Closed(buf)) => {
                s.metrics.disconnected.inc();
                s.spares.give_back(buf);
            }
        }
    }
}

/// The hash a call is sampled on: FNV-1a (pinned, so every node and every build of the
/// cluster samples the same calls) of the Call-ID after a `hep` field, so that the calls
/// traced are not the ones the dispatcher's Call-ID hash sends to one edge; folded to 32
/// bits by xor, as the FNV authors advise for shorter hashes.
fn sample_hash(call_id: &str) -> u32 {
    let h = Fnv1a::new()
        .field(b"hep")
        .write(call_id.as_bytes())
        .finish();
    // Truncation intended: the fold keeps the low 32 bits of the xor.
    (h ^ (h >> 32)) as u32
}

/// The threshold [`sample_hash`] is compared with for a ratio in [0, 1].
fn threshold(ratio: f64) -> u64 {
    // A float-to-int cast saturates: 1.0 gives 2^32 (all), 0.0 gives 0 (none).
    (ratio.clamp(0.0, 1.0) * 4_294_967_296.0).round() as u64
}

/// A running exporter: the sink to hand to the SIP path and the sender task. Dropping it
/// stops the task; sinks still held then drop what they are given (counted
/// `disconnected`).
pub struct HepExporter {
    sink: HepSink,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for HepExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HepExporter")
            .field("sink", &self.sink)
            .finish_non_exhaustive()
    }
}

impl HepExporter {
    /// Start exporting as `config` says (validated here too), counting into `metrics`.
    /// Disabled, nothing starts and the sink is a no-op. Enabled, the sender task is
    /// spawned on the current tokio runtime; the collector need not be up.
    pub fn start(config: &HepConfig, metrics: &HepMetrics) -> Result<HepExporter, HepError> {
        config.validate()?;
        if !config.enabled {
            return Ok(HepExporter::disabled());
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| HepError::NoRuntime)?;
        let (tx, rx) = mpsc::channel(config.queue);
        let spares = Arc::new(Spares::default());
        let shared = Shared {
            tx,
            threshold: threshold(config.sample_ratio),
            capture_id: config.capture_id,
            password: config
                .password
                .as_ref()
                .map(|p| p.as_bytes().to_vec().into_boxed_slice()),
            spares: spares.clone(),
            metrics: metrics.clone(),
        };
        let sender = Sender {
            address: config.address.clone(),
            rx,
            spares,
            metrics: metrics.clone(),
            down: false,
        };
        let task = match config.transport {
            HepTransport::Udp => runtime.spawn(sender.udp()),
            HepTransport::Tcp => {
                runtime.spawn(sender.tcp(Duration::from_millis(config.write_timeout_ms)))
            }
        };
        tracing::info!(
            collector = %config.address,
            transport = ?config.transport,
            sample_ratio = config.sample_ratio,
            capture_id = config.capture_id,
            "exporting SIP messages over HEP"
        );
        Ok(HepExporter {
            sink: HepSink {
                shared: Some(Arc::new(shared)),
            },
            task: Some(task),
        })
    }

    /// An exporter that exports nothing.
    #[must_use]
    pub fn disabled() -> HepExporter {
        HepExporter {
            sink: HepSink::disabled(),
            task: None,
        }
    }

    /// The handle for the SIP path.
    #[must_use]
    pub fn sink(&self) -> HepSink {
        self.sink.clone()
    }
}

impl Drop for HepExporter {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// The sender task's state.
struct Sender {
    address: String,
    rx: mpsc::Receiver<Vec<u8>>,
    spares: Arc<Spares>,
    metrics: HepMetrics,
    /// The collector is known to be unreachable: said once in the log, not per attempt.
    down: bool,
}

/// Why a TCP connection ended.
enum Ended {
    /// Every sink is gone: the task ends.
    Closed,
    /// The connection broke; reconnect.
    Broken(String),
}

impl Sender {
    /// Run `fut` while dropping (and counting `disconnected`) every packet that arrives:
    /// with no collector to send to, the queue must keep moving, so that the drops show
    /// what they are and a collector that comes back gets current messages, not stale
    /// ones. `None` when every sink is gone.
    async fn discarding<F: Future>(&mut self, fut: F) -> Option<F::Output> {
        tokio::pin!(fut);
        loop {
            tokio::select! {
                biased;
                out = &mut fut => return Some(out),
                p = self.rx.recv() => match p {
                    Some(buf) => {
                        self.metrics.disconnected.inc();
                        self.spares.give_back(buf);
                    }
                    None => return None,
                },
            }
        }
    }

    /// Wait out a backoff while discarding; `false` when every sink is gone.
    async fn back_off(&mut self, backoff: &mut Duration) -> bool {
        let d = *backoff;
        *backoff = (*backoff * 2).min(BACKOFF_MAX);
        self.discarding(tokio::time::sleep(d)).await.is_some()
    }

    fn failed(&mut self, what: &str, error: &dyn std::fmt::Display) {
        if !self.down {
            self.down = true;
            tracing::warn!(
                collector = %self.address,
                error = %error,
                "HEP collector {what}: SIP messages are dropped (counted) until it answers; retrying"
            );
        }
    }

    fn up(&mut self, what: &str) {
        if self.down {
            self.down = false;
            tracing::info!(collector = %self.address, "HEP collector {what} again");
        }
    }

    /// UDP: one datagram per packet.
    async fn udp(mut self) {
        let mut backoff = BACKOFF_MIN;
        let (socket, target) = loop {
            // Packets wait in the queue while the name resolves: the collector is not
            // known to be down yet.
            match udp_socket(&self.address).await {
                Ok(s) => break s,
                Err(e) => {
                    self.failed("address unusable", &e);
                    if !self.back_off(&mut backoff).await {
                        return;
                    }
                }
            }
        };
        self.up("address resolved");
        while let Some(buf) = self.rx.recv().await {
            match socket.send_to(&buf, target).await {
                Ok(_) => {
                    self.metrics.packets.inc();
                    self.up("reachable");
                }
                // A full buffer, a route gone: this packet is lost, the next may pass.
                Err(e) => {
                    self.metrics.send_error.inc();
                    self.failed("unreachable", &e);
                }
            }
            self.spares.give_back(buf);
        }
    }

    /// TCP: packets back to back on one connection; reconnect with backoff when it breaks.
    async fn tcp(mut self, write_timeout: Duration) {
        let mut backoff = BACKOFF_MIN;
        loop {
            // Packets wait in the queue while connecting (the queue absorbs the few a
            // connection's setup takes); they are dropped only once it has failed.
            let connect = tokio::time::timeout(CONNECT_TIMEOUT, tcp_connect(&self.address));
            let stream = match connect.await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    self.failed("unreachable", &e);
                    if !self.back_off(&mut backoff).await {
                        return;
                    }
                    continue;
                }
                Err(_) => {
                    self.failed("unreachable", &"connect timed out");
                    if !self.back_off(&mut backoff).await {
                        return;
                    }
                    continue;
                }
            };
            self.up("connected");
            let since = Instant::now();
            match self.serve(stream, write_timeout).await {
                Ended::Closed => return,
                Ended::Broken(why) => self.failed("connection lost", &why),
            }
            if since.elapsed() >= HEALTHY {
                backoff = BACKOFF_MIN;
            }
            if !self.back_off(&mut backoff).await {
                return;
            }
        }
    }

    async fn serve(&mut self, stream: TcpStream, write_timeout: Duration) -> Ended {
        // Each packet is written whole at once; Nagle would only hold it back.
        let _ = stream.set_nodelay(true);
        let (mut rd, mut wr) = stream.into_split();
        // Collectors send nothing over HEP; reading only tells us when they close.
        let mut scratch = [0u8; 256];
        loop {
            tokio::select! {
                p = self.rx.recv() => {
                    let Some(buf) = p else { return Ended::Closed };
                    let r = tokio::time::timeout(write_timeout, wr.write_all(&buf)).await;
                    self.spares.give_back(buf);
                    match r {
                        Ok(Ok(())) => {
                            self.metrics.packets.inc();
                        }
                        // A packet cut short leaves the stream unframed: the connection
                        // cannot be used again.
                        Ok(Err(e)) => {
                            self.metrics.send_error.inc();
                            return Ended::Broken(e.to_string());
                        }
                        Err(_) => {
                            self.metrics.send_error.inc();
                            return Ended::Broken(format!(
                                "the collector took no data for {write_timeout:?}"
                            ));
                        }
                    }
                }
                r = rd.read(&mut scratch) => match r {
                    Ok(0) => return Ended::Broken("the collector closed the connection".into()),
                    Ok(_) => {}
                    Err(e) => return Ended::Broken(e.to_string()),
                },
            }
        }
    }
}

/// Resolve `address` and bind a UDP socket of its family. Not connected: on a connected
/// socket, Linux reports a port-unreachable ICMP for one datagram by failing the *next*
/// send, which loses a packet a collector that has just started would have taken.
async fn udp_socket(address: &str) -> std::io::Result<(UdpSocket, SocketAddr)> {
    let target = resolve(address).await?;
    let local: SocketAddr = if target.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    Ok((UdpSocket::bind(local).await?, target))
}

async fn tcp_connect(address: &str) -> std::io::Result<TcpStream> {
    TcpStream::connect(resolve(address).await?).await
}

/// The first address `address` resolves to. Names are looked up each time: a collector
/// that moved (a restarted pod behind a headless service) is found again.
async fn resolve(address: &str) -> std::io::Result<SocketAddr> {
    tokio::net::lookup_host(address)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::other("the name resolved to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_is_a_stable_share_of_calls() {
        // Pinned: every node and every build must agree on which calls are traced.
        assert_eq!(
            sample_hash("a84b4c76e66710@pc33.atlanta.com"),
            sample_hash("a84b4c76e66710@pc33.atlanta.com")
        );
        assert_eq!(threshold(0.0), 0);
        assert_eq!(threshold(1.0), 1 << 32);
        assert_eq!(threshold(0.5), 1 << 31);
        let n = 20_000;
        let kept = (0..n)
            .filter(|i| u64::from(sample_hash(&format!("{i}-call@example.org"))) < threshold(0.1))
            .count();
        // 10 % of 20000 = 2000; a fair hash lands within a few standard deviations (~42).
        assert!((1800..2200).contains(&kept), "{kept}");
    }

    #[test]
    fn a_disabled_sink_does_nothing() {
        let s = HepSink::disabled();
        assert!(!s.is_enabled());
        s.capture(
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
            Transport::Udp,
            b"x",
            "c",
        );
        let e = HepExporter::start(&HepConfig::default(), &HepMetrics::default()).unwrap();
        assert!(!e.sink().is_enabled());
    }

    #[test]
    fn starting_outside_a_runtime_is_an_error() {
        let cfg = HepConfig {
            enabled: true,
            ..HepConfig::default()
        };
        let e = HepExporter::start(&cfg, &HepMetrics::default()).unwrap_err();
        assert!(matches!(e, HepError::NoRuntime), "{e}");
        let cfg = HepConfig {
            sample_ratio: 2.0,
            ..cfg
        };
        assert!(matches!(
            HepExporter::start(&cfg, &HepMetrics::default()),
            Err(HepError::Config(_))
        ));
    }

    #[test]
    fn spares_are_reused_and_bounded() {
        let s = Spares::default();
        let mut b = s.take();
        b.extend_from_slice(b"abc");
        let p = b.as_ptr();
        s.give_back(b);
        let b = s.take();
        assert!(b.is_empty());
        assert_eq!(b.as_ptr(), p, "the same allocation comes back");
        s.give_back(Vec::with_capacity(SPARE_CAPACITY + 1));
        assert!(
            s.0.lock().unwrap().is_empty(),
            "oversized buffers are freed"
        );
    }
}
