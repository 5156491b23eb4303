"""Helpers for the web UI's HTTP tests: read a form's CSRF token, sign in."""

from __future__ import annotations

import re
from typing import Any

from fastapi.testclient import TestClient

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(html: str) -> str:
    found = _CSRF.search(html)
    assert found, "no csrf field in the page"
    return found.group(1)


def sign_in(client: TestClient, email: str, token: str, next_page: str = "/ui/approvals") -> Any:
    """Sign in through the form (taking its CSRF token as a browser would)."""
    form = client.get("/ui/signin")
    assert form.status_code == 200
    return client.post(
        "/ui/signin",
        data={"email": email, "token": token, "csrf": csrf_of(form.text), "next": next_page},
        follow_redirects=False,
    )
