"""`opsgate mcp`: serve one agent's governed operations as MCP tools over stdio.

The process an MCP client (an IDE, an agent framework) spawns. With `--gate URL
--key PATH` it is the agent over the remote SDK, holding only the agent's key; with
a state dir instead (`--state-dir`, OPSGATE_STATE_DIR or .opsgate) it opens a local
single-user gate and acts as the agent as `opsgate deploy` does. stdout carries the
protocol only: every message of its own goes to stderr, and a stdlib log record
(the MCP SDK's) is only its logger and level there, its text withheld.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from opsgate.cli_common import StateDir, _ctx_state_dir, app, handle_errors, operator_actor
from opsgate.errors import ConfigError


@app.command("mcp")
@handle_errors
def mcp(
    agent: Annotated[
        str,
        typer.Option("--agent", help="The agent whose operations are served (name or did)."),
    ],
    gate_url: Annotated[
        str | None,
        typer.Option(
            "--gate",
            help="The gate's URL (opsgate serve); needs --key. Without it, a local state dir.",
            show_default=False,
        ),
    ] = None,
    key: Annotated[
        Path | None,
        typer.Option(
            "--key",
            help="The agent's private key file (from opsgate agents export-key).",
            show_default=False,
        ),
    ] = None,
    state_dir: StateDir = None,
) -> None:
    """Serve the agent's governed operations as MCP tools on stdin/stdout."""
    import anyio

    from opsgate.mcp_server import (
        LocalBackend,
        RemoteBackend,
        ToolServer,
        serve_stdio,
        withhold_log_messages,
    )
    from opsgate.mcp_server.backend import Backend

    # Before anything logs: a stdlib log line (the MCP SDK's, a library's) is one
    # fixed line naming its logger, never its text, which may quote a request.
    withhold_log_messages()
    backend: Backend
    if gate_url is not None:
        if key is None:
            raise ConfigError("--gate needs --key: the agent's own key file", code="key_missing")
        backend = RemoteBackend(gate_url, key, agent)
    else:
        if key is not None:
            raise ConfigError(
                "--key goes with --gate; a local state dir holds the agent's key itself",
                code="config_invalid",
            )
        where = state_dir if state_dir is not None else _ctx_state_dir["value"]
        backend = LocalBackend.open(where, agent, operator=operator_actor())
    try:
        tools = ToolServer(backend)
        typer.echo(
            f"opsgate mcp: serving {len(tools.offered)} tool(s) as agent "
            f"{backend.agent_name} on stdio",
            err=True,
        )
        anyio.run(serve_stdio, tools)
    finally:
        backend.close()
