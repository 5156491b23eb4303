"""`python main.py`: the quick-start runs offline in seconds, keeps what it did for the CLI
to inspect (the commands it prints work as printed), and `--clean` leaves nothing behind."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

from opsgate.cli import app

ROOT = Path(__file__).resolve().parents[2]


def _demo(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    env.pop("OPSGATE_STATE_DIR", None)
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # runs from anywhere, not only the repository root
        env=env,
        timeout=120,
    )
    return proc, time.monotonic() - start


def _demo_dirs(tmp_path: Path) -> list[Path]:
    return sorted(tmp_path.glob("opsgate-demo-*"))


def test_the_demo_keeps_its_state_and_the_commands_it_prints_work(tmp_path: Path) -> None:
    proc, elapsed = _demo(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert elapsed < 15, elapsed
    out = proc.stdout
    assert "Traceback" not in out + proc.stderr
    for line in (
        "local stand-in",
        "(self_approval)",
        "a second run of the same approval is refused (approval_consumed)",
        "audit verify: OK",
    ):
        assert line in out, line
    [workdir] = _demo_dirs(tmp_path)
    assert (workdir / "state" / "opsgate.db").is_file()
    assert (workdir / "audit-anchor.json").is_file()
    releases = workdir / "deployments" / "production" / "app-web" / "releases" / "2.0"
    assert releases.is_dir()  # the stand-in deploy, where the demo said
    assert str(workdir / "deployments") in out

    commands = [line.strip() for line in out.splitlines() if line.startswith("  opsgate ")]
    exports = [line.strip() for line in out.splitlines() if "export OPSGATE_STATE_DIR=" in line]
    assert len(commands) >= 4 and len(exports) == 1
    state = exports[0].split("=", 1)[1]
    assert Path(state) == workdir / "state"
    runner = CliRunner()
    for command in commands:
        args = shlex.split(command)[1:]
        result = runner.invoke(app, args, env={"OPSGATE_STATE_DIR": state})
        assert result.exit_code == 0, (command, result.stderr)
        assert result.stdout.strip(), command
    verify = runner.invoke(
        app,
        ["audit", "verify", "--anchor", str(workdir / "audit-anchor.json")],
        env={"OPSGATE_STATE_DIR": state},
    )
    assert "intact" in verify.stdout and "the anchor" in verify.stdout
    # the demo's policies and approvers came along: the CLI sees the same gate
    explain = runner.invoke(
        app,
        ["policy", "explain", "--action", "deploy", "--resource", "production/app-web"],
        env={"OPSGATE_STATE_DIR": state},
    )
    assert explain.exit_code == 0 and "require_approval" in explain.stdout


def test_the_demo_with_clean_leaves_nothing(tmp_path: Path) -> None:
    proc, elapsed = _demo(tmp_path, "--clean")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert elapsed < 15, elapsed
    assert "audit verify: OK" in proc.stdout
    assert "export OPSGATE_STATE_DIR" not in proc.stdout
    assert _demo_dirs(tmp_path) == []
