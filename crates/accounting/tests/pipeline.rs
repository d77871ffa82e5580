//! The pipeline end to end on a real spool directory: the JSON-lines destination, a
//! destination that goes down and comes back, a restart with a non-empty spool, and
//! deliveries that fail once. (Kafka itself is exercised by the service's tests against
//! a real broker.)

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use accounting::{
    Accounting, AccountingConfig, Busy, Delivery, JsonLines, Metrics, Outgoing, Publisher,
};
use prost::Message;
use proto::cdr::v1::{self as cdr, envelope::Body};

fn envelope(i: u32) -> cdr::Envelope {
    cdr::Envelope {
        event_id: format!("00000000-0000-4000-8000-{i:012}"),
        produced_at_ms: 1_764_950_400_000 + u64::from(i),
        producer: "edge-test".into(),
        body: Some(Body::Event(cdr::CallEvent {
            kind: cdr::CallEventKind::Attempt as i32,
            call: Some(cdr::CallId {
                call_id: format!("call-{i}@test"),
                from_tag: "f".into(),
                to_tag: String::new(),
            }),
            at_ms: 1_764_950_400_000,
            sip_code: 0,
            end_cause: 0,
        })),
    }
}

fn config(dir: &std::path::Path) -> AccountingConfig {
    let mut c = AccountingConfig::new(dir);
    c.retry_backoff = Duration::from_millis(20);
    c
}

/// A destination under the test's control: down (refuses), or up (acknowledges at once,
/// failing each record's first attempt when asked to).
#[derive(Clone, Default)]
struct Switch {
    down: Arc<AtomicBool>,
    fail_first: Arc<AtomicBool>,
    delivered: Arc<Mutex<Vec<String>>>,
    tried: Arc<Mutex<std::collections::HashSet<u64>>>,
}

struct SwitchPublisher {
    s: Switch,
    done: Vec<Delivery>,
    /// Says it is a durable local file: records skip the spool.
    durable: bool,
}

impl Publisher for SwitchPublisher {
    fn publish(&mut self, rec: Outgoing<'_>) -> Result<(), Busy> {
        if self.s.down.load(Ordering::SeqCst) {
            return Err(Busy("down".into()));
        }
        if self.s.fail_first.load(Ordering::SeqCst) && self.s.tried.lock().unwrap().insert(rec.id) {
            self.done.push(Delivery::Failed(rec.id));
            return Ok(());
        }
        let env = cdr::Envelope::decode(rec.envelope).unwrap();
        assert_eq!(
            rec.key,
            match env.body {
                Some(Body::Event(ref e)) => e.call.as_ref().unwrap().call_id.as_bytes().to_vec(),
                _ => unreachable!(),
            },
            "keyed by Call-ID"
        );
        self.s.delivered.lock().unwrap().push(env.event_id);
        self.done.push(Delivery::Acked(rec.id));
        Ok(())
    }
    fn poll(&mut self, _wait: Duration) -> Vec<Delivery> {
        std::mem::take(&mut self.done)
    }
    fn kind(&self) -> &'static str {
        "switch"
    }
    fn durable(&self) -> bool {
        self.durable
    }
}

fn switch(s: &Switch) -> Box<dyn Publisher> {
    Box::new(SwitchPublisher {
        s: s.clone(),
        done: Vec::new(),
        durable: false,
    })
}

/// The same destination, as a durable local file would be (records skip the spool).
fn durable_switch(s: &Switch) -> Box<dyn Publisher> {
    Box::new(SwitchPublisher {
        s: s.clone(),
        done: Vec::new(),
        durable: true,
    })
}

/// Bytes in a spool directory's segment files (written records, acknowledged or not).
fn segment_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

/// The records a spool directory holds (opened as the next start would).
fn spooled(dir: &std::path::Path) -> usize {
    let (spool, _) = spool::Spool::open(spool::Config::new(dir)).unwrap();
    spool.depth()
}

fn record(acc: &Accounting, range: std::ops::Range<u32>) {
    for i in range {
        let e = envelope(i);
        let key = match &e.body {
            Some(Body::Event(ev)) => ev.call.as_ref().unwrap().call_id.clone(),
            _ => unreachable!(),
        };
        assert!(acc.record(&e, &key));
    }
}

fn ids(range: std::ops::Range<u32>) -> Vec<String> {
    range.map(|i| envelope(i).event_id).collect()
}

#[test]
fn json_lines_get_every_event_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cdr.jsonl");
    let metrics = Metrics::default();
    let acc = Accounting::start(
        config(&dir.path().join("spool")),
        Box::new(JsonLines::open(&file).unwrap()),
        metrics.clone(),
    )
    .unwrap();
    record(&acc, 0..100);
    assert_eq!(acc.drain(Duration::from_secs(10)), 0);
    let text = std::fs::read_to_string(&file).unwrap();
    let got: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<cdr::Envelope>(l).unwrap().event_id)
        .collect();
    assert_eq!(got, ids(0..100));
    drop(acc);
    assert_eq!(
        segment_bytes(&dir.path().join("spool")),
        0,
        "the file is the durable copy: nothing written to the spool"
    );
    assert_eq!(metrics.produced.get(), 100);
    assert_eq!(metrics.acknowledged.get(), 100);
    assert_eq!(metrics.spool_depth.get(), 0);
    assert!(
        text.lines().next().unwrap().contains("\"eventId\""),
        "proto3 JSON names"
    );
}

#[test]
fn an_outage_only_grows_the_spool_and_recovery_delivers_in_order() {
    outage_then_recovery(switch);
}

#[test]
fn an_outage_of_a_durable_file_keeps_events_pending_and_recovery_delivers_in_order() {
    outage_then_recovery(durable_switch);
}

fn outage_then_recovery(publisher: fn(&Switch) -> Box<dyn Publisher>) {
    let dir = tempfile::tempdir().unwrap();
    let s = Switch::default();
    s.down.store(true, Ordering::SeqCst);
    let metrics = Metrics::default();
    let acc = Accounting::start(config(dir.path()), publisher(&s), metrics.clone()).unwrap();
    record(&acc, 0..50);
    assert_eq!(
        acc.drain(Duration::from_millis(300)),
        50,
        "all still spooled"
    );
    assert_eq!(metrics.spool_depth.get(), 50);
    assert!(metrics.failed.get() > 0, "the refusals are counted");
    assert!(s.delivered.lock().unwrap().is_empty());

    s.down.store(false, Ordering::SeqCst);
    record(&acc, 50..60);
    assert_eq!(acc.drain(Duration::from_secs(10)), 0);
    assert_eq!(*s.delivered.lock().unwrap(), ids(0..60));
    assert_eq!(metrics.acknowledged.get(), 60);
}

#[test]
fn a_restart_publishes_what_the_spool_kept() {
    restart_publishes_what_was_kept(switch, switch);
}

#[test]
fn a_durable_file_failing_at_exit_leaves_its_events_in_the_spool_for_the_next_start() {
    // Down at exit: the pending records go into the spool; the next start (a durable
    // file again, or a broker after a configuration change) publishes them first.
    restart_publishes_what_was_kept(durable_switch, durable_switch);
    restart_publishes_what_was_kept(durable_switch, switch);
    restart_publishes_what_was_kept(switch, durable_switch);
}

fn restart_publishes_what_was_kept(
    first: fn(&Switch) -> Box<dyn Publisher>,
    then: fn(&Switch) -> Box<dyn Publisher>,
) {
    let dir = tempfile::tempdir().unwrap();
    let s = Switch::default();
    s.down.store(true, Ordering::SeqCst);
    let acc = Accounting::start(config(dir.path()), first(&s), Metrics::default()).unwrap();
    record(&acc, 0..30);
    assert_eq!(acc.drain(Duration::from_millis(100)), 30);
    drop(acc); // the process goes; the spool stays
    assert_eq!(spooled(dir.path()), 30, "kept on disk");

    let up = Switch::default();
    let acc = Accounting::start(config(dir.path()), then(&up), Metrics::default()).unwrap();
    // New events after the restart come after the kept ones.
    record(&acc, 30..40);
    assert_eq!(acc.drain(Duration::from_secs(10)), 0);
    assert_eq!(
        *up.delivered.lock().unwrap(),
        ids(0..40),
        "same events, same ids, in order"
    );
    drop(acc);
    let again = Switch::default();
    let acc = Accounting::start(config(dir.path()), then(&again), Metrics::default()).unwrap();
    assert_eq!(acc.drain(Duration::from_millis(200)), 0);
    assert!(
        again.delivered.lock().unwrap().is_empty(),
        "acknowledged events are not sent again"
    );
}

#[test]
fn a_failed_delivery_is_retried() {
    failed_delivery_retried(switch);
    failed_delivery_retried(durable_switch);
}

fn failed_delivery_retried(publisher: fn(&Switch) -> Box<dyn Publisher>) {
    let dir = tempfile::tempdir().unwrap();
    let s = Switch::default();
    s.fail_first.store(true, Ordering::SeqCst);
    let metrics = Metrics::default();
    let acc = Accounting::start(config(dir.path()), publisher(&s), metrics.clone()).unwrap();
    record(&acc, 0..20);
    assert_eq!(acc.drain(Duration::from_secs(10)), 0);
    let mut got = s.delivered.lock().unwrap().clone();
    got.sort();
    assert_eq!(got, ids(0..20));
    assert_eq!(metrics.failed.get(), 20);
    assert_eq!(metrics.acknowledged.get(), 20);
}

#[test]
fn events_for_a_durable_file_that_is_down_are_bounded_and_the_excess_counted() {
    let dir = tempfile::tempdir().unwrap();
    let s = Switch::default();
    s.down.store(true, Ordering::SeqCst);
    let metrics = Metrics::default();
    let mut cfg = config(dir.path());
    // Room for 10 of these records (key + envelope, about 90 bytes each).
    let one = envelope(0).encoded_len() + "call-0@test".len();
    cfg.spool.max_bytes = (one * 10 + one / 2) as u64;
    cfg.spool.segment_bytes = cfg.spool.max_bytes;
    let acc = Accounting::start(cfg, durable_switch(&s), metrics.clone()).unwrap();
    record_lossy(&acc, 0..25);
    assert_eq!(acc.drain(Duration::from_millis(200)), 10, "the bound holds");
    let dropped = metrics
        .dropped
        .get_or_create(&accounting::DropLabel {
            reason: accounting::DropLabel::SPOOL_FULL,
        })
        .get();
    assert_eq!(dropped, 15, "the excess is counted");
    s.down.store(false, Ordering::SeqCst);
    assert_eq!(acc.drain(Duration::from_secs(10)), 0);
    assert_eq!(
        *s.delivered.lock().unwrap(),
        ids(0..10),
        "the first ten, in order"
    );
}

/// `record` without asserting that each was taken (the queue takes them all; the
/// pipeline may drop some).
fn record_lossy(acc: &Accounting, range: std::ops::Range<u32>) {
    for i in range {
        let e = envelope(i);
        acc.record(&e, &format!("call-{i}@test"));
    }
}
