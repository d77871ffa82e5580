#!/usr/bin/env bash
# SIP load harness: the all-in-one (release build) driven by SIPp at increasing rates.
#
#   loadtest/run.sh                 REGISTER (no auth), REGISTER (digest), calls, overload
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
# Environment: LOAD_STEP_SECONDS (default 10), LOAD_REG_RATES, LOAD_AUTH_RATES,
# LOAD_CALL_RATES (space-separated steps), LOAD_USERS (default 10000), LOAD_ONLY (a subset
# of "register call auth overload", default all).
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
if [ "$QUICK" = 1 ]; then
  STEP=${LOAD_STEP_SECONDS:-3}
  USERS=${LOAD_USERS:-500}
  REG_RATES=${LOAD_REG_RATES:-"500 1000"}
  AUTH_RATES=${LOAD_AUTH_RATES:-"500"}
  CALL_RATES=${LOAD_CALL_RATES:-"100"}
fi
ONLY=${LOAD_ONLY:-register call auth overload}
want() { [[ " $ONLY " == *" $1 "* ]]; }
TICK=$(getconf CLK_TCK)
DOMAIN=sipcluster.local

command -v sipp >/dev/null || { echo "SIPp missing: apt-get install sip-tester (./scripts/test.sh does)" >&2; exit 1; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/sipcluster-load.XXXXXX")
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

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
cargo build --release --locked -p sipcluster >/dev/null 2>&1 || cargo build --release --locked -p sipcluster
BIN=$ROOT/target/release/sipcluster

# start_sipcluster NAME [flags...]: sets SRV_PID SRV_PORT SRV_METRICS
start_sipcluster() {
  local name=$1
  shift
  SRV_PORT=$(free_port)
  SRV_METRICS=$(free_port)
  "$BIN" all-in-one --listen "127.0.0.1:$SRV_PORT" --metrics "127.0.0.1:$SRV_METRICS" \
    --users "$WORK/users.toml" --nonce-secret load-test-nonce-secret-0123456789 \
    --log-level warn "$@" >"$WORK/$name.log" 2>&1 &
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
  (cd "$WORK" && timeout $((STEP * 3 + 60)) sipp -sf "$scen" -t u1 -i 127.0.0.1 -p "$port" \
    -r "$rate" -m "$count" -timeout $((STEP * 3 + 30)) -nostdin -max_recv_loops 10000 \
    -trace_stat -stf "$name.stat" -fd 1 -trace_rtt -rtt_freq 100 -trace_err -error_file "$name.err" \
    "$@" "$target" >/dev/null 2>&1) || true
  mv "$WORK"/*_rtt.csv "$WORK/$name.rtt" 2>/dev/null || : >"$WORK/$name.rtt"
}

# measure SERVER TEST PID RATE NAME COUNT: print one result row from a finished run
measure() {
  local server=$1 test=$2 pid=$3 rate=$4 name=$5 count=$6 cpu=$7
  local ok fail achieved failpct p50 p99 perop note=""
  ok=$(stat_col "$WORK/$name.stat" "SuccessfulCall(C)")
  fail=$(stat_col "$WORK/$name.stat" "FailedCall(C)")
  achieved=$(achieved "$WORK/$name.rtt")
  failpct=$(awk -v o="$ok" -v f="$fail" 'BEGIN {printf "%.2f", (o + f > 0 ? 100 * f / (o + f) : 100)}')
  p50=$(percentile "$WORK/$name.rtt" 50)
  p99=$(percentile "$WORK/$name.rtt" 99)
  perop=$(awk -v c="$cpu" -v t="$TICK" -v o="$ok" 'BEGIN {printf "%.1fus", (o > 0 ? c / t * 1e6 / o : 0)}')
  if awk -v f="$failpct" -v a="$achieved" -v r="$rate" 'BEGIN {exit !(f < 1 && a >= 0.95 * r)}'; then
    note=sustained
    LAST_SUSTAINED=$rate
  fi
  row "$server" "$test" "$rate/s" "$achieved/s" "$failpct" "$p50" "$p99" "$perop" "$note"
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
    run_sipp "$name" "$scen" "$rate" "$count" "$(free_port)" "127.0.0.1:$port" -inf "$WORK/users.csv" "$@"
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
    run_sipp "$name" "$ROOT/loadtest/sipp/uac_call.xml" "$rate" "$count" "$(free_port)" "127.0.0.1:$port" \
      -inf "$WORK/caller.csv"
    c1=$(cpu_ticks "$pid")
    stop_pid "$uas_pid"
    measure "$server" "call" "$pid" "$rate" "$name" "$count" $((c1 - c0))
  done
  echo "$server call: max sustained $LAST_SUSTAINED/s" | tee -a "$RESULTS"
}

echo "steps of ${STEP}s; $USERS subscribers; CPU per operation is the server process's user+system time"
header

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
  start_sipcluster calls --no-auth
  call_steps sipcluster "$SRV_PID" "$SRV_PORT" "$CALL_RATES"
  stop_pid "$SRV_PID"
fi

if want auth; then
  start_sipcluster auth
  register_steps sipcluster register+auth "$ROOT/loadtest/sipp/register_auth.xml" "$SRV_PID" "$SRV_PORT" "$AUTH_RATES" \
    -auth_uri "$DOMAIN"
  stop_pid "$SRV_PID"
fi

# Overload: twice the best sustained REGISTER rate (or the top step when none held).
OVER=${LOAD_OVERLOAD_RATE:-$((${REG_MAX:-0} > 0 ? REG_MAX * 2 : ${REG_RATES##* } * 2))}
if want overload; then
start_sipcluster overload --no-auth
c0=$(cpu_ticks "$SRV_PID")
run_sipp over "$ROOT/loadtest/sipp/register.xml" "$OVER" $((OVER * STEP)) "$(free_port)" "127.0.0.1:$SRV_PORT" \
  -inf "$WORK/users.csv"
c1=$(cpu_ticks "$SRV_PID")
measure sipcluster overload "$SRV_PID" "$OVER" over $((OVER * STEP)) $((c1 - c0))
rejected=$(metric "$SRV_METRICS" sipcluster_sip_overload_rejections_total)
echo "sipcluster overload at $OVER/s offered: goodput $(achieved "$WORK/over.rtt")/s, $rejected answered 503 + Retry-After" | tee -a "$RESULTS"
stop_pid "$SRV_PID"
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

printf '\n## summary\n'
cat "$RESULTS"
