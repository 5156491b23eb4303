#!/usr/bin/env bash
# Install the benchmark peers and run every benchmark, printing opsgate beside them.
# Extra args (e.g. --quick) go to each benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-bench.txt
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps \
  agentmesh-platform==3.7.0 click==8.5.1 python-dateutil==2.9.0.post0 email-validator==2.4.0 \
  dnspython==2.9.2 six==1.17.0
for bench in core policy trust ops; do
  .venv/bin/python -m "bench.$bench" "$@"
done
# bench.http drives every target with wrk (a Debian package) and starts OpenBao and a
# PostgreSQL cluster of its own on 127.0.0.1.
command -v wrk >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk >/dev/null \
  || echo "wrk is not installable here: bench.http skipped" >&2
if command -v wrk >/dev/null; then
  .venv/bin/python -m bench.http "$@"
fi
