#!/usr/bin/env bash
# The README's two commands on a fresh Debian 12: build a clean Debian 12 root with debootstrap
# (from Debian's packages; only git, make and python3 added to the minimal base), clone this
# repository's HEAD into it, and run `make run` (a short demo: one promoted round) and `make test`
# inside it as root, timing each. Everything else the commands need they install themselves.
#
#   sudo bash deploy/fresh-debian.sh [ROOT_DIR]     (default /var/tmp/alignloop-debian12; removed first)
#
# Needs root (debootstrap, chroot, mounts) on a Debian or Ubuntu host that reaches Debian's
# mirror, PyPI, Maven Central and the Go module proxy. The log of both commands is ROOT_DIR.log.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
root=${1:-/var/tmp/alignloop-debian12}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
log="$root.log"
[ "$(id -u)" -eq 0 ] || { echo "fresh-debian: run as root (debootstrap and chroot need it)" >&2; exit 1; }
command -v debootstrap >/dev/null 2>&1 || bash "$repo/deploy/apt-install.sh" debootstrap

mounts=(proc sys dev dev/pts dev/shm)
unmount() {
  # Whatever still runs inside the root (an interrupted run's servers and brokers) goes first.
  for proc in /proc/[0-9]*; do
    [ "$(readlink "$proc/root" 2>/dev/null)" = "$root" ] && kill -9 "${proc#/proc/}" 2>/dev/null
  done
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
    mountpoint -q "$root/${mounts[i]}" && umount -l "$root/${mounts[i]}"
  done
  return 0
}
trap unmount EXIT
unmount
rm -rf "$root"

started=$(date +%s)
echo "fresh-debian: debootstrap bookworm into $root ($mirror)"
debootstrap --variant=minbase --include=git,make,python3,ca-certificates bookworm "$root" "$mirror" >"$log" 2>&1
cp /etc/resolv.conf "$root/etc/resolv.conf"
# What Debian's installer writes and debootstrap does not: /etc/hosts naming localhost and this host
# (the root shares the host's name; torchrun's rendezvous resolves both).
printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\tlocalhost ip6-localhost ip6-loopback\n' "$(hostname)" >"$root/etc/hosts"
mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys"
mount --bind /dev "$root/dev"
mount --bind /dev/pts "$root/dev/pts"
mount --bind /dev/shm "$root/dev/shm"
# The host's own local CAs, if it has any: a network whose egress re-signs TLS (this project's
# machines) needs them inside the root too, and uv and pip are told to read the system's store. A
# host on a plain network has none, and the root stays as debootstrap made it.
tls_env=""
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
  chroot "$root" update-ca-certificates >>"$log" 2>&1
  bundle=/etc/ssl/certs/ca-certificates.crt
  tls_env="SSL_CERT_FILE=$bundle PIP_CERT=$bundle REQUESTS_CA_BUNDLE=$bundle"
  echo "fresh-debian: the host's local CAs are trusted in the root too: $(ls /usr/local/share/ca-certificates | tr '\n' ' ')"
fi
git clone --quiet "$repo" "$root/root/alignloop"
git -C "$root/root/alignloop" checkout --quiet "$(git -C "$repo" rev-parse HEAD)"
echo "fresh-debian: Debian 12 root ready in $(($(date +%s) - started)) s; $(chroot "$root" python3 --version)"

# A login-like environment: nothing of the host's PATH, caches or Python leaks in.
in_root() {
  # shellcheck disable=SC2086  # tls_env is several assignments, or none
  chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb $tls_env \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    bash -c "cd /root/alignloop && $1"
}
run_timed() {
  local name=$1 command=$2 t0=$SECONDS
  echo "fresh-debian: $name: $command (log: $log)"
  if in_root "$command" >>"$log" 2>&1; then
    echo "fresh-debian: $name passed in $((SECONDS - t0)) s"
  else
    echo "fresh-debian: $name FAILED after $((SECONDS - t0)) s; the end of $log:" >&2
    tail -40 "$log" >&2
    exit 1
  fi
}
run_timed "make run" "make run RUN_ARGS='--rounds 1'"
run_timed "make test" "make test"
echo "fresh-debian: both commands passed on a fresh Debian 12 in $(($(date +%s) - started)) s"
