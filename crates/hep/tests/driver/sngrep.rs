//! A headless sngrep as a HEP collector writing a pcap, and tshark reading the pcap back
//! as SIP: shared by crates/hep/tests/sngrep.rs (the encoder) and
//! services/sipcluster/tests/hep.rs (a SIPp call through the cluster), each including it
//! with `#[path]`.
#![allow(dead_code)] // Each test binary uses a different part of it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Fails (not skips) when a tool is missing: this test is part of the suite.
pub fn require(tool: &str, version_flag: &str) {
    match Command::new(tool).arg(version_flag).output() {
        Ok(_) => {}
        Err(e) => panic!(
            "{tool} is not installed ({e}): run ./scripts/test.sh, which installs it \
             (apt-get install -y sngrep tshark)"
        ),
    }
}

/// A headless sngrep listening for HEP on `127.0.0.1:port`, writing `out.pcap`.
pub struct Sngrep {
    child: Option<Child>,
    pub pcap: PathBuf,
    _dir: tempfile::TempDir,
}

impl Sngrep {
    /// With `password`, sngrep drops HEP packets that do not carry it.
    pub fn start(port: u16, password: Option<&str>) -> Sngrep {
        let dir = tempfile::tempdir().unwrap();
        let pcap = dir.path().join("out.pcap");
        let rc = dir.path().join("sngreprc");
        let mut settings = String::new();
        if let Some(p) = password {
            settings.push_str(&format!("set eep.listen.pass {p}\n"));
        }
        std::fs::write(&rc, settings).unwrap();
        // -N: no interface, -q: print nothing, -F: no default config file (a user's
        // sngreprc could change what is captured), -f: ours, -L: the HEP listener (a
        // capture source of its own: no device is opened), -O: the pcap, flushed after
        // every packet.
        let child = Command::new("sngrep")
            .args(["-N", "-q", "-F", "-f"])
            .arg(&rc)
            .arg("-L")
            .arg(format!("udp:127.0.0.1:{port}"))
            .arg("-O")
            .arg(&pcap)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting sngrep");
        Sngrep {
            child: Some(child),
            pcap,
            _dir: dir,
        }
    }

    /// Bytes written to the pcap so far (24 is its header alone).
    pub fn pcap_len(&self) -> u64 {
        std::fs::metadata(&self.pcap).map(|m| m.len()).unwrap_or(0)
    }

    /// SIGTERM, as an operator would stop it; it must exit cleanly and promptly.
    pub fn stop(&mut self) {
        let mut child = self.child.take().unwrap();
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
        let start = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if start.elapsed() > Duration::from_secs(5) {
                let _ = child.kill();
                panic!("sngrep did not exit within 5 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        use std::io::Read;
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert!(status.success(), "sngrep exited {status}: {err}");
    }
}

impl Drop for Sngrep {
    fn drop(&mut self) {
        // A failed assertion must not leave sngrep running.
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One SIP message as tshark reads it from the pcap.
#[derive(Debug, PartialEq, Eq)]
pub struct Row {
    pub src: String,
    pub src_port: u16,
    pub dst: String,
    pub dst_port: u16,
    pub method: String,
    pub status: String,
    pub call_id: String,
}

pub fn tshark_rows(pcap: &Path) -> Vec<Row> {
    let out = Command::new("tshark")
        .arg("-r")
        .arg(pcap)
        .args(["-Y", "sip", "-T", "fields"])
        .args([
            "-e",
            "ip.src",
            "-e",
            "udp.srcport",
            "-e",
            "ip.dst",
            "-e",
            "udp.dstport",
        ])
        .args([
            "-e",
            "sip.Method",
            "-e",
            "sip.Status-Code",
            "-e",
            "sip.Call-ID",
        ])
        .output()
        .expect("running tshark");
    assert!(
        out.status.success(),
        "tshark failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(f.len(), 7, "unexpected tshark line {l:?}");
            Row {
                src: f[0].into(),
                src_port: f[1].parse().unwrap(),
                dst: f[2].into(),
                dst_port: f[3].parse().unwrap(),
                method: f[4].into(),
                status: f[5].into(),
                call_id: f[6].into(),
            }
        })
        .collect()
}

pub fn rows_of(pcap: &Path, call_id: &str) -> Vec<Row> {
    tshark_rows(pcap)
        .into_iter()
        .filter(|r| r.call_id == call_id)
        .collect()
}
