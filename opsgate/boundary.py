"""The SDK's promise at its edge: nothing but an `OpsgateError` leaves a public call.

Every public method of the SDK's classes is wrapped once, at class creation: an
`OpsgateError` passes through unchanged; any other `Exception` (a library failing on
input nobody checked, a bug) becomes `InternalError` naming only the cause's class,
chained to it. `BaseException`s that are not errors (KeyboardInterrupt, SystemExit)
pass. Specific inputs get their specific codes where they are checked; this is the
net under them, so a caller can always `except OpsgateError`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import structlog

from opsgate.errors import InternalError, OpsgateError

log = structlog.get_logger("opsgate")
C = TypeVar("C", bound=type)
P = ParamSpec("P")
R = TypeVar("R")


def internal(where: str, exc: BaseException) -> InternalError:
    """The typed error for an unexpected exception met in `where`."""
    log.error("unexpected exception", where=where, error=type(exc).__name__)
    return InternalError(
        f"{where} failed unexpectedly ({type(exc).__name__})", code="internal_error"
    )


def typed(fn: Callable[P, R]) -> Callable[P, R]:
    """Wrap one callable so that only OpsgateError escapes it."""
    if getattr(fn, "__opsgate_typed__", False):
        return fn
    where = fn.__qualname__

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except OpsgateError:
            raise
        except Exception as exc:
            raise internal(where, exc) from exc

    vars(wrapper)["__opsgate_typed__"] = True  # wrapped once, however often decorated
    return wrapper


def typed_errors(cls: C) -> C:
    """Class decorator: every public method, classmethod, staticmethod and property
    defined on `cls` raises only OpsgateError. Generators are left alone."""
    for name, attr in list(vars(cls).items()):
        if name.startswith("_"):
            continue
        if isinstance(attr, staticmethod):
            setattr(cls, name, staticmethod(typed(attr.__func__)))
        elif isinstance(attr, classmethod):
            setattr(cls, name, classmethod(typed(attr.__func__)))
        elif isinstance(attr, property):
            setattr(
                cls,
                name,
                property(
                    typed(attr.fget) if attr.fget else None,
                    typed(attr.fset) if attr.fset else None,
                    attr.fdel,
                    attr.__doc__,
                ),
            )
        elif inspect.isfunction(attr) and not inspect.isgeneratorfunction(attr):
            setattr(cls, name, typed(attr))
    return cls


__all__ = ["internal", "typed", "typed_errors"]
