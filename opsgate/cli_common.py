"""What every `opsgate` command shares: the root app, the common options, error
handling and output helpers.

`opsgate.cli` (operator commands) and `opsgate.cli_ops` (operations done as an
agent) both build on this module and never import each other's internals.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from opsgate.errors import OpsgateError, scrub

if TYPE_CHECKING:
    from opsgate.gate import Gate

P = ParamSpec("P")
R = TypeVar("R")

app = typer.Typer(
    name="opsgate",
    help="The gate every privileged operation of an AI agent passes through.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _non_empty(value: str | None) -> str | None:
    """An empty --state-dir (an unset shell variable) must not mean "here"."""
    if value is not None and not value.strip():
        raise typer.BadParameter("the state dir must not be empty")
    return value


StateDir = Annotated[
    str | None,
    typer.Option(
        "--state-dir",
        envvar="OPSGATE_STATE_DIR",
        help="State directory (default .opsgate).",
        show_default=False,
        callback=_non_empty,
    ),
]
JsonOut = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]

# The root --state-dir, for commands that are not given their own.
_ctx_state_dir: dict[str, str | None] = {"value": None}


@app.callback()
def _root(state_dir: StateDir = None) -> None:
    _ctx_state_dir["value"] = state_dir
    if state_dir is not None:  # sub-apps (policy) read it from the environment
        os.environ["OPSGATE_STATE_DIR"] = str(state_dir)


#: Width of output that is not a terminal (a pipe, a file): wide enough that a row is one line.
PIPED_WIDTH = 100_000


def console() -> Console:
    """Where results go (stdout)."""
    # emoji=False: rich would render the ":key:" inside every did:key as an emoji.
    out = Console(soft_wrap=True, highlight=False, emoji=False)
    if not out.is_terminal:
        # Piped or captured: full rows, never fitted to 80 columns (and cut).
        out.width = PIPED_WIDTH
    return out


def new_table(*headers: str, **options: Any) -> Table:
    """A table whose cells fold onto more lines in a narrow terminal, never cut with an
    ellipsis: dids, jtis, approval ids and hashes are copied out of these listings."""
    table = Table(**options)
    for header in headers:
        table.add_column(header, overflow="fold")
    return table


def one_of(*choices: str) -> Callable[[str | None], str | None]:
    """A filter value outside its choices is a usage error (exit 2), not an empty list."""

    def check(value: str | None) -> str | None:
        if value is not None and value not in choices:
            raise typer.BadParameter(f"must be one of {', '.join(choices)}")
        return value

    return check


def print_error(message: str) -> None:
    """One scrubbed line on stderr (hex digests kept, as in the error's --json)."""
    Console(stderr=True, soft_wrap=True, highlight=False, emoji=False).print(
        " ".join(scrub(message, keep_hex=True).split()), markup=False
    )


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def format_time(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


_opened: list[Gate] = []  # gates opened by the running command, closed when it ends


def handle_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn opsgate's typed errors into one line on stderr and exit code 1; close the
    gate the command opened (which signs the events it left unsigned)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except OpsgateError as exc:
            print_error(f"error [{exc.code}]: {exc.message}")
            raise typer.Exit(1) from None
        finally:
            while _opened:
                _opened.pop().close()

    return wrapper


def open_gate(
    state_dir: str | None, *, create: bool = False, publish_policies: bool = False
) -> Gate:
    """Open the gate; only `init` may create one, so a mistyped --state-dir is an
    error rather than a fresh, empty gate that verifies as intact, and a state dir
    opens only on the database bound to it. Only `serve` publishes its policies as
    the ones in force: another command run with an edited copy of the files compares
    (and refuses its own decisions) rather than taking the replicas out."""
    from opsgate.config import resolve_state_dir
    from opsgate.gate import Gate

    path = resolve_state_dir(state_dir if state_dir is not None else _ctx_state_dir["value"])
    gate = Gate.open(path, create=create, publish_policies=publish_policies)
    _opened.append(gate)
    return gate


def operator_actor() -> str:
    """The audit actor of an operator's act on the CLI: `operator:<login>`."""
    return f"operator:{login_name() or 'unknown'}"


def login_name() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name in this environment
        return ""
