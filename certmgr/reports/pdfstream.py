"""A streaming PDF table writer: pages go to the output as the rows arrive, so memory stays flat.

reportlab (used by :func:`certmgr.reports.render.write_pdf`) keeps every page of a document in memory until it
is saved; for a fleet of 100,000 phones that is thousands of pages. This writer produces a plain PDF 1.4 by
hand instead: the standard Helvetica fonts (not embedded, WinAnsi encoding), one Flate-compressed content
stream per page written as soon as the page is full, and the page tree, cross-reference table and trailer at
the end. What it keeps in memory is one page of rows plus two integers per page.

Layout: A4 landscape, title, generation time and parameters on the first page, the column names repeated at
the top of every page, cells clipped to their column, a page number at the bottom and the row count at the end.
Charts are not drawn (use :func:`~certmgr.reports.render.write_pdf` for the small expiry forecast).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from typing import BinaryIO

from certmgr.reports.queries import Cell, ReportSpec, Row

PAGE_W, PAGE_H = 842.0, 595.0  # A4 landscape, points
MARGIN = 28.0
FONT_SIZE = 6.0
ROW_H = 8.5
CHAR_W = 0.52 * FONT_SIZE  # Helvetica's average advance, a little generous so clipped text fits

__all__ = ["write_pdf_streaming"]


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
    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.pos = 0
        self.offsets: dict[int, int] = {}

    def write(self, data: bytes) -> None:
        self.out.write(data)
        self.pos += len(data)

    def obj(self, number: int, body: bytes) -> None:
        self.offsets[number] = self.pos
        self.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")

    def stream(self, number: int, content: bytes) -> None:
        packed = zlib.compress(content, 6)
        self.obj(number, b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(packed) + packed + b"\nendstream")


def write_pdf_streaming(spec: ReportSpec, rows: Iterable[Row], out: BinaryIO) -> int:
    """Write ``rows`` of ``spec`` as a PDF table to ``out`` page by page; returns the number of rows.

    Raises:
        OSError: if ``out`` cannot be written.
    """
    w = _Writer(out)
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

    def start_page(first: bool) -> tuple[list[bytes], float]:
        ops: list[bytes] = []
        y = PAGE_H - MARGIN
        if first:
            for name, size, text in header_lines:
                y -= size + 4
                ops.append(b"BT /%s %.1f Tf %.2f %.2f Td (%s) Tj ET" % (name, size, MARGIN, y, text))
            y -= 6
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
    return count
