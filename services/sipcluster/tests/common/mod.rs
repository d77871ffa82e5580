//! Test-harness builders: a private all-in-one on free loopback ports, SIPp runs with their
//! exit codes and call counts, a raw SIP socket, and a metrics scrape.
//!
//! Everything started here is a child of the test process and is killed by PID when its
//! handle drops; every wait is bounded.

#![allow(dead_code)] // Each test binary uses a different part of the harness.

pub mod gateway;
pub mod kafka;
pub mod otlp;
pub mod prometheus;
pub mod redis;
pub mod tcp_ua;

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The repository's SIPp scenarios.
pub fn scenario(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/sipp")
        .join(name)
}

/// A scratch directory for one test (logs, SIPp statistics), emptied first.
pub fn workdir(test: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("sipcluster-e2e")
        .join(test);
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).expect("create test directory");
    d
}

/// A loopback port free for both UDP and TCP at the time of asking.
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let Ok(u) = UdpSocket::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(addr) = u.local_addr() else { continue };
        if TcpListener::bind(addr).is_ok() {
            return addr.port();
        }
    }
    panic!("no free loopback port for UDP and TCP");
}

/// A free loopback TCP address.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// A free loopback port below 10000 for UDP and TCP. sipsak 0.9.8 cuts five-digit ports
/// in the URIs it builds to four digits, so the server listens on a four-digit port.
pub fn free_low_port() -> u16 {
    let seed = std::process::id()
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
    let mut p = 2000 + (seed % 7000) as u16;
    for _ in 0..7000 {
        p = if p >= 9999 { 2000 } else { p + 1 };
        let addr = SocketAddr::from(([127, 0, 0, 1], p));
        if UdpSocket::bind(addr).is_ok() && TcpListener::bind(addr).is_ok() {
            return p;
        }
    }
    panic!("no free loopback port below 10000");
}

/// Which transport a SIPp run uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Udp,
    Tcp,
}

impl Proto {
    fn sipp_flag(self) -> &'static str {
        match self {
            Proto::Udp => "u1",
            Proto::Tcp => "t1",
        }
    }
}

/// A private `sipcluster` process (all-in-one, edge or location service).
pub struct Server {
    child: Child,
    /// SIP address (edges, all-in-one) or gRPC address (location service).
    pub sip: SocketAddr,
    pub metrics: SocketAddr,
    /// The all-in-one's location API and dispatcher admin API (on free ports: their
    /// defaults, 50051 and 50052, would collide between tests running at once).
    pub location_api: Option<SocketAddr>,
    pub admin_api: Option<SocketAddr>,
    pub dir: PathBuf,
    pub name: String,
    /// The token files every process of the test was given (see [`token_files`]).
    pub tokens: TokenFiles,
}

/// The nonce secret every test process shares (edges must verify each other's nonces).
pub const NONCE_SECRET: &str = "e2e-test-nonce-secret-0123456789";

/// The edge token of every test process (edges present it, servers accept it).
pub const EDGE_TOKEN: &str = "e2e-edge-token-0123456789abcdef";
/// The admin token of every test process (the operator's commands present it).
pub const ADMIN_TOKEN: &str = "e2e-admin-token-0123456789abcdef";

/// Where a test's token files are.
#[derive(Clone, Debug)]
pub struct TokenFiles {
    pub edge: PathBuf,
    pub admin: PathBuf,
}

impl TokenFiles {
    pub fn admin_str(&self) -> String {
        self.admin.display().to_string()
    }
    pub fn edge_str(&self) -> String {
        self.edge.display().to_string()
    }
}

/// The token files of the test in `dir` (written on first use): what the harness gives
/// every process it starts, as a Kubernetes Secret mount would.
pub fn token_files(dir: &Path) -> TokenFiles {
    let t = TokenFiles {
        edge: dir.join("edge-token"),
        admin: dir.join("admin-token"),
    };
    fs::write(&t.edge, format!("{EDGE_TOKEN}\n")).expect("edge token file");
    fs::write(&t.admin, format!("{ADMIN_TOKEN}\n")).expect("admin token file");
    t
}

/// A location API client for the tests' direct calls: short deadlines, no retries, no
/// credentials cache, presenting `token` (none: an anonymous caller).
pub fn location_client(endpoint: &str, token: Option<&str>) -> location_client::LocationClient {
    location_client::LocationClient::new(location_client::ClientConfig {
        endpoint: endpoint.to_owned(),
        timeout: Duration::from_secs(3),
        connect_timeout: Duration::from_secs(3),
        retries: 0,
        credentials_ttl: Duration::ZERO,
        token: token.map(|t| grpc_auth::Token::new(t).expect("token")),
    })
    .expect("location client")
}

/// A media relay control client presenting `token` (none: an anonymous caller).
pub async fn media_client(
    control: SocketAddr,
    token: Option<&str>,
) -> proto::media::v1::media_relay_client::MediaRelayClient<grpc_auth::AuthChannel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{control}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("control API");
    let token = token.map(|t| grpc_auth::Token::new(t).expect("token"));
    proto::media::v1::media_relay_client::MediaRelayClient::new(
        grpc_auth::Bearer::new(token.as_ref()).channel(channel),
    )
}

/// An Offer that opens a new session (one stream from 127.0.0.1:40000) for `call_id`.
pub fn new_session_offer(call_id: &str) -> proto::media::v1::UpdateRequest {
    use proto::media::v1 as pb;
    pb::UpdateRequest {
        call_id: call_id.to_owned(),
        sender_tag: "a".into(),
        media: vec![pb::Media {
            address: "127.0.0.1".into(),
            port: 40000,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The per-user state directory the test's processes see (`XDG_STATE_HOME`), so an
/// all-in-one that generates its admin token writes it there, never into the real home.
pub fn state_home(dir: &Path) -> PathBuf {
    dir.join("state")
}

impl Server {
    /// Start an all-in-one on free loopback ports with the demo users; `extra` adds flags.
    pub fn start(dir: &Path, extra: &[&str]) -> Server {
        Server::start_named(dir, "sipcluster", extra)
    }

    /// [`Server::start`] with its own log name (several all-in-ones in one test).
    pub fn start_named(dir: &Path, name: &str, extra: &[&str]) -> Server {
        Server::all_in_one(dir, name, extra, "/readyz")
    }

    /// An all-in-one that is expected not to become ready (a dependency is missing):
    /// started once `/healthz` answers.
    pub fn start_unready(dir: &Path, extra: &[&str]) -> Server {
        Server::all_in_one(dir, "sipcluster", extra, "/healthz")
    }

    /// An all-in-one given no admin token file (it generates one and leaves it under
    /// [`state_home`]), as a new user runs it.
    pub fn start_generating_admin_token(dir: &Path, extra: &[&str]) -> Server {
        Server::all_in_one_tokens(dir, "sipcluster", extra, "/readyz", false)
    }

    fn all_in_one(dir: &Path, name: &str, extra: &[&str], wait: &str) -> Server {
        Server::all_in_one_tokens(dir, name, extra, wait, true)
    }

    fn all_in_one_tokens(
        dir: &Path,
        name: &str,
        extra: &[&str],
        wait: &str,
        admin_token_file: bool,
    ) -> Server {
        let sip = SocketAddr::from(([127, 0, 0, 1], free_low_port()));
        let (loc, admin) = (free_addr(), free_addr());
        let mut args = vec![
            "--listen".to_owned(),
            sip.to_string(),
            "--location-listen".to_owned(),
            loc.to_string(),
            "--admin".to_owned(),
            admin.to_string(),
        ];
        if admin_token_file {
            args.push("--admin-token-file".to_owned());
            args.push(token_files(dir).admin_str());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut s = Server::launch(dir, name, "all-in-one", sip, free_addr(), &args, wait);
        s.location_api = Some(loc);
        s.admin_api = Some(admin);
        s
    }

    /// Start an edge in cluster mode against the location service at `location`.
    pub fn edge(dir: &Path, name: &str, location: SocketAddr, extra: &[&str]) -> Server {
        let sip = SocketAddr::from(([127, 0, 0, 1], free_low_port()));
        let mut args = vec![
            "--listen".to_owned(),
            sip.to_string(),
            "--location".to_owned(),
            format!("http://{location}"),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Server::launch(dir, name, "edge", sip, free_addr(), &args, "/readyz")
    }

    /// Start an edge behind a dispatcher (no Record-Route of its own) on a given port.
    pub fn edge_at(
        dir: &Path,
        name: &str,
        sip: SocketAddr,
        location: SocketAddr,
        extra: &[&str],
    ) -> Server {
        let mut args = vec![
            "--listen".to_owned(),
            sip.to_string(),
            "--location".to_owned(),
            format!("http://{location}"),
            "--no-record-route".to_owned(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Server::launch(dir, name, "edge", sip, free_addr(), &args, "/readyz")
    }

    /// A cluster of one edge: a location service (in memory), an edge configured by
    /// `edge_cfg`, and a dispatcher in front of it on `internal` configured by
    /// `disp_cfg`. The dispatcher's admin API address comes last.
    pub fn one_edge_cluster(
        dir: &Path,
        internal: SocketAddr,
        edge_cfg: &Path,
        disp_cfg: &Path,
    ) -> (Server, Server, Server, SocketAddr) {
        let loc = Server::location(dir, "location", &[]);
        let edge_addr = SocketAddr::from(([127, 0, 0, 1], free_low_port()));
        let edge = Server::edge_at(
            dir,
            "edge",
            edge_addr,
            loc.sip,
            &["--config", &edge_cfg.display().to_string()],
        );
        let (disp, admin) = Server::dispatcher_at(
            dir,
            "dispatcher",
            internal,
            &[edge_addr],
            &["--config", &disp_cfg.display().to_string()],
        );
        (loc, edge, disp, admin)
    }

    /// Start a dispatcher on free loopback ports in front of static `edges`, probing
    /// them every 200 ms. `sip` is its public address; the admin API is on `admin`.
    pub fn dispatcher(
        dir: &Path,
        name: &str,
        edges: &[SocketAddr],
        extra: &[&str],
    ) -> (Server, SocketAddr) {
        let internal = SocketAddr::from(([127, 0, 0, 1], free_port()));
        Server::dispatcher_at(dir, name, internal, edges, extra)
    }

    /// [`Server::dispatcher`] with a given internal (edge-facing) address.
    pub fn dispatcher_at(
        dir: &Path,
        name: &str,
        internal: SocketAddr,
        edges: &[SocketAddr],
        extra: &[&str],
    ) -> (Server, SocketAddr) {
        let sip = SocketAddr::from(([127, 0, 0, 1], free_low_port()));
        let admin = free_addr();
        let list: Vec<String> = edges.iter().map(|e| e.to_string()).collect();
        let mut args = vec![
            "--listen".to_owned(),
            sip.to_string(),
            "--internal".to_owned(),
            internal.to_string(),
            "--admin".to_owned(),
            admin.to_string(),
            "--probe-interval-ms".to_owned(),
            "200".to_owned(),
            "--probe-timeout-ms".to_owned(),
            "150".to_owned(),
            "--drain-secs".to_owned(),
            "1".to_owned(),
        ];
        if !list.is_empty() {
            args.push("--edges".to_owned());
            args.push(list.join(","));
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        (
            Server::launch(dir, name, "dispatcher", sip, free_addr(), &args, "/readyz"),
            admin,
        )
    }

    /// Start a location service on `grpc` (and `metrics`), with the demo users.
    pub fn location_at(
        dir: &Path,
        name: &str,
        grpc: SocketAddr,
        metrics: SocketAddr,
        extra: &[&str],
    ) -> Server {
        let users =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/all-in-one/users.toml");
        let mut args = vec![
            "--listen".to_owned(),
            grpc.to_string(),
            "--users".to_owned(),
            users.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Server::launch(dir, name, "location", grpc, metrics, &args, "/readyz")
    }

    /// Start a media relay on loopback with media ports `ports` (MIN-MAX); its gRPC
    /// control address is `sip`.
    pub fn media_relay(dir: &Path, name: &str, ports: &str, extra: &[&str]) -> Server {
        Server::media_relay_at(dir, name, free_addr(), ports, extra)
    }

    /// [`Server::media_relay`] with a given control address.
    pub fn media_relay_at(
        dir: &Path,
        name: &str,
        control: SocketAddr,
        ports: &str,
        extra: &[&str],
    ) -> Server {
        Server::media_relay_under(dir, name, control, ports, extra, &[])
    }

    /// [`Server::media_relay_at`] exec'd by `wrapper` (e.g. `prlimit --nofile=256:256`,
    /// which sets the limit and execs the relay: the child's PID is the relay's).
    pub fn media_relay_under(
        dir: &Path,
        name: &str,
        control: SocketAddr,
        ports: &str,
        extra: &[&str],
        wrapper: &[&str],
    ) -> Server {
        let mut args = vec![
            "--control".to_owned(),
            control.to_string(),
            "--bind-v4".to_owned(),
            "127.0.0.1".to_owned(),
            "--ports".to_owned(),
            ports.to_owned(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Server::launch_under(
            dir,
            name,
            "media-relay",
            (control, free_addr()),
            &args,
            "/readyz",
            wrapper,
        )
    }

    /// Start a location service on free ports.
    pub fn location(dir: &Path, name: &str, extra: &[&str]) -> Server {
        Server::location_at(dir, name, free_addr(), free_addr(), extra)
    }

    /// A location service expected not to become ready (its backend refuses it), with
    /// no users file: started once `/healthz` answers.
    pub fn location_unready(dir: &Path, name: &str, extra: &[&str]) -> Server {
        let grpc = free_addr();
        let mut args = vec!["--listen".to_owned(), grpc.to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        Server::launch(dir, name, "location", grpc, free_addr(), &args, "/healthz")
    }

    /// Start and wait until `wait` (`/readyz` or `/healthz`) answers 200.
    fn launch(
        dir: &Path,
        name: &str,
        sub: &str,
        sip: SocketAddr,
        metrics: SocketAddr,
        args: &[String],
        wait: &str,
    ) -> Server {
        Server::launch_under(dir, name, sub, (sip, metrics), args, wait, &[])
    }

    /// [`Server::launch`] through `wrapper` (a command that execs the rest), if any. A
    /// metrics port taken between [`free_addr`] choosing it and the process binding it
    /// (an outgoing connection's ephemeral port, another test's process) is not the
    /// test's failure: the process is started again on another one, at most twice.
    fn launch_under(
        dir: &Path,
        name: &str,
        sub: &str,
        (sip, metrics): (SocketAddr, SocketAddr),
        args: &[String],
        wait: &str,
        wrapper: &[&str],
    ) -> Server {
        let mut metrics = metrics;
        for _ in 0..2 {
            match Server::try_launch(dir, name, sub, (sip, metrics), args, wait, wrapper) {
                Ok(s) => return s,
                Err(log)
                    if log.contains(&format!("metrics endpoint {metrics}"))
                        && log.contains("Address already in use") =>
                {
                    metrics = free_addr();
                }
                Err(log) => panic!("{name} exited at start; log:\n{log}"),
            }
        }
        Server::try_launch(dir, name, sub, (sip, metrics), args, wait, wrapper)
            .unwrap_or_else(|log| panic!("{name} exited at start; log:\n{log}"))
    }

    /// One start: the server, or its log when it exited at start.
    fn try_launch(
        dir: &Path,
        name: &str,
        sub: &str,
        (sip, metrics): (SocketAddr, SocketAddr),
        args: &[String],
        wait: &str,
        wrapper: &[&str],
    ) -> Result<Server, String> {
        let log = fs::File::create(dir.join(format!("{name}.log"))).expect("log file");
        let bin = env!("CARGO_BIN_EXE_sipcluster");
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.arg(sub).args(["--metrics", &metrics.to_string()]);
        cmd.env("XDG_STATE_HOME", state_home(dir));
        if !args.iter().any(|a| a == "--log-level") {
            cmd.args(["--log-level", "info"]);
        }
        // Every process gets the test's tokens as a pod gets its Secret mounts, unless
        // the test gives its own.
        let tokens = token_files(dir);
        let given = |flag: &str| args.iter().any(|a| a == flag);
        let mut token_flag = |flag: &str, file: &Path| {
            if !given(flag) {
                cmd.args([flag, &file.display().to_string()]);
            }
        };
        match sub {
            "location" | "media-relay" => {
                token_flag("--edge-token-file", &tokens.edge);
                token_flag("--admin-token-file", &tokens.admin);
            }
            "dispatcher" => token_flag("--admin-token-file", &tokens.admin),
            // The all-in-one's admin token is its own flag (above); edges present the
            // edge token.
            _ => token_flag("--edge-token-file", &tokens.edge),
        }
        match sub {
            "location" | "media-relay" => {}
            "dispatcher" => {
                cmd.args(["--secret", NONCE_SECRET]);
            }
            _ => {
                cmd.args(["--nonce-secret", NONCE_SECRET]);
            }
        }
        let child = cmd
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start sipcluster");
        let mut s = Server {
            child,
            sip,
            metrics,
            location_api: None,
            admin_api: None,
            dir: dir.to_owned(),
            name: name.to_owned(),
            tokens,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = s.child.try_wait() {
                return Err(format!("({st})\n{}", s.log()));
            }
            if http_get(metrics, wait).is_some_and(|(code, _)| code == 200) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: {wait} not 200 in 20 s; log:\n{}",
                s.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(s)
    }

    /// Kill with SIGKILL (a crash: no drain) and wait.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join(format!("{}.log", self.name))).unwrap_or_default()
    }

    /// The Prometheus text exposition.
    pub fn scrape(&self) -> String {
        match http_get(self.metrics, "/metrics") {
            Some((200, body)) => body,
            other => panic!("metrics scrape failed: {other:?}"),
        }
    }

    /// The value of one sample (`name{labels}` exactly as exposed), 0 when absent.
    pub fn metric(&self, sample: &str) -> f64 {
        metric_value(&self.scrape(), sample)
    }

    /// The sum of every sample whose line starts with `prefix` (`name{label="x"` sums
    /// over the other labels).
    pub fn metric_sum(&self, prefix: &str) -> f64 {
        self.scrape()
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    }

    /// The still-running check: the process did not die under the test.
    pub fn assert_alive(&mut self) {
        if let Ok(Some(st)) = self.child.try_wait() {
            panic!("sipcluster died ({st}); log:\n{}", self.log());
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Has the process ended?
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Send SIGTERM without waiting.
    pub fn sigterm(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// Stop with SIGTERM (the graceful path) and wait, bounded.
    pub fn terminate(mut self) -> ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "sipcluster did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a `sipcluster` command printed and how it ended.
#[derive(Debug)]
pub struct CliOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Run `sipcluster ARGS` to completion (killed after 30 s), stdin closed.
pub fn run_cli(args: &[&str]) -> CliOutput {
    run_cli_env(args, &[])
}

/// [`run_cli`] with extra environment variables. The per-user state directory is a
/// scratch one (an all-in-one started this way must not write into the real home), unless
/// `env` names one.
pub fn run_cli_env(args: &[&str], env: &[(&str, &str)]) -> CliOutput {
    let state = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("sipcluster-e2e")
        .join("cli-state");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sipcluster"))
        .env("XDG_STATE_HOME", state)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sipcluster");
    let deadline = Instant::now() + Duration::from_secs(30);
    while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("sipcluster output");
    CliOutput {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub fn metric_value(text: &str, sample: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == sample).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// The sum of every sample of `family` (`name` or `name{...}`) and how many there are:
/// for a labelled family, where an unlabelled `metric_value` would find nothing.
pub fn metric_sum(text: &str, family: &str) -> (f64, usize) {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            let base = name.split('{').next()?;
            (base == family)
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .fold((0.0, 0), |(s, n), v| (s + v, n + 1))
}

/// A minimal HTTP/1.1 GET (the harness avoids an HTTP client dependency).
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    // Chunked bodies: good enough to drop the chunk-size lines for text matching.
    Some((code, body))
}

/// One SIPp invocation.
pub struct Sipp {
    pub name: String,
    pub scenario: PathBuf,
    pub proto: Proto,
    pub port: u16,
    pub inf: Option<String>,
    pub auth: Option<(String, String, String)>,
    pub remote: Option<SocketAddr>,
    pub calls: u32,
    pub rate: Option<u32>,
    pub timeout_secs: u32,
    /// The loopback address it sends from (`-i`).
    pub local_ip: String,
    pub extra: Vec<String>,
}

/// What a SIPp run reported.
#[derive(Debug)]
pub struct SippOutcome {
    pub code: Option<i32>,
    pub successful: u64,
    pub failed: u64,
    pub errors: String,
}

impl SippOutcome {
    /// Exit code 0 and exactly `n` successful calls, none failed.
    pub fn assert_ok(&self, n: u64, what: &str) {
        assert_eq!(
            (self.code, self.successful, self.failed),
            (Some(0), n, 0),
            "{what}: SIPp exit code and call counts; errors:\n{}",
            self.errors
        );
    }
}

impl Sipp {
    pub fn new(name: &str, scenario_file: &str, proto: Proto) -> Sipp {
        Sipp {
            name: name.to_owned(),
            scenario: scenario(scenario_file),
            proto,
            port: free_port(),
            inf: None,
            auth: None,
            remote: None,
            calls: 1,
            rate: None,
            timeout_secs: 20,
            local_ip: "127.0.0.1".into(),
            extra: Vec::new(),
        }
    }

    /// Send from `ip` (a loopback address: a peer of its own).
    pub fn sending_from(mut self, ip: &str) -> Sipp {
        self.local_ip = ip.to_owned();
        self
    }

    /// Injection file rows (without the `SEQUENTIAL` line).
    pub fn inf(mut self, rows: &str) -> Sipp {
        self.inf = Some(rows.to_owned());
        self
    }

    /// Digest credentials and the digest URI (SIPp wants it without `sip:`).
    pub fn auth(mut self, user: &str, password: &str, uri: &str) -> Sipp {
        self.auth = Some((user.to_owned(), password.to_owned(), uri.to_owned()));
        self
    }

    pub fn to(mut self, remote: SocketAddr) -> Sipp {
        self.remote = Some(remote);
        self
    }

    pub fn port(mut self, port: u16) -> Sipp {
        self.port = port;
        self
    }

    pub fn calls(mut self, n: u32) -> Sipp {
        self.calls = n;
        self
    }

    pub fn rate(mut self, r: u32) -> Sipp {
        self.rate = Some(r);
        self
    }

    pub fn timeout(mut self, secs: u32) -> Sipp {
        self.timeout_secs = secs;
        self
    }

    /// A copy of the scenario with `@CODE@` replaced (the expected-failure template).
    /// The scenario with its `<pause milliseconds="200"/>` (the hold of the call
    /// scenarios) set to `ms`.
    pub fn hold(mut self, dir: &Path, ms: u32) -> Sipp {
        let text = fs::read_to_string(&self.scenario).expect("scenario");
        let out = dir.join(format!("{}-hold{ms}.xml", self.name));
        fs::write(
            &out,
            text.replace(
                "<pause milliseconds=\"200\"/>",
                &format!("<pause milliseconds=\"{ms}\"/>"),
            ),
        )
        .expect("write scenario");
        self.scenario = out;
        self
    }

    pub fn expect_code(mut self, dir: &Path, code: u16) -> Sipp {
        let text = fs::read_to_string(&self.scenario).expect("scenario");
        let out = dir.join(format!("{}-{code}.xml", self.name));
        fs::write(&out, text.replace("@CODE@", &code.to_string())).expect("write scenario");
        self.scenario = out;
        self
    }

    fn command(&self, dir: &Path) -> Command {
        let sipp = which("sipp").unwrap_or_else(|| {
            panic!("SIPp is not installed: run ./scripts/test.sh, which installs sip-tester")
        });
        let mut c = Command::new(sipp);
        c.current_dir(dir)
            .arg("-sf")
            .arg(&self.scenario)
            .args([
                "-t",
                self.proto.sipp_flag(),
                "-i",
                &self.local_ip,
                "-p",
                &self.port.to_string(),
            ])
            .args([
                "-m",
                &self.calls.to_string(),
                "-timeout",
                &format!("{}s", self.timeout_secs),
            ])
            .args([
                "-nostdin",
                "-trace_err",
                "-error_file",
                &format!("{}.errors", self.name),
            ])
            .args([
                "-trace_stat",
                "-stf",
                &format!("{}.stat.csv", self.name),
                "-fd",
                "1",
            ])
            .args(["-trace_msg", "-message_file", &format!("{}.msg", self.name)]);
        if let Some(rows) = &self.inf {
            let f = dir.join(format!("{}.csv", self.name));
            fs::write(&f, format!("SEQUENTIAL\n{rows}\n")).expect("injection file");
            c.arg("-inf").arg(f);
        }
        if let Some((u, p, uri)) = &self.auth {
            c.args(["-au", u, "-ap", p, "-auth_uri", uri]);
        }
        if let Some(r) = self.rate {
            c.args(["-r", &r.to_string()]);
        }
        c.args(&self.extra);
        if let Some(r) = self.remote {
            c.arg(r.to_string());
        }
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    }

    /// Run to completion.
    pub fn run(&self, dir: &Path) -> SippOutcome {
        self.spawn(dir).wait()
    }

    /// Start in the background (a UAS waiting for its call).
    pub fn spawn(&self, dir: &Path) -> RunningSipp {
        let child = self.command(dir).spawn().expect("start sipp");
        RunningSipp {
            child,
            dir: dir.to_owned(),
            name: self.name.clone(),
            deadline: Instant::now() + Duration::from_secs(u64::from(self.timeout_secs) + 10),
        }
    }
}

/// A SIPp process started by [`Sipp::spawn`].
pub struct RunningSipp {
    child: Child,
    dir: PathBuf,
    name: String,
    deadline: Instant,
}

impl RunningSipp {
    /// Still running?
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Wait at most `d` (a UAS that expects calls a lost one never brings), then read the
    /// statistics.
    pub fn wait_at_most(mut self, d: Duration) -> SippOutcome {
        self.deadline = self.deadline.min(Instant::now() + d);
        self.wait()
    }

    /// Wait (bounded by the run's own timeout plus a margin) and read the statistics.
    pub fn wait(mut self) -> SippOutcome {
        let code = loop {
            match self.child.try_wait() {
                Ok(Some(st)) => break st.code(),
                Ok(None) if Instant::now() < self.deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break None;
                }
            }
        };
        let stat = fs::read_to_string(self.dir.join(format!("{}.stat.csv", self.name)))
            .unwrap_or_default();
        let (successful, failed) = parse_stat(&stat);
        let errors =
            fs::read_to_string(self.dir.join(format!("{}.errors", self.name))).unwrap_or_default();
        SippOutcome {
            code,
            successful,
            failed,
            errors,
        }
    }
}

impl Drop for RunningSipp {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// SuccessfulCall(C) and FailedCall(C) from the last line of a SIPp statistics file.
fn parse_stat(text: &str) -> (u64, u64) {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let Some(header) = lines.next() else {
        return (0, 0);
    };
    let Some(last) = lines.next_back() else {
        return (0, 0);
    };
    let cols: Vec<&str> = header.split(';').collect();
    let vals: Vec<&str> = last.split(';').collect();
    let get = |name: &str| {
        cols.iter()
            .position(|c| *c == name)
            .and_then(|i| vals.get(i))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    (get("SuccessfulCall(C)"), get("FailedCall(C)"))
}

pub fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file())
}

/// A UDP socket speaking raw SIP to the server.
pub struct RawSip {
    pub sock: UdpSocket,
    pub server: SocketAddr,
}

impl RawSip {
    pub fn new(server: SocketAddr) -> RawSip {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        sock.set_read_timeout(Some(Duration::from_millis(1500)))
            .expect("timeout");
        RawSip { sock, server }
    }

    pub fn local(&self) -> SocketAddr {
        self.sock.local_addr().expect("local address")
    }

    pub fn send(&self, bytes: &[u8]) {
        self.sock.send_to(bytes, self.server).expect("send");
    }

    /// The next datagram, or `None` after the read timeout.
    pub fn recv(&self) -> Option<String> {
        let mut buf = vec![0u8; 65536];
        let (n, _) = self.sock.recv_from(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// Send and return the first response to it other than 100 (matched by the Via
    /// branch, so late retransmissions of earlier answers are skipped).
    pub fn request(&self, bytes: &[u8]) -> Option<String> {
        let text = String::from_utf8_lossy(bytes);
        let branch = text
            .split("branch=")
            .nth(1)
            .map(|b| b.split([';', '\r', ',']).next().unwrap_or(b).to_owned());
        self.send(bytes);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            let r = self.recv()?;
            let ours = branch
                .as_ref()
                .is_none_or(|b| r.contains(&format!("branch={b}")));
            if ours && !r.starts_with("SIP/2.0 100 ") {
                return Some(r);
            }
        }
        None
    }
}

/// The status code of a response's first line.
pub fn status(resp: &str) -> u16 {
    resp.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// GET `path` with an `Accept` header: (status, body).
pub fn http_get_accept(addr: SocketAddr, accept: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let code = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (code, body.to_owned())
}
