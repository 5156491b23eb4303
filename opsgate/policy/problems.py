"""Where a policy load went wrong: every problem, located, so `validate` can list them all."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from opsgate.errors import PolicyError


def quote(text: str, limit: int = 60) -> str:
    """Quote user input for a one-line message; non-ascii is escaped so a look-alike
    letter shows as what it is ('sre-te\\u0430m')."""
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return ascii(text)


@dataclass(frozen=True, slots=True)
class Problem:
    """One load problem. `rule` is the 0-based index inside its policy, as in MatchedRule."""

    file: str
    policy: str | None
    rule: int | None
    column: int | None
    message: str
    code: str = "policy_invalid"
    rule_description: str | None = None
    line: int | None = None

    def location(self) -> str:
        parts = [quote(self.file, 200)]
        if self.line is not None:
            parts.append(f"line {self.line}")
        if self.policy is not None:
            parts.append(f"policy {quote(self.policy)}")
        if self.rule is not None:
            rule = f"rule {self.rule}"
            if self.rule_description:
                rule += f" ({quote(self.rule_description)})"
            parts.append(rule)
        if self.column is not None:
            parts.append(f"column {self.column}")
        return ", ".join(parts)

    def __str__(self) -> str:
        return f"{self.location()}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def raise_problems(problems: Sequence[Problem]) -> None:
    """Raise one PolicyError carrying all problems; its message names the first."""
    if not problems:
        return
    first = problems[0]
    more = len(problems) - 1
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    raise PolicyError(f"{first}{suffix}", code=first.code, problems=list(problems))


__all__ = ["Problem", "quote", "raise_problems"]
