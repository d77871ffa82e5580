//! Dispatcher flow tokens: how a dispatcher names the client it reached a request from
//! (RFC 5626 §5.2 style), in the Path it adds to a REGISTER and the Record-Route it adds
//! to a dialog-creating request.
//!
//! The token is the user part of a URI that points at the dispatcher's public address
//! (`sip:scd-<hex>@198.51.100.7:5060;lr`), so clients reach the dispatcher with it. It
//! carries:
//! * the dispatcher instance (a TCP connection lives in one process only),
//! * that instance's internal address, where edges send requests for the client — the
//!   public address may be a load balancer that edges cannot or must not use,
//! * the client: the connection id for TCP, the address (NAT binding) for UDP,
//! * an HMAC over all of it with the cluster secret, truncated to 80 bits, so that
//!   nobody outside the cluster can make a dispatcher write into someone else's
//!   connection or send to an address of their choosing.
//!
//! Edges read the internal address without the secret being needed for that; the
//! dispatcher verifies the MAC before it uses anything else.
//!
//! The edges' own flow tokens (`scf-`, naming a connection an edge holds itself, signed
//! with the digest nonce secret) are in [`edge`]: every flow token of the cluster is here.

pub mod edge;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How every dispatcher token starts.
pub const PREFIX: &str = "scd-";
const DOMAIN: &[u8] = b"sipcluster dispatcher flow token v1\0";
const MAC_LEN: usize = 10;
const KIND_TCP: u8 = 1;
const INTERNAL_TCP: u8 = 2;
const BEHIND_NAT: u8 = 4;
const SECURE: u8 = 8;
const WEBSOCKET: u8 = 16;
/// The internal address is sealed (topology hiding): only the cluster reads it.
const SEALED: u8 = 32;
const SEAL_DOMAIN: &[u8] = b"sipcluster flow token internal address v1\0";

/// The cluster secret, keyed once.
#[derive(Clone)]
pub struct TokenKey(Hmac<Sha256>);

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

impl TokenKey {
    /// Key from the shared secret (the same `nonce_secret` the edges share).
    pub fn new(secret: &[u8]) -> TokenKey {
        // HMAC takes keys of any length; this cannot fail.
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        TokenKey(mac)
    }

    fn mac(&self, body: &[u8]) -> [u8; 32] {
        // The flow token's MAC as issued since v1 (unchanged, so tokens survive a rollout).
        let mut m = self.0.clone();
        m.update(DOMAIN);
        m.update(body);
        m.finalize().into_bytes().into()
    }

    /// HMAC over a domain-separation label and `parts`, each part length-prefixed so
    /// that no two different lists hash alike.
    fn mac_parts(&self, domain: &[u8], parts: &[&[u8]]) -> [u8; 32] {
        let mut m = self.0.clone();
        m.update(domain);
        for p in parts {
            m.update(&(p.len() as u32).to_be_bytes());
            m.update(p);
        }
        m.finalize().into_bytes().into()
    }

    /// A 32-byte key for `label`'s purpose, derived from the cluster secret (HMAC, a
    /// domain of its own): every dispatcher derives the same.
    pub fn derive(&self, label: &[u8]) -> [u8; 32] {
        self.mac_parts(b"sipcluster key derivation v1\0", &[label])
    }

    /// The dialog token of a dialog-creating request: a MAC over its Call-ID and the
    /// caller's From tag. It rides in our Record-Route URIs (`;dlg=`), so an in-dialog
    /// request that loose-routes through us carries it back; any edge or dispatcher
    /// holding the cluster secret verifies it ([`TokenKey::dialog_ok`]), with no state.
    /// A request that never went through our Record-Route cannot show one for its
    /// Call-ID, which is what closes the "fake in-dialog request" relay.
    pub fn dialog_token(&self, call_id: &str, from_tag: &str) -> String {
        self.dialog_token_for(call_id, from_tag, false)
    }

    /// A dialog token that also says the dialog was set up by a sender who proved who it
    /// is (digest) or is trusted: only an edge knows that, so only an edge's own
    /// Record-Route carries one. In-dialog requests of such a dialog may go anywhere; those
    /// of any other dialog only to its parties (see the edge's in-dialog rules).
    pub fn dialog_token_for(&self, call_id: &str, from_tag: &str, authorized: bool) -> String {
        let domain = if authorized {
            DIALOG_AUTH_DOMAIN
        } else {
            DIALOG_DOMAIN
        };
        let mac = self.mac_parts(domain, &[call_id.as_bytes(), from_tag.as_bytes()]);
        hex(&mac[..MAC_LEN])
    }

    /// Does `token` belong to the dialog of this in-dialog request? Its From tag or its
    /// To tag is the caller's (requests flow both ways in a dialog).
    pub fn dialog_ok(&self, token: &str, call_id: &str, tags: [Option<&str>; 2]) -> bool {
        self.dialog_check(token, call_id, tags).is_some()
    }

    /// [`TokenKey::dialog_ok`], saying also whether the token is an authorized dialog's
    /// ([`TokenKey::dialog_token_for`]): `Some(authorized)` when it verifies.
    pub fn dialog_check(
        &self,
        token: &str,
        call_id: &str,
        tags: [Option<&str>; 2],
    ) -> Option<bool> {
        let got = unhex(token).filter(|g| g.len() == MAC_LEN)?;
        [(DIALOG_AUTH_DOMAIN, true), (DIALOG_DOMAIN, false)]
            .into_iter()
            .find(|(domain, _)| {
                tags.into_iter().flatten().any(|tag| {
                    let want = self.mac_parts(domain, &[call_id.as_bytes(), tag.as_bytes()]);
                    ct_eq(&want[..MAC_LEN], &got)
                })
            })
            .map(|(_, authorized)| authorized)
    }

    /// The client's address, signed, for the dispatcher's own Via of a request it
    /// relays to an edge (`;scsrc=`): a MAC over the Via's branch and the address the
    /// dispatcher saw the request come from. With it an edge knows the client address
    /// (the source of trust decisions, bans and rate limits) is the dispatcher's word,
    /// not one written by a sender that reached the edge directly with a look-alike Via.
    pub fn sign_source(&self, branch: &str, client: SocketAddr) -> String {
        let mut addr = Vec::with_capacity(19);
        put_addr(&mut addr, client);
        self.seal(VIA_DOMAIN, branch, &addr)
    }

    /// The identity a client's verified TLS certificate proved (its first DNS name), signed
    /// for the dispatcher's Via of a request it relays (`;scpeer=`): a MAC over the
    /// branch and the name, so that an edge can trust a trunk by its certificate, which
    /// only the dispatcher saw. `None` for a name too long to be a DNS name.
    pub fn sign_peer(&self, branch: &str, name: &str) -> Option<String> {
        (name.len() <= MAX_PEER).then(|| self.seal(PEER_DOMAIN, branch, name.as_bytes()))
    }

    /// The name in a [`TokenKey::sign_peer`] value when its MAC holds for `branch`.
    pub fn verify_peer(&self, branch: &str, signed: &str) -> Option<String> {
        String::from_utf8(self.open(PEER_DOMAIN, branch, signed)?).ok()
    }

    /// The address in a [`TokenKey::sign_source`] value when its MAC holds for `branch`.
    pub fn verify_source(&self, branch: &str, signed: &str) -> Option<SocketAddr> {
        let addr = self.open(VIA_DOMAIN, branch, signed)?;
        let mut rest = addr.as_slice();
        let a = get_addr(&mut rest)?;
        rest.is_empty().then_some(a)
    }

    /// `value` in hex followed by a MAC over the branch and it (a Via parameter value).
    fn seal(&self, domain: &[u8], branch: &str, value: &[u8]) -> String {
        let mac = self.mac_parts(domain, &[branch.as_bytes(), value]);
        let mut s = hex(value);
        s.push_str(&hex(&mac[..VIA_MAC_LEN]));
        s
    }

    /// The value of a [`TokenKey::seal`]ed text when its MAC holds for `branch`.
    fn open(&self, domain: &[u8], branch: &str, signed: &str) -> Option<Vec<u8>> {
        let mut raw = unhex(signed)?;
        let split = raw.len().checked_sub(VIA_MAC_LEN)?;
        let mac = raw.split_off(split);
        let want = self.mac_parts(domain, &[branch.as_bytes(), &raw]);
        ct_eq(&want[..VIA_MAC_LEN], &mac).then_some(raw)
    }
}

const DIALOG_DOMAIN: &[u8] = b"sipcluster dialog token v1\0";
const DIALOG_AUTH_DOMAIN: &[u8] = b"sipcluster authorized dialog token v1\0";
const VIA_DOMAIN: &[u8] = b"sipcluster dispatcher via v1\0";
const PEER_DOMAIN: &[u8] = b"sipcluster dispatcher tls peer v1\0";
/// The longest peer name signed (a DNS name is at most 253 octets).
const MAX_PEER: usize = 253;
const VIA_MAC_LEN: usize = 8;

/// Constant time: a timing oracle on a MAC would let it be forged byte by byte.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(2 * b.len());
    for x in b {
        s.push(char::from(HEX[usize::from(x >> 4)]));
        s.push(char::from(HEX[usize::from(x & 15)]));
    }
    s
}

/// Who a token names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowToken {
    /// The dispatcher process that holds the client (random per start).
    pub instance: u32,
    /// That dispatcher's internal SIP address (where edges send).
    pub internal: SocketAddr,
    /// Whether edges reach `internal` over TCP (else UDP).
    pub internal_tcp: bool,
    /// The client's address (the source of its request).
    pub client: SocketAddr,
    /// UDP: the client is behind a NAT (its Via did not match the source), so requests
    /// for it go to `client`, the NAT binding; otherwise to the Request-URI (its
    /// Contact), which may be another socket than the one it registered from.
    pub nat: bool,
    /// The client's connection on `instance`; `None` for UDP.
    pub flow: Option<u64>,
    /// That connection is TLS: a new one, when it is gone, is TLS too, and a `sips:`
    /// request may go over it (RFC 5630: never downgraded).
    pub secure: bool,
    /// That connection is a WebSocket (RFC 7118): a browser, reached over it only
    /// (nothing listens on its side when it is gone).
    pub websocket: bool,
}

fn put_addr(out: &mut Vec<u8>, a: SocketAddr) {
    match a.ip() {
        IpAddr::V4(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&a.port().to_be_bytes());
}

/// XOR the internal address's bytes (after its family byte) in a token body with a
/// keystream from the key and the rest of the body (instance, client, flow): sealing and
/// opening are the same operation. Bodies too short to hold an address are left alone
/// (they will not parse).
fn seal_internal(key: &TokenKey, body: &mut [u8]) {
    let len = match body.get(5) {
        Some(4) => 6,
        Some(6) => 18,
        _ => return,
    };
    let (head, tail) = body.split_at_mut(6);
    let Some((addr, rest)) = (len <= tail.len()).then(|| tail.split_at_mut(len)) else {
        return;
    };
    let stream = key.mac_parts(SEAL_DOMAIN, &[&head[1..5], rest]);
    for (b, k) in addr.iter_mut().zip(stream) {
        *b ^= k;
    }
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if b.len() < n {
        return None;
    }
    let (h, t) = b.split_at(n);
    *b = t;
    Some(h)
}

fn get_addr(b: &mut &[u8]) -> Option<SocketAddr> {
    let ip = match take(b, 1)?[0] {
        4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(take(b, 4)?).ok()?)),
        6 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(take(b, 16)?).ok()?)),
        _ => return None,
    };
    let port = u16::from_be_bytes(take(b, 2)?.try_into().ok()?);
    Some(SocketAddr::new(ip, port))
}

impl FlowToken {
    fn body(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(48);
        let mut kind = 0;
        if self.flow.is_some() {
            kind |= KIND_TCP;
        }
        if self.internal_tcp {
            kind |= INTERNAL_TCP;
        }
        if self.nat {
            kind |= BEHIND_NAT;
        }
        if self.secure {
            kind |= SECURE;
        }
        if self.websocket {
            kind |= WEBSOCKET;
        }
        out.push(kind);
        out.extend_from_slice(&self.instance.to_be_bytes());
        put_addr(&mut out, self.internal);
        put_addr(&mut out, self.client);
        if let Some(f) = self.flow {
            out.extend_from_slice(&f.to_be_bytes());
        }
        out
    }

    /// The signed token text (URI-user safe: `scd-` and lower-case hex).
    pub fn encode(&self, key: &TokenKey) -> String {
        self.encode_with(key, false)
    }

    /// [`encode`](Self::encode) with the internal address sealed (topology hiding): the
    /// client, who sees the token in its route set, cannot read where inside the
    /// cluster it leads; edges and dispatchers, who hold the key, can ([`peek_with`]).
    ///
    /// [`peek_with`]: Self::peek_with
    pub fn encode_sealed(&self, key: &TokenKey) -> String {
        self.encode_with(key, true)
    }

    fn encode_with(&self, key: &TokenKey, sealed: bool) -> String {
        let mut body = self.body();
        if sealed {
            body[0] |= SEALED;
            seal_internal(key, &mut body);
        }
        let mac = key.mac(&body);
        let mut s = String::with_capacity(PREFIX.len() + 2 * (body.len() + MAC_LEN));
        s.push_str(PREFIX);
        for b in body.iter().chain(&mac[..MAC_LEN]) {
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 15)]));
        }
        s
    }

    /// Parse without checking the MAC: only for reading where a token points (edges
    /// send there; the dispatcher verifies before acting on it). A sealed token needs
    /// the key: see [`peek_with`](Self::peek_with).
    pub fn peek(token: &str) -> Option<FlowToken> {
        let raw = unhex(token.strip_prefix(PREFIX)?)?;
        let body = raw.get(..raw.len().checked_sub(MAC_LEN)?)?;
        if body.first().is_some_and(|k| k & SEALED != 0) {
            return None;
        }
        Self::parse_body(body)
    }

    /// [`peek`](Self::peek) that also reads sealed tokens (the key opens their internal
    /// address; the MAC is still not checked).
    pub fn peek_with(key: &TokenKey, token: &str) -> Option<FlowToken> {
        let raw = unhex(token.strip_prefix(PREFIX)?)?;
        let mut body = raw.get(..raw.len().checked_sub(MAC_LEN)?)?.to_vec();
        if body.first().is_some_and(|k| k & SEALED != 0) {
            seal_internal(key, &mut body);
        }
        Self::parse_body(&body)
    }

    /// Parse and verify; `None` for anything not signed with `key`.
    pub fn decode(key: &TokenKey, token: &str) -> Option<FlowToken> {
        let raw = unhex(token.strip_prefix(PREFIX)?)?;
        let split = raw.len().checked_sub(MAC_LEN)?;
        let (body, mac) = raw.split_at(split);
        let want = key.mac(body);
        if !ct_eq(&want[..MAC_LEN], mac) {
            return None;
        }
        if body.first().is_some_and(|k| k & SEALED != 0) {
            let mut body = body.to_vec();
            seal_internal(key, &mut body);
            return Self::parse_body(&body);
        }
        Self::parse_body(body)
    }

    fn parse_body(mut b: &[u8]) -> Option<FlowToken> {
        let kind = take(&mut b, 1)?[0];
        if kind & !(KIND_TCP | INTERNAL_TCP | BEHIND_NAT | SECURE | WEBSOCKET | SEALED) != 0 {
            return None;
        }
        let instance = u32::from_be_bytes(take(&mut b, 4)?.try_into().ok()?);
        let internal = get_addr(&mut b)?;
        let client = get_addr(&mut b)?;
        let flow = if kind & KIND_TCP != 0 {
            Some(u64::from_be_bytes(take(&mut b, 8)?.try_into().ok()?))
        } else {
            None
        };
        b.is_empty().then_some(FlowToken {
            instance,
            internal,
            internal_tcp: kind & INTERNAL_TCP != 0,
            nat: kind & BEHIND_NAT != 0,
            secure: kind & SECURE != 0,
            websocket: kind & WEBSOCKET != 0,
            client,
            flow,
        })
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn unhex(s: &str) -> Option<Vec<u8>> {
    let s = s.as_bytes();
    if !s.len().is_multiple_of(2) || s.len() > 256 {
        return None;
    }
    let nib = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    s.chunks_exact(2)
        .map(|p| Some(nib(p[0])? << 4 | nib(p[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialog_tokens_bind_the_call_id_and_the_callers_tag() {
        let key = TokenKey::new(b"0123456789abcdef0123");
        let t = key.dialog_token("call-1@host", "caller-tag");
        assert_eq!(t.len(), 2 * MAC_LEN);
        // Either direction of the dialog: the caller's tag is From or To.
        assert!(key.dialog_ok(&t, "call-1@host", [Some("caller-tag"), Some("x")]));
        assert!(key.dialog_ok(&t, "call-1@host", [Some("callee"), Some("caller-tag")]));
        assert!(!key.dialog_ok(&t, "call-2@host", [Some("caller-tag"), None]));
        assert!(!key.dialog_ok(&t, "call-1@host", [Some("other"), None]));
        assert!(!key.dialog_ok("00", "call-1@host", [Some("caller-tag"), None]));
        let other = TokenKey::new(b"another-secret-entirely");
        assert!(!other.dialog_ok(&t, "call-1@host", [Some("caller-tag"), None]));
        // An authorized dialog's token says so; the other kind does not pass for one.
        let a = key.dialog_token_for("call-1@host", "caller-tag", true);
        assert_ne!(a, t);
        assert_eq!(
            key.dialog_check(&a, "call-1@host", [Some("caller-tag"), None]),
            Some(true)
        );
        assert_eq!(
            key.dialog_check(&t, "call-1@host", [Some("caller-tag"), None]),
            Some(false)
        );
        assert_eq!(
            key.dialog_check(&a, "call-2@host", [Some("caller-tag"), None]),
            None
        );
        // Length prefixes: moving a byte between Call-ID and tag changes the token.
        assert_ne!(key.dialog_token("ab", "c"), key.dialog_token("a", "bc"));
    }

    #[test]
    fn signed_sources_bind_branch_and_client() {
        let key = TokenKey::new(b"0123456789abcdef0123");
        let a: SocketAddr = "198.51.100.7:5060".parse().expect("addr");
        let v6: SocketAddr = "[2001:db8::1]:5062".parse().expect("addr");
        let s = key.sign_source("z9hG4bK-scd1", a);
        assert_eq!(key.verify_source("z9hG4bK-scd1", &s), Some(a));
        assert_eq!(key.verify_source("z9hG4bK-scd2", &s), None);
        let s6 = key.sign_source("z9hG4bK-scd1", v6);
        assert_eq!(key.verify_source("z9hG4bK-scd1", &s6), Some(v6));
        // Another address under the same MAC is refused.
        let forged = format!("{}{}", &key.sign_source("b", v6)[..38], &s[14..]);
        assert_eq!(key.verify_source("z9hG4bK-scd1", &forged), None);
        assert_eq!(key.verify_source("z9hG4bK-scd1", "zz"), None);
        let other = TokenKey::new(b"another-secret-entirely");
        assert_eq!(other.verify_source("z9hG4bK-scd1", &s), None);
    }

    fn tok(flow: Option<u64>, client: &str) -> FlowToken {
        FlowToken {
            instance: 0xdead_beef,
            internal: "10.0.0.9:5070".parse().unwrap(),
            internal_tcp: false,
            nat: true,
            secure: false,
            websocket: false,
            client: client.parse().unwrap(),
            flow,
        }
    }

    #[test]
    fn sealed_tokens_hide_the_internal_address_from_whoever_has_no_key() {
        let key = TokenKey::new(b"0123456789abcdef0123");
        for t in [
            tok(Some(7), "203.0.113.5:40000"),
            tok(None, "[2001:db8::1]:5060"),
        ] {
            let s = t.encode_sealed(&key);
            // 10.0.0.9:5070 is 0a00000913ce in a plain token.
            assert!(!s.contains("0a00000913ce"), "{s}");
            assert!(t.encode(&key).contains("0a00000913ce"));
            assert_eq!(FlowToken::peek(&s), None, "not readable without the key");
            assert_eq!(FlowToken::peek_with(&key, &s), Some(t));
            assert_eq!(FlowToken::decode(&key, &s), Some(t));
            assert_eq!(
                FlowToken::decode(&TokenKey::new(b"another secret 0123"), &s),
                None
            );
            // A plain token reads with or without the key.
            assert_eq!(FlowToken::peek_with(&key, &t.encode(&key)), Some(t));
        }
    }

    #[test]
    fn round_trips_v4_v6_udp_tcp() {
        let key = TokenKey::new(b"0123456789abcdef0123");
        for t in [
            tok(None, "203.0.113.5:40000"),
            tok(Some(7), "203.0.113.5:40000"),
            tok(Some(u64::MAX), "[2001:db8::1]:5060"),
            FlowToken {
                internal: "[fd00::9]:5070".parse().unwrap(),
                internal_tcp: true,
                nat: false,
                secure: true,
                websocket: true,
                ..tok(Some(9), "[2001:db8::1]:5060")
            },
        ] {
            let s = t.encode(&key);
            assert!(s.starts_with(PREFIX));
            assert!(s.bytes().skip(4).all(|c| c.is_ascii_hexdigit()));
            assert_eq!(FlowToken::decode(&key, &s), Some(t));
            assert_eq!(FlowToken::peek(&s), Some(t));
        }
    }

    #[test]
    fn forgeries_and_junk_fail() {
        let key = TokenKey::new(b"0123456789abcdef0123");
        let other = TokenKey::new(b"another-secret-entirely");
        let s = tok(Some(42), "203.0.113.5:40000").encode(&key);
        assert_eq!(FlowToken::decode(&other, &s), None, "another cluster");
        // Flip every nibble of the body in turn: each change must break the MAC.
        for i in PREFIX.len()..s.len() {
            let mut b = s.clone().into_bytes();
            b[i] = if b[i] == b'0' { b'1' } else { b'0' };
            let forged = String::from_utf8(b).unwrap();
            assert_eq!(FlowToken::decode(&key, &forged), None, "position {i}");
        }
        for junk in [
            "",
            "scd-",
            "scd-0",
            "scd-zz",
            "scf-00",
            "alice",
            &s[..s.len() - 2],
        ] {
            assert_eq!(FlowToken::decode(&key, junk), None, "{junk}");
        }
        let long = format!("{PREFIX}{}", "0".repeat(1000));
        assert_eq!(FlowToken::peek(&long), None);
    }
}
