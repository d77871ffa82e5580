//! Checking an `Authorization` / `Proxy-Authorization` answer, and computing one.

use crate::algorithm::{Algorithm, ha2};
use crate::challenge::{ChallengeKind, push_quoted};
use crate::credentials::Credentials;
use crate::nonce::{NonceCheck, NonceKey};
use sip_core::{Auth, SipMessage};
use std::borrow::Cow;
use std::fmt;
use subtle::ConstantTimeEq;

/// Why an answer was refused. [`label`](FailReason::label) gives a stable metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailReason {
    /// The credentials use another scheme (Basic, Bearer, ...).
    NotDigest,
    /// A required parameter is absent (its name).
    MissingParam(&'static str),
    /// A parameter is present but malformed: not UTF-8, or `nc` not 8 hex digits (its name).
    InvalidParam(&'static str),
    /// `realm` is not the realm this server challenges for.
    RealmMismatch,
    /// `algorithm` is neither MD5 nor SHA-256.
    UnknownAlgorithm,
    /// `qop` is present and not `auth` (`auth-int` is not supported).
    UnsupportedQop,
    /// `userhash=true` (RFC 7616 §3.4.4): the username is hidden behind a hash we do not
    /// reverse.
    UserhashUnsupported,
    /// The subscriber has no HA1 for the algorithm the client used.
    NoCredentialsForAlgorithm(Algorithm),
    /// The nonce was not issued for this realm by a holder of the secret (or is malformed,
    /// or from the future). Answer with a fresh challenge, without `stale`.
    BadNonce,
    /// `uri` is not the Request-URI (RFC 7616 §3.4.6 suggests 400 Bad Request).
    UriMismatch,
    /// `response` is not the expected digest: wrong password, or any hashed field altered.
    WrongResponse,
}

impl FailReason {
    /// Every value [`label`](FailReason::label) returns, for metrics that create their
    /// series at start (at 0).
    pub const LABELS: [&'static str; 11] = [
        "not_digest",
        "missing_param",
        "invalid_param",
        "realm_mismatch",
        "unknown_algorithm",
        "unsupported_qop",
        "userhash_unsupported",
        "no_credentials_for_algorithm",
        "bad_nonce",
        "uri_mismatch",
        "wrong_response",
    ];

    /// A short, stable name for metrics and logs: one of [`LABELS`](FailReason::LABELS).
    pub fn label(&self) -> &'static str {
        match self {
            FailReason::NotDigest => "not_digest",
            FailReason::MissingParam(_) => "missing_param",
            FailReason::InvalidParam(_) => "invalid_param",
            FailReason::RealmMismatch => "realm_mismatch",
            FailReason::UnknownAlgorithm => "unknown_algorithm",
            FailReason::UnsupportedQop => "unsupported_qop",
            FailReason::UserhashUnsupported => "userhash_unsupported",
            FailReason::NoCredentialsForAlgorithm(_) => "no_credentials_for_algorithm",
            FailReason::BadNonce => "bad_nonce",
            FailReason::UriMismatch => "uri_mismatch",
            FailReason::WrongResponse => "wrong_response",
        }
    }
}

impl fmt::Display for FailReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailReason::NotDigest => f.write_str("credentials are not Digest"),
            FailReason::MissingParam(p) => write!(f, "missing {p} parameter"),
            FailReason::InvalidParam(p) => write!(f, "invalid {p} parameter"),
            FailReason::RealmMismatch => f.write_str("realm mismatch"),
            FailReason::UnknownAlgorithm => f.write_str("unsupported algorithm"),
            FailReason::UnsupportedQop => f.write_str("unsupported qop"),
            FailReason::UserhashUnsupported => f.write_str("userhash not supported"),
            FailReason::NoCredentialsForAlgorithm(a) => write!(f, "no {a} credentials"),
            FailReason::BadNonce => f.write_str("bad nonce"),
            FailReason::UriMismatch => f.write_str("uri does not match Request-URI"),
            FailReason::WrongResponse => f.write_str("wrong response"),
        }
    }
}

/// The verdict on one answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// The client knows the secret of `username`.
    Verified {
        /// The authenticated username (quoted-pair escapes removed).
        username: Cow<'a, str>,
        /// The algorithm it answered with.
        algorithm: Algorithm,
    },
    /// A correct answer to a nonce that has expired: re-challenge with `stale=true`.
    Stale,
    /// Refused.
    Failed(FailReason),
}

impl Outcome<'_> {
    /// True for [`Outcome::Verified`].
    pub fn is_verified(&self) -> bool {
        matches!(self, Outcome::Verified { .. })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct QopFields<'a> {
    /// As sent (`auth` in any case): the client hashed exactly this text.
    value: Cow<'a, str>,
    nc: Cow<'a, str>,
    cnonce: Cow<'a, str>,
}

/// A Digest answer whose parameters are present and well-formed, not yet checked against
/// a server's realm, nonce key or credentials.
///
/// Splitting parsing from checking lets the edge read [`username`](Self::username) to look
/// up the subscriber, and reject a forged nonce with
/// [`check_nonce`](Self::check_nonce) before spending a store round trip on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestResponse<'a> {
    username: Cow<'a, str>,
    realm: Cow<'a, str>,
    nonce: Cow<'a, str>,
    uri: Cow<'a, str>,
    response: Cow<'a, str>,
    algorithm: Algorithm,
    qop: Option<QopFields<'a>>,
}

/// A parameter's value with quoted-pair escapes removed; `Err` if it is not UTF-8.
fn text<'a>(auth: &Auth<'a>, name: &'static str) -> Result<Option<Cow<'a, str>>, FailReason> {
    let Some(v) = auth.param(name) else {
        return Ok(None);
    };
    let s = match v.unescaped() {
        Cow::Borrowed(b) => std::str::from_utf8(b).map(Cow::Borrowed).ok(),
        Cow::Owned(b) => String::from_utf8(b).map(Cow::Owned).ok(),
    };
    s.map(Some).ok_or(FailReason::InvalidParam(name))
}

fn required<'a>(auth: &Auth<'a>, name: &'static str) -> Result<Cow<'a, str>, FailReason> {
    text(auth, name)?.ok_or(FailReason::MissingParam(name))
}

impl<'a> DigestResponse<'a> {
    /// Read and validate the parameters of Digest credentials.
    ///
    /// Required: `username`, `realm`, `nonce`, `uri`, `response`; with `qop=auth` also `nc`
    /// (8 hex digits) and `cnonce`. `algorithm` absent means MD5. `opaque` is ignored: our
    /// nonces carry their own proof, so there is nothing for it to carry.
    pub fn parse(auth: &Auth<'a>) -> Result<DigestResponse<'a>, FailReason> {
        if !auth.is_digest() {
            return Err(FailReason::NotDigest);
        }
        // Before `username`: with userhash the username is a hash, and we must not look it up.
        if auth.userhash() {
            return Err(FailReason::UserhashUnsupported);
        }
        let username = required(auth, "username")?;
        let realm = required(auth, "realm")?;
        let nonce = required(auth, "nonce")?;
        let uri = required(auth, "uri")?;
        let response = required(auth, "response")?;
        let algorithm = match text(auth, "algorithm")? {
            None => Algorithm::Md5,
            Some(a) => Algorithm::from_name(&a).ok_or(FailReason::UnknownAlgorithm)?,
        };
        let qop = match text(auth, "qop")? {
            None => None,
            Some(q) if q.trim().eq_ignore_ascii_case("auth") => {
                let nc = required(auth, "nc")?;
                if nc.len() != 8 || !nc.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(FailReason::InvalidParam("nc"));
                }
                let cnonce = required(auth, "cnonce")?;
                Some(QopFields {
                    value: q,
                    nc,
                    cnonce,
                })
            }
            Some(_) => return Err(FailReason::UnsupportedQop),
        };
        Ok(DigestResponse {
            username,
            realm,
            nonce,
            uri,
            response,
            algorithm,
            qop,
        })
    }

    /// The username to look up (quoted-pair escapes removed).
    pub fn username(&self) -> &str {
        &self.username
    }

    /// The realm the client answered for.
    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// The algorithm the client used.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The nonce the client answered.
    pub fn nonce(&self) -> &str {
        &self.nonce
    }

    /// The `uri` (digest-uri) parameter.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The nonce count (`nc`, 8 hex digits as sent) with `qop=auth`; `None` for an
    /// RFC 2069 answer without qop, which can only be used once per nonce.
    pub fn nc(&self) -> Option<&str> {
        self.qop.as_ref().map(|q| q.nc.as_ref())
    }

    /// Check only the nonce, for `realm`: cheap, so the edge can refuse forged nonces
    /// before looking the user up. [`verify`](Self::verify) checks it again.
    pub fn check_nonce(&self, key: &NonceKey, realm: &str, now_unix: u64) -> NonceCheck {
        key.verify(&self.nonce, realm, now_unix)
    }

    /// Check the answer against this server's `realm`, the request's `method` and
    /// Request-URI, the subscriber's stored `credentials` and the nonce `key`.
    ///
    /// `uri` must equal the Request-URI byte for byte once surrounding white space is
    /// trimmed (RFC 7616 §3.4.6 asks the server to check it). No normalisation is done (no
    /// case folding, no parameter reordering, no default port): a client signs the
    /// Request-URI it sends, and comparing exactly leaves no room for two spellings that a
    /// normaliser might equate but a downstream element routes differently. The check is
    /// meant for the first hop; a proxy that rewrote the Request-URI upstream would break it.
    ///
    /// The order of checks decides which reason a doubly-broken answer reports: realm, uri,
    /// nonce authenticity, credentials for the algorithm, response, and only then nonce
    /// age, so [`Outcome::Stale`] is returned only for an otherwise correct answer (as
    /// RFC 7616 §3.3 requires for `stale=true`).
    pub fn verify(
        &self,
        method: &str,
        request_uri: &[u8],
        realm: &str,
        credentials: &Credentials,
        key: &NonceKey,
        now_unix: u64,
    ) -> Outcome<'a> {
        if *self.realm != *realm {
            return Outcome::Failed(FailReason::RealmMismatch);
        }
        if self.uri.as_bytes().trim_ascii() != request_uri.trim_ascii() {
            return Outcome::Failed(FailReason::UriMismatch);
        }
        let nonce = self.check_nonce(key, realm, now_unix);
        if nonce == NonceCheck::Invalid {
            return Outcome::Failed(FailReason::BadNonce);
        }
        let Some(ha1) = credentials.ha1(self.algorithm) else {
            return Outcome::Failed(FailReason::NoCredentialsForAlgorithm(self.algorithm));
        };
        if !self.response_matches(ha1, method) {
            return Outcome::Failed(FailReason::WrongResponse);
        }
        if nonce == NonceCheck::Stale {
            return Outcome::Stale;
        }
        Outcome::Verified {
            username: self.username.clone(),
            algorithm: self.algorithm,
        }
    }

    /// Constant-time comparison of `response` with the digest expected for `ha1`.
    pub(crate) fn response_matches(&self, ha1: &str, method: &str) -> bool {
        let qop = self
            .qop
            .as_ref()
            .map(|q| (q.value.as_ref(), q.nc.as_ref(), q.cnonce.as_ref()));
        let expected = compute(self.algorithm, ha1, &self.nonce, method, &self.uri, qop);
        let given = self.response.trim().as_bytes();
        // The length is public (it follows from the algorithm), so an early exit leaks nothing.
        if given.len() != expected.len() {
            return false;
        }
        // Some clients send upper-case hex; the digest is the same.
        let given: Vec<u8> = given.iter().map(u8::to_ascii_lowercase).collect();
        given.ct_eq(expected.as_bytes()).into()
    }
}

/// Parse `auth` and [`DigestResponse::verify`] it in one step; parse failures become
/// [`Outcome::Failed`].
pub fn verify<'a>(
    auth: &Auth<'a>,
    method: &str,
    request_uri: &[u8],
    realm: &str,
    credentials: &Credentials,
    key: &NonceKey,
    now_unix: u64,
) -> Outcome<'a> {
    match DigestResponse::parse(auth) {
        Ok(d) => d.verify(method, request_uri, realm, credentials, key, now_unix),
        Err(reason) => Outcome::Failed(reason),
    }
}

/// From a request's credentials headers, the Digest one for `realm` (RFC 3261 §22.3: one
/// header per realm; others belong to proxies further on and must be left alone).
///
/// Unparsable headers and other schemes are skipped. If several answer our realm, the first
/// with an algorithm we support wins, else the first, so that verifying it reports why.
pub fn select_for_realm<'a, I>(headers: I, realm: &str) -> Option<Auth<'a>>
where
    I: IntoIterator<Item = Result<Auth<'a>, sip_core::Error>>,
{
    let mut fallback = None;
    for auth in headers.into_iter().flatten() {
        if !auth.is_digest() || !text(&auth, "realm").is_ok_and(|r| r.as_deref() == Some(realm)) {
            continue;
        }
        let supported =
            text(&auth, "algorithm").is_ok_and(|a| Algorithm::from_param(a.as_deref()).is_some());
        if supported {
            return Some(auth);
        }
        fallback.get_or_insert(auth);
    }
    fallback
}

/// [`select_for_realm`] over `Authorization` ([`ChallengeKind::Www`]) or
/// `Proxy-Authorization` ([`ChallengeKind::Proxy`]) headers of `msg`.
pub fn find_credentials<'m>(
    msg: &'m SipMessage,
    kind: ChallengeKind,
    realm: &str,
) -> Option<Auth<'m>> {
    match kind {
        ChallengeKind::Www => select_for_realm(msg.authorizations(), realm),
        ChallengeKind::Proxy => select_for_realm(msg.proxy_authorizations(), realm),
    }
}

fn compute(
    algorithm: Algorithm,
    ha1: &str,
    nonce: &str,
    method: &str,
    uri: &str,
    qop: Option<(&str, &str, &str)>,
) -> String {
    let ha2 = ha2(algorithm, method, uri);
    match qop {
        Some((qop, nc, cnonce)) => algorithm.hash_joined_hex(&[
            ha1.as_bytes(),
            nonce.as_bytes(),
            nc.as_bytes(),
            cnonce.as_bytes(),
            qop.as_bytes(),
            ha2.as_bytes(),
        ]),
        // RFC 2069 form, still sent by SIP phones that ignore qop.
        None => algorithm.hash_joined_hex(&[ha1.as_bytes(), nonce.as_bytes(), ha2.as_bytes()]),
    }
}

/// The `qop=auth` parameters of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QopAuth<'a> {
    /// Nonce count: how many requests this client has sent with this nonce (from 1).
    pub nc: u32,
    /// Client nonce.
    pub cnonce: &'a str,
}

/// The digest `response` in lowercase hex:
/// `H(HA1 ":" nonce ":" nc ":" cnonce ":" "auth" ":" HA2)` with `qop=auth`, or
/// `H(HA1 ":" nonce ":" HA2)` without qop (RFC 2069), where `HA2 = H(method ":" digest-uri)`.
pub fn digest_response(
    algorithm: Algorithm,
    ha1: &str,
    nonce: &str,
    method: &str,
    digest_uri: &str,
    qop: Option<QopAuth<'_>>,
) -> String {
    match qop {
        Some(q) => {
            let nc = format!("{:08x}", q.nc);
            compute(
                algorithm,
                ha1,
                nonce,
                method,
                digest_uri,
                Some(("auth", &nc, q.cnonce)),
            )
        }
        None => compute(algorithm, ha1, nonce, method, digest_uri, None),
    }
}

/// The client side: an answer to a challenge, for test tools and for the edge when it
/// authenticates to a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAuthorization<'a> {
    /// Algorithm of the challenge being answered.
    pub algorithm: Algorithm,
    /// Username.
    pub username: &'a str,
    /// Realm of the challenge.
    pub realm: &'a str,
    /// Nonce of the challenge.
    pub nonce: &'a str,
    /// The Request-URI.
    pub uri: &'a str,
    /// The request method.
    pub method: &'a str,
    /// `qop=auth` parameters, or `None` for the RFC 2069 form.
    pub qop: Option<QopAuth<'a>>,
    /// Echo of the challenge's `opaque`.
    pub opaque: Option<&'a str>,
}

impl ClientAuthorization<'_> {
    /// The `response` value; `None` when `credentials` lack an HA1 for the algorithm.
    pub fn response(&self, credentials: &Credentials) -> Option<String> {
        let ha1 = credentials.ha1(self.algorithm)?;
        Some(digest_response(
            self.algorithm,
            ha1,
            self.nonce,
            self.method,
            self.uri,
            self.qop,
        ))
    }

    /// The `Authorization` / `Proxy-Authorization` header value; `None` when `credentials`
    /// lack an HA1 for the algorithm.
    pub fn header_value(&self, credentials: &Credentials) -> Option<String> {
        let response = self.response(credentials)?;
        let mut v = String::with_capacity(256);
        v.push_str("Digest username=");
        push_quoted(&mut v, self.username);
        v.push_str(", realm=");
        push_quoted(&mut v, self.realm);
        v.push_str(", nonce=");
        push_quoted(&mut v, self.nonce);
        v.push_str(", uri=");
        push_quoted(&mut v, self.uri);
        v.push_str(", response=\"");
        v.push_str(&response);
        v.push_str("\", algorithm=");
        v.push_str(self.algorithm.name());
        if let Some(q) = self.qop {
            v.push_str(&format!(", qop=auth, nc={:08x}, cnonce=", q.nc));
            push_quoted(&mut v, q.cnonce);
        }
        if let Some(o) = self.opaque {
            v.push_str(", opaque=");
            push_quoted(&mut v, o);
        }
        Some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn auth(v: &str) -> Auth<'_> {
        Auth::parse(v.as_bytes(), "Authorization").unwrap()
    }

    const RFC2617: &str = "Digest username=\"Mufasa\", realm=\"testrealm@host.com\", \
        nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", uri=\"/dir/index.html\", qop=auth, \
        nc=00000001, cnonce=\"0a4f113b\", response=\"6629fae49393a05397450978507c4ef1\", \
        opaque=\"5ccc069c403ebaf9f0171e9517f40e41\"";

    #[test]
    fn rfc2617_header_response_matches() {
        let a = auth(RFC2617);
        let d = DigestResponse::parse(&a).unwrap();
        assert_eq!(d.username(), "Mufasa");
        assert_eq!(d.algorithm(), Algorithm::Md5);
        let c = Credentials::from_password("Mufasa", "testrealm@host.com", "Circle Of Life");
        let ha1 = c.ha1(Algorithm::Md5).unwrap();
        assert!(d.response_matches(ha1, "GET"));
        assert!(!d.response_matches(ha1, "POST"));
        let wrong = Credentials::from_password("Mufasa", "testrealm@host.com", "Circle of Life");
        assert!(!d.response_matches(wrong.ha1(Algorithm::Md5).unwrap(), "GET"));
        // Upper-case hex from the client is the same digest.
        let upper = RFC2617.replace(
            "6629fae49393a05397450978507c4ef1",
            "6629FAE49393A05397450978507C4EF1",
        );
        let a = auth(&upper);
        assert!(
            DigestResponse::parse(&a)
                .unwrap()
                .response_matches(ha1, "GET")
        );
    }

    #[test]
    fn rfc7616_sha256_header_response_matches() {
        let v = "Digest username=\"Mufasa\", realm=\"http-auth@example.org\", \
            uri=\"/dir/index.html\", algorithm=SHA-256, \
            nonce=\"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v\", nc=00000001, \
            cnonce=\"f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ\", qop=auth, \
            response=\"753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1\", \
            opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\"";
        let a = auth(v);
        let d = DigestResponse::parse(&a).unwrap();
        assert_eq!(d.algorithm(), Algorithm::Sha256);
        let c = Credentials::from_password("Mufasa", "http-auth@example.org", "Circle of Life");
        assert!(d.response_matches(c.ha1(Algorithm::Sha256).unwrap(), "GET"));
    }

    #[test]
    fn parse_failures() {
        let cases: &[(&str, FailReason)] = &[
            ("Basic dXNlcjpwYXNz", FailReason::NotDigest),
            (
                "Digest username=\"a\", userhash=true, realm=\"r\"",
                FailReason::UserhashUnsupported,
            ),
            ("Digest realm=\"r\"", FailReason::MissingParam("username")),
            (
                "Digest username=\"a\", nonce=\"n\"",
                FailReason::MissingParam("realm"),
            ),
            (
                "Digest username=\"a\", realm=\"r\", uri=\"u\", response=\"x\"",
                FailReason::MissingParam("nonce"),
            ),
            (
                "Digest username=\"a\", realm=\"r\", nonce=\"n\", response=\"x\"",
                FailReason::MissingParam("uri"),
            ),
            (
                "Digest username=\"a\", realm=\"r\", nonce=\"n\", uri=\"u\"",
                FailReason::MissingParam("response"),
            ),
            (
                "Digest username=\"a\", realm=\"r\", nonce=\"n\", uri=\"u\", response=\"x\", algorithm=MD5-sess",
                FailReason::UnknownAlgorithm,
            ),
            (
                "Digest username=\"a\", realm=\"r\", nonce=\"n\", uri=\"u\", response=\"x\", qop=auth-int, nc=00000001, cnonce=\"c\"",
                FailReason::UnsupportedQop,
            ),
            (
                "Digest username=\"a\", realm=\"r\", nonce=\"n\", uri=\"u\", response=\"x\", qop=auth, cnonce=\"c\"",
                FailReason::MissingParam("nc"),
            ),
            (
                "Digest username=\"a\", realm=\"r\", nonce=\"n\", uri=\"u\", response=\"x\", qop=auth, nc=00000001",
                FailReason::MissingParam("cnonce"),
            ),
            (
                "Digest username=\"a\", realm=\"r\", nonce=\"n\", uri=\"u\", response=\"x\", qop=auth, nc=1, cnonce=\"c\"",
                FailReason::InvalidParam("nc"),
            ),
            (
                "Digest username=\"a\", realm=\"r\", nonce=\"n\", uri=\"u\", response=\"x\", qop=auth, nc=0000000g, cnonce=\"c\"",
                FailReason::InvalidParam("nc"),
            ),
        ];
        for (v, want) in cases {
            assert_eq!(DigestResponse::parse(&auth(v)), Err(*want), "{v}");
        }
        // Not UTF-8 inside a quoted string.
        let raw = b"Digest username=\"\xff\", realm=\"r\", nonce=\"n\", uri=\"u\", response=\"x\"";
        let a = Auth::parse(raw, "Authorization").unwrap();
        assert_eq!(
            DigestResponse::parse(&a),
            Err(FailReason::InvalidParam("username"))
        );
    }

    #[test]
    fn escapes_are_removed() {
        let a = auth(
            "Digest username=\"a\\\"b\", realm=\"r\", nonce=\"n\", uri=\"u\", response=\"x\", ALGORITHM=\"sha-256\"",
        );
        let d = DigestResponse::parse(&a).unwrap();
        assert_eq!(d.username(), "a\"b");
        assert_eq!(d.algorithm(), Algorithm::Sha256);
    }

    #[test]
    fn client_header_verifies() {
        let key = NonceKey::new([1u8; 32], Duration::from_secs(60)).unwrap();
        let nonce = key.issue("example.com", 100);
        let creds = Credentials::from_password("alice", "example.com", "pw");
        let c = ClientAuthorization {
            algorithm: Algorithm::Sha256,
            username: "alice",
            realm: "example.com",
            nonce: &nonce,
            uri: "sip:example.com",
            method: "REGISTER",
            qop: Some(QopAuth {
                nc: 0x1f,
                cnonce: "c\"n",
            }),
            opaque: Some("o"),
        };
        let h = c.header_value(&creds).unwrap();
        assert!(
            h.contains(", qop=auth, nc=0000001f, cnonce=\"c\\\"n\", opaque=\"o\""),
            "{h}"
        );
        let a = auth(&h);
        let out = verify(
            &a,
            "REGISTER",
            b" sip:example.com ",
            "example.com",
            &creds,
            &key,
            100,
        );
        assert_eq!(
            out,
            Outcome::Verified {
                username: Cow::Borrowed("alice"),
                algorithm: Algorithm::Sha256
            }
        );
        let md5_only = Credentials::from_ha1_hex(creds.ha1(Algorithm::Md5), None).unwrap();
        assert_eq!(c.header_value(&md5_only), None);
        assert_eq!(
            verify(
                &a,
                "REGISTER",
                b"sip:example.com",
                "example.com",
                &md5_only,
                &key,
                100
            ),
            Outcome::Failed(FailReason::NoCredentialsForAlgorithm(Algorithm::Sha256))
        );
    }

    #[test]
    fn select() {
        let hs = [
            Auth::parse(b"Digest realm=", "Authorization"),
            Auth::parse(b"Bearer abc", "Authorization"),
            Auth::parse(
                b"Digest realm=\"other.net\", username=\"x\"",
                "Authorization",
            ),
            Auth::parse(
                b"Digest realm=\"example.com\", algorithm=SHA-512-256, username=\"a\"",
                "Authorization",
            ),
            Auth::parse(
                b"Digest realm=\"example.com\", algorithm=SHA-256, username=\"b\"",
                "Authorization",
            ),
        ];
        let got = select_for_realm(hs.clone(), "example.com").unwrap();
        assert_eq!(got.username(), Some("b"));
        let got = select_for_realm(hs[..4].to_vec(), "example.com").unwrap();
        assert_eq!(got.username(), Some("a"));
        assert_eq!(
            select_for_realm(hs.clone(), "other.net")
                .unwrap()
                .username(),
            Some("x")
        );
        assert!(select_for_realm(hs, "nowhere").is_none());
    }

    #[test]
    fn labels_and_display() {
        assert_eq!(FailReason::BadNonce.label(), "bad_nonce");
        assert_eq!(
            FailReason::MissingParam("cnonce").to_string(),
            "missing cnonce parameter"
        );
        assert_eq!(
            FailReason::NoCredentialsForAlgorithm(Algorithm::Md5).to_string(),
            "no MD5 credentials"
        );
        assert!(!Outcome::Stale.is_verified());
    }

    #[test]
    fn every_label_is_listed() {
        let every = [
            FailReason::NotDigest,
            FailReason::MissingParam("nonce"),
            FailReason::InvalidParam("nc"),
            FailReason::RealmMismatch,
            FailReason::UnknownAlgorithm,
            FailReason::UnsupportedQop,
            FailReason::UserhashUnsupported,
            FailReason::NoCredentialsForAlgorithm(Algorithm::Md5),
            FailReason::BadNonce,
            FailReason::UriMismatch,
            FailReason::WrongResponse,
        ];
        // A new reason breaks this match: add it to `every` and its label to `LABELS`.
        for r in every {
            match r {
                FailReason::NotDigest
                | FailReason::MissingParam(_)
                | FailReason::InvalidParam(_)
                | FailReason::RealmMismatch
                | FailReason::UnknownAlgorithm
                | FailReason::UnsupportedQop
                | FailReason::UserhashUnsupported
                | FailReason::NoCredentialsForAlgorithm(_)
                | FailReason::BadNonce
                | FailReason::UriMismatch
                | FailReason::WrongResponse => {}
            }
        }
        let labels: Vec<&str> = every.iter().map(FailReason::label).collect();
        assert_eq!(labels, FailReason::LABELS);
    }
}
