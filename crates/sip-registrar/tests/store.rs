//! `MemoryStore` through the `LocationStore` trait object, including concurrent REGISTERs
//! for one AOR.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;

use common::{block_on, reg, uris};
use sip_registrar::{
    Aor, LocationStore, MemoryStore, Policy, RegisterError, StoreError, StoreStats,
};

const T0: u64 = 1_700_000_000;

fn store(policy: Policy) -> Arc<dyn LocationStore> {
    Arc::new(MemoryStore::new(policy))
}

fn alice() -> Aor {
    Aor::parse("sip:alice@example.com").unwrap()
}

#[test]
fn register_lookup_remove_and_stats() {
    let s = store(Policy::default());
    let out = block_on(
        s.register(
            reg("c1", 1)
                .contact("<sip:alice@192.0.2.10>;q=0.5;expires=60")
                .contact("<sip:alice@198.51.100.7>")
                .request(T0),
            T0,
        ),
    )
    .unwrap();
    assert_eq!(out.added, 2);
    block_on(
        s.register(
            reg("c1", 1)
                .to("<sip:bob@example.com>")
                .contact("<sip:bob@192.0.2.20>")
                .request(T0),
            T0,
        ),
    )
    .unwrap();
    // The AOR is canonical: a differently written To finds the same bindings.
    let found =
        block_on(s.lookup(&Aor::parse("sip:%61lice@EXAMPLE.com:5060").unwrap(), T0 + 1)).unwrap();
    assert_eq!(
        uris(&found),
        ["sip:alice@198.51.100.7", "sip:alice@192.0.2.10"]
    );
    assert_eq!(
        block_on(s.stats(T0 + 1)).unwrap(),
        StoreStats {
            aors: 2,
            bindings: 3
        }
    );
    // The q=0.5 binding lapses at T0+60: lookup and stats stop seeing it.
    let found = block_on(s.lookup(&alice(), T0 + 60)).unwrap();
    assert_eq!(uris(&found), ["sip:alice@198.51.100.7"]);
    assert_eq!(
        block_on(s.stats(T0 + 60)).unwrap(),
        StoreStats {
            aors: 2,
            bindings: 2
        }
    );
    block_on(s.remove_all(&alice())).unwrap();
    assert!(block_on(s.lookup(&alice(), T0 + 61)).unwrap().is_empty());
    assert_eq!(block_on(s.stats(T0 + 61)).unwrap().aors, 1);
    // Everything lapses eventually, with no janitor.
    assert_eq!(
        block_on(s.stats(T0 + 100_000)).unwrap(),
        StoreStats::default()
    );
    assert!(
        block_on(s.lookup(&alice(), T0 + 100_000))
            .unwrap()
            .is_empty()
    );
}

#[test]
fn a_failed_register_changes_nothing_in_the_store() {
    let s = store(Policy {
        max_contacts: 3,
        ..Policy::default()
    });
    block_on(
        s.register(
            reg("c1", 10)
                .contact("<sip:alice@192.0.2.10>, <sip:alice@192.0.2.11>")
                .request(T0),
            T0,
        ),
    )
    .unwrap();
    let before = block_on(s.lookup(&alice(), T0 + 1)).unwrap();
    let failures = [
        // New contact plus an out-of-order removal.
        reg("c1", 9)
            .contact("<sip:alice@192.0.2.12>")
            .contact("<sip:alice@192.0.2.10>;expires=0"),
        // Removal plus a too-short interval.
        reg("c2", 1)
            .contact("<sip:alice@192.0.2.11>;expires=0")
            .contact("<sip:alice@192.0.2.13>;expires=5"),
        // Growth beyond the limit of 3.
        reg("c2", 1).contact("<sip:alice@192.0.2.14>, <sip:alice@192.0.2.15>"),
        // `*` without Expires: 0.
        reg("c2", 1).contact("*"),
        // `*` out of order.
        reg("c1", 10).contact("*").expires(0),
    ];
    for r in failures {
        let e = block_on(s.register(r.request(T0 + 1), T0 + 1)).unwrap_err();
        assert!(matches!(e, StoreError::Rule(_)), "{e:?}");
        assert_eq!(
            block_on(s.lookup(&alice(), T0 + 1)).unwrap(),
            before,
            "{}",
            r.text()
        );
    }
    let e = block_on(
        s.register(
            reg("c2", 1)
                .contact("<sip:alice@192.0.2.13>;expires=5")
                .request(T0),
            T0,
        ),
    )
    .unwrap_err();
    assert_eq!(
        e,
        StoreError::Rule(RegisterError::IntervalTooBrief { min_expires: 60 })
    );
    assert_eq!(e.status(), 423);
}

#[test]
fn a_query_does_not_create_an_aor_and_star_deletes_it() {
    let s = store(Policy::default());
    let out = block_on(s.register(reg("c1", 1).request(T0), T0)).unwrap();
    assert!(out.bindings.is_empty());
    assert_eq!(block_on(s.stats(T0)).unwrap(), StoreStats::default());
    block_on(s.register(
        reg("c1", 2).contact("<sip:alice@192.0.2.10>").request(T0),
        T0,
    ))
    .unwrap();
    block_on(s.register(reg("c1", 3).contact("*").expires(0).request(T0), T0)).unwrap();
    assert_eq!(block_on(s.stats(T0)).unwrap(), StoreStats::default());
}

/// Each thread owns a Call-ID and a contact and refreshes it with increasing CSeqs; all
/// threads hit the same AOR at once. Serialized read-apply-write keeps every thread's
/// binding, with its last CSeq and expiry; a lost update would drop or roll back one.
#[test]
fn concurrent_refreshes_of_one_aor_keep_every_thread_s_last_write() {
    const THREADS: u32 = 8;
    const ROUNDS: u32 = 150;
    let s = store(Policy {
        max_contacts: THREADS as usize,
        ..Policy::default()
    });
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let s = Arc::clone(&s);
            thread::spawn(move || {
                for cseq in 1..=ROUNDS {
                    let r = reg(&format!("thread-{t}"), cseq)
                        .contact(&format!("<sip:alice@10.0.0.{t}>;expires={}", 60 + cseq));
                    block_on(s.register(r.request(T0), T0)).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let found = block_on(s.lookup(&alice(), T0)).unwrap();
    assert_eq!(found.len(), THREADS as usize);
    let by_uri: BTreeMap<_, _> = found
        .iter()
        .map(|b| (b.contact.clone(), (b.call_id.clone(), b.cseq, b.expires_at)))
        .collect();
    for t in 0..THREADS {
        assert_eq!(
            by_uri[&format!("sip:alice@10.0.0.{t}")],
            (format!("thread-{t}"), ROUNDS, T0 + 60 + u64::from(ROUNDS))
        );
    }
}

/// All threads share one Call-ID and one contact, and draw CSeqs from one counter, so
/// requests reach the store out of order. Whatever the interleaving, the highest CSeq can
/// never be out of order, so it is what remains; every other request either applied or
/// failed as out of order, never anything else.
#[test]
fn concurrent_reordered_cseqs_end_with_the_highest() {
    const THREADS: u32 = 8;
    const PER_THREAD: u32 = 200;
    let s = store(Policy::default());
    let next = Arc::new(AtomicU32::new(1));
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            let s = Arc::clone(&s);
            let next = Arc::clone(&next);
            thread::spawn(move || {
                let (mut applied, mut refused) = (0u32, 0u32);
                for _ in 0..PER_THREAD {
                    let cseq = next.fetch_add(1, Ordering::SeqCst);
                    let r = reg("shared", cseq).contact("<sip:alice@192.0.2.10>");
                    match block_on(s.register(r.request(T0), T0)) {
                        Ok(out) => {
                            assert_eq!(out.bindings.len(), 1);
                            assert_eq!(out.bindings[0].cseq, cseq);
                            applied += 1;
                        }
                        Err(StoreError::Rule(RegisterError::OutOfOrder { stored, received })) => {
                            assert!(received < stored, "{received} refused below {stored}");
                            refused += 1;
                        }
                        Err(e) => panic!("{e:?}"),
                    }
                }
                (applied, refused)
            })
        })
        .collect();
    let mut applied = 0;
    for h in handles {
        let (a, r) = h.join().unwrap();
        assert_eq!(a + r, PER_THREAD);
        applied += a;
    }
    assert!(applied >= 1);
    let found = block_on(s.lookup(&alice(), T0)).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].cseq, THREADS * PER_THREAD);
}

/// Threads race to add distinct contacts to an AOR limited to fewer: exactly the limit
/// succeed, the rest are refused, and the stored set holds exactly the winners.
#[test]
fn concurrent_additions_never_exceed_the_limit() {
    const THREADS: u32 = 16;
    const LIMIT: usize = 5;
    let s = store(Policy {
        max_contacts: LIMIT,
        ..Policy::default()
    });
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let s = Arc::clone(&s);
            thread::spawn(move || {
                let r = reg(&format!("c{t}"), 1).contact(&format!("<sip:alice@10.0.1.{t}>"));
                match block_on(s.register(r.request(T0), T0)) {
                    Ok(_) => Some(format!("sip:alice@10.0.1.{t}")),
                    Err(StoreError::Rule(RegisterError::TooManyContacts { limit })) => {
                        assert_eq!(limit, LIMIT);
                        None
                    }
                    Err(e) => panic!("{e:?}"),
                }
            })
        })
        .collect();
    let mut winners: Vec<String> = handles
        .into_iter()
        .filter_map(|h| h.join().unwrap())
        .collect();
    assert_eq!(winners.len(), LIMIT);
    let mut stored: Vec<String> = block_on(s.lookup(&alice(), T0))
        .unwrap()
        .into_iter()
        .map(|b| b.contact)
        .collect();
    winners.sort();
    stored.sort();
    assert_eq!(stored, winners);
}

#[test]
fn memory_store_reports_its_policy() {
    let p = Policy {
        max_contacts: 3,
        ..Policy::default()
    };
    assert_eq!(MemoryStore::new(p).policy(), &p);
    assert_eq!(MemoryStore::default().policy(), &Policy::default());
}
