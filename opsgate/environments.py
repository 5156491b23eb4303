"""Environments: declared names, their aliases, which are protected (pure).

A resource names its environment in one place. Its first segment is the
environment, unless that segment is a resource namespace. After a namespace listed in
`environment_after` (`secrets`) the next segment is the environment
(`read:secrets/production/db`); after another (`database`, `monitoring`) the first
later segment naming a declared environment is, and a resource with none names no
environment (`migrate:database/orders`). Aliases (and, like every resource segment, any case)
become the canonical name before coverage, policy and trust see the capability, so
`deploy:PROD/web` with alias `prod` is `deploy:production/web` everywhere. An
environment that is not declared is refused (`environment_undeclared`): a name the
operator never declared is never silently unprotected.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from opsgate import capabilities as caps
from opsgate.cache import BoundedCache
from opsgate.config import DEFAULT_ENVIRONMENTS, Config
from opsgate.errors import CapabilityError, shown

_CACHE_MAX = 65_536


@dataclass(frozen=True, slots=True)
class Resolved:
    """A capability with its environment in canonical form, and what that environment is."""

    capability: caps.Capability
    environment: str | None  # None: the resource names no environment
    undeclared: str | None = None  # the segment in the environment's place, not declared

    def check(self) -> Resolved:
        """Self, or CapabilityError(environment_undeclared)."""
        if self.undeclared is not None:
            raise CapabilityError(
                f"capability {shown(str(self.capability))} names environment "
                f"{shown(self.undeclared)}, which is not declared",
                code="environment_undeclared",
            )
        return self


class Environments:
    """The declared environments of one gate. Thread-safe; resolutions are cached."""

    def __init__(
        self,
        names: Mapping[str, tuple[tuple[str, ...], bool]],
        namespaces: tuple[str, ...],
        environment_after: tuple[str, ...] = (),
    ) -> None:
        """`names`: canonical name -> (aliases, protected); `environment_after`: the
        namespaces whose next segment is the environment (`secrets/<env>/...`)."""
        self._canonical: dict[str, str] = {}
        for name, (aliases, _) in names.items():
            for spelling in (name, *aliases):
                self._canonical[spelling.lower()] = name
        self.names = tuple(names)
        #: Every other spelling (alias) -> its canonical name; policy must not name them.
        self.aliases = {a: n for a, n in self._canonical.items() if a != n}
        self.protected = frozenset(n for n, (_, p) in names.items() if p)
        self.namespaces = frozenset(n.lower() for n in namespaces)
        self.environment_after = frozenset(n.lower() for n in environment_after)
        self._cache: BoundedCache[caps.Capability, Resolved] = BoundedCache(_CACHE_MAX)

    @classmethod
    def from_config(cls, config: Config) -> Environments:
        return cls(
            {n: (e.aliases, e.protected) for n, e in config.environments.items()},
            config.resource_namespaces,
            config.environment_after,
        )

    def canonical_name(self, name: str) -> str | None:
        """The declared environment `name` (any case, or an alias) stands for, if any."""
        return self._canonical.get(name.lower())

    def is_protected(self, environment: str | None) -> bool:
        return environment in self.protected

    def resolve(self, cap: caps.Capability) -> Resolved:
        """The capability with its environment segment canonical; see the module doc."""
        hit = self._cache.get(cap)
        if hit is not None:
            return hit
        out = self._resolve(cap)
        self._cache.put(cap, out)
        return out

    def _resolve(self, cap: caps.Capability) -> Resolved:
        segs = cap.segments
        if segs[0] not in self.namespaces:
            return self._at(cap, 0)
        if segs[0] in self.environment_after:
            return self._at(cap, 1) if len(segs) > 1 else Resolved(cap, None)
        for i, seg in enumerate(segs[1:], start=1):
            name = self._canonical.get(seg)
            if name is not None:
                return Resolved(_renamed(cap, i, name), name)
        return Resolved(cap, None)

    def _at(self, cap: caps.Capability, i: int) -> Resolved:
        """Segment `i` is the environment: declared (made canonical) or undeclared."""
        seg = cap.segments[i]
        name = self._canonical.get(seg)
        if name is None:
            # A wildcard names no environment (`read:secrets/*/db`; a first-segment
            # wildcard was refused as unrestricted before it got here).
            return Resolved(cap, None, None if seg in ("*", "**") else seg)
        return Resolved(_renamed(cap, i, name), name)

    def undeclared_in(self, capability: str) -> str | None:
        """The undeclared name `capability` has where its environment goes, if any
        (None too for text that is not a capability): a request naming one is refused
        before policy, so a policy literal naming one can never match."""
        try:
            cap = caps.parse(capability)
        except CapabilityError:
            return None
        return self.resolve(cap).undeclared

    def environment_of(self, cap: caps.Capability) -> str | None:
        """The canonical environment of a capability, or None (none, or undeclared)."""
        return self.resolve(cap).environment


def _renamed(cap: caps.Capability, i: int, name: str) -> caps.Capability:
    """`cap` with segment `i` replaced by the canonical `name`, still within the grammar's
    length: an alias shorter than its name (`prod`) must not lengthen a capability past
    what every store and check holds (`capability_malformed`, as if written so)."""
    canon = caps.Capability(cap.action, (*cap.segments[:i], name, *cap.segments[i + 1 :]))
    if len(str(canon)) > caps.MAX_CAPABILITY_CHARS:
        raise CapabilityError(
            f"capability {shown(str(cap))} is longer than {caps.MAX_CAPABILITY_CHARS} "
            f"characters once its environment reads {shown(name)}",
            code="capability_malformed",
        )
    return canon


#: The defaults' environments (production protected), for callers without a gate.
DEFAULT = Environments.from_config(Config())

__all__ = ["DEFAULT", "DEFAULT_ENVIRONMENTS", "Environments", "Resolved"]
