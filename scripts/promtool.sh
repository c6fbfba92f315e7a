#!/usr/bin/env bash
# promtool.sh: checks the Prometheus configuration, alerting rules and rule
# unit tests under deploy/prometheus with promtool. When promtool (or the
# prometheus server the end-to-end test runs) is missing, Debian's
# prometheus package is installed first (scripts/apt-install.sh), its
# service kept from starting.
set -euo pipefail
cd "$(dirname "$0")/.."

# Both come with Debian's prometheus package.
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  scripts/apt-install.sh prometheus
fi

promtool check config deploy/prometheus/prometheus.yml
promtool check rules deploy/prometheus/alerts.yml
promtool test rules deploy/prometheus/alerts_test.yml
