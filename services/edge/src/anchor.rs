//! Anchor: a request about to be forwarded gets its media anchored at a relay (an offer
//! gets the relay's address and ports in its SDP, a BYE ends the session), as the
//! configured policy says.

use sip_core::SipMessage;

use crate::media::{MediaFailure, has_sdp, media_of, private_media, rewrite};

/// Whether the request's sender is behind a NAT: its source is not its Via, a Via on
/// the way was rewritten (`received`), or its SDP names a private address.
fn offerer_natted(msg: &SipMessage, source: sip_txn::Target) -> bool {
    crate::nat::is_natted(msg, source)
        || msg.via().flatten().any(|v| {
            v.received_ip()
                .is_some_and(|r| Some(r) != v.sent_by.host.ip())
        })
        || private_media(msg.body())
}

/// Anchor a request about to be forwarded: an offer (new call, re-INVITE, UPDATE) gets
/// the relay's address and ports in its SDP (`plan.body`), a BYE ends the session. A
/// new call no relay can take gets 503 (or passes untouched, by configuration).
pub async fn anchor_request(
    sh: &crate::shared::Shared,
    msg: &SipMessage,
    source: sip_txn::Target,
    d: crate::decision::Decision,
) -> crate::decision::Decision {
    use crate::decision::Decision;
    let Some(relays) = &sh.relays else {
        return d;
    };
    let Decision::Forward { txn, mut plan } = d else {
        return d;
    };
    let forward = |plan| Decision::Forward { txn, plan };
    let (Ok(call_id), Ok(Some(from_tag))) = (msg.call_id(), msg.from_tag()) else {
        return forward(plan);
    };
    let to_tag = msg.to_tag().ok().flatten();
    match msg.method() {
        Some(sip_core::Method::Bye) => {
            // The core asks every relay to end the session as it forwards the BYE.
            plan.end_media = true;
            return forward(plan);
        }
        Some(sip_core::Method::Invite | sip_core::Method::Update) => {}
        _ => return forward(plan),
    }
    let failed = |e: MediaFailure, plan| {
        tracing::warn!(call_id, error = %e, "media anchoring failed");
        sh.metrics.media_failures.inc();
        match sh.cfg.media.on_failure {
            crate::config::OnRelayFailure::Reject => crate::decision::retry_later(txn, msg),
            crate::config::OnRelayFailure::Pass => forward(plan),
        }
    };
    let Some(to_tag) = to_tag else {
        let host = match msg.request_uri() {
            Ok(sip_core::Uri::Sip(u)) => u.host.to_string(),
            _ => String::new(),
        };
        let anchored = match sh.cfg.media.policy_for(&host) {
            crate::config::Anchor::Always => true,
            crate::config::Anchor::Nat => offerer_natted(msg, source),
            crate::config::Anchor::Never => false,
        };
        if !anchored {
            return forward(plan);
        }
        if !has_sdp(msg) {
            // A late offer: the 2xx will carry it; the relay is chosen now.
            return match relays.candidates().first() {
                Some(&i) => {
                    plan.anchor = Some(i);
                    forward(plan)
                }
                None => failed(MediaFailure::NoRelay, plan),
            };
        }
        let Some(media) = media_of(msg.body()) else {
            return forward(plan);
        };
        return match relays.offer(call_id, from_tag, "", media).await {
            Ok((i, reply)) => {
                plan.body = rewrite(msg.body(), &reply);
                plan.anchor = Some(i);
                sh.metrics.media_anchored.inc();
                forward(plan)
            }
            Err(e) => failed(e, plan),
        };
    };
    let Some(media) = has_sdp(msg).then(|| media_of(msg.body())).flatten() else {
        return forward(plan);
    };
    match relays
        .update(None, call_id, from_tag, to_tag, media, false)
        .await
    {
        Ok(Some((i, reply))) => {
            plan.body = rewrite(msg.body(), &reply);
            plan.anchor = Some(i);
            forward(plan)
        }
        // Not anchored when it started: it stays so.
        Ok(None) => forward(plan),
        Err(e) => failed(e, plan),
    }
}
