"""The PDF renderer of every report: pages go to the output as the rows arrive, so memory stays flat.

Why by hand: a layout engine keeps every page of a document until it is saved. reportlab's platypus held ~740 MiB
for 100,000 rows; even its low-level canvas (``reportlab.pdfgen.canvas``, page compression on, TrueType
embedded), drawing less than this writer does, grew to 217 MiB peak RSS in 22.7 s where this writer stays at
~105 MiB in ~10 s (``docs/benchmarks.md``, ``bench/reports.py --modes rl-canvas``). This writer emits a plain PDF
1.4: one Flate-compressed content stream per page as soon as the page is full, and what cannot be known before
the last row at the end. It keeps one page of rows, a sample of the first rows (for the column widths), two
integers per page, bounded caches of encoded values and the set of glyphs drawn.

Layout (A4 landscape):

* **Page one** — the summary (figures and breakdowns, :mod:`certmgr.reports.summary`), the evidence that binds
  the report to the audit log (:mod:`certmgr.reports.evidence`) and a bar chart. It is written *last*, when
  every row has been tallied, and listed first in the page tree, so it sums up exactly the rows that follow.
* **Every page** — a header with the report's title, when and by whom it was generated, the time zone of its
  times and "page X of Y" (Y is a form XObject written at the end), and a footer saying how to check the file.
* **Pages two on** — the rows as a table: column widths from the content (the first :data:`SAMPLE_ROWS` rows),
  the column names repeated on every page, long values wrapped onto up to :data:`MAX_LINES` lines and then
  abbreviated with "…" (the CSV/JSON keep the full value), numbers right-aligned, times in the report's time
  zone to the second, the row count after the last row.

Text is drawn with embedded TrueType subsets (:mod:`certmgr.reports.fonts`): any script, right-to-left in
visual order, a character no font has drawn as U+FFFD and counted on page one. Body text is 8 pt.

Charts: one filled rectangle per non-empty bar in :data:`BAR_RGB` (inside one ``q … Q``), horizontal bars for
categories, vertical bars for periods (the expiry forecast).
"""

from __future__ import annotations

import bisect
import functools
import itertools
import math
import unicodedata
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Protocol

from certmgr.reports.evidence import Evidence
from certmgr.reports.fonts import FontChain, FontSet, visual_order
from certmgr.reports.queries import Cell, ReportSpec, Row
from certmgr.reports.summary import Chart, Summary, format_count, format_time

PAGE_W, PAGE_H = 842.0, 595.0  # A4 landscape, points
MARGIN = 28.0
BODY = 8.0  # body font size (points)
BODY_SIZE = b"%.1f" % BODY
LINE = 9.6  # line height of body text
PAD = 2.5  # cell padding, left and right
MAX_LINES = 3
HEADER_LINES = 2  # a column name may take two lines
SAMPLE_ROWS = 200
MAX_COLUMN = 260.0
MIN_WORD = 100.0
GROWTH = 3  # characters of room beyond the longest sampled value
CHART_H = 175.0
BAR_RGB = (0.267, 0.447, 0.769)  # #4472c4
HEADER_RGB = (0.85, 0.88, 0.95)
STRIPE_GRAY = 0.955
TEXT_GRAY = 0.3
FLUSH_BYTES = 64 * 1024
ENCODE_CACHE = 8192
_BREAK_AFTER = frozenset(" ,;:/_-.@|)]}")

__all__ = ["BAR_RGB", "FLUSH_BYTES", "ByteSink", "Cover", "PdfStyle", "iter_pdf", "write_pdf_streaming"]


class ByteSink(Protocol):
    """Where rendered bytes go: an open binary file, a ``BytesIO``, a hashing wrapper."""

    def write(self, data: bytes, /) -> object: ...


@dataclass(frozen=True)
class PdfStyle:
    """How a report is shown: the time zone of its times and its fonts."""

    tz: tzinfo
    fonts: FontSet


@dataclass(frozen=True)
class Cover:
    """What page one states: the summary, the evidence (None for a report made without an audit log) and the
    number of rows."""

    summary: Summary
    evidence: Evidence | None
    rows: int


# --- low-level objects ------------------------------------------------------------------------------------
class _Writer:
    """Numbers the objects, remembers their offsets and buffers the bytes until :meth:`take`."""

    def __init__(self) -> None:
        self.pos = 0
        self.offsets: dict[int, int] = {}
        self.next_id = 1
        self._parts: list[bytes] = []
        self._buffered = 0

    def reserve(self) -> int:
        number = self.next_id
        self.next_id += 1
        return number

    def write(self, data: bytes) -> None:
        self._parts.append(data)
        self.pos += len(data)
        self._buffered += len(data)

    def obj(self, number: int, body: bytes) -> None:
        self.offsets[number] = self.pos
        self.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")

    def stream(self, number: int, content: bytes, extra: bytes = b"") -> None:
        packed = zlib.compress(content, 6)
        self.obj(
            number,
            b"<< /Length %d /Filter /FlateDecode %s>>\nstream\n" % (len(packed), extra) + packed + b"\nendstream",
        )

    @property
    def full(self) -> bool:
        return self._buffered >= FLUSH_BYTES

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts, self._buffered = [], 0
        return data


def _utf16(text: str) -> bytes:
    return b"<FEFF" + text.encode("utf-16-be").hex().upper().encode("ascii") + b">"


Encoded = tuple[tuple[tuple[bytes, int], bytes], ...]  # ((resource prefix, font index), b"(...) Tj") per run


class _Fonts:
    """The body chain (resource names ``/R0``…) and the bold chain (``/B0``…) of one document, and a bounded
    cache of encoded strings (reports repeat most of their values: models, states, times)."""

    def __init__(self, fonts: FontSet) -> None:
        self.regular = FontChain(fonts.chain)
        bold_paths = (fonts.bold, *fonts.chain[1:]) if fonts.bold is not None else None
        self.bold = FontChain(bold_paths) if bold_paths is not None else self.regular
        self.chains: list[tuple[bytes, FontChain]] = [(b"R", self.regular)]
        if self.bold is not self.regular:
            self.chains.append((b"B", self.bold))
        self._cache: dict[tuple[str, bool], tuple[Encoded, float]] = {}
        self._wrapped: dict[tuple[str, float], list[tuple[Encoded, float]]] = {}

    def chain(self, bold: bool) -> FontChain:
        return self.bold if bold else self.regular

    def encode(self, text: str, bold: bool = False) -> tuple[Encoded, float]:
        """``text`` (logical order, one line) as text-showing operators per font run, and its width in 1/1000
        of the font size; the glyphs count as drawn. Cached (bounded)."""
        key = (text, bold)
        hit = self._cache.get(key)
        if hit is None:
            hit = self.encode_once(text, bold)
            if len(self._cache) >= ENCODE_CACHE:
                self._cache.clear()
            self._cache[key] = hit
        return hit

    def encode_once(self, text: str, bold: bool = False) -> tuple[Encoded, float]:
        """:meth:`encode` without the cache (for values that rarely repeat)."""
        prefix = b"B" if bold and self.bold is not self.regular else b"R"
        if text.isascii() and text.isprintable():  # no bidi, no control characters: maybe all in font 0
            fast = self.chain(bold).primary(text)
            if fast is not None:
                return (((prefix, 0), b"(" + fast[0] + b") Tj"),), fast[1]
        runs = self.chain(bold).runs(visual_order(text))
        if len(runs) == 1:
            run = runs[0]
            return ((((prefix, run.font), b"(" + run.codes + b") Tj"),), run.width)
        encoded = tuple(((prefix, r.font), b"(" + r.codes + b") Tj") for r in runs)
        return encoded, sum(r.width for r in runs)

    def wrap(self, text: str, width: float) -> list[tuple[Encoded, float]]:
        """``text`` wrapped into ``width`` points (:func:`fit_lines`), each line encoded."""
        return [self.encode_once(line) for line in fit_lines(self.regular, text, width)]

    def wrapped(self, text: str, width: float) -> list[tuple[Encoded, float]]:
        """:meth:`wrap`, cached (bounded) for values that repeat."""
        key = (text, width)
        hit = self._wrapped.get(key)
        if hit is None:
            hit = self.wrap(text, width)
            if len(self._wrapped) >= ENCODE_CACHE:
                self._wrapped.clear()
            self._wrapped[key] = hit
        return hit

    @property
    def missing(self) -> int:
        return sum(chain.missing for _, chain in self.chains)


class _Text:
    """Text operators inside one ``BT … ET`` block, switching fonts only when needed."""

    def __init__(self, fonts: _Fonts) -> None:
        self.fonts = fonts
        self.ops: list[bytes] = []
        self.font: tuple[tuple[bytes, int], bytes] | None = None  # the current font and size

    def show(self, x: float, y: float, text: str, size: float = BODY, *, bold: bool = False) -> None:
        """Draw ``text`` (logical order, one line) with its left end at (x, y)."""
        if text:
            self.put(b"%.2f %.2f" % (x, y), self.fonts.encode(text, bold)[0], b"%.1f" % size)

    def put(self, position: bytes, encoded: Encoded, size: bytes = BODY_SIZE) -> None:
        """Draw encoded text at ``position`` (``b"x y"``)."""
        ops = self.ops
        ops.append(b"1 0 0 1 " + position + b" Tm")
        for font, shown in encoded:
            if (font, size) != self.font:
                ops.append(b"/%s%d %s Tf" % (font[0], font[1], size))
                self.font = (font, size)
            ops.append(shown)

    def gray(self, level: float) -> None:
        self.ops.append(b"%.2f g" % level)

    def block(self) -> bytes:
        if not self.ops:
            return b""
        return b"BT\n" + b"\n".join(self.ops) + b"\nET"


def _width(fonts: _Fonts, text: str, size: float = BODY, *, bold: bool = False) -> float:
    return fonts.chain(bold).width(text) * size / 1000.0


def fit_lines(chain: FontChain, text: str, width: float, size: float = BODY, max_lines: int = MAX_LINES) -> list[str]:
    """``text`` broken into lines no wider than ``width`` points (at a space where possible, else after another
    separator, else anywhere), at most ``max_lines``; the last line ends in "…" if text was left over."""
    limit = width * 1000.0 / size + 1.0  # a rounding hair: a value as wide as its column fits
    advance = chain.char_widths(text)
    if sum(advance) <= limit:
        return [text]
    ends = list(itertools.accumulate(advance))  # ends[i]: width of text[: i + 1]
    lines: list[str] = []
    start, n = 0, len(text)
    while start < n:
        while start < n and text[start] == " ":
            start += 1
        if start >= n:
            break
        before = ends[start - 1] if start else 0.0
        if ends[-1] - before <= limit:
            lines.append(text[start:])
            break
        if len(lines) == max_lines - 1:
            room = limit - chain.width("…")
            stop = bisect.bisect_right(ends, before + room, start)
            lines.append(text[start:stop].rstrip() + "…")
            break
        stop = max(bisect.bisect_right(ends, before + limit, start), start + 1)  # text[start:stop] fits
        cut = text.rfind(" ", start, stop) + 1
        if cut <= start:
            cut = max((text.rfind(c, start, stop - 1) + 1 for c in _BREAK_AFTER), default=0)
        if cut <= start:
            cut = stop
        lines.append(text[start:cut].rstrip())
        start = cut
    return lines


# --- tables -----------------------------------------------------------------------------------------------
def _header_label(column: str) -> str:
    return column.replace("_", " ")


def header_width(fonts: _Fonts, column: str) -> float:
    """The narrowest width (points, no padding) in which the name of ``column`` is drawn whole on at most
    :data:`HEADER_LINES` lines (broken between words, as :func:`fit_lines` breaks it)."""
    label = _header_label(column)
    words = label.split()
    whole = _width(fonts, label, bold=True)
    candidates = {whole}
    for k in range(1, len(words)):  # the two lines of each break between words (fit_lines may need the space)
        first, rest = " ".join(words[:k]), _width(fonts, " ".join(words[k:]), bold=True)
        candidates.add(max(_width(fonts, first, bold=True), rest))
        candidates.add(max(_width(fonts, first + " ", bold=True), rest))
    for width in sorted(candidates):  # the narrowest in which fit_lines itself draws the name whole
        if " ".join(fit_lines(fonts.bold, label, width, BODY, HEADER_LINES)) == label:
            return width
    return whole


def column_widths(
    fonts: _Fonts,
    columns: tuple[str, ...],
    sample: list[list[str]],
    available: float,
    grow: frozenset[int] = frozenset(),
) -> list[float]:
    """Widths (points, padding included) that fit ``available``: each column as wide as its widest sampled
    value (at most :data:`MAX_COLUMN`) when everything fits; otherwise the widest columns are capped at one
    level (their values wrap: a time breaks between date and time), but no column gets narrower than its
    longest word (at most :data:`MIN_WORD`) nor than its name on :data:`HEADER_LINES` lines
    (:func:`header_width`: an empty or short column keeps a readable header). Only if even these floors do not
    fit are all columns shrunk alike. The values of the columns in ``grow`` (mostly distinct ones: later
    rows may hold longer values) get :data:`GROWTH` characters of room beyond the longest sampled one."""
    natural: list[float] = []
    floor: list[float] = []
    for i, column in enumerate(columns):
        head = header_width(fonts, column)
        widest = max((_width(fonts, row[i]) for row in sample), default=0.0)
        if i in grow:  # later rows may be longer than the sampled ones (10.0.0.9, then 10.1.134.160)
            longest = max((len(row[i]) for row in sample), default=0)
            widest *= (longest + GROWTH) / longest if longest else 1.0
        word = max((_width(fonts, w) for row in sample for w in row[i].split()), default=0.0)
        floor.append(max(head, min(word, MIN_WORD)) + 2 * PAD)
        natural.append(max(min(max(head, widest), MAX_COLUMN) + 2 * PAD, floor[-1]))
    if sum(natural) <= available:  # grow in proportion: later rows may hold wider values than the sample
        return [w * available / sum(natural) for w in natural]

    def capped(level: float) -> list[float]:
        return [max(f, min(n, level)) for f, n in zip(floor, natural, strict=True)]

    low, high = 0.0, max(natural)
    for _ in range(40):  # bisect the cap: the widest level at which everything fits
        middle = (low + high) / 2
        if sum(capped(middle)) <= available:
            low = middle
        else:
            high = middle
    widths = capped(low)
    total = sum(widths)
    if total > available:  # even the floors do not fit: shrink everything alike
        widths = [w * available / total for w in widths]
    else:
        short = [i for i, (w, n) in enumerate(zip(widths, natural, strict=True)) if w < n]
        for i in short or range(len(widths)):
            widths[i] += (available - total) / len(short or widths)
    return widths


# --- charts -----------------------------------------------------------------------------------------------
def _chart(fonts: _Fonts, chart: Chart, x0: float, y0: float, w: float, h: float) -> tuple[list[bytes], _Text]:
    """Graphics operators and text of ``chart`` inside the box (x0, y0, w, h)."""
    ops: list[bytes] = []
    text = _Text(fonts)
    text.show(x0, y0 + h - 10.0, chart.title, 9.0, bold=True)
    bars = list(chart.bars)
    peak = max((n for _, n in bars), default=0)
    top = y0 + h - 22.0
    rects: list[bytes] = []
    if not bars or peak == 0:
        text.gray(TEXT_GRAY)
        text.show(x0, top - 12.0, "none: nothing to chart", BODY)
        text.gray(0.0)
        return ops, text
    if chart.vertical:
        base, left = y0 + 14.0, x0 + 30.0
        height = top - base - 12.0
        slot = (x0 + w - left) / len(bars)
        bar_w = slot * 0.7
        ops.append(b"0 G 0.5 w %.2f %.2f m %.2f %.2f l S" % (left, base, x0 + w, base))
        widest = max(_width(fonts, label) for label, _ in bars) + 4.0
        every = max(1, math.ceil(widest / slot))  # too many bars for their labels: label every n-th ...
        last = len(bars) - 1  # ... and always the last ("later"), dropping a label too close before it
        labelled = {i for i in range(0, last, every) if last - i >= every or i == 0} | {last}
        counts = _width(fonts, format_count(peak)) + 2.0 <= slot
        if not counts:  # no room for a count above each bar: a scale instead
            ops.append(b"0 G 0.5 w %.2f %.2f m %.2f %.2f l S" % (left, base, left, base + height))
            text.show(left - 4.0 - _width(fonts, format_count(peak)), base + height - 3.0, format_count(peak))
            text.show(left - 4.0 - _width(fonts, "0"), base - 3.0, "0")
        for i, (label, n) in enumerate(bars):
            middle = left + i * slot + slot / 2
            bar_h = height * n / peak
            if n > 0:
                rects.append(b"%.2f %.2f %.2f %.2f re" % (middle - bar_w / 2, base, bar_w, bar_h))
            if counts:
                count = format_count(n)
                text.show(middle - _width(fonts, count) / 2, base + bar_h + 2.5, count)
            if i in labelled:
                text.show(middle - _width(fonts, label) / 2, base - 10.0, label)
    else:
        row_h = min(16.0, (top - y0) / len(bars))
        label_w = min(220.0, w * 0.3)
        left = x0 + label_w + 6.0
        length = x0 + w - left - 50.0
        ops.append(b"0 G 0.5 w %.2f %.2f m %.2f %.2f l S" % (left, top, left, top - row_h * len(bars)))
        for i, (label, n) in enumerate(bars):
            y = top - (i + 1) * row_h
            bar_len = length * n / peak
            if n > 0:
                rects.append(b"%.2f %.2f %.2f %.2f re" % (left, y + row_h * 0.15, bar_len, row_h * 0.7))
            shown = fit_lines(fonts.regular, label, label_w, BODY, 1)[0]
            text.show(left - 4.0 - _width(fonts, shown), y + row_h * 0.3, shown)
            text.show(left + bar_len + 4.0, y + row_h * 0.3, format_count(n))
    if rects:
        ops.append(b"q %.3f %.3f %.3f rg\n" % BAR_RGB + b"\n".join(rects) + b"\nf Q")
    return ops, text


# --- the document -----------------------------------------------------------------------------------------
def iter_pdf(
    spec: ReportSpec,
    rows: Iterable[Row],
    cover: Callable[[], Cover],
    style: PdfStyle,
    evidence: Evidence | None = None,
) -> Iterator[bytes]:
    """The report as a PDF, in pieces of about :data:`FLUSH_BYTES` (a page is never held back longer).

    ``cover`` is called once every row has been read: it gives what page one states. ``evidence`` (known
    before the rows) names the generator in every page's header.

    Raises:
        ConfigError: if the report fonts cannot be read.
        Whatever ``rows`` raises while it is consumed (e.g. a database error).
    """
    fonts = _Fonts(style.fonts)
    tz = style.tz
    w = _Writer()
    w.write(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    catalog, pages_id, resources_id, total_id, info_id = (w.reserve() for _ in range(5))
    cover_ids = (w.reserve(), w.reserve())
    kids: list[int] = [cover_ids[1]]
    available = PAGE_W - 2 * MARGIN
    time_index = {i for i, c in enumerate(spec.columns) if c in spec.time_columns}
    zone = getattr(tz, "key", None) or tz.tzname(spec.generated_at) or "UTC"
    made = f"Generated {format_time(spec.generated_at, tz)}"
    if evidence is not None:
        made += f" by {evidence.generated_by} (via {evidence.via})"
    params = ", ".join(f"{k}={v}" for k, v in spec.params.as_dict(spec.kind).items() if v is not None)
    subtitle = f"{made} · times in {zone}" + (f" · parameters: {params}" if params else "")

    @functools.lru_cache(maxsize=4096)
    def local_time(value: Cell) -> str:
        if not isinstance(value, str):
            return str(value)
        try:
            return datetime.fromisoformat(value).astimezone(tz).strftime("%Y-%m-%d %H:%M:%S")
        except ValueError:
            return value

    def cell(i: int, value: Cell) -> str:
        if value is None:
            return ""
        if i in time_index and isinstance(value, str):
            return local_time(value)
        return str(value)

    def page_frame(number: int) -> tuple[list[bytes], _Text, float]:
        """Header and footer of page ``number``; returns the graphics, the text and the y below the header."""
        text = _Text(fonts)
        top = PAGE_H - MARGIN
        title = fit_lines(fonts.bold, spec.title, available - 120.0, 12.0, 1)[0]
        text.show(MARGIN, top - 10.0, title, 12.0, bold=True)
        label = f"page {number} of "
        text.show(PAGE_W - MARGIN - 40.0 - _width(fonts, label), top - 10.0, label)
        text.gray(TEXT_GRAY)
        text.show(MARGIN, top - 23.0, fit_lines(fonts.regular, subtitle, available, BODY, 1)[0])
        footer = f"certmgr {spec.kind.value} report · check it with its signed manifest: certmgr report verify FILE"
        text.show(MARGIN, MARGIN / 2, footer)
        text.gray(0.0)
        graphics = [
            b"q 0.6 G 0.5 w %.2f %.2f m %.2f %.2f l S Q" % (MARGIN, top - 28.0, PAGE_W - MARGIN, top - 28.0),
            b"q 1 0 0 1 %.2f %.2f cm /Tot Do Q" % (PAGE_W - MARGIN - 40.0, top - 10.0),
        ]
        return graphics, text, top - 34.0

    def emit_page(page_id: int, content_id: int, graphics: list[bytes], text: _Text, body: bytes = b"") -> None:
        content = b"\n".join([*graphics, text.block(), body])
        w.stream(content_id, content)
        w.obj(
            page_id,
            b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 %d %d] /Contents %d 0 R /Resources %d 0 R >>"
            % (pages_id, PAGE_W, PAGE_H, content_id, resources_id),
        )

    # the table pages, written as the rows arrive
    iterator = iter(rows)
    sample: list[Row] = []
    for row in iterator:
        sample.append(row)
        if len(sample) >= SAMPLE_ROWS:
            break
    texts = [[cell(i, v) for i, v in enumerate(row)] for row in sample]
    # mostly distinct values (MACs, addresses) may grow; repeated ones (models, states, times) are a vocabulary
    distinct = [len({r[i] for r in texts}) > len(texts) // 2 for i in range(len(spec.columns))]
    grow = frozenset(i for i, d in enumerate(distinct) if d and i not in time_index)
    widths = column_widths(fonts, spec.columns, texts, available, grow)
    del texts
    lefts = [MARGIN + sum(widths[:i]) for i in range(len(widths))]
    headers = [
        fit_lines(fonts.bold, _header_label(c), widths[i] - 2 * PAD, BODY, HEADER_LINES)
        for i, c in enumerate(spec.columns)
    ]
    header_h = max((len(lines) for lines in headers), default=1) * LINE + 3.0
    bottom = MARGIN + 14.0
    count = 0
    page: _Page | None = None

    def start_page() -> _Page:
        graphics, text, y_top = page_frame(len(kids) + 1)
        graphics.append(
            b"q %.3f %.3f %.3f rg %.2f %.2f %.2f %.2f re f Q"
            % (*HEADER_RGB, MARGIN, y_top - header_h, available, header_h)
        )
        for i, lines in enumerate(headers):
            for k, line in enumerate(lines):
                text.show(lefts[i] + PAD, y_top - (k + 1) * LINE + 1.5, line, bold=True)
        return _Page(graphics, text, y_top - header_h)

    def finish_page(current: _Page, note: str | None = None) -> None:
        if note is not None:
            current.text.show(MARGIN, max(current.y - LINE - 2.0, bottom), note)
        body = b""
        if current.stripes:
            body = b"q %.3f g\n" % STRIPE_GRAY + b"\n".join(current.stripes) + b"\nf Q"
        page_id, content_id = w.reserve(), w.reserve()
        emit_page(page_id, content_id, [*current.graphics, body], current.text)
        kids.append(page_id)

    inner = [w - 2 * PAD for w in widths]
    limits = [w * 1000.0 / BODY + 1.0 for w in inner]
    left_at = [b"%.2f" % (x + PAD) for x in lefts]
    right_edge = [lefts[i] + widths[i] - PAD for i in range(len(widths))]
    # values that repeat are encoded once (bounded cache); mostly distinct ones every time
    repeat = [not d for d in distinct]
    plan = [
        (i, local_time if i in time_index else str, fonts.encode if repeat[i] else fonts.encode_once)
        for i in range(len(spec.columns))
    ]

    def draw(row: Row) -> None:
        nonlocal page, count
        cells: list[tuple[int, list[tuple[Encoded, float]]]] = []
        depth = 1
        for i, show, encode in plan:
            value = row[i]
            if value is None:
                continue
            shown = show(value)
            if not shown:
                continue
            one = encode(shown)
            if one[1] <= limits[i]:
                cells.append((i, [one]))
            else:
                lines = fonts.wrapped(shown, inner[i]) if repeat[i] else fonts.wrap(shown, inner[i])
                cells.append((i, lines))
                depth = max(depth, len(lines))
        height = depth * LINE + 1.0
        if page is None or page.y - height < bottom:
            if page is not None:
                finish_page(page)
            page = start_page()
        y = page.y
        if count % 2:
            page.stripes.append(b"%.2f %.2f %.2f %.2f re" % (MARGIN, y - height, available, height))
        text = page.text
        ops = text.ops
        first_y = b" %.2f Tm" % (y - LINE + 1.8)
        for i, lines in cells:
            right = isinstance(row[i], int)
            for k, (line, width) in enumerate(lines):
                y_at = first_y if k == 0 else b" %.2f Tm" % (y - (k + 1) * LINE + 1.8)
                x_at = b"%.2f" % (right_edge[i] - width * BODY / 1000.0) if right else left_at[i]
                ops.append(b"1 0 0 1 " + x_at + y_at)
                for font, codes in line:
                    if (font, BODY_SIZE) != text.font:
                        ops.append(b"/%s%d %s Tf" % (font[0], font[1], BODY_SIZE))
                        text.font = (font, BODY_SIZE)
                    ops.append(codes)
        page.y = y - height
        count += 1

    for row in sample:
        draw(row)
    del sample
    for row in iterator:
        draw(row)
        if w.full:
            yield w.take()
    if page is None:
        page = start_page()
        page.text.show(MARGIN + PAD, page.y - LINE, "none: this report has no rows")
        page.y -= LINE
    finish_page(page, f"{format_count(count)} rows." if count != 1 else "1 row.")
    yield w.take()

    # page one, now that every row has been tallied
    facts = cover()
    graphics, text, y_top = page_frame(1)
    floor = MARGIN + 16.0 + CHART_H + 6.0
    left_w = 430.0
    _draw_summary(fonts, text, facts.summary, MARGIN, y_top - 6.0, left_w, floor)
    right_x = MARGIN + left_w + 20.0
    y = _draw_evidence(fonts, text, facts.evidence, tz, right_x, y_top - 6.0, PAGE_W - MARGIN - right_x, floor)
    pages_note = f"Rows: {format_count(facts.rows)}" + (
        f", on pages 2 to {len(kids)}" if len(kids) > 2 else ", on page 2"
    )
    y = _paragraph(fonts, text, pages_note, right_x, y - 4.0, PAGE_W - MARGIN - right_x, floor)
    chart_ops: list[bytes] = []
    chart_text = b""
    if facts.summary.chart is not None:
        chart_ops, chart_t = _chart(fonts, facts.summary.chart, MARGIN, MARGIN + 16.0, available, CHART_H)
        chart_text = chart_t.block()
    if fonts.missing:
        what = "1 character" if fonts.missing == 1 else f"{format_count(fonts.missing)} characters"
        _paragraph(
            fonts,
            text,
            f"{what} could not be drawn with the report fonts and are shown as \ufffd (the CSV/JSON keep them)",
            right_x,
            y - 4.0,
            PAGE_W - MARGIN - right_x,
            floor - LINE,
        )
    emit_page(cover_ids[1], cover_ids[0], [*graphics, *chart_ops], text, chart_text)

    # what is known only now: the page count, the fonts, the page tree
    total = _Text(fonts)
    total.show(0.0, 0.0, str(len(kids)))
    font_refs: list[tuple[bytes, int, int]] = []  # (resource name, chain index, object number)
    for prefix, chain in fonts.chains:
        for index in range(len(chain.paths)):
            if chain.used[index]:
                font_refs.append((b"%s%d" % (prefix, index), index, w.reserve()))
    font_dict = b"<< " + b" ".join(b"/%s %d 0 R" % (name, number) for name, _, number in font_refs) + b" >>"
    w.stream(
        total_id,
        total.block(),
        b"/Type /XObject /Subtype /Form /BBox [0 -3 80 12] /Resources << /Font %s >> " % font_dict,
    )
    chains = dict(fonts.chains)
    for name, index, number in font_refs:
        _write_font(w, chains[name[:1]], index, number)
    w.obj(
        resources_id,
        b"<< /Font %s /XObject << /Tot %d 0 R >> /ProcSet [/PDF /Text] >>" % (font_dict, total_id),
    )
    w.obj(
        pages_id,
        b"<< /Type /Pages /Kids [" + b" ".join(b"%d 0 R" % k for k in kids) + b"] /Count %d >>" % len(kids),
    )
    w.obj(catalog, b"<< /Type /Catalog /Pages %d 0 R >>" % pages_id)
    w.obj(info_id, b"<< /Title " + _utf16(spec.title) + b" /Producer (certmgr) >>")
    xref = w.pos
    lines = [b"xref\n0 %d\n" % w.next_id, b"0000000000 65535 f \n"]
    for number in range(1, w.next_id):
        offset = w.offsets.get(number)
        lines.append(b"%010d 00000 n \n" % offset if offset is not None else b"0000000000 65535 f \n")
    w.write(b"".join(lines))
    w.write(
        b"trailer\n<< /Size %d /Root %d 0 R /Info %d 0 R >>\nstartxref\n%d\n%%%%EOF\n"
        % (w.next_id, catalog, info_id, xref)
    )
    yield w.take()


@dataclass
class _Page:
    graphics: list[bytes]
    text: _Text
    y: float
    stripes: list[bytes] = field(default_factory=list)


def _paragraph(
    fonts: _Fonts, text: _Text, line: str, x: float, y: float, width: float, floor: float, *, bold_label: bool = True
) -> float:
    """Draw ``line`` wrapped into ``width`` from ``y`` down (its "label:" part in bold); returns the next y."""
    label, sep, _ = line.partition(": ")
    for k, part in enumerate(fit_lines(fonts.regular, line, width, BODY, MAX_LINES)):
        if y - LINE < floor:
            return y
        y -= LINE + 1.0
        if k == 0 and sep and bold_label and part.startswith(label + ":"):
            head = part[: len(label) + len(sep)]
            text.show(x, y, head, bold=True)
            text.show(x + _width(fonts, head, bold=True), y, part[len(head) :])
        else:
            text.show(x + (8.0 if k else 0.0), y, part)
    return y


def _heading(text: _Text, title: str, x: float, y: float) -> float:
    y -= 14.0
    text.show(x, y, title, 10.5, bold=True)
    return y - 3.0


def _draw_summary(
    fonts: _Fonts, text: _Text, summary: Summary, x: float, y: float, width: float, floor: float
) -> float:
    y = _heading(text, "Summary", x, y)
    for figure in summary.figures:
        y = _paragraph(fonts, text, f"{figure.label}: {figure.text}", x, y, width, floor)
    for breakdown in summary.breakdowns:
        y -= 3.0
        lines = breakdown.lines()
        y = _paragraph(fonts, text, lines[0], x, y, width, floor)
        for line in lines[1:]:
            if y - LINE < floor:
                text.show(x, y - LINE, "… (the full summary is in the signed manifest)")
                return y - LINE
            y -= LINE + 1.0
            text.show(x + 10.0, y, fit_lines(fonts.regular, line.strip(), width - 10.0, BODY, 1)[0])
    return y


def _draw_evidence(
    fonts: _Fonts, text: _Text, evidence: Evidence | None, tz: tzinfo, x: float, y: float, width: float, floor: float
) -> float:
    y = _heading(text, "Evidence", x, y)
    if evidence is None:
        return _paragraph(fonts, text, "Audit log: not consulted (rendered without a database)", x, y, width, floor)
    for label, value in evidence.lines(tz):
        y = _paragraph(fonts, text, f"{label}: {value}", x, y, width, floor)
    note = "The SHA-256 of this file and its signature by the audit key are in FILE.manifest.json."
    return _paragraph(fonts, text, note, x, y - 3.0, width, floor, bold_label=False)


def _write_font(w: _Writer, chain: FontChain, index: int, type0_id: int) -> None:
    """Embed font ``index`` of ``chain`` (the glyphs it drew) as a Type0 / CIDFontType2 font, Identity-H."""
    face = chain.face(index)
    used = chain.used[index]
    cid_id, descriptor_id, file_id, unicode_id = (w.reserve() for _ in range(4))
    name = f"{chain.subset_tag(index)}+{face.postscript_name}".encode("ascii")
    data = chain.subset(index)
    w.stream(file_id, data, b"/Length1 %d " % len(data))
    widths = b" ".join(b"%d [%.1f]" % (gid, face.width(gid)) for gid in sorted(used))
    bbox = b" ".join(b"%d" % round(v) for v in face.bbox)
    w.obj(
        descriptor_id,
        b"<< /Type /FontDescriptor /FontName /%s /Flags 32 /FontBBox [%s] /ItalicAngle %d /Ascent %d "
        b"/Descent %d /CapHeight %d /StemV 80 /FontFile2 %d 0 R >>"
        % (name, bbox, round(face.italic_angle), face.ascent, face.descent, face.cap_height, file_id),
    )
    w.obj(
        cid_id,
        b"<< /Type /Font /Subtype /CIDFontType2 /BaseFont /%s /CIDSystemInfo << /Registry (Adobe) "
        b"/Ordering (Identity) /Supplement 0 >> /FontDescriptor %d 0 R /DW 1000 /W [%s] /CIDToGIDMap /Identity >>"
        % (name, descriptor_id, widths),
    )
    w.stream(unicode_id, _to_unicode(used))
    w.obj(
        type0_id,
        b"<< /Type /Font /Subtype /Type0 /BaseFont /%s /Encoding /Identity-H /DescendantFonts [%d 0 R] "
        b"/ToUnicode %d 0 R >>" % (name, cid_id, unicode_id),
    )


def _to_unicode(used: dict[int, str]) -> bytes:
    """A ToUnicode CMap: each glyph id drawn -> the character it showed (an Arabic presentation form -> its
    letter, so that extracted text is searchable)."""

    def text_of(char: str) -> str:
        return unicodedata.normalize("NFKC", char) if "\ufb50" <= char <= "\ufeff" else char

    entries = [
        b"<%04X> <%s>" % (gid, text_of(char).encode("utf-16-be").hex().upper().encode("ascii"))
        for gid, char in sorted(used.items())
    ]
    parts = [
        b"/CIDInit /ProcSet findresource begin\n12 dict begin\nbegincmap\n"
        b"/CIDSystemInfo << /Registry (Adobe) /Ordering (UCS) /Supplement 0 >> def\n"
        b"/CMapName /Adobe-Identity-UCS def\n/CMapType 2 def\n"
        b"1 begincodespacerange\n<0000> <FFFF>\nendcodespacerange\n"
    ]
    for start in range(0, len(entries), 100):
        chunk = entries[start : start + 100]
        parts.append(b"%d beginbfchar\n" % len(chunk) + b"\n".join(chunk) + b"\nendbfchar\n")
    parts.append(b"endcmap\nCMapName currentdict /CMap defineresource pop\nend\nend\n")
    return b"".join(parts)


def write_pdf_streaming(
    spec: ReportSpec,
    rows: Iterable[Row],
    out: ByteSink,
    cover: Callable[[], Cover],
    style: PdfStyle,
    evidence: Evidence | None = None,
) -> None:
    """Write the report as a PDF to ``out`` page by page (see :func:`iter_pdf`).

    Raises:
        OSError: if ``out`` cannot be written.
        ConfigError: if the report fonts cannot be read.
    """
    for chunk in iter_pdf(spec, rows, cover, style, evidence):
        out.write(chunk)
