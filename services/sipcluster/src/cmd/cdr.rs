//! `sipcluster cdr tail`: read the accounting topics, decode the protobuf, print one line
//! per record — for billing teams checking what arrives, and for the tests.
//!
//! It reads every partition of the topic directly (no consumer group, nothing
//! committed): a tail never moves a billing consumer's offsets.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use prost::Message;
use proto::cdr::v1::{CallEventKind, EndCause, Envelope, HungUpBy, envelope::Body};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message as _};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// `sipcluster cdr ...`
#[derive(Args, Clone)]
pub struct CdrArgs {
    #[command(subcommand)]
    pub command: CdrCommand,
}

/// What to do.
#[derive(Subcommand, Clone)]
pub enum CdrCommand {
    /// Print the records of an accounting topic as they arrive.
    Tail(TailArgs),
}

/// `sipcluster cdr tail`
#[derive(Args, Clone)]
pub struct TailArgs {
    /// Bootstrap brokers, host:port[,host:port].
    #[arg(
        long,
        env = "SIPCLUSTER_KAFKA_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    pub brokers: String,
    /// The topic (the CDRs by default; the call events are on `sipcluster.call-events`).
    #[arg(long, default_value = "sipcluster.cdrs")]
    pub topic: String,
    /// Start at the oldest record the broker keeps, not at the newest.
    #[arg(long)]
    pub from_beginning: bool,
    /// Print each record in the proto's JSON mapping (one object per line).
    #[arg(long)]
    pub json: bool,
    /// Stop after this many records.
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop when nothing arrived for this many seconds (default: never).
    #[arg(long)]
    pub idle_exit_secs: Option<u64>,
    /// librdkafka properties (security.protocol=sasl_ssl, ...), repeatable.
    #[arg(long = "property", value_name = "KEY=VALUE")]
    pub properties: Vec<String>,
}

/// Run `sipcluster cdr`.
pub fn run(a: &CdrArgs) -> Result<()> {
    match &a.command {
        CdrCommand::Tail(t) => tail(t),
    }
}

fn tail(a: &TailArgs) -> Result<()> {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &a.brokers)
        .set("group.id", "sipcluster-cdr-tail")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false");
    for p in &a.properties {
        let Some((k, v)) = p.split_once('=') else {
            bail!("--property {p:?}: give KEY=VALUE");
        };
        cfg.set(k, v);
    }
    let consumer: BaseConsumer = cfg.create().context("creating the Kafka consumer")?;
    let meta = consumer
        .fetch_metadata(Some(&a.topic), Duration::from_secs(10))
        .with_context(|| format!("reading the metadata of {} from {}", a.topic, a.brokers))?;
    let Some(topic) = meta.topics().iter().find(|t| t.name() == a.topic) else {
        bail!("no topic {} on {}", a.topic, a.brokers);
    };
    if topic.partitions().is_empty() {
        bail!(
            "topic {} has no partitions on {} (does it exist?)",
            a.topic,
            a.brokers
        );
    }
    let start = if a.from_beginning {
        Offset::Beginning
    } else {
        Offset::End
    };
    let mut tpl = TopicPartitionList::new();
    for p in topic.partitions() {
        tpl.add_partition_offset(&a.topic, p.id(), start)
            .context("assigning partitions")?;
    }
    consumer.assign(&tpl).context("assigning partitions")?;
    let mut out = std::io::stdout().lock();
    let mut seen = 0u64;
    let mut last = Instant::now();
    loop {
        if a.count.is_some_and(|c| seen >= c) {
            return Ok(());
        }
        if let Some(idle) = a.idle_exit_secs
            && last.elapsed() >= Duration::from_secs(idle)
        {
            return Ok(());
        }
        let Some(r) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = match r {
            Ok(m) => m,
            Err(e) => {
                eprintln!("kafka: {e}");
                continue;
            }
        };
        last = Instant::now();
        seen += 1;
        let schema = m
            .headers()
            .and_then(|h| {
                h.iter()
                    .find(|h| h.key == accounting::kafka::SCHEMA_HEADER)
                    .and_then(|h| h.value)
            })
            .map(|v| String::from_utf8_lossy(v).into_owned());
        let line = match Envelope::decode(m.payload().unwrap_or_default()) {
            Ok(env) if a.json => serde_json::to_string(&env)?,
            Ok(env) => summary(&env),
            Err(e) => format!(
                "undecodable record at {}/{} offset {} (schema {:?}): {e}",
                m.topic(),
                m.partition(),
                m.offset(),
                schema
            ),
        };
        writeln!(out, "{line}")?;
        out.flush()?;
    }
}

/// One readable line.
fn summary(env: &Envelope) -> String {
    match &env.body {
        Some(Body::Cdr(c)) => {
            let call = c.call.clone().unwrap_or_default();
            let uri = |p: &Option<proto::cdr::v1::Party>| {
                p.as_ref().map(|p| p.uri.clone()).unwrap_or_default()
            };
            format!(
                "cdr {} call-id={} caller={} callee={} code={} cause={} by={} pdd_ms={} billable_ms={} edge={}",
                env.event_id,
                call.call_id,
                uri(&c.caller),
                uri(&c.callee),
                c.sip_code,
                EndCause::try_from(c.end_cause)
                    .map_or("?", |e| e.as_str_name())
                    .trim_start_matches("END_CAUSE_"),
                HungUpBy::try_from(c.hung_up_by)
                    .map_or("?", |e| e.as_str_name())
                    .trim_start_matches("HUNG_UP_BY_"),
                c.post_dial_delay_ms,
                c.billable_ms,
                c.recorded_by,
            )
        }
        Some(Body::Event(e)) => {
            let call = e.call.clone().unwrap_or_default();
            format!(
                "event {} {} call-id={} code={} at_ms={}",
                CallEventKind::try_from(e.kind)
                    .map_or("?", |k| k.as_str_name())
                    .trim_start_matches("CALL_EVENT_KIND_"),
                env.event_id,
                call.call_id,
                e.sip_code,
                e.at_ms,
            )
        }
        None => format!("empty envelope {}", env.event_id),
    }
}
