#!/usr/bin/env bash
# FuseStream quickstart: build, start both daemons on a private mount point, stage a
# sample file and read it through the mount.
#
#   deploy/quickstart.sh          # start (or show) the demo
#   deploy/quickstart.sh stop     # stop both daemons and unmount
#
# Everything lives in one state directory ($FUSESTREAM_QUICKSTART_DIR, default
# $XDG_RUNTIME_DIR/fusestream-quickstart or /tmp/fusestream-quickstart-$UID).
# As root the mount daemon mounts directly; as another user it mounts through the setuid
# fusermount3 (Debian/Ubuntu package fuse3), which this script installs through sudo when
# it is missing.
set -euo pipefail
umask 077 # logs, pid files and the sample are ours alone

repo=$(cd "$(dirname "$0")/.." && pwd)
state=${FUSESTREAM_QUICKSTART_DIR:-${XDG_RUNTIME_DIR:-/tmp}/fusestream-quickstart}
[ -n "${XDG_RUNTIME_DIR:-}" ] || [ -n "${FUSESTREAM_QUICKSTART_DIR:-}" ] || state="$state-$(id -u)"
profile=${PROFILE:-release}
bin="$repo/target/$profile"
mnt="$state/mnt"
export FUSESTREAM_SOCKET="$state/control.sock"

# The state dir must be ours: created 0700; a symlink there, or a directory someone else
# made first (the /tmp fallback is guessable), would hand them our logs and sockets.
private_state_dir() {
  if [ -L "$state" ]; then
    echo "quickstart: $state is a symbolic link; refusing to use it" >&2; exit 1
  fi
  mkdir -p "$(dirname "$state")"
  mkdir -m 700 "$state" 2>/dev/null || true
  local owner
  owner=$(stat -c %u "$state")
  if [ -L "$state" ] || [ ! -d "$state" ] || [ "$owner" != "$(id -u)" ]; then
    echo "quickstart: $state belongs to uid $owner, not to you; refusing to use it" >&2; exit 1
  fi
  chmod 700 "$state"
}

# A pid from our pidfile that is alive, not a zombie, and still runs `$2`.
alive() {
  local pid
  pid=$(cat "$state/$1.pid" 2>/dev/null) || return 1
  [ -r "/proc/$pid/stat" ] && [ "$(sed 's/.*) //' "/proc/$pid/stat" | cut -d' ' -f1)" != Z ] &&
    tr '\0' ' ' < "/proc/$pid/cmdline" | grep -qF "$2"
}

stop() {
  local name pid
  [ -e "$state" ] || [ -L "$state" ] || { echo "nothing to stop ($state does not exist)"; return; }
  private_state_dir
  for name in control mountd; do
    if alive "$name" "$bin/"; then
      pid=$(cat "$state/$name.pid")
      kill -TERM "$pid"
      for _ in $(seq 100); do alive "$name" "$bin/" || break; sleep 0.1; done
      alive "$name" "$bin/" && kill -KILL "$pid"
    fi
    rm -f "$state/$name.pid"
  done
  if grep -qs " $mnt fuse" /proc/self/mounts; then
    fusermount3 -u -z "$mnt" 2>/dev/null || umount -l "$mnt"
  fi
  echo "stopped; state left in $state (remove it at will)"
}

wait_for() { # what command...
  local what=$1; shift
  for _ in $(seq 150); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "quickstart: $what did not start; its log:" >&2
  tail -n 20 "$state/$what.log" >&2
  exit 1
}

# A non-root mount needs the setuid fusermount3: install fuse3 (through sudo) if it is missing.
need_fusermount() {
  if command -v fusermount3 >/dev/null || [ "$(id -u)" = 0 ]; then return 0; fi
  if ! command -v apt-get >/dev/null || ! command -v sudo >/dev/null; then
    echo "quickstart: fusermount3 not found: install the fuse3 package (or run as root)" >&2
    exit 1
  fi
  echo "== installing fuse3 (fusermount3 lets a non-root user mount) through sudo"
  local apt=(sudo env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -qq)
  # A fresh machine may have no (or stale) package lists: update once and retry.
  "${apt[@]}" install -y --no-install-recommends fuse3 </dev/null >/dev/null ||
    { "${apt[@]}" update </dev/null && "${apt[@]}" install -y --no-install-recommends fuse3 </dev/null >/dev/null; }
  command -v fusermount3 >/dev/null ||
    { echo "quickstart: installed fuse3, but fusermount3 is still not on PATH" >&2; exit 1; }
}

start() {
  need_fusermount
  echo "== building ($profile)"
  (cd "$repo" && cargo build --bins $([ "$profile" = release ] && echo --release) --quiet)
  private_state_dir

  if ! alive mountd "$bin/fusestream-mountd"; then
    "$bin/fusestream-mountd" --mountpoint "$mnt" --socket "$state/mountd.sock" \
      --cache-dir "$state" >"$state/mountd.log" 2>&1 &
    echo $! >"$state/mountd.pid"
    wait_for mountd mountpoint -q "$mnt"
  fi
  if ! alive control "$bin/fusestreamctl"; then
    "$bin/fusestreamctl" serve --mountd-socket "$state/mountd.sock" >"$state/control.log" 2>&1 &
    echo $! >"$state/control.pid"
    wait_for control "$bin/fusestreamctl" status
  fi

  local sample="$state/sample.bin"
  [ -f "$sample" ] || head -c $((32 << 20)) /dev/urandom >"$sample"
  echo "== staging $sample"
  "$bin/fusestreamctl" stage --replace "$sample"
  echo "== the mount ($mnt)"
  ls -l "$mnt"
  echo "== reading it through the mount (fetched on demand)"
  echo "source:    $(sha256sum <"$sample" | cut -d' ' -f1)"
  echo "via mount: $(sha256sum <"$mnt/sample.bin" | cut -d' ' -f1)"
  "$bin/fusestreamctl" ls
  cat <<MSG

FuseStream is running. Try:
  export FUSESTREAM_SOCKET=$FUSESTREAM_SOCKET
  $bin/fusestreamctl stage ~/some/video.mp4      # prints its path in the mount
  $bin/fusestreamctl status
Stop it with: $0 stop
MSG
}

case ${1:-start} in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 [start|stop]" >&2; exit 2 ;;
esac
