#!/usr/bin/env bash
# need-chromium.sh: makes sure Debian's chromium is installed at
# /usr/bin/chromium, which the console's browser test (console/) drives.
# As root it installs the package when it is missing; otherwise it says how.
set -euo pipefail

[ -x /usr/bin/chromium ] && exit 0

if [ "$(id -u)" != 0 ]; then
  echo "need-chromium.sh: /usr/bin/chromium not found; install Debian's chromium package (as root: apt-get install chromium)" >&2
  exit 1
fi
echo "need-chromium.sh: installing Debian's chromium package" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
[ -x /usr/bin/chromium ] || { echo "need-chromium.sh: chromium installed but /usr/bin/chromium is missing" >&2; exit 1; }
