"""Policy YAML -> PolicySet: parse, validate everything, report every problem at once.

Loading never stops at the first problem: `policy validate` lists them all, each
located by file, policy, rule and (for conditions) column. Nothing half-loaded is
ever returned; a file with any problem raises one PolicyError carrying them all.

Groups: keys are group names (an ascii email or a plain lowercase name); a rule's
approver that equals a group name after lower-casing (and nothing else) expands
to the members. Nested groups are not supported: a member that names a group is a
load error, which keeps "who can approve" readable in one place.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from opsgate.config import Limits
from opsgate.decision import APPROVAL_EXPIRY_SECONDS, EFFECTS, as_effect
from opsgate.errors import PolicyError
from opsgate.policy.condition import (
    ConditionError,
    DeclaredEnvironments,
    compile_condition_checked,
)
from opsgate.policy.engine import Policy, PolicySet, Rule
from opsgate.policy.problems import Problem, quote, raise_problems

PathLike = str | os.PathLike[str]

MAX_EXPIRES_SECONDS = 7 * 24 * 3600
POLICY_SUFFIXES = (".yaml", ".yml")

_TOP_KEYS = frozenset({"policies", "groups"})
_POLICY_KEYS = frozenset({"name", "description", "rules"})
_RULE_KEYS = frozenset(
    {"condition", "action", "approvers", "min_approvals", "expires_in", "description"}
)
_APPROVAL_ONLY = ("approvers", "min_approvals", "expires_in")

_POLICY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", re.ASCII)
_EMAIL = re.compile(
    r"[a-z0-9._%+-]{1,64}@[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+",
    re.ASCII,
)
_PLAIN_GROUP = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}", re.ASCII)
_DURATION = re.compile(r"(?:(\d{1,4})d)?(?:(\d{1,6})h)?(?:(\d{1,7})m)?(?:(\d{1,9})s)?", re.ASCII)


def is_email(text: str) -> bool:
    """A plain ascii email, already lower-case; nothing that merely looks like one."""
    return text.isascii() and len(text) <= 254 and _EMAIL.fullmatch(text) is not None


def parse_duration(value: object) -> int:
    """'30m', '1h', '2h30m', '1d', '45s' or integer seconds -> seconds; ValueError otherwise."""
    if type(value) is int:
        seconds = value
    elif type(value) is str and value.isascii() and value.isdigit() and len(value) <= 9:
        seconds = int(value)
    elif type(value) is str and value and (m := _DURATION.fullmatch(value)) and any(m.groups()):
        d, h, mi, s = (int(g) if g else 0 for g in m.groups())
        seconds = ((d * 24 + h) * 60 + mi) * 60 + s
    else:
        raise ValueError(
            f"invalid duration {quote(str(value))}; use e.g. 30m, 1h, 2h30m, 1d or seconds"
        )
    if seconds <= 0:
        raise ValueError("duration must be greater than zero")
    if seconds > MAX_EXPIRES_SECONDS:
        raise ValueError(f"duration must be at most 7d ({MAX_EXPIRES_SECONDS} seconds)")
    return seconds


_BaseLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _StrictLoader(_BaseLoader):  # type: ignore[valid-type,misc]  # C loader if built, at run time
    """SafeLoader that refuses duplicate keys (a second `action:` must not win silently)
    and aliases (a kilobyte of nested `*refs` expands to gigabytes)."""


def _strict_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    out: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "mapping keys must be scalars", key_node.start_mark
            ) from None
        if key in out:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {quote(str(key))}", key_node.start_mark
            )
        out[key] = loader.construct_object(value_node, deep=True)
    return out


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _strict_mapping)


def load_yaml(text: str, source: str) -> tuple[Any, Problem | None]:
    """Safe-load one YAML document; a syntax problem comes back located by line/column."""
    try:
        for event in yaml.parse(text, Loader=_StrictLoader):
            if isinstance(event, yaml.AliasEvent):  # refused before anything expands
                mark = event.start_mark  # set by the parser; the event type allows None
                return None, Problem(
                    source,
                    None,
                    None,
                    None if mark is None else mark.column + 1,
                    "invalid yaml: aliases (*name) are not allowed in policy files",
                    "policy_syntax",
                    line=None if mark is None else mark.line + 1,
                )
        return yaml.load(text, Loader=_StrictLoader), None  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        what = getattr(exc, "problem", None) or type(exc).__name__
        message = f"invalid yaml: {' '.join(str(what).split())}"
        line = mark.line + 1 if mark is not None else None
        column = mark.column + 1 if mark is not None else None
        return None, Problem(source, None, None, column, message, "policy_syntax", line=line)
    except (ValueError, OverflowError) as exc:  # e.g. an impossible date or a huge int
        message = f"invalid yaml value: {' '.join(str(exc).split())[:120]}"
        return None, Problem(source, None, None, None, message, "policy_syntax")
    except RecursionError:
        return None, Problem(
            source, None, None, None, "yaml is nested too deeply", "policy_too_large"
        )


@dataclass
class _PendingRule:
    source: str
    policy: str
    index: int
    data: Mapping[Any, Any]


@dataclass
class _PendingPolicy:
    source: str
    name: str
    description: str
    rules: list[_PendingRule]


class _Loader:
    def __init__(
        self,
        limits: Limits,
        aliases: Mapping[str, str] | None = None,
        environments: DeclaredEnvironments | None = None,
    ) -> None:
        self.limits = limits
        self.aliases = aliases
        self.environments = environments
        self.problems: list[Problem] = []
        self.sources: list[str] = []
        self.policies: list[_PendingPolicy] = []
        self.policy_files: dict[str, str] = {}
        self.read: list[tuple[str, str]] = []  # (file name, SHA-256 of its bytes), in order
        self.raw_groups: list[tuple[str, Any]] = []
        self.groups: dict[str, tuple[str, ...]] = {}

    def problem(
        self,
        source: str,
        message: str,
        *,
        policy: str | None = None,
        rule: int | None = None,
        column: int | None = None,
        code: str = "policy_invalid",
        description: str | None = None,
    ) -> None:
        self.problems.append(Problem(source, policy, rule, column, message, code, description))

    # -- input

    def add_path(self, path: Path) -> None:
        source = str(path)
        limit = self.limits.max_policy_file_bytes
        try:
            with path.open("rb") as fh:
                raw = fh.read(limit + 1)
        except OSError as exc:
            self.problem(source, f"cannot read file: {exc.strerror or type(exc).__name__}")
            return
        if len(raw) > limit:
            self.problem(source, f"file is larger than {limit} bytes", code="policy_too_large")
            return
        # The bytes compiled are the bytes digested: a file replaced meanwhile cannot
        # make a replica announce one policy and enforce another.
        self.read.append((path.name, hashlib.sha256(raw).hexdigest()))
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            self.problem(source, "file is not valid utf-8")
            return
        self.add_text(text, source)

    def add_text(self, text: str, source: str) -> None:
        self.sources.append(source)
        limit = self.limits.max_policy_file_bytes
        if len(text.encode("utf-8", "surrogatepass")) > limit:
            self.problem(source, f"file is larger than {limit} bytes", code="policy_too_large")
            return
        data, syntax = load_yaml(text, source)
        if syntax is not None:
            self.problems.append(syntax)
            return
        self.document(data, source)

    # -- structure

    def unknown_keys(
        self, data: Mapping[Any, Any], allowed: frozenset[str], source: str, where: str, **at: Any
    ) -> None:
        for key in data:
            if key not in allowed:
                shown = quote(str(key))
                expected = ", ".join(sorted(allowed))
                self.problem(source, f"unknown key {shown} in {where} (expected {expected})", **at)

    def document(self, data: Any, source: str) -> None:
        if data is None:
            self.problem(source, "file is empty")
            return
        if not isinstance(data, dict):
            self.problem(source, "top level must be a mapping with 'policies' and/or 'groups'")
            return
        self.unknown_keys(data, _TOP_KEYS, source, "the top level")
        if "groups" in data:
            self.raw_groups.append((source, data["groups"]))
        policies = data.get("policies", [])
        if policies is None:
            policies = []
        if not isinstance(policies, list):
            self.problem(source, "'policies' must be a list")
            return
        for i, entry in enumerate(policies):
            self.policy(entry, i, source)

    def policy(self, data: Any, position: int, source: str) -> None:
        if not isinstance(data, dict):
            self.problem(source, f"policies[{position}] must be a mapping")
            return
        name = data.get("name")
        label = name if isinstance(name, str) and name else f"policies[{position}]"
        if not isinstance(name, str) or not _POLICY_NAME.fullmatch(name):
            shown = quote(str(name)) if name is not None else "missing"
            self.problem(
                source,
                f"policy name {shown} must be 1-128 ascii letters, digits, '.', '_' or '-'",
                policy=label,
            )
        elif name in self.policy_files:
            other = self.policy_files[name]
            where = "in the same file" if other == source else f"also in {quote(other, 200)}"
            self.problem(
                source, f"duplicate policy name ({where})", policy=name, code="policy_duplicate"
            )
        else:
            self.policy_files[name] = source
        self.unknown_keys(data, _POLICY_KEYS, source, "policy", policy=label)
        description = data.get("description", "")
        if not isinstance(description, str):
            self.problem(source, "policy description must be a string", policy=label)
            description = ""
        rules = data.get("rules")
        if not isinstance(rules, list) or not rules:
            self.problem(source, "policy needs a non-empty 'rules' list", policy=label)
            return
        pending = _PendingPolicy(source, label, description, [])
        for j, rule in enumerate(rules):
            if not isinstance(rule, dict):
                self.problem(source, "rule must be a mapping", policy=label, rule=j)
                continue
            pending.rules.append(_PendingRule(source, label, j, rule))
        self.policies.append(pending)

    # -- groups

    def build_groups(self) -> None:
        members_by_group: list[tuple[str, str, Any]] = []
        seen: dict[str, str] = {}
        for source, groups in self.raw_groups:
            if not isinstance(groups, dict):
                self.problem(source, "'groups' must be a mapping of group name to member emails")
                continue
            for key, members in groups.items():
                if not isinstance(key, str) or not key.isascii():
                    self.problem(
                        source,
                        f"group name {quote(str(key))} must be ascii",
                        code="policy_approvers",
                    )
                    continue
                name = key.lower()
                if not (is_email(name) or _PLAIN_GROUP.fullmatch(name)):
                    self.problem(
                        source,
                        f"group name {quote(key)} must be an email or a plain lowercase name",
                        code="policy_approvers",
                    )
                    continue
                if name in seen:
                    other = seen[name]
                    where = (
                        "in the same file" if other == source else f"also in {quote(other, 200)}"
                    )
                    self.problem(
                        source,
                        f"group {quote(key)} is defined twice ({where})",
                        code="policy_duplicate",
                    )
                    continue
                seen[name] = source
                members_by_group.append((source, name, members))
        for source, name, members in members_by_group:
            if not isinstance(members, list) or not members:
                self.problem(
                    source,
                    f"group {quote(name)} must be a non-empty list of emails",
                    code="policy_approvers",
                )
                continue
            resolved: set[str] = set()
            for member in members:
                if not isinstance(member, str) or not member.isascii():
                    self.problem(
                        source,
                        f"group {quote(name)} member {quote(str(member))} "
                        "is not a valid ascii email",
                        code="policy_approvers",
                    )
                    continue
                low = member.lower()
                if low in seen:
                    self.problem(
                        source,
                        f"group {quote(name)} member {quote(member)} is a group; "
                        "nested groups are not supported",
                        code="policy_approvers",
                    )
                elif not is_email(low):
                    self.problem(
                        source,
                        f"group {quote(name)} member {quote(member)} is not a valid ascii email",
                        code="policy_approvers",
                    )
                else:
                    resolved.add(low)
            self.groups[name] = tuple(sorted(resolved))

    def resolve_approvers(self, entries: list[Any], problem: Any) -> tuple[str, ...] | None:
        resolved: set[str] = set()
        ok = True
        for entry in entries:
            if not isinstance(entry, str):
                problem(f"approver {quote(str(entry))} must be a string")
                ok = False
                continue
            # isascii first: str.lower() folds some non-ascii letters (the Kelvin sign) to ascii.
            low = entry.lower() if entry.isascii() else None
            if low is not None and low in self.groups:
                resolved.update(self.groups[low])
            elif low is not None and is_email(low):
                resolved.add(low)
            else:
                problem(
                    f"approver {quote(entry)} is neither a defined group "
                    f"nor a valid ascii email{self.hint(entry)}"
                )
                ok = False
        return tuple(sorted(resolved)) if ok else None

    def hint(self, entry: str) -> str:
        if entry.strip() != entry:
            return " (it has leading or trailing whitespace)"
        odd = next((ch for ch in entry if not ch.isascii()), None)
        if odd is not None:
            return f" (it contains the non-ascii character U+{ord(odd):04X})"
        return ""

    # -- rules

    def build_rule(self, pending: _PendingRule) -> Rule | None:
        data, source = pending.data, pending.source
        description = data.get("description", "")
        desc_text = description if isinstance(description, str) and description else None
        before = len(self.problems)

        def problem(message: str, column: int | None = None, code: str = "policy_invalid") -> None:
            self.problem(
                source,
                message,
                policy=pending.policy,
                rule=pending.index,
                column=column,
                code=code,
                description=desc_text,
            )

        for key in data:
            if key not in _RULE_KEYS:
                problem(
                    f"unknown key {quote(str(key))} in rule "
                    f"(expected {', '.join(sorted(_RULE_KEYS))})"
                )
        if not isinstance(description, str):
            problem("rule description must be a string")
            description = ""
        effect = data.get("action")
        if effect not in EFFECTS:
            shown = quote(str(effect)) if effect is not None else "missing"
            problem(f"rule action {shown} must be one of allow, deny, require_approval")
        condition_text = data.get("condition")
        condition = None
        if condition_text is None:
            problem("rule needs a 'condition'")
        elif not isinstance(condition_text, str):
            problem("condition must be a string (quote it in yaml)")
        else:
            try:
                condition = compile_condition_checked(
                    condition_text, self.limits, self.aliases, self.environments
                )
            except ConditionError as exc:
                problem(f"condition: {exc.message}", exc.column, exc.code)
        approvers: tuple[str, ...] = ()
        min_approvals = 0
        expires = 0
        if effect == "require_approval":
            raw = data.get("approvers")
            if not isinstance(raw, list) or not raw:
                problem(
                    "require_approval needs a non-empty 'approvers' list", code="policy_approvers"
                )
            else:
                approvers = (
                    self.resolve_approvers(raw, lambda m: problem(m, code="policy_approvers")) or ()
                )
            min_approvals = data.get("min_approvals", 1)
            if type(min_approvals) is not int or min_approvals < 1:
                problem(
                    "min_approvals must be a whole number of at least 1, "
                    f"got {quote(str(min_approvals))}",
                    code="policy_approvers",
                )
            elif approvers and min_approvals > len(approvers):
                problem(
                    f"min_approvals {min_approvals} exceeds the "
                    f"{len(approvers)} resolved approver(s)",
                    code="policy_approvers",
                )
            try:
                expires = parse_duration(data.get("expires_in", APPROVAL_EXPIRY_SECONDS))
            except ValueError as exc:
                problem(f"expires_in: {exc}")
        elif effect in EFFECTS:
            for key in _APPROVAL_ONLY:
                if key in data:
                    problem(
                        f"{quote(key)} is only valid on require_approval rules",
                        code="policy_approvers",
                    )
        final_effect = as_effect(effect)
        if len(self.problems) != before or condition is None or final_effect is None:
            return None
        return Rule(
            policy=pending.policy,
            index=pending.index,
            effect=final_effect,
            condition=condition,
            description=description,
            approvers=approvers,
            min_approvals=min_approvals if final_effect == "require_approval" else 0,
            expires_in_seconds=expires,
            source=source,
        )

    def build(self) -> PolicySet:
        self.build_groups()
        total = sum(len(p.rules) for p in self.policies)
        if total > self.limits.max_rules:
            self.problem(
                self.sources[0] if self.sources else "<string>",
                f"{total} rules exceed the limit of {self.limits.max_rules}",
                code="policy_too_large",
            )
            raise_problems(self.problems)
        policies: list[Policy] = []
        for pending in self.policies:
            rules = [self.build_rule(r) for r in pending.rules]
            policies.append(
                Policy(
                    pending.name,
                    tuple(r for r in rules if r is not None),
                    pending.description,
                    pending.source,
                )
            )
        order = {source: i for i, source in enumerate(self.sources)}
        raise_problems(sorted(self.problems, key=lambda p: order.get(p.file, 0)))
        return PolicySet(policies, self.groups, self.sources, digest=policy_digest(self.read))


def policy_digest(files: Iterable[tuple[str, str]]) -> str:
    """SHA-256 over the loaded files' names (without their directory: replicas mount
    them in different places) and content digests, in load order: replicas loading
    identical files agree, any other difference (a byte, a name, the order) does not.
    No files at all has a digest too."""
    canonical = json.dumps([[name, sha] for name, sha in files], separators=(",", ":"))
    return hashlib.sha256(f"opsgate-policies/1\n{canonical}".encode()).hexdigest()


def policy_files(paths: PathLike | Iterable[PathLike]) -> list[Path]:
    """Expand files and directories (their *.yaml/*.yml, sorted) into a file list.

    A path that does not exist is a usage error (code policy_not_found), raised at once.
    """
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not items:
        raise PolicyError("no policy paths given", code="policy_not_found")
    files: list[Path] = []
    seen: set[Path] = set()
    for item in items:
        path = Path(item)
        try:
            is_dir = path.is_dir()
            if is_dir:
                found = sorted(
                    p for p in path.iterdir() if p.suffix in POLICY_SUFFIXES and p.is_file()
                )
            else:
                found = [path] if path.is_file() else []
        except OSError as exc:  # a name too long, a directory that cannot be read
            raise PolicyError(
                f"policy path {quote(str(path), 200)} cannot be read: "
                f"{exc.strerror or exc.__class__.__name__}",
                code="policy_not_found",
            ) from exc
        if is_dir:
            if not found:
                raise PolicyError(
                    f"no .yaml or .yml policy files in directory {quote(str(path), 200)}",
                    code="policy_not_found",
                )
        elif not found:
            raise PolicyError(
                f"policy path {quote(str(path), 200)} does not exist", code="policy_not_found"
            )
        for file in found:
            key = file.resolve()
            if key not in seen:
                seen.add(key)
                files.append(file)
    return files


def load_policies(
    paths: PathLike | Iterable[PathLike],
    limits: Limits | None = None,
    *,
    aliases: Mapping[str, str] | None = None,
    environments: DeclaredEnvironments | None = None,
) -> PolicySet:
    """Load a file, a directory of *.yaml/*.yml, or a list of both into one PolicySet.

    Files are merged (groups too); a policy name or group defined twice is an error.
    `aliases` are the gate's environment aliases: a condition naming one is an error.
    `environments` are its declared ones: a condition naming another where policy
    compares `environment`, a resource or a capability is an error (the gate refuses
    such a request before policy: the rule would never fire).
    """
    loader = _Loader(limits or Limits(), aliases, environments)
    for file in policy_files(paths):
        loader.add_path(file)
    return loader.build()


def parse_policies(text: str, source: str = "<string>", limits: Limits | None = None) -> PolicySet:
    """Load policies from YAML text; `source` names it in problems."""
    loader = _Loader(limits or Limits())
    loader.read.append((source, hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()))
    loader.add_text(text, source)
    return loader.build()


__all__ = [
    "MAX_EXPIRES_SECONDS",
    "is_email",
    "load_policies",
    "parse_duration",
    "parse_policies",
    "policy_digest",
    "policy_files",
]
