//! In-process links: two [`Transports`] of one process (the all-in-one's dispatcher and
//! edge) hand each other their datagrams through the other's inbound queue instead of
//! a loopback socket. The bytes, the parsing and the source address the receiver sees
//! are those a datagram would have had, so the relay and the proxy core run unchanged;
//! what goes is a `sendto` and a `recvfrom` per message and hop, and the reader task's
//! wake-up.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Instant;

use bytes::Bytes;
use sip_core::{Datagram, Method, SipMessage, error_reply, parse_datagram};
use sip_txn::{Target, Transport, TxnRef};
use tokio::sync::mpsc::error::TrySendError;

use crate::{Inbound, Inner, Transports, overload_reply, report_failure};

/// One direction of a link: datagrams for `peer_addr` go into `peer`'s queue, as if they
/// came from `as_seen` (our own UDP address of the same family).
#[derive(Debug)]
pub(crate) struct Link {
    peer_addr: SocketAddr,
    as_seen: SocketAddr,
    // Weak: the two sides link each other, and either may stop first.
    peer: Weak<Inner>,
}

/// Why two transports could not be linked.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// One side listens on no UDP address of the family the other uses.
    #[error("no UDP address of the same family on both sides")]
    NoUdp,
    /// One side is linked already (a link is set once, at start).
    #[error("a side is already linked")]
    AlreadyLinked,
}

/// Link `a` and `b` both ways: UDP sends from one to any UDP address of the other are
/// delivered in process. Set once, at start; sends before it go by socket as usual.
pub fn link_in_process(a: &Transports, b: &Transports) -> Result<(), LinkError> {
    let a_to_b = links(a, b)?;
    let b_to_a = links(b, a)?;
    a.inner
        .links
        .set(a_to_b)
        .map_err(|_| LinkError::AlreadyLinked)?;
    b.inner
        .links
        .set(b_to_a)
        .map_err(|_| LinkError::AlreadyLinked)
}

fn links(from: &Transports, to: &Transports) -> Result<Vec<Link>, LinkError> {
    let out: Vec<Link> = to
        .udp_addrs()
        .iter()
        .filter_map(|&peer_addr| {
            let as_seen = *from
                .udp_addrs()
                .iter()
                .find(|a| a.is_ipv4() == peer_addr.is_ipv4())?;
            Some(Link {
                peer_addr,
                as_seen,
                peer: Arc::downgrade(&to.inner),
            })
        })
        .collect();
    if out.is_empty() {
        return Err(LinkError::NoUdp);
    }
    Ok(out)
}

impl Link {
    /// The UDP target this link stands for, as a send failure names it.
    fn target(&self) -> Target {
        Target {
            transport: Transport::Udp,
            addr: self.peer_addr,
            flow: None,
        }
    }
}

/// The link for a UDP send to `addr`, if it goes to a linked peer.
pub(crate) fn link_for(inner: &Inner, addr: SocketAddr) -> Option<&Link> {
    inner.links.get()?.iter().find(|l| l.peer_addr == addr)
}

/// Deliver a datagram over `link`: parsed with the receiver's limits, queued as the
/// receiver's socket reader would queue it (a new request finding the queue full is
/// answered 503 at once; responses, ACK and CANCEL wait for room).
pub(crate) fn send(inner: &Arc<Inner>, link: &Link, bytes: Bytes, origin: TxnRef) {
    let Some(peer) = link.peer.upgrade() else {
        report_failure(inner, origin, link.target());
        return;
    };
    let received_at = Instant::now();
    let msg = match parse_datagram(bytes.clone(), &peer.config.limits) {
        Ok(Datagram::Message(msg)) => msg,
        Ok(Datagram::KeepAlive) => {
            peer.metrics.keepalives.inc();
            return;
        }
        Err(e) => {
            peer.metrics.parse_error(&e);
            if let Some(reply) = error_reply(None, &bytes, &e) {
                back(inner, link, reply);
            }
            return;
        }
    };
    deliver(inner, link, &peer, msg, origin, received_at);
}

/// Deliver a message the sender already has parsed (an edited copy, see
/// `Editor::finish_message`): no second parse, unless it is beyond the receiver's limits,
/// which a parse then reports as it would for a datagram.
pub(crate) fn send_message(inner: &Arc<Inner>, link: &Link, msg: SipMessage, origin: TxnRef) {
    let Some(peer) = link.peer.upgrade() else {
        report_failure(inner, origin, link.target());
        return;
    };
    let limits = &peer.config.limits;
    if msg.as_bytes().len() > limits.max_message_size || msg.header_count() > limits.max_headers {
        return send(inner, link, msg.into_bytes(), origin);
    }
    deliver(inner, link, &peer, msg, origin, Instant::now());
}

/// Queue `msg` for `peer` as its socket reader would.
fn deliver(
    inner: &Arc<Inner>,
    link: &Link,
    peer: &Arc<Inner>,
    msg: SipMessage,
    origin: TxnRef,
    received_at: Instant,
) {
    inner.metrics.in_process.sent.inc();
    peer.metrics.in_process.received.inc();
    let source = Target {
        transport: Transport::Udp,
        addr: link.as_seen,
        flow: None,
    };
    let new_request = matches!(msg.method(), Some(m) if m != Method::Ack && m != Method::Cancel);
    if new_request
        && peer.gate.closed(&peer.events)
        && let Some(reply) = crate::admission::refuse(&msg, peer.config.overload_retry_after)
    {
        peer.metrics.overload_rejections.inc();
        back(inner, link, reply);
        return;
    }
    let event = Inbound::Message {
        msg,
        source,
        received_at,
    };
    match peer.events.try_send(event) {
        Ok(()) => {}
        Err(TrySendError::Full(Inbound::Message { msg, .. })) if new_request => {
            peer.metrics.overload_rejections.inc();
            if let Some(reply) = overload_reply(&msg, peer.config.overload_retry_after) {
                back(inner, link, reply);
            }
        }
        Err(TrySendError::Full(event)) => {
            // Work already admitted: wait for room, off the sender's task.
            let events = peer.events.clone();
            tokio::spawn(async move {
                let _ = events.send(event).await;
            });
        }
        Err(TrySendError::Closed(_)) => report_failure(inner, origin, link.target()),
    }
}

/// The receiver's own answer (400, 503 at a full queue) back to the sender, as it would
/// have come from the receiver's socket.
fn back(inner: &Arc<Inner>, link: &Link, reply: Bytes) {
    let Ok(Datagram::Message(msg)) = parse_datagram(reply, &inner.config.limits) else {
        return;
    };
    inner.metrics.in_process.received.inc();
    let _ = inner.events.try_send(Inbound::Message {
        msg,
        source: Target {
            transport: Transport::Udp,
            addr: link.peer_addr,
            flow: None,
        },
        received_at: Instant::now(),
    });
}
