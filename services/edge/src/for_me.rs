//! Requests for the proxy itself (§8.2.1 as a UAS): OPTIONS, answered statelessly when
//! they come outside a transaction.

use bytes::Bytes;
use sip_core::{Method, ResponseBuilder, SipMessage, Uri};
use sip_txn::ServerTxnId;

use crate::decision::{Decision, respond};
use crate::shared::Shared;

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

pub(crate) fn options_reply(sh: &Shared, txn: ServerTxnId, msg: &SipMessage) -> Decision {
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

pub(crate) const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, INFO, UPDATE, PRACK, SUBSCRIBE, NOTIFY, REFER, MESSAGE";

/// A request addressed to the proxy itself (§8.2.1 as a UAS): it answers OPTIONS (and
/// REGISTER, in its own stage) only.
pub(crate) fn answer(sh: &Shared, r: &crate::route::Routing<'_>) -> Decision {
    match r.method {
        Method::Options => options_reply(sh, r.txn, r.msg),
        Method::Other(_) => r.respond(501),
        _ => crate::decision::respond_with(
            r.txn,
            r.msg,
            405,
            &[("Allow", "OPTIONS, REGISTER".into())],
        ),
    }
}
