//! ACK: the ACK for a 2xx is end to end (RFC 3261 §13.2.2.4, §16.11-style): no
//! transaction, routed statelessly, and only within a dialog set up through us toward
//! its parties. The answer of a late offer rides on it and is anchored on the way.

use bytes::Bytes;
use sip_core::SipMessage;
use sip_txn::Target;

use crate::route::{branch_prefix, loop_hash, resolve};
use crate::shared::Shared;

/// Where this ACK goes and its forwarded bytes, or `None` when it goes nowhere (not
/// within a dialog through us, not toward its parties, or absorbed).
pub async fn route_ack(sh: &Shared, ack: SipMessage, source: Target) -> Option<(Target, Bytes)> {
    // Like any in-dialog request, the ACK leaves only within a dialog set up through us,
    // and only toward its parties: checked before anything is done for it (the media
    // relay is not asked about a stranger's SDP).
    let trusted = ack_allowed(sh, &ack, source).await?;
    let mut ack = ack;
    if let Some(relays) = &sh.relays
        && crate::media::has_sdp(&ack)
        && let (Ok(Some(from)), Ok(Some(to))) = (ack.from_tag(), ack.to_tag())
        && let Some(rewritten) = crate::media::anchor_sdp(relays, None, &ack, from, to, false).await
    {
        ack = rewritten;
    }
    stateless_request(sh, &ack, trusted).await
}

/// May this ACK go on? `Some(trusted sender)` when it may.
async fn ack_allowed(sh: &Shared, ack: &SipMessage, source: Target) -> Option<bool> {
    let routes: Vec<_> = ack.routes().flatten().collect();
    let pop = routes
        .iter()
        .take_while(|r| {
            r.parsed_uri()
                .ok()
                .and_then(|u| u.as_sip().map(|s| sh.local.is_me(s)))
                .unwrap_or(false)
        })
        .count();
    let next = routes.get(pop).and_then(|r| match r.parsed_uri() {
        Ok(sip_core::Uri::Sip(u)) => Some(u),
        _ => None,
    });
    let o = crate::origin::origin(sh, ack, source);
    let verdict =
        crate::in_dialog::in_dialog_verdict(sh, ack, &routes[..pop], &o, next.as_ref()).await;
    (verdict == crate::in_dialog::InDialog::Allowed).then_some(o.trusted)
}

/// Route a request statelessly (the ACK for a 2xx): pop our Routes, send to the next
/// Route or the Request-URI, with our Via.
async fn stateless_request(
    sh: &Shared,
    msg: &SipMessage,
    trusted: bool,
) -> Option<(Target, Bytes)> {
    let routes: Vec<_> = msg.routes().flatten().collect();
    let mine = |a: &sip_core::NameAddr<'_>| {
        a.parsed_uri()
            .ok()
            .and_then(|u| u.as_sip().map(|s| sh.local.is_me(s)))
            .unwrap_or(false)
    };
    let pop = routes.iter().take_while(|r| mine(r)).count();
    let next_uri = match routes.get(pop) {
        Some(r) => r.parsed_uri().ok()?,
        None => msg.request_uri().ok()?,
    };
    let sip = *next_uri.as_sip()?;
    if routes.get(pop).is_none() && (sh.local.is_me(&sip) || sh.local.local_domain(&sip).is_some())
    {
        // Every dialog we proxy is record-routed, so a genuine 2xx ACK carries our Route.
        // Without one this is the ACK of a response we generated ourselves whose branch did
        // not match (a pre-3261 or sloppy client): absorb it rather than send a stray ACK
        // to the user's phones.
        return None;
    }
    let target = resolve(&sh.tokens, &sip).await?;
    let branch = format!("{}.ack", branch_prefix(loop_hash(msg)));
    let via = sh.local.via(target.transport, &branch);
    let mut ed = crate::forward::forwarding_editor(msg)?;
    for _ in 0..pop {
        ed.remove_top_route().ok()?;
    }
    if !trusted {
        for h in crate::forward::IDENTITY_HEADERS {
            ed.remove_header_named(h);
        }
    }
    ed.decrement_max_forwards().ok()?;
    ed.prepend_via(via.as_bytes());
    Some((target, ed.finish()))
}
