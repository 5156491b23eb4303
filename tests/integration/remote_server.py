"""Child process: `opsgate serve`'s app on a state dir, with the test deploy executor
registered (a real uvicorn server on 127.0.0.1)."""

from __future__ import annotations

import sys
from pathlib import Path

import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import RecordingExecutor

import opsgate
from opsgate.config import ServerConfig
from opsgate.server import create_app


def main() -> None:
    state_dir, policies, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    gate = opsgate.Gate.open(state_dir, policies=policies)
    gate.register_executor("deploy", RecordingExecutor())
    app = create_app(gate, ServerConfig(external_url=f"http://127.0.0.1:{port}"))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()
