//! Register: the registrar (§10.3) through the location store.

use dispatch_core::token::edge as flow_token;
use sip_auth::ChallengeKind;
use sip_core::{SipMessage, Uri};
use sip_registrar::{Aor, RegisterRequest, Source, StoreError};
use sip_txn::{ServerTxnId, Target, Transport};

use crate::authenticate::authenticate;
use crate::decision::{Decision, respond_with, unavailable};
use crate::nat::is_natted;
use crate::origin::Sender;
use crate::shared::Shared;

/// The registrar (§10.3): authenticate, apply through the store, answer with the bindings.
pub(crate) async fn register(
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

pub(crate) fn min_expires(m: Option<u32>) -> Vec<(&'static str, String)> {
    m.map(|m| vec![("Min-Expires", m.to_string())])
        .unwrap_or_default()
}
