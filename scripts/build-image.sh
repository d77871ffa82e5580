#!/usr/bin/env bash
# Builds the sipcluster container image without a Docker engine and without a registry,
# and writes it as an OCI archive:
#
#   scripts/build-image.sh [ARCHIVE]
#
#   ARCHIVE  where to write it (or SIPCLUSTER_IMAGE_ARCHIVE); default
#            target/image/sipcluster-<version>.oci.tar
#
# The image is the one deploy/docker/Dockerfile builds: the same root filesystem
# (deploy/docker/make-rootfs.sh, run here on the release binary) and the Dockerfile's
# runtime stage taken verbatim (FROM scratch, user 65532, entrypoint, labels, ports), built
# by buildah from an empty base, so nothing is pulled. The archive is named
# sipcluster:<version> (<version> from `sipcluster --version`); push or load it with e.g.
#   skopeo copy oci-archive:ARCHIVE docker://REGISTRY/sipcluster:<version>
#   skopeo copy oci-archive:ARCHIVE docker-daemon:sipcluster:<version>    (a Docker engine)
#   podman load -i ARCHIVE
# and check it with tests/image/test-image.sh ARCHIVE.
#
# Environment:
#   SIPCLUSTER_IMAGE_BINARY  use this binary instead of building target/release/sipcluster
#   SIPCLUSTER_IMAGE_SOURCE  org.opencontainers.image.source (default: the git remote
#                            `origin`, else the Dockerfile's default)
#
# Runs as root (buildah without user namespaces, files owned by 65532 in the image).
# buildah's storage lives in a private temporary directory, and what buildah writes in
# system places (lock files, a blob-info cache) goes to private overlays there; it is all
# removed at exit: nothing is left in the machine's image store or /etc, /var, /run, and
# two runs never share state. stdout carries only the archive's path; progress is on stderr.
# Relative paths (ARCHIVE, SIPCLUSTER_IMAGE_BINARY) are relative to the current directory.
set -euo pipefail

CALLER_DIR=$PWD
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# abspath PATH: PATH as the caller meant it (this script works from the repository root).
abspath() { case $1 in /*) echo "$1" ;; *) echo "$CALLER_DIR/$1" ;; esac; }
export PATH="${SIPCLUSTER_TOOLS:-$HOME/.cache/sipcluster/tools}/bin:$PATH"

DOCKERFILE=deploy/docker/Dockerfile
ARCHIVE=${1:-${SIPCLUSTER_IMAGE_ARCHIVE:-}}
[ -z "$ARCHIVE" ] || ARCHIVE=$(abspath "$ARCHIVE")

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'build-image: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (e.g. sudo $0): buildah runs here without user namespaces, and the image's writable directories are chowned to 65532"

# need_apt <command> <debian package>: install the package when the command is missing
# (as scripts/test.sh does), or say what to install.
need_apt() {
  command -v "$1" >/dev/null 2>&1 && return 0
  command -v apt-get >/dev/null 2>&1 || die "$1 is missing: install $2"
  log "installing Debian package $2 (for $1)"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y --no-install-recommends "$2" >"$WORK/apt-$2.log" 2>&1; then
    # A fresh machine may have no package lists yet.
    apt-get update >"$WORK/apt-update.log" 2>&1 || { cat "$WORK/apt-update.log" >&2; die "apt-get update failed"; }
    apt-get install -y --no-install-recommends "$2" >"$WORK/apt-$2.log" 2>&1 || {
      cat "$WORK/apt-$2.log" >&2; die "could not install $2"
    }
  fi
  command -v "$1" >/dev/null 2>&1 || die "$2 installed but $1 is not on PATH"
}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/sipcluster-image.XXXXXX")
tmp_archive=
cleanup() {
  # buildah's vfs storage is plain directories (no mounts), and bud removes its build
  # containers: everything this run made is under $WORK, or the unfinished archive.
  rm -rf --one-file-system "$WORK"
  [ -z "$tmp_archive" ] || rm -f "$tmp_archive"
}
trap cleanup EXIT

need_apt buildah buildah
need_apt tar tar

# --- the binary ---------------------------------------------------------------------------
t=$SECONDS
if [ -n "${SIPCLUSTER_IMAGE_BINARY:-}" ]; then
  BIN=$(abspath "$SIPCLUSTER_IMAGE_BINARY")
  log "using the binary $BIN (SIPCLUSTER_IMAGE_BINARY)"
else
  # Fast when target/release/sipcluster is fresh; a full build takes many minutes on two
  # cores. Other builds in target/ make cargo wait for its lock, which is fine.
  log "cargo build --release --locked -p sipcluster"
  cargo build --release --locked -p sipcluster >&2
  BIN=target/release/sipcluster
fi
[ -x "$BIN" ] || die "$BIN is not an executable"
VERSION=$("$BIN" --version | awk '{print $2}')
[[ $VERSION =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || die "'$BIN --version' gave no usable version ($VERSION)"
IMAGE=sipcluster:$VERSION
log "binary: $("$BIN" --version), $(du -h "$BIN" | cut -f1) ($((SECONDS - t))s)"

ARCHIVE=${ARCHIVE:-target/image/sipcluster-$VERSION.oci.tar}
mkdir -p "$(dirname "$ARCHIVE")"
ARCHIVE=$(cd "$(dirname "$ARCHIVE")" && pwd)/$(basename "$ARCHIVE")

REVISION=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
# Built from uncommitted changes: say so in the label rather than name a commit it is not.
if [ "$REVISION" != unknown ] && [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
  REVISION=$REVISION-dirty
fi
SOURCE=${SIPCLUSTER_IMAGE_SOURCE:-$(git remote get-url origin 2>/dev/null || true)}

# --- the root filesystem and the build context --------------------------------------------
t=$SECONDS
log "assembling the root filesystem (deploy/docker/make-rootfs.sh)"
mkdir -p "$WORK/context"
deploy/docker/make-rootfs.sh "$BIN" "$WORK/rootfs" >&2
# A tar ADDed by the build keeps its owners and modes (a COPY of a directory from the
# context would make everything root's): --numeric-owner, as 65532 has no name here.
tar --numeric-owner --sort=name -C "$WORK/rootfs" -cf "$WORK/context/rootfs.tar" .

# The Containerfile: a "build" stage holding /rootfs, as the Dockerfile's build stage leaves
# it, then the Dockerfile's runtime stage unchanged.
runtime_stage=$(sed -n '/^FROM scratch AS runtime$/,$p' "$DOCKERFILE")
grep -q '^COPY --from=build /rootfs/ /$' <<<"$runtime_stage" \
  || die "$DOCKERFILE: no 'FROM scratch AS runtime' stage with 'COPY --from=build /rootfs/ /' (this script builds that stage)"
{
  printf '%s\n' '# Generated by scripts/build-image.sh from deploy/docker/Dockerfile.' \
    'FROM scratch AS build' 'ADD rootfs.tar /rootfs/' ''
  printf '%s\n' "$runtime_stage"
} >"$WORK/context/Containerfile"
log "root filesystem ready ($((SECONDS - t))s)"

# --- build and export ---------------------------------------------------------------------
# buildah keeps images in --root/--runroot (here, in $WORK), but buildah and the
# containers/image library also write fixed system places whatever those say: lock files
# (/etc/cni/net.d, /etc/containers/networks, /run/containers, /var/cache/containers) and a
# blob-info cache (/var/lib/containers/cache). So they run in a private mount namespace
# where /etc, /var and /run are overlays whose upper layers are in $WORK: they see the
# machine's files, and what they write there is removed with $WORK.
export OVERLAY="$WORK/overlay"
isolated() {
  # shellcheck disable=SC2016 # expanded by the inner bash
  unshare --mount --propagation private -- bash -c 'set -euo pipefail
    for d in etc var run; do
      mkdir -p "$OVERLAY/$d/upper" "$OVERLAY/$d/work"
      mount -t overlay overlay -o "lowerdir=/$d,upperdir=$OVERLAY/$d/upper,workdir=$OVERLAY/$d/work" "/$d"
    done
    exec "$@"' isolated "$@"
}
ISOLATED=(isolated)
if ! isolated true >"$WORK/isolation.log" 2>&1; then
  # e.g. $TMPDIR under /var, or no overlayfs (inside some containers): build anyway.
  log "warning: no private overlays for /etc, /var, /run ($(tr '\n' ' ' <"$WORK/isolation.log")); buildah may leave its lock files and blob-info cache there"
  ISOLATED=()
fi

t=$SECONDS
# vfs: no overlay mounts for the image layers (works in a container without privileges for
# them); chroot isolation: no runtime (runc/crun) needed, and there is no RUN step anyway.
# TMPDIR: buildah's temporary files (default /var/tmp) in $WORK too.
BUILDAH=(env "TMPDIR=$WORK/tmp" buildah --root "$WORK/storage" --runroot "$WORK/run" --storage-driver vfs)
mkdir -p "$WORK/tmp"
LOCAL=localhost/$IMAGE   # fully qualified: no short-name resolution
build_args=(--build-arg "VERSION=$VERSION" --build-arg "REVISION=$REVISION")
[ -z "$SOURCE" ] || build_args+=(--build-arg "SOURCE=$SOURCE")
log "buildah bud -t $IMAGE (FROM scratch: nothing pulled)"
"${ISOLATED[@]}" "${BUILDAH[@]}" bud --isolation chroot --pull=never --layers=false --format oci \
  --identity-label=false "${build_args[@]}" -f "$WORK/context/Containerfile" -t "$LOCAL" \
  "$WORK/context" >"$WORK/bud.log" 2>&1 || { cat "$WORK/bud.log" >&2; die "buildah bud failed"; }
# The archive's reference name (its index's org.opencontainers.image.ref.name) is
# sipcluster:<version>, what docker/podman load name it.
"${ISOLATED[@]}" "${BUILDAH[@]}" push --quiet "$LOCAL" "oci-archive:$WORK/image.oci.tar:$IMAGE" \
  >"$WORK/push.log" 2>&1 || { cat "$WORK/push.log" >&2; die "buildah push to an OCI archive failed"; }

# Copied beside the destination, then renamed: a reader never sees half an archive, and a
# previous archive of the same name is replaced.
tmp_archive=$(mktemp "$ARCHIVE.XXXXXX")
cp "$WORK/image.oci.tar" "$tmp_archive"
chmod 0644 "$tmp_archive"
mv -f "$tmp_archive" "$ARCHIVE"
tmp_archive=
log "image $IMAGE: archive $(du -h "$ARCHIVE" | cut -f1) (compressed), root filesystem $(du -sh "$WORK/rootfs" | cut -f1) ($((SECONDS - t))s)"
printf '%s\n' "$ARCHIVE"
