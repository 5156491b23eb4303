"""Approval notifications against real servers: a local HTTP webhook receiver and a
real SMTP server (aiosmtpd), both on 127.0.0.1 and free ports. A notifier that fails
is audited as `notification.failed`; the request is stored and approvable regardless.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from helpers import World, audit_events, deploy, free_port, open_world
from proxy_helpers import RecordingProxy

import opsgate
from opsgate.approvals import PendingApproval

JOHN, JANE = "john@company.com", "jane@company.com"


class Webhook:
    """A real HTTP server that records every POST body (JSON) and answers `status`."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.posts: list[dict[str, Any]] = []
        self.content_types: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                owner.content_types.append(self.headers.get("Content-Type", ""))
                owner.posts.append(json.loads(body))
                self.send_response(owner.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/approvals"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> Webhook:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


class Mailbox:
    """aiosmtpd handler: keeps each delivered envelope."""

    def __init__(self) -> None:
        self.envelopes: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.envelopes.append(envelope)
        return "250 OK"


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    with Webhook() as hook:
        yield hook


@pytest.fixture
def smtp() -> Iterator[tuple[Mailbox, int]]:
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield mailbox, port
    finally:
        controller.stop()


@contextmanager
def _logging_in_smtp(**options: Any) -> Iterator[tuple[Mailbox, int, list[str]]]:
    """A real SMTP server that takes any login and keeps the passwords it was sent."""
    from aiosmtpd.smtp import AuthResult

    passwords: list[str] = []

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
        passwords.append(data.password.decode())
        return AuthResult(success=True)

    mailbox = Mailbox()
    port = free_port()
    controller = Controller(
        mailbox, hostname="127.0.0.1", port=port, authenticator=authenticator, **options
    )
    controller.start()
    try:
        yield mailbox, port, passwords
    finally:
        controller.stop()


def _request(w: World) -> PendingApproval:
    pending = w.gate.execute(w.token, deploy())
    assert isinstance(pending, PendingApproval)
    return pending


def _smtp_config(port: int) -> dict[str, Any]:
    return {"smtp": {"host": "127.0.0.1", "port": port, "sender": "opsgate@company.com"}}


def test_webhook_announces_the_request_and_its_decision(tmp_path: Path, webhook: Webhook) -> None:
    w = open_world(tmp_path / "state", notifications={"webhooks": [webhook.url]})
    try:
        pending = _request(w)
        w.gate.approvals.dispatcher.flush()
        assert len(webhook.posts) == 1
        first = webhook.posts[0]
        assert isinstance(first["text"], str)
        assert pending.approval_id in first["text"]
        assert "deploy:production/app-web" in first["text"]
        assert first["event"] == "approval.requested"
        assert first["approval"]["id"] == pending.approval_id
        assert first["approval"]["status"] == "pending"
        assert first["approval"]["approvers"] == [JANE, JOHN]
        assert first["approval"]["digest"] == pending.digest
        assert webhook.content_types[0].startswith("application/json")

        w.approve(pending.approval_id, JOHN)
        w.gate.approvals.dispatcher.flush()
        assert len(webhook.posts) == 2
        second = webhook.posts[1]
        assert second["event"] == "approval.approved"
        assert second["approval"]["id"] == pending.approval_id
        assert second["approval"]["status"] == "approved"
        assert pending.approval_id in second["text"] and "approved" in second["text"]
        # No token or secret of any kind travels in a notification.
        for post in webhook.posts:
            for token in w.approver_tokens.values():
                assert token not in json.dumps(post)
            assert w.token not in json.dumps(post)
        assert audit_events(w.gate, "notification.failed") == []
    finally:
        w.gate.close()


def test_webhooks_ignore_the_environment_proxy_and_use_only_the_configured_one(
    tmp_path: Path, webhook: Webhook, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A webhook URL is a secret (whoever holds it posts to the channel): a proxy set in
    the environment for other tools never sees it; a proxy named in the config does."""
    ambient, configured = RecordingProxy(), RecordingProxy()
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
        monkeypatch.setenv(name, ambient.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    try:
        for n, proxy in enumerate((None, configured.url)):
            notifications: dict[str, Any] = {"webhooks": [webhook.url], "proxy": proxy}
            w = open_world(tmp_path / f"state-{n}", notifications=notifications)
            try:
                _request(w)
                w.gate.approvals.dispatcher.flush()
                assert audit_events(w.gate, "notification.failed") == []
            finally:
                w.gate.close()
        assert len(webhook.posts) == 2  # both delivered
        assert ambient.seen == []
        assert [line for line, _ in configured.seen] == [f"POST {webhook.url}"]
    finally:
        ambient.stop()
        configured.stop()


def test_a_notifications_proxy_must_be_a_plain_http_url(tmp_path: Path) -> None:
    with pytest.raises(opsgate.ConfigError) as info:
        open_world(
            tmp_path / "state",
            notifications={"webhooks": ["http://127.0.0.1:9/x"], "proxy": "http://u:p@proxy:3128"},
        )
    assert info.value.code == "config_invalid" and "proxy" in info.value.message
    assert "u:p" not in info.value.message


def test_webhook_announces_a_denial(tmp_path: Path, webhook: Webhook) -> None:
    w = open_world(tmp_path / "state", notifications={"webhooks": [webhook.url]})
    try:
        pending = _request(w)
        w.deny(pending.approval_id, JANE, comment="freeze")
        w.gate.approvals.dispatcher.flush()
        assert [p["event"] for p in webhook.posts] == ["approval.requested", "approval.denied"]
        assert webhook.posts[1]["approval"]["status"] == "denied"
    finally:
        w.gate.close()


def test_webhook_announces_an_approval_cancelled_before_it_ran(
    tmp_path: Path, webhook: Webhook
) -> None:
    w = open_world(tmp_path / "state", notifications={"webhooks": [webhook.url]})
    try:
        pending = _request(w)
        w.approve(pending.approval_id, JOHN)
        w.deny(pending.approval_id, JANE, comment="wrong release")
        w.gate.approvals.dispatcher.flush()
        assert [p["event"] for p in webhook.posts] == [
            "approval.requested",
            "approval.approved",
            "approval.cancelled",
        ]
        last = webhook.posts[-1]
        assert last["approval"]["status"] == "denied"
        assert "cancelled by jane@company.com" in last["text"] and "will not run" in last["text"]
    finally:
        w.gate.close()


def test_smtp_mail_reaches_every_approver(tmp_path: Path, smtp: tuple[Mailbox, int]) -> None:
    mailbox, port = smtp
    w = open_world(tmp_path / "state", notifications=_smtp_config(port))
    try:
        pending = _request(w)
        w.gate.approvals.dispatcher.flush()
        assert len(mailbox.envelopes) == 1
        envelope = mailbox.envelopes[0]
        assert envelope.mail_from == "opsgate@company.com"
        assert sorted(envelope.rcpt_tos) == [JANE, JOHN]
        message = message_from_bytes(envelope.content)
        assert "deploy:production/app-web" in message["Subject"]
        body = message.get_payload(decode=True).decode()
        assert pending.approval_id in body

        w.approve(pending.approval_id, JANE)
        w.gate.approvals.dispatcher.flush()
        assert len(mailbox.envelopes) == 2
        decided = message_from_bytes(mailbox.envelopes[1].content)
        assert "approved" in decided["Subject"]
        assert sorted(mailbox.envelopes[1].rcpt_tos) == [JANE, JOHN]
        assert audit_events(w.gate, "notification.failed") == []
    finally:
        w.gate.close()


def test_webhook_and_smtp_together(
    tmp_path: Path, webhook: Webhook, smtp: tuple[Mailbox, int]
) -> None:
    mailbox, port = smtp
    w = open_world(
        tmp_path / "state", notifications={"webhooks": [webhook.url], **_smtp_config(port)}
    )
    try:
        _request(w)
        w.gate.approvals.dispatcher.flush()
        assert len(webhook.posts) == 1 and len(mailbox.envelopes) == 1
    finally:
        w.gate.close()


def _assert_failure_is_audited_and_request_still_works(w: World, notifier: str) -> None:
    pending = _request(w)
    w.gate.approvals.dispatcher.flush()
    failed = audit_events(w.gate, "notification.failed")
    assert len(failed) == 1
    assert failed[0]["approval"] == pending.approval_id
    assert failed[0]["event"] == "approval.requested"
    assert notifier in failed[0]["notifier"]
    # The request was stored before announcing, and stays fully usable.
    assert w.gate.approvals.get(pending.approval_id).status == "pending"
    assert w.approve(pending.approval_id, JOHN).status == "approved"
    outcome = w.gate.resume(pending.approval_id, w.token)
    assert isinstance(outcome, opsgate.Outcome) and outcome.status == "succeeded"
    w.gate.approvals.dispatcher.flush()
    assert [e["event"] for e in audit_events(w.gate, "notification.failed")] == [
        "approval.requested",
        "approval.approved",
    ]
    assert w.gate.audit.verify().ok


def test_webhook_answering_500_is_audited_and_the_request_still_works(tmp_path: Path) -> None:
    with Webhook(status=500) as hook:
        w = open_world(tmp_path / "state", notifications={"webhooks": [hook.url]})
        try:
            _assert_failure_is_audited_and_request_still_works(w, "webhook")
            assert len(hook.posts) == 2  # it was reached; it just failed
        finally:
            w.gate.close()


def test_webhook_connection_refused_is_audited_and_the_request_still_works(
    tmp_path: Path,
) -> None:
    closed = free_port()  # nothing listens here
    w = open_world(
        tmp_path / "state", notifications={"webhooks": [f"http://127.0.0.1:{closed}/hook"]}
    )
    try:
        _assert_failure_is_audited_and_request_still_works(w, "webhook")
    finally:
        w.gate.close()


def test_smtp_server_down_is_audited_and_the_request_still_works(tmp_path: Path) -> None:
    w = open_world(tmp_path / "state", notifications=_smtp_config(free_port()))
    try:
        _assert_failure_is_audited_and_request_still_works(w, "smtp")
    finally:
        w.gate.close()


def test_one_failing_notifier_does_not_stop_the_others(tmp_path: Path, webhook: Webhook) -> None:
    closed = free_port()
    w = open_world(
        tmp_path / "state",
        notifications={"webhooks": [f"http://127.0.0.1:{closed}/hook", webhook.url]},
    )
    try:
        pending = _request(w)
        w.gate.approvals.dispatcher.flush()
        assert [p["approval"]["id"] for p in webhook.posts] == [pending.approval_id]
        assert len(audit_events(w.gate, "notification.failed")) == 1
    finally:
        w.gate.close()


def test_requests_announced_at_once_share_one_sender_per_notifier(
    tmp_path: Path, webhook: Webhook, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each notifier has one sending thread, so a request's events reach it in order
    (requested before approved). Two requests announced at the same moment (two HTTP
    workers) each started their own set of senders; the second set replaced the first,
    so one request's 'approved' could overtake its 'requested' and close() left the
    first set running."""
    from opsgate.approvals import notify

    made: list[Any] = []
    real = notify.ThreadPoolExecutor

    class SlowToStart(real):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            made.append(self)
            threading.Event().wait(0.2)  # widens the window between the check and the set
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(notify, "ThreadPoolExecutor", SlowToStart)
    w = open_world(tmp_path / "state", notifications={"webhooks": [webhook.url]})
    other = w.supervisor.delegate(name="other-agent", capabilities=["deploy:production"])
    tokens = [w.token, w.credential(other, scope=["deploy:production"])]
    barrier = threading.Barrier(2)

    def ask(token: str) -> None:
        barrier.wait()
        assert isinstance(w.gate.execute(token, deploy()), PendingApproval)

    threads = [threading.Thread(target=ask, args=(t,)) for t in tokens]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    w.gate.close()
    assert len(made) == 1
    assert [p["event"] for p in webhook.posts] == ["approval.requested"] * 2


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that no public CA signed, and its key (PEM files)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "smtp-cert.pem", directory / "smtp-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def test_smtp_starttls_checks_the_servers_certificate_before_the_password_is_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whoever sits between the gate and its mail server (and answers STARTTLS with a
    certificate of its own) must get neither the SMTP password nor the announcements:
    smtplib's starttls() checks no certificate unless it is given a context."""
    import ssl

    cert_file, key_file = _self_signed(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert_file, key_file)
    monkeypatch.setenv("OPSGATE_TEST_SMTP_PASSWORD", "smtp-pass-7731")
    with _logging_in_smtp(tls_context=tls, require_starttls=True) as (mailbox, port, passwords):
        smtp = {
            "host": "127.0.0.1",
            "port": port,
            "sender": "opsgate@company.com",
            "starttls": True,
            "username": "opsgate",
            "password_env": "OPSGATE_TEST_SMTP_PASSWORD",
        }
        # A certificate no trusted CA signed: refused before the password is sent.
        w = open_world(tmp_path / "a", notifications={"smtp": smtp})
        try:
            _request(w)
            w.gate.approvals.dispatcher.flush()
            assert passwords == [] and mailbox.envelopes == []
            failed = audit_events(w.gate, "notification.failed")
            assert [f["error"] for f in failed] == ["SSLCertVerificationError"]
        finally:
            w.gate.close()
        # The operator's CA for the mail server (smtp.ca_file): delivered, logged in.
        trusted = {**smtp, "ca_file": str(cert_file)}
        w = open_world(tmp_path / "b", notifications={"smtp": trusted})
        try:
            _request(w)
            w.gate.approvals.dispatcher.flush()
            assert passwords == ["smtp-pass-7731"] and len(mailbox.envelopes) == 1
            assert audit_events(w.gate, "notification.failed") == []
        finally:
            w.gate.close()


def test_an_smtp_password_is_never_sent_over_a_connection_without_tls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A username without starttls logged in over plain SMTP: the password crossed the
    network in clear. Refused at open unless the server is on this host."""
    monkeypatch.setenv("OPSGATE_TEST_SMTP_PASSWORD", "smtp-pass-7731")
    with _logging_in_smtp(auth_require_tls=False) as (mailbox, port, passwords):
        smtp = {
            "host": "smtp.company.com",
            "port": port,
            "sender": "opsgate@company.com",
            "username": "opsgate",
            "password_env": "OPSGATE_TEST_SMTP_PASSWORD",
        }
        with pytest.raises(opsgate.ConfigError) as exc:
            opsgate.Gate.open(tmp_path / "a", notifications={"smtp": smtp})
        assert "starttls" in exc.value.message
        # A relay on this host may take the password without TLS.
        w = open_world(tmp_path / "b", notifications={"smtp": {**smtp, "host": "127.0.0.1"}})
        try:
            _request(w)
            w.gate.approvals.dispatcher.flush()
            assert passwords == ["smtp-pass-7731"] and len(mailbox.envelopes) == 1
        finally:
            w.gate.close()
