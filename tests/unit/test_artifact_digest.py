"""Artifact digests are a tagged, canonical encoding of the tree: type, relative path,
mode, size and content of every entry, directories (empty ones too) included. An
approval binds that digest, so any change to the tree after approval is refused."""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import policy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import opsgate
from opsgate.operations.artifacts import ArtifactRoots, artifact_digest
from opsgate.operations.base import Operation
from opsgate.operations.deploy import LocalDeployExecutor

JOHN = "john@company.com"


def digest(root: Path, artifact: Path) -> str:
    with ArtifactRoots([root]).open(str(artifact)) as opened:
        return artifact_digest(opened)


@dataclass
class Prod:
    gate: opsgate.Gate
    token: str
    john: str
    root: Path
    deployments: Path

    def request(self, artifact: Path) -> opsgate.PendingApproval:
        op = Operation("deploy", "production/web", {"version": "1.0", "artifact": str(artifact)})
        pending = self.gate.execute(self.token, op)
        assert isinstance(pending, opsgate.PendingApproval)
        self.gate.approvals.approve(pending.approval_id, approver=JOHN, token=self.john)
        return pending

    def resume_refused(self, pending: opsgate.PendingApproval) -> str:
        with pytest.raises(opsgate.OpsgateError) as info:
            self.gate.resume(pending.approval_id, self.token)
        assert not (self.deployments / "production").exists() or not any(
            (self.deployments / "production" / "web" / "releases").iterdir()
        )
        return info.value.code


@pytest.fixture
def prod(tmp_path: Path) -> Iterator[Prod]:
    root = tmp_path / "artifacts"
    root.mkdir()
    gate = opsgate.Gate.open(tmp_path / "state", policies=policy("policies.yaml"))
    # Straight to production: these tests are about what an approval binds, not the
    # staging-before-production rule (tested in test_deploy.py), so it is off for `web`.
    executor = LocalDeployExecutor(
        tmp_path / "deployments", artifact_roots=[root], apps={"web": {"require_staging": False}}
    )
    gate.register_executor("deploy", executor)
    sup = gate.register_agent(
        "sup", ["deploy:production"], sponsor="lead@company.com", trust_score=920
    )
    agent = sup.delegate(name="deployer", capabilities=["deploy:production"])
    token = gate.credential_manager.issue_credential(agent.did, ["deploy:production"]).token
    john = gate.approvals.add_approver(JOHN)
    yield Prod(gate, token, john, root, tmp_path / "deployments")
    gate.close()


def test_a_file_replaced_by_a_directory_after_approval_is_refused(prod: Prod) -> None:
    """The reported collision: the approved file's bytes were the old tree encoding."""
    script = b"#!/bin/sh\nexec evil\n"
    bundle = prod.root / "bundle"
    bundle.write_bytes(b"run.sh\0" + hashlib.sha256(script).digest())
    pending = prod.request(bundle)
    bundle.unlink()
    bundle.mkdir()
    (bundle / "run.sh").write_bytes(script)
    assert prod.resume_refused(pending) == "digest_mismatch"


def test_a_chmod_after_approval_is_a_digest_mismatch(prod: Prod) -> None:
    app = prod.root / "app"
    app.mkdir()
    (app / "start.sh").write_text("#!/bin/sh\n")
    (app / "start.sh").chmod(0o644)
    pending = prod.request(app)
    (app / "start.sh").chmod(0o755)
    assert prod.resume_refused(pending) == "digest_mismatch"


def test_a_setuid_bit_after_approval_is_refused(prod: Prod) -> None:
    app = prod.root / "app"
    app.mkdir()
    (app / "tool").write_text("#!/bin/sh\n")
    (app / "tool").chmod(0o755)
    pending = prod.request(app)
    (app / "tool").chmod(0o4755)
    assert prod.resume_refused(pending) == "artifact_invalid"


def test_an_empty_directory_added_after_approval_is_a_digest_mismatch(prod: Prod) -> None:
    app = prod.root / "app"
    app.mkdir()
    (app / "index.html").write_text("hi")
    pending = prod.request(app)
    (app / "cache").mkdir()
    assert prod.resume_refused(pending) == "digest_mismatch"


def test_the_approved_tree_still_deploys(prod: Prod) -> None:
    app = prod.root / "app"
    (app / "empty").mkdir(parents=True)
    (app / "index.html").write_text("hi")
    pending = prod.request(app)
    outcome = prod.gate.resume(pending.approval_id, prod.token)
    assert outcome.status == "succeeded"
    release = prod.deployments / "production/web/releases/1.0"
    assert (release / "empty").is_dir() and (release / "index.html").read_text() == "hi"


@pytest.mark.parametrize(
    "change",
    [
        "add-empty-dir",
        "rename-file",
        "chmod-file",
        "chmod-dir",
        "move-into-subdir",
        "file-to-empty-dir",
        "append-byte",
        "split-content",
    ],
)
def test_every_change_to_a_tree_changes_its_digest(tmp_path: Path, change: str) -> None:
    root = tmp_path / "artifacts"
    app = root / "app"
    (app / "sub").mkdir(parents=True)
    (app / "a").write_bytes(b"ab")
    (app / "sub" / "b").write_bytes(b"")
    before = digest(root, app)
    if change == "add-empty-dir":
        (app / "sub" / "new").mkdir()
    elif change == "rename-file":
        (app / "a").rename(app / "c")
    elif change == "chmod-file":
        (app / "a").chmod(0o600)
    elif change == "chmod-dir":
        (app / "sub").chmod(0o700)
    elif change == "move-into-subdir":
        (app / "a").rename(app / "sub" / "a")
    elif change == "file-to-empty-dir":
        (app / "sub" / "b").unlink()
        (app / "sub" / "b").mkdir()
    elif change == "append-byte":
        (app / "sub" / "b").write_bytes(b"\0")
    elif change == "split-content":  # "ab" + "" -> "a" + "b"
        (app / "a").write_bytes(b"a")
        (app / "sub" / "b").write_bytes(b"b")
    assert digest(root, app) != before


# A tree: name -> (bytes, mode) for a file or (tree, mode) for a directory.
_names = st.sampled_from(["a", "b", "a.b", "a b", "\u00e9", "e\u0301"])  # NFC and NFD
_file_modes = st.sampled_from([0o644, 0o755, 0o600])
_dir_modes = st.sampled_from([0o755, 0o700, 0o750])
_trees = st.recursive(
    st.tuples(st.sampled_from([b"", b"x", b"a\0b", b"ab"]), _file_modes),
    lambda children: st.tuples(st.dictionaries(_names, children, max_size=3), _dir_modes),
    max_leaves=6,
)


def _write(path: Path, node: tuple[object, int]) -> None:
    content, mode = node
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.mkdir()
        assert isinstance(content, dict)
        for name, child in content.items():
            _write(path / name, child)
    path.chmod(mode)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.tuples(st.dictionaries(_names, _trees, max_size=3), _dir_modes), _trees)
def test_two_trees_share_a_digest_only_when_they_are_equal(
    first: tuple[object, int], second: tuple[object, int]
) -> None:
    """Files and directories, at the top or nested, with look-alike names (NFC vs NFD).
    The first is a directory artifact; the second a file or a directory one."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _write(root / "one", first)
        _write(root / "two", second)
        same = digest(root, root / "one") == digest(root, root / "two")
        assert same == (first == second)
