//! # spool: the durable local log between a call event and the broker
//!
//! Accounting must never lose a CDR and SIP must never wait on Kafka. The edge therefore
//! appends every call event here first, sends it to the broker from here, and removes it
//! only when the broker has acknowledged it. Whatever happens in between (the broker down
//! for an hour, the pod killed with `kill -9`) the events are still on disk and are sent,
//! in order, when the producer runs again. Duplicates are possible after a crash (an event
//! acknowledged just before the crash is sent again); every event carries its own id, on
//! which consumers dedupe.
//!
//! ## On disk
//!
//! A directory of segments, `<first id, 20 digits>.seg`, each a run of records:
//!
//! ```text
//! len: u32 LE | crc32c(id ‖ payload): u32 LE | id: u64 LE | payload (len bytes)
//! ```
//!
//! and a `checkpoint` file holding the lowest id not yet acknowledged, so that a restart
//! replays from there rather than from the oldest segment still on disk. Ids increase by
//! one per record from 1. They are the spool's own: after a crash, the ids of records
//! that were acknowledged and deleted, or never made durable, may be given again (never
//! below the checkpoint, so nothing new is mistaken for acknowledged). The event id inside
//! the payload is what consumers dedupe on.
//!
//! * **Batched fsync**: [`Spool::append`] buffers; [`Spool::sync`] writes and `fdatasync`s
//!   (the driver calls it every few milliseconds or records, trading a bounded window of
//!   events for one disk flush per batch instead of one per event).
//! * **Bounded**: past [`Config::max_bytes`] of unacknowledged records, `append` refuses
//!   with [`SpoolError::Full`] (the caller counts it and logs it loudly; SIP goes on).
//! * **Removal after the acknowledgement only**: [`Spool::ack`]; a segment file goes when
//!   every record in it is acknowledged. Acknowledgements may come out of order.
//! * **Recovery** ([`Spool::open`]): a torn tail (a crash during a write) is cut off; a
//!   region whose CRC does not match is skipped up to the next valid record and counted;
//!   everything else not yet acknowledged is pending again, in id order.
//!
//! The spool is synchronous file I/O with no clock and no task: the driver decides when to
//! sync and feeds it acknowledgements.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;

/// Bytes before each payload: length, CRC, id.
pub const RECORD_HEADER: usize = 16;

const SEGMENT_SUFFIX: &str = ".seg";
const CHECKPOINT: &str = "checkpoint";
/// The lock file: one process per spool.
const LOCK: &str = "lock";
/// Buffered bytes past which an append writes them out (without syncing).
const WRITE_BEHIND: usize = 256 * 1024;

/// Where and how big.
#[derive(Debug, Clone)]
pub struct Config {
    /// The spool's directory (created if missing). One spool per directory.
    pub dir: PathBuf,
    /// A segment is closed and a new one started past this size.
    pub segment_bytes: u64,
    /// Unacknowledged records beyond this many bytes are refused.
    pub max_bytes: u64,
}

impl Config {
    /// Defaults for `dir`: 16 MiB segments, 1 GiB in all.
    pub fn new(dir: impl Into<PathBuf>) -> Config {
        Config {
            dir: dir.into(),
            segment_bytes: 16 << 20,
            max_bytes: 1 << 30,
        }
    }
}

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The bound is reached: the record was not written.
    #[error(
        "spool full: {used} of {limit} bytes on disk, in segments still holding unacknowledged events"
    )]
    Full {
        /// Bytes on disk now.
        used: u64,
        /// [`Config::max_bytes`].
        limit: u64,
    },
    /// A record that could never fit in a segment.
    #[error("an event of {size} bytes does not fit a {segment_bytes}-byte segment")]
    TooLarge {
        /// Payload and header.
        size: u64,
        /// [`Config::segment_bytes`].
        segment_bytes: u64,
    },
    /// The file system said no.
    #[error("spool I/O on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Another process holds this spool (two processes appending to one spool would
    /// corrupt it).
    #[error(
        "spool {path} is in use by another process (one spool per process: give each its own directory)"
    )]
    Locked {
        /// The directory.
        path: String,
    },
    /// Asked for a record that is not pending (acknowledged already, or never written).
    #[error("no pending spool record {0}")]
    Unknown(u64),
    /// A pending record that was whole when written or recovered reads back wrong.
    #[error("spool record {id} in {path} does not match its CRC")]
    Corrupt {
        /// The record.
        id: u64,
        /// Its segment.
        path: PathBuf,
    },
    /// The configuration cannot work.
    #[error("spool configuration: {0}")]
    Config(&'static str),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What [`Spool::open`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Segment files read.
    pub segments: usize,
    /// Records pending again (not acknowledged before the restart).
    pub pending: usize,
    /// Bytes cut off the end of segments: records torn by a crash during a write.
    pub torn_bytes: u64,
    /// Regions skipped because their CRC (or framing) did not check out.
    pub corrupt_regions: usize,
    /// The checkpoint file was missing or unreadable (everything on disk is replayed).
    pub checkpoint_lost: bool,
}

/// Where a pending record is.
#[derive(Debug, Clone, Copy)]
struct Loc {
    segment: u64,
    offset: u64,
    /// Header and payload.
    size: u32,
}

#[derive(Debug)]
struct Segment {
    path: PathBuf,
    /// Bytes of records in it (written or buffered).
    len: u64,
    /// Records in it not yet acknowledged.
    pending: usize,
}

/// The spool. See the crate docs.
#[derive(Debug)]
pub struct Spool {
    /// The directory's lock file, held while this value lives.
    _lock: File,
    cfg: Config,
    /// By first id; the last one is the active segment.
    segments: BTreeMap<u64, Segment>,
    active: u64,
    file: File,
    /// Bytes of the active segment already handed to the OS.
    written: u64,
    /// Appended, not yet written.
    buf: Vec<u8>,
    /// Written (or buffered) since the last fsync.
    unsynced: usize,
    pending: BTreeMap<u64, Loc>,
    next_id: u64,
    bytes: u64,
    /// The checkpoint as last persisted.
    checkpoint: u64,
    /// A read handle on the segment records were last read from (by first id): the
    /// publisher reads records back one by one, mostly from one segment, and an open per
    /// record cost more than the read.
    reader: Option<(u64, File)>,
}

/// One decoded record: its id, payload range and total size.
enum Decoded {
    Record { id: u64, size: usize },
    Bad,
}

fn crc(id: u64, payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&id.to_le_bytes()), payload)
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn decode(b: &[u8]) -> Decoded {
    let (Some(len), Some(sum), Some(id)) = (u32_at(b, 0), u32_at(b, 4), u64_at(b, 8)) else {
        return Decoded::Bad;
    };
    let size = RECORD_HEADER + len as usize;
    match b.get(RECORD_HEADER..size) {
        Some(payload) if crc(id, payload) == sum => Decoded::Record { id, size },
        _ => Decoded::Bad,
    }
}

fn encode(id: u64, payload: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc(id, payload).to_le_bytes());
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(payload);
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}{SEGMENT_SUFFIX}"))
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

impl Drop for Spool {
    fn drop(&mut self) {
        // What is appended but not synced is left as a crash would leave it; only the
        // acknowledgements are recorded.
        let _ = self.persist_checkpoint();
    }
}

impl Spool {
    /// Open (or create) the spool in `cfg.dir`, recovering what a previous process left.
    pub fn open(cfg: Config) -> Result<(Spool, Recovery), SpoolError> {
        if cfg.segment_bytes < RECORD_HEADER as u64 + 1 || cfg.max_bytes < cfg.segment_bytes {
            return Err(SpoolError::Config(
                "segment_bytes must hold a record and max_bytes at least one segment",
            ));
        }
        let dir = cfg.dir.clone();
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        // Held (flock) for the spool's life; the kernel drops it when the process dies,
        // so a `kill -9` leaves nothing stale behind.
        let lock_path = dir.join(LOCK);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(SpoolError::Locked {
                    path: dir.display().to_string(),
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(io(&lock_path)(e)),
        }
        let mut rec = Recovery::default();
        let checkpoint = match fs::read_to_string(dir.join(CHECKPOINT)) {
            Ok(s) => s.trim().parse::<u64>().ok(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(&dir.join(CHECKPOINT))(e)),
        };
        let mut firsts: Vec<u64> = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io(&dir))? {
            let entry = entry.map_err(io(&dir))?;
            let name = entry.file_name();
            let Some(first) = name
                .to_str()
                .and_then(|n| n.strip_suffix(SEGMENT_SUFFIX))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            firsts.push(first);
        }
        firsts.sort_unstable();
        rec.checkpoint_lost = checkpoint.is_none() && !firsts.is_empty();
        let checkpoint = checkpoint.unwrap_or(0);

        let mut segments = BTreeMap::new();
        let mut pending = BTreeMap::new();
        let mut last_id = 0u64;
        for first in firsts {
            rec.segments += 1;
            let path = segment_path(&dir, first);
            let data = fs::read(&path).map_err(io(&path))?;
            let mut seg = Segment {
                path: path.clone(),
                len: 0,
                pending: 0,
            };
            let mut at = 0usize;
            let mut in_bad = false;
            while at < data.len() {
                match decode(&data[at..]) {
                    // Ids only go up; a CRC-valid record with an old id is stale garbage.
                    Decoded::Record { id, size } if id > last_id => {
                        if id >= checkpoint {
                            pending.insert(
                                id,
                                Loc {
                                    segment: first,
                                    offset: at as u64,
                                    size: size as u32,
                                },
                            );
                            seg.pending += 1;
                        }
                        last_id = id;
                        at += size;
                        seg.len = at as u64;
                        in_bad = false;
                    }
                    _ => {
                        if !in_bad {
                            rec.corrupt_regions += 1;
                            in_bad = true;
                        }
                        at += 1;
                    }
                }
            }
            if in_bad {
                // What follows the last valid record is a torn write (or garbage), not a
                // corrupt region between records.
                rec.corrupt_regions -= 1;
                rec.torn_bytes += data.len() as u64 - seg.len;
            }
            if seg.len < data.len() as u64 {
                // Cut it, so that appends continue after the last whole record. A
                // corrupt region in the middle stays (offsets of later records hold).
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io(&path))?;
                f.set_len(seg.len).map_err(io(&path))?;
                f.sync_all().map_err(io(&path))?;
            }
            segments.insert(first, seg);
        }
        rec.pending = pending.len();
        let next_id = (last_id + 1).max(checkpoint).max(1);

        // Fully acknowledged segments go now, except the last, which stays active if it
        // has room.
        let last = segments.keys().next_back().copied();
        let done: Vec<u64> = segments
            .iter()
            .filter(|&(f, s)| s.pending == 0 && Some(*f) != last)
            .map(|(f, _)| *f)
            .collect();
        for f in done {
            if let Some(s) = segments.remove(&f) {
                fs::remove_file(&s.path).map_err(io(&s.path))?;
            }
        }
        // An empty last segment is not reused: its name (the id it was created for) may be
        // above the ids given from now on, which would sort it after their segments.
        let reuse = last.filter(|f| {
            segments
                .get(f)
                .is_some_and(|s| s.len > 0 && s.len < cfg.segment_bytes)
        });
        let active = match reuse {
            Some(f) => f,
            None => {
                if let Some(f) = last
                    && segments.get(&f).is_some_and(|s| s.pending == 0)
                    && let Some(s) = segments.remove(&f)
                {
                    fs::remove_file(&s.path).map_err(io(&s.path))?;
                }
                let path = segment_path(&dir, next_id);
                segments.insert(
                    next_id,
                    Segment {
                        path,
                        len: 0,
                        pending: 0,
                    },
                );
                next_id
            }
        };
        let (path, written) = match segments.get(&active) {
            Some(s) => (s.path.clone(), s.len),
            None => return Err(SpoolError::Config("no active segment")),
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        sync_dir(&dir)?;
        let bytes = segments.values().map(|s| s.len).sum();
        let spool = Spool {
            _lock: lock,
            cfg,
            segments,
            active,
            file,
            written,
            buf: Vec::new(),
            unsynced: 0,
            pending,
            next_id,
            bytes,
            checkpoint,
            reader: None,
        };
        Ok((spool, rec))
    }

    /// Append one event; its id comes back. Durable only after the next [`sync`](Self::sync).
    pub fn append(&mut self, payload: &[u8]) -> Result<u64, SpoolError> {
        let size = (RECORD_HEADER + payload.len()) as u64;
        if size > self.cfg.segment_bytes || payload.len() > u32::MAX as usize {
            return Err(SpoolError::TooLarge {
                size,
                segment_bytes: self.cfg.segment_bytes,
            });
        }
        if self.active_len() + size > self.cfg.segment_bytes {
            // First: a full active segment whose records are all acknowledged goes with
            // the roll, which may make the room asked for.
            self.roll()?;
        }
        if self.bytes + size > self.cfg.max_bytes {
            return Err(SpoolError::Full {
                used: self.bytes,
                limit: self.cfg.max_bytes,
            });
        }
        let id = self.next_id;
        let offset = self.active_len();
        encode(id, payload, &mut self.buf);
        self.next_id += 1;
        self.pending.insert(
            id,
            Loc {
                segment: self.active,
                offset,
                size: size as u32,
            },
        );
        if let Some(s) = self.segments.get_mut(&self.active) {
            s.len += size;
            s.pending += 1;
        }
        self.bytes += size;
        self.unsynced += 1;
        if self.buf.len() >= WRITE_BEHIND {
            self.write_out()?;
        }
        Ok(id)
    }

    fn active_len(&self) -> u64 {
        self.written + self.buf.len() as u64
    }

    fn active_path(&self) -> PathBuf {
        segment_path(&self.cfg.dir, self.active)
    }

    fn write_out(&mut self) -> Result<(), SpoolError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let path = self.active_path();
        self.file.write_all(&self.buf).map_err(io(&path))?;
        self.written += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// Make everything appended so far durable (write and `fdatasync`). Returns how many
    /// records became durable. How far acknowledgements reached is persisted by
    /// [`persist_checkpoint`](Self::persist_checkpoint) (now and then, and on drop): a
    /// checkpoint that lags only replays records already acknowledged, which consumers
    /// dedupe.
    pub fn sync(&mut self) -> Result<usize, SpoolError> {
        let n = self.unsynced;
        if n > 0 {
            self.write_out()?;
            let path = self.active_path();
            self.file.sync_data().map_err(io(&path))?;
            self.unsynced = 0;
        }
        Ok(n)
    }

    /// Hand what was appended to the OS without waiting for the disk: a killed process
    /// loses none of it (a machine that loses power loses what was not synced).
    pub fn flush(&mut self) -> Result<(), SpoolError> {
        self.write_out()
    }

    /// Records appended since the last [`sync`](Self::sync).
    pub fn unsynced(&self) -> usize {
        self.unsynced
    }

    /// Every pending id below this one is durable (on disk and flushed): what may be
    /// published. Ids from here on were appended since the last sync.
    pub fn durable_below(&self) -> u64 {
        self.next_id - self.unsynced as u64
    }

    /// Persist how far acknowledgements reached (the lowest pending id), when it moved.
    pub fn persist_checkpoint(&mut self) -> Result<(), SpoolError> {
        let mark = self.low_watermark();
        if mark == self.checkpoint {
            return Ok(());
        }
        let dir = &self.cfg.dir;
        let tmp = dir.join("checkpoint.tmp");
        let path = dir.join(CHECKPOINT);
        {
            let mut f = File::create(&tmp).map_err(io(&tmp))?;
            writeln!(f, "{mark}").map_err(io(&tmp))?;
            f.sync_data().map_err(io(&tmp))?;
        }
        fs::rename(&tmp, &path).map_err(io(&path))?;
        self.checkpoint = mark;
        Ok(())
    }

    /// The lowest id not yet acknowledged (the next id when none is pending).
    pub fn low_watermark(&self) -> u64 {
        self.pending.keys().next().copied().unwrap_or(self.next_id)
    }

    fn roll(&mut self) -> Result<(), SpoolError> {
        self.sync()?;
        self.persist_checkpoint()?;
        let old = self.active;
        let first = self.next_id;
        let path = segment_path(&self.cfg.dir, first);
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        sync_dir(&self.cfg.dir)?;
        self.segments.insert(
            first,
            Segment {
                path,
                len: 0,
                pending: 0,
            },
        );
        self.active = first;
        self.written = 0;
        if self.segments.get(&old).is_some_and(|s| s.pending == 0) {
            self.remove_segment(old)?;
        }
        Ok(())
    }

    fn remove_segment(&mut self, first: u64) -> Result<(), SpoolError> {
        if let Some(s) = self.segments.remove(&first) {
            if self.reader.as_ref().is_some_and(|(seg, _)| *seg == first) {
                // Not holding a removed file's space.
                self.reader = None;
            }
            fs::remove_file(&s.path).map_err(io(&s.path))?;
            self.bytes -= s.len;
        }
        Ok(())
    }

    /// The broker acknowledged record `id`: it is no longer pending, and its segment goes
    /// once nothing in it is. Acknowledging an id twice is harmless (a retried send).
    pub fn ack(&mut self, id: u64) -> Result<(), SpoolError> {
        let Some(loc) = self.pending.remove(&id) else {
            return Ok(());
        };
        let empty = match self.segments.get_mut(&loc.segment) {
            Some(s) => {
                s.pending -= 1;
                s.pending == 0
            }
            None => false,
        };
        if empty && loc.segment != self.active {
            self.remove_segment(loc.segment)?;
        }
        Ok(())
    }

    /// Pending ids from `from` on, in order: what to (re)send.
    pub fn pending_from(&self, from: u64) -> impl Iterator<Item = u64> + '_ {
        self.pending.range(from..).map(|(id, _)| *id)
    }

    /// Records not yet acknowledged.
    pub fn depth(&self) -> usize {
        self.pending.len()
    }

    /// Bytes the spool holds on disk (and in its write buffer).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The payload of pending record `id`, CRC-checked.
    pub fn read(&mut self, id: u64) -> Result<Bytes, SpoolError> {
        let loc = *self.pending.get(&id).ok_or(SpoolError::Unknown(id))?;
        let data = if loc.segment == self.active && loc.offset >= self.written {
            let at = (loc.offset - self.written) as usize;
            self.buf
                .get(at..at + loc.size as usize)
                .map(<[u8]>::to_vec)
                .ok_or(SpoolError::Unknown(id))?
        } else {
            let path = segment_path(&self.cfg.dir, loc.segment);
            let f = match self.reader.take() {
                Some((seg, f)) if seg == loc.segment => f,
                _ => File::open(&path).map_err(io(&path))?,
            };
            let mut data = vec![0u8; loc.size as usize];
            f.read_exact_at(&mut data, loc.offset).map_err(io(&path))?;
            self.reader = Some((loc.segment, f));
            data
        };
        match decode(&data) {
            Decoded::Record { id: got, size } if got == id && size == data.len() => {
                Ok(Bytes::from(data).slice(RECORD_HEADER..))
            }
            _ => Err(SpoolError::Corrupt {
                id,
                path: segment_path(&self.cfg.dir, loc.segment),
            }),
        }
    }
}
