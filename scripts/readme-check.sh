#!/usr/bin/env bash
# Run the README's all-in-one commands exactly as printed, as a new user on a fresh clone
# would, and check that each gives a working cluster: ready, answering OPTIONS, and the
# operator commands working against it with no extra flag (their gRPC APIs take the admin
# token the all-in-one generated and wrote to ${XDG_STATE_HOME:-~/.local/state}/sipcluster/
# admin-token, where the commands read it). Each command must still appear
# verbatim in README.md, so the README and this check cannot drift apart.
#
# Called by ./scripts/test.sh (needs sipsak, which it installs). Uses the default ports
# (SIP 5060, metrics 9090, location API 50051, admin API 50052) and the README's own
# (5070/9091, 5080/9092); every probe goes to 127.0.0.1. Each server is stopped by PID.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/sipcluster-readme.XXXXXX")
PID=
cleanup() {
  if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
    kill "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

fail() {
  echo "README check: $*" >&2
  [ -f "$WORK/server.log" ] && tail -30 "$WORK/server.log" >&2
  exit 1
}

readme_prints() {
  grep -qxF "    $1" README.md || fail "README.md no longer prints the command: $1"
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

http_code() { curl -s -o /dev/null -w '%{http_code}' -m 2 "http://127.0.0.1:$1$2" 2>/dev/null || true; }

# run_readme_command "COMMAND" METRICS_PORT SIP_PORT: start it as printed, wait until it is
# ready (the first `cargo run --release` compiles, so allow for a cold build), probe it,
# stop it with SIGTERM.
run_readme_command() {
  local cmd=$1 metrics=$2 sip=$3 t0=$SECONDS p
  readme_prints "$cmd"
  # The README's commands use fixed ports: another process on one of them would answer
  # for us (or make the command fail, as it must, on a busy SIP port).
  for p in "$sip" "$metrics" 50051 50052; do
    port_free "$p" || fail "port $p is in use by another process; '$cmd' needs it"
  done
  echo "    \$ $cmd"
  # `env` takes the command's leading VAR=value words as printed; `cargo run` replaces
  # itself with the binary, so this PID is the server's.
  bash -c "exec env $cmd" >"$WORK/server.log" 2>&1 &
  PID=$!
  until [ "$(http_code "$metrics" /readyz)" = 200 ]; do
    kill -0 "$PID" 2>/dev/null || fail "'$cmd' exited before it was ready"
    [ $((SECONDS - t0)) -lt 1500 ] || fail "'$cmd' not ready after 25 minutes"
    sleep 0.5
  done
  # sipsak 0.9.8 cuts five-digit ports, so only four-digit ones are used here.
  sipsak -s "sip:127.0.0.1:$sip" >"$WORK/sipsak.log" 2>&1 || fail "no 200 to OPTIONS on port $sip: $(cat "$WORK/sipsak.log")"
  echo "      ready after $((SECONDS - t0)) s, 200 to OPTIONS on 127.0.0.1:$sip"
}

stop_server() {
  kill -TERM "$PID"
  local t0=$SECONDS
  while kill -0 "$PID" 2>/dev/null; do
    [ $((SECONDS - t0)) -lt 15 ] || fail "the server did not stop within 15 s of SIGTERM"
    sleep 0.2
  done
  wait "$PID" || fail "the server exited with status $? on SIGTERM"
  PID=
}

# The first command of the README, then the operator commands with no flag at all.
run_readme_command "cargo run --release -- all-in-one" 9090 5060
BIN=target/release/sipcluster
$BIN users list --realm sipcluster.local >"$WORK/users.out" 2>&1 || fail "users list: $(cat "$WORK/users.out")"
grep -qx alice "$WORK/users.out" || fail "users list does not show alice: $(cat "$WORK/users.out")"
$BIN registrations list >"$WORK/reg.out" 2>&1 || fail "registrations list: $(cat "$WORK/reg.out")"
grep -q "AORs, .* contacts" "$WORK/reg.out" || fail "registrations list: $(cat "$WORK/reg.out")"
$BIN dispatcher-admin targets >"$WORK/targets.out" 2>&1 || fail "dispatcher-admin targets: $(cat "$WORK/targets.out")"
grep -q "^edge .* up " "$WORK/targets.out" || fail "no edge up in: $(cat "$WORK/targets.out")"
echo "      users list, registrations list, dispatcher-admin targets: OK with no flag"
stop_server

# The Configuration section's two examples.
run_readme_command "cargo run --release -- all-in-one --listen 127.0.0.1:5070 --metrics 127.0.0.1:9091" 9091 5070
stop_server
run_readme_command "SIPCLUSTER_LISTEN=0.0.0.0:5080 SIPCLUSTER_METRICS=0.0.0.0:9092 target/release/sipcluster all-in-one" 9092 5080
stop_server
echo "    the README's commands work as printed"
