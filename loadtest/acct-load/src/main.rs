//! # acct-load: the accounting producer path at fixed rates
//!
//! What the edge's accounting costs away from SIP: records go through
//! [`accounting::Accounting::record`] (the edge's call: encode and queue), the durable
//! spool (append, CRC, batched fsync) and the publisher (Kafka with the edge's producer
//! settings, or JSON lines), and each step waits until every record is acknowledged.
//! Records come as calls do: per call an attempt, ringing, answered and ended event and a
//! complete CDR (five records, keyed by Call-ID), with realistic parties and times.
//!
//! For each `--rates` step it offers that many records per second for `--secs`, then
//! waits (at most `--drain-secs`) for the acknowledgements, and prints one line:
//! offered, acknowledged, dropped, the acknowledged rate over the step, the CPU of this
//! process (spool and producer threads, librdkafka's included) per record and per call,
//! and the acknowledgement latency (p50/p99 from the pipeline's histogram, by bucket).
//! A step is sustained when everything offered was acknowledged within the drain time
//! and nothing was dropped. Every loop is bounded in records and time.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use accounting::{AccountingSettings, Destination, KafkaConfig, Metrics};
use anyhow::{Context, Result, bail};
use clap::Parser;
use proto::cdr::v1 as cdr;

#[derive(Parser, Debug)]
#[command(about = "Call events and CDRs through the accounting spool and producer at fixed rates")]
struct Args {
    /// `kafka` or `jsonl`.
    #[arg(long, default_value = "kafka")]
    destination: String,
    /// Kafka brokers (host:port,...), for `--destination kafka`.
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    /// A scratch directory: the spool (and the JSON-lines file) go here.
    #[arg(long)]
    dir: PathBuf,
    /// Records per second to offer, one step each (five records make a call).
    #[arg(long, value_delimiter = ' ', default_value = "10000 25000 50000")]
    rates: Vec<u32>,
    /// Seconds of offering per step.
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// librdkafka properties on top of the edge's (`key=value`, repeated), for
    /// experiments; the figures to quote are without.
    #[arg(long = "kafka-property")]
    kafka_properties: Vec<String>,
    /// Seconds to wait for the acknowledgements after a step.
    #[arg(long, default_value_t = 20)]
    drain_secs: u64,
}

/// The five records of call `n`, as the edge builds them.
fn call_records(n: u64, at_ms: u64) -> Vec<cdr::Envelope> {
    let call = cdr::CallId {
        call_id: format!("{n:016x}-3c8e2f@192.0.2.10"),
        from_tag: format!("{:08x}", n.wrapping_mul(2_654_435_761)),
        to_tag: format!("as{:08x}", n.wrapping_mul(40_503)),
    };
    let party = |user: &str, name: &str| cdr::Party {
        user: user.into(),
        uri: format!("sip:{user}@voip.example.net"),
        display_name: name.into(),
        authenticated_as: String::new(),
    };
    let env = |kind: &str, body| cdr::Envelope {
        // The edge's ids are 36 characters; any unique value will do here.
        event_id: format!("{kind}-{n:032x}"),
        produced_at_ms: at_ms,
        producer: "edge-7d9f8c6b5-x2x4q".into(),
        body: Some(body),
    };
    let event = |kind: cdr::CallEventKind, name: &str, code: u32, cause: cdr::EndCause| {
        env(
            name,
            cdr::envelope::Body::Event(cdr::CallEvent {
                kind: kind as i32,
                call: Some(call.clone()),
                at_ms,
                sip_code: code,
                end_cause: cause as i32,
            }),
        )
    };
    let mut caller = party("4930123456", "Alice Example");
    caller.authenticated_as = "4930123456".into();
    let full = cdr::Cdr {
        call: Some(call.clone()),
        caller: Some(caller),
        callee: Some(party("4940987654", "")),
        request_uri: "sip:4940987654@voip.example.net;user=phone".into(),
        source: "198.51.100.23:5060".into(),
        source_transport: cdr::Transport::Udp as i32,
        edge: "edge-7d9f8c6b5-x2x4q".into(),
        recorded_by: "edge-7d9f8c6b5-k8p2m".into(),
        dispatcher: "10.0.3.17:5060".into(),
        media_relay: "http://media-relay-2.media-relay:50060".into(),
        destination: "pstn-carrier-a".into(),
        destination_uri: "sip:+4940987654@203.0.113.5:5060".into(),
        invite_at_ms: at_ms - 65_000,
        ringing_at_ms: at_ms - 63_500,
        answered_at_ms: at_ms - 62_000,
        ended_at_ms: at_ms,
        post_dial_delay_ms: 1_500,
        billable_ms: 62_000,
        sip_code: 200,
        sip_reason: "OK".into(),
        end_cause: cdr::EndCause::Bye as i32,
        hung_up_by: cdr::HungUpBy::Caller as i32,
        media: vec![],
    };
    use cdr::CallEventKind as K;
    use cdr::EndCause as E;
    vec![
        event(K::Attempt, "attempt", 0, E::Unspecified),
        event(K::Ringing, "ringing", 180, E::Unspecified),
        event(K::Answered, "answered", 200, E::Unspecified),
        event(K::Ended, "ended", 0, E::Bye),
        env("cdr", cdr::envelope::Body::Cdr(full)),
    ]
}

/// This process's CPU time (user + system, every thread), from /proc.
fn cpu() -> Result<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").context("read /proc/self/stat")?;
    // Fields after the command (which may hold spaces) closes with ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15: 12 and 13 after the state field.
    let t = ticks(11) + ticks(12);
    // CLK_TCK is 100 on Linux.
    Ok(Duration::from_millis(t * 10))
}

/// The `q` quantile of the acknowledgement latency, as the upper bound of its bucket.
fn quantile(m: &Metrics, q: f64) -> String {
    let mut reg = prometheus_text(m);
    reg.retain(|(le, _)| le.is_finite());
    let total = reg.last().map_or(0.0, |(_, c)| *c);
    reg.iter()
        .find(|(_, c)| *c >= q * total && total > 0.0)
        .map_or_else(|| "-".into(), |(le, _)| format!("≤{:.1}ms", le * 1000.0))
}

/// The latency histogram's cumulative buckets (upper bound s, count).
fn prometheus_text(m: &Metrics) -> Vec<(f64, f64)> {
    let mut reg = prometheus_client::registry::Registry::default();
    m.register(&mut reg);
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, &reg).is_err() {
        return Vec::new();
    }
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("accounting_delivery_seconds_bucket{le=\"")?;
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.split_whitespace().next()?.parse().ok()?))
        })
        .collect()
}

fn main() -> Result<()> {
    let a = Args::parse();
    let destination = match a.destination.as_str() {
        "kafka" => Destination::Kafka,
        "jsonl" => Destination::Jsonl,
        other => bail!("--destination {other}: kafka or jsonl"),
    };
    std::fs::create_dir_all(&a.dir).with_context(|| a.dir.display().to_string())?;
    let settings = AccountingSettings {
        destination: Some(destination),
        jsonl_path: a.dir.join("cdrs.jsonl"),
        spool_dir: a.dir.join("spool"),
        kafka: KafkaConfig {
            brokers: a.brokers.clone(),
            properties: a
                .kafka_properties
                .iter()
                .filter_map(|p| p.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            ..KafkaConfig::default()
        },
        ..AccountingSettings::default()
    };
    if let Some((field, why)) = settings.problem() {
        bail!("{field}: {why}");
    }
    let metrics = Metrics::default();
    let acc = settings
        .start(destination, metrics.clone())?
        .context("accounting is off")?;
    // Topics made, producer connected: a warm-up call acknowledged.
    let t0 = Instant::now();
    for e in call_records(u64::MAX, 1) {
        acc.record(&e, "warm-up");
    }
    while metrics.acknowledged.get() < 5 {
        if t0.elapsed() > Duration::from_secs(30) {
            bail!("the warm-up call was not acknowledged in 30 s (is the broker up?)");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "destination={} records/call=5 step={}s",
        a.destination, a.secs
    );
    let mut next_call = 0u64;
    for &rate in &a.rates {
        let calls_per_ms = f64::from(rate) / 5.0 / 1000.0;
        let (acked0, dropped0, failed0) = (
            metrics.acknowledged.get(),
            dropped(&metrics),
            metrics.failed.get(),
        );
        let cpu0 = cpu()?;
        let start = Instant::now();
        let mut offered_calls = 0u64;
        // Paced per millisecond: what is due by now is offered now.
        while start.elapsed() < Duration::from_secs(a.secs) {
            let due = (start.elapsed().as_secs_f64() * 1000.0 * calls_per_ms) as u64;
            while offered_calls < due {
                let at = 1_765_000_000_000 + next_call;
                for e in call_records(next_call, at) {
                    acc.record(&e, &e.event_id);
                }
                next_call += 1;
                offered_calls += 1;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let offered = offered_calls * 5;
        let deadline = Instant::now() + Duration::from_secs(a.drain_secs);
        let want = acked0 + offered - (dropped(&metrics) - dropped0);
        while metrics.acknowledged.get() < want && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let took = start.elapsed().as_secs_f64();
        let acked = metrics.acknowledged.get() - acked0;
        let drops = dropped(&metrics) - dropped0;
        let cpu_s = (cpu()? - cpu0).as_secs_f64();
        let per_record_us = if acked > 0 {
            cpu_s * 1e6 / acked as f64
        } else {
            0.0
        };
        println!(
            "rate={rate}/s offered={offered} acked={acked} dropped={drops} retried={} acked_per_s={:.0} cpu_per_record_us={per_record_us:.1} cpu_per_call_us={:.1} cpu_cores={:.2} latency_p50={} latency_p99={} sustained={}",
            metrics.failed.get() - failed0,
            acked as f64 / took,
            per_record_us * 5.0,
            cpu_s / took,
            quantile(&metrics, 0.5),
            quantile(&metrics, 0.99),
            acked == offered && drops == 0 && took <= a.secs as f64 + 2.0,
        );
    }
    let left = acc.drain(Duration::from_secs(5));
    if left > 0 {
        println!("left in the spool at exit: {left}");
    }
    Ok(())
}

fn dropped(m: &Metrics) -> u64 {
    ["queue_full", "spool_full", "spool_error"]
        .iter()
        .map(|r| {
            m.dropped
                .get_or_create(&accounting::DropLabel { reason: r })
                .get()
        })
        .sum()
}
