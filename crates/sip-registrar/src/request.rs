//! What the registrar needs from a REGISTER, owned so it can cross a task, a lock or a gRPC
//! call.

use sip_core::{Contact, Method, SipMessage, Uri, unescape_quoted};

use crate::aor::Aor;
use crate::binding::Source;
use crate::error::RegisterError;

/// One Contact value of a REGISTER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestContact {
    /// `Contact: *`: remove every binding (valid only alone, with `Expires: 0`).
    Star,
    /// An address to add, refresh or remove.
    Addr(ContactSpec),
}

/// A Contact address with the parameters the registrar acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactSpec {
    /// The contact URI as written, without the surrounding `<>`.
    pub uri: String,
    /// The `expires` parameter (seconds).
    pub expires: Option<u32>,
    /// The `q` parameter in thousandths (0..=1000).
    pub q: Option<u16>,
    /// `+sip.instance` (RFC 5626), between its quotes, quoted-pair escapes removed.
    pub instance: Option<String>,
    /// `reg-id` (RFC 5626).
    pub reg_id: Option<u32>,
}

impl ContactSpec {
    /// A contact with only a URI (no parameters), for building requests in code.
    pub fn new(uri: impl Into<String>) -> ContactSpec {
        ContactSpec {
            uri: uri.into(),
            expires: None,
            q: None,
            instance: None,
            reg_id: None,
        }
    }
}

/// A REGISTER, reduced to what the rules of RFC 3261 §10.3 read.
///
/// Built from a parsed message by [`from_message`](Self::from_message), or field by field
/// by a location service that received it over gRPC. Nothing here is checked against the
/// rules yet: [`apply_register`](crate::apply_register) does that, so a request that
/// crossed the network is judged exactly like a local one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterRequest {
    /// The address-of-record, from the To header.
    pub aor: Aor,
    /// Call-ID.
    pub call_id: String,
    /// CSeq number.
    pub cseq: u32,
    /// Contact values in order across all Contact lines; empty for a query.
    pub contacts: Vec<RequestContact>,
    /// The Expires header.
    pub expires: Option<u32>,
    /// Path header values (RFC 3327), topmost first, each name-addr as written.
    pub path: Vec<String>,
    /// User-Agent header, lossily decoded as UTF-8.
    pub user_agent: Option<String>,
    /// Where the request came from (recorded on the bindings it writes).
    pub source: Option<Source>,
    /// When the edge received the request (Unix seconds). Diagnostic only: the rules use
    /// the `now` the store passes, so that expiry times of one AOR all come from one clock.
    pub received_at: u64,
}

impl RegisterRequest {
    /// Extract a registration request from a parsed REGISTER.
    ///
    /// Reads To (the AOR: [`Aor::from_uri`]), Call-ID, CSeq (its method must be
    /// REGISTER), every Contact value, Expires, Path and User-Agent. Each value is parsed
    /// with the sip-core accessors, so a malformed one is a [`RegisterError::Message`]
    /// naming the defect (answered 400). Rule violations (`*` misuse, short intervals,
    /// ordering) are not judged here.
    pub fn from_message(
        msg: &SipMessage,
        now: u64,
        source: Option<Source>,
    ) -> Result<RegisterRequest, RegisterError> {
        if msg.method() != Some(Method::Register) {
            return Err(RegisterError::NotRegister);
        }
        let cseq = msg.cseq()?;
        if cseq.method != Method::Register {
            return Err(RegisterError::NotRegister);
        }
        let aor = Aor::from_uri(&msg.to_header()?.parsed_uri()?)?;
        let call_id = msg.call_id()?.to_owned();
        let expires = msg.expires()?;
        let mut contacts = Vec::new();
        for c in msg.contacts() {
            contacts.push(match c? {
                Contact::Star => RequestContact::Star,
                Contact::Addr(a) => {
                    // Parse now so that a contact the rules could not compare is refused
                    // before it is stored.
                    let uri = Uri::parse(a.addr.uri)?;
                    let instance = match a.instance {
                        Some(raw) => Some(
                            String::from_utf8(unescape_quoted(raw).into_owned()).map_err(|_| {
                                RegisterError::InvalidContact("non-UTF-8 +sip.instance")
                            })?,
                        ),
                        None => None,
                    };
                    RequestContact::Addr(ContactSpec {
                        uri: uri_text(&uri),
                        expires: a.expires,
                        q: a.q.map(|q| q.0),
                        instance,
                        reg_id: a.reg_id,
                    })
                }
            });
        }
        let mut path = Vec::new();
        for p in msg.paths() {
            let p = p?;
            p.parsed_uri()?;
            let text = std::str::from_utf8(p.raw)
                .map_err(|_| sip_core::Error::BadHeader("Path", "non-UTF-8 value"))?;
            path.push(text.trim().to_owned());
        }
        Ok(RegisterRequest {
            aor,
            call_id,
            cseq: cseq.seq,
            contacts,
            expires,
            path,
            user_agent: msg
                .user_agent()
                .map(|ua| String::from_utf8_lossy(ua).into_owned()),
            source,
            received_at: now,
        })
    }

    /// True when the request has no Contact: it only asks for the current bindings.
    pub fn is_query(&self) -> bool {
        self.contacts.is_empty()
    }
}

/// The URI text as written. Every parsed URI is UTF-8 (sip-core refuses others), so the
/// text is the input bytes.
fn uri_text(uri: &Uri<'_>) -> String {
    match uri {
        Uri::Sip(u) => u.raw.to_owned(),
        Uri::Tel(t) => t.raw.to_owned(),
        Uri::Other { scheme, opaque } => format!("{scheme}:{opaque}"),
    }
}
