#!/usr/bin/env bash
# Installs FuseStream as services: the mount daemon as a system service (root), the control
# plane as a service of the user running this script (through sudo for the system parts).
#
#   deploy/install.sh            # build (release), install binaries and services, start them
#
# Linux: systemd (units in deploy/systemd). macOS: launchd (plists in deploy/launchd); needs
# macFUSE installed.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

(cd "$repo" && cargo build --release --bins)
as_root install -m 0755 "$repo/target/release/fusestream-mountd" "$repo/target/release/fusestreamctl" /usr/local/bin/

case "$(uname -s)" in
  Linux)
    as_root install -m 0644 "$repo/deploy/systemd/fusestream-mountd.service" /etc/systemd/system/
    if [ ! -f /etc/default/fusestream-mountd ]; then
      echo "FUSESTREAM_MOUNTD_ARGS=\"--allow-uid $(id -u) --allow-other\"" | as_root tee /etc/default/fusestream-mountd >/dev/null
      grep -q '^user_allow_other' /etc/fuse.conf 2>/dev/null || echo user_allow_other | as_root tee -a /etc/fuse.conf >/dev/null
    fi
    as_root systemctl daemon-reload
    as_root systemctl enable --now fusestream-mountd.service
    install -D -m 0644 "$repo/deploy/systemd/fusestream.service" "$HOME/.config/systemd/user/fusestream.service"
    systemctl --user daemon-reload
    systemctl --user enable --now fusestream.service
    echo "installed; files appear under /run/fusestream/mnt (fusestreamctl stage FILE)"
    ;;
  Darwin)
    as_root mkdir -p /var/run/fusestream /Library/Logs/FuseStream "$HOME/Library/Logs/FuseStream"
    sed "s/<string>501<\/string>/<string>$(id -u)<\/string>/" "$repo/deploy/launchd/org.fusestream.mountd.plist" |
      as_root tee /Library/LaunchDaemons/org.fusestream.mountd.plist >/dev/null
    sed "s#HOME/Library#$HOME/Library#" "$repo/deploy/launchd/org.fusestream.control.plist" \
      >"$HOME/Library/LaunchAgents/org.fusestream.control.plist"
    as_root launchctl bootstrap system /Library/LaunchDaemons/org.fusestream.mountd.plist
    launchctl bootstrap "gui/$(id -u)" "$HOME/Library/LaunchAgents/org.fusestream.control.plist"
    echo "installed; files appear under /Volumes/FuseStream (fusestreamctl stage FILE)"
    ;;
  *) echo "install.sh: unsupported system $(uname -s)" >&2; exit 1 ;;
esac
