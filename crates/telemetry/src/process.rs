//! What every service exposes about itself on `/metrics`, whatever its role: the build it
//! runs (`sipcluster_build_info`) and the process's resources under the names the
//! Prometheus client libraries use (`process_cpu_seconds_total`, ...), so the usual
//! dashboards and `up`-style alerts work on sipcluster pods unchanged. Read from `/proc`
//! at each scrape: nothing runs between scrapes.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// The build and process metrics; register once per `/metrics` endpoint.
#[derive(Debug)]
pub struct ProcessCollector {
    /// Clock ticks per second (`_SC_CLK_TCK`), for the CPU times of `/proc/self/stat`.
    ticks: f64,
    /// Bytes per page, for its resident set.
    page: f64,
}

impl Default for ProcessCollector {
    fn default() -> Self {
        use nix::unistd::{SysconfVar, sysconf};
        let get = |v, fallback: f64| match sysconf(v) {
            Ok(Some(n)) if n > 0 => n as f64,
            _ => fallback,
        };
        ProcessCollector {
            ticks: get(SysconfVar::CLK_TCK, 100.0),
            page: get(SysconfVar::PAGE_SIZE, 4096.0),
        }
    }
}

/// Label set of `sipcluster_build_info`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// What `/proc/self/stat` says, in the units Prometheus uses.
#[derive(Debug, PartialEq)]
struct Stat {
    cpu_seconds: f64,
    start_ticks: u64,
    virtual_bytes: u64,
    resident_pages: u64,
}

/// Parse `/proc/self/stat`: the fields after the command name, which is in parentheses
/// and may itself hold spaces and parentheses (hence the last `)`).
fn parse_stat(text: &str, ticks: f64) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state): utime 14, stime 15, starttime 22, vsize 23, rss 24.
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    Some(Stat {
        cpu_seconds: (n(11)? + n(12)?) as f64 / ticks,
        start_ticks: n(19)?,
        virtual_bytes: n(20)?,
        resident_pages: n(21)?,
    })
}

/// The boot time in seconds since the epoch (`btime` of `/proc/stat`).
fn boot_time(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: f64) -> fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        {
            let info = ConstGauge::new(1i64);
            let mut m = enc.encode_descriptor(
                "sipcluster_build_info",
                "The sipcluster build this process runs (always 1; the version is a label)",
                None,
                info.metric_type(),
            )?;
            info.encode(m.encode_family(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })?)?;
        }
        // Not on Linux (or /proc hidden): only the build info, never an error for the
        // scrape.
        let Some(stat) = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|t| parse_stat(&t, self.ticks))
        else {
            return Ok(());
        };
        let cpu = ConstCounter::new(stat.cpu_seconds);
        cpu.encode(enc.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        gauge(
            &mut enc,
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            stat.resident_pages as f64 * self.page,
        )?;
        gauge(
            &mut enc,
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            stat.virtual_bytes as f64,
        )?;
        if let Some(boot) = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|t| boot_time(&t))
        {
            gauge(
                &mut enc,
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                boot as f64 + stat.start_ticks as f64 / self.ticks,
            )?;
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            gauge(
                &mut enc,
                "process_open_fds",
                "Number of open file descriptors",
                fds.count() as f64,
            )?;
        }
        if let Ok(crate::nofile::NoFile {
            soft: Some(soft), ..
        }) = crate::nofile::NoFile::of_process()
        {
            gauge(
                &mut enc,
                "process_max_fds",
                "Maximum number of open file descriptors",
                soft as f64,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_the_last_parenthesis() {
        // A command name with spaces and a parenthesis, as a thread may be named.
        let line = "4242 (sip (core) 1) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 123456 987654321 2048 18446744073709551615";
        let s = parse_stat(line, 100.0).expect("parsed");
        assert_eq!(
            s,
            Stat {
                cpu_seconds: 3.0,
                start_ticks: 123456,
                virtual_bytes: 987654321,
                resident_pages: 2048,
            }
        );
        assert_eq!(parse_stat("garbage", 100.0), None);
        assert_eq!(
            boot_time("cpu 1 2 3\nbtime 1700000000\nprocesses 5\n"),
            Some(1_700_000_000)
        );
    }
}
