"""The README runs as written: the SDK example from the repository root, and every
line of the CLI section (each command the `opsgate` app has, with what it requires)."""

from __future__ import annotations

import base64
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

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


# -- the CLI section: every command documented, every documented line runs --------------------


def _cli_section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("## The CLI\n")
    return text[start : text.index("\n## ", start + 1)]


def _fenced(section: str, lang: str) -> list[str]:
    """The bodies of the section's fenced blocks opened with ```<lang>."""
    blocks: list[tuple[str, list[str]]] = []
    current: tuple[str, list[str]] | None = None
    for line in section.splitlines():
        if line.startswith("```"):
            if current is None:
                current = (line[3:].strip(), [])
            else:
                blocks.append(current)
                current = None
        elif current is not None:
            current[1].append(line)
    assert current is None, "an unclosed fence in the README CLI section"
    return ["\n".join(body) + "\n" for kind, body in blocks if kind == lang]


def _commands() -> dict[str, Any]:
    """Every leaf command of the `opsgate` app, by its full name ('opsgate agents list')."""
    import typer

    from opsgate.cli import app

    found: dict[str, Any] = {}

    def walk(command: Any, path: str) -> None:
        subs = getattr(command, "commands", None)
        if subs:
            for name, sub in subs.items():
                walk(sub, f"{path} {name}")
        else:
            found[path] = command

    walk(typer.main.get_command(app), "opsgate")
    return found


def test_the_synopsis_shows_every_command_with_its_required_options() -> None:
    [synopsis] = _fenced(_cli_section(), "")
    lines = [line.split("#")[0] for line in synopsis.splitlines()]
    for name, command in _commands().items():
        shown = [line for line in lines if re.match(rf"{re.escape(name)}( |$)", line)]
        assert shown, f"README CLI synopsis has no line for `{name}`"
        for param in command.params:
            if param.param_type_name == "option" and param.required:
                assert any(f" {opt} " in f"{line} " for line in shown for opt in param.opts), (
                    f"`{name}` requires {'/'.join(param.opts)}: the README synopsis omits it"
                )
    # One value per flag (`-c A -c B`): never `-c CAP ...` as if it took several.
    assert not re.search(r"(?<!\[)-[cs] CAP \.\.\.", synopsis)


class _Walkthrough:
    """Runs the README's bash lines through the real CLI app, in process.

    Understood: `opsgate ARGS`, `NAME=$(opsgate ARGS)` (stdout, stripped),
    `NAME=value opsgate ARGS` (environment for that command), `printf '%s' "$NAME" |
    opsgate ARGS` (the value on stdin), `cp FILE FILE`, "$NAME" expansion, backslash
    continuations and `# comments`; a comment saying `exit N` is the exit code that
    line must end with (0 otherwise). Anything else fails the test, so the README
    stays within what a shell runs as written. Values a reader copies from an earlier
    listing (or types) are filled in by `placeholders` when first used.
    """

    CAPTURE = re.compile(r"([A-Z_][A-Z0-9_]*)=\$\((opsgate .*)\)\Z")
    PIPE = re.compile(r"printf '%s' (\"\$[A-Z_][A-Z0-9_]*\") \| (opsgate .*)\Z")

    def __init__(self, placeholders: dict[str, Any]) -> None:
        from typer.testing import CliRunner

        self.runner = CliRunner()
        self.vars: dict[str, str] = {}
        self.placeholders = placeholders
        self.ran: list[str] = []

    def expand(self, word: str) -> str:
        def value(m: re.Match[str]) -> str:
            name = m.group(1) or m.group(2)
            if name not in self.vars:
                assert name in self.placeholders, f"README uses ${name}, which nothing sets"
                self.vars[name] = self.placeholders[name](self.vars)
            return self.vars[name]

        return re.sub(r"\$\{([A-Z_][A-Z0-9_]*)\}|\$([A-Z_][A-Z0-9_]*)", value, word)

    def invoke(self, words: list[str], env: dict[str, str], stdin: str | None = None) -> Any:
        from opsgate.cli import app

        assert words[0] == "opsgate", f"not an opsgate command: {words}"
        # A command is `opsgate X` or `opsgate GROUP X`: record both spellings, so
        # `opsgate serve --host ...` counts as running `opsgate serve`.
        self.ran.extend([" ".join(words[:2]), " ".join(words[:3])])
        return self.runner.invoke(app, words[1:], env=env, input=stdin)

    def run_line(self, line: str) -> None:
        code, comment = 0, ""
        body = line
        if " #" in line:
            body, comment = line.split(" #", 1)
            found = re.search(r"\bexit (\d)\b", comment)
            code = int(found.group(1)) if found else 0
        body = body.strip()
        capture = self.CAPTURE.match(body)
        if capture:
            name, command = capture.groups()
            result = self.invoke([self.expand(w) for w in shlex.split(command)], {})
            assert result.exit_code == code, (line, result.exit_code, result.stderr)
            self.vars[name] = result.stdout.strip()
            return
        piped = self.PIPE.match(body)
        if piped:
            value, command = piped.groups()
            result = self.invoke(
                [self.expand(w) for w in shlex.split(command)], {}, self.expand(value[1:-1])
            )
            assert result.exit_code == code, (line, result.exit_code, result.stderr)
            return
        words = shlex.split(body)
        if words[0] == "cp":
            assert len(words) == 3, f"cp copies one file: {line!r}"
            shutil.copyfile(words[1], words[2])
            return
        env: dict[str, str] = {}
        while words and re.match(r"[A-Z_][A-Z0-9_]*=", words[0]):
            name, _, raw = words.pop(0).partition("=")
            env[name] = self.expand(raw)
        assert words, f"README line sets a variable without a command: {line!r}"
        result = self.invoke([self.expand(w) for w in words], env)
        assert result.exit_code == code, (line, result.exit_code, result.stdout, result.stderr)
        if code:
            assert result.stderr.startswith("error ["), (line, result.stderr)

    def run_block(self, block: str) -> None:
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                self.run_line(line)


def _pending_requests(state: Path) -> dict[str, Any]:
    """Two production deploy requests of deploy-agent waiting for approval, made the way
    agents make them (the SDK; the CLI has no command for an agent's request)."""
    from helpers import RecordingExecutor, deploy

    import opsgate

    ids: list[str] = []

    def make(_: dict[str, str]) -> str:
        if not ids:
            gate = opsgate.Gate.open(state, policies=ROOT / "examples" / "policies.yaml")
            try:
                gate.register_executor("deploy", RecordingExecutor())
                agent = gate.agents.get("deploy-agent")
                token = agent.credential(scope=["deploy:production"]).token
                for version in ("2.0", "2.1"):
                    pending = gate.execute(token, deploy(version=version))
                    assert isinstance(pending, opsgate.PendingApproval)
                    ids.append(pending.approval_id)
            finally:
                gate.close()
        return ids.pop(0)

    return {"APPROVAL_ID": make, "OTHER_APPROVAL_ID": make}


def _jti_of(name: str) -> Any:
    def jti(variables: dict[str, str]) -> str:
        payload = variables[name].split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return str(claims["jti"])

    return jti


def test_the_cli_walkthrough_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From a fresh 'repository root' (the examples beside it), with the default state dir."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPSGATE_STATE_DIR", raising=False)
    monkeypatch.delenv("OPSGATE_APPROVER_TOKEN", raising=False)
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    blocks = _fenced(_cli_section(), "bash")
    assert blocks, "the README CLI section has no runnable example"
    shell = _Walkthrough(
        {
            "JTI": _jti_of("TOKEN"),
            "DB_PASSWORD": lambda _: "walkthrough-db-password",
            **_pending_requests(tmp_path / ".opsgate"),
        }
    )
    for block in blocks:
        shell.run_block(block)
    assert (tmp_path / ".opsgate" / "opsgate.db").is_file()
    # Every command the app has is shown working, not only listed (a top-level
    # command's first three words include its first argument).
    ran = set(shell.ran)
    missing = [
        name for name in _commands() if not any(r == name or r.startswith(f"{name} ") for r in ran)
    ]
    assert not missing, f"the README CLI walkthrough never runs {missing}"


def test_the_jose_example_verifies_with_the_jwks_alone() -> None:
    markdown = (ROOT / "README.md").read_text(encoding="utf-8")
    code = _block(markdown, "## Verifying credentials with any JOSE library")
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["['deploy:staging']"]
