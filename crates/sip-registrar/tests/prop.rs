//! Random sequences of REGISTERs against `apply_register` (and `MemoryStore`), checked
//! against a reference model written independently of the URI parser, plus invariants.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::collections::BTreeSet;

use common::{block_on, reg};
use proptest::prelude::*;
use sip_registrar::{
    Aor, Binding, LocationStore, MemoryStore, Policy, RegisterError, StoreError, apply_register,
    live_bindings,
};

/// Contact URIs, each with its equivalence class as RFC 3261 §19.1.4 defines it, worked
/// out by hand: the model compares classes, never URIs.
const URIS: [(&str, u8); 8] = [
    ("sip:alice@192.0.2.1", 0),
    ("sip:alice@192.0.2.1;ob", 0), // other params in one URI only are ignored
    ("sip:%61lice@192.0.2.1", 0),  // escapes decoded
    ("sip:alice@192.0.2.1:5060", 1), // absent port is not 5060
    ("sip:alice@Host.Example.com;transport=tcp", 2),
    ("sip:alice@host.example.COM;TRANSPORT=TCP", 2), // host and params case-insensitive
    ("sip:alice@host.example.com", 3),               // transport in one URI only differs
    ("sip:Alice@192.0.2.1", 4),                      // user part is case-sensitive
];

/// (instance, reg-id) pairs a contact may carry; index 0 of the generator means none.
const INSTANCES: [(&str, u32); 3] = [
    ("<urn:uuid:00000000-0000-1000-8000-000A95A0E128>", 1),
    ("<urn:uuid:00000000-0000-1000-8000-000a95a0e128>", 2), // same instance, other flow
    ("<urn:uuid:11111111-0000-1000-8000-000000000000>", 1),
];

const POLICY: Policy = Policy {
    default_expires: 100,
    min_expires: 60,
    max_expires: 300,
    max_contacts: 3,
};

#[derive(Debug, Clone)]
struct C {
    uri: usize,
    /// 0 = none, else `INSTANCES[inst - 1]`.
    inst: usize,
    expires: Option<u32>,
    q: Option<u16>,
}

#[derive(Debug, Clone)]
enum Body {
    Query,
    Star { extra: bool },
    List(Vec<C>),
}

#[derive(Debug, Clone)]
struct Op {
    dt: u64,
    call_id: u8,
    cseq: u32,
    expires: Option<u32>,
    body: Body,
}

fn contact_strategy() -> impl Strategy<Value = C> {
    (
        0..URIS.len(),
        0..=INSTANCES.len(),
        prop::option::of(prop::sample::select(vec![0u32, 30, 59, 60, 120, 5000])),
        prop::option::of(prop::sample::select(vec![500u16, 1000])),
    )
        .prop_map(|(uri, inst, expires, q)| C {
            uri,
            inst,
            expires,
            q,
        })
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let body = prop_oneof![
        1 => Just(Body::Query),
        1 => any::<bool>().prop_map(|extra| Body::Star { extra }),
        6 => prop::collection::vec(contact_strategy(), 1..5).prop_map(Body::List),
    ];
    (
        0u64..150,
        0u8..3,
        1u32..8,
        prop_oneof![
            2 => Just(None),
            2 => Just(Some(0u32)),
            1 => prop::sample::select(vec![30u32, 90, 1000]).prop_map(Some),
        ],
        body,
    )
        .prop_map(|(dt, call_id, cseq, expires, body)| Op {
            dt,
            call_id,
            cseq,
            expires,
            body,
        })
}

fn message(op: &Op) -> common::Reg {
    let mut r = reg(&format!("call-{}", op.call_id), op.cseq);
    if let Some(e) = op.expires {
        r = r.expires(e);
    }
    match &op.body {
        Body::Query => {}
        Body::Star { extra } => {
            r = r.contact("*");
            if *extra {
                r = r.contact("<sip:alice@192.0.2.1>");
            }
        }
        Body::List(cs) => {
            for c in cs {
                let mut v = format!("<{}>", URIS[c.uri].0);
                if c.inst > 0 {
                    let (i, id) = INSTANCES[c.inst - 1];
                    v.push_str(&format!(";+sip.instance=\"{i}\";reg-id={id}"));
                }
                if let Some(e) = c.expires {
                    v.push_str(&format!(";expires={e}"));
                }
                if let Some(q) = c.q {
                    v.push_str(if q == 500 { ";q=0.5" } else { ";q=1" });
                }
                r = r.contact(&v);
            }
        }
    }
    r
}

// ------------------------------------------------------------------- the reference model

/// A binding as the model sees it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct M {
    uri: usize,
    inst: usize,
    call_id: u8,
    cseq: u32,
    expires_at: u64,
    q: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Wildcard,
    TooBrief,
    OutOfOrder,
    TooMany,
}

fn kind(e: &RegisterError) -> Kind {
    match e {
        RegisterError::InvalidWildcard => Kind::Wildcard,
        RegisterError::IntervalTooBrief { min_expires } => {
            assert_eq!(*min_expires, POLICY.min_expires);
            Kind::TooBrief
        }
        RegisterError::OutOfOrder { stored, received } => {
            assert!(received <= stored);
            Kind::OutOfOrder
        }
        RegisterError::TooManyContacts { limit } => {
            assert_eq!(*limit, POLICY.max_contacts);
            Kind::TooMany
        }
        other => panic!("unexpected error {other:?}"),
    }
}

/// Two contacts are the same binding: instance and reg-id when both have them (the
/// `INSTANCES` entries differ pairwise), the hand-made URI class otherwise.
fn same(b: &M, c: &C) -> bool {
    if b.inst > 0 && c.inst > 0 {
        b.inst == c.inst
    } else {
        URIS[b.uri].1 == URIS[c.uri].1
    }
}

fn model(state: &[M], op: &Op, now: u64) -> Result<Vec<M>, Kind> {
    let live: Vec<M> = state
        .iter()
        .filter(|b| b.expires_at > now)
        .cloned()
        .collect();
    let out_of_order = |b: &M| b.call_id == op.call_id && op.cseq <= b.cseq;
    let cs = match &op.body {
        Body::Query => return Ok(live),
        Body::Star { extra } => {
            if *extra || op.expires != Some(0) {
                return Err(Kind::Wildcard);
            }
            if live.iter().any(out_of_order) {
                return Err(Kind::OutOfOrder);
            }
            return Ok(Vec::new());
        }
        Body::List(cs) => cs,
    };
    if cs.len() > POLICY.max_contacts + live.len() {
        return Err(Kind::TooMany);
    }
    let mut secs = Vec::new();
    for c in cs {
        secs.push(match c.expires.or(op.expires) {
            Some(0) => None,
            Some(s) if s < 60 => return Err(Kind::TooBrief),
            Some(s) => Some(u64::from(s.min(300))),
            None => Some(100),
        });
    }
    // (binding, written by this request)
    let mut work: Vec<(M, bool)> = live.iter().cloned().map(|b| (b, false)).collect();
    for (c, s) in cs.iter().zip(secs) {
        if work
            .iter()
            .any(|(b, fresh)| !fresh && same(b, c) && out_of_order(b))
        {
            return Err(Kind::OutOfOrder);
        }
        work.retain(|(b, _)| !same(b, c));
        if let Some(s) = s {
            work.push((
                M {
                    uri: c.uri,
                    inst: c.inst,
                    call_id: op.call_id,
                    cseq: op.cseq,
                    expires_at: now + s,
                    q: c.q.unwrap_or(1000),
                },
                true,
            ));
        }
    }
    if work.len() > POLICY.max_contacts && work.len() > live.len() {
        return Err(Kind::TooMany);
    }
    Ok(work.into_iter().map(|(b, _)| b).collect())
}

// ------------------------------------------------------------------- the implementation

fn to_model(b: &Binding) -> M {
    let uri = URIS
        .iter()
        .position(|(u, _)| *u == b.contact)
        .unwrap_or_else(|| panic!("stored contact {:?} is not one we sent", b.contact));
    let inst = match (&b.instance, b.reg_id) {
        (Some(i), Some(r)) => {
            1 + INSTANCES
                .iter()
                .position(|(ii, rr)| ii == i && *rr == r)
                .unwrap()
        }
        _ => 0,
    };
    M {
        uri,
        inst,
        call_id: b.call_id.strip_prefix("call-").unwrap().parse().unwrap(),
        cseq: b.cseq,
        expires_at: b.expires_at,
        q: b.q,
    }
}

fn as_set(v: impl IntoIterator<Item = M>) -> BTreeSet<M> {
    v.into_iter().collect()
}

fn check_invariants(bindings: &[Binding], now: u64) -> Result<(), TestCaseError> {
    prop_assert!(
        bindings.len() <= POLICY.max_contacts,
        "limit exceeded: {bindings:?}"
    );
    for b in bindings {
        prop_assert!(b.expires_at > now, "dead binding returned: {b:?} at {now}");
        prop_assert!(b.expires_at - now <= u64::from(POLICY.max_expires));
    }
    for w in bindings.windows(2) {
        prop_assert!(
            (w[0].q, w[0].registered_at) >= (w[1].q, w[1].registered_at),
            "not in lookup order: {bindings:?}"
        );
    }
    Ok(())
}

proptest! {
    // Failures print their minimal input; a regressions file beside an integration test would
    // only be found by path guessing, so none is written.
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn register_sequences_follow_the_model(ops in prop::collection::vec(op_strategy(), 1..40)) {
        let aor = Aor::parse("sip:alice@example.com").unwrap();
        let store = MemoryStore::new(POLICY);
        let mut now = 1_700_000_000u64;
        let mut state: Vec<Binding> = Vec::new();
        let mut expected: Vec<M> = Vec::new();
        for op in &ops {
            now += op.dt;
            let r = message(op);
            let req = r.request(now);
            let want = model(&expected, op, now);
            let got = apply_register(&state, &req, &POLICY, now);
            let before = block_on(store.lookup(&aor, now)).unwrap();
            let stored = block_on(store.register(req, now));
            let after = block_on(store.lookup(&aor, now)).unwrap();
            match (&got, &want) {
                (Ok(out), Ok(want_set)) => {
                    prop_assert_eq!(
                        as_set(out.bindings.iter().map(to_model)),
                        as_set(want_set.iter().cloned()),
                        "{}", r.text()
                    );
                    prop_assert_eq!(out.bindings.len(), want_set.len(), "duplicates");
                    check_invariants(&out.bindings, now)?;
                    // The 200 OK lists exactly the stored bindings with what they have left.
                    prop_assert_eq!(out.contacts.len(), out.bindings.len());
                    for (c, b) in out.contacts.iter().zip(&out.bindings) {
                        prop_assert_eq!(&c.uri, &b.contact);
                        prop_assert_eq!(c.expires, b.expires_at - now);
                    }
                    // The store ran the same rules on the same set (its lookups may have
                    // pruned lapsed bindings already, so only the `expired` count may differ).
                    let stored = stored.as_ref().map_err(|e| TestCaseError::fail(e.to_string()))?;
                    prop_assert_eq!(&stored.bindings, &out.bindings);
                    prop_assert_eq!(&stored.contacts, &out.contacts);
                    prop_assert_eq!(&after, &out.bindings);
                    state = out.bindings.clone();
                    expected = want_set.clone();
                }
                (Err(e), Err(k)) => {
                    prop_assert_eq!(kind(e), *k, "{}", r.text());
                    // A failed request changes nothing.
                    prop_assert_eq!(stored, Err(StoreError::Rule(e.clone())));
                    prop_assert_eq!(&after, &before);
                    prop_assert_eq!(&after, &live_bindings(&state, now));
                }
                _ => prop_assert!(false, "implementation {:?}, model {:?}\n{}", got, want, r.text()),
            }
            check_invariants(&after, now)?;
        }
    }

    /// The canonical AOR text is a fixed point, and AORs differing only in escapes or
    /// host case are equal while a user differing in case is not.
    #[test]
    fn aor_canonical_form(user in "[a-zA-Z0-9%;?/=+-]{1,12}", host in "[a-zA-Z]{1,8}\\.[a-z]{2,3}") {
        // Only keep inputs that are valid URIs (a stray `%` is not).
        if let Ok(a) = Aor::parse(&format!("sip:{user}@{host}")) {
            prop_assert_eq!(Aor::parse(a.as_str()), Ok(a.clone()));
            if user.contains('%') {
                return Ok(());
            }
            let escaped: String = user
                .bytes()
                .map(|b| if b.is_ascii_alphanumeric() { format!("%{b:02x}") } else { char::from(b).to_string() })
                .collect();
            let b = Aor::parse(&format!("sip:{escaped}@{}", host.to_ascii_uppercase())).unwrap();
            prop_assert_eq!(&a, &b);
            let flipped: String = user
                .chars()
                .map(|c| if c.is_ascii_lowercase() { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() })
                .collect();
            if flipped != user {
                let c = Aor::parse(&format!("sip:{flipped}@{host}")).unwrap();
                prop_assert_ne!(&a, &c);
            }
        }
    }
}
