//! TCP: listeners, connections (flows), stream framing, keep-alives, outbound connects.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use sip_core::{Frame, KeepAlive, StreamDecoder, error_reply};
use sip_txn::{FlowId, Target, Transport, TxnRef};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::{FlowEntry, Inbound, Inner, deliver, next_flow, report_failure};

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
    loop {
        match listener.accept().await {
            Ok((stream, remote)) => {
                let _ = stream.set_nodelay(true);
                start_connection(&inner, stream, remote);
            }
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(error = %e, "tcp accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Register a connection as a flow and start its reader and writer.
fn start_connection(
    inner: &Arc<Inner>,
    stream: TcpStream,
    remote: SocketAddr,
) -> (FlowId, mpsc::Sender<Bytes>) {
    let flow = next_flow(inner);
    let (tx, rx) = mpsc::channel::<Bytes>(WRITE_QUEUE);
    if let Ok(mut flows) = inner.flows.lock() {
        flows.by_id.insert(
            flow,
            FlowEntry {
                tx: tx.clone(),
                transport: Transport::Tcp,
                remote,
            },
        );
        flows.by_remote.insert((Transport::Tcp, remote), flow);
    }
    inner.metrics.connections.inc();
    let (reader, writer) = stream.into_split();
    tokio::spawn(write_loop(inner.clone(), flow, writer, rx));
    tokio::spawn(read_loop(inner.clone(), flow, remote, reader, tx.clone()));
    (flow, tx)
}

fn close_flow(inner: &Arc<Inner>, flow: FlowId) {
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

async fn write_loop(
    inner: Arc<Inner>,
    flow: FlowId,
    mut writer: tokio::net::tcp::OwnedWriteHalf,
    mut rx: mpsc::Receiver<Bytes>,
) {
    while let Some(b) = rx.recv().await {
        if let Err(e) = writer.write_all(&b).await {
            tracing::debug!(?flow, error = %e, "tcp write failed");
            break;
        }
        inner.metrics.tcp.sent.inc();
    }
    let _ = writer.shutdown().await;
    close_flow(&inner, flow);
}

async fn read_loop(
    inner: Arc<Inner>,
    flow: FlowId,
    remote: SocketAddr,
    mut reader: tokio::net::tcp::OwnedReadHalf,
    tx: mpsc::Sender<Bytes>,
) {
    let source = Target {
        transport: Transport::Tcp,
        addr: remote,
        flow: Some(flow),
    };
    let mut decoder = StreamDecoder::new(inner.config.limits);
    let mut buf = BytesMut::with_capacity(16 * 1024);
    'conn: loop {
        let read =
            tokio::time::timeout(inner.config.tcp_idle_timeout, reader.read_buf(&mut buf)).await;
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Err(_) => {
                tracing::debug!(?flow, %remote, "tcp idle timeout");
                break;
            }
            Ok(Ok(_)) => {}
        }
        let received_at = Instant::now();
        loop {
            match decoder.decode(&mut buf) {
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
                    inner.metrics.tcp.received.inc();
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
                    break 'conn;
                }
            }
        }
    }
    // Dropping our sender lets the writer drain what is queued, then close.
    drop(tx);
    close_flow(&inner, flow);
}

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
            flows.by_remote.get(&(Transport::Tcp, target.addr)).copied()
        });
    if let Some(f) = flow {
        let ok = flows
            .by_id
            .get(&f)
            .is_some_and(|e| e.tx.try_send(bytes.clone()).is_ok());
        drop(flows);
        if !ok {
            report_failure(inner, origin, target);
        }
        return;
    }
    if target.flow.is_some() {
        drop(flows);
        report_failure(inner, origin, target);
        return;
    }
    let key = (Transport::Tcp, target.addr);
    if let Some(q) = flows.connecting.get_mut(&key) {
        q.push((bytes, origin));
        return;
    }
    flows.connecting.insert(key, vec![(bytes, origin)]);
    drop(flows);
    let inner = inner.clone();
    tokio::spawn(async move {
        let connected = tokio::time::timeout(
            inner.config.tcp_connect_timeout,
            TcpStream::connect(target.addr),
        )
        .await;
        let queued = inner
            .flows
            .lock()
            .ok()
            .and_then(|mut f| f.connecting.remove(&key))
            .unwrap_or_default();
        match connected {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                let (_, tx) = start_connection(&inner, stream, target.addr);
                for (b, origin) in queued {
                    if tx.send(b).await.is_err() {
                        report_failure(&inner, origin, target);
                    }
                }
            }
            _ => {
                tracing::debug!(addr = %target.addr, "tcp connect failed");
                for (_, origin) in queued {
                    report_failure(&inner, origin, target);
                }
            }
        }
    });
}
