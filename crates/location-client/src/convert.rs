//! Registrar types ⇄ `sipcluster.location.v1` messages.
//!
//! Conversions from the wire are fallible ([`ConvertError`]): the location service must
//! refuse a malformed request with INVALID_ARGUMENT, never panic or store garbage.

use std::net::SocketAddr;

use sip_registrar::{
    Aor, Binding, ContactSpec, RegisterError, RegisterOutcome, RegisterRequest, RequestContact,
    Source,
};

use crate::pb;

/// A message field the registrar cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {problem}")]
pub struct ConvertError {
    /// The field.
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

fn bad(field: &'static str, problem: impl ToString) -> ConvertError {
    ConvertError {
        field,
        problem: problem.to_string(),
    }
}

fn opt(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

/// A q-value from the wire (thousandths, at most 1000).
fn q_from(q: u32) -> Result<u16, ConvertError> {
    u16::try_from(q)
        .ok()
        .filter(|q| *q <= 1000)
        .ok_or_else(|| bad("q", format!("{q} is not in 0..=1000")))
}

/// A nonce's remembering time as `UseNonceRequest.ttl_secs`: whole seconds rounded up (a
/// use must not be forgotten before its nonce goes stale), at least 1.
pub fn ttl_secs(ttl: std::time::Duration) -> u32 {
    let secs = ttl
        .as_secs()
        .saturating_add(u64::from(ttl.subsec_nanos() > 0));
    u32::try_from(secs.max(1)).unwrap_or(u32::MAX)
}

/// Parse an AOR received over the wire; it must already be canonical.
pub fn aor_from(text: &str) -> Result<Aor, ConvertError> {
    let aor = Aor::parse(text).map_err(|e| bad("aor", e))?;
    if aor.as_str() != text {
        return Err(bad("aor", format!("{text:?} is not canonical ({aor})")));
    }
    Ok(aor)
}

/// [`Source`] to the wire.
pub fn source_to(s: &Source) -> pb::Source {
    pb::Source {
        transport: s.transport.clone(),
        remote: s.remote.to_string(),
        flow_token: s.flow_token.clone().unwrap_or_default(),
        edge_id: s.edge_id.clone().unwrap_or_default(),
        edge_uri: s.edge_uri.clone().unwrap_or_default(),
    }
}

/// [`Source`] from the wire.
pub fn source_from(s: pb::Source) -> Result<Source, ConvertError> {
    let remote: SocketAddr = s.remote.parse().map_err(|e| bad("source.remote", e))?;
    if s.transport.is_empty() {
        return Err(bad("source.transport", "empty"));
    }
    Ok(Source {
        transport: s.transport,
        remote,
        flow_token: opt(&s.flow_token),
        edge_id: opt(&s.edge_id),
        edge_uri: opt(&s.edge_uri),
    })
}

/// [`Binding`] to the wire (and to the Redis value).
pub fn binding_to(b: &Binding) -> pb::Binding {
    pb::Binding {
        aor: b.aor.as_str().to_owned(),
        contact: b.contact.clone(),
        expires_at: b.expires_at,
        q: u32::from(b.q),
        call_id: b.call_id.clone(),
        cseq: b.cseq,
        path: b.path.clone(),
        instance: b.instance.clone(),
        reg_id: b.reg_id,
        source: b.source.as_ref().map(source_to),
        user_agent: b.user_agent.clone(),
        registered_at: b.registered_at,
    }
}

/// [`Binding`] from the wire (or from the Redis value).
pub fn binding_from(b: pb::Binding) -> Result<Binding, ConvertError> {
    Ok(Binding {
        aor: aor_from(&b.aor)?,
        contact: b.contact,
        expires_at: b.expires_at,
        q: q_from(b.q)?,
        call_id: b.call_id,
        cseq: b.cseq,
        path: b.path,
        instance: b.instance,
        reg_id: b.reg_id,
        source: b.source.map(source_from).transpose()?,
        user_agent: b.user_agent,
        registered_at: b.registered_at,
    })
}

/// Bindings from the wire, all or nothing.
pub fn bindings_from(v: Vec<pb::Binding>) -> Result<Vec<Binding>, ConvertError> {
    v.into_iter().map(binding_from).collect()
}

/// [`RegisterRequest`] to the wire.
pub fn request_to(r: &RegisterRequest) -> pb::RegisterRequest {
    pb::RegisterRequest {
        aor: r.aor.as_str().to_owned(),
        call_id: r.call_id.clone(),
        cseq: r.cseq,
        contacts: r
            .contacts
            .iter()
            .map(|c| match c {
                RequestContact::Star => pb::Contact {
                    star: true,
                    ..pb::Contact::default()
                },
                RequestContact::Addr(a) => pb::Contact {
                    star: false,
                    uri: a.uri.clone(),
                    expires: a.expires,
                    q: a.q.map(u32::from),
                    instance: a.instance.clone(),
                    reg_id: a.reg_id,
                },
            })
            .collect(),
        expires: r.expires,
        path: r.path.clone(),
        user_agent: r.user_agent.clone(),
        source: r.source.as_ref().map(source_to),
        received_at: r.received_at,
    }
}

/// [`RegisterRequest`] from the wire. Contact URIs are checked by the rules, exactly as
/// for a request parsed locally.
pub fn request_from(r: pb::RegisterRequest) -> Result<RegisterRequest, ConvertError> {
    if r.call_id.is_empty() {
        return Err(bad("call_id", "empty"));
    }
    let contacts = r
        .contacts
        .into_iter()
        .map(|c| {
            Ok(if c.star {
                RequestContact::Star
            } else {
                RequestContact::Addr(ContactSpec {
                    uri: c.uri,
                    expires: c.expires,
                    q: c.q.map(q_from).transpose()?,
                    instance: c.instance,
                    reg_id: c.reg_id,
                })
            })
        })
        .collect::<Result<Vec<_>, ConvertError>>()?;
    Ok(RegisterRequest {
        aor: aor_from(&r.aor)?,
        call_id: r.call_id,
        cseq: r.cseq,
        contacts,
        expires: r.expires,
        path: r.path,
        user_agent: r.user_agent,
        source: r.source.map(source_from).transpose()?,
        received_at: r.received_at,
    })
}

/// A refusal by the rules, for the wire.
pub fn refused_to(e: &RegisterError) -> pb::Refused {
    use pb::refused::Reason;
    let mut r = pb::Refused {
        status: u32::from(e.status()),
        detail: e.to_string(),
        ..pb::Refused::default()
    };
    let reason = match e {
        RegisterError::InvalidWildcard => Reason::InvalidWildcard,
        RegisterError::IntervalTooBrief { min_expires } => {
            r.min_expires = *min_expires;
            Reason::IntervalTooBrief
        }
        RegisterError::OutOfOrder { stored, received } => {
            r.stored_cseq = *stored;
            r.received_cseq = *received;
            Reason::OutOfOrder
        }
        RegisterError::TooManyContacts { limit } => {
            r.limit = u32::try_from(*limit).unwrap_or(u32::MAX);
            Reason::TooManyContacts
        }
        RegisterError::InvalidContact(_) => Reason::InvalidContact,
        _ => Reason::InvalidAor,
    };
    r.set_reason(reason);
    r
}

/// A refusal from the wire, as the rules' error (so the edge answers exactly as it would
/// for a local store).
pub fn refused_from(r: &pb::Refused) -> RegisterError {
    use pb::refused::Reason;
    match r.reason() {
        Reason::InvalidWildcard => RegisterError::InvalidWildcard,
        Reason::IntervalTooBrief => RegisterError::IntervalTooBrief {
            min_expires: r.min_expires,
        },
        Reason::OutOfOrder => RegisterError::OutOfOrder {
            stored: r.stored_cseq,
            received: r.received_cseq,
        },
        Reason::TooManyContacts => RegisterError::TooManyContacts {
            limit: usize::try_from(r.limit).unwrap_or(usize::MAX),
        },
        Reason::InvalidContact => RegisterError::InvalidContact("refused by the location service"),
        Reason::InvalidAor | Reason::Unspecified => {
            RegisterError::InvalidAor("refused by the location service")
        }
    }
}

/// An accepted outcome, for the wire.
pub fn outcome_to(o: &RegisterOutcome, now: u64) -> pb::RegisterReply {
    let n = |x: usize| u32::try_from(x).unwrap_or(u32::MAX);
    pb::RegisterReply {
        bindings: o.bindings.iter().map(binding_to).collect(),
        added: n(o.added),
        updated: n(o.updated),
        removed: n(o.removed),
        expired: n(o.expired),
        now,
        refused: None,
    }
}

/// The reply as the rules' result: the outcome, or the refusal.
pub fn outcome_from(
    r: pb::RegisterReply,
) -> Result<Result<RegisterOutcome, RegisterError>, ConvertError> {
    if let Some(refused) = &r.refused {
        return Ok(Err(refused_from(refused)));
    }
    let n = |x: u32| usize::try_from(x).unwrap_or(usize::MAX);
    let counts = [n(r.added), n(r.updated), n(r.removed), n(r.expired)];
    Ok(Ok(RegisterOutcome::new(
        bindings_from(r.bindings)?,
        r.now,
        counts,
    )))
}

/// Digest credentials to the wire.
pub fn credentials_to(c: &sip_auth::Credentials) -> pb::Credentials {
    pb::Credentials {
        ha1_md5: c
            .ha1(sip_auth::Algorithm::Md5)
            .unwrap_or_default()
            .to_owned(),
        ha1_sha256: c
            .ha1(sip_auth::Algorithm::Sha256)
            .unwrap_or_default()
            .to_owned(),
    }
}

/// Digest credentials from the wire (hex HA1s, at least one).
pub fn credentials_from(c: &pb::Credentials) -> Result<sip_auth::Credentials, ConvertError> {
    sip_auth::Credentials::from_ha1_hex(
        (!c.ha1_md5.is_empty()).then_some(c.ha1_md5.as_str()),
        (!c.ha1_sha256.is_empty()).then_some(c.ha1_sha256.as_str()),
    )
    .map_err(|e| bad("credentials", e))
}

/// Merge `update` into `stored` the way `put_dialog` defines: set fields win.
pub fn merge_dialog(stored: &mut crate::pb::Dialog, update: &crate::pb::Dialog) {
    fn s(dst: &mut String, src: &str) {
        if !src.is_empty() {
            src.clone_into(dst);
        }
    }
    fn n<T: Copy + PartialEq + Default>(dst: &mut T, src: T) {
        if src != T::default() {
            *dst = src;
        }
    }
    s(&mut stored.call_id, &update.call_id);
    s(&mut stored.from_tag, &update.from_tag);
    s(&mut stored.to_tag, &update.to_tag);
    s(&mut stored.caller, &update.caller);
    s(&mut stored.callee, &update.callee);
    n(&mut stored.started_at_ms, update.started_at_ms);
    n(&mut stored.answered_at_ms, update.answered_at_ms);
    n(&mut stored.ended_at_ms, update.ended_at_ms);
    s(&mut stored.edge_id, &update.edge_id);
    s(&mut stored.media_relay, &update.media_relay);
    n(&mut stored.status, update.status);
    s(&mut stored.end_reason, &update.end_reason);
    if !update.call.is_empty() {
        stored.call.clone_from(&update.call);
    }
    n(
        &mut stored.session_expires_secs,
        update.session_expires_secs,
    );
    n(&mut stored.expires_at_ms, update.expires_at_ms);
}

/// The `end_reason` of a call in progress that an operator asked the cluster to end
/// (`TerminateDialog`): set before the record ends, kept when the reaper ends it.
pub const TERMINATED: &str = "admin";

/// Why a reaped dialog record ended: [`TERMINATED`] when an operator asked for it,
/// `session-expired` when it had a session interval (RFC 4028), else `ttl` (a BYE that
/// never came).
pub fn reaped_reason(d: &crate::pb::Dialog) -> &'static str {
    if d.end_reason == TERMINATED {
        TERMINATED
    } else if d.session_expires_secs > 0 {
        "session-expired"
    } else {
        "ttl"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sip_registrar::{Policy, apply_register};

    fn request() -> RegisterRequest {
        RegisterRequest {
            aor: Aor::parse("sip:alice@example.com").unwrap(),
            call_id: "c1".into(),
            cseq: 7,
            contacts: vec![
                RequestContact::Addr(ContactSpec {
                    uri: "sip:alice@192.0.2.1:5060".into(),
                    expires: Some(600),
                    q: Some(500),
                    instance: Some("<urn:uuid:1>".into()),
                    reg_id: Some(1),
                }),
                RequestContact::Addr(ContactSpec::new("sip:alice@192.0.2.2")),
            ],
            expires: Some(300),
            path: vec!["<sip:p.example.com;lr>".into()],
            user_agent: Some("UA/1".into()),
            source: Some(Source {
                transport: "TCP".into(),
                remote: "[2001:db8::1]:40000".parse().unwrap(),
                flow_token: Some("7".into()),
                edge_id: Some("e1".into()),
                edge_uri: Some("sip:f7@192.0.2.9:5060;lr".into()),
            }),
            received_at: 1000,
        }
    }

    #[test]
    fn requests_and_bindings_round_trip() {
        let req = request();
        assert_eq!(request_from(request_to(&req)).unwrap(), req);
        let out = apply_register(&[], &req, &Policy::default(), 1000).unwrap();
        let back = outcome_from(outcome_to(&out, 1000)).unwrap().unwrap();
        assert_eq!(back, out);
    }

    #[test]
    fn every_refusal_round_trips_with_its_status() {
        for e in [
            RegisterError::InvalidWildcard,
            RegisterError::IntervalTooBrief { min_expires: 60 },
            RegisterError::OutOfOrder {
                stored: 5,
                received: 4,
            },
            RegisterError::TooManyContacts { limit: 3 },
        ] {
            let back = refused_from(&refused_to(&e));
            assert_eq!(back, e);
            assert_eq!(back.status(), e.status());
        }
        let back = refused_from(&refused_to(&RegisterError::InvalidContact("x")));
        assert_eq!(back.status(), 400);
    }

    #[test]
    fn nonce_ttls_round_up_to_whole_seconds() {
        use std::time::Duration;
        assert_eq!(ttl_secs(Duration::from_secs(300)), 300);
        assert_eq!(ttl_secs(Duration::from_millis(1500)), 2);
        assert_eq!(ttl_secs(Duration::ZERO), 1);
        assert_eq!(ttl_secs(Duration::from_secs(u64::MAX)), u32::MAX);
    }

    #[test]
    fn malformed_wire_values_are_refused_not_stored() {
        let mut b = binding_to(
            &apply_register(&[], &request(), &Policy::default(), 1000)
                .unwrap()
                .bindings[0],
        );
        b.q = 1001;
        assert_eq!(binding_from(b.clone()).unwrap_err().field, "q");
        b.q = 1000;
        b.aor = "sip:Alice@EXAMPLE.com".into();
        assert_eq!(binding_from(b.clone()).unwrap_err().field, "aor");
        b.aor = "sip:alice@example.com".into();
        b.source.as_mut().unwrap().remote = "nope".into();
        assert_eq!(binding_from(b).unwrap_err().field, "source.remote");
        let mut r = request_to(&request());
        r.call_id.clear();
        assert_eq!(request_from(r).unwrap_err().field, "call_id");
    }
}
