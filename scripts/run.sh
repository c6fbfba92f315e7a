#!/usr/bin/env bash
# run.sh: what `make run` does. Without DATABASE_URL it creates (first time)
# and starts a PostgreSQL cluster under .data/, then migrates and serves.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${DATABASE_URL:-}" ]; then
  port=${RELAY_DEV_PG_PORT:-54329}
  if ! scripts/pg.sh start .data/pg "$port"; then
    echo "relay: PostgreSQL did not start on port $port (log: .data/pg/server.log); if the port is taken, set RELAY_DEV_PG_PORT" >&2
    exit 1
  fi
  # A server left running by an earlier make run keeps the port it has.
  port=$(sed -n 4p .data/pg/postmaster.pid)
  DATABASE_URL=$(scripts/pg.sh url "$port")
  export DATABASE_URL
  echo "relay: local PostgreSQL in .data/pg on port $port (stop it: scripts/pg.sh stop .data/pg)"
  echo "relay: for bin/relay jobs, inbox and endpoints, and psql, in another terminal: export DATABASE_URL='$DATABASE_URL'"
fi
if [ -z "${POLAR_WEBHOOK_SECRET:-}" ] && [ -z "${POLAR_WEBHOOK_SECRET_FILE:-}" ]; then
  export POLAR_WEBHOOK_SECRET=polar_whs_development_secret
  echo "relay: development webhook secret: $POLAR_WEBHOOK_SECRET"
fi
if [ -z "${RELAY_SECRETS_KEY:-}" ] && [ -z "${RELAY_SECRETS_KEY_FILE:-}" ]; then
  # Fixed, so that secrets added to .data/pg stay readable across runs.
  export RELAY_SECRETS_KEY=cmVsYXktZGV2ZWxvcG1lbnQtc2VjcmV0cy1rZXktMDE=
  echo "relay: development secrets key (RELAY_SECRETS_KEY): $RELAY_SECRETS_KEY"
fi
if [ -z "${RELAY_ADMIN_TOKEN:-}" ] && [ -z "${RELAY_ADMIN_USER:-}" ]; then
  export RELAY_ADMIN_USER=admin RELAY_ADMIN_PASSWORD=relay-development
  echo "relay: console at http://${RELAY_ADMIN_ADDR:-127.0.0.1:9091}/admin/, River UI at /riverui/ (user admin, password relay-development)"
fi
export RELAY_SPOOL_DIR=${RELAY_SPOOL_DIR-.data/spool} # webhooks wait here while PostgreSQL is down; RELAY_SPOOL_DIR= turns it off
export LOG_FORMAT=${LOG_FORMAT:-text}
echo "relay: webhooks on ${RELAY_HTTP_ADDR:-:8080}${RELAY_WEBHOOK_PATH:-/webhooks/polar}, admin listener (/metrics, /healthz, /readyz, River UI) on ${RELAY_ADMIN_ADDR:-127.0.0.1:9091}; RELAY_HTTP_ADDR and RELAY_ADMIN_ADDR move them (bin/relay send reads RELAY_HTTP_ADDR too)"

go build -o bin/relay ./cmd/relay
bin/relay migrate
exec bin/relay serve
