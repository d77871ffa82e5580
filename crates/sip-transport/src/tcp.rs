//! TCP: listeners, connections (flows), stream framing, keep-alives, outbound connects.
//! A connection's reader and writer are generic over the stream, so TLS connections
//! (`tls`) are the same flows once their handshake is done.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use sip_core::{Frame, KeepAlive, StreamDecoder, error_reply};
use sip_txn::{FlowId, Target, Transport, TxnRef};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::limits::Slot;
use crate::{FlowEntry, Inbound, Inner, deliver, next_flow, report_failure};

/// A connection's read buffer: its size at first, and what it grows by.
const READ_CHUNK: usize = 4096;

/// Messages queued per connection before a send to it counts as failed.
const WRITE_QUEUE: usize = 1024;

pub(crate) fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    TcpListener::from_std(s.into())
}

pub(crate) async fn acceptor(inner: Arc<Inner>, listener: TcpListener) {
    let mut backoff = telemetry::AcceptBackoff::new("sip tcp");
    loop {
        match listener.accept().await {
            Ok((stream, remote)) => {
                backoff.succeeded();
                let Some(slot) = admit(&inner, remote) else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                start_tcp(&inner, stream, remote, Some(slot));
            }
            Err(e) => {
                // EMFILE and friends: back off, with one line now and then, instead of a
                // retry and a WARN every few milliseconds.
                inner.metrics.accept_errors.inc();
                backoff.failed(&e).await;
            }
        }
    }
}

/// A place in the inbound connection caps for a connection just accepted from `remote`,
/// or `None` (counted, logged within the rate limit) when a cap is reached: the caller
/// drops the connection, closing it at once, since holding it would spend the
/// descriptor the cap is there to keep.
pub(crate) fn admit(inner: &Inner, remote: SocketAddr) -> Option<Slot> {
    if let Some(b) = &inner.config.blocklist
        && b.blocked(remote.ip(), Instant::now())
    {
        inner.metrics.blocked.inc();
        return None;
    }
    match inner.conn_limits.acquire(remote.ip()) {
        Ok(slot) => Some(slot),
        Err(refusal) => {
            inner.metrics.refused(refusal.label());
            if let Some(held_back) = inner.log_limits.refused.allow(Instant::now()) {
                tracing::warn!(
                    %remote,
                    reason = refusal.label(),
                    max_connections = inner.conn_limits.max,
                    max_per_source = inner.conn_limits.max_per_source,
                    held_back,
                    "tcp connection refused: connection cap reached"
                );
            }
            None
        }
    }
}

/// A plain TCP connection as a flow (its halves split without a lock).
fn start_tcp(
    inner: &Arc<Inner>,
    stream: TcpStream,
    remote: SocketAddr,
    slot: Option<Slot>,
) -> (FlowId, mpsc::Sender<Bytes>) {
    let local = stream
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let (reader, writer) = stream.into_split();
    start_connection(
        inner,
        reader,
        writer,
        (local, remote),
        Transport::Tcp,
        slot,
        None,
    )
}

/// Register a connection as a flow and start its reader and writer. `ends` is (our
/// address, the peer's); `slot` is its place in the inbound caps (none for connections
/// we open): held until both halves end; `peer` the identity its TLS certificate proved.
pub(crate) fn start_connection<R, W>(
    inner: &Arc<Inner>,
    reader: R,
    writer: W,
    ends: (SocketAddr, SocketAddr),
    transport: Transport,
    slot: Option<Slot>,
    peer: Option<Arc<str>>,
) -> (FlowId, mpsc::Sender<Bytes>)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (flow, tx, rx) = register_flow(inner, transport, ends.1, peer);
    let slot = slot.map(Arc::new);
    let read_task = tokio::spawn(read_loop(
        inner.clone(),
        flow,
        ends,
        transport,
        reader,
        tx.clone(),
        slot.clone(),
    ));
    tokio::spawn(write_loop(
        inner.clone(),
        flow,
        ends,
        transport,
        writer,
        rx,
        read_task.abort_handle(),
        slot,
    ));
    (flow, tx)
}

/// A new flow in the table, with its write queue.
pub(crate) fn register_flow(
    inner: &Arc<Inner>,
    transport: Transport,
    remote: SocketAddr,
    peer: Option<Arc<str>>,
) -> (FlowId, mpsc::Sender<Bytes>, mpsc::Receiver<Bytes>) {
    let flow = next_flow(inner);
    let (tx, rx) = mpsc::channel::<Bytes>(WRITE_QUEUE);
    if let Ok(mut flows) = inner.flows.lock() {
        flows.by_id.insert(
            flow,
            FlowEntry {
                tx: tx.clone(),
                transport,
                remote,
                peer,
            },
        );
        flows.by_remote.insert((transport, remote), flow);
    }
    inner.metrics.connections.inc();
    (flow, tx, rx)
}

pub(crate) fn close_flow(inner: &Arc<Inner>, flow: FlowId) {
    let removed = inner.flows.lock().ok().and_then(|mut flows| {
        let e = flows.by_id.remove(&flow)?;
        if flows.by_remote.get(&(e.transport, e.remote)) == Some(&flow) {
            flows.by_remote.remove(&(e.transport, e.remote));
        }
        Some(())
    });
    if removed.is_some() {
        inner.metrics.connections.dec();
        let events = inner.events.clone();
        tokio::spawn(async move {
            let _ = events.send(Inbound::FlowClosed { flow }).await;
        });
    }
}

/// A connection closed on a deadline: counted, and logged within the rate limit.
pub(crate) fn timed_out(inner: &Inner, flow: FlowId, remote: SocketAddr, reason: &'static str) {
    inner.metrics.timed_out(reason);
    if let Some(held_back) = inner.log_limits.timeout.allow(Instant::now()) {
        tracing::info!(
            ?flow,
            %remote,
            reason,
            timeout_ms = inner.config.tcp_message_timeout.as_millis() as u64,
            held_back,
            "tcp connection closed: peer too slow"
        );
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn write_loop<W: AsyncWrite + Unpin>(
    inner: Arc<Inner>,
    flow: FlowId,
    (local, remote): (SocketAddr, SocketAddr),
    transport: Transport,
    mut writer: W,
    mut rx: mpsc::Receiver<Bytes>,
    reader: AbortHandle,
    _slot: Option<Arc<Slot>>,
) {
    let counters = inner.metrics.per_transport(transport);
    while let Some(b) = rx.recv().await {
        // A peer that stops reading would otherwise hold this task, its queue and the
        // descriptor for ever.
        match tokio::time::timeout(inner.config.tcp_message_timeout, writer.write_all(&b)).await {
            Ok(Ok(())) => {
                counters.sent.inc();
                // A WebSocket frame's SIP message is its payload; control frames are not
                // SIP.
                let sip = if is_websocket(transport) {
                    sip_ws::frame::data_payload(&b)
                } else {
                    Some(&b[..])
                };
                if let Some(sip) = sip {
                    crate::capture::sent(&inner, transport, local, remote, sip);
                }
            }
            Ok(Err(e)) => {
                tracing::debug!(?flow, error = %e, "tcp write failed");
                break;
            }
            Err(_) => {
                timed_out(&inner, flow, remote, "write_timeout");
                break;
            }
        }
    }
    // Bounded too: a shutdown that cannot flush must not hold the descriptor.
    let _ = tokio::time::timeout(inner.config.tcp_message_timeout, writer.shutdown()).await;
    close_flow(&inner, flow);
    // The connection is over for the reader as well (a no-op when it ended first): a
    // half that nobody writes to must not wait for its idle timeout.
    reader.abort();
}

async fn read_loop<R: AsyncRead + Unpin>(
    inner: Arc<Inner>,
    flow: FlowId,
    // Our end is for siptrace (the listening address is not enough: it may be 0.0.0.0).
    (local, remote): (SocketAddr, SocketAddr),
    transport: Transport,
    mut reader: R,
    tx: mpsc::Sender<Bytes>,
    _slot: Option<Arc<Slot>>,
) {
    let counters = inner.metrics.per_transport(transport);
    let source = Target {
        transport,
        addr: remote,
        flow: Some(flow),
    };
    let mut decoder = StreamDecoder::new(inner.config.limits);
    // Small to start: a held connection (a phone between REGISTERs) keeps this buffer,
    // and 16 KB of it cost as much as the TLS session itself. It grows by READ_CHUNK when
    // a message needs more.
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    // When the message whose first bytes are in `buf` must be complete. The idle timeout
    // alone restarts on every byte: one byte every few seconds would hold the connection
    // for ever.
    let mut message_deadline: Option<tokio::time::Instant> = None;
    // When the last whole message was handed on, and whether the stream broke.
    let mut last_delivered: Option<tokio::time::Instant> = None;
    let mut broken = false;
    'conn: loop {
        let (deadline, reason) = read_deadline(&inner, message_deadline);
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        let read = tokio::time::timeout_at(deadline, reader.read_buf(&mut buf)).await;
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Err(_) if reason == "idle_timeout" => {
                inner.metrics.timed_out(reason);
                tracing::debug!(?flow, %remote, "tcp idle timeout");
                break;
            }
            Err(_) => {
                timed_out(&inner, flow, remote, reason);
                break;
            }
            Ok(Ok(_)) => {}
        }
        let received_at = Instant::now();
        let mut completed = false;
        loop {
            let frame = decoder.decode(&mut buf);
            // A source banned since the connection opened, or flooding over it: closed
            // (its keep-alives would otherwise hold the connection for ever).
            if matches!(frame, Ok(Some(_)))
                && crate::dropped_on_arrival(&inner, remote.ip(), received_at)
            {
                break 'conn;
            }
            match frame {
                Ok(None) => break,
                Ok(Some(Frame::KeepAlive(KeepAlive::Ping))) => {
                    inner.metrics.keepalives.inc();
                    // RFC 5626 §4.4.1: a CRLFCRLF ping gets a CRLF pong.
                    let _ = tx.try_send(Bytes::from_static(b"\r\n"));
                }
                Ok(Some(Frame::KeepAlive(KeepAlive::Pong))) => {
                    inner.metrics.keepalives.inc();
                }
                Ok(Some(Frame::Message(msg))) => {
                    crate::capture::received(&inner, transport, remote, local, &msg);
                    completed = true;
                    last_delivered = Some(tokio::time::Instant::now());
                    counters.received.inc();
                    if let Some(reply) = deliver(&inner, msg, source, received_at).await {
                        let _ = tx.try_send(reply);
                    }
                }
                Err(e) => {
                    // Framing is lost: answer if the bytes allow it, then close.
                    inner.metrics.parse_error(&e);
                    tracing::debug!(?flow, %remote, error = %e, "unparsable stream data; closing");
                    if let Some(reply) = error_reply(None, &buf, &e) {
                        let _ = tx.send(reply).await;
                    }
                    broken = true;
                    break 'conn;
                }
            }
        }
        message_deadline =
            next_message_deadline(&inner, &buf, completed, message_deadline, received_at);
    }
    if broken && let Some(t) = last_delivered {
        // The requests that came before the broken bytes are still being answered (by an
        // edge, through the dispatcher): the connection is not read any more, but stays
        // for their answers a little while (RFC 4475 §3.1.1.8: trailing octets do not
        // cost the message before them its answer).
        tokio::time::sleep_until(t + ANSWER_LINGER).await;
    }
    // Dropping our sender lets the writer drain what is queued, then close.
    drop(tx);
    close_flow(&inner, flow);
}

/// When the next read of a stream must come, and which deadline that is: the deadline of
/// the message begun in the buffer when sooner than the idle timeout (a stream
/// connection's two deadlines; WebSocket connections keep the same).
pub(crate) fn read_deadline(
    inner: &Inner,
    message: Option<tokio::time::Instant>,
) -> (tokio::time::Instant, &'static str) {
    let idle_deadline = tokio::time::Instant::now() + inner.config.tcp_idle_timeout;
    match message {
        Some(d) if d < idle_deadline => (d, "message_timeout"),
        _ => (idle_deadline, "idle_timeout"),
    }
}

/// The message deadline after a turn of decoding `buf`: what is left is the start of the
/// next message, whose clock started with this read (`received_at`), unless it had
/// started earlier and nothing `completed` since; none when nothing is left.
pub(crate) fn next_message_deadline(
    inner: &Inner,
    buf: &[u8],
    completed: bool,
    previous: Option<tokio::time::Instant>,
    received_at: Instant,
) -> Option<tokio::time::Instant> {
    if buf.is_empty() {
        None
    } else if completed || previous.is_none() {
        Some(tokio::time::Instant::from_std(received_at) + inner.config.tcp_message_timeout)
    } else {
        previous
    }
}

/// How long a connection whose stream broke stays open for the answers to the messages
/// that came whole before the break.
const ANSWER_LINGER: Duration = Duration::from_secs(2);

pub(crate) fn send(inner: &Arc<Inner>, target: Target, bytes: Bytes, origin: TxnRef) {
    let Ok(mut flows) = inner.flows.lock() else {
        report_failure(inner, origin, target);
        return;
    };
    // The flow the target names, else any connection to that peer.
    let flow = target
        .flow
        .filter(|f| flows.by_id.contains_key(f))
        .or_else(|| {
            if target.flow.is_some() {
                // The named connection is gone: a NATed client is only reachable through it.
                return None;
            }
            flows
                .by_remote
                .get(&(target.transport, target.addr))
                .copied()
        });
    if let Some(f) = flow {
        let ok = flows.by_id.get(&f).is_some_and(|e| {
            // A WebSocket flow takes each message as one frame (RFC 7118 §5.2).
            let bytes = if is_websocket(e.transport) {
                sip_ws::frame::message(&bytes)
            } else {
                bytes.clone()
            };
            e.tx.try_send(bytes).is_ok()
        });
        drop(flows);
        if !ok {
            report_failure(inner, origin, target);
        }
        return;
    }
    // A browser's WebSocket is reached only over the connection it opened.
    if target.flow.is_some() || is_websocket(target.transport) {
        drop(flows);
        report_failure(inner, origin, target);
        return;
    }
    let key = (target.transport, target.addr);
    if let Some(q) = flows.connecting.get_mut(&key) {
        q.push((bytes, origin));
        return;
    }
    flows.connecting.insert(key, vec![(bytes, origin)]);
    drop(flows);
    let inner = inner.clone();
    tokio::spawn(async move {
        // The handshake shares the connect deadline: a server that accepts and stays
        // silent must not hold the queued requests for longer.
        let connected =
            tokio::time::timeout(inner.config.tcp_connect_timeout, open(&inner, target)).await;
        let queued = inner
            .flows
            .lock()
            .ok()
            .and_then(|mut f| f.connecting.remove(&key))
            .unwrap_or_default();
        match connected {
            Ok(Ok(tx)) => {
                for (b, origin) in queued {
                    if tx.send(b).await.is_err() {
                        report_failure(&inner, origin, target);
                    }
                }
            }
            failed => {
                let error = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".to_owned(),
                };
                tracing::debug!(addr = %target.addr, transport = target.transport.as_str(), %error, "connect failed");
                for (_, origin) in queued {
                    report_failure(&inner, origin, target);
                }
            }
        }
    });
}

/// Open a connection to `target` (TCP, or TLS over it) and make it a flow.
async fn open(inner: &Arc<Inner>, target: Target) -> io::Result<mpsc::Sender<Bytes>> {
    let stream = TcpStream::connect(target.addr).await?;
    let _ = stream.set_nodelay(true);
    if target.transport != Transport::Tls {
        return Ok(start_tcp(inner, stream, target.addr, None).1);
    }
    let Some(tls) = &inner.tls else {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "no TLS settings for an outbound TLS connection",
        ));
    };
    let local = stream.local_addr()?;
    let s = crate::tls::connect(tls, stream, target.addr).await?;
    let peer = crate::tls::server_name(&s);
    let (r, w) = tokio::io::split(s);
    Ok(start_connection(
        inner,
        r,
        w,
        (local, target.addr),
        Transport::Tls,
        None,
        peer,
    )
    .1)
}

/// WebSocket transports frame each message.
pub(crate) fn is_websocket(t: Transport) -> bool {
    matches!(t, Transport::Ws | Transport::Wss)
}
