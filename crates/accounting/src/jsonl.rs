//! The all-in-one's destination: one JSON line per envelope (the proto3 JSON mapping) in a
//! file, acknowledged once written and `fdatasync`ed. No broker needed, and `tail -f`,
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
    /// The last `fdatasync`: the file is synced at most every [`SYNC_EVERY`] (the spool
    /// keeps each event until its line is synced, so waiting loses nothing).
    last_sync: std::time::Instant,
}

/// How often the file is synced at most.
const SYNC_EVERY: Duration = Duration::from_millis(20);

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
        })
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
        if self.unsynced.is_empty() || self.last_sync.elapsed() < SYNC_EVERY {
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
}
