//! Bindings: what the location service stores for each contact of an address-of-record.

use std::net::SocketAddr;

use crate::aor::Aor;

/// The q-value of a contact that carries none, in thousandths: 1.0.
///
/// RFC 3261 §16.6/§20.10 leave the absent q to the implementation; 1.0 (the highest) is
/// the common choice, so a UA that does not care about priorities is not ranked below
/// one that says `q=0.9`.
pub const DEFAULT_Q: u16 = 1000;

/// Where a REGISTER came from, as the edge saw it: what is needed to reach the UA behind
/// a NAT (RFC 3581 `received`/`rport`) or over its own connection (RFC 5626 flows).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Source {
    /// Transport the request arrived on, as in a Via (`UDP`, `TCP`, `TLS`, `WS`, `WSS`).
    pub transport: String,
    /// The packet's source address and port (what `received`/`rport` would record).
    pub remote: SocketAddr,
    /// Token naming the client's connection at the dispatcher that holds it (RFC 5626
    /// §5.2 flow token), when there is one.
    pub flow_token: Option<String>,
    /// The edge instance that handled the REGISTER, for diagnostics and flow affinity.
    pub edge_id: Option<String>,
    /// A SIP URI reaching that edge, carrying the flow token (`sip:TOKEN@10.0.0.5:5060;lr`):
    /// another edge sends requests for this contact there when the contact can only be
    /// reached over the client's own connection.
    pub edge_uri: Option<String>,
}

/// One contact bound to an address-of-record (RFC 3261 §10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The address-of-record this binding belongs to.
    pub aor: Aor,
    /// The contact URI as written by the UA, without the surrounding `<>`.
    pub contact: String,
    /// When the binding lapses, in Unix seconds. A binding with `expires_at <= now` does
    /// not exist any more, whether or not it has been deleted yet.
    pub expires_at: u64,
    /// Preference in thousandths (`q=0.5` is 500), [`DEFAULT_Q`] when the contact had none.
    pub q: u16,
    /// Call-ID of the REGISTER that last wrote this binding.
    pub call_id: String,
    /// CSeq number of the REGISTER that last wrote this binding.
    pub cseq: u32,
    /// Path header values of that REGISTER (RFC 3327), in the order received (topmost
    /// first), each as written (`<sip:edge1.example.com;lr>`): the route set requests to
    /// this contact must take.
    pub path: Vec<String>,
    /// `+sip.instance` (RFC 5626), as between its quotes (e.g. `<urn:uuid:...>`).
    pub instance: Option<String>,
    /// `reg-id` (RFC 5626).
    pub reg_id: Option<u32>,
    /// Where the REGISTER came from, if the edge recorded it.
    pub source: Option<Source>,
    /// User-Agent of that REGISTER, if any.
    pub user_agent: Option<String>,
    /// When the binding was last written, in Unix seconds (orders equal-q contacts).
    pub registered_at: u64,
}

impl Binding {
    /// True while the binding has not lapsed.
    pub fn is_live(&self, now: u64) -> bool {
        self.expires_at > now
    }

    /// Seconds left before the binding lapses (0 once it has).
    pub fn remaining(&self, now: u64) -> u64 {
        self.expires_at.saturating_sub(now)
    }

    /// True when the binding is an RFC 5626 outbound registration (instance and reg-id),
    /// which are matched on those two rather than on the URI.
    pub fn is_outbound(&self) -> bool {
        self.instance.is_some() && self.reg_id.is_some()
    }
}
