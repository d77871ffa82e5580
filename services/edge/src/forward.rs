//! Forward: the copy of a request for one next hop (RFC 3261 §16.6), byte-edited from the
//! received message: our Routes popped, a strict route fixed, the hop's Request-URI and
//! Path, Max-Forwards, the anchored body, Record-Route (twice when the transport
//! changes), the identity headers, and our Via on top.

use sip_core::{Editor, SipMessage};
use sip_txn::Target;

use crate::decision::{Hop, Plan};
use crate::shared::Shared;

/// The identity headers believed only from trusted peers (RFC 3325 §5; Remote-Party-ID
/// and P-Preferred-Identity are its relatives).
pub(crate) const IDENTITY_HEADERS: [&str; 3] = [
    "P-Asserted-Identity",
    "Remote-Party-ID",
    "P-Preferred-Identity",
];

/// The forwarded copy of `original` (which came from `source`) for `hop`, on the
/// `branch` of our Via (RFC 3261 §16.6 steps 1–8). `None` when the request cannot be
/// edited so (the caller answers 500). The copy comes parsed from the editor.
pub fn build_forward(
    sh: &Shared,
    original: &SipMessage,
    source: Target,
    plan: &Plan,
    hop: &Hop,
    branch: &str,
) -> Option<SipMessage> {
    let out_t = hop.target.transport;
    let in_t = source.transport;
    let our_via = sh.local.via(out_t, branch);
    // Our Record-Route carries the dialog's token, so in-dialog requests that come back
    // through it prove the dialog was set up through us (any edge checks it).
    let dialog = plan
        .record_route
        .then(|| {
            let call_id = original.call_id().ok()?;
            let tag = original.from_tag().ok().flatten()?;
            Some(
                sh.tokens
                    .dialog_token_for(call_id, tag, plan.identity.proven),
            )
        })
        .flatten();
    let rr = |t| {
        let uri = sh.local.route_uri(t);
        match &dialog {
            Some(d) => dispatch_core::relay::with_dialog_param(uri.as_bytes(), d),
            None => uri.into_bytes(),
        }
    };
    let rr_out = rr(out_t);
    let rr_in = rr(in_t);
    let mut ed = forwarding_editor(original)?;
    for _ in 0..plan.pop_routes {
        ed.remove_top_route().ok()?;
    }
    if plan.strict_fix {
        let last = ed.remove_last_route().ok()?;
        ed.set_request_uri(strip_angles(last).to_vec()).ok()?;
    }
    if let Some(ruri) = &hop.request_uri {
        ed.set_request_uri(ruri.as_bytes()).ok()?;
    }
    for r in &hop.routes {
        ed.prepend_route(r.as_bytes());
    }
    // §16.6 step 6: a next hop that does not loose-route gets the Route as Request-URI.
    // The Route set left after popping ours and, after a strict route, its last value.
    let left = original
        .routes()
        .flatten()
        .count()
        .saturating_sub(plan.pop_routes + usize::from(plan.strict_fix));
    let remaining = original
        .routes()
        .flatten()
        .nth(plan.pop_routes)
        .filter(|_| left > 0);
    if hop.routes.is_empty()
        && hop.request_uri.is_none()
        && let Some(next) = remaining
        && next
            .parsed_uri()
            .ok()
            .and_then(|u| u.as_sip().map(|s| !s.lr()))
            .unwrap_or(false)
    {
        let old_ruri = format!(
            "<{}>",
            String::from_utf8_lossy(original.request_uri_raw().unwrap_or_default())
        );
        ed.set_request_uri(next.uri).ok()?;
        ed.remove_top_route().ok()?;
        ed.add_header("Route", old_ruri.into_bytes());
    }
    ed.decrement_max_forwards().ok()?;
    if let Some(body) = &plan.body {
        ed.set_body(body.as_ref());
    }
    if plan.record_route {
        ed.add_record_route(rr_out.as_slice());
        if in_t != out_t {
            // Double Record-Route when the transport changes: each side gets a URI it can use.
            ed.add_record_route(rr_in.as_slice());
        }
    }
    if plan.identity.strip {
        for h in IDENTITY_HEADERS {
            ed.remove_header_named(h);
        }
    }
    if let Some(pai) = &plan.identity.assert {
        ed.add_header("P-Asserted-Identity", pai.as_bytes());
    }
    crate::session_timer::insert(sh, original, &mut ed);
    ed.prepend_via(our_via.as_bytes());
    ed.finish_message().ok()
}

/// An editor for the forwarded copy of `msg`: a dispatcher's Via on top keeps its place
/// but loses what was for this edge only (the signed client address, the dialog token),
/// and the dispatcher's trace header goes.
pub(crate) fn forwarding_editor<'m, 'e>(msg: &'m SipMessage) -> Option<Editor<'m, 'e>> {
    let relayed_via = msg
        .top_via()
        .ok()
        .filter(dispatch_core::is_dispatcher_via)
        .and_then(|v| dispatch_core::relay::without_edge_params(v.raw));
    let mut ed = Editor::new(msg);
    if let Some(v) = relayed_via {
        ed.remove_top_via().ok()?;
        ed.prepend_via(v);
    }
    // The dispatcher's trace context was for this hop only.
    ed.remove_header_named(dispatch_core::TRACE_HEADER);
    Some(ed)
}

fn strip_angles(v: &[u8]) -> &[u8] {
    (sip_core::NameAddr::parse(v, "Route")
        .map(|a| a.uri)
        .unwrap_or(v)) as _
}
