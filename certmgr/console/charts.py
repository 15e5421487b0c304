"""Server-rendered SVG charts (pure): no script, no inline style — colours come from classes in the console's
stylesheet, so the light and dark themes both apply. Every chart has a ``<title>`` and a ``<desc>`` and the page
shows the same numbers in a table beside it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

WIDTH = 720
HEIGHT = 220
PAD_LEFT = 44
PAD_BOTTOM = 34
PAD_TOP = 12


@dataclass(frozen=True)
class Bar:
    """One bar: its axis label, value, and a class naming how it reads (``ok``, ``soon``, ``critical``, …)."""

    label: str
    value: int
    tone: str = "ok"


TICKS = 4


def _nice_max(value: int) -> int:
    """The top of the axis: :data:`TICKS` whole steps of 1, 2 or 5 times a power of ten covering ``value``."""
    needed = max(1, -(-value // TICKS))
    scale = 1
    while True:
        for step in (1, 2, 5):
            if step * scale >= needed:
                return step * scale * TICKS
        scale *= 10


def bar_chart(
    chart_id: str, title: str, desc: str, bars: Sequence[Bar], *, label_every: int = 1, empty: str = "nothing to show"
) -> Markup:
    """An SVG bar chart of ``bars`` (``role="img"``, labelled by its title and description)."""
    top = _nice_max(max((b.value for b in bars), default=0))
    plot_w = WIDTH - PAD_LEFT - 8
    plot_h = HEIGHT - PAD_BOTTOM - PAD_TOP
    slot = plot_w / max(len(bars), 1)
    width = max(slot * 0.72, 1.0)
    parts = [
        f'<svg class="chart" id="{escape(chart_id)}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-labelledby="{escape(chart_id)}-title {escape(chart_id)}-desc" preserveAspectRatio="xMidYMid meet">',
        f'<title id="{escape(chart_id)}-title">{escape(title)}</title>',
        f'<desc id="{escape(chart_id)}-desc">{escape(desc)}</desc>',
    ]
    for i in range(TICKS + 1):
        value = top * i // TICKS
        y = PAD_TOP + plot_h - plot_h * i / TICKS
        parts.append(f'<line class="grid" x1="{PAD_LEFT}" x2="{WIDTH - 8}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(f'<text class="axis" x="{PAD_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{value}</text>')
    for i, bar in enumerate(bars):
        h = plot_h * bar.value / top if top else 0
        x = PAD_LEFT + slot * i + (slot - width) / 2
        y = PAD_TOP + plot_h - h
        parts.append(
            f'<rect class="bar {escape(bar.tone)}" x="{x:.1f}" y="{y:.1f}" width="{width:.1f}" height="{h:.1f}">'
            f"<title>{escape(bar.label)}: {bar.value}</title></rect>"
        )
        if i % label_every == 0:
            parts.append(
                f'<text class="axis" x="{x + width / 2:.1f}" y="{HEIGHT - PAD_BOTTOM + 16}" '
                f'text-anchor="middle">{escape(bar.label)}</text>'
            )
    if not any(bar.value for bar in bars):
        parts.append(
            f'<text class="empty" x="{PAD_LEFT + plot_w / 2:.1f}" y="{PAD_TOP + plot_h / 2:.1f}" '
            f'text-anchor="middle">{escape(empty)}</text>'
        )
    parts.append(
        f'<line class="baseline" x1="{PAD_LEFT}" x2="{WIDTH - 8}" y1="{PAD_TOP + plot_h}" y2="{PAD_TOP + plot_h}"/>'
    )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every interpolated text above is escaped


__all__ = ["Bar", "bar_chart"]
