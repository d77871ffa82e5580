//! # sip-txn: the SIP transaction layer of sipcluster, sans-IO
//!
//! RFC 3261 §17 client and server transactions, INVITE and non-INVITE, with the RFC 6026
//! corrections (the Accepted states that let a proxy relay forked and retransmitted 2xx
//! responses). The edge proxy is its transaction user (TU).
//!
//! * Matching: server transactions by §17.2.3 (magic-cookie branch + sent-by + method, ACK
//!   matching its INVITE, RFC 2543 fallback keys), client transactions by §17.1.3 (branch +
//!   CSeq method, so a CANCEL's responses never reach its INVITE).
//! * Retransmission: requests on unreliable transports (Timers A and E), final responses
//!   of INVITE server transactions (Timer G), re-sending the last response when a request
//!   is retransmitted, the hop-by-hop ACK for non-2xx finals generated here (§17.1.1.3).
//! * Timeouts: B and F surface as [`Event::Timeout`] (the TU acts as on a 408), D, H, I, J,
//!   K, L and M end transactions; send failures surface as [`Event::TransportError`]
//!   (§8.1.3.1: act as on a 503).
//!
//! It never reads a clock or touches a socket: callers pass `now`, feed received messages,
//! and drain [`TransactionLayer::poll_transmit`] / [`TransactionLayer::poll_event`], calling
//! [`TransactionLayer::handle_timeout`] at [`TransactionLayer::poll_timeout`]. Every timer
//! is testable with a virtual clock.

mod error;
mod layer;
mod table;
mod timers;
mod types;

pub use error::TxnError;
pub use layer::{ClientState, ServerState, TransactionLayer};
pub use types::{
    ClientTxnId, Event, FlowId, ServerTxnId, Target, TimerConfig, Transmit, Transport, TxnRef,
};
