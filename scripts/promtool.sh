#!/usr/bin/env bash
# promtool.sh: checks the Prometheus configuration, alerting rules and rule
# unit tests under deploy/prometheus with promtool. When promtool (or the
# prometheus server the end-to-end test runs) is missing, Debian's
# prometheus package is installed first; its service is kept from starting
# so that nothing is left listening on port 9090.
set -euo pipefail
cd "$(dirname "$0")/.."

install_prometheus() {
  if [ "$(id -u)" != 0 ]; then
    echo "promtool.sh: promtool/prometheus not found; install Debian's prometheus package (as root: apt-get install prometheus)" >&2
    exit 1
  fi
  echo "promtool.sh: installing Debian's prometheus package" >&2
  # policy-rc.d exit 101 tells invoke-rc.d/deb-systemd-invoke not to start
  # the service the package ships.
  local policy=/usr/sbin/policy-rc.d added_policy=
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    added_policy=1
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  local rc=0
  apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null || rc=$?
  if [ -n "$added_policy" ]; then
    rm -f "$policy"
    trap - EXIT
  fi
  [ "$rc" = 0 ] || { echo "promtool.sh: apt-get install prometheus failed" >&2; exit "$rc"; }
  # Belt and braces: should the service have started anyway, stop it.
  if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then
    systemctl stop prometheus || true
    systemctl disable prometheus >/dev/null 2>&1 || true
  elif command -v service >/dev/null && service prometheus status >/dev/null 2>&1; then
    service prometheus stop >/dev/null 2>&1 || true
  fi
}

if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  install_prometheus
fi

promtool check config deploy/prometheus/prometheus.yml
promtool check rules deploy/prometheus/alerts.yml
promtool test rules deploy/prometheus/alerts_test.yml
