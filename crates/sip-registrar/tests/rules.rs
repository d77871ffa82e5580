//! Each rule of `apply_register`, driven by REGISTER messages parsed by sip-core.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use common::{reg, uris};
use sip_core::SipMessage;
use sip_registrar::{
    Aor, Binding, ContactSpec, Policy, RegisterError, RegisterRequest, RequestContact, Source,
    apply_register,
};

const T0: u64 = 1_700_000_000;

/// The bindings after applying a request that must succeed.
fn ok(r: &common::Reg, existing: &[Binding], now: u64) -> Vec<Binding> {
    r.apply(existing, now)
        .unwrap_or_else(|e| panic!("{e}\n{}", r.text()))
        .bindings
}

fn err(r: &common::Reg, existing: &[Binding], now: u64) -> RegisterError {
    match r.apply(existing, now) {
        Err(e) => e,
        Ok(o) => panic!("expected an error, got {o:?}\n{}", r.text()),
    }
}

// ---------------------------------------------------------------- expiry of stored data

#[test]
fn lapsed_bindings_are_dropped_before_anything_else() {
    let set = ok(
        &reg("c1", 5).contact("<sip:alice@192.0.2.10>;expires=60"),
        &[],
        T0,
    );
    assert_eq!(set[0].expires_at, T0 + 60);
    // One second before: still there. At expires_at: gone, and reported as expired.
    let q = reg("c9", 1).apply(&set, T0 + 59).unwrap();
    assert_eq!(q.bindings.len(), 1);
    assert_eq!(q.expired, 0);
    let q = reg("c9", 1).apply(&set, T0 + 60).unwrap();
    assert!(q.bindings.is_empty());
    assert_eq!(q.expired, 1);
    assert!(
        q.changed(),
        "the store must rewrite the set to drop the lapsed binding"
    );
    // A lapsed binding cannot make a request out of order: it no longer exists.
    let out = reg("c1", 1)
        .contact("<sip:alice@192.0.2.10>")
        .apply(&set, T0 + 60)
        .unwrap();
    assert_eq!((out.added, out.updated, out.expired), (1, 0, 1));
    // Nor can `*` from the same Call-ID with a lower CSeq.
    let out = reg("c1", 1)
        .contact("*")
        .expires(0)
        .apply(&set, T0 + 100)
        .unwrap();
    assert_eq!((out.removed, out.expired), (0, 1));
}

// ---------------------------------------------------------------- query

#[test]
fn no_contact_is_a_query_that_changes_nothing() {
    let set = ok(
        &reg("c1", 1)
            .contact("<sip:alice@192.0.2.10>;q=0.5")
            .contact("<sip:alice@198.51.100.7>"),
        &[],
        T0,
    );
    let out = reg("c2", 1).expires(0).apply(&set, T0 + 100).unwrap();
    assert_eq!(
        out.bindings, set,
        "a query returns the stored bindings untouched"
    );
    assert!(!out.changed());
    assert_eq!(
        (out.added, out.updated, out.removed, out.expired),
        (0, 0, 0, 0)
    );
    assert_eq!(
        out.contact_values(),
        [
            "<sip:alice@198.51.100.7>;expires=3500",
            "<sip:alice@192.0.2.10>;expires=3500;q=0.5"
        ]
    );
}

// ---------------------------------------------------------------- Contact: *

fn two_bindings() -> Vec<Binding> {
    let a = ok(&reg("c1", 5).contact("<sip:alice@192.0.2.10>"), &[], T0);
    ok(
        &reg("c2", 9).contact("<sip:alice@198.51.100.7>"),
        &a,
        T0 + 1,
    )
}

#[test]
fn star_removes_every_binding() {
    let set = two_bindings();
    let out = reg("c3", 1)
        .contact("*")
        .expires(0)
        .apply(&set, T0 + 2)
        .unwrap();
    assert!(out.bindings.is_empty());
    assert_eq!(out.removed, 2);
    assert_eq!(out.contact_header(), None);
    // Same Call-ID as a binding, higher CSeq: allowed.
    let out = reg("c1", 6)
        .contact("*")
        .expires(0)
        .apply(&set, T0 + 2)
        .unwrap();
    assert!(out.bindings.is_empty());
}

#[test]
fn star_needs_expires_zero() {
    let set = two_bindings();
    for r in [
        reg("c3", 1).contact("*"),
        reg("c3", 1).contact("*").expires(3600),
    ] {
        let e = err(&r, &set, T0 + 2);
        assert_eq!(e, RegisterError::InvalidWildcard);
        assert_eq!(e.status(), 400);
    }
}

#[test]
fn star_must_stand_alone() {
    let set = two_bindings();
    for r in [
        reg("c3", 1).contact("*, <sip:alice@192.0.2.99>").expires(0),
        reg("c3", 1)
            .contact("*")
            .contact("<sip:alice@192.0.2.99>")
            .expires(0),
        reg("c3", 1).contact("*").contact("*").expires(0),
    ] {
        assert_eq!(
            err(&r, &set, T0 + 2),
            RegisterError::InvalidWildcard,
            "{}",
            r.text()
        );
    }
}

#[test]
fn star_with_an_old_cseq_of_the_same_call_id_fails_whole() {
    let set = two_bindings(); // c1/5 and c2/9
    for cseq in [5, 4, 1] {
        let e = err(&reg("c1", cseq).contact("*").expires(0), &set, T0 + 2);
        assert_eq!(
            e,
            RegisterError::OutOfOrder {
                stored: 5,
                received: cseq
            }
        );
        assert_eq!(e.status(), 500);
    }
    // c2's binding blocks too, even though c1's alone would have allowed it.
    let e = err(&reg("c2", 9).contact("*").expires(0), &set, T0 + 2);
    assert_eq!(
        e,
        RegisterError::OutOfOrder {
            stored: 9,
            received: 9
        }
    );
}

// ---------------------------------------------------------------- expiry of requests

#[test]
fn contact_expires_parameter_wins_over_header_which_wins_over_default() {
    let set = ok(
        &reg("c1", 1)
            .contact("<sip:a@192.0.2.1>;expires=120")
            .contact("<sip:b@192.0.2.1>")
            .expires(600),
        &[],
        T0,
    );
    let exp = |u: &str| set.iter().find(|b| b.contact == u).unwrap().expires_at - T0;
    assert_eq!(exp("sip:a@192.0.2.1"), 120);
    assert_eq!(exp("sip:b@192.0.2.1"), 600);
    let set = ok(&reg("c1", 1).contact("<sip:a@192.0.2.1>"), &[], T0);
    assert_eq!(set[0].expires_at - T0, 3600, "policy default");
    // The parameter wins in the other direction too: Expires: 0 does not remove a contact
    // that asks for 300 s.
    let set = ok(
        &reg("c1", 1)
            .contact("<sip:a@192.0.2.1>;expires=300")
            .expires(0),
        &[],
        T0,
    );
    assert_eq!(set[0].expires_at - T0, 300);
}

#[test]
fn expiry_zero_removes_the_binding() {
    let set = two_bindings();
    let out = reg("c1", 6)
        .contact("<sip:alice@192.0.2.10>;expires=0")
        .apply(&set, T0 + 2)
        .unwrap();
    assert_eq!(uris(&out.bindings), ["sip:alice@198.51.100.7"]);
    assert_eq!(out.removed, 1);
    let out = reg("zz", 1)
        .contact("<sip:alice@198.51.100.7>")
        .expires(0)
        .apply(&set, T0 + 2)
        .unwrap();
    assert_eq!(uris(&out.bindings), ["sip:alice@192.0.2.10"]);
    // Removing a contact that is not bound is a successful no-op.
    let out = reg("zz", 1)
        .contact("<sip:alice@203.0.113.1>;expires=0")
        .apply(&set, T0 + 2)
        .unwrap();
    assert_eq!(out.bindings, set);
    assert_eq!((out.added, out.removed), (0, 0));
}

#[test]
fn an_interval_below_the_minimum_fails_the_whole_request_with_423() {
    let set = two_bindings();
    for r in [
        reg("c9", 1).contact("<sip:alice@203.0.113.1>;expires=59"),
        reg("c9", 1).contact("<sip:alice@203.0.113.1>").expires(1),
        // One bad contact among good ones: nothing applies.
        reg("c9", 1)
            .contact("<sip:alice@203.0.113.1>;expires=3600")
            .contact("<sip:alice@192.0.2.10>;expires=0")
            .contact("<sip:alice@203.0.113.2>;expires=30"),
    ] {
        let e = err(&r, &set, T0 + 2);
        assert_eq!(e, RegisterError::IntervalTooBrief { min_expires: 60 });
        assert_eq!(e.status(), 423);
        assert_eq!(e.min_expires(), Some(60));
    }
    // Exactly the minimum is fine.
    let out = ok(
        &reg("c9", 1).contact("<sip:alice@203.0.113.1>;expires=60"),
        &set,
        T0 + 2,
    );
    assert_eq!(out.len(), 3);
    // A custom minimum is what the 423 carries.
    let policy = Policy {
        min_expires: 300,
        ..Policy::default()
    };
    let e = reg("c9", 1)
        .contact("<sip:alice@203.0.113.1>;expires=299")
        .apply_with(&set, &policy, T0 + 2)
        .unwrap_err();
    assert_eq!(e.min_expires(), Some(300));
}

#[test]
fn an_interval_above_the_maximum_is_capped() {
    let set = ok(
        &reg("c1", 1)
            .contact("<sip:a@192.0.2.1>;expires=4294967295")
            .contact("<sip:b@192.0.2.1>;expires=7201")
            .contact("<sip:c@192.0.2.1>;expires=7200"),
        &[],
        T0,
    );
    assert!(set.iter().all(|b| b.expires_at == T0 + 7200), "{set:?}");
}

// ---------------------------------------------------------------- matching

#[test]
fn equivalent_uris_update_and_different_ones_add() {
    let set = ok(
        &reg("c1", 1).contact("<sip:%61lice@PC33.Example.COM;transport=TCP>"),
        &[],
        T0,
    );
    // §19.1.4: same URI (escapes decoded, host case-insensitive, param value case-insensitive).
    let out = reg("c1", 2)
        .contact("<sip:alice@pc33.example.com;Transport=tcp;ob>")
        .apply(&set, T0 + 10)
        .unwrap();
    assert_eq!((out.added, out.updated), (0, 1));
    assert_eq!(
        uris(&out.bindings),
        ["sip:alice@pc33.example.com;Transport=tcp;ob"],
        "the binding takes the contact as the latest REGISTER wrote it"
    );
    // Absent port is not 5060; a user part is case-sensitive; transport in one only differs.
    for other in [
        "<sip:alice@pc33.example.com:5060;transport=tcp>",
        "<sip:Alice@pc33.example.com;transport=tcp>",
        "<sip:alice@pc33.example.com>",
    ] {
        let out = reg("c1", 2).contact(other).apply(&set, T0 + 10).unwrap();
        assert_eq!((out.added, out.updated), (1, 0), "{other}");
        assert_eq!(out.bindings.len(), 2);
    }
}

#[test]
fn outbound_contacts_match_on_instance_and_reg_id_not_uri() {
    let inst = "\"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>\"";
    let set = ok(
        &reg("c1", 1).contact(&format!(
            "<sip:alice@192.0.2.10:5060;ob>;+sip.instance={inst};reg-id=1"
        )),
        &[],
        T0,
    );
    // The phone's address changed and it restarted (new Call-ID): same instance, same
    // reg-id, so the binding is replaced, not duplicated.
    let out = reg("c7", 1)
        .contact(&format!(
            "<sip:alice@198.51.100.23:40123;ob>;+sip.instance={};reg-id=1",
            inst.to_ascii_lowercase()
        ))
        .apply(&set, T0 + 30)
        .unwrap();
    assert_eq!((out.added, out.updated), (0, 1));
    assert_eq!(uris(&out.bindings), ["sip:alice@198.51.100.23:40123;ob"]);
    assert_eq!(out.bindings[0].call_id, "c7");
    // A second flow (reg-id 2) of the same instance is another binding.
    let out = reg("c1", 2)
        .contact(&format!(
            "<sip:alice@192.0.2.10:5060;ob>;+sip.instance={inst};reg-id=2"
        ))
        .apply(&set, T0 + 30)
        .unwrap();
    assert_eq!((out.added, out.updated), (1, 0));
    assert_eq!(out.bindings.len(), 2);
    // Same instance and reg-id, same Call-ID, old CSeq: out of order, even with a new URI.
    let e = err(
        &reg("c1", 1).contact(&format!(
            "<sip:alice@203.0.113.5;ob>;+sip.instance={inst};reg-id=1"
        )),
        &set,
        T0 + 30,
    );
    assert!(matches!(e, RegisterError::OutOfOrder { .. }), "{e:?}");
    // Without reg-id on the request, matching falls back to the URI.
    let out = reg("c1", 2)
        .contact(&format!(
            "<sip:alice@192.0.2.10:5060;ob>;+sip.instance={inst}"
        ))
        .apply(&set, T0 + 30)
        .unwrap();
    assert_eq!((out.added, out.updated), (0, 1));
    let out = reg("c1", 2)
        .contact(&format!("<sip:alice@203.0.113.5>;+sip.instance={inst}"))
        .apply(&set, T0 + 30)
        .unwrap();
    assert_eq!((out.added, out.updated), (1, 0));
}

#[test]
fn a_different_call_id_updates_or_removes_whatever_the_cseq() {
    let set = ok(&reg("c1", 1000).contact("<sip:alice@192.0.2.10>"), &[], T0);
    let out = reg("c2", 1)
        .contact("<sip:alice@192.0.2.10>;expires=900")
        .apply(&set, T0 + 5)
        .unwrap();
    assert_eq!(out.updated, 1);
    assert_eq!(out.bindings[0].call_id, "c2");
    assert_eq!(out.bindings[0].cseq, 1);
    assert_eq!(out.bindings[0].expires_at, T0 + 905);
    let out = reg("c3", 1)
        .contact("<sip:alice@192.0.2.10>;expires=0")
        .apply(&set, T0 + 5)
        .unwrap();
    assert!(out.bindings.is_empty());
}

#[test]
fn the_same_call_id_needs_a_higher_cseq() {
    let set = ok(&reg("c1", 10).contact("<sip:alice@192.0.2.10>"), &[], T0);
    for cseq in [10, 9, 0] {
        for r in [
            reg("c1", cseq).contact("<sip:alice@192.0.2.10>"),
            reg("c1", cseq).contact("<sip:alice@192.0.2.10>;expires=0"),
        ] {
            assert_eq!(
                err(&r, &set, T0 + 5),
                RegisterError::OutOfOrder {
                    stored: 10,
                    received: cseq
                }
            );
        }
    }
    let out = reg("c1", 11)
        .contact("<sip:alice@192.0.2.10>")
        .apply(&set, T0 + 5)
        .unwrap();
    assert_eq!(out.bindings[0].cseq, 11);
    // A non-matching binding with the same Call-ID does not make the request out of order.
    let out = reg("c1", 3)
        .contact("<sip:alice@203.0.113.9>")
        .apply(&set, T0 + 5)
        .unwrap();
    assert_eq!(out.bindings.len(), 2);
}

#[test]
fn a_failing_contact_leaves_every_other_contact_unapplied() {
    let set = ok(&reg("c1", 10).contact("<sip:alice@192.0.2.10>"), &[], T0);
    // First contact is new and fine, second is out of order: the error is the only result;
    // the caller has nothing to store.
    let r = reg("c1", 7)
        .contact("<sip:alice@203.0.113.1>")
        .contact("<sip:alice@192.0.2.10>;expires=0");
    assert!(matches!(
        err(&r, &set, T0 + 1),
        RegisterError::OutOfOrder { .. }
    ));
}

#[test]
fn written_bindings_carry_the_request_call_id_cseq_path_source_and_user_agent() {
    let src = Source {
        transport: "TCP".into(),
        remote: "198.51.100.7:40001".parse().unwrap(),
        flow_token: Some("flow-1".into()),
        edge_id: Some("edge-0".into()),
        edge_uri: Some("sip:f1@192.0.2.1:5060;lr".into()),
    };
    let r = reg("c1", 1)
        .contact("<sip:alice@10.0.0.2:5060>")
        .path("<sip:p1.example.com;lr>")
        .user_agent("Phone/1.0");
    let req = RegisterRequest::from_message(&r.message(), T0, Some(src.clone())).unwrap();
    let set = apply_register(&[], &req, &Policy::default(), T0)
        .unwrap()
        .bindings;
    let b = &set[0];
    assert_eq!(b.aor.as_str(), "sip:alice@example.com");
    assert_eq!((b.call_id.as_str(), b.cseq), ("c1", 1));
    assert_eq!(b.path, ["<sip:p1.example.com;lr>"]);
    assert_eq!(b.source.as_ref(), Some(&src));
    assert_eq!(b.user_agent.as_deref(), Some("Phone/1.0"));
    assert_eq!(b.registered_at, T0);
    // An update from elsewhere replaces all of them (Path included, even with none).
    let r2 = reg("c2", 1).contact("<sip:alice@10.0.0.2:5060>");
    let out = r2.apply(&set, T0 + 50).unwrap();
    let b = &out.bindings[0];
    assert_eq!((b.call_id.as_str(), b.cseq), ("c2", 1));
    assert!(b.path.is_empty());
    assert_eq!(b.source, None);
    assert_eq!(b.user_agent, None);
    assert_eq!(b.registered_at, T0 + 50);
    assert_eq!(b.q, 1000);
}

#[test]
fn a_refresh_without_q_returns_to_the_default() {
    let set = ok(
        &reg("c1", 1).contact("<sip:alice@192.0.2.10>;q=0.2"),
        &[],
        T0,
    );
    assert_eq!(set[0].q, 200);
    let set = ok(
        &reg("c1", 2).contact("<sip:alice@192.0.2.10>"),
        &set,
        T0 + 1,
    );
    assert_eq!(set[0].q, 1000);
}

#[test]
fn a_contact_repeated_in_one_request_counts_once_and_the_last_wins() {
    let out = reg("c1", 1)
        .contact("<sip:alice@192.0.2.10>;expires=100, <sip:alice@192.0.2.10>;expires=200")
        .apply(&[], T0)
        .unwrap();
    assert_eq!(out.bindings.len(), 1);
    assert_eq!(out.bindings[0].expires_at, T0 + 200);
    assert_eq!(out.added, 1);
    let out = reg("c1", 1)
        .contact("<sip:alice@192.0.2.10>, <sip:alice@192.0.2.10>;expires=0")
        .apply(&[], T0)
        .unwrap();
    assert!(out.bindings.is_empty());
}

// ---------------------------------------------------------------- contact limit

#[test]
fn growing_beyond_the_limit_fails_and_changes_nothing() {
    let policy = Policy {
        max_contacts: 2,
        ..Policy::default()
    };
    let set = two_bindings();
    let e = reg("c9", 1)
        .contact("<sip:alice@203.0.113.1>")
        .apply_with(&set, &policy, T0 + 2)
        .unwrap_err();
    assert_eq!(e, RegisterError::TooManyContacts { limit: 2 });
    assert_eq!(e.status(), 403);
    // Replacing one and adding one keeps the count at the limit: fine.
    let out = reg("c9", 1)
        .contact("<sip:alice@192.0.2.10>;expires=0, <sip:alice@203.0.113.1>")
        .apply_with(&set, &policy, T0 + 2)
        .unwrap();
    assert_eq!(out.bindings.len(), 2);
    // Refreshing a full set is fine.
    let out = reg("c1", 6)
        .contact("<sip:alice@192.0.2.10>")
        .apply_with(&set, &policy, T0 + 2)
        .unwrap();
    assert_eq!(out.bindings.len(), 2);
    // A lapsed binding does not count.
    let short = ok(
        &reg("c1", 6).contact("<sip:alice@192.0.2.10>;expires=60"),
        &set,
        T0 + 2,
    );
    let out = reg("c9", 1)
        .contact("<sip:alice@203.0.113.1>")
        .apply_with(&short, &policy, T0 + 62)
        .unwrap();
    assert_eq!(out.bindings.len(), 2);
}

#[test]
fn a_set_already_over_a_lowered_limit_can_still_be_refreshed_and_shrunk() {
    let policy = Policy {
        max_contacts: 1,
        ..Policy::default()
    };
    let set = two_bindings();
    let out = reg("c1", 6)
        .contact("<sip:alice@192.0.2.10>")
        .apply_with(&set, &policy, T0 + 2)
        .unwrap();
    assert_eq!(out.bindings.len(), 2);
    let out = reg("c1", 6)
        .contact("<sip:alice@192.0.2.10>;expires=0")
        .apply_with(&set, &policy, T0 + 2)
        .unwrap();
    assert_eq!(out.bindings.len(), 1);
    assert!(
        reg("c1", 6)
            .contact("<sip:alice@203.0.113.1>")
            .apply_with(&set, &policy, T0 + 2)
            .is_err()
    );
}

#[test]
fn more_contact_values_than_could_ever_fit_are_refused_up_front() {
    let policy = Policy {
        max_contacts: 2,
        ..Policy::default()
    };
    // Three values for an empty AOR with a limit of 2, even if they would collapse.
    let r = reg("c1", 1).contact(
        "<sip:alice@192.0.2.1>;expires=0, <sip:alice@192.0.2.2>;expires=0, <sip:alice@192.0.2.3>;expires=0",
    );
    assert_eq!(
        r.apply_with(&[], &policy, T0).unwrap_err(),
        RegisterError::TooManyContacts { limit: 2 }
    );
}

// ---------------------------------------------------------------- the 200 OK

#[test]
fn the_response_lists_every_binding_with_remaining_expiry_and_non_default_q() {
    let set = ok(
        &reg("c1", 1)
            .contact("<sip:alice@192.0.2.10>;q=0.7;expires=600")
            .contact("<sip:alice@198.51.100.7;transport=tcp>;q=1.0")
            .contact("<sip:alice@203.0.113.1>;q=0.125"),
        &[],
        T0,
    );
    let out = reg("c2", 1).apply(&set, T0 + 100).unwrap();
    assert_eq!(
        out.contact_header().unwrap(),
        "<sip:alice@198.51.100.7;transport=tcp>;expires=3500, \
         <sip:alice@192.0.2.10>;expires=500;q=0.7, \
         <sip:alice@203.0.113.1>;expires=3500;q=0.125"
    );
    assert_eq!(out.contacts[1].expires, 500);
    assert_eq!(out.contacts[1].q, 700);
}

#[test]
fn bindings_are_ordered_by_q_then_most_recent_registration() {
    let a = ok(&reg("c1", 1).contact("<sip:a@192.0.2.1>;q=0.5"), &[], T0);
    let b = ok(
        &reg("c2", 1).contact("<sip:b@192.0.2.1>;q=0.5"),
        &a,
        T0 + 10,
    );
    let c = ok(
        &reg("c3", 1).contact("<sip:c@192.0.2.1>;q=0.9"),
        &b,
        T0 + 20,
    );
    let d = ok(
        &reg("c4", 1).contact("<sip:d@192.0.2.1>;q=0.5"),
        &c,
        T0 + 20,
    );
    assert_eq!(
        uris(&d),
        [
            "sip:c@192.0.2.1",
            "sip:d@192.0.2.1",
            "sip:b@192.0.2.1",
            "sip:a@192.0.2.1"
        ]
    );
    // Refreshing a moves it ahead of the other 0.5s.
    let e = ok(
        &reg("c1", 2).contact("<sip:a@192.0.2.1>;q=0.5"),
        &d,
        T0 + 30,
    );
    assert_eq!(uris(&e)[..2], ["sip:c@192.0.2.1", "sip:a@192.0.2.1"]);
}

// ---------------------------------------------------------------- other AORs, bad input

#[test]
fn bindings_of_other_aors_are_ignored() {
    let bob = ok(
        &reg("c1", 1)
            .to("<sip:bob@example.com>")
            .contact("<sip:bob@192.0.2.20>"),
        &[],
        T0,
    );
    let out = reg("c1", 1)
        .contact("<sip:bob@192.0.2.20>")
        .apply(&bob, T0 + 1)
        .unwrap();
    assert_eq!(out.bindings.len(), 1);
    assert_eq!(out.bindings[0].aor.as_str(), "sip:alice@example.com");
    assert_eq!(
        out.added, 1,
        "bob's binding with the same Call-ID and CSeq is not consulted"
    );
}

#[test]
fn contacts_that_do_not_parse_fail_with_400() {
    // Built in code, as a location service receiving it over gRPC would.
    let req = RegisterRequest {
        aor: Aor::parse("sip:alice@example.com").unwrap(),
        call_id: "c1".into(),
        cseq: 1,
        contacts: vec![
            RequestContact::Addr(ContactSpec::new("sip:alice@192.0.2.1")),
            RequestContact::Addr(ContactSpec::new("sip:alice@[::1")),
        ],
        expires: None,
        path: vec![],
        user_agent: None,
        source: None,
        received_at: T0,
    };
    let e = apply_register(&[], &req, &Policy::default(), T0).unwrap_err();
    assert!(matches!(e, RegisterError::Message(_)), "{e:?}");
    assert_eq!(e.status(), 400);
}

#[test]
fn a_misconfigured_policy_does_not_panic_or_store_dead_bindings() {
    let policy = Policy {
        default_expires: 0,
        min_expires: 0,
        max_expires: 0,
        max_contacts: 0,
    };
    let out = reg("c1", 1)
        .contact("<sip:a@192.0.2.1>")
        .apply_with(&[], &policy, T0);
    assert_eq!(out, Err(RegisterError::TooManyContacts { limit: 0 }));
    let policy = Policy {
        max_contacts: 5,
        ..policy
    };
    let out = reg("c1", 1)
        .contact("<sip:a@192.0.2.1>")
        .apply_with(&[], &policy, T0)
        .unwrap();
    assert!(out.bindings.iter().all(|b| b.is_live(T0)));
    // Huge `now` does not overflow.
    let out = reg("c1", 1)
        .contact("<sip:a@192.0.2.1>")
        .apply(&[], u64::MAX - 5)
        .unwrap();
    assert_eq!(out.bindings[0].expires_at, u64::MAX);
}

// ---------------------------------------------------------------- from_message

#[test]
fn from_message_reads_every_field() {
    let inst = "<urn:uuid:00000000-0000-1000-8000-000A95A0E128>";
    let r = reg("a84b4c76e66710@pc33.example.com", 1826)
        .to("Alice <sip:%61lice@EXAMPLE.com:5060;user=ip>")
        .contact(&format!(
            "\"Alice\" <sip:alice@192.0.2.10;ob>;expires=3600;q=0.8;+sip.instance=\"{inst}\";reg-id=2"
        ))
        .contact("sip:alice@198.51.100.1, <tel:+1-201-555-0123>;q=0")
        .expires(7200)
        .path("<sip:p1.example.com;lr>, <sip:p2.example.com;lr>")
        .path("<sip:p3.example.com;lr>")
        .user_agent("SoftPhone/1.2.3 (x)");
    r.message().validate_request().unwrap();
    let req = r.request(T0);
    assert_eq!(req.aor.as_str(), "sip:alice@example.com");
    assert_eq!(req.call_id, "a84b4c76e66710@pc33.example.com");
    assert_eq!(req.cseq, 1826);
    assert_eq!(req.expires, Some(7200));
    assert_eq!(
        req.path,
        [
            "<sip:p1.example.com;lr>",
            "<sip:p2.example.com;lr>",
            "<sip:p3.example.com;lr>"
        ]
    );
    assert_eq!(req.user_agent.as_deref(), Some("SoftPhone/1.2.3 (x)"));
    assert_eq!(req.received_at, T0);
    assert_eq!(
        req.contacts,
        [
            RequestContact::Addr(ContactSpec {
                uri: "sip:alice@192.0.2.10;ob".into(),
                expires: Some(3600),
                q: Some(800),
                instance: Some(inst.into()),
                reg_id: Some(2),
            }),
            RequestContact::Addr(ContactSpec::new("sip:alice@198.51.100.1")),
            RequestContact::Addr(ContactSpec {
                q: Some(0),
                ..ContactSpec::new("tel:+1-201-555-0123")
            }),
        ]
    );
    assert!(!req.is_query());
    let req = reg("c", 1).contact(" * ").expires(0).request(T0);
    assert_eq!(req.contacts, [RequestContact::Star]);
    assert!(reg("c", 1).request(T0).is_query());
}

#[test]
fn from_message_refuses_what_it_cannot_represent() {
    let parse = |text: &str| SipMessage::parse(text.as_bytes().to_vec()).unwrap();
    let from = |r: &common::Reg| RegisterRequest::from_message(&r.message(), T0, None);

    let invite = parse(
        "INVITE sip:alice@example.com SIP/2.0\r\nTo: <sip:alice@example.com>\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nl: 0\r\n\r\n",
    );
    assert_eq!(
        RegisterRequest::from_message(&invite, T0, None),
        Err(RegisterError::NotRegister)
    );
    let mismatch = parse(
        "REGISTER sip:example.com SIP/2.0\r\nTo: <sip:alice@example.com>\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nl: 0\r\n\r\n",
    );
    assert_eq!(
        RegisterRequest::from_message(&mismatch, T0, None),
        Err(RegisterError::NotRegister)
    );
    let e = from(&reg("c", 1).to("<mailto:alice@example.com>")).unwrap_err();
    assert_eq!(e.status(), 416);
    let e = from(&reg("c", 1).to("<tel:5551234>")).unwrap_err();
    assert_eq!(e.status(), 400);
    assert!(matches!(e, RegisterError::InvalidAor(_)));
    for bad in [
        "<sip:alice@192.0.2.10>;expires=soon",
        "<sip:alice@999.0.2.10>",
        "<sip:alice@192.0.2.10>;q=2",
        "<sip:alice@192.0.2.10>;+sip.instance=bare",
    ] {
        let e = from(&reg("c", 1).contact(bad)).unwrap_err();
        assert_eq!(e.status(), 400, "{bad}: {e}");
        assert!(matches!(e, RegisterError::Message(_)), "{bad}: {e:?}");
    }
    let e = from(&reg("c", 1).path("sip:p1.example.com;lr")).unwrap_err();
    assert_eq!(e.status(), 400);
    let huge = reg("c", 1)
        .contact("<sip:a@b>")
        .text()
        .replace("Content-Length", "Expires: 99999999999\r\nContent-Length");
    let e = RegisterRequest::from_message(&parse(&huge), T0, None).unwrap_err();
    assert_eq!(e.status(), 400);
    let no_call_id = parse(
        "REGISTER sip:example.com SIP/2.0\r\nTo: <sip:alice@example.com>\r\nCSeq: 1 REGISTER\r\nl: 0\r\n\r\n",
    );
    assert_eq!(
        RegisterRequest::from_message(&no_call_id, T0, None),
        Err(RegisterError::Message(sip_core::Error::MissingHeader(
            "Call-ID"
        )))
    );
}

// ---------------------------------------------------------------- status mapping

#[test]
fn every_error_maps_to_its_response() {
    let cases: [(RegisterError, u16); 9] = [
        (sip_core::Error::MissingHeader("To").into(), 400),
        (RegisterError::NotRegister, 400),
        (RegisterError::UnsupportedScheme("im".into()), 416),
        (RegisterError::InvalidAor("x"), 400),
        (RegisterError::InvalidContact("x"), 400),
        (RegisterError::InvalidWildcard, 400),
        (RegisterError::IntervalTooBrief { min_expires: 60 }, 423),
        (
            RegisterError::OutOfOrder {
                stored: 2,
                received: 1,
            },
            500,
        ),
        (RegisterError::TooManyContacts { limit: 10 }, 403),
    ];
    for (e, status) in cases {
        assert_eq!(e.status(), status, "{e:?}");
        assert_eq!(e.min_expires().is_some(), status == 423, "{e:?}");
        assert!(!e.reason_phrase().is_empty());
        let s = sip_registrar::StoreError::from(e.clone());
        assert_eq!(s.status(), status);
        assert!(!s.is_unavailable());
    }
    assert_eq!(
        RegisterError::IntervalTooBrief { min_expires: 60 }.reason_phrase(),
        "Interval Too Brief"
    );
    assert_eq!(
        RegisterError::from(sip_core::Error::MissingHeader("To")).reason_phrase(),
        "Missing To header"
    );
    let down = sip_registrar::StoreError::Unavailable("redis: connection refused".into());
    assert_eq!(down.status(), 503);
    assert!(down.is_unavailable());
}
