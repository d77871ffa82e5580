//! Locate: the next hops for a user's bindings (q-order groups, each forked in
//! parallel), through the connection or the Path each binding was registered with.

use sip_core::{NameAddr, Uri};
use sip_registrar::Binding;
use sip_txn::{FlowId, Target, Transport};

use crate::decision::{Decision, Hop};
use crate::nat::contact_reachable;
use crate::route::{resolve, sendable, sip_uri};
use crate::shared::Shared;

/// Bindings to q-ordered groups of hops (§16.6: sequential by q, parallel within a q),
/// and how many bindings were left out because only TLS or WebSocket reaches them.
pub(crate) async fn hops_from_bindings(
    sh: &Shared,
    bindings: &[Binding],
    secure_only: bool,
) -> (Vec<Vec<Hop>>, usize) {
    let mut groups: Vec<(u16, Vec<Hop>)> = Vec::new();
    let mut unsendable = 0;
    for b in bindings {
        let Some(hop) = hop_for(sh, b).await else {
            continue;
        };
        // A contact asking for TLS or WebSocket is reached only over a connection a
        // dispatcher holds to it (its Path's flow token names one): never in the clear,
        // not even through the NAT binding its REGISTER came from.
        let contact_transport = match Uri::parse(b.contact.as_bytes()) {
            Ok(Uri::Sip(u)) if u.secure => Some(Transport::Tls),
            Ok(Uri::Sip(u)) => u.transport().and_then(Transport::from_token),
            _ => None,
        };
        let token = b.path.first().and_then(|p| dispatcher_token(&sh.tokens, p));
        let held = token.as_ref().is_some_and(|t| t.flow.is_some());
        // The dispatcher refuses a SIPS request toward a flow in the clear.
        let secure_flow = token.as_ref().is_some_and(|t| t.secure);
        let reachable = match contact_transport {
            None | Some(Transport::Udp | Transport::Tcp) => true,
            Some(Transport::Ws) => held,
            Some(Transport::Tls | Transport::Wss) => held && secure_flow,
        };
        // A SIPS request only to bindings whose last hop is TLS (RFC 5630): never
        // downgraded on the way to the phone. Not "unsendable": the phone is there, just
        // not reachable securely, which the caller hears as 480.
        if secure_only && !secure_flow {
            continue;
        }
        if !sendable(&hop.target) || !reachable {
            unsendable += 1;
            continue;
        }
        match groups.last_mut() {
            Some((q, g)) if *q == b.q => g.push(hop),
            _ => groups.push((b.q, vec![hop])),
        }
    }
    (groups.into_iter().map(|(_, g)| g).collect(), unsendable)
}

/// How to reach one binding: through its Path, over its own connection, to the NAT
/// source it registered from, or to the contact itself.
pub(crate) async fn hop_for(sh: &Shared, b: &Binding) -> Option<Hop> {
    let contact = Uri::parse(b.contact.as_bytes()).ok()?;
    let c = *contact.as_sip()?;
    let foreign_flow = b.source.as_ref().and_then(|s| {
        let connection = Transport::from_token(&s.transport).is_some_and(|t| t != Transport::Udp);
        let elsewhere = s.edge_id.as_deref() != Some(sh.instance.as_str());
        (connection && elsewhere)
            .then_some(s.edge_uri.as_deref())
            .flatten()
    });
    let target = if let Some(first) = b.path.first() {
        let na = NameAddr::parse(first.as_bytes(), "Path").ok()?;
        resolve(&sh.tokens, &sip_uri(&na)?).await?
    } else if let Some(edge_uri) = foreign_flow {
        // The UA is connected to another edge: only that edge's connection reaches it
        // (a NAT or firewall admits nothing else), so the request goes there with the
        // flow token as its top Route.
        let Ok(Uri::Sip(u)) = Uri::parse(edge_uri.as_bytes()) else {
            return None;
        };
        let target = resolve(&sh.tokens, &u).await?;
        let mut routes = vec![format!("<{edge_uri}>")];
        routes.extend(b.path.iter().cloned());
        return Some(Hop {
            request_uri: Some(b.contact.clone()),
            routes,
            target,
        });
    } else if let Some(src) = b.source.as_ref() {
        // The REGISTER recorded its source (NAT, or a connection): reach the UA through
        // its connection while that is open; over UDP through the NAT binding it came from.
        let transport = Transport::from_token(&src.transport)?;
        let flow = src
            .flow_token
            .as_deref()
            .filter(|_| src.edge_id.as_deref() == Some(sh.instance.as_str()))
            .and_then(|t| t.parse().ok())
            .map(FlowId)
            .filter(|f| sh.flows.alive(*f));
        if flow.is_some() || transport == Transport::Udp || !contact_reachable(&c, src.remote) {
            Target {
                transport,
                addr: src.remote,
                flow,
            }
        } else {
            // The connection is gone but the contact is a listening address we can reach
            // (a TCP client that is not behind a NAT): open a new connection to it.
            resolve(&sh.tokens, &c).await?
        }
    } else {
        resolve(&sh.tokens, &c).await?
    };
    Some(Hop {
        request_uri: Some(b.contact.clone()),
        routes: b.path.clone(),
        target,
    })
}

/// A request for a local user (`raw_user` in `domain`): to every binding, as q-order
/// groups. Unknown and unregistered users get the same answer (480), so a caller cannot
/// tell which users exist; a store that does not answer gives 503 + Retry-After.
pub(crate) async fn to_local_user(
    sh: &Shared,
    r: &crate::route::Routing<'_>,
    domain: &str,
    raw_user: &str,
) -> Decision {
    let Ok(aor) = sip_registrar::Aor::parse(&format!("sip:{raw_user}@{domain}")) else {
        return r.respond(480);
    };
    let user = sip_core::unescape_percent(raw_user.as_bytes()).into_owned();
    let user = String::from_utf8_lossy(&user).into_owned();
    match sh.users.credentials(&user, domain).await {
        Ok(Some(_)) => {}
        Ok(None) => return r.respond(480),
        Err(_) => return crate::decision::unavailable(sh, r.txn, r.msg),
    }
    let bindings = match sh.store.lookup(&aor, r.now).await {
        Ok(b) => b,
        Err(_) => return crate::decision::unavailable(sh, r.txn, r.msg),
    };
    let sips = matches!(r.msg.request_uri(), Ok(Uri::Sip(u)) if u.secure);
    let (groups, unsendable) = hops_from_bindings(sh, &bindings, sips).await;
    if groups.is_empty() {
        // Registered only at addresses we cannot reach yet (TLS): say so at once, rather
        // than letting the caller wait out a timeout.
        return r.respond(if unsendable > 0 { 503 } else { 480 });
    }
    Decision::Forward {
        txn: r.txn,
        plan: r.plan(groups),
    }
}

/// The dispatcher flow token in a Path entry (read, not verified: the dispatcher
/// verifies it before it acts on it).
fn dispatcher_token(
    tokens: &dispatch_core::TokenKey,
    path: &str,
) -> Option<dispatch_core::token::FlowToken> {
    let na = NameAddr::parse(path.as_bytes(), "Path").ok()?;
    let user = sip_uri(&na)?.user?;
    dispatch_core::token::FlowToken::peek_with(tokens, user)
}
