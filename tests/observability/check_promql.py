#!/usr/bin/env python3
"""Run every PromQL expression of the alert rules and the Grafana dashboards against a real
Prometheus, and check that every metric they name exists there.

    check_promql.py --prometheus http://127.0.0.1:9090 [FILE...]
    check_promql.py --list [FILE...]          # no server: expressions and metric names
    check_promql.py --self-test               # no server: the extraction's own tests

FILEs are rule files (*.yaml, *.yml) and dashboards (*.json); by default
deploy/prometheus/*rules.yaml (not the .test ones) and deploy/grafana/*.json.

What is checked, for each expression:
* it is accepted by /api/v1/query (a parse or evaluation error is a failure, printed with
  its file and rule or panel);
* every metric name it references (`sipcluster_*`, `process_*`, `up`, outside quoted
  strings) is among /api/v1/label/__name__/values. A dashboard or rule naming a metric
  no service exports shows nothing and alerts on nothing, silently: this is what finds it.

Expressions come from the rules' `expr`; the dashboards' panel targets `expr` (rows and
collapsed rows' nested panels included) and annotation queries; and the templating
variables' queries: `label_values(selector, label)` is checked as its selector,
`query_result(expr)` as its expression. Grafana variables are replaced before a query is
sent: $__rate_interval, $__interval and $__range by 1m (their _s/_ms forms by numbers),
any other variable by `.*` inside a quoted string (a label matcher) or by 1m inside
`[...]` (a range), else by 1.

Python 3 standard library only (the rule files are read by a small reader of the YAML
they use: mappings, lists, plain, quoted and block scalars; see `read_rules`).

Exit status: 0 all good; 1 a failure (all are printed); 2 usage error, unreadable file or
server unreachable.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# The metric names checked for existence (the brief of issue 17: what sipcluster serves).
METRIC_NAME = re.compile(r"\b(sipcluster_[a-z0-9_]+|process_[a-z0-9_]+|up)\b")

# Grafana's interval variables: what they become in a query sent here.
BUILTINS = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "__range": "1m",
    "__interval_ms": "60000",
    "__range_s": "60",
    "__range_ms": "60000",
}

# A Grafana variable reference: ${name}, ${name:format}, [[name]], [[name:format]], $name.
VARIABLE = re.compile(
    r"\$\{(?P<a>\w+)(?::[^}]*)?\}|\[\[(?P<b>\w+)(?::[^\]]*)?\]\]|\$(?P<c>\w+)"
)


@dataclass
class Expr:
    """One PromQL expression and where it was found."""

    file: str
    where: str  # `rule X (group G)`, `panel "T" target A`, `variable v`...
    text: str  # as written
    query: str = ""  # as sent (variables replaced); set by `prepare`

    def label(self) -> str:
        return f"{self.file}: {self.where}"


# --- PromQL lexing ----------------------------------------------------------------------


def segments(expr: str) -> list[tuple[bool, str]]:
    """Split `expr` into (quoted, text) pieces: PromQL strings ("..." and '...' with
    backslash escapes, `...` raw) are quoted, the rest is not. Comments (`#` to the end
    of the line, outside strings) are dropped."""
    out: list[tuple[bool, str]] = []
    buf = []
    i, n = 0, len(expr)
    while i < n:
        c = expr[i]
        if c in "\"'`":
            if buf:
                out.append((False, "".join(buf)))
                buf = []
            j = i + 1
            while j < n and expr[j] != c:
                j += 2 if (c != "`" and expr[j] == "\\") else 1
            out.append((True, expr[i : j + 1]))
            i = j + 1
        elif c == "#":
            while i < n and expr[i] != "\n":
                i += 1
        else:
            buf.append(c)
            i += 1
    if buf:
        out.append((False, "".join(buf)))
    return out


def metric_names(expr: str) -> set[str]:
    """The metric names `expr` references, outside quoted strings."""
    names: set[str] = set()
    for quoted, text in segments(expr):
        if not quoted:
            names.update(m.group(1) for m in METRIC_NAME.finditer(text))
    return names


def substitute(expr: str) -> str:
    """Replace Grafana's variables so that Prometheus can run the expression."""

    def in_string(m: re.Match) -> str:
        name = m.group("a") or m.group("b") or m.group("c")
        return BUILTINS.get(name, ".*")

    out = []
    for quoted, text in segments(expr):
        if quoted:
            out.append(VARIABLE.sub(in_string, text))
            continue
        pieces = []
        depth = 0  # inside [...] (a range or subquery)
        last = 0
        for m in VARIABLE.finditer(text):
            depth += text.count("[", last, m.start()) - text.count("]", last, m.start())
            # `[[name]]` itself opens two brackets it does not keep.
            name = m.group("a") or m.group("b") or m.group("c")
            if name in BUILTINS:
                value = BUILTINS[name]
            else:
                value = "1m" if depth > 0 else "1"
            pieces.append(text[last : m.start()])
            pieces.append(value)
            last = m.end()
        pieces.append(text[last:])
        out.append("".join(pieces))
    return "".join(out)


LABEL_VALUES = re.compile(r"^\s*label_values\s*\((?P<args>.*)\)\s*$", re.S)
QUERY_RESULT = re.compile(r"^\s*query_result\s*\((?P<expr>.*)\)\s*$", re.S)


def variable_query(query: str) -> str | None:
    """The PromQL inside a Grafana variable query: label_values(selector, label) gives its
    selector, query_result(expr) its expression; anything else (label_values(label),
    label_names(), metrics(...), a datasource type) has none."""
    m = LABEL_VALUES.match(query)
    if m:
        args = m.group("args")
        # The last top-level comma separates the label; a selector's own commas are inside
        # braces or strings.
        depth, cut = 0, -1
        pos = 0
        for quoted, text in segments(args):
            if not quoted:
                for k, c in enumerate(text):
                    if c in "({[":
                        depth += 1
                    elif c in ")}]":
                        depth -= 1
                    elif c == "," and depth == 0:
                        cut = pos + k
            pos += len(text)
        if cut < 0:
            return None  # label_values(label): no metric
        return args[:cut].strip() or None
    m = QUERY_RESULT.match(query)
    if m:
        return m.group("expr").strip()
    return None


# --- rule files (a reader of the YAML subset rule files use) ----------------------------

KEY = re.compile(r"^(?P<indent>\s*)(?P<dash>-\s+)?(?P<key>[A-Za-z_][\w.-]*):(?:\s+(?P<value>.*)|\s*)$")


def _scalar(value: str, lines: list[str], i: int, indent: int) -> tuple[str, int]:
    """The scalar that starts with `value` on line i (a key at `indent`); the index of the
    line after it."""
    value = value.rstrip()
    if value[:1] in "|>":
        # Block scalar: the following lines indented deeper than the key.
        body = []
        j = i + 1
        while j < len(lines):
            line = lines[j]
            if line.strip() and len(line) - len(line.lstrip()) <= indent:
                break
            body.append(line)
            j += 1
        while body and not body[-1].strip():
            body.pop()
        strip = min((len(b) - len(b.lstrip()) for b in body if b.strip()), default=0)
        text = [b[strip:] for b in body]
        return ("\n".join(text) if value[0] == "|" else " ".join(t.strip() for t in text)), j
    if value[:1] in "\"'":
        q = value[0]
        text = value
        j = i + 1
        # A quoted scalar may go on over lines: until its closing quote.
        while not _closed(text, q) and j < len(lines):
            text += " " + lines[j].strip()
            j += 1
        return _unquote(text, q), j
    # Plain scalar: a comment ends it; deeper lines continue it.
    text = re.sub(r"\s+#.*$", "", value)
    j = i + 1
    while j < len(lines):
        line = lines[j]
        if not line.strip() or line.lstrip().startswith("#"):
            break
        if len(line) - len(line.lstrip()) <= indent or KEY.match(line):
            break
        text += " " + re.sub(r"\s+#.*$", "", line.strip())
        j += 1
    return text, j


def _closed(text: str, q: str) -> bool:
    k = 1
    while k < len(text):
        if q == '"' and text[k] == "\\":
            k += 2
            continue
        if text[k] == q:
            if q == "'" and text[k + 1 : k + 2] == "'":
                k += 2
                continue
            return True
        k += 1
    return False


def _unquote(text: str, q: str) -> str:
    end = len(text) - 1
    while end > 0 and text[end] != q:
        end -= 1
    inner = text[1:end]
    if q == "'":
        return inner.replace("''", "'")
    return json.loads('"' + inner.replace("\t", "\\t") + '"')


def read_rules(text: str, file: str) -> list[Expr]:
    """Every `expr` of a Prometheus rule file, named by its rule (alert or record) and
    group. A list item starting with alert/record/expr starts a rule; `- name:` a group."""
    lines = text.splitlines()
    found: list[Expr] = []
    group = "?"
    rule: dict[str, str] = {}

    def flush() -> None:
        if "expr" in rule:
            kind = "alert" if "alert" in rule else "record" if "record" in rule else "rule"
            name = rule.get("alert") or rule.get("record") or "?"
            found.append(Expr(file, f"{kind} {name} (group {group})", rule["expr"]))
        rule.clear()

    i = 0
    while i < len(lines):
        line = lines[i]
        m = KEY.match(line)
        if not m or line.lstrip().startswith("#"):
            i += 1
            continue
        indent = len(m.group("indent")) + (len(m.group("dash")) if m.group("dash") else 0)
        key, value = m.group("key"), m.group("value") or ""
        if m.group("dash") and key == "name":
            flush()
            group, i = _scalar(value, lines, i, indent)
            continue
        if m.group("dash") and key in ("alert", "record", "expr"):
            flush()
        if key in ("alert", "record", "expr"):
            rule[key], i = _scalar(value, lines, i, indent)
            continue
        i += 1
    flush()
    return found


# --- dashboards ------------------------------------------------------------------------


def read_dashboard(doc: dict, file: str) -> list[Expr]:
    """Every PromQL expression of a Grafana dashboard: panel targets (rows and nested
    panels included), annotation queries, templating variable queries."""
    found: list[Expr] = []

    def panels(items: list, path: str) -> None:
        for p in items or []:
            if not isinstance(p, dict):
                continue
            title = p.get("title") or f"id {p.get('id')}"
            here = f'{path}panel "{title}"'
            for t in p.get("targets") or []:
                if isinstance(t, dict) and isinstance(t.get("expr"), str) and t["expr"].strip():
                    found.append(Expr(file, f"{here} target {t.get('refId', '?')}", t["expr"]))
            # A row's panels (collapsed rows keep theirs inside).
            panels(p.get("panels"), f'{here} > ' if p.get("type") == "row" else path)

    panels(doc.get("panels"), "")
    for r in doc.get("rows") or []:  # the pre-5.0 layout
        panels(r.get("panels"), f'row "{r.get("title", "?")}" > ')
    for a in (doc.get("annotations") or {}).get("list") or []:
        expr = a.get("expr") or (a.get("target") or {}).get("expr")
        if isinstance(expr, str) and expr.strip():
            found.append(Expr(file, f'annotation "{a.get("name", "?")}"', expr))
    for v in (doc.get("templating") or {}).get("list") or []:
        if v.get("type") not in (None, "query"):
            continue
        q = v.get("query")
        if isinstance(q, dict):
            q = q.get("query")
        if not isinstance(q, str):
            continue
        inner = variable_query(q)
        if inner:
            found.append(Expr(file, f"variable {v.get('name', '?')} ({q.strip()})", inner))
    return found


# --- input -------------------------------------------------------------------------------


def default_files() -> list[Path]:
    rules = sorted(p for p in (ROOT / "deploy/prometheus").glob("*rules.yaml") if ".test" not in p.name)
    return rules + sorted((ROOT / "deploy/grafana").glob("*.json"))


def display(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(ROOT))
    except ValueError:
        return str(p)


def collect(files: list[Path]) -> tuple[list[Expr], list[str]]:
    exprs: list[Expr] = []
    errors: list[str] = []
    for f in files:
        name = display(f)
        try:
            text = f.read_text()
        except OSError as e:
            errors.append(f"{name}: unreadable: {e}")
            continue
        if f.suffix == ".json":
            try:
                doc = json.loads(text)
            except json.JSONDecodeError as e:
                errors.append(f"{name}: not JSON: {e}")
                continue
            got = read_dashboard(doc, name)
        else:
            got = read_rules(text, name)
        if not got:
            errors.append(f"{name}: no PromQL expression found")
        exprs.extend(got)
    for e in exprs:
        e.query = substitute(e.text)
    return exprs, errors


# --- the server --------------------------------------------------------------------------


class Server:
    def __init__(self, url: str, timeout: float):
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _call(self, path: str, form: dict | None = None) -> dict:
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        req = urllib.request.Request(self.url + path, data=data)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return json.load(r)
        except urllib.error.HTTPError as e:
            # 400/422/503 carry Prometheus's JSON error.
            try:
                return json.load(e)
            except (json.JSONDecodeError, ValueError):
                return {"status": "error", "errorType": f"HTTP {e.code}", "error": e.reason}

    def names(self) -> set[str]:
        r = self._call("/api/v1/label/__name__/values")
        if r.get("status") != "success":
            raise OSError(f"label values: {r.get('error')}")
        return set(r["data"])

    def query(self, q: str) -> str | None:
        """None when accepted, else Prometheus's error."""
        r = self._call("/api/v1/query", {"query": q})
        if r.get("status") == "success":
            return None
        return f"{r.get('errorType', 'error')}: {r.get('error', r)}"


# --- main --------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*", type=Path, help="rule files (.yaml) and dashboards (.json)")
    ap.add_argument("--prometheus", metavar="URL", help="the Prometheus to query, e.g. http://127.0.0.1:9090")
    ap.add_argument("--list", action="store_true",
                    help="print the expression count and the distinct metric names (no server)")
    ap.add_argument("--list-missing", action="store_true",
                    help="print only the referenced metric names the server does not have, one per line "
                         "(with where each is used); exit 1 if any")
    ap.add_argument("--allow-missing", metavar="REGEX", action="append", default=[],
                    help="a metric name matching this (full match) may be absent (e.g. a role not running); "
                         "repeatable")
    ap.add_argument("--scrape", metavar="URL", nargs="+", default=[],
                    help="services' /metrics URLs: a name declared there (# TYPE) counts as exported even "
                         "when no event of its kind happened yet, so Prometheus has no sample of it "
                         "(listed apart; a name neither stored nor declared still fails)")
    ap.add_argument("--names-only", action="store_true", help="check metric names, do not run the queries")
    ap.add_argument("--verbose", "-v", action="store_true", help="print each expression as sent")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds per HTTP request (default 10)")
    ap.add_argument("--self-test", action="store_true", help="test the extraction (no server)")
    args = ap.parse_args(argv)

    if args.self_test:
        return self_test()

    files = args.files or default_files()
    exprs, errors = collect(files)
    for e in errors:
        print(f"ERROR {e}", file=sys.stderr)
    if errors and not exprs:
        return 2

    used: dict[str, list[Expr]] = {}
    for e in exprs:
        for n in metric_names(e.query):
            used.setdefault(n, []).append(e)

    if args.list:
        print(f"{len(exprs)} expressions in {len(files)} files, {len(used)} distinct metric names:")
        for n in sorted(used):
            print(f"  {n} ({len(used[n])})")
        if args.verbose:
            for e in exprs:
                print(f"{e.label()}\n    {e.query}")
        return 1 if errors else 0

    if not args.prometheus:
        ap.error("--prometheus URL is needed (or --list, --self-test)")
    server = Server(args.prometheus, args.timeout)
    try:
        have = server.names()
    except (OSError, urllib.error.URLError, json.JSONDecodeError) as e:
        print(f"ERROR cannot read the metric names of {args.prometheus}: {e}", file=sys.stderr)
        return 2

    declared: set[str] = set()
    for url in args.scrape:
        try:
            declared |= declared_names(fetch(url, args.timeout))
        except (OSError, urllib.error.URLError) as e:
            print(f"ERROR cannot scrape {url}: {e}", file=sys.stderr)
            return 2
    no_samples = sorted(n for n in used if n not in have and n in declared)
    allowed = [re.compile(r) for r in args.allow_missing]
    missing = {n: es for n, es in used.items()
               if n not in have and n not in declared and not any(a.fullmatch(n) for a in allowed)}
    if args.list_missing:
        for n in sorted(missing):
            where = sorted({e.label() for e in missing[n]})
            shown = where if args.verbose else where[:2]
            more = f"; and {len(where) - len(shown)} more (-v)" if len(shown) < len(where) else ""
            print(f"{n}\t{len(where)} uses: " + "; ".join(shown) + more)
        return 1 if missing else 0

    failures: list[str] = [f"{e}" for e in errors]
    if not args.names_only:
        for e in exprs:
            if args.verbose:
                print(f"{e.label()}\n    {e.query}")
            try:
                err = server.query(e.query)
            except (OSError, urllib.error.URLError, json.JSONDecodeError) as x:
                print(f"ERROR querying {args.prometheus}: {x}", file=sys.stderr)
                return 2
            if err:
                failures.append(f"{e.label()}: query refused: {err}\n    query: {e.query}")
    for e in exprs:
        gone = sorted(n for n in metric_names(e.query) if n in missing)
        if gone:
            failures.append(f"{e.label()}: metrics not in the server: {', '.join(gone)}")

    for f in failures:
        print(f"FAIL {f}")
    if no_samples:
        print(f"exported but without samples in this run ({len(no_samples)}): {', '.join(no_samples)}")
    names_ok = len(used) - len(missing)
    print(f"{len(exprs)} expressions from {len(files)} files"
          f"{'' if args.names_only else ' run'}; {names_ok}/{len(used)} metric names present"
          f"{f' ({len(missing)} missing: ' + ', '.join(sorted(missing)) + ')' if missing else ''}; "
          f"{len(failures)} failures")
    return 1 if failures else 0


def fetch(url: str, timeout: float) -> str:
    """GET a /metrics page in the classic text format."""
    req = urllib.request.Request(url, headers={"Accept": "text/plain"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read().decode("utf-8", "replace")


def declared_names(text: str) -> set[str]:
    """The sample names a text exposition declares with `# TYPE`: a counter's `_total`,
    a histogram's `_bucket`, `_sum` and `_count`, a summary's `_sum` and `_count`."""
    out: set[str] = set()
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 4 or parts[:2] != ["#", "TYPE"]:
            continue
        name, kind = parts[2], parts[3]
        if kind == "counter":
            out |= {name if name.endswith("_total") else name + "_total", name}
        elif kind == "histogram":
            out |= {name + "_bucket", name + "_sum", name + "_count"}
        elif kind == "summary":
            out |= {name, name + "_sum", name + "_count"}
        else:
            out.add(name)
    return out


# --- self-test ---------------------------------------------------------------------------


def self_test() -> int:
    failed = 0
    total = 0

    def eq(got, want, what: str) -> None:
        nonlocal failed, total
        total += 1
        if got != want:
            failed += 1
            print(f"FAIL {what}:\n  got  {got!r}\n  want {want!r}")

    # Declared names of a classic text exposition.
    eq(declared_names("# HELP a_b x\n# TYPE a_b counter\na_b_total 1\n# TYPE h histogram\n# TYPE g gauge\n"),
       {"a_b", "a_b_total", "h_bucket", "h_sum", "h_count", "g"}, "declared names")

    # Metric names: outside strings only, `up` as a word (not `target_up`), comments out.
    eq(metric_names('sum by (instance) (sipcluster_dispatcher_target_up{set="edge"}) == 0 '
                    'or up{job="sipcluster_x_total", a=\'process_y\'} # process_z'),
       {"sipcluster_dispatcher_target_up", "up"}, "metric names")
    eq(metric_names('rate(process_cpu_seconds_total[1m]) / on() group_left count(x{l="a\\"up\\" b"})'),
       {"process_cpu_seconds_total"}, "escaped quote inside a string")
    eq(metric_names("histogram_quantile(0.99, sum by (le) (rate(sipcluster_call_answer_delay_seconds_bucket[5m])))"),
       {"sipcluster_call_answer_delay_seconds_bucket"}, "histogram bucket")

    # Variables: intervals, matchers, ranges, bare.
    eq(substitute('rate(m{instance=~"$instance", d=~"${destination:regex}", x="[[x]]"}[$__rate_interval])'),
       'rate(m{instance=~".*", d=~".*", x=".*"}[1m])', "variables in matchers")
    eq(substitute("increase(m[$__range]) / $__range_s + $__interval_ms"), "increase(m[1m]) / 60 + 60000",
       "interval builtins")
    eq(substitute("topk($top, rate(m[$window]))"), "topk(1, rate(m[1m]))", "variables outside matchers")
    eq(substitute('m{a="$__rate_interval"}'), 'm{a="1m"}', "builtin in a string")

    # Variable queries.
    eq(variable_query('label_values(sipcluster_call_attempts_total{instance=~"$instance", a="x,y"}, destination)'),
       'sipcluster_call_attempts_total{instance=~"$instance", a="x,y"}', "label_values with a selector")
    eq(variable_query("label_values(instance)"), None, "label_values without a metric")
    eq(variable_query("query_result(topk(5, up))"), "topk(5, up)", "query_result")
    eq(variable_query("prometheus"), None, "a datasource query")

    # Rule files: block, folded, quoted, plain multi-line scalars; list items in any order.
    rules = """groups:
  - name: g1
    rules:
      - alert: A
        # a comment: expr: not this
        expr: up == 0   # trailing comment
        for: 1m
      - alert: B
        expr: |
          sum(rate(sipcluster_x_total[5m]))
            > 1
        labels: {severity: warning}
      - expr: "m{a=\\"b\\"} > 0"
        record: r:x
  - name: 'g2'
    rules:
      - alert: C
        expr: >-
          sipcluster_a
          > 2
      - alert: D
        expr: sipcluster_b
          > 3
        for: 0s
      - alert: E
        expr: 'x{a=''b''}'
"""
    got = [(e.where, e.text) for e in read_rules(rules, "r.yaml")]
    eq(got, [
        ("alert A (group g1)", "up == 0"),
        ("alert B (group g1)", "sum(rate(sipcluster_x_total[5m]))\n  > 1"),
        ("record r:x (group g1)", 'm{a="b"} > 0'),
        ("alert C (group g2)", "sipcluster_a > 2"),
        ("alert D (group g2)", "sipcluster_b > 3"),
        ("alert E (group g2)", "x{a='b'}"),
    ], "rule file reader")

    # Dashboards: top-level panels, a collapsed row's nested panels, annotations, variables.
    dash = {
        "panels": [
            {"type": "timeseries", "title": "T1", "targets": [{"refId": "A", "expr": "up"}, {"refId": "B"}]},
            {"type": "row", "title": "R", "collapsed": True, "panels": [
                {"type": "stat", "title": "T2", "targets": [{"refId": "A", "expr": "sipcluster_y"}]}]},
        ],
        "annotations": {"list": [{"name": "deploys", "expr": "changes(process_start_time_seconds[1m]) > 0"}]},
        "templating": {"list": [
            {"type": "datasource", "name": "datasource", "query": "prometheus"},
            {"type": "query", "name": "instance", "query": "label_values(sipcluster_build_info, instance)"},
            {"type": "query", "name": "d", "query": {"query": "label_values(m{i=~\"$instance\"}, d)",
                                                      "refId": "PrometheusVariableQueryEditor-VariableQuery"}},
            {"type": "custom", "name": "c", "query": "a,b"},
        ]},
    }
    got = [(e.where, e.text) for e in read_dashboard(dash, "d.json")]
    eq(got, [
        ('panel "T1" target A', "up"),
        ('panel "R" > panel "T2" target A', "sipcluster_y"),
        ('annotation "deploys"', "changes(process_start_time_seconds[1m]) > 0"),
        ("variable instance (label_values(sipcluster_build_info, instance))", "sipcluster_build_info"),
        ('variable d (label_values(m{i=~"$instance"}, d))', 'm{i=~"$instance"}'),
    ], "dashboard walk")

    # The repository's own files read without error, and every rule has an expression.
    exprs, errors = collect(default_files())
    eq(errors, [], "the repository's files")
    rule_count = sum(1 for e in exprs if e.where.startswith("alert "))
    alert_lines = sum(f.read_text().count("- alert:") for f in default_files() if f.suffix == ".yaml")
    eq(rule_count, alert_lines, "one expression per alert rule")
    leftover = [e.label() for e in exprs if VARIABLE.search(e.query)]
    eq(leftover, [], "no variable left in a query")

    print(f"self-test: {total - failed}/{total} checks passed"
          f" ({len(exprs)} expressions in the repository's files)")
    return 1 if failed else 0


if __name__ == "__main__":
    # `| head` ends the output quietly.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(main(sys.argv[1:]))
