//! A private Kafka-protocol broker for the tests: `tansu` (a Rust broker speaking the
//! Kafka wire protocol) on a free loopback port, in-memory storage, a child of the test
//! process, killed by PID on drop. `./scripts/test.sh` installs it (cached).
//!
//! Memory storage: a broker stopped and started again has lost its topics and records,
//! which is what the outage tests want of the producer side (a fresh broker on the same
//! port); the producers create their topics again at start.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, which};

/// One tansu broker.
pub struct Broker {
    child: Option<Child>,
    pub addr: SocketAddr,
    log: PathBuf,
}

impl Broker {
    /// Start on a free port.
    pub fn start(dir: &Path) -> Broker {
        Broker::start_at(dir, SocketAddr::from(([127, 0, 0, 1], free_port())))
    }

    /// Start on `addr` (a restart on the same port after [`Broker::stop`]).
    pub fn start_at(dir: &Path, addr: SocketAddr) -> Broker {
        let bin = which("tansu").unwrap_or_else(|| {
            panic!("tansu (the Kafka-protocol broker) is not installed: run ./scripts/test.sh, which builds and caches it")
        });
        let log = dir.join(format!("tansu-{}.log", addr.port()));
        let out = std::fs::File::create(&log).expect("tansu log");
        let url = format!("tcp://{addr}");
        let child = Command::new(bin)
            .args(["broker", "--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("start tansu");
        let b = Broker {
            child: Some(child),
            addr,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu on {addr} not up: {}",
                std::fs::read_to_string(&b.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        b
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn brokers(&self) -> String {
        self.addr.to_string()
    }

    /// Stop it (SIGKILL; its memory storage goes with it).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}
