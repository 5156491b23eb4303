"""The README's SDK example runs as written, from the repository root."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _block(markdown: str, after: str) -> str:
    start = markdown.index("```python\n", markdown.index(after)) + len("```python\n")
    return markdown[start : markdown.index("```", start)]


def test_the_sdk_example_runs_as_written() -> None:
    code = _block((ROOT / "README.md").read_text(encoding="utf-8"), "## The SDK")
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "require_approval ('jane@company.com', 'john@company.com')",
        "succeeded",
        "True",
    ]
