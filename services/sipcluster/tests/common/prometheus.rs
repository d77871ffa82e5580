//! A private Prometheus server on loopback scraping the test's processes every second,
//! and PromQL instant queries through its HTTP API.

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::{free_port, http_get, which};

/// A running Prometheus; killed by PID when dropped.
pub struct Prometheus {
    child: Child,
    pub addr: SocketAddr,
    log: std::path::PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encode a query for a URL.
pub fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Prometheus {
    /// Start with one scrape job per `(job, targets)`, scraping every second.
    pub fn start(dir: &Path, jobs: &[(&str, Vec<SocketAddr>)]) -> Prometheus {
        let prom = which("prometheus").expect("prometheus is not installed: run ./scripts/test.sh");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut cfg = String::from(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n",
        );
        for (job, targets) in jobs {
            let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
            cfg += &format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: [{}]\n",
                list.join(", ")
            );
        }
        let file = dir.join("prometheus.yml");
        fs::write(&file, cfg).expect("prometheus config");
        let log = dir.join("prometheus.log");
        let out = fs::File::create(&log).expect("log");
        let child = Command::new(prom)
            .arg(format!("--config.file={}", file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("start prometheus");
        Prometheus { child, addr, log }
    }

    /// The server's log.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The first sample value of an instant query, if any.
    pub fn query(&self, q: &str) -> Option<f64> {
        let (code, body) = http_get(self.addr, &format!("/api/v1/query?query={}", encode(q)))?;
        if code != 200 {
            return None;
        }
        // {"status":"success","data":{"resultType":"vector","result":[{"metric":{..},"value":[t,"v"]}]}}
        let v = body.split("\"value\":[").nth(1)?;
        let v = v.split(',').nth(1)?;
        v.trim_matches(|c: char| c == '"' || c == ']' || c == '}' || c.is_whitespace())
            .parse()
            .ok()
    }

    /// Query until `ok` holds for the value or `within` has passed; the last value.
    pub fn wait_for(
        &self,
        q: &str,
        within: Duration,
        ok: impl Fn(Option<f64>) -> bool,
    ) -> Option<f64> {
        let deadline = Instant::now() + within;
        loop {
            let v = self.query(q);
            if ok(v) || Instant::now() >= deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}
