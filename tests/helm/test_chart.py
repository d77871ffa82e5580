#!/usr/bin/env python3
"""The Helm chart's checks (run by ./scripts/test.sh; no helm binary needed).

Helm's own Go library (PyPI helm-python-sdk) lints and renders helm/sipcluster for every
values set below; kubernetes-validate checks each rendered manifest strictly against a
current Kubernetes; then the checks that catch real mistakes:

* values.schema.json refuses wrong types, unknown keys and bad enums;
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
}
# What the Downward API gives a pod, for the checks that run the binary outside one.
FIELD_VALUES = {
    "status.podIP": "127.0.0.1",
    "status.hostIP": "127.0.0.1",
    "metadata.name": "pod-0",
    "metadata.namespace": "voip",
}
FAILURES: list[str] = []


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
    print(f"    check-config accepted the flags, environment and ConfigMaps of {count} containers; "
          f"every probe hits the metrics port the service resolves", flush=True)


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

    def discovers(run: str, settle: bool = False) -> tuple[bool, str]:
        """Whether the dispatcher lists both edge pods (and its log). settle: run the
        whole 15 s, so that a refused watch after a permitted list shows in the log."""
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
        return found, out + log_path.read_text()[-1500:]

    found, out = discovers("chart-role")
    check(found and "forbidden" not in out.lower(),
          f"the dispatcher with the chart's Role finds both edge pods, nothing refused:\n{out}")
    print(f"    the dispatcher, holding only its ServiceAccount token, found the 2 edge pods (Role verbs {verbs})", flush=True)
    role_path = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles/sc-sipcluster-dispatcher"
    for verb in verbs:
        fewer = [v for v in verbs if v != verb]
        patch = {"rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": fewer}]}
        status, body = kube.call("PATCH", role_path, patch, content_type="application/merge-patch+json")
        check(status == 200, f"Role without {verb}: {status} {body.get('message')}")
        found, out = discovers(f"without-{verb}", settle=True)
        refused = "forbidden" in out.lower()
        check(refused, f"without the verb {verb} the API server refused nothing the dispatcher asked: "
                       f"the chart grants more than the code calls\n{out}")
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
        print("  the binary's own validation of what the chart passes", flush=True)
        check_config(a.bin, rendered, work)
        print("  probe paths on running services", flush=True)
        probe_paths_served(a.bin, rendered["defaults"], work)
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
