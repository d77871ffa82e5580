//! The registration scenarios of RFC 3261 §10.2 (and the messages of §24.1 and §20.10),
//! RFC 3327 (Path) and RFC 5626 (outbound), end to end: message text → sip-core →
//! `RegisterRequest` → `MemoryStore` → the 200 OK's Contact list.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use common::{block_on, reg, uris};
use sip_core::SipMessage;
use sip_registrar::{Aor, LocationStore, MemoryStore, Policy, RegisterOutcome, RegisterRequest};

const T0: u64 = 1_700_000_000;

/// RFC 3261 §24.1, message F1, verbatim.
const F1: &str = "REGISTER sip:registrar.biloxi.com SIP/2.0\r\n\
Via: SIP/2.0/UDP bobspc.biloxi.com:5060;branch=z9hG4bKnashds7\r\n\
Max-Forwards: 70\r\n\
To: Bob <sip:bob@biloxi.com>\r\n\
From: Bob <sip:bob@biloxi.com>;tag=456248\r\n\
Call-ID: 843817637684230@998sdasdh09\r\n\
CSeq: 1826 REGISTER\r\n\
Contact: <sip:bob@192.0.2.4>\r\n\
Expires: 7200\r\n\
Content-Length: 0\r\n\r\n";

fn bob() -> common::Reg {
    reg("843817637684230@998sdasdh09", 1826).to("Bob <sip:bob@biloxi.com>")
}

fn send(store: &MemoryStore, r: &common::Reg, now: u64) -> RegisterOutcome {
    block_on(store.register(r.request(now), now)).unwrap_or_else(|e| panic!("{e}\n{}", r.text()))
}

fn bob_bindings(store: &MemoryStore, now: u64) -> Vec<sip_registrar::Binding> {
    block_on(store.lookup(&Aor::parse("sip:bob@biloxi.com").unwrap(), now)).unwrap()
}

/// §10.2.1 adding a binding, with §24.1's F1 and F2 (`Contact: <sip:bob@192.0.2.4>;expires=7200`).
#[test]
fn adding_a_binding_rfc3261_24_1() {
    let store = MemoryStore::new(Policy::default());
    let msg = SipMessage::parse(F1.as_bytes().to_vec()).unwrap();
    msg.validate_request().unwrap();
    let req = RegisterRequest::from_message(&msg, T0, None).unwrap();
    let out = block_on(store.register(req, T0)).unwrap();
    assert_eq!(out.added, 1);
    assert_eq!(
        out.contact_header().as_deref(),
        Some("<sip:bob@192.0.2.4>;expires=7200")
    );
    let found = bob_bindings(&store, T0 + 1);
    assert_eq!(uris(&found), ["sip:bob@192.0.2.4"]);
    assert_eq!(found[0].call_id, "843817637684230@998sdasdh09");
    assert_eq!(found[0].cseq, 1826);
}

/// §10.2.4 refreshing: same Call-ID, CSeq one higher, new interval.
#[test]
fn refreshing_a_binding() {
    let store = MemoryStore::new(Policy::default());
    send(
        &store,
        &bob().contact("<sip:bob@192.0.2.4>").expires(7200),
        T0,
    );
    let r = reg("843817637684230@998sdasdh09", 1827)
        .to("Bob <sip:bob@biloxi.com>")
        .contact("<sip:bob@192.0.2.4>")
        .expires(3600);
    let out = send(&store, &r, T0 + 3000);
    assert_eq!((out.added, out.updated), (0, 1));
    assert_eq!(
        out.contact_header().as_deref(),
        Some("<sip:bob@192.0.2.4>;expires=3600")
    );
    assert_eq!(bob_bindings(&store, T0 + 3001)[0].expires_at, T0 + 6600);
    // The retransmission of that refresh (same CSeq) is out of order: 500, no change.
    let e = block_on(store.register(r.request(T0 + 3002), T0 + 3002)).unwrap_err();
    assert_eq!(e.status(), 500);
    assert_eq!(bob_bindings(&store, T0 + 3002)[0].cseq, 1827);
}

/// §10.2.1.2 / §20.10: several contacts with q-values and per-contact expiry (including a
/// non-SIP contact, which a registrar stores like any other URI).
#[test]
fn multiple_contacts_with_q_values_rfc3261_20_10() {
    let store = MemoryStore::new(Policy::default());
    let r = bob().contact(
        "\"Mr. Watson\" <sip:watson@worcester.bell-telephone.com>\r\n  ;q=0.7; expires=3600,\r\n  \"Mr. Watson\" <mailto:watson@bell-telephone.com> ;q=0.1",
    );
    let out = send(&store, &r, T0);
    assert_eq!(out.added, 2);
    assert_eq!(
        out.contact_header().as_deref(),
        Some(
            "<sip:watson@worcester.bell-telephone.com>;expires=3600;q=0.7, \
             <mailto:watson@bell-telephone.com>;expires=3600;q=0.1"
        )
    );
    // A third contact without q ranks first (q defaults to 1.0).
    let r = reg("843817637684230@998sdasdh09", 1827)
        .to("Bob <sip:bob@biloxi.com>")
        .contact("<sip:bob@192.0.2.4>;expires=600");
    send(&store, &r, T0 + 10);
    assert_eq!(
        uris(&bob_bindings(&store, T0 + 11)),
        [
            "sip:bob@192.0.2.4",
            "sip:watson@worcester.bell-telephone.com",
            "mailto:watson@bell-telephone.com"
        ]
    );
}

/// §10.2.2: removing one binding with `expires=0`, then all of them with `*`.
#[test]
fn removing_one_then_all_bindings() {
    let store = MemoryStore::new(Policy::default());
    send(
        &store,
        &bob().contact("<sip:bob@192.0.2.4>, <sip:bob@198.51.100.9:5062>"),
        T0,
    );
    let one = reg("843817637684230@998sdasdh09", 1827)
        .to("Bob <sip:bob@biloxi.com>")
        .contact("<sip:bob@192.0.2.4>;expires=0");
    let out = send(&store, &one, T0 + 5);
    assert_eq!(out.removed, 1);
    assert_eq!(
        out.contact_header().as_deref(),
        Some("<sip:bob@198.51.100.9:5062>;expires=3595")
    );
    let all = reg("other-call-id@bobspc", 1)
        .to("Bob <sip:bob@biloxi.com>")
        .contact("*")
        .expires(0);
    all.message().validate_request().unwrap();
    let out = send(&store, &all, T0 + 6);
    assert_eq!(out.removed, 1);
    assert_eq!(out.contact_header(), None);
    assert!(bob_bindings(&store, T0 + 6).is_empty());
    assert_eq!(block_on(store.stats(T0 + 6)).unwrap().aors, 0);
}

/// §10.2.3: a REGISTER without Contact fetches the bindings and changes nothing.
#[test]
fn fetching_bindings_without_contact() {
    let store = MemoryStore::new(Policy::default());
    send(
        &store,
        &bob().contact("<sip:bob@192.0.2.4>;q=0.9, <sip:bob@198.51.100.9>"),
        T0,
    );
    let before = bob_bindings(&store, T0 + 100);
    let query = reg("query@x", 1).to("Bob <sip:bob@biloxi.com>");
    let out = send(&store, &query, T0 + 100);
    assert!(!out.changed());
    assert_eq!(
        out.contact_values(),
        [
            "<sip:bob@198.51.100.9>;expires=3500",
            "<sip:bob@192.0.2.4>;expires=3500;q=0.9"
        ]
    );
    assert_eq!(bob_bindings(&store, T0 + 100), before);
}

/// RFC 3327 §5 (the visited/home network example): the Path values are stored as
/// received, topmost (added by the proxy nearest the registrar) first.
#[test]
fn path_is_stored_in_order_rfc3327() {
    let store = MemoryStore::new(Policy::default());
    let r = bob()
        .path("<sip:P2.EXAMPLEHOME.COM;lr>")
        .path("<sip:P1.EXAMPLEVISITED.COM;lr>, <sip:edge-3.sipcluster.internal;lr;ob>")
        .contact("<sip:bob@192.0.2.4>");
    send(&store, &r, T0);
    assert_eq!(
        bob_bindings(&store, T0)[0].path,
        [
            "<sip:P2.EXAMPLEHOME.COM;lr>",
            "<sip:P1.EXAMPLEVISITED.COM;lr>",
            "<sip:edge-3.sipcluster.internal;lr;ob>"
        ]
    );
    // A refresh through another route replaces the Path entirely.
    let r = reg("843817637684230@998sdasdh09", 1827)
        .to("Bob <sip:bob@biloxi.com>")
        .path("<sip:edge-7.sipcluster.internal;lr>")
        .contact("<sip:bob@192.0.2.4>");
    send(&store, &r, T0 + 60);
    assert_eq!(
        bob_bindings(&store, T0 + 60)[0].path,
        ["<sip:edge-7.sipcluster.internal;lr>"]
    );
}

/// RFC 5626 §6: a phone whose address changed (new NAT mapping, new Call-ID after a
/// reboot) re-registers with the same instance and reg-id: its binding is replaced, not
/// duplicated, while its second flow stays.
#[test]
fn outbound_reregistration_from_a_new_address_replaces_rfc5626() {
    let store = MemoryStore::new(Policy::default());
    let inst = "+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>\"";
    let first = reg("1j9FpLxk3uxtm8tn@192.0.2.10", 2).contact(&format!(
        "<sip:alice@192.0.2.10:5060;ob>;expires=3600;{inst};reg-id=1, \
         <sip:alice@192.0.2.10:5060;ob>;expires=3600;{inst};reg-id=2"
    ));
    let out = send(&store, &first, T0);
    assert_eq!(out.added, 2, "two flows of one instance are two bindings");
    let moved = reg("k3l2f9Q@198.51.100.23", 1).contact(&format!(
        "<sip:alice@198.51.100.23:40123;ob>;expires=3600;{inst};reg-id=1"
    ));
    let out = send(&store, &moved, T0 + 600);
    assert_eq!((out.added, out.updated), (0, 1));
    let found =
        block_on(store.lookup(&Aor::parse("sip:alice@example.com").unwrap(), T0 + 600)).unwrap();
    assert_eq!(found.len(), 2);
    assert_eq!(found[0].contact, "sip:alice@198.51.100.23:40123;ob");
    assert_eq!(found[0].reg_id, Some(1));
    assert_eq!(found[0].call_id, "k3l2f9Q@198.51.100.23");
    assert_eq!(found[1].reg_id, Some(2));
    assert_eq!(found[1].contact, "sip:alice@192.0.2.10:5060;ob");
}
