#!/usr/bin/env bash
# with-test-postgres.sh CMD...: runs CMD with DATABASE_URL pointing at a
# throwaway PostgreSQL cluster that is created first and removed afterwards.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

dir=$(mktemp -d /tmp/relay-test-pg.XXXXXX)
chmod 755 "$dir"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cleanup() {
  "$here/pg.sh" stop "$dir/data" || true
  rm -rf "$dir"
}
trap cleanup EXIT

# Tests never survive a machine crash, so durability is traded for speed here;
# synchronous_commit stays on so that a server crash in a test loses nothing.
PG_EXTRA_OPTS="-c fsync=off -c full_page_writes=off" "$here/pg.sh" start "$dir/data" "$port"
export DATABASE_URL
DATABASE_URL=$("$here/pg.sh" url "$port")
export RELAY_TEST_PGDATA="$dir/data"
"$@"
