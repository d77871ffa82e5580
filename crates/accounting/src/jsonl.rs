//! The all-in-one's destination: one JSON line per envelope (the proto3 JSON mapping) in a
//! file, acknowledged once written and `fdatasync`ed. The file is the durable copy: the
//! pipeline does not spool records bound for it. No broker needed, and `tail -f`,
//! `jq` and any log shipper read it.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use prost::Message;
use proto::cdr::v1::Envelope;

use crate::{Busy, Delivery, Outgoing, Publisher};

/// Appends envelopes as JSON lines to a file.
#[derive(Debug)]
pub struct JsonLines {
    path: PathBuf,
    out: BufWriter<File>,
    /// Written since the last sync, to acknowledge after it.
    unsynced: Vec<u64>,
    /// Decided without writing (a record that is not an envelope): reported as acknowledged
    /// so that it leaves the spool instead of blocking it.
    skipped: Vec<u64>,
    /// The last `fdatasync`: the file is synced at most every `sync_every` (the
    /// pipeline keeps each event until its line is synced, so waiting loses nothing).
    last_sync: std::time::Instant,
    sync_every: Duration,
}

impl JsonLines {
    /// Append to `path` (created if missing).
    pub fn open(path: &Path) -> std::io::Result<JsonLines> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(JsonLines {
            path: path.to_owned(),
            out: BufWriter::new(file),
            unsynced: Vec::new(),
            skipped: Vec::new(),
            last_sync: std::time::Instant::now(),
            sync_every: Duration::from_millis(20),
        })
    }

    /// Sync the file at most this often (the spool's `sync_interval`: one fsync per file
    /// per interval; the default is 20 ms).
    #[must_use]
    pub fn sync_every(mut self, every: Duration) -> JsonLines {
        self.sync_every = every;
        self
    }

    /// The file written to.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Publisher for JsonLines {
    fn publish(&mut self, rec: Outgoing<'_>) -> Result<(), Busy> {
        let Ok(env) = Envelope::decode(rec.envelope) else {
            tracing::error!(
                id = rec.id,
                "accounting: a spooled record is not an envelope; skipped"
            );
            self.skipped.push(rec.id);
            return Ok(());
        };
        // Straight into the buffer: no line allocated per record.
        serde_json::to_writer(&mut self.out, &env)
            .map_err(std::io::Error::from)
            .and_then(|()| self.out.write_all(b"\n"))
            .map_err(|e| Busy(format!("{}: {e}", self.path.display())))?;
        self.unsynced.push(rec.id);
        Ok(())
    }

    fn poll(&mut self, _wait: Duration) -> Vec<Delivery> {
        let mut done: Vec<Delivery> = self.skipped.drain(..).map(Delivery::Acked).collect();
        if self.unsynced.is_empty() {
            return done;
        }
        if self.last_sync.elapsed() < self.sync_every {
            // Written now, synced at the interval: records come here without the spool
            // in front, so what sits in the buffer is in no file yet. (A failed write is
            // seen again at the sync, which fails the records.)
            if let Err(e) = self.out.flush() {
                tracing::debug!(path = %self.path.display(), error = %e, "accounting: JSON-lines write failed; retried at the sync");
            }
            return done;
        }
        self.last_sync = std::time::Instant::now();
        let synced = self
            .out
            .flush()
            .and_then(|()| self.out.get_ref().sync_data());
        let ids = self.unsynced.drain(..);
        match synced {
            Ok(()) => done.extend(ids.map(Delivery::Acked)),
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "accounting: JSON-lines file not written; will retry");
                done.extend(ids.map(Delivery::Failed));
            }
        }
        done
    }

    fn kind(&self) -> &'static str {
        "jsonl"
    }

    fn durable(&self) -> bool {
        true
    }
}
