//! The `[accounting]` section of a service's configuration, and starting the pipeline
//! it describes.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::kafka::{Kafka, KafkaConfig};
use crate::{Accounting, AccountingConfig, AccountingError, JsonLines, Metrics, Publisher};

/// Where call events and CDRs go.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Destination {
    /// Nowhere: no events are built.
    Off,
    /// One JSON line per event in `jsonl_path` (the all-in-one's default).
    Jsonl,
    /// Kafka (`[accounting.kafka]`).
    Kafka,
}

/// Accounting settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AccountingSettings {
    /// `off`, `jsonl` or `kafka`. Unset: the role's default (the all-in-one writes JSON
    /// lines beside its state; an edge of a cluster accounts nothing until told where).
    pub destination: Option<Destination>,
    /// The JSON-lines file (`destination = "jsonl"`).
    pub jsonl_path: PathBuf,
    /// The durable spool's directory: events are written here before they are
    /// published, and stay until acknowledged. One per process; keep it on a volume that
    /// outlives the pod (a PVC) to keep what a dead pod had not yet published.
    pub spool_dir: PathBuf,
    /// The spool's bound, bytes: past it new events are dropped, counted and logged.
    pub spool_max_bytes: u64,
    /// Longest an event waits for its fsync (and so for publishing), ms. Events are
    /// written at once (a killed process loses none); the fsync guards against a machine
    /// losing power.
    pub sync_interval_ms: u64,
    /// Events handed to the destination and not yet acknowledged, at most.
    pub max_in_flight: usize,
    /// At SIGTERM, how long to go on publishing what the spool holds before exiting
    /// (what is left is published at the next start), s.
    pub drain_secs: u64,
    /// How long an answered call lives without a BYE or a session refresh, s: then the
    /// cluster ends it with a CDR (cause DIALOG_TTL). Kamailio's dialog `default_timeout`
    /// is 12 h; a call with a session timer lives for its interval from each refresh.
    pub dialog_ttl_secs: u64,
    /// How often each edge reaps calls past their time, s (each is reaped by one edge).
    pub reap_interval_secs: u64,
    /// Call events (attempt, ringing, answered, ended, failed) besides the CDRs. Off, a
    /// call costs one record (its CDR) instead of five: for billing that reads CDRs only.
    pub call_events: bool,
    /// Kafka, when `destination = "kafka"`.
    pub kafka: KafkaConfig,
}

impl Default for AccountingSettings {
    fn default() -> Self {
        AccountingSettings {
            destination: None,
            jsonl_path: PathBuf::from("cdrs.jsonl"),
            spool_dir: PathBuf::from("spool"),
            spool_max_bytes: 1 << 30,
            sync_interval_ms: 20,
            max_in_flight: 10_000,
            drain_secs: 5,
            dialog_ttl_secs: 43_200,
            reap_interval_secs: 5,
            call_events: true,
            kafka: KafkaConfig::default(),
        }
    }
}

impl AccountingSettings {
    /// Where events go: the configured destination, else `default`.
    pub fn destination_or(&self, default: Destination) -> Destination {
        self.destination.unwrap_or(default)
    }

    /// A problem with these settings: the field and what is wrong.
    pub fn problem(&self) -> Option<(&'static str, String)> {
        if self.destination == Some(Destination::Off) {
            return None;
        }
        if self.spool_max_bytes < 1 << 20 {
            return Some(("accounting.spool_max_bytes", "at least 1 MiB".into()));
        }
        if !(1..=1000).contains(&self.sync_interval_ms) {
            return Some(("accounting.sync_interval_ms", "between 1 and 1000".into()));
        }
        if self.dialog_ttl_secs == 0 {
            return Some(("accounting.dialog_ttl_secs", "at least 1".into()));
        }
        if self.reap_interval_secs == 0 {
            return Some(("accounting.reap_interval_secs", "at least 1".into()));
        }
        if self.max_in_flight == 0 {
            return Some(("accounting.max_in_flight", "at least 1".into()));
        }
        if self.destination == Some(Destination::Kafka) {
            return self.kafka.problem();
        }
        None
    }

    /// Start the pipeline (`None` when off; `default` when no destination is set): open
    /// the spool, replaying what it holds, and connect the destination. A broker that is
    /// down is not an error here.
    pub fn start(
        &self,
        default: Destination,
        metrics: Metrics,
    ) -> Result<Option<Accounting>, StartError> {
        let publisher: Box<dyn Publisher> =
            match self.destination_or(default) {
                Destination::Off => return Ok(None),
                Destination::Jsonl => Box::new(
                    JsonLines::open(&self.jsonl_path)
                        .map_err(|e| StartError::Destination {
                            what: format!("opening {}", self.jsonl_path.display()),
                            why: e.to_string(),
                        })?
                        .sync_every(Duration::from_millis(self.sync_interval_ms)),
                ),
                Destination::Kafka => Box::new(Kafka::new(self.kafka.clone()).map_err(|e| {
                    StartError::Destination {
                        what: "the Kafka producer".into(),
                        why: e.to_string(),
                    }
                })?),
            };
        let mut cfg = AccountingConfig::new(&self.spool_dir);
        cfg.spool.max_bytes = self.spool_max_bytes;
        cfg.spool.segment_bytes = (self.spool_max_bytes / 8).clamp(64 << 10, 16 << 20);
        cfg.sync_interval = Duration::from_millis(self.sync_interval_ms);
        cfg.max_in_flight = self.max_in_flight;
        Ok(Some(Accounting::start(cfg, publisher, metrics)?))
    }
}

/// Why accounting did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The destination could not be set up.
    #[error("accounting: {what}: {why}")]
    Destination {
        /// What was being set up.
        what: String,
        /// Why it failed.
        why: String,
    },
    /// The pipeline could not start (the spool).
    #[error("accounting: {0}")]
    Pipeline(#[from] AccountingError),
}
