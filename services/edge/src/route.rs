//! Route: loops (§16.3 step 4), next-hop resolution (RFC 3263 without NAPTR/SRV,
//! bounded in time) and the branch of a forwarded copy.

use std::net::SocketAddr;

use dispatch_core::token::edge as flow_token;
use sip_core::{Method, NameAddr, SipMessage, SipUri, Uri};
use sip_registrar::unix_now;
use sip_txn::{ServerTxnId, Target, Transport};

use crate::decision::{Decision, Hop, IdentityHeaders, Plan, respond, respond_with, retry_later};
use crate::local::Local;
use crate::shared::Shared;

/// A hash of the request as it identifies a forwarding attempt (§16.6 step 8, §16.3 step
/// 4): equal for a request that loops back unchanged, different once it was retargeted.
/// The top Via is left out: in a loop it is always the last hop's, so including it (as
/// the RFC's list suggests) would never detect anything.
pub fn loop_hash(msg: &SipMessage) -> u64 {
    let mut h = sip_core::fnv::Fnv1a::new();
    let mut feed = |b: &[u8]| {
        h.field(b);
    };
    feed(msg.request_uri_raw().unwrap_or_default());
    feed(msg.from_tag().ok().flatten().unwrap_or_default().as_bytes());
    feed(msg.to_tag().ok().flatten().unwrap_or_default().as_bytes());
    feed(msg.call_id().unwrap_or_default().as_bytes());
    feed(&msg.cseq().map(|c| c.seq.to_le_bytes()).unwrap_or_default());
    for r in msg.headers_of(sip_core::HeaderName::ProxyRequire) {
        feed(r.value);
    }
    h.finish()
}

/// The branch prefix this edge uses for a request with `hash`.
pub fn branch_prefix(hash: u64) -> String {
    format!("z9hG4bK-sc{hash:016x}")
}

pub(crate) fn is_loop(local: &Local, msg: &SipMessage) -> bool {
    // The hash covers most of the request; only compute it when one of our own Vias is
    // present, which a request fresh from a client never has.
    let mut prefix = None;
    msg.via().flatten().any(|v| {
        local.is_my_via(&v)
            && v.branch.is_some_and(|b| {
                b.starts_with(
                    prefix
                        .get_or_insert_with(|| branch_prefix(loop_hash(msg)))
                        .as_str(),
                )
            })
    })
}

/// Where to send a request for `uri` (RFC 3263 without NAPTR/SRV: the transport from
/// the URI, A/AAAA lookup of a name). `None` when there is nowhere: see [`resolve_or`]
/// to tell a name that does not exist from a resolver that did not answer.
pub async fn resolve(tokens: &dispatch_core::TokenKey, uri: &SipUri<'_>) -> Option<Target> {
    resolve_or(tokens, uri).await.ok()
}

/// Why a URI led nowhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unresolved {
    /// No such host, or a URI we cannot send to (an unknown transport).
    NoSuchHost,
    /// The resolver did not answer within [`DNS_TIMEOUT`]: our outage, not the caller's
    /// mistake (503 + Retry-After, never 404).
    Timeout,
}

/// The longest a request waits on a name lookup: every request gets its answer within
/// 2 s even when the resolver is gone (glibc alone would wait 5 s per server and try).
pub const DNS_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(1000);

/// A name lookup, cut at [`DNS_TIMEOUT`].
pub(crate) async fn bounded_lookup<A: Iterator<Item = SocketAddr>>(
    name: &str,
    lookup: impl std::future::Future<Output = std::io::Result<A>>,
) -> Result<SocketAddr, Unresolved> {
    // A dead resolver would otherwise log once per request: a line a second is plenty.
    static LOG: std::sync::LazyLock<telemetry::LogLimit> =
        std::sync::LazyLock::new(|| telemetry::LogLimit::new(1, 5));
    match tokio::time::timeout(DNS_TIMEOUT, lookup).await {
        Ok(Ok(mut addrs)) => addrs.next().ok_or(Unresolved::NoSuchHost),
        Ok(Err(_)) => Err(Unresolved::NoSuchHost),
        Err(_) => {
            if let Some(held_back) = LOG.allow(std::time::Instant::now()) {
                tracing::warn!(
                    host = %name,
                    held_back,
                    timeout_ms = DNS_TIMEOUT.as_millis() as u64,
                    "DNS lookup timed out; answering 503 + Retry-After"
                );
            }
            Err(Unresolved::Timeout)
        }
    }
}

/// [`resolve`], saying why it led nowhere.
pub async fn resolve_or(
    tokens: &dispatch_core::TokenKey,
    uri: &SipUri<'_>,
) -> Result<Target, Unresolved> {
    // A dispatcher's Path / Record-Route: its public address is for clients; edges
    // send to the internal address of the dispatcher instance the token names.
    if let Some(tok) = uri
        .user
        .filter(|u| u.starts_with(dispatch_core::token::PREFIX))
        .and_then(|u| dispatch_core::FlowToken::peek_with(tokens, u))
    {
        return Ok(Target {
            transport: if tok.internal_tcp {
                Transport::Tcp
            } else {
                Transport::Udp
            },
            addr: tok.internal,
            flow: None,
        });
    }
    let transport = match uri.transport() {
        Some(t) => Transport::from_token(t).ok_or(Unresolved::NoSuchHost)?,
        None if uri.secure => Transport::Tls,
        None => Transport::Udp,
    };
    let port = uri.port_or_default();
    let addr = match uri.host.ip() {
        Some(ip) => SocketAddr::new(ip, port),
        None => {
            let name = uri.host.to_string();
            bounded_lookup(&name, tokio::net::lookup_host((name.as_str(), port))).await?
        }
    };
    Ok(Target {
        transport,
        addr,
        flow: None,
    })
}

pub(crate) fn sip_uri<'a>(a: &NameAddr<'a>) -> Option<SipUri<'a>> {
    match a.parsed_uri() {
        Ok(Uri::Sip(u)) => Some(u),
        _ => None,
    }
}

/// Can this edge send there? TLS and WebSocket come later: never downgrade a `sips:` or
/// `transport=tls` target to plain UDP/TCP (RFC 3261 §26.2.2, RFC 5630).
pub(crate) fn sendable(t: &Target) -> bool {
    matches!(t.transport, Transport::Udp | Transport::Tcp)
}

/// What the route stage learnt of a request (§16.3, §16.4), read once for the stages
/// after it.
pub(crate) struct Routing<'m> {
    pub(crate) txn: ServerTxnId,
    pub(crate) msg: &'m SipMessage,
    pub(crate) source: Target,
    pub(crate) method: Method<'m>,
    /// Unix seconds: the clock of bindings and nonces.
    pub(crate) now: u64,
    /// The Route values; the first `pop` name this edge and are removed (§16.4).
    pub(crate) routes: Vec<NameAddr<'m>>,
    pub(crate) pop: usize,
    /// The previous hop strict-routed to us: Request-URI := last Route value.
    pub(crate) strict_fix: bool,
    /// Route values left after ours (and after the strict-route fix).
    pub(crate) remaining: usize,
    /// No To tag: a request outside any dialog.
    pub(crate) initial: bool,
    pub(crate) record_route: bool,
    /// The From domain, when it is one of ours (a local user's request).
    pub(crate) from_domain: Option<String>,
    /// A request our users' digest covers (ACK and CANCEL cannot be challenged; OPTIONS
    /// is answered or relayed without).
    pub(crate) challengeable: bool,
}

impl<'m> Routing<'m> {
    /// The §16.3 checks: 483, 420, 482 (and 416 for a SIPS request that did not come
    /// from a dispatcher, `secure`: only a dispatcher ends TLS, and it refuses SIPS in
    /// the clear), or `None` when the request passes them.
    pub(crate) fn refused(
        sh: &Shared,
        txn: ServerTxnId,
        msg: &SipMessage,
        method: Method<'_>,
        secure: bool,
    ) -> Option<Decision> {
        if msg.max_forwards() == Ok(Some(0)) {
            // §16.3 step 3: at zero only an OPTIONS for the proxy itself may be answered.
            let for_me = method == Method::Options
                && msg.routes().flatten().next().is_none()
                && matches!(msg.request_uri(), Ok(Uri::Sip(u)) if u.user.is_none() && sh.local.is_me(&u));
            if !for_me {
                return Some(respond(txn, msg, 483));
            }
        }
        let unsupported: Vec<String> = msg.proxy_require().flatten().map(str::to_owned).collect();
        if !unsupported.is_empty() {
            return Some(respond_with(
                txn,
                msg,
                420,
                &[("Unsupported", unsupported.join(", "))],
            ));
        }
        if is_loop(&sh.local, msg) {
            return Some(respond(txn, msg, 482));
        }
        // A sips: request that came in the clear is refused, never carried on.
        if !secure
            && method != Method::Register
            && matches!(msg.request_uri(), Ok(Uri::Sip(u)) if u.secure)
        {
            return Some(respond(txn, msg, 416));
        }
        None
    }

    /// The Route facts of a request that passed [`Self::refused`].
    pub(crate) fn read(
        sh: &Shared,
        txn: ServerTxnId,
        msg: &'m SipMessage,
        source: Target,
        method: Method<'m>,
    ) -> Routing<'m> {
        let routes: Vec<NameAddr<'m>> = msg.routes().flatten().collect();
        let pop = routes
            .iter()
            .take_while(|r| sip_uri(r).is_some_and(|u| sh.local.is_me(&u)))
            .count();
        let strict_fix = pop < routes.len()
            && matches!(msg.request_uri(), Ok(Uri::Sip(u)) if sh.local.is_me(&u) && u.lr());
        let remaining = routes.len() - pop - usize::from(strict_fix);
        let initial = msg.to_tag().ok().flatten().is_none();
        let from_domain = msg
            .from_header()
            .ok()
            .and_then(|f| sip_uri(&f))
            .and_then(|u| sh.local.local_domain(&u).map(str::to_owned));
        Routing {
            txn,
            msg,
            source,
            method,
            now: unix_now(),
            record_route: initial && method.creates_dialog() && sh.cfg.sip.record_route,
            routes,
            pop,
            strict_fix,
            remaining,
            initial,
            from_domain,
            challengeable: !matches!(method, Method::Ack | Method::Cancel | Method::Options),
        }
    }

    /// Answer `code`.
    pub(crate) fn respond(&self, code: u16) -> Decision {
        respond(self.txn, self.msg, code)
    }

    /// Forward to one next hop, the Request-URI unchanged.
    pub(crate) fn one_hop(&self, target: Target) -> Decision {
        Decision::Forward {
            txn: self.txn,
            plan: Plan::one_hop(self.pop, self.strict_fix, self.record_route, target),
        }
    }

    /// Forward by `groups` of hops (q-order groups, each forked in parallel).
    pub(crate) fn plan(&self, groups: Vec<Vec<Hop>>) -> Plan {
        Plan {
            pop_routes: self.pop,
            strict_fix: self.strict_fix,
            record_route: self.record_route,
            groups,
            body: None,
            anchor: None,
            end_media: false,
            identity: IdentityHeaders::default(),
            destination: None,
            limited: false,
        }
    }

    /// Our Route values.
    pub(crate) fn own_routes(&self) -> &[NameAddr<'m>] {
        &self.routes[..self.pop]
    }

    /// The target: the Request-URI or, after a strict route, the last Route value. `None`
    /// for tel: and the like (this edge has no number routing).
    pub(crate) fn target_uri(&self) -> Option<SipUri<'m>> {
        if self.strict_fix {
            self.routes.last().and_then(sip_uri)
        } else {
            match self.msg.request_uri() {
                Ok(Uri::Sip(u)) => Some(u),
                _ => None,
            }
        }
    }

    /// A Route naming one of this edge's client connections (put there by another edge
    /// that looked up a binding registered here): deliver down that connection. Our
    /// flow-token form not signed with the cluster's secret (forged, or from before a
    /// secret rotation) is refused, never taken for an ordinary Route.
    pub(crate) fn to_own_flow(&self, sh: &Shared) -> Option<Decision> {
        let mine = || self.own_routes().iter().filter_map(sip_uri);
        if let Some(token) =
            mine().find_map(|u| u.user.and_then(|t| flow_token::decode(&sh.nonces, t)))
        {
            return Some(match token {
                (instance, flow) if instance == sh.instance => {
                    match sh.flows.target(flow) {
                        Some(target) => self.one_hop(target),
                        // RFC 5626 §5.3: the flow is gone.
                        None => self.respond(430),
                    }
                }
                // Signed by the cluster but for an earlier incarnation of this edge.
                _ => self.respond(430),
            });
        }
        mine()
            .any(|u| u.user.is_some_and(|t| t.starts_with(flow_token::PREFIX)))
            .then(|| self.respond(403))
    }

    /// Forward to `uri` resolved: 404 when no such host, 503 + Retry-After when the
    /// resolver does not answer, 503 when we cannot send there.
    pub(crate) async fn to_uri(&self, sh: &Shared, uri: &SipUri<'_>) -> Decision {
        match resolve_or(&sh.tokens, uri).await {
            Ok(target) if sendable(&target) => self.one_hop(target),
            Ok(_) => self.respond(503),
            Err(Unresolved::Timeout) => retry_later(self.txn, self.msg),
            Err(Unresolved::NoSuchHost) => self.respond(404),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Addrs = std::vec::IntoIter<SocketAddr>;

    #[tokio::test(start_paused = true)]
    async fn a_resolver_that_never_answers_is_our_outage_within_the_timeout() {
        let start = tokio::time::Instant::now();
        let never = std::future::pending::<std::io::Result<Addrs>>();
        assert_eq!(
            bounded_lookup("gw.example.com", never).await,
            Err(Unresolved::Timeout)
        );
        assert_eq!(start.elapsed(), DNS_TIMEOUT, "on the virtual clock");
        assert!(DNS_TIMEOUT < std::time::Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_name_that_does_not_exist_is_no_such_host_and_an_answer_is_used() {
        let nx = async { Err::<Addrs, _>(std::io::Error::other("NXDOMAIN")) };
        assert_eq!(
            bounded_lookup("nx.example.com", nx).await,
            Err(Unresolved::NoSuchHost)
        );
        let empty = async { Ok::<Addrs, std::io::Error>(Vec::new().into_iter()) };
        assert_eq!(
            bounded_lookup("empty.example.com", empty).await,
            Err(Unresolved::NoSuchHost)
        );
        let addr: SocketAddr = "192.0.2.7:5060".parse().expect("address");
        let found = async move { Ok::<Addrs, std::io::Error>(vec![addr].into_iter()) };
        assert_eq!(bounded_lookup("gw.example.com", found).await, Ok(addr));
    }
}
