"""What every opsgate agent is made of: a port to the gate, its own credential, steps.

An agent reaches the gate through a `GatePort`: `execute`, `resume` and
`wait_for_approval`. The in-process `opsgate.Gate` and the remote
`opsgate.client.RemoteGate` both have exactly these calls, so the same agent code
runs beside the gate (the demo, tests) or in its own process holding only its key.
Its credential is a `RenewingCredential` (`CredentialHandle` in process,
`RemoteCredential` remotely): short-lived and replaced before a third of its life is
left, so an agent never holds a token for long and never asks for one by hand.

Each thing an agent does is a step, reported as a `StepEvent` (structured: the
task, the agent, the step's name and status, a message, data) to whoever listens.
A pending approval is a step that waits, with a timeout; a refusal is a step that
was refused, with the gate's error code. Neither is an exception to the caller.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol, runtime_checkable

from opsgate.errors import OpsgateError
from opsgate.operations.base import Operation, Outcome

StepStatus = Literal[
    "done",  # the step finished as it should
    "started",  # a long step began (its `done` or `failed` follows)
    "requested",  # an approval was requested
    "waiting",  # waiting for a human (with a timeout)
    "approved",  # the humans said yes
    "denied",  # the humans said no (or the request expired)
    "timeout",  # nobody decided within the wait: the request stays pending
    "refused",  # the gate refused the request (code in data)
    "failed",  # the operation ran and failed (e.g. a health check; restored)
    "skipped",  # not run because an earlier step did not finish
]
TaskStatus = Literal["succeeded", "failed", "refused", "denied", "pending"]


# -- the gate, as an agent sees it --------------------------------------------------------


@runtime_checkable
class PendingLike(Protocol):
    """What `execute` returns while a human must approve (both gates' kinds)."""

    @property
    def approval_id(self) -> str: ...

    @property
    def approvers(self) -> tuple[str, ...]: ...


class ApprovalStatusLike(Protocol):
    """An approval request's state as `wait_for_approval` returns it."""

    @property
    def status(self) -> str: ...

    @property
    def decisions(self) -> Any: ...


class GatePort(Protocol):
    """The calls an agent makes; `opsgate.Gate` and `opsgate.client.RemoteGate` have them."""

    def execute(
        self, token: str, operation: Operation, *, approval_id: str | None = None
    ) -> Outcome | Any: ...

    def resume(self, approval_id: str, token: str) -> Outcome | Any: ...

    def wait_for_approval(self, approval_id: str, timeout: float = 60.0) -> Any: ...


class RenewingCredential(Protocol):
    """A self-renewing credential: `token` is always one with life left."""

    @property
    def token(self) -> str: ...

    @property
    def jti(self) -> str: ...

    @property
    def issued_at(self) -> datetime: ...

    @property
    def expires_at(self) -> datetime: ...

    @property
    def renewals(self) -> int: ...


class ProvingGate:
    """An in-process gate seen through one agent's credential handle: every request
    carries a proof of possession signed with the agent's own key (for a gate with
    `require_proof`). Satisfies GatePort."""

    def __init__(self, gate: Any, handle: Any) -> None:
        self._gate = gate
        self._handle = handle

    def execute(self, token: str, operation: Operation, *, approval_id: str | None = None) -> Any:
        proof = self._handle.proof(operation, approval_id=approval_id)
        return self._gate.execute(token, operation, approval_id=approval_id, proof=proof)

    def resume(self, approval_id: str, token: str, **extra: Any) -> Any:
        proof = self._handle.resume_proof(approval_id)
        return self._gate.resume(approval_id, token, proof=proof, **extra)

    def wait_for_approval(self, approval_id: str, timeout: float = 60.0) -> Any:
        return self._gate.wait_for_approval(approval_id, timeout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._gate, name)


# -- steps -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StepEvent:
    """One reported step of a task: plain data, JSON-ready (`to_dict`)."""

    seq: int
    task: str
    agent: str
    step: str
    status: StepStatus
    message: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "task": self.task,
            "agent": self.agent,
            "step": self.step,
            "status": self.status,
            "message": self.message,
            "data": self.data,
        }


StepListener = Callable[[StepEvent], None]


class StepLog:
    """Numbers events, keeps them, and passes each to the listeners in order.

    A listener that raises is the caller's own bug: it propagates (the demo wants
    to know), but the event is kept first.
    """

    def __init__(self, listeners: Iterable[StepListener] = ()) -> None:
        self.events: list[StepEvent] = []
        self._listeners = list(listeners)
        self._seq = itertools.count(1)
        self._lock = threading.Lock()

    def listen(self, listener: StepListener) -> None:
        self._listeners.append(listener)

    def emit(
        self,
        task: str,
        agent: str,
        step: str,
        status: StepStatus,
        message: str,
        **data: Any,
    ) -> StepEvent:
        with self._lock:
            event = StepEvent(next(self._seq), task, agent, step, status, message, dict(data))
            self.events.append(event)
        for listener in list(self._listeners):
            listener(event)
        return event


@dataclass(frozen=True, slots=True)
class TaskResult:
    """How a task ended, its steps, and what it produced (outcomes' details)."""

    task: str
    agent: str
    status: TaskStatus
    steps: tuple[StepEvent, ...]
    result: dict[str, Any] = field(default_factory=dict)
    approval_id: str | None = None  # a request left pending (status "pending")

    @property
    def ok(self) -> bool:
        return self.status == "succeeded"

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "agent": self.agent,
            "status": self.status,
            "approval_id": self.approval_id,
            "result": self.result,
            "steps": [s.to_dict() for s in self.steps],
        }


# -- one agent ---------------------------------------------------------------------------


def _decided_by(status: Any) -> list[str]:
    """Who approved, from either gate's approval status (objects or dicts)."""
    out = []
    for d in getattr(status, "decisions", ()) or ():
        approver = d.get("approver") if isinstance(d, dict) else getattr(d, "approver", None)
        decision = d.get("decision") if isinstance(d, dict) else getattr(d, "decision", None)
        if decision == "approve" and isinstance(approver, str):
            out.append(approver)
    return out


class StepRefused(Exception):
    """Internal: a step was refused or did not finish; the task ends with `status`."""

    def __init__(self, status: TaskStatus, approval_id: str | None = None) -> None:
        super().__init__(status)
        self.status: TaskStatus = status
        self.approval_id = approval_id


class GateAgent:
    """An agent that calls only the gate, with its own credential, reporting steps.

    `name` is the agent's registered name; `gate` any GatePort; `credential` its
    self-renewing credential. `approval_timeout` bounds each wait for a human.
    """

    def __init__(
        self,
        name: str,
        gate: GatePort,
        credential: RenewingCredential,
        *,
        log: StepLog | None = None,
        approval_timeout: float = 60.0,
    ) -> None:
        self.name = name
        self.gate = gate
        self.credential = credential
        self.log = log or StepLog()
        self.approval_timeout = approval_timeout

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    # -- reporting ------------------------------------------------------------------------

    def step(self, task: str, step: str, status: StepStatus, message: str, **data: Any) -> None:
        self.log.emit(task, self.name, step, status, message, **data)

    def credential_step(self, task: str) -> None:
        """Report the credential the task runs on (its id and lifetime, never the token)."""
        c = self.credential
        ttl = round((c.expires_at - c.issued_at).total_seconds() / 60)
        self.step(
            task,
            "credential",
            "done",
            f"credentials issued (TTL {ttl} min)",
            jti=c.jti,
            ttl_minutes=ttl,
            expires_at=c.expires_at.isoformat(),
            renewals=c.renewals,
        )

    # -- calling the gate ---------------------------------------------------------------------

    def _execute(self, operation: Operation, approval_id: str | None = None) -> Any:
        return self.gate.execute(self.credential.token, operation, approval_id=approval_id)

    def _resume(self, approval_id: str, operation: Operation) -> Any:
        if operation.secret is not None:
            # A secret write's value is never stored with its request: the operation
            # is sent again with the approval (in-process and over HTTP alike), and
            # only the value the approval's digest binds is written.
            return self._execute(operation, approval_id)
        return self.gate.resume(approval_id, self.credential.token)

    def run_operation(
        self,
        task: str,
        step: str,
        operation: Operation,
        *,
        on_waiting: Callable[[str], None] | None = None,
        wait: float | None = None,
        fail_ok: bool = False,
    ) -> Outcome:
        """Execute `operation` as step `step`; a pending approval becomes the steps
        `approval` (requested, waiting, approved | denied | timeout) and, once
        approved, the operation resumes. Raises StepRefused when the task cannot go
        on; a failed outcome is returned instead with `fail_ok` (the step says failed).
        """
        try:
            result = self._execute(operation)
        except OpsgateError as exc:
            self.step(
                task, step, "refused", f"refused: {exc.code}", code=exc.code, reason=exc.message
            )
            raise StepRefused("refused") from None
        if isinstance(result, PendingLike) and not isinstance(result, Outcome):
            result = self._await_approval(
                task, step, result, operation, on_waiting=on_waiting, wait=wait
            )
        outcome: Outcome = result
        if outcome.status == "failed":
            self.step(
                task,
                step,
                "failed",
                outcome.summary,
                code=outcome.detail.get("code"),
                detail=_public(outcome.detail),
            )
            if fail_ok:
                return outcome
            raise StepRefused("failed")
        self.step(task, step, "done", outcome.summary, detail=_public(outcome.detail))
        return outcome

    def _await_approval(
        self,
        task: str,
        step: str,
        pending: Any,
        operation: Operation,
        *,
        on_waiting: Callable[[str], None] | None,
        wait: float | None,
    ) -> Outcome:
        approval_id = pending.approval_id
        approvers = list(pending.approvers)
        self.step(
            task,
            "approval",
            "requested",
            f"approval requested from {', '.join(approvers)}",
            approval_id=approval_id,
            approvers=approvers,
            operation=step,
        )
        timeout = self.approval_timeout if wait is None else wait
        self.step(
            task,
            "approval",
            "waiting",
            f"waiting for approval (up to {timeout:g}s)",
            approval_id=approval_id,
            timeout_seconds=timeout,
        )
        if on_waiting is not None:
            on_waiting(approval_id)
        decided = self.gate.wait_for_approval(approval_id, timeout)
        status = getattr(decided, "status", "pending")
        if status == "pending":
            self.step(
                task,
                "approval",
                "timeout",
                f"no decision within {timeout:g}s: the request stays pending",
                approval_id=approval_id,
            )
            raise StepRefused("pending", approval_id)
        if status != "approved":
            self.step(task, "approval", "denied", f"approval {status}", approval_id=approval_id)
            raise StepRefused("denied", approval_id)
        by = _decided_by(decided)
        self.step(
            task,
            "approval",
            "approved",
            f"approved by {', '.join(by) or 'the approvers'}",
            approval_id=approval_id,
            approved_by=by,
        )
        try:
            result = self._resume(approval_id, operation)
        except OpsgateError as exc:
            self.step(
                task, step, "refused", f"refused: {exc.code}", code=exc.code, reason=exc.message
            )
            raise StepRefused("refused", approval_id) from None
        if not isinstance(result, Outcome):  # approved, yet asks again (policy changed)
            self.step(task, step, "refused", "still needs approval after the decision")
            raise StepRefused("pending", getattr(result, "approval_id", approval_id))
        return result

    def attempt(self, task: str, step: str, operation: Operation) -> TaskResult:
        """One operation as a whole task (no approval wait): refused is a result."""
        start = len(self.log.events)
        try:
            outcome = self.run_operation(task, step, operation, wait=0.0)
        except StepRefused as stop:
            return self._result(task, stop.status, start, approval_id=stop.approval_id)
        return self._result(task, "succeeded", start, result=_public(outcome.detail))

    def _result(
        self,
        task: str,
        status: TaskStatus,
        start: int,
        *,
        result: dict[str, Any] | None = None,
        approval_id: str | None = None,
    ) -> TaskResult:
        """The task's outcome with the steps this agent reported since `start`."""
        steps = tuple(e for e in self.log.events[start:] if e.task == task and e.agent == self.name)
        return TaskResult(task, self.name, status, steps, result or {}, approval_id)


def _public(detail: dict[str, Any]) -> dict[str, Any]:
    """An outcome's detail minus anything secret (a read's value): steps are printed."""
    return {k: v for k, v in detail.items() if k != "value"}


__all__ = [
    "ApprovalStatusLike",
    "GateAgent",
    "GatePort",
    "PendingLike",
    "ProvingGate",
    "RenewingCredential",
    "StepEvent",
    "StepListener",
    "StepLog",
    "StepRefused",
    "TaskResult",
]
