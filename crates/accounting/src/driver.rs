//! The accounting thread: queue → spool → fsync → publisher → acknowledgement.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::mpsc::{
    Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError, sync_channel,
};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prost::Message;
use proto::cdr::v1::Envelope;
use spool::{Spool, SpoolError};
use telemetry::LogLimit;

use crate::{AccountingError, Delivery, DropLabel, Metrics, Outgoing, Publisher, frame, unframe};

/// How the pipeline batches and retries.
#[derive(Debug, Clone)]
pub struct AccountingConfig {
    /// The spool's directory and bounds.
    pub spool: spool::Config,
    /// Longest an appended event waits for its `fdatasync` (and so for publishing).
    pub sync_interval: Duration,
    /// Sync at once when this many events wait.
    pub sync_batch: usize,
    /// Events handed to the publisher and not yet acknowledged, at most.
    pub max_in_flight: usize,
    /// After a publisher said "not now" or a delivery failed, wait this long.
    pub retry_backoff: Duration,
    /// Events queued for the accounting thread, at most (beyond: counted, dropped).
    pub queue: usize,
}

impl AccountingConfig {
    /// Defaults around a spool in `dir`: sync every 5 ms or 256 events, 10,000 in flight,
    /// 500 ms back-off, 65,536 queued.
    pub fn new(dir: impl Into<std::path::PathBuf>) -> AccountingConfig {
        AccountingConfig {
            spool: spool::Config::new(dir),
            sync_interval: Duration::from_millis(5),
            sync_batch: 256,
            max_in_flight: 10_000,
            retry_backoff: Duration::from_millis(500),
            queue: 65_536,
        }
    }
}

/// How often the spool's checkpoint (how far acknowledgements reached) is persisted.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// While busy, the thread wakes this often and takes what queued meanwhile (at 5,000
/// events/s, 25 per wake-up instead of a wake-up each). Each wake-up writes what it took
/// (a killed process loses at most what queued since, never what was written); 2 ms cost
/// 4 µs of context switches per call at 2,000 calls/s, a fifth of what accounting cost.
const GATHER: Duration = Duration::from_millis(5);

/// Events taken from the queue per turn at most.
const TAKE_PER_TURN: usize = 8192;

enum Msg {
    Event {
        key: Vec<u8>,
        envelope: Vec<u8>,
        at: Instant,
    },
    Drain {
        deadline: Instant,
        done: SyncSender<usize>,
    },
}

/// The handle the edge records events through. Dropping it stops the thread after a last
/// sync (nothing is published then; the spool keeps it for the next start).
#[derive(Debug)]
pub struct Accounting {
    tx: Option<SyncSender<Msg>>,
    thread: Option<JoinHandle<()>>,
    metrics: Metrics,
    overflow_log: LogLimit,
}

impl Accounting {
    /// Open the spool (recovering what a previous run left) and start the thread that
    /// publishes through `publisher`.
    pub fn start(
        cfg: AccountingConfig,
        publisher: Box<dyn Publisher>,
        metrics: Metrics,
    ) -> Result<Accounting, AccountingError> {
        let (spool, rec) = Spool::open(cfg.spool.clone())?;
        if rec.pending > 0 || rec.torn_bytes > 0 || rec.corrupt_regions > 0 {
            tracing::warn!(
                dir = %cfg.spool.dir.display(),
                pending = rec.pending,
                torn_bytes = rec.torn_bytes,
                corrupt_regions = rec.corrupt_regions,
                checkpoint_lost = rec.checkpoint_lost,
                "accounting: spool recovered; pending events will be published again"
            );
        }
        metrics.corrupt.inc_by(rec.corrupt_regions as u64);
        let (tx, rx) = sync_channel(cfg.queue);
        let m = metrics.clone();
        let thread = std::thread::Builder::new()
            .name("accounting".into())
            .spawn(move || Pipeline::new(spool, publisher, cfg, m).run(rx))
            .map_err(AccountingError::Thread)?;
        Ok(Accounting {
            tx: Some(tx),
            thread: Some(thread),
            metrics,
            overflow_log: LogLimit::operator_lines(),
        })
    }

    /// Queue an event for the spool; never blocks. `false` when it was dropped (the
    /// thread is behind or gone): counted, and logged at a bounded rate.
    pub fn record(&self, env: &Envelope, key: &str) -> bool {
        let msg = Msg::Event {
            key: key.as_bytes().to_vec(),
            envelope: env.encode_to_vec(),
            at: Instant::now(),
        };
        let Some(tx) = &self.tx else { return false };
        match tx.try_send(msg) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.metrics.drop(DropLabel::QUEUE_FULL);
                if let Some(held) = self.overflow_log.allow(Instant::now()) {
                    tracing::error!(
                        held_back = held,
                        event_id = %env.event_id,
                        "accounting: queue full, event DROPPED (the spool is not keeping up)"
                    );
                }
                false
            }
        }
    }

    /// Publish what can be published until `timeout` (SIGTERM): how many events remain
    /// in the spool for the next start.
    pub fn drain(&self, timeout: Duration) -> usize {
        let Some(tx) = &self.tx else { return 0 };
        let (done, wait) = sync_channel(1);
        let deadline = Instant::now() + timeout;
        if tx.send(Msg::Drain { deadline, done }).is_err() {
            return 0;
        }
        wait.recv_timeout(timeout + Duration::from_secs(1))
            .unwrap_or(usize::MAX)
    }

    /// The pipeline's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

impl Drop for Accounting {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Pipeline {
    spool: Spool,
    publisher: Box<dyn Publisher>,
    cfg: AccountingConfig,
    metrics: Metrics,
    /// The next id not yet handed to the publisher.
    cursor: u64,
    /// Failed deliveries to offer again (before anything past the cursor).
    retry: BTreeSet<u64>,
    /// Handed over, not yet delivered: when (for the latency histogram).
    in_flight: HashMap<u64, Instant>,
    /// When each event arrived, until it is acknowledged.
    arrived: HashMap<u64, Instant>,
    backoff_until: Option<Instant>,
    last_sync: Instant,
    last_checkpoint: Instant,
    drain: Option<(Instant, SyncSender<usize>)>,
    log: LogLimit,
    /// With a publisher that is itself a durable local file ([`Publisher::durable`]):
    /// the records that skip the spool.
    unspooled: Option<Unspooled>,
}

/// Records that go to a durable local destination (the JSON-lines file) straight from
/// the queue: writing them to the spool first would write and fsync every record twice
/// on the same disk, for nothing (half of what accounting cost per call). They wait here,
/// bounded like the spool, until the destination acknowledges them (synced); failed
/// ones are offered again like spooled ones. What is left when the thread ends (the
/// destination failing at exit) goes into the spool, for the next start.
struct Unspooled {
    /// Ids from here on are these records' (the spool's own are below).
    first: u64,
    next: u64,
    /// Key and envelope of each record not yet acknowledged.
    records: BTreeMap<u64, (Vec<u8>, Vec<u8>)>,
    bytes: u64,
    max_bytes: u64,
}

impl Unspooled {
    fn remove(&mut self, id: u64) {
        if let Some((k, e)) = self.records.remove(&id) {
            self.bytes -= (k.len() + e.len()) as u64;
        }
    }
}

impl Pipeline {
    fn new(
        spool: Spool,
        publisher: Box<dyn Publisher>,
        cfg: AccountingConfig,
        metrics: Metrics,
    ) -> Pipeline {
        let unspooled = publisher.durable().then(|| Unspooled {
            first: spool.durable_below(),
            next: spool.durable_below(),
            records: BTreeMap::new(),
            bytes: 0,
            max_bytes: cfg.spool.max_bytes,
        });
        Pipeline {
            cursor: spool.low_watermark(),
            unspooled,
            spool,
            publisher,
            cfg,
            metrics,
            retry: BTreeSet::new(),
            in_flight: HashMap::new(),
            arrived: HashMap::new(),
            backoff_until: None,
            last_sync: Instant::now(),
            last_checkpoint: Instant::now(),
            drain: None,
            log: LogLimit::operator_lines(),
        }
    }

    fn run(mut self, rx: Receiver<Msg>) {
        loop {
            let wait = self.wait();
            if self.busy() {
                // Work in hand (records in flight, unsynced, a drain): gather for a tick
                // rather than wait on the queue. A thread parked on the queue is woken by
                // every event, a futex wake and a context switch each on both sides; one
                // that sleeps a tick takes a batch per wake-up, and the SIP threads'
                // `record` stays a plain enqueue.
                std::thread::sleep(wait.min(GATHER));
                if self.take_queued(&rx).is_err() {
                    self.finish();
                    return;
                }
            } else {
                match rx.recv_timeout(wait) {
                    Ok(msg) => {
                        self.take(msg);
                        if self.take_queued(&rx).is_err() {
                            self.finish();
                            return;
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => {
                        self.finish();
                        return;
                    }
                }
            }
            self.turn();
        }
    }

    /// Anything to do before the next event: records to sync or awaiting their
    /// acknowledgement, a back-off running, a drain asked for.
    fn busy(&self) -> bool {
        self.spool.unsynced() > 0
            || self
                .unspooled
                .as_ref()
                .is_some_and(|u| !u.records.is_empty())
            || !self.in_flight.is_empty()
            || self.backoff_until.is_some()
            || self.drain.is_some()
    }

    /// Take what is queued (up to a bound per turn, so a flood cannot starve the
    /// publishing); `Err` when every sender is gone.
    fn take_queued(&mut self, rx: &Receiver<Msg>) -> Result<(), ()> {
        for _ in 0..TAKE_PER_TURN {
            match rx.try_recv() {
                Ok(m) => self.take(m),
                Err(TryRecvError::Empty) => return Ok(()),
                Err(TryRecvError::Disconnected) => return Err(()),
            }
        }
        Ok(())
    }

    /// How long to sleep for the next event: until a sync is due, or briefly while
    /// deliveries are outstanding.
    fn wait(&self) -> Duration {
        let now = Instant::now();
        let mut wait = Duration::from_millis(100);
        if self.spool.unsynced() > 0 {
            wait =
                wait.min((self.last_sync + self.cfg.sync_interval).saturating_duration_since(now));
        }
        if !self.in_flight.is_empty() || self.drain.is_some() {
            wait = wait.min(GATHER);
        }
        if let Some(t) = self.backoff_until {
            wait = wait.min(
                t.saturating_duration_since(now)
                    .max(Duration::from_millis(1)),
            );
        }
        wait
    }

    fn take(&mut self, msg: Msg) {
        match msg {
            Msg::Event { key, envelope, at } if self.unspooled.is_some() => {
                self.take_unspooled(key, envelope, at);
            }
            Msg::Event { key, envelope, at } => match self.spool.append(&frame(&key, &envelope)) {
                Ok(id) => {
                    self.metrics.produced.inc();
                    self.arrived.insert(id, at);
                }
                Err(e) => {
                    let reason = match e {
                        SpoolError::Full { .. } | SpoolError::TooLarge { .. } => {
                            DropLabel::SPOOL_FULL
                        }
                        _ => DropLabel::SPOOL_ERROR,
                    };
                    self.metrics.drop(reason);
                    if let Some(held) = self.log.allow(Instant::now()) {
                        tracing::error!(error = %e, held_back = held, "accounting: event DROPPED, not spooled");
                    }
                }
            },
            Msg::Drain { deadline, done } => self.drain = Some((deadline, done)),
        }
    }

    fn take_unspooled(&mut self, key: Vec<u8>, envelope: Vec<u8>, at: Instant) {
        let Some(u) = &mut self.unspooled else { return };
        let size = (key.len() + envelope.len()) as u64;
        if u.bytes + size > u.max_bytes {
            self.metrics.drop(DropLabel::SPOOL_FULL);
            if let Some(held) = self.log.allow(Instant::now()) {
                tracing::error!(
                    held_back = held,
                    pending_bytes = u.bytes,
                    "accounting: event DROPPED, the destination is not taking events and the pending bound is reached"
                );
            }
            return;
        }
        let id = u.next;
        u.next += 1;
        u.bytes += size;
        u.records.insert(id, (key, envelope));
        self.metrics.produced.inc();
        self.arrived.insert(id, at);
    }

    /// The thread's end: what the spool has is made durable, and records that skipped it
    /// and were not acknowledged go into it (published again at the next start; one that
    /// was written but not yet synced may then appear twice, under its event id).
    fn finish(&mut self) {
        if let Some(u) = self.unspooled.take() {
            for (k, e) in u.records.values() {
                if let Err(e) = self.spool.append(&frame(k, e)) {
                    self.metrics.drop(DropLabel::SPOOL_ERROR);
                    tracing::error!(error = %e, "accounting: event DROPPED at exit, not spooled");
                }
            }
        }
        self.sync();
    }

    /// Pending records: spooled and not.
    fn depth(&self) -> usize {
        self.spool.depth() + self.unspooled.as_ref().map_or(0, |u| u.records.len())
    }

    fn sync(&mut self) {
        if let Err(e) = self.spool.sync()
            && let Some(held) = self.log.allow(Instant::now())
        {
            tracing::error!(error = %e, held_back = held, "accounting: spool sync failed; events not yet durable");
        }
        self.last_sync = Instant::now();
    }

    fn turn(&mut self) {
        let now = Instant::now();
        let due = now >= self.last_sync + self.cfg.sync_interval;
        if self.spool.unsynced() >= self.cfg.sync_batch || (self.spool.unsynced() > 0 && due) {
            self.sync();
        } else if self.spool.unsynced() > 0
            && let Err(e) = self.spool.flush()
            && let Some(held) = self.log.allow(now)
        {
            // Written at once (a killed process loses nothing), synced at the interval.
            tracing::error!(error = %e, held_back = held, "accounting: spool write failed");
        }
        if now >= self.last_checkpoint + CHECKPOINT_EVERY {
            // How far acknowledgements reached, now and then (a lagging checkpoint only
            // replays acknowledged events, which consumers dedupe).
            self.last_checkpoint = now;
            if let Err(e) = self.spool.persist_checkpoint()
                && let Some(held) = self.log.allow(now)
            {
                tracing::error!(error = %e, held_back = held, "accounting: spool checkpoint not written");
            }
        }
        if self.backoff_until.is_none_or(|t| now >= t) {
            self.backoff_until = None;
            self.publish();
        }
        self.deliveries();
        self.metrics.spool_depth.set(self.depth() as i64);
        let bytes = self.spool.bytes() + self.unspooled.as_ref().map_or(0, |u| u.bytes);
        self.metrics
            .spool_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        self.metrics.in_flight.set(self.in_flight.len() as i64);
        if let Some((deadline, _)) = &self.drain
            && (self.depth() == 0 || Instant::now() >= *deadline)
            && let Some((_, done)) = self.drain.take()
        {
            self.sync();
            let _ = done.try_send(self.depth());
        }
    }

    /// Hand durable records to the publisher: failed ones first, then new ones, in order.
    fn publish(&mut self) {
        let durable = self.spool.durable_below();
        let mut next: Vec<u64> = Vec::new();
        let room = self.cfg.max_in_flight.saturating_sub(self.in_flight.len());
        next.extend(self.retry.iter().copied().take(room));
        let room = room - next.len();
        next.extend(
            self.spool
                .pending_from(self.cursor)
                .take_while(|&id| id < durable)
                .take(room),
        );
        if let Some(u) = &self.unspooled {
            let room = room - next.len().min(room);
            next.extend(
                u.records
                    .range(self.cursor.max(u.first)..)
                    .map(|(id, _)| *id)
                    .take(room),
            );
        }
        for id in next {
            if let Some(u) = self.unspooled.as_mut().filter(|u| id >= u.first) {
                // Acknowledged meanwhile when it is gone (a retried record whose first
                // delivery came late).
                let Some(slot) = u.records.get_mut(&id) else {
                    self.retry.remove(&id);
                    continue;
                };
                // Out of the map while the publisher reads it (no copy), back after.
                let (key, envelope) = std::mem::take(slot);
                let taken = self.hand_over(Outgoing {
                    id,
                    key: &key,
                    envelope: &envelope,
                });
                if let Some(slot) = self.unspooled.as_mut().and_then(|u| u.records.get_mut(&id)) {
                    *slot = (key, envelope);
                }
                if !taken {
                    break;
                }
                continue;
            }
            let data = match self.spool.read(id) {
                Ok(d) => d,
                // Acknowledged meanwhile (a retried record whose first delivery came late).
                Err(SpoolError::Unknown(_)) => {
                    self.retry.remove(&id);
                    continue;
                }
                Err(e) => {
                    // A record that does not read back can never be published: counted,
                    // logged, and let go so that it does not block the rest.
                    self.metrics.corrupt.inc();
                    tracing::error!(id, error = %e, "accounting: spooled event unreadable, discarded");
                    self.forget(id);
                    continue;
                }
            };
            let Some((key, envelope)) = unframe(&data) else {
                self.metrics.corrupt.inc();
                self.forget(id);
                continue;
            };
            if !self.hand_over(Outgoing { id, key, envelope }) {
                break;
            }
        }
    }

    /// Offer one record to the publisher: `false` when it is busy (a back-off starts).
    fn hand_over(&mut self, rec: Outgoing<'_>) -> bool {
        let id = rec.id;
        match self.publisher.publish(rec) {
            Ok(()) => {
                self.retry.remove(&id);
                self.cursor = self.cursor.max(id + 1);
                self.in_flight.insert(id, Instant::now());
                true
            }
            Err(busy) => {
                self.metrics.failed.inc();
                if let Some(held) = self.log.allow(Instant::now()) {
                    tracing::warn!(kind = self.publisher.kind(), error = %busy, held_back = held, "accounting: publisher busy; events stay pending");
                }
                self.backoff_until = Some(Instant::now() + self.cfg.retry_backoff);
                false
            }
        }
    }

    fn forget(&mut self, id: u64) {
        self.release(id);
        self.retry.remove(&id);
        self.arrived.remove(&id);
        self.cursor = self.cursor.max(id + 1);
    }

    /// An acknowledged (or unpublishable) record leaves the spool or the pending records.
    fn release(&mut self, id: u64) {
        if let Some(u) = self.unspooled.as_mut().filter(|u| id >= u.first) {
            u.remove(id);
        } else if let Err(e) = self.spool.ack(id) {
            tracing::error!(id, error = %e, "accounting: spool segment not removed");
        }
    }

    fn deliveries(&mut self) {
        for d in self.publisher.poll(Duration::ZERO) {
            match d {
                Delivery::Acked(id) => {
                    self.in_flight.remove(&id);
                    if let Some(at) = self.arrived.remove(&id) {
                        self.metrics.latency.observe(at.elapsed().as_secs_f64());
                    }
                    self.release(id);
                    self.metrics.acknowledged.inc();
                }
                Delivery::Failed(id) => {
                    self.in_flight.remove(&id);
                    self.metrics.failed.inc();
                    self.retry.insert(id);
                    self.backoff_until = Some(Instant::now() + self.cfg.retry_backoff);
                }
            }
        }
    }
}
