"""Progress of a deploy's long steps (copy, command, health checks), for a CLI to show.

An executor calls its `progress` hook (default: none, silent) with a
`DeployProgress` at each step. `RichProgress` turns those calls into a Rich
progress display; any other callable works too (a log line, a test recorder).
A hook that raises is switched off for the rest of the run: showing progress
never fails a deploy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

Step = Literal["copy", "switch", "command", "health", "restore", "prune", "done"]


@dataclass(frozen=True, slots=True)
class DeployProgress:
    """One step of a deploy or rollback. `done`/`total` are bytes for a copy and
    seconds for a health gate (`total` is the deadline); None when unknown."""

    capability: str
    step: Step
    message: str
    done: float | None = None
    total: float | None = None


ProgressHook = Callable[[DeployProgress], None]


class SafeHook:
    """Calls a hook, and stops calling it after it first raises."""

    def __init__(self, hook: ProgressHook | None) -> None:
        self._hook = hook

    def __call__(self, event: DeployProgress) -> None:
        if self._hook is None:
            return
        try:
            self._hook(event)
        except Exception:  # noqa: BLE001 - a broken display never fails the deploy
            self._hook = None


class RichProgress:
    """A Rich display of deploy progress: one task line per step.

    with RichProgress() as show:
        executor.progress = show
        ...  # run the deploy through the gate
    """

    def __init__(self, console: Console | None = None) -> None:
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.fields[step]:<8}[/bold] {task.description}"),
            BarColumn(),
            TextColumn("{task.fields[amount]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._progress.stop()

    def __call__(self, event: DeployProgress) -> None:
        key = event.step if event.step in ("copy", "health", "command") else "other"
        task = self._tasks.get(key)
        total = event.total
        amount = _amount(event)
        if task is None:
            task = self._progress.add_task(
                event.message, total=total, step=event.step, amount=amount
            )
            self._tasks[key] = task
        self._progress.update(
            task,
            description=event.message,
            completed=event.done or 0,
            total=total,
            step=event.step,
            amount=amount,
        )
        if event.step == "done":
            for t in self._tasks.values():
                self._progress.update(t, completed=self._progress.tasks[t].total or 0)


def _amount(event: DeployProgress) -> str:
    if event.done is None:
        return ""
    if event.step == "copy":
        mb = 1024 * 1024
        total = f"/{event.total / mb:.1f}" if event.total is not None else ""
        return f"{event.done / mb:.1f}{total} MB"
    total = f"/{event.total:.0f}" if event.total is not None else ""
    return f"{event.done:.1f}{total} s"


__all__ = ["DeployProgress", "ProgressHook", "RichProgress", "SafeHook", "Step"]
