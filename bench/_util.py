"""Shared timing helpers for the benchmarks: sampling, percentiles, throughput, tables.

Conventions every bench follows:
- per-call latency is sampled with `time.perf_counter_ns()` around each call, after
  warm-up calls that are not recorded; p50/p95 come from >= 1,000 samples;
- throughput is total operations / wall time between a barrier release and the
  last worker's return (threads start together, nothing is amortised away);
- one table per bench, values formatted by the helpers below, so benches read alike.
"""

from __future__ import annotations

import gc
import math
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Stats",
    "Table",
    "fmt_count",
    "fmt_rate",
    "fmt_seconds",
    "fmt_us",
    "interleaved",
    "percentile",
    "progress",
    "sample",
    "stats",
    "temp_dir",
    "throughput",
    "timed",
]


# -- statistics ------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of already sorted values."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


@dataclass(frozen=True, slots=True)
class Stats:
    """Latency summary in microseconds."""

    n: int
    p50: float
    p95: float
    p99: float
    mean: float

    def p50_p95(self) -> str:
        return f"{fmt_us(self.p50)} / {fmt_us(self.p95)}"


def stats(samples_ns: Sequence[int]) -> Stats:
    s = sorted(samples_ns)
    us = [v / 1000 for v in s]
    return Stats(
        n=len(us),
        p50=percentile(us, 50),
        p95=percentile(us, 95),
        p99=percentile(us, 99),
        mean=sum(us) / len(us) if us else math.nan,
    )


# -- sampling --------------------------------------------------------------------------


def sample(fn: Callable[[int], object], n: int, *, warmup: int = 100) -> list[int]:
    """Call fn(i) `warmup` times unrecorded, then n times; return each call's ns."""
    for i in range(warmup):
        fn(i)
    gc.collect()
    clock = time.perf_counter_ns
    out = [0] * n
    for i in range(n):
        t0 = clock()
        fn(i)
        out[i] = clock() - t0
    return out


def interleaved(
    fns: dict[str, Callable[[int], object]], n: int, *, block: int = 100, warmup: int = 50
) -> dict[str, list[int]]:
    """Sample several functions in alternating blocks, so machine drift hits all alike.

    Use it to compare scenarios whose difference is expected to be nil (e.g. one
    operation at 10 vs 100,000 rows): a noisy neighbour then skews every scenario
    equally instead of whichever happened to run during it. fn receives a running
    index per function (0..n-1).
    """
    for fn in fns.values():
        for i in range(warmup):
            fn(i)
    gc.collect()
    clock = time.perf_counter_ns
    out: dict[str, list[int]] = {name: [] for name in fns}
    done = 0
    while done < n:
        k = min(block, n - done)
        for name, fn in fns.items():
            rec = out[name]
            for i in range(done, done + k):
                t0 = clock()
                fn(i)
                rec.append(clock() - t0)
        done += k
    return out


def throughput(fn: Callable[[int], object], n: int, *, threads: int = 1) -> float:
    """Operations per second for n calls of fn(i) spread over `threads` threads."""
    if threads <= 1:
        t0 = time.perf_counter()
        for i in range(n):
            fn(i)
        return n / (time.perf_counter() - t0)
    per = n // threads
    barrier = threading.Barrier(threads + 1)
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        barrier.wait()
        try:
            base = k * per
            for i in range(base, base + per):
                fn(i)
        except BaseException as exc:  # surfaced after join
            errors.append(exc)

    pool = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(threads)]
    for t in pool:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return per * threads / elapsed


@contextmanager
def timed() -> Iterator[list[float]]:
    """`with timed() as t: ...` then t[0] is the elapsed seconds."""
    box: list[float] = []
    t0 = time.perf_counter()
    try:
        yield box
    finally:
        box.append(time.perf_counter() - t0)


@contextmanager
def temp_dir(prefix: str) -> Iterator[Path]:
    """A scratch directory removed afterwards, whatever happens."""
    path = Path(tempfile.mkdtemp(prefix=f"opsgate-bench-{prefix}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


_T0 = time.perf_counter()


def progress(message: str) -> None:
    """One line on stderr with the elapsed time, so stdout holds only the table."""
    print(f"[{time.perf_counter() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)


# -- formatting ------------------------------------------------------------------------


def fmt_us(us: float) -> str:
    if math.isnan(us):
        return "n/a"
    if us >= 10_000:
        return f"{us / 1000:,.1f} ms"
    if us >= 100:
        return f"{us:,.0f} µs"
    if us >= 10:
        return f"{us:.1f} µs"
    return f"{us:.2f} µs"


def fmt_rate(per_second: float, unit: str = "/s") -> str:
    return f"{per_second:,.0f}{unit}"


def fmt_seconds(seconds: float) -> str:
    return f"{seconds:,.2f} s" if seconds < 100 else f"{seconds:,.0f} s"


def fmt_count(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1_000 and n % 1_000 == 0:
        return f"{n // 1_000}k"
    return f"{n:,}"


class Table:
    """A plain-text table: header, rows, optional section rules and footnotes."""

    def __init__(self, *columns: str) -> None:
        self.columns = columns
        self._rows: list[tuple[str, ...] | None] = []
        self.notes: list[str] = []

    def row(self, *cells: object) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"row has {len(cells)} cells, table has {len(self.columns)}")
        self._rows.append(tuple("" if c is None else str(c) for c in cells))

    def rule(self) -> None:
        self._rows.append(None)

    def note(self, text: str) -> None:
        self.notes.append(text)

    def render(self) -> str:
        rows = [r for r in self._rows if r is not None]
        widths = [max([len(col)] + [len(r[i]) for r in rows]) for i, col in enumerate(self.columns)]

        def line(cells: Sequence[str]) -> str:
            return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

        sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
        out = [line(self.columns), sep]
        for r in self._rows:
            out.append(sep if r is None else line(r))
        if self.notes:
            out.append("")
            out.extend(self.notes)
        return "\n".join(out)

    def print(self) -> None:
        print(self.render(), flush=True)
