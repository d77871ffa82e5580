//! Addresses, timer settings, identifiers and the events/transmits the layer produces.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use sip_core::SipMessage;

/// The transport a message travels over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// UDP: unreliable; the transaction layer retransmits.
    Udp,
    /// TCP.
    Tcp,
    /// TLS over TCP.
    Tls,
    /// WebSocket (RFC 7118).
    Ws,
    /// Secure WebSocket.
    Wss,
}

impl Transport {
    /// Reliable transports need no retransmission timers (RFC 3261 §17.1.1.2).
    pub fn is_reliable(self) -> bool {
        !matches!(self, Transport::Udp)
    }

    /// The Via transport token.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
            Transport::Ws => "WS",
            Transport::Wss => "WSS",
        }
    }

    /// From a Via / URI `transport` token (case-insensitive).
    pub fn from_token(t: &str) -> Option<Transport> {
        Some(match t.to_ascii_uppercase().as_str() {
            "UDP" => Transport::Udp,
            "TCP" => Transport::Tcp,
            "TLS" => Transport::Tls,
            "WS" => Transport::Ws,
            "WSS" => Transport::Wss,
            _ => return None,
        })
    }
}

/// A connection the transport drivers hold (TCP/TLS/WS): messages sent on a flow go back
/// over that very connection (RFC 5626 flows, §18.2.2 responses on reliable transports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowId(pub u64);

/// Where a message came from or goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Target {
    /// Transport.
    pub transport: Transport,
    /// Remote address (for a flow: the peer of the connection).
    pub addr: SocketAddr,
    /// The connection to use, when one exists; otherwise the driver opens or picks one.
    pub flow: Option<FlowId>,
}

impl Target {
    /// Where a response goes for this Via (RFC 3261 §18.2.2, RFC 3581 §4): `received`
    /// (else the sent-by) and `rport` (else the sent-by port, else the transport's
    /// default), over `arrived_on` when the request came by another transport than its
    /// Via names (answers go back the way the request came), on connection `flow` when
    /// it came on one. `None` when the Via names no transport we know or no address.
    pub fn for_response(
        via: &sip_core::Via<'_>,
        arrived_on: Option<Transport>,
        flow: Option<FlowId>,
    ) -> Option<Target> {
        let transport = match arrived_on {
            Some(t) => t,
            None => Transport::from_token(via.transport.as_str())?,
        };
        Some(Target {
            transport,
            addr: via.response_addr()?,
            flow: flow.filter(|_| transport != Transport::Udp),
        })
    }
}

/// Timer values (RFC 3261 §17, Table 4; RFC 6026 for L and M).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerConfig {
    /// RTT estimate (default 500 ms).
    pub t1: Duration,
    /// Maximum retransmit interval for non-INVITE requests and INVITE responses (4 s).
    pub t2: Duration,
    /// Maximum duration a message remains in the network (5 s).
    pub t4: Duration,
    /// Wait time for response retransmits after an INVITE failure (Timer D, ≥ 32 s on UDP).
    pub timer_d: Duration,
}

impl Default for TimerConfig {
    fn default() -> Self {
        TimerConfig {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
            timer_d: Duration::from_secs(32),
        }
    }
}

impl TimerConfig {
    /// 64 * T1: Timers B, F, H, J (unreliable), L and M.
    pub fn t1x64(&self) -> Duration {
        self.t1 * 64
    }
}

/// A server transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerTxnId(pub u64);

/// A client transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientTxnId(pub u64);

/// Which transaction a transmit belongs to, so that a send failure can be reported back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TxnRef {
    /// A server transaction (its responses).
    Server(ServerTxnId),
    /// A client transaction (its request, its ACK).
    Client(ClientTxnId),
    /// Sent outside any transaction.
    Stateless,
}

/// Bytes the driver must send.
#[derive(Debug, Clone)]
pub struct Transmit {
    /// Where to.
    pub target: Target,
    /// The message.
    pub bytes: Bytes,
    /// The same message parsed, on a request's first send: a receiver in the same
    /// process takes it without parsing `bytes` again.
    pub message: Option<SipMessage>,
    /// The transaction it belongs to; report a send failure with
    /// [`TransactionLayer::transport_error`](crate::TransactionLayer::transport_error).
    pub origin: TxnRef,
}

/// What the layer tells the transaction user (the proxy core).
#[derive(Debug, Clone)]
pub enum Event {
    /// A new request. `txn` is its server transaction; `None` for an ACK that matches no
    /// transaction (the ACK for a 2xx, end to end) and for an ACK to an INVITE transaction
    /// in the Accepted state (RFC 6026 §8.7), which the TU forwards as well.
    Request {
        /// The server transaction to respond on.
        txn: Option<ServerTxnId>,
        /// The request.
        msg: SipMessage,
        /// Where it came from.
        source: Target,
    },
    /// A response to one of our requests; retransmissions are not repeated.
    Response {
        /// The client transaction.
        txn: ClientTxnId,
        /// The response.
        msg: SipMessage,
    },
    /// A response that matches no client transaction (e.g. a 2xx retransmission after the
    /// transaction ended). A proxy forwards it statelessly (RFC 3261 §16.7 step 2... §16.11).
    StrayResponse {
        /// The response.
        msg: SipMessage,
        /// Where it came from.
        source: Target,
    },
    /// No final response in time (Timer B or F): act as if a 408 arrived (§17.1.1.2).
    Timeout {
        /// The client transaction.
        txn: ClientTxnId,
    },
    /// The request could not be sent (§8.1.3.1): act as if a 503 arrived.
    TransportError {
        /// The client transaction.
        txn: ClientTxnId,
    },
    /// A server transaction ended without the expected ACK (Timer H) or after a transport
    /// error: nothing more can be sent on it.
    ServerFailed {
        /// The server transaction.
        txn: ServerTxnId,
    },
}
