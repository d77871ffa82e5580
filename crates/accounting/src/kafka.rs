//! The cluster's destination: Kafka, through librdkafka (`rdkafka`).
//!
//! The producer is idempotent with `acks=all`: librdkafka retries on its own without
//! duplicating or reordering, and a record is reported acknowledged only when every
//! in-sync replica has it. Call events and CDRs go to their own topics, keyed by Call-ID
//! (one call's events stay in one partition, in order), with the schema in a header so a
//! consumer knows what the bytes are before decoding them.
//!
//! A broker that cannot be reached is not an error at start: records wait in librdkafka
//! (bounded by the pipeline's `max_in_flight`) and in the spool. A producer that hit a
//! fatal error (an idempotence violation after a broker lost its state) is replaced by a
//! new one, and what it held is offered again.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use serde::{Deserialize, Serialize};

use crate::{Busy, Delivery, Outgoing, Publisher};

/// The header naming the payload's protobuf message (with its version, in the package).
pub const SCHEMA_HEADER: &str = "sipcluster-schema";
/// Its value: the message every record of both topics is.
pub const SCHEMA: &str = "sipcluster.cdr.v1.Envelope";

/// Where and how to produce.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port,host:port`.
    pub brokers: String,
    /// The topic of call events (attempt, ringing, answered, ended, failed).
    pub events_topic: String,
    /// The topic of complete CDRs.
    pub cdrs_topic: String,
    /// Create both topics at start when they are missing (needs the Create ACL). In the
    /// background: a broker that is down does not delay the start.
    pub create_topics: bool,
    /// Partitions of a created topic.
    pub topic_partitions: i32,
    /// Replicas of a created topic; -1: the broker's default.
    pub topic_replication: i32,
    /// `none`, `gzip`, `snappy` or `lz4`.
    pub compression: String,
    /// How long librdkafka keeps retrying a record before reporting it failed (the
    /// pipeline then offers it again), ms.
    pub message_timeout_ms: u32,
    /// How long records wait to form a batch, ms.
    pub linger_ms: u32,
    /// `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl`.
    pub security_protocol: String,
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`, with a `sasl_*` security protocol.
    pub sasl_mechanism: Option<String>,
    /// The SASL user.
    pub sasl_username: Option<String>,
    /// File holding the SASL password (a Secret mount); `SIPCLUSTER_KAFKA_SASL_PASSWORD`
    /// also sets it. Never printed.
    pub sasl_password_file: Option<std::path::PathBuf>,
    /// CA bundle the brokers' certificates are checked against (PEM file).
    pub ssl_ca_location: Option<std::path::PathBuf>,
    /// Client certificate for mutual TLS (PEM file).
    pub ssl_certificate_location: Option<std::path::PathBuf>,
    /// Its private key (PEM file).
    pub ssl_key_location: Option<std::path::PathBuf>,
    /// Further librdkafka properties, as librdkafka names them; they win over the above.
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            events_topic: "sipcluster.call-events".into(),
            cdrs_topic: "sipcluster.cdrs".into(),
            create_topics: true,
            topic_partitions: 6,
            topic_replication: -1,
            compression: "lz4".into(),
            message_timeout_ms: 60_000,
            linger_ms: 5,
            security_protocol: "plaintext".into(),
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password_file: None,
            ssl_ca_location: None,
            ssl_certificate_location: None,
            ssl_key_location: None,
            properties: BTreeMap::new(),
        }
    }
}

impl KafkaConfig {
    /// A problem with these settings: the field (as `accounting.kafka.*`) and what is
    /// wrong.
    pub fn problem(&self) -> Option<(&'static str, String)> {
        if self.brokers.trim().is_empty() {
            return Some((
                "accounting.kafka.brokers",
                "give at least one host:port".into(),
            ));
        }
        if self.events_topic.is_empty() || self.cdrs_topic.is_empty() {
            return Some((
                "accounting.kafka.events_topic",
                "topic names may not be empty".into(),
            ));
        }
        if !matches!(
            self.compression.as_str(),
            "none" | "gzip" | "snappy" | "lz4"
        ) {
            return Some((
                "accounting.kafka.compression",
                format!("{:?}: use none, gzip, snappy or lz4", self.compression),
            ));
        }
        let proto = self.security_protocol.to_ascii_lowercase();
        if !matches!(
            proto.as_str(),
            "plaintext" | "ssl" | "sasl_plaintext" | "sasl_ssl"
        ) {
            return Some((
                "accounting.kafka.security_protocol",
                format!(
                    "{:?}: use plaintext, ssl, sasl_plaintext or sasl_ssl",
                    self.security_protocol
                ),
            ));
        }
        if proto.starts_with("sasl") && self.sasl_mechanism.is_none() {
            return Some((
                "accounting.kafka.sasl_mechanism",
                "a sasl_* protocol needs a mechanism".into(),
            ));
        }
        if self.topic_partitions < 1 {
            return Some(("accounting.kafka.topic_partitions", "at least 1".into()));
        }
        if self.message_timeout_ms < 1000 {
            return Some((
                "accounting.kafka.message_timeout_ms",
                "at least 1000".into(),
            ));
        }
        None
    }

    /// The librdkafka configuration of a client (producer or admin). `password` is the
    /// SASL password, read from its file or the environment by the caller.
    pub fn client_config(&self, password: Option<&str>) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set(
                "security.protocol",
                self.security_protocol.to_ascii_lowercase(),
            )
            .set_log_level(RDKafkaLogLevel::Warning);
        if let Some(m) = &self.sasl_mechanism {
            c.set("sasl.mechanisms", m);
        }
        if let Some(u) = &self.sasl_username {
            c.set("sasl.username", u);
        }
        if let Some(p) = password {
            c.set("sasl.password", p);
        }
        for (key, path) in [
            ("ssl.ca.location", &self.ssl_ca_location),
            ("ssl.certificate.location", &self.ssl_certificate_location),
            ("ssl.key.location", &self.ssl_key_location),
        ] {
            if let Some(p) = path {
                c.set(key, p.display().to_string());
            }
        }
        c
    }

    fn producer_config(&self, password: Option<&str>) -> ClientConfig {
        let mut c = self.client_config(password);
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.codec", &self.compression)
            .set("message.timeout.ms", self.message_timeout_ms.to_string())
            .set("linger.ms", self.linger_ms.to_string());
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }
}

/// Why the producer could not be made.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    /// librdkafka refused the configuration (an unknown property, a bad value).
    #[error("kafka configuration: {0}")]
    Config(#[from] KafkaError),
    /// The SASL password file could not be read.
    #[error("reading the SASL password file {path}: {source}")]
    Password {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Collects deliveries from librdkafka's callbacks (run inside `poll`, on our thread).
struct Ctx {
    deliveries: Mutex<Vec<Delivery>>,
    /// A delivery failed because its topic does not exist (a broker that came back
    /// empty, a topic deleted): create the topics again when allowed.
    topic_missing: AtomicBool,
    /// The brokers no longer know this producer's id or its sequence (a broker that
    /// came back empty), or records went unaccepted for `message_timeout_ms`: a new
    /// producer (a new id) is needed.
    producer_lost: AtomicBool,
}

impl ClientContext for Ctx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(facility = fac, "kafka: {log_message}");
            }
            RDKafkaLogLevel::Warning => tracing::warn!(facility = fac, "kafka: {log_message}"),
            _ => tracing::debug!(facility = fac, "kafka: {log_message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // Brokers going away and coming back are reported here; the records wait.
        tracing::warn!(error = %error, "kafka client: {reason}");
    }
}

impl ProducerContext for Ctx {
    type DeliveryOpaque = Box<u64>;

    fn delivery(&self, result: &DeliveryResult<'_>, id: Box<u64>) {
        let d = match result {
            Ok(_) => Delivery::Acked(*id),
            Err((e, _)) => {
                tracing::debug!(id = *id, error = %e, "kafka delivery failed");
                if matches!(
                    e.rdkafka_error_code(),
                    Some(
                        RDKafkaErrorCode::UnknownTopic | RDKafkaErrorCode::UnknownTopicOrPartition
                    )
                ) {
                    // A broker that lost its topics lost this producer's id with them.
                    self.topic_missing.store(true, Ordering::Relaxed);
                    self.producer_lost.store(true, Ordering::Relaxed);
                }
                if matches!(
                    e.rdkafka_error_code(),
                    Some(
                        RDKafkaErrorCode::UnknownProducerId
                            | RDKafkaErrorCode::OutOfOrderSequenceNumber
                            | RDKafkaErrorCode::InvalidProducerEpoch
                            // Not accepted for message_timeout_ms: librdkafka retried on
                            // its own all along (an unknown producer id is retried, not
                            // reported: seen with a broker that came back empty).
                            | RDKafkaErrorCode::MessageTimedOut
                    )
                ) {
                    self.producer_lost.store(true, Ordering::Relaxed);
                }
                Delivery::Failed(*id)
            }
        };
        if let Ok(mut v) = self.deliveries.lock() {
            v.push(d);
        }
    }
}

/// Produces spooled records to Kafka.
pub struct Kafka {
    cfg: KafkaConfig,
    password: Option<String>,
    producer: BaseProducer<Ctx>,
    /// Handed to the current producer and not yet reported: failed if it is replaced.
    in_flight: HashSet<u64>,
    /// True while a thread creates the topics (one at a time).
    creating: Arc<AtomicBool>,
    /// When the producer was last replaced (at most one replacement per
    /// [`REPLACE_EVERY`]: a broker still recovering fails every record).
    replaced_at: Option<std::time::Instant>,
    /// The last sign of life of the current producer: an acknowledgement, or the moment
    /// records started waiting for one.
    progress_at: std::time::Instant,
}

/// The least time between two producer replacements.
const REPLACE_EVERY: Duration = Duration::from_secs(5);

/// Records in flight and not one acknowledged for this long: the producer is replaced.
/// A broker that came back without its state may answer every produce of the old
/// producer id with an error librdkafka retries silently (UNKNOWN_PRODUCER_ID, seen
/// with a fresh broker on a loaded CI machine: no delivery report at all), and no error
/// we are told of says so. A healthy cluster acknowledges within milliseconds; a
/// replacement costs at most duplicates, which carry their event ids.
const STALL: Duration = Duration::from_secs(15);

impl std::fmt::Debug for Kafka {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kafka")
            .field("brokers", &self.cfg.brokers)
            .field("in_flight", &self.in_flight.len())
            .finish_non_exhaustive()
    }
}

impl Kafka {
    /// A producer for `cfg` (no connection is needed yet). Starts the creation of the
    /// topics in the background when configured.
    pub fn new(cfg: KafkaConfig) -> Result<Kafka, KafkaSetupError> {
        let password = sasl_password(&cfg)?;
        let producer = make_producer(&cfg, password.as_deref())?;
        let k = Kafka {
            cfg,
            password,
            producer,
            in_flight: HashSet::new(),
            creating: Arc::new(AtomicBool::new(false)),
            replaced_at: None,
            progress_at: std::time::Instant::now(),
        };
        k.create_topics_in_background();
        Ok(k)
    }

    /// Create the topics on a thread of their own when configured, unless one is at it.
    fn create_topics_in_background(&self) {
        if !self.cfg.create_topics || self.creating.swap(true, Ordering::AcqRel) {
            return;
        }
        let admin = self.cfg.client_config(self.password.as_deref());
        let (c, creating) = (self.cfg.clone(), self.creating.clone());
        let spawned = std::thread::Builder::new()
            .name("kafka-topics".into())
            .spawn(move || {
                create_topics(&admin, &c);
                creating.store(false, Ordering::Release);
            });
        if let Err(e) = spawned {
            self.creating.store(false, Ordering::Release);
            tracing::warn!(error = %e, "kafka topics not created: no thread");
        }
    }

    /// A fatal producer error (the idempotent producer cannot go on): a new producer,
    /// and every record the old one held offered again.
    fn replace_if_fatal(&mut self, out: &mut Vec<Delivery>) {
        if let Some((code, why)) = self.producer.client().fatal_error() {
            tracing::error!(?code, reason = %why, "kafka producer failed fatally; starting a new one");
            self.replace(out);
        } else if self
            .producer
            .context()
            .producer_lost
            .load(Ordering::Relaxed)
            && self
                .replaced_at
                .is_none_or(|t| t.elapsed() >= REPLACE_EVERY)
        {
            // The idempotent producer's id is gone with the broker's state: its records
            // would be refused for ever. A new producer asks for a new id.
            tracing::warn!(
                "kafka brokers no longer know this producer (a broker that lost its state); starting a new one"
            );
            self.replace(out);
        } else if !self.in_flight.is_empty()
            && self.progress_at.elapsed() >= STALL
            && self
                .replaced_at
                .is_none_or(|t| t.elapsed() >= REPLACE_EVERY)
        {
            tracing::warn!(
                in_flight = self.in_flight.len(),
                secs = STALL.as_secs(),
                "kafka: records in flight and none acknowledged; starting a new producer"
            );
            self.replace(out);
        }
    }

    /// A new producer; every record the old one held is offered again (duplicates carry
    /// their event id). The topics are made again when allowed: whatever lost this
    /// producer's id (a broker that came back empty) most likely lost them too, and a
    /// new producer waits `topic.metadata.propagation.max.ms` on a missing topic before
    /// it says so.
    fn replace(&mut self, out: &mut Vec<Delivery>) {
        self.replaced_at = Some(std::time::Instant::now());
        self.create_topics_in_background();
        match make_producer(&self.cfg, self.password.as_deref()) {
            Ok(p) => {
                self.producer = p;
                self.progress_at = std::time::Instant::now();
                out.extend(self.in_flight.drain().map(Delivery::Failed));
            }
            Err(e) => tracing::error!(error = %e, "kafka producer not replaced"),
        }
    }
}

fn sasl_password(cfg: &KafkaConfig) -> Result<Option<String>, KafkaSetupError> {
    if let Some(path) = &cfg.sasl_password_file {
        let s = std::fs::read_to_string(path).map_err(|source| KafkaSetupError::Password {
            path: path.display().to_string(),
            source,
        })?;
        return Ok(Some(s.trim_end_matches(['\r', '\n']).to_owned()));
    }
    Ok(std::env::var("SIPCLUSTER_KAFKA_SASL_PASSWORD").ok())
}

fn make_producer(
    cfg: &KafkaConfig,
    password: Option<&str>,
) -> Result<BaseProducer<Ctx>, KafkaSetupError> {
    let ctx = Ctx {
        deliveries: Mutex::new(Vec::new()),
        topic_missing: AtomicBool::new(false),
        producer_lost: AtomicBool::new(false),
    };
    Ok(cfg.producer_config(password).create_with_context(ctx)?)
}

/// Create the topics, retrying while the brokers cannot be reached (bounded: ten
/// minutes, then a log line says so).
fn create_topics(admin: &ClientConfig, cfg: &KafkaConfig) {
    let Ok(client) = admin.create::<AdminClient<DefaultClientContext>>() else {
        tracing::warn!("kafka admin client not created: topics not created");
        return;
    };
    let replication = || TopicReplication::Fixed(cfg.topic_replication);
    let topics = [
        NewTopic::new(&cfg.events_topic, cfg.topic_partitions, replication()),
        NewTopic::new(&cfg.cdrs_topic, cfg.topic_partitions, replication()),
    ];
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    while std::time::Instant::now() < deadline {
        match futures::executor::block_on(client.create_topics(&topics, &opts)) {
            Ok(results) => {
                for r in results {
                    match r {
                        Ok(t) => tracing::info!(topic = %t, "kafka topic created"),
                        Err((t, RDKafkaErrorCode::TopicAlreadyExists)) => {
                            tracing::debug!(topic = %t, "kafka topic exists");
                        }
                        Err((t, code)) => {
                            tracing::warn!(topic = %t, ?code, "kafka topic not created");
                        }
                    }
                }
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "kafka topics: brokers not reachable yet");
                std::thread::sleep(Duration::from_secs(2));
            }
        }
    }
    tracing::warn!(
        brokers = %cfg.brokers,
        "kafka topics not created: no broker answered for ten minutes"
    );
}

/// Producer polls per turn at most, after the first (each serves one event).
const POLLS_PER_TURN: usize = 10_000;

impl Kafka {
    /// Delivery reports waiting to be taken.
    fn reported(&self) -> usize {
        self.producer
            .context()
            .deliveries
            .lock()
            .map_or(0, |v| v.len())
    }
}

/// Whether an encoded envelope is a CDR (else a call event): its top-level fields walked
/// for the `body` case's tag, without decoding the record (this runs per record).
fn is_cdr(envelope: &[u8]) -> bool {
    use prost::encoding::{DecodeContext, decode_key, skip_field};
    let mut buf = envelope;
    while !buf.is_empty() {
        let Ok((tag, wire_type)) = decode_key(&mut buf) else {
            return false;
        };
        match tag {
            CDR_TAG => return true,
            EVENT_TAG => return false,
            _ => {
                if skip_field(wire_type, tag, &mut buf, DecodeContext::default()).is_err() {
                    return false;
                }
            }
        }
    }
    false
}

/// The field numbers of `Envelope.body`'s cases (proto/sipcluster/cdr/v1/cdr.proto).
const EVENT_TAG: u32 = 10;
const CDR_TAG: u32 = 11;

impl Publisher for Kafka {
    fn publish(&mut self, rec: Outgoing<'_>) -> Result<(), Busy> {
        let topic = if is_cdr(rec.envelope) {
            &self.cfg.cdrs_topic
        } else {
            &self.cfg.events_topic
        };
        let headers = OwnedHeaders::new().insert(Header {
            key: SCHEMA_HEADER,
            value: Some(SCHEMA),
        });
        let record = BaseRecord::with_opaque_to(topic, Box::new(rec.id))
            .key(rec.key)
            .payload(rec.envelope)
            .headers(headers);
        match self.producer.send(record) {
            Ok(()) => {
                if self.in_flight.is_empty() {
                    // Waiting starts now, not at the last acknowledgement.
                    self.progress_at = std::time::Instant::now();
                }
                self.in_flight.insert(rec.id);
                Ok(())
            }
            Err((e, _)) => {
                if matches!(
                    e.rdkafka_error_code(),
                    Some(
                        RDKafkaErrorCode::UnknownTopic | RDKafkaErrorCode::UnknownTopicOrPartition
                    )
                ) {
                    // Known missing (a broker that came back empty): the records wait
                    // in the spool while the topics are made again, and the producer's
                    // id went with the broker's state.
                    self.create_topics_in_background();
                    self.producer
                        .context()
                        .producer_lost
                        .store(true, Ordering::Relaxed);
                }
                Err(Busy(e.to_string()))
            }
        }
    }

    fn poll(&mut self, wait: Duration) -> Vec<Delivery> {
        // One poll serves one event (one produce response's delivery reports): served
        // once per turn, reports queue up behind each other and records wait for their
        // acknowledgement for as long as the backlog of reports takes (half a second at
        // 5,000 records/s here). Serve every report waiting.
        self.producer.poll(wait);
        for _ in 0..POLLS_PER_TURN {
            let before = self.reported();
            self.producer.poll(Duration::ZERO);
            if self.reported() == before {
                break;
            }
        }
        let mut out = match self.producer.context().deliveries.lock() {
            Ok(mut v) => std::mem::take(&mut *v),
            Err(_) => Vec::new(),
        };
        for d in &out {
            let (Delivery::Acked(id) | Delivery::Failed(id)) = d;
            if matches!(d, Delivery::Acked(_)) {
                self.progress_at = std::time::Instant::now();
            }
            self.in_flight.remove(id);
        }
        // Read before a replacement, which starts a new context: the same report that
        // loses the producer says the topics are gone (a test run lost every CDR to
        // this order: the new producer waited for topics nobody made).
        if self
            .producer
            .context()
            .topic_missing
            .swap(false, Ordering::Relaxed)
        {
            // The records wait in the spool meanwhile, offered again.
            tracing::warn!("kafka topic missing on the brokers; creating the topics again");
            self.create_topics_in_background();
        }
        self.replace_if_fatal(&mut out);
        out
    }

    fn kind(&self) -> &'static str {
        "kafka"
    }
}

impl Drop for Kafka {
    fn drop(&mut self) {
        // What is acknowledged now need not be sent again at the next start.
        let _ = self.producer.flush(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use proto::cdr::v1::{CallEvent, Cdr, Envelope, envelope::Body};

    #[test]
    fn the_topic_follows_the_body_without_decoding_the_record() {
        let env = |body| Envelope {
            event_id: "e".repeat(64),
            produced_at_ms: 1_700_000_000_000,
            producer: "edge-1".into(),
            body,
        };
        let cdr = Cdr {
            sip_reason: "OK".into(),
            billable_ms: 62_000,
            ..Cdr::default()
        };
        assert!(super::is_cdr(&env(Some(Body::Cdr(cdr))).encode_to_vec()));
        assert!(!super::is_cdr(
            &env(Some(Body::Event(CallEvent::default()))).encode_to_vec()
        ));
        assert!(!super::is_cdr(&env(None).encode_to_vec()));
        assert!(!super::is_cdr(b"\xff\xff\xff"), "garbage is not a CDR");
        // The body first, as another encoder may order fields.
        let mut first = Vec::new();
        Body::Cdr(Cdr::default()).encode(&mut first);
        assert!(super::is_cdr(&first));
    }
}
