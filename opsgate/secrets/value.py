"""`SecretValue`: a secret in memory that never shows itself by accident.

repr, str, format, JSON (orjson/json refuse it; structlog and pydantic print the
mask), pickling and logging all see `**********`; only `.reveal()` gives the text.
"""

from __future__ import annotations

import hmac
from typing import Any, NoReturn

MASK = "**********"


class SecretValue:
    """A secret's text. Compare with `==` (constant time); read it with `.reveal()`."""

    __slots__ = ("__value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("a SecretValue holds text (str)")
        self.__value = value

    def reveal(self) -> str:
        """The secret itself: call it only where the value is meant to go."""
        return self.__value

    def __repr__(self) -> str:
        return f"SecretValue('{MASK}')"

    def __str__(self) -> str:
        return MASK

    def __format__(self, spec: str) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SecretValue):
            return NotImplemented
        return hmac.compare_digest(self.__value.encode("utf-8"), other.__value.encode("utf-8"))

    __hash__ = None  # type: ignore[assignment]  # equal values must not be findable by hash

    def __reduce__(self) -> NoReturn:
        raise TypeError("a SecretValue cannot be pickled")

    def __copy__(self) -> SecretValue:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> SecretValue:
        return self

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        from pydantic_core import core_schema

        return core_schema.no_info_plain_validator_function(
            lambda v: v if isinstance(v, SecretValue) else SecretValue(v),
            serialization=core_schema.plain_serializer_function_ser_schema(lambda _v: MASK),
        )


__all__ = ["MASK", "SecretValue"]
