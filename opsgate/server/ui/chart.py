"""An agent's trust score history as an SVG chart, rendered on the server.

Pure: a list of (time, score) in, SVG text out. Only presentation attributes
(no `style`), so it renders under a CSP without 'unsafe-inline'; every text is
escaped, though only numbers and dates reach it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from html import escape

WIDTH, HEIGHT = 720, 240
LEFT, RIGHT, TOP, BOTTOM = 48, 16, 16, 32


def _y(score: float) -> float:
    return TOP + (1000 - max(0.0, min(1000.0, score))) * (HEIGHT - TOP - BOTTOM) / 1000


def trust_chart(
    points: Sequence[tuple[float, int]],
    *,
    approval_below: int,
    suspend_below: int,
    title: str,
) -> str:
    """A step chart of the score over its changes (one step per change, oldest
    first), with the approval and suspension thresholds drawn across."""
    n = len(points)
    span = WIDTH - LEFT - RIGHT

    def x(i: int) -> float:
        return LEFT + (span * i / (n - 1) if n > 1 else span / 2)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<rect x="{LEFT}" y="{TOP}" width="{span}" height="{HEIGHT - TOP - BOTTOM}" '
        'fill="#fbfbfd" stroke="#c8c8d0"/>',
    ]
    for score in (0, 250, 500, 750, 1000):
        y = _y(score)
        parts.append(
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" '
            f'fill="#555">{score}</text>'
        )
    for value, colour, label in (
        (approval_below, "#c77700", "approval below"),
        (suspend_below, "#b00020", "suspended below"),
    ):
        y = _y(value)
        parts.append(
            f'<line x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" '
            f'stroke="{colour}" stroke-dasharray="4 3"/>'
        )
        parts.append(
            f'<text x="{WIDTH - RIGHT - 4}" y="{y - 4:.1f}" text-anchor="end" font-size="10" '
            f'fill="{colour}">{escape(label)} {value}</text>'
        )
    if points:
        path: list[str] = []
        for i, (_, score) in enumerate(points):
            y = _y(score)
            if i == 0:
                path.append(f"M{x(0):.1f},{y:.1f}")
            else:
                path.append(f"H{x(i):.1f}V{y:.1f}")
        parts.append(f'<path d="{"".join(path)}" fill="none" stroke="#1f5fbf" stroke-width="2"/>')
        for i, (at, score) in enumerate(points):
            when = datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
            parts.append(
                f'<circle cx="{x(i):.1f}" cy="{_y(score):.1f}" r="3" fill="#1f5fbf">'
                f"<title>{score} at {escape(when)}</title></circle>"
            )
        first = datetime.fromtimestamp(points[0][0], UTC).strftime("%Y-%m-%d %H:%M")
        last = datetime.fromtimestamp(points[-1][0], UTC).strftime("%Y-%m-%d %H:%M")
        parts.append(
            f'<text x="{LEFT}" y="{HEIGHT - 10}" font-size="11" fill="#555">{escape(first)}</text>'
        )
        parts.append(
            f'<text x="{WIDTH - RIGHT}" y="{HEIGHT - 10}" text-anchor="end" font-size="11" '
            f'fill="#555">{escape(last)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
