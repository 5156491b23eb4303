"""What each backend does when things go wrong, and how it holds its keys.

Vault (real OpenBao): unreachable, not answering (timeout, one request, no retry),
sealed (a dev server of the test's own, sealed through the API), refusing (a token
without the policy: 403), a bad AppRole login (401); each a typed
SecretBackendError, the operation audited as failed with its code, nothing written.
AppRole and namespaces log in and work. Embedded: AES-256-GCM with the path and
version as associated data (a ciphertext moved to another row does not decrypt),
a fresh nonce per version, a wrong master key is `secret_key_mismatch` and writes
nothing, the key file is created 0600 on first use and refused when others can read it.
"""

from __future__ import annotations

import base64
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import hvac
import orjson
import pytest
from proxy_helpers import RecordingProxy
from secret_helpers import (
    OwnOpenBao,
    SecretWorld,
    free_port,
    new_kv_mount,
    open_world,
    vault_root,
    vault_secrets_config,
)
from sqlalchemy import select, update

import opsgate
from opsgate import ConfigError
from opsgate.secrets import SecretBackendError, SecretError, SecretValue
from opsgate.secrets.keys import KEY_FILE, MASTER_KEY_ENV, parse_master_key
from opsgate.secrets.sdk import SecretRead, read_secret, write_secret
from opsgate.store import schema


def _outcomes(gate: opsgate.Gate) -> list[dict[str, object]]:
    with gate.store.read() as conn:
        rows = conn.execute(
            select(schema.audit_events.c.body).where(
                schema.audit_events.c.type == "operation.outcome"
            )
        ).all()
    return [orjson.loads(r[0]) for r in rows]


@pytest.fixture
def kv(vault: tuple[str, str]) -> Iterator[tuple[hvac.Client, str]]:
    root = vault_root(vault)
    mount = new_kv_mount(root)
    yield root, mount
    root.sys.disable_secrets_engine(mount)


def _vault_world(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    vault: tuple[str, str],
    **vault_config: object,
) -> SecretWorld:
    env = f"OPSGATE_T_TOKEN_{uuid.uuid4().hex[:8].upper()}"
    monkeypatch.setenv(env, vault[1])
    mount = str(vault_config.pop("mount", "unused"))
    cfg = vault_secrets_config(vault[0], mount, env, **vault_config)
    return open_world(
        tmp_path / "state", "vault", vault=vault, monkeypatch=monkeypatch, mount=mount, secrets=cfg
    )


def _assert_refused(w: SecretWorld, err: SecretBackendError, code: str) -> None:
    assert err.code == code
    last = _outcomes(w.gate)[-1]
    assert last["outcome"] == "failed" and last["code"] == code


# -- vault: unreachable, timeout, sealed, forbidden --------------------------------------


def test_unreachable_vault_is_a_typed_error_and_audited(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, vault: tuple[str, str]
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    w = _vault_world(tmp_path, monkeypatch, (closed, vault[1]), mount="kv")
    try:
        started = time.monotonic()
        with pytest.raises(SecretBackendError) as err:
            write_secret(w.gate, w.token, "staging/db", "value-1")
        _assert_refused(w, err.value, "secret_backend_unreachable")
        with pytest.raises(SecretBackendError) as err:
            read_secret(w.gate, w.token, "staging/db")
        _assert_refused(w, err.value, "secret_backend_unreachable")
        assert time.monotonic() - started < 3  # refused at once, no retry loop
    finally:
        w.gate.close()


class SilentServer:
    """Accepts TCP connections and never answers; counts them."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.held: list[socket.socket] = []
        self.stopped = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.1)
        while not self.stopped:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            self.held.append(conn)

    def stop(self) -> None:
        self.stopped = True
        self.thread.join(2)
        for c in self.held:
            c.close()
        self.sock.close()


def test_a_vault_that_does_not_answer_times_out_once_without_retries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, vault: tuple[str, str]
) -> None:
    silent = SilentServer()
    w = _vault_world(
        tmp_path,
        monkeypatch,
        (f"http://127.0.0.1:{silent.port}", vault[1]),
        mount="kv",
        timeout_seconds=0.5,
    )
    try:
        started = time.monotonic()
        with pytest.raises(SecretBackendError) as err:
            read_secret(w.gate, w.token, "staging/db")
        elapsed = time.monotonic() - started
        _assert_refused(w, err.value, "secret_backend_timeout")
        assert 0.4 < elapsed < 2.5
        assert silent.connections == 1  # one request, not a retry storm
    finally:
        w.gate.close()
        silent.stop()


def test_a_sealed_vault_is_a_typed_error_and_nothing_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bao = OwnOpenBao(tmp_path)
    try:
        mount = new_kv_mount(bao.root)
        w = _vault_world(tmp_path, monkeypatch, (bao.addr, bao.token), mount=mount)
        try:
            write_secret(w.gate, w.token, "staging/db", "before-seal")
            bao.root.sys.seal()
            for call in (
                lambda: write_secret(w.gate, w.token, "staging/db", "while-sealed"),
                lambda: read_secret(w.gate, w.token, "staging/db"),
            ):
                with pytest.raises(SecretBackendError) as err:
                    call()
                _assert_refused(w, err.value, "secret_backend_sealed")
        finally:
            w.gate.close()
    finally:
        bao.stop()


def _token_with_policy(root: hvac.Client, name: str, hcl: str) -> str:
    root.sys.create_or_update_policy(name=name, policy=hcl)
    return str(root.auth.token.create(policies=[name], ttl="10m")["auth"]["client_token"])


def test_a_token_without_the_policy_is_forbidden_and_writes_nothing(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    vault: tuple[str, str],
    kv: tuple[hvac.Client, str],
) -> None:
    root, mount = kv
    # May read its subtree, not write it: every write is a 403.
    policy = f'path "{mount}/data/opsgate/staging/*" {{ capabilities = ["read"] }}\n'
    policy += f'path "{mount}/metadata/opsgate/staging/*" {{ capabilities = ["read"] }}\n'
    token = _token_with_policy(root, f"ro-{mount}", policy)
    root.secrets.kv.v2.create_or_update_secret(
        path="opsgate/staging/db", secret={"value": "original"}, mount_point=mount
    )
    w = _vault_world(tmp_path, monkeypatch, (vault[0], token), mount=mount)
    try:
        assert read_secret(w.gate, w.token, "staging/db").value.reveal() == "original"  # type: ignore[union-attr]
        with pytest.raises(SecretBackendError) as err:
            write_secret(w.gate, w.token, "staging/db", "not-allowed")
        _assert_refused(w, err.value, "secret_backend_forbidden")
        with pytest.raises(SecretBackendError) as err:  # outside its policy: also 403
            read_secret(w.gate, w.token, "production/db")
        assert err.value.code == "secret_backend_forbidden"
    finally:
        w.gate.close()
    current = root.secrets.kv.v2.read_secret_version(
        path="opsgate/staging/db", mount_point=mount, raise_on_deleted_version=True
    )
    assert current["data"]["data"] == {"value": "original"}
    assert current["data"]["metadata"]["version"] == 1


def test_the_prefix_confines_the_gate_to_its_subtree(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    vault: tuple[str, str],
    kv: tuple[hvac.Client, str],
) -> None:
    root, mount = kv
    root.secrets.kv.v2.create_or_update_secret(
        path="other-team/staging/db", secret={"value": "theirs"}, mount_point=mount
    )
    w = _vault_world(tmp_path, monkeypatch, vault, mount=mount, prefix="team-a/opsgate")
    try:
        write_secret(w.gate, w.token, "staging/db", "ours")
        data = root.secrets.kv.v2.read_secret_version(
            path="team-a/opsgate/staging/db", mount_point=mount, raise_on_deleted_version=True
        )
        assert data["data"]["data"] == {"value": "ours"}
        with pytest.raises(opsgate.CapabilityError) as err:  # nothing outside the prefix
            read_secret(w.gate, w.token, "../other-team/staging/db")
        assert err.value.code == "capability_malformed"
    finally:
        w.gate.close()


def test_approle_login_reads_and_writes_and_a_bad_secret_id_is_refused(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    vault: tuple[str, str],
    kv: tuple[hvac.Client, str],
) -> None:
    root, mount = kv
    auth_mount = f"approle-{uuid.uuid4().hex[:8]}"
    root.sys.enable_auth_method("approle", path=auth_mount)
    try:
        policy = (
            f'path "{mount}/data/opsgate/*" {{ capabilities = ["create", "read", "update"] }}\n'
        )
        policy += f'path "{mount}/metadata/opsgate/staging/*" {{ capabilities = ["read"] }}\n'
        root.sys.create_or_update_policy(name=f"gate-{mount}", policy=policy)
        root.auth.approle.create_or_update_approle(
            "gate", token_policies=[f"gate-{mount}"], token_ttl="10m", mount_point=auth_mount
        )
        role_id = root.auth.approle.read_role_id("gate", mount_point=auth_mount)["data"]["role_id"]
        secret_id = root.auth.approle.generate_secret_id("gate", mount_point=auth_mount)["data"][
            "secret_id"
        ]
        secret_file = tmp_path / "secret-id"
        secret_file.write_text(secret_id + "\n")
        auth = {"method": "approle", "role_id": role_id, "secret_id_file": str(secret_file)}
        cfg = vault_secrets_config(vault[0], mount, "UNUSED")
        cfg["vault"]["auth"] = {**auth, "mount": auth_mount}
        w = open_world(
            tmp_path / "state",
            "vault",
            vault=vault,
            monkeypatch=monkeypatch,
            mount=mount,
            secrets=cfg,
        )
        try:
            write_secret(w.gate, w.token, "staging/db", "via-approle")
            assert read_secret(w.gate, w.token, "staging/db").value.reveal() == "via-approle"  # type: ignore[union-attr]
            assert secret_id not in repr(w.gate.config) + repr(w.gate.secrets)
        finally:
            w.gate.close()
        secret_file.write_text("not-the-secret-id")
        w = open_world(
            tmp_path / "state2",
            "vault",
            vault=vault,
            monkeypatch=monkeypatch,
            mount=mount,
            secrets=cfg,
        )
        try:
            with pytest.raises(SecretBackendError) as err:
                read_secret(w.gate, w.token, "staging/db")
            assert err.value.code in ("secret_backend_refused", "secret_backend_unauthenticated")
        finally:
            w.gate.close()
    finally:
        root.sys.disable_auth_method(auth_mount)


def test_a_missing_token_variable_is_a_config_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, vault: tuple[str, str]
) -> None:
    cfg = vault_secrets_config(vault[0], "kv", "OPSGATE_T_NOT_SET_ANYWHERE")
    monkeypatch.delenv("OPSGATE_T_NOT_SET_ANYWHERE", raising=False)
    w = open_world(
        tmp_path / "state", "vault", vault=vault, monkeypatch=monkeypatch, mount="kv", secrets=cfg
    )
    try:
        with pytest.raises(SecretError) as err:
            read_secret(w.gate, w.token, "staging/db")
        assert err.value.code == "vault_auth_missing"
        assert "OPSGATE_T_NOT_SET_ANYWHERE" in err.value.message
    finally:
        w.gate.close()


def test_the_environment_proxy_is_ignored_and_only_the_configured_one_is_used(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    vault: tuple[str, str],
    kv: tuple[hvac.Client, str],
) -> None:
    """A proxy set in the environment for other tools never sees the gate's Vault
    token; a proxy named in the config carries every request."""
    mount = kv[1]
    ambient, configured = RecordingProxy(), RecordingProxy()

    def ambient_proxy(m: pytest.MonkeyPatch) -> None:
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
            m.setenv(name, ambient.url)
        m.delenv("NO_PROXY", raising=False)
        m.delenv("no_proxy", raising=False)

    try:
        w = _vault_world(tmp_path / "a", monkeypatch, vault, mount=mount)
        try:
            with monkeypatch.context() as m:
                ambient_proxy(m)
                write_secret(w.gate, w.token, "staging/db", "through-no-proxy")
                read = read_secret(w.gate, w.token, "staging/db")
                assert read.value.reveal() == "through-no-proxy"
        finally:
            w.gate.close()
        assert ambient.seen == []

        w = _vault_world(tmp_path / "b", monkeypatch, vault, mount=mount, proxy=configured.url)
        try:
            with monkeypatch.context() as m:
                ambient_proxy(m)
                read = read_secret(w.gate, w.token, "staging/db")
                assert read.value.reveal() == "through-no-proxy"
        finally:
            w.gate.close()
        assert ambient.seen == []
        assert any(
            line.startswith("GET ") and "/opsgate/staging/db" in line and token
            for line, token in configured.seen
        ), configured.seen
    finally:
        ambient.stop()
        configured.stop()


@pytest.mark.parametrize(
    "proxy", ["http://user:hunter2@127.0.0.1:3128", "socks5://127.0.0.1:1080", "proxy:3128"]
)
def test_a_malformed_proxy_is_a_config_error_without_its_text(tmp_path: Path, proxy: str) -> None:
    with pytest.raises(ConfigError) as err:
        opsgate.Gate.open(
            tmp_path / "s",
            secrets={
                "backend": "vault",
                "vault": {"address": "http://127.0.0.1:1", "proxy": proxy},
            },
        )
    assert "hunter2" not in str(err.value)
    assert "proxy" in str(err.value)


def test_inline_tokens_are_not_accepted_in_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        opsgate.Gate.open(
            tmp_path / "s",
            secrets={
                "backend": "vault",
                "vault": {"address": "http://127.0.0.1:1", "auth": {"token": "hvs.inline"}},
            },
        )
    assert "hvs.inline" not in str(err.value)


def test_namespace_is_sent_with_every_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bao = OwnOpenBao(tmp_path)
    try:
        bao.root.write("sys/namespaces/team-a")
        ns = hvac.Client(url=bao.addr, token=bao.token, namespace="team-a", timeout=5)
        mount = new_kv_mount(ns)
        w = _vault_world(
            tmp_path, monkeypatch, (bao.addr, bao.token), mount=mount, namespace="team-a"
        )
        try:
            write_secret(w.gate, w.token, "staging/db", "in-namespace")
            data = ns.secrets.kv.v2.read_secret_version(
                path="opsgate/staging/db", mount_point=mount, raise_on_deleted_version=True
            )
            assert data["data"]["data"] == {"value": "in-namespace"}
            with pytest.raises(hvac.exceptions.VaultError):  # not in the root namespace
                bao.root.secrets.kv.v2.read_secret_version(
                    path="opsgate/staging/db", mount_point=mount, raise_on_deleted_version=True
                )
        finally:
            w.gate.close()
    finally:
        bao.stop()


# -- embedded: sealing, keys -----------------------------------------------------------


@pytest.fixture
def embedded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SecretWorld]:
    monkeypatch.delenv(MASTER_KEY_ENV, raising=False)
    w = open_world(tmp_path / "state", "embedded", monkeypatch=monkeypatch)
    yield w
    w.gate.close()


def _rows(w: SecretWorld) -> list[object]:
    with w.gate.store.read() as conn:
        return list(conn.execute(select(schema.secret_versions)).all())


def test_the_key_file_appears_on_first_use_owner_only(embedded: SecretWorld) -> None:
    key_file = embedded.gate.state_dir / KEY_FILE
    assert not key_file.exists()  # opening a gate stores no key
    write_secret(embedded.gate, embedded.token, "staging/db", "v1")
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert len(parse_master_key(key_file.read_text())) == 32
    assert not list(key_file.parent.glob(".secrets.key.*"))  # no temporary left behind


def test_ciphertexts_use_fresh_nonces_and_hold_no_plaintext(embedded: SecretWorld) -> None:
    for _ in range(3):
        write_secret(embedded.gate, embedded.token, "staging/db", "same-value-each-time")
    rows = _rows(embedded)
    assert len({r.nonce for r in rows}) == 3 and len({r.ciphertext for r in rows}) == 3  # type: ignore[attr-defined]
    assert all(len(r.nonce) == 12 for r in rows)  # type: ignore[attr-defined]
    assert all(b"same-value" not in r.ciphertext for r in rows)  # type: ignore[attr-defined]


def test_a_ciphertext_moved_to_another_row_does_not_decrypt(embedded: SecretWorld) -> None:
    w = embedded
    write_secret(w.gate, w.token, "staging/db", "db-password")
    write_secret(w.gate, w.token, "staging/db", "db-password-2")
    write_secret(w.gate, w.token, "staging/api", "api-key")
    t = schema.secret_versions
    by = {(r.path, r.version): r for r in _rows(w)}  # type: ignore[attr-defined]
    src = by[("secrets/staging/db", 1)]
    with w.gate.store.write() as conn:  # another path, same version
        conn.execute(
            update(t)
            .where(t.c.path == "secrets/staging/api", t.c.version == 1)
            .values(nonce=src.nonce, ciphertext=src.ciphertext)
        )
        conn.execute(  # same path, another version
            update(t)
            .where(t.c.path == "secrets/staging/db", t.c.version == 2)
            .values(nonce=src.nonce, ciphertext=src.ciphertext)
        )
    for path, version in (("staging/api", 1), ("staging/db", 2)):
        with pytest.raises(SecretError) as err:
            read_secret(w.gate, w.token, path, version=version)
        assert err.value.code == "secret_corrupt"
    good = read_secret(w.gate, w.token, "staging/db", version=1)
    assert isinstance(good, SecretRead) and good.value.reveal() == "db-password"


def test_a_wrong_master_key_is_named_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MASTER_KEY_ENV, "11" * 32)
    w = open_world(tmp_path / "state", "embedded", monkeypatch=monkeypatch)
    write_secret(w.gate, w.token, "staging/db", "sealed-with-key-one")
    w.gate.close()
    monkeypatch.setenv(MASTER_KEY_ENV, base64.b64encode(b"\x22" * 32).decode())
    gate = opsgate.Gate.open(tmp_path / "state")
    token = gate.credential_manager.issue_credential(
        agent_id=w.agent.did, scope=["read:secrets", "write:secrets"]
    ).token
    try:
        for call in (
            lambda: read_secret(gate, token, "staging/db"),
            lambda: write_secret(gate, token, "staging/db", "sealed-with-key-two"),
            lambda: write_secret(gate, token, "staging/new", "sealed-with-key-two"),
        ):
            with pytest.raises(SecretError) as err:
                call()
            assert err.value.code == "secret_key_mismatch"
        with gate.store.read() as conn:
            rows = conn.execute(select(schema.secret_versions.c.path)).all()
        assert [r[0] for r in rows] == ["secrets/staging/db"]
    finally:
        gate.close()
    monkeypatch.setenv(MASTER_KEY_ENV, "11" * 32)  # the right key reads it again
    gate = opsgate.Gate.open(tmp_path / "state")
    try:
        assert read_secret(gate, token, "staging/db").value.reveal() == "sealed-with-key-one"  # type: ignore[union-attr]
    finally:
        gate.close()


@pytest.mark.parametrize(
    "bad",
    ["", "short", "zz" * 32, "11" * 31, "11" * 33, base64.b64encode(b"x" * 31).decode(), "é" * 64],
)
def test_a_malformed_master_key_is_refused_without_echoing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: str
) -> None:
    monkeypatch.setenv(MASTER_KEY_ENV, bad)
    w = open_world(tmp_path / "state", "embedded", monkeypatch=monkeypatch)
    try:
        with pytest.raises(opsgate.OpsgateError) as err:
            write_secret(w.gate, w.token, "staging/db", "v")
        assert err.value.code == "master_key_invalid"
        if bad:
            assert bad not in err.value.message and bad not in repr(err.value)
    finally:
        w.gate.close()


def test_a_key_file_others_can_read_is_refused(embedded: SecretWorld) -> None:
    key_file = embedded.gate.state_dir / KEY_FILE
    write_secret(embedded.gate, embedded.token, "staging/db", "v")
    embedded.gate.close()
    key_file.chmod(0o644)
    gate = opsgate.Gate.open(embedded.gate.state_dir)
    try:
        with pytest.raises(SecretError) as err:
            read_secret(gate, embedded.token, "staging/db")
        assert err.value.code == "master_key_insecure"
    finally:
        gate.close()
    key_file.chmod(0o600)
    os.symlink(key_file, embedded.gate.state_dir / "elsewhere.key")
    key_file.rename(embedded.gate.state_dir / "real.key")
    os.symlink(embedded.gate.state_dir / "real.key", key_file)
    gate = opsgate.Gate.open(embedded.gate.state_dir)
    try:
        with pytest.raises(SecretError) as err:  # a link is not the key file
            read_secret(gate, embedded.token, "staging/db")
        assert err.value.code == "master_key_unavailable"
    finally:
        gate.close()


def test_reprs_of_the_key_and_backends_show_no_key(embedded: SecretWorld) -> None:
    write_secret(embedded.gate, embedded.token, "staging/db", "v")
    key = embedded.gate.secrets.master_key()
    raw = parse_master_key((embedded.gate.state_dir / KEY_FILE).read_text())
    shown = " ".join(
        repr(x)
        for x in (
            key,
            embedded.gate.secrets,
            embedded.gate.secrets.backend,
            embedded.gate.secrets.binder(),
        )
    )
    for form in (
        raw.hex(),
        base64.urlsafe_b64encode(raw).decode()[:40],
        base64.b64encode(raw).decode()[:40],
    ):
        assert form not in shown
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(key)


def test_secret_value_never_shows_itself() -> None:
    import json
    import pickle

    import structlog
    from pydantic import BaseModel

    v = SecretValue("hunter2-distinct")
    assert "hunter2" not in repr(v) + str(v) + f"{v}" + f"{v!r}" + f"{v:>40}" + "{}".format(v)  # noqa: UP032
    with pytest.raises(TypeError):
        json.dumps({"v": v})
    with pytest.raises(TypeError):
        orjson.dumps({"v": v})
    with pytest.raises(TypeError):
        pickle.dumps(v)
    rendered = structlog.processors.JSONRenderer()(None, "info", {"event": "x", "v": v})
    assert "hunter2" not in rendered

    class Holder(BaseModel):
        value: SecretValue

    h = Holder(value="hunter2-distinct")  # type: ignore[arg-type]
    assert "hunter2" not in h.model_dump_json() + repr(h) + str(h.model_dump())
    assert h.value.reveal() == "hunter2-distinct"
    assert v == SecretValue("hunter2-distinct") and v != SecretValue("other")
    with pytest.raises(TypeError):
        hash(v)
