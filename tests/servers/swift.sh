#!/usr/bin/env bash
# A private single-node OpenStack Swift for FuseStream's integration tests: TempAuth v1,
# TempURL and the S3 API (s3api) on one proxy port, everything on 127.0.0.1. Optionally
# (SWIFT_KEYSTONE=1) also a real Keystone v3 and a second proxy that authenticates with it.
#
#   tests/servers/swift.sh start   [DIR]  # set up (idempotent) and start; prints KEY=VALUE lines
#   tests/servers/swift.sh stop    [DIR]  # stop the processes recorded in DIR (and only those)
#   tests/servers/swift.sh status  [DIR]  # exit 0 when every server runs
#   tests/servers/swift.sh restart [DIR]
#
# Packages: tests/servers/install-swift.sh (Debian's swift 2.30, memcached, curl);
# `SWIFT_KEYSTONE=1 tests/servers/install-swift.sh` adds keystone, keystonemiddleware, uwsgi.
# tests/setup.sh installs both, with everything else the tests need.
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
#   SWIFT_KEYSTONE=1      also Keystone v3 (uwsgi, sqlite in DIR/keystone) and a second proxy
#                         with TempURL + authtoken + keystoneauth on the same storage; start
#                         then prints KEYSTONE_* lines too. DIR remembers it (its ports are
#                         recorded), so start/status/restart without the variable include
#                         Keystone; SWIFT_KEYSTONE=0 leaves it out. `stop` stops everything.
#   SWIFT_KEYSTONE_PORT, SWIFT_KEYSTONE_PROXY_PORT   Keystone, the Keystone-authenticated proxy
#
# Credentials (TempAuth; the S3 access key is "<account>:<user>", the secret its key):
#   test:tester / testing    .admin of AUTH_test (may set Temp-URL keys)
#   test:tester3 / testing3  plain user of AUTH_test (no .admin: sees nothing unless ACLs allow)
#   test2:tester2 / testing2 .admin of AUTH_test2;  admin:admin / admin  .reseller_admin
# Keystone (domain default): tester / testing, role member in project test -> AUTH_<project
# id> on the Keystone proxy, plus its application credential "fusestream-test";
# admin / adminpw (project admin, also authtoken's service user).
set -euo pipefail

CMD=${1:-start}
DIR=${2:-${FUSESTREAM_SWIFT_DIR:-${TMPDIR:-/tmp}/fusestream-swift}}
DIR=$(mkdir -p "$DIR" && cd "$DIR" && pwd)
ETC=$DIR/etc
SRV=$DIR/srv
RUN=$DIR/run
LOG=$DIR/log
KSD=$DIR/keystone
# Debian's python: swift lives in its dist-packages (a pyenv/venv python3 on PATH lacks it).
PY=/usr/bin/python3
RUN_USER=$(id -un)
SERVERS="proxy object container account memcached"   # stop order: front to back
ALL_SERVERS="proxy-keystone keystone $SERVERS"          # what stop looks for
KS_ADMIN_PASSWORD=adminpw
KS_APP_CRED_NAME=fusestream-test

mkdir -p "$RUN"
# Tests may call start/stop concurrently for one DIR; serialise them. Started servers must
# not inherit fd 9, or they would hold the lock for their lifetime (see start_one).
exec 9>"$RUN/lock"
flock 9

# Keystone: SWIFT_KEYSTONE if set, else whether this DIR ran with it (its port is recorded).
KEYSTONE=${SWIFT_KEYSTONE:-}
if [ -z "$KEYSTONE" ]; then
  if grep -qs '^SWIFT_KEYSTONE_PORT=' "$RUN/ports"; then KEYSTONE=1; else KEYSTONE=0; fi
fi
[ "$KEYSTONE" = 1 ] && SERVERS="proxy-keystone keystone $SERVERS"

# What each process's cmdline must contain before we treat its pidfile as ours: a path
# inside DIR, so a stale pidfile whose pid was reused is never signalled.
expect_of() {
  case $1 in
    memcached) echo "$RUN/memcached.self.pid" ;;   # its -P argument (see do_start)
    keystone) echo "$KSD/ks_wsgi.py" ;;             # uwsgi master and worker alike
    proxy-keystone) echo "$ETC/proxy-keystone.conf" ;;
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
  for name in $ALL_SERVERS; do pid_alive "$name" && return 0; done
  return 1
}

# Live (non-zombie) pids in process group $1 whose cmdline contains $2: uwsgi's worker
# may outlive its master for a moment. Builtins only, no ps (not in every image).
group_members() { # pgid expect
  local d rest fields cmd
  for d in /proc/[0-9]*; do
    read -r rest 2>/dev/null < "$d/stat" || continue
    read -r -a fields <<<"${rest##*) }"   # state ppid pgrp ...
    if [ "${fields[2]}" = "$1" ] && [ "${fields[0]}" != Z ]; then
      cmd=$(tr '\0' ' ' 2>/dev/null < "$d/cmdline") || continue
      case $cmd in *"$2"*) echo "${d#/proc/}" ;; esac
    fi
  done
}

# --- ports -----------------------------------------------------------------------------

PORT_NAMES="PROXY OBJECT CONTAINER ACCOUNT MEMCACHED"
# Keystone's ports stay recorded even by a start with SWIFT_KEYSTONE=0.
if [ "$KEYSTONE" = 1 ] || grep -qs '^SWIFT_KEYSTONE_PORT=' "$RUN/ports"; then
  PORT_NAMES="$PORT_NAMES KEYSTONE KEYSTONE_PROXY"
fi

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
  KEYSTONE_PORT=$(sed -n 's/^SWIFT_KEYSTONE_PORT=//p' "$RUN/ports")
  KEYSTONE_PROXY_PORT=$(sed -n 's/^SWIFT_KEYSTONE_PROXY_PORT=//p' "$RUN/ports")
}

# --- configuration -----------------------------------------------------------------------

# The filters both proxies share.
proxy_common_filters() {
  cat <<EOF
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

$(proxy_common_filters)
EOF

  [ "$KEYSTONE" = 1 ] || return 0
  # Same storage and pipeline as proxy-server.conf, with authtoken + keystoneauth in place
  # of s3api + tempauth. tempurl stays in front of them: a TempURL request has no token.
  cat > "$ETC/proxy-keystone.conf" <<EOF
[DEFAULT]
bind_ip = 127.0.0.1
bind_port = $KEYSTONE_PROXY_PORT
workers = 0
bind_timeout = 3
user = $RUN_USER
swift_dir = $ETC
log_name = proxy-keystone
log_level = INFO

[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats bulk tempurl ratelimit authtoken keystoneauth copy container-quotas account-quotas slo dlo versioned_writes symlink proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true
allow_account_management = true

# Validates X-Auth-Token with Keystone, as Keystone's admin (the service user; its token
# is fetched on the first request, which start's readiness check makes). Validated tokens
# are cached in the proxy's memcached (token_cache_time, 300 s).
[filter:authtoken]
paste.filter_factory = keystonemiddleware.auth_token:filter_factory
www_authenticate_uri = http://127.0.0.1:$KEYSTONE_PORT/v3
auth_url = http://127.0.0.1:$KEYSTONE_PORT/v3
auth_type = password
project_domain_id = default
user_domain_id = default
project_name = admin
username = admin
password = $KS_ADMIN_PASSWORD
delay_auth_decision = True
cache = swift.cache
include_service_catalog = False

# Users with one of the operator_roles in a project own its account AUTH_<project id>
# (may create containers, set Temp-URL keys).
[filter:keystoneauth]
use = egg:swift#keystoneauth
operator_roles = admin, member
reseller_admin_role = ResellerAdmin

$(proxy_common_filters)
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

# --- keystone ----------------------------------------------------------------------------

# Config and database in DIR/keystone; the database is made once (a stamp records it).
# keystone-manage's db_sync, fernet_setup, credential_setup and bootstrap run in one
# python process (~2 s; as four keystone-manage calls ~6 s, keystone's imports dominate).
# The /usr/bin/keystone-manage script lives in the `keystone` package, which we avoid.
keystone_setup() {
  local stamp=$KSD/.bootstrapped
  if [ ! -f "$stamp" ]; then
    pid_alive keystone && fail "keystone runs from $KSD, but its setup never finished: stop first"
    rm -rf "$KSD"
  fi
  mkdir -p "$KSD"
  # sqlite: uwsgi runs one process with one thread (--lazy-apps), and the database is in
  # WAL mode, or concurrent API writes fail with "database is locked".
  # password_hash_rounds = 4: bcrypt's minimum; the default (12) costs ~0.2 s per
  # password or application-credential login. [cache] in process memory (one worker, so
  # never stale): without it every API call takes ~0.2 s, a token validation ~0.5 s.
  cat > "$KSD/keystone.conf" <<EOF
[DEFAULT]
log_file = $LOG/keystone.log
[database]
connection = sqlite:///$KSD/keystone.db
[identity]
password_hash_rounds = 4
[token]
provider = fernet
expiration = 86400
[fernet_tokens]
key_repository = $KSD/fernet-keys
[fernet_receipts]
key_repository = $KSD/fernet-keys
[credential]
key_repository = $KSD/credential-keys
[cache]
enabled = true
backend = dogpile.cache.memory
EOF
  cat > "$KSD/ks_wsgi.py" <<'EOF'
# Keystone's public WSGI app; uwsgi finds keystone.conf through OS_KEYSTONE_CONFIG_FILES.
from keystone.server.wsgi import initialize_public_application
application = initialize_public_application()
EOF
  [ -f "$stamp" ] && return 0
  local group ks_url="http://127.0.0.1:$KEYSTONE_PORT/v3/"
  group=$(id -gn)
  $PY - "$KSD" "$RUN_USER" "$group" "$KS_ADMIN_PASSWORD" "$ks_url" >>"$LOG/keystone-manage.log" 2>&1 <<'PY' ||
import sqlite3, sys
from keystone.cmd import cli
ksd, user, group, password, url = sys.argv[1:6]
def manage(*args):
    cli.CONF.clear()  # lets keystone-manage's main() parse a new command line
    cli.main(argv=["keystone-manage", "--config-file", ksd + "/keystone.conf", *args])
manage("db_sync")
sqlite3.connect(ksd + "/keystone.db").execute("PRAGMA journal_mode=WAL").close()
manage("fernet_setup", "--keystone-user", user, "--keystone-group", group)
manage("credential_setup", "--keystone-user", user, "--keystone-group", group)
manage("bootstrap", "--bootstrap-password", password, "--bootstrap-region-id", "RegionOne",
       "--bootstrap-admin-url", url, "--bootstrap-internal-url", url,
       "--bootstrap-public-url", url)
PY
    { tail -n 20 "$LOG/keystone-manage.log" >&2; fail "keystone setup failed (log: $LOG/keystone-manage.log)"; }
  touch "$stamp"
}

# Through Keystone's API, idempotently: project test, user tester (role member), the
# object-store service with public/internal/admin endpoints in RegionOne pointing at the
# Keystone proxy, identity endpoints at the current Keystone port, and tester's application
# credential (created with tester's own project token: Keystone only lets users create
# their own). Its id and secret go to $2 (the secret is only shown at creation), and a
# recorded one is kept while Keystone still has it. Prints the project id.
keystone_populate() { # url cred_file
  $PY - "$1" "$KS_ADMIN_PASSWORD" "$KEYSTONE_PROXY_PORT" "$2" "$KS_APP_CRED_NAME" <<'PY'
import os, sys
import requests
ks, admin_pw, proxy_port, cred_file, cred_name = sys.argv[1:6]
v3 = ks.rstrip("/")
http = requests.Session()

def token(user, password, project):
    r = http.post(v3 + "/auth/tokens", json={"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": user, "domain": {"id": "default"}, "password": password}}},
        "scope": {"project": {"name": project, "domain": {"id": "default"}}}}})
    r.raise_for_status()
    return r.headers["X-Subject-Token"]

def call(method, path, tok, **kw):
    r = http.request(method, v3 + path, headers={"X-Auth-Token": tok}, **kw)
    if not r.ok:
        sys.exit(f"{method} {path}: {r.status_code} {r.text}")
    return r.json() if r.content else None

admin = token("admin", admin_pw, "admin")

def ensure(coll, one, body, **flt):
    got = call("GET", "/" + coll, admin, params=flt)[coll]
    return got[0] if got else call("POST", "/" + coll, admin, json={one: body})[one]

def ensure_endpoints(service, url):
    eps = call("GET", "/endpoints", admin, params={"service_id": service["id"]})["endpoints"]
    for iface in ("public", "internal", "admin"):
        mine = [e for e in eps if e["interface"] == iface]
        if not mine:
            call("POST", "/endpoints", admin, json={"endpoint": {
                "service_id": service["id"], "interface": iface, "url": url,
                "region_id": "RegionOne"}})
        for e in mine:
            if e["url"] != url:
                call("PATCH", f"/endpoints/{e['id']}", admin, json={"endpoint": {"url": url}})

project = ensure("projects", "project", {"name": "test", "domain_id": "default"},
                 name="test", domain_id="default")
user = ensure("users", "user", {"name": "tester", "password": "testing", "domain_id": "default",
                                "default_project_id": project["id"]},
              name="tester", domain_id="default")
member = call("GET", "/roles", admin, params={"name": "member"})["roles"][0]
call("PUT", f"/projects/{project['id']}/users/{user['id']}/roles/{member['id']}", admin)
swift = ensure("services", "service", {"name": "swift", "type": "object-store",
                                       "description": "FuseStream test Swift (Keystone proxy)"},
               type="object-store")
ensure_endpoints(swift, f"http://127.0.0.1:{proxy_port}/v1/AUTH_$(project_id)s")
identity = call("GET", "/services", admin, params={"type": "identity"})["services"][0]
ensure_endpoints(identity, v3 + "/")

mine = token("tester", "testing", "test")
creds_path = f"/users/{user['id']}/application_credentials"
have = {}
try:
    with open(cred_file) as f:
        have = dict(line.rstrip("\n").split("=", 1) for line in f if "=" in line)
except FileNotFoundError:
    pass
existing = call("GET", creds_path, mine, params={"name": cred_name})["application_credentials"]
if not (have.get("KEYSTONE_APP_CRED_SECRET") and
        [c for c in existing if c["id"] == have.get("KEYSTONE_APP_CRED_ID")]):
    for c in existing:
        call("DELETE", f"{creds_path}/{c['id']}", mine)
    cred = call("POST", creds_path, mine, json={"application_credential": {
        "name": cred_name, "description": "FuseStream integration tests"}})["application_credential"]
    with open(cred_file + ".tmp", "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(f"KEYSTONE_APP_CRED_ID={cred['id']}\nKEYSTONE_APP_CRED_SECRET={cred['secret']}\n")
    os.replace(cred_file + ".tmp", cred_file)
print(project["id"])
PY
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
wait_http() { # name url [tries of 0.1 s + request time; default 300]
  for _ in $(seq "${3:-300}"); do
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
    echo "swift.sh: swift/memcached not installed (run tests/setup.sh)" >&2
    exit 1
  fi
  if [ "$KEYSTONE" = 1 ] && { ! command -v uwsgi >/dev/null || ! $PY -c 'import importlib.util as u, sys
sys.exit(not (u.find_spec("keystone") and u.find_spec("keystonemiddleware")))'; }; then
    echo "swift.sh: keystone/uwsgi not installed (run tests/setup.sh)" >&2
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
  if [ "$KEYSTONE" = 1 ]; then
    start_one proxy-keystone swift-proxy-server "$ETC/proxy-keystone.conf" -v
    # Meanwhile the servers above come up. uwsgi: master + one worker with one thread,
    # loading the app after the fork (--lazy-apps), for sqlite. --die-on-term: SIGTERM
    # stops it (else it reloads). --skip-atexit-teardown: otherwise the worker segfaults in
    # Py_Finalize (greenlet) on every stop. Connection: close: --http-socket closes every
    # connection after one response but says HTTP/1.1 without that header, so pooling
    # clients (python requests, hyper) reuse a dead connection and get "connection reset".
    keystone_setup
    start_one keystone env OS_KEYSTONE_CONFIG_FILES="$KSD/keystone.conf" \
      uwsgi --plugin python3 --http-socket "127.0.0.1:$KEYSTONE_PORT" --wsgi-file "$KSD/ks_wsgi.py" \
      --master --lazy-apps --processes 1 --threads 1 --die-on-term --skip-atexit-teardown \
      --need-app --buffer-size 65535 --add-header 'Connection: close' --disable-logging
  fi

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

  if [ "$KEYSTONE" = 1 ]; then
    local ks_url="http://127.0.0.1:$KEYSTONE_PORT/v3" cred_file=$KSD/app-credential.env
    local pstamp=$KSD/.populated project="" ks_storage body
    wait_http keystone "$ks_url" 600
    wait_http proxy-keystone "http://127.0.0.1:$KEYSTONE_PROXY_PORT/healthcheck"
    # The API setup runs again only when the ports changed (endpoint URLs) or the
    # credential file is gone.
    if [ -f "$cred_file" ] && [ "$(cut -d' ' -f1,2 "$pstamp" 2>/dev/null)" = "$KEYSTONE_PORT $KEYSTONE_PROXY_PORT" ]; then
      project=$(cut -d' ' -f3 "$pstamp")
    else
      project=$(keystone_populate "$ks_url" "$cred_file" 2>>"$LOG/keystone-populate.log") ||
        { tail -n 20 "$LOG/keystone-populate.log" >&2; fail "keystone setup through its API failed (log: $LOG/keystone-populate.log)"; }
      echo "$KEYSTONE_PORT $KEYSTONE_PROXY_PORT $project" > "$pstamp"
    fi
    ks_storage="http://127.0.0.1:$KEYSTONE_PROXY_PORT/v1/AUTH_$project"
    # Ready = tester's token works on the Keystone proxy (the first request there also has
    # authtoken fetch its own service token).
    body='{"auth":{"identity":{"methods":["password"],"password":{"user":{"name":"tester","domain":{"id":"default"},"password":"testing"}}},"scope":{"project":{"name":"test","domain":{"id":"default"}}}}}'
    tok=""
    for _ in $(seq 100); do
      tok=$(curl -fsS -D - -o /dev/null --max-time 5 -H 'Content-Type: application/json' \
        -d "$body" "$ks_url/auth/tokens" 2>/dev/null | tr -d '\r' |
        awk -F': ' 'tolower($1)=="x-subject-token"{print $2}') || tok=""
      if [ -n "$tok" ] &&
         curl -fsS -o /dev/null --max-time 10 -I -H "X-Auth-Token: $tok" "$ks_storage" 2>/dev/null; then
        break
      fi
      tok=""
      pid_alive keystone || fail "keystone exited (log: $LOG/keystone.log)"
      pid_alive proxy-keystone || fail "proxy-keystone exited (log: $LOG/proxy-keystone.log)"
      sleep 0.2
    done
    [ -n "$tok" ] || fail "a Keystone token never worked on the Keystone proxy (logs in $LOG)"
  fi

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
  if [ "$KEYSTONE" = 1 ]; then
    echo "KEYSTONE_AUTH_URL=$ks_url"
    echo "KEYSTONE_USER=tester"
    echo "KEYSTONE_PASSWORD=testing"
    echo "KEYSTONE_PROJECT=test"
    echo "KEYSTONE_DOMAIN=default"
    grep -E '^KEYSTONE_APP_CRED_(ID|SECRET)=' "$cred_file"
    echo "SWIFT_KEYSTONE_STORAGE_URL=$ks_storage"
  fi
}

# Still running: the group leader, or for keystone also a uwsgi worker of its group.
entry_running() { # name:pid
  proc_ours "${1##*:}" "${1%%:*}" && return 0
  [ "${1%%:*}" = keystone ] && [ -n "$(group_members "${1##*:}" "$(expect_of keystone)")" ]
}

do_stop() {
  local name pid entry pids="" alive
  # Everything that runs from DIR, whatever SWIFT_KEYSTONE says now.
  for name in $ALL_SERVERS; do
    if pid_alive "$name"; then
      pid=$(cat "$RUN/$name.pid")
      kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
      pids="$pids $name:$pid"
    elif [ "$name" = keystone ] && [ -f "$RUN/keystone.pid" ]; then
      # The master is gone; a worker it left behind still carries the group id.
      pid=$(cat "$RUN/keystone.pid")
      for entry in $(group_members "$pid" "$(expect_of keystone)"); do
        kill -TERM "$entry" 2>/dev/null || true
        pids="$pids $name:$pid"
      done
    fi
  done
  # uwsgi's master takes ~1 s to bury its worker.
  for _ in $(seq 50); do
    alive=0
    for entry in $pids; do entry_running "$entry" && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  for entry in $pids; do
    if proc_ours "${entry##*:}" "${entry%%:*}"; then kill -KILL -- "-${entry##*:}" 2>/dev/null || true; fi
    if [ "${entry%%:*}" = keystone ]; then
      for pid in $(group_members "${entry##*:}" "$(expect_of keystone)"); do
        kill -KILL "$pid" 2>/dev/null || true
      done
    fi
  done
  for name in $ALL_SERVERS; do rm -f "$RUN/$name.pid"; done
  if [ -f "$RUN/tmpfs-mounted" ]; then
    if mountpoint -q "$SRV"; then umount "$SRV"; fi
    rm -f "$RUN/tmpfs-mounted"
  fi
}

do_status() {
  local name pid rc=0
  for name in $SERVERS; do
    if [ "$name" = keystone ] && pid_alive "$name"; then
      pid=$(cat "$RUN/$name.pid")
      echo "$name: running (uwsgi master $pid, worker $(group_members "$pid" "$(expect_of keystone)" |
        grep -vx "$pid" | tr '\n' ' ' | sed 's/ $//'))"
    elif pid_alive "$name"; then
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
