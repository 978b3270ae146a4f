#!/usr/bin/env bash
# Installs what tests/servers/swift.sh needs: Debian's OpenStack Swift (2.30 on bookworm),
# memcached (TempAuth keeps its tokens there) and curl (readiness checks).
#
#   tests/servers/install-swift.sh
#   SWIFT_KEYSTONE=1 tests/servers/install-swift.sh   # also what `SWIFT_KEYSTONE=1 swift.sh` needs
#   tests/servers/install-swift.sh PACKAGE...         # and these Debian packages, in the same way
#
# tests/setup.sh (everything the tests need) passes its other packages as arguments, so
# they are installed in the same apt run, under the same guard against system services.
#
# With SWIFT_KEYSTONE=1 it also installs Keystone (python3-keystone 22 "Zed", only the
# library: the `keystone` package's postinst wants dbconfig-common and sets up a system
# service), keystonemiddleware (authtoken for the second Swift proxy) and uWSGI with its
# python3 plugin (serves Keystone). About 120 more packages, none of which starts anything
# (uwsgi-core only ships an uwsgi-app@.service template that nothing enables).
#
# Quiet, non-interactive, safe to run again (does nothing when all packages are present).
# Runs as root, or through sudo otherwise.
#
# The packages ship init scripts/units for system-wide daemons (memcached on :11211, the
# swift-* servers reading /etc/swift; among setup.sh's, nginx on :80 and prometheus on
# :9090). The tests never use those: they start their own on free ports. So the install must not leave any of them running:
#  - while installing, a policy-rc.d that denies every start is in place (invoke-rc.d and
#    deb-systemd-invoke, which the postinst scripts call, both honour it). If the machine
#    already has one we leave it alone; Docker-style images ship one that does just this.
#  - afterwards, any memcached/swift/keystone/uwsgi/nginx/prometheus daemon that appeared
#    during the install and runs the system configuration is stopped anyway (belt and braces
#    for a policy-rc.d that allows).
set -euo pipefail

PACKAGES=(swift swift-proxy swift-object swift-container swift-account python3-swiftclient memcached curl)
if [ "${SWIFT_KEYSTONE:-0}" = 1 ]; then
  PACKAGES+=(python3-keystone python3-keystonemiddleware uwsgi-core uwsgi-plugin-python3)
fi
PACKAGES+=("$@")
POLICY=/usr/sbin/policy-rc.d

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for p in "${PACKAGES[@]}"; do
  [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" = installed ] || missing+=("$p")
done
if [ ${#missing[@]} = 0 ]; then
  echo "already installed: ${PACKAGES[*]}" >&2
  exit 0
fi

# pids of system-wide memcached/swift/keystone/uwsgi/nginx/prometheus daemons, by their
# system configuration (ours run with configs under a test dir, so they never match).
system_daemons() {
  local d cmd
  for d in /proc/[0-9]*; do
    cmd=$(tr '\0' ' ' 2>/dev/null < "$d/cmdline") || continue
    case $cmd in
      *memcached*"-u memcache"* | */etc/memcached.conf* | *start-memcached* | *swift-*/etc/swift/* | \
      *keystone-wsgi-* | *uwsgi*/etc/uwsgi* | *uwsgi*/etc/keystone* | *uwsgi*/usr/bin/keystone* | \
      "nginx: master process /usr/sbin/nginx -g daemon on"* | "/usr/bin/prometheus ")
        echo "${d#/proc/}" ;;
    esac
  done
}
before=" $(system_daemons | tr '\n' ' ') "

# Deny service starts while installing, unless the machine has its own policy.
own_policy=0
if [ ! -e "$POLICY" ]; then
  as_root sh -c "printf '#!/bin/sh\n# temporary, from FuseStream tests/servers/install-swift.sh\nexit 101\n' > $POLICY && chmod 755 $POLICY"
  own_policy=1
  trap 'as_root rm -f "$POLICY"' EXIT
fi

export DEBIAN_FRONTEND=noninteractive
install() {
  as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install \
    -y -qq --no-install-recommends "${missing[@]}" < /dev/null > /dev/null
}
# A fresh machine may have no (or stale) package lists: update once and retry.
if ! install; then
  as_root apt-get -o DPkg::Lock::Timeout=600 update -qq < /dev/null
  install
fi

if [ $own_policy = 1 ]; then as_root rm -f "$POLICY"; trap - EXIT; fi

for pid in $(system_daemons); do
  case $before in *" $pid "*) continue ;; esac
  echo "stopping system daemon started by the install: $pid $(tr '\0' ' ' 2>/dev/null < "/proc/$pid/cmdline")" >&2
  as_root kill -TERM "$pid" 2>/dev/null || true
done
echo "installed: ${missing[*]}" >&2
