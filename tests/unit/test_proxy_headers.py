"""The client address the refusal limits are keyed on, through a real uvicorn server
configured as `opsgate serve` configures it: X-Forwarded-For counts only from the
configured proxies. Otherwise a client chooses its own address (a fresh bucket per
request), and behind a load balancer that is not declared every agent shares the
balancer's one bucket."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import open_world
from server_helpers import BASE, uvicorn_thread

from opsgate.config import ServerConfig
from opsgate.errors import ConfigError
from opsgate.server import create_app, uvicorn_options

FORGED = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0." + "A" * 86


@contextmanager
def served(state_dir: Path, **server: Any) -> Iterator[httpx.Client]:
    world = open_world(state_dir)
    settings = ServerConfig(external_url=BASE, refusal_burst=3, refusal_rate=0.01, **server)
    app = create_app(world.gate, settings)
    try:
        with (
            uvicorn_thread(app, **uvicorn_options(settings)) as port,
            httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False) as client,
        ):
            yield client
    finally:
        world.gate.close()


def refused(client: httpx.Client, forwarded_for: str) -> int:
    r = client.post(
        "/v1/authorize",
        json={"capability": "deploy:staging"},
        headers={
            "Authorization": f"DPoP {FORGED}",
            "DPoP": "x",
            "X-Forwarded-For": forwarded_for,
        },
    )
    return r.status_code


def test_a_client_cannot_choose_its_address_by_default(tmp_path: Path) -> None:
    with served(tmp_path / "state") as client:
        codes = [refused(client, f"10.0.0.{i}") for i in range(1, 6)]
    # Five "different" clients are one peer: its three refusals, then 429.
    assert codes == [401, 401, 401, 429, 429]


def test_behind_declared_proxies_each_client_has_its_own_limit(tmp_path: Path) -> None:
    with served(tmp_path / "state", trusted_proxies=["127.0.0.0/8"]) as client:
        first = [refused(client, "10.0.0.1") for _ in range(4)]
        other = refused(client, "10.0.0.2")
        # What a client puts before the proxy's own entry changes nothing: the
        # address is the nearest hop the proxy added.
        spoofed = refused(client, "10.0.0.9, 10.0.0.1")
    assert first == [401, 401, 401, 429]
    assert other == 401  # one client's refusals never lock another out
    assert spoofed == 429


@pytest.mark.parametrize(
    "entry", ["*", "proxy.internal", "10.0.0.300", "", "0.0.0.0/0", "::/0", " 10.1.2.3/0"]
)
def test_trusted_proxies_must_be_addresses_or_networks(tmp_path: Path, entry: str) -> None:
    with pytest.raises(ValueError, match="trusted_proxies"):
        ServerConfig(external_url=BASE, trusted_proxies=[entry])


def test_a_bad_trusted_proxies_entry_is_a_config_error_at_open(tmp_path: Path) -> None:
    import opsgate

    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "opsgate.yaml").write_text("server:\n  trusted_proxies: ['*']\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        opsgate.Gate.open(state)
    assert info.value.code == "config_invalid"
    assert "trusted_proxies" in info.value.message
