//! Runs parse + transaction-key access in a loop: a fixed workload for profilers
//! (`valgrind --tool=callgrind`, `perf record`), which count instructions where the
//! Criterion bench measures time.
//!
//! `cargo run --release --example parse_loop -- [invite|register] [iterations] [index|key|validate|rsip]`
//!
//! `rsip` runs the rsip 0.4 baseline (parse + typed Via/CSeq/Call-ID/From tag), so that
//! callgrind gives a noise-free instruction ratio next to the bench's time ratio.

use std::hint::black_box;

use bytes::Bytes;
use sip_core::{Datagram, Limits, parse_datagram};

fn main() {
    let mut args = std::env::args().skip(1);
    let which = args.next().unwrap_or_else(|| "invite".into());
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let what = args.next().unwrap_or_else(|| "key".into());
    let input: &'static [u8] = match which.as_str() {
        "register" => include_bytes!("../benches/data/register.sip"),
        _ => include_bytes!("../benches/data/invite.sip"),
    };
    let bytes = Bytes::from_static(input);
    let limits = Limits::default();
    let mut acc = 0usize;
    if what == "rsip" {
        use rsip::prelude::*;
        for _ in 0..n {
            let Ok(m) = rsip::SipMessage::try_from(black_box(input)) else {
                eprintln!("rsip does not parse the input");
                std::process::exit(1);
            };
            let branch = m
                .via_header()
                .ok()
                .and_then(|v| v.typed().ok())
                .map_or(0, |v| v.branch().map_or(0, |b| b.to_string().len()));
            let seq = m
                .cseq_header()
                .ok()
                .and_then(|c| c.typed().ok())
                .map_or(0, |c| c.seq as usize);
            let cid = m.call_id_header().map_or(0, |c| c.value().len());
            let tag = m
                .from_header()
                .ok()
                .and_then(|f| f.typed().ok())
                .map_or(0, |f| f.tag().map_or(0, |t| t.value().len()));
            acc += branch + seq + cid + tag;
        }
        println!("{acc}");
        return;
    }
    for _ in 0..n {
        let Ok(Datagram::Message(m)) = parse_datagram(black_box(bytes.clone()), &limits) else {
            eprintln!("input does not parse");
            std::process::exit(1);
        };
        match what.as_str() {
            "index" => acc += m.header_count(),
            "validate" => acc += m.validate_request().is_ok() as usize,
            _ => {
                let via = m
                    .top_via()
                    .map(|v| v.branch.map_or(0, str::len))
                    .unwrap_or(0);
                let cseq = m.cseq().map(|c| c.seq as usize).unwrap_or(0);
                let cid = m.call_id().map(str::len).unwrap_or(0);
                let tag = m.from_tag().ok().flatten().map_or(0, str::len);
                acc += via + cseq + cid + tag;
            }
        }
    }
    println!("{acc}");
}
