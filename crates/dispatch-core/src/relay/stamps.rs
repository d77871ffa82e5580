//! What the dispatcher writes into the messages it relays and reads back from them: its
//! Via (branch, the client's connection and transport, the signed client address, the
//! dialog token handed to the edge, the signed TLS peer identity) and the Path / Record-Route URIs naming a client.

use std::net::SocketAddr;

use sip_core::fnv::Fnv1a;
use sip_core::{SipMessage, Via};
use sip_txn::{FlowId, Target, Transport};

use super::{
    DIALOG_PARAM, FLOW_PARAM, FLOW_TRANSPORT_PARAM, PEER_PARAM, RELAY_BRANCH, Relay, SOURCE_PARAM,
};
use crate::token::{FlowToken, TokenKey};

pub(super) fn sip_transport(v: &Via<'_>) -> Option<Transport> {
    Transport::from_token(v.transport.as_str())
}

/// How the client's request came in, from our own Via: its connection (`;scflow=<id>`),
/// if any, and the transport it spoke when that differs from what its Via names
/// (`;scflowt=UDP`).
#[derive(Clone, Copy)]
pub(super) struct Arrival {
    flow: Option<FlowId>,
    transport: Option<Transport>,
}

pub(super) fn arrival_of(ours: &Via<'_>) -> Arrival {
    let flow = ours
        .params
        .get(FLOW_PARAM)
        .flatten()
        .and_then(|v| std::str::from_utf8(v.raw()).ok())
        .and_then(|v| u64::from_str_radix(v, 16).ok())
        .map(FlowId);
    let transport = ours
        .params
        .get(FLOW_TRANSPORT_PARAM)
        .flatten()
        .and_then(|t| Transport::from_token(std::str::from_utf8(t.raw()).ok()?));
    Arrival { flow, transport }
}

/// Where a response goes for this Via: back the way the request came. A request that came
/// in on a connection is answered on that connection, and one that came by datagram by
/// datagram, whatever transport its Via names (§18.2.2: "the server transport uses the
/// same connection"; Kamailio and OpenSIPS do the same), so a client whose Via says UDP
/// but that spoke TCP still hears back, and the other way round.
pub(super) fn via_target(v: &Via<'_>, arrival: Arrival) -> Option<Target> {
    Target::for_response(v, arrival.transport, arrival.flow)
}

/// Is this a dispatcher's Via (its relay branch)? An edge behind a dispatcher reads the
/// client's own Via, the one below, for where a request really came from.
pub fn is_dispatcher_via(v: &Via<'_>) -> bool {
    v.branch.is_some_and(|b| b.starts_with(RELAY_BRANCH))
}

/// What an edge may believe of a request a dispatcher relayed: the client's address as
/// the dispatcher saw it, and the dialog token of the Record-Route the dispatcher popped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relayed<'m> {
    /// The client's address.
    pub client: SocketAddr,
    /// The `dlg` token of the dispatcher's own Route the request came through.
    pub dialog: Option<&'m str>,
    /// Who the client's verified TLS certificate says it is (its first DNS name).
    pub peer: Option<String>,
}

/// Read and verify the top Via as a dispatcher's. `None` when it is not one, or when its
/// signature fails (a look-alike written by whoever reached the edge directly): then
/// nothing in it is believed and the packet's source stands.
pub fn relayed_by_dispatcher<'m>(key: &TokenKey, top: &Via<'m>) -> Option<Relayed<'m>> {
    let branch = top.branch.filter(|b| b.starts_with(RELAY_BRANCH))?;
    let param = |name: &str| {
        top.params
            .get(name)
            .flatten()
            .and_then(|v| std::str::from_utf8(v.raw()).ok())
    };
    let client = key.verify_source(branch, param(SOURCE_PARAM)?)?;
    // A peer parameter that does not verify is not believed; the rest of the Via is.
    let peer = param(PEER_PARAM).and_then(|p| key.verify_peer(branch, p));
    Some(Relayed {
        client,
        dialog: param(DIALOG_PARAM),
        peer,
    })
}

/// A dispatcher's Via without the parameters meant for the edge only (`scsrc`, `dlg`,
/// `scpeer`),
/// for the copy an edge forwards: a callee that saw a signed client address could
/// otherwise put that Via on its own request to an edge. `None` when there is nothing to
/// remove.
pub fn without_edge_params(via_raw: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(via_raw).ok()?;
    let mut parts = text.split(';');
    let head = parts.next()?;
    let mut removed = false;
    let mut out = String::with_capacity(text.len());
    out.push_str(head);
    for p in parts {
        let name = p.split('=').next().unwrap_or_default().trim();
        if name.eq_ignore_ascii_case(SOURCE_PARAM)
            || name.eq_ignore_ascii_case(DIALOG_PARAM)
            || name.eq_ignore_ascii_case(PEER_PARAM)
        {
            removed = true;
        } else {
            out.push(';');
            out.push_str(p);
        }
    }
    removed.then(|| out.into_bytes())
}

/// The `dlg` parameter of a Route/Record-Route URI.
pub fn dialog_param<'a>(uri: &sip_core::SipUri<'a>) -> Option<&'a str> {
    uri.params.get(DIALOG_PARAM).flatten()
}

/// `<sip:...;lr>` with `;dlg=token` added inside the URI (before its `?headers` or the
/// closing bracket).
pub fn with_dialog_param(name_addr: &[u8], token: &str) -> Vec<u8> {
    with_uri_param(name_addr, &format!(";{DIALOG_PARAM}={token}"))
}

/// `name_addr` with `param` (`;name=value`) added inside its URI: before its `?headers`
/// or its closing bracket.
pub(crate) fn with_uri_param(name_addr: &[u8], param: &str) -> Vec<u8> {
    let end = name_addr
        .iter()
        .position(|&b| b == b'?')
        .or_else(|| name_addr.iter().rposition(|&b| b == b'>'))
        .unwrap_or(name_addr.len());
    let mut out = Vec::with_capacity(name_addr.len() + param.len());
    out.extend_from_slice(&name_addr[..end]);
    out.extend_from_slice(param.as_bytes());
    out.extend_from_slice(&name_addr[end..]);
    out
}

impl Relay {
    /// The branch of our Via for a request: a function of the sender's transaction, so a
    /// retransmission, its CANCEL and the ACK of a failure all get the same one (§16.11).
    pub(super) fn branch_hash(msg: &SipMessage, top: &Via<'_>) -> u64 {
        let mut h = Fnv1a::new();
        h.field(top.sent_by.host.to_string().as_bytes());
        h.field(&top.sent_by.port.unwrap_or(0).to_le_bytes());
        match top.branch.filter(|_| top.is_rfc3261_branch()) {
            Some(b) => {
                h.field(b.as_bytes());
            }
            None => {
                h.field(msg.request_uri_raw().unwrap_or_default());
                h.field(msg.from_tag().ok().flatten().unwrap_or_default().as_bytes());
                h.field(msg.call_id().unwrap_or_default().as_bytes());
                h.field(&msg.cseq().map(|c| c.seq.to_le_bytes()).unwrap_or_default());
                h.field(top.raw);
            }
        }
        crate::hashing::mix(h.finish())
    }

    /// The dialog token of a dialog-creating request (`None` without a From tag, which
    /// RFC 3261 makes mandatory: such a dialog gets no in-dialog requests through us).
    pub(super) fn dialog_token(&self, msg: &SipMessage, call_id: &str) -> Option<String> {
        let tag = msg.from_tag().ok().flatten()?;
        Some(self.key.dialog_token(call_id, tag))
    }

    /// The Path / Record-Route URI naming the client at `source` on this dispatcher;
    /// a Record-Route carries the dialog's token.
    pub(super) fn client_uri(&self, source: Target, nat: bool, dialog: Option<&str>) -> String {
        let edge_tcp = self.cfg.edge_transport != Transport::Udp;
        let token = FlowToken {
            instance: self.cfg.instance,
            internal: SocketAddr::new(
                self.cfg.internal.advertise,
                self.cfg.internal.port(self.cfg.edge_transport),
            ),
            internal_tcp: edge_tcp,
            client: source.addr,
            nat,
            flow: source.flow.map(|f| f.0),
            secure: matches!(source.transport, Transport::Tls | Transport::Wss),
            websocket: matches!(source.transport, Transport::Ws | Transport::Wss),
        };
        // Topology hiding: the internal address in the token is sealed too.
        let token = if self.cfg.topology_hiding {
            token.encode_sealed(&self.key)
        } else {
            token.encode(&self.key)
        };
        let p = &self.cfg.public;
        let dlg = dialog
            .map(|d| format!(";{DIALOG_PARAM}={d}"))
            .unwrap_or_default();
        match source.transport {
            Transport::Udp => format!(
                "<sip:{token}@{}:{}{dlg};lr>",
                p.host(),
                p.port(Transport::Udp)
            ),
            t => format!(
                "<sip:{token}@{}:{};transport={}{dlg};lr>",
                p.host(),
                p.port(t),
                t.as_str().to_ascii_lowercase()
            ),
        }
    }
}
