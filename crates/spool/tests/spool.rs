//! The spool on a real directory: durability across reopen, torn writes, corrupt CRCs,
//! the size bound, out-of-order acknowledgements, and a property test of crash and
//! replay against a model.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::path::Path;

use proptest::prelude::*;
use spool::{Config, RECORD_HEADER, Spool, SpoolError};

fn cfg(dir: &Path) -> Config {
    Config {
        dir: dir.to_owned(),
        segment_bytes: 1024,
        max_bytes: 8 * 1024,
    }
}

fn payload(i: u64) -> Vec<u8> {
    format!("event-{i:04}-{}", "x".repeat((i % 7) as usize)).into_bytes()
}

fn segments(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".seg"))
        .collect();
    v.sort();
    v
}

fn pending(s: &Spool) -> Vec<u64> {
    s.pending_from(0).collect()
}

#[test]
fn appended_events_survive_a_reopen_until_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, rec) = Spool::open(cfg(dir.path())).unwrap();
    assert_eq!(rec.pending, 0);
    let ids: Vec<u64> = (0..100).map(|i| s.append(&payload(i)).unwrap()).collect();
    assert_eq!(
        ids,
        (1..=100).collect::<Vec<_>>(),
        "ids go up by one from 1"
    );
    assert_eq!(s.read(7).unwrap(), payload(6), "readable before the sync");
    s.sync().unwrap();
    assert_eq!(s.unsynced(), 0);
    assert!(
        segments(dir.path()).len() >= 3,
        "rolled: {:?}",
        segments(dir.path())
    );
    for id in 1..=60 {
        s.ack(id).unwrap();
    }
    s.ack(3).unwrap(); // twice: harmless
    s.sync().unwrap();
    let on_disk = s.bytes();
    drop(s);

    let (mut s, rec) = Spool::open(cfg(dir.path())).unwrap();
    assert_eq!(rec.pending, 40);
    assert!(!rec.checkpoint_lost);
    assert_eq!((rec.torn_bytes, rec.corrupt_regions), (0, 0));
    assert_eq!(pending(&s), (61..=100).collect::<Vec<_>>());
    for id in 61..=100 {
        assert_eq!(s.read(id).unwrap(), payload(id - 1));
    }
    assert!(s.bytes() <= on_disk, "acknowledged segments are gone");
    assert!(matches!(s.read(5), Err(SpoolError::Unknown(5))));
    assert_eq!(s.append(b"after").unwrap(), 101, "ids continue");
    for id in 61..=101 {
        s.ack(id).unwrap();
    }
    s.sync().unwrap();
    assert_eq!(s.depth(), 0);
    assert_eq!(
        segments(dir.path()).len(),
        1,
        "only the active segment is left"
    );
}

#[test]
fn a_torn_write_is_cut_and_appends_go_on_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = Spool::open(cfg(dir.path())).unwrap();
    for i in 0..10 {
        s.append(&payload(i)).unwrap();
    }
    s.sync().unwrap();
    drop(s);
    // A crash in the middle of writing record 11: its header and half its payload.
    let seg = dir.path().join(&segments(dir.path())[0]);
    let whole = fs::metadata(&seg).unwrap().len();
    let mut torn = Vec::new();
    torn.extend_from_slice(&40u32.to_le_bytes());
    torn.extend_from_slice(&0xdead_beefu32.to_le_bytes());
    torn.extend_from_slice(&11u64.to_le_bytes());
    torn.extend_from_slice(&[b'y'; 20]);
    let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
    std::io::Write::write_all(&mut f, &torn).unwrap();
    drop(f);

    let (mut s, rec) = Spool::open(cfg(dir.path())).unwrap();
    assert_eq!(rec.pending, 10);
    assert_eq!(rec.torn_bytes, torn.len() as u64);
    assert_eq!(rec.corrupt_regions, 0);
    assert_eq!(fs::metadata(&seg).unwrap().len(), whole, "cut back");
    assert_eq!(s.append(b"next").unwrap(), 11);
    s.sync().unwrap();
    drop(s);
    let (mut s, rec) = Spool::open(cfg(dir.path())).unwrap();
    assert_eq!(rec.pending, 11);
    assert_eq!((rec.torn_bytes, rec.corrupt_regions), (0, 0));
    assert_eq!(s.read(11).unwrap(), &b"next"[..]);
}

#[test]
fn a_corrupt_record_is_skipped_and_counted_and_the_rest_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = Spool::open(cfg(dir.path())).unwrap();
    let mut offsets = BTreeMap::new();
    let mut at = 0u64;
    for i in 0..10 {
        let id = s.append(&payload(i)).unwrap();
        offsets.insert(id, at);
        at += (RECORD_HEADER + payload(i).len()) as u64;
    }
    s.sync().unwrap();
    drop(s);
    // One bit of record 5's payload flips on disk.
    let seg = dir.path().join(&segments(dir.path())[0]);
    let mut data = fs::read(&seg).unwrap();
    data[(offsets[&5] as usize) + RECORD_HEADER + 2] ^= 0x10;
    fs::write(&seg, &data).unwrap();

    let (mut s, rec) = Spool::open(cfg(dir.path())).unwrap();
    assert_eq!(rec.corrupt_regions, 1);
    assert_eq!(rec.torn_bytes, 0);
    assert_eq!(pending(&s), vec![1, 2, 3, 4, 6, 7, 8, 9, 10]);
    for id in pending(&s) {
        assert_eq!(s.read(id).unwrap(), payload(id - 1));
    }
    assert_eq!(s.append(b"z").unwrap(), 11);
}

#[test]
fn the_size_bound_refuses_and_acknowledgements_make_room() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = Spool::open(Config {
        dir: dir.path().to_owned(),
        segment_bytes: 256,
        max_bytes: 1024,
    })
    .unwrap();
    let mut ids = Vec::new();
    let full = loop {
        match s.append(&[b'e'; 40]) {
            Ok(id) => ids.push(id),
            Err(e) => break e,
        }
        assert!(ids.len() < 1000, "never full");
    };
    assert!(
        matches!(full, SpoolError::Full { limit: 1024, .. }),
        "{full}"
    );
    assert!(s.bytes() <= 1024);
    assert_eq!(s.depth(), ids.len(), "nothing lost, nothing extra");
    assert!(
        matches!(s.append(&[0; 300]), Err(SpoolError::TooLarge { .. })),
        "larger than a segment"
    );
    s.sync().unwrap();
    for id in &ids {
        s.ack(*id).unwrap();
    }
    // Room comes back a segment at a time: the active segment keeps its acknowledged
    // records until it is full (four of these per 256-byte segment).
    let mut again = 0;
    while s.append(&[b'f'; 40]).is_ok() {
        again += 1;
        assert!(again < 1000, "never full");
    }
    assert!(again + 4 >= ids.len(), "{again} of {}", ids.len());
    assert!(s.bytes() <= 1024);
}

#[test]
fn out_of_order_acknowledgements_replay_from_the_lowest_pending() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = Spool::open(cfg(dir.path())).unwrap();
    for i in 0..6 {
        s.append(&payload(i)).unwrap();
    }
    for id in [1, 2, 4, 6] {
        s.ack(id).unwrap();
    }
    assert_eq!(s.low_watermark(), 3);
    s.sync().unwrap();
    drop(s);
    let (s, rec) = Spool::open(cfg(dir.path())).unwrap();
    // 4 and 6 were acknowledged above the watermark: sent again (same record, so the
    // same event id inside), which the consumer dedupes. 1 and 2 are not.
    assert_eq!(pending(&s), vec![3, 4, 5, 6]);
    assert_eq!(rec.pending, 4);
}

#[test]
fn a_lost_checkpoint_replays_everything_still_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = Spool::open(cfg(dir.path())).unwrap();
    for i in 0..5 {
        s.append(&payload(i)).unwrap();
    }
    s.ack(1).unwrap();
    s.sync().unwrap();
    drop(s);
    fs::remove_file(dir.path().join("checkpoint")).unwrap();
    let (s, rec) = Spool::open(cfg(dir.path())).unwrap();
    assert!(rec.checkpoint_lost);
    assert_eq!(pending(&s), vec![1, 2, 3, 4, 5]);
}

#[derive(Debug, Clone)]
enum Op {
    Append(usize),
    /// Acknowledge the n-th pending record (modulo).
    Ack(usize),
    Sync,
    /// The process dies: nothing more is written, the spool is opened again.
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0usize..200).prop_map(Op::Append),
        3 => any::<usize>().prop_map(Op::Ack),
        2 => Just(Op::Sync),
        1 => Just(Op::Crash),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever the sequence of appends, acknowledgements, syncs and crashes: every
    /// synced, unacknowledged event is pending after a crash with its exact payload; only
    /// appended events are ever pending; ids only go up; the bound holds.
    #[test]
    fn crash_and_replay_keep_every_durable_unacknowledged_event(ops in prop::collection::vec(op(), 1..120)) {
        let dir = tempfile::tempdir().unwrap();
        let config = Config { dir: dir.path().to_owned(), segment_bytes: 512, max_bytes: 4096 };
        let (mut s, _) = Spool::open(config.clone()).unwrap();
        // id -> (payload, durable, acknowledged)
        let mut model: BTreeMap<u64, (Vec<u8>, bool, bool)> = BTreeMap::new();
        let mut last_id = 0;
        for op in ops {
            match op {
                Op::Append(n) => {
                    let body = vec![(last_id % 251) as u8; n];
                    match s.append(&body) {
                        Ok(id) => {
                            prop_assert!(id > last_id);
                            last_id = id;
                            model.insert(id, (body, false, false));
                        }
                        Err(SpoolError::Full { .. }) => {}
                        Err(e) => prop_assert!(false, "append: {e}"),
                    }
                }
                Op::Ack(k) => {
                    let live: Vec<u64> = s.pending_from(0).collect();
                    if !live.is_empty() {
                        let id = live[k % live.len()];
                        s.ack(id).unwrap();
                        if let Some(m) = model.get_mut(&id) {
                            m.2 = true;
                        }
                    }
                }
                Op::Sync => {
                    s.sync().unwrap();
                    for m in model.values_mut() {
                        m.1 = true;
                    }
                }
                Op::Crash => {
                    drop(s);
                    let (again, rec) = Spool::open(config.clone()).unwrap();
                    s = again;
                    prop_assert_eq!(rec.corrupt_regions, 0);
                    let live: Vec<u64> = s.pending_from(0).collect();
                    for (id, (body, durable, acked)) in &model {
                        if *durable && !*acked {
                            prop_assert!(live.contains(id), "lost durable event {}", id);
                        }
                        if live.contains(id) {
                            prop_assert_eq!(&s.read(*id).unwrap()[..], &body[..]);
                        }
                    }
                    for id in &live {
                        prop_assert!(model.contains_key(id), "pending {} never appended", id);
                        // Replayed after a crash: it is pending again, whatever its
                        // acknowledgement said (a duplicate the consumer dedupes).
                        if let Some(m) = model.get_mut(id) {
                            m.2 = false;
                        }
                    }
                    // The rest was acknowledged (and may be gone with its segment) or not
                    // durable (lost with the process, as allowed). Record ids are the
                    // spool's own and may be given again past the checkpoint; the event
                    // id inside the payload is what consumers dedupe on.
                    model.retain(|id, _| live.contains(id));
                    for m in model.values_mut() {
                        m.1 = true;
                    }
                    last_id = model.keys().next_back().copied().unwrap_or(0);
                }
            }
            prop_assert!(s.bytes() <= config.max_bytes);
        }
    }
}

#[test]
fn a_second_opener_is_refused_while_the_first_holds_the_spool() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = Spool::open(cfg(dir.path())).unwrap();
    let err = Spool::open(cfg(dir.path())).unwrap_err();
    assert!(matches!(err, spool::SpoolError::Locked { .. }), "{err}");
    assert!(
        err.to_string().contains("in use by another process"),
        "{err}"
    );
    drop(s);
    Spool::open(cfg(dir.path())).expect("free again once the first is gone");
}
