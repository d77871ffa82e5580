//! Loose routing (§16.4, §16.6 step 6): Route values left after ours decide the next hop,
//! the Request-URI stays. A Route preloaded on an initial request is honoured only for a
//! trusted peer or a sender who proves who it is (else anyone could relay through us to
//! any address); an in-dialog one only through our own Record-Route.

use crate::decision::Decision;
use crate::in_dialog::{InDialogGate, admit_in_dialog, prove_for};
use crate::origin::Sender;
use crate::route::{Routing, resolve, sendable, sip_uri};
use crate::shared::Shared;

/// Forward to the next Route value (`r.remaining > 0`).
pub(crate) async fn to_next_route(
    sh: &Shared,
    r: &Routing<'_>,
    sender: &mut Sender<'_>,
) -> Decision {
    let Some(next) = r.routes.get(r.pop).and_then(sip_uri) else {
        return r.respond(400);
    };
    let from_domain = r.from_domain.as_deref();
    if r.initial && !sender.origin.trusted {
        if let Err(d) = prove_for(sh, r, sender, 403).await {
            return d;
        }
    } else if !r.initial {
        let gate = InDialogGate {
            own_routes: r.own_routes(),
            next: Some(&next),
            local_target: false,
            from_domain,
            challengeable: r.challengeable,
        };
        if let Err(d) = admit_in_dialog(sh, r.txn, r.msg, r.source, sender, gate, r.now).await {
            return d;
        }
    }
    match resolve(&next).await {
        Some(target) if sendable(&target) => r.one_hop(target),
        _ => r.respond(503),
    }
}
