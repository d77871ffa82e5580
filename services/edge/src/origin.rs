//! Who sent a request, as far as this edge can tell for certain: the first step of every
//! trust decision (trusted peers, bans, rate limits, in-dialog checks).
//!
//! Behind a dispatcher every request arrives from the dispatcher's internal socket. The
//! dispatcher signs the client's address into its own Via (`scsrc`, a MAC with the
//! cluster secret over the branch and the address) and hands on the dialog token of the
//! Record-Route it popped (`dlg`). A Via that looks like a dispatcher's but does not
//! verify (someone reached the edge directly and wrote one) is ignored: the packet's
//! source stands, and nothing in that Via is believed.

use std::net::SocketAddr;

use sip_core::SipMessage;
use sip_txn::Target;

use crate::decide::Shared;

/// The verified sender of a request.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'m> {
    /// The client's address: the dispatcher's word when one relayed the request, else
    /// the packet's source.
    pub addr: SocketAddr,
    /// A dispatcher relayed it (its Via verified).
    pub relayed: bool,
    /// The dialog token the dispatcher popped with its own Record-Route.
    pub dialog: Option<&'m str>,
    /// The address is in `security.trusted_peers`.
    pub trusted: bool,
}

/// Read the sender of `msg`, received from `source`.
pub fn origin<'m>(sh: &Shared, msg: &'m SipMessage, source: Target) -> Origin<'m> {
    let relayed = msg
        .top_via()
        .ok()
        .filter(dispatch_core::is_dispatcher_via)
        .and_then(|top| dispatch_core::relay::relayed_by_dispatcher(&sh.tokens, &top));
    let (addr, dialog) = match relayed {
        Some(r) => (r.client, r.dialog),
        None => (source.addr, None),
    };
    Origin {
        addr,
        relayed: relayed.is_some(),
        dialog,
        trusted: dispatch_core::security::any_contains(&sh.trusted, addr.ip()),
    }
}
