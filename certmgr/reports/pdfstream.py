"""The PDF renderer of every report: pages go to the output as the rows arrive, so memory stays flat.

A layout engine such as reportlab keeps every page of a document in memory until it is saved; for a fleet of
100,000 phones that is ~1,700 pages (~740 MiB, ~52 s). This writer produces a plain PDF 1.4 by hand instead:
the standard Helvetica fonts (not embedded, WinAnsi encoding), one Flate-compressed content stream per page
emitted as soon as the page is full, and the page tree, cross-reference table and trailer at the end. What it
keeps in memory is one page of rows plus two integers per page.

Layout: A4 landscape, title, generation time and parameters on the first page, the column names repeated at
the top of every page, cells clipped to their column, a page number at the bottom and the row count at the end.

A report with a chart (``spec.chart``, the expiry forecast) gets a bar chart on the first page, above the table:
one bar per row whose label starts with ``W`` (label in the first column, count in the last), drawn with plain
path operators (one filled rectangle per non-empty week, in :data:`BAR_RGB`), the week labels below the bars
and the counts above them. Such a report's rows are read before the first page is written, so charts are for
small reports (the forecast has at most 106 rows).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Iterator
from typing import Protocol

from certmgr.reports.queries import Cell, ReportSpec, Row

PAGE_W, PAGE_H = 842.0, 595.0  # A4 landscape, points
MARGIN = 28.0
FONT_SIZE = 6.0
ROW_H = 8.5
CHAR_W = 0.52 * FONT_SIZE  # Helvetica's average advance, a little generous so clipped text fits
CHART_H = 190.0
BAR_RGB = (0.267, 0.447, 0.769)  # #4472c4
MAX_BAR_LABELS = 26  # more weeks than this: label every n-th bar, no counts above the bars
FLUSH_BYTES = 64 * 1024

__all__ = ["BAR_RGB", "ByteSink", "iter_pdf", "write_pdf_streaming"]


class ByteSink(Protocol):
    """Where rendered bytes go: an open binary file, a ``BytesIO``, a hashing wrapper."""

    def write(self, data: bytes, /) -> object: ...


def _text(value: Cell, limit: int) -> bytes:
    text = "" if value is None else str(value)
    if len(text) > limit:
        text = text[: max(limit - 1, 0)] + "…"
    raw = text.encode("cp1252", errors="replace")
    return (
        raw.replace(b"\\", b"\\\\")
        .replace(b"(", b"\\(")
        .replace(b")", b"\\)")
        .replace(b"\r", b" ")
        .replace(b"\n", b" ")
    )


class _Writer:
    """Numbers the objects, remembers their offsets and buffers the bytes until :meth:`take`."""

    def __init__(self) -> None:
        self.pos = 0
        self.offsets: dict[int, int] = {}
        self._parts: list[bytes] = []
        self._buffered = 0

    def write(self, data: bytes) -> None:
        self._parts.append(data)
        self.pos += len(data)
        self._buffered += len(data)

    def obj(self, number: int, body: bytes) -> None:
        self.offsets[number] = self.pos
        self.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")

    def stream(self, number: int, content: bytes) -> None:
        packed = zlib.compress(content, 6)
        self.obj(number, b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(packed) + packed + b"\nendstream")

    @property
    def full(self) -> bool:
        return self._buffered >= FLUSH_BYTES

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts, self._buffered = [], 0
        return data


def _label(x: float, y: float, text: bytes, size: float) -> bytes:
    return b"1 0 0 1 %.2f %.2f Tm /F1 %.1f Tf (%s) Tj" % (x, y, size, text)


def _chart_ops(title: bytes, bars: list[tuple[str, int]], top: float) -> list[bytes]:
    """The drawing operations of a bar chart occupying :data:`CHART_H` points below ``top``."""
    x0, x1 = MARGIN + 30.0, PAGE_W - MARGIN
    base = top - CHART_H + 16.0  # room for the week labels below the axis
    height = CHART_H - 16.0 - 26.0  # room for the title and the counts above
    peak = max((count for _, count in bars), default=0)
    scale = height / peak if peak > 0 else 0.0
    slot = (x1 - x0) / max(len(bars), 1)
    bar_w = slot * 0.7
    every = max(1, math.ceil(len(bars) / MAX_BAR_LABELS))
    ops = [
        b"BT /F2 10.0 Tf %.2f %.2f Td (%s) Tj ET" % (MARGIN, top - 12.0, title),
        b"0 G 0.5 w %.2f %.2f m %.2f %.2f l %.2f %.2f l S" % (x0, base + height, x0, base, x1, base),
    ]
    rects = [
        b"%.2f %.2f %.2f %.2f re" % (x0 + i * slot + (slot - bar_w) / 2, base, bar_w, count * scale)
        for i, (_, count) in enumerate(bars)
        if count > 0
    ]
    if rects:
        ops.append(b"q %.3f %.3f %.3f rg\n" % BAR_RGB + b"\n".join(rects) + b"\nf Q")
    labels = [b"BT", _label(x0 - 6.0 - 5.0 * 0.55 * len(str(peak)), base + height - 2.0, b"%d" % peak, 5.0)]
    labels.append(_label(x0 - 8.5, base - 2.0, b"0", 5.0))
    for i, (name, count) in enumerate(bars):
        if i % every:
            continue
        middle = x0 + i * slot + slot / 2
        text = _text(name, 12)
        labels.append(_label(middle - len(text) * 5.0 * 0.28, base - 9.0, text, 5.0))
        if every == 1:
            value = b"%d" % count
            labels.append(_label(middle - len(value) * 5.0 * 0.28, base + count * scale + 2.0, value, 5.0))
    labels.append(b"ET")
    return [*ops, b"\n".join(labels)]


def iter_pdf(spec: ReportSpec, rows: Iterable[Row]) -> Iterator[bytes]:
    """The report as a PDF, in pieces of about :data:`FLUSH_BYTES` (a page is never held back longer).

    Raises:
        Whatever ``rows`` raises while it is consumed (e.g. a database error).
    """
    w = _Writer()
    w.write(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    catalog, pages_id, font, bold, info = 1, 2, 3, 4, 5
    w.obj(catalog, b"<< /Type /Catalog /Pages 2 0 R >>")
    w.obj(font, b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>")
    w.obj(bold, b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica-Bold /Encoding /WinAnsiEncoding >>")
    title = _text(spec.title, 200)
    w.obj(info, b"<< /Title (" + title + b") /Producer (certmgr) >>")
    next_id = 6
    kids: list[int] = []
    ncols = max(len(spec.columns), 1)
    col_w = (PAGE_W - 2 * MARGIN) / ncols
    limit = max(int(col_w / CHAR_W) - 1, 3)
    params = ", ".join(f"{k}={v}" for k, v in spec.params.as_dict(spec.kind).items() if v is not None)
    header_lines = [
        (b"F2", 14.0, title),
        (b"F1", 8.0, _text(f"Report kind: {spec.kind.value}. Generated at {spec.generated_at.isoformat()}.", 300)),
    ]
    if params:
        header_lines.append((b"F1", 8.0, _text(f"Parameters: {params}", 300)))
    bars: list[tuple[str, int]] | None = None
    if spec.chart is not None:
        rows = list(rows)  # a chart needs every row before the first page: charted reports are small
        bars = [(str(r[0]), int(r[-1] or 0)) for r in rows if str(r[0]).startswith("W")]

    def start_page(first: bool) -> tuple[list[bytes], float]:
        ops: list[bytes] = []
        y = PAGE_H - MARGIN
        if first:
            for name, size, text in header_lines:
                y -= size + 4
                ops.append(b"BT /%s %.1f Tf %.2f %.2f Td (%s) Tj ET" % (name, size, MARGIN, y, text))
            y -= 6
            if bars is not None and spec.chart is not None:
                ops.extend(_chart_ops(_text(spec.chart, 200), bars, y))
                y -= CHART_H + 6
        y -= ROW_H
        ops.append(b"0.85 0.88 0.95 rg %.2f %.2f %.2f %.2f re f 0 g" % (MARGIN, y - 2, PAGE_W - 2 * MARGIN, ROW_H))
        ops.append(b"BT /F2 %.1f Tf" % FONT_SIZE)
        for i, column in enumerate(spec.columns):
            ops.append(b"1 0 0 1 %.2f %.2f Tm (%s) Tj" % (MARGIN + i * col_w + 1, y, _text(column, limit)))
        ops.append(b"ET")
        return ops, y

    def finish_page(ops: list[bytes], number: int, footer: bytes | None) -> None:
        nonlocal next_id
        ops.append(b"BT /F1 6.0 Tf %.2f %.2f Td (page %d) Tj ET" % (PAGE_W - MARGIN - 30, MARGIN / 2, number))
        if footer is not None:
            ops.append(b"BT /F1 8.0 Tf %.2f %.2f Td (%s) Tj ET" % (MARGIN, MARGIN / 2, footer))
        content_id, page_id = next_id, next_id + 1
        next_id += 2
        w.stream(content_id, b"\n".join(ops))
        w.obj(
            page_id,
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 %d %d] /Contents %d 0 R "
            b"/Resources << /Font << /F1 3 0 R /F2 4 0 R >> >> >>" % (PAGE_W, PAGE_H, content_id),
        )
        kids.append(page_id)

    ops, y = start_page(first=True)
    body_ops: list[bytes] = [b"BT /F1 %.1f Tf" % FONT_SIZE]
    count = 0
    for row in rows:
        if y - ROW_H < MARGIN + ROW_H:
            body_ops.append(b"ET")
            finish_page(ops + body_ops, len(kids) + 1, None)
            if w.full:
                yield w.take()
            ops, y = start_page(first=False)
            body_ops = [b"BT /F1 %.1f Tf" % FONT_SIZE]
        y -= ROW_H
        for i, value in enumerate(row):
            if value is not None and value != "":
                body_ops.append(b"1 0 0 1 %.2f %.2f Tm (%s) Tj" % (MARGIN + i * col_w + 1, y, _text(value, limit)))
        count += 1
    body_ops.append(b"ET")
    finish_page(ops + body_ops, len(kids) + 1, b"%d rows." % count)
    w.obj(pages_id, b"<< /Type /Pages /Kids [" + b" ".join(b"%d 0 R" % k for k in kids) + b"] /Count %d >>" % len(kids))
    xref = w.pos
    total = next_id
    lines = [b"xref\n0 %d\n" % total, b"0000000000 65535 f \n"]
    lines += [b"%010d 00000 n \n" % w.offsets[n] for n in range(1, total)]
    w.write(b"".join(lines))
    w.write(b"trailer\n<< /Size %d /Root 1 0 R /Info 5 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (total, xref))
    yield w.take()


def write_pdf_streaming(spec: ReportSpec, rows: Iterable[Row], out: ByteSink) -> int:
    """Write ``rows`` of ``spec`` as a PDF to ``out`` page by page; returns the number of rows.

    Raises:
        OSError: if ``out`` cannot be written.
    """
    count = 0

    def counted() -> Iterator[Row]:
        nonlocal count
        for row in rows:
            count += 1
            yield row

    for chunk in iter_pdf(spec, counted()):
        out.write(chunk)
    return count
