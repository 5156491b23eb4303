#!/usr/bin/env bash
# Run the whole test suite: install what it needs, check the code (ruff, mypy
# --strict), start the real services it uses (PostgreSQL, OpenBao; Chromium for
# the UI tests), run pytest, stop the services. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .

# The code must be lint-clean and fully typed before any test runs: either failing
# fails the run.
.venv/bin/ruff check .
.venv/bin/mypy --strict opsgate

# shellcheck source=scripts/services.sh
source scripts/services.sh
trap stop_services EXIT
start_postgres
start_openbao
ensure_chromium

.venv/bin/python -m pytest -q "$@"
