"""Announce approval requests and decisions: Slack-compatible webhooks and SMTP.

Notifications run on a small background pool so a slow endpoint never holds up
the gate. A failure is logged and audited; the request itself is already stored.
"""

from __future__ import annotations

import os
import smtplib
import ssl
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from email.message import EmailMessage
from typing import Any, Protocol

import httpx
import structlog

from opsgate.approvals.model import ApprovalRequest
from opsgate.config import NotificationsConfig, SmtpConfig

log = structlog.get_logger("opsgate.approvals")


class Notifier(Protocol):
    name: str

    def send(self, event: str, request: ApprovalRequest, text: str) -> None: ...


def message_text(event: str, req: ApprovalRequest) -> str:
    who = ", ".join(req.approvers)
    if event == "approval.requested":
        return (
            f"opsgate: {req.requester_name} asks to run {req.capability} - approval {req.id} "
            f"needs {req.min_approvals} of [{who}] before {req.expires.isoformat()}. "
            f"Why: {'; '.join(req.reasons)}"
        )
    if event == "approval.cancelled":
        by = next((d.approver for d in reversed(req.decisions) if d.decision == "deny"), "?")
        return (
            f"opsgate: approval {req.id} for {req.capability} by {req.requester_name} was "
            f"approved, then cancelled by {by} before it ran; it will not run"
        )
    return (
        f"opsgate: approval {req.id} for {req.capability} by {req.requester_name} is {req.status}"
    )


def _payload(event: str, req: ApprovalRequest, text: str) -> dict[str, Any]:
    return {
        "text": text,
        "event": event,
        "approval": {
            "id": req.id,
            "status": req.status,
            "capability": req.capability,
            "requester": req.requester_name,
            "approvers": list(req.approvers),
            "min_approvals": req.min_approvals,
            "digest": req.digest,
            "expires_at": req.expires.isoformat(),
        },
    }


class WebhookNotifier:
    """Posts to one webhook URL (a secret: whoever holds it can post to the channel),
    directly or through the configured proxy only, never one from the environment."""

    def __init__(self, url: str, timeout: float, proxy: str | None = None) -> None:
        self.url = url
        self.name = f"webhook {httpx.URL(url).host}"
        self._client = httpx.Client(timeout=timeout, proxy=proxy, trust_env=False)

    def send(self, event: str, request: ApprovalRequest, text: str) -> None:
        response = self._client.post(self.url, json=_payload(event, request, text))
        response.raise_for_status()


class SmtpNotifier:
    def __init__(self, cfg: SmtpConfig, timeout: float) -> None:
        self.cfg = cfg
        self.name = f"smtp {cfg.host}:{cfg.port}"
        self._timeout = timeout

    def send(self, event: str, request: ApprovalRequest, text: str) -> None:
        msg = EmailMessage()
        status = "cancelled" if event == "approval.cancelled" else request.status
        msg["Subject"] = f"[opsgate] {request.capability}: approval {status}"
        msg["From"] = self.cfg.sender
        msg["To"] = ", ".join(request.approvers)
        msg.set_content(text)
        with smtplib.SMTP(self.cfg.host, self.cfg.port, timeout=self._timeout) as smtp:
            if self.cfg.starttls:
                # smtplib's own default context checks no certificate: whoever answered
                # STARTTLS would get the password below and every announcement.
                smtp.starttls(context=ssl.create_default_context(cafile=self.cfg.ca_file))
            if self.cfg.username:
                password = os.environ.get(self.cfg.password_env or "", "")
                smtp.login(self.cfg.username, password)
            smtp.send_message(msg)


def build_notifiers(cfg: NotificationsConfig) -> list[Notifier]:
    notifiers: list[Notifier] = [
        WebhookNotifier(u, cfg.timeout_seconds, cfg.proxy) for u in cfg.webhooks
    ]
    if cfg.smtp is not None:
        notifiers.append(SmtpNotifier(cfg.smtp, cfg.timeout_seconds))
    return notifiers


class Dispatcher:
    """Sends to every notifier in the background; `on_failure` audits what failed."""

    def __init__(
        self,
        notifiers: list[Notifier],
        on_failure: Callable[[str, str, ApprovalRequest, str], None],
    ) -> None:
        self.notifiers = notifiers
        self._on_failure = on_failure
        # One sending thread per notifier: each channel gets a request's events in
        # order (requested before approved/denied), and a slow one delays no other.
        self._pools: list[ThreadPoolExecutor] = []
        self._pending: list[Future[None]] = []
        # Requests are announced from many threads (the server's workers): one set of
        # senders is started, once, and the pending list is changed by one at a time.
        self._lock = threading.Lock()

    def dispatch(self, event: str, request: ApprovalRequest) -> None:
        if not self.notifiers:
            return
        text = message_text(event, request)
        with self._lock:
            if not self._pools:
                self._pools = [
                    ThreadPoolExecutor(max_workers=1, thread_name_prefix="opsgate-notify")
                    for n in self.notifiers
                ]
            for n, pool in zip(self.notifiers, self._pools, strict=True):
                self._pending.append(pool.submit(self._send, n, event, request, text))
            self._pending = [f for f in self._pending if not f.done()]

    def _send(self, notifier: Notifier, event: str, request: ApprovalRequest, text: str) -> None:
        try:
            notifier.send(event, request, text)
        except Exception as exc:  # noqa: BLE001 - any failure is reported, never raised
            why = exc.__class__.__name__
            log.warning(
                "notification failed", notifier=notifier.name, approval=request.id, error=why
            )
            self._on_failure(notifier.name, event, request, why)

    def flush(self, timeout: float = 10.0) -> None:
        """Wait for notifications in flight (tests, the demo, shutdown)."""
        with self._lock:
            pending = list(self._pending)
        wait(pending, timeout=timeout)
        with self._lock:
            self._pending = [f for f in self._pending if not f.done()]

    def close(self) -> None:
        self.flush()
        with self._lock:
            pools, self._pools = self._pools, []
        for pool in pools:
            pool.shutdown(wait=True)
