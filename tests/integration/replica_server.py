"""Child process: one `opsgate serve` replica (a real uvicorn server on 127.0.0.1)
on its own copy of the state dir, whose opsgate.yaml names the shared PostgreSQL
database and the external URL; the test deploy executor is registered."""

from __future__ import annotations

import sys
from pathlib import Path

import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import RecordingExecutor

import opsgate
from opsgate.server import create_app


def main() -> None:
    state_dir, port = sys.argv[1], int(sys.argv[2])
    gate = opsgate.Gate.open(state_dir, create=False)
    gate.register_executor("deploy", RecordingExecutor())
    app = create_app(gate)
    try:
        uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    finally:
        gate.close()


if __name__ == "__main__":
    main()
