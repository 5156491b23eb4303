"""A state dir and its database are bound, and only creation makes a gate.

An initialised state dir (it holds the gate pin) opens only on the database that
holds the same gate id; a wrong or empty database, or a database that belongs to
another gate, is `gate_mismatch` and nothing is written anywhere: no key file,
no table, no row. A gate is created on first use of a state dir that does not
exist yet (or is empty), by `Gate.init`, or by `opsgate init` — never by opening
an initialised state dir on an empty database.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, inspect
from typer.testing import CliRunner

import opsgate
from opsgate.cli import app
from opsgate.credentials.keyring import PIN_FILE, read_pin

runner = CliRunner()


def _files(path: Path) -> dict[str, int]:
    """Every file under `path` with its size (what must not change)."""
    return {
        str(p.relative_to(path)): p.stat().st_size
        for p in sorted(path.rglob("*"))
        if p.is_file() and not p.name.endswith(("-wal", "-shm"))
    }


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


@pytest.fixture
def sqlite_gate(tmp_path: Path) -> Path:
    with opsgate.Gate.open(tmp_path / "state") as gate:
        gate.register_agent("deployer", ["deploy:staging"], sponsor="ops@company.com")
    return tmp_path / "state"


def test_a_wrong_database_url_is_refused_and_changes_nothing(
    sqlite_gate: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The state dir says gate A; the url points at an empty database (a typo)."""
    before = _files(sqlite_gate)
    with pytest.raises(opsgate.ConfigError) as info:
        opsgate.Gate.open(sqlite_gate, database_url=pg_url)
    assert info.value.code == "gate_mismatch"
    assert "holds no gate" in info.value.message
    monkeypatch.setenv("OPSGATE_DATABASE_URL", pg_url)
    for args in (["audit", "verify"], ["agents", "list"], ["keys", "rotate"], ["init"]):
        result = runner.invoke(app, ["--state-dir", str(sqlite_gate), *args])
        assert result.exit_code == 1, (args, result.stderr)
        assert result.stderr.startswith("error [gate_mismatch]"), result.stderr
        assert result.stdout == ""
    assert _tables(pg_url) == set()  # not even migrated
    assert _files(sqlite_gate) == before  # no new signing key, no pin, no rows
    monkeypatch.delenv("OPSGATE_DATABASE_URL")
    with opsgate.Gate.open(sqlite_gate) as gate:  # the real database still verifies
        assert gate.audit.verify().ok


def test_a_state_dir_opened_on_another_gates_database_is_refused(
    sqlite_gate: Path, tmp_path: Path, pg_url: str
) -> None:
    with opsgate.Gate.open(tmp_path / "pg-state", database_url=pg_url) as other:
        other_id = other.gate_id
        head = other.audit.head()
    before = _files(sqlite_gate)
    with pytest.raises(opsgate.ConfigError) as info:
        opsgate.Gate.open(sqlite_gate, database_url=pg_url)
    assert info.value.code == "gate_mismatch" and other_id in info.value.message
    assert _files(sqlite_gate) == before
    # ... and the other way round: the PostgreSQL gate's state dir on its own (missing)
    # embedded database
    pg_before = _files(tmp_path / "pg-state")
    with pytest.raises(opsgate.ConfigError) as info:
        opsgate.Gate.open(tmp_path / "pg-state")
    assert info.value.code == "gate_mismatch"
    assert _files(tmp_path / "pg-state") == pg_before  # no opsgate.db was created
    with opsgate.Gate.open(tmp_path / "pg-state", database_url=pg_url) as other:
        assert other.audit.head() == head and other.audit.verify().ok


def test_a_new_state_dir_cannot_take_over_a_gates_database(
    tmp_path: Path, database_url: str | None
) -> None:
    with opsgate.Gate.open(tmp_path / "state", database_url=database_url) as gate:
        gate_id = gate.gate_id
    if database_url is None:  # the embedded database, copied into a fresh dir
        (tmp_path / "copy").mkdir()
        (tmp_path / "copy" / "opsgate.db").write_bytes(
            (tmp_path / "state" / "opsgate.db").read_bytes()
        )
        target, before = tmp_path / "copy", {"opsgate.db"}
    else:
        target, before = tmp_path / "fresh", set()
    with pytest.raises(opsgate.ConfigError) as info:
        opsgate.Gate.init(target, database_url=database_url)
    assert info.value.code == "gate_mismatch" and gate_id in info.value.message
    assert set(_files(target)) == before  # no key, no pin
    with opsgate.Gate.open(tmp_path / "state", database_url=database_url) as gate:
        assert gate.gate_id == gate_id and gate.audit.verify().ok


def test_an_initialised_state_dir_whose_database_is_gone_is_not_recreated(
    sqlite_gate: Path,
) -> None:
    for suffix in ("", "-wal", "-shm"):
        (sqlite_gate / f"opsgate.db{suffix}").unlink(missing_ok=True)
    before = _files(sqlite_gate)
    for create in (None, True, False):
        with pytest.raises(opsgate.ConfigError) as info:
            opsgate.Gate.open(sqlite_gate, create=create)
        assert info.value.code == "gate_mismatch"
    assert _files(sqlite_gate) == before


# -- what creates a gate ---------------------------------------------------------------------------


def test_first_use_creates_and_reopening_finds_the_same_gate(tmp_path: Path) -> None:
    with opsgate.Gate.open(tmp_path / "new") as gate:
        first = (gate.gate_id, gate.pin)
    empty = tmp_path / "empty"
    empty.mkdir()
    with opsgate.Gate.open(empty) as gate:  # an empty directory is first use too
        assert gate.gate_id != first[0]
    for again in (opsgate.Gate.open, opsgate.Gate.init):
        with again(tmp_path / "new") as gate:
            assert (gate.gate_id, gate.pin) == first


def test_only_creation_makes_a_gate(tmp_path: Path) -> None:
    with pytest.raises(opsgate.ConfigError) as info:
        opsgate.Gate.open(tmp_path / "missing", create=False)
    assert info.value.code == "not_initialized"
    assert not (tmp_path / "missing").exists()
    configured = tmp_path / "configured"  # an operator wrote the config first: first use
    configured.mkdir()
    (configured / "opsgate.yaml").write_text("audience: ops\n")
    with pytest.raises(opsgate.ConfigError) as info:
        opsgate.Gate.open(configured, create=False)
    assert info.value.code == "not_initialized"
    with opsgate.Gate.open(configured) as gate:
        assert read_pin(configured) == gate.pin and gate.config.audience == "ops"


@pytest.mark.parametrize("leftover", ["gate-keys", "agent-keys", "opsgate.db"])
def test_the_files_of_a_gate_without_its_pin_are_not_taken_for_a_new_gate(
    tmp_path: Path, leftover: str
) -> None:
    with opsgate.Gate.open(tmp_path / "state") as gate:
        gate.register_agent("deployer", ["deploy:staging"], sponsor="ops@company.com")
    (tmp_path / "state" / PIN_FILE).unlink()
    for other in ("gate-keys", "agent-keys", "opsgate.db", "audit-checkpoint.json"):
        if other != leftover:
            target = tmp_path / "state" / other
            if target.is_dir():
                for f in target.iterdir():
                    f.unlink()
                target.rmdir()
            else:
                target.unlink(missing_ok=True)
    before = _files(tmp_path / "state")
    with pytest.raises(opsgate.ConfigError) as info:
        opsgate.Gate.open(tmp_path / "state")
    assert info.value.code == "not_initialized" and leftover in info.value.message
    assert _files(tmp_path / "state") == before
    if leftover == "opsgate.db":  # the database still holds the old gate: not taken over
        with pytest.raises(opsgate.ConfigError) as info:
            opsgate.Gate.init(tmp_path / "state")
        assert info.value.code == "gate_mismatch"
    else:  # what a failed creation leaves: init starts over
        with opsgate.Gate.init(tmp_path / "state") as gate:
            assert read_pin(tmp_path / "state") == gate.pin


def test_a_state_dir_that_is_a_file_says_so(tmp_path: Path) -> None:
    path = tmp_path / "state"
    path.write_text("not a directory")
    for create in (None, True, False):
        with pytest.raises(opsgate.ConfigError) as info:
            opsgate.Gate.open(path, create=create)
        assert info.value.code == "state_dir_invalid"
        assert "not a directory" in info.value.message
    for args in (["agents", "list"], ["init"], ["audit", "verify"]):
        result = runner.invoke(app, ["--state-dir", str(path), *args])
        assert result.exit_code == 1, args
        assert result.stderr.startswith("error [state_dir_invalid]"), result.stderr
        assert "not a directory" in result.stderr and "run 'opsgate init'" not in result.stderr
    assert path.read_text() == "not a directory"


def _open_in_process(args: tuple[str, str | None, Any]) -> tuple[str, str]:
    state, url, barrier = args
    barrier.wait()
    gate = opsgate.Gate.open(state, database_url=url)
    try:
        return gate.gate_id, gate.pin.root_kid
    finally:
        gate.close()


def _worker(state: str, url: str | None, barrier: Any, out: Any) -> None:
    try:
        out.put(_open_in_process((state, url, barrier)))
    except BaseException as exc:
        out.put(("error", repr(exc)))


def test_four_processes_opening_a_new_state_dir_at_once_agree_on_one_gate(
    tmp_path: Path, database_url: str | None
) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(4)
    out = ctx.Queue()
    state = str(tmp_path / "state")
    procs = [
        ctx.Process(target=_worker, args=(state, database_url, barrier, out)) for _ in range(4)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert all(r[0] != "error" for r in results), results
    assert len(set(results)) == 1, results
    gate_id, kid = results[0]
    assert {p.stem for p in (tmp_path / "state" / "gate-keys").iterdir()} == {kid}
    assert json.loads((tmp_path / "state" / PIN_FILE).read_text())["gate_id"] == gate_id
    with opsgate.Gate.open(state, database_url=database_url) as gate:
        report = gate.audit.verify()
        assert report.ok and report.events == 2, report  # one gate.key_created, one policy.loaded


def test_the_pin_is_not_world_writable(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        with opsgate.Gate.open(tmp_path / "state"):
            pass
    finally:
        os.umask(old)
    assert (tmp_path / "state" / PIN_FILE).stat().st_mode & 0o777 == 0o600


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("initialised", [True, False])
def test_a_database_that_cannot_be_reached_is_named_in_the_error(
    sqlite_gate: Path, tmp_path: Path, initialised: bool
) -> None:
    """`store_unavailable` says which database it tried (without its password) and
    where that came from; the bare driver class name left a reader guessing."""
    url = f"postgresql://opsgate:hunter2-pw@127.0.0.1:{_closed_port()}/opsgate"
    path = sqlite_gate if initialised else tmp_path / "new-state"
    with pytest.raises(opsgate.StoreError) as info:
        opsgate.Gate.open(path, database_url=url)
    assert info.value.code == "store_unavailable"
    assert "127.0.0.1" in info.value.message and "/opsgate" in info.value.message
    assert "database_url" in info.value.message
    assert "hunter2-pw" not in str(info.value)
    result = runner.invoke(
        app, ["agents", "list"], env={"OPSGATE_STATE_DIR": str(sqlite_gate),
                                      "OPSGATE_DATABASE_URL": url}
    )  # fmt: skip
    assert result.exit_code == 1
    assert result.stderr.startswith("error [store_unavailable]: ") and "127.0.0.1" in result.stderr
    assert "hunter2-pw" not in result.stderr and "Traceback" not in result.stderr
