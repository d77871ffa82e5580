#!/usr/bin/env bash
# Builds a real kube-apiserver offline from Debian's `kubernetes` source package (which vendors
# every Go dependency) into $TOOLS/bin, for the dispatcher's Kubernetes discovery tests.
# No registry ships a kube-apiserver binary and these machines have no Docker; see
# ../shared/notes/infra.md. Idempotent: an existing binary is kept (the build takes ~5 min
# and needs the Debian packages golang-go, dpkg-dev, rsync and jq, installed if missing).
#
#   scripts/build-kube-apiserver.sh [TOOLS_DIR]
set -euo pipefail

TOOLS=${1:-${SIPCLUSTER_TOOLS:-$HOME/.cache/sipcluster/tools}}
BIN="$TOOLS/bin/kube-apiserver"
if [ -x "$BIN" ] && "$BIN" --version 2>/dev/null | grep -q 'Kubernetes v'; then
  exit 0
fi

sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)
missing=()
for p in golang-go:go dpkg-dev:dpkg-source rsync:rsync jq:jq; do
  command -v "${p#*:}" >/dev/null 2>&1 || missing+=("${p%%:*}")
done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
    "${sudo[@]}" apt-get update >/dev/null
    "${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}"
  }
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/kube-build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/sources.d" "$WORK/lists/partial" "$WORK/pkg"

# A private deb-src list on the machine's own mirror and suite: nothing in /etc changes.
src_file=$(ls /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1 || true)
if [ -n "$src_file" ]; then
  awk 'BEGIN{RS=""; ORS="\n\n"} /Types:/ {sub(/Types: *deb/, "Types: deb-src"); print; exit}' \
    "$src_file" >"$WORK/sources.d/src.sources"
else
  grep -E '^deb ' /etc/apt/sources.list | head -1 | sed 's/^deb /deb-src /' >"$WORK/sources.d/src.list"
fi
apt_opts=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$WORK/sources.d"
  -o "Dir::State::Lists=$WORK/lists")
apt-get "${apt_opts[@]}" update >"$WORK/update.log" 2>&1 || { cat "$WORK/update.log"; exit 1; }
(cd "$WORK/pkg" && apt-get "${apt_opts[@]}" source --download-only kubernetes >"$WORK/source.log" 2>&1) || {
  cat "$WORK/source.log"; exit 1
}
dpkg-source -x "$WORK"/pkg/kubernetes_*.dsc "$WORK/src" >/dev/null

mkdir -p "$WORK/gopath/src/k8s.io"
ln -s "$WORK/src" "$WORK/gopath/src/k8s.io/kubernetes"
(
  cd "$WORK/gopath/src/k8s.io/kubernetes"
  export GOPATH="$WORK/gopath" GOPROXY=off CGO_ENABLED=0 GOFLAGS=-mod=vendor GOCACHE="$WORK/gocache"
  make WHAT=cmd/kube-apiserver >"$WORK/make.log" 2>&1 || { tail -40 "$WORK/make.log"; exit 1; }
)
mkdir -p "$TOOLS/bin"
cp "$(find "$WORK/src/_output" -type f -name kube-apiserver | head -1)" "$BIN"
"$BIN" --version
