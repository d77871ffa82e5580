//! Private `redis-server` instances for the tests: a standalone server or a 3-master
//! cluster on free loopback ports, children of the test process, killed by PID on drop.
//!
//! `./scripts/test.sh` starts one standalone server and one cluster for the whole run and
//! exports `SIPCLUSTER_TEST_REDIS` / `SIPCLUSTER_TEST_REDIS_CLUSTER`; tests that only need
//! *a* Redis use those (isolated by key prefix), tests that kill Redis start their own.
//! Without the variables (a bare `cargo test`) every test starts its own.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, which};

/// One redis-server child.
pub struct RedisProc {
    child: Child,
    pub port: u16,
    pub dir: PathBuf,
    /// Its `requirepass` (and `masterauth`), if any.
    pub password: Option<String>,
}

impl RedisProc {
    /// Start on `port` (free), as a cluster node when `cluster`.
    pub fn start(dir: &Path, port: u16, cluster: bool) -> RedisProc {
        RedisProc::start_auth(dir, port, cluster, None)
    }

    /// [`RedisProc::start`] requiring `password` of every client (`requirepass`) and
    /// presenting it to its master (`masterauth`, for a cluster's replication).
    pub fn start_auth(dir: &Path, port: u16, cluster: bool, password: Option<&str>) -> RedisProc {
        let bin = which("redis-server").unwrap_or_else(|| {
            panic!("redis-server is not installed: run ./scripts/test.sh, which installs it")
        });
        let d = dir.join(format!("redis-{port}"));
        std::fs::create_dir_all(&d).expect("redis directory");
        let mut cmd = Command::new(bin);
        cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--dir", &d.display().to_string()])
            .args(["--logfile", &d.join("redis.log").display().to_string()]);
        if let Some(p) = password {
            cmd.args(["--requirepass", p, "--masterauth", p]);
        }
        if cluster {
            cmd.args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
                .args([
                    "--cluster-config-file",
                    &d.join("nodes.conf").display().to_string(),
                ]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let r = RedisProc {
            child,
            port,
            dir: d,
            password: password.map(str::to_owned),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while cli_auth(port, password, &["PING"]).trim() != "PONG" {
            assert!(Instant::now() < deadline, "redis-server on {port} not up");
            std::thread::sleep(Duration::from_millis(20));
        }
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kill (SIGKILL) and wait.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port P free together with P + 10000 (the node's cluster bus), so below 55536.
pub fn free_cluster_port() -> u16 {
    use std::net::TcpListener;
    let seed = std::process::id()
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
    let mut p = 20000 + (seed % 20000) as u16;
    for _ in 0..20000 {
        p = if p >= 39999 { 20000 } else { p + 1 };
        if TcpListener::bind(("127.0.0.1", p)).is_ok()
            && TcpListener::bind(("127.0.0.1", p + 10000)).is_ok()
        {
            return p;
        }
    }
    panic!("no free port pair for a cluster node");
}

/// `redis-cli -p PORT args...` output (empty on failure).
pub fn cli(port: u16, args: &[&str]) -> String {
    cli_auth(port, None, args)
}

/// [`cli`] authenticating with `password`.
pub fn cli_auth(port: u16, password: Option<&str>, args: &[&str]) -> String {
    let Some(bin) = which("redis-cli") else {
        return String::new();
    };
    let mut cmd = Command::new(bin);
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
    if let Some(p) = password {
        // REDISCLI_AUTH rather than `-a`: no warning on stderr, nothing in `ps`.
        cmd.env("REDISCLI_AUTH", p);
    }
    cmd.args(args)
        .stdin(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// A Redis deployment for a test: URLs, plus the processes when the test owns them.
pub struct Redis {
    pub urls: Vec<String>,
    pub cluster: bool,
    pub procs: Vec<RedisProc>,
}

impl Redis {
    /// The shared standalone server of the test run, or a private one.
    pub fn standalone(dir: &Path) -> Redis {
        match std::env::var("SIPCLUSTER_TEST_REDIS") {
            Ok(url) if !url.is_empty() => Redis {
                urls: vec![url],
                cluster: false,
                procs: Vec::new(),
            },
            _ => Redis::own_standalone(dir),
        }
    }

    /// A private standalone server (for tests that kill it).
    pub fn own_standalone(dir: &Path) -> Redis {
        Redis::own_standalone_auth(dir, None)
    }

    /// A private standalone server requiring `password` (if any); its URL carries none.
    pub fn own_standalone_auth(dir: &Path, password: Option<&str>) -> Redis {
        let p = RedisProc::start_auth(dir, free_port(), false, password);
        Redis {
            urls: vec![p.url()],
            cluster: false,
            procs: vec![p],
        }
    }

    /// The shared 3-master cluster of the test run, or a private one.
    pub fn cluster(dir: &Path) -> Redis {
        match std::env::var("SIPCLUSTER_TEST_REDIS_CLUSTER") {
            Ok(urls) if !urls.is_empty() => Redis {
                urls: urls.split(',').map(str::to_owned).collect(),
                cluster: true,
                procs: Vec::new(),
            },
            _ => Redis::own_cluster(dir),
        }
    }

    /// A private 3-master cluster (for tests that move slots).
    pub fn own_cluster(dir: &Path) -> Redis {
        Redis::own_cluster_auth(dir, None)
    }

    /// A private 3-master cluster whose nodes require `password` (if any) of clients and
    /// of each other; its URLs carry none.
    pub fn own_cluster_auth(dir: &Path, password: Option<&str>) -> Redis {
        let procs: Vec<RedisProc> = (0..3)
            .map(|_| RedisProc::start_auth(dir, free_cluster_port(), true, password))
            .collect();
        let nodes: Vec<String> = procs
            .iter()
            .map(|p| format!("127.0.0.1:{}", p.port))
            .collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(nodes.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        cli_auth(procs[0].port, password, &args);
        let deadline = Instant::now() + Duration::from_secs(20);
        for p in &procs {
            while !cli_auth(p.port, password, &["CLUSTER", "INFO"]).contains("cluster_state:ok") {
                assert!(Instant::now() < deadline, "Redis cluster not ok in 20 s");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Redis {
            urls: procs.iter().map(RedisProc::url).collect(),
            cluster: true,
            procs,
        }
    }

    /// The flags for `sipcluster location`.
    pub fn location_args(&self, prefix: &str) -> Vec<String> {
        vec![
            "--backend".into(),
            if self.cluster {
                "redis-cluster"
            } else {
                "redis"
            }
            .into(),
            "--redis".into(),
            self.urls.join(","),
            "--prefix".into(),
            prefix.into(),
        ]
    }

    /// Port of the first node.
    pub fn port(&self) -> u16 {
        self.urls[0]
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port in URL")
    }
}

/// A key prefix unique to this test run and `test`.
pub fn prefix(test: &str) -> String {
    format!("t{}-{test}", std::process::id())
}
