"""The condition language: parsed once, checked, compiled to plain closures.

Text is parsed with Python's `ast` in eval mode (the seed's syntax is a subset of
Python expressions) and then walked with an allow-list: literals, lists of
literals, the fixed vocabulary, comparisons, `and`/`or`/`not` and four small
functions. Everything else is a load error carrying the column. Nothing is ever
compiled to bytecode or evaluated by Python: each node becomes a closure over the
already-checked pieces, so a decision is a handful of function calls.

Semantics worth knowing:
- Equality is JSON-like and strict: `true != 1`, `1 == 1.0`; null equals only null.
- Ordering (`< <= > >=`) needs two numbers or two strings; anything else (null
  included) is a run-time error, which fails closed for deny/require_approval rules.
- Comparison chains (`0 <= time.hour < 6`) mean the pairwise conjunction.
- `x in [..]` is list membership, `'prod' in resource` is substring.
- Static types are checked at load time (`agent.trust_score == 'high'` is refused);
  `params.<key>` is dynamic, so its type errors happen at run time.
- Top-level `action == 'x'` / `action in [...]` conjuncts scope a rule to those
  actions: the rule is only evaluated for them (this is also what makes the index
  exact), so an error elsewhere in the condition never fires for other actions.
"""

from __future__ import annotations

import ast
import difflib
import math
import operator
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

from opsgate.config import Limits
from opsgate.errors import PolicyError
from opsgate.policy.problems import Problem, quote, raise_problems
from opsgate.policy.request import PolicyRequest
from opsgate.policy.vocabulary import (
    ANY,
    BOOL,
    FIELDS,
    FUNCTIONS,
    LIST,
    LITERAL_NAMES,
    MAP,
    NULL,
    NUM,
    PARAMS_ROOT,
    ROOTS,
    STR,
    VALUE_GRAMMAR,
    type_name,
)

Getter = Callable[[PolicyRequest], Any]
Test = Callable[[PolicyRequest], bool]

#: Largest integer literal accepted; beyond this a number is almost surely a typo.
MAX_INT = 2**63
#: Characters a prefix/suffix of action, resource, capability or environment may hold
#: (lower case: the gate lower-cases every resource before policy sees it).
_AFFIX = re.compile(r"[a-z0-9._/:-]*", re.ASCII)


class DeclaredEnvironments(Protocol):
    """What the compiler asks of the gate's environments (an `Environments` is one)."""

    @property
    def names(self) -> tuple[str, ...]: ...

    def undeclared_in(self, capability: str) -> str | None: ...


class ConditionError(Exception):
    """A condition failed to parse or check; `column` is 1-based in the condition text."""

    def __init__(self, message: str, column: int | None, code: str = "policy_syntax") -> None:
        super().__init__(message)
        self.message = message
        self.column = column
        self.code = code


class EvalError(Exception):
    """A condition could not be evaluated for this request (a type mismatch, a null)."""


# --------------------------------------------------------------------------- runtime

_KINDS: dict[type, int] = {str: STR, int: NUM, float: NUM, bool: BOOL, type(None): NULL}


def _kind(value: object) -> int:
    kind = _KINDS.get(type(value))
    if kind is not None:
        return kind
    if isinstance(value, (list, tuple)):
        return LIST
    if isinstance(value, Mapping):
        return MAP
    raise EvalError(f"unsupported value of type {type(value).__name__!r}")


def _eq(a: object, b: object) -> bool:
    """JSON equality: kinds must match (so true != 1), lists and maps compare deeply."""
    ka = _kind(a)
    if ka != _kind(b):
        return False
    # The kind is checked first: only lists and maps pay for the isinstance checks.
    if ka == LIST and isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_eq(x, y) for x, y in zip(a, b, strict=True))
    if ka == MAP and isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_eq(a[k], b[k]) for k in a)
    return a == b


def _member_key(value: object) -> tuple[int, object] | None:
    """Hashable identity of a scalar for set membership; None for lists and maps."""
    kind = _kind(value)
    if kind in (LIST, MAP):
        return None
    return (kind, value)


def _ordered(a: object, b: object, where: str) -> None:
    ta, tb = type(a), type(b)
    if (ta is int or ta is float) and (tb is int or tb is float):
        return
    if ta is str and tb is str:
        return
    raise EvalError(f"{where}: cannot order {type_name(_kind(a))} and {type_name(_kind(b))}")


def _contains(item: object, container: object, where: str) -> bool:
    kind = _kind(container)
    if kind == LIST and isinstance(container, (list, tuple)):
        return any(_eq(item, x) for x in container)
    if kind == STR and isinstance(container, str):
        if type(item) is not str:
            raise EvalError(f"{where}: substring test needs a string, got {type_name(_kind(item))}")
        return item in container
    raise EvalError(f"{where}: 'in' needs a list or a string, got {type_name(kind)}")


def _want(value: object, types: int, where: str) -> Any:
    kind = _kind(value)
    if kind & types:
        return value
    raise EvalError(f"{where}: expected {type_name(types)}, got {type_name(kind)}")


def _always_true(_: PolicyRequest) -> bool:
    return True


_ORDER_OPS: dict[type, Callable[[Any, Any], bool]] = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}
_OP_TEXT: dict[type, str] = {
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.In: "in",
    ast.NotIn: "not in",
    ast.Is: "is",
    ast.IsNot: "is not",
}


def _raw_compare(op: type, a: Getter, b: Getter) -> Test:
    """Plain Python comparison, used only where static types make it exact."""
    if op is ast.Eq:
        return lambda r: a(r) == b(r)
    if op is ast.NotEq:
        return lambda r: a(r) != b(r)
    if op is ast.Lt:
        return lambda r: a(r) < b(r)
    if op is ast.LtE:
        return lambda r: a(r) <= b(r)
    if op is ast.Gt:
        return lambda r: a(r) > b(r)
    return lambda r: a(r) >= b(r)


def _raw_compare_const(op: type, a: Getter, c: Any) -> Test:
    """Like `_raw_compare` with a literal on the right: one call fewer per evaluation."""
    if op is ast.Eq:
        return lambda r: a(r) == c
    if op is ast.NotEq:
        return lambda r: a(r) != c
    if op is ast.Lt:
        return lambda r: a(r) < c
    if op is ast.LtE:
        return lambda r: a(r) <= c
    if op is ast.Gt:
        return lambda r: a(r) > c
    return lambda r: a(r) >= c


def _all_of(tests: Sequence[Test]) -> Test:
    if not tests:
        return _always_true
    if len(tests) == 1:
        return tests[0]
    if len(tests) == 2:
        t1, t2 = tests
        return lambda r: t1(r) and t2(r)
    if len(tests) == 3:
        u1, u2, u3 = tests
        return lambda r: u1(r) and u2(r) and u3(r)
    frozen = tuple(tests)

    def every(r: PolicyRequest) -> bool:
        for t in frozen:  # noqa: SIM110 - a plain loop is faster than all(genexpr)
            if not t(r):
                return False
        return True

    return every


def _any_of(tests: Sequence[Test]) -> Test:
    if len(tests) == 1:
        return tests[0]
    if len(tests) == 2:
        t1, t2 = tests
        return lambda r: t1(r) or t2(r)
    frozen = tuple(tests)

    def some(r: PolicyRequest) -> bool:
        for t in frozen:  # noqa: SIM110 - a plain loop is faster than any(genexpr)
            if t(r):
                return True
        return False

    return some


# --------------------------------------------------------------------------- compiler


@dataclass(slots=True)
class _Expr:
    """A checked, compiled sub-expression and what is statically known about it."""

    fn: Getter
    types: int
    const: bool = False
    value: Any = None
    name: str | None = None  # vocabulary name when the expression is a plain name
    elem_types: int = 0  # for list literals: union of the element types


@dataclass(frozen=True, slots=True)
class Condition:
    """A compiled condition. `residual` skips the top-level action conjuncts, which
    the action index already guarantees; `actions` is None when the rule applies to
    every action."""

    source: str
    test: Test
    residual: Test
    actions: frozenset[str] | None


_FORBIDDEN: dict[type, str] = {
    ast.Subscript: "subscripts are not allowed",
    ast.Slice: "slices are not allowed",
    ast.Lambda: "lambdas are not allowed",
    ast.ListComp: "comprehensions are not allowed",
    ast.SetComp: "comprehensions are not allowed",
    ast.DictComp: "comprehensions are not allowed",
    ast.GeneratorExp: "comprehensions are not allowed",
    ast.JoinedStr: "f-strings are not allowed",
    ast.FormattedValue: "f-strings are not allowed",
    ast.NamedExpr: "assignment expressions are not allowed",
    ast.Starred: "starred expressions are not allowed",
    ast.IfExp: "conditional expressions are not allowed; use 'and'/'or'",
    ast.BinOp: "arithmetic is not allowed",
    ast.Tuple: "tuples are not allowed; use a list '[...]'",
    ast.Dict: "dict literals are not allowed",
    ast.Set: "set literals are not allowed; use a list '[...]'",
    ast.Await: "'await' is not allowed",
    ast.Yield: "'yield' is not allowed",
    ast.YieldFrom: "'yield' is not allowed",
}
_NOT_COUNTED = (ast.expr_context, ast.boolop, ast.cmpop, ast.unaryop, ast.operator)
_KNOWN_NAMES = sorted([*FIELDS, *LITERAL_NAMES, "params.<key>"])


class _Compiler:
    def __init__(
        self,
        text: str,
        limits: Limits,
        aliases: Mapping[str, str],
        environments: DeclaredEnvironments | None = None,
    ) -> None:
        self.text = text
        self.limits = limits
        self.aliases = aliases
        self.environments = environments
        self.lead = len(text) - len(text.lstrip(" \t"))
        self.body = text[self.lead :]
        self.lines = self.body.split("\n")
        starts = [self.lead]
        for line in self.lines[:-1]:
            starts.append(starts[-1] + len(line) + 1)
        self.line_starts = starts

    # -- positions and errors

    def offset(self, lineno: int | None, col_offset: int | None) -> int | None:
        """0-based char offset in `text` from ast's (1-based line, utf-8 byte column)."""
        if lineno is None or col_offset is None or not 1 <= lineno <= len(self.lines):
            return None
        line = self.lines[lineno - 1].encode("utf-8")[:col_offset]
        return self.line_starts[lineno - 1] + len(line.decode("utf-8", "ignore"))

    def column(self, node: ast.AST) -> int | None:
        off = self.offset(getattr(node, "lineno", None), getattr(node, "col_offset", None))
        return None if off is None else off + 1

    def snippet(self, node: ast.AST) -> str:
        start = self.offset(getattr(node, "lineno", None), getattr(node, "col_offset", None))
        end = self.offset(getattr(node, "end_lineno", None), getattr(node, "end_col_offset", None))
        if start is None or end is None:
            return "condition"
        text = " ".join(self.text[start:end].split())
        return text if len(text) <= 60 else text[:57] + "..."

    def fail(self, node: ast.AST, message: str, code: str = "policy_syntax") -> NoReturn:
        raise ConditionError(message, self.column(node), code)

    # -- entry

    def compile(self) -> Condition:
        text, limits = self.text, self.limits
        if len(text) > limits.max_condition_chars:
            raise ConditionError(
                f"condition is longer than {limits.max_condition_chars} characters",
                None,
                "policy_too_large",
            )
        for i, ch in enumerate(text):
            if (ch < " " and ch not in "\t\n") or ch == "\x7f":
                raise ConditionError(f"control character {ch!r} in condition", i + 1)
        if not self.body.strip():
            raise ConditionError("condition is empty", None)
        try:
            # Warnings (an invalid escape, `1 is 1`) become refusals, never stderr noise.
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                tree = ast.parse(self.body, mode="eval")
        except Warning as exc:
            raise ConditionError(f"refused: {' '.join(str(exc).split()).lower()}", None) from None
        except SyntaxError as exc:
            raise ConditionError(self._syntax_message(exc), self._syntax_column(exc)) from None
        except (ValueError, RecursionError, MemoryError, OverflowError) as exc:
            raise ConditionError(
                f"condition cannot be parsed ({type(exc).__name__})", None, "policy_too_large"
            ) from None
        self._check_size(tree)
        self._check_ascii(tree)
        body = tree.body
        conjuncts = body.values if type(body) is ast.BoolOp and type(body.op) is ast.And else [body]
        what = "'and'" if len(conjuncts) > 1 else "a condition"
        tests: list[Test] = []
        residual: list[Test] = []
        actions: frozenset[str] | None = None
        for node in conjuncts:
            test = self.boolean(self.expr(node), node, what)
            tests.append(test)
            constraint = _action_constraint(node)
            if constraint is None:
                residual.append(test)
            else:
                actions = constraint if actions is None else actions & constraint
        self._check_literals(tree)
        if actions is not None and not actions:
            raise ConditionError(
                "condition can never match: its action constraints exclude every action",
                self.column(body),
                "policy_type",
            )
        return Condition(text, _all_of(tests), _all_of(residual), actions)

    def _syntax_message(self, exc: SyntaxError) -> str:
        msg = (exc.msg or "invalid syntax").strip().lower()
        if "\n" in self.body.strip() and msg == "invalid syntax":
            msg += " (a condition spanning lines must be wrapped in parentheses)"
        return msg.split("\n")[0]

    def _syntax_column(self, exc: SyntaxError) -> int | None:
        lineno = exc.lineno or 1
        if not 1 <= lineno <= len(self.lines):
            return None
        offset = exc.offset or (len(self.lines[lineno - 1]) + 1)  # 0/None: at the end
        offset = max(1, min(offset, len(self.lines[lineno - 1]) + 1))
        return self.line_starts[lineno - 1] + offset

    def _check_size(self, tree: ast.Expression) -> None:
        """Bound nodes and depth iteratively, before any recursive walk."""
        max_nodes, max_depth = self.limits.max_expression_nodes, self.limits.max_expression_depth
        stack: list[tuple[ast.AST, int]] = [(tree.body, 1)]
        count = 0
        while stack:
            node, depth = stack.pop()
            count += 1
            if count > max_nodes:
                raise ConditionError(
                    f"condition has more than {max_nodes} nodes", None, "policy_too_large"
                )
            if depth > max_depth:
                self.fail(node, f"condition is nested deeper than {max_depth}", "policy_too_large")
            for child in ast.iter_child_nodes(node):
                if not isinstance(child, _NOT_COUNTED):
                    stack.append((child, depth + 1))

    def _check_literals(self, tree: ast.Expression) -> None:
        """String values (however written, escapes included) are ASCII unless they meet
        params: every name, resource, environment and email opsgate knows is ASCII, so
        a literal with a look-alike letter is a rule that silently never fires. Runs
        after the typed checks, which explain the common cases more precisely."""
        parents: dict[ast.AST, ast.AST] = {}
        for node in ast.walk(tree):
            for child in ast.iter_child_nodes(node):
                parents[child] = node
        for node in ast.walk(tree):
            if type(node) is ast.Constant and type(node.value) is str and not node.value.isascii():
                # Allowed only where it meets free text: the comparison or call that
                # holds it also reads `params` (a city name may well be 'Zürich').
                owner = parents.get(node)
                while owner is not None and not isinstance(owner, (ast.Compare, ast.Call)):
                    owner = parents.get(owner)
                if owner is not None and any(
                    type(n) is ast.Name and n.id == "params" for n in ast.walk(owner)
                ):
                    continue
                bad = next(ch for ch in node.value if not ch.isascii())
                column = self.offset(node.lineno, node.col_offset)
                raise ConditionError(
                    f"string {quote(node.value)} holds the non-ascii character {bad!r} "
                    f"(U+{ord(bad):04X}); names, resources, environments and emails are "
                    "ascii, so a look-alike letter never matches",
                    (column or 0) + 1,
                )

    def _check_ascii(self, tree: ast.Expression) -> None:
        """Outside string literals only ASCII: Python would NFKC-fold look-alike names."""
        if self.text.isascii():
            return
        spans: list[tuple[int, int]] = []
        for node in ast.walk(tree):
            if type(node) is ast.Constant and type(node.value) is str:
                start = self.offset(node.lineno, node.col_offset)
                end = self.offset(node.end_lineno, node.end_col_offset)
                if start is not None and end is not None:
                    spans.append((start, end))
        for i, ch in enumerate(self.text):
            if not ch.isascii() and not any(s <= i < e for s, e in spans):
                raise ConditionError(f"non-ascii character {ch!r} outside a string literal", i + 1)

    # -- nodes

    def expr(self, node: ast.AST) -> _Expr:
        if type(node) is ast.Constant:
            return self.constant(node)
        if type(node) is ast.Name:
            return self.name(node)
        if type(node) is ast.Attribute:
            return self.attribute(node)
        if type(node) is ast.Compare:
            return self.compare(node)
        if type(node) is ast.BoolOp:
            return self.boolop(node)
        if type(node) is ast.UnaryOp:
            return self.unary(node)
        if type(node) is ast.List:
            return self.list_literal(node)
        if type(node) is ast.Call:
            return self.call(node)
        self.fail(
            node,
            _FORBIDDEN.get(type(node), f"{type(node).__name__.lower()} is not allowed"),
            "policy_forbidden",
        )

    def literal(self, value: Any, types: int) -> _Expr:
        return _Expr(lambda _r: value, types, const=True, value=value)

    def constant(self, node: ast.Constant) -> _Expr:
        value = node.value
        kind = type(value)
        if value is None:
            return self.literal(None, NULL)
        if kind is bool:
            return self.literal(value, BOOL)
        if kind is str:
            return self.literal(value, STR)
        if isinstance(value, int) and kind is int:
            if abs(value) > MAX_INT:
                self.fail(node, "number is out of range")
            return self.literal(value, NUM)
        if isinstance(value, float) and kind is float:
            if not math.isfinite(value):
                self.fail(node, "number is out of range")
            return self.literal(value, NUM)
        message = {
            bytes: "bytes literals are not allowed",
            complex: "complex numbers are not allowed",
        }.get(kind, "this literal is not allowed")
        self.fail(node, message, "policy_forbidden")

    def unknown(self, node: ast.AST, name: str) -> NoReturn:
        close = difflib.get_close_matches(name, _KNOWN_NAMES, n=1)
        hint = f" (did you mean {quote(close[0])}?)" if close else ""
        self.fail(node, f"unknown name {quote(name)}{hint}", "policy_unknown_name")

    def name(self, node: ast.Name) -> _Expr:
        ident = node.id
        if ident in LITERAL_NAMES:
            value = LITERAL_NAMES[ident]
            return self.literal(value, NULL if value is None else BOOL)
        field = FIELDS.get(ident)
        if field is not None:
            return _Expr(operator.attrgetter(field[0]), field[1], name=ident)
        if ident in ROOTS:
            example = (
                "params.replicas"
                if ident == PARAMS_ROOT
                else f"{ident}.{'name' if ident == 'agent' else 'hour'}"
            )
            self.fail(
                node,
                f"{quote(ident)} needs an attribute, e.g. {quote(example)}",
                "policy_unknown_name",
            )
        if ident in FUNCTIONS:
            self.fail(
                node,
                f"{quote(ident)} is a function; call it as {ident}(...)",
                "policy_unknown_name",
            )
        self.unknown(node, ident)

    def attribute(self, node: ast.Attribute) -> _Expr:
        base = node.value
        if type(base) is not ast.Name or base.id not in ROOTS:
            self.fail(
                node,
                "attribute access is only allowed on 'agent', 'params' and 'time'",
                "policy_forbidden",
            )
        attr = node.attr
        if attr.startswith("_"):
            self.fail(
                node, f"names starting with '_' are not allowed: {quote(attr)}", "policy_forbidden"
            )
        if base.id == PARAMS_ROOT:
            key = attr

            def param(r: PolicyRequest) -> Any:
                return r.params.get(key)

            return _Expr(param, ANY, name=f"params.{key}")
        full = f"{base.id}.{attr}"
        field = FIELDS.get(full)
        if field is None:
            self.unknown(node, full)
        return _Expr(operator.attrgetter(field[0]), field[1], name=full)

    def list_literal(self, node: ast.List) -> _Expr:
        values: list[Any] = []
        elem_types = 0
        for elt in node.elts:
            item = self.expr(elt)
            if not item.const or item.types == LIST:
                self.fail(
                    elt,
                    "list items must be literals (strings, numbers, booleans, null)",
                    "policy_forbidden",
                )
            values.append(item.value)
            elem_types |= item.types
        out = self.literal(tuple(values), LIST)
        out.elem_types = elem_types
        return out

    def unary(self, node: ast.UnaryOp) -> _Expr:
        op = type(node.op)
        if op is ast.Not:
            inner = self.boolean(self.expr(node.operand), node.operand, "'not'")
            return _Expr(lambda r: not inner(r), BOOL)
        if op in (ast.USub, ast.UAdd):
            operand = node.operand
            number = operand.value if type(operand) is ast.Constant else None
            if type(number) is int or type(number) is float:  # exact: not a bool
                return self.literal(-number if op is ast.USub else number, NUM)
            self.fail(node, "a sign is only allowed on a number literal", "policy_forbidden")
        self.fail(node, "operator '~' is not allowed", "policy_forbidden")

    def boolean(self, item: _Expr, node: ast.AST, what: str) -> Test:
        """A test returning a real bool: statically, or checked at run time."""
        if not item.types & BOOL:
            self.fail(
                node, f"{what} needs true or false, got {type_name(item.types)}", "policy_type"
            )
        if item.types == BOOL:
            return item.fn
        fn, where = item.fn, self.snippet(node)
        return lambda r: _want(fn(r), BOOL, where)

    def boolop(self, node: ast.BoolOp) -> _Expr:
        word = "'and'" if type(node.op) is ast.And else "'or'"
        tests = [self.boolean(self.expr(v), v, word) for v in node.values]
        return _Expr(_all_of(tests) if type(node.op) is ast.And else _any_of(tests), BOOL)

    def compare(self, node: ast.Compare) -> _Expr:
        left_node: ast.AST = node.left
        left = self.expr(left_node)
        tests: list[Test] = []
        for op, right_node in zip(node.ops, node.comparators, strict=True):
            right = self.expr(right_node)
            tests.append(self.pair(type(op), left, right, node, left_node, right_node))
            left, left_node = right, right_node
        return _Expr(_all_of(tests), BOOL)

    def pair(
        self, op: type, left: _Expr, right: _Expr, node: ast.AST, lnode: ast.AST, rnode: ast.AST
    ) -> Test:
        sym = _OP_TEXT.get(op, "?")
        where = f"{self.snippet(lnode)} {sym} {self.snippet(rnode)}"
        if op in (ast.Is, ast.IsNot):
            self.fail(node, f"use '==' or '!=' instead of {quote(sym)}", "policy_forbidden")
        if op in (ast.Eq, ast.NotEq):
            return self.equality(op, left, right, lnode, rnode, where)
        if op in (ast.In, ast.NotIn):
            test = self.membership(left, right, rnode, where)
            if op is ast.NotIn:
                inner = test
                return lambda r: not inner(r)
            return test
        return self.ordering(op, left, right, rnode, where)

    def grammar(self, var: _Expr, value: object, node: ast.AST) -> None:
        """A literal outside a name's grammar can never equal it: a typo or look-alike."""
        pattern = VALUE_GRAMMAR.get(var.name or "")
        if pattern is not None and type(value) is str and not pattern.fullmatch(value):
            self.fail(
                node,
                f"{quote(value)} can never equal {var.name}: not a valid {var.name} value",
                "policy_type",
            )
        self.no_alias(var, value, node, keep=slice(None))
        self.declared(var, value, node)

    def declared(self, var: _Expr, value: object, node: ast.AST, *, prefix: bool = False) -> None:
        """The gate refuses a request naming an undeclared environment, so `environment`
        is a declared name or null, and a resource or capability names a declared one
        where its environment goes: a literal naming another never matches (a typo of
        `production` would leave a deny rule that never fires). `prefix`: the literal is
        a prefix, whose last segment may be partial."""
        envs = self.environments
        if envs is None or type(value) is not str:
            return
        if var.name == "environment" and not prefix:
            if value not in envs.names:
                self.fail(
                    node,
                    f"{quote(value)} is not a declared environment (declared: "
                    f"{', '.join(sorted(envs.names))}): {var.name} can never equal it",
                    "policy_type",
                )
            return
        if var.name not in ("resource", "capability"):
            return
        text = value if var.name == "capability" else f"x:{value}"
        if prefix:
            text = text.rpartition("/")[0]  # only the complete segments
        undeclared = envs.undeclared_in(text) if text else None
        if undeclared is not None:
            self.fail(
                node,
                f"{quote(value)} names environment {quote(undeclared)}, which is not "
                f"declared (declared: {', '.join(sorted(envs.names))}): {var.name} can "
                "never match it",
                "policy_type",
            )

    def no_alias(self, var: _Expr, value: object, node: ast.AST, *, keep: slice) -> None:
        """An environment alias never reaches policy (the gate resolves it first), so a
        literal naming one can never match: a load error naming the canonical name.
        `keep` selects the complete segments (a prefix's last one may be partial)."""
        if not self.aliases or var.name not in VALUE_GRAMMAR or type(value) is not str:
            return
        text = value.partition(":")[2] if var.name == "capability" and ":" in value else value
        for seg in text.split("/")[keep]:
            name = self.aliases.get(seg)
            if name is not None:
                self.fail(
                    node,
                    f"{quote(seg)} is an alias of environment {quote(name)}: the gate "
                    f"resolves it before policy, so write {quote(name)}",
                    "policy_type",
                )

    def equality(
        self, op: type, left: _Expr, right: _Expr, lnode: ast.AST, rnode: ast.AST, where: str
    ) -> Test:
        if not left.types & right.types:
            self.fail(
                rnode,
                f"cannot compare {type_name(left.types)} with {type_name(right.types)}: "
                f"{where} is never true",
                "policy_type",
            )
        if right.const:
            self.grammar(left, right.value, rnode)
        if left.const:
            self.grammar(right, left.value, lnode)
        union = left.types | right.types
        exact = (
            left.types & ~(STR | NULL) == 0
            or right.types & ~(STR | NULL) == 0
            or union & ~(NUM | NULL) == 0
            or union & ~(BOOL | NULL) == 0
        )
        if exact:
            if right.const:
                return _raw_compare_const(op, left.fn, right.value)
            return _raw_compare(op, left.fn, right.fn)
        a, b = left.fn, right.fn
        if op is ast.Eq:
            return lambda r: _eq(a(r), b(r))
        return lambda r: not _eq(a(r), b(r))

    def ordering(self, op: type, left: _Expr, right: _Expr, node: ast.AST, where: str) -> Test:
        lo, ro = left.types & (NUM | STR), right.types & (NUM | STR)
        if not lo or not ro or not lo & ro:
            self.fail(
                node,
                f"cannot order {type_name(left.types)} and {type_name(right.types)}: {where}",
                "policy_type",
            )
        if left.types == right.types and left.types in (NUM, STR):
            if right.const:
                return _raw_compare_const(op, left.fn, right.value)
            return _raw_compare(op, left.fn, right.fn)
        a, b, cmp = left.fn, right.fn, _ORDER_OPS[op]

        def checked(r: PolicyRequest) -> bool:
            x, y = a(r), b(r)
            _ordered(x, y, where)
            return cmp(x, y)

        return checked

    def membership(self, left: _Expr, right: _Expr, node: ast.AST, where: str) -> Test:
        a = left.fn
        if right.const and right.types == LIST:
            items: tuple[Any, ...] = right.value
            if items and not left.types & right.elem_types:
                self.fail(
                    node,
                    f"a {type_name(left.types)} can never be in a list of "
                    f"{type_name(right.elem_types)}",
                    "policy_type",
                )
            for item in items:
                self.grammar(left, item, node)
            union = left.types | right.elem_types
            scalar = not left.types & (LIST | MAP)
            if scalar and (
                left.types & ~(STR | NULL) == 0
                or right.elem_types & ~(STR | NULL) == 0
                or union & ~(NUM | NULL) == 0
                or union & ~(BOOL | NULL) == 0
            ):
                plain = frozenset(items)
                return lambda r: a(r) in plain
            keyed = frozenset(_member_key(v) for v in items)
            return lambda r: _member_key(a(r)) in keyed
        if not right.types & (LIST | STR):
            self.fail(
                node,
                f"'in' needs a list or a string on the right, got {type_name(right.types)}",
                "policy_type",
            )
        b = right.fn
        if right.types == STR:
            if not left.types & STR:
                self.fail(
                    node,
                    f"substring test needs a string, got {type_name(left.types)}",
                    "policy_type",
                )
            if left.types == STR:
                return lambda r: a(r) in b(r)
        return lambda r: _contains(a(r), b(r), where)

    def call(self, node: ast.Call) -> _Expr:
        func = node.func
        if type(func) is not ast.Name or func.id not in FUNCTIONS:
            allowed = ", ".join(sorted(FUNCTIONS))
            self.fail(node, f"calls are not allowed except {allowed}", "policy_forbidden")
        if node.keywords:
            self.fail(node, "keyword arguments are not allowed", "policy_forbidden")
        params, result = FUNCTIONS[func.id]
        if len(node.args) != len(params):
            self.fail(
                node,
                f"{func.id}() takes {len(params)} argument(s), got {len(node.args)}",
                "policy_type",
            )
        where = self.snippet(node)
        args = [self.expr(a) for a in node.args]
        getters: list[Getter] = []
        for arg_node, arg, want in zip(node.args, args, params, strict=True):
            if not arg.types & want:
                self.fail(
                    arg_node,
                    f"{func.id}() needs {type_name(want)}, got {type_name(arg.types)}",
                    "policy_type",
                )
            checked = arg.types & ~want
            getters.append(_checked_getter(arg.fn, want, where) if checked else arg.fn)
        if func.id == "lower":
            (g,) = getters
            return _Expr(lambda r: g(r).lower(), result)
        if func.id == "len":
            (g,) = getters
            return _Expr(lambda r: len(g(r)), result)
        subject, affix = args
        if (
            subject.name in VALUE_GRAMMAR
            and affix.const
            and type(affix.value) is str
            and not _AFFIX.fullmatch(affix.value)
        ):
            self.fail(
                node,
                f"{quote(affix.value)} can never match {subject.name}: "
                f"not a valid {subject.name} value",
                "policy_type",
            )
        if affix.const:
            # A prefix's last segment may be partial, as may a suffix's first.
            keep = slice(None, -1) if func.id == "startswith" else slice(1, None)
            self.no_alias(subject, affix.value, node, keep=keep)
            if func.id == "startswith":
                self.declared(subject, affix.value, node, prefix=True)
        g1, g2 = getters
        if func.id == "startswith":
            return _Expr(lambda r: g1(r).startswith(g2(r)), result)
        return _Expr(lambda r: g1(r).endswith(g2(r)), result)


def _checked_getter(fn: Getter, want: int, where: str) -> Getter:
    return lambda r: _want(fn(r), want, where)


def _action_constraint(node: ast.AST) -> frozenset[str] | None:
    """The actions a top-level conjunct pins the rule to, if it is `action == '..'`/`in [..]`."""
    if type(node) is not ast.Compare or len(node.ops) != 1:
        return None
    left, right, op = node.left, node.comparators[0], type(node.ops[0])

    def is_action(n: ast.AST) -> bool:
        return type(n) is ast.Name and n.id == "action"

    def text(n: ast.AST) -> str | None:
        """The string a literal is, else None."""
        value = n.value if type(n) is ast.Constant else None
        return value if type(value) is str else None

    if op is ast.Eq:
        if is_action(left) and (value := text(right)) is not None:
            return frozenset([value])
        if is_action(right) and (value := text(left)) is not None:
            return frozenset([value])
    if op is ast.In and is_action(left) and type(right) is ast.List:
        values = [text(e) for e in right.elts]
        if all(v is not None for v in values):
            return frozenset(v for v in values if v is not None)
    return None


def compile_condition_checked(
    text: str,
    limits: Limits,
    aliases: Mapping[str, str] | None = None,
    environments: DeclaredEnvironments | None = None,
) -> Condition:
    """Compile or raise ConditionError (the loader turns it into a located Problem).

    `aliases` (alias -> canonical environment): a literal naming an alias where policy
    compares a resource, capability or environment is an error (it can never match).
    `environments` (the declared ones): a literal naming an undeclared environment
    where policy compares `environment`, a resource or a capability is an error too.
    """
    if not isinstance(text, str):
        raise ConditionError("condition must be a string", None, "policy_invalid")
    return _Compiler(text, limits, aliases or {}, environments).compile()


def compile_condition(text: str, limits: Limits | None = None) -> Condition:
    """Compile one condition; any problem is a PolicyError with the column in it."""
    try:
        return compile_condition_checked(text, limits or Limits())
    except ConditionError as exc:
        raise_problems([Problem("<condition>", None, None, exc.column, exc.message, exc.code)])
        raise AssertionError("unreachable") from None


__all__ = [
    "Condition",
    "ConditionError",
    "DeclaredEnvironments",
    "EvalError",
    "PolicyError",
    "compile_condition",
]
