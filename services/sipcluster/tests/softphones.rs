//! Real softphones through the all-in-one: two baresip instances (Debian's baresip 1.0.0,
//! no audio hardware: a WAV file as the microphone, a null player) register with digest
//! auth, call each other, talk for about three seconds and hang up, over UDP and over
//! TCP, with and without the media relay. The assertions use the server's metrics and
//! what each phone says it sent and received (baresip's `/audio_debug` over its `cons`
//! UDP console).
//!
//! baresip 1.0.0 is what the defaults must work with: its libre fails a whole REGISTER
//! ("Function not implemented") when one of two challenges is SHA-256, so this suite
//! fails if the edge offers SHA-256 by default again.
//!
//! Linphone too (Debian's linphone-cli 5.1): `linphonec` registers and calls a baresip,
//! with files for its sound card (`soundcard use files`: a WAV as the microphone, the
//! received audio recorded to a WAV). It only runs its event loop on a terminal, so it
//! is driven through a pseudo-terminal made by `script`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::fs;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Server, free_port, run_cli, which, workdir};

const DOMAIN: &str = "sipcluster.local";
/// About three seconds of talk; G.711 at 20 ms is 50 packets a second each way.
const TALK: Duration = Duration::from_secs(3);
const MIN_PACKETS: u64 = 100;

/// A mono 8 kHz 16-bit WAV of a 440 Hz tone, longer than any call here (baresip's aufile
/// source ends the call at the end of its file).
fn tone(path: &Path, secs: u32) {
    let samples = 8000 * secs;
    let mut data = Vec::with_capacity(44 + 2 * samples as usize);
    let riff = |d: &mut Vec<u8>, s: &[u8]| d.extend_from_slice(s);
    riff(&mut data, b"RIFF");
    data.extend_from_slice(&(36 + 2 * samples).to_le_bytes());
    riff(&mut data, b"WAVEfmt ");
    data.extend_from_slice(&16u32.to_le_bytes());
    data.extend_from_slice(&1u16.to_le_bytes()); // PCM
    data.extend_from_slice(&1u16.to_le_bytes()); // mono
    data.extend_from_slice(&8000u32.to_le_bytes());
    data.extend_from_slice(&16000u32.to_le_bytes());
    data.extend_from_slice(&2u16.to_le_bytes());
    data.extend_from_slice(&16u16.to_le_bytes());
    riff(&mut data, b"data");
    data.extend_from_slice(&(2 * samples).to_le_bytes());
    for i in 0..samples {
        let v =
            (8000.0 * (2.0 * std::f64::consts::PI * 440.0 * f64::from(i) / 8000.0).sin()) as i16;
        data.extend_from_slice(&v.to_le_bytes());
    }
    fs::write(path, data).expect("write the tone");
}

/// A port free for UDP and TCP whose next port is free too (baresip listens for TLS one
/// above its SIP port).
fn free_sip_port() -> u16 {
    for _ in 0..200 {
        let p = free_port();
        if p < 65_000
            && UdpSocket::bind(("127.0.0.1", p + 1)).is_ok()
            && TcpListener::bind(("127.0.0.1", p + 1)).is_ok()
        {
            return p;
        }
    }
    panic!("no free pair of ports for baresip");
}

/// The media ports of one test: a slice of 12000-14799 of its own (below the kernel's
/// ephemeral range, where other sockets of this run come from, and away from the ports
/// the test script gives its Redis and Kubernetes), so that phones and relays of tests
/// running at once never meet. `base+0..40` is one phone's, `+100` the other's, `+200`
/// linphone's, `+300..+400` the relay's.
fn media_slice(slot: u16) -> u16 {
    assert!(slot < 7, "seven slices");
    12_000 + 400 * slot
}

/// One baresip process with its own configuration directory.
struct Baresip {
    child: Child,
    name: String,
    dir: PathBuf,
    console: SocketAddr,
}

impl Baresip {
    fn start(
        dir: &Path,
        user: &str,
        server: SocketAddr,
        transport: &str,
        wav: &Path,
        rtp: u16,
    ) -> Baresip {
        let bin = which("baresip").unwrap_or_else(|| {
            panic!("baresip is not installed: run ./scripts/test.sh, which installs baresip-core")
        });
        let home = dir.join(user);
        fs::create_dir_all(&home).expect("baresip directory");
        let sip = free_sip_port();
        let console = SocketAddr::from(([127, 0, 0, 1], free_port()));
        fs::write(
            home.join("config"),
            format!(
                "poll_method epoll\n\
                 sip_listen 127.0.0.1:{sip}\n\
                 sip_trans_def {transport}\n\
                 audio_player aubridge,nul\n\
                 audio_source aufile,{wav}\n\
                 audio_alert aubridge,nul\n\
                 ausrc_srate 8000\n\
                 auplay_srate 8000\n\
                 rtp_ports {rtp}-{}\n\
                 module_path /usr/lib/baresip/modules\n\
                 module g711.so\n\
                 module aufile.so\n\
                 module aubridge.so\n\
                 module cons.so\n\
                 module_app account.so\n\
                 module_app menu.so\n\
                 cons_listen {console}\n",
                rtp + 39,
                wav = wav.display(),
            ),
        )
        .expect("baresip config");
        fs::write(
            home.join("accounts"),
            format!(
                "<sip:{user}@{server};transport={transport}>;auth_pass={user}-secret;answermode=auto;regint=600\n"
            ),
        )
        .expect("baresip accounts");
        fs::write(home.join("contacts"), "").expect("baresip contacts");
        let log = fs::File::create(dir.join(format!("{user}.log"))).expect("log");
        let child = Command::new(bin)
            .args(["-f", &home.display().to_string(), "-n", "127.0.0.1"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start baresip");
        Baresip {
            child,
            name: user.to_owned(),
            dir: dir.to_owned(),
            console,
        }
    }

    fn log(&self) -> String {
        String::from_utf8_lossy(
            &fs::read(self.dir.join(format!("{}.log", self.name))).unwrap_or_default(),
        )
        .into_owned()
    }

    /// Wait (bounded) until the log says `what`.
    fn wait_for(&self, what: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.log().contains(what) {
            assert!(
                Instant::now() < deadline,
                "{}: no {what:?} within {within:?}; log:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A console command; what baresip answered (it may answer in several datagrams).
    fn command(&self, cmd: &str) -> String {
        let s = UdpSocket::bind("127.0.0.1:0").expect("console socket");
        s.set_read_timeout(Some(Duration::from_millis(700)))
            .expect("timeout");
        s.send_to(format!("{cmd}\n").as_bytes(), self.console)
            .expect("console send");
        let mut out = Vec::new();
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, _)) = s.recv_from(&mut buf) {
            out.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// A console command's answer once it contains `key`: sent again (bounded) while
    /// baresip's answer is missing, which happens when a loaded machine delays it past a
    /// read timeout (seen in CI: an empty answer to `/audio_debug`).
    fn query(&self, cmd: &str, key: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(8);
        loop {
            let text = self.command(cmd);
            if text.contains(key) || Instant::now() >= deadline {
                return text;
            }
        }
    }

    /// RTP packets (sent, received) so far in the call, from `/audio_debug`.
    fn rtp_counts(&self) -> (u64, u64) {
        let text = self.query("/audio_debug", "rcvd=");
        let num = |key: &str| {
            text.split(key)
                .nth(1)
                .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse().ok())
        };
        match (num("TX: packets="), num("rcvd=")) {
            (Some(tx), Some(rx)) => (tx, rx),
            _ => panic!("{}: no RTP statistics in /audio_debug:\n{text}", self.name),
        }
    }

    /// The address the phone sends its RTP to (the other phone, or the relay).
    fn rtp_peer(&self) -> String {
        let text = self.query("/audio_debug", "remote: ");
        text.split("remote: ")
            .nth(1)
            .and_then(|r| r.split(['/', '\n', ' ']).next())
            .unwrap_or_default()
            .to_owned()
    }
}

impl Drop for Baresip {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Does `peer` (`ip:port`) name one of the 100 relay ports from `base`?
fn in_range(peer: &str, base: u16) -> bool {
    peer.rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .is_some_and(|p| (base..base + 100).contains(&p))
}

/// Each sample of the exposition `m` is at least its value, and no login failed.
fn assert_counted(m: &str, at_least: &[(&str, f64)]) {
    for (sample, min) in at_least {
        let v = common::metric_value(m, sample);
        assert!(v >= *min, "{sample} = {v}, expected at least {min}:\n{m}");
    }
    // Every reason's series is there from the start, at 0.
    assert!(
        !m.lines()
            .any(|l| l.starts_with("sipcluster_sip_auth_failures_total{")
                && l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) != Some(0.0)),
        "a phone failed to log in:\n{m}"
    );
}

/// What every call test starts with: its directory, the tone the phones play, its media
/// ports, a media relay on them when asked, and an all-in-one anchoring calls there.
struct Setup {
    dir: PathBuf,
    wav: PathBuf,
    media: u16,
    relay_ports: u16,
    relay: Option<Server>,
    srv: Server,
}

fn setup(test: &str, relay: bool, slot: u16) -> Setup {
    let dir = workdir(test);
    let wav = dir.join("tone.wav");
    tone(&wav, 30);
    let media = media_slice(slot);
    let relay_ports = media + 300;
    let relay = relay.then(|| {
        Server::media_relay(
            &dir,
            "relay",
            &format!("{relay_ports}-{}", relay_ports + 99),
            &[],
        )
    });
    let control = relay.as_ref().map(|r| format!("http://{}", r.sip));
    let mut args = vec![];
    if let Some(c) = &control {
        args.extend(["--media-relay", c.as_str()]);
    }
    let srv = Server::start(&dir, &args);
    Setup {
        dir,
        wav,
        media,
        relay_ports,
        relay,
        srv,
    }
}

/// Register alice and bob, alice calls bob, three seconds of audio both ways, alice
/// hangs up. With `relay`, the all-in-one anchors the media at a real media relay.
fn call(test: &str, transport: &str, relay: bool, slot: u16) {
    let Setup {
        dir,
        wav,
        media,
        relay_ports,
        relay: relay_srv,
        srv,
    } = setup(test, relay, slot);

    let alice = Baresip::start(&dir, "alice", srv.sip, transport, &wav, media);
    let bob = Baresip::start(&dir, "bob", srv.sip, transport, &wav, media + 100);
    // The defaults work with this phone: 401, then 200 with its binding.
    let registered = format!("{{0/{}/v4}} 200 OK", transport.to_uppercase());
    alice.wait_for(&registered, Duration::from_secs(10));
    bob.wait_for(&registered, Duration::from_secs(10));
    let listed = run_cli(&[
        "registrations",
        "--location",
        &format!("http://{}", srv.location_api.expect("location API")),
        "--token-file",
        &srv.tokens.admin_str(),
        "list",
    ]);
    assert!(
        listed.stdout.contains(&format!("sip:alice@{DOMAIN}"))
            && listed.stdout.contains(&format!("sip:bob@{DOMAIN}"))
            && listed.stdout.contains("baresip"),
        "{listed:?}"
    );

    alice.command("/dial bob");
    alice.wait_for("Call established", Duration::from_secs(10));
    bob.wait_for("Call established", Duration::from_secs(10));
    std::thread::sleep(TALK);
    let (a_tx, a_rx) = alice.rtp_counts();
    let (b_tx, b_rx) = bob.rtp_counts();
    let (a_peer, b_peer) = (alice.rtp_peer(), bob.rtp_peer());
    alice.command("/hangup");
    alice.wait_for("terminated", Duration::from_secs(10));
    bob.wait_for("terminated", Duration::from_secs(10));

    // Both phones heard each other.
    eprintln!(
        "{test}: alice sent {a_tx} and received {a_rx} RTP packets, bob {b_tx} and {b_rx} \
         (talk {TALK:?}; alice sends to {a_peer}, bob to {b_peer})"
    );
    for (who, tx, rx) in [("alice", a_tx, a_rx), ("bob", b_tx, b_rx)] {
        assert!(
            tx >= MIN_PACKETS && rx >= MIN_PACKETS,
            "{who} sent {tx} and received {rx} RTP packets in {TALK:?}; alice:\n{}\nbob:\n{}",
            alice.log(),
            bob.log()
        );
    }
    // Through the relay when there is one, phone to phone otherwise.
    assert_eq!(
        in_range(&a_peer, relay_ports),
        relay,
        "alice sends RTP to {a_peer}"
    );
    assert_eq!(
        in_range(&b_peer, relay_ports),
        relay,
        "bob sends RTP to {b_peer}"
    );

    // What the server counted: two logins and the call's authenticated INVITE, its ACK
    // and BYE, no failed login.
    let m = srv.scrape();
    assert_counted(
        &m,
        &[
            ("sipcluster_sip_requests_total{method=\"REGISTER\"}", 4.0),
            ("sipcluster_sip_requests_total{method=\"INVITE\"}", 2.0),
            ("sipcluster_sip_requests_total{method=\"ACK\"}", 1.0),
            ("sipcluster_sip_requests_total{method=\"BYE\"}", 1.0),
            (
                "sipcluster_sip_responses_total{class=\"4xx\",code=\"401\"}",
                2.0,
            ),
            (
                "sipcluster_sip_responses_total{class=\"4xx\",code=\"407\"}",
                1.0,
            ),
            (
                "sipcluster_sip_responses_total{class=\"2xx\",code=\"200\"}",
                4.0,
            ),
        ],
    );
    if let Some(r) = &relay_srv {
        assert_counted(&m, &[("sipcluster_media_anchored_total", 1.0)]);
        let rm = r.scrape();
        let forwarded: f64 = rm
            .lines()
            .filter(|l| l.starts_with("sipcluster_media_packets_total"))
            .filter_map(|l| l.rsplit_once(' ').and_then(|(_, n)| n.parse::<f64>().ok()))
            .sum();
        assert!(
            forwarded >= (2 * MIN_PACKETS) as f64,
            "the relay forwarded {forwarded} packets:\n{rm}"
        );
    }
}

#[test]
fn baresip_call_over_udp() {
    call("baresip_udp", "udp", false, 0);
}

#[test]
fn baresip_call_over_tcp() {
    call("baresip_tcp", "tcp", false, 1);
}

#[test]
fn baresip_call_over_udp_through_the_media_relay() {
    call("baresip_udp_relay", "udp", true, 2);
}

#[test]
fn baresip_call_over_tcp_through_the_media_relay() {
    call("baresip_tcp_relay", "tcp", true, 3);
}

/// `linphonec` on a pseudo-terminal, commands written to it, its screen in a file.
struct Linphone {
    child: Child,
    dir: PathBuf,
}

impl Linphone {
    fn start(dir: &Path, rtp: u16) -> Linphone {
        let bin = which("linphonec").unwrap_or_else(|| {
            panic!("linphonec is not installed: run ./scripts/test.sh, which installs linphone-cli")
        });
        let script = which("script").expect("script (bsdutils) for a pseudo-terminal");
        let home = dir.join("linphone-home");
        fs::create_dir_all(home.join(".local/share/linphone")).expect("linphone home");
        let rc = dir.join("linphonerc");
        fs::write(
            &rc,
            format!(
                "[sip]\nsip_port={}\nsip_tcp_port=-1\nsip_tls_port=-1\n[rtp]\naudio_rtp_port={rtp}-{}\n\
                 [sound]\necho_cancellation=0\n[misc]\nenable_basic_to_client_group_chat_room_migration=0\n",
                free_port(),
                rtp + 19
            ),
        )
        .expect("linphonerc");
        let screen = fs::File::create(dir.join("linphone.screen")).expect("screen file");
        let command = format!(
            "{} -c {} -d 4 -l {}",
            bin.display(),
            rc.display(),
            dir.join("linphone.log").display()
        );
        let child = Command::new(script)
            .args(["-qfc", &command, "/dev/null"])
            .env("HOME", &home)
            .stdin(Stdio::piped())
            .stdout(screen)
            .stderr(Stdio::null())
            .spawn()
            .expect("start linphonec");
        Linphone {
            child,
            dir: dir.to_owned(),
        }
    }

    fn send(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().expect("linphonec stdin");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .expect("write to linphonec");
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&fs::read(self.dir.join("linphone.screen")).unwrap_or_default())
            .into_owned()
    }

    /// Wait (bounded) until the screen shows `what`, sending `poll` now and then.
    fn wait_for(&mut self, what: &str, poll: Option<&str>, within: Duration) {
        let deadline = Instant::now() + within;
        let mut next_poll = Instant::now();
        while !self.screen().contains(what) {
            assert!(
                Instant::now() < deadline,
                "linphonec: no {what:?} within {within:?}; screen:\n{}",
                self.screen()
            );
            if let Some(p) = poll
                && Instant::now() >= next_poll
            {
                self.send(p);
                next_poll = Instant::now() + Duration::from_millis(500);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Linphone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// carol on linphonec calls bob on baresip; three seconds of audio both ways.
fn linphone_call(test: &str, relay: bool, slot: u16) {
    let Setup {
        dir,
        wav,
        media,
        relay_ports,
        relay: _relay,
        srv,
    } = setup(test, relay, slot);
    let bob = Baresip::start(&dir, "bob", srv.sip, "udp", &wav, media + 100);
    bob.wait_for("{0/UDP/v4} 200 OK", Duration::from_secs(10));

    let mut carol = Linphone::start(&dir, media + 200);
    let recorded = dir.join("carol-heard.wav");
    carol.send("soundcard use files");
    carol.send(&format!("play {}", wav.display()));
    carol.send(&format!("record {}", recorded.display()));
    carol.send(&format!(
        "register sip:carol@{DOMAIN} sip:{} carol-secret",
        srv.sip
    ));
    carol.wait_for(
        &format!("registered, identity=sip:carol@{DOMAIN}"),
        Some("status register"),
        Duration::from_secs(15),
    );
    // To the server's address: linphonec would look `sipcluster.local` up in the DNS.
    carol.send(&format!("call sip:bob@{}", srv.sip));
    carol.wait_for("Media streams established", None, Duration::from_secs(15));
    bob.wait_for("Call established", Duration::from_secs(10));
    std::thread::sleep(TALK);
    let (b_tx, b_rx) = bob.rtp_counts();
    let b_peer = bob.rtp_peer();
    carol.send("terminate");
    carol.wait_for("ended", None, Duration::from_secs(10));
    bob.wait_for("terminated", Duration::from_secs(10));
    carol.send("quit");

    eprintln!("{test}: bob sent {b_tx} and received {b_rx} RTP packets (talk {TALK:?})");
    assert!(
        b_tx >= MIN_PACKETS && b_rx >= MIN_PACKETS,
        "bob sent {b_tx} and received {b_rx} RTP packets; linphonec screen:\n{}",
        carol.screen()
    );
    // What carol heard, recorded at 8 kHz, 16 bits: at least two seconds of it.
    let deadline = Instant::now() + Duration::from_secs(5);
    let heard = loop {
        let n = fs::metadata(&recorded).map_or(0, |m| m.len());
        if n >= 32_000 || Instant::now() > deadline {
            break n;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        heard >= 32_000,
        "carol recorded {heard} bytes of bob's audio"
    );
    assert_eq!(
        in_range(&b_peer, relay_ports),
        relay,
        "bob sends RTP to {b_peer}"
    );
    assert_counted(
        &srv.scrape(),
        &[
            (
                "sipcluster_sip_responses_total{class=\"4xx\",code=\"407\"}",
                1.0,
            ),
            ("sipcluster_sip_requests_total{method=\"BYE\"}", 1.0),
        ],
    );
}

#[test]
fn linphone_calls_baresip_over_udp() {
    linphone_call("linphone_udp", false, 4);
}

#[test]
fn linphone_calls_baresip_through_the_media_relay() {
    linphone_call("linphone_udp_relay", true, 5);
}
