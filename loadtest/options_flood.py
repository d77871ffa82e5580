#!/usr/bin/env python3
"""A bounded OPTIONS keepalive flood from one source, and what it costs the server.

    loadtest/options_flood.py BIN [COUNT] [SECONDS]

Starts `BIN all-in-one` on free loopback ports, sends COUNT (default 600000) OPTIONS
keepalives from 127.0.0.11 as fast as one socket can (stopping after SECONDS, default 10),
while an innocent client on 127.0.0.12 sends 25 requests, one every 0.4 s. Prints the
server's RSS before, at its peak and after, the live server transactions at the end,
and how many of the innocent client's 25 requests were answered. Stops the server by PID.
Loopback only; bounded in count and time.
"""
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def metric(port, name):
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return None
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


def main():
    binary = sys.argv[1]
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 600_000
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 10.0
    sip, mport = free_port(), free_port()
    proc = subprocess.Popen(
        [binary, "all-in-one", "--listen", f"127.0.0.1:{sip}", "--metrics", f"127.0.0.1:{mport}",
         "--location-listen", "off", "--admin", "off", "--log-level", "warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{mport}/readyz", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        time.sleep(1)
        before = rss_kib(proc.pid)
        peak = [before]
        done = threading.Event()

        held = [0.0]

        def sample():
            i = 0
            while not done.is_set():
                peak[0] = max(peak[0], rss_kib(proc.pid))
                if i % 5 == 0:
                    held[0] = max(held[0], metric(mport, 'sipcluster_sip_transactions_active{kind="server"}') or 0.0)
                i += 1
                time.sleep(0.1)

        answered = [0]

        def innocent():
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.12", 0))
            s.settimeout(0.4)
            a = s.getsockname()
            for i in range(25):
                msg = (f"OPTIONS sip:127.0.0.1:{sip} SIP/2.0\r\nVia: SIP/2.0/UDP {a[0]}:{a[1]};branch=z9hG4bK-in{i}\r\n"
                       f"Max-Forwards: 70\r\nFrom: <sip:in@{a[0]}>;tag=i{i}\r\nTo: <sip:127.0.0.1:{sip}>\r\n"
                       f"Call-ID: innocent-{i}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode()
                s.sendto(msg, ("127.0.0.1", sip))
                t0 = time.time()
                while time.time() - t0 < 0.4:
                    try:
                        r = s.recv(65536)
                    except OSError:
                        break
                    if f"innocent-{i}".encode() in r and not r.startswith(b"SIP/2.0 100"):
                        answered[0] += 1
                        break

        sampler = threading.Thread(target=sample)
        sampler.start()
        inn = threading.Thread(target=innocent)
        inn.start()
        f = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        f.bind(("127.0.0.11", 0))
        f.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        a = f.getsockname()
        head = (f"OPTIONS sip:127.0.0.1:{sip} SIP/2.0\r\nVia: SIP/2.0/UDP {a[0]}:{a[1]};branch=z9hG4bK-f").encode()
        tail = (f"\r\nMax-Forwards: 70\r\nFrom: <sip:ka@{a[0]}>;tag=1\r\nTo: <sip:127.0.0.1:{sip}>\r\n"
                f"Call-ID: flood-").encode()
        end = b"\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        dest = ("127.0.0.1", sip)
        t0 = time.time()
        sent = 0
        while sent < count and time.time() - t0 < seconds:
            n = str(sent).encode()
            try:
                f.sendto(head + n + tail + n + end, dest)
            except OSError:
                pass
            sent += 1
        elapsed = time.time() - t0
        inn.join()
        time.sleep(2)
        done.set()
        sampler.join()
        after = rss_kib(proc.pid)
        txns = metric(mport, 'sipcluster_sip_transactions_active{kind="server"}')
        print(f"binary={binary}")
        print(f"sent={sent} in {elapsed:.1f}s ({sent / elapsed:.0f}/s offered) from one source")
        print(f"rss_kib before={before} peak={peak[0]} after={after}")
        print(f"server_transactions peak={held[0]} after={txns}")
        print(f"innocent_answered={answered[0]}/25")
        for name in ("sipcluster_sip_options_stateless_total", "sipcluster_sip_dropped_requests_total"):
            print(f"{name}={metric(mport, name)}")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
