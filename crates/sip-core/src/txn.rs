//! Transaction and dialog identifiers (RFC 3261 §17.1.3, §17.2.3, §12).
//!
//! Keys borrow from the message so that computing one costs no allocation; the
//! transaction layer copies what it keeps with [`ServerKey::to_owned`].

use std::hash::{Hash, Hasher};

use bytes::Bytes;

use crate::error::Error;
use crate::headers::via::HostPort;
use crate::message::SipMessage;
use crate::method::Method;

/// The method a server transaction is matched on: ACK matches the INVITE transaction it
/// acknowledges; CANCEL has its own transaction (§17.2.3, §9.2).
#[inline]
fn match_method(m: Method<'_>) -> Method<'_> {
    if m == Method::Ack { Method::Invite } else { m }
}

/// Server transaction key of a request.
#[derive(Debug, Clone, Copy)]
pub enum ServerKey<'a> {
    /// §17.2.3 with a magic-cookie branch: branch + sent-by + method.
    Rfc3261 {
        /// Top Via branch (case-sensitive).
        branch: &'a str,
        /// Top Via sent-by.
        sent_by: HostPort<'a>,
        /// Request method, ACK folded into INVITE.
        method: Method<'a>,
    },
    /// RFC 2543 fallback: Request-URI, From tag, Call-ID, CSeq, top Via as written.
    ///
    /// The To tag is not part of the key: an ACK carries the tag of the response while
    /// the INVITE did not. The transaction layer compares it separately where §17.2.3
    /// requires ([`SipMessage::to_tag`]).
    Rfc2543 {
        /// Request-URI as written.
        request_uri: &'a [u8],
        /// From tag, if any.
        from_tag: Option<&'a str>,
        /// Call-ID.
        call_id: &'a str,
        /// CSeq number.
        cseq: u32,
        /// Top Via hop as written.
        top_via: &'a [u8],
        /// Request method, ACK folded into INVITE.
        method: Method<'a>,
    },
}

impl PartialEq for ServerKey<'_> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (
                ServerKey::Rfc3261 {
                    branch: b1,
                    sent_by: s1,
                    method: m1,
                },
                ServerKey::Rfc3261 {
                    branch: b2,
                    sent_by: s2,
                    method: m2,
                },
            ) => b1 == b2 && m1 == m2 && s1.same_as(s2),
            (
                ServerKey::Rfc2543 {
                    request_uri: u1,
                    from_tag: f1,
                    call_id: c1,
                    cseq: n1,
                    top_via: v1,
                    method: m1,
                },
                ServerKey::Rfc2543 {
                    request_uri: u2,
                    from_tag: f2,
                    call_id: c2,
                    cseq: n2,
                    top_via: v2,
                    method: m2,
                },
            ) => n1 == n2 && c1 == c2 && f1 == f2 && m1 == m2 && u1 == u2 && v1 == v2,
            _ => false,
        }
    }
}

impl Eq for ServerKey<'_> {}

impl Hash for ServerKey<'_> {
    // Hashes only fields compared byte-exactly, so equal keys hash equally even when the
    // sent-by host differs in case.
    fn hash<H: Hasher>(&self, state: &mut H) {
        match self {
            ServerKey::Rfc3261 {
                branch,
                method,
                sent_by,
            } => {
                0u8.hash(state);
                branch.hash(state);
                method.hash(state);
                sent_by.port.hash(state);
            }
            ServerKey::Rfc2543 {
                call_id,
                cseq,
                from_tag,
                method,
                ..
            } => {
                1u8.hash(state);
                call_id.hash(state);
                cseq.hash(state);
                from_tag.hash(state);
                method.hash(state);
            }
        }
    }
}

/// An owned server transaction key, for a transaction table that outlives the message.
/// The branch (or Call-ID) is a slice of the message's shared buffer; the lower-cased
/// sent-by and the method are small copies.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OwnedServerKey {
    /// For RFC 3261 keys: the branch; for RFC 2543 keys: the Call-ID.
    pub id: Bytes,
    /// Remaining identifying bytes: lower-cased sent-by, or Request-URI + From tag + top Via.
    pub rest: Bytes,
    /// The method the transaction is matched on.
    pub method: Bytes,
    /// CSeq number for RFC 2543 keys, 0 otherwise.
    pub cseq: u32,
}

/// Client transaction key of a response: top Via branch + CSeq method (§17.1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey<'a> {
    /// Top Via branch.
    pub branch: &'a str,
    /// CSeq method (distinguishes a CANCEL's responses from its INVITE's).
    pub method: Method<'a>,
}

/// The identifiers of a dialog as seen in one message (§12): Call-ID and both tags, in
/// From/To terms. Use [`DialogId::local_remote`] to orient them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DialogId<'a> {
    /// Call-ID.
    pub call_id: &'a str,
    /// From tag.
    pub from_tag: &'a str,
    /// To tag; `None` before the dialog exists (initial request, 100 Trying).
    pub to_tag: Option<&'a str>,
}

impl<'a> DialogId<'a> {
    /// (local tag, remote tag) for the element that sent (`uac = true`) or received the
    /// request this id came from.
    pub fn local_remote(&self, uac: bool) -> (Option<&'a str>, Option<&'a str>) {
        if uac {
            (Some(self.from_tag), self.to_tag)
        } else {
            (self.to_tag, Some(self.from_tag))
        }
    }
}

impl SipMessage {
    /// Server transaction key of a request (§17.2.3).
    pub fn server_key(&self) -> Result<ServerKey<'_>, Error> {
        let method = self
            .method()
            .ok_or(Error::BadRequestLine("not a request"))?;
        let via = self.top_via()?;
        if via.is_rfc3261_branch()
            && let Some(branch) = via.branch
        {
            return Ok(ServerKey::Rfc3261 {
                branch,
                sent_by: via.sent_by,
                method: match_method(method),
            });
        }
        Ok(ServerKey::Rfc2543 {
            request_uri: self.request_uri_raw().unwrap_or_default(),
            from_tag: self.from_tag()?,
            call_id: self.call_id()?,
            cseq: self.cseq()?.seq,
            top_via: via.raw,
            method: match_method(method),
        })
    }

    /// The server transaction key as an owned value ([`OwnedServerKey`]).
    pub fn owned_server_key(&self) -> Result<OwnedServerKey, Error> {
        let b = self.bytes();
        let slice = |s: &[u8]| {
            if s.is_empty() {
                Bytes::new()
            } else {
                b.slice_ref(s)
            }
        };
        Ok(match self.server_key()? {
            ServerKey::Rfc3261 {
                branch,
                sent_by,
                method,
            } => OwnedServerKey {
                id: slice(branch.as_bytes()),
                rest: Bytes::from(sent_by.to_string().to_ascii_lowercase()),
                method: Bytes::copy_from_slice(method.as_str().as_bytes()),
                cseq: 0,
            },
            ServerKey::Rfc2543 {
                request_uri,
                from_tag,
                call_id,
                cseq,
                top_via,
                method,
            } => {
                let mut rest = Vec::with_capacity(request_uri.len() + top_via.len() + 32);
                rest.extend_from_slice(request_uri);
                rest.push(0);
                rest.extend_from_slice(from_tag.unwrap_or_default().as_bytes());
                rest.push(0);
                rest.extend_from_slice(top_via);
                OwnedServerKey {
                    id: slice(call_id.as_bytes()),
                    rest: rest.into(),
                    method: Bytes::copy_from_slice(method.as_str().as_bytes()),
                    cseq,
                }
            }
        })
    }

    /// Client transaction key of a response (§17.1.3): branch and CSeq method.
    pub fn client_key(&self) -> Result<ClientKey<'_>, Error> {
        let via = self.top_via()?;
        let branch = via
            .branch
            .ok_or(Error::BadHeader("Via", "missing branch"))?;
        Ok(ClientKey {
            branch,
            method: self.cseq()?.method,
        })
    }

    /// The key of the INVITE transaction a CANCEL cancels (§9.2): same branch and sent-by,
    /// method INVITE.
    pub fn cancelled_invite_key(&self) -> Result<ServerKey<'_>, Error> {
        match self.server_key()? {
            ServerKey::Rfc3261 {
                branch,
                sent_by,
                method: Method::Cancel,
            } => Ok(ServerKey::Rfc3261 {
                branch,
                sent_by,
                method: Method::Invite,
            }),
            ServerKey::Rfc2543 {
                request_uri,
                from_tag,
                call_id,
                cseq,
                top_via,
                method: Method::Cancel,
            } => Ok(ServerKey::Rfc2543 {
                request_uri,
                from_tag,
                call_id,
                cseq,
                top_via,
                method: Method::Invite,
            }),
            _ => Err(Error::BadRequestLine("not a CANCEL")),
        }
    }

    /// Dialog identifiers (§12). Errors when Call-ID, From or its tag is missing.
    pub fn dialog_id(&self) -> Result<DialogId<'_>, Error> {
        Ok(DialogId {
            call_id: self.call_id()?,
            from_tag: self
                .from_tag()?
                .ok_or(Error::BadHeader("From", "missing tag"))?,
            to_tag: self.to_tag()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn req(s: &str) -> SipMessage {
        SipMessage::parse(s.as_bytes().to_vec()).unwrap()
    }

    const INV: &str = "INVITE sip:b@h SIP/2.0\r\nVia: SIP/2.0/UDP a.example.com:5060;branch=z9hG4bK74bf9\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@h>\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\nl: 0\r\n\r\n";

    #[test]
    fn rfc3261_keys() {
        let inv = req(INV);
        let ack = req(&INV
            .replace("INVITE sip", "ACK sip")
            .replace("1 INVITE", "1 ACK")
            .replace("To: <sip:b@h>", "To: <sip:b@h>;tag=9"));
        let cancel = req(&INV
            .replace("INVITE sip", "CANCEL sip")
            .replace("1 INVITE", "1 CANCEL"));
        let upper = req(&INV.replace("a.example.com", "A.EXAMPLE.COM"));
        let other_port = req(&INV.replace(":5060", ":5070"));
        let k = inv.server_key().unwrap();
        assert!(matches!(
            k,
            ServerKey::Rfc3261 {
                branch: "z9hG4bK74bf9",
                method: Method::Invite,
                ..
            }
        ));
        assert_eq!(k, ack.server_key().unwrap());
        assert_ne!(k, cancel.server_key().unwrap());
        assert_eq!(k, cancel.cancelled_invite_key().unwrap());
        assert_eq!(k, upper.server_key().unwrap());
        assert_ne!(k, other_port.server_key().unwrap());
        let mut set = HashSet::new();
        set.insert(k);
        assert!(set.contains(&upper.server_key().unwrap()));
        assert!(set.contains(&ack.server_key().unwrap()));
        assert_eq!(
            inv.owned_server_key().unwrap(),
            upper.owned_server_key().unwrap()
        );
        assert_ne!(
            inv.owned_server_key().unwrap(),
            other_port.owned_server_key().unwrap()
        );
        assert!(inv.cancelled_invite_key().is_err());
    }

    #[test]
    fn rfc2543_keys() {
        let old = INV.replace(";branch=z9hG4bK74bf9", "");
        let inv = req(&old);
        let k = inv.server_key().unwrap();
        assert!(matches!(
            k,
            ServerKey::Rfc2543 {
                cseq: 1,
                call_id: "c1",
                from_tag: Some("1"),
                method: Method::Invite,
                ..
            }
        ));
        let ack = req(&old
            .replace("INVITE sip", "ACK sip")
            .replace("1 INVITE", "1 ACK")
            .replace("To: <sip:b@h>", "To: <sip:b@h>;tag=9"));
        assert_eq!(k, ack.server_key().unwrap());
        let retrans = req(&old);
        assert_eq!(
            inv.owned_server_key().unwrap(),
            retrans.owned_server_key().unwrap()
        );
        let next = req(&old.replace("1 INVITE", "2 INVITE"));
        assert_ne!(k, next.server_key().unwrap());
        // A bare magic cookie is not an RFC 3261 branch (RFC 4475 §3.2.1).
        let bare = req(&INV.replace("z9hG4bK74bf9", "z9hG4bK"));
        assert!(matches!(
            bare.server_key().unwrap(),
            ServerKey::Rfc2543 { .. }
        ));
    }

    #[test]
    fn client_and_dialog() {
        let resp = req(
            "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@h>;tag=2\r\nCall-ID: c1\r\nCSeq: 5 CANCEL\r\nl: 0\r\n\r\n",
        );
        assert_eq!(
            resp.client_key().unwrap(),
            ClientKey {
                branch: "z9hG4bKx",
                method: Method::Cancel
            }
        );
        let d = resp.dialog_id().unwrap();
        assert_eq!(
            d,
            DialogId {
                call_id: "c1",
                from_tag: "1",
                to_tag: Some("2")
            }
        );
        assert_eq!(d.local_remote(true), (Some("1"), Some("2")));
        assert_eq!(d.local_remote(false), (Some("2"), Some("1")));
    }
}
