//! The location service's backends against real Redis (standalone and a 3-master
//! cluster) and in memory:
//!
//! * one conformance run per backend (registrar rules, expiry, removal, credentials,
//!   dialog records with TTL, change events), so the three cannot drift apart;
//! * concurrency: two location services (two "edges' worth" of clients) hammering one
//!   AOR leave exactly the bindings §10.3 says — and the same load through a naive
//!   read-modify-write loses bindings, which shows the test can catch the race;
//! * Redis Cluster slot migration mid-use: ASK during MIGRATING, MOVED after, both
//!   followed by the client without an error reaching the caller;
//! * Redis with a password (`requirepass`; a cluster's nodes with `masterauth` too): the
//!   password from `backend.password_file` (or the URL) on every connection, standalone,
//!   cluster seeds and the nodes found through them; without it the service is not ready
//!   and answers UNAVAILABLE, never "not found"; it never reaches the log.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::redis::{Redis, cli, prefix};
use common::{Server, http_get, run_cli, workdir};
use grpc_auth::{AuthMetrics, Token, Tokens};
use location::backend::{Backend, DialogEnd, DialogKey, RedisBackend, RedisOptions, RedisPassword};
use location::{LocationConfig, MemoryBackend};
use location_client::{ClientConfig, LocationClient, pb};
use sip_registrar::{
    Aor, ContactSpec, Policy, RegisterError, RegisterRequest, RequestContact, apply_register,
};

/// The edges' token of the services started in process here (the API takes no
/// anonymous call).
fn edge_token() -> Token {
    Token::new(common::EDGE_TOKEN).expect("token")
}

fn edge_tokens() -> Tokens {
    Tokens::new(Some(edge_token()), None).expect("tokens")
}

fn policy() -> Policy {
    Policy {
        default_expires: 3600,
        min_expires: 60,
        max_expires: 7200,
        max_contacts: 3,
    }
}

fn redis_backend(r: &Redis, test: &str, policy: Policy) -> Arc<dyn Backend> {
    redis_backend_of(r, test, policy)
}

/// The same, as its own type (to read its counters).
fn redis_backend_of(r: &Redis, test: &str, policy: Policy) -> Arc<RedisBackend> {
    Arc::new(RedisBackend::new(redis_options(r, test), policy).expect("backend"))
}

/// The options of the tests' backends on `r`, with the key prefix of `test`.
fn redis_options(r: &Redis, test: &str) -> RedisOptions {
    RedisOptions {
        urls: r.urls.clone(),
        cluster: r.cluster,
        prefix: prefix(test),
        pool_size: 2,
        response_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(2),
        publish_events: true,
        password: None,
        username: None,
    }
}

/// Wait until the backend answers (the cluster connection is made in the background),
/// then provision it as the service does at start (the marker: without it, "not found"
/// answers are refused as a possible data loss).
async fn ready(b: &dyn Backend) {
    for _ in 0..100 {
        if b.ping().await.is_ok() {
            b.write_marker().await.expect("provisioning marker");
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("backend not reachable");
}

fn req(
    aor: &str,
    call_id: &str,
    cseq: u32,
    contacts: &[(&str, Option<u32>, Option<u16>)],
) -> RegisterRequest {
    RegisterRequest {
        aor: Aor::parse(aor).expect("aor"),
        call_id: call_id.into(),
        cseq,
        contacts: contacts
            .iter()
            .map(|(uri, expires, q)| {
                RequestContact::Addr(ContactSpec {
                    expires: *expires,
                    q: *q,
                    ..ContactSpec::new(*uri)
                })
            })
            .collect(),
        expires: None,
        path: vec![],
        user_agent: Some("test".into()),
        source: None,
        received_at: 0,
    }
}

async fn conformance(b: Arc<dyn Backend>) {
    ready(&*b).await;
    // Real time: Redis expires keys on its own clock.
    let t0 = location::server::unix_now();
    let alice = Aor::parse("sip:alice@example.com").unwrap();
    // Returns once the change feed is live (Redis: the subscription is made).
    let mut events = b.events().await;

    let o = b
        .register(
            req(
                "sip:alice@example.com",
                "c1",
                1,
                &[("sip:alice@192.0.2.1", Some(600), Some(500))],
            ),
            t0,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!((o.added, o.bindings.len()), (1, 1));
    let ev = tokio::time::timeout(Duration::from_secs(3), events.recv())
        .await
        .expect("event in time")
        .expect("event");
    assert_eq!(
        (ev.aor.as_str(), ev.added, ev.bindings.len()),
        ("sip:alice@example.com", 1, 1)
    );

    let o = b
        .register(
            req(
                "sip:alice@example.com",
                "c1",
                2,
                &[("sip:alice@192.0.2.2", Some(300), None)],
            ),
            t0 + 1,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(o.bindings.len(), 2);
    // Lookup order: q descending.
    let live = b.lookup(&alice, t0 + 2).await.unwrap();
    let contacts: Vec<&str> = live.iter().map(|x| x.contact.as_str()).collect();
    assert_eq!(contacts, ["sip:alice@192.0.2.2", "sip:alice@192.0.2.1"]);
    assert_eq!(live[0].expires_at, t0 + 1 + 300);

    // §10.3 step 7: same Call-ID, CSeq not higher → refused, nothing changed.
    let r = b
        .register(
            req(
                "sip:alice@example.com",
                "c1",
                2,
                &[("sip:alice@192.0.2.2", None, None)],
            ),
            t0 + 3,
        )
        .await
        .unwrap();
    assert!(
        matches!(
            r,
            Err(RegisterError::OutOfOrder {
                stored: 2,
                received: 2
            })
        ),
        "{r:?}"
    );
    // Too brief, too many.
    let r = b
        .register(
            req(
                "sip:alice@example.com",
                "c9",
                1,
                &[("sip:alice@192.0.2.9", Some(10), None)],
            ),
            t0 + 3,
        )
        .await
        .unwrap();
    assert_eq!(
        r.unwrap_err(),
        RegisterError::IntervalTooBrief { min_expires: 60 }
    );
    let r = b
        .register(
            req(
                "sip:alice@example.com",
                "c9",
                1,
                &[
                    ("sip:alice@192.0.2.7", None, None),
                    ("sip:alice@192.0.2.8", None, None),
                ],
            ),
            t0 + 3,
        )
        .await
        .unwrap();
    assert_eq!(r.unwrap_err(), RegisterError::TooManyContacts { limit: 3 });
    assert_eq!(b.lookup(&alice, t0 + 3).await.unwrap().len(), 2);

    // Expiry is in the data: 192.0.2.2 lapses at t0+301.
    assert_eq!(b.lookup(&alice, t0 + 302).await.unwrap().len(), 1);
    // Administrative removal of one contact (URI comparison, not text). Times only move
    // forward from here (the memory backend prunes by the latest `now` it saw).
    assert_eq!(
        b.remove(&alice, Some("sip:alice@192.0.2.1;transport=udp"), t0 + 303)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        b.remove(&alice, Some("sip:ALICE@192.0.2.1"), t0 + 303)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        b.remove(&alice, Some("sip:alice@192.0.2.1"), t0 + 303)
            .await
            .unwrap(),
        1
    );
    assert!(b.lookup(&alice, t0 + 303).await.unwrap().is_empty());
    b.register(
        req(
            "sip:alice@example.com",
            "c1",
            3,
            &[("sip:alice@192.0.2.3", None, None)],
        ),
        t0 + 304,
    )
    .await
    .unwrap()
    .unwrap();
    // `*` with Expires: 0 removes the rest.
    let mut star = req("sip:alice@example.com", "c1", 4, &[]);
    star.contacts = vec![RequestContact::Star];
    star.expires = Some(0);
    let o = b.register(star, t0 + 305).await.unwrap().unwrap();
    assert_eq!((o.removed, o.bindings.len()), (1, 0));
    assert!(b.lookup(&alice, t0 + 305).await.unwrap().is_empty());

    // Credentials.
    let creds = sip_auth::Credentials::from_password("zed", "example.com", "pw");
    assert!(!b.put_user("zed", "example.com", &creds).await.unwrap());
    assert!(
        b.put_user("zed", "example.com", &creds).await.unwrap(),
        "replaced"
    );
    let got = b
        .credentials("zed", "example.com")
        .await
        .unwrap()
        .expect("stored");
    let md5 = sip_auth::Algorithm::Md5;
    assert_eq!(got.ha1(md5), creds.ha1(md5));
    assert!(
        b.credentials("zed", "other.example")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        b.list_users("example.com")
            .await
            .unwrap()
            .contains(&"zed".to_owned())
    );
    assert!(b.remove_user("zed", "example.com").await.unwrap());
    assert!(!b.remove_user("zed", "example.com").await.unwrap());
    assert!(b.credentials("zed", "example.com").await.unwrap().is_none());

    // Dialog records: create, update (only what changed), end, expire.
    let key = DialogKey {
        call_id: "call-1".into(),
        from_tag: "ft".into(),
    };
    b.put_dialog(
        &pb::Dialog {
            call_id: "call-1".into(),
            from_tag: "ft".into(),
            caller: "sip:alice@example.com".into(),
            callee: "sip:bob@example.com".into(),
            started_at_ms: 1000,
            edge_id: "edge-a".into(),
            ..Default::default()
        },
        60,
        false,
    )
    .await
    .unwrap();
    let d = b
        .put_dialog(
            &pb::Dialog {
                call_id: "call-1".into(),
                from_tag: "ft".into(),
                to_tag: "tt".into(),
                answered_at_ms: 2000,
                media_relay: "relay-1".into(),
                // The CDR the answering edge left: protobuf, not text.
                call: vec![0x0a, 0x00, 0xff, 0xfe, 0x80, b'x'],
                ..Default::default()
            },
            60,
            false,
        )
        .await
        .unwrap()
        .expect("stored");
    assert_eq!(
        d.call,
        [0x0a, 0x00, 0xff, 0xfe, 0x80, b'x'],
        "bytes kept as bytes"
    );
    assert_eq!(
        (
            d.caller.as_str(),
            d.to_tag.as_str(),
            d.started_at_ms,
            d.answered_at_ms
        ),
        ("sip:alice@example.com", "tt", 1000, 2000)
    );
    let end = DialogEnd {
        ended_at_ms: 5000,
        reason: "bye".into(),
        status: 200,
    };
    let d = b.end_dialog(&key, &end, 1).await.unwrap().expect("ended");
    assert_eq!(
        (
            d.ended_at_ms,
            d.end_reason.as_str(),
            d.status,
            d.edge_id.as_str()
        ),
        (5000, "bye", 200, "edge-a")
    );
    assert_eq!(d.call.len(), 6, "the CDR bytes survive the end");
    assert_eq!(b.get_dialog(&key).await.unwrap(), Some(d));
    let missing = DialogKey {
        call_id: "nope".into(),
        from_tag: "x".into(),
    };
    assert_eq!(
        b.end_dialog(&missing, &end, 60).await.unwrap(),
        None,
        "end never creates"
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(b.get_dialog(&key).await.unwrap(), None, "TTL elapsed");

    // Reaping: a call whose BYE never comes is claimed once past its deadline, ended
    // there; a refresh moves the deadline; a touch never creates.
    let dead = |call: &str, se: u32| pb::Dialog {
        call_id: call.into(),
        from_tag: "ft".into(),
        to_tag: "tt".into(),
        answered_at_ms: 1,
        session_expires_secs: se,
        ..Default::default()
    };
    assert_eq!(
        b.put_dialog(&dead("reap-none", 0), 60, true).await.unwrap(),
        None,
        "a touch never creates"
    );
    let stored = b
        .put_dialog(&dead("reap-ttl", 0), 1, false)
        .await
        .unwrap()
        .unwrap();
    assert!(stored.expires_at_ms > 0, "{stored:?}");
    b.put_dialog(&dead("reap-se", 90), 1, false).await.unwrap();
    b.put_dialog(&dead("reap-refreshed", 0), 1, false)
        .await
        .unwrap();
    b.put_dialog(&dead("reap-byed", 0), 1, false).await.unwrap();
    let now = sip_registrar::unix_now_ms();
    assert_eq!(
        b.reap_dialogs(now, 100, 60).await.unwrap(),
        vec![],
        "none due yet"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    // Refreshed before its deadline: lives on; ended by its BYE: nothing to reap.
    assert!(
        b.put_dialog(&dead("reap-refreshed", 0), 60, true)
            .await
            .unwrap()
            .is_some()
    );
    let byed = DialogKey {
        call_id: "reap-byed".into(),
        from_tag: "ft".into(),
    };
    b.end_dialog(&byed, &end, 60).await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let now = sip_registrar::unix_now_ms();
    let mut reaped = b.reap_dialogs(now, 100, 60).await.unwrap();
    reaped.sort_by(|a, b| a.call_id.cmp(&b.call_id));
    let got: Vec<(&str, &str)> = reaped
        .iter()
        .map(|d| (d.call_id.as_str(), d.end_reason.as_str()))
        .collect();
    assert_eq!(got, [("reap-se", "session-expired"), ("reap-ttl", "ttl")]);
    for d in &reaped {
        assert_eq!(
            d.ended_at_ms, d.expires_at_ms,
            "ended at its deadline: {d:?}"
        );
        assert!(d.ended_at_ms <= now);
    }
    assert_eq!(
        b.reap_dialogs(sip_registrar::unix_now_ms(), 100, 60)
            .await
            .unwrap(),
        vec![],
        "each record is reaped once"
    );
    let ttl_key = DialogKey {
        call_id: "reap-ttl".into(),
        from_tag: "ft".into(),
    };
    assert_eq!(
        b.get_dialog(&ttl_key).await.unwrap().map(|d| d.end_reason),
        Some("ttl".to_owned()),
        "readable after it was reaped"
    );
}

/// The calls in progress page by page, one Call-ID's alone (glob characters in it taken
/// literally), the active count, and an operator's end: the record due now and marked,
/// claimed once by a reaper with the operator's reason (what `sipcluster calls` does).
async fn calls_listing(b: Arc<dyn Backend>) {
    ready(&*b).await;
    let call = |id: &str, tag: &str| pb::Dialog {
        call_id: id.into(),
        from_tag: tag.into(),
        to_tag: "tt".into(),
        answered_at_ms: 1,
        ..Default::default()
    };
    let mut want = std::collections::BTreeSet::new();
    for i in 0..23 {
        b.put_dialog(&call(&format!("list-{i:02}@h"), "ft"), 60, false)
            .await
            .unwrap();
        want.insert(format!("list-{i:02}@h"));
    }
    // Two records of one Call-ID (a call and its fork's sibling), a Call-ID that is a
    // glob pattern, and an ended call (not listed).
    b.put_dialog(&call("x*[y]?", "a"), 60, false).await.unwrap();
    b.put_dialog(&call("x*[y]?", "b"), 60, false).await.unwrap();
    b.put_dialog(&call("xz[y]?", "a"), 60, false).await.unwrap();
    b.put_dialog(&call("list-ended", "ft"), 60, false)
        .await
        .unwrap();
    let ended_key = DialogKey {
        call_id: "list-ended".into(),
        from_tag: "ft".into(),
    };
    let bye = DialogEnd {
        ended_at_ms: 5,
        reason: "bye".into(),
        status: 0,
    };
    b.end_dialog(&ended_key, &bye, 60).await.unwrap();
    let (mut token, mut seen, mut pages) = (String::new(), Vec::new(), 0);
    loop {
        let (page, next) = b.list_dialogs("", &token, 5).await.unwrap();
        assert!(page.len() <= 5 + 1000, "bounded page");
        seen.extend(page.into_iter().map(|d| (d.call_id, d.from_tag)));
        pages += 1;
        assert!(pages < 100, "the listing ends");
        if next.is_empty() {
            break;
        }
        token = next;
    }
    seen.sort();
    seen.dedup();
    let ids: std::collections::BTreeSet<String> = seen
        .iter()
        .map(|(c, _)| c.clone())
        .filter(|c| c.starts_with("list-"))
        .collect();
    assert_eq!(ids, want, "every call in progress once, the ended one not");
    assert_eq!(seen.len(), 23 + 3, "{seen:?}");
    let (one, next) = b.list_dialogs("x*[y]?", "", 100).await.unwrap();
    let mut tags: Vec<&str> = one.iter().map(|d| d.from_tag.as_str()).collect();
    tags.sort_unstable();
    assert_eq!((tags, next.as_str()), (vec!["a", "b"], ""), "{one:?}");
    assert_eq!(b.counts(0).await.unwrap().dialogs, 23 + 3);

    // An operator ends one: marked, due now, reaped once with the operator's reason.
    let key = DialogKey {
        call_id: "list-07@h".into(),
        from_tag: "ft".into(),
    };
    let now = sip_registrar::unix_now_ms();
    let marked = b.terminate_dialog(&key, now).await.unwrap().unwrap();
    assert_eq!(
        (
            marked.end_reason.as_str(),
            marked.ended_at_ms,
            marked.expires_at_ms
        ),
        ("admin", 0, now)
    );
    let ended = b.terminate_dialog(&ended_key, now).await.unwrap().unwrap();
    assert_ne!(ended.ended_at_ms, 0, "an ended call stays as it ended");
    assert_eq!(ended.end_reason, "bye", "{ended:?}");
    let none = DialogKey {
        call_id: "list-none".into(),
        from_tag: "ft".into(),
    };
    assert_eq!(b.terminate_dialog(&none, now).await.unwrap(), None);
    let reaped = b.reap_dialogs(now + 1, 100, 60).await.unwrap();
    let got: Vec<(&str, &str, u64)> = reaped
        .iter()
        .map(|d| (d.call_id.as_str(), d.end_reason.as_str(), d.ended_at_ms))
        .collect();
    assert_eq!(got, [("list-07@h", "admin", now)]);
    assert_eq!(b.reap_dialogs(now + 1, 100, 60).await.unwrap(), vec![]);
    let (page, _) = b.list_dialogs("list-07@h", "", 10).await.unwrap();
    assert_eq!(page, vec![], "no longer in progress");
    assert_eq!(b.counts(0).await.unwrap().dialogs, 23 + 3 - 1);
}

/// `list` pages through every AOR with live bindings exactly as stored, a bounded page
/// at a time (what `sipcluster registrations list` shows).
async fn listing(b: Arc<dyn Backend>) {
    ready(&*b).await;
    let now = location::server::unix_now();
    let mut want = std::collections::BTreeMap::new();
    for i in 0..25 {
        let aor = format!("sip:lister{i:02}@list.example");
        let contacts: Vec<String> = (0..1 + i % 3)
            .map(|c| format!("sip:lister{i}@192.0.2.{}:{}", 1 + c, 5060 + i))
            .collect();
        let spec: Vec<(&str, Option<u32>, Option<u16>)> = contacts
            .iter()
            .map(|c| (c.as_str(), Some(600), None))
            .collect();
        b.register(req(&aor, &format!("l{i}"), 1, &spec), now)
            .await
            .unwrap()
            .unwrap();
        want.insert(aor, contacts.len());
    }
    let mut got = std::collections::BTreeMap::new();
    let (mut token, mut pages) = (String::new(), 0);
    loop {
        let (page, next) = b.list(&token, 7, now).await.expect("list");
        pages += 1;
        assert!(pages < 100, "paging does not end");
        for (aor, bindings) in page {
            assert!(bindings.iter().all(|x| x.is_live(now)));
            if aor.as_str().ends_with("@list.example") {
                got.insert(aor.as_str().to_owned(), bindings.len());
            }
        }
        if next.is_empty() {
            break;
        }
        token = next;
    }
    assert_eq!(got, want, "every AOR once, with all its bindings");
    assert!(pages >= 2, "25 AORs in pages of about 7: {pages} pages");
    // Lapsed bindings are not listed.
    let later = now + 601;
    let (page, _) = b.list("", 1000, later).await.expect("list");
    assert!(
        page.iter()
            .all(|(a, _)| !a.as_str().ends_with("@list.example")),
        "expired AORs listed"
    );
}

/// Digest replay tracking (`UseNonce`): a (nonce, nc) pair is accepted once, by any
/// replica (`a` and `b` share the store: two Redis backends on one Redis, or one memory
/// backend twice), concurrently too; another nc or nonce is new; a use is forgotten
/// after its ttl.
async fn nonce_uses(a: Arc<dyn Backend>, b: Arc<dyn Backend>) {
    ready(&*a).await;
    ready(&*b).await;
    let n = format!("nonce-{}", std::process::id());
    assert!(a.use_nonce(&n, "00000001", 300).await.unwrap(), "first use");
    assert!(!a.use_nonce(&n, "00000001", 300).await.unwrap(), "replay");
    assert!(
        !b.use_nonce(&n, "00000001", 300).await.unwrap(),
        "replay elsewhere"
    );
    assert!(
        b.use_nonce(&n, "00000002", 300).await.unwrap(),
        "next count"
    );
    assert!(
        a.use_nonce(&format!("{n}-x"), "00000001", 300)
            .await
            .unwrap(),
        "other nonce"
    );
    // No qop: the nonce alone, once.
    assert!(a.use_nonce(&n, "", 300).await.unwrap());
    assert!(!b.use_nonce(&n, "", 300).await.unwrap());
    // Twenty edges presenting the same answer at once: exactly one wins.
    let mut racers = tokio::task::JoinSet::new();
    for i in 0..20 {
        let x = if i % 2 == 0 { a.clone() } else { b.clone() };
        let n = n.clone();
        racers.spawn(async move { x.use_nonce(&n, "00000003", 300).await.unwrap() });
    }
    let wins = racers.join_all().await.into_iter().filter(|w| *w).count();
    assert_eq!(wins, 1, "concurrent uses of one pair");
    // Remembered for the ttl only.
    assert!(a.use_nonce(&n, "00000004", 1).await.unwrap());
    assert!(!a.use_nonce(&n, "00000004", 1).await.unwrap());
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert!(
        a.use_nonce(&n, "00000004", 1).await.unwrap(),
        "forgotten after its ttl"
    );
}

/// Call limits through two replicas `a` and `b` of one store (two location services,
/// as two edges would reach them): all or nothing across keys, exact counts from either,
/// release by either tag, refresh, expiry, per-second windows.
async fn call_limits(a: Arc<dyn Backend>, b: Arc<dyn Backend>) {
    use location::backend::{Admission, call_member};
    ready(&*a).await;
    ready(&*b).await;
    let lim = |key: &str, calls: u32, cps: u32| pb::CallLimit {
        key: key.into(),
        max_calls: calls,
        max_cps: cps,
    };
    let now = sip_registrar::unix_now_ms();
    let alice = [lim("account:alice@x", 2, 0), lim("domain:x", 3, 0)];
    let bob = [lim("account:bob@x", 5, 0), lim("domain:x", 3, 0)];
    let m = |i: u32| call_member(&format!("call-{i}"), "caller");
    assert_eq!(
        a.acquire_call(&m(1), &alice, 60, now).await.unwrap(),
        Admission::Granted
    );
    assert_eq!(
        b.acquire_call(&m(2), &alice, 60, now).await.unwrap(),
        Admission::Granted
    );
    // Granted again: a retried admission takes no second slot.
    assert_eq!(
        a.acquire_call(&m(2), &alice, 60, now).await.unwrap(),
        Admission::Granted
    );
    let full = Admission::Refused {
        key: "account:alice@x".into(),
        by: "calls",
    };
    assert_eq!(b.acquire_call(&m(3), &alice, 60, now).await.unwrap(), full);
    // All or nothing: the refused call took no domain slot.
    assert_eq!(
        a.acquire_call(&m(4), &bob, 60, now).await.unwrap(),
        Admission::Granted
    );
    assert_eq!(
        b.acquire_call(&m(5), &bob, 60, now).await.unwrap(),
        Admission::Refused {
            key: "domain:x".into(),
            by: "calls"
        }
    );
    // A BYE names the call by both tags, the caller's among them.
    let by_bye = [call_member("call-1", "callee"), m(1)];
    assert!(b.release_call(&by_bye, now).await.unwrap());
    assert!(!a.release_call(&by_bye, now).await.unwrap(), "once");
    assert_eq!(
        a.acquire_call(&m(3), &alice, 60, now).await.unwrap(),
        Admission::Granted
    );
    // Slots not refreshed lapse at their time-to-live; refreshed ones do not.
    assert!(a.refresh_call(&m(3), 3600, now).await.unwrap());
    assert!(!a.refresh_call(&m(99), 3600, now).await.unwrap());
    let later = now + 61_000;
    assert_eq!(
        b.acquire_call(&m(6), &alice, 60, later).await.unwrap(),
        Admission::Granted,
        "call-2 lapsed, call-3 was refreshed"
    );
    assert_eq!(
        b.acquire_call(&m(7), &alice, 60, later).await.unwrap(),
        full
    );
    // Calls per second: a whole window's worth, from either replica, then none.
    let cps = [lim("trunk:pstn", 0, 3)];
    let w = (later / 1000 + 1) * 1000;
    let mut granted = 0;
    for i in 0..10 {
        let r = if i % 2 == 0 { &a } else { &b };
        if r.acquire_call(&m(100 + i), &cps, 60, w + u64::from(i))
            .await
            .unwrap()
            == Admission::Granted
        {
            granted += 1;
        }
    }
    assert_eq!(granted, 3);
    assert_eq!(
        a.acquire_call(&m(200), &cps, 60, w + 1000).await.unwrap(),
        Admission::Granted,
        "the next window"
    );
}

/// Bans through two replicas of one store: a ban from either is in the list of both,
/// a longer one stays, they end; failed logins counted from both ban at the limit, once.
async fn bans(a: Arc<dyn Backend>, b: Arc<dyn Backend>) {
    ready(&*a).await;
    ready(&*b).await;
    let now = sip_registrar::unix_now_ms();
    a.ban("source:192.0.2.1", now + 60_000).await.unwrap();
    b.ban("source:192.0.2.1", now + 5_000).await.unwrap();
    b.ban("user:bob@x", now + 10_000).await.unwrap();
    let list = |l: Vec<pb::BanEvent>| {
        let mut v: Vec<(String, u64)> = l.into_iter().map(|e| (e.subject, e.until_ms)).collect();
        v.sort();
        v
    };
    let want = vec![
        ("source:192.0.2.1".to_owned(), now + 60_000),
        ("user:bob@x".to_owned(), now + 10_000),
    ];
    assert_eq!(
        list(a.list_bans(now, 100).await.unwrap()),
        want,
        "a longer ban stays"
    );
    assert_eq!(list(b.list_bans(now, 100).await.unwrap()), want);
    assert_eq!(
        list(a.list_bans(now + 10_000, 100).await.unwrap()),
        vec![("source:192.0.2.1".to_owned(), now + 60_000)],
        "bans end"
    );
    assert_eq!(b.list_bans(now, 1).await.unwrap().len(), 1, "bounded");
    // Five failures spread over the two replicas: the fifth bans, the sixth does not
    // start another.
    let r = pb::CountFailureRequest {
        source: "source:198.51.100.7".into(),
        user: "user:carol@x".into(),
        window_secs: 60,
        per_source: 5,
        per_user: 3,
        source_ban_secs: 30,
        user_lock_secs: 20,
    };
    let mut started = Vec::new();
    for i in 0..6 {
        let at = now + i;
        let s = if i % 2 == 0 { &a } else { &b };
        for e in s.count_failure(&r, at).await.unwrap() {
            started.push((i, e.subject));
        }
    }
    assert_eq!(
        started,
        vec![
            (2, "user:carol@x".to_owned()),
            (4, "source:198.51.100.7".to_owned())
        ]
    );
    let l = list(a.list_bans(now + 10, 100).await.unwrap());
    assert!(
        l.iter()
            .any(|(s, u)| s == "source:198.51.100.7" && *u == now + 4 + 30_000),
        "{l:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_backend_conformance() {
    conformance(Arc::new(MemoryBackend::new(
        policy(),
        sip_auth::MemoryStore::new(),
    )))
    .await;
    listing(Arc::new(MemoryBackend::new(
        policy(),
        sip_auth::MemoryStore::new(),
    )))
    .await;
    calls_listing(Arc::new(MemoryBackend::new(
        policy(),
        sip_auth::MemoryStore::new(),
    )))
    .await;
    let m: Arc<dyn Backend> = Arc::new(MemoryBackend::new(policy(), sip_auth::MemoryStore::new()));
    nonce_uses(m.clone(), m.clone()).await;
    call_limits(m.clone(), m.clone()).await;
    bans(m.clone(), m).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_backend_conformance() {
    let dir = workdir("conformance_redis");
    let r = Redis::standalone(&dir);
    conformance(redis_backend(&r, "conformance_redis", policy())).await;
    listing(redis_backend(&r, "listing_redis", policy())).await;
    calls_listing(redis_backend(&r, "calls_redis", policy())).await;
    nonce_uses(
        redis_backend(&r, "nonces_redis", policy()),
        redis_backend(&r, "nonces_redis", policy()),
    )
    .await;
    call_limits(
        redis_backend(&r, "limits_redis", policy()),
        redis_backend(&r, "limits_redis", policy()),
    )
    .await;
    bans(
        redis_backend(&r, "bans_redis", policy()),
        redis_backend(&r, "bans_redis", policy()),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_backend_conformance() {
    let dir = workdir("conformance_cluster");
    let r = Redis::cluster(&dir);
    conformance(redis_backend(&r, "conformance_cluster", policy())).await;
    listing(redis_backend(&r, "listing_cluster", policy())).await;
    calls_listing(redis_backend(&r, "calls_cluster", policy())).await;
    nonce_uses(
        redis_backend(&r, "nonces_cluster", policy()),
        redis_backend(&r, "nonces_cluster", policy()),
    )
    .await;
    // Every key of a call's check in one hash slot: one script, one master.
    call_limits(
        redis_backend(&r, "limits_cluster", policy()),
        redis_backend(&r, "limits_cluster", policy()),
    )
    .await;
    bans(
        redis_backend(&r, "bans_cluster", policy()),
        redis_backend(&r, "bans_cluster", policy()),
    )
    .await;
}

/// Two location services on one Redis, each with its own client (as two edges would
/// reach two replicas), every REGISTER for one AOR at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_registers_from_two_edges_leave_exactly_the_rfc_bindings() {
    let dir = workdir("concurrency");
    let r = Redis::standalone(&dir);
    let wide = Policy {
        max_contacts: 1000,
        ..policy()
    };
    let mut services = Vec::new();
    let mut clients = Vec::new();
    let mut backends = Vec::new();
    for _ in 0..2 {
        let cfg = LocationConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            metrics_listen: None,
            registrar: wide,
            ..LocationConfig::default()
        };
        let backend = redis_backend_of(&r, "concurrency", wide);
        backends.push(backend.clone());
        let svc = location::start_with(cfg, backend, edge_tokens(), AuthMetrics::default())
            .await
            .expect("location service");
        clients.push(Arc::new(
            LocationClient::new(ClientConfig {
                endpoint: format!("http://{}", svc.addr),
                timeout: Duration::from_secs(10),
                token: Some(edge_token()),
                ..ClientConfig::default()
            })
            .unwrap(),
        ));
        services.push(svc);
    }
    ready(&*services[0].backend).await;
    const N: u32 = 100;
    let aor = "sip:bob@example.com";

    // 1. Distinct contacts (one UA each): every one must be bound.
    let mut tasks = Vec::new();
    for (side, c) in clients.iter().enumerate() {
        for i in 0..N {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                let uri = format!("sip:bob@198.51.100.{side}:{}", 5000 + i);
                c.register_request(&req(
                    aor,
                    &format!("ua-{side}-{i}"),
                    1,
                    &[(&uri, Some(600), None)],
                ))
                .await
            }));
        }
    }
    for t in tasks {
        t.await.unwrap().expect("call").expect("accepted");
    }
    let bound = clients[0]
        .lookup_aor(&Aor::parse(aor).unwrap())
        .await
        .unwrap();
    assert_eq!(
        bound.len(),
        2 * N as usize,
        "every concurrent REGISTER kept its binding"
    );
    let conflicts: u64 = backends.iter().map(|b| b.cas_conflicts()).sum();
    assert!(
        conflicts > 0,
        "the writes really raced (compare-and-set retried {conflicts} times)"
    );

    // 2. One UA, one Call-ID, CSeqs 1..=60 delivered out of order through both edges:
    // the stored CSeq must end at the highest; lower ones arriving later fail (500).
    let mut tasks = Vec::new();
    for cseq in (1..=60u32).rev().chain(1..=60) {
        let c = clients[(cseq % 2) as usize].clone();
        tasks.push(tokio::spawn(async move {
            c.register_request(&req(
                "sip:carol@example.com",
                "carol-1",
                cseq,
                &[("sip:carol@192.0.2.50", Some(600), None)],
            ))
            .await
        }));
    }
    let mut refused = 0;
    for t in tasks {
        if t.await.unwrap().expect("call").is_err() {
            refused += 1;
        }
    }
    let carol = clients[1]
        .lookup_aor(&Aor::parse("sip:carol@example.com").unwrap())
        .await
        .unwrap();
    assert_eq!(carol.len(), 1);
    assert_eq!(
        carol[0].cseq, 60,
        "a lower CSeq never overwrote a higher one"
    );
    assert!(
        refused >= 60,
        "at least the 60 replays are refused ({refused})"
    );

    // 3. The same load as (1) through a naive read-modify-write (no compare-and-set):
    // bindings are lost. This is the race the compare-and-set closes.
    let client = redis::Client::open(r.urls[0].as_str()).unwrap();
    let key = format!("{}:naive:{{sip:dave@example.com}}", prefix("concurrency"));
    let mut tasks = Vec::new();
    for i in 0..2 * N {
        let (client, key) = (client.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = client.get_multiplexed_async_connection().await.unwrap();
            let cur: Option<Vec<u8>> = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut c)
                .await
                .unwrap();
            let set = cur
                .map(|b| {
                    location_client::convert::bindings_from(
                        <pb::BindingSet as prost::Message>::decode(&b[..])
                            .unwrap()
                            .bindings,
                    )
                    .unwrap()
                })
                .unwrap_or_default();
            let uri = format!("sip:dave@198.51.100.9:{}", 5000 + i);
            let o = apply_register(
                &set,
                &req(
                    "sip:dave@example.com",
                    &format!("d-{i}"),
                    1,
                    &[(&uri, Some(600), None)],
                ),
                &wide,
                location::server::unix_now(),
            )
            .unwrap();
            let bytes = prost::Message::encode_to_vec(&pb::BindingSet {
                bindings: o
                    .bindings
                    .iter()
                    .map(location_client::convert::binding_to)
                    .collect(),
            });
            let _: () = redis::cmd("SET")
                .arg(&key)
                .arg(bytes)
                .query_async(&mut c)
                .await
                .unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let cur: Vec<u8> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut c)
        .await
        .unwrap();
    let kept = <pb::BindingSet as prost::Message>::decode(&cur[..])
        .unwrap()
        .bindings
        .len();
    assert!(
        kept < 2 * N as usize,
        "naive read-modify-write kept {kept} of {}",
        2 * N
    );
    for s in services {
        s.stop().await;
    }
}

/// Node id and port of every master, from CLUSTER NODES.
fn masters(port: u16) -> Vec<(String, u16)> {
    cli(port, &["CLUSTER", "NODES"])
        .lines()
        .filter(|l| l.contains("master"))
        .filter_map(|l| {
            let mut f = l.split(' ');
            let id = f.next()?.to_owned();
            let addr = f.next()?;
            let p = addr.split('@').next()?.rsplit(':').next()?.parse().ok()?;
            Some((id, p))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_slot_migration_ask_and_moved_are_followed() {
    let dir = workdir("slot_migration");
    let r = Redis::own_cluster(&dir);
    let b = redis_backend(&r, "slot_migration", policy());
    ready(&*b).await;
    let t0 = location::server::unix_now();
    let aor = Aor::parse("sip:mia@example.com").unwrap();
    let reg = |cseq| {
        req(
            "sip:mia@example.com",
            "m1",
            cseq,
            &[("sip:mia@192.0.2.77", Some(3600), None)],
        )
    };
    b.register(reg(1), t0).await.unwrap().unwrap();

    let key = format!("{}:loc:{{sip:mia@example.com}}", prefix("slot_migration"));
    let any = r.port();
    let slot = cli(any, &["CLUSTER", "KEYSLOT", &key]).trim().to_owned();
    let nodes = masters(any);
    let owner = nodes
        .iter()
        .find(|(_, p)| cli(*p, &["CLUSTER", "COUNTKEYSINSLOT", &slot]).trim() == "1")
        .cloned()
        .expect("the node holding the key");
    let target = nodes
        .iter()
        .find(|n| n.0 != owner.0)
        .cloned()
        .expect("another master");

    // MIGRATING/IMPORTING, key moved: the old owner answers ASK.
    cli(
        target.1,
        &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &owner.0],
    );
    cli(
        owner.1,
        &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &target.0],
    );
    let moved = cli(
        owner.1,
        &[
            "MIGRATE",
            "127.0.0.1",
            &target.1.to_string(),
            "",
            "0",
            "5000",
            "KEYS",
            &key,
        ],
    );
    assert_eq!(moved.trim(), "OK", "MIGRATE: {moved}");
    assert_eq!(
        b.lookup(&aor, t0 + 1).await.unwrap().len(),
        1,
        "lookup through ASK"
    );
    let o = b.register(reg(2), t0 + 2).await.unwrap().unwrap();
    assert_eq!(
        (o.updated, o.bindings[0].cseq),
        (1, 2),
        "read + compare-and-set through ASK"
    );

    // Slot handed over: everyone answers MOVED to the new owner.
    for (_, p) in &nodes {
        cli(*p, &["CLUSTER", "SETSLOT", &slot, "NODE", &target.0]);
    }
    assert_eq!(
        b.lookup(&aor, t0 + 3).await.unwrap()[0].cseq,
        2,
        "lookup through MOVED"
    );
    let o = b.register(reg(3), t0 + 4).await.unwrap().unwrap();
    assert_eq!(o.bindings[0].cseq, 3, "write through MOVED");
    assert_eq!(
        cli(target.1, &["CLUSTER", "COUNTKEYSINSLOT", &slot]).trim(),
        "1"
    );
}

/// The gRPC surface beyond REGISTER: WatchBindings streams a change made through another
/// replica (Redis pub/sub), dialog records round-trip, Stats answers, bad input is
/// INVALID_ARGUMENT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_dialogs_and_bad_input_over_grpc() {
    let dir = workdir("grpc_surface");
    let r = Redis::standalone(&dir);
    let mut services = Vec::new();
    for _ in 0..2 {
        let cfg = LocationConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            metrics_listen: None,
            ..LocationConfig::default()
        };
        services.push(
            location::start_with(
                cfg,
                redis_backend(&r, "grpc_surface", Policy::default()),
                edge_tokens(),
                AuthMetrics::default(),
            )
            .await
            .expect("location service"),
        );
    }
    ready(&*services[0].backend).await;
    let client = |i: usize| {
        LocationClient::new(ClientConfig {
            endpoint: format!("http://{}", services[i].addr),
            token: Some(edge_token()),
            ..ClientConfig::default()
        })
        .unwrap()
    };
    let (a, b) = (client(0), client(1));

    // Watch on replica A, filtered to one AOR; write through replica B.
    let mut stream = a
        .grpc()
        .watch_bindings(pb::WatchBindingsRequest {
            aor: "sip:wes@example.com".into(),
        })
        .await
        .expect("watch")
        .into_inner();
    b.register_request(&req(
        "sip:other@example.com",
        "o1",
        1,
        &[("sip:other@192.0.2.8", Some(600), None)],
    ))
    .await
    .unwrap()
    .unwrap();
    b.register_request(&req(
        "sip:wes@example.com",
        "w1",
        1,
        &[("sip:wes@192.0.2.9", Some(600), None)],
    ))
    .await
    .unwrap()
    .unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(3), stream.message())
        .await
        .expect("event in time")
        .expect("stream ok")
        .expect("an event");
    assert_eq!(
        (ev.aor.as_str(), ev.added),
        ("sip:wes@example.com", 1),
        "only the watched AOR"
    );
    assert_eq!(ev.bindings[0].contact, "sip:wes@192.0.2.9");

    // Dialog records through gRPC.
    let mut g = b.grpc();
    g.put_dialog(pb::PutDialogRequest {
        dialog: Some(pb::Dialog {
            call_id: "g-1".into(),
            from_tag: "f".into(),
            caller: "sip:wes@example.com".into(),
            started_at_ms: 10,
            ..Default::default()
        }),
        ttl_secs: 0,
        touch_only: false,
    })
    .await
    .unwrap();
    let ended = a
        .grpc()
        .end_dialog(pb::EndDialogRequest {
            call_id: "g-1".into(),
            from_tag: "f".into(),
            ended_at_ms: 20,
            end_reason: "bye".into(),
            status: 200,
            ttl_secs: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .dialog
        .expect("ended record");
    assert_eq!(
        (
            ended.caller.as_str(),
            ended.started_at_ms,
            ended.ended_at_ms
        ),
        ("sip:wes@example.com", 10, 20)
    );

    // Malformed input is refused, not stored.
    let err = a
        .grpc()
        .lookup(pb::LookupRequest {
            aor: "sip:Wes@EXAMPLE.com".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = a
        .grpc()
        .put_dialog(pb::PutDialogRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    for s in services {
        s.stop().await;
    }
}

/// `sip_auth::NonceUses` as the edges get it: over gRPC (`LocationClient`) and in
/// process (`InProcess`, the all-in-one), sharing one set. An API that cannot answer
/// (unreachable, or admin-only) is `Unavailable` (the edge's 503), never a verdict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn use_nonce_over_grpc_and_in_process() {
    use sip_auth::NonceUses;
    let ttl = Duration::from_secs(300);
    let backend: Arc<dyn Backend> =
        Arc::new(MemoryBackend::new(policy(), sip_auth::MemoryStore::new()));
    let serve = |admin_only: bool| {
        let backend = backend.clone();
        async move {
            let cfg = LocationConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
                metrics_listen: None,
                admin_only,
                ..LocationConfig::default()
            };
            location::start_with(cfg, backend, edge_tokens(), AuthMetrics::default())
                .await
                .expect("service")
        }
    };
    let client = |addr: std::net::SocketAddr| {
        LocationClient::new(ClientConfig {
            endpoint: format!("http://{addr}"),
            token: Some(edge_token()),
            ..ClientConfig::default()
        })
        .unwrap()
    };
    let svc = serve(false).await;
    let c = client(svc.addr);
    assert!(c.first_use("n1", "00000001", ttl).await.unwrap());
    assert!(!c.first_use("n1", "00000001", ttl).await.unwrap(), "replay");
    let in_process = location::InProcess(backend.clone());
    assert!(
        !in_process.first_use("n1", "00000001", ttl).await.unwrap(),
        "one set behind both"
    );
    assert!(in_process.first_use("n1", "00000002", ttl).await.unwrap());
    assert!(!c.first_use("n1", "00000002", ttl).await.unwrap());
    let bad = c
        .grpc()
        .use_nonce(pb::UseNonceRequest {
            nonce: String::new(),
            nc: "00000001".into(),
            ttl_secs: 300,
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);

    // The all-in-one's admin-only API refuses it like the edges' other calls.
    let admin = serve(true).await;
    let a = client(admin.addr);
    let denied = a
        .grpc()
        .use_nonce(pb::UseNonceRequest {
            nonce: "n2".into(),
            nc: "00000001".into(),
            ttl_secs: 300,
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    assert!(matches!(
        a.first_use("n2", "00000001", ttl).await,
        Err(sip_auth::Error::Unavailable(_))
    ));
    // Nobody listening: unavailable, not a verdict.
    let gone = svc.addr;
    svc.stop().await;
    admin.stop().await;
    assert!(matches!(
        client(gone).first_use("n3", "00000001", ttl).await,
        Err(sip_auth::Error::Unavailable(_))
    ));
}

/// After a loss (FLUSHALL of a standalone Redis, or of one master of a cluster), "no such
/// user" and "no binding" are never answered: what is still there is served, what is
/// gone is `DataLoss` (UNAVAILABLE, the edge's 503). Provisioning again (the marker)
/// makes "not found" an answer again.
async fn loss_is_never_not_found(b: Arc<dyn Backend>, flush: impl Fn()) {
    ready(&*b).await;
    let now = location::server::unix_now();
    let creds = sip_auth::Credentials::from_password("u", "loss.example", "pw");
    let users: Vec<String> = (0..30).map(|i| format!("user{i}")).collect();
    for u in &users {
        b.put_user(u, "loss.example", &creds).await.unwrap();
        b.register(
            req(
                &format!("sip:{u}@loss.example"),
                "c",
                1,
                &[("sip:x@192.0.2.1", Some(600), None)],
            ),
            now,
        )
        .await
        .unwrap()
        .unwrap();
    }
    let nobody = Aor::parse("sip:nobody@loss.example").unwrap();
    assert!(
        b.credentials("nobody", "loss.example")
            .await
            .unwrap()
            .is_none()
    );
    assert!(b.lookup(&nobody, now).await.unwrap().is_empty());
    assert!(b.marker_present().await.unwrap());

    flush();
    assert!(!b.marker_present().await.unwrap(), "the loss is seen");
    let (mut kept, mut lost) = (0, 0);
    for u in &users {
        match b.credentials(u, "loss.example").await {
            Ok(Some(_)) => kept += 1,
            Err(location::BackendError::DataLoss) => lost += 1,
            other => panic!("{u}: {other:?}"),
        }
        let aor = Aor::parse(&format!("sip:{u}@loss.example")).unwrap();
        match b.lookup(&aor, now).await {
            Ok(v) if !v.is_empty() => {}
            Err(location::BackendError::DataLoss) => {}
            other => panic!("{u}: {other:?}"),
        }
    }
    assert!(lost > 0, "kept {kept}, lost {lost}");
    assert!(matches!(
        b.credentials("nobody", "loss.example").await,
        Err(location::BackendError::DataLoss)
    ));
    location::integrity::provision(&*b, None).await.unwrap();
    assert!(b.marker_present().await.unwrap());
    assert!(
        b.credentials("nobody", "loss.example")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_flushed_is_data_loss_not_not_found() {
    let dir = workdir("loss_redis");
    let r = Redis::own_standalone(&dir);
    let port = r.port();
    loss_is_never_not_found(redis_backend(&r, "loss_redis", policy()), || {
        assert_eq!(cli(port, &["FLUSHALL"]).trim(), "OK");
    })
    .await;
}

/// One master of three comes back empty: its share is lost, the others' kept and served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_redis_cluster_master_flushed_is_data_loss_not_not_found() {
    let dir = workdir("loss_cluster");
    let r = Redis::own_cluster(&dir);
    let port = r.procs[1].port;
    loss_is_never_not_found(redis_backend(&r, "loss_cluster", policy()), || {
        assert_eq!(cli(port, &["FLUSHALL"]).trim(), "OK");
    })
    .await;
}

/// The password of the Redis servers started with one here.
const REDIS_PASSWORD: &str = "redis-pass-0123_x";

/// A backend on `r` presenting `password` (standalone, cluster seeds, every node).
fn redis_backend_with_password(r: &Redis, test: &str, password: &str) -> Arc<dyn Backend> {
    let opts = RedisOptions {
        password: Some(RedisPassword::new(password)),
        ..redis_options(r, test)
    };
    Arc::new(RedisBackend::new(opts, policy()).expect("backend"))
}

/// `r`'s URLs with `password` written into them (`redis://:PASSWORD@host:port`).
fn with_password_in_urls(r: &Redis, password: &str) -> Redis {
    Redis {
        urls: r
            .urls
            .iter()
            .map(|u| u.replacen("redis://", &format!("redis://:{password}@"), 1))
            .collect(),
        cluster: r.cluster,
        procs: Vec::new(),
    }
}

/// Every data path of the backend against a Redis requiring a password: the pool or
/// the cluster client, the change feed's subscription, and the per-node connections of
/// listing and counting (a cluster's masters come from CLUSTER NODES without it).
async fn conformance_with_password(r: &Redis, test: &str) {
    conformance(redis_backend_with_password(
        r,
        &format!("{test}_c"),
        REDIS_PASSWORD,
    ))
    .await;
    listing(redis_backend_with_password(
        r,
        &format!("{test}_l"),
        REDIS_PASSWORD,
    ))
    .await;
    calls_listing(redis_backend_with_password(
        r,
        &format!("{test}_d"),
        REDIS_PASSWORD,
    ))
    .await;
    // A password written into the URLs keeps working, for the nodes found too.
    let in_url = with_password_in_urls(r, REDIS_PASSWORD);
    listing(redis_backend(&in_url, &format!("{test}_u"), policy())).await;
    // A wrong password never answers: every call fails (the service then answers
    // UNAVAILABLE), none says "not found".
    let wrong = redis_backend_with_password(r, &format!("{test}_w"), "not-the-password");
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(1) {
        assert!(wrong.ping().await.is_err());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(wrong.credentials("alice", "example.com").await.is_err());
    assert!(wrong.list("", 10, 0).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_with_a_password_on_every_connection() {
    let dir = workdir("redis_password");
    let r = Redis::own_standalone_auth(&dir, Some(REDIS_PASSWORD));
    conformance_with_password(&r, "redis_password").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_with_requirepass_and_masterauth_on_every_node() {
    let dir = workdir("redis_cluster_password");
    let r = Redis::own_cluster_auth(&dir, Some(REDIS_PASSWORD));
    conformance_with_password(&r, "redis_cluster_password").await;
}

/// The service as a pod runs it: the password in a Secret's file, given by
/// `--redis-password-file` (SIPCLUSTER_REDIS_PASSWORD_FILE).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_location_service_reads_the_redis_password_from_a_file() {
    let test = "redis_password_service";
    let dir = workdir(test);
    let file = dir.join("redis-password");
    // As `kubectl create secret` from a file an editor saved: a final newline.
    std::fs::write(&file, format!("{REDIS_PASSWORD}\n")).expect("password file");
    let file = file.display().to_string();
    let standalone = Redis::own_standalone_auth(&dir, Some(REDIS_PASSWORD));
    let cluster = Redis::own_cluster_auth(&dir, Some(REDIS_PASSWORD));
    let tokens = common::token_files(&dir);
    let realm = "sipcluster.local";

    // A file that cannot be read stops the start, naming the setting.
    let mut args: Vec<String> = ["location", "--listen", "127.0.0.1:0", "--metrics", "off"]
        .map(str::to_owned)
        .to_vec();
    args.extend(standalone.location_args(&prefix(test)));
    args.extend(["--edge-token-file".into(), tokens.edge_str()]);
    args.extend([
        "--redis-password-file".into(),
        dir.join("missing").display().to_string(),
    ]);
    let o = run_cli(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_ne!(o.code, Some(0), "{o:?}");
    assert!(o.stderr.contains("backend.password_file"), "{}", o.stderr);

    // Without the password: up, not ready, saying why; every call UNAVAILABLE (the
    // edges' 503), never NOT_FOUND or PERMISSION_DENIED (a 404 or 403 to a phone).
    let bare = standalone.location_args(&prefix(test));
    let bare: Vec<&str> = bare.iter().map(String::as_str).collect();
    let unready = Server::location_unready(&dir, "no-password", &bare);
    let (code, body) = http_get(unready.metrics, "/readyz").expect("/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("backend unreachable"), "{body}");
    let edge =
        common::location_client(&format!("http://{}", unready.sip), Some(common::EDGE_TOKEN));
    for r in [
        edge.fetch_credentials("alice", realm).await.map(|_| ()),
        edge.lookup_aor(&Aor::parse("sip:alice@sipcluster.local").unwrap())
            .await
            .map(|_| ()),
    ] {
        match r {
            Err(location_client::ClientError::Call(s)) => {
                assert_eq!(s.code(), tonic::Code::Unavailable, "{s:?}")
            }
            other => panic!("expected UNAVAILABLE, got {other:?}"),
        }
    }
    let log = unready.log();
    assert!(
        log.contains("backend unreachable")
            && (log.contains("NOAUTH") || log.contains("uthentication")),
        "{log}"
    );

    // With the file: ready, serving the users file's credentials and registrations, on a
    // standalone Redis and on a cluster (listing reads every master, each with the
    // password).
    for (name, r) in [("standalone", &standalone), ("cluster", &cluster)] {
        let mut extra = r.location_args(&prefix(&format!("{test}_{name}")));
        extra.extend(["--redis-password-file".into(), file.clone()]);
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let loc = Server::location(&dir, name, &extra);
        let url = format!("http://{}", loc.sip);
        let edge = common::location_client(&url, Some(common::EDGE_TOKEN));
        let admin = common::location_client(&url, Some(common::ADMIN_TOKEN));
        assert!(
            edge.fetch_credentials("alice", realm)
                .await
                .expect("credentials")
                .is_some(),
            "{name}: alice from the users file"
        );
        let outcome = edge
            .register_request(&req(
                "sip:alice@sipcluster.local",
                &format!("{name}-1"),
                1,
                &[("sip:alice@192.0.2.7:5060", Some(600), None)],
            ))
            .await
            .expect("register")
            .expect("accepted");
        assert_eq!(outcome.bindings.len(), 1, "{name}");
        let (listed, _, _) = admin.list_bindings("", 100).await.expect("list");
        assert!(
            listed
                .iter()
                .any(|(aor, _)| aor.as_str() == "sip:alice@sipcluster.local"),
            "{name}: {listed:?}"
        );
        let log = loc.log();
        assert!(log.contains("with a password"), "{name}: {log}");
        assert!(
            !log.contains("pass-0123"),
            "{name}: the password in the log: {log}"
        );
    }
}
