//! What a stage returns: answer the request, or forward it by a [`Plan`].

use bytes::Bytes;
use sip_core::{ResponseBuilder, SipMessage};
use sip_txn::{ServerTxnId, Target};

use crate::shared::Shared;

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
    /// End the call's media sessions when forwarding (a BYE).
    pub end_media: bool,
    /// What to do with the identity headers (RFC 3325).
    pub identity: IdentityHeaders,
    /// The destination set (trunk) serving the call, for its CDR.
    pub destination: Option<String>,
    /// The call holds call-limit slots ([`crate::limit`]): given back at its failure,
    /// extended at its answer.
    pub limited: bool,
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
    /// The user whose digest verified (`<sip:user@realm>`), for the CDR.
    pub user: Option<String>,
}

impl Plan {
    /// Forward to one next hop, Request-URI unchanged.
    pub(crate) fn one_hop(
        pop_routes: usize,
        strict_fix: bool,
        record_route: bool,
        target: Target,
    ) -> Plan {
        Plan {
            pop_routes,
            strict_fix,
            record_route,
            body: None,
            anchor: None,
            end_media: false,
            identity: IdentityHeaders::default(),
            destination: None,
            limited: false,
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

pub(crate) fn respond(txn: ServerTxnId, msg: &SipMessage, code: u16) -> Decision {
    respond_with(txn, msg, code, &[])
}

pub(crate) fn respond_with(
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
pub(crate) fn refuse_login(txn: ServerTxnId, msg: &SipMessage) -> Decision {
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
