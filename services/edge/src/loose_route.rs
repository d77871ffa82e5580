//! Loose routing (§16.4, §16.6 step 6): Route values left after ours decide the next hop,
//! the Request-URI stays. A Route preloaded on an initial request is honoured only for a
//! trusted peer or a sender who proves who it is (else anyone could relay through us to
//! any address); an in-dialog one only through our own Record-Route.

use crate::decision::Decision;
use crate::in_dialog::{admit_in_dialog, prove};
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
    let admitted = if !r.initial {
        admit_in_dialog(sh, r, sender, Some(&next), false).await
    } else if !sender.origin.trusted {
        prove(sh, r, sender, 403).await
    } else {
        Ok(())
    };
    if let Err(d) = admitted {
        return d;
    }
    match resolve(&sh.tokens, &next).await {
        Some(target) if sendable(&target) => r.one_hop(target),
        _ => r.respond(503),
    }
}
