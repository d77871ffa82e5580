//! Topology hiding (`RelayConfig::topology_hiding`): no address inside the cluster leaves
//! it. What a client would otherwise see of the inside, and where it goes instead:
//!
//! * the Vias below ours in a request we carry out (the edge's, our internal side's, other
//!   hops'): sealed into our own Via (`;sth=`), restored from the client's response,
//!   which carries our Via back;
//! * the Record-Route values below ours in that request (the edge's, the other
//!   dispatcher's): sealed into our own Record-Route URI (`;sth=`), so the client's route
//!   set names only us; restored below ours in its responses, and as Routes when its
//!   in-dialog requests come through us;
//! * the Record-Route values above ours in a response we carry out (the callee side's
//!   hops, the edge's): the same, in the order the client's route set needs them.
//!
//! Contacts need no hiding: no element of the cluster puts its own Contact in a message
//! (the edges proxy, the dispatcher relays); a client's or a trunk's Contact is theirs.
//!
//! The sealed text is ChaCha20-Poly1305 (ring) under a key derived from the cluster
//! secret, with a random nonce, in unpadded base64url: opaque to the client, and any
//! change to it fails to open (the message is then dropped and counted), so nobody can
//! make a dispatcher route through Vias or Routes of their choosing. Stateless: any
//! dispatcher of the cluster opens what another sealed.

use base64::Engine as _;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

/// The Via and Record-Route URI parameter holding sealed values.
pub const HIDDEN_PARAM: &str = "sth";

/// Values sealed at most (a Via stack, a route set).
const MAX_VALUES: usize = 32;

/// Seals and opens header values.
pub struct Hider {
    key: LessSafeKey,
}

impl std::fmt::Debug for Hider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hider(..)")
    }
}

impl Hider {
    /// From a 32-byte key (derived from the cluster secret).
    pub fn new(key: [u8; 32]) -> Hider {
        // 32 bytes is ChaCha20-Poly1305's key length: this cannot fail.
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, &key)
            .unwrap_or_else(|_| unreachable!("a 32-byte key"));
        Hider {
            key: LessSafeKey::new(unbound),
        }
    }

    /// `values` (header values: Vias, Record-Route entries), in order, as text fit for a
    /// URI or Via parameter. `None` when randomness is not available.
    pub fn seal<'a>(&self, values: impl IntoIterator<Item = &'a [u8]>) -> Option<String> {
        let mut plain = Vec::with_capacity(256);
        for v in values.into_iter().take(MAX_VALUES) {
            let len = u16::try_from(v.len()).ok()?;
            plain.extend_from_slice(&len.to_be_bytes());
            plain.extend_from_slice(v);
        }
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).ok()?;
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(b"sipcluster topology hiding v1"),
                &mut plain,
            )
            .ok()?;
        let mut out = Vec::with_capacity(NONCE_LEN + plain.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&plain);
        Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(out))
    }

    /// The values in a [`seal`](Self::seal)ed text; `None` for anything it did not seal.
    pub fn open(&self, text: &str) -> Option<Vec<Vec<u8>>> {
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .ok()?;
        if raw.len() < NONCE_LEN {
            return None;
        }
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut sealed = sealed.to_vec();
        let plain = self
            .key
            .open_in_place(
                nonce,
                Aad::from(b"sipcluster topology hiding v1"),
                &mut sealed,
            )
            .ok()?;
        let mut out = Vec::new();
        let mut rest: &[u8] = plain;
        while !rest.is_empty() {
            let (len, tail) = rest.split_at_checked(2)?;
            let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
            let (v, tail) = tail.split_at_checked(len)?;
            out.push(v.to_vec());
            rest = tail;
            if out.len() > MAX_VALUES {
                return None;
            }
        }
        Some(out)
    }
}

/// The `sth` parameter of a Via or URI text, if any (its value up to the next `;`, `>`,
/// `?` or `,`).
pub fn hidden_param(text: &[u8]) -> Option<&str> {
    let s = std::str::from_utf8(text).ok()?;
    let at = s.find(";sth=")?;
    let v = &s[at + 5..];
    let end = v.find([';', '>', '?', ',', ' ']).unwrap_or(v.len());
    Some(&v[..end])
}

/// `text` without its `;sth=...` parameter.
pub fn without_hidden(text: &[u8]) -> Vec<u8> {
    let Some(v) = hidden_param(text) else {
        return text.to_vec();
    };
    let s = String::from_utf8_lossy(text);
    s.replacen(&format!(";{HIDDEN_PARAM}={v}"), "", 1)
        .into_bytes()
}

/// A name-addr (`<sip:...;lr>`) with `;sth=sealed` added inside the URI.
pub fn with_hidden(name_addr: &[u8], sealed: &str) -> Vec<u8> {
    super::stamps::with_uri_param(name_addr, &format!(";{HIDDEN_PARAM}={sealed}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_unchanged_and_only_with_the_key() {
        let h = Hider::new([7; 32]);
        let vias: [&[u8]; 2] = [
            b"SIP/2.0/UDP 10.0.1.1:5060;branch=z9hG4bKedge",
            b"SIP/2.0/UDP 10.0.0.9:5070;branch=z9hG4bK-scd1;scsrc=0a",
        ];
        let sealed = h.seal(vias).unwrap();
        assert!(!sealed.contains("10.0"), "{sealed}");
        assert!(
            sealed
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(
            h.open(&sealed).unwrap(),
            vias.iter().map(|v| v.to_vec()).collect::<Vec<_>>()
        );
        // Two seals of the same values differ (random nonce): nothing to correlate.
        assert_ne!(h.seal(vias).unwrap(), sealed);
        // Changed, truncated, or sealed under another key: refused.
        let mut b = sealed.clone().into_bytes();
        b[20] = if b[20] == b'A' { b'B' } else { b'A' };
        assert_eq!(h.open(&String::from_utf8(b).unwrap()), None);
        assert_eq!(h.open(&sealed[..sealed.len() - 2]), None);
        assert_eq!(Hider::new([8; 32]).open(&sealed), None);
        assert_eq!(h.open("!!"), None);
        assert_eq!(h.open(""), None);
    }

    #[test]
    fn the_parameter_is_added_found_and_removed() {
        let rr = with_hidden(b"<sip:scd-ab@198.51.100.7:5060;lr>", "AbC-_9");
        assert_eq!(rr, b"<sip:scd-ab@198.51.100.7:5060;lr;sth=AbC-_9>");
        assert_eq!(hidden_param(&rr), Some("AbC-_9"));
        assert_eq!(without_hidden(&rr), b"<sip:scd-ab@198.51.100.7:5060;lr>");
        let via = b"SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK-scd1;sth=xyz;rport";
        assert_eq!(hidden_param(via), Some("xyz"));
        assert_eq!(
            without_hidden(via),
            b"SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK-scd1;rport"
        );
        assert_eq!(hidden_param(b"<sip:x@y;lr>"), None);
    }
}
