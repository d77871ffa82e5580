#!/usr/bin/env bash
# tests/image/test-image.sh ARCHIVE
#
# Checks the sipcluster image in an OCI archive (scripts/build-image.sh) with no container
# engine: it unpacks the image (tar + umoci) and runs its entrypoint the way a runtime
# would, from the image's configuration (Entrypoint, Cmd, User, Env, WorkingDir), with only
# the image's files: private mount and PID namespaces, chroot into the unpacked root,
# /proc, /sys (read-only) and a few /dev nodes added, the root made read-only except the
# directories the image gives its user (as a pod with readOnlyRootFilesystem and volumes
# there), and the image's user and group (no supplementary groups, no capabilities).
#
#   1. `sipcluster --version` prints the image's version label;
#   2. the default command (all-in-one) plus flags binding every listener to a free port
#      on a loopback address starts, gets ready (/readyz), answers a SIP OPTIONS over UDP
#      with a SIP response, runs as the image user, and writes its admin token into its
#      state directory;
#   3. an operator command in the image (`sipcluster users list`, as `kubectl exec` would
#      run it) reaches the all-in-one with that token, found where the image says;
#   4. SIGTERM stops it (it is PID 1 of its namespace, as in a container) within 20 s,
#      with exit status 0.
#
# Runs as root (namespaces, chroot, mounts). Only loopback addresses receive traffic. Every
# wait is bounded; what it started is stopped by PID on exit; exit status non-zero with a
# message on any failure.
set -euo pipefail

die() { printf 'test-image: FAILED: %s\n' "$*" >&2; exit 1; }
ok() { printf '    ok  %s\n' "$*"; }
step() { printf '==> %s\n' "$*"; }

[ $# -eq 1 ] || die "usage: $0 ARCHIVE (an OCI archive, e.g. from scripts/build-image.sh)"
ARCHIVE=$1
[ -f "$ARCHIVE" ] || die "$ARCHIVE: no such file"
[ "$(id -u)" -eq 0 ] || die "run as root: the image runs in its own mount and PID namespaces, chrooted"
for c in umoci python3 tar unshare mount timeout; do
  command -v "$c" >/dev/null 2>&1 || die "$c not found (Debian packages: umoci python3 tar util-linux mount coreutils)"
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/sipcluster-image-test.XXXXXX")
STARTED_PIDS=()

# descendants PID: every process below PID, parents first, from the PPid line of every
# /proc/*/status (no procps needed; /proc/PID/task/*/children is not in every kernel).
descendants() {
  grep -H '^PPid:' /proc/[0-9]*/status 2>/dev/null \
    | sed -E 's|^/proc/([0-9]+)/status:PPid:[[:space:]]+([0-9]+)$|\2 \1|' \
    | awk -v top="$1" '
        function walk(p,   n, a, i) { n = split(kids[p], a, " "); for (i = 1; i <= n; i++) { print a[i]; walk(a[i]) } }
        { kids[$1] = kids[$1] " " $2 }
        END { walk(top) }'
}
cleanup() {
  local pid p
  for pid in "${STARTED_PIDS[@]}"; do
    # The image's process changed credentials, which clears unshare's --kill-child death
    # signal: stop it by its own PID, and what started it.
    for p in "$pid" $(descendants "$pid"); do
      kill -KILL "$p" 2>/dev/null || true
    done
    wait "$pid" 2>/dev/null || true
  done
  # The mounts lived in the namespaces, gone with their processes; --one-file-system
  # guards against removing through one if it were not.
  rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT

# --- unpack -------------------------------------------------------------------------------
t=$SECONDS
step "unpacking $ARCHIVE ($(du -h "$ARCHIVE" | cut -f1))"
# An OCI archive is an OCI image layout in a tar. Its one image gets the reference name
# "test" (whatever it had), so that umoci, which unpacks a named image of a layout keeping
# owners and modes (we are root), finds it; the image configuration is read from its blob.
# (Not skopeo: it would write its blob-info cache under /var/lib/containers.)
mkdir "$WORK/layout"
tar -xf "$ARCHIVE" -C "$WORK/layout" || die "$ARCHIVE is not a tar archive"
python3 - "$WORK/layout" "$WORK/config.json" <<'PY' || die "$ARCHIVE is not an OCI archive of one image"
import json, sys
layout, out = sys.argv[1], sys.argv[2]
def blob(digest):
    algo, hexa = digest.split(":", 1)
    return json.load(open("%s/blobs/%s/%s" % (layout, algo, hexa)))
index = json.load(open(layout + "/index.json"))
manifests = index.get("manifests") or []
if len(manifests) != 1:
    sys.exit("%d images in the archive, expected 1" % len(manifests))
m = manifests[0]
if m.get("mediaType") != "application/vnd.oci.image.manifest.v1+json":
    sys.exit("not a single-platform image manifest: %s" % m.get("mediaType"))
m.setdefault("annotations", {})["org.opencontainers.image.ref.name"] = "test"
json.dump(index, open(layout + "/index.json", "w"))
json.dump(blob(blob(m["digest"])["config"]["digest"]), open(out, "w"))
PY
umoci unpack --image "$WORK/layout:test" "$WORK/bundle" >"$WORK/umoci.log" 2>&1 \
  || { cat "$WORK/umoci.log" >&2; die "umoci could not unpack the image"; }
ROOTFS=$WORK/bundle/rootfs

# cfg FIELD: the configuration's field, one NUL-terminated element per list item (a string
# is a list of one; absent: nothing). label NAME: a label's value.
cfg() {
  python3 -c 'import json, sys
v = (json.load(open(sys.argv[1])).get("config") or {}).get(sys.argv[2])
for x in ([] if v is None else v if isinstance(v, list) else [v]):
    sys.stdout.write(str(x) + "\0")' "$WORK/config.json" "$1"
}
label() {
  python3 -c 'import json, sys
print(((json.load(open(sys.argv[1])).get("config") or {}).get("Labels") or {}).get(sys.argv[2], ""))' \
    "$WORK/config.json" "$1"
}
mapfile -d '' ENTRYPOINT < <(cfg Entrypoint)
mapfile -d '' CMD < <(cfg Cmd)
mapfile -d '' ENV < <(cfg Env)
USER_SPEC=$(cfg User | tr -d '\0')
WORKDIR=$(cfg WorkingDir | tr -d '\0')
WORKDIR=${WORKDIR:-/}
VERSION=$(label org.opencontainers.image.version)

[ "${#ENTRYPOINT[@]}" -gt 0 ] || die "the image has no Entrypoint"
[ "${CMD[0]:-}" = all-in-one ] || die "the image's default command is '${CMD[*]:-}', not all-in-one: the flags below would not apply"
# User: uid[:gid] or names, resolved in the image's own /etc/passwd and /etc/group.
lookup() { # lookup FILE NAME-OR-ID: the numeric id
  if [[ $2 =~ ^[0-9]+$ ]]; then echo "$2"; return; fi
  awk -F: -v n="$2" '$1 == n { print $3; found = 1 } END { exit !found }' "$ROOTFS$1" \
    || die "user/group '$2' is not in the image's $1"
}
[ -n "$USER_SPEC" ] || die "the image has no User: it would run as root"
IMG_UID=$(lookup /etc/passwd "${USER_SPEC%%:*}")
if [[ $USER_SPEC == *:* ]]; then
  IMG_GID=$(lookup /etc/group "${USER_SPEC#*:}")
else
  IMG_GID=$(awk -F: -v u="$IMG_UID" '$3 == u { print $4 }' "$ROOTFS/etc/passwd")
fi
[ "$IMG_UID" != 0 ] || die "the image runs as root (User '$USER_SPEC')"
[ -n "$IMG_GID" ] || die "no group for the image's user $USER_SPEC"
printf '    entrypoint %s, cmd %s, user %s (%s:%s), workdir %s\n    env %s\n' \
  "${ENTRYPOINT[*]}" "${CMD[*]}" "$USER_SPEC" "$IMG_UID" "$IMG_GID" "$WORKDIR" "${ENV[*]}"
printf '    root filesystem %s; layers %s (compressed)\n' "$(du -sh "$ROOTFS" | cut -f1)" \
  "$(python3 -c 'import json, sys
d = json.load(open(sys.argv[1] + "/index.json"))["manifests"][0]["digest"].split(":")[1]
m = json.load(open(sys.argv[1] + "/blobs/sha256/" + d))
print(", ".join("%.1f MiB" % (l["size"] / 1048576) for l in m["layers"]))' "$WORK/layout")"
printf '    (%ss)\n' "$((SECONDS - t))"

# The directories the image's user may write: its own, and world-writable sticky ones
# (/tmp). They stay writable; the rest of the root becomes read-only.
mapfile -t WRITABLE < <(cd "$ROOTFS" && find . -xdev -type d \( -uid "$IMG_UID" -o -perm -1002 \) -prune -print | sed 's|^\.||')
[ "${#WRITABLE[@]}" -gt 0 ] || die "the image has no directory its user can write"
# Mount points a runtime provides (created in this unpacked copy only).
mkdir -p "$ROOTFS/proc" "$ROOTFS/sys" "$ROOTFS/dev"

# The setup run inside the new mount and PID namespaces, as root, before the image's
# process: mounts, read-only root, then chroot + working directory + user (unshare -R -w
# -S -G) and exec of the command with only the image's environment.
# shellcheck disable=SC2016 # expanded by the inner bash
SETUP='set -euo pipefail
root=$1 wd=$2 uid=$3 gid=$4 envbin=$5 unsharebin=$6 nenv=$7 nw=$8
shift 8
envs=("${@:1:nenv}"); shift "$nenv"
writable=("${@:1:nw}"); shift "$nw"
mount --bind "$root" "$root"
mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$root/sys"
mount -t tmpfs -o nosuid,noexec,mode=0755 tmpfs "$root/dev"
for n in null zero full random urandom; do
  : >"$root/dev/$n"
  mount --bind "/dev/$n" "$root/dev/$n"
done
for w in "${writable[@]}"; do mount --bind "$root$w" "$root$w"; done
mount -o remount,bind,ro "$root"
exec "$envbin" -i "${envs[@]}" "$unsharebin" --root="$root" --wd="$wd" --setuid "$uid" --setgid "$gid" -- "$@"'

# "${IN_IMAGE[@]}" CMD...: run CMD in the image.
IN_IMAGE=(unshare --mount --pid --fork --kill-child --propagation private --
  bash -c "$SETUP" setup "$ROOTFS" "$WORKDIR" "$IMG_UID" "$IMG_GID"
  "$(command -v env)" "$(command -v unshare)" "${#ENV[@]}" "${#WRITABLE[@]}"
  "${ENV[@]}" "${WRITABLE[@]}")
# A bounded foreground run: TERM to the whole process group after 20 s, KILL 5 s later (a
# PID 1 without a TERM handler ignores TERM).
BOUNDED=(timeout -k 5 20)

# --- 1. --version --------------------------------------------------------------------------
step "sipcluster --version in the image"
out=$("${BOUNDED[@]}" "${IN_IMAGE[@]}" "${ENTRYPOINT[@]}" --version 2>&1) || die "'${ENTRYPOINT[*]} --version' failed in the image: $out"
[[ $out =~ ^sipcluster\ [0-9A-Za-z._+-]+$ ]] || die "unexpected --version output: $out"
if [ -n "$VERSION" ]; then
  [ "$out" = "sipcluster $VERSION" ] || die "--version says '$out', the image's version label $VERSION"
fi
ok "$out (label org.opencontainers.image.version=${VERSION:-none})"

# --- 2. the all-in-one --------------------------------------------------------------------
# A python3 helper for the network side: free ports, /readyz, the SIP OPTIONS.
cat >"$WORK/net.py" <<'PY'
import re, socket, sys, time, urllib.request, uuid

def free(addr, n):
    """n distinct free TCP ports on addr; the first is free for UDP too (SIP)."""
    ports = []
    for _ in range(200):
        if len(ports) == n:
            break
        t = socket.socket()
        t.bind((addr, 0))
        p = t.getsockname()[1]
        if not ports:
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                u.bind((addr, p))
            except OSError:
                t.close()
                continue
            u.close()
        t.close()
        if p not in ports:
            ports.append(p)
    if len(ports) != n:
        sys.exit("no free ports on %s" % addr)
    print(" ".join(map(str, ports)))

def ready(url):
    """Exit 0 when url answers 200 within 1 s."""
    # No proxy from the environment: the request is for a loopback address.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=1) as r:
            sys.exit(0 if r.status == 200 else 1)
    except Exception:
        sys.exit(1)

def options(addr, port, timeout):
    """Send OPTIONS over UDP (retransmitted every 500 ms), print the final response."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, 0))
    lport = s.getsockname()[1]
    tag = uuid.uuid4().hex[:10]
    msg = ("OPTIONS sip:%s:%d SIP/2.0\r\n"
           "Via: SIP/2.0/UDP %s:%d;branch=z9hG4bK%s;rport\r\n"
           "Max-Forwards: 70\r\n"
           "From: <sip:image-test@%s>;tag=%s\r\n"
           "To: <sip:%s:%d>\r\n"
           "Call-ID: %s@%s\r\n"
           "CSeq: 1 OPTIONS\r\n"
           "Contact: <sip:image-test@%s:%d>\r\n"
           "User-Agent: sipcluster-image-test\r\n"
           "Accept: application/sdp\r\n"
           "Content-Length: 0\r\n\r\n") % (
        addr, port, addr, lport, uuid.uuid4().hex, addr, tag, addr, port,
        uuid.uuid4().hex, addr, addr, lport)
    deadline = time.monotonic() + timeout
    s.settimeout(0.5)
    while time.monotonic() < deadline:
        s.sendto(msg.encode(), (addr, port))
        try:
            data, _ = s.recvfrom(65535)
        except socket.timeout:
            continue
        status = data.split(b"\r\n", 1)[0].decode("utf-8", "replace")
        m = re.match(r"^SIP/2\.0 ([1-6][0-9][0-9]) ", status)
        if not m:
            sys.exit("not a SIP response: %r" % data[:200])
        if m.group(1).startswith("1"):
            continue
        print(data.decode("utf-8", "replace").replace("\r\n", "\n").rstrip())
        return
    sys.exit("no SIP response to OPTIONS sip:%s:%d within %ss" % (addr, port, timeout))

cmd = sys.argv[1]
if cmd == "free":
    free(sys.argv[2], int(sys.argv[3]))
elif cmd == "ready":
    ready(sys.argv[2])
elif cmd == "options":
    options(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
PY
net() { python3 "$WORK/net.py" "$@"; }

# A loopback address of its own (127.0.0.2-254: all of 127/8 is on lo), so that a
# concurrent run or a local service on 127.0.0.1 cannot answer in its place.
ADDR=127.0.0.$((2 + RANDOM % 253))
net free "$ADDR" 1 >/dev/null 2>&1 || ADDR=127.0.0.1
ports=$(net free "$ADDR" 4) || die "no free ports on $ADDR"
read -r SIP_PORT METRICS_PORT LOCATION_PORT ADMIN_PORT <<<"$ports"
FLAGS=(--listen "$ADDR:$SIP_PORT" --metrics "$ADDR:$METRICS_PORT"
  --location-listen "$ADDR:$LOCATION_PORT" --admin "$ADDR:$ADMIN_PORT")
step "${ENTRYPOINT[*]} ${CMD[*]} ${FLAGS[*]} (in the image)"
t=$SECONDS
"${IN_IMAGE[@]}" "${ENTRYPOINT[@]}" "${CMD[@]}" "${FLAGS[@]}" >"$WORK/all-in-one.log" 2>&1 &
RUNNER=$!
STARTED_PIDS+=("$RUNNER")
fail() { # fail MESSAGE: with the all-in-one's log
  echo "--- all-in-one log (last 40 lines) ---" >&2
  tail -n 40 "$WORK/all-in-one.log" >&2
  die "$*"
}

# Its host PID: the process below the runner named as the entrypoint (after the exec).
comm=$(basename "${ENTRYPOINT[0]}")
comm=${comm:0:15}
AIO=
for _ in $(seq 1 100); do
  for p in $(descendants "$RUNNER"); do
    [ "$(cat "/proc/$p/comm" 2>/dev/null)" = "$comm" ] && AIO=$p
  done
  [ -n "$AIO" ] && break
  kill -0 "$RUNNER" 2>/dev/null || fail "the all-in-one exited at start"
  sleep 0.1
done
[ -n "$AIO" ] || fail "the all-in-one's process did not appear within 10 s"

for i in $(seq 1 60); do
  net ready "http://$ADDR:$METRICS_PORT/readyz" && break
  kill -0 "$AIO" 2>/dev/null || fail "the all-in-one exited before it was ready"
  [ "$i" = 60 ] && fail "the all-in-one was not ready (/readyz) within 30 s"
  sleep 0.5
done
ok "ready after $((SECONDS - t))s: /readyz 200 on $ADDR:$METRICS_PORT"

# It runs as the image's user: no supplementary groups, no capabilities, PID 1 inside.
status=$(cat "/proc/$AIO/status")
uids=$(awk '/^Uid:/ { print $2, $3, $4, $5 }' <<<"$status")
gids=$(awk '/^Gid:/ { print $2, $3, $4, $5 }' <<<"$status")
groups=$(awk '/^Groups:/ { $1 = ""; print }' <<<"$status" | xargs)
capeff=$(awk '/^CapEff:/ { print $2 }' <<<"$status")
nspid=$(awk '/^NSpid:/ { print $NF }' <<<"$status")
[ "$uids" = "$IMG_UID $IMG_UID $IMG_UID $IMG_UID" ] || fail "runs with uids $uids, not $IMG_UID"
[ "$gids" = "$IMG_GID $IMG_GID $IMG_GID $IMG_GID" ] || fail "runs with gids $gids, not $IMG_GID"
[ -z "$groups" ] || [ "$groups" = "$IMG_GID" ] || fail "has supplementary groups: $groups"
[ "$capeff" = 0000000000000000 ] || fail "has capabilities: CapEff $capeff"
ok "host PID $AIO (PID $nspid in its namespace): uid $IMG_UID, gid $IMG_GID, groups '${groups}', no capabilities"

# --- SIP OPTIONS over UDP -----------------------------------------------------------------
response=$(net options "$ADDR" "$SIP_PORT" 10) || fail "no SIP answer over UDP"
ok "OPTIONS sip:$ADDR:$SIP_PORT over UDP answered: $(head -n 1 <<<"$response")"
printf '%s\n' "$response" | sed 's/^/        /'

# --- what it wrote, where the image says --------------------------------------------------
# The admin token: $XDG_STATE_HOME/sipcluster, else $HOME/.local/state/sipcluster.
env_of() { local e; for e in "${ENV[@]}"; do [[ $e == "$1="* ]] && echo "${e#*=}"; done; return 0; }
state=$(env_of XDG_STATE_HOME)
state=${state:-$(env_of HOME)/.local/state}/sipcluster
token=$ROOTFS$state/admin-token
[ -f "$token" ] || fail "no admin token at $state/admin-token in the image"
[ "$(stat -c '%u %a' "$token")" = "$IMG_UID 600" ] || fail "$state/admin-token is $(stat -c '%u %a' "$token"), not $IMG_UID 600"
ok "admin token $state/admin-token (uid $IMG_UID, 0600); state directory: $(cd "$ROOTFS$state" && echo *)"

# --- an operator command in the image, against the running all-in-one ---------------------
users=$("${BOUNDED[@]}" "${IN_IMAGE[@]}" "${ENTRYPOINT[@]}" users --location "http://$ADDR:$LOCATION_PORT" list --realm sipcluster.local 2>&1) \
  || fail "'sipcluster users list' in the image failed: $users"
[ -n "$users" ] || fail "'sipcluster users list' in the image printed nothing"
ok "sipcluster users list (token from $state): $(wc -l <<<"$users") line(s): $(head -n 3 <<<"$users" | xargs)"

# --- SIGTERM ------------------------------------------------------------------------------
t=$SECONDS
kill -TERM "$AIO"
for i in $(seq 1 200); do
  kill -0 "$RUNNER" 2>/dev/null || break
  [ "$i" = 200 ] && fail "still running 20 s after SIGTERM"
  sleep 0.1
done
rc=0
wait "$RUNNER" || rc=$?
STARTED_PIDS=()   # reaped: its PID may be reused, never signal it again
[ "$rc" = 0 ] || fail "exited with status $rc after SIGTERM"
ok "stopped by SIGTERM in $((SECONDS - t))s, exit status 0"

step "image test passed"
