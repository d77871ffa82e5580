//! WebSocket and secure WebSocket (RFC 7118): listeners whose connections upgrade
//! (`sip_ws::handshake`) and then carry one SIP message per WebSocket message
//! (`sip_ws::frame`). Once upgraded a connection is a flow like a TCP one, except that
//! nothing ever connects out: a browser is reached only over the connection it opened.
//!
//! Bounded like TCP: the connection caps (`tcp::admit`) apply; the upgrade (and the TLS
//! handshake under it, for WSS) must be done within `tcp_message_timeout` of the
//! connection; a message must be whole within it of its first byte; a connection idle for
//! `tcp_idle_timeout` closes; a message over the SIP parser's cap fails the connection
//! with close code 1009 as soon as its frame header says so. A message that does not
//! parse as SIP is answered (400 and friends) and the connection goes on: the
//! WebSocket framing, unlike a TCP byte stream, is not lost with it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use sip_core::{Datagram, error_reply, parse_datagram};
use sip_txn::{FlowId, Target, Transport};
use sip_ws::{Decoder, Event};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::limits::Slot;

/// The `[websocket]` section of a service's configuration.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebSocketSettings {
    /// SIP over WebSocket (`ws:`) listening addresses, e.g. `0.0.0.0:8080`.
    pub listen: Vec<SocketAddr>,
    /// SIP over secure WebSocket (`wss:`) listening addresses, e.g. `0.0.0.0:8443`: TLS
    /// with the `[tls]` certificate, which is then required.
    pub tls_listen: Vec<SocketAddr>,
    /// `Origin`s (`https://phones.example.com`) an upgrade may come from; empty: any.
    /// Browsers always send theirs: this keeps other sites' pages from using the
    /// cluster through their visitors.
    pub allowed_origins: Vec<String>,
}

impl WebSocketSettings {
    /// Check the values against the TLS settings.
    pub fn validate(&self, tls: &crate::TlsSettings) -> Result<(), telemetry::ConfigError> {
        if !self.tls_listen.is_empty() && tls.cert_file.is_none() {
            return Err(telemetry::ConfigError::new(
                "websocket.tls_listen",
                "secure WebSocket needs the TLS certificate: set tls.cert_file and tls.key_file",
            ));
        }
        Ok(())
    }
}
use crate::tcp::{
    close_flow, next_message_deadline, read_deadline, register_flow, timed_out, write_loop,
};
use crate::{Inner, deliver};

pub(crate) async fn acceptor(
    inner: Arc<Inner>,
    tls: Option<crate::tls::Tls>,
    listener: TcpListener,
) {
    let mut backoff = telemetry::AcceptBackoff::new("sip websocket");
    loop {
        match listener.accept().await {
            Ok((stream, remote)) => {
                backoff.succeeded();
                let Some(slot) = crate::tcp::admit(&inner, remote) else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let local = stream
                    .local_addr()
                    .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
                let inner = inner.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let ends = (local, remote);
                    let Some(tls) = tls else {
                        return upgrade(inner, stream, ends, Transport::Ws, slot, None).await;
                    };
                    if let Some((s, peer)) = crate::tls::accept(&inner, &tls, stream, remote).await
                    {
                        upgrade(inner, s, ends, Transport::Wss, slot, peer).await;
                    }
                });
            }
            Err(e) => {
                inner.metrics.accept_errors.inc();
                backoff.failed(&e).await;
            }
        }
    }
}

/// The HTTP upgrade, then the connection as a flow.
async fn upgrade<S>(
    inner: Arc<Inner>,
    mut stream: S,
    ends: (SocketAddr, SocketAddr),
    transport: Transport,
    slot: Slot,
    peer: Option<Arc<str>>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let remote = ends.1;
    let deadline = tokio::time::Instant::now() + inner.config.tcp_message_timeout;
    let mut buf = BytesMut::with_capacity(2048);
    let upgrade = loop {
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Err(_) => {
                inner.metrics.ws_upgrade("timeout");
                return;
            }
            Ok(Ok(_)) => {}
        }
        match sip_ws::handshake::parse(&buf, &inner.config.ws_allowed_origins) {
            Ok(None) => continue,
            Ok(Some(u)) => break u,
            Err(e) => {
                inner.metrics.ws_upgrade("refused");
                if let Some(held_back) = inner.log_limits.handshake.allow(Instant::now()) {
                    tracing::info!(%remote, error = %e, held_back, "websocket upgrade refused");
                }
                let _ = tokio::time::timeout_at(deadline, stream.write_all(&e.response())).await;
                return;
            }
        }
    };
    let answered = tokio::time::timeout_at(deadline, stream.write_all(&upgrade.response())).await;
    if !matches!(answered, Ok(Ok(()))) {
        return;
    }
    inner.metrics.ws_upgrade("ok");
    // What came after the head is already WebSocket.
    buf.advance(upgrade.head_len);
    let (reader, writer) = tokio::io::split(stream);
    let (flow, tx, rx) = register_flow(&inner, transport, remote, peer);
    let slot = Arc::new(slot);
    let read_task = tokio::spawn(read_loop(
        inner.clone(),
        flow,
        ends,
        transport,
        reader,
        buf,
        tx,
        slot.clone(),
    ));
    tokio::spawn(write_loop(
        inner,
        flow,
        ends,
        transport,
        writer,
        rx,
        read_task.abort_handle(),
        Some(slot),
    ));
}

#[allow(clippy::too_many_arguments)]
async fn read_loop<R: AsyncRead + Unpin>(
    inner: Arc<Inner>,
    flow: FlowId,
    (local, remote): (SocketAddr, SocketAddr),
    transport: Transport,
    mut reader: R,
    mut buf: BytesMut,
    tx: mpsc::Sender<Bytes>,
    _slot: Arc<Slot>,
) {
    let counters = inner.metrics.per_transport(transport);
    let source = Target {
        transport,
        addr: remote,
        flow: Some(flow),
    };
    let mut decoder = Decoder::server(inner.config.limits.max_message_size);
    let mut message_deadline: Option<tokio::time::Instant> = None;
    'conn: loop {
        // Frames already read (pipelined behind the upgrade, or behind the last one).
        let received_at = Instant::now();
        let mut completed = false;
        loop {
            let event = match decoder.decode(&mut buf) {
                Ok(Some(e)) => e,
                Ok(None) => break,
                Err(e) => {
                    inner.metrics.ws_close("protocol_error");
                    tracing::debug!(?flow, %remote, error = %e, "websocket protocol error; closing");
                    let _ = tx.send(sip_ws::frame::close(e.close_code())).await;
                    break 'conn;
                }
            };
            completed = true;
            // A source banned since the connection opened, or flooding over it: closed
            // (its pings would otherwise hold the connection for ever).
            if !matches!(event, Event::Close(_))
                && crate::dropped_on_arrival(&inner, remote.ip(), received_at)
            {
                let _ = tx.try_send(sip_ws::frame::close(1008));
                break 'conn;
            }
            match event {
                Event::Message(m) => {
                    message(&inner, m, source, local, received_at, &tx, &counters).await;
                }
                Event::Ping(p) => {
                    inner.metrics.keepalives.inc();
                    let _ = tx.try_send(sip_ws::frame::pong(&p));
                }
                Event::Pong => {
                    inner.metrics.keepalives.inc();
                }
                Event::Close(_) => {
                    inner.metrics.ws_close("peer");
                    let _ = tx.send(sip_ws::frame::close(1000)).await;
                    break 'conn;
                }
            }
        }
        message_deadline =
            next_message_deadline(&inner, &buf, completed, message_deadline, received_at);
        let (deadline, reason) = read_deadline(&inner, message_deadline);
        match tokio::time::timeout_at(deadline, reader.read_buf(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Err(_) if reason == "idle_timeout" => {
                inner.metrics.timed_out(reason);
                let _ = tx.try_send(sip_ws::frame::close(1001));
                break;
            }
            Err(_) => {
                timed_out(&inner, flow, remote, reason);
                break;
            }
            Ok(Ok(_)) => {}
        }
    }
    drop(tx);
    close_flow(&inner, flow);
}

/// One WebSocket message: a SIP message, or a CRLF keep-alive (RFC 5626 over a
/// WebSocket, as some phones send it).
async fn message(
    inner: &Inner,
    m: Bytes,
    source: Target,
    local: SocketAddr,
    received_at: Instant,
    tx: &mpsc::Sender<Bytes>,
    counters: &crate::metrics::PerTransport,
) {
    match parse_datagram(m.clone(), &inner.config.limits) {
        Ok(Datagram::KeepAlive) => {
            inner.metrics.keepalives.inc();
            let _ = tx.try_send(sip_ws::frame::message(b"\r\n"));
        }
        Ok(Datagram::Message(msg)) => {
            crate::capture::received(inner, source.transport, source.addr, local, &msg);
            counters.received.inc();
            if let Some(reply) = deliver(inner, msg, source, received_at).await {
                let _ = tx.try_send(sip_ws::frame::message(&reply));
            }
        }
        Err(e) => {
            inner.metrics.parse_error(&e);
            if let Some(reply) = error_reply(None, &m, &e) {
                let _ = tx.try_send(sip_ws::frame::message(&reply));
            }
        }
    }
}
