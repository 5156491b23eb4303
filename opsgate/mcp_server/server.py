"""The MCP server: an LLM agent's governed tools, over stdio.

Every call takes one path: the arguments are typed (a bad one is an
`arguments_invalid` tool error, nothing sent), the tool must be among those offered
to this agent (a hidden tool called anyway is asked of the gate with `authorize`, so
the refusal is audited and charged as a violation there, and answered
`tool_not_granted`; nothing runs), then the operation goes through `Gate.execute`.
A pending approval is a result (`status: approval_pending`, the approval id, who may
approve, the page where they do, the expiry), not an error; the same call with
`approval_id` runs the approved request. A refusal is a tool error with the gate's
stable code and reason. Every call ends in one `tool.call` audit event (agent, tool,
argument digest, outcome, code). What a client says about a tool (annotations,
`_meta`) is never read: the gate decides from the operation alone.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any
from urllib.parse import quote

import anyio
import mcp.types as types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

from opsgate.errors import OperationError, OpsgateError, safe_text
from opsgate.mcp_server.backend import Backend, Pending
from opsgate.mcp_server.tools import (
    BY_NAME,
    ApprovalStatusArgs,
    Tool,
    ToolArgs,
    args_digest,
    args_withheld,
    offered_tools,
    operation_of,
    parse_args,
)
from opsgate.operations.base import Operation, Outcome
from opsgate.secrets.value import SecretValue

#: Refusals found before the gate was asked (the call's own mistake).
_INVALID = frozenset({"arguments_invalid", "tool_unknown"})

INSTRUCTIONS = (
    "opsgate governs these tools: every call is checked against this agent's grants "
    "and the gate's policy, may need a human approval, and is audited. When a result "
    "has status approval_pending, tell the user who must approve and where "
    "(approval_url); after approval call the same tool with the same arguments and "
    "approval_id. A tool error carries a stable code: do not retry a refusal unchanged."
)


def _plain(value: Any) -> Any:
    """JSON values only; a SecretValue that was not meant to be shown stays masked."""
    return json.loads(json.dumps(value, default=str))


class ToolServer:
    """The tools of one agent; `call` is synchronous (the MCP loop runs it in a thread)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.offered: tuple[Tool, ...] = offered_tools(backend.grants)
        self._offered = frozenset(t.name for t in self.offered)

    # -- listing -------------------------------------------------------------------------

    def tools(self) -> list[types.Tool]:
        return [
            types.Tool(
                name=t.name,
                description=t.description,
                inputSchema=t.schema(),
                # Hints for the client's UI only; nothing here ever reads them back.
                annotations=types.ToolAnnotations(
                    readOnlyHint=t.read_only, destructiveHint=t.destructive
                ),
            )
            for t in self.offered
        ]

    # -- calling -------------------------------------------------------------------------

    def call(self, name: str, arguments: object) -> types.CallToolResult:
        tool = BY_NAME.get(name)
        record: dict[str, Any] = {
            "surface": "mcp",
            "tool": name if tool is not None else "unknown",
            "args_digest": args_digest(tool, arguments),
        }
        withheld = args_withheld(tool, arguments)
        if withheld:
            record["args_withheld"] = withheld
        try:
            data, is_error = self._call(name, arguments, record)
        except OpsgateError as exc:
            record["outcome"] = "invalid" if exc.code in _INVALID else "refused"
            record["code"] = exc.code
            data, is_error = {"status": "refused", "code": exc.code, "message": exc.message}, True
        except Exception as exc:  # noqa: BLE001 - a bug: typed, fail closed, class name only
            code = "internal_error"
            record.update(outcome="refused", code=code)
            message = f"the tool call failed: {exc.__class__.__name__}"
            data, is_error = {"status": "refused", "code": code, "message": message}, True
        self._record(record)
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=json.dumps(data, indent=2))],
            structuredContent=data,
            isError=is_error,
        )

    def _call(
        self, name: str, arguments: object, record: dict[str, Any]
    ) -> tuple[dict[str, Any], bool]:
        tool = BY_NAME.get(name)
        if tool is None:
            raise OperationError(f"no tool named {safe_text(name)!r}", code="tool_unknown")
        args = parse_args(tool, arguments)
        if tool.name not in self._offered:
            self._refuse_hidden(tool, args, record)
        if isinstance(args, ApprovalStatusArgs):
            record["approval_id"] = args.approval_id
            data = self.backend.approval(args.approval_id)
            record["outcome"] = "succeeded"
            return {**data, "approval_url": self._approval_url(args.approval_id)}, False
        operation = operation_of(tool, args)
        record["capability"] = operation.capability
        approval_id: str | None = getattr(args, "approval_id", None)
        if approval_id is not None:
            record["approval_id"] = approval_id
        try:
            result = self.backend.execute(operation, approval_id)
        except OpsgateError as exc:
            # The approved request's id, asked again before anyone decided: still pending.
            if approval_id is None or exc.code != "approval_pending":
                raise
            return self._still_pending(tool, operation, approval_id, record), False
        if isinstance(result, Pending):
            record.update(outcome="approval_pending", approval_id=result.approval_id)
            return self._pending(tool, operation, result), False
        return self._outcome(tool, result, record)

    def _refuse_hidden(self, tool: Tool, args: ToolArgs, record: dict[str, Any]) -> None:
        """A tool this agent was not offered: the gate judges the request (audited,
        a violation charged to the agent); nothing runs, whatever it decides."""
        operation = operation_of(tool, args)
        record["capability"] = operation.capability
        try:
            verdict = self.backend.authorize(operation.capability, dict(operation.params))
            why = "; ".join(verdict.reasons) or f"the gate's decision: {verdict.effect}"
        except OpsgateError as exc:
            why = exc.message
        raise OperationError(
            f"tool {tool.name!r} is not granted to agent {safe_text(self.backend.agent_name)!r}: "
            f"{why}",
            code="tool_not_granted",
        )

    def _approval_url(self, approval_id: str) -> str | None:
        base = self.backend.base_url
        if base is None:
            return None
        return f"{base.rstrip('/')}/ui/approvals/{quote(approval_id, safe='')}"

    def _pending(self, tool: Tool, operation: Operation, pending: Pending) -> dict[str, Any]:
        return {
            "status": "approval_pending",
            "approval_id": pending.approval_id,
            "capability": operation.capability,
            "approvers": list(pending.approvers),
            "min_approvals": pending.min_approvals,
            "expires_at": pending.expires_at.isoformat(),
            "approval_url": self._approval_url(pending.approval_id),
            "next": f"once approved, call {tool.name} again with the same arguments and "
            f"approval_id {pending.approval_id!r}",
        }

    def _still_pending(
        self, tool: Tool, operation: Operation, approval_id: str, record: dict[str, Any]
    ) -> dict[str, Any]:
        from datetime import datetime

        data = self.backend.approval(approval_id)
        record["outcome"] = "approval_pending"
        pending = Pending(
            approval_id=approval_id,
            approvers=tuple(data["approvers"]),
            min_approvals=int(data["min_approvals"]),
            expires_at=datetime.fromisoformat(data["expires_at"]),
        )
        return self._pending(tool, operation, pending)

    def _outcome(
        self, tool: Tool, outcome: Outcome, record: dict[str, Any]
    ) -> tuple[dict[str, Any], bool]:
        record["outcome"] = (
            outcome.status if outcome.status in ("succeeded", "failed") else ("dry_run")
        )
        record["audit_seq"] = outcome.audit_seq
        detail = outcome.detail if isinstance(outcome.detail, dict) else {}
        if outcome.status == "dry_run":
            return {
                "status": "dry_run",
                "summary": outcome.summary,
                "plan": _plain(detail.get("plan")),
                "decision": _plain(detail.get("decision")),
            }, False
        if outcome.status == "failed":
            code = detail.get("code")
            code = (
                code
                if isinstance(code, str) and code
                else f"{outcome.failure_kind or 'operation'}_failed"
            )
            record["code"] = safe_text(code)
            return {
                "status": "failed",
                "code": safe_text(code),
                "message": outcome.summary,
                "audit_seq": outcome.audit_seq,
            }, True
        shown = dict(detail)
        value = shown.get("value")
        if tool.name == "secret_read" and isinstance(value, SecretValue):
            # The gate ran read:secrets/<path> for this agent: policy let it read it.
            shown["value"] = value.reveal()
        return {
            "status": "succeeded",
            "summary": outcome.summary,
            "detail": _plain(shown),
            "audit_seq": outcome.audit_seq,
        }, False

    def _record(self, record: dict[str, Any]) -> None:
        """The call's audit event; the operation itself is audited by the gate already,
        so a failure here is reported on stderr and the result still returned."""
        try:
            self.backend.record(record)
        except OpsgateError as exc:
            print(f"opsgate mcp: tool call not recorded [{exc.code}]", file=sys.stderr)
        except Exception as exc:  # noqa: BLE001 - never lose the result over the record
            print(
                f"opsgate mcp: tool call not recorded ({exc.__class__.__name__})", file=sys.stderr
            )


class _Withheld(logging.Handler):
    """A stdlib log record as one fixed line: its logger and level, never its text.

    The MCP SDK logs a request it cannot validate with pydantic's error, which quotes
    the input (a secret's `value` among it), and an unexpected failure with its
    exception; no scrubber can tell an arbitrary value from other text, so no message,
    argument or traceback of a record is written. opsgate's own lines go through
    structlog (scrubbed), not through here."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(
                f"opsgate mcp: {record.levelname.lower()} logged by "
                f"{safe_text(record.name)} (message withheld)\n"
            )
            sys.stderr.flush()
        except Exception:  # noqa: BLE001, S110 - never handleError: it prints the message
            pass


def withhold_log_messages() -> None:
    """Route every stdlib log record of this process (the SDK's `mcp.*` loggers, the
    root logger it also calls directly, warnings) to `_Withheld`, at WARNING and up.
    For the process that serves MCP: it replaces the process's logging handlers."""
    handler = _Withheld(logging.WARNING)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    for logger in list(logging.Logger.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger):  # not a placeholder
            for old in list(logger.handlers):
                logger.removeHandler(old)
            logger.propagate = True
    logging.lastResort = handler  # a logger that does not propagate: still withheld
    logging.raiseExceptions = False  # a handler's failure prints no record either
    logging.captureWarnings(True)


def build_server(tools: ToolServer) -> Server[Any, Any]:
    """The low-level MCP server with the two handlers this surface has."""
    server: Server[Any, Any] = Server("opsgate", instructions=INSTRUCTIONS)

    async def list_tools(_request: types.ListToolsRequest) -> types.ServerResult:
        return types.ServerResult(types.ListToolsResult(tools=tools.tools()))

    async def call_tool(request: types.CallToolRequest) -> types.ServerResult:
        name, arguments = request.params.name, request.params.arguments or {}
        result = await anyio.to_thread.run_sync(tools.call, name, arguments)
        return types.ServerResult(result)

    server.request_handlers[types.ListToolsRequest] = list_tools
    server.request_handlers[types.CallToolRequest] = call_tool
    return server


async def serve_stdio(tools: ToolServer) -> None:
    """Serve on stdin/stdout until the client closes them (log messages withheld)."""
    withhold_log_messages()
    server = build_server(tools)
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())
