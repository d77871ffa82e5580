//! Heap allocations per operation, counted by a global allocator wrapper.
//!
//! The parse + index and transaction-key paths must not allocate at all; rsip 0.4 is
//! counted on the same input to show the counter works and to record the baseline.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::Bytes;
use rsip::prelude::*;
use sip_core::{Datagram, Limits, parse_datagram};

struct Counting;

thread_local! {
    // Per thread, so the test harness's other threads do not disturb the count.
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; only bumps a thread-local counter.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn count<R>(f: impl FnOnce() -> R) -> (usize, R) {
    let before = ALLOCS.with(Cell::get);
    let r = f();
    (ALLOCS.with(Cell::get) - before, r)
}

const INVITE: &[u8] = include_bytes!("../benches/data/invite.sip");
const REGISTER: &[u8] = include_bytes!("../benches/data/register.sip");

#[test]
fn parse_index_and_txn_key_do_not_allocate() {
    let limits = Limits::default();
    for (name, input) in [("invite", INVITE), ("register", REGISTER)] {
        let bytes = Bytes::from_static(input);
        let (n, msg) = count(|| match parse_datagram(bytes.clone(), &limits) {
            Ok(Datagram::Message(m)) => m,
            other => panic!("{other:?}"),
        });
        assert_eq!(n, 0, "{name}: parse + index allocated {n} times");
        assert!(msg.header_count() >= 10);

        let (n, total) = count(|| {
            let via = msg.top_via().unwrap();
            let cseq = msg.cseq().unwrap();
            let call_id = msg.call_id().unwrap();
            let tag = msg.from_tag().unwrap().unwrap();
            let key = msg.server_key().unwrap();
            via.branch.unwrap().len()
                + cseq.seq as usize
                + call_id.len()
                + tag.len()
                + matches!(key, sip_core::ServerKey::Rfc3261 { .. }) as usize
        });
        assert_eq!(
            n, 0,
            "{name}: typed transaction-key access allocated {n} times"
        );
        assert!(total > 0);

        let (n, ()) = count(|| msg.validate_request().unwrap());
        assert_eq!(n, 0, "{name}: validation allocated {n} times");

        let (rsip_allocs, _) = count(|| {
            let m = rsip::SipMessage::try_from(input).unwrap();
            let via = m.via_header().unwrap().typed().unwrap();
            let cseq = m.cseq_header().unwrap().typed().unwrap();
            let from = m.from_header().unwrap().typed().unwrap();
            (
                via.branch().is_some(),
                cseq.seq,
                from.tag().is_some(),
                m.call_id_header().unwrap().value().len(),
            )
        });
        assert!(
            rsip_allocs > 10,
            "the counter must see rsip's allocations ({rsip_allocs})"
        );
        eprintln!(
            "{name}: sip-core 0 allocations, rsip 0.4 {rsip_allocs} allocations for parse + typed key"
        );
    }
}

#[test]
fn headers_beyond_the_inline_index_cost_one_allocation() {
    let mut msg = b"OPTIONS sip:a SIP/2.0\r\n".to_vec();
    for i in 0..(sip_core::INLINE_HEADERS + 8) {
        msg.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    msg.extend_from_slice(b"l: 0\r\n\r\n");
    let bytes = Bytes::from(msg);
    let (n, r) = count(|| parse_datagram(bytes.clone(), &Limits::default()));
    assert!(r.is_ok());
    assert!((1..=2).contains(&n), "spilled index: {n} allocations");
}
