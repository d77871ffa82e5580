//! Edge flow tokens (`scf-`): how one edge names a client connection it holds so that another edge can
//! route a request through it (RFC 5626 §5.2 style, signed so that nobody outside the
//! cluster can make an edge write into someone else's connection).
//!
//! The token is the user part of a SIP URI pointing at the holding edge
//! (`sip:scf-<flow>-<instance>-<mac>@10.0.0.5:5060;lr`), stored with the binding as
//! `Source::edge_uri`. Another edge puts that URI as the top Route of the request; the
//! holding edge recognises itself, verifies the MAC with the shared nonce secret, and
//! sends the request down the connection (or answers 430 Flow Failed once it closed).

use sip_auth::NonceKey;
use sip_txn::FlowId;

const DOMAIN: &str = "sipcluster flow token v1";

/// How every flow token starts (a Route user part with it is ours to verify).
pub const PREFIX: &str = "scf-";

fn signed(instance: &str, flow: FlowId) -> String {
    format!("{:x}-{instance}", flow.0)
}

/// The token naming `flow` on edge `instance`.
pub fn encode(key: &NonceKey, instance: &str, flow: FlowId) -> String {
    let body = signed(instance, flow);
    let mac = key.sign(DOMAIN, body.as_bytes());
    let hex: String = mac[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("{PREFIX}{body}-{hex}")
}

/// The flow and edge instance a token names, if it is one of ours and its MAC verifies.
pub fn decode(key: &NonceKey, token: &str) -> Option<(String, FlowId)> {
    let rest = token.strip_prefix(PREFIX)?;
    let (body, mac_hex) = rest.rsplit_once('-')?;
    let (flow_hex, instance) = body.split_once('-')?;
    if mac_hex.len() != 16 || instance.is_empty() {
        return None;
    }
    let mut mac = [0u8; 8];
    for (i, b) in mac.iter_mut().enumerate() {
        *b = u8::from_str_radix(mac_hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    let full = key.sign(DOMAIN, body.as_bytes());
    // Compare the truncated MAC the same way (constant time on the prefix).
    if !key.verify_signature(DOMAIN, body.as_bytes(), &[&mac[..], &full[8..]].concat()) {
        return None;
    }
    let flow = u64::from_str_radix(flow_hex, 16).ok()?;
    Some((instance.to_owned(), FlowId(flow)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn tokens_round_trip_and_forgeries_fail() {
        let key = NonceKey::new("0123456789abcdef0123", Duration::from_secs(30)).unwrap();
        let other = NonceKey::new("another-secret-entirely", Duration::from_secs(30)).unwrap();
        let t = encode(&key, "a1b2c3", FlowId(42));
        assert_eq!(decode(&key, &t), Some(("a1b2c3".into(), FlowId(42))));
        assert_eq!(decode(&other, &t), None, "another cluster's secret");
        let forged = t.replace("scf-2a-", "scf-2b-");
        assert_eq!(decode(&key, &forged), None, "flow id changed");
        for junk in [
            "",
            "scf-",
            "scf-2a-a1b2c3",
            "alice",
            "scf-zz-x-0000000000000000",
        ] {
            assert_eq!(decode(&key, junk), None, "{junk}");
        }
    }
}
