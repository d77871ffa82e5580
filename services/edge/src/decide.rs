//! What to do with a new request (RFC 3261 §16.3–§16.5, §10.3, §22), stage by stage.
//! Runs as its own task when a stage waits (the stores are asynchronous: gRPC in a
//! cluster); the result goes back to the core as a [`Decision`].
//!
//! The request path, one file per stage, in the order a request meets them:
//!
//! 1. `origin`: who sent it (the client behind a dispatcher's signed Via), trusted or not.
//! 2. `route`: Max-Forwards, Proxy-Require, loops (§16.3), our own Route popped, strict
//!    routers fixed (§16.4), next hops resolved (DNS bounded in time).
//! 3. `in_dialog`: a request with a To tag goes on only through our Record-Route (its
//!    signed dialog token) or to a party of the dialog.
//! 4. `authenticate`: digest, once per (nonce, nc) across edges, with brute-force limits.
//! 5. `register` (REGISTER: the registrar) or `for_me` (requests for the proxy itself),
//!    else `locate`: the callee's bindings as groups of hops (`nat` says which are
//!    reachable directly).
//! 6. outbound rules (in `decide_for` below): a destination set for a non-local domain,
//!    only for an authenticated or trusted sender.
//! 7. `anchor`: media anchored at a relay when the policy says so (in the core, after
//!    this decision).
//! 8. the core forwards the [`Plan`] (`core` and `forking`).
use dispatch_core::token::edge as flow_token;
use sip_auth::{ChallengeKind, SubscriberStore};
use sip_core::{Method, NameAddr, SipMessage, Uri};
use sip_registrar::{Aor, unix_now};
use sip_txn::{ServerTxnId, Target};

use crate::authenticate::authenticate;
use crate::decision::{
    Decision, Hop, IdentityHeaders, Plan, respond, respond_with, retry_later, unavailable,
};
use crate::for_me::options_reply;
use crate::in_dialog::{InDialogGate, admit_in_dialog, prove};
use crate::locate::hops_from_bindings;
use crate::origin::{Sender, origin};
use crate::register::register;
use crate::route::{Unresolved, is_loop, resolve, resolve_or, sendable, sip_uri};
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
                    .filter(|_| sh.cfg.security.assert_identity && !sender.origin.trusted),
            };
            Decision::Forward { txn, plan }
        }
        d => d,
    }
}

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
    let now = unix_now();

    if msg.max_forwards() == Ok(Some(0)) {
        // §16.3 step 3: at zero only an OPTIONS for the proxy itself may be answered.
        let for_me = method == Method::Options
            && msg.routes().flatten().next().is_none()
            && matches!(msg.request_uri(), Ok(Uri::Sip(u)) if u.user.is_none() && sh.local.is_me(&u));
        if !for_me {
            return respond(txn, msg, 483);
        }
    }
    let unsupported: Vec<String> = msg.proxy_require().flatten().map(str::to_owned).collect();
    if !unsupported.is_empty() {
        return respond_with(txn, msg, 420, &[("Unsupported", unsupported.join(", "))]);
    }
    if is_loop(&sh.local, msg) {
        return respond(txn, msg, 482);
    }
    // No TLS yet: a sips: request can only be refused, never carried in the clear.
    if method != Method::Register && matches!(msg.request_uri(), Ok(Uri::Sip(u)) if u.secure) {
        return respond(txn, msg, 416);
    }

    // Route processing (§16.4).
    let routes: Vec<NameAddr<'_>> = msg.routes().flatten().collect();
    let pop = routes
        .iter()
        .take_while(|r| sip_uri(r).is_some_and(|u| sh.local.is_me(&u)))
        .count();
    let ruri = msg.request_uri().ok();
    let strict_fix =
        pop < routes.len() && matches!(&ruri, Some(Uri::Sip(u)) if sh.local.is_me(u) && u.lr());
    let remaining = routes.len() - pop - usize::from(strict_fix);
    let initial = msg.to_tag().ok().flatten().is_none();
    let record_route = initial && method.creates_dialog() && sh.cfg.sip.record_route;
    let trusted = sender.origin.trusted;
    let from_domain = msg
        .from_header()
        .ok()
        .and_then(|f| sip_uri(&f))
        .and_then(|u| sh.local.local_domain(&u).map(str::to_owned));
    // Requests our users' digest covers (ACK and CANCEL cannot be challenged; OPTIONS
    // is answered or relayed without).
    let challengeable = !matches!(method, Method::Ack | Method::Cancel | Method::Options);

    if remaining > 0 {
        // Loose routing: the next Route decides the next hop; the Request-URI stays.
        let Some(next) = sip_uri(&routes[pop]) else {
            return respond(txn, msg, 400);
        };
        if initial && !trusted {
            // A Route preloaded by the sender: honoured only for one of our users who
            // proves it (else anyone could relay through us to any address).
            let domain = from_domain.as_deref();
            if let Err(d) = prove(
                sh,
                txn,
                msg,
                source,
                sender,
                domain,
                challengeable,
                now,
                403,
            )
            .await
            {
                return d;
            }
        } else if !initial {
            let gate = InDialogGate {
                own_routes: &routes[..pop],
                next: Some(&next),
                local_target: false,
                from_domain: from_domain.as_deref(),
                challengeable,
            };
            if let Err(d) = admit_in_dialog(sh, txn, msg, source, sender, gate, now).await {
                return d;
            }
        }
        return match resolve(&next).await {
            Some(target) if sendable(&target) => Decision::Forward {
                txn,
                plan: Plan::one_hop(pop, strict_fix, record_route, target),
            },
            _ => respond(txn, msg, 503),
        };
    }

    // A Route naming one of this edge's client connections (put there by another edge
    // that looked up a binding registered here): deliver down that connection.
    if let Some(token) = routes[..pop]
        .iter()
        .filter_map(sip_uri)
        .find_map(|u| u.user.and_then(|t| flow_token::decode(&sh.nonces, t)))
    {
        return match token {
            (instance, flow) if instance == sh.instance => match sh.transports.flow_target(flow) {
                Some(target) => Decision::Forward {
                    txn,
                    plan: Plan::one_hop(pop, strict_fix, record_route, target),
                },
                // RFC 5626 §5.3: the flow is gone.
                None => respond(txn, msg, 430),
            },
            // Signed by the cluster but for an earlier incarnation of this edge.
            _ => respond(txn, msg, 430),
        };
    }
    // Our flow-token form, but not signed with the cluster's secret: forged, or from
    // before a secret rotation. Never treat it as an ordinary Route.
    if routes[..pop]
        .iter()
        .filter_map(sip_uri)
        .any(|u| u.user.is_some_and(|t| t.starts_with(flow_token::PREFIX)))
    {
        return respond(txn, msg, 403);
    }

    // The target is the Request-URI (or, after a strict route, the last Route value).
    let effective = if strict_fix {
        routes.last().and_then(sip_uri)
    } else {
        ruri.as_ref().and_then(|u| u.as_sip().copied())
    };
    let Some(target_uri) = effective else {
        // tel: and the like: this edge has no number routing.
        return respond(txn, msg, 404);
    };
    if target_uri.secure {
        return respond(txn, msg, 416);
    }
    let domain = sh.local.local_domain(&target_uri).map(str::to_owned);
    let plan = |groups| Plan {
        pop_routes: pop,
        strict_fix,
        record_route,
        groups,
        body: None,
        anchor: None,
        identity: IdentityHeaders::default(),
    };

    if method == Method::Register {
        return match domain {
            Some(d) => register(sh, txn, msg, source, sender, &d, now).await,
            None => respond(txn, msg, 403),
        };
    }

    let needs_auth =
        sh.cfg.auth.invite && initial && from_domain.is_some() && challengeable && !trusted;
    if needs_auth {
        let realm = from_domain.clone().unwrap_or_default();
        let from_user = msg.from_user();
        match authenticate(
            sh,
            txn,
            msg,
            source,
            sender,
            ChallengeKind::Proxy,
            &realm,
            from_user,
            now,
        )
        .await
        {
            Ok(user) => sender.user = Some(format!("<sip:{user}@{realm}>")),
            Err(d) => return d,
        }
    }
    // May this request leave the cluster? Only for a user who proved who it is, or a
    // trusted peer: a From header naming a local user proves nothing.
    let may_leave = trusted || sender.user.is_some();

    // Outbound rules: a local user's call to a number or domain served by a destination
    // set goes to the dispatcher, which picks the gateway.
    if initial
        && from_domain.is_some()
        && challengeable
        && let Some(set) = sh
            .cfg
            .outbound
            .set_for(target_uri.user, &target_uri.host.to_string())
    {
        if !may_leave
            && let Err(d) = prove(
                sh,
                txn,
                msg,
                source,
                sender,
                from_domain.as_deref(),
                challengeable,
                now,
                403,
            )
            .await
        {
            return d;
        }
        let route = sh.cfg.outbound.dispatcher.as_deref().and_then(|d| {
            let Ok(Uri::Sip(u)) = Uri::parse(d.as_bytes()) else {
                return None;
            };
            let hostport = match u.port {
                Some(p) => format!("{}:{p}", u.host),
                None => u.host.to_string(),
            };
            Some((
                u,
                format!(
                    "<sip:{}{set}@{hostport};lr>",
                    dispatch_core::relay::SET_PREFIX
                ),
            ))
        });
        let Some((disp, route)) = route else {
            return respond(txn, msg, 500);
        };
        return match resolve(&disp).await {
            Some(target) => Decision::Forward {
                txn,
                plan: Plan {
                    pop_routes: pop,
                    strict_fix,
                    record_route,
                    groups: vec![vec![Hop {
                        request_uri: None,
                        routes: vec![route],
                        target,
                    }]],
                    body: None,
                    anchor: None,
                    identity: IdentityHeaders::default(),
                },
            },
            None => respond(txn, msg, 503),
        };
    }

    if !initial {
        // In-dialog request without (more) Route: the Request-URI is the remote target.
        let gate = InDialogGate {
            own_routes: &routes[..pop],
            next: None,
            local_target: domain.is_some(),
            from_domain: from_domain.as_deref(),
            challengeable,
        };
        if let Err(d) = admit_in_dialog(sh, txn, msg, source, sender, gate, now).await {
            return d;
        }
    }
    if !initial && domain.is_none() {
        return match resolve_or(&target_uri).await {
            Ok(target) if sendable(&target) => Decision::Forward {
                txn,
                plan: Plan::one_hop(pop, strict_fix, record_route, target),
            },
            Ok(_) => respond(txn, msg, 503),
            Err(Unresolved::Timeout) => retry_later(txn, msg),
            Err(Unresolved::NoSuchHost) => respond(txn, msg, 404),
        };
    }

    match (domain, target_uri.user) {
        (Some(_), None) if sh.local.is_me(&target_uri) => {
            // Addressed to the proxy itself.
            // The proxy as a UAS (§8.2.1): it answers OPTIONS (and REGISTER, above) only.
            match method {
                Method::Options => options_reply(sh, txn, msg),
                Method::Other(_) => respond(txn, msg, 501),
                _ => respond_with(txn, msg, 405, &[("Allow", "OPTIONS, REGISTER".into())]),
            }
        }
        (Some(d), Some(_)) => {
            // The AOR in the canonical domain (a request to the edge's address counts as
            // the default domain).
            let raw_user = target_uri.user.unwrap_or_default();
            // Unknown and unregistered users get the same answer (480), so a caller
            // cannot tell which users exist.
            let Ok(aor) = Aor::parse(&format!("sip:{raw_user}@{d}")) else {
                return respond(txn, msg, 480);
            };
            let user = sip_core::unescape_percent(raw_user.as_bytes()).into_owned();
            let user = String::from_utf8_lossy(&user).into_owned();
            match sh.users.credentials(&user, &d).await {
                Ok(Some(_)) => {}
                Ok(None) => return respond(txn, msg, 480),
                Err(_) => return unavailable(sh, txn, msg),
            }
            let bindings = match sh.store.lookup(&aor, now).await {
                Ok(b) => b,
                Err(_) => return unavailable(sh, txn, msg),
            };
            let (groups, unsendable) = hops_from_bindings(sh, &bindings).await;
            if groups.is_empty() {
                // Registered only at addresses we cannot reach yet (TLS): say so at
                // once, rather than letting the caller wait out a timeout.
                let code = if unsendable > 0 { 503 } else { 480 };
                return respond(txn, msg, code);
            }
            Decision::Forward {
                txn,
                plan: plan(groups),
            }
        }
        (Some(_), None) => respond(txn, msg, 404),
        (None, _) => {
            // A foreign domain: only for a user who authenticated (with auth.invite off,
            // challenged now), or a trusted peer.
            if !may_leave
                && let Err(d) = prove(
                    sh,
                    txn,
                    msg,
                    source,
                    sender,
                    from_domain.as_deref(),
                    challengeable,
                    now,
                    403,
                )
                .await
            {
                return d;
            }
            match resolve_or(&target_uri).await {
                Ok(target) if sendable(&target) => Decision::Forward {
                    txn,
                    plan: Plan::one_hop(pop, strict_fix, record_route, target),
                },
                Ok(_) => respond(txn, msg, 503),
                Err(Unresolved::Timeout) => retry_later(txn, msg),
                Err(Unresolved::NoSuchHost) => respond(txn, msg, 404),
            }
        }
    }
}
