"""The approval web UI in a real headless Chromium against a real `opsgate serve`
process (the CLI on 127.0.0.1, the real deploy executor's local backend turned on by
opsgate.yaml), with a remote agent process waiting on the approval: a wrong token is
refused, a post without or with a wrong CSRF token is refused, an approver signs in,
sees the pending production deploy exactly, approves it, and the agent's deploy
completes (the release goes live). Markup in an agent's params renders as text (no
script runs, no element appears). The browser is Debian's chromium driven by
Playwright through `executable_path` (no browser download); scripts/test.sh installs
it when missing. Screenshots are saved under OPSGATE_TEST_ARTIFACTS (default
tmp/artifacts, not committed)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import DEPLOY_SCOPE, free_port, policy
from playwright.sync_api import Page, sync_playwright
from server_helpers import basic
from test_remote_agent import _wait_ready

import opsgate
from opsgate import Operation

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
JOHN = "john@company.com"
XSS = '<script>window.__xss=1</script><img src=x onerror="window.__xss=2">'


def chromium() -> str:
    path = os.environ.get("OPSGATE_TEST_CHROMIUM") or shutil.which("chromium")
    if not path:
        pytest.fail("chromium is not installed: run the suite with scripts/test.sh")
    return path


def artifacts() -> Path:
    out = Path(os.environ.get("OPSGATE_TEST_ARTIFACTS") or ROOT / "tmp" / "artifacts")
    out.mkdir(parents=True, exist_ok=True)
    return out


class Served:
    def __init__(self, url: str, approver_token: str, xss_id: str, releases: Path) -> None:
        self.url = url
        self.approver_token = approver_token
        self.xss_id = xss_id
        self.releases = releases

    def current(self, env: str) -> str | None:
        """The release `current` points at in the local backend's tree."""
        link = self.releases / env / "app-web" / "current"
        return Path(os.readlink(link)).name if link.is_symlink() else None

    def status(self, approval_id: str) -> str:
        auth = {"Authorization": basic(JOHN, self.approver_token)}
        r = httpx.get(f"{self.url}/v1/approvals/{approval_id}", headers=auth, timeout=10)
        assert r.status_code == 200, r.text
        return str(r.json()["status"])


VERSION = "2.5.0"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Served, subprocess.Popen[str]]]:
    """`opsgate serve` (the CLI, its own process) on a state dir whose opsgate.yaml
    turns on the real deploy executor (local backend), and the agent's process."""
    state = tmp_path / "state"
    releases, artifacts_dir = tmp_path / "releases", tmp_path / "artifacts"
    artifacts_dir.mkdir()
    state.mkdir()
    (state / "opsgate.yaml").write_text(
        json.dumps(
            {
                "policies": str(policy("policies.yaml")),
                "deploy": {"root": str(releases), "artifact_roots": [str(artifacts_dir)]},
            }
        )
    )
    gate = opsgate.Gate.open(state)
    sup = gate.register_agent("devops-supervisor", DEPLOY_SCOPE, "lead@company.com", 920)
    agent = sup.delegate(name="deploy-agent", capabilities=DEPLOY_SCOPE)
    approver_token = gate.approvals.add_approver(JOHN)
    # A request whose note carries markup, waiting before the browser arrives.
    old = artifacts_dir / "app-web-2.4.1.tar"
    old.write_bytes(b"release 2.4.1")
    token = gate.credential_manager.issue_credential(
        agent_id=agent.did, scope=DEPLOY_SCOPE, ttl_minutes=15
    ).token
    release = {"version": "2.4.1", "artifact": str(old)}
    assert gate.execute(token, Operation("deploy", "staging/app-web", release)).status == (
        "succeeded"
    )
    xss = gate.execute(
        token, Operation("deploy", "production/app-web", {**release, "message": XSS})
    )
    xss_id = xss.approval_id  # type: ignore[union-attr]
    key_file = tmp_path / "agent" / "deploy-agent.pem"
    key_file.parent.mkdir()
    gate.agents.export_key("deploy-agent", key_file, by="test")
    gate.close()
    artifact = artifacts_dir / f"app-web-{VERSION}.tar"
    artifact.write_bytes(b"release " + VERSION.encode())

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "opsgate.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, "OPSGATE_STATE_DIR": str(state)},
    )
    agent_proc: subprocess.Popen[str] | None = None
    try:
        _wait_ready(url, server)
        # The agent's process gets no state dir: only the URL and its key file.
        agent_env = {k: v for k, v in os.environ.items() if not k.startswith("OPSGATE_")}
        agent_proc = subprocess.Popen(
            [sys.executable, str(HERE / "ui_agent.py"), url, str(key_file), str(artifact), VERSION],
            stdout=subprocess.PIPE,
            text=True,
            env=agent_env,
            cwd=tmp_path / "agent",
        )
        yield Served(url, approver_token, xss_id, releases), agent_proc
    finally:
        for proc in (agent_proc, server):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=15)
    gate = opsgate.Gate.open(state)
    try:
        assert gate.audit.verify().ok
    finally:
        gate.close()


def line(proc: subprocess.Popen[str]) -> dict[str, Any]:
    assert proc.stdout is not None
    text = proc.stdout.readline()
    assert text, "the agent process ended early"
    return dict(json.loads(text))


def sign_in(page: Page, token: str) -> None:
    page.fill("#email", JOHN)
    page.fill("#token", token)
    page.click("#signin")


def test_approve_a_production_deploy_in_a_real_browser(
    served: tuple[Served, subprocess.Popen[str]],
) -> None:
    srv, agent = served
    assert line(agent) == {"step": "staging", "status": "succeeded"}
    waiting = line(agent)
    assert waiting["status"] == "approval_pending"
    approval_id = waiting["approval_id"]

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            context = browser.new_context()
            context.set_default_timeout(60_000)  # a loaded 2-core machine is slow, not broken
            page = context.new_page()
            console: list[str] = []
            page.on("console", lambda m: console.append(m.text))

            # The link the MCP server hands out leads to the sign-in page, then back.
            page.goto(f"{srv.url}/ui/approvals/{approval_id}")
            assert "/ui/signin" in page.url

            # A wrong token: refused, no session cookie.
            sign_in(page, "opsg_apr_not-the-token")
            assert "sign-in refused" in page.inner_text("#error")
            assert "/ui/signin" in page.url
            assert not [c for c in context.cookies() if c["name"] == "opsgate_session"]

            sign_in(page, srv.approver_token)
            page.wait_for_url(f"**/ui/approvals/{approval_id}")
            session = [c for c in context.cookies() if c["name"] == "opsgate_session"]
            assert len(session) == 1
            assert session[0]["httpOnly"] and session[0]["sameSite"] == "Strict"
            assert "opsgate_session" not in page.evaluate("document.cookie")

            # Exactly what would run.
            assert page.inner_text("#app") == "app-web"
            assert page.inner_text("#version") == VERSION
            digest = page.inner_text("#artifact-digest")
            assert digest.startswith("sha256:") and len(digest) == 7 + 64
            assert page.inner_text("#environment") == "production"
            assert page.inner_text("#requester") == "deploy-agent"
            assert "devops-supervisor" in page.inner_text("#chain")
            assert "approve-production-deployments" in page.inner_text("#rules")
            assert page.inner_text("#status") == "pending"
            assert srv.current("production") is None  # nothing ran before the approval
            # The static script ran under the CSP (it appends the time left) and the
            # stylesheet applied.
            page.wait_for_function(
                "document.querySelector('time[data-expires]').textContent.includes('(')"
            )
            header_bg = page.eval_on_selector(
                "header.top", "e => getComputedStyle(e).backgroundColor"
            )
            assert header_bg == "rgb(21, 21, 28)"

            # A post without its CSRF token, then with a wrong one: refused.
            page.eval_on_selector("#decide input[name=csrf]", "e => e.remove()")
            page.click("#approve")
            assert "csrf_invalid" in page.inner_text("#code")
            assert srv.status(approval_id) == "pending"
            page.goto(f"{srv.url}/ui/approvals/{approval_id}")
            page.eval_on_selector("#decide input[name=csrf]", "e => { e.value = 'forged' }")
            page.click("#approve")
            assert "csrf_invalid" in page.inner_text("#code")
            assert srv.status(approval_id) == "pending"

            # Approve for real.
            page.goto(f"{srv.url}/ui/approvals/{approval_id}")
            page.fill("#comment", "ship it")
            page.screenshot(path=str(artifacts() / "ui-approval-pending.png"), full_page=True)
            page.click("#approve")
            page.wait_for_url("**?decided=approve")
            assert page.inner_text("#status") == "approved"
            assert "ship it" in page.inner_text("#decisions")

            # The waiting agent resumes and its deploy completes.
            assert line(agent) == {"step": "decided", "status": "approved"}
            resumed = line(agent)
            assert resumed["step"] == "resumed" and resumed["status"] == "succeeded"
            assert agent.wait(timeout=60) == 0
            assert srv.status(approval_id) == "consumed"
            assert srv.current("production") == VERSION  # the release is live

            # Markup in an agent's params is text: no script ran, no element appeared.
            page.goto(f"{srv.url}/ui/approvals/{srv.xss_id}")
            assert XSS in page.inner_text("#params") and XSS in page.inner_text("#what")
            assert page.evaluate("window.__xss") is None
            assert page.locator("main img").count() == 0
            assert page.locator("script").count() == 1  # ui.js only
            page.screenshot(path=str(artifacts() / "ui-markup-inert.png"), full_page=True)

            # The other pages render; the trust chart is an SVG drawn by the server.
            page.goto(f"{srv.url}/ui/agents/deploy-agent")
            assert page.locator("svg.chart circle").count() >= 1
            page.goto(f"{srv.url}/ui/audit?type=approval.approved_by")
            assert "Chain verifies" in page.inner_text("#chain-status")
            assert "approval.approved_by" in page.inner_text("#events")

            # Sign out: the session is gone.
            page.click("#signout")
            page.wait_for_url("**/ui/signin")
            page.goto(f"{srv.url}/ui/approvals")
            assert "/ui/signin" in page.url
            assert not [m for m in console if "Content Security Policy" in m]
        finally:
            browser.close()
