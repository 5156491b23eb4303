"""What the UI's pages show, as plain dicts built from the gate's public API.

Kept apart from the routes so a page's content (exactly what would run, who asks,
through which chain, which rule asked) can be read and tested without HTTP.
A secret's value is never in an approval request (it travels beside the params
and is not part of `Operation.to_dict`), so nothing here can show one.
"""

from __future__ import annotations

import unicodedata
from typing import Any

import orjson

from opsgate.approvals.model import ApprovalRequest
from opsgate.errors import OpsgateError
from opsgate.gate import Gate

_EVENT_KEYS = {"type", "actor", "at", "seq", "prev_hash", "hash"}
MAX_EVENT_TEXT = 400


# Characters a reader of the page cannot see or that reorder what they see: controls,
# format characters (zero-width, bidi overrides), unassigned and private ones, line
# and paragraph separators; spaces other than the plain one are checked apart.
_UNSEEN = frozenset({"Cc", "Cf", "Cn", "Co", "Cs", "Zl", "Zp"})


# Unicode's Default_Ignorable_Code_Point ranges (drawn as nothing whatever their
# category: combining grapheme joiner, variation selectors, Hangul fillers, tags, ...)
# and the blank braille pattern, which draws as a space.
_IGNORABLE = (
    (0x00AD, 0x00AD),
    (0x034F, 0x034F),
    (0x061C, 0x061C),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x206F),
    (0x2800, 0x2800),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0),
    (0xFFF0, 0xFFF8),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
)


def _unseen(ch: str) -> bool:
    if ch in "\r\n\t":
        return False
    if unicodedata.category(ch) in _UNSEEN or (ch.isspace() and ch != " "):
        return True
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in _IGNORABLE)


def visible(text: str) -> str:
    """`text` with every character a reader cannot see written out as ⟨U+XXXX⟩ (line
    breaks and tabs kept), so 'main' with a zero-width space inside never reads as 'main'."""
    if text.isascii() and text.isprintable():
        return text
    return "".join(f"⟨U+{ord(ch):04X}⟩" if _unseen(ch) else ch for ch in text)


def _visible_all(value: Any) -> Any:
    """`visible` applied to every text of a page's values (keys included)."""
    if isinstance(value, str):
        return visible(value)
    if isinstance(value, dict):
        return {_visible_all(k): _visible_all(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_visible_all(v) for v in value)
    return value


def _visible_page(values: dict[str, Any]) -> dict[str, Any]:
    return {visible(k): _visible_all(v) for k, v in values.items()}


def compact(value: Any, limit: int | None = MAX_EVENT_TEXT) -> str:
    """JSON text for a table cell (escaped by the template, cut at `limit` unless None)."""
    text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS, default=str).decode("utf-8")
    return text if limit is None or len(text) <= limit else text[: limit - 1] + "…"


def agent_row(gate: Gate, did: str) -> dict[str, Any]:
    """Name, sponsor, status and trust of one agent (what a chain or tree shows)."""
    try:
        agent = gate.agents.get(did)
        st = gate.agents.state(did)
    except OpsgateError:
        return {
            "did": did,
            "name": "(unknown agent)",
            "sponsor": "",
            "status": "unknown",
            "trust": None,
            "effective": None,
            "capabilities": [],
            "parent": None,
        }
    return {
        "did": did,
        "name": agent.name,
        "sponsor": agent.sponsor,
        "status": st.effective_status,
        "own_status": st.status,
        "trust": agent.trust_score,
        "effective": agent.effective_trust,
        "capabilities": agent.capabilities,
        "parent": agent.parent_did,
        "chain_error": st.chain_error,
        "expires_at": None if agent.expires_at is None else agent.expires_at.timestamp(),
    }


def _deploy(req: ApprovalRequest, content: dict[str, Any], env: str | None) -> dict[str, Any]:
    parts = req.operation.get("resource", "").split("/")
    return {
        "app": content.get("app") or (parts[-1] if parts else ""),
        "version": content.get("version"),
        "artifact_digest": content.get("artifact_digest"),
        "environment": env or (parts[0] if parts else None),
        "from": content.get("from"),
        "backend": content.get("backend"),
        "command": content.get("command"),
        "secrets": content.get("secrets") or {},
        "message": content.get("message"),
        "health": content.get("health"),
    }


def _migration(content: dict[str, Any]) -> dict[str, Any]:
    files = []
    for p in content.get("pending") or []:
        statements = [
            {
                "index": s.get("index"),
                "sql": s.get("sql", ""),
                "destructive": bool(s.get("destructive")),
                "transactional": s.get("transactional", True),
                "findings": [
                    {
                        "code": f.get("code"),
                        "message": f.get("message"),
                        "destructive": bool(f.get("destructive")),
                        "severity": f.get("severity"),
                    }
                    for f in s.get("findings") or []
                ],
            }
            for s in p.get("statements") or []
        ]
        files.append(
            {
                "version": p.get("version"),
                "name": p.get("name"),
                "checksum": p.get("checksum"),
                "destructive": bool(p.get("destructive")),
                "transactional": p.get("transactional", True),
                "statements": statements,
            }
        )
    return {
        "database": content.get("database"),
        "dialect": content.get("dialect"),
        "mode": content.get("mode"),
        "target": content.get("target"),
        "files": files,
        "findings": content.get("findings") or [],
        "repair": content.get("repair") or [],
    }


def approval_view(gate: Gate, req: ApprovalRequest, who: str) -> dict[str, Any]:
    """Everything the approval page shows, and whether `who` may decide and why not."""
    plan = req.plan
    content = plan.get("content") or {}
    action = req.operation.get("action", "")
    resource = req.operation.get("resource", "")
    env = plan.get("environment")
    if action in ("deploy", "rollback"):
        kind, detail = "deploy", _deploy(req, content, env)
    elif action == "migrate":
        kind, detail = "migration", _migration(content)
    elif resource.startswith("secrets/"):
        kind, detail = "secret", {"path": resource, "backend": content.get("backend")}
    else:
        # Whole: an approver approves what the page shows, and a cut would hide the end
        # of what the digest binds (the last host of a long list).
        kind, detail = "other", {"content": compact(content, None)}
    chain_dids: list[str] = []
    try:
        chain_dids = [*gate.agents.state(req.requester_did).ancestors, req.requester_did]
    except OpsgateError:
        chain_dids = [req.requester_did]
    chain = [agent_row(gate, d) for d in chain_dids]
    mine = [d for d in req.decisions if d.approver == who]
    sponsored = next((a for a in chain if a["sponsor"] == who), None)
    why_not: str | None = None
    if who in req.sponsors:
        named = sponsored["name"] if sponsored else req.requester_name
        why_not = (
            f"you sponsor {named}, "
            + (
                "the requesting agent"
                if named == req.requester_name
                else "which delegated to the requesting agent"
            )
            + ": a sponsor cannot decide on their own agent's request"
        )
    elif req.status not in ("pending", "approved"):
        why_not = f"this request is {req.status}"
    elif any(d.decision == "deny" for d in mine):
        why_not = "you have denied this request"
    can_approve = why_not is None and req.status == "pending" and not mine
    can_deny = why_not is None
    # Everything an agent could have written is on this page: none of it may hide text.
    return _visible_page(
        {
            "id": req.id,
            "status": req.status,
            "kind": kind,
            "detail": detail,
            "action": action,
            "resource": resource,
            "capability": req.capability,
            "environment": env,
            "destructive": bool(plan.get("destructive")),
            "summary": plan.get("summary", ""),
            "steps": plan.get("steps") or [],
            "params": [
                (k, v if isinstance(v, str) else compact(v, None))
                for k, v in sorted((req.operation.get("params") or {}).items())
            ],
            "requires": plan.get("requires") or [],
            "digest": req.digest,
            "requester": chain[-1],
            "chain": chain,
            "sponsors": list(req.sponsors),
            "reasons": list(req.reasons),
            "requirements": [
                {
                    "policy": r.policy,
                    "rule": r.rule,
                    "approvers": list(r.approvers),
                    "min_approvals": r.min_approvals,
                }
                for r in req.requirements
            ],
            "approvers": list(req.approvers),
            "min_approvals": req.min_approvals,
            "created_at": req.created_at,
            "expires_at": req.expires_at,
            "decisions": [
                {"approver": d.approver, "decision": d.decision, "at": d.at, "comment": d.comment}
                for d in req.decisions
            ],
            "why_not": why_not,
            "can_approve": can_approve,
            "can_deny": can_deny,
        }
    )


def approval_row(req: ApprovalRequest) -> dict[str, Any]:
    """One line of the approvals list: what, for whom, until when."""
    content = req.plan.get("content") or {}
    return _visible_page(
        {
            "id": req.id,
            "status": req.status,
            "capability": req.capability,
            "summary": req.plan.get("summary", ""),
            "environment": req.plan.get("environment"),
            "version": content.get("version"),
            "destructive": bool(req.plan.get("destructive")),
            "requester": req.requester_name,
            "created_at": req.created_at,
            "expires_at": req.expires_at,
        }
    )


def agent_tree(gate: Gate) -> list[dict[str, Any]]:
    """Every agent as a tree of roots, each node with its children (depth-first)."""
    rows = [agent_row(gate, a.did) for a in gate.agents.list()]
    children: dict[str | None, list[dict[str, Any]]] = {}
    known = {r["did"] for r in rows}
    for r in rows:
        parent = r["parent"] if r["parent"] in known else None
        children.setdefault(parent, []).append(r)
    for r in rows:
        r["children"] = children.get(r["did"], [])
    return children.get(None, [])


def event_rows(gate: Gate, records: list[Any]) -> list[dict[str, Any]]:
    """Audit records newest first, actors named where they are agents."""
    names = {a.did: a.name for a in gate.agents.list()}
    out = []
    for r in reversed(records):
        fields = {k: v for k, v in r.event.items() if k not in _EVENT_KEYS}
        out.append(
            {
                "seq": r.seq,
                "at": r.at,
                "type": visible(r.type),
                "actor": None if r.actor is None else visible(r.actor),
                "actor_name": names.get(r.actor or ""),
                "fields": visible(compact(fields)),
            }
        )
    return out
