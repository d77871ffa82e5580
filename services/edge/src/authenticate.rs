//! Authenticate: digest (RFC 3261 §22, RFC 7616, RFC 8760), with replay protection
//! across edges, brute-force limits and the same challenge for known and unknown users.

use sip_auth::{
    Challenge, ChallengeKind, DigestResponse, FailReason, NonceCheck, NonceUses, Outcome,
    SubscriberStore, find_credentials,
};
use sip_core::SipMessage;
use sip_txn::{ServerTxnId, Target};

use crate::decision::{Decision, refuse_login, respond_with, unavailable};
use crate::metrics::ReasonLabel;
use crate::origin::Sender;
use crate::shared::Shared;

/// The `reason`s of `sip_auth_failures` besides a digest's own ([`FailReason::LABELS`]):
/// a user locked for failed logins, an unknown user, a replayed nonce count, a user
/// acting as another.
pub const AUTH_FAILURES: [&str; 4] = ["locked", "unknown_user", "replay", "identity_mismatch"];

/// What a failed login counts towards (see `authenticate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Counts {
    Nothing,
    Source,
    SourceAndUser,
}

/// Digest authentication (§22): `Ok(username)` when verified, else the response to send
/// (challenge, 403, or 503 when the subscriber store is down).
#[allow(clippy::too_many_arguments)] // each is one fact of the request being checked
pub(crate) async fn authenticate(
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
    let [locked, unknown_user, replay, identity_mismatch] = AUTH_FAILURES;
    let fail = |reason: &'static str, claimed: &str, code: u16, counts: Counts| {
        debug_assert!(
            FailReason::LABELS.contains(&reason) || AUTH_FAILURES.contains(&reason),
            "{reason} not listed"
        );
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
            crate::bans::count_failure(sh, sender.origin.addr.ip(), &who);
            for l in sh.guard.auth_failed(sender.origin.addr.ip(), &who, clock) {
                sh.metrics
                    .lockouts
                    .get_or_create(&ReasonLabel { reason: l.label() })
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
            FailReason::BadNonce.label(),
            digest.username(),
            kind.status(),
            Counts::Nothing,
        );
        return Err(challenge(false));
    }
    let username = digest.username().to_owned();
    // A locked user's guesses are not even checked: the answer is the same challenge.
    if sh.guard.user_locked(&format!("{username}@{realm}"), clock) {
        fail(locked, &username, kind.status(), Counts::Nothing);
        return Err(challenge(false));
    }
    let creds = match sh.users.credentials(&username, realm).await {
        Ok(Some(c)) => c,
        // The same challenge as for a wrong password: which users exist stays unknown.
        Ok(None) => {
            fail(unknown_user, &username, kind.status(), Counts::Source);
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
            fail(replay, &username, kind.status(), Counts::Nothing);
            return Err(challenge(true));
        }
        Err(_) => return Err(unavailable(sh, txn, msg)),
    }
    // The authenticated user may only act as itself (register its own AOR, call as itself).
    if expected_user.is_some_and(|u| u != username) {
        fail(identity_mismatch, &username, 403, Counts::Source);
        return Err(refuse_login(txn, msg));
    }
    sh.guard.auth_succeeded(&format!("{username}@{realm}"));
    Ok(username)
}

/// With `auth.invite`, a local user's new request is challenged (proxy digest) before
/// anything else is decided for it; a trusted peer is not.
pub(crate) async fn authenticate_caller(
    sh: &Shared,
    r: &crate::route::Routing<'_>,
    sender: &mut Sender<'_>,
) -> Result<(), Decision> {
    let needs_auth = sh.cfg.auth.invite
        && r.initial
        && r.from_domain.is_some()
        && r.challengeable
        && !sender.origin.trusted;
    if !needs_auth {
        return Ok(());
    }
    let realm = r.from_domain.clone().unwrap_or_default();
    let user = authenticate(
        sh,
        r.txn,
        r.msg,
        r.source,
        sender,
        ChallengeKind::Proxy,
        &realm,
        r.msg.from_user(),
        r.now,
    )
    .await?;
    sender.user = Some(format!("<sip:{user}@{realm}>"));
    Ok(())
}
