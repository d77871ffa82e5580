//! Arbitrary credentials through sip-core's parser and the verifier: no panic, and never
//! accepted unless genuinely correct.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use proptest::prelude::*;
use sip_auth::{
    Algorithm, ClientAuthorization, Credentials, DigestResponse, NonceKey, Outcome, QopAuth,
    select_for_realm, verify,
};
use sip_core::{Auth, SipMessage};
use std::time::Duration;

const REALM: &str = "example.com";
const NOW: u64 = 1_700_000_000;

fn key() -> NonceKey {
    NonceKey::new([42u8; 32], Duration::from_secs(300)).unwrap()
}

fn creds() -> Credentials {
    Credentials::from_password("alice", REALM, "pw")
}

fn request(authorization: &[u8]) -> Vec<u8> {
    let mut m = b"REGISTER sip:example.com SIP/2.0\r\n\
        Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\n\
        From: <sip:alice@example.com>;tag=1\r\nTo: <sip:alice@example.com>\r\n\
        Call-ID: c\r\nCSeq: 1 REGISTER\r\nAuthorization: "
        .to_vec();
    m.extend_from_slice(authorization);
    m.extend_from_slice(b"\r\nContent-Length: 0\r\n\r\n");
    m
}

/// Run everything a hostile header can reach; return whether anything verified.
fn exercise(value: &[u8]) -> bool {
    let mut verified = false;
    let mut check = |auth: &Auth<'_>| {
        // A store in which every user's password is "pw": the username is bound to the
        // answer only through the HA1 looked up for it.
        let mut creds = creds();
        if let Ok(d) = DigestResponse::parse(auth) {
            creds = Credentials::from_password(d.username(), REALM, "pw");
            let _ = d.check_nonce(&key(), REALM, NOW);
        }
        for now in [0, NOW, u64::MAX] {
            let out = verify(
                auth,
                "REGISTER",
                b"sip:example.com",
                REALM,
                &creds,
                &key(),
                now,
            );
            verified |= out.is_verified();
            let _ = (
                format!("{out:?}"),
                matches!(out, Outcome::Failed(r) if !r.label().is_empty()),
            );
        }
    };
    if let Ok(auth) = Auth::parse(value, "Authorization") {
        check(&auth);
    }
    if let Ok(msg) = SipMessage::parse(request(value)) {
        for auth in msg.authorizations().flatten() {
            check(&auth);
        }
        if let Some(auth) = select_for_realm(msg.authorizations(), REALM) {
            check(&auth);
        }
    }
    verified
}

fn param_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("username".to_owned()),
        Just("realm".to_owned()),
        Just("nonce".to_owned()),
        Just("uri".to_owned()),
        Just("response".to_owned()),
        Just("algorithm".to_owned()),
        Just("qop".to_owned()),
        Just("nc".to_owned()),
        Just("cnonce".to_owned()),
        Just("userhash".to_owned()),
        Just("opaque".to_owned()),
        "[a-zA-Z-]{1,8}",
    ]
}

fn param_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("\"example.com\"".to_owned()),
        Just("SHA-256".to_owned()),
        Just("md5".to_owned()),
        Just("auth".to_owned()),
        Just("true".to_owned()),
        Just("00000001".to_owned()),
        Just(format!("\"{}\"", key().issue(REALM, NOW))),
        "[ -~]{0,40}",
        "\"[^\"\\\\]{0,40}\"",
        "\"([^\"]|\\\\.){0,20}\\\\?\"?",
    ]
}

fn digest_value() -> impl Strategy<Value = String> {
    (
        prop_oneof![Just("Digest"), Just("digest"), Just("Basic"), Just("")],
        prop::collection::vec((param_name(), param_value(), "[ ,\t]{0,3}"), 0..12),
    )
        .prop_map(|(scheme, params)| {
            let mut s = scheme.to_owned();
            s.push(' ');
            for (n, v, sep) in params {
                s.push_str(&n);
                s.push('=');
                s.push_str(&v);
                s.push(',');
                s.push_str(&sep);
            }
            s
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic_or_verify(value in prop::collection::vec(any::<u8>(), 0..300)) {
        prop_assert!(!exercise(&value));
    }

    #[test]
    fn structured_digest_never_panics_or_verifies(value in digest_value()) {
        prop_assert!(!exercise(value.as_bytes()));
    }

    #[test]
    fn only_the_exact_answer_verifies(
        sha in any::<bool>(),
        qop in any::<bool>(),
        nc in any::<u32>(),
        cnonce in "[a-zA-Z0-9+/]{1,24}",
        flip in any::<prop::sample::Index>(),
    ) {
        let nonce = key().issue(REALM, NOW);
        let alg = if sha { Algorithm::Sha256 } else { Algorithm::Md5 };
        let header = ClientAuthorization {
            algorithm: alg,
            username: "alice",
            realm: REALM,
            nonce: &nonce,
            uri: "sip:example.com",
            method: "REGISTER",
            qop: qop.then_some(QopAuth { nc, cnonce: &cnonce }),
            opaque: None,
        }
        .header_value(&creds())
        .unwrap();
        prop_assert!(exercise(header.as_bytes()));
        // Change one byte anywhere: it must no longer verify, with one exception. The
        // `algorithm` parameter is not hashed and absent means MD5, so misspelling its name
        // in an MD5 answer leaves a correct RFC 2069/2617 answer.
        let mut bytes = header.clone().into_bytes();
        let i = flip.index(bytes.len());
        let b = bytes[i];
        // Never a change of case only: names, `algorithm` values and hex are case-insensitive.
        bytes[i] = match b.to_ascii_lowercase() {
            b'a' => b'b',
            c if c.is_ascii_alphanumeric() => b'a',
            _ => b'x',
        };
        let name_at = header.find("algorithm=").unwrap();
        // (The space before the name counts: `,xalgorithm=` is another parameter.)
        let still_md5 =
            alg == Algorithm::Md5 && (name_at - 1..name_at + "algorithm".len()).contains(&i);
        prop_assert_eq!(exercise(&bytes), still_md5, "{}", String::from_utf8_lossy(&bytes));
    }
}
