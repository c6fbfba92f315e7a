#!/usr/bin/env bash
# bench.sh: what `make bench` does. Starts a throwaway PostgreSQL cluster with
# default durability (fsync and synchronous_commit on), builds relay and the
# harness, migrates, and runs bench/ (pgbench ceiling, relay under load, end
# to end processing); writes bench/RESULTS.md. Everything listens on
# 127.0.0.1 and is removed on exit. It fails only if the harness fails, never
# because a target is missed. Extra arguments go to the harness (see
# `go run ./bench -h`).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
GO=${GO:-go}

pgbin=""
for d in /usr/lib/postgresql/*/bin; do
  [ -x "$d/pgbench" ] && pgbin=$d
done
pgbench=${PGBENCH:-${pgbin:+$pgbin/pgbench}}
pgbench=${pgbench:-$(command -v pgbench || true)}
[ -n "$pgbench" ] || { echo "bench.sh: pgbench not found (Debian: apt-get install postgresql-contrib or postgresql)" >&2; exit 1; }

# The cluster lives on disk, not tmpfs, so fsync costs what it costs.
dir=$(mktemp -d "${BENCH_TMPDIR:-/tmp}/relay-bench.XXXXXX")
chmod 755 "$dir"
cleanup() {
  status=$?
  if [ -f "$dir/relay.pid" ]; then
    pid=$(cat "$dir/relay.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  if [ -n "${bench_pid:-}" ]; then kill "$bench_pid" 2>/dev/null || true; wait "$bench_pid" 2>/dev/null || true; fi
  "$root/scripts/pg.sh" stop "$dir/data" || true
  rm -rf "$dir"
  exit $status
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
echo "bench: PostgreSQL in $dir/data on 127.0.0.1:$port (default durability)"
# pg_stat_statements (Debian's postgresql-contrib, in the server package
# since 10) shows which statements each processed event's writes come from.
pg_opts=""
if [ -n "$pgbin" ] && [ -f "$pgbin/../lib/pg_stat_statements.so" ]; then
  pg_opts="-c shared_preload_libraries=pg_stat_statements"
fi
PG_EXTRA_OPTS="$pg_opts" "$root/scripts/pg.sh" start "$dir/data" "$port"
export DATABASE_URL
DATABASE_URL=$("$root/scripts/pg.sh" url "$port")

echo "bench: building relay and the harness"
"$GO" build -o "$dir/relay" ./cmd/relay
"$GO" build -o "$dir/bench" ./bench
"$dir/relay" migrate

rev=$(git describe --always --dirty 2>/dev/null || echo unknown)
"$dir/bench" -relay "$dir/relay" -pgbench "$pgbench" -db "$DATABASE_URL" -pgdata "$dir/data" \
  -tmp "$dir" -revision "$rev" -out "$root/bench/RESULTS.md" "$@" &
bench_pid=$!
wait "$bench_pid"
bench_pid=""
