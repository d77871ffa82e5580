//! Route: loops (§16.3 step 4), next-hop resolution (RFC 3263 without NAPTR/SRV,
//! bounded in time) and the branch of a forwarded copy.

use std::net::SocketAddr;

use sip_core::{NameAddr, SipMessage, SipUri, Uri};
use sip_txn::{Target, Transport};

use crate::local::Local;

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
