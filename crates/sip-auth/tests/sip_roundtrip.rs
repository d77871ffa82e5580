//! Whole SIP exchanges through sip-core: challenge, answer, parse, verify, and every way a
//! tampered answer must fail.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use sip_auth::{
    Algorithm, Challenge, ChallengeKind, ClientAuthorization, Credentials, DigestResponse,
    FailReason, MemoryStore, NonceCheck, NonceKey, Outcome, QopAuth, SubscriberStore,
    challenge_values, find_credentials, verify,
};
use sip_core::{Method, RequestBuilder, ResponseBuilder, SipMessage};
use std::borrow::Cow;
use std::future::Future;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

const REALM: &str = "example.com";
const RURI: &str = "sip:example.com";
const SECRET: &[u8] = b"cluster-wide nonce secret, 32 b!";
const NOW: u64 = 1_700_000_000;
const LIFETIME: u64 = 300;

/// The in-memory store answers at once, so one poll suffices; no runtime needed.
fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

fn key() -> NonceKey {
    NonceKey::new(SECRET, Duration::from_secs(LIFETIME)).unwrap()
}

fn store() -> MemoryStore {
    let mut s = MemoryStore::new();
    s.insert_password("alice", REALM, "alice-secret");
    s.insert_password("bob", REALM, "bob-secret");
    s
}

fn register(ruri: &str, header: &str, authorization: &str) -> SipMessage {
    let bytes = RequestBuilder::new(Method::Register, ruri.as_bytes().to_vec())
        .header(
            "Via",
            &b"SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKreg1"[..],
        )
        .header("Max-Forwards", &b"70"[..])
        .header("From", &b"<sip:alice@example.com>;tag=a1"[..])
        .header("To", &b"<sip:alice@example.com>"[..])
        .header("Call-ID", &b"reg-1@192.0.2.10"[..])
        .header("CSeq", &b"2 REGISTER"[..])
        .header("Contact", &b"<sip:alice@192.0.2.10:5060>"[..])
        .header(header.to_owned(), authorization.as_bytes().to_vec())
        .header("Expires", &b"3600"[..])
        .build();
    let msg = SipMessage::parse(bytes).unwrap();
    msg.validate_request().unwrap();
    msg
}

/// What the edge decided.
#[derive(Debug, PartialEq)]
enum Edge {
    /// No Digest answer for our realm: challenge.
    NoAnswerForRealm,
    /// The store does not know the user.
    UnknownUser,
    /// The verifier's verdict.
    Checked(Outcome<'static>),
}

impl PartialEq<Outcome<'static>> for Edge {
    fn eq(&self, other: &Outcome<'static>) -> bool {
        matches!(self, Edge::Checked(o) if o == other)
    }
}

/// What the edge does with a request: find our answer, look the user up, verify.
fn edge_verify(msg: &SipMessage, kind: ChallengeKind, now: u64) -> Edge {
    let Some(auth) = find_credentials(msg, kind, REALM) else {
        return Edge::NoAnswerForRealm;
    };
    lookup_and_verify(msg, &auth, now)
}

/// The same for the request's only Authorization header, whatever its realm, so that
/// checks behind the realm selection are reached too.
fn verify_sole_header(msg: &SipMessage, now: u64) -> Edge {
    let mut all = msg.authorizations();
    let auth = all.next().unwrap().unwrap();
    assert!(all.next().is_none());
    lookup_and_verify(msg, &auth, now)
}

fn lookup_and_verify(msg: &SipMessage, auth: &sip_core::Auth<'_>, now: u64) -> Edge {
    let d = match DigestResponse::parse(auth) {
        Ok(d) => d,
        Err(r) => return Edge::Checked(Outcome::Failed(r)),
    };
    let Some(creds) = block_on(store().credentials(d.username(), REALM)).unwrap() else {
        return Edge::UnknownUser;
    };
    let method = msg.method().unwrap().as_str();
    let out = d.verify(
        method,
        msg.request_uri_raw().unwrap(),
        REALM,
        &creds,
        &key(),
        now,
    );
    Edge::Checked(own(out))
}

fn own(o: Outcome<'_>) -> Outcome<'static> {
    match o {
        Outcome::Verified {
            username,
            algorithm,
        } => Outcome::Verified {
            username: Cow::Owned(username.into_owned()),
            algorithm,
        },
        Outcome::Stale => Outcome::Stale,
        Outcome::Failed(r) => Outcome::Failed(r),
    }
}

fn answer(alg: Algorithm, qop: bool, nonce: &str) -> String {
    let creds = Credentials::from_password("alice", REALM, "alice-secret");
    ClientAuthorization {
        algorithm: alg,
        username: "alice",
        realm: REALM,
        nonce,
        uri: RURI,
        method: "REGISTER",
        qop: qop.then_some(QopAuth {
            nc: 1,
            cnonce: "0a4f113b",
        }),
        opaque: None,
    }
    .header_value(&creds)
    .unwrap()
}

fn verified(alg: Algorithm) -> Outcome<'static> {
    Outcome::Verified {
        username: Cow::Borrowed("alice"),
        algorithm: alg,
    }
}

const COMBOS: [(Algorithm, bool); 4] = [
    (Algorithm::Sha256, true),
    (Algorithm::Sha256, false),
    (Algorithm::Md5, true),
    (Algorithm::Md5, false),
];

#[test]
fn register_round_trip_verifies() {
    let nonce = key().issue(REALM, NOW);
    for (alg, qop) in COMBOS {
        let msg = register(RURI, "Authorization", &answer(alg, qop, &nonce));
        assert_eq!(
            edge_verify(&msg, ChallengeKind::Www, NOW + 10),
            verified(alg),
            "{alg} qop={qop}"
        );
        // Compact check via the one-step API too.
        let auth = find_credentials(&msg, ChallengeKind::Www, REALM).unwrap();
        let creds = Credentials::from_password("alice", REALM, "alice-secret");
        assert_eq!(
            verify(
                &auth,
                "REGISTER",
                msg.request_uri_raw().unwrap(),
                REALM,
                &creds,
                &key(),
                NOW
            ),
            verified(alg)
        );
        // The registrar looks in Authorization, not Proxy-Authorization.
        assert_eq!(
            edge_verify(&msg, ChallengeKind::Proxy, NOW),
            Edge::NoAnswerForRealm
        );
    }
}

#[test]
fn tampered_answers_fail_with_the_right_reason() {
    let nonce = key().issue(REALM, NOW);
    let other_nonce = key().issue(REALM, NOW - 5);
    let mut broken_nonce = nonce.clone().into_bytes();
    broken_nonce[20] = if broken_nonce[20] == b'x' { b'y' } else { b'x' };
    let broken_nonce = String::from_utf8(broken_nonce).unwrap();

    for (alg, qop) in COMBOS {
        let good = answer(alg, qop, &nonce);
        let other_alg = match alg {
            Algorithm::Md5 => "SHA-256",
            Algorithm::Sha256 => "MD5",
        };
        let mut cases: Vec<(String, FailReason)> = vec![
            // bob exists, but the response was computed with alice's HA1.
            (
                good.replace("username=\"alice\"", "username=\"bob\""),
                FailReason::WrongResponse,
            ),
            (
                good.replace("realm=\"example.com\"", "realm=\"evil.com\""),
                FailReason::RealmMismatch,
            ),
            (good.replace(&nonce, &broken_nonce), FailReason::BadNonce),
            // Authentic nonce, but not the one the response was computed with.
            (
                good.replace(&nonce, &other_nonce),
                FailReason::WrongResponse,
            ),
            (
                good.replace("uri=\"sip:example.com\"", "uri=\"sip:example.org\""),
                FailReason::UriMismatch,
            ),
            (
                good.replace(
                    &format!("algorithm={}", alg.name()),
                    &format!("algorithm={other_alg}"),
                ),
                FailReason::WrongResponse,
            ),
            (
                good.replace(
                    &format!("algorithm={}", alg.name()),
                    "algorithm=SHA-512-256",
                ),
                FailReason::UnknownAlgorithm,
            ),
        ];
        let resp_value = good
            .split("response=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap()
            .to_owned();
        let mut flipped = resp_value.clone().into_bytes();
        flipped[0] = if flipped[0] == b'0' { b'1' } else { b'0' };
        cases.push((
            good.replace(&resp_value, std::str::from_utf8(&flipped).unwrap()),
            FailReason::WrongResponse,
        ));
        if qop {
            cases.push((
                good.replace("cnonce=\"0a4f113b\"", "cnonce=\"0a4f113c\""),
                FailReason::WrongResponse,
            ));
            cases.push((
                good.replace("nc=00000001", "nc=00000002"),
                FailReason::WrongResponse,
            ));
            cases.push((
                good.replace(", qop=auth, nc=00000001, cnonce=\"0a4f113b\"", ""),
                FailReason::WrongResponse,
            ));
            cases.push((
                good.replace("qop=auth", "qop=auth-int"),
                FailReason::UnsupportedQop,
            ));
        } else {
            // Adding qop after the fact changes what is hashed.
            cases.push((
                format!("{good}, qop=auth, nc=00000001, cnonce=\"x\""),
                FailReason::WrongResponse,
            ));
        }
        for (header, want) in cases {
            assert_ne!(header, good, "tampering did nothing: {want:?}");
            let msg = register(RURI, "Authorization", &header);
            assert_eq!(
                verify_sole_header(&msg, NOW + 1),
                Outcome::Failed(want),
                "{alg} qop={qop}: {header}"
            );
            // Through realm selection, an answer for another realm is not ours to check.
            let via_edge = edge_verify(&msg, ChallengeKind::Www, NOW + 1);
            if want == FailReason::RealmMismatch {
                assert_eq!(via_edge, Edge::NoAnswerForRealm);
            } else {
                assert_eq!(via_edge, Outcome::Failed(want), "{header}");
            }
        }

        // A username the store does not know never reaches the verifier.
        let msg = register(
            RURI,
            "Authorization",
            &good.replace("username=\"alice\"", "username=\"carol\""),
        );
        assert_eq!(
            edge_verify(&msg, ChallengeKind::Www, NOW),
            Edge::UnknownUser
        );

        // The method is not in the header but is hashed (HA2).
        let msg = register(RURI, "Authorization", &good);
        let auth = find_credentials(&msg, ChallengeKind::Www, REALM).unwrap();
        let creds = Credentials::from_password("alice", REALM, "alice-secret");
        assert_eq!(
            verify(&auth, "INVITE", RURI.as_bytes(), REALM, &creds, &key(), NOW),
            Outcome::Failed(FailReason::WrongResponse)
        );
        // Same header sent to another Request-URI.
        let msg = register("sip:other.example.com", "Authorization", &good);
        assert_eq!(
            edge_verify(&msg, ChallengeKind::Www, NOW),
            Outcome::Failed(FailReason::UriMismatch)
        );
        // A realm the server does not serve finds no credentials at all.
        assert!(find_credentials(&msg, ChallengeKind::Www, "example.org").is_none());
    }
}

#[test]
fn expired_nonce_is_stale_only_when_the_answer_is_right() {
    let nonce = key().issue(REALM, NOW);
    for (alg, qop) in COMBOS {
        let good = answer(alg, qop, &nonce);
        let msg = register(RURI, "Authorization", &good);
        assert_eq!(
            edge_verify(&msg, ChallengeKind::Www, NOW + LIFETIME),
            verified(alg)
        );
        assert_eq!(
            edge_verify(&msg, ChallengeKind::Www, NOW + LIFETIME + 1),
            Outcome::Stale
        );
        let creds = Credentials::from_password("alice", REALM, "wrong");
        let auth = find_credentials(&msg, ChallengeKind::Www, REALM).unwrap();
        assert_eq!(
            verify(
                &auth,
                "REGISTER",
                RURI.as_bytes(),
                REALM,
                &creds,
                &key(),
                NOW + LIFETIME + 1
            ),
            Outcome::Failed(FailReason::WrongResponse)
        );
    }
}

#[test]
fn foreign_nonces_are_bad() {
    let other_secret = NonceKey::new(
        b"another cluster's secret........",
        Duration::from_secs(300),
    )
    .unwrap()
    .issue(REALM, NOW);
    let other_realm = key().issue("example.org", NOW);
    for (alg, qop) in COMBOS {
        for nonce in [&other_secret, &other_realm] {
            let msg = register(RURI, "Authorization", &answer(alg, qop, nonce));
            assert_eq!(
                edge_verify(&msg, ChallengeKind::Www, NOW),
                Outcome::Failed(FailReason::BadNonce)
            );
        }
    }
}

#[test]
fn challenge_response_cycle_through_sip_core() {
    // 1. The REGISTER without credentials draws a 401 with two challenges.
    let bare = RequestBuilder::new(Method::Register, RURI.as_bytes().to_vec())
        .header(
            "Via",
            &b"SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKreg0"[..],
        )
        .header("From", &b"<sip:alice@example.com>;tag=a1"[..])
        .header("To", &b"<sip:alice@example.com>"[..])
        .header("Call-ID", &b"reg-1@192.0.2.10"[..])
        .header("CSeq", &b"1 REGISTER"[..])
        .build();
    let bare = SipMessage::parse(bare).unwrap();
    assert!(find_credentials(&bare, ChallengeKind::Www, REALM).is_none());
    let [first, second] = challenge_values(&key(), REALM, NOW, false, None);
    let kind = ChallengeKind::Www;
    let resp = ResponseBuilder::new(&bare, kind.status())
        .unwrap()
        .header(kind.challenge_header(), first.into_bytes())
        .header(kind.challenge_header(), second.into_bytes())
        .build();
    let resp = SipMessage::parse(resp).unwrap();
    assert_eq!(resp.status(), Some(401));

    // 2. The phone reads the challenges in order and takes the first it supports.
    let challenges: Vec<_> = resp.www_authenticates().map(Result::unwrap).collect();
    assert_eq!(challenges.len(), 2);
    assert_eq!(challenges[0].algorithm(), Some("SHA-256"));
    assert_eq!(challenges[1].algorithm(), Some("MD5"));
    assert_eq!(challenges[0].qop(), Some("auth"));
    assert!(!challenges[0].stale());
    let ch = challenges[0];
    let nonce = ch.nonce().unwrap();
    assert_eq!(key().verify(nonce, REALM, NOW), NonceCheck::Valid);
    let creds = Credentials::from_password("alice", REALM, "alice-secret");
    let header = ClientAuthorization {
        algorithm: Algorithm::from_param(ch.algorithm()).unwrap(),
        username: "alice",
        realm: ch.realm().unwrap(),
        nonce,
        uri: RURI,
        method: "REGISTER",
        qop: Some(QopAuth {
            nc: 1,
            cnonce: "c1",
        }),
        opaque: None,
    }
    .header_value(&creds)
    .unwrap();

    // 3. The retry lands on another edge (same secret) and verifies.
    let msg = register(RURI, "Authorization", &header);
    assert_eq!(
        edge_verify(&msg, ChallengeKind::Www, NOW + 2),
        verified(Algorithm::Sha256)
    );

    // 4. After expiry, the re-challenge carries stale=true.
    assert_eq!(
        edge_verify(&msg, ChallengeKind::Www, NOW + LIFETIME + 60),
        Outcome::Stale
    );
    let stale = Challenge {
        realm: REALM,
        nonce: &key().issue(REALM, NOW + LIFETIME + 60),
        algorithm: Algorithm::Sha256,
        stale: true,
        opaque: None,
    }
    .header_value();
    let parsed = sip_core::Auth::parse(stale.as_bytes(), "WWW-Authenticate").unwrap();
    assert!(parsed.stale());
}

#[test]
fn proxy_authorization_with_several_realms() {
    // An INVITE carrying answers for a downstream proxy and for us: only ours is read.
    let nonce = key().issue(REALM, NOW);
    let creds = Credentials::from_password("alice", REALM, "alice-secret");
    let ours = ClientAuthorization {
        algorithm: Algorithm::Md5,
        username: "alice",
        realm: REALM,
        nonce: &nonce,
        uri: "sip:bob@example.com",
        method: "INVITE",
        qop: Some(QopAuth {
            nc: 3,
            cnonce: "zz",
        }),
        opaque: None,
    }
    .header_value(&creds)
    .unwrap();
    let bytes = RequestBuilder::new(Method::Invite, &b"sip:bob@example.com"[..])
        .header("Via", &b"SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKinv1"[..])
        .header("Max-Forwards", &b"70"[..])
        .header("From", &b"<sip:alice@example.com>;tag=a1"[..])
        .header("To", &b"<sip:bob@example.com>"[..])
        .header("Call-ID", &b"inv-1@192.0.2.10"[..])
        .header("CSeq", &b"2 INVITE"[..])
        .header("Contact", &b"<sip:alice@192.0.2.10:5060>"[..])
        .header(
            "Proxy-Authorization",
            &b"Digest username=\"alice\", realm=\"carrier.net\", nonce=\"x\", uri=\"sip:bob@example.com\", response=\"00\""[..],
        )
        .header("Proxy-Authorization", ours.into_bytes())
        .build();
    let msg = SipMessage::parse(bytes).unwrap();
    msg.validate_request().unwrap();
    let auth = find_credentials(&msg, ChallengeKind::Proxy, REALM).unwrap();
    assert_eq!(auth.realm(), Some(REALM));
    assert_eq!(
        verify(
            &auth,
            msg.method().unwrap().as_str(),
            msg.request_uri_raw().unwrap(),
            REALM,
            &creds,
            &key(),
            NOW
        ),
        verified(Algorithm::Md5)
    );
    assert_eq!(
        find_credentials(&msg, ChallengeKind::Proxy, "carrier.net")
            .unwrap()
            .nonce(),
        Some("x")
    );
    assert!(find_credentials(&msg, ChallengeKind::Www, REALM).is_none());
}

#[test]
fn userhash_and_other_schemes_fail_cleanly() {
    let nonce = key().issue(REALM, NOW);
    let good = answer(Algorithm::Sha256, true, &nonce);
    let msg = register(RURI, "Authorization", &format!("{good}, userhash=true"));
    assert_eq!(
        edge_verify(&msg, ChallengeKind::Www, NOW),
        Outcome::Failed(FailReason::UserhashUnsupported)
    );
    let msg = register(RURI, "Authorization", "Bearer eyJhbGciOi.JSUzI1NiJ9");
    let auth = msg.authorizations().next().unwrap().unwrap();
    let creds = Credentials::from_password("alice", REALM, "alice-secret");
    assert_eq!(
        verify(
            &auth,
            "REGISTER",
            RURI.as_bytes(),
            REALM,
            &creds,
            &key(),
            NOW
        ),
        Outcome::Failed(FailReason::NotDigest)
    );
}
