"""Capability grammar and coverage: `ACTION:RESOURCE`, resource segments joined by `/`.

Resource segments are case-insensitive: parsing lower-cases them, so every
capability has one canonical spelling. A grant covers a request when the actions
are equal and the grant's segments
match a prefix of the request's at segment boundaries. `*` matches exactly one
segment, `**` (last segment only) matches one or more remaining segments. There
is no action wildcard, and a grant whose first resource segment is a wildcard
(unrestricted access) is refused wherever grants are created.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from opsgate.errors import CapabilityError, shown

_ACTION = re.compile(r"[a-z][a-z0-9_-]*\Z")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+\Z")
MAX_CAPABILITY_CHARS = 256
MAX_SEGMENTS = 32


@dataclass(frozen=True, slots=True)
class Capability:
    """A parsed capability; `segments` is the resource split on `/`."""

    action: str
    segments: tuple[str, ...]

    @property
    def resource(self) -> str:
        return "/".join(self.segments)

    @property
    def has_wildcard(self) -> bool:
        return any(s in ("*", "**") for s in self.segments)

    def __str__(self) -> str:
        return f"{self.action}:{self.resource}"


def parse(text: str) -> Capability:
    """Parse `ACTION:RESOURCE`; anything outside the grammar raises CapabilityError."""
    if type(text) is not str:  # also keeps unhashable values away from the cache
        raise CapabilityError("capability must be a string", code="capability_malformed")
    return _parse(text)


@lru_cache(maxsize=65536)
def _parse(text: str) -> Capability:
    if len(text) > MAX_CAPABILITY_CHARS:
        raise CapabilityError(
            f"capability {shown(text)} is longer than {MAX_CAPABILITY_CHARS} characters",
            code="capability_malformed",
        )
    action, sep, resource = text.partition(":")
    if not sep or not _ACTION.match(action):
        raise CapabilityError(
            f"capability {shown(text)} must be 'action:resource' with a lowercase action",
            code="capability_malformed",
        )
    segments = tuple(resource.split("/"))
    if len(segments) > MAX_SEGMENTS:
        raise CapabilityError(
            f"capability {shown(text)} has more than {MAX_SEGMENTS} segments",
            code="capability_malformed",
        )
    for i, seg in enumerate(segments):
        if seg == "**":
            if i != len(segments) - 1:
                raise CapabilityError(
                    f"capability {shown(text)}: '**' is only allowed as the last segment",
                    code="capability_malformed",
                )
        elif seg != "*" and not _SEGMENT.match(seg):
            raise CapabilityError(
                f"capability {shown(text)} has an invalid resource segment {shown(seg)}",
                code="capability_malformed",
            )
        if seg in (".", ".."):
            raise CapabilityError(
                f"capability {shown(text)} has a relative path segment",
                code="capability_malformed",
            )
    # One canonical case: `secrets/PRODUCTION/db` is `secrets/production/db` for
    # coverage, policy and trust alike (segments are ASCII, so lower() is exact).
    return Capability(action, tuple(seg.lower() for seg in segments))


def parse_grant(text: str) -> Capability:
    """Parse a capability that is about to be granted: no unrestricted resource."""
    cap = parse(text)
    if cap.segments[0] in ("*", "**"):
        raise CapabilityError(
            f"capability {shown(text)} grants unrestricted access; name the resource",
            code="capability_unrestricted",
        )
    return cap


def parse_request(text: str) -> Capability:
    """Parse a concrete capability being asked for: no wildcards at all."""
    cap = parse(text)
    if cap.has_wildcard:
        raise CapabilityError(
            f"requested capability {shown(text)} must name a concrete resource",
            code="capability_malformed",
        )
    return cap


def covers(grant: Capability, request: Capability) -> bool:
    """True when `grant` covers everything `request` asks for.

    Works for a concrete request and for a request that itself contains
    wildcards (used for delegation: a child's grant must be covered by a parent's).
    """
    if grant.action != request.action:
        return False
    g, r = grant.segments, request.segments
    for i, gs in enumerate(g):
        if i >= len(r):
            return False  # the request is broader than the grant
        if gs == "**":
            return True  # one or more further segments, whatever they are
        rs = r[i]
        if rs == "**":
            return False  # the request asks for everything below; the grant is narrower
        if gs == "*":
            continue  # one segment, wildcard or concrete
        if rs == "*" or gs != rs:
            return False
    return True  # every grant segment matched a prefix of the request


def covered_by_any(grants: Iterable[Capability], request: Capability) -> bool:
    return any(covers(g, request) for g in grants)


def parse_all(texts: Iterable[str], *, grant: bool) -> tuple[Capability, ...]:
    """Parse a list of capability strings (grant rules when `grant`); raise on the first bad one."""
    if isinstance(texts, str):
        raise CapabilityError("capabilities must be a list of strings, not one string")
    fn = parse_grant if grant else parse
    return tuple(fn(t) for t in texts)
