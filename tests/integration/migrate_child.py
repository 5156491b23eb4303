"""A separate process that plans and applies migrations (for the kill and race tests).

Usage: python migrate_child.py URL MIGRATIONS_DIR AGENT [LOCK_WAIT_SECONDS]
Prints one JSON line: {"status": ..., "summary": ..., "code": ...}.
"""

from __future__ import annotations

import json
import sys

from opsgate.config import Config
from opsgate.errors import OpsgateError
from opsgate.operations.base import Operation, RunContext
from opsgate.operations.migrate import MigrationExecutor


def main() -> None:
    url, migrations, agent = sys.argv[1:4]
    wait = float(sys.argv[4]) if len(sys.argv) > 4 else 30.0
    config = Config.model_validate(
        {"databases": {"orders": {"url": url, "migrations": migrations, "lock_wait_seconds": wait}}}
    )
    executor = MigrationExecutor(config)
    try:
        plan = executor.plan(Operation("migrate", "database/orders", {}))
        outcome = executor.run_with_context(plan, RunContext(f"did:key:{agent}", agent))
        print(json.dumps({"status": outcome.status, "summary": outcome.summary, "code": None}))
    except OpsgateError as exc:
        print(json.dumps({"status": "error", "summary": exc.message, "code": exc.code}))


if __name__ == "__main__":
    main()
