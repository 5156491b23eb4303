"""A secret value never crosses a channel it was not asked for (both backends).

One distinctive value is written, read, rotated over, listed, deleted, destroyed,
sent for approval (webhook and SMTP notifications on), approved, resumed with the
wrong value and the right one, and pushed through every failure path: denied by
policy, out of scope, approval pending, conflict, the backend down or refusing, a
wrong master key, not found, bad params, a dry run. Then the audit table, every
other table of the state database, the raw database files (and every file in the
state dir), the log output (structlog, logging, stdout/stderr), the notifications
delivered, and every exception and result the calls produced are searched for it.
Only the value a read returned to its caller holds it.
"""

from __future__ import annotations

import logging
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiosmtpd.controller import Controller
from secret_helpers import SecretWorld, free_port
from sqlalchemy import inspect, select, text
from test_notifications import Mailbox, Webhook

import opsgate
from opsgate import Operation, PendingApproval
from opsgate.secrets import SecretValue
from opsgate.secrets.keys import MASTER_KEY_ENV
from opsgate.secrets.sdk import (
    SecretRead,
    delete_secret,
    list_secrets,
    read_secret,
    resume_secret,
    rotate_secret,
    write_secret,
)
from opsgate.store import schema


class Recorder:
    """Everything the calls returned or raised, as text a leak would show up in."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.results: list[Any] = []

    def __call__(self, fn: Callable[[], Any], *, fails: bool = False) -> Any:
        try:
            result = fn()
        except opsgate.OpsgateError as exc:
            assert fails, f"unexpected {exc!r}"
            self.texts += [str(exc), repr(exc), repr(exc.detail), repr(exc.to_dict())]
            self.texts.append("".join(traceback.format_exception(exc)))
            return exc
        assert not fails, f"expected a refusal, got {result!r}"
        self.results.append(result)
        self.texts.append(repr(result))
        if isinstance(result, PendingApproval):
            self.texts.append(repr(result.request.to_dict()))
        return result


def _database_dump(gate: opsgate.Gate) -> tuple[str, str]:
    """(the audit table, every other table but the sealed secret versions) as text."""
    with gate.store.read() as conn:
        audit = "\n".join(r[0] for r in conn.execute(select(schema.audit_events.c.body)).all())
        others = []
        for table in inspect(conn).get_table_names():
            if table in ("secret_versions", "audit_events"):
                continue
            rows = conn.execute(text(f'SELECT * FROM "{table}"')).all()
            others.append(f"{table}: {rows!r}")
    return audit, "\n".join(others)


def test_the_value_never_leaks(
    world: SecretWorld,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    w = world
    value = f"LeakCanary-{uuid.uuid4().hex}-Zq9"
    wrong = f"WrongCanary-{uuid.uuid4().hex}"
    call = Recorder()
    mailbox, smtp_port = Mailbox(), free_port()
    smtp = Controller(mailbox, hostname="127.0.0.1", port=smtp_port)
    smtp.start()
    hook = Webhook().__enter__()
    caplog.set_level(logging.DEBUG)
    gates: list[opsgate.Gate] = []
    try:
        with structlog.testing.capture_logs() as logs:
            # The world's gate again, now announcing approvals by webhook and mail.
            w.gate.close()
            cfg = {
                **w.config,
                "notifications": {
                    "webhooks": [hook.url],
                    "smtp": {"host": "127.0.0.1", "port": smtp_port, "sender": "gate@company.com"},
                },
            }
            gate = opsgate.Gate.open(
                w.gate.state_dir, policies=w.gate.config.policies or None, **cfg
            )
            gate.load_policies(str(Path(__file__).resolve().parents[2] / "examples/policies.yaml"))
            gates.append(gate)
            tok = w.token

            # Every operation, succeeding.
            call(lambda: write_secret(gate, tok, "staging/app/db", value))
            read = call(lambda: read_secret(gate, tok, "staging/app/db"))
            assert isinstance(read, SecretRead) and read.value.reveal() == value
            call(lambda: read_secret(gate, tok, "staging/app/db", version=1))
            call(lambda: list_secrets(gate, tok, "staging/app"))
            call(lambda: rotate_secret(gate, tok, "staging/app/db"))
            call(lambda: write_secret(gate, tok, "staging/app/db", value))
            call(lambda: delete_secret(gate, tok, "staging/app/db"))
            call(lambda: write_secret(gate, tok, "staging/app/db", value))
            call(
                lambda: gate.execute(
                    tok,
                    Operation(
                        "write", "secrets/staging/app/db", dry_run=True, secret=SecretValue(value)
                    ),
                )
            )

            # Approval: requested (announced), approved, resumed wrong then right.
            pending = call(lambda: write_secret(gate, tok, "production/app/db", value))
            assert isinstance(pending, PendingApproval)
            gate.approvals.approve(
                pending.approval_id, approver="john@company.com", token=w.approver_token
            )
            call(lambda: resume_secret(gate, pending.approval_id, tok, value=wrong), fails=True)
            call(lambda: resume_secret(gate, pending.approval_id, tok), fails=True)
            call(lambda: resume_secret(gate, pending.approval_id, tok, value=value))
            still_pending = call(lambda: write_secret(gate, tok, "production/app/api", value))
            assert isinstance(still_pending, PendingApproval)
            gate.approvals.deny(
                still_pending.approval_id, approver="john@company.com", token=w.approver_token
            )

            # Failure paths.
            call(lambda: delete_secret(gate, tok, "production/app/db"), fails=True)  # policy deny
            narrow = gate.credential_manager.issue_credential(
                agent_id=w.agent.did, scope=["read:secrets/staging"]
            ).token
            call(lambda: write_secret(gate, narrow, "staging/app/db", value), fails=True)  # scope
            call(
                lambda: write_secret(gate, tok, "staging/app/db", value, expected_version=1),
                fails=True,
            )
            call(lambda: read_secret(gate, tok, "staging/app/missing"), fails=True)
            call(
                lambda: gate.execute(
                    tok,
                    Operation(
                        "write", "secrets/staging/x", {"value": value}, secret=SecretValue(value)
                    ),
                ),
                fails=True,
            )
            call(
                lambda: gate.execute(
                    tok,
                    Operation(
                        "write",
                        "secrets/staging/x",
                        {"expected_version": value},
                        secret=SecretValue(value),
                    ),
                ),
                fails=True,
            )
            call(
                lambda: gate.execute(
                    tok, Operation("rotate", "secrets/staging/x", {"charset": value})
                ),
                fails=True,
            )
            call(
                lambda: gate.execute(
                    tok, Operation("read", "secrets/staging/x", {"version": value})
                ),
                fails=True,
            )
            call(
                lambda: gate.execute(
                    tok, Operation("read", "secrets/staging/x", secret=SecretValue(value))
                ),
                fails=True,
            )
            call(
                lambda: gate.execute(
                    tok,
                    Operation(
                        "write", f"secrets/staging/{value}-x/../y", secret=SecretValue(value)
                    ),
                ),
                fails=True,
            )
            call(lambda: delete_secret(gate, tok, "staging/app/db", destroy=True))
            call(lambda: delete_secret(gate, tok, "staging/app/db", destroy=True), fails=True)
            gate.close()

            # The backend away or refusing, and the wrong key.
            if w.backend == "vault":
                broken = [
                    {
                        **cfg,
                        "secrets": {
                            **cfg["secrets"],
                            "vault": {
                                **cfg["secrets"]["vault"],
                                "address": f"http://127.0.0.1:{free_port()}",
                            },
                        },
                    },
                ]
                assert w.root is not None
                ro = w.root.auth.token.create(policies=["default"], ttl="5m")["auth"][
                    "client_token"
                ]
                monkeypatch.setenv("OPSGATE_T_LEAK_RO_TOKEN", ro)
                broken.append(
                    {
                        **cfg,
                        "secrets": {
                            **cfg["secrets"],
                            "vault": {
                                **cfg["secrets"]["vault"],
                                "auth": {"token_env": "OPSGATE_T_LEAK_RO_TOKEN"},
                            },
                        },
                    }
                )
            else:
                monkeypatch.setenv(MASTER_KEY_ENV, "ab" * 32)
                broken = [cfg]
            for bad in broken:
                g = opsgate.Gate.open(w.gate.state_dir, **bad)
                gates.append(g)
                t = g.credential_manager.issue_credential(
                    agent_id=w.agent.did, scope=["read:secrets", "write:secrets"]
                ).token
                call(lambda g=g, t=t: write_secret(g, t, "staging/app/db", value), fails=True)
                call(lambda g=g, t=t: read_secret(g, t, "staging/app/db2"), fails=True)
                g.close()
            monkeypatch.delenv(MASTER_KEY_ENV, raising=False)
            opsgate.Gate.open(w.gate.state_dir).close()  # ... and the dispatcher drained
    finally:
        for g in gates:
            g.close()
        hook.__exit__(None, None, None)
        smtp.stop()

    out = capsys.readouterr()
    channels: dict[str, str] = {
        "log output": repr(logs) + caplog.text + out.out + out.err,
        "notifications": repr(hook.posts)
        + "".join(e.content.decode("utf-8", "replace") for e in mailbox.envelopes),
        "results and errors": "\n".join(call.texts),
    }
    assert hook.posts and mailbox.envelopes  # the approvals were announced
    assert len([t for t in call.texts if "secret_backend_" in t or "secret_key_mismatch" in t]) >= 2
    check = opsgate.Gate.open(w.gate.state_dir, **w.config)
    try:
        channels["audit table"], channels["other tables"] = _database_dump(check)
    finally:
        check.close()
    state = Path(w.gate.state_dir)
    channels["state dir files (raw bytes)"] = "".join(
        f.read_bytes().decode("latin-1") for f in sorted(state.rglob("*")) if f.is_file()
    )
    for name, content in channels.items():
        assert content, name
        assert value not in content, f"the value leaked into {name}"
        assert wrong not in content, f"the wrong value leaked into {name}"
    # The audit did see every operation (so the search above searched something).
    for needle in (
        "write:secrets/staging/app/db",
        "secret_conflict",
        "params_invalid",
        "operation.denied",
        "approval.requested",
        "digest_mismatch",
    ):
        assert needle in channels["audit table"], needle
