"""Every error code has one owning class, every raise site uses it with that class,
and the README's error table documents each one.

The scan reads opsgate's source with `ast` and follows a code to its literals: given
at the call, a helper's parameter (each call of the helper, and its default), a local
assigned literals, a module-level table of codes, or a function returning codes. A
code it cannot follow fails the test, so a new raise site cannot hide one.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import opsgate
from opsgate import errors
from opsgate.errors import CODES, OpsgateError
from opsgate.policy.condition import ConditionError
from opsgate.policy.problems import Problem
from opsgate.server.errors import CODE_STATUS

PACKAGE = Path(opsgate.__file__).parent
README = PACKAGE.parent / "README.md"

# Classes that carry a policy problem's code into the PolicyError raised for it.
CARRIERS: dict[str, tuple[type[OpsgateError], int]] = {
    "Problem": (errors.PolicyError, list(inspect.signature(Problem).parameters).index("code")),
    "ConditionError": (
        errors.PolicyError,
        list(inspect.signature(ConditionError).parameters).index("code"),
    ),
}
# Codes handed on from a carrier above, so checked where the carrier was made: a
# condition's ConditionError becomes a Problem, a load's first Problem a PolicyError.
PASS_THROUGH = {
    ("policy/problems.py", "first.code"),
    ("policy/loader.py", "exc.code"),
    ("policy/condition.py", "exc.code"),
}


def all_error_classes() -> dict[str, type[OpsgateError]]:
    out: dict[str, type[OpsgateError]] = {}
    todo: list[type[OpsgateError]] = [OpsgateError]
    while todo:
        cls = todo.pop()
        out[cls.__name__] = cls
        todo.extend(cls.__subclasses__())
    return out


@dataclass(frozen=True)
class Site:
    path: str
    line: int
    cls: type[OpsgateError]
    code: str


class Scan:
    """The codes every OpsgateError construction in opsgate can carry."""

    def __init__(self, classes: dict[str, type[OpsgateError]]) -> None:
        self.classes = classes
        self.trees = {
            str(p.relative_to(PACKAGE)): ast.parse(p.read_text(encoding="utf-8"))
            for p in sorted(PACKAGE.rglob("*.py"))
        }
        self.sites: list[Site] = []
        self.answered: list[str] = []  # codes written straight into a response body
        self.unresolved: list[str] = []
        self.constructions = 0
        self.functions: dict[str, list[ast.FunctionDef | ast.AsyncFunctionDef]] = {}
        for tree in self.trees.values():
            for node in ast.walk(tree):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    self.functions.setdefault(node.name, []).append(node)
        for path, tree in self.trees.items():
            self._module(path, tree)

    def _module(self, path: str, tree: ast.Module) -> None:
        for node in ast.walk(tree):
            if isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if (
                        isinstance(key, ast.Constant)
                        and key.value == "code"
                        and isinstance(value, ast.Constant)
                        and isinstance(value.value, str)
                    ):
                        self.answered.append(value.value)
        parent = {c: n for n in ast.walk(tree) for c in ast.iter_child_nodes(n)}
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
        tables = {
            t.id: node.value
            for node in tree.body
            if isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(node.value, ast.Dict)
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
            if isinstance(t, ast.Name)
        }

        def scopes(node: ast.AST) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
            while node in parent:
                node = parent[node]
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    yield node

        def called(call: ast.Call, fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
            f = call.func
            is_method = bool(fn.args.args) and fn.args.args[0].arg in ("self", "cls")
            if is_method:
                return isinstance(f, ast.Attribute) and f.attr == fn.name
            return isinstance(f, ast.Name) and f.id == fn.name

        def returns(fn: ast.FunctionDef | ast.AsyncFunctionDef, depth: int) -> list[str] | None:
            out: list[str] = []
            for node in ast.walk(fn):
                if isinstance(node, ast.Return) and node.value is not None:
                    if isinstance(node.value, ast.Constant) and node.value.value is None:
                        continue
                    got = resolve(node.value, node, depth + 1)
                    if got is None:
                        return None
                    out += got
            return out

        def parameter(
            name: str, fn: ast.FunctionDef | ast.AsyncFunctionDef, depth: int
        ) -> list[str] | None:
            args = fn.args
            positional = [a.arg for a in args.posonlyargs + args.args]
            out: list[str] = []
            index = None
            if name in positional:
                i = positional.index(name)
                j = i - (len(positional) - len(args.defaults))
                if j >= 0:
                    default = resolve(args.defaults[j], fn, depth + 1)
                    if default is None:
                        return None
                    out += default
                skip = 1 if positional and positional[0] in ("self", "cls") else 0
                index = i - skip
            else:
                k = [a.arg for a in args.kwonlyargs].index(name)
                if args.kw_defaults[k] is not None:
                    default = resolve(args.kw_defaults[k], fn, depth + 1)  # type: ignore[arg-type]
                    if default is None:
                        return None
                    out += default
            for call in calls:
                if not called(call, fn):
                    continue
                given = next((kw.value for kw in call.keywords if kw.arg == name), None)
                if given is None and index is not None and index < len(call.args):
                    given = call.args[index]
                if given is None:
                    continue
                got = resolve(given, call, depth + 1)
                if got is None:
                    return None
                out += got
            return out

        def resolve(expr: ast.expr, at: ast.AST, depth: int = 0) -> list[str] | None:
            """The literal codes `expr` (at node `at`) can hold; None if not followed."""
            if depth > 6:
                return None
            if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
                return [expr.value]
            if isinstance(expr, ast.Attribute) and (path, ast.unparse(expr)) in PASS_THROUGH:
                return []
            if isinstance(expr, ast.IfExp):
                a, b = resolve(expr.body, at, depth + 1), resolve(expr.orelse, at, depth + 1)
                return None if a is None or b is None else a + b
            table = None
            if isinstance(expr, ast.Subscript) and isinstance(expr.value, ast.Name):
                table = tables.get(expr.value.id)
            if table is not None:
                return [v.value for v in table.values if isinstance(v, ast.Constant)]
            if isinstance(expr, ast.Call):
                f = expr.func
                name = f.id if isinstance(f, ast.Name) else f.attr
                defs = self.functions.get(name, [])
                if len(defs) != 1:
                    return None
                return returns(defs[0], depth)
            if isinstance(expr, ast.Name):
                for fn in scopes(at):
                    args = fn.args
                    names = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
                    if expr.id in names:
                        return parameter(expr.id, fn, depth)
                    values: list[str] = []
                    assigned = False
                    for node in ast.walk(fn):
                        if isinstance(node, ast.Assign) and any(
                            isinstance(t, ast.Name) and t.id == expr.id for t in node.targets
                        ):
                            assigned = True
                            got = resolve(node.value, node, depth + 1)
                            if got is None:
                                return None
                            values += got
                    if assigned:
                        return values
            return None

        for call in calls:
            f = call.func
            name = (
                f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
            )
            code_expr: ast.expr | None = next(
                (kw.value for kw in call.keywords if kw.arg == "code"), None
            )
            if name in CARRIERS:
                cls, index = CARRIERS[name]
                if code_expr is None and index < len(call.args):
                    code_expr = call.args[index]
                if code_expr is None:
                    continue  # the carrier's default, checked below
            elif name in self.classes:
                cls = self.classes[name]
                self.constructions += 1
                if code_expr is None:
                    self.sites.append(Site(path, call.lineno, cls, cls.default_code))
                    continue
            else:
                continue
            got = resolve(code_expr, call)
            if got is None:
                self.unresolved.append(
                    f"{path}:{call.lineno} {name}(code={ast.unparse(code_expr)})"
                )
                continue
            self.sites.extend(Site(path, call.lineno, cls, code) for code in got)


@pytest.fixture(scope="module")
def classes() -> dict[str, type[OpsgateError]]:
    # Import every module, so a subclass defined anywhere is seen.
    for info in pkgutil.walk_packages([str(PACKAGE)], "opsgate."):
        importlib.import_module(info.name)
    return all_error_classes()


@pytest.fixture(scope="module")
def scan(classes: dict[str, type[OpsgateError]]) -> Scan:
    return Scan(classes)


def test_every_error_class_lives_in_errors(classes: dict[str, type[OpsgateError]]) -> None:
    # The registry can name a code's owner only if the owner is defined beside it.
    elsewhere = {n: c.__module__ for n, c in classes.items() if c.__module__ != "opsgate.errors"}
    assert elsewhere == {}


def test_every_code_is_followed_to_its_literals(scan: Scan) -> None:
    assert scan.unresolved == []
    assert scan.constructions > 300  # the scan sees the raise sites (about 390)


def test_every_raised_code_is_registered_to_its_class(scan: Scan) -> None:
    wrong = []
    for site in scan.sites:
        entry = CODES.get(site.code)
        if entry is None or not issubclass(site.cls, entry.owner):
            owner = "unregistered" if entry is None else entry.owner.__name__
            wrong.append(f"{site.path}:{site.line} {site.cls.__name__} {site.code!r} ({owner})")
    assert wrong == []


def test_every_registered_code_is_used(scan: Scan, classes: dict[str, type[OpsgateError]]) -> None:
    """No stale entry: each code is raised, is a class's default, or is answered with
    by the HTTP layer (its status table)."""
    used = {s.code for s in scan.sites} | {c.default_code for c in classes.values()}
    used |= set(CODE_STATUS)
    assert sorted(set(CODES) - used) == []


def test_every_http_status_code_is_registered() -> None:
    assert sorted(set(CODE_STATUS) - set(CODES)) == []


def test_every_code_answered_without_an_exception_is_registered(scan: Scan) -> None:
    # e.g. the body size limit and the readiness probe write their JSON themselves.
    assert scan.answered, "the scan sees the literal error bodies"
    assert sorted(set(scan.answered) - set(CODES)) == []


def test_codes_are_stable_names() -> None:
    for code, entry in CODES.items():
        assert re.fullmatch(r"[a-z][a-z0-9_]*", code), code
        assert entry.code == code
        assert entry.meaning and "\n" not in entry.meaning, code
        assert entry.owner.__module__ == "opsgate.errors", code


def readme_table() -> dict[str, tuple[str, str]]:
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Error codes\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([a-z0-9_]+)` \| `(\w+)` \| (.+?) \|$", section, re.MULTILINE)
    return {code: (owner, meaning) for code, owner, meaning in rows}


def test_the_readme_documents_every_code_with_its_class() -> None:
    table = readme_table()
    assert sorted(set(CODES) - set(table)) == [], "missing from the README's error table"
    assert sorted(set(table) - set(CODES)) == [], "in the README but not registered"
    for code, (owner, _meaning) in table.items():
        assert owner == CODES[code].owner.__name__, code


def test_a_code_outside_its_class_is_refused_at_construction() -> None:
    with pytest.raises(TypeError, match="owned by ConfigError"):
        errors.AuditError("x", code="config_invalid")
    with pytest.raises(TypeError, match="owned by no class"):
        errors.ConfigError("x", code="made_up_code")
    # A subclass carries its owners' codes; a class belonging to two families, both.
    assert errors.MigrationContended("x", code="migration_plan_stale").code == (
        "migration_plan_stale"
    )
    both = errors.EmailInvalid("x")
    assert isinstance(both, errors.AgentError) and isinstance(both, errors.ApprovalError)


def test_a_received_error_keeps_the_code_it_came_with() -> None:
    exc = errors.ConfigError.received("from a newer server", code="not_known_here", x=1)
    assert (exc.code, exc.message, exc.detail) == (
        "not_known_here",
        "from a newer server",
        {"x": 1},
    )
    assert str(exc) == "from a newer server"
    scrubbed = errors.OpsgateError.received("token opsg_apr_abcdef", code="error")
    assert "opsg_apr_abcdef" not in scrubbed.message


def test_the_remote_sdk_without_a_credential_says_credential_missing() -> None:
    """The SDK refuses before sending anything, with the code the server uses for a
    request that presents no credential, as a CredentialError."""
    import httpx
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from opsgate.client import RemoteGate

    def no_request(request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"nothing may be sent: {request.url}")

    key = Ed25519PrivateKey.generate()
    transport = httpx.MockTransport(no_request)
    with (
        RemoteGate("http://127.0.0.1:9", key, transport=transport) as gate,
        pytest.raises(errors.CredentialError) as info,
    ):
        gate.approval("apr_" + "0" * 24)
    assert info.value.code == "credential_missing"
    assert isinstance(info.value, errors.HttpRefusal)  # the code's owner
