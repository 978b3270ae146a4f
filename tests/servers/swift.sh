#!/usr/bin/env bash
# A private single-node OpenStack Swift for FuseStream's integration tests: TempAuth v1,
# TempURL and the S3 API (s3api) on one proxy port, everything on 127.0.0.1.
#
#   tests/servers/swift.sh start   [DIR]  # set up (idempotent) and start; prints KEY=VALUE lines
#   tests/servers/swift.sh stop    [DIR]  # stop the processes recorded in DIR (and only those)
#   tests/servers/swift.sh status  [DIR]  # exit 0 when every server runs
#   tests/servers/swift.sh restart [DIR]
#
# Packages: tests/servers/install-swift.sh (Debian's swift 2.30, memcached, curl).
#
# DIR (default $FUSESTREAM_SWIFT_DIR, else ${TMPDIR:-/tmp}/fusestream-swift) holds
# everything: etc/ (configs, rings), srv/ (objects), log/, run/ (pidfiles, ports).
# /etc/swift is never read: every server gets swift_dir = DIR/etc.
#
# Ports: each can be fixed through the environment, otherwise a free one is picked on the
# first start and recorded in DIR/run/ports, so later starts, parallel test runs (each
# with its own DIR) and other services on the machine don't collide.
#   SWIFT_PROXY_PORT      proxy: /auth/v1.0, /v1/..., TempURL, S3 API
#   SWIFT_OBJECT_PORT, SWIFT_CONTAINER_PORT, SWIFT_ACCOUNT_PORT   backends
#   SWIFT_BACKEND_BASE    shorthand: object = BASE, container = BASE+1, account = BASE+2
#   SWIFT_MEMCACHED_PORT  memcached (TempAuth keeps its tokens there)
#   SWIFT_TMPFS=256m      put DIR/srv on a tmpfs of that size (root only); `stop` unmounts it
#                         and the objects are gone. Only for objects with > ~3 KB of user
#                         metadata (see README.md, xattrs).
#
# Credentials (TempAuth; the S3 access key is "<account>:<user>", the secret its key):
#   test:tester / testing    .admin of AUTH_test (may set Temp-URL keys)
#   test:tester3 / testing3  plain user of AUTH_test (no .admin: sees nothing unless ACLs allow)
#   test2:tester2 / testing2 .admin of AUTH_test2;  admin:admin / admin  .reseller_admin
set -euo pipefail

CMD=${1:-start}
DIR=${2:-${FUSESTREAM_SWIFT_DIR:-${TMPDIR:-/tmp}/fusestream-swift}}
DIR=$(mkdir -p "$DIR" && cd "$DIR" && pwd)
ETC=$DIR/etc
SRV=$DIR/srv
RUN=$DIR/run
LOG=$DIR/log
# Debian's python: swift lives in its dist-packages (a pyenv/venv python3 on PATH lacks it).
PY=/usr/bin/python3
RUN_USER=$(id -un)
SERVERS="proxy object container account memcached"   # stop order: front to back

mkdir -p "$RUN"
# Tests may call start/stop concurrently for one DIR; serialise them. Started servers must
# not inherit fd 9, or they would hold the lock for their lifetime (see start_one).
exec 9>"$RUN/lock"
flock 9

# What each process's cmdline must contain before we treat its pidfile as ours: a path
# inside DIR, so a stale pidfile whose pid was reused is never signalled.
expect_of() {
  case $1 in
    memcached) echo "$RUN/memcached.self.pid" ;;   # its -P argument (see do_start)
    *) echo "$ETC/$1-server.conf" ;;
  esac
}

# Alive = exists, is not a zombie and runs our command line. Zombies matter: PID 1 of
# some containers never reaps orphans, and `kill -0` succeeds on a zombie.
proc_ours() { # pid name
  local st
  [ -n "$1" ] && [ -r "/proc/$1/stat" ] || return 1
  st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)
  [ -n "$st" ] && [ "$st" != Z ] || return 1
  tr '\0' ' ' < "/proc/$1/cmdline" 2>/dev/null | grep -qF -- "$(expect_of "$2")"
}
pid_alive() { # name
  proc_ours "$(cat "$RUN/$1.pid" 2>/dev/null)" "$1"
}

any_alive() {
  local name
  for name in $SERVERS; do pid_alive "$name" && return 0; done
  return 1
}

# --- ports -----------------------------------------------------------------------------

PORT_NAMES="PROXY OBJECT CONTAINER ACCOUNT MEMCACHED"

# Sets PROXY_PORT ... MEMCACHED_PORT: environment, else DIR/run/ports, else a free port.
choose_ports() {
  local n var forced recorded args=() running=0
  if [ -n "${SWIFT_BACKEND_BASE:-}" ]; then
    : "${SWIFT_OBJECT_PORT:=$SWIFT_BACKEND_BASE}"
    : "${SWIFT_CONTAINER_PORT:=$((SWIFT_BACKEND_BASE + 1))}"
    : "${SWIFT_ACCOUNT_PORT:=$((SWIFT_BACKEND_BASE + 2))}"
  fi
  any_alive && running=1
  for n in $PORT_NAMES; do
    var=SWIFT_${n}_PORT
    forced=${!var:-}
    recorded=$(sed -n "s/^$var=//p" "$RUN/ports" 2>/dev/null || true)
    if [ -n "$forced" ]; then
      if [ $running = 1 ] && [ -n "$recorded" ] && [ "$forced" != "$recorded" ]; then
        echo "swift in $DIR runs with $var=$recorded, not $forced: stop it first" >&2
        exit 1
      fi
      args+=("$n=$forced:fixed")
    elif [ -n "$recorded" ]; then
      # While our servers run they hold their ports; otherwise re-check that nobody else
      # took a recorded port in the meantime.
      args+=("$n=$recorded:$([ $running = 1 ] && echo fixed || echo recorded)")
    else
      args+=("$n=0:new")
    fi
  done
  # Hold every socket until all are chosen so the picks are distinct. SO_REUSEADDR as the
  # servers use it: a TIME_WAIT leftover from our own last run does not count as taken.
  local out
  out=$($PY - "${args[@]}" <<'PY'
import socket, sys
held = []
def bind(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        s.close()
        return None
    held.append(s)
    return s.getsockname()[1]
for arg in sys.argv[1:]:
    name, rest = arg.split("=")
    port, mode = rest.split(":")
    port = int(port)
    if mode == "fixed":
        chosen = port
        bind(port)  # reserve it if free, so no new pick lands on it
    else:
        chosen = (mode == "recorded" and bind(port)) or bind(0)
    print(f"SWIFT_{name}_PORT={chosen}")
PY
)
  printf '%s\n' "$out" > "$RUN/ports.tmp" && mv "$RUN/ports.tmp" "$RUN/ports"
  PROXY_PORT=$(sed -n 's/^SWIFT_PROXY_PORT=//p' "$RUN/ports")
  OBJECT_PORT=$(sed -n 's/^SWIFT_OBJECT_PORT=//p' "$RUN/ports")
  CONTAINER_PORT=$(sed -n 's/^SWIFT_CONTAINER_PORT=//p' "$RUN/ports")
  ACCOUNT_PORT=$(sed -n 's/^SWIFT_ACCOUNT_PORT=//p' "$RUN/ports")
  MEMCACHED_PORT=$(sed -n 's/^SWIFT_MEMCACHED_PORT=//p' "$RUN/ports")
}

# --- configuration -----------------------------------------------------------------------

write_configs() {
  mkdir -p "$ETC" "$SRV/d1" "$LOG" "$DIR/cache"

  # Hash prefix/suffix only need to stay the same for the life of DIR's data.
  cat > "$ETC/swift.conf" <<EOF
[swift-hash]
swift_hash_path_prefix = fusestream-test-prefix
swift_hash_path_suffix = fusestream-test-suffix

[storage-policy:0]
name = Policy-0
default = yes

[swift-constraints]
EOF

  # Backends. mount_check = false: srv/d1 is a plain directory, not a mounted disk.
  # workers = 0: one process per server, no forking (least RAM, simplest to stop).
  # bind_timeout: Swift retries a taken port for 30 s by default; a test wants to fail fast.
  # disable_fallocate: Swift would otherwise refuse writes when the disk looks "full".
  local kind port
  for kind in object container account; do
    case $kind in
      object) port=$OBJECT_PORT ;;
      container) port=$CONTAINER_PORT ;;
      account) port=$ACCOUNT_PORT ;;
    esac
    cat > "$ETC/$kind-server.conf" <<EOF
[DEFAULT]
bind_ip = 127.0.0.1
bind_port = $port
workers = 0
bind_timeout = 3
user = $RUN_USER
swift_dir = $ETC
devices = $SRV
mount_check = false
disable_fallocate = true
log_name = $kind-server
log_level = INFO
recon_cache_path = $DIR/cache

[pipeline:main]
pipeline = healthcheck $kind-server

[app:$kind-server]
use = egg:swift#$kind

[filter:healthcheck]
use = egg:swift#healthcheck
EOF
  done

  cat > "$ETC/proxy-server.conf" <<EOF
[DEFAULT]
bind_ip = 127.0.0.1
bind_port = $PROXY_PORT
workers = 0
bind_timeout = 3
user = $RUN_USER
swift_dir = $ETC
log_name = proxy-server
log_level = INFO

[pipeline:main]
# tempurl must see the request before any auth middleware (it authorises by signature);
# s3api must come just before tempauth, which then checks the S3 signature for it.
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats bulk tempurl ratelimit s3api tempauth copy container-quotas account-quotas slo dlo versioned_writes symlink proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
# Accounts spring into existence on first use, so no separate account setup is needed.
account_autocreate = true
allow_account_management = true

[filter:tempauth]
use = egg:swift#tempauth
user_admin_admin = admin .admin .reseller_admin
user_test_tester = testing .admin
user_test_tester3 = testing3
user_test2_tester2 = testing2 .admin

# S3 API (SigV2/SigV4, header and presigned) on the same port. The credential scope's
# region must equal location, or requests fail with AuthorizationQueryParametersError.
[filter:s3api]
use = egg:swift#s3api
location = us-east-1

# sha1 is still listed because clients in the wild sign with it; tests use sha256.
[filter:tempurl]
use = egg:swift#tempurl
allowed_digests = sha1 sha256 sha512

[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:$MEMCACHED_PORT

[filter:catch_errors]
use = egg:swift#catch_errors
[filter:gatekeeper]
use = egg:swift#gatekeeper
[filter:healthcheck]
use = egg:swift#healthcheck
[filter:proxy-logging]
use = egg:swift#proxy_logging
[filter:listing_formats]
use = egg:swift#listing_formats
[filter:bulk]
use = egg:swift#bulk
[filter:ratelimit]
use = egg:swift#ratelimit
[filter:copy]
use = egg:swift#copy
[filter:container-quotas]
use = egg:swift#container_quotas
[filter:account-quotas]
use = egg:swift#account_quotas
[filter:slo]
use = egg:swift#slo
[filter:dlo]
use = egg:swift#dlo
[filter:versioned_writes]
use = egg:swift#versioned_writes
allow_versioned_writes = true
[filter:symlink]
use = egg:swift#symlink
EOF
}

# Rings hold the backend ports, so they are rebuilt when those change. One device holds
# every partition, so the objects in srv/d1 stay reachable after a rebuild.
build_rings() {
  local stamp="$ETC/.rings-$OBJECT_PORT-$CONTAINER_PORT-$ACCOUNT_PORT"
  if [ -f "$stamp" ] && [ -f "$ETC/object.ring.gz" ] && [ -f "$ETC/container.ring.gz" ] &&
     [ -f "$ETC/account.ring.gz" ]; then
    return 0
  fi
  rm -f "$ETC"/*.builder "$ETC"/*.ring.gz "$ETC"/.rings-*
  rm -rf "$ETC/backups"
  # What `swift-ring-builder X.builder create 6 1 1; add r1z1-127.0.0.1:PORT/d1 100;
  # rebalance` does, in one python process: 9 swift-ring-builder calls take ~5 s, and
  # `rebalance` exits 1 on mere warnings.
  $PY - "$ETC" "$OBJECT_PORT" "$CONTAINER_PORT" "$ACCOUNT_PORT" <<'PY'
import sys
from swift.common.ring import RingBuilder
etc = sys.argv[1]
for kind, port in zip(("object", "container", "account"), sys.argv[2:5]):
    b = RingBuilder(6, 1, 1)  # part_power 6, 1 replica, min_part_hours 1
    b.add_dev({"region": 1, "zone": 1, "ip": "127.0.0.1", "port": int(port),
               "replication_ip": "127.0.0.1", "replication_port": int(port),
               "device": "d1", "weight": 100, "meta": ""})
    b.rebalance()
    b.save(f"{etc}/{kind}.builder")
    b.get_ring().save(f"{etc}/{kind}.ring.gz")
PY
  touch "$stamp"
}

# --- processes ---------------------------------------------------------------------------

STARTED_ANY=0

# Each server runs in the foreground in its own session (setsid: its pid is the process
# group id, so stop can signal the group), logging to DIR/log: with -v Swift logs to the
# console, and there may be no syslog (/dev/log) to log to otherwise.
start_one() { # name cmd...
  local name=$1; shift
  pid_alive "$name" && return 0
  setsid "$@" >>"$LOG/$name.log" 2>&1 < /dev/null 9>&- &
  echo $! > "$RUN/$name.pid"
  STARTED_ANY=1
}

fail() {
  echo "swift.sh: $*" >&2
  # Don't leave half a cluster behind; but never tear down one that was already running.
  if [ $STARTED_ANY = 1 ]; then do_stop; fi
  exit 1
}

# Waits for an HTTP 2xx; gives up early with the log tail if the server died (port taken,
# bad config) instead of waiting out the timeout.
wait_http() { # name url
  for _ in $(seq 300); do
    curl -fsS -o /dev/null --max-time 2 "$2" 2>/dev/null && return 0
    if ! pid_alive "$1"; then
      tail -n 20 "$LOG/$1.log" >&2 || true
      fail "$1 exited (log: $LOG/$1.log)"
    fi
    sleep 0.1
  done
  fail "timeout waiting for $2 (log: $LOG/$1.log)"
}

do_start() {
  if ! command -v swift-proxy-server >/dev/null || ! command -v memcached >/dev/null; then
    echo "swift.sh: swift/memcached not installed (run tests/servers/install-swift.sh)" >&2
    exit 1
  fi
  choose_ports
  if [ -n "${SWIFT_TMPFS:-}" ] && ! mountpoint -q "$SRV"; then
    mkdir -p "$SRV"
    mount -t tmpfs -o "size=$SWIFT_TMPFS,mode=0755" tmpfs "$SRV"
    touch "$RUN/tmpfs-mounted"
  fi
  write_configs
  build_rings

  local mc_user=()
  [ "$(id -u)" = 0 ] && mc_user=(-u "$RUN_USER")   # memcached refuses root without -u
  # -U 0: no UDP. -P: memcached has no config file; its own pidfile puts a path inside
  # DIR into its cmdline for pid_alive (a file apart from ours: it warns about a file that
  # already holds a running pid).
  start_one memcached memcached "${mc_user[@]}" -l 127.0.0.1 -p "$MEMCACHED_PORT" -U 0 -m 32 -c 256 \
    -P "$RUN/memcached.self.pid"
  start_one account   swift-account-server   "$ETC/account-server.conf" -v
  start_one container swift-container-server "$ETC/container-server.conf" -v
  start_one object    swift-object-server    "$ETC/object-server.conf" -v
  start_one proxy     swift-proxy-server     "$ETC/proxy-server.conf" -v

  wait_http account   "http://127.0.0.1:$ACCOUNT_PORT/healthcheck"
  wait_http container "http://127.0.0.1:$CONTAINER_PORT/healthcheck"
  wait_http object    "http://127.0.0.1:$OBJECT_PORT/healthcheck"
  wait_http proxy     "http://127.0.0.1:$PROXY_PORT/healthcheck"

  # Ready = a TempAuth login works (needs memcached up) and the account answers (needs
  # the backends and rings).
  local auth_url="http://127.0.0.1:$PROXY_PORT/auth/v1.0" hdrs tok="" storage=""
  for _ in $(seq 100); do
    hdrs=$(curl -fsS -D - -o /dev/null --max-time 2 -H 'X-Auth-User: test:tester' \
      -H 'X-Auth-Key: testing' "$auth_url" 2>/dev/null | tr -d '\r') || hdrs=""
    tok=$(awk -F': ' 'tolower($1)=="x-auth-token"{print $2}' <<<"$hdrs")
    storage=$(awk -F': ' 'tolower($1)=="x-storage-url"{print $2}' <<<"$hdrs")
    if [ -n "$tok" ] && [ -n "$storage" ] &&
       curl -fsS -o /dev/null --max-time 2 -I -H "X-Auth-Token: $tok" "$storage" 2>/dev/null; then
      break
    fi
    tok=""
    sleep 0.1
  done
  [ -n "$tok" ] || fail "TempAuth login never worked (logs in $LOG)"

  echo "SWIFT_AUTH_URL=$auth_url"
  echo "SWIFT_USER=test:tester"
  echo "SWIFT_KEY=testing"
  echo "SWIFT_USER_NOADMIN=test:tester3"
  echo "SWIFT_KEY_NOADMIN=testing3"
  echo "SWIFT_STORAGE_URL=$storage"
  echo "S3_ENDPOINT=http://127.0.0.1:$PROXY_PORT"
  echo "S3_REGION=us-east-1"
  echo "S3_ACCESS_KEY=test:tester"
  echo "S3_SECRET_KEY=testing"
}

do_stop() {
  local name pid entry pids="" alive
  for name in $SERVERS; do
    if pid_alive "$name"; then
      pid=$(cat "$RUN/$name.pid")
      kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
      pids="$pids $name:$pid"
    fi
  done
  for _ in $(seq 50); do
    alive=0
    for entry in $pids; do proc_ours "${entry##*:}" "${entry%%:*}" && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  for entry in $pids; do
    if proc_ours "${entry##*:}" "${entry%%:*}"; then kill -KILL -- "-${entry##*:}" 2>/dev/null || true; fi
  done
  for name in $SERVERS; do rm -f "$RUN/$name.pid"; done
  if [ -f "$RUN/tmpfs-mounted" ]; then
    if mountpoint -q "$SRV"; then umount "$SRV"; fi
    rm -f "$RUN/tmpfs-mounted"
  fi
}

do_status() {
  local name rc=0
  for name in $SERVERS; do
    if pid_alive "$name"; then
      echo "$name: running (pid $(cat "$RUN/$name.pid"))"
    else
      echo "$name: stopped"
      rc=1
    fi
  done
  [ -f "$RUN/ports" ] && cat "$RUN/ports"
  return $rc
}

case $CMD in
  start) do_start ;;
  stop) do_stop ;;
  status) do_status ;;
  restart) do_stop; do_start ;;
  *) echo "usage: $0 start|stop|status|restart [DIR]" >&2; exit 2 ;;
esac
