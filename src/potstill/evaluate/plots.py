"""Plots as inline SVG strings: no plotting library, no network, nothing to load when viewed."""

from __future__ import annotations

from typing import Sequence

from potstill.evaluate.page_text import escape

BLUE, GREY, RED, GREEN = "#2563eb", "#9ca3af", "#dc2626", "#16a34a"


def _svg(width: float, height: float) -> str:
    """An SVG's opening tag: its natural size, and a viewBox so that a narrower screen (the page's
    ``max-width: 100%``) scales the whole plot down instead of cutting its right side off."""
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
            'role="img" font-family="sans-serif" font-size="12">')


def isolated(name: str) -> str:
    """A name given by the user (a slice, a label, a model) as a run of text of its own, between
    U+2068 FSI and U+2069 PDI, for SVG's ``<text>``, which has no ``<bdi>``: a right-to-left override
    in it (U+202E) stops at its end, not reversing the '(n=4)' drawn after it into '(4=n)'."""
    return f"\u2068{name}\u2069"


def _short(label: str, most: int = 40) -> str:
    """A row label that fits left of the plot: cut in the middle, so that its end ("(n=45)") stays whole.
    Cut before escaping: an escaped '&' is five characters, and a cut could split it."""
    return label if len(label) <= most else label[: most - 14] + "…" + label[-13:]


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    return [lo + (hi - lo) * i / (n - 1) for i in range(n)]


def _fmt(x: float, pct: bool) -> str:
    if pct:
        return f"{100 * x:.0f}%"
    a = abs(x)
    return f"{x:.0f}" if a >= 100 else f"{x:.1f}" if a >= 1 else f"{x:.2g}"


def interval_plot(rows: Sequence[dict], lo: float, hi: float, ref: float | None = None, ref_label: str = "",
                  xlabel: str = "", pct: bool = True) -> str:
    """One line per row: a dot at ``value`` with a whisker from ``lo`` to ``hi``.

    Each row: {label, value, lo, hi, color, ghost (optional second value drawn hollow)}.
    """
    left, width, row_h, top = 260, 420, 24, 26
    h = top + row_h * len(rows) + 44
    x = lambda v: left + (min(max(v, lo), hi) - lo) / (hi - lo) * width  # noqa: E731
    parts = [_svg(left + width + 30, h)]
    for t in _ticks(lo, hi):
        parts.append(f'<line x1="{x(t):.1f}" y1="{top - 6}" x2="{x(t):.1f}" y2="{h - 38}" stroke="#e5e7eb"/>'
                     f'<text x="{x(t):.1f}" y="{h - 24}" text-anchor="middle">{_fmt(t, pct)}</text>')
    if ref is not None:
        parts.append(f'<line x1="{x(ref):.1f}" y1="{top - 10}" x2="{x(ref):.1f}" y2="{h - 38}" stroke="{RED}" '
                     f'stroke-dasharray="4 3"/><text x="{x(ref):.1f}" y="{top - 12}" text-anchor="middle" '
                     f'fill="{RED}">{escape(ref_label)}</text>')
    for i, r in enumerate(rows):
        y = top + row_h * i + row_h / 2
        parts.append(f'<text x="{left - 8}" y="{y + 4:.1f}" text-anchor="end">{escape(_short(str(r["label"])))}</text>')
        if r.get("value") is None:
            continue
        c = r.get("color", BLUE)
        if r.get("lo") is not None and r.get("hi") is not None:
            parts.append(f'<line x1="{x(r["lo"]):.1f}" y1="{y:.1f}" x2="{x(r["hi"]):.1f}" y2="{y:.1f}" '
                         f'stroke="{c}" stroke-width="2"/>')
            for end in (r["lo"], r["hi"]):
                parts.append(f'<line x1="{x(end):.1f}" y1="{y - 5:.1f}" x2="{x(end):.1f}" y2="{y + 5:.1f}" stroke="{c}" stroke-width="2"/>')
        if r.get("ghost") is not None:
            parts.append(f'<circle cx="{x(r["ghost"]):.1f}" cy="{y:.1f}" r="4" fill="white" stroke="{GREY}" stroke-width="2"/>')
        parts.append(f'<circle cx="{x(r["value"]):.1f}" cy="{y:.1f}" r="5" fill="{c}"><title>{escape(str(r["label"]))}: '
                     f'{_fmt(r["value"], pct)} [{_fmt(r.get("lo") or 0, pct)}, {_fmt(r.get("hi") or 0, pct)}]</title></circle>')
    parts.append(f'<text x="{left + width / 2}" y="{h - 6}" text-anchor="middle">{escape(xlabel)}</text></svg>')
    return "".join(parts)


def line_plot(series: Sequence[tuple[str, Sequence[float], Sequence[float], str]], xlabel: str, ylabel: str,
              mark_x: float | None = None, mark_label: str = "") -> str:
    """Lines of (name, xs, ys, colour) on shared axes starting at zero, with an optional vertical marker."""
    left, width, top, height = 70, 480, 20, 240
    xs_all = [v for _, xs, _, _ in series for v in xs] or [1.0]
    ys_all = [v for _, _, ys, _ in series for v in ys] or [1.0]
    xmax, ymax = max(xs_all) or 1.0, max(ys_all) or 1.0
    x = lambda v: left + v / xmax * width  # noqa: E731
    y = lambda v: top + height - v / ymax * height  # noqa: E731
    parts = [_svg(left + width + 170, top + height + 50)]
    for t in _ticks(0, xmax):
        parts.append(f'<line x1="{x(t):.1f}" y1="{top}" x2="{x(t):.1f}" y2="{top + height}" stroke="#e5e7eb"/>'
                     f'<text x="{x(t):.1f}" y="{top + height + 16}" text-anchor="middle">{_fmt(t, False)}</text>')
    for t in _ticks(0, ymax):
        parts.append(f'<line x1="{left}" y1="{y(t):.1f}" x2="{left + width}" y2="{y(t):.1f}" stroke="#e5e7eb"/>'
                     f'<text x="{left - 6}" y="{y(t) + 4:.1f}" text-anchor="end">{_fmt(t, False)}</text>')
    for i, (name, xs, ys, colour) in enumerate(series):
        pts = " ".join(f"{x(a):.1f},{y(b):.1f}" for a, b in zip(xs, ys))
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="2.5"/>'
                     f'<rect x="{left + width + 14}" y="{top + 18 * i}" width="12" height="3" fill="{colour}"/>'
                     f'<text x="{left + width + 30}" y="{top + 18 * i + 5}">{escape(name)}</text>')
    if mark_x is not None and 0 <= mark_x <= xmax:
        parts.append(f'<line x1="{x(mark_x):.1f}" y1="{top}" x2="{x(mark_x):.1f}" y2="{top + height}" stroke="{GREEN}" '
                     f'stroke-dasharray="4 3"/><text x="{x(mark_x) + 4:.1f}" y="{top + 12}" fill="{GREEN}">'
                     f'{escape(mark_label)}</text>')
    parts.append(f'<text x="{left + width / 2}" y="{top + height + 38}" text-anchor="middle">{escape(xlabel)}</text>'
                 f'<text x="14" y="{top + height / 2}" text-anchor="middle" transform="rotate(-90 14 {top + height / 2})">'
                 f'{escape(ylabel)}</text></svg>')
    return "".join(parts)


def reliability_plot(bins: Sequence[dict]) -> str:
    """Accuracy per confidence bin as bars, against the diagonal of perfect calibration."""
    left, size, top = 50, 240, 16
    x = lambda v: left + v * size  # noqa: E731
    y = lambda v: top + size - v * size  # noqa: E731
    parts = [_svg(left + size + 20, top + size + 44),
             f'<rect x="{left}" y="{top}" width="{size}" height="{size}" fill="none" stroke="#d1d5db"/>']
    for b in bins:
        parts.append(f'<rect x="{x(b["lo"]) + 1:.1f}" y="{y(b["accuracy"]):.1f}" width="{(b["hi"] - b["lo"]) * size - 2:.1f}" '
                     f'height="{b["accuracy"] * size:.1f}" fill="{BLUE}" opacity="0.75"><title>confidence '
                     f'{b["lo"]:.1f}-{b["hi"]:.1f}: {b["n"]} examples, accuracy {b["accuracy"]:.0%}, mean confidence '
                     f'{b["confidence"]:.0%}</title></rect>')
    parts.append(f'<line x1="{x(0)}" y1="{y(0)}" x2="{x(1)}" y2="{y(1)}" stroke="{RED}" stroke-dasharray="4 3"/>')
    for t in _ticks(0, 1, 3):
        parts.append(f'<text x="{x(t):.1f}" y="{top + size + 16}" text-anchor="middle">{_fmt(t, True)}</text>'
                     f'<text x="{left - 6}" y="{y(t) + 4:.1f}" text-anchor="end">{_fmt(t, True)}</text>')
    parts.append(f'<text x="{left + size / 2}" y="{top + size + 36}" text-anchor="middle">confidence (top label probability)'
                 f'</text></svg>')
    return "".join(parts)
