//! `sipcluster top`: the quick look before Grafana. It reads the `/metrics` endpoint of
//! one service or of every service of a cluster, and prints one row per process with
//! rates per second between its last two scrapes: SIP traffic, calls, live state, the
//! cluster's plumbing, CPU and memory.
//!
//! The pure parts are unit-tested on fixed text: [`parse`] reads the text exposition
//! format, [`Stats::compute`] turns two scrapes and the time between them into rates,
//! [`render`] lays a frame out as a `String`. [`run`] only scrapes, sleeps and prints.
//! The scrape is a plain HTTP/1.1 GET over a `TcpStream`: the endpoints are plain HTTP,
//! and an HTTP client dependency would be the biggest part of this command.

use std::io::{IsTerminal, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;

/// `sipcluster top`
#[derive(Args, Clone, Debug)]
pub struct TopArgs {
    /// The metrics endpoints to read: HOST:PORT or http://HOST:PORT[/PATH] (the path
    /// defaults to /metrics). Without one, the all-in-one's default, 127.0.0.1:9090.
    #[arg(value_name = "URL_OR_HOST:PORT")]
    pub targets: Vec<String>,
    /// Seconds between two scrapes: the rates are over this window.
    #[arg(long, value_name = "SECS", default_value_t = 2.0)]
    pub interval: f64,
    /// Print one frame (two scrapes one interval apart) and exit.
    #[arg(long)]
    pub once: bool,
    /// Exit after this many frames.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
}

/// Run `sipcluster top`.
pub fn run(a: &TopArgs) -> Result<()> {
    // Bounded above so that the deadlines computed from it cannot overflow an `Instant`.
    let interval = Duration::try_from_secs_f64(a.interval)
        .ok()
        .filter(|d| !d.is_zero() && *d <= Duration::from_secs(86_400))
        .with_context(|| {
            format!(
                "--interval {}: give a number of seconds above 0, at most 86400",
                a.interval
            )
        })?;
    let frames = if a.once { Some(1) } else { a.count };
    if frames == Some(0) {
        bail!("--count 0: give at least 1");
    }
    let targets = if a.targets.is_empty() {
        vec![default_target()?]
    } else {
        a.targets
            .iter()
            .map(|t| Target::parse(t))
            .collect::<Result<Vec<_>>>()?
    };
    // A terminal gets one screen redrawn in place; a pipe or a file gets every frame,
    // one after the other, so what was seen can be kept and compared.
    let tty = std::io::stdout().is_terminal();
    let mut prev = scrape_all(&targets, interval);
    let mut next = Instant::now() + interval;
    let mut shown = 0u64;
    loop {
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        next += interval;
        let cur = scrape_all(&targets, interval);
        let rows: Vec<Row> = targets
            .iter()
            .zip(prev.iter().zip(&cur))
            .map(|(t, (p, c))| Row::new(t, p, c))
            .collect();
        let frame = render(&rows, interval.as_secs_f64());
        match print(&frame, tty, shown > 0) {
            // The reader is gone (`sipcluster top | head`): nothing left to do.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            r => r.context("writing to stdout")?,
        }
        shown += 1;
        if frames.is_some_and(|n| shown >= n) {
            return Ok(());
        }
        prev = cur;
    }
}

/// Print a frame: over the last one on a terminal, after a blank line otherwise.
fn print(frame: &str, tty: bool, after_another: bool) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    if tty {
        // Cursor home, then clear the screen.
        write!(out, "\x1b[H\x1b[2J")?;
    } else if after_another {
        writeln!(out)?;
    }
    write!(out, "{frame}")?;
    out.flush()
}

/// The all-in-one's metrics address, from the same default its configuration has.
fn default_target() -> Result<Target> {
    let Some(addr) = edge::config::MetricsConfig::default().listen else {
        bail!("no default metrics address: give one (HOST:PORT)");
    };
    Target::parse(&addr.to_string())
}

/// One metrics endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Target {
    /// `host:port`, as given: how the row is named and what is connected to.
    authority: String,
    /// The path of the exposition, `/metrics` unless the URL names another.
    path: String,
}

impl Target {
    /// `host:port` or `http://host:port[/path]`.
    fn parse(s: &str) -> Result<Target> {
        if s.starts_with("https://") {
            bail!("{s}: the metrics endpoints serve plain HTTP; give http:// or host:port");
        }
        let rest = s.strip_prefix("http://").unwrap_or(s);
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let port_ok = authority
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !port_ok {
            bail!("{s}: give HOST:PORT or http://HOST:PORT[/PATH]");
        }
        let path = if path.is_empty() || path == "/" {
            "/metrics"
        } else {
            path
        };
        Ok(Target {
            authority: authority.to_owned(),
            path: path.to_owned(),
        })
    }
}

/// What one scrape of one target gave: its samples and when they were read, or why
/// there are none.
type Scrape = Result<(Vec<Sample>, Instant), String>;

/// Scrape every target at once, so a target that does not answer costs one timeout per
/// frame, not one per target.
fn scrape_all(targets: &[Target], interval: Duration) -> Vec<Scrape> {
    // Within the frame's interval, but never so short that a loaded endpoint misses every
    // frame (its HTTP server answers in milliseconds when healthy).
    let timeout = interval.clamp(Duration::from_secs(1), Duration::from_secs(5));
    std::thread::scope(|s| {
        let handles: Vec<_> = targets
            .iter()
            .map(|t| s.spawn(move || scrape(t, timeout)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("the scrape panicked".to_owned()))
            })
            .collect()
    })
}

/// The largest body read: the services expose a few hundred kilobytes at most; a
/// misdirected port that streams forever is cut here.
const MAX_RESPONSE: u64 = 32 << 20;

/// GET the target's exposition in the classic text format.
fn scrape(t: &Target, timeout: Duration) -> Scrape {
    let addrs: Vec<_> = t
        .authority
        .to_socket_addrs()
        .map_err(|e| format!("resolve: {e}"))?
        .collect();
    let mut last = "resolve: no address".to_owned();
    let mut stream = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = format!("connect: {e}"),
        }
    }
    let mut s = stream.ok_or(last)?;
    let io = |e: std::io::Error| match e.kind() {
        // What a read timeout is on Unix (EAGAIN) says nothing to an operator.
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            format!("read: no answer in {} s", timeout.as_secs_f64())
        }
        _ => format!("read: {e}"),
    };
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    // `Accept: text/plain`: the classic format (counters named `_total`, no exemplars),
    // what the services give anything that is not Prometheus.
    write!(
        s,
        "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/plain\r\nConnection: close\r\n\r\n",
        t.path, t.authority
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    s.take(MAX_RESPONSE).read_to_end(&mut raw).map_err(io)?;
    // The moment the process encoded its counters is within this read; its end is the
    // closest point measured here.
    let at = Instant::now();
    http_body(&raw).map(|body| (parse(&body), at))
}

/// The body of a complete HTTP/1.1 response, if its status is 200; chunked bodies are
/// joined (as bytes: a chunk may end inside a UTF-8 character).
fn http_body(raw: &[u8]) -> Result<String, String> {
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Err(if raw.is_empty() {
            "no answer".to_owned()
        } else {
            "not an HTTP response".to_owned()
        });
    };
    let (head, body) = (String::from_utf8_lossy(&raw[..split]), &raw[split + 4..]);
    let mut lines = head.lines();
    let status = lines
        .next()
        .filter(|l| l.starts_with("HTTP/"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or("not an HTTP response")?;
    if status != 200 {
        return Err(format!("HTTP {status}"));
    }
    let chunked = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding")
                && v.to_ascii_lowercase().contains("chunked")
        })
    });
    if !chunked {
        return Ok(String::from_utf8_lossy(body).into_owned());
    }
    let truncated = "truncated chunked body";
    let mut out = Vec::with_capacity(body.len());
    let mut rest = body;
    loop {
        let eol = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or(truncated)?;
        let size = String::from_utf8_lossy(&rest[..eol]);
        let size = size.split(';').next().unwrap_or_default().trim();
        let n = usize::from_str_radix(size, 16).map_err(|_| "bad chunk size")?;
        if n == 0 {
            return Ok(String::from_utf8_lossy(&out).into_owned());
        }
        let after = &rest[eol + 2..];
        out.extend_from_slice(after.get(..n).ok_or(truncated)?);
        rest = after
            .get(n..)
            .and_then(|r| r.strip_prefix(b"\r\n"))
            .ok_or(truncated)?;
    }
}

/// One sample line of the exposition: `name{labels} value [timestamp]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The metric name as exposed (`sipcluster_sip_requests_total`).
    pub name: String,
    /// Label pairs in the order exposed, values unescaped.
    pub labels: Vec<(String, String)>,
    /// The value (`+Inf`, `-Inf` and `NaN` included).
    pub value: f64,
}

impl Sample {
    /// The value of label `k`.
    pub fn label(&self, k: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }

    /// Does label `k` have the value `v`?
    fn is(&self, k: &str, v: &str) -> bool {
        self.label(k) == Some(v)
    }
}

/// The samples of a text exposition (classic or OpenMetrics). Comments, blank lines and
/// lines that are not a sample are skipped: a body from another program must not stop
/// the view.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
    let (name, mut rest) = line.split_at(name_end);
    if name.is_empty() {
        return None;
    }
    let mut labels = Vec::new();
    if let Some(r) = rest.strip_prefix('{') {
        rest = r;
        loop {
            rest = rest.trim_start_matches([' ', ',']);
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            let (k, r) = rest.split_once('=')?;
            let r = r.trim_start().strip_prefix('"')?;
            let (v, r) = label_value(r)?;
            labels.push((k.trim().to_owned(), v));
            rest = r;
        }
    }
    // An OpenMetrics exemplar follows ` # `; the value comes first either way.
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// A label value up to its closing quote (`\"`, `\\` and `\n` unescaped), and the rest.
fn label_value(s: &str) -> Option<(String, &str)> {
    let mut v = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((v, &s[i + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => v.push('\n'),
                other => v.push(other),
            },
            c => v.push(c),
        }
    }
    None
}

/// How a column is read from the scrapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum How {
    /// Per second: the increase of the counters between two scrapes over the time
    /// between them.
    Rate,
    /// The sum of the gauges now.
    Sum,
    /// How many series there are now.
    Count,
}

/// How a column adds up on the totals line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Total {
    Sum,
    /// The largest row: a gauge each process reads from the one shared store (every
    /// edge publishes the store's bindings, every location replica its dialog count), so
    /// a sum would count the store once per process.
    Max,
}

/// One column: which metric, which of its series, and how.
struct Measure {
    /// The metric names summed (the edge's and the dispatcher's transports count
    /// overload rejections under different names).
    metrics: &'static [&'static str],
    keep: fn(&Sample) -> bool,
    how: How,
    scale: f64,
    total: Total,
    decimals: usize,
}

/// The methods that get a column; the rest are `other`.
const MAIN_METHODS: [&str; 4] = ["INVITE", "REGISTER", "BYE", "OPTIONS"];

/// The columns of a row, in [`Stats::values`] order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Col {
    /// INVITEs received per second.
    Invite,
    /// REGISTERs received per second.
    Register,
    /// BYEs received per second.
    Bye,
    /// OPTIONS received per second.
    Options,
    /// Other requests received per second.
    OtherRequests,
    /// 2xx responses sent per second.
    Resp2xx,
    /// 4xx responses sent per second.
    Resp4xx,
    /// 5xx responses sent per second.
    Resp5xx,
    /// Requests refused for overload per second.
    Overload,
    /// Call attempts per second.
    Calls,
    /// Calls answered per second.
    Answered,
    /// Live SIP transactions.
    Transactions,
    /// Live registrations (bindings).
    Registrations,
    /// Calls in progress (dialog records).
    Dialogs,
    /// Call events and CDRs produced per second.
    CdrEvents,
    /// Accounting events spooled, not yet acknowledged.
    SpoolDepth,
    /// Dispatcher targets taking new dialogs.
    TargetsUp,
    /// Dispatcher targets.
    Targets,
    /// Location gRPC calls per second.
    LocationCalls,
    /// Location gRPC calls that did not end `ok`, per second.
    LocationErrors,
    /// Media relay sessions.
    MediaSessions,
    /// Media datagrams forwarded per second.
    MediaPackets,
    /// CPU used, percent of one core.
    Cpu,
    /// Resident memory, MiB.
    Rss,
}

impl Col {
    /// Every column.
    pub const ALL: [Col; 24] = [
        Col::Invite,
        Col::Register,
        Col::Bye,
        Col::Options,
        Col::OtherRequests,
        Col::Resp2xx,
        Col::Resp4xx,
        Col::Resp5xx,
        Col::Overload,
        Col::Calls,
        Col::Answered,
        Col::Transactions,
        Col::Registrations,
        Col::Dialogs,
        Col::CdrEvents,
        Col::SpoolDepth,
        Col::TargetsUp,
        Col::Targets,
        Col::LocationCalls,
        Col::LocationErrors,
        Col::MediaSessions,
        Col::MediaPackets,
        Col::Cpu,
        Col::Rss,
    ];

    fn measure(self) -> Measure {
        fn all(_: &Sample) -> bool {
            true
        }
        let m = |metrics, keep, how| Measure {
            metrics,
            keep,
            how,
            scale: 1.0,
            total: Total::Sum,
            decimals: if how == How::Rate { 1 } else { 0 },
        };
        const REQUESTS: &[&str] = &["sipcluster_sip_requests_total"];
        const RESPONSES: &[&str] = &["sipcluster_sip_responses_total"];
        match self {
            Col::Invite => m(REQUESTS, |s| s.is("method", "INVITE"), How::Rate),
            Col::Register => m(REQUESTS, |s| s.is("method", "REGISTER"), How::Rate),
            Col::Bye => m(REQUESTS, |s| s.is("method", "BYE"), How::Rate),
            Col::Options => m(REQUESTS, |s| s.is("method", "OPTIONS"), How::Rate),
            Col::OtherRequests => m(
                REQUESTS,
                |s| s.label("method").is_none_or(|m| !MAIN_METHODS.contains(&m)),
                How::Rate,
            ),
            Col::Resp2xx => m(RESPONSES, |s| s.is("class", "2xx"), How::Rate),
            Col::Resp4xx => m(RESPONSES, |s| s.is("class", "4xx"), How::Rate),
            Col::Resp5xx => m(RESPONSES, |s| s.is("class", "5xx"), How::Rate),
            Col::Overload => m(
                &[
                    "sipcluster_sip_overload_rejections_total",
                    "sipcluster_dispatcher_sip_overload_rejections_total",
                ],
                all,
                How::Rate,
            ),
            Col::Calls => m(&["sipcluster_call_attempts_total"], all, How::Rate),
            Col::Answered => m(&["sipcluster_call_answered_total"], all, How::Rate),
            Col::Transactions => m(&["sipcluster_sip_transactions_active"], all, How::Sum),
            Col::Registrations => Measure {
                total: Total::Max,
                ..m(&["sipcluster_sip_registrations_active"], all, How::Sum)
            },
            Col::Dialogs => Measure {
                total: Total::Max,
                ..m(&["sipcluster_location_dialogs_active"], all, How::Sum)
            },
            Col::CdrEvents => m(
                &["sipcluster_accounting_events_produced_total"],
                all,
                How::Rate,
            ),
            Col::SpoolDepth => m(&["sipcluster_accounting_spool_depth"], all, How::Sum),
            Col::TargetsUp => m(&["sipcluster_dispatcher_target_up"], all, How::Sum),
            Col::Targets => m(&["sipcluster_dispatcher_target_up"], all, How::Count),
            Col::LocationCalls => m(&["sipcluster_location_grpc_calls_total"], all, How::Rate),
            // The location service answers a miss with an empty result, never
            // `not_found`: every other code is a failure.
            Col::LocationErrors => m(
                &["sipcluster_location_grpc_calls_total"],
                |s| !s.is("code", "ok"),
                How::Rate,
            ),
            Col::MediaSessions => m(&["sipcluster_media_sessions"], all, How::Sum),
            Col::MediaPackets => m(&["sipcluster_media_packets_total"], all, How::Rate),
            Col::Cpu => Measure {
                scale: 100.0,
                decimals: 1,
                ..m(&["process_cpu_seconds_total"], all, How::Rate)
            },
            Col::Rss => Measure {
                scale: 1.0 / f64::from(1u32 << 20),
                decimals: 1,
                ..m(&["process_resident_memory_bytes"], all, How::Sum)
            },
        }
    }
}

/// The series of `names` that `keep` selects.
fn series<'a>(
    samples: &'a [Sample],
    names: &'a [&str],
    keep: fn(&Sample) -> bool,
) -> impl Iterator<Item = &'a Sample> + 'a {
    samples
        .iter()
        .filter(move |s| names.contains(&s.name.as_str()) && keep(s))
}

/// Does the scrape have any series of `names`? A metric the process does not have is
/// shown `-`, apart from one that is 0.
fn has(samples: &[Sample], names: &[&str]) -> bool {
    samples.iter().any(|s| names.contains(&s.name.as_str()))
}

/// The increase of the selected counters from `prev` to `cur`, series by series. A
/// series that went down was reset (the process restarted) and counts from 0, as
/// Prometheus's `rate` does; a series new in `cur` was created since (the services
/// create a label set at its first event) and counts from 0 too.
fn increase(prev: &[Sample], cur: &[Sample], names: &[&str], keep: fn(&Sample) -> bool) -> f64 {
    series(cur, names, keep)
        .filter(|c| c.value.is_finite())
        .map(|c| {
            let before = prev
                .iter()
                .find(|p| p.name == c.name && p.labels == c.labels)
                .map(|p| p.value)
                .filter(|p| p.is_finite() && *p <= c.value);
            c.value - before.unwrap_or(0.0)
        })
        .fold(0.0, |a, b| a + b)
}

/// One process's columns and what it is.
#[derive(Clone, Debug, PartialEq)]
pub struct Stats {
    /// The role guessed from its metrics.
    pub role: String,
    /// `sipcluster_build_info{version}`.
    pub version: Option<String>,
    /// One value per [`Col::ALL`], `None` where the process has no such metric (or, for
    /// a rate, no earlier scrape).
    pub values: [Option<f64>; Col::ALL.len()],
}

impl Stats {
    /// The columns from the scrape `cur` and the one `secs` seconds before it (`None`:
    /// that one failed, so no rate yet).
    pub fn compute(prev: Option<&[Sample]>, cur: &[Sample], secs: f64) -> Stats {
        let values = Col::ALL.map(|c| {
            let m = c.measure();
            if !has(cur, m.metrics) {
                return None;
            }
            let v = match m.how {
                // Folded from +0.0: an empty `f64` sum is -0.0, shown `-0.0`.
                How::Sum => series(cur, m.metrics, m.keep).fold(0.0, |a, s| a + s.value),
                How::Count => series(cur, m.metrics, m.keep).count() as f64,
                How::Rate => {
                    let prev = prev.filter(|_| secs > 0.0)?;
                    increase(prev, cur, m.metrics, m.keep) / secs
                }
            };
            Some(v * m.scale)
        });
        Stats {
            role: role(cur).to_owned(),
            version: cur
                .iter()
                .find(|s| s.name == "sipcluster_build_info")
                .and_then(|s| s.label("version"))
                .map(str::to_owned),
            values,
        }
    }

    /// The value of column `c`.
    pub fn get(&self, c: Col) -> Option<f64> {
        self.values[c as usize]
    }
}

/// A role and the test of a metric name that only it registers.
type RoleMark = (&'static str, fn(&str) -> bool);

/// What the process is, from the metrics only one role registers: `all-in-one` when
/// several are there, `?` when none is.
pub fn role(samples: &[Sample]) -> &'static str {
    let roles: [RoleMark; 4] = [
        ("edge", |n| n == "sipcluster_sip_requests_total"),
        ("dispatcher", |n| n.starts_with("sipcluster_dispatcher_")),
        ("location", |n| n.starts_with("sipcluster_location_")),
        ("media-relay", |n| n == "sipcluster_media_sessions"),
    ];
    let found: Vec<&str> = roles
        .iter()
        .filter(|(_, is)| samples.iter().any(|s| is(&s.name)))
        .map(|(r, _)| *r)
        .collect();
    match found.as_slice() {
        [] => "?",
        [one] => one,
        _ => "all-in-one",
    }
}

/// One target's row in a frame.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// `host:port`.
    pub instance: String,
    /// Its columns, or why it could not be read.
    pub state: Result<Stats, String>,
}

impl Row {
    fn new(t: &Target, prev: &Scrape, cur: &Scrape) -> Row {
        Row {
            instance: t.authority.clone(),
            state: match (prev, cur) {
                // The rates are over the time measured between this target's two scrapes,
                // not the nominal interval: a slow answer shifts one of them.
                (Ok((p, p_at)), Ok((c, c_at))) => Ok(Stats::compute(
                    Some(p),
                    c,
                    c_at.saturating_duration_since(*p_at).as_secs_f64(),
                )),
                (Err(_), Ok((c, _))) => Ok(Stats::compute(None, c, 0.0)),
                (_, Err(e)) => Err(e.clone()),
            },
        }
    }
}

/// The totals line: each column summed (or its largest, [`Total::Max`]) over the rows
/// that answered; `None` where none has the metric.
pub fn totals(rows: &[Row]) -> [Option<f64>; Col::ALL.len()] {
    Col::ALL.map(|c| {
        let total = c.measure().total;
        rows.iter()
            .filter_map(|r| r.state.as_ref().ok()?.get(c))
            .reduce(|a, b| match total {
                Total::Sum => a + b,
                Total::Max => a.max(b),
            })
    })
}

/// How a table's column is aligned.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Align {
    Left,
    Right,
}

/// Lay out `rows` under `head`, columns two spaces apart, no trailing blanks.
fn table(out: &mut String, head: &[(&str, Align)], rows: &[Vec<String>]) {
    let widths: Vec<usize> = head
        .iter()
        .enumerate()
        .map(|(i, (h, _))| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .chain([h.chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |out: &mut String, cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, c) in cells.enumerate() {
            let (w, align) = (widths.get(i).copied().unwrap_or(0), head[i].1);
            if i > 0 {
                l.push_str("  ");
            }
            let pad = " ".repeat(w.saturating_sub(c.chars().count()));
            match align {
                Align::Left => {
                    l.push_str(c);
                    l.push_str(&pad);
                }
                Align::Right => {
                    l.push_str(&pad);
                    l.push_str(c);
                }
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(out, &mut head.iter().map(|(h, _)| *h));
    for r in rows {
        line(out, &mut r.iter().map(String::as_str).take(head.len()));
    }
}

/// A value as shown: `-` when absent.
fn cell(v: Option<f64>, c: Col) -> String {
    match v {
        None => "-".to_owned(),
        Some(v) => format!("{v:.*}", c.measure().decimals),
    }
}

/// What a peer sent, safe to print on a terminal: no escape sequences or line breaks.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// The sections of a frame after the first: a title and its columns.
const SECTIONS: [(&str, &[(&str, Col)]); 3] = [
    (
        "SIP/s",
        &[
            ("INVITE", Col::Invite),
            ("REGISTER", Col::Register),
            ("BYE", Col::Bye),
            ("OPTIONS", Col::Options),
            ("other", Col::OtherRequests),
            ("2xx", Col::Resp2xx),
            ("4xx", Col::Resp4xx),
            ("5xx", Col::Resp5xx),
            ("overload", Col::Overload),
        ],
    ),
    (
        "CALLS",
        &[
            ("calls/s", Col::Calls),
            ("answered/s", Col::Answered),
            ("transactions", Col::Transactions),
            ("registrations", Col::Registrations),
            ("dialogs", Col::Dialogs),
            ("CDR events/s", Col::CdrEvents),
            ("spool", Col::SpoolDepth),
        ],
    ),
    (
        "CLUSTER",
        &[
            // Rendered `up/total` with Col::Targets.
            ("targets", Col::TargetsUp),
            ("location rpc/s", Col::LocationCalls),
            ("rpc errors/s", Col::LocationErrors),
            ("media sessions", Col::MediaSessions),
            ("packets/s", Col::MediaPackets),
        ],
    ),
];

/// One frame: a heading, the processes (role, version, CPU, memory, or DOWN and why),
/// then SIP traffic, calls and state, and the cluster's plumbing, each with a totals
/// line. `secs` is the window of the rates.
pub fn render(rows: &[Row], secs: f64) -> String {
    let mut out = String::new();
    let down = rows.iter().filter(|r| r.state.is_err()).count();
    out.push_str(&format!(
        "sipcluster top: {} target{}, {down} down; rates per second over {secs:.1} s\n\n",
        rows.len(),
        if rows.len() == 1 { "" } else { "s" },
    ));
    let total = totals(rows);
    let versions: std::collections::BTreeSet<&str> = rows
        .iter()
        .filter_map(|r| r.state.as_ref().ok()?.version.as_deref())
        .collect();
    let mut procs: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let name = printable(&r.instance);
            match &r.state {
                Ok(s) => vec![
                    name,
                    s.role.clone(),
                    s.version.as_deref().map_or("-".to_owned(), printable),
                    cell(s.get(Col::Cpu), Col::Cpu),
                    cell(s.get(Col::Rss), Col::Rss),
                    "up".to_owned(),
                ],
                Err(e) => vec![
                    name,
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    format!("DOWN {}", printable(e)),
                ],
            }
        })
        .collect();
    procs.push(vec![
        "TOTAL".into(),
        String::new(),
        match versions.len() {
            0 => "-".to_owned(),
            1 => versions.iter().map(|v| printable(v)).collect(),
            _ => "mixed".to_owned(),
        },
        cell(total[Col::Cpu as usize], Col::Cpu),
        cell(total[Col::Rss as usize], Col::Rss),
        format!("{} up", rows.len() - down),
    ]);
    table(
        &mut out,
        &[
            ("INSTANCE", Align::Left),
            ("ROLE", Align::Left),
            ("VERSION", Align::Left),
            ("CPU%", Align::Right),
            ("RSS MiB", Align::Right),
            ("STATUS", Align::Left),
        ],
        &procs,
    );
    for (title, cols) in SECTIONS {
        out.push('\n');
        let shown = |values: &dyn Fn(Col) -> Option<f64>| -> Vec<String> {
            cols.iter()
                .map(|(_, c)| match c {
                    Col::TargetsUp => match (values(Col::TargetsUp), values(Col::Targets)) {
                        (Some(up), Some(all)) => format!("{up:.0}/{all:.0}"),
                        _ => "-".to_owned(),
                    },
                    c => cell(values(*c), *c),
                })
                .collect()
        };
        let mut lines: Vec<Vec<String>> = rows
            .iter()
            .filter_map(|r| {
                let s = r.state.as_ref().ok()?;
                let mut l = vec![printable(&r.instance)];
                l.extend(shown(&|c| s.get(c)));
                Some(l)
            })
            .collect();
        let mut t = vec!["TOTAL".to_owned()];
        t.extend(shown(&|c| total[c as usize]));
        lines.push(t);
        let head: Vec<(&str, Align)> = [(title, Align::Left)]
            .into_iter()
            .chain(cols.iter().map(|(h, _)| (*h, Align::Right)))
            .collect();
        table(&mut out, &head, &lines);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const EDGE_T0: &str = "\
# HELP sipcluster_sip_requests_total SIP requests received, by method
# TYPE sipcluster_sip_requests_total counter
sipcluster_sip_requests_total{method=\"INVITE\"} 10
sipcluster_sip_requests_total{method=\"REGISTER\"} 100
sipcluster_sip_requests_total{method=\"OPTIONS\"} 4
sipcluster_sip_responses_total{class=\"2xx\",code=\"200\"} 50
sipcluster_sip_responses_total{class=\"4xx\",code=\"401\"} 40
sipcluster_sip_transactions_active{kind=\"server\"} 3
sipcluster_sip_transactions_active{kind=\"client\"} 2
sipcluster_sip_registrations_active 7
sipcluster_build_info{version=\"1.2.3\"} 1
process_cpu_seconds_total 10.0
process_resident_memory_bytes 52428800
";

    const EDGE_T1: &str = "\
sipcluster_sip_requests_total{method=\"INVITE\"} 14
sipcluster_sip_requests_total{method=\"REGISTER\"} 120
sipcluster_sip_requests_total{method=\"OPTIONS\"} 4
sipcluster_sip_requests_total{method=\"MESSAGE\"} 2
sipcluster_sip_responses_total{class=\"2xx\",code=\"200\"} 60
sipcluster_sip_responses_total{class=\"4xx\",code=\"401\"} 50
sipcluster_sip_responses_total{class=\"5xx\",code=\"503\"} 1
sipcluster_sip_transactions_active{kind=\"server\"} 4
sipcluster_sip_transactions_active{kind=\"client\"} 1
sipcluster_sip_registrations_active 8
sipcluster_build_info{version=\"1.2.3\"} 1
process_cpu_seconds_total 10.5
process_resident_memory_bytes 52428800
";

    fn stats(prev: Option<&str>, cur: &str, secs: f64) -> Stats {
        let prev = prev.map(parse);
        Stats::compute(prev.as_deref(), &parse(cur), secs)
    }

    #[test]
    fn parses_the_text_format() {
        let text = "# HELP x_total help with \"quotes\"\n\
            # TYPE x_total counter\n\
            \n\
            x_total{a=\"q\\\"uo\\\\te\",b=\"line\\nbreak\",} 3 1700000000000\n\
            up 1\n\
            h_bucket{le=\"+Inf\"} +Inf\n\
            g NaN\n\
            neg -Inf\n\
            sci{a=\"}\"} 1.5e3 # {trace_id=\"abc\"} 1\n\
            not a sample\n\
            broken{a=\"unterminated} 1\n";
        let s = parse(text);
        assert_eq!(s.len(), 6, "{s:?}");
        assert_eq!(s[0].name, "x_total");
        assert_eq!(s[0].label("a"), Some("q\"uo\\te"));
        assert_eq!(s[0].label("b"), Some("line\nbreak"));
        assert_eq!(s[0].value, 3.0);
        assert_eq!((s[1].name.as_str(), s[1].value), ("up", 1.0));
        assert_eq!(s[2].label("le"), Some("+Inf"));
        assert_eq!(s[2].value, f64::INFINITY);
        assert!(s[3].value.is_nan());
        assert_eq!(s[4].value, f64::NEG_INFINITY);
        assert_eq!((s[5].label("a"), s[5].value), (Some("}"), 1500.0));
    }

    #[test]
    fn rates_are_per_second_between_two_scrapes() {
        let s = stats(Some(EDGE_T0), EDGE_T1, 2.0);
        assert_eq!(s.role, "edge");
        assert_eq!(s.version.as_deref(), Some("1.2.3"));
        assert_eq!(s.get(Col::Invite), Some(2.0));
        assert_eq!(s.get(Col::Register), Some(10.0));
        assert_eq!(s.get(Col::Options), Some(0.0));
        // No BYE series yet, but the metric is there: 0, not absent.
        assert_eq!(s.get(Col::Bye), Some(0.0));
        // MESSAGE appeared between the scrapes: counted from 0.
        assert_eq!(s.get(Col::OtherRequests), Some(1.0));
        assert_eq!(s.get(Col::Resp2xx), Some(5.0));
        assert_eq!(s.get(Col::Resp4xx), Some(5.0));
        assert_eq!(s.get(Col::Resp5xx), Some(0.5));
        assert_eq!(s.get(Col::Transactions), Some(5.0));
        assert_eq!(s.get(Col::Registrations), Some(8.0));
        assert_eq!(s.get(Col::Cpu), Some(25.0));
        assert_eq!(s.get(Col::Rss), Some(50.0));
        // Metrics this process does not have.
        for c in [Col::Calls, Col::Dialogs, Col::MediaSessions, Col::TargetsUp] {
            assert_eq!(s.get(c), None, "{c:?}");
        }
    }

    #[test]
    fn a_counter_reset_never_gives_a_negative_rate() {
        // The process restarted between the scrapes: its counters start again from 0.
        let before = "sipcluster_sip_requests_total{method=\"INVITE\"} 1000\n\
                      process_cpu_seconds_total 500\n";
        let after = "sipcluster_sip_requests_total{method=\"INVITE\"} 6\n\
                     process_cpu_seconds_total 0.2\n";
        let s = stats(Some(before), after, 2.0);
        assert_eq!(s.get(Col::Invite), Some(3.0));
        assert!((s.get(Col::Cpu).unwrap() - 10.0).abs() < 1e-9);
        // Reset of one series among others: only that one counts from 0.
        let before = "sipcluster_sip_requests_total{method=\"INVITE\"} 10\n\
                      sipcluster_sip_requests_total{method=\"BYE\"} 10\n";
        let after = "sipcluster_sip_requests_total{method=\"INVITE\"} 2\n\
                     sipcluster_sip_requests_total{method=\"BYE\"} 14\n";
        let s = stats(Some(before), after, 1.0);
        assert_eq!(s.get(Col::Invite), Some(2.0));
        assert_eq!(s.get(Col::Bye), Some(4.0));
        for c in Col::ALL {
            assert!(s.get(c).is_none_or(|v| v >= 0.0), "{c:?}");
        }
    }

    #[test]
    fn no_rate_without_an_earlier_scrape() {
        let s = stats(None, EDGE_T1, 0.0);
        assert_eq!(s.get(Col::Invite), None);
        assert_eq!(s.get(Col::Cpu), None);
        // Gauges need one scrape.
        assert_eq!(s.get(Col::Transactions), Some(5.0));
        let s = stats(Some(EDGE_T0), EDGE_T1, 0.0);
        assert_eq!(s.get(Col::Invite), None);
    }

    #[test]
    fn roles_come_from_the_metrics() {
        let r = |t: &str| role(&parse(t));
        assert_eq!(r(EDGE_T0), "edge");
        assert_eq!(
            r("sipcluster_dispatcher_target_up{target=\"a\"} 1\n"),
            "dispatcher"
        );
        assert_eq!(r("sipcluster_location_users 3\n"), "location");
        assert_eq!(r("sipcluster_media_sessions 0\n"), "media-relay");
        assert_eq!(
            r("sipcluster_sip_requests_total{method=\"BYE\"} 1\n\
               sipcluster_dispatcher_target_up{target=\"a\"} 1\n\
               sipcluster_location_users 3\n"),
            "all-in-one"
        );
        assert_eq!(r("process_open_fds 9\n"), "?");
    }

    #[test]
    fn dispatcher_targets_and_location_errors() {
        let t0 = "sipcluster_dispatcher_target_up{target=\"10.0.0.1:5060\"} 1\n\
                  sipcluster_dispatcher_target_up{target=\"10.0.0.2:5060\"} 0\n\
                  sipcluster_location_grpc_calls_total{method=\"Lookup\",code=\"ok\"} 10\n";
        let t1 = "sipcluster_dispatcher_target_up{target=\"10.0.0.1:5060\"} 1\n\
                  sipcluster_dispatcher_target_up{target=\"10.0.0.2:5060\"} 0\n\
                  sipcluster_location_grpc_calls_total{method=\"Lookup\",code=\"ok\"} 20\n\
                  sipcluster_location_grpc_calls_total{method=\"Lookup\",code=\"unavailable\"} 4\n";
        let s = stats(Some(t0), t1, 2.0);
        assert_eq!(
            (s.get(Col::TargetsUp), s.get(Col::Targets)),
            (Some(1.0), Some(2.0))
        );
        assert_eq!(s.get(Col::LocationCalls), Some(7.0));
        assert_eq!(s.get(Col::LocationErrors), Some(2.0));
    }

    #[test]
    fn totals_sum_rates_and_take_the_store_wide_gauges_once() {
        let a = stats(Some(EDGE_T0), EDGE_T1, 2.0);
        let rows = [
            Row {
                instance: "a:9090".into(),
                state: Ok(a.clone()),
            },
            Row {
                instance: "b:9090".into(),
                state: Ok(a),
            },
            Row {
                instance: "c:9090".into(),
                state: Err("connect: refused".into()),
            },
        ];
        let t = totals(&rows);
        assert_eq!(t[Col::Register as usize], Some(20.0));
        // Both edges publish the one store's bindings.
        assert_eq!(t[Col::Registrations as usize], Some(8.0));
        assert_eq!(t[Col::Dialogs as usize], None);
    }

    #[test]
    fn a_frame_shows_rows_totals_and_down_targets() {
        let rows = [
            Row {
                instance: "127.0.0.1:9090".into(),
                state: Ok(stats(Some(EDGE_T0), EDGE_T1, 2.0)),
            },
            Row {
                instance: "127.0.0.1:1".into(),
                state: Err("connect: Connection refused (os error 111)".into()),
            },
        ];
        let frame = render(&rows, 2.0);
        let expected = "\
sipcluster top: 2 targets, 1 down; rates per second over 2.0 s

INSTANCE        ROLE  VERSION  CPU%  RSS MiB  STATUS
127.0.0.1:9090  edge  1.2.3    25.0     50.0  up
127.0.0.1:1     -     -           -        -  DOWN connect: Connection refused (os error 111)
TOTAL                 1.2.3    25.0     50.0  1 up

SIP/s           INVITE  REGISTER  BYE  OPTIONS  other  2xx  4xx  5xx  overload
127.0.0.1:9090     2.0      10.0  0.0      0.0    1.0  5.0  5.0  0.5         -
TOTAL              2.0      10.0  0.0      0.0    1.0  5.0  5.0  0.5         -

CALLS           calls/s  answered/s  transactions  registrations  dialogs  CDR events/s  spool
127.0.0.1:9090        -           -             5              8        -             -      -
TOTAL                 -           -             5              8        -             -      -

CLUSTER         targets  location rpc/s  rpc errors/s  media sessions  packets/s
127.0.0.1:9090        -               -             -               -          -
TOTAL                 -               -             -               -          -
";
        assert_eq!(frame, expected, "\n{frame}");
    }

    #[test]
    fn peer_text_cannot_drive_the_terminal() {
        let rows = [Row {
            instance: "x:1".into(),
            state: Ok(stats(
                None,
                "sipcluster_build_info{version=\"\\u001b[2J\x1b[31m\"} 1\n",
                0.0,
            )),
        }];
        assert!(!render(&rows, 1.0).contains('\x1b'));
    }

    #[test]
    fn targets_are_host_port_or_http_urls() {
        let t = |s: &str| Target::parse(s).map(|t| (t.authority, t.path));
        assert_eq!(
            t("127.0.0.1:9090").unwrap(),
            ("127.0.0.1:9090".into(), "/metrics".into())
        );
        assert_eq!(
            t("http://edge-0:9090").unwrap(),
            ("edge-0:9090".into(), "/metrics".into())
        );
        assert_eq!(
            t("http://edge-0:9090/").unwrap(),
            ("edge-0:9090".into(), "/metrics".into())
        );
        assert_eq!(
            t("http://[::1]:9090/m").unwrap(),
            ("[::1]:9090".into(), "/m".into())
        );
        for bad in [
            "edge-0",
            "https://edge-0:9090",
            "http://:9090",
            "edge:99999",
            "",
        ] {
            assert!(t(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_chunk_may_end_inside_a_character() {
        // "é" is two bytes, one per chunk.
        let raw = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
                    1\r\n\xc3\r\n1\r\n\xa9\r\n0\r\n\r\n";
        assert_eq!(http_body(raw).unwrap(), "\u{e9}");
    }

    #[test]
    fn http_bodies_plain_and_chunked() {
        assert_eq!(
            http_body(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nup 1").unwrap(),
            "up 1"
        );
        assert_eq!(
            http_body(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nup \r\n1;x=y\r\n1\r\n0\r\n\r\n"
            )
            .unwrap(),
            "up 1"
        );
        assert_eq!(
            http_body(b"HTTP/1.1 404 Not Found\r\n\r\n").unwrap_err(),
            "HTTP 404"
        );
        assert_eq!(http_body(b"").unwrap_err(), "no answer");
        assert_eq!(
            http_body(b"SSH-2.0-OpenSSH\r\n\r\n").unwrap_err(),
            "not an HTTP response"
        );
        assert!(
            http_body(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nff\r\nup").is_err()
        );
    }
}
