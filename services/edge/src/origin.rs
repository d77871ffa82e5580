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

use crate::shared::Shared;

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
    /// The address is in `security.trusted_peers`, or the dispatcher verified a client
    /// certificate named there (`tls:NAME`).
    pub trusted: bool,
    /// The trunk the request comes from (`call_limits.trunk_peers`, by address or by
    /// the client certificate the dispatcher verified): its index there.
    pub trunk: Option<usize>,
}

/// The dispatcher's word on a request, when its top Via is a dispatcher's, its signature
/// verifies, and the packet came from that Via's own address (a Via copied from a request
/// seen elsewhere and sent from another host is not believed; the edges strip these
/// parameters from what they forward besides).
pub fn relayed<'m>(
    tokens: &dispatch_core::TokenKey,
    msg: &'m SipMessage,
    source: Target,
) -> Option<dispatch_core::relay::Relayed<'m>> {
    let top = msg
        .top_via()
        .ok()
        .filter(dispatch_core::is_dispatcher_via)?;
    if top.sent_by.host.ip() != Some(source.addr.ip()) {
        return None;
    }
    dispatch_core::relay::relayed_by_dispatcher(tokens, &top)
}

/// Read the sender of `msg`, received from `source`.
pub fn origin<'m>(sh: &Shared, msg: &'m SipMessage, source: Target) -> Origin<'m> {
    let relayed = relayed(&sh.tokens, msg, source);
    let is_relayed = relayed.is_some();
    let (addr, dialog, peer) = match relayed {
        Some(r) => (r.client, r.dialog, r.peer),
        None => (source.addr, None, None),
    };
    // Trusted by address, or by the certificate the dispatcher verified (`tls:NAME`).
    let by_name = peer.as_ref().is_some_and(|p| sh.trusted_names.contains(p));
    Origin {
        addr,
        relayed: is_relayed,
        dialog,
        trusted: by_name || dispatch_core::security::any_contains(&sh.trusted, addr.ip()),
        trunk: sh.trunk_peers.index_of(addr.ip(), peer.as_deref()),
    }
}

/// What is known of who sent the request being decided.
pub(crate) struct Sender<'m> {
    pub(crate) origin: Origin<'m>,
    /// `<sip:user@realm>` once a digest verified.
    pub(crate) user: Option<String>,
}
