"""opsgate.yaml as an attacker or a careless hand writes it: every trick is a typed
ConfigError naming the file, never a silently different configuration."""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from opsgate.config import Config, load_config
from opsgate.errors import ConfigError


def _load(tmp_path: Path, text: str) -> Config:
    (tmp_path / "opsgate.yaml").write_text(text, encoding="utf-8")
    return load_config(tmp_path)


@pytest.mark.parametrize(
    "text",
    [
        # A reader sees production protected; the second key would win.
        "environments:\n  production: {protected: true}\n  staging: {}\n"
        "environments:\n  production: {protected: false}\n  staging: {}\n",
        "environments:\n  production: {protected: true, protected: false}\n",
        "require_proof: true\nrequire_proof: false\n",
    ],
)
def test_a_key_given_twice_is_refused(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError) as exc:
        _load(tmp_path, text)
    assert exc.value.code == "config_invalid"
    assert "duplicate key" in exc.value.message


@pytest.mark.parametrize(
    "text",
    [
        "audience: 2024-13-45\n",  # an impossible date: ValueError inside the parser
        "x: " + "[" * 5000 + "]" * 5000 + "\n",  # RecursionError inside the parser
    ],
)
def test_values_the_parser_cannot_build_are_config_errors(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError) as exc:
        _load(tmp_path, text)
    assert exc.value.code == "config_invalid"


def test_merge_keys_and_anchors_still_load(tmp_path: Path) -> None:
    config = _load(
        tmp_path,
        "limits: &l {max_ttl_minutes: 30}\n"
        "server:\n  <<: {proof_window_seconds: 30, max_json_depth: 4}\n  max_json_depth: 8\n",
    )
    assert config.limits.max_ttl_minutes == 30
    assert config.server.proof_window_seconds == 30
    assert config.server.max_json_depth == 8  # the key written wins


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://postgres@127.0.0.1:1/x?password=QSECRETPW",
        "postgresql+psycopg:///x?host=127.0.0.1&port=1&user=u&password=QSECRETPW",
        "postgresql+psycopg://u:QSECRETPW@127.0.0.1:1/x?sslpassword=QSECRETPW",
        "postgresql://u@127.0.0.1:1/x?PASSWORD=QSECRETPW",
    ],
)
def test_a_database_password_in_the_url_query_is_never_in_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    import opsgate

    state = tmp_path / "state"
    opsgate.Gate.init(state).close()
    monkeypatch.setenv("OPSGATE_DATABASE_URL", url)
    with pytest.raises(opsgate.OpsgateError) as exc:
        opsgate.Gate.open(state)
    assert exc.value.code == "store_unavailable"
    assert "QSECRETPW" not in str(exc.value)
    assert "QSECRETPW" not in exc.value.message


def _chain_text(exc: BaseException) -> str:
    """What a log line with the traceback shows (every exception in the chain it
    prints), and the repr of each."""
    parts = traceback.format_exception(exc)
    cur: BaseException | None = exc
    while cur is not None:
        parts.append(repr(cur))
        cur = cur.__cause__ or (None if cur.__suppress_context__ else cur.__context__)
    return "\n".join(parts)


@pytest.mark.parametrize(
    ("text", "env"),
    [
        # The parser refuses the line that holds the URL: its error quotes that line.
        ("database_url: postgresql://gate:QSECRETPW@db/gate: x\n", None),
        # The model refuses the file (a vault_role without a vault section); the URL
        # from the environment comes last, where pydantic's shortened input still shows.
        (
            "databases:\n  o: {url: 'postgresql://h/o', migrations: m, vault_role: r}\n",
            "postgresql://gate:QSECRETPW@db/gate",
        ),
    ],
)
def test_the_state_databases_password_is_in_no_error_or_repr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, env: str | None
) -> None:
    """A refused opsgate.yaml is one line naming where; the error it came from (kept as
    its cause) quoted the file or the configuration, so a log line with the traceback
    printed the state database's password."""
    if env is not None:
        monkeypatch.setenv("OPSGATE_DATABASE_URL", env)
    with pytest.raises(ConfigError) as exc:
        _load(tmp_path, text)
    assert "QSECRETPW" not in _chain_text(exc.value)
    assert "QSECRETPW" not in repr(Config(database_url="postgresql://gate:QSECRETPW@db/gate"))


# -- the state dir: nobody else may change it ----------------------------------------------


def test_a_world_writable_state_dir_is_refused_at_init_and_open(tmp_path: Path) -> None:
    import opsgate

    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    state.chmod(0o1777)  # e.g. created by hand like /tmp
    with pytest.raises(ConfigError) as exc:
        opsgate.Gate.init(state)
    assert exc.value.code == "state_dir_insecure"
    assert not (state / "gate-pin.json").exists()
    state.chmod(0o700)
    opsgate.Gate.init(state).close()
    state.chmod(0o777)
    with pytest.raises(ConfigError) as exc:
        opsgate.Gate.open(state)
    assert exc.value.code == "state_dir_insecure"


def test_a_world_writable_config_file_is_refused(tmp_path: Path) -> None:
    import opsgate

    state = tmp_path / "state"
    opsgate.Gate.init(state).close()
    state.chmod(0o755)  # others may enter and read names, yet not write: allowed
    opsgate.Gate.open(state).close()
    config = state / "opsgate.yaml"
    config.write_text("environments:\n  production: {protected: false}\n", encoding="utf-8")
    config.chmod(0o666)  # anyone could lift production's protection
    with pytest.raises(ConfigError) as exc:
        opsgate.Gate.open(state)
    assert exc.value.code == "state_dir_insecure"


def test_an_insecure_state_dir_is_one_line_and_exit_1_on_the_cli(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from opsgate.cli import app

    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o777)
    result = CliRunner().invoke(app, ["init", "--state-dir", str(state)])
    assert result.exit_code == 1
    assert "state_dir_insecure" in result.output
    assert "Traceback" not in result.output


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file away needs root")
def test_a_config_file_another_user_owns_is_refused(tmp_path: Path) -> None:
    import opsgate

    state = tmp_path / "state"
    opsgate.Gate.init(state).close()
    config = state / "opsgate.yaml"
    config.write_text("require_proof: false\n", encoding="utf-8")
    os.chown(config, 65534, 65534)  # written by another (unprivileged) user
    with pytest.raises(ConfigError) as exc:
        opsgate.Gate.open(state)
    assert exc.value.code == "state_dir_insecure"


# -- policy files: they decide who may do what, like opsgate.yaml ------------------------

_STRICT = """
policies:
  - name: production-needs-approval
    rules:
      - condition: "environment == 'production'"
        action: require_approval
        approvers: ["sre@example.com"]
"""
_LAX = """
policies:
  - name: anything-goes
    rules:
      - condition: "true"
        action: allow
"""


def _policy_world(tmp_path: Path) -> tuple[Any, Path, Path]:
    import opsgate

    where = tmp_path / "policies"
    where.mkdir(mode=0o755)
    strict = where / "policies.yaml"
    strict.write_text(_STRICT, encoding="utf-8")
    gate = opsgate.Gate.open(tmp_path / "state", policies=str(strict))
    return gate, where, strict


def _names(gate: Any) -> list[str]:
    return [p.name for p in gate.policies.policies]


@pytest.mark.parametrize(
    ("make_insecure", "refused"),
    [
        pytest.param(lambda where, f: f.chmod(0o666), ("file", "dir"), id="file world-writable"),
        pytest.param(
            lambda where, f: where.chmod(0o777), ("file", "dir"), id="its directory world-writable"
        ),
        pytest.param(
            lambda where, f: where.parent.chmod(0o777), ("file", "dir"), id="a directory above"
        ),
        # Others cannot swap a file they do not own in a sticky directory, but they can add
        # one: loading the directory would take it in.
        pytest.param(lambda where, f: where.chmod(0o1777), ("dir",), id="a sticky policy dir"),
    ],
)
def test_a_policy_path_others_can_change_is_refused_and_the_old_policies_stay(
    tmp_path: Path, make_insecure: Callable[[Path, Path], None], refused: tuple[str, ...]
) -> None:
    from opsgate import PolicyError

    gate, where, _ = _policy_world(tmp_path)
    try:
        lax = where / "lax.yaml"
        lax.write_text(_LAX, encoding="utf-8")
        make_insecure(where, lax)
        for kind in refused:
            with pytest.raises(PolicyError) as exc:
                gate.load_policies(str(lax if kind == "file" else where))
            assert exc.value.code == "policy_insecure"
            assert _names(gate) == ["production-needs-approval"]
        if "file" not in refused:
            gate.load_policies(str(lax))
            assert _names(gate) == ["anything-goes"]
    finally:
        gate.close()
        tmp_path.chmod(0o700)


def test_a_policy_reached_through_a_symlink_is_checked_where_it_really_is(tmp_path: Path) -> None:
    from opsgate import PolicyError

    gate, where, _ = _policy_world(tmp_path)
    try:
        elsewhere = tmp_path / "shared"
        elsewhere.mkdir()
        (elsewhere / "lax.yaml").write_text(_LAX, encoding="utf-8")
        elsewhere.chmod(0o777)
        (where / "link.yaml").symlink_to(elsewhere / "lax.yaml")
        with pytest.raises(PolicyError) as exc:
            gate.load_policies(str(where / "link.yaml"))
        assert exc.value.code == "policy_insecure"
        with pytest.raises(PolicyError):
            gate.load_policies(str(where))  # the directory holds the link too
        assert _names(gate) == ["production-needs-approval"]
    finally:
        gate.close()


def test_a_policy_under_a_sticky_directory_like_tmp_loads(tmp_path: Path) -> None:
    gate, _where, strict = _policy_world(tmp_path)
    try:
        tmp_path.chmod(0o1777)  # above the policies: others cannot swap what is in it
        gate.load_policies(str(strict))
        assert _names(gate) == ["production-needs-approval"]
    finally:
        gate.close()
        tmp_path.chmod(0o700)


def test_an_insecure_policy_path_in_the_config_refuses_to_open(tmp_path: Path) -> None:
    import opsgate
    from opsgate import PolicyError

    where = tmp_path / "policies"
    where.mkdir()
    (where / "p.yaml").write_text(_STRICT, encoding="utf-8")
    where.chmod(0o777)
    with pytest.raises(PolicyError) as exc:
        opsgate.Gate.open(tmp_path / "state", policies=str(where))
    assert exc.value.code == "policy_insecure"


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file away needs root")
def test_a_policy_file_another_user_owns_is_refused(tmp_path: Path) -> None:
    from opsgate import PolicyError

    gate, _where, strict = _policy_world(tmp_path)
    try:
        os.chown(strict, 65534, 65534)
        with pytest.raises(PolicyError) as exc:
            gate.load_policies(str(strict))
        assert exc.value.code == "policy_insecure"
    finally:
        gate.close()


@pytest.mark.parametrize(
    "webhook",
    ["notaurl", "ftp://hooks.example.com/T0", "https:///no-host", "https://hooks.example.com/a b"],
)
def test_a_webhook_that_is_no_http_url_is_refused_without_quoting_it(
    tmp_path: Path, webhook: str
) -> None:
    # Found at start rather than at the first approval (when nobody is told); the URL
    # is a secret (whoever holds it can post to the channel), so never quoted back.
    with pytest.raises(ConfigError) as exc:
        _load(tmp_path, f"notifications:\n  webhooks: ['{webhook}']\n")
    assert exc.value.code == "config_invalid" and "webhooks" in exc.value.message
    assert webhook not in str(exc.value)
    ok = _load(tmp_path, "notifications:\n  webhooks: ['https://hooks.example.com/T0/x']\n")
    assert ok.notifications.webhooks == ("https://hooks.example.com/T0/x",)


@pytest.mark.parametrize("audience", ["''", "'two words'"])
def test_an_empty_or_spaced_audience_is_refused(tmp_path: Path, audience: str) -> None:
    with pytest.raises(ConfigError) as exc:
        _load(tmp_path, f"audience: {audience}\n")
    assert exc.value.code == "config_invalid" and "audience" in exc.value.message
