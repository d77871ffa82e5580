//! Parser benchmarks, with rsip 0.4 on the same inputs as the baseline.
//!
//! Inputs: a realistic 1.2 KB INVITE (3 Via, 2 Record-Route, digest Proxy-Authorization,
//! SDP) and a 600 B REGISTER with digest Authorization and an RFC 5626 Contact. Each
//! benchmark counts one message per iteration, so Criterion's `thrpt` is messages/s.
//!
//! * `parse_index`: framing + start line + header index (what every message pays).
//! * `txn_key`: the above plus typed top Via (branch, sent-by), CSeq, Call-ID and From tag,
//!   i.e. what a transaction layer reads to match a message.
//! * `rsip`: rsip 0.4 parse plus the same typed reads (compare with `txn_key`).
//! * `rsip_parse`: rsip 0.4 parse alone (compare with `parse_index`).
//! * `validate`, `forward`: full request validation; proxy forwarding edits.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rsip::prelude::*;
use sip_core::{Datagram, Editor, Limits, SipMessage, parse_datagram};

const INVITE: &[u8] = include_bytes!("data/invite.sip");
const REGISTER: &[u8] = include_bytes!("data/register.sip");

fn parse(b: &Bytes, l: &Limits) -> SipMessage {
    match parse_datagram(b.clone(), l) {
        Ok(Datagram::Message(m)) => m,
        other => panic!("bench input does not parse: {other:?}"),
    }
}

fn txn_key(m: &SipMessage) -> usize {
    let via = m.top_via().expect("via");
    let cseq = m.cseq().expect("cseq");
    let call_id = m.call_id().expect("call-id");
    let tag = m.from_tag().expect("from").expect("tag");
    via.branch.map_or(0, str::len)
        + via.sent_by.port.unwrap_or(0) as usize
        + cseq.seq as usize
        + call_id.len()
        + tag.len()
}

fn rsip_key(b: &[u8]) -> usize {
    let m = rsip::SipMessage::try_from(b).expect("rsip parse");
    let via = m.via_header().expect("via").typed().expect("typed via");
    let cseq = m.cseq_header().expect("cseq").typed().expect("typed cseq");
    let call_id = m.call_id_header().expect("call-id");
    let from = m.from_header().expect("from").typed().expect("typed from");
    via.branch().map_or(0, |b| b.to_string().len())
        + cseq.seq as usize
        + call_id.value().len()
        + from.tag().map_or(0, |t| t.value().len())
}

fn bench(c: &mut Criterion) {
    let limits = Limits::default();
    for (name, input) in [("invite", INVITE), ("register", REGISTER)] {
        let bytes = Bytes::from_static(input);
        // Sanity: both parsers accept the input and read the same transaction fields.
        assert!(txn_key(&parse(&bytes, &limits)) > 0);
        assert!(rsip_key(input) > 0);

        let mut g = c.benchmark_group(name);
        g.throughput(Throughput::Elements(1));
        g.bench_function("parse_index", |b| {
            b.iter(|| parse(black_box(&bytes), &limits))
        });
        g.bench_function("txn_key", |b| {
            b.iter(|| txn_key(&parse(black_box(&bytes), &limits)))
        });
        g.bench_function("rsip", |b| b.iter(|| rsip_key(black_box(input))));
        g.bench_function("rsip_parse", |b| {
            b.iter(|| rsip::SipMessage::try_from(black_box(input)).expect("rsip parse"))
        });
        g.bench_function("validate", |b| {
            b.iter(|| {
                let m = parse(black_box(&bytes), &limits);
                m.validate_request().expect("valid");
                m
            })
        });
        let msg = parse(&bytes, &limits);
        g.bench_function("forward", |b| {
            b.iter(|| {
                let mut ed = Editor::new(black_box(&msg));
                ed.prepend_via(&b"SIP/2.0/UDP 10.0.0.7:5060;branch=z9hG4bK-edge-1"[..]);
                ed.decrement_max_forwards().expect("mf");
                ed.add_record_route(&b"<sip:10.0.0.7;lr>"[..]);
                ed.finish()
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
