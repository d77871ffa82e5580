//! What to do with a new request (RFC 3261 §16.3–§16.5, §10.3, §22): the checks, Route
//! processing, authentication, the registrar, and target selection through the location
//! store. Runs as its own task because the stores are asynchronous (gRPC in a cluster);
//! the result goes back to the core as a [`Decision`].

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use dispatch_core::token::edge as flow_token;
use sip_auth::{
    Challenge, ChallengeKind, DigestResponse, NonceCheck, NonceKey, NonceUses, Outcome,
    SubscriberStore, find_credentials,
};
use sip_core::{Method, NameAddr, ResponseBuilder, SipMessage, SipUri, Uri};
use sip_registrar::{Aor, Binding, LocationStore, RegisterRequest, Source, StoreError};
use sip_txn::{FlowId, ServerTxnId, Target, Transport};

use crate::config::EdgeConfig;
use crate::local::Local;
use crate::metrics::{EdgeMetrics, ReasonLabel};
use crate::origin::{Origin, origin};

/// What the decision tasks share.
pub struct Shared {
    /// Configuration.
    pub cfg: EdgeConfig,
    /// Identity.
    pub local: Local,
    /// Location store (registrations).
    pub store: Arc<dyn LocationStore>,
    /// Subscriber credentials.
    pub users: Arc<dyn SubscriberStore>,
    /// Nonce key shared with the other edges.
    pub nonces: NonceKey,
    /// Metrics.
    pub metrics: EdgeMetrics,
    /// This edge's instance id (recorded with bindings for flow affinity).
    pub instance: String,
    /// The transports (to ask whether a registered connection is still open).
    pub transports: sip_transport::Transports,
    /// Draining: OPTIONS to the edge say 503, so dispatchers send no new dialogs.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    /// Media relays, when anchoring is configured.
    pub relays: Option<Arc<crate::media::Relays>>,
    /// The rate limits of the operator's log lines.
    pub audit: crate::audit::Audit,
    /// The cluster secret as the dispatchers use it: dialog tokens, signed Vias.
    pub tokens: dispatch_core::TokenKey,
    /// `security.trusted_peers`, parsed.
    pub trusted: Vec<dispatch_core::Cidr>,
    /// `security.deny_user_agents`.
    pub deny: dispatch_core::UserAgentDeny,
    /// Per-source rate limit, failed-login bans and locks.
    pub guard: crate::guard::Guard,
    /// The `(nonce, nc)` pairs already used (replay protection), shared by the edges.
    pub nonce_uses: Arc<dyn NonceUses>,
}

/// One next hop for a forwarded copy of the request.
#[derive(Debug, Clone)]
pub struct Hop {
    /// New Request-URI (the contact), or keep the request's.
    pub request_uri: Option<String>,
    /// Route values to put on top (a binding's Path).
    pub routes: Vec<String>,
    /// Where to send.
    pub target: Target,
}

/// How to forward.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Route values naming this edge to remove from the top (§16.4).
    pub pop_routes: usize,
    /// The previous hop strict-routed to us: Request-URI := last Route value (§16.4).
    pub strict_fix: bool,
    /// Add Record-Route (dialog-creating request).
    pub record_route: bool,
    /// Sequential groups (q-order), each forked in parallel.
    pub groups: Vec<Vec<Hop>>,
    /// The body to forward instead of the request's (SDP anchored at a media relay).
    pub body: Option<Bytes>,
    /// The media relay holding the call's session (its index), when anchored.
    pub anchor: Option<usize>,
    /// What to do with the identity headers (RFC 3325).
    pub identity: IdentityHeaders,
}

/// RFC 3325 §5: P-Asserted-Identity (and its relatives Remote-Party-ID and
/// P-Preferred-Identity) are believed only from trusted peers; from anyone else they are
/// removed, and an authenticated user may get one naming it.
#[derive(Debug, Clone, Default)]
pub struct IdentityHeaders {
    /// Remove P-Asserted-Identity, Remote-Party-ID and P-Preferred-Identity.
    pub strip: bool,
    /// Add this P-Asserted-Identity value (`<sip:user@realm>`).
    pub assert: Option<String>,
    /// The sender authenticated or is trusted: our Record-Route's dialog token says so,
    /// and the dialog's in-dialog requests may then go anywhere.
    pub proven: bool,
}

impl Plan {
    /// Forward to one next hop, Request-URI unchanged.
    fn one_hop(pop_routes: usize, strict_fix: bool, record_route: bool, target: Target) -> Plan {
        Plan {
            pop_routes,
            strict_fix,
            record_route,
            body: None,
            anchor: None,
            identity: IdentityHeaders::default(),
            groups: vec![vec![Hop {
                request_uri: None,
                routes: vec![],
                target,
            }]],
        }
    }
}

/// The outcome of deciding.
#[derive(Debug)]
pub enum Decision {
    /// Answer on the server transaction.
    Respond {
        /// Transaction.
        txn: ServerTxnId,
        /// Status code.
        code: u16,
        /// The response.
        bytes: Bytes,
        /// The refusal was logged already (a failed login has its own line), so the
        /// core does not log it again as a refused request.
        logged: bool,
    },
    /// Forward downstream.
    Forward {
        /// Transaction.
        txn: ServerTxnId,
        /// How.
        plan: Plan,
    },
}

pub use sip_registrar::unix_now;

pub(crate) fn respond(txn: ServerTxnId, msg: &SipMessage, code: u16) -> Decision {
    respond_with(txn, msg, code, &[])
}

fn respond_with(
    txn: ServerTxnId,
    msg: &SipMessage,
    code: u16,
    headers: &[(&str, String)],
) -> Decision {
    let Some(mut b) = ResponseBuilder::new(msg, code) else {
        return Decision::Respond {
            txn,
            code,
            bytes: Bytes::new(),
            logged: false,
        };
    };
    for (n, v) in headers {
        b = b.header(n.to_string(), v.clone().into_bytes());
    }
    Decision::Respond {
        txn,
        code,
        bytes: b.build(),
        logged: false,
    }
}

/// A 403 for a failed login, which [`crate::audit::Audit::auth_failed`] logged.
fn refuse_login(txn: ServerTxnId, msg: &SipMessage) -> Decision {
    match respond(txn, msg, 403) {
        Decision::Respond {
            txn, code, bytes, ..
        } => Decision::Respond {
            txn,
            code,
            bytes,
            logged: true,
        },
        d => d,
    }
}

pub(crate) fn unavailable(sh: &Shared, txn: ServerTxnId, msg: &SipMessage) -> Decision {
    sh.metrics.store_unavailable.inc();
    retry_later(txn, msg)
}

/// 503 with Retry-After: a dependency (a store, a media relay) is down, not the callee.
pub(crate) fn retry_later(txn: ServerTxnId, msg: &SipMessage) -> Decision {
    respond_with(txn, msg, 503, &[("Retry-After", "5".into())])
}

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

fn is_loop(local: &Local, msg: &SipMessage) -> bool {
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
pub async fn resolve(uri: &SipUri<'_>) -> Option<Target> {
    resolve_or(uri).await.ok()
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
async fn bounded_lookup<A: Iterator<Item = SocketAddr>>(
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
pub async fn resolve_or(uri: &SipUri<'_>) -> Result<Target, Unresolved> {
    // A dispatcher's Path / Record-Route: its public address is for clients; edges
    // send to the internal address of the dispatcher instance the token names.
    if let Some(tok) = uri
        .user
        .filter(|u| u.starts_with(dispatch_core::token::PREFIX))
        .and_then(dispatch_core::FlowToken::peek)
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

fn sip_uri<'a>(a: &NameAddr<'a>) -> Option<SipUri<'a>> {
    match a.parsed_uri() {
        Ok(Uri::Sip(u)) => Some(u),
        _ => None,
    }
}

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

/// What is known of who sent the request being decided.
struct Sender<'m> {
    origin: Origin<'m>,
    /// `<sip:user@realm>` once a digest verified.
    user: Option<String>,
}

/// Was this in-dialog request's dialog set up through our Record-Route? It shows the
/// dialog token of that Record-Route: in a Route we popped (or, from a strict router, the
/// Request-URI), or in the Via of the dispatcher that popped it. `Some(authorized)` when a
/// token verifies (`true`: the dialog was set up by an authenticated or trusted sender).
pub(crate) fn dialog_token_check(
    sh: &Shared,
    msg: &SipMessage,
    own_routes: &[NameAddr<'_>],
    o: &Origin<'_>,
) -> Option<bool> {
    let call_id = msg.call_id().ok()?;
    let tags = [msg.from_tag().ok().flatten(), msg.to_tag().ok().flatten()];
    let ruri = match msg.request_uri() {
        Ok(Uri::Sip(u)) if sh.local.is_me(&u) => dispatch_core::relay::dialog_param(&u),
        _ => None,
    };
    own_routes
        .iter()
        .filter_map(sip_uri)
        .filter_map(|u| dispatch_core::relay::dialog_param(&u))
        .chain(o.dialog)
        .chain(ruri)
        .filter_map(|t| sh.tokens.dialog_check(t, call_id, tags))
        .max()
}

/// What an in-dialog request may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InDialog {
    /// Go on.
    Allowed,
    /// Only for a sender who proves who it is (a digest for a local From).
    Challenge,
    /// Not our dialog: 404 (an ACK is dropped).
    Refused,
}

/// The rules for an in-dialog request whose next hop is `next_route` (the first Route
/// left after ours) or, without one, its Request-URI:
/// * a trusted peer, or a dialog an authenticated or trusted sender set up (its token
///   says so), may go anywhere;
/// * without our dialog token it is refused (it never went through our Record-Route);
/// * otherwise (a dialog an unauthenticated caller set up, or a dispatcher's token, which
///   cannot know) it may go to the dialog's parties only: through a dispatcher's signed
///   flow token (the dispatcher delivers only to the address the token names), or to the
///   Request-URI when that is a registered contact of the local user the To names (the
///   caller reaching the callee). Anything else, the sender must authenticate: this is
///   what stops a caller from reusing its own dialog to reach any address.
pub(crate) async fn in_dialog_verdict(
    sh: &Shared,
    msg: &SipMessage,
    own_routes: &[NameAddr<'_>],
    o: &Origin<'_>,
    next_route: Option<&SipUri<'_>>,
) -> InDialog {
    if o.trusted {
        return InDialog::Allowed;
    }
    match dialog_token_check(sh, msg, own_routes, o) {
        None => return InDialog::Refused,
        Some(true) => return InDialog::Allowed,
        Some(false) => {}
    }
    if let Some(next) = next_route {
        let party = next
            .user
            .filter(|u| u.starts_with(dispatch_core::token::PREFIX))
            .and_then(|u| dispatch_core::FlowToken::decode(&sh.tokens, u))
            .is_some();
        return if party {
            InDialog::Allowed
        } else {
            InDialog::Challenge
        };
    }
    if ruri_is_a_contact_of_to(sh, msg).await {
        InDialog::Allowed
    } else {
        InDialog::Challenge
    }
}

/// Is the Request-URI a registered contact of the local user the To header names, or the
/// address that user registered from?
async fn ruri_is_a_contact_of_to(sh: &Shared, msg: &SipMessage) -> bool {
    let (Ok(Uri::Sip(ruri)), Some(to)) = (
        msg.request_uri(),
        msg.to_header().ok().as_ref().and_then(sip_uri),
    ) else {
        return false;
    };
    let (Some(domain), Some(user)) = (sh.local.local_domain(&to), to.user) else {
        return false;
    };
    let Ok(aor) = Aor::parse(&format!("sip:{user}@{domain}")) else {
        return false;
    };
    let Ok(bindings) = sh.store.lookup(&aor, unix_now()).await else {
        return false;
    };
    // The callee's own address counts as well as its registered Contact: a client behind
    // a NAT, or reached over its connection, answers with a Contact at the address it is
    // really seen from (what the registrar recorded as its source).
    let ruri_addr = ruri
        .host
        .ip()
        .map(|ip| std::net::SocketAddr::new(ip, ruri.port_or_default()));
    bindings.iter().any(|b| {
        let registered = match Uri::parse(b.contact.as_bytes()) {
            Ok(Uri::Sip(c)) => {
                c.host.same_as(&ruri.host) && c.port_or_default() == ruri.port_or_default()
            }
            _ => false,
        };
        registered || (ruri_addr.is_some() && b.source.as_ref().map(|s| s.remote) == ruri_addr)
    })
}

/// Can this edge send there? TLS and WebSocket come later: never downgrade a `sips:` or
/// `transport=tls` target to plain UDP/TCP (RFC 3261 §26.2.2, RFC 5630).
fn sendable(t: &Target) -> bool {
    matches!(t.transport, Transport::Udp | Transport::Tcp)
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
            let Some(realm) = from_domain.as_deref().filter(|_| challengeable) else {
                return respond(txn, msg, 403);
            };
            match authenticate(
                sh,
                txn,
                msg,
                source,
                sender,
                ChallengeKind::Proxy,
                realm,
                msg.from_user(),
                now,
            )
            .await
            {
                Ok(user) => sender.user = Some(format!("<sip:{user}@{realm}>")),
                Err(d) => return d,
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

/// What an in-dialog request's admission looks at besides the request itself.
struct InDialogGate<'a, 'm> {
    /// Our own Routes, popped.
    own_routes: &'a [NameAddr<'m>],
    /// The next Route, if any.
    next: Option<&'a SipUri<'m>>,
    /// The Request-URI is in our domain: it is looked up like any request for a local
    /// user, so a challenge is not needed to go on.
    local_target: bool,
    /// The From's domain when it is ours (a local user can be challenged).
    from_domain: Option<&'a str>,
    /// Whether this method can be challenged at all.
    challengeable: bool,
}

/// An in-dialog request goes on per [`in_dialog_verdict`]: allowed, refused (404), or
/// only for a sender who proves who it is ([`prove`]).
async fn admit_in_dialog(
    sh: &Shared,
    txn: ServerTxnId,
    msg: &SipMessage,
    source: Target,
    sender: &mut Sender<'_>,
    gate: InDialogGate<'_, '_>,
    now: u64,
) -> Result<(), Decision> {
    match in_dialog_verdict(sh, msg, gate.own_routes, &sender.origin, gate.next).await {
        InDialog::Allowed => Ok(()),
        InDialog::Refused => Err(refuse_in_dialog(txn, msg)),
        InDialog::Challenge if gate.local_target => Ok(()),
        InDialog::Challenge => {
            let (from_domain, challengeable) = (gate.from_domain, gate.challengeable);
            prove(
                sh,
                txn,
                msg,
                source,
                sender,
                from_domain,
                challengeable,
                now,
                404,
            )
            .await
        }
    }
}

/// A request that may only leave for a sender who proves who it is: a local From is
/// challenged (phones answer a 407 to a BYE or re-INVITE as to an INVITE); anyone else
/// gets `refusal` (404 in a dialog, 403 otherwise).
#[allow(clippy::too_many_arguments)] // each is one fact of the request being checked
async fn prove(
    sh: &Shared,
    txn: ServerTxnId,
    msg: &SipMessage,
    source: Target,
    sender: &mut Sender<'_>,
    from_domain: Option<&str>,
    challengeable: bool,
    now: u64,
    refusal: u16,
) -> Result<(), Decision> {
    if sender.user.is_some() {
        return Ok(());
    }
    let Some(realm) = from_domain.filter(|_| challengeable) else {
        return Err(respond(txn, msg, refusal));
    };
    let user = authenticate(
        sh,
        txn,
        msg,
        source,
        sender,
        ChallengeKind::Proxy,
        realm,
        msg.from_user(),
        now,
    )
    .await?;
    sender.user = Some(format!("<sip:{user}@{realm}>"));
    Ok(())
}

/// An in-dialog request for a dialog that did not go through our Record-Route (or whose
/// token is forged): "not here", as Kamailio's default configuration answers.
fn refuse_in_dialog(txn: ServerTxnId, msg: &SipMessage) -> Decision {
    respond(txn, msg, 404)
}

/// The answer to an OPTIONS for the proxy itself (a keepalive, a health check). Also
/// sent statelessly by the core ([`options_for_me`]), without a transaction.
pub(crate) fn options_response(sh: &Shared, msg: &SipMessage) -> Option<(u16, Bytes)> {
    if sh.draining.load(std::sync::atomic::Ordering::Relaxed) {
        let b = ResponseBuilder::new(msg, 503)?.header("Retry-After", b"5".to_vec());
        return Some((503, b.build()));
    }
    let b = ResponseBuilder::new(msg, 200)?
        .header("Allow", ALLOW.as_bytes().to_vec())
        .header("Accept", b"application/sdp".to_vec());
    Some((200, b.build()))
}

fn options_reply(sh: &Shared, txn: ServerTxnId, msg: &SipMessage) -> Decision {
    match options_response(sh, msg) {
        Some((code, bytes)) => Decision::Respond {
            txn,
            code,
            bytes,
            logged: false,
        },
        None => respond(txn, msg, 500),
    }
}

/// An OPTIONS for the proxy itself, outside any dialog and with no Route: what the core
/// answers statelessly, as Kamailio's `sl` does, so keepalives hold no 32 s transaction.
pub fn options_for_me(sh: &Shared, msg: &SipMessage) -> bool {
    msg.method() == Some(Method::Options)
        && msg.to_tag().ok().flatten().is_none()
        && msg.routes().next().is_none()
        && matches!(msg.request_uri(), Ok(Uri::Sip(u))
            if u.user.is_none() && !u.secure && sh.local.is_me(&u) && sh.local.local_domain(&u).is_some())
}

const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, INFO, UPDATE, PRACK, SUBSCRIBE, NOTIFY, REFER, MESSAGE";

/// Bindings to q-ordered groups of hops (§16.6: sequential by q, parallel within a q),
/// and how many bindings were left out because only TLS or WebSocket reaches them.
async fn hops_from_bindings(sh: &Shared, bindings: &[Binding]) -> (Vec<Vec<Hop>>, usize) {
    let mut groups: Vec<(u16, Vec<Hop>)> = Vec::new();
    let mut unsendable = 0;
    for b in bindings {
        let Some(hop) = hop_for(sh, b).await else {
            continue;
        };
        // A contact asking for TLS (or WebSocket) is not reached in the clear, not even
        // through the NAT binding its REGISTER came from.
        let contact_transport = match Uri::parse(b.contact.as_bytes()) {
            Ok(Uri::Sip(u)) if u.secure => Some(Transport::Tls),
            Ok(Uri::Sip(u)) => u.transport().and_then(Transport::from_token),
            _ => None,
        };
        if !sendable(&hop.target)
            || contact_transport.is_some_and(|t| !matches!(t, Transport::Udp | Transport::Tcp))
        {
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
async fn hop_for(sh: &Shared, b: &Binding) -> Option<Hop> {
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
        resolve(&sip_uri(&na)?).await?
    } else if let Some(edge_uri) = foreign_flow {
        // The UA is connected to another edge: only that edge's connection reaches it
        // (a NAT or firewall admits nothing else), so the request goes there with the
        // flow token as its top Route.
        let Ok(Uri::Sip(u)) = Uri::parse(edge_uri.as_bytes()) else {
            return None;
        };
        let target = resolve(&u).await?;
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
            .filter(|f| sh.transports.flow_alive(*f));
        if flow.is_some() || transport == Transport::Udp || !contact_reachable(&c, src.remote) {
            Target {
                transport,
                addr: src.remote,
                flow,
            }
        } else {
            // The connection is gone but the contact is a listening address we can reach
            // (a TCP client that is not behind a NAT): open a new connection to it.
            resolve(&c).await?
        }
    } else {
        resolve(&c).await?
    };
    Some(Hop {
        request_uri: Some(b.contact.clone()),
        routes: b.path.clone(),
        target,
    })
}

/// Can a new connection reach this contact? Not when it names a private address other
/// than the one the REGISTER came from (the UA is behind a NAT).
fn contact_reachable(c: &SipUri<'_>, remote: std::net::SocketAddr) -> bool {
    match c.host.ip() {
        Some(ip) => ip == remote.ip() || !is_private(ip),
        None => true,
    }
}

/// Is the sender of this REGISTER behind a NAT? The tests Kamailio's `nat_uac_test`
/// uses: the top Via's sent-by differs from the packet's source address or port, or a
/// Contact names a private address other than the source.
pub fn is_natted(msg: &SipMessage, source: Target) -> bool {
    if let Ok(v) = msg.top_via()
        && (v.sent_by.host.ip() != Some(source.addr.ip())
            || v.sent_by.port.unwrap_or(5060) != source.addr.port())
    {
        return true;
    }
    msg.contacts().flatten().any(|c| match c {
        sip_core::Contact::Addr(a) => match a.addr.parsed_uri() {
            Ok(Uri::Sip(u)) => u
                .host
                .ip()
                .is_some_and(|ip| is_private(ip) && ip != source.addr.ip()),
            _ => false,
        },
        sip_core::Contact::Star => false,
    })
}

/// RFC 1918, RFC 6598 (carrier-grade NAT), link-local and IPv6 unique-local addresses.
pub(crate) fn is_private(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(a) => {
            let o = a.octets();
            a.is_private() || a.is_link_local() || (o[0] == 100 && (64..128).contains(&o[1]))
        }
        std::net::IpAddr::V6(a) => {
            (a.segments()[0] & 0xfe00) == 0xfc00 || (a.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

/// Digest authentication (§22): `Ok(username)` when verified, else the response to send
/// (challenge, 403, or 503 when the subscriber store is down).
#[allow(clippy::too_many_arguments)] // each is one fact of the request being checked
async fn authenticate(
    sh: &Shared,
    txn: ServerTxnId,
    msg: &SipMessage,
    source: Target,
    sender: &Sender<'_>,
    kind: ChallengeKind,
    realm: &str,
    expected_user: Option<&str>,
    now: u64,
) -> Result<String, Decision> {
    let challenge = |stale: bool| {
        let nonce = sh.nonces.issue(realm, now);
        let name = kind.challenge_header();
        let headers: Vec<(&str, String)> = sh
            .cfg
            .auth_algorithms()
            .into_iter()
            .map(|algorithm| {
                (
                    name,
                    Challenge {
                        realm,
                        nonce: &nonce,
                        algorithm,
                        stale,
                        opaque: None,
                    }
                    .header_value(),
                )
            })
            .collect();
        respond_with(txn, msg, kind.status(), &headers)
    };
    // Counted by reason and logged (rate-limited) with who claimed what, from where;
    // counted towards the source's ban and the user's lock.
    let clock = std::time::Instant::now();
    // Only a guess that could have succeeded counts towards a ban: a wrong password for a
    // known user (source and user), a login for an unknown one (source: enumeration).
    // Not a stale or replayed nonce, a malformed header or a locked user: those cost an
    // attacker nothing to send in someone else's name, and phones behind one NAT that
    // merely repeat a nonce must not get their office banned.
    let fail = |reason: &'static str, claimed: &str, code: u16, counts: Counts| {
        sh.metrics
            .auth_failures
            .get_or_create(&ReasonLabel { reason })
            .inc();
        sh.audit
            .auth_failed(msg, source, claimed, realm, reason, code);
        if !sender.origin.trusted && counts != Counts::Nothing {
            let who = if counts == Counts::SourceAndUser {
                format!("{claimed}@{realm}")
            } else {
                String::new()
            };
            for l in sh.guard.auth_failed(sender.origin.addr.ip(), &who, clock) {
                sh.metrics
                    .lockouts
                    .get_or_create(&ReasonLabel {
                        reason: match l {
                            crate::guard::Lockout::Source(..) => "source",
                            crate::guard::Lockout::User(..) => "user",
                        },
                    })
                    .inc();
                sh.audit.lockout(&l);
            }
        }
    };
    let Some(auth) = find_credentials(msg, kind, realm) else {
        return Err(challenge(false));
    };
    let digest = match DigestResponse::parse(&auth) {
        Ok(d) => d,
        Err(r) => {
            fail(r.label(), "", kind.status(), Counts::Nothing);
            return Err(challenge(false));
        }
    };
    // A forged or foreign nonce is refused before any store lookup.
    if digest.check_nonce(&sh.nonces, realm, now) == NonceCheck::Invalid {
        fail(
            "bad_nonce",
            digest.username(),
            kind.status(),
            Counts::Nothing,
        );
        return Err(challenge(false));
    }
    let username = digest.username().to_owned();
    // A locked user's guesses are not even checked: the answer is the same challenge.
    if sh.guard.user_locked(&format!("{username}@{realm}"), clock) {
        fail("locked", &username, kind.status(), Counts::Nothing);
        return Err(challenge(false));
    }
    let creds = match sh.users.credentials(&username, realm).await {
        Ok(Some(c)) => c,
        // The same challenge as for a wrong password: which users exist stays unknown.
        Ok(None) => {
            fail("unknown_user", &username, kind.status(), Counts::Source);
            return Err(challenge(false));
        }
        Err(_) => return Err(unavailable(sh, txn, msg)),
    };
    let method = msg.method().map(|m| m.as_str()).unwrap_or_default();
    let ruri = msg.request_uri_raw().unwrap_or_default();
    match digest.verify(method, ruri, realm, &creds, &sh.nonces, now) {
        Outcome::Verified { .. } => {}
        Outcome::Stale => return Err(challenge(true)),
        Outcome::Failed(r) => {
            fail(r.label(), &username, kind.status(), Counts::SourceAndUser);
            return Err(challenge(false));
        }
    }
    // Each (nonce, nc) is good once, on every edge: a captured Authorization sent again
    // (from anywhere, with any Call-ID or Contact) gets a fresh challenge.
    match sh
        .nonce_uses
        .first_use(
            digest.nonce(),
            digest.nc().unwrap_or(""),
            sh.nonces.lifetime(),
        )
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            fail("replay", &username, kind.status(), Counts::Nothing);
            return Err(challenge(true));
        }
        Err(_) => return Err(unavailable(sh, txn, msg)),
    }
    // The authenticated user may only act as itself (register its own AOR, call as itself).
    if expected_user.is_some_and(|u| u != username) {
        fail("identity_mismatch", &username, 403, Counts::Source);
        return Err(refuse_login(txn, msg));
    }
    sh.guard.auth_succeeded(&format!("{username}@{realm}"));
    Ok(username)
}

/// What a failed login counts towards (see `authenticate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Counts {
    Nothing,
    Source,
    SourceAndUser,
}

/// The registrar (§10.3): authenticate, apply through the store, answer with the bindings.
async fn register(
    sh: &Shared,
    txn: ServerTxnId,
    msg: &SipMessage,
    source: Target,
    sender: &Sender<'_>,
    domain: &str,
    now: u64,
) -> Decision {
    let to_user = msg.to_user();
    if sh.cfg.auth.register
        && let Err(d) = authenticate(
            sh,
            txn,
            msg,
            source,
            sender,
            ChallengeKind::Www,
            domain,
            to_user,
            now,
        )
        .await
    {
        return d;
    }
    // Requests to this contact go where the REGISTER came from when the UA is behind a
    // NAT, or over its own connection on a connection-oriented transport; otherwise the
    // contact itself is used (which also allows registering a contact on another port).
    let src = (source.transport != Transport::Udp || is_natted(msg, source)).then(|| Source {
        transport: source.transport.as_str().to_owned(),
        remote: source.addr,
        flow_token: source.flow.map(|f| f.0.to_string()),
        edge_id: Some(sh.instance.clone()),
        // Other edges reach a connection-borne contact through this edge.
        edge_uri: source.flow.map(|f| {
            sh.local
                .flow_uri(&flow_token::encode(&sh.nonces, &sh.instance, f))
        }),
    });
    let mut req = match RegisterRequest::from_message(msg, now, src) {
        Ok(r) => r,
        Err(e) => return respond_with(txn, msg, e.status(), &min_expires(e.min_expires())),
    };
    // A REGISTER for one of the edge's own addresses registers in the default domain.
    if let Ok(Uri::Sip(u)) = msg.to_header().and_then(|t| t.parsed_uri())
        && sh.local.is_my_host(&u.host)
        && let Some(user) = u.user
        && let Ok(a) = Aor::parse(&format!("sip:{user}@{domain}"))
    {
        req.aor = a;
    }
    match sh.store.register(req, now).await {
        Ok(outcome) => {
            let mut headers = Vec::new();
            if let Some(c) = outcome.contact_header() {
                headers.push(("Contact", c));
            }
            // RFC 3327 §5.3: the registrar returns the Path it stored.
            if msg.supports("path") {
                for p in msg.headers_of(sip_core::HeaderName::Path) {
                    headers.push(("Path", String::from_utf8_lossy(p.value).into_owned()));
                }
            }
            // (The registrations gauge is refreshed by a periodic count, not here: counting
            // is O(bindings) and would make every REGISTER pay for the whole store.)
            respond_with(txn, msg, 200, &headers)
        }
        Err(StoreError::Unavailable(_)) => unavailable(sh, txn, msg),
        Err(StoreError::Rule(e)) => {
            respond_with(txn, msg, e.status(), &min_expires(e.min_expires()))
        }
        Err(_) => unavailable(sh, txn, msg),
    }
}

fn min_expires(m: Option<u32>) -> Vec<(&'static str, String)> {
    m.map(|m| vec![("Min-Expires", m.to_string())])
        .unwrap_or_default()
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

    fn register(via: &str, contact: &str) -> SipMessage {
        let text = format!(
            "REGISTER sip:example.com SIP/2.0\r\nVia: {via}\r\nFrom: <sip:a@example.com>;tag=1\r\n\
             To: <sip:a@example.com>\r\nCall-ID: c\r\nCSeq: 1 REGISTER\r\nContact: {contact}\r\nContent-Length: 0\r\n\r\n"
        );
        SipMessage::parse(text.into_bytes()).expect("parses")
    }

    fn from(addr: &str) -> Target {
        Target {
            transport: Transport::Udp,
            addr: addr.parse().expect("address"),
            flow: None,
        }
    }

    #[test]
    fn nat_detection() {
        let direct = register(
            "SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK1",
            "<sip:a@198.51.100.7:5060>",
        );
        assert!(!is_natted(&direct, from("198.51.100.7:5060")));
        // Source port rewritten by a NAT.
        assert!(is_natted(&direct, from("198.51.100.7:33333")));
        // Via and Contact both private, packet from a public address.
        let behind = register(
            "SIP/2.0/UDP 192.168.1.20:5060;branch=z9hG4bK1",
            "<sip:a@192.168.1.20:5060>",
        );
        assert!(is_natted(&behind, from("203.0.113.9:5060")));
        // A Via that matches (a NAT-aware phone using STUN) but a private Contact.
        let stun = register(
            "SIP/2.0/UDP 203.0.113.9:5060;branch=z9hG4bK1",
            "<sip:a@10.0.0.3:5060>",
        );
        assert!(is_natted(&stun, from("203.0.113.9:5060")));
        // A private Contact that *is* the source (same LAN as the edge) is not NAT.
        let lan = register(
            "SIP/2.0/UDP 10.0.0.3:5060;branch=z9hG4bK1",
            "<sip:a@10.0.0.3:5060>",
        );
        assert!(!is_natted(&lan, from("10.0.0.3:5060")));
    }

    #[test]
    fn private_ranges_and_reachability() {
        for ip in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.0.1",
            "100.64.0.1",
            "169.254.1.1",
            "fd00::1",
            "fe80::1",
        ] {
            assert!(is_private(ip.parse().expect("ip")), "{ip}");
        }
        for ip in ["8.8.8.8", "100.128.0.1", "2001:db8::1", "127.0.0.1"] {
            assert!(!is_private(ip.parse().expect("ip")), "{ip}");
        }
        let uri = |s: &'static str| match Uri::parse(s.as_bytes()) {
            Ok(Uri::Sip(u)) => u,
            _ => panic!("{s}"),
        };
        let remote: SocketAddr = "203.0.113.9:40000".parse().expect("address");
        assert!(!contact_reachable(&uri("sip:a@10.0.0.3:5060"), remote));
        assert!(contact_reachable(&uri("sip:a@203.0.113.9:5060"), remote));
        assert!(contact_reachable(&uri("sip:a@198.51.100.1"), remote));
        assert!(contact_reachable(&uri("sip:a@phone.example.com"), remote));
    }
}
