#!/usr/bin/env python3
"""The Helm chart's checks (run by ./scripts/test.sh; no helm binary needed).

Helm's own Go library (PyPI helm-python-sdk) lints and renders helm/sipcluster for every
values set below; kubernetes-validate checks each rendered manifest strictly against a
current Kubernetes; then the checks that catch real mistakes:

* values.schema.json refuses wrong types, unknown keys and bad enums;
* SIP over TLS: the dispatcher gets its settings, the Secret mounted whole (no subPath),
  the port on its container, Service and NetworkPolicy; cert-manager's Certificate writes
  the Secret it mounts; a dispatcher started from the rendered pod serves the certificate,
  refuses a client without one (mutual TLS) and serves a renewed one that arrives the way
  the kubelet updates a Secret volume, without a restart;
* SIP over WebSocket: ws: or wss: (which needs tls.*: a render failure otherwise), the
  allowed origins, the port on the dispatcher's container, TCP Service and NetworkPolicy;
  the rendered dispatcher of values-tls.yaml upgrades a wss: connection from an allowed
  origin and refuses another origin;
* topology hiding: dispatcher.topologyHiding sets SIPCLUSTER_TOPOLOGY_HIDING=true on the
  dispatcher (on in the production example), nothing by default; the dispatcher's resolved
  configuration says what the chart asked for;
* call limits: callLimits reach the edges' `[call_limits]` (only when a limit is set),
  trunkPeers as its `trunk_peers` (which check-config accepts); a trunk that no outbound
  rule routes to and that has no peers fails the render, as do peers of a trunk without
  a limit;
* bans: dispatcher.bans reach the dispatcher's `[bans]`; by default (shareWithCluster)
  its location_endpoint is the URL the edges use (the chart's location service, or
  edge.externalLocation) and its token_file the edge token of the edges' Secret, mounted
  read-only in the dispatcher, and the location NetworkPolicy lets the dispatchers in;
  shareWithCluster false: no endpoint, no edge token in the dispatcher's pod;
* every container's flags, environment and ConfigMaps are accepted by the binary's own
  validation (`sipcluster check-config <service>` on the rendered files);
* every probe port is the metrics port the service's resolved configuration listens on,
  and every probe path answers on a running service started from the rendered files;
* the rendered manifests are accepted by a real kube-apiserver (server-side dry run, then
  created); the dispatcher, holding only the chart's ServiceAccount token, finds the edge
  Pods made from the chart's pod template once they are ready, and each verb of the
  chart's Role is needed (without it discovery fails).

Usage: test_chart.py [--bin target/debug/sipcluster] [--kubeconfig FILE]
The kube-apiserver part runs when a kubeconfig is given (SIPCLUSTER_TEST_KUBECONFIG).
"""

from __future__ import annotations

import argparse
import base64
import copy
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import helm_python as helm
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "sipcluster"
KUBE_VERSION = "1.37.0"  # kubernetes-validate's schemas: a current release
VALUE_SETS = {
    "defaults": [],
    "production": [ROOT / "helm/examples/values-production.yaml"],
    "kind": [ROOT / "helm/examples/values-kind.yaml"],
    "hostnetwork": [ROOT / "helm/examples/values-hostnetwork.yaml"],
    "redis-cluster": [ROOT / "tests/helm/values-redis-cluster.yaml"],
    "edge-only": [ROOT / "tests/helm/values-edge-only.yaml"],
    "overrides": [ROOT / "tests/helm/values-overrides.yaml"],
    "tls": [ROOT / "tests/helm/values-tls.yaml"],
    "websocket": [ROOT / "tests/helm/values-websocket.yaml"],
    "bans": [ROOT / "tests/helm/values-bans.yaml"],
    "bans-external": [ROOT / "tests/helm/values-bans-external.yaml"],
    "trunk-peers": [ROOT / "tests/helm/values-trunk-peers.yaml"],
}
# What the Downward API gives a pod, for the checks that run the binary outside one.
FIELD_VALUES = {
    "status.podIP": "127.0.0.1",
    "status.hostIP": "127.0.0.1",
    "metadata.name": "pod-0",
    "metadata.namespace": "voip",
}
FAILURES: list[str] = []
# The files of an operator's kubernetes.io/tls Secrets (cert-manager's shape: tls.crt,
# tls.key, ca.crt) for the runs of the binary: certificates of a throwaway CA (make_pki).
TLS_SECRET_FILES: dict[str, str] = {}


def check(ok: bool, what: str) -> None:
    if ok:
        return
    FAILURES.append(what)
    print(f"    FAIL: {what}", flush=True)


def merge(a: dict, b: dict) -> dict:
    out = copy.deepcopy(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def values_of(files: list[Path]) -> dict:
    vals: dict = {}
    for f in files:
        vals = merge(vals, yaml.safe_load(f.read_text()) or {})
    return vals


def render(values: dict, namespace: str = "voip") -> list[dict]:
    chart = helm.Chart.load(str(CHART))
    out = chart.render(values, name="sc", namespace=namespace, is_install=True)
    docs = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt") or not text.strip():
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.bind(("127.0.0.1", port))
    return port


def workloads(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet")]


def by_kind_name(docs: list[dict], kind: str, name: str) -> dict:
    for d in docs:
        if d["kind"] == kind and d["metadata"]["name"] == name:
            return d
    raise KeyError(f"{kind}/{name}")


# --- lint, render, validate ------------------------------------------------------------


def lint_render_validate(workdir: Path, validate: str) -> dict[str, list[dict]]:
    rendered = {}
    for name, files in VALUE_SETS.items():
        vals = values_of(files)
        report = helm.lint(str(CHART), vals, strict=True, namespace="voip")
        bad = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
        check(not bad and not report.get("errors"), f"lint --strict {name}: {bad} {report.get('errors')}")
        docs = render(vals)
        rendered[name] = docs
        out = workdir / f"rendered-{name}.yaml"
        out.write_text(yaml.safe_dump_all(docs, sort_keys=False))
        r = subprocess.run([validate, "--strict", "--quiet", "--no-warn", "-k", KUBE_VERSION, str(out)],
                           capture_output=True, text=True)
        check(r.returncode == 0, f"kubernetes-validate --strict -k {KUBE_VERSION} {name}:\n{r.stdout}{r.stderr}")
        kinds = sorted({d['kind'] for d in docs})
        print(f"    {name}: {len(docs)} objects ({', '.join(kinds)}), lint and validation clean"
              if r.returncode == 0 else f"    {name}: {len(docs)} objects", flush=True)
        # The PrometheusRule carries deploy/prometheus as it is: promtool checks it.
        for d in docs:
            if d["kind"] == "PrometheusRule" and shutil.which("promtool"):
                f = workdir / f"rules-{name}.yaml"
                f.write_text(yaml.safe_dump({"groups": d["spec"]["groups"]}))
                r = subprocess.run(["promtool", "check", "rules", str(f)], capture_output=True, text=True)
                check(r.returncode == 0, f"promtool check rules on the PrometheusRule ({name}): {r.stdout}{r.stderr}")
    return rendered


def schema_checks() -> None:
    chart = helm.Chart.load(str(CHART))
    for name, files in VALUE_SETS.items():
        try:
            chart.validate_schema(values_of(files))
        except helm.HelmError as e:
            check(False, f"values.schema.json refuses the {name} values: {e}")
    wrong = [
        ({"edge": {"replicas": "two"}}, "/edge/replicas"),
        ({"edge": {"replica": 2}}, "replica"),
        ({"sip": {"port": "5060"}}, "/sip/port"),
        ({"sip": {"port": 70000}}, "/sip/port"),
        ({"sip": {"domains": []}}, "/sip/domains"),
        ({"sip": {"authAlgorithms": ["SHA-512"]}}, "/sip/authAlgorithms"),
        ({"dispatcher": {"mode": "nodePort"}}, "/dispatcher/mode"),
        ({"dispatcher": {"topologyHiding": "true"}}, "/dispatcher/topologyHiding"),
        ({"dispatcher": {"topologyHiding": 1}}, "/dispatcher/topologyHiding"),
        ({"accounting": {"destination": "kafka"}}, "brokers"),
        ({"accounting": {"spool": {"type": "hostPath"}}}, "/accounting/spool/type"),
        ({"location": {"redis": {"mode": "cluster"}}}, "nodes"),
        ({"mediaRelay": {"advertise": {"from": "static"}}}, "address"),
        ({"mediaRelay": {"ports": {"min": 0}}}, "/mediaRelay/ports/min"),
        ({"networkPolicy": {"enabled": "yes"}}, "/networkPolicy/enabled"),
        ({"edge": {"enabled": True, "autoscaling": {"targetCPUUtilizationPercentage": 170}}}, "targetCPU"),
        ({"location": {"onDataLoss": "reprovision"}}, "usersExistingSecret"),
        ({"mediaRelay": {"ports": {"min": 80}}}, "/mediaRelay/ports/min"),
        ({"edge": {"pdb": {"maxUnavailable": "half"}}}, "/edge/pdb/maxUnavailable"),
        ({"hep": {"sampleRatio": 1.5}}, "/hep/sampleRatio"),
        ({"hep": {"transport": "sctp"}}, "/hep/transport"),
        ({"tracing": {"sampleRatio": 1.5}}, "/tracing/sampleRatio"),
        ({"tracing": {"otlpEndpoint": "otel:4317"}}, "/tracing/otlpEndpoint"),
        ({"tls": {"clientAuth": "mutual"}}, "/tls/clientAuth"),
        ({"tls": {"clientAuth": False}}, "/tls/clientAuth"),  # an unquoted off in YAML 1.1
        ({"tls": {"port": 0}}, "/tls/port"),
        ({"tls": {"reloadSecs": 0}}, "/tls/reloadSecs"),
        ({"tls": {"existingSecret": "My_Secret"}}, "/tls/existingSecret"),
        ({"tls": {"certManager": {"issuerRef": {"kind": "Issuers"}}}}, "/tls/certManager/issuerRef/kind"),
        ({"tls": {"certManager": {"privateKey": {"algorithm": "ECDSA", "size": 2048}}}}, "/tls/certManager/privateKey/size"),
        ({"tls": {"certManager": {"duration": "90d"}}}, "/tls/certManager/duration"),
        ({"tls": {"certManager": {"dnsNames": ["sip example.com"]}}}, "/tls/certManager/dnsNames"),
        ({"tls": {"clientCaSecret": {"name": "ca", "key": ""}}}, "/tls/clientCaSecret/key"),
        ({"tls": {"enable": True}}, "enable"),
        ({"edge": {"trustedPeers": ["tls:"]}}, "/edge/trustedPeers"),
        ({"edge": {"trustedPeers": ["trunk.example.net"]}}, "/edge/trustedPeers"),
        ({"websocket": {"port": 0}}, "/websocket/port"),
        ({"websocket": {"tlsPort": "8443"}}, "/websocket/tlsPort"),
        ({"websocket": {"tlsPort": 65536}}, "/websocket/tlsPort"),
        ({"websocket": {"secure": "yes"}}, "/websocket/secure"),
        ({"websocket": {"enabled": "true"}}, "/websocket/enabled"),
        ({"websocket": {"allowedOrigins": "https://phones.example.com"}}, "/websocket/allowedOrigins"),
        # Browsers send no path and no trailing slash: such an origin never matches.
        ({"websocket": {"allowedOrigins": ["https://phones.example.com/"]}}, "/websocket/allowedOrigins/0"),
        ({"websocket": {"allowedOrigins": ["phones.example.com"]}}, "/websocket/allowedOrigins/0"),
        ({"websocket": {"allowedOrigins": ["https://a.example.com,https://b.example.com"]}}, "/websocket/allowedOrigins/0"),
        ({"websocket": {"origins": []}}, "origins"),
        ({"callLimits": {"refuseCode": 401}}, "/callLimits/refuseCode"),
        ({"callLimits": {"refuseCode": 407}}, "/callLimits/refuseCode"),
        ({"callLimits": {"refuseCode": 399}}, "/callLimits/refuseCode"),
        ({"callLimits": {"refuseCode": 700}}, "/callLimits/refuseCode"),
        ({"callLimits": {"refuseCode": "486"}}, "/callLimits/refuseCode"),
        ({"callLimits": {"setupTtlSecs": 0}}, "/callLimits/setupTtlSecs"),
        ({"callLimits": {"account": {"calls": -1}}}, "/callLimits/account/calls"),
        ({"callLimits": {"domain": {"cps": 1.5}}}, "/callLimits/domain/cps"),
        ({"callLimits": {"account": {"max": 2}}}, "max"),
        ({"callLimits": {"accounts": {"alice@example.com": {"calls": "2"}}}}, "/callLimits/accounts/alice@example.com/calls"),
        ({"callLimits": {"trunks": {"pstn": {"calls": 30, "burst": 5}}}}, "burst"),
        ({"callLimits": {"trunks": {"pstn": 30}}}, "/callLimits/trunks/pstn"),
        # The edges look accounts and domains up in lower case: a capital never matches.
        ({"callLimits": {"accounts": {"Alice@example.com": {"calls": 2}}}}, "/callLimits/accounts"),
        ({"callLimits": {"accounts": {"alice": {"calls": 2}}}}, "/callLimits/accounts"),
        ({"callLimits": {"domains": {"Example.com": {"calls": 2}}}}, "/callLimits/domains"),
        ({"callLimits": {"limits": {}}}, "limits"),
        # A trunk's peers: address blocks (IP or CIDR) or tls:NAME, in a list per trunk.
        ({"callLimits": {"trunkPeers": {"pstn": ["999.1.1.1/8"]}}}, "/callLimits/trunkPeers/pstn/0"),
        ({"callLimits": {"trunkPeers": {"pstn": ["tls:"]}}}, "/callLimits/trunkPeers/pstn/0"),
        ({"callLimits": {"trunkPeers": {"pstn": ["192.0.2.0/33"]}}}, "/callLimits/trunkPeers/pstn/0"),
        ({"callLimits": {"trunkPeers": {"pstn": ["2001:db8::/129"]}}}, "/callLimits/trunkPeers/pstn/0"),
        ({"callLimits": {"trunkPeers": {"pstn": ["2001:db8:::1"]}}}, "/callLimits/trunkPeers/pstn/0"),
        ({"callLimits": {"trunkPeers": {"pstn": ["carrier.example.net"]}}}, "/callLimits/trunkPeers/pstn/0"),
        ({"callLimits": {"trunkPeers": {"pstn": ["192.0.2.0/24, 198.51.100.0/24"]}}}, "/callLimits/trunkPeers/pstn/0"),
        ({"callLimits": {"trunkPeers": {"pstn": "192.0.2.0/24"}}}, "/callLimits/trunkPeers/pstn"),
        ({"dispatcher": {"bans": {"floodRate": "2000"}}}, "/dispatcher/bans/floodRate"),
        ({"dispatcher": {"bans": {"floodRate": -1}}}, "/dispatcher/bans/floodRate"),
        ({"dispatcher": {"bans": {"floodBanSecs": 0}}}, "/dispatcher/bans/floodBanSecs"),
        ({"dispatcher": {"bans": {"syncMs": 10}}}, "/dispatcher/bans/syncMs"),
        ({"dispatcher": {"bans": {"shareWithCluster": "true"}}}, "/dispatcher/bans/shareWithCluster"),
        ({"dispatcher": {"bans": {"allowList": "203.0.113.0/24"}}}, "/dispatcher/bans/allowList"),
        ({"dispatcher": {"bans": {"allowList": ["trunk.example.net"]}}}, "/dispatcher/bans/allowList/0"),
        ({"dispatcher": {"bans": {"allowList": ["203.0.113.0/24, 198.51.100.0/24"]}}}, "/dispatcher/bans/allowList/0"),
        ({"dispatcher": {"bans": {"locationEndpoint": "http://x:50051"}}}, "locationEndpoint"),
    ]
    for vals, where in wrong:
        try:
            chart.validate_schema(vals)
            check(False, f"values.schema.json accepted {vals}")
        except helm.HelmError as e:
            check(where in str(e), f"the refusal of {vals} names {where}: {e}")
    print(f"    values.schema.json: {len(VALUE_SETS)} value sets accepted, {len(wrong)} wrong ones refused", flush=True)
    # Mistakes only a template can see fail the install with a message naming the key.
    for vals, msg in [
        ({"location": {"redis": {"url": ""}}}, "location.redis.url"),
        ({"location": {"enabled": False}}, "edge.externalLocation"),
        ({"mediaRelay": {"advertise": {"from": "static", "address": "203.0.113.5"}}}, "mediaRelay.advertise.from static"),
        ({"hep": {"enabled": True}}, "hep.address"),
        ({"tls": {"enabled": True}}, "tls.existingSecret"),
        ({"tls": {"enabled": True, "certManager": {"enabled": True, "dnsNames": ["sip.example.com"]}}},
         "tls.certManager.issuerRef.name"),
        ({"tls": {"enabled": True, "certManager": {"enabled": True, "issuerRef": {"name": "ca"}}}},
         "tls.certManager.dnsNames"),
        ({"tls": {"enabled": True, "existingSecret": "sip-tls"}, "dispatcher": {"enabled": False}}, "dispatcher.enabled"),
        ({"dispatcher": {"sets": [{"name": "c", "targets": [{"address": "192.0.2.1:5061", "transport": "tls"}]}]}},
         "tls.enabled"),
        # wss: uses the TLS certificate (secure is the default).
        ({"websocket": {"enabled": True}}, "websocket.secure"),
        ({"websocket": {"enabled": True, "secure": True}}, "tls.enabled"),
        ({"websocket": {"enabled": True, "secure": False}, "dispatcher": {"enabled": False}}, "dispatcher.enabled"),
        ({"websocket": {"enabled": True, "secure": False, "port": 9092}}, "websocket.port"),
        ({"websocket": {"enabled": True, "tlsPort": 5061}, "tls": {"enabled": True, "existingSecret": "sip-tls"}},
         "websocket.tlsPort"),
        ({"callLimits": {"trunks": {"pstn": {"calls": 30}}}}, "callLimits.trunks.pstn"),
        ({"callLimits": {"trunks": {"pstn": {"calls": 30}}}, "edge": {"outboundRules": [{"prefix": "+", "set": "carrier"}]}},
         "callLimits.trunks.pstn"),
        # No outbound rule and an empty list of peers: still a limit that never applies.
        ({"callLimits": {"trunks": {"pstn": {"calls": 30}}, "trunkPeers": {"pstn": []}}}, "callLimits.trunks.pstn"),
        # Peers of a trunk without a limit: the edges would refuse to start.
        ({"callLimits": {"trunkPeers": {"pstn": ["192.0.2.0/24"]}}}, "callLimits.trunkPeers.pstn"),
        ({"callLimits": {"trunks": {"carrier": {"calls": 20}},
                         "trunkPeers": {"carrier": ["tls:carrier.example.net"], "pstn": ["192.0.2.0/24"]}}},
         "callLimits.trunkPeers.pstn"),
        # Dispatchers sharing bans with no location service to share them through.
        ({"location": {"enabled": False}, "edge": {"enabled": False}}, "edge.externalLocation"),
    ]:
        try:
            render(vals)
            check(False, f"render accepted {vals}")
        except helm.HelmError as e:
            check(msg in str(e), f"render refusal of {vals} names {msg}: {e}")


def override_checks(rendered: dict[str, list[dict]]) -> None:
    """What the overrides value set asked for is what the services are given."""
    import tomllib
    docs = rendered["overrides"]
    edge = tomllib.loads(by_kind_name(docs, "ConfigMap", "sc-sipcluster-edge")["data"]["edge.toml"])
    check(edge["sip"]["record_route"] is False, f"config: record_route false over the chart's true: {edge['sip']}")
    check(edge["sip"]["aliases"] == ["[2001:db8::10]:5060"], f"an IPv6 public address as an alias: {edge['sip']}")
    props = edge["accounting"]["kafka"]["properties"]
    check(props == {"linger.ms": "5", "enable.ssl.certificate.verification": "false"},
          f"librdkafka properties as strings: {props}")
    loc = tomllib.loads(by_kind_name(docs, "ConfigMap", "sc-sipcluster-location")["data"]["location.toml"])
    check(loc.get("users_file") == "/etc/sipcluster-users/users.toml", f"users file from the Secret: {loc}")
    env = {e["name"]: e.get("value") for e in by_kind_name(docs, "Deployment", "sc-sipcluster-edge")
           ["spec"]["template"]["spec"]["containers"][0]["env"]}
    check(env.get("SIPCLUSTER_ADVERTISE") == "2001:db8::10", f"edges without dispatchers advertise the public address: {env}")
    svc = by_kind_name(docs, "Service", "sc-sipcluster-edge")
    check(all(p["name"] != "metrics" for p in svc["spec"]["ports"]), "no metrics port on a LoadBalancer")
    mixed = render({"dispatcher": {"service": {"mixedProtocol": True}}})
    sip = by_kind_name(mixed, "Service", "sc-sipcluster-dispatcher-sip")
    check(sorted(p["protocol"] for p in sip["spec"]["ports"]) == ["TCP", "UDP"], f"one mixed Service: {sip['spec']}")
    # Traces: every service of the production example exports to its collector; none
    # does by default.
    for name, want in (("production", "http://otel-collector.monitoring:4317"), ("defaults", None)):
        for w in workloads(rendered[name]):
            for c in w["spec"]["template"]["spec"]["containers"]:
                env = {e["name"]: e.get("value") for e in c.get("env", [])}
                check(env.get("SIPCLUSTER_OTLP_ENDPOINT") == want,
                      f"{name}: {w['metadata']['name']}/{c['name']} exports traces to {want}: {env}")
                if want:
                    check(env.get("SIPCLUSTER_TRACE_SAMPLE_RATIO") == "0.01", f"sampled 1 %: {env}")
    print("    overrides: config false over true, IPv6 alias, string properties, users Secret, mixed Service; "
          "OTLP settings on every container (production), none by default", flush=True)


def tls_checks(rendered: dict[str, list[dict]]) -> None:
    """SIP over TLS: what values-tls.yaml (an operator's Secret) and the production example
    (cert-manager) ask for is what the dispatcher gets; nothing of it by default."""
    import tomllib
    docs = rendered["tls"]
    disp = by_kind_name(docs, "Deployment", "sc-sipcluster-dispatcher")
    spec = disp["spec"]["template"]["spec"]
    c = spec["containers"][0]
    env = {e["name"]: e.get("value") for e in c["env"] if e["name"].startswith("SIPCLUSTER_TLS_")}
    want = {
        "SIPCLUSTER_TLS_LISTEN": "0.0.0.0:5061",
        "SIPCLUSTER_TLS_CERT_FILE": "/var/run/secrets/sipcluster-tls/tls.crt",
        "SIPCLUSTER_TLS_KEY_FILE": "/var/run/secrets/sipcluster-tls/tls.key",
        "SIPCLUSTER_TLS_RELOAD_SECS": "1",
        "SIPCLUSTER_TLS_CLIENT_AUTH": "required",
        "SIPCLUSTER_TLS_CLIENT_CA_FILE": "/var/run/secrets/sipcluster-tls-client-ca/ca.crt",
        "SIPCLUSTER_TLS_CA_FILE": "/var/run/secrets/sipcluster-tls-outbound-ca/ca.crt",
    }
    check(env == want, f"tls: the dispatcher's TLS environment {env}, expected {want}")
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    for name, path in (("tls", "/var/run/secrets/sipcluster-tls"),
                       ("tls-client-ca", "/var/run/secrets/sipcluster-tls-client-ca"),
                       ("tls-outbound-ca", "/var/run/secrets/sipcluster-tls-outbound-ca")):
        m = mounts.get(name, {})
        # A subPath mount is never updated: a renewed certificate would not reach the pod.
        check(m.get("mountPath") == path and m.get("readOnly") is True and "subPath" not in m
              and "subPathExpr" not in m, f"tls: volume {name} mounted whole and read-only at {path}: {m}")
    check(volumes.get("tls", {}).get("secret") == {"secretName": "sipcluster-tls", "defaultMode": 0o400},
          f"tls: the whole existingSecret (no items: ca.crt may be absent): {volumes.get('tls')}")
    check(volumes.get("tls-client-ca", {}).get("secret", {}).get("secretName") == "sipcluster-trunk-ca"
          and volumes["tls-client-ca"]["secret"].get("items") == [{"key": "trunks.pem", "path": "ca.crt"}],
          f"tls: the client CA's key as ca.crt: {volumes.get('tls-client-ca')}")
    ports = {p["name"]: p for p in c["ports"]}
    check(ports.get("sip-tls") == {"name": "sip-tls", "containerPort": 5061, "protocol": "TCP"},
          f"tls: container port sip-tls 5061/TCP: {c['ports']}")
    tcp = by_kind_name(docs, "Service", "sc-sipcluster-dispatcher-tcp")["spec"]["ports"]
    udp = by_kind_name(docs, "Service", "sc-sipcluster-dispatcher-udp")["spec"]["ports"]
    check({"name": "sip-tls", "port": 5061, "targetPort": "sip-tls", "protocol": "TCP"} in tcp,
          f"tls: port 5061 on the TCP Service: {tcp}")
    check(all(p["protocol"] == "UDP" for p in udp), f"tls: the UDP Service stays UDP only: {udp}")
    np = by_kind_name(docs, "NetworkPolicy", "sc-sipcluster-dispatcher")["spec"]["ingress"]
    open_ports = [p for rule in np if "from" not in rule for p in rule["ports"]]
    check({"port": 5061, "protocol": "TCP"} in open_ports, f"tls: 5061/TCP open to anyone in the NetworkPolicy: {np}")
    check(not [d for d in docs if d["kind"] == "Certificate"], "tls: no Certificate with existingSecret alone")
    edge = tomllib.loads(by_kind_name(docs, "ConfigMap", "sc-sipcluster-edge")["data"]["edge.toml"])
    check(edge["security"]["trusted_peers"] == ["tls:trunk.example.net", "198.51.100.0/24"],
          f"tls: trusted peers by certificate name reach the edges: {edge['security']}")
    mixed = render({"tls": {"enabled": True, "existingSecret": "sip-tls"}, "dispatcher": {"service": {"mixedProtocol": True}}})
    sip = by_kind_name(mixed, "Service", "sc-sipcluster-dispatcher-sip")["spec"]["ports"]
    check(sorted((p["port"], p["protocol"]) for p in sip) == [(5060, "TCP"), (5060, "UDP"), (5061, "TCP")],
          f"tls: the mixed Service carries 5061/TCP too: {sip}")
    low = render({"tls": {"enabled": True, "existingSecret": "sip-tls", "port": 443}})
    sc = by_kind_name(low, "Deployment", "sc-sipcluster-dispatcher")["spec"]["template"]["spec"]["containers"][0]
    check(sc["securityContext"].get("capabilities", {}).get("add") == ["NET_BIND_SERVICE"],
          f"tls: port 443 adds NET_BIND_SERVICE: {sc['securityContext']}")

    # cert-manager (the production example): a Certificate whose Secret the dispatcher mounts.
    docs = rendered["production"]
    certs = [d for d in docs if d["kind"] == "Certificate"]
    check(len(certs) == 1, f"production: one Certificate: {[d['metadata']['name'] for d in certs]}")
    if certs:
        cert = certs[0]
        spec = by_kind_name(docs, "Deployment", "sc-sipcluster-dispatcher")["spec"]["template"]["spec"]
        mounted = next((v["secret"]["secretName"] for v in spec["volumes"] if v["name"] == "tls"), None)
        check(cert["apiVersion"] == "cert-manager.io/v1" and cert["metadata"]["namespace"] == "voip",
              f"production: a cert-manager.io/v1 Certificate in the release's namespace: {cert['metadata']}")
        check(cert["spec"]["secretName"] == "sc-sipcluster-dispatcher-tls" == mounted,
              f"production: the Certificate writes the Secret the dispatcher mounts ({mounted}): {cert['spec']}")
        check(cert["spec"]["dnsNames"] == ["sip.voice.example.com", "voice.example.com"]
              and cert["spec"]["commonName"] == "sip.voice.example.com", f"production: dnsNames: {cert['spec']}")
        check(cert["spec"]["issuerRef"] == {"name": "letsencrypt-dns", "kind": "ClusterIssuer", "group": "cert-manager.io"},
              f"production: issuerRef: {cert['spec']['issuerRef']}")
        check((cert["spec"]["duration"], cert["spec"]["renewBefore"]) == ("2160h", "720h"),
              f"production: duration and renewBefore: {cert['spec']}")
        env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
        check(env.get("SIPCLUSTER_TLS_CLIENT_AUTH") == "optional"
              and env.get("SIPCLUSTER_TLS_CLIENT_CA_FILE") == "/var/run/secrets/sipcluster-tls-client-ca/ca.crt"
              and "SIPCLUSTER_TLS_CA_FILE" not in env, f"production: optional client certificates: {env}")
    own = render({"tls": {"enabled": True, "existingSecret": "named-by-me",
                          "certManager": {"enabled": True, "issuerRef": {"name": "ca", "kind": "Issuer"},
                                          "dnsNames": ["sip.example.com"]},
                          "clientAuth": "optional"}})
    cert = next(d for d in own if d["kind"] == "Certificate")
    env = {e["name"]: e.get("value") for e in by_kind_name(own, "Deployment", "sc-sipcluster-dispatcher")
           ["spec"]["template"]["spec"]["containers"][0]["env"]}
    check(cert["spec"]["secretName"] == "named-by-me" and cert["spec"]["issuerRef"]["kind"] == "Issuer",
          f"certManager with existingSecret: the Certificate writes that Secret: {cert['spec']}")
    check(env.get("SIPCLUSTER_TLS_CLIENT_CA_FILE") == "/var/run/secrets/sipcluster-tls/ca.crt",
          f"no clientCaSecret: the client CA is the certificate Secret's ca.crt: {env}")

    # Nothing of it by default.
    docs = rendered["defaults"]
    c = by_kind_name(docs, "Deployment", "sc-sipcluster-dispatcher")["spec"]["template"]["spec"]["containers"][0]
    check(not [e for e in c["env"] if e["name"].startswith("SIPCLUSTER_TLS_")]
          and all(p["name"] != "sip-tls" for p in c["ports"])
          and all(m["name"] != "tls" for m in c["volumeMounts"])
          and not [d for d in docs if d["kind"] == "Certificate"], "defaults: no TLS anywhere")
    print("    tls: environment, whole read-only Secret mounts, container/Service/NetworkPolicy port (existingSecret); "
          "cert-manager Certificate writing the mounted Secret (production); none by default", flush=True)


def websocket_checks(rendered: dict[str, list[dict]]) -> None:
    """SIP over WebSocket: wss: with the TLS certificate (values-tls.yaml), plain ws: on
    port 80 (values-websocket.yaml); the listener, the origins, the port on the container,
    the TCP Service and the NetworkPolicy; nothing of it by default."""
    for name, port_name, port, env_want in (
        ("tls", "sip-wss", 8443, {"SIPCLUSTER_WSS_LISTEN": "0.0.0.0:8443",
                                  "SIPCLUSTER_WS_ALLOWED_ORIGINS": "https://phones.example.com"}),
        ("websocket", "sip-ws", 80, {"SIPCLUSTER_WS_LISTEN": "0.0.0.0:80",
                                     "SIPCLUSTER_WS_ALLOWED_ORIGINS": "https://phones.example.com,https://app.example.com:8443"}),
    ):
        docs = rendered[name]
        c = by_kind_name(docs, "Deployment", "sc-sipcluster-dispatcher")["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in c["env"]
               if e["name"].startswith(("SIPCLUSTER_WS_", "SIPCLUSTER_WSS_"))}
        check(env == env_want, f"{name}: the dispatcher's WebSocket environment {env}, expected {env_want}")
        ports = {p["name"]: p for p in c["ports"]}
        check(ports.get(port_name) == {"name": port_name, "containerPort": port, "protocol": "TCP"},
              f"{name}: container port {port_name} {port}/TCP: {c['ports']}")
        check(not (({"sip-ws", "sip-wss"} - {port_name}) & set(ports)), f"{name}: one WebSocket port only: {c['ports']}")
        tcp = by_kind_name(docs, "Service", "sc-sipcluster-dispatcher-tcp")["spec"]["ports"]
        udp = by_kind_name(docs, "Service", "sc-sipcluster-dispatcher-udp")["spec"]["ports"]
        check({"name": port_name, "port": port, "targetPort": port_name, "protocol": "TCP"} in tcp,
              f"{name}: port {port} on the TCP Service: {tcp}")
        check(all(p["protocol"] == "UDP" for p in udp), f"{name}: the UDP Service stays UDP only: {udp}")
        np = by_kind_name(docs, "NetworkPolicy", "sc-sipcluster-dispatcher")["spec"]["ingress"]
        open_ports = [p for rule in np if "from" not in rule for p in rule["ports"]]
        check({"port": port, "protocol": "TCP"} in open_ports,
              f"{name}: {port}/TCP open to anyone in the NetworkPolicy: {np}")
    sc = by_kind_name(rendered["websocket"], "Deployment", "sc-sipcluster-dispatcher")["spec"]["template"]["spec"]["containers"][0]
    check(sc["securityContext"].get("capabilities", {}).get("add") == ["NET_BIND_SERVICE"],
          f"websocket: port 80 adds NET_BIND_SERVICE: {sc['securityContext']}")
    mixed = render({"websocket": {"enabled": True, "secure": False}, "dispatcher": {"service": {"mixedProtocol": True}}})
    sip = by_kind_name(mixed, "Service", "sc-sipcluster-dispatcher-sip")["spec"]["ports"]
    check(sorted((p["port"], p["protocol"]) for p in sip) == [(5060, "TCP"), (5060, "UDP"), (8080, "TCP")],
          f"websocket: the mixed Service carries 8080/TCP too: {sip}")
    c = by_kind_name(mixed, "Deployment", "sc-sipcluster-dispatcher")["spec"]["template"]["spec"]["containers"][0]
    check(not [e for e in c["env"] if e["name"] == "SIPCLUSTER_WS_ALLOWED_ORIGINS"],
          f"websocket: no allowedOrigins, no origins variable (any origin): {c['env']}")
    for name in ("defaults", "production"):
        docs = rendered[name]
        c = by_kind_name(docs, "Deployment", "sc-sipcluster-dispatcher")["spec"]["template"]["spec"]["containers"][0]
        check(not [e for e in c["env"] if e["name"].startswith(("SIPCLUSTER_WS_", "SIPCLUSTER_WSS_"))]
              and not {"sip-ws", "sip-wss"} & {p["name"] for p in c["ports"]}, f"{name}: no WebSocket")
    print("    websocket: wss: (values-tls) and ws: on 80 (values-websocket): environment, origins, "
          "container/Service/NetworkPolicy port; none by default", flush=True)


def topology_hiding_checks(rendered: dict[str, list[dict]]) -> None:
    """dispatcher.topologyHiding: SIPCLUSTER_TOPOLOGY_HIDING=true on the dispatcher (both
    modes, the production example), on no other container; nothing by default or when false."""
    def hiding(docs: list[dict]) -> dict[str, list]:
        out = {}
        for w in workloads(docs):
            for c in w["spec"]["template"]["spec"]["containers"]:
                found = [e for e in c.get("env", []) if e["name"] == "SIPCLUSTER_TOPOLOGY_HIDING"]
                if found:
                    out[f"{w['kind']}/{w['metadata']['name']}/{c['name']}"] = found
        return out
    on = [{"name": "SIPCLUSTER_TOPOLOGY_HIDING", "value": "true"}]
    for name, docs, want in (
        ("defaults", rendered["defaults"], {}),
        ("hostnetwork", rendered["hostnetwork"], {}),
        ("false", render({"dispatcher": {"topologyHiding": False}}), {}),
        ("true", render({"dispatcher": {"topologyHiding": True}}),
         {"Deployment/sc-sipcluster-dispatcher/dispatcher": on}),
        ("true, hostNetwork", render({"dispatcher": {"topologyHiding": True, "mode": "hostNetwork"}}),
         {"DaemonSet/sc-sipcluster-dispatcher/dispatcher": on}),
        ("production", rendered["production"], {"Deployment/sc-sipcluster-dispatcher/dispatcher": on}),
    ):
        got = hiding(docs)
        check(got == want, f"topology hiding ({name}): SIPCLUSTER_TOPOLOGY_HIDING {got}, expected {want}")
    print("    topology hiding: SIPCLUSTER_TOPOLOGY_HIDING=true on the dispatcher when asked (both modes, "
          "production), nowhere by default or when false", flush=True)


def call_limits_checks(rendered: dict[str, list[dict]]) -> None:
    """callLimits (values-websocket.yaml) are the edges' [call_limits], snake_case, every
    limit whole; no section when no limit is set; edge.config still wins."""
    import tomllib
    edge = tomllib.loads(by_kind_name(rendered["websocket"], "ConfigMap", "sc-sipcluster-edge")["data"]["edge.toml"])
    want = {
        "refuse_code": 403,
        "setup_ttl_secs": 240,
        "account": {"calls": 4, "cps": 2},
        "domain": {"calls": 500, "cps": 0},
        "accounts": {"alice@example.com": {"calls": 2, "cps": 1}, "pbx@example.com": {"calls": 0, "cps": 0}},
        "domains": {"example.com": {"calls": 100, "cps": 10}},
        "trunks": {"pstn": {"calls": 30, "cps": 5}},
        "trunk_peers": {"pstn": ["192.0.2.0/24", "tls:carrier.example.net"]},
    }
    check(edge.get("call_limits") == want, f"websocket: the edges' call_limits {edge.get('call_limits')}, expected {want}")
    # An inbound-only trunk (values-trunk-peers.yaml): limited by its peers alone, no
    # outbound rule routing to it (the render would fail for a trunk without either).
    edge = tomllib.loads(by_kind_name(rendered["trunk-peers"], "ConfigMap", "sc-sipcluster-edge")["data"]["edge.toml"])
    want = {
        "refuse_code": 486,
        "setup_ttl_secs": 200,
        "account": {"calls": 0, "cps": 0},
        "domain": {"calls": 0, "cps": 0},
        "trunks": {"carrier": {"calls": 20, "cps": 2}},
        "trunk_peers": {"carrier": ["192.0.2.0/24", "2001:db8:5::/48", "198.51.100.7", "tls:carrier.example.net"]},
    }
    check(edge.get("call_limits") == want, f"trunk-peers: the edges' call_limits {edge.get('call_limits')}, expected {want}")
    check("outbound" not in edge, f"trunk-peers: no outbound rule, the trunk is inbound only: {edge.get('outbound')}")
    for name in ("defaults", "tls", "production"):
        edge = tomllib.loads(by_kind_name(rendered[name], "ConfigMap", "sc-sipcluster-edge")["data"]["edge.toml"])
        check("call_limits" not in edge, f"{name}: no call_limits without a limit: {edge.get('call_limits')}")
    # One limit alone renders the section with the defaults; edge.config is merged over it.
    docs = render({"callLimits": {"domains": {"example.com": {"cps": 10}}},
                   "edge": {"config": {"call_limits": {"refuse_code": 503}}}})
    edge = tomllib.loads(by_kind_name(docs, "ConfigMap", "sc-sipcluster-edge")["data"]["edge.toml"])
    want = {"refuse_code": 503, "setup_ttl_secs": 200, "account": {"calls": 0, "cps": 0},
            "domain": {"calls": 0, "cps": 0}, "domains": {"example.com": {"calls": 0, "cps": 10}}}
    check(edge.get("call_limits") == want, f"one domain's limit, edge.config over it: {edge.get('call_limits')}, expected {want}")
    print("    call limits: every callLimits key in the edges' [call_limits] (values-websocket), trunkPeers "
          "as trunk_peers (an inbound-only trunk: values-trunk-peers), none without a limit, edge.config "
          "over them", flush=True)


EDGE_TOKEN_FILE = "/var/run/secrets/sipcluster/edge-token"


def edge_token_files(docs: list[dict], w: dict) -> dict[str, dict]:
    """The files in a workload's first container holding the `edge-token` key of the
    Secret the edges take theirs from (the chart's or secrets.existingSecret): path ->
    the volume mount."""
    edge = next(x for x in workloads(docs) if x["metadata"]["labels"]["app.kubernetes.io/component"] == "edge")
    edge_secrets = {v["secret"]["secretName"] for v in edge["spec"]["template"]["spec"]["volumes"]
                    if "secret" in v and any(i["key"] == "edge-token" for i in v["secret"].get("items", []))}
    check(len(edge_secrets) == 1, f"the edges take their token from one Secret: {edge_secrets}")
    spec = w["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    out = {}
    for m in spec["containers"][0].get("volumeMounts", []):
        sec = volumes[m["name"]].get("secret")
        if not sec or sec["secretName"] not in edge_secrets:
            continue
        items = sec.get("items") or [{"key": "edge-token", "path": "edge-token"}]
        for it in items:
            if it["key"] == "edge-token":
                out[m["mountPath"].rstrip("/") + "/" + it["path"]] = m
    return out


def bans_checks(rendered: dict[str, list[dict]]) -> None:
    """dispatcher.bans: the dispatcher's [bans]; shared through the location service the
    edges use with the edges' token (mounted read-only), by default; kept local when
    shareWithCluster is false; the location NetworkPolicy follows."""
    import tomllib

    def dispatcher_of(docs: list[dict]) -> tuple[dict, dict, dict]:
        w = next(x for x in workloads(docs) if x["metadata"]["labels"]["app.kubernetes.io/component"] == "dispatcher")
        bans = tomllib.loads(by_kind_name(docs, "ConfigMap", "sc-sipcluster-dispatcher")["data"]["dispatcher.toml"])["bans"]
        edge = tomllib.loads(by_kind_name(docs, "ConfigMap", "sc-sipcluster-edge")["data"]["edge.toml"])
        return w, bans, edge

    def location_callers(docs: list[dict]) -> list[dict]:
        np = by_kind_name(docs, "NetworkPolicy", "sc-sipcluster-location")["spec"]["ingress"]
        return next(r["from"] for r in np if {"port": 50051, "protocol": "TCP"} in r["ports"])

    dispatchers = {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "sipcluster", "app.kubernetes.io/instance": "sc",
                                                   "app.kubernetes.io/component": "dispatcher"}}}
    shared = {
        "defaults": ("http://sc-sipcluster-location:50051", [], 2000, 60, 250),
        "production": ("http://sc-sipcluster-location:50051", [], 2000, 60, 250),
        "hostnetwork": ("http://sc-sipcluster-location:50051", [], 2000, 60, 250),
        "tls": ("http://sc-sipcluster-location:50051", [], 2000, 60, 250),
        "bans-external": ("http://location.voip-core.svc:50051", ["192.0.2.0/24"], 2000, 60, 250),
        "bans": (None, ["203.0.113.0/24", "2001:db8:5::/48", "198.51.100.7"], 500, 300, 1000),
        "allow-list": ("http://sc-sipcluster-location:50051", ["203.0.113.0/24", "198.51.100.7"], 0, 60, 250),
        "false": (None, [], 2000, 60, 250),
    }
    extra = {
        "allow-list": render({"dispatcher": {"bans": {"allowList": ["203.0.113.0/24", "198.51.100.7"], "floodRate": 0}}}),
        "false": render({"dispatcher": {"bans": {"shareWithCluster": False}}}),
    }
    for name, (endpoint, allow, rate, ban_secs, sync_ms) in shared.items():
        docs = extra.get(name) or rendered[name]
        w, bans, edge = dispatcher_of(docs)
        want = {"flood_rate": rate, "flood_ban_secs": ban_secs, "allow_list": allow, "sync_ms": sync_ms}
        if endpoint:
            want |= {"location_endpoint": endpoint, "token_file": EDGE_TOKEN_FILE}
        check(bans == want, f"bans ({name}): the dispatcher's [bans] {bans}, expected {want}")
        files = edge_token_files(docs, w)
        if endpoint:
            # The same service and the same token as the edges.
            check(bans.get("location_endpoint") == edge["location"]["endpoint"],
                  f"bans ({name}): the dispatcher's location {bans.get('location_endpoint')} is the edges' "
                  f"{edge['location']['endpoint']}")
            m = files.get(bans.get("token_file", ""))
            check(m is not None and m.get("readOnly") is True and "subPath" not in m,
                  f"bans ({name}): the edge token is mounted read-only at {bans.get('token_file')} in the dispatcher: {files}")
        else:
            check(not files, f"bans ({name}): no edge token in the dispatcher's pod: {files}")
            env = {e["name"] for e in w["spec"]["template"]["spec"]["containers"][0]["env"]}
            check(not env & {"SIPCLUSTER_LOCATION", "SIPCLUSTER_EDGE_TOKEN_FILE"},
                  f"bans ({name}): no location in the dispatcher's environment: {sorted(env)}")
        if any(d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "sc-sipcluster-location" for d in docs):
            callers = location_callers(docs)
            check((dispatchers in callers) == bool(endpoint),
                  f"bans ({name}): the location NetworkPolicy {'admits' if endpoint else 'keeps out'} the dispatchers: {callers}")
    # Dispatchers on the host network reach the location service from their node's address.
    callers = location_callers(rendered["hostnetwork"])
    check({"ipBlock": {"cidr": "10.0.0.0/16"}} in callers,
          f"bans (hostnetwork): the location NetworkPolicy admits the nodeCIDRs: {callers}")
    # The chart's secret (production: an operator's) is the one the edges mount.
    w, _, _ = dispatcher_of(rendered["production"])
    secret = next(v["secret"]["secretName"] for v in w["spec"]["template"]["spec"]["volumes"] if v["name"] == "tokens")
    check(secret == "sipcluster-secrets", f"bans (production): the edge token from secrets.existingSecret: {secret}")
    # dispatcher.config still wins, key by key.
    docs = render({"dispatcher": {"config": {"bans": {"timeout_ms": 400, "flood_rate": 100}}}})
    _, bans, _ = dispatcher_of(docs)
    check(bans.get("timeout_ms") == 400 and bans.get("flood_rate") == 100 and bans.get("location_endpoint"),
          f"bans: dispatcher.config merged over the chart's [bans]: {bans}")
    # Without the edges a dispatcher shares bans through edge.externalLocation, and with
    # neither location service nor sharing it renders (local bans).
    for vals, want in (
        ({"location": {"enabled": False}, "edge": {"enabled": False, "externalLocation": "http://loc.core:50051"}},
         "http://loc.core:50051"),
        ({"location": {"enabled": False}, "edge": {"enabled": False}, "dispatcher": {"bans": {"shareWithCluster": False}}},
         None),
    ):
        docs = render(vals)
        bans = tomllib.loads(by_kind_name(docs, "ConfigMap", "sc-sipcluster-dispatcher")["data"]["dispatcher.toml"])["bans"]
        check(bans.get("location_endpoint") == want, f"bans ({vals}): location_endpoint {bans.get('location_endpoint')}, expected {want}")
    print("    bans: [bans] from dispatcher.bans; shared by default through the edges' location service with "
          "the edges' token (mounted read-only, NetworkPolicy open to the dispatchers, nodeCIDRs on the host "
          "network), external location too; local with shareWithCluster false; allowList; config over it", flush=True)


# --- the binary's own validation of what the chart passes -------------------------------


class Pod:
    """A container of a rendered workload, laid out on disk the way the kubelet would:
    its ConfigMaps and Secrets written under a private root, every path the container
    sees moved there, its environment resolved."""

    def __init__(self, docs: list[dict], workload: dict, root: Path, secret_values: dict[str, str]):
        self.workload = workload
        spec = workload["spec"]["template"]["spec"]
        self.container = spec["containers"][0]
        self.component = workload["metadata"]["labels"]["app.kubernetes.io/component"]
        self.root = root
        self.moves: list[tuple[str, str]] = []
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for t in workload["spec"].get("volumeClaimTemplates", []):
            volumes[t["metadata"]["name"]] = {"name": t["metadata"]["name"], "emptyDir": {}}
        for m in self.container.get("volumeMounts", []):
            target = root / m["mountPath"].lstrip("/")
            target.mkdir(parents=True, exist_ok=True)
            self.moves.append((m["mountPath"], str(target)))
            v = volumes[m["name"]]
            if "configMap" in v:
                cm = by_kind_name(docs, "ConfigMap", v["configMap"]["name"])
                for k, text in cm["data"].items():
                    (target / k).write_text(text)
            elif "secret" in v:
                name = v["secret"]["secretName"]
                items = v["secret"].get("items")
                chart_secret = next((d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == name), None)
                if items is None:
                    # An operator's TLS Secret: the files a cert-manager Secret holds.
                    items = [{"key": k, "path": k} for k in ("ca.crt", "tls.crt", "tls.key")]
                for it in items:
                    if chart_secret is not None:
                        data = base64.b64decode(chart_secret["data"][it["key"]]).decode()
                    elif it["path"] == "users.toml":
                        data = (ROOT / "deploy/all-in-one/users.toml").read_text()
                    elif it["path"] in TLS_SECRET_FILES:
                        data = TLS_SECRET_FILES[it["path"]]
                    else:
                        data = secret_values.setdefault(f"{name}/{it['key']}", secrets.token_hex(24))
                    f = target / it["path"]
                    f.write_text(data)
                    f.chmod(0o400)
        # Longest first: /var/run/secrets/sipcluster before /var/run/secrets.
        self.moves.sort(key=lambda m: -len(m[0]))
        self.env = self._env(docs, secret_values)

    def moved(self, s: str) -> str:
        # One pass, whole path components only: /etc/sipcluster is not a prefix of
        # /etc/sipcluster-users, and a moved path is never moved again.
        if not self.moves:
            return s
        dst = dict(self.moves)
        pattern = "|".join(re.escape(src) for src, _ in self.moves)
        return re.sub(rf"(?<![\w./-])({pattern})(?=/|$|[^\w.-])", lambda m: dst[m.group(1)], s)

    def _env(self, docs: list[dict], secret_values: dict[str, str]) -> dict[str, str]:
        env: dict[str, str] = {}
        for e in self.container.get("env", []):
            if "value" in e:
                # Kubernetes expands $(VAR) from the variables listed before.
                value = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), e["value"])
            elif "fieldRef" in e["valueFrom"]:
                value = FIELD_VALUES[e["valueFrom"]["fieldRef"]["fieldPath"]]
            elif "secretKeyRef" in e["valueFrom"]:
                ref = e["valueFrom"]["secretKeyRef"]
                s = next((d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == ref["name"]), None)
                value = (base64.b64decode(s["data"][ref["key"]]).decode() if s
                         else secret_values.setdefault(f"{ref['name']}/{ref['key']}", secrets.token_hex(24)))
            else:
                raise ValueError(f"env {e} not understood by this test")
            env[e["name"]] = self.moved(value)
        return env

    def args(self) -> list[str]:
        return [self.moved(a) for a in self.container["args"]]

    def rewrite_config_files(self, fn) -> None:
        """Edit every mounted config file (for the runs that must listen on loopback)."""
        for src, dst in self.moves:
            if src == "/etc/sipcluster":
                for f in Path(dst).glob("*.toml"):
                    f.write_text(fn(f.read_text()))

    def port(self, name: str) -> int:
        return next(p["containerPort"] for p in self.container["ports"] if p["name"] == name)


def moved_config_files(pod: Pod) -> None:
    """The mounted TOML names paths the container sees: move them under the root."""
    pod.rewrite_config_files(pod.moved)


def check_config(binary: str, rendered: dict[str, list[dict]], workdir: Path) -> None:
    count = 0
    hiding = 0
    sharing = local = 0
    peered = 0
    for name, docs in rendered.items():
        for w in workloads(docs):
            if w["metadata"]["labels"]["app.kubernetes.io/component"] == "redis":
                continue  # not ours: the development Redis image
            root = workdir / f"pod-{name}-{w['metadata']['name']}"
            pod = Pod(docs, w, root, {})
            moved_config_files(pod)
            args = pod.args()
            service = args[0]
            cmd = [binary, "check-config", service, *args[1:]]
            env = {"PATH": os.environ.get("PATH", ""), "HOME": str(root), **pod.env}
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
            check(r.returncode == 0,
                  f"{name}: `sipcluster check-config {service}` refuses what the chart gives {w['kind']}/{w['metadata']['name']}:\n"
                  f"{r.stderr}\nargs {args}\nenv {sorted(pod.env)}")
            if r.returncode != 0:
                continue
            count += 1
            resolved = tomllib_loads(r.stdout)
            if service == "dispatcher":
                want = pod.env.get("SIPCLUSTER_TOPOLOGY_HIDING") == "true"
                check(resolved.get("topology_hiding") is want,
                      f"{name}: the dispatcher resolves topology_hiding {resolved.get('topology_hiding')}, "
                      f"the chart asked for {want}")
                hiding += want
                # [bans]: the location service and the edge token the chart names, the
                # token file read from the mounted Secret.
                asked = tomllib_loads(by_kind_name(docs, "ConfigMap", "sc-sipcluster-dispatcher")
                                      ["data"]["dispatcher.toml"]).get("bans", {})
                got = resolved.get("bans", {})
                check(got.get("location_endpoint") == asked.get("location_endpoint")
                      and got.get("allow_list", []) == asked.get("allow_list", [])
                      and got.get("flood_rate") == asked.get("flood_rate"),
                      f"{name}: the dispatcher resolves bans {got}, the chart asked for {asked}")
                if asked.get("location_endpoint"):
                    token = Path(str(got.get("token_file")))
                    check(token == Path(pod.moved(EDGE_TOKEN_FILE)) and len(token.read_text().strip()) >= 16,
                          f"{name}: the dispatcher reads the edge token from the mounted Secret: {got}")
                    sharing += 1
                else:
                    check("token_file" not in got, f"{name}: a local dispatcher names no edge token: {got}")
                    local += 1
            if service == "edge":
                # [call_limits]: the trunks' peers and limits as the chart rendered them.
                asked = tomllib_loads(by_kind_name(docs, "ConfigMap", "sc-sipcluster-edge")
                                      ["data"]["edge.toml"]).get("call_limits", {})
                got = resolved.get("call_limits", {})
                check(got.get("trunk_peers", {}) == asked.get("trunk_peers", {})
                      and got.get("trunks", {}) == asked.get("trunks", {}),
                      f"{name}: the edge resolves trunk_peers {got.get('trunk_peers')} and trunks {got.get('trunks')}, "
                      f"the chart asked for {asked.get('trunk_peers')} and {asked.get('trunks')}")
                peered += bool(asked.get("trunk_peers"))
            metrics = resolved.get("metrics_listen") or resolved.get("metrics", {}).get("listen")
            check(metrics is not None, f"{name} {service}: no metrics listener in the resolved configuration")
            if metrics is None:
                continue
            port = int(str(metrics).rsplit(":", 1)[1])
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                p = pod.container.get(probe)
                check(p is not None, f"{name} {service}: no {probe}")
                if p is None:
                    continue
                target = p["httpGet"]["port"]
                target = pod.port(target) if isinstance(target, str) else target
                check(target == port,
                      f"{name} {service}: {probe} hits port {target}, the service listens for HTTP on {port}")
    check(hiding > 0, "check-config ran no dispatcher with topology hiding on (the production example)")
    check(sharing > 0 and local > 0, f"check-config ran dispatchers sharing bans ({sharing}) and local ones ({local})")
    check(peered > 0, "check-config ran no edge with trunk peers (values-websocket, values-trunk-peers)")
    print(f"    check-config accepted the flags, environment and ConfigMaps of {count} containers; "
          f"every probe hits the metrics port the service resolves; {hiding} dispatcher(s) resolve "
          f"topology hiding on as asked, the others off; {sharing} dispatcher(s) share bans through the "
          f"location service with the mounted edge token, {local} keep their own; {peered} edge(s) resolve "
          f"the trunk peers and limits the chart rendered", flush=True)


def tomllib_loads(text: str) -> dict:
    import tomllib
    return tomllib.loads(text)


def http_get(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError):
        return 0


def probe_paths_served(binary: str, docs: list[dict], workdir: Path) -> None:
    """Start each service from its rendered files (listeners moved to loopback) and ask
    every probe path the chart uses: 200 or 503 (unready: no Redis, no edge here), never
    404 or nothing."""
    for w in workloads(docs):
        component = w["metadata"]["labels"]["app.kubernetes.io/component"]
        if component == "redis":
            continue
        root = workdir / f"run-{w['metadata']['name']}"
        pod = Pod(docs, w, root, {})
        metrics = free_port()
        pod.rewrite_config_files(lambda t: re.sub(r'"0\.0\.0\.0:(\d+)"', lambda m: f'"127.0.0.1:{free_port()}"', pod.moved(t)))
        # The pod IP stands for the addresses the environment gives; loopback here.
        env = {"PATH": os.environ.get("PATH", ""), "HOME": str(root), **pod.env,
               "SIPCLUSTER_METRICS": f"127.0.0.1:{metrics}"}
        args = pod.args()
        extra = {
            "edge": [],
            "location": [],
            # No API server for this run: the edges are static (discovery is checked below).
            "dispatcher": ["--discovery", "static", "--edges", "127.0.0.1:9"],
            "media-relay": ["--bind-v4", "127.0.0.1", "--ports", f"{40000 + (os.getpid() % 500) * 20}-{40019 + (os.getpid() % 500) * 20}"],
        }[args[0]]
        log = open(root / "service.log", "w")
        proc = subprocess.Popen([binary, *args, *extra], env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            paths = {p["httpGet"]["path"] for k in ("startupProbe", "livenessProbe", "readinessProbe")
                     for p in [pod.container[k]]}
            deadline = time.time() + 20
            codes: dict[str, int] = {}
            while time.time() < deadline:
                codes = {p: http_get(f"http://127.0.0.1:{metrics}{p}") for p in sorted(paths)}
                if all(c in (200, 503) for c in codes.values()):
                    break
                if proc.poll() is not None:
                    break
                time.sleep(0.2)
            check(all(c in (200, 503) for c in codes.values()),
                  f"{component}: probe paths answered {codes} (200 or 503 expected); log:\n{(root / 'service.log').read_text()[-2000:]}")
            print(f"    {component}: probe paths {codes} on a running service", flush=True)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)


# --- SIP over TLS served from the rendered pod -----------------------------------------------


def make_pki(workdir: Path) -> dict[str, Path]:
    """A throwaway CA and what it signed (EC P-256, two days): the dispatcher's certificate,
    the one a renewal brings, a trunk's client certificate."""
    d = workdir / "pki"
    d.mkdir()

    def openssl(*args: str) -> None:
        r = subprocess.run(["openssl", *args], cwd=d, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"openssl {' '.join(args)}: {r.stderr}")

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=sipcluster test CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    for name, dns, usage in (("server", "sip.example.com", "serverAuth,clientAuth"),
                             ("renewed", "sip.example.com", "serverAuth,clientAuth"),
                             ("trunk", "trunk.example.net", "clientAuth")):
        openssl("req", "-new", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={dns}")
        (d / f"{name}.ext").write_text(
            f"subjectAltName=DNS:{dns}\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
            f"extendedKeyUsage={usage}\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-days", "2",
                "-set_serial", str(secrets.randbits(62)), "-extfile", f"{name}.ext", "-out", f"{name}.crt")
    return {p.name: p for p in d.iterdir()}


def kubelet_secret_dir(target: Path, files: dict[str, str]) -> None:
    """Write (or update) a Secret volume as the kubelet does (its AtomicWriter): the files
    in a new timestamped directory, `..data` renamed over to point at it, each key a
    symbolic link through `..data`. A subPath mount would keep the old file instead."""
    new = target / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{time.monotonic_ns()}"
    new.mkdir()
    for k, v in files.items():
        (new / k).write_text(v)
        (new / k).chmod(0o400)
    old = (target / "..data").resolve() if (target / "..data").is_symlink() else None
    (target / "..data_tmp").symlink_to(new.name)
    os.rename(target / "..data_tmp", target / "..data")
    for k in files:
        link = target / k
        if not link.is_symlink():
            link.unlink(missing_ok=True)
            link.symlink_to(f"..data/{k}")
    if old is not None:
        shutil.rmtree(old)


def tls_handshake(port: int, pki: dict[str, Path], client_cert: bool) -> tuple[int | None, str]:
    """The serial of the certificate the dispatcher serves for sip.example.com (None and
    why when the connection is refused); client_cert: present the trunk's."""
    ctx = ssl.create_default_context(cafile=str(pki["ca.crt"]))
    if client_cert:
        ctx.load_cert_chain(str(pki["trunk.crt"]), str(pki["trunk.key"]))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as raw:
            with ctx.wrap_socket(raw, server_hostname="sip.example.com") as t:
                serial = int(t.getpeercert()["serialNumber"], 16)
                # TLS 1.3: a refused client certificate shows after the handshake. An
                # OPTIONS is answered (or ignored) by a dispatcher that accepted us.
                t.settimeout(1.0)
                t.sendall(b"OPTIONS sip:sip.example.com;transport=tls SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5999"
                          b";branch=z9hG4bK-helm\r\nFrom: <sip:t@trunk.example.net>;tag=1\r\nTo: <sip:sip.example.com>"
                          b"\r\nCall-ID: helm-tls\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
                try:
                    if t.recv(1) == b"":
                        return None, "closed by the dispatcher"
                except TimeoutError:
                    pass
                return serial, ""
    except (OSError, ssl.SSLError) as e:
        return None, str(e)


def wss_upgrade(port: int, pki: dict[str, Path], origin: str) -> str:
    """The status line a browser's secure WebSocket upgrade (subprotocol sip, from
    `origin`, presenting the trunk's certificate) gets from the dispatcher."""
    ctx = ssl.create_default_context(cafile=str(pki["ca.crt"]))
    ctx.load_cert_chain(str(pki["trunk.crt"]), str(pki["trunk.key"]))
    key = base64.b64encode(secrets.token_bytes(16)).decode()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as raw:
            with ctx.wrap_socket(raw, server_hostname="sip.example.com") as t:
                t.sendall(f"GET / HTTP/1.1\r\nHost: sip.example.com:{port}\r\nUpgrade: websocket\r\n"
                          f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                          f"Sec-WebSocket-Protocol: sip\r\nOrigin: {origin}\r\n\r\n".encode())
                head = b""
                while b"\r\n" not in head:
                    chunk = t.recv(256)
                    if not chunk:
                        break
                    head += chunk
                return head.split(b"\r\n", 1)[0].decode(errors="replace")
    except (OSError, ssl.SSLError) as e:
        return f"error: {e}"


def serial_of(cert: Path) -> int:
    r = subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", "-serial"], capture_output=True, text=True, check=True)
    return int(r.stdout.strip().split("=", 1)[1], 16)


def tls_served(binary: str, docs: list[dict], workdir: Path, pki: dict[str, Path]) -> None:
    """The dispatcher of values-tls.yaml, started from its rendered pod (listeners moved to
    loopback, its TLS Secret laid out as the kubelet does): it serves the Secret's
    certificate, refuses a client without a certificate (clientAuth required, CA from its
    own Secret), and serves a renewed certificate once the Secret volume is updated; its
    secure WebSocket listener upgrades a browser of the allowed origin, refuses another."""
    w = by_kind_name(docs, "Deployment", "sc-sipcluster-dispatcher")
    root = workdir / "run-tls-dispatcher"
    pod = Pod(docs, w, root, {})
    pod.rewrite_config_files(lambda t: re.sub(r'"0\.0\.0\.0:(\d+)"', lambda m: f'"127.0.0.1:{free_port()}"', pod.moved(t)))
    certs = Path(pod.moved("/var/run/secrets/sipcluster-tls"))
    for f in ("tls.crt", "tls.key", "ca.crt"):
        (certs / f).unlink()
    kubelet_secret_dir(certs, {"tls.crt": pki["server.crt"].read_text(), "tls.key": pki["server.key"].read_text(),
                               "ca.crt": pki["ca.crt"].read_text()})
    port, wss_port = free_port(), free_port()
    check(pod.env.get("SIPCLUSTER_WSS_LISTEN") == f"0.0.0.0:{pod.port('sip-wss')}",
          f"tls: the dispatcher listens for wss: on its sip-wss port: {pod.env}")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(root), **pod.env,
           "SIPCLUSTER_TLS_LISTEN": f"127.0.0.1:{port}", "SIPCLUSTER_WSS_LISTEN": f"127.0.0.1:{wss_port}",
           "SIPCLUSTER_METRICS": f"127.0.0.1:{free_port()}"}
    log_path = root / "dispatcher.log"
    proc = subprocess.Popen([binary, *pod.args(), "--discovery", "static", "--edges", "127.0.0.1:9"],
                            env=env, stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
    try:
        first, renewed = serial_of(pki["server.crt"]), serial_of(pki["renewed.crt"])
        served, why = None, ""
        deadline = time.time() + 20
        while time.time() < deadline and proc.poll() is None:
            served, why = tls_handshake(port, pki, client_cert=True)
            if served is not None:
                break
            time.sleep(0.2)
        check(served == first, f"tls: the dispatcher serves the Secret's certificate ({served} != {first}: {why}); "
                               f"log:\n{log_path.read_text()[-2000:]}")
        if served != first:
            return
        anonymous, refusal = tls_handshake(port, pki, client_cert=False)
        check(anonymous is None, "tls: clientAuth required, yet a client without a certificate was served")
        allowed = wss_upgrade(wss_port, pki, "https://phones.example.com")
        other = wss_upgrade(wss_port, pki, "https://evil.example.net")
        check(allowed.startswith("HTTP/1.1 101"), f"tls: wss: from the allowed origin upgraded: {allowed!r}; "
                                                  f"log:\n{log_path.read_text()[-2000:]}")
        check(other.startswith("HTTP/1.1 403"), f"tls: wss: from another origin refused 403: {other!r}")
        kubelet_secret_dir(certs, {"tls.crt": pki["renewed.crt"].read_text(), "tls.key": pki["renewed.key"].read_text(),
                                   "ca.crt": pki["ca.crt"].read_text()})
        swapped = time.time()
        reload_secs = int(pod.env["SIPCLUSTER_TLS_RELOAD_SECS"])
        while time.time() < swapped + min(reload_secs, 20) + 10 and proc.poll() is None:
            served, why = tls_handshake(port, pki, client_cert=True)
            if served == renewed:
                break
            time.sleep(0.2)
        check(served == renewed and proc.poll() is None,
              f"tls: the renewed certificate is served without a restart ({served} != {renewed}: {why}); "
              f"log:\n{log_path.read_text()[-2000:]}")
        if (served != renewed or anonymous is not None or not allowed.startswith("HTTP/1.1 101")
                or not other.startswith("HTTP/1.1 403")):
            return
        print(f"    tls: the rendered dispatcher served the Secret's certificate, refused a client without one "
              f"({refusal}), upgraded wss: from the allowed origin ({allowed}) and refused another ({other}), "
              f"and served the renewed one {time.time() - swapped:.1f} s after the "
              f"Secret volume changed (reloadSecs {reload_secs}), same process", flush=True)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)


# --- a real kube-apiserver ------------------------------------------------------------------


class Kube:
    def __init__(self, kubeconfig: str):
        kc = yaml.safe_load(Path(kubeconfig).read_text())
        ctx = next(c for c in kc["contexts"] if c["name"] == kc["current-context"])["context"]
        cluster = next(c for c in kc["clusters"] if c["name"] == ctx["cluster"])["cluster"]
        user = next(u for u in kc["users"] if u["name"] == ctx["user"])["user"]
        self.server = cluster["server"]
        self.token = user["token"]
        self.ssl = ssl.create_default_context()
        self.ssl.check_hostname = False
        self.ssl.verify_mode = ssl.CERT_NONE  # the private test server's self-signed cert

    def call(self, method: str, path: str, body=None, content_type="application/json"):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, context=self.ssl, timeout=20) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def served(self) -> set[str]:
        groups = {"v1"}
        _, apis = self.call("GET", "/apis")
        for g in apis.get("groups", []):
            for v in g["versions"]:
                groups.add(v["groupVersion"])
        return groups

    def path(self, obj: dict, ns: str) -> str:
        api = obj["apiVersion"]
        base = f"/api/{api}" if "/" not in api else f"/apis/{api}"
        _, res = self.call("GET", base)
        plural = next(r["name"] for r in res["resources"] if r["kind"] == obj["kind"] and "/" not in r["name"])
        namespaced = next(r["namespaced"] for r in res["resources"] if r["name"] == plural)
        return f"{base}/namespaces/{ns}/{plural}" if namespaced else f"{base}/{plural}"


def kube_checks(binary: str, kubeconfig: str, workdir: Path) -> None:
    kube = Kube(kubeconfig)
    ns = f"sc-helm-{os.getpid()}"
    status, body = kube.call("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    check(status == 201, f"namespace {ns}: {status} {body}")
    try:
        _kube_checks(kube, binary, ns, workdir)
    finally:
        kube.call("DELETE", f"/api/v1/namespaces/{ns}")


def _kube_checks(kube: Kube, binary: str, ns: str, workdir: Path) -> None:
    served = kube.served()
    docs = render({}, namespace=ns)
    # The API server built here is older than the chart's defaults (Helm assumes a current
    # cluster offline): objects go in at the newest version it serves, as the chart's
    # Capabilities switch would pick on that cluster.
    fallback = {"autoscaling/v2": "autoscaling/v2beta2", "policy/v1": "policy/v1beta1"}
    for d in docs:
        if d["apiVersion"] not in served and fallback.get(d["apiVersion"]) in served:
            d["apiVersion"] = fallback[d["apiVersion"]]
    for d in docs:
        status, body = kube.call("POST", kube.path(d, ns) + "?dryRun=All&fieldValidation=Strict", d)
        check(status in (200, 201), f"server-side dry run of {d['kind']}/{d['metadata']['name']}: {status} {body.get('message')}")
    for d in docs:
        status, body = kube.call("POST", kube.path(d, ns), d)
        check(status in (200, 201), f"create {d['kind']}/{d['metadata']['name']}: {status} {body.get('message')}")
    print(f"    kube-apiserver: {len(docs)} objects accepted (server-side dry run, then created) in {ns}", flush=True)

    # No controllers run here: the test plays the Deployment controller and the kubelet.
    edge = by_kind_name(docs, "Deployment", "sc-sipcluster-edge")
    template = edge["spec"]["template"]
    for i in range(2):
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": f"sc-sipcluster-edge-{i}", "labels": template["metadata"]["labels"]},
               "spec": template["spec"]}
        status, body = kube.call("POST", f"/api/v1/namespaces/{ns}/pods", pod)
        check(status == 201, f"edge pod {i}: {status} {body.get('message')}")
        st = {"status": {"podIP": f"127.0.0.{20 + i}", "phase": "Running",
                         "conditions": [{"type": "Ready", "status": "True"}]}}
        status, body = kube.call("PATCH", f"/api/v1/namespaces/{ns}/pods/sc-sipcluster-edge-{i}/status", st,
                                 content_type="application/merge-patch+json")
        check(status == 200, f"edge pod {i} ready: {status} {body.get('message')}")

    # The dispatcher with nothing but its ServiceAccount's token.
    sa = "sc-sipcluster-dispatcher"
    status, tr = kube.call("POST", f"/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token",
                           {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}})
    check(status == 201, f"a token for {sa}: {status} {tr.get('message')}")
    if status != 201:
        return
    kc = workdir / "dispatcher-kubeconfig"
    kc.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "c", "cluster": {"server": kube.server, "insecure-skip-tls-verify": True}}],
        "users": [{"name": "sa", "user": {"token": tr["status"]["token"]}}],
        "contexts": [{"name": "sa", "context": {"cluster": "c", "user": "sa", "namespace": ns}}],
    }))
    dispatcher = by_kind_name(docs, "Deployment", "sc-sipcluster-dispatcher")
    role = by_kind_name(docs, "Role", "sc-sipcluster-dispatcher")
    verbs = role["rules"][0]["verbs"]
    check([r["resources"] for r in role["rules"]] == [["pods"]], f"the Role grants pods only: {role['rules']}")

    def discovers(run: str, settle: bool = False) -> tuple[bool, str, str]:
        """Whether the dispatcher lists both edge pods, what it listed, and its whole log.
        settle: run the whole 15 s, so that a refused watch after a permitted list shows
        in the log."""
        root = workdir / f"disp-{run}"
        pod = Pod(docs, dispatcher, root, {})
        moved_config_files(pod)
        admin = free_port()
        env = {"PATH": os.environ.get("PATH", ""), "HOME": str(root), **pod.env,
               "SIPCLUSTER_METRICS": f"127.0.0.1:{free_port()}"}
        args = [*pod.args(), "--listen", f"127.0.0.1:{free_port()}", "--internal", f"127.0.0.1:{free_port()}",
                "--admin", f"127.0.0.1:{admin}", "--kubeconfig", str(kc)]
        log_path = root / "dispatcher.log"
        proc = subprocess.Popen([binary, *args], env=env, stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
        token = root / "var/run/secrets/sipcluster/admin-token"
        found, out = False, ""
        try:
            deadline = time.time() + 15
            while time.time() < deadline and proc.poll() is None:
                r = subprocess.run([binary, "dispatcher-admin", "--admin", f"http://127.0.0.1:{admin}",
                                    "--token-file", str(token), "targets"], capture_output=True, text=True, timeout=10)
                out = r.stdout
                if "sc-sipcluster-edge-0" in out and "sc-sipcluster-edge-1" in out:
                    found = True
                    if not settle:
                        break
                time.sleep(0.3)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return found, out, log_path.read_text()

    def shown(out: str, log: str) -> str:
        # No location service runs here: the chart's dispatcher retries the cluster's ban
        # list every bans.syncMs and logs each failure; those lines would bury the
        # discovery's within a few seconds.
        lines = [ln for ln in log.splitlines() if "location_client" not in ln and "dispatcher::bans" not in ln]
        return out + "\n".join(lines)[-1500:]

    found, out, log = discovers("chart-role")
    check(found and "forbidden" not in (out + log).lower(),
          f"the dispatcher with the chart's Role finds both edge pods, nothing refused:\n{shown(out, log)}")
    print(f"    the dispatcher, holding only its ServiceAccount token, found the 2 edge pods (Role verbs {verbs})", flush=True)
    role_path = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles/sc-sipcluster-dispatcher"
    for verb in verbs:
        fewer = [v for v in verbs if v != verb]
        patch = {"rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": fewer}]}
        status, body = kube.call("PATCH", role_path, patch, content_type="application/merge-patch+json")
        check(status == 200, f"Role without {verb}: {status} {body.get('message')}")
        found, out, log = discovers(f"without-{verb}", settle=True)
        refused = "forbidden" in (out + log).lower()
        check(refused, f"without the verb {verb} the API server refused nothing the dispatcher asked: "
                       f"the chart grants more than the code calls\n{shown(out, log)}")
        print(f"    without '{verb}' the API server refuses the dispatcher's discovery "
              f"(edges found: {'from the list only' if found else 'none'}): the verb is needed", flush=True)
    kube.call("PATCH", role_path, {"rules": role["rules"]}, content_type="application/merge-patch+json")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=str(ROOT / "target/debug/sipcluster"))
    ap.add_argument("--kubeconfig", default=os.environ.get("SIPCLUSTER_TEST_KUBECONFIG"))
    ap.add_argument("--validate", default=str(Path(sys.executable).parent / "kubernetes-validate"))
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sipcluster-helm-"))
    try:
        print("  lint (strict), render and kubernetes-validate --strict", flush=True)
        rendered = lint_render_validate(work, a.validate)
        print("  values.schema.json", flush=True)
        schema_checks()
        override_checks(rendered)
        tls_checks(rendered)
        websocket_checks(rendered)
        topology_hiding_checks(rendered)
        call_limits_checks(rendered)
        bans_checks(rendered)
        pki = make_pki(work)
        TLS_SECRET_FILES.update({"tls.crt": pki["server.crt"].read_text(), "tls.key": pki["server.key"].read_text(),
                                 "ca.crt": pki["ca.crt"].read_text()})
        print("  the binary's own validation of what the chart passes", flush=True)
        check_config(a.bin, rendered, work)
        print("  probe paths on running services", flush=True)
        probe_paths_served(a.bin, rendered["defaults"], work)
        print("  SIP over TLS and secure WebSocket served from the rendered pod", flush=True)
        tls_served(a.bin, rendered["tls"], work, pki)
        if a.kubeconfig:
            print("  a real kube-apiserver", flush=True)
            kube_checks(a.bin, a.kubeconfig, work)
        else:
            print("  (no SIPCLUSTER_TEST_KUBECONFIG: the kube-apiserver checks did not run)", flush=True)
    finally:
        if not FAILURES:
            shutil.rmtree(work, ignore_errors=True)
    if FAILURES:
        print(f"\n{len(FAILURES)} chart check(s) failed; files kept in {work}", file=sys.stderr)
        return 1
    print("  chart checks passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
