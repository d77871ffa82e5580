//! What to do with a new request (RFC 3261 §16.3–§16.5, §10.3, §22), stage by stage:
//! `decide_for` below reads top-down, one stage per file. Runs as its own task when a
//! stage waits (the stores are asynchronous: gRPC in a cluster); the result goes back to
//! the core as a [`Decision`].
//!
//! 1. `origin`: who sent it (the client behind a dispatcher's signed Via), trusted or not.
//! 2. `route`: Max-Forwards, Proxy-Require, loops (§16.3), our own Route values popped,
//!    strict routers fixed (§16.4), a Route naming one of this edge's connections;
//!    `loose_route` when Route values are left.
//! 3. `register`: REGISTER, the registrar (§10.3).
//! 4. `authenticate`: digest, once per (nonce, nc) across edges, with brute-force limits.
//! 5. `outbound`: a destination set for the target (via the dispatcher).
//! 6. `in_dialog`: a request with a To tag goes on only through our Record-Route (its
//!    signed dialog token) or to a party of the dialog.
//! 7. `for_me` (the proxy itself as a UAS), `locate` (a local user's bindings, `nat`
//!    saying which are reachable directly), or `outbound` (a foreign domain).
//! 8. `anchor`: media anchored at a relay when the policy says so (in the core, after
//!    this decision), and the core forwards the [`Plan`](crate::decision::Plan) (`core`,
//!    `forking`).
use sip_core::{Method, SipMessage};
use sip_txn::{ServerTxnId, Target};

use crate::authenticate::authenticate_caller;
use crate::decision::{Decision, IdentityHeaders, respond, respond_with};
use crate::for_me::answer;
use crate::in_dialog::admit_in_dialog;
use crate::locate::to_local_user;
use crate::loose_route::to_next_route;
use crate::origin::{Sender, origin};
use crate::outbound::{to_destination_set, to_foreign_domain};
use crate::register::register;
use crate::route::Routing;
use crate::shared::Shared;

/// Decide what to do with a new request (already validated).
pub async fn decide(sh: &Shared, txn: ServerTxnId, msg: &SipMessage, source: Target) -> Decision {
    let mut sender = Sender {
        origin: origin(sh, msg, source),
        user: None,
    };
    match decide_for(sh, txn, msg, source, &mut sender).await {
        Decision::Forward { txn, mut plan } => {
            plan.identity = IdentityHeaders {
                strip: !sender.origin.trusted,
                proven: sender.origin.trusted || sender.user.is_some(),
                assert: sender
                    .user
                    .clone()
                    .filter(|_| sh.cfg.security.assert_identity && !sender.origin.trusted),
                user: sender.user,
            };
            // limit: a new call is admitted against the cluster-wide call limits last,
            // once it is known to go somewhere (nothing is counted for a challenge).
            let from_trunk = sender.origin.trunk.and_then(|i| sh.trunk_peers.name(i));
            if let Some(refused) = crate::limit::admit(sh, txn, msg, &mut plan, from_trunk).await {
                return refused;
            }
            Decision::Forward { txn, plan }
        }
        d => d,
    }
}

/// The stages, top-down: each either decides or hands on to the next.
async fn decide_for(
    sh: &Shared,
    txn: ServerTxnId,
    msg: &SipMessage,
    source: Target,
    sender: &mut Sender<'_>,
) -> Decision {
    let Some(method) = msg.method() else {
        return respond(txn, msg, 500);
    };
    // route: §16.3 checks, our Route values, loops, strict routers.
    if let Some(d) = Routing::refused(sh, txn, msg, method, sender.origin.relayed) {
        return d;
    }
    let r = Routing::read(sh, txn, msg, source, method);
    // session timer: an interval below ours is refused 422 (RFC 4028 §8.1).
    if r.initial
        && let Some(min) = crate::session_timer::too_small(sh, msg)
    {
        return respond_with(txn, msg, 422, &[("Min-SE", min.to_string())]);
    }
    if r.remaining > 0 {
        return to_next_route(sh, &r, sender).await;
    }
    if let Some(d) = r.to_own_flow(sh) {
        return d;
    }
    let Some(target) = r.target_uri() else {
        return r.respond(404);
    };
    // A SIPS target only from a dispatcher (which takes SIPS over TLS only): a SIPS
    // request that reached the edge in the clear was downgraded on the way.
    if target.secure && !sender.origin.relayed {
        return r.respond(416);
    }
    let domain = sh.local.local_domain(&target).map(str::to_owned);

    // register: the registrar, for our domains only.
    if method == Method::Register {
        return match domain {
            Some(d) => register(sh, txn, msg, source, sender, &d, r.now).await,
            None => r.respond(403),
        };
    }
    // authenticate: local users' new requests, when configured.
    if let Err(d) = authenticate_caller(sh, &r, sender).await {
        return d;
    }
    // outbound rules: a destination set serves the target.
    if let Some(d) = to_destination_set(sh, &r, sender, &target).await {
        return d;
    }
    // in dialog: only through our Record-Route, or to a party of the dialog.
    if !r.initial {
        if let Err(d) = admit_in_dialog(sh, &r, sender, None, domain.is_some()).await {
            return d;
        }
        if domain.is_none() {
            return r.to_uri(sh, &target).await;
        }
    }
    match (domain, target.user) {
        // for_me: the proxy itself as a UAS.
        (Some(_), None) if sh.local.is_me(&target) => answer(sh, &r),
        // locate: a local user's bindings.
        (Some(d), Some(user)) => to_local_user(sh, &r, &d, user).await,
        (Some(_), None) => r.respond(404),
        // outbound: a foreign domain.
        (None, _) => to_foreign_domain(sh, &r, sender, &target).await,
    }
}
