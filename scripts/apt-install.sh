#!/usr/bin/env bash
# apt-install.sh PACKAGE...: installs the Debian packages that are not
# installed yet. It needs root; without root it names the missing packages
# and fails. Services the packages ship are kept from starting (prometheus
# would listen on 9090, pgbouncer on 6432): tests start their own.
set -euo pipefail

missing=()
for pkg in "$@"; do
  if [ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" != "install ok installed" ]; then
    missing+=("$pkg")
  fi
done
[ "${#missing[@]}" = 0 ] && exit 0

if [ "$(id -u)" != 0 ]; then
  echo "apt-install.sh: missing Debian packages: ${missing[*]} (as root: apt-get install ${missing[*]})" >&2
  exit 1
fi
echo "apt-install.sh: installing Debian packages: ${missing[*]}" >&2

# policy-rc.d exit 101 tells invoke-rc.d/deb-systemd-invoke not to start
# the services the packages ship.
policy=/usr/sbin/policy-rc.d
added_policy=
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod 755 "$policy"
  added_policy=1
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
rc=0
apt-get update -qq &&
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || rc=$?
if [ -n "$added_policy" ]; then
  rm -f "$policy"
  trap - EXIT
fi
[ "$rc" = 0 ] || { echo "apt-install.sh: apt-get install ${missing[*]} failed" >&2; exit "$rc"; }

# Belt and braces: should a service have started anyway, stop it. Each of
# these packages names its service after itself, but etcd-server's is etcd.
for svc in "${missing[@]}"; do
  [ "$svc" = etcd-server ] && svc=etcd
  if command -v systemctl >/dev/null && systemctl is-active --quiet "$svc" 2>/dev/null; then
    systemctl stop "$svc" || true
    systemctl disable "$svc" >/dev/null 2>&1 || true
  elif command -v service >/dev/null && service "$svc" status >/dev/null 2>&1; then
    service "$svc" stop >/dev/null 2>&1 || true
  fi
done
