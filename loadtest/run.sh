#!/usr/bin/env bash
# SIP load harness: the all-in-one (release build) driven by SIPp at increasing rates.
#
#   loadtest/run.sh                 REGISTER (no auth), REGISTER (digest), calls, overload,
#                                   REGISTER (digest) in cluster mode (edge + location + Redis)
#   loadtest/run.sh --kamailio      the same against a local Kamailio too, side by side
#   loadtest/run.sh --quick         short steps, low rates (a smoke run of the harness)
#
# For each step it prints the offered and achieved rate, failed %, p50/p99 response time
# (SIPp's rtd: first request to final 200) and the server's CPU per operation, read from
# /proc/<pid>/stat before and after. "Max sustained" is the highest step with < 1 % failed
# and >= 95 % of the offered rate achieved. The load generator shares the machine's cores:
# CPU per operation is the comparable figure, absolute rates are capped by SIPp itself.
#
# Every SIPp run is bounded (-m calls, -timeout seconds). Servers started here are stopped
# by PID on exit; all traffic stays on 127.0.0.1.
#
# The cluster section runs `sipcluster edge` against `sipcluster location` over a private
# redis-server (each its own process) and reports the CPU per REGISTER of each process and
# their sum.
#
# Environment: LOAD_STEP_SECONDS (default 10), LOAD_REG_RATES, LOAD_AUTH_RATES,
# LOAD_CALL_RATES, LOAD_CLUSTER_RATES (space-separated steps), LOAD_USERS (default 10000),
# LOAD_CLUSTER_WORKERS (--workers for the edge and the location service; default: theirs),
# LOAD_DISPATCH_RATES (calls/s steps of the dispatcher section),
# LOAD_MEDIA_STREAMS (concurrent G.711 streams, steps of the media section),
# LOAD_ONLY (a subset of "register call auth overload echo cluster dispatcher media accounting
# hep tracing transports", default all), LOAD_HEP_RATES (calls/s steps of the hep section),
# LOAD_TRANSPORT_RATES (calls/s steps of the transports section), LOAD_TLS_CONNECTIONS
# (connections held by the transports section, default 2000),
# LOAD_TRACE_RATES (calls/s steps of the tracing section),
# LOAD_FLOOD_RATES (REGISTER/s steps of the overload section's search for the peak),
# LOAD_ECHO_RATE (REGISTER/s of the echo section, default 10000).
#
# The echo section is the physical floor: `sip-flood --echo` answers each REGISTER with one
# receive and one send, and the all-in-one takes the same REGISTERs from the same
# generator right after; it prints both CPU costs per REGISTER and their ratio.
#
# The overload section uses loadtest/sip-flood instead of SIPp: SIPp needs about a core
# for 20,000 REGISTER/s here, so on the same two cores it cannot offer twice what the server
# sustains. sip-flood offers a fixed rate of new REGISTER transactions from one socket,
# retransmits them on Timer E like phones do, and counts 200s, 503s and silence. For each
# internal hop (loopback UDP, in process) it finds the peak goodput over
# LOAD_FLOOD_RATES, then offers twice the peak with the standing-queue admission rule on
# (limits.queue_target_ms = 20, the default) and off (0), in the same run.
#
# The dispatcher section runs calls (no auth) through `sipcluster edge` alone and through
# `sipcluster dispatcher` in front of the same edge, step by step in the same run, and
# reports the CPU per call of each process and the dispatcher's share of the edge's.
#
# The accounting section runs the same call steps against an all-in-one without accounting
# (--accounting off: what the call section and Kamailio's configuration do), with its
# default (CDRs as JSON lines through the durable spool), with CDRs only (no call events:
# one record per call instead of five) and, when a `tansu` broker is on
# the PATH (./scripts/test.sh caches one), with Kafka: the CPU per call of each, in one run,
# and the overhead over "off". Then loadtest/acct-load drives the producer path alone (the
# spool and the Kafka producer or the JSON-lines writer, no SIP) at LOAD_ACCT_RECORD_RATES
# records per second: what it acknowledges per second and its CPU per record and per call.
#
# The hep section runs the same call steps against an all-in-one with HEP export off and
# on (every message to a UDP collector: sngrep when installed, writing its pcap; else a
# port where nothing listens, the datagrams leave all the same), in one run: the CPU per
# call of each and the overhead.
#
# The media section drives `sipcluster media-relay` and then, when it is installed
# (apt-get install rtpengine-daemon), rtpengine in userspace mode with the same rtp-load
# steps, and prints the ratio of their knees and of their CPU per packet.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

KAMAILIO=0
QUICK=0
for a in "$@"; do
  case $a in
    --kamailio) KAMAILIO=1 ;;
    --quick) QUICK=1 ;;
    *) echo "usage: $0 [--kamailio] [--quick]" >&2; exit 2 ;;
  esac
done

STEP=${LOAD_STEP_SECONDS:-10}
USERS=${LOAD_USERS:-10000}
REG_RATES=${LOAD_REG_RATES:-"5000 10000 20000 30000 40000"}
AUTH_RATES=${LOAD_AUTH_RATES:-"2000 5000 10000 15000 20000"}
CALL_RATES=${LOAD_CALL_RATES:-"500 1000 2000 3000 4000"}
CLUSTER_RATES=${LOAD_CLUSTER_RATES:-"4000 8000 12000 14000 16000"}
DISPATCH_RATES=${LOAD_DISPATCH_RATES:-"500 1000 1500 2000 2500 3000"}
# The steps find both knees of the media section: rtpengine near 1,400 streams, ours near 2,100.
MEDIA_STREAMS=${LOAD_MEDIA_STREAMS:-"500 1000 1200 1400 1600 1800 2000 2100 2400 2800"}
FLOOD_RATES=${LOAD_FLOOD_RATES:-"10000 15000 20000 25000 30000"}
if [ "$QUICK" = 1 ]; then
  FLOOD_RATES=${LOAD_FLOOD_RATES:-"1000"}
  STEP=${LOAD_STEP_SECONDS:-3}
  USERS=${LOAD_USERS:-500}
  REG_RATES=${LOAD_REG_RATES:-"500 1000"}
  AUTH_RATES=${LOAD_AUTH_RATES:-"500"}
  CALL_RATES=${LOAD_CALL_RATES:-"100"}
  CLUSTER_RATES=${LOAD_CLUSTER_RATES:-"500"}
  DISPATCH_RATES=${LOAD_DISPATCH_RATES:-"100"}
  MEDIA_STREAMS=${LOAD_MEDIA_STREAMS:-"100"}
fi
ONLY=${LOAD_ONLY:-register call auth overload echo cluster dispatcher media accounting hep tracing transports}
want() { [[ " $ONLY " == *" $1 "* ]]; }
TICK=$(getconf CLK_TCK)
DOMAIN=sipcluster.local

command -v sipp >/dev/null || { echo "SIPp missing: apt-get install sip-tester (./scripts/test.sh does)" >&2; exit 1; }
if want cluster; then
  command -v redis-server >/dev/null || { echo "redis-server missing (the cluster section): apt-get install redis-server" >&2; exit 1; }
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/sipcluster-load.XXXXXX")
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

# Every gRPC API takes bearer tokens: one edge and one admin token for every process of
# this run, through the environment every subcommand (and rtp-load) reads.
for role in edge admin; do
  head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$WORK/$role-token"
done
export SIPCLUSTER_EDGE_TOKEN_FILE=$WORK/edge-token SIPCLUSTER_ADMIN_TOKEN_FILE=$WORK/admin-token

port_free() { ! ss -Hlnu "sport = :$1" | grep -q . && ! ss -Hlnt "sport = :$1" | grep -q .; }
free_port() {
  local p
  for _ in $(seq 200); do
    p=$((20000 + RANDOM % 20000))
    port_free "$p" && { echo "$p"; return; }
  done
  echo "no free port" >&2
  exit 1
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
http_ok() { # http_ok PORT PATH: true when the endpoint answers 200
  { exec 3<>"/dev/tcp/127.0.0.1/$1"; } 2>/dev/null || return 1
  printf 'GET %s HTTP/1.0\r\n\r\n' "$2" >&3
  head -1 <&3 | grep -q ' 200 '
  local rc=$?
  exec 3>&-
  return $rc
}
metric() { # metric PORT NAME: sum of a metric's samples
  exec 3<>"/dev/tcp/127.0.0.1/$1"
  printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3
  awk -v n="$2" '$1 ~ "^"n"({|$)" {s += $NF} END {print s + 0}' <&3
  exec 3>&-
}

# --- subscribers --------------------------------------------------------------------------

step_hdr() { printf '\n## %s\n' "$*"; }
printf 'SEQUENTIAL\n' >"$WORK/users.csv"
: >"$WORK/users.toml"
for i in $(seq -w 0 $((USERS - 1))); do
  printf 'u%s;[authentication username=u%s password=pw%s];%s\n' "$i" "$i" "$i" "$DOMAIN" >>"$WORK/users.csv"
  printf '[[user]]\nusername = "u%s"\nrealm = "%s"\npassword = "pw%s"\n' "$i" "$DOMAIN" "$i" >>"$WORK/users.toml"
done
printf '[[user]]\nusername = "callee"\nrealm = "%s"\npassword = "callee-pw"\n' "$DOMAIN" >>"$WORK/users.toml"

echo "building the release binary"
cargo build --release --locked -p sipcluster -p rtp-load -p sip-flood -p acct-load -p otlp-sink -p tls-conn >/dev/null 2>&1 || cargo build --release --locked -p sipcluster -p rtp-load -p sip-flood -p acct-load -p otlp-sink -p tls-conn
# Where cargo put them: a worktree may build into its own CARGO_TARGET_DIR.
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET/release/sipcluster
FLOOD=$TARGET/release/sip-flood
RTP_LOAD=$TARGET/release/rtp-load
ACCT_LOAD=$TARGET/release/acct-load
OTLP_SINK=$TARGET/release/otlp-sink
TLS_CONN=$TARGET/release/tls-conn

# start_sipcluster NAME [flags...]: sets SRV_PID SRV_PORT SRV_METRICS
start_sipcluster() {
  local name=$1
  shift
  SRV_PORT=$(free_port)
  SRV_METRICS=$(free_port)
  # Its state (CDR file, accounting spool) in the run's directory, not the user's.
  XDG_STATE_HOME="$WORK/state-$name" "$BIN" all-in-one --listen "127.0.0.1:$SRV_PORT" \
    --metrics "127.0.0.1:$SRV_METRICS" \
    --users "$WORK/users.toml" --nonce-secret load-test-nonce-secret-0123456789 \
    --location-listen off --admin off --log-level warn --source-rate 0 "$@" >"$WORK/$name.log" 2>&1 &
  SRV_PID=$!
  PIDS+=("$SRV_PID")
  for _ in $(seq 100); do
    http_ok "$SRV_METRICS" /readyz && return 0
    sleep 0.1
  done
  echo "sipcluster did not start:" >&2
  cat "$WORK/$name.log" >&2
  exit 1
}
stop_pid() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

# percentile FILE P: the P-th percentile of SIPp rtt file response times (ms)
percentile() {
  awk -F';' 'NR > 1 && $2 ~ /^[0-9.]+$/ {print $2}' "$1" | sort -n |
    awk -v p="$2" '{v[NR] = $1} END {if (NR == 0) {print "-"; exit} i = int(NR * p / 100); if (i < 1) i = 1; printf "%.1f", v[i]}'
}
# stat_col FILE NAME: a column of the last line of a SIPp statistics file
stat_col() {
  awk -F';' -v n="$2" 'NR == 1 {for (i = 1; i <= NF; i++) if ($i == n) c = i} END {print $c + 0}' "$1"
}
# achieved RTT_FILE: completions per second over the run, from the timestamps of the
# response-time samples (SIPp's statistics only have whole-second elapsed times, and a
# call's own duration must not count against the rate)
achieved() {
  awk -F';' 'NR > 1 && $1 ~ /^[0-9.]+$/ {if (n == 0) first = $1; last = $1; n++}
    END {printf "%.0f", (n > 1 && last > first ? (n - 1) * 1000 / (last - first) : 0)}' "$1"
}

RESULTS=$WORK/results.txt
: >"$RESULTS"
row() { printf '%-10s %-16s %8s %9s %7s %8s %8s %10s %s\n' "$@" | tee -a "$RESULTS"; }
header() { row server test offered achieved "fail%" "p50ms" "p99ms" "cpu/op" "note"; }
# (response times come from SIPp's clock, which moves in 4 ms steps here: 0 means < 4 ms)

# run_sipp NAME SCENARIO RATE COUNT PORT TARGET [extra...]: bounded SIPp run; fills the stat
# and rtt files under $WORK/NAME.*
run_sipp() {
  local name=$1 scen=$2 rate=$3 count=$4 port=$5 target=$6
  shift 6
  # SIPP_CALLER_TRANSPORT (default u1): the transports section's callers over TCP.
  (cd "$WORK" && timeout $((STEP * 3 + 60)) sipp -sf "$scen" -t "${SIPP_CALLER_TRANSPORT:-u1}" -i 127.0.0.1 -p "$port" \
    -r "$rate" -m "$count" -timeout $((STEP * 3 + 30)) -nostdin -max_recv_loops 10000 -buff_size 4194304 \
    -trace_stat -stf "$name.stat" -fd 1 -trace_rtt -rtt_freq 100 -trace_err -error_file "$name.err" \
    "$@" "$target" >/dev/null 2>&1) || true
  mv "$WORK"/*_rtt.csv "$WORK/$name.rtt" 2>/dev/null || : >"$WORK/$name.rtt"
}

# step_stats RATE NAME: the figures of a finished run, in ST_OK ST_ACHIEVED ST_FAILPCT ST_P50
# ST_P99 ST_NOTE ("sustained" when < 1 % failed and >= 95 % of RATE achieved; then
# LAST_SUSTAINED=RATE too)
step_stats() {
  local rate=$1 name=$2 fail
  ST_OK=$(stat_col "$WORK/$name.stat" "SuccessfulCall(C)")
  fail=$(stat_col "$WORK/$name.stat" "FailedCall(C)")
  ST_ACHIEVED=$(achieved "$WORK/$name.rtt")
  ST_FAILPCT=$(awk -v o="$ST_OK" -v f="$fail" 'BEGIN {printf "%.2f", (o + f > 0 ? 100 * f / (o + f) : 100)}')
  ST_P50=$(percentile "$WORK/$name.rtt" 50)
  ST_P99=$(percentile "$WORK/$name.rtt" 99)
  ST_NOTE=""
  if awk -v f="$ST_FAILPCT" -v a="$ST_ACHIEVED" -v r="$rate" 'BEGIN {exit !(f < 1 && a >= 0.95 * r)}'; then
    ST_NOTE=sustained
    LAST_SUSTAINED=$rate
  fi
}
# per_op TICKS OPS: CPU time per operation, in microseconds
per_op() { awk -v c="$1" -v t="$TICK" -v o="$2" 'BEGIN {printf "%.1fus", (o > 0 ? c / t * 1e6 / o : 0)}'; }

# measure SERVER TEST PID RATE NAME COUNT CPU_TICKS: print one result row from a finished run
measure() {
  local server=$1 test=$2 pid=$3 rate=$4 name=$5 count=$6 cpu=$7
  step_stats "$rate" "$name"
  row "$server" "$test" "$rate/s" "$ST_ACHIEVED/s" "$ST_FAILPCT" "$ST_P50" "$ST_P99" "$(per_op "$cpu" "$ST_OK")" "$ST_NOTE"
  LAST_CPU_PER_OP=$(awk -v c="$cpu" -v t="$TICK" -v o="$ST_OK" 'BEGIN {printf "%.2f", (o > 0 ? c / t * 1e6 / o : 0)}')
}

# register_steps SERVER TEST SCENARIO PID PORT RATES [extra sipp args]
register_steps() {
  local server=$1 test=$2 scen=$3 pid=$4 port=$5 rates=$6
  shift 6
  LAST_SUSTAINED=0
  local rate count c0 c1 name
  for rate in $rates; do
    count=$((rate * STEP))
    name="$server-$test-$rate"
    c0=$(cpu_ticks "$pid")
    run_sipp "$name" "$scen" "$rate" "$count" "$(free_port)" "127.0.0.1:$port" -inf "$WORK/users.csv" \
      -default_behaviors all,-bye "$@"
    c1=$(cpu_ticks "$pid")
    measure "$server" "$test" "$pid" "$rate" "$name" "$count" $((c1 - c0))
  done
  echo "$server $test: max sustained $LAST_SUSTAINED/s" | tee -a "$RESULTS"
}

# call_steps SERVER PID PORT RATES
call_steps() {
  local server=$1 pid=$2 port=$3 rates=$4
  LAST_SUSTAINED=0
  local rate count c0 c1 name uas_port uas_pid
  for rate in $rates; do
    count=$((rate * STEP))
    name="$server-call-$rate"
    uas_port=$(free_port)
    # The callee registers its SIPp UAS as "callee" (no auth on this server).
    printf 'SEQUENTIAL\ncallee;x;%s\n' "$DOMAIN" >"$WORK/callee.csv"
    (cd "$WORK" && timeout 30 sipp -sf "$ROOT/loadtest/sipp/register.xml" -t u1 -i 127.0.0.1 -p "$uas_port" \
      -m 1 -timeout 20 -nostdin -inf "$WORK/callee.csv" "127.0.0.1:$port" >/dev/null 2>&1) || {
      echo "callee registration failed" >&2
      exit 1
    }
    (cd "$WORK" && exec timeout $((STEP * 3 + 90)) sipp -sf "$ROOT/tests/sipp/uas_answer.xml" -t u1 -i 127.0.0.1 \
      -p "$uas_port" -m "$count" -timeout $((STEP * 3 + 60)) -nostdin -max_recv_loops 10000 >/dev/null 2>&1) &
    uas_pid=$!
    PIDS+=("$uas_pid")
    sleep 0.3
    printf 'SEQUENTIAL\ncaller;%s;callee\n' "$DOMAIN" >"$WORK/caller.csv"
    c0=$(cpu_ticks "$pid")
    # SIPP_CALLER_PORT: the caller's way in, when not the callee's (a stunnel for TLS).
    run_sipp "$name" "$ROOT/loadtest/sipp/uac_call.xml" "$rate" "$count" "$(free_port)" \
      "127.0.0.1:${SIPP_CALLER_PORT:-$port}" -inf "$WORK/caller.csv"
    c1=$(cpu_ticks "$pid")
    stop_pid "$uas_pid"
    measure "$server" "call" "$pid" "$rate" "$name" "$count" $((c1 - c0))
  done
  echo "$server call: max sustained $LAST_SUSTAINED/s" | tee -a "$RESULTS"
}

echo "steps of ${STEP}s; $USERS subscribers; CPU per operation is the server process's user+system time"
if want register || want call || want auth || want overload || want accounting || [ "$KAMAILIO" = 1 ]; then
  header
fi

# --- sipcluster -----------------------------------------------------------------------------

# Each section gets a fresh server: the REGISTER steps leave ~64·T1 worth of server
# transactions (and Kamailio its usrloc timer work) whose clean-up would be billed to calls.
REG_MAX=0
if want register; then
  start_sipcluster noauth --no-auth
  register_steps sipcluster register "$ROOT/loadtest/sipp/register.xml" "$SRV_PID" "$SRV_PORT" "$REG_RATES"
  REG_MAX=$LAST_SUSTAINED
  stop_pid "$SRV_PID"
fi
if want call; then
  # Without accounting, as Kamailio's configuration (no acc module): the accounting
  # section below measures what CDRs cost.
  start_sipcluster calls --no-auth --accounting off
  call_steps sipcluster "$SRV_PID" "$SRV_PORT" "$CALL_RATES"
  stop_pid "$SRV_PID"
fi

# Accounting: the same call steps with accounting off, JSON lines (the default) and Kafka.
if want accounting; then
  ACCT_RATES=${LOAD_ACCOUNTING_RATES:-$CALL_RATES}
  # Records per second for the producer path alone (five records make a call).
  ACCT_LOAD_RATES=${LOAD_ACCT_RECORD_RATES:-"10000 25000 50000"}
  declare -A ACCT_CPU=()
  acct_run() { # acct_run LABEL FLAGS...
    local label=$1
    shift
    start_sipcluster "acct-$label" --no-auth "$@"
    call_steps "acct-$label" "$SRV_PID" "$SRV_PORT" "$ACCT_RATES"
    ACCT_CPU[$label]=$LAST_CPU_PER_OP
    stop_pid "$SRV_PID"
  }
  acct_run off --accounting off
  acct_run jsonl
  # CDRs only (accounting.call_events = false): one record per call instead of five.
  printf '[accounting]\ncall_events = false\n' >"$WORK/cdrs-only.toml"
  acct_run cdrs --config "$WORK/cdrs-only.toml"
  if command -v tansu >/dev/null; then
    KAFKA_PORT=$(free_port)
    tansu broker --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
      --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
      --storage-engine memory://tansu/ >"$WORK/tansu.log" 2>&1 &
    KAFKA_PID=$!
    PIDS+=("$KAFKA_PID")
    sleep 0.5
    acct_run kafka --kafka-brokers "127.0.0.1:$KAFKA_PORT"
    # The producer path alone (spool + producer, no SIP): records/s and CPU per record.
    "$ACCT_LOAD" --destination kafka --brokers "127.0.0.1:$KAFKA_PORT" --dir "$WORK/acct-load-kafka" \
      --rates "$ACCT_LOAD_RATES" --secs "$STEP" | sed 's/^/acct-load /' | tee -a "$RESULTS"
    stop_pid "$KAFKA_PID"
  else
    echo "accounting: no tansu on the PATH, Kafka not measured (./scripts/test.sh caches one in ~/.cache/sipcluster/tools/bin)"
  fi
  "$ACCT_LOAD" --destination jsonl --dir "$WORK/acct-load-jsonl" --rates "$ACCT_LOAD_RATES" --secs "$STEP" |
    sed 's/^/acct-load /' | tee -a "$RESULTS"
  for label in jsonl cdrs kafka; do
    [ -n "${ACCT_CPU[$label]:-}" ] || continue
    echo "accounting $label: $(awk -v a="${ACCT_CPU[$label]}" -v o="${ACCT_CPU[off]}" 'BEGIN {printf "%.1f", (o > 0 ? (a / o - 1) * 100 : 0)}') % CPU per call over accounting off, at the last step" | tee -a "$RESULTS"
  done
fi

# variant_run SECTION RATES LABEL FLAGS...: the call steps against a fresh all-in-one (no
# auth, no accounting) started with FLAGS; its CPU per call goes to VARIANT_CPU[SECTION-LABEL].
declare -A VARIANT_CPU=()
variant_run() {
  local section=$1 rates=$2 label=$3
  shift 3
  start_sipcluster "$section-$label" --no-auth --accounting off "$@"
  call_steps "$section-$label" "$SRV_PID" "$SRV_PORT" "$rates"
  VARIANT_CPU[$section-$label]=$LAST_CPU_PER_OP
  stop_pid "$SRV_PID"
}
# overhead SECTION LABEL BASE: LABEL's CPU per call over BASE's, in %
overhead() {
  awk -v a="${VARIANT_CPU[$1-$2]}" -v o="${VARIANT_CPU[$1-$3]}" 'BEGIN {printf "%.1f", (o > 0 ? (a / o - 1) * 100 : 0)}'
}

if want hep; then
  HEP_RATES=${LOAD_HEP_RATES:-$CALL_RATES}
  variant_run hep "$HEP_RATES" off
  HEP_PORT=$(free_port)
  HEP_PID=
  if command -v sngrep >/dev/null; then
    sngrep -N -q -L "udp:127.0.0.1:$HEP_PORT" -O "$WORK/hep.pcap" </dev/null >"$WORK/sngrep.log" 2>&1 &
    HEP_PID=$!
    PIDS+=("$HEP_PID")
    sleep 0.5
  fi
  variant_run hep "$HEP_RATES" on --hep "127.0.0.1:$HEP_PORT"
  [ -z "$HEP_PID" ] || stop_pid "$HEP_PID"
  echo "hep on: $(overhead hep on off) % CPU per call over hep off, at the last step (collector: $([ -n "$HEP_PID" ] && echo sngrep || echo "none listening"))" | tee -a "$RESULTS"
fi

# Tracing: the same call steps with OpenTelemetry off, at 1 % and at 100 % sampling (every
# span exported over OTLP/gRPC to loadtest/otlp-sink, a collector that counts them).
if want tracing; then
  TRACE_RATES=${LOAD_TRACE_RATES:-$CALL_RATES}
  OTLP_PORT=$(free_port)
  "$OTLP_SINK" --listen "127.0.0.1:$OTLP_PORT" >"$WORK/otlp-sink.log" 2>&1 &
  OTLP_PID=$!
  PIDS+=("$OTLP_PID")
  sleep 0.3
  variant_run trace "$TRACE_RATES" off
  variant_run trace "$TRACE_RATES" 1pct --otlp-endpoint "http://127.0.0.1:$OTLP_PORT" --trace-sample-ratio 0.01
  variant_run trace "$TRACE_RATES" 100pct --otlp-endpoint "http://127.0.0.1:$OTLP_PORT" --trace-sample-ratio 1
  kill "$OTLP_PID" 2>/dev/null || true
  wait "$OTLP_PID" 2>/dev/null || true
  echo "tracing: the collector received $(grep -o 'spans=[0-9]*' "$WORK/otlp-sink.log" | tail -1)" | tee -a "$RESULTS"
  for label in 1pct 100pct; do
    echo "tracing $label: $(overhead trace "$label" off) % CPU per call over tracing off, at the last step" | tee -a "$RESULTS"
  done
fi

# --- transports: CPU per call over UDP, TCP and TLS; TLS set-up rate; memory per held
# TLS and WSS connection ---------------------------------------------------------------------
# One all-in-one, the same call steps back to back with the caller's leg over UDP, over
# TCP (one connection per SIPp) and over TLS (SIPp speaks TCP to a local stunnel, which
# holds one TLS connection to us: Debian's SIPp is built without TLS); the callee stays on
# UDP. CPU per call is the all-in-one's (stunnel's is its own). Then loadtest/tls-conn
# opens TLS (and WSS) connections and holds them: the set-up rate, and the all-in-one's
# resident memory per held connection (VmRSS before and while held).
if want transports; then
  TR_RATES=${LOAD_TRANSPORT_RATES:-$CALL_RATES}
  TR_CONNS=${LOAD_TLS_CONNECTIONS:-2000}
  # A CA and a server certificate it signs (rustls refuses a CA certificate as a server's).
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=load-ca \
    -addext basicConstraints=critical,CA:TRUE -keyout "$WORK/ca.key" -out "$WORK/ca.crt" >/dev/null 2>&1
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=load \
    -keyout "$WORK/tls.key" -out "$WORK/tls.csr" >/dev/null 2>&1
  printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' >"$WORK/tls.ext"
  openssl x509 -req -in "$WORK/tls.csr" -CA "$WORK/ca.crt" -CAkey "$WORK/ca.key" -CAcreateserial \
    -days 2 -extfile "$WORK/tls.ext" -out "$WORK/tls.crt" >/dev/null 2>&1
  TLS_PORT=$(free_port)
  WSS_PORT=$(free_port)
  # The held connections all come from 127.0.0.1: no per-source cap for this run.
  printf '[limits]\ntcp_max_connections_per_source = 10000\n' >"$WORK/transports.toml"
  start_sipcluster transports --no-auth --accounting off --config "$WORK/transports.toml" --tls-listen "127.0.0.1:$TLS_PORT" \
    --wss-listen "127.0.0.1:$WSS_PORT" --tls-cert-file "$WORK/tls.crt" --tls-key-file "$WORK/tls.key"
  TR_PID=$SRV_PID
  call_steps transports-udp "$TR_PID" "$SRV_PORT" "$TR_RATES"
  TR_CPU_UDP=$LAST_CPU_PER_OP
  SIPP_CALLER_TRANSPORT=t1 call_steps transports-tcp "$TR_PID" "$SRV_PORT" "$TR_RATES"
  TR_CPU_TCP=$LAST_CPU_PER_OP
  ST_PORT=$(free_port)
  printf 'foreground = yes\npid =\nsyslog = no\noutput = %s\n[sip]\nclient = yes\naccept = 127.0.0.1:%s\nconnect = 127.0.0.1:%s\nverifyChain = yes\nCAfile = %s\ncheckIP = 127.0.0.1\n' \
    "$WORK/stunnel.log" "$ST_PORT" "$TLS_PORT" "$WORK/ca.crt" >"$WORK/stunnel.conf"
  stunnel "$WORK/stunnel.conf" >/dev/null 2>&1 &
  ST_PID=$!
  PIDS+=("$ST_PID")
  sleep 0.3
  SIPP_CALLER_TRANSPORT=t1 SIPP_CALLER_PORT=$ST_PORT call_steps transports-tls "$TR_PID" "$SRV_PORT" "$TR_RATES"
  TR_CPU_TLS=$LAST_CPU_PER_OP
  stop_pid "$ST_PID"
  echo "transports: CPU per call at the last step: UDP ${TR_CPU_UDP}us, TCP ${TR_CPU_TCP}us ($(awk -v a="$TR_CPU_TCP" -v o="$TR_CPU_UDP" 'BEGIN {printf "%+.1f", (o > 0 ? (a / o - 1) * 100 : 0)}') %), TLS ${TR_CPU_TLS}us ($(awk -v a="$TR_CPU_TLS" -v o="$TR_CPU_UDP" 'BEGIN {printf "%+.1f", (o > 0 ? (a / o - 1) * 100 : 0)}') % over UDP)" | tee -a "$RESULTS"
  # pss_kb PID: proportional set size of the process and its children (Kamailio's workers
  # share its memory: PSS counts each shared page once across them), kB
  pss_kb() {
    local total=0 p
    for p in $(pgrep -P "$1") "$1"; do
      [ -r "/proc/$p/smaps_rollup" ] && total=$((total + $(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup")))
    done
    echo "$total"
  }
  group_ticks() {
    local total=0 p
    for p in $(pgrep -P "$1") "$1"; do
      [ -r "/proc/$p/stat" ] && total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat")))
    done
    echo "$total"
  }
  # held_conns LABEL PID PORT KIND [MEM_CMD]: open TR_CONNS connections and hold them;
  # prints the set-up rate, the server's CPU per connection and its memory per held
  # connection (MEM_CMD prints the memory in kB: default the PSS of PID's processes)
  held_conns() {
    local label=$1 pid=$2 port=$3 kind=$4 mem=${5:-pss_kb} extra=() r0 r1 c0 c1 tc_pid held
    [ "$kind" = wss ] && extra=(--ws)
    sleep 2
    r0=$($mem "$pid")
    c0=$(group_ticks "$pid")
    "$TLS_CONN" --target "127.0.0.1:$port" --connections "$TR_CONNS" --concurrency 10 --ca "$WORK/ca.crt" \
      --hold-secs 4 "${extra[@]}" >"$WORK/tls-conn-$label-$kind.out" 2>&1 &
    tc_pid=$!
    PIDS+=("$tc_pid")
    for _ in $(seq 300); do grep -q established "$WORK/tls-conn-$label-$kind.out" && break; sleep 0.1; done
    c1=$(group_ticks "$pid")
    sleep 1
    r1=$($mem "$pid")
    held=$(grep -o 'established [0-9]*' "$WORK/tls-conn-$label-$kind.out" | grep -o '[0-9]*$' || echo 0)
    wait "$tc_pid" 2>/dev/null || true
    grep -m1 'connection failed' "$WORK/tls-conn-$label-$kind.out" | tee -a "$RESULTS" || true
    echo "$label $kind: $(grep established "$WORK/tls-conn-$label-$kind.out"); server CPU per connection set up $(per_op $((c1 - c0)) "${held:-0}"); memory ($mem) per held connection $(awk -v a="$r0" -v b="$r1" -v n="${held:-0}" 'BEGIN {printf "%.1f kB", (n > 0 ? (b - a) / n : 0)}') ($r0 kB -> $r1 kB)" | tee -a "$RESULTS"
  }
  stop_pid "$TR_PID"
  # Each kind against a fresh all-in-one: memory freed by one run must not be counted as
  # taken by the next.
  for kind in tls wss; do
    start_sipcluster "transports-$kind" --no-auth --accounting off --config "$WORK/transports.toml" \
      --tls-listen "127.0.0.1:$TLS_PORT" --wss-listen "127.0.0.1:$WSS_PORT" \
      --tls-cert-file "$WORK/tls.crt" --tls-key-file "$WORK/tls.key"
    port=$TLS_PORT
    [ "$kind" = wss ] && port=$WSS_PORT
    held_conns sipcluster "$SRV_PID" "$port" "$kind"
    stop_pid "$SRV_PID"
  done
  # Kamailio's TLS (OpenSSL) side by side, when its tls module is installed (apt
  # kamailio-tls-modules); its published figure is 61 kB per TLS connection.
  if command -v kamailio >/dev/null && [ -e /usr/lib/x86_64-linux-gnu/kamailio/modules/tls.so ]; then
    KT_PORT=$(free_port)
    mkdir -p "$WORK/kamailio-tls"
    printf '[server:default]\nmethod = TLSv1.2+\nverify_certificate = no\nrequire_certificate = no\nprivate_key = %s\ncertificate = %s\n' \
      "$WORK/tls.key" "$WORK/tls.crt" >"$WORK/kamailio-tls/tls.cfg"
    kamailio -f "$ROOT/loadtest/kamailio/tls.cfg" -DD -E -m 512 -M 64 -w "$WORK/kamailio-tls" \
      -l "tls:127.0.0.1:$KT_PORT" -A "TLSCFG=\"$WORK/kamailio-tls/tls.cfg\"" \
      -A "CTL=\"unix:$WORK/kamailio-tls/ctl\"" \
      -P "$WORK/kamailio-tls/kamailio.pid" >"$WORK/kamailio-tls/kamailio.log" 2>&1 &
    KT_PID=$!
    PIDS+=("$KT_PID")
    sleep 1.5
    # Kamailio's TLS connections live in its shared memory (the tls module gives OpenSSL
    # shm_malloc): its own count of shared memory in use.
    kam_shm_kb() { { kamcmd -s "unix:$WORK/kamailio-tls/ctl" core.shmmem 2>/dev/null || true; } | awk '$1 == "used:" {print int($2 / 1024)}'; }
    if kill -0 "$KT_PID" 2>/dev/null; then
      held_conns kamailio "$KT_PID" "$KT_PORT" tls kam_shm_kb
    else
      echo "kamailio (tls) did not start: $(tail -3 "$WORK/kamailio-tls/kamailio.log")" | tee -a "$RESULTS"
    fi
    stop_pid "$KT_PID"
  else
    echo "kamailio tls: not installed (apt kamailio-tls-modules); published: 61 kB per TLS connection" | tee -a "$RESULTS"
  fi
fi

if want auth; then
  start_sipcluster auth
  register_steps sipcluster register+auth "$ROOT/loadtest/sipp/register_auth.xml" "$SRV_PID" "$SRV_PORT" "$AUTH_RATES" \
    -auth_uri "$DOMAIN"
  stop_pid "$SRV_PID"
fi

# Overload (sip-flood; see the header): per internal hop, the peak goodput over
# FLOOD_RATES, then twice the peak with the admission rule on and off.
# flood NAME RATE: offer RATE REGISTER/s to the running server; FL_* hold the result.
flood() {
  local name=$1 rate=$2 out
  out=$("$FLOOD" --target "127.0.0.1:$SRV_PORT" --rate "$rate" --secs "$STEP" --drain-secs 5 \
    --users "$USERS" --domain "$DOMAIN")
  echo "$out" >"$WORK/$name.flood"
  kv() { sed -n "s/.*[ ^]$1=\([^ ]*\).*/\1/p; s/^$1=\([^ ]*\).*/\1/p" <<<"$out" | head -1; }
  FL_GOODPUT=$(kv goodput | tr -d '/s')
  FL_OK=$(kv ok)
  FL_503=$(kv unavailable_503)
  FL_NONE=$(kv unanswered)
  FL_OTHER=$(kv other)
  FL_RETX=$(kv retransmissions)
  FL_P50=$(kv p50_ms)
  FL_P99=$(kv p99_ms)
}
flood_row() {
  local test=$1 rate=$2 note=$3
  local fail
  fail=$(awk -v t="$((rate * STEP))" -v o="$FL_OK" 'BEGIN {printf "%.2f", 100 * (t - o) / t}')
  row sipcluster "$test" "$rate/s" "$FL_GOODPUT/s" "$fail" "$FL_P50" "$FL_P99" "$4" "$note"
  echo "    503: $FL_503, other: $FL_OTHER, unanswered: $FL_NONE, retransmissions: $FL_RETX" | tee -a "$RESULTS"
}
if want overload; then
printf '[limits]\nqueue_target_ms = 0\n' >"$WORK/no-admission.toml"
for hop in udp in-process; do
  hop_flag=false
  [ "$hop" = in-process ] && hop_flag=true
  start_sipcluster "flood-$hop" --no-auth --in-process-hop "$hop_flag"
  PEAK=0
  for rate in $FLOOD_RATES; do
    c0=$(cpu_ticks "$SRV_PID")
    flood "flood-$hop-$rate" "$rate"
    c1=$(cpu_ticks "$SRV_PID")
    note=""
    # Sustained: at least 95 % of what was offered got its 200.
    if [ "$FL_OK" -ge $((rate * STEP * 95 / 100)) ]; then note=sustained; fi
    flood_row "flood ($hop hop)" "$rate" "$note" "$(per_op $((c1 - c0)) "$FL_OK")"
    [ "$FL_GOODPUT" -gt "$PEAK" ] && PEAK=$FL_GOODPUT
  done
  stop_pid "$SRV_PID"
  OVER=$((PEAK * 2))
  echo "sipcluster flood ($hop hop): peak goodput $PEAK/s; offering $OVER/s" | tee -a "$RESULTS"
  for variant in admission no-admission; do
    if [ "$variant" = admission ]; then
      start_sipcluster "over-$hop-$variant" --no-auth --in-process-hop "$hop_flag"
    else
      start_sipcluster "over-$hop-$variant" --no-auth --in-process-hop "$hop_flag" --config "$WORK/no-admission.toml"
    fi
    c0=$(cpu_ticks "$SRV_PID")
    flood "over-$hop-$variant" "$OVER"
    c1=$(cpu_ticks "$SRV_PID")
    flood_row "overload ($hop, $variant)" "$OVER" "" "$(per_op $((c1 - c0)) "$FL_OK")"
    echo "sipcluster overload ($hop hop, $variant) at 2x the peak ($OVER/s): goodput $FL_GOODPUT/s = $(awk -v g="$FL_GOODPUT" -v p="$PEAK" 'BEGIN {printf "%.0f", (p > 0 ? 100 * g / p : 0)}') % of the peak; $FL_503 answered 503 + Retry-After" | tee -a "$RESULTS"
    stop_pid "$SRV_PID"
  done
done
fi

if want echo; then
  ECHO_RATE=${LOAD_ECHO_RATE:-10000}
  SRV_PORT=$(free_port)
  "$FLOOD" --echo "127.0.0.1:$SRV_PORT" --secs $((STEP + 10)) --drain-secs 0 &
  ECHO_PID=$!
  PIDS+=("$ECHO_PID")
  sleep 0.5
  c0=$(cpu_ticks "$ECHO_PID")
  flood echo-floor "$ECHO_RATE"
  c1=$(cpu_ticks "$ECHO_PID")
  floor_ok=$FL_OK
  floor_cpu=$((c1 - c0))
  flood_row "echo floor" "$ECHO_RATE" "" "$(per_op "$floor_cpu" "$FL_OK")"
  stop_pid "$ECHO_PID"
  start_sipcluster echo-register --no-auth
  c0=$(cpu_ticks "$SRV_PID")
  flood echo-register "$ECHO_RATE"
  c1=$(cpu_ticks "$SRV_PID")
  flood_row "register (flood)" "$ECHO_RATE" "" "$(per_op $((c1 - c0)) "$FL_OK")"
  stop_pid "$SRV_PID"
  echo "sipcluster REGISTER (no auth) at $ECHO_RATE/s costs $(awk -v a=$((c1 - c0)) -v ao="$FL_OK" -v f="$floor_cpu" -v fo="$floor_ok" 'BEGIN {printf "%.1f", (f > 0 && ao > 0 ? (a / ao) / (f / fo) : 0)}')x the echo floor" | tee -a "$RESULTS"
fi

# --- Kamailio, side by side -------------------------------------------------------------------

if [ "$KAMAILIO" = 1 ]; then
  command -v kamailio >/dev/null || { echo "kamailio missing: apt-get install kamailio" >&2; exit 1; }
  # start_kamailio AUTH(0|1): sets SRV_PID SRV_PORT
  start_kamailio() {
    SRV_PORT=$(free_port)
    local dir=$WORK/kamailio-$1 defs=()
    mkdir -p "$dir/db"
    # Subscribers as a db_text table loaded into an htable at start (plain passwords, HA1
    # computed per request, like the edge's file-backed store).
    printf 'table_name(str) table_version(int)\nhtable:2\n' >"$dir/db/version"
    { printf 'id(int,auto) key_name(str) key_type(int) value_type(int) key_value(str) expires(int)\n'
      awk -F';' 'NR > 1 {split($2, a, "password="); sub(/]$/, "", a[2]); print NR - 1 ":" $1 ":0:0:" a[2] ":0"}' "$WORK/users.csv"
    } >"$dir/db/htable"
    [ "$1" = 1 ] && defs+=(-A AUTH)
    kamailio -f "$ROOT/loadtest/kamailio/kamailio.cfg" -DD -E -m 512 -M 64 -w "$dir" \
      -l "udp:127.0.0.1:$SRV_PORT" "${defs[@]}" -A "DBURL=\"text://$dir/db\"" \
      -A "DOMAIN=\"$DOMAIN\"" -P "$dir/kamailio.pid" >"$dir/kamailio.log" 2>&1 &
    SRV_PID=$!
    PIDS+=("$SRV_PID")
    sleep 1.5
    kill -0 "$SRV_PID" 2>/dev/null || { cat "$dir/kamailio.log" >&2; exit 1; }
  }
  # Kamailio is several processes: sum the CPU of the whole process group.
  cpu_ticks() {
    local total=0 p
    for p in $(pgrep -P "$1") "$1"; do
      [ -r "/proc/$p/stat" ] && total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat")))
    done
    echo "$total"
  }
  if want register; then
    start_kamailio 0
    register_steps kamailio register "$ROOT/loadtest/sipp/register.xml" "$SRV_PID" "$SRV_PORT" "$REG_RATES"
    stop_pid "$SRV_PID"
  fi
  if want call; then
    start_kamailio 0
    call_steps kamailio "$SRV_PID" "$SRV_PORT" "$CALL_RATES"
    stop_pid "$SRV_PID"
  fi
  if want auth; then
    start_kamailio 1
    register_steps kamailio register+auth "$ROOT/loadtest/sipp/register_auth.xml" "$SRV_PID" "$SRV_PORT" "$AUTH_RATES" \
      -auth_uri "$DOMAIN"
    stop_pid "$SRV_PID"
  fi
fi

# --- cluster mode: edge + location service + Redis ------------------------------------------

# Three processes on the same cores as SIPp: a private redis-server, `sipcluster location`
# over it (the users file provisioned into Redis at start) and one `sipcluster edge` asking
# the location service for credentials and bindings over gRPC. REGISTER with digest auth,
# as in the auth section; the CPU of each process is read from its own /proc/PID/stat.
if want cluster; then
  # proc_ticks PID: user+system ticks of one process, all its threads (the Kamailio section
  # redefines cpu_ticks for process groups)
  proc_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
  crow() { printf '%-10s %-16s %8s %9s %7s %8s %8s %9s %9s %9s %9s %7s %s\n' "$@" | tee -a "$RESULTS"; }
  # waitfor WHAT PID LOG CMD...: poll CMD for up to 30 s while PID lives, or show LOG and fail
  waitfor() {
    local what=$1 pid=$2 log=$3
    shift 3
    for _ in $(seq 300); do
      "$@" && return 0
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    echo "$what did not start:" >&2
    cat "$log" >&2
    exit 1
  }
  redis_ok() { # redis_ok PORT: true when Redis answers PING
    { exec 3<>"/dev/tcp/127.0.0.1/$1"; } 2>/dev/null || return 1
    printf 'PING\r\n' >&3
    head -1 <&3 | grep -q PONG
    local rc=$?
    exec 3>&-
    return $rc
  }
  provisioned() { grep -q 'users file provisioned' "$WORK/location.log"; }
  wargs=()
  [ -n "${LOAD_CLUSTER_WORKERS:-}" ] && wargs=(--workers "$LOAD_CLUSTER_WORKERS")

  REDIS_PORT=$(free_port)
  mkdir -p "$WORK/redis"
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no --dir "$WORK/redis" \
    --daemonize no >"$WORK/redis.log" 2>&1 &
  REDIS_PID=$!
  PIDS+=("$REDIS_PID")
  waitfor redis-server "$REDIS_PID" "$WORK/redis.log" redis_ok "$REDIS_PORT"
  LOC_PORT=$(free_port)
  LOC_METRICS=$(free_port)
  # info for the location crate only: its "users file provisioned" line tells when Redis
  # holds every subscriber (/readyz only says Redis answers)
  "$BIN" location --listen "127.0.0.1:$LOC_PORT" --redis "redis://127.0.0.1:$REDIS_PORT" \
    --metrics "127.0.0.1:$LOC_METRICS" --users "$WORK/users.toml" --log-level warn,location=info \
    "${wargs[@]}" >"$WORK/location.log" 2>&1 &
  LOC_PID=$!
  PIDS+=("$LOC_PID")
  waitfor "the location service" "$LOC_PID" "$WORK/location.log" http_ok "$LOC_METRICS" /readyz
  waitfor "the location service's users" "$LOC_PID" "$WORK/location.log" provisioned
  EDGE_PORT=$(free_port)
  EDGE_METRICS=$(free_port)
  "$BIN" edge --listen "127.0.0.1:$EDGE_PORT" --metrics "127.0.0.1:$EDGE_METRICS" \
    --location "http://127.0.0.1:$LOC_PORT" --nonce-secret load-test-nonce-secret-0123456789 \
    --log-level warn --source-rate 0 "${wargs[@]}" >"$WORK/edge.log" 2>&1 &
  EDGE_PID=$!
  PIDS+=("$EDGE_PID")
  waitfor "the edge" "$EDGE_PID" "$WORK/edge.log" http_ok "$EDGE_METRICS" /readyz

  printf '\n' | tee -a "$RESULTS"
  crow server test offered achieved "fail%" "p50ms" "p99ms" "edge/op" "loc/op" "redis/op" "sum/op" "rpc/op" note
  LAST_SUSTAINED=0
  for rate in $CLUSTER_RATES; do
    count=$((rate * STEP))
    name="cluster-auth-$rate"
    e0=$(proc_ticks "$EDGE_PID")
    l0=$(proc_ticks "$LOC_PID")
    r0=$(proc_ticks "$REDIS_PID")
    g0=$(metric "$LOC_METRICS" sipcluster_location_grpc_calls_total)
    run_sipp "$name" "$ROOT/loadtest/sipp/register_auth.xml" "$rate" "$count" "$(free_port)" "127.0.0.1:$EDGE_PORT" \
      -default_behaviors all,-bye \
      -inf "$WORK/users.csv" -auth_uri "$DOMAIN"
    e1=$(proc_ticks "$EDGE_PID")
    l1=$(proc_ticks "$LOC_PID")
    r1=$(proc_ticks "$REDIS_PID")
    g1=$(metric "$LOC_METRICS" sipcluster_location_grpc_calls_total)
    step_stats "$rate" "$name"
    crow cluster register+auth "$rate/s" "$ST_ACHIEVED/s" "$ST_FAILPCT" "$ST_P50" "$ST_P99" \
      "$(per_op $((e1 - e0)) "$ST_OK")" "$(per_op $((l1 - l0)) "$ST_OK")" "$(per_op $((r1 - r0)) "$ST_OK")" \
      "$(per_op $((e1 - e0 + l1 - l0 + r1 - r0)) "$ST_OK")" \
      "$(awk -v g=$((g1 - g0)) -v o="$ST_OK" 'BEGIN {printf "%.2f", (o > 0 ? g / o : 0)}')" "$ST_NOTE"
  done
  echo "cluster register+auth: max sustained $LAST_SUSTAINED/s" | tee -a "$RESULTS"
  echo "(cpu per REGISTER of the edge, the location service, redis-server and their sum; rpc/op: location gRPC calls per REGISTER)" |
    tee -a "$RESULTS"
  stop_pid "$EDGE_PID"
  stop_pid "$LOC_PID"
  stop_pid "$REDIS_PID"
fi

# --- the dispatcher hop: calls through edge alone vs dispatcher + edge ----------------------

# One `sipcluster location` (memory), one `sipcluster edge` (no auth, no Record-Route) and
# one `sipcluster dispatcher` in front of it. At each rate the same call load runs twice:
# straight to the edge, then through the dispatcher (callee registered through it, so both
# legs of every call cross it). CPU per call of each process from /proc/PID/stat.
if want dispatcher; then
  proc_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
  drow() { printf '%-10s %-18s %8s %9s %7s %8s %8s %9s %9s %9s %7s %s\n' "$@" | tee -a "$RESULTS"; }
  start_bg() { # start_bg NAME METRICS_PORT CMD...: sets BG_PID
    local name=$1 mport=$2
    shift 2
    "$@" >"$WORK/$name.log" 2>&1 &
    BG_PID=$!
    PIDS+=("$BG_PID")
    for _ in $(seq 300); do
      http_ok "$mport" /readyz && return 0
      kill -0 "$BG_PID" 2>/dev/null || break
      sleep 0.1
    done
    echo "$name did not start:" >&2
    cat "$WORK/$name.log" >&2
    exit 1
  }
  # The callee of each step is a known subscriber (an unknown user gets 404).
  cp "$WORK/users.toml" "$WORK/dusers.toml"
  for rate in $DISPATCH_RATES; do
    for u in "ce$rate" "cd$rate"; do
      printf '[[user]]\nusername = "%s"\nrealm = "%s"\npassword = "x"\n' "$u" "$DOMAIN" >>"$WORK/dusers.toml"
    done
  done
  DLOC_PORT=$(free_port)
  DLOC_METRICS=$(free_port)
  start_bg dloc "$DLOC_METRICS" "$BIN" location --listen "127.0.0.1:$DLOC_PORT" \
    --metrics "127.0.0.1:$DLOC_METRICS" --users "$WORK/dusers.toml" --log-level warn
  DLOC_PID=$BG_PID
  DEDGE_PORT=$(free_port)
  DEDGE_METRICS=$(free_port)
  start_bg dedge "$DEDGE_METRICS" "$BIN" edge --listen "127.0.0.1:$DEDGE_PORT" \
    --metrics "127.0.0.1:$DEDGE_METRICS" --location "http://127.0.0.1:$DLOC_PORT" \
    --nonce-secret load-test-nonce-secret-0123456789 --no-auth --no-record-route --log-level warn \
    --source-rate 0
  DEDGE_PID=$BG_PID
  DISP_PORT=$(free_port)
  DISP_METRICS=$(free_port)
  start_bg disp "$DISP_METRICS" "$BIN" dispatcher --listen "127.0.0.1:$DISP_PORT" \
    --internal "127.0.0.1:$(free_port)" --edges "127.0.0.1:$DEDGE_PORT" \
    --secret load-test-nonce-secret-0123456789 --metrics "127.0.0.1:$DISP_METRICS" --admin off \
    --log-level warn --flood-rate 0
  DISP_PID=$BG_PID
  for _ in $(seq 100); do
    [ "$(metric "$DISP_METRICS" sipcluster_dispatcher_target_up)" = 1 ] && break
    sleep 0.1
  done

  # dcall NAME RATE ENTRY_PORT USER: one step of calls entering at ENTRY_PORT, the callee
  # (a fresh user per step, so no stale binding is forked to) registered there too
  dcall() {
    local name=$1 rate=$2 port=$3 user=$4 count uas_port uas_pid
    count=$((rate * STEP))
    uas_port=$(free_port)
    printf 'SEQUENTIAL\n%s;x;%s\n' "$user" "$DOMAIN" >"$WORK/dcallee.csv"
    (cd "$WORK" && timeout 30 sipp -sf "$ROOT/loadtest/sipp/register.xml" -t u1 -i 127.0.0.1 -p "$uas_port" \
      -m 1 -timeout 20 -nostdin -inf "$WORK/dcallee.csv" "127.0.0.1:$port" >/dev/null 2>&1) || {
      echo "callee registration through 127.0.0.1:$port failed" >&2
      exit 1
    }
    (cd "$WORK" && exec timeout $((STEP * 3 + 90)) sipp -sf "$ROOT/tests/sipp/uas_answer.xml" -t u1 -i 127.0.0.1 \
      -p "$uas_port" -m "$count" -timeout $((STEP * 3 + 60)) -nostdin -max_recv_loops 10000 \
      -buff_size 4194304 >/dev/null 2>&1) &
    uas_pid=$!
    PIDS+=("$uas_pid")
    sleep 0.3
    printf 'SEQUENTIAL\ncaller;%s;%s\n' "$DOMAIN" "$user" >"$WORK/dcaller.csv"
    d0=$(proc_ticks "$DISP_PID")
    e0=$(proc_ticks "$DEDGE_PID")
    l0=$(proc_ticks "$DLOC_PID")
    run_sipp "$name" "$ROOT/loadtest/sipp/uac_call.xml" "$rate" "$count" "$(free_port)" "127.0.0.1:$port" \
      -inf "$WORK/dcaller.csv"
    d1=$(proc_ticks "$DISP_PID")
    e1=$(proc_ticks "$DEDGE_PID")
    l1=$(proc_ticks "$DLOC_PID")
    stop_pid "$uas_pid"
    step_stats "$rate" "$name"
  }

  printf '\n' | tee -a "$RESULTS"
  drow server test offered achieved "fail%" "p50ms" "p99ms" "disp/call" "edge/call" "loc/call" "disp%" note
  EDGE_MAX=0
  DISP_MAX=0
  for rate in $DISPATCH_RATES; do
    dcall "edge-call-$rate" "$rate" "$DEDGE_PORT" "ce$rate"
    [ "$ST_NOTE" = sustained ] && EDGE_MAX=$rate
    drow edge-alone call "$rate/s" "$ST_ACHIEVED/s" "$ST_FAILPCT" "$ST_P50" "$ST_P99" "-" \
      "$(per_op $((e1 - e0)) "$ST_OK")" "$(per_op $((l1 - l0)) "$ST_OK")" "-" "$ST_NOTE"
    dcall "disp-call-$rate" "$rate" "$DISP_PORT" "cd$rate"
    [ "$ST_NOTE" = sustained ] && DISP_MAX=$rate
    drow disp+edge call "$rate/s" "$ST_ACHIEVED/s" "$ST_FAILPCT" "$ST_P50" "$ST_P99" \
      "$(per_op $((d1 - d0)) "$ST_OK")" "$(per_op $((e1 - e0)) "$ST_OK")" "$(per_op $((l1 - l0)) "$ST_OK")" \
      "$(awk -v d=$((d1 - d0)) -v e=$((e1 - e0)) 'BEGIN {printf "%.1f", (e > 0 ? 100 * d / e : 0)}')" "$ST_NOTE"
  done
  echo "calls: edge alone max sustained $EDGE_MAX/s; dispatcher + edge max sustained $DISP_MAX/s" | tee -a "$RESULTS"
  echo "(disp%: the dispatcher's CPU per call as a share of the edge's, same step)" | tee -a "$RESULTS"
  stop_pid "$DISP_PID"
  stop_pid "$DEDGE_PID"
  stop_pid "$DLOC_PID"
fi

# --- the media relay: concurrent G.711 streams ----------------------------------------------

# One `sipcluster media-relay` (its default one forwarding worker) and `rtp-load` on the
# same cores: each step sets up streams/2 sessions over the gRPC API and sends every stream
# at 50 packets/s for LOAD_STEP_SECONDS after a 2 s warm-up. Pass: loss < 0.1 % and p99
# added latency < 5 ms. CPU per packet of the relay from /proc/PID/stat. Then rtpengine, if
# installed, with the same steps from the same generator (sessions over its ng protocol).

# media_steps NAME PID [rtp-load control flags...]: one rtp-load run per LOAD_MEDIA_STREAMS
# step against the relay at PID; prints "NAME <rtp-load's fields> pass|fail", sets
# STEPS_MAX (the largest step passing) and STEPS_FIRST_FAIL (the first step failing, "none":
# on a busy host a step past the first failure can pass by luck) and writes "streams pass us_per_packet" lines to
# $WORK/NAME.steps for the ratios.
media_steps() {
  local name=$1 pid=$2 streams line pass
  shift 2
  STEPS_MAX=0
  STEPS_FIRST_FAIL=none
  : >"$WORK/$name.steps"
  for streams in $MEDIA_STREAMS; do
    # Setup and teardown are a few seconds at most; the timeout only catches a hung relay.
    line=$(timeout $((STEP + 120)) "$RTP_LOAD" "$@" --streams "$streams" --secs "$STEP" \
      --relay-pid "$pid" 2>>"$WORK/rtp-load.log") || line="streams=$streams failed"
    pass=$(awk '{for (i = 1; i <= NF; i++) {split($i, kv, "="); v[kv[1]] = kv[2]}}
      END {print (v["loss_pct"] != "" && v["loss_pct"] < 0.1 && v["p99_ms"] < 5) ? "pass" : "fail"}' <<<"$line")
    [ "$pass" = pass ] && STEPS_MAX=$streams
    [ "$pass" = fail ] && [ "$STEPS_FIRST_FAIL" = none ] && STEPS_FIRST_FAIL=$streams
    echo "$name $line $pass" | tee -a "$RESULTS"
    awk -v s="$streams" -v p="$pass" '{for (i = 1; i <= NF; i++) {split($i, kv, "="); v[kv[1]] = kv[2]}}
      END {print s, p, (v["relay_us_per_packet"] != "" ? v["relay_us_per_packet"] : "n/a")}' \
      <<<"$line" >>"$WORK/$name.steps"
  done
}

if want media; then
  MEDIA_CONTROL=$(free_port)
  MEDIA_METRICS=$(free_port)
  "$BIN" media-relay --control "127.0.0.1:$MEDIA_CONTROL" --metrics "127.0.0.1:$MEDIA_METRICS" \
    --bind-v4 127.0.0.1 --ports 20000-39999 --log-level warn >"$WORK/media-relay.log" 2>&1 &
  MEDIA_PID=$!
  PIDS+=("$MEDIA_PID")
  for _ in $(seq 100); do http_ok "$MEDIA_METRICS" /readyz && break; sleep 0.1; done
  printf '\n' | tee -a "$RESULTS"
  media_steps media-relay "$MEDIA_PID" --control "http://127.0.0.1:$MEDIA_CONTROL"
  MEDIA_MAX=$STEPS_MAX
  echo "media: max streams passing (loss < 0.1 %, p99 < 5 ms): $MEDIA_MAX (first failing step: $STEPS_FIRST_FAIL)" |
    tee -a "$RESULTS"
  stop_pid "$MEDIA_PID"

  RTPENGINE=$(command -v rtpengine || true)
  [ -z "$RTPENGINE" ] && [ -x /usr/bin/rtpengine ] && RTPENGINE=/usr/bin/rtpengine
  if [ -z "$RTPENGINE" ]; then
    echo "media: rtpengine skipped (not installed; apt-get install rtpengine-daemon to compare)" | tee -a "$RESULTS"
  else
    # Userspace forwarding (--table=-1: no kernel module), no config file (the package's
    # /etc/rtpengine/rtpengine.conf would add listeners on other ports), loopback only,
    # two forwarding threads like the anchors note. Its RTP ports do not overlap the
    # media relay's; --delete-delay=0 frees a step's ports at once (rtp-load asks for that
    # on each delete too), warnings only, like our relay's --log-level warn.
    RTE_NG=$(free_port)
    RTE_ARGS=(--config-file=none --table=-1 --interface=127.0.0.1 --listen-ng="127.0.0.1:$RTE_NG"
      --port-min=40000 --port-max=59999 --num-threads=2 --delete-delay=0
      --foreground --log-stderr --log-level=4)
    "$RTPENGINE" "${RTE_ARGS[@]}" >"$WORK/rtpengine.log" 2>&1 &
    RTE_PID=$!
    PIDS+=("$RTE_PID")
    for _ in $(seq 100); do
      ss -Hlnu "sport = :$RTE_NG" | grep -q . && break
      kill -0 "$RTE_PID" 2>/dev/null || break
      sleep 0.1
    done
    if ! kill -0 "$RTE_PID" 2>/dev/null; then
      echo "media: rtpengine did not start:" | tee -a "$RESULTS"
      tail -20 "$WORK/rtpengine.log" >&2
    else
      echo "media: rtpengine $("$RTPENGINE" --version 2>&1 | awk '{print $NF}'): $RTPENGINE ${RTE_ARGS[*]}" | tee -a "$RESULTS"
      media_steps rtpengine "$RTE_PID" --rtpengine "127.0.0.1:$RTE_NG"
      RTE_MAX=$STEPS_MAX
      echo "media: rtpengine max streams passing: $RTE_MAX (first failing step: $STEPS_FIRST_FAIL)" |
        tee -a "$RESULTS"
      stop_pid "$RTE_PID"
      awk -v a="$MEDIA_MAX" -v b="$RTE_MAX" \
        'BEGIN {if (b > 0) printf "media: sipcluster/rtpengine streams ratio %.2f\n", a / b;
          else print "media: sipcluster/rtpengine streams ratio n/a (rtpengine passed no step)"}' | tee -a "$RESULTS"
      # CPU per packet at the largest step both passed (below a knee the cost per packet
      # is the relay's, past it queueing and loss blur it); else at the smallest step.
      awk 'NR == FNR {p[$1] = $2; c[$1] = $3; next}
        !($1 in p) {next}
        s == "" {s = $1; a = c[$1]; b = $3}
        p[$1] == "pass" && $2 == "pass" {s = $1; a = c[$1]; b = $3}
        END {if (s == "") exit
          r = (a + 0 > 0 && b + 0 > 0) ? sprintf("%.2f", a / b) : "n/a"
          printf "media: sipcluster/rtpengine CPU per packet ratio %s at %s streams (%s vs %s us/packet)\n", r, s, a, b}' \
        "$WORK/media-relay.steps" "$WORK/rtpengine.steps" | tee -a "$RESULTS"
    fi
  fi
fi

printf '\n## summary\n'
cat "$RESULTS"
