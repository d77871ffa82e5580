//! In-dialog requests: forwarded only through our own Record-Route, proved by the signed
//! dialog token it carries, or to a party of the dialog.

use sip_auth::ChallengeKind;
use sip_core::{NameAddr, SipMessage, SipUri, Uri};
use sip_registrar::{Aor, unix_now};
use sip_txn::ServerTxnId;

use crate::authenticate::authenticate;
use crate::decision::{Decision, respond};
use crate::origin::{Origin, Sender};
use crate::route::{Routing, sip_uri};
use crate::shared::Shared;

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
pub(crate) async fn ruri_is_a_contact_of_to(sh: &Shared, msg: &SipMessage) -> bool {
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

/// An in-dialog request goes on per [`in_dialog_verdict`]: allowed, refused (404), or
/// only for a sender who proves who it is ([`prove`]). `next`: the Route after ours, if
/// any; `local_target`: the Request-URI is in one of our domains (it is looked up like
/// any request for a local user, so a challenge is not needed to go on).
pub(crate) async fn admit_in_dialog(
    sh: &Shared,
    r: &Routing<'_>,
    sender: &mut Sender<'_>,
    next: Option<&SipUri<'_>>,
    local_target: bool,
) -> Result<(), Decision> {
    match in_dialog_verdict(sh, r.msg, r.own_routes(), &sender.origin, next).await {
        InDialog::Allowed => Ok(()),
        InDialog::Refused => Err(refuse_in_dialog(r.txn, r.msg)),
        InDialog::Challenge if local_target => Ok(()),
        InDialog::Challenge => prove(sh, r, sender, 404).await,
    }
}

/// A request that may only leave for a sender who proves who it is: a local From is
/// challenged (phones answer a 407 to a BYE or re-INVITE as to an INVITE); anyone else
/// gets `refusal` (404 in a dialog, 403 otherwise).
pub(crate) async fn prove(
    sh: &Shared,
    r: &Routing<'_>,
    sender: &mut Sender<'_>,
    refusal: u16,
) -> Result<(), Decision> {
    if sender.user.is_some() {
        return Ok(());
    }
    let Some(realm) = r.from_domain.as_deref().filter(|_| r.challengeable) else {
        return Err(r.respond(refusal));
    };
    let (txn, msg, source) = (r.txn, r.msg, r.source);
    let kind = ChallengeKind::Proxy;
    let user = authenticate(
        sh,
        txn,
        msg,
        source,
        sender,
        kind,
        realm,
        msg.from_user(),
        r.now,
    )
    .await?;
    sender.user = Some(format!("<sip:{user}@{realm}>"));
    Ok(())
}

/// An in-dialog request for a dialog that did not go through our Record-Route (or whose
/// token is forged): "not here", as Kamailio's default configuration answers.
pub(crate) fn refuse_in_dialog(txn: ServerTxnId, msg: &SipMessage) -> Decision {
    respond(txn, msg, 404)
}
