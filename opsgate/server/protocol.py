"""uvicorn's HTTP protocol, with each response sent in one write.

uvicorn writes a response's head and its body with two `transport.write` calls, and
the event loop sends each at once: two system calls and, with TCP_NODELAY, two
segments per response, which the client then reads (and is woken for) twice. For
the agents' small JSON answers that is a sixth of the event loop's time and more of
the client's. Here the writes made during one turn of the event loop are held and
sent together at the end of that turn (`loop.call_soon`): the head and the body of
an answer leave in one segment, never later than the turn that produced them.

Nothing else changes: a transport closed with writes held sends them first; a held
write larger than `HOLD_BYTES` (a streamed export) is sent at once with what is
held before it, so memory stays bounded and uvicorn's flow control still sees every
byte in the transport's own buffer.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# Held at most per connection before the writes go out without waiting for the turn's end.
HOLD_BYTES = 64 * 1024


class OneWriteTransport:
    """A transport whose writes of one event-loop turn go out as one."""

    __slots__ = ("_held", "_held_bytes", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []
        self._held_bytes = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._held:
            self._loop.call_soon(self._flush)
        self._held.append(bytes(data))
        self._held_bytes += len(data)
        if self._held_bytes >= HOLD_BYTES:
            self._flush()

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def _flush(self) -> None:
        if not self._held:
            return
        held = self._held[0] if len(self._held) == 1 else b"".join(self._held)
        self._held = []
        self._held_bytes = 0
        if not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._held = []
        self._held_bytes = 0
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + self._held_bytes

    def __getattr__(self, name: str) -> Any:
        # Everything else (reading, extra info, protocol, buffer limits) is the
        # transport's own.
        return getattr(self._transport, name)


class OneWriteHttp(HttpToolsProtocol):
    """uvicorn's httptools protocol over a `OneWriteTransport`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(OneWriteTransport(transport, self.loop))  # type: ignore[arg-type]


__all__ = ["HOLD_BYTES", "OneWriteHttp", "OneWriteTransport"]
