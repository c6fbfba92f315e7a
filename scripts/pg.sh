#!/usr/bin/env bash
# pg.sh: a local PostgreSQL cluster for development and tests.
#
#   scripts/pg.sh start DIR PORT   create DIR (first time) and start the server
#   scripts/pg.sh stop DIR         stop it
#   scripts/pg.sh crash DIR        stop it without a shutdown checkpoint, as a
#                                  crash would (the next start recovers)
#   scripts/pg.sh url PORT         print the DATABASE_URL for it
#
# initdb refuses to run as root, so as root the cluster belongs to the
# postgres user. The server listens on 127.0.0.1 only, with trust auth.
set -euo pipefail

pgbin() {
  local dir
  for dir in /usr/lib/postgresql/*/bin; do
    [ -x "$dir/pg_ctl" ] && { echo "$dir"; return; }
  done
  command -v pg_ctl >/dev/null && { dirname "$(command -v pg_ctl)"; return; }
  echo "pg.sh: no PostgreSQL server binaries found; on Debian: apt-get install postgresql" >&2
  exit 1
}

as_owner() {
  if [ "$(id -u)" = 0 ]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi
}

# reachable DIR: the directory (physical path) where DIR's cluster lives.
# As root in a directory the postgres user cannot enter (a clone under
# /root, say), the cluster lives under /var/tmp instead, in a directory
# named for DIR's path, and DIR becomes a link to it: make run then works
# from any clone, and the same clone finds the same cluster again.
reachable() {
  local dir=$1 parent alt
  if [ "$(id -u)" = 0 ] && [ ! -e "$dir" ] && [ ! -L "$dir" ]; then
    parent=$(dirname "$dir")
    mkdir -p "$parent"
    parent=$(cd "$parent" && pwd -P)
    if ! runuser -u postgres -- test -x "$parent"; then
      alt=/var/tmp/relay-pg-$(printf '%s' "$parent/$(basename "$dir")" | sha256sum | cut -c1-16)
      mkdir -p "$alt"
      chown postgres: "$alt"
      chmod 700 "$alt"
      ln -s "$alt" "$dir"
      echo "pg.sh: the postgres user cannot enter $parent, so the cluster lives in $alt ($dir links to it)" >&2
    fi
  fi
  mkdir -p "$dir"
  (cd "$dir" && pwd -P)
}

cmd=${1:?usage: pg.sh start DIR PORT | stop DIR | crash DIR | url PORT}
case "$cmd" in
start)
  dir=${2:?DIR}; port=${3:?PORT}
  bin=$(pgbin)
  dir=$(reachable "$dir")
  [ "$(id -u)" = 0 ] && chown postgres: "$dir"
  if ! as_owner test -w "$dir"; then
    echo "pg.sh: the postgres user cannot write $dir (is a parent directory private?)" >&2
    exit 1
  fi
  if [ ! -f "$dir/PG_VERSION" ]; then
    as_owner "$bin/initdb" -D "$dir" -U postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8 >"$dir.initdb.log" 2>&1 ||
      { cat "$dir.initdb.log" >&2; exit 1; }
  fi
  if as_owner "$bin/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
    exit 0
  fi
  as_owner "$bin/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 start \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c max_connections=300 ${PG_EXTRA_OPTS:-}" >/dev/null
  ;;
stop)
  dir=${2:?DIR}
  [ -f "$dir/PG_VERSION" ] || exit 0
  dir=$(cd "$dir" && pwd -P)
  as_owner "$(pgbin)/pg_ctl" -D "$dir" -m fast -w stop >/dev/null 2>&1 || true
  ;;
crash)
  dir=$(cd "${2:?DIR}" && pwd -P)
  as_owner "$(pgbin)/pg_ctl" -D "$dir" -m immediate -w -t 60 stop >/dev/null
  ;;
url)
  echo "postgres://postgres@127.0.0.1:${2:?PORT}/postgres?sslmode=disable"
  ;;
*)
  echo "pg.sh: unknown command $cmd" >&2; exit 2
  ;;
esac
