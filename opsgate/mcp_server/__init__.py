"""`opsgate mcp`: the governed operations of one agent as MCP tools (stdio).

tools     the tools, their typed arguments and the operation each becomes
backend   how the gate is reached (remote SDK, or a local state dir)
server    the MCP server: listing, calling, results, the `tool.call` audit
"""

from opsgate.mcp_server.backend import Backend, LocalBackend, RemoteBackend
from opsgate.mcp_server.server import (
    ToolServer,
    build_server,
    serve_stdio,
    withhold_log_messages,
)
from opsgate.mcp_server.tools import TOOLS, offered_tools

__all__ = [
    "TOOLS",
    "Backend",
    "LocalBackend",
    "RemoteBackend",
    "ToolServer",
    "build_server",
    "offered_tools",
    "serve_stdio",
    "withhold_log_messages",
]
