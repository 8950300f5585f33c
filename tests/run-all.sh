#!/usr/bin/env bash
# Install everything the tests need (Python packages, Debian packages when missing, the npm client)
# and run lint, type-check and the whole test suite. This is the README's test command; CI runs it.
#   bash tests/run-all.sh            default suite
#   bash tests/run-all.sh -m long    the heavy fault-injection runs (extra args go to pytest)
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages: ${missing[*]} (run as root or: sudo apt-get install ${missing[*]})" >&2
    return 0
  fi
  step "apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  apt_install nodejs npm
fi
# The forwarding tests start their own VictoriaMetrics and Prometheus on loopback
# (tests/test_forward_vm.py, test_forward_prometheus.py). On a host with systemd the packages also
# enable services on :8428 and :9090 (all interfaces): stop them if unwanted.
apt_install victoria-metrics prometheus
# The dashboard test drives headless Chromium through Playwright, which uses this system binary (no
# browser download); the Prometheus test starts its own server on loopback. On a host with systemd
# the prometheus package also enables a service on :9090 (all interfaces): stop it if unwanted.
apt_install chromium prometheus

step "pip install -e '.[test]'"
python3 -m pip install -q --disable-pip-version-check -e '.[test]' 2>&1 | grep -v -e '^WARNING: Running pip as' -e 'is ignored: it is neither' || true

if command -v npm >/dev/null 2>&1 && [ ! -d tests/clients/node_modules/hot-shots ]; then
  step "npm install hot-shots (the Node.js StatsD client used by the client tests)"
  npm install --silent --no-audit --no-fund --prefix tests/clients >/dev/null 2>&1 \
    || echo "npm install failed: the hot-shots test will be skipped" >&2
fi

step "ruff check"
python3 -m ruff check statsyard_agent tests bench
step "mypy --strict statsyard_agent"
python3 -m mypy --strict statsyard_agent
step "pytest"
python3 -m pytest "$@"
