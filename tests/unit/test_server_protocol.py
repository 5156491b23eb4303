"""The server's HTTP protocol sends each response in one write (`OneWriteHttp`):
uvicorn's own writes a response's head and body separately. Checked on the
transport wrapper alone and through a real uvicorn server configured as `opsgate
serve` configures it, counting the writes that reach the socket's transport."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from helpers import open_world
from server_helpers import BASE, uvicorn_thread
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from opsgate.config import ServerConfig
from opsgate.server import create_app, protocol, uvicorn_options
from opsgate.server.protocol import HOLD_BYTES, OneWriteHttp, OneWriteTransport


class Recorder:
    """A transport that records what reaches it."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.events: list[str] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self.events.append("write")

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True
        self.events.append("close")

    def abort(self) -> None:
        self.closing = True
        self.events.append("abort")

    def write_eof(self) -> None:
        self.events.append("eof")

    def get_write_buffer_size(self) -> int:
        return 7

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1234) if name == "peername" else default


async def _turn() -> None:
    await asyncio.sleep(0)


def test_writes_of_one_turn_leave_together_at_its_end() -> None:
    async def run() -> tuple[list[bytes], list[bytes]]:
        rec = Recorder()
        t = OneWriteTransport(rec, asyncio.get_running_loop())  # type: ignore[arg-type]
        t.write(b"HTTP/1.1 200 OK\r\n\r\n")
        t.write(bytearray(b"{}"))
        during = list(rec.writes)
        await _turn()
        return during, rec.writes

    during, after = asyncio.run(run())
    assert during == []  # nothing went out mid-turn
    assert after == [b"HTTP/1.1 200 OK\r\n\r\n{}"]


def test_writes_of_different_turns_are_not_held_back() -> None:
    async def run() -> list[bytes]:
        rec = Recorder()
        t = OneWriteTransport(rec, asyncio.get_running_loop())  # type: ignore[arg-type]
        t.write(b"a")
        await _turn()
        t.write(b"b")
        await _turn()
        await _turn()
        return rec.writes

    assert asyncio.run(run()) == [b"a", b"b"]


def test_close_sends_what_is_held_first_and_abort_drops_it() -> None:
    async def run() -> tuple[Recorder, Recorder]:
        loop = asyncio.get_running_loop()
        closed, aborted = Recorder(), Recorder()
        t = OneWriteTransport(closed, loop)  # type: ignore[arg-type]
        t.write(b"head")
        t.write(b"body")
        t.close()
        u = OneWriteTransport(aborted, loop)  # type: ignore[arg-type]
        u.write(b"head")
        u.abort()
        await _turn()
        return closed, aborted

    closed, aborted = asyncio.run(run())
    assert closed.events == ["write", "close"] and closed.writes == [b"headbody"]
    assert aborted.events == ["abort"] and aborted.writes == []


def test_write_eof_sends_what_is_held_first() -> None:
    async def run() -> list[str]:
        rec = Recorder()
        t = OneWriteTransport(rec, asyncio.get_running_loop())  # type: ignore[arg-type]
        t.write(b"last")
        t.write_eof()
        await _turn()
        return rec.events

    assert asyncio.run(run()) == ["write", "eof"]


def test_a_large_write_goes_at_once_and_nothing_is_held_beyond_the_bound() -> None:
    async def run() -> tuple[list[bytes], int, list[bytes]]:
        rec = Recorder()
        t = OneWriteTransport(rec, asyncio.get_running_loop())  # type: ignore[arg-type]
        t.write(b"h")
        t.write(b"x" * HOLD_BYTES)
        mid = list(rec.writes)
        held = t.get_write_buffer_size()
        await _turn()
        return mid, held, rec.writes

    mid, held, after = asyncio.run(run())
    assert mid == [b"h" + b"x" * HOLD_BYTES]  # sent within the turn, in order
    assert held == 7  # only the transport's own buffer
    assert after == mid  # the turn's end sends nothing twice


def test_held_bytes_count_in_the_buffer_size_and_other_calls_pass_through() -> None:
    async def run() -> tuple[int, Any]:
        rec = Recorder()
        t = OneWriteTransport(rec, asyncio.get_running_loop())  # type: ignore[arg-type]
        t.write(b"12345")
        size = t.get_write_buffer_size()
        await _turn()
        return size, t.get_extra_info("peername")

    size, peer = asyncio.run(run())
    assert size == 7 + 5
    assert peer == ("127.0.0.1", 1234)


def test_nothing_is_written_to_a_transport_that_closed_meanwhile() -> None:
    async def run() -> list[bytes]:
        rec = Recorder()
        t = OneWriteTransport(rec, asyncio.get_running_loop())  # type: ignore[arg-type]
        t.write(b"late")
        rec.closing = True  # the peer went away before the turn ended
        await _turn()
        return rec.writes

    assert asyncio.run(run()) == []


# -- through a real server --------------------------------------------------------------------

COUNTS: list[int] = []  # writes that reached the socket's transport, one per write


class _Counting:
    """Counts writes reaching the real transport (under whatever the protocol adds)."""

    def __init__(self, transport: Any) -> None:
        self._t = transport

    def write(self, data: bytes) -> None:
        COUNTS.append(len(data))
        self._t.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._t, name)


class CountedOneWrite(OneWriteHttp):
    def connection_made(self, transport: Any) -> None:
        super().connection_made(_Counting(transport))


class CountedPlain(HttpToolsProtocol):
    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(_Counting(transport))


@contextmanager
def served(state_dir: Path, http: type[Any] | None) -> Iterator[int]:
    world = open_world(state_dir)
    settings = ServerConfig(external_url=BASE)
    options = uvicorn_options(settings)
    assert options["http"] is OneWriteHttp  # what `opsgate serve` runs
    if http is not None:
        options["http"] = http
    try:
        with uvicorn_thread(create_app(world.gate, settings), **options) as port:
            yield port
    finally:
        world.gate.close()


def _responses(port: int, paths: list[str]) -> list[tuple[int, bytes]]:
    """GET each path in turn on one keep-alive connection: (status, body) each."""
    out = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        f = sock.makefile("rb")
        for path in paths:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            status = int(f.readline().split()[1])
            length = 0
            while (line := f.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            out.append((status, f.read(length)))
    return out


@pytest.mark.parametrize(("http", "per_response"), [(CountedOneWrite, 1), (CountedPlain, 2)])
def test_each_response_reaches_the_socket_in_one_write(
    tmp_path: Path, http: type[Any], per_response: int
) -> None:
    COUNTS.clear()
    with served(tmp_path / "state", http) as port:
        got = _responses(port, ["/healthz", "/healthz", "/.well-known/jwks.json"])
    assert [status for status, _ in got] == [200, 200, 200]
    assert all(json.loads(body) for _, body in got)
    # uvicorn's own protocol writes head and body apart; the server's writes them as one.
    assert len(COUNTS) == 3 * per_response


def test_a_response_larger_than_the_bound_arrives_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(protocol, "HOLD_BYTES", 1024)
    COUNTS.clear()
    with served(tmp_path / "state", CountedOneWrite) as port:
        [(status, body)] = _responses(port, ["/openapi.json"])
    assert status == 200
    assert len(body) > 4 * 1024
    assert json.loads(body)["openapi"].startswith("3.")
    # Past the bound the head and the body went out at once, and nothing twice.
    assert len(COUNTS) == 1 and COUNTS[0] > len(body)
