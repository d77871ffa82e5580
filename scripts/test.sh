#!/usr/bin/env bash
# The whole sipcluster test suite: what CI runs (.ci/run) and what a developer runs.
#
#   ./scripts/test.sh            everything
#   SIPCLUSTER_FUZZ_SECONDS=0 ./scripts/test.sh    skip the fuzz smoke run
#
# Works on a fresh Debian machine with only Rust installed: missing tools are installed
# (idempotently) into a cache outside the repository, so later runs start fast.
# Every service a later stage starts is private (loopback, free port), recorded by PID,
# and stopped on exit; nothing this script did not start is touched.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

TOOLS=${SIPCLUSTER_TOOLS:-$HOME/.cache/sipcluster/tools}
FUZZ_SECONDS=${SIPCLUSTER_FUZZ_SECONDS:-20}
export PATH="$TOOLS/bin:$PATH"
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

STARTED_PIDS=()
WORK=$(mktemp -d "${TMPDIR:-/tmp}/sipcluster-test.XXXXXX")
cleanup() {
  local pid
  for pid in "${STARTED_PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${STARTED_PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

step() { printf '\n==> %s\n' "$*"; }
elapsed() { printf '    (%ss)\n' "$((SECONDS - $1))"; }

# --- tool installation (idempotent) ------------------------------------------------------

need_rust_component() {
  local c=$1
  if ! rustup component list --installed 2>/dev/null | grep -q "^$c"; then
    step "installing rustup component $c"
    rustup component add "$c"
  fi
}

# need_cargo_tool <binary> <crate> <version> [extra cargo install args...]
need_cargo_tool() {
  local bin=$1 crate=$2 version=$3
  shift 3
  if [ -x "$TOOLS/bin/$bin" ] && "$TOOLS/bin/$bin" --version 2>/dev/null | grep -q "$version"; then
    return 0
  fi
  step "installing $crate $version into $TOOLS (cached for later runs)"
  cargo install "$crate" --version "$version" --locked --root "$TOOLS" "$@"
}

# need_apt <command> <debian package>: install the package when the command is missing.
need_apt() {
  local cmd=$1 pkg=$2
  command -v "$cmd" >/dev/null 2>&1 && return 0
  apt_install "$pkg" "$cmd"
  command -v "$cmd" >/dev/null 2>&1 || { echo "$pkg installed but $cmd is not on PATH" >&2; exit 1; }
}

# apt_install <debian package> <why>
apt_install() {
  local pkg=$1 sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  step "installing Debian package $pkg (for $2)"
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get install -y --no-install-recommends "$pkg" >"$WORK/apt-$pkg.log" 2>&1 || {
    # A fresh machine may have no package lists yet.
    "${sudo[@]}" apt-get update >"$WORK/apt-update.log" 2>&1
    "${sudo[@]}" apt-get install -y --no-install-recommends "$pkg" >"$WORK/apt-$pkg.log" 2>&1 || {
      cat "$WORK/apt-$pkg.log"
      exit 1
    }
  }
}

# need_deb_binary <command> <debian package>: unpack the package's binaries into $TOOLS
# without installing it (no root, and no system service started as a side effect).
need_deb_binary() {
  local cmd=$1 pkg=$2
  command -v "$cmd" >/dev/null 2>&1 && return 0
  step "unpacking Debian package $pkg into $TOOLS (cached for later runs)"
  mkdir -p "$WORK/deb-$pkg" "$TOOLS/bin"
  (cd "$WORK/deb-$pkg" && { apt-get download "$pkg" >/dev/null 2>&1 || {
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get update >"$WORK/apt-update.log" 2>&1
    apt-get download "$pkg"
  }; })
  dpkg-deb -x "$WORK/deb-$pkg"/"$pkg"_*.deb "$WORK/deb-$pkg/root"
  cp "$WORK/deb-$pkg/root/usr/bin/"* "$TOOLS/bin/"
  command -v "$cmd" >/dev/null 2>&1 || { echo "$pkg unpacked but $cmd not found" >&2; exit 1; }
}

# need_apt_file <file> <debian package>: install the package when the file is missing (a
# library's development files, which bring no command).
need_apt_file() {
  [ -e "$1" ] && return 0
  apt_install "$2" "$1"
}

need_rust_component rustfmt
need_rust_component clippy
# The accounting's Kafka producer builds librdkafka from its vendored source (rdkafka-sys:
# make and a C compiler) and links the system OpenSSL for TLS/SASL to the brokers.
need_apt make make
need_apt pkg-config pkg-config
need_apt_file /usr/include/openssl/ssl.h libssl-dev
# A Kafka-protocol broker for the accounting tests: tansu, a Rust broker (no JVM; a real
# Apache Kafka cannot be obtained here). Built once (~16 min on 2 cores) and cached; the
# dynostore feature brings its storage engines (without it the broker exits at start).
need_cargo_tool tansu tansu 0.6.0 --features dynostore
# Python for the documented CDR consumer (deploy/kafka/consume_cdrs.py): a venv cached in
# $TOOLS with the Kafka client and protobuf (grpcio-tools brings protoc).
need_apt python3 python3
PYVENV="$TOOLS/pyvenv"
if ! "$PYVENV/bin/python" -c 'import confluent_kafka, google.protobuf, grpc_tools' 2>/dev/null; then
  step "making a Python venv with confluent-kafka, protobuf and grpcio-tools in $PYVENV (cached)"
  python3 -c 'import ensurepip' 2>/dev/null || apt_install python3-venv "python3 -m venv"
  python3 -m venv "$PYVENV" >"$WORK/venv.log" 2>&1 || { cat "$WORK/venv.log"; exit 1; }
  "$PYVENV/bin/pip" install --quiet confluent-kafka protobuf grpcio-tools >"$WORK/pip.log" 2>&1 || {
    cat "$WORK/pip.log"; exit 1
  }
fi
# The Helm chart's checks: Helm's own Go library (no helm binary can be installed here) and
# kubernetes-validate's schemas of a current Kubernetes, pinned so that a new release of
# either cannot change a run.
if ! "$PYVENV/bin/python" -c 'import helm_python, kubernetes_validate' 2>/dev/null; then
  step "installing helm-python-sdk and kubernetes-validate into $PYVENV (cached)"
  "$PYVENV/bin/pip" install --quiet helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 >"$WORK/pip-helm.log" 2>&1 || {
    cat "$WORK/pip-helm.log"; exit 1
  }
fi
export SIPCLUSTER_TEST_PYTHON="$PYVENV/bin/python"
need_apt sipp sip-tester         # SIPp: the end-to-end SIP flows and the load harness
need_apt sngrep sngrep           # HEP collector: crates/hep/tests/sngrep.rs
need_apt tshark tshark           # reads back the pcap sngrep writes
need_apt sipsak sipsak           # sipsak: OPTIONS pings and random-mutation input
need_apt baresip baresip-core    # real softphones: two baresip register, call and talk
need_apt linphonec linphone-cli  # and linphone's command-line phone
need_apt script bsdutils         # a pseudo-terminal for linphonec (it runs only on one)
need_apt stunnel4 stunnel4        # TLS in front of SIPp (Debian's SIPp has no TLS): services/sipcluster/tests/tls.rs
# Headless Chromium for the browser phones (services/sipcluster/tests/websocket.rs), on
# its own: asking apt for it with other packages has failed here (see ../shared notes).
need_apt chromium chromium
# JsSIP for those phones, bundled for the browser once with esbuild (both from npm, pinned)
# and cached in $TOOLS.
NPM_DIR="$TOOLS/npm"
if [ ! -s "$NPM_DIR/jssip-3.13.8.js" ]; then
  step "bundling JsSIP 3.13.8 for the browser tests into $NPM_DIR (cached)"
  need_apt npm npm
  mkdir -p "$NPM_DIR"
  (cd "$NPM_DIR" && npm install --no-audit --no-fund jssip@3.13.8 esbuild@0.24.2 &&
    ./node_modules/.bin/esbuild node_modules/jssip/lib/JsSIP.js --bundle --format=iife \
      --global-name=JsSIP --platform=browser --outfile=jssip-3.13.8.js) >"$WORK/npm.log" 2>&1 || {
    cat "$WORK/npm.log"; exit 1
  }
fi
export SIPCLUSTER_TEST_JSSIP="$NPM_DIR/jssip-3.13.8.js"
need_deb_binary prometheus prometheus  # a real Prometheus scraping /metrics
# Redis for the location service. redis-tools carries the server binary (as redis-check-rdb,
# which runs as a server when called redis-server); the redis-server package would also
# install and start a system service, which this script must not leave behind.
need_apt redis-cli redis-tools
if ! command -v redis-server >/dev/null 2>&1; then
  mkdir -p "$TOOLS/bin"
  ln -sf "$(command -v redis-check-rdb)" "$TOOLS/bin/redis-server"
fi

# --- static checks ------------------------------------------------------------------------

t=$SECONDS
step "cargo fmt --check"
cargo fmt --all -- --check
elapsed $t

t=$SECONDS
step "cargo clippy --all-targets -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
elapsed $t

# --- private Redis: one standalone server and one 3-master cluster ------------------------
# Shared by the tests that only need *a* Redis (each uses its own key prefix); tests that
# kill Redis or move slots start their own. All on loopback, stopped by PID on exit.

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# free_port LOW HIGH: a free TCP port in [LOW, HIGH] whose +10000 (cluster bus) is free too.
free_port() {
  local p
  for _ in $(seq 1 200); do
    p=$(( $1 + RANDOM % ($2 - $1) ))
    if port_free "$p" && port_free $((p + 10000)); then echo "$p"; return 0; fi
  done
  echo "no free port in $1-$2" >&2; return 1
}
start_redis() { # start_redis PORT [extra redis-server flags...]
  local port=$1 dir="$WORK/redis-$1"
  shift
  mkdir -p "$dir"
  redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no --daemonize no \
    --dir "$dir" --logfile "$dir/redis.log" "$@" &
  STARTED_PIDS+=($!)
  for _ in $(seq 1 200); do
    [ "$(redis-cli -p "$port" ping 2>/dev/null)" = PONG ] && return 0
    sleep 0.05
  done
  cat "$dir/redis.log" >&2; echo "redis-server on $port did not start" >&2; exit 1
}

t=$SECONDS
step "starting private Redis (standalone + 3-master cluster) on loopback"
rport=$(free_port 20000 30000)
start_redis "$rport"
export SIPCLUSTER_TEST_REDIS="redis://127.0.0.1:$rport"
cluster_nodes=() cluster_urls=()
for _ in 1 2 3; do
  p=$(free_port 30001 40000)
  start_redis "$p" --cluster-enabled yes --cluster-node-timeout 2000 \
    --cluster-config-file "$WORK/redis-$p/nodes.conf"
  cluster_nodes+=("127.0.0.1:$p")
  cluster_urls+=("redis://127.0.0.1:$p")
done
redis-cli --cluster create "${cluster_nodes[@]}" --cluster-replicas 0 --cluster-yes >"$WORK/redis-cluster.log" 2>&1 || {
  cat "$WORK/redis-cluster.log"; exit 1
}
for n in "${cluster_nodes[@]}"; do
  for i in $(seq 1 200); do
    redis-cli -p "${n##*:}" cluster info 2>/dev/null | grep -q 'cluster_state:ok' && break
    [ "$i" = 200 ] && { echo "Redis cluster not ok" >&2; exit 1; }
    sleep 0.1
  done
done
SIPCLUSTER_TEST_REDIS_CLUSTER=$(IFS=,; echo "${cluster_urls[*]}")
export SIPCLUSTER_TEST_REDIS_CLUSTER
printf '    standalone %s, cluster %s\n' "$SIPCLUSTER_TEST_REDIS" "$SIPCLUSTER_TEST_REDIS_CLUSTER"
elapsed $t

# --- a real Kubernetes API server (etcd + kube-apiserver) --------------------------------
# For the dispatcher's Kubernetes discovery test. kube-apiserver is built once from Debian's
# source package (scripts/build-kube-apiserver.sh, ~5 min, cached in $TOOLS); etcd comes
# unpacked from the etcd-server package (installing it could start a system service).

t=$SECONDS
step "starting a private Kubernetes API server (etcd + kube-apiserver) on loopback"
need_apt curl curl
need_apt openssl openssl
if [ ! -x "$TOOLS/bin/kube-apiserver" ]; then
  step "building kube-apiserver from Debian's kubernetes source package (first run only, ~5 min)"
fi
scripts/build-kube-apiserver.sh "$TOOLS" >"$WORK/kube-build.log" 2>&1 || { tail -40 "$WORK/kube-build.log"; exit 1; }
need_deb_binary etcd etcd-server
KDIR="$WORK/kube"
mkdir -p "$KDIR"
etcd_client=$(free_port 40001 50000)
etcd_peer=$(free_port 40001 50000)
api_port=$(free_port 50001 60000)
etcd --name sc-test --data-dir "$KDIR/etcd" --unsafe-no-fsync \
  --listen-client-urls "http://127.0.0.1:$etcd_client" --advertise-client-urls "http://127.0.0.1:$etcd_client" \
  --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
  --initial-cluster "sc-test=http://127.0.0.1:$etcd_peer" >"$KDIR/etcd.log" 2>&1 &
STARTED_PIDS+=($!)
openssl genrsa -out "$KDIR/sa.key" 2048 >/dev/null 2>&1
openssl rsa -in "$KDIR/sa.key" -pubout -out "$KDIR/sa.pub" >/dev/null 2>&1
kube_token=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
echo "$kube_token,admin,admin,system:masters" >"$KDIR/tokens.csv"
kube-apiserver --etcd-servers "http://127.0.0.1:$etcd_client" --bind-address 127.0.0.1 \
  --secure-port "$api_port" --cert-dir "$KDIR/certs" --token-auth-file "$KDIR/tokens.csv" \
  --authorization-mode RBAC --service-account-key-file "$KDIR/sa.pub" \
  --service-account-signing-key-file "$KDIR/sa.key" \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --disable-admission-plugins ServiceAccount --service-cluster-ip-range 10.96.0.0/16 \
  >"$KDIR/apiserver.log" 2>&1 &
STARTED_PIDS+=($!)
for i in $(seq 1 600); do
  [ "$(curl -sk -m 1 -H "Authorization: Bearer $kube_token" "https://127.0.0.1:$api_port/readyz" 2>/dev/null)" = ok ] && break
  [ "$i" = 600 ] && { tail -n 30 "$KDIR/apiserver.log" "$KDIR/etcd.log"; echo "kube-apiserver not ready in 60 s" >&2; exit 1; }
  sleep 0.1
done
cat >"$KDIR/kubeconfig" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: https://127.0.0.1:$api_port
    insecure-skip-tls-verify: true
users:
- name: admin
  user:
    token: $kube_token
contexts:
- name: test
  context:
    cluster: test
    user: admin
    namespace: default
current-context: test
KUBECONFIG
export SIPCLUSTER_TEST_KUBECONFIG="$KDIR/kubeconfig"
printf '    kube-apiserver %s at https://127.0.0.1:%s\n' "$(kube-apiserver --version)" "$api_port"
elapsed $t

# --- tests --------------------------------------------------------------------------------

t=$SECONDS
step "cargo test (unit, integration, property, torture, hostile-input, doc tests; SIPp, sipsak, baresip, linphone, Redis and Prometheus end to end)"
cargo test --workspace --locked --no-fail-fast
elapsed $t

t=$SECONDS
step "Helm chart: lint, render, kubernetes-validate, check-config on what it passes, probes, a real kube-apiserver"
# (Helm's library logs each symbolic link it follows, files/ -> deploy/: not news.)
"$PYVENV/bin/python" tests/helm/test_chart.py --bin target/debug/sipcluster 2>&1 | grep -v 'found symbolic link in path'
elapsed $t

t=$SECONDS
step "alert rules: promtool check rules and test rules (deploy/prometheus), dashboard query extraction"
promtool check rules deploy/prometheus/*-rules.yaml
(cd deploy/prometheus && promtool test rules ./*.test.yaml)
# The PromQL extraction of the dashboards and rules (the queries themselves run against
# a real Prometheus in services/sipcluster/tests/observability.rs).
python3 tests/observability/check_promql.py --self-test
elapsed $t

t=$SECONDS
step "the README's commands, exactly as printed (the first run builds the release binary)"
scripts/readme-check.sh
elapsed $t

# --- the container image ------------------------------------------------------------------
# deploy/docker/Dockerfile's image, built without a Docker engine or a registry (buildah,
# FROM scratch) and run from its OCI archive with only its own files: chrooted, read-only
# root, user 65532, SIP OPTIONS over loopback UDP (tests/image/test-image.sh). Needs root
# (namespaces, chroot, mounts); the release binary is already built by the README check.
if [ "$(id -u)" -eq 0 ]; then
  t=$SECONDS
  need_apt buildah buildah
  need_apt umoci umoci
  step "container image: scripts/build-image.sh, then tests/image/test-image.sh"
  image=$(scripts/build-image.sh "$WORK/sipcluster.oci.tar" 2>"$WORK/build-image.log") || {
    cat "$WORK/build-image.log"; exit 1
  }
  grep '^==> image ' "$WORK/build-image.log" | sed 's/^==> /    /'
  tests/image/test-image.sh "$image" >"$WORK/test-image.log" 2>&1 || { cat "$WORK/test-image.log"; exit 1; }
  grep -E '^    (ok|root filesystem)' "$WORK/test-image.log"
  elapsed $t
else
  step "container image: NOT TESTED (scripts/build-image.sh and tests/image/test-image.sh need root: namespaces, chroot, mounts)"
fi

t=$SECONDS
step "benchmarks compile and run once (figures come from 'cargo bench', not from tests)"
cargo bench --workspace --locked -- --test >"$WORK/bench.log" 2>&1 || { cat "$WORK/bench.log"; exit 1; }
grep -c "Success" "$WORK/bench.log" | xargs printf '    %s benchmarks ran once\n'
elapsed $t

# --- fuzz smoke run -----------------------------------------------------------------------
# The fuzz targets need cargo-fuzz and a nightly compiler (sanitizer flags); on a stable-only
# machine RUSTC_BOOTSTRAP lets stable act as nightly for this build only. Each target runs
# for a bounded time over the RFC 4475/5118 corpus; a crash fails the suite.

if [ "$FUZZ_SECONDS" -gt 0 ]; then
  t=$SECONDS
  need_cargo_tool cargo-fuzz cargo-fuzz 0.13.2
  fuzz_toolchain=()
  if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    fuzz_toolchain=(+nightly)
  else
    export RUSTC_BOOTSTRAP=1
  fi
  FUZZ_DIR=crates/sip-core/fuzz
  step "fuzz smoke run: ${FUZZ_SECONDS}s per target"
  (cd "$FUZZ_DIR" && cargo "${fuzz_toolchain[@]}" fuzz build -O >"$WORK/fuzz-build.log" 2>&1) || {
    cat "$WORK/fuzz-build.log"
    exit 1
  }
  for target in datagram stream sdp websocket tokens; do
    corpus="$WORK/corpus-$target"
    mkdir -p "$corpus"
    case $target in
      datagram) cp crates/sip-core/tests/torture/*.dat crates/sip-core/benches/data/*.sip "$corpus/" ;;
      stream) for f in crates/sip-core/tests/torture/*.dat crates/sip-core/benches/data/*.sip; do
          { printf '\007'; cat "$f"; } >"$corpus/$(basename "$f")"
        done ;;
      sdp) for f in crates/sip-core/tests/torture/*.dat; do
          awk 'body{print} /^\r?$/{body=1}' "$f" >"$corpus/$(basename "$f")"
        done ;;
      websocket | tokens) cp "$FUZZ_DIR/seeds/$target/"* "$corpus/" ;;
    esac
    (cd "$FUZZ_DIR" && cargo "${fuzz_toolchain[@]}" fuzz run -O "$target" "$corpus" -- \
      -max_total_time="$FUZZ_SECONDS" -max_len=8192 -print_final_stats=1 \
      -artifact_prefix="$WORK/" >"$WORK/fuzz-$target.log" 2>&1) || {
      tail -50 "$WORK/fuzz-$target.log"
      echo "fuzz target $target crashed; reproducer in $WORK (kept)" >&2
      trap - EXIT
      exit 1
    }
    runs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$WORK/fuzz-$target.log" | grep -Eo '[0-9]+$' || echo '?')
    printf '    %-8s %s executions, 0 crashes\n' "$target" "$runs"
  done
  elapsed $t
fi

step "all checks passed"
