#!/usr/bin/env bash
# Start the MedForge SuperLink (coordinating center) with TLS and SuperNode authentication.
#
#   scripts/deploy/start_superlink.sh [--keys DIR] [--host ADDR] [--port PORT] [--database FILE]
#
#   --keys DIR       folder made by scripts/deploy/keys.py (ca.pem, superlink.pem, superlink.key); default deploy-keys
#   --host ADDR      address to listen on; default 0.0.0.0 (127.0.0.1 for loopback only)
#   --port PORT      the one HTTPS port for hospitals (Fleet API) and the flwr CLI (Control API); default 9093
#   --database FILE  SuperLink state (registered hospital keys, runs); default DIR/superlink.db, so
#                    registrations survive a restart. ":flwr-in-memory:" keeps nothing.
#   --stop-grace S   on SIGTERM/SIGINT, wait S seconds for open connections, then force the stop; default 5
#                    (a `flwr run --stream` attached to a run whose ServerApp stopped with the SuperLink
#                    holds its connection until Flower gives up on that run, ~45 s)
#
# Run it from the MedForge checkout: the ServerApp runs in a subprocess of this SuperLink
# (isolation "subprocess"), with this environment, and writes results under this folder unless
# the run sets results-dir. App dependencies are never installed at run time: the SuperLink's
# Python environment must already hold MedForge's dependencies (scripts/install.sh).
set -euo pipefail
# Flower from the checkout's .venv (scripts/install.sh) when there is one, else from PATH.
venv_bin="$(cd "$(dirname "$0")/../.." && pwd)/.venv/bin"
[[ -x "$venv_bin/flower-superlink" ]] && PATH="$venv_bin:$PATH"
keys=deploy-keys host=0.0.0.0 port=9093 database="" stop_grace=5
while [[ $# -gt 0 ]]; do
  case "$1" in
    --keys) keys="$2"; shift 2 ;;
    --host) host="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --database) database="$2"; shift 2 ;;
    --stop-grace) stop_grace="$2"; shift 2 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "start_superlink.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
for file in ca.pem superlink.pem superlink.key; do
  [[ -f "$keys/$file" ]] || { echo "start_superlink.sh: $keys/$file missing; create it with scripts/deploy/keys.py (README, Deployment)" >&2; exit 2; }
done
database="${database:-$keys/superlink.db}"
if [[ "$database" != ":flwr-in-memory:" ]]; then
  # The database holds registered keys and every run's messages: private like the keys (SQLite
  # gives its journal files the database's mode).
  [[ -e "$database" ]] || (umask 077 && : > "$database")
  chmod 600 "$database"
fi
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 FLWR_DISABLE_UPDATE_CHECK=1
[[ "$stop_grace" =~ ^[0-9]+$ ]] || { echo "start_superlink.sh: --stop-grace $stop_grace: give whole seconds" >&2; exit 2; }
flower-superlink \
  --ssl-ca-certfile "$keys/ca.pem" --ssl-certfile "$keys/superlink.pem" --ssl-keyfile "$keys/superlink.key" \
  --enable-supernode-auth --disable-runtime-dependency-installation --isolation subprocess \
  --host "$host" --port "$port" --database "$database" &
superlink=$!
# Stopping: SIGTERM asks uvicorn to wait for open connections; a second SIGINT after the grace forces it.
stop() {
  kill -TERM "$superlink" 2>/dev/null || return 0
  for ((i = 0; i < stop_grace * 10; i++)); do kill -0 "$superlink" 2>/dev/null || return 0; sleep 0.1; done
  echo "start_superlink.sh: connections still open after ${stop_grace} s; forcing the stop" >&2
  kill -INT "$superlink" 2>/dev/null || true
}
trap stop TERM INT
code=0; wait "$superlink" || code=$?
while kill -0 "$superlink" 2>/dev/null; do code=0; wait "$superlink" || code=$?; done
exit "$code"
