//! UDP: one socket per listening address, one reader task per socket.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use sip_core::{Datagram, error_reply, parse_datagram};
use sip_txn::{Target, Transport, TxnRef};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

use crate::{Inner, deliver, report_failure};

/// Large kernel buffers: a burst of REGISTERs must queue in the kernel, not be dropped,
/// while the core works (the default ~200 KB holds a few hundred datagrams).
const SOCKET_BUFFER: usize = 8 << 20;
/// Receive buffer reserve: one maximal datagram.
const MAX_DATAGRAM: usize = 65_536;

pub(crate) fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    // No SO_REUSEADDR: on Linux it lets a second process bind the same UDP port and take
    // part of the first one's traffic (the kernel delivers to the newest socket). A busy
    // port must be an error at start, as it is for TCP.
    // Best effort: the kernel caps these at net.core.{r,w}mem_max.
    let _ = s.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = s.set_send_buffer_size(SOCKET_BUFFER);
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    UdpSocket::from_std(s.into())
}

pub(crate) async fn reader(inner: Arc<Inner>, local: SocketAddr, sock: Arc<UdpSocket>) {
    // Datagrams are split off one shared buffer: no allocation per packet, and the
    // message keeps its bytes alive only as long as it lives.
    let mut buf = BytesMut::with_capacity(4 * MAX_DATAGRAM);
    loop {
        if buf.capacity() - buf.len() < MAX_DATAGRAM {
            buf.reserve(4 * MAX_DATAGRAM);
        }
        let (n, src) = match sock.recv_buf_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                // ICMP errors for earlier sends surface here on Linux; they are not fatal.
                tracing::debug!(error = %e, "udp receive error");
                continue;
            }
        };
        let received_at = Instant::now();
        // A banned or flooding source: dropped before anything is done with its bytes.
        if crate::dropped_on_arrival(&inner, src.ip(), received_at) {
            let _ = buf.split_to(n);
            continue;
        }
        let data: Bytes = buf.split_to(n).freeze();
        inner.metrics.udp.received.inc();
        let source = Target {
            transport: Transport::Udp,
            addr: src,
            flow: None,
        };
        // A standing queue in the core: a new request that is not favoured is answered
        // here, before it costs a full parse (see `admission`).
        if inner.gate.closed(&inner.events)
            && let Some(reply) = crate::admission::refuse_raw(
                &data,
                inner.config.limits.max_message_size,
                inner.config.overload_retry_after,
            )
        {
            inner.metrics.overload_rejections.inc();
            // Through `send`: a full socket buffer must delay the 503, not drop it (a
            // dropped answer is a retransmission, more load exactly when there is too much).
            send(&inner, source, reply, TxnRef::Stateless);
            continue;
        }
        match parse_datagram(data.clone(), &inner.config.limits) {
            Ok(Datagram::Message(msg)) => {
                crate::capture::received(&inner, Transport::Udp, src, local, &msg);
                if let Some(reply) = deliver(&inner, msg, source, received_at).await {
                    let _ = sock.try_send_to(&reply, src);
                }
            }
            Ok(Datagram::KeepAlive) => {
                inner.metrics.keepalives.inc();
            }
            Err(e) => {
                inner.metrics.parse_error(&e);
                tracing::debug!(%src, error = %e, "unparsable datagram");
                if let Some(reply) = error_reply(None, &data, &e) {
                    let _ = sock.try_send_to(&reply, src);
                }
            }
        }
    }
}

pub(crate) fn send(inner: &Arc<Inner>, target: Target, bytes: Bytes, origin: TxnRef) {
    let Some((local, sock)) = inner
        .udp
        .iter()
        .find(|(local, _)| local.is_ipv4() == target.addr.is_ipv4())
    else {
        report_failure(inner, origin, target);
        return;
    };
    inner.metrics.udp.sent.inc();
    match sock.try_send_to(&bytes, target.addr) {
        Ok(_) => crate::capture::sent(inner, Transport::Udp, *local, target.addr, &bytes),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            // Send buffer full: finish in the background rather than block the core.
            let (sock, inner, local) = (sock.clone(), inner.clone(), *local);
            tokio::spawn(async move {
                if sock.send_to(&bytes, target.addr).await.is_err() {
                    report_failure(&inner, origin, target);
                } else {
                    crate::capture::sent(&inner, Transport::Udp, local, target.addr, &bytes);
                }
            });
        }
        Err(e) => {
            tracing::debug!(addr = %target.addr, error = %e, "udp send failed");
            report_failure(inner, origin, target);
        }
    }
}
