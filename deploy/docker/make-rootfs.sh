#!/usr/bin/env bash
# make-rootfs.sh BINARY ROOTFS
#
# Assembles the root filesystem of the sipcluster runtime image, a `FROM scratch` stage:
#
#   /usr/local/bin/sipcluster        the binary
#   the shared libraries it links    glibc, OpenSSL (librdkafka's TLS and SASL), libgcc_s, ...
#   and the dynamic loader           exactly what `ldd` lists, copied to the paths it lists
#   /etc/passwd, /etc/group          root and nonroot (65532:65532), the user the image runs as
#   /etc/nsswitch.conf               files, then DNS (Kafka brokers, services by name)
#   /etc/ssl/certs/ca-certificates.crt  CA certificates for TLS to Kafka brokers
#   /tmp                             1777
#   /var/lib/sipcluster              0700 65532: the all-in-one's admin token, CDR file and
#                                    accounting spool (XDG_STATE_HOME=/var/lib in the image);
#                                    a pod mounts its spool volume here
#   /home/nonroot                    0700 65532: HOME
#   /etc/sipcluster                  0755 root: where configuration files are mounted
#
# Both builds of the image use it, so that they hold the same files: the build stage of
# deploy/docker/Dockerfile (Docker engine, inside rust:bookworm) and scripts/build-image.sh
# (buildah on a Debian machine, no engine, no registry). Run it as root: the writable
# directories are chowned to 65532. ROOTFS must be absent or empty. At the end the binary
# is run once inside ROOTFS (chroot) so that a missing library fails here, not in a pod.
set -euo pipefail

die() { echo "make-rootfs: $*" >&2; exit 1; }

[ $# -eq 2 ] || die "usage: $0 BINARY ROOTFS"
bin=$1
root=$2
NONROOT=65532

if [ ! -f "$bin" ] || [ ! -x "$bin" ]; then die "$bin is not an executable file (build it first)"; fi
[ "$(id -u)" -eq 0 ] || die "run as root: /var/lib/sipcluster and /home/nonroot are chowned to $NONROOT"
command -v ldd >/dev/null 2>&1 || die "ldd not found (Debian package libc-bin)"
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
[ -s "$CA_BUNDLE" ] || die "$CA_BUNDLE missing (Debian package ca-certificates)"
if [ -e "$root" ] && [ -n "$(ls -A "$root")" ]; then
  # Never delete what the caller gave: a wrong path here would be costly.
  die "$root exists and is not empty"
fi
mkdir -p "$root"
root=$(cd "$root" && pwd)

# --- the binary and what the dynamic loader needs to start it -----------------------------
install -D -m 0755 "$bin" "$root/usr/local/bin/sipcluster"

# ldd prints "libssl.so.3 => /lib/x86_64-linux-gnu/libssl.so.3 (0x...)" per library, the
# loader as "/lib64/ld-linux-x86-64.so.2 (0x...)" and the kernel's vDSO without a path.
libs=()
if ldd_out=$(ldd "$bin" 2>&1); then
  while read -r line; do
    case $line in
      *"not found"*) die "$bin needs a library this machine lacks: $line" ;;
      *" => /"*) lib=${line#* => }; libs+=("${lib%% (*}") ;;
      /*) libs+=("${line%% (*}") ;;
      *) ;;
    esac
  done <<<"$ldd_out"
else
  # A static binary (e.g. a musl build) needs nothing besides itself.
  case $ldd_out in
    *"not a dynamic executable"* | *"statically linked"*) ;;
    *) die "ldd $bin failed: $ldd_out" ;;
  esac
fi
for lib in "${libs[@]}"; do
  # The file itself (cp -L), at the path the loader found it: the loader searches its
  # built-in directories (there is no ld.so.cache in the image), and Debian's merged-/usr
  # symlinks (/lib -> usr/lib) need not exist in the image for that.
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
  chmod 0755 "$root$lib"
done

# --- users, name service, CA certificates -------------------------------------------------
mkdir -p "$root/etc/ssl/certs" "$root/usr/lib/ssl"
cat >"$root/etc/passwd" <<PASSWD
root:x:0:0:root:/root:/sbin/nologin
nonroot:x:$NONROOT:$NONROOT:nonroot:/home/nonroot:/sbin/nologin
PASSWD
cat >"$root/etc/group" <<GROUP
root:x:0:
nonroot:x:$NONROOT:
GROUP
# Without this file glibc tries DNS before /etc/hosts; containers expect files first.
cat >"$root/etc/nsswitch.conf" <<'NSS'
passwd: files
group: files
hosts: files dns
NSS
chmod 0644 "$root/etc/passwd" "$root/etc/group" "$root/etc/nsswitch.conf"
install -m 0644 "$CA_BUNDLE" "$root/etc/ssl/certs/ca-certificates.crt"
# OpenSSL's built-in default locations (OPENSSLDIR=/usr/lib/ssl on Debian), which
# librdkafka uses when ssl.ca.location is not set; SSL_CERT_FILE in the image says the same.
ln -s /etc/ssl/certs "$root/usr/lib/ssl/certs"
ln -s /etc/ssl/certs/ca-certificates.crt "$root/usr/lib/ssl/cert.pem"

# --- directories the runtime user writes --------------------------------------------------
install -d -m 1777 "$root/tmp"
install -d -m 0755 "$root/var" "$root/var/lib" "$root/home" "$root/etc/sipcluster"
# 0700, as the all-in-one makes its state directory itself (admin token, CDRs).
install -d -m 0700 -o "$NONROOT" -g "$NONROOT" "$root/var/lib/sipcluster" "$root/home/nonroot"

# --- self-test: the binary starts with only these files ----------------------------------
if ! out=$(chroot --userspec="$NONROOT:$NONROOT" "$root" /usr/local/bin/sipcluster --version 2>&1); then
  die "the binary does not start inside $root: $out"
fi
echo "make-rootfs: $root: $out, ${#libs[@]} shared objects, $(du -sh "$root" | cut -f1)"
