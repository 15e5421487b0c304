"""TrueType fonts for PDF reports: where they are, which one draws each character, and the subsets to embed.

A report's text may be in any script (host names, actor names, failure reasons). The PDF writer draws every
character with the first font of a *chain* whose ``cmap`` has it: by default DejaVu Sans Condensed (Latin,
Greek, Cyrillic, Hebrew, Arabic, symbols; Debian package ``fonts-dejavu-extra``, else DejaVu Sans of
``fonts-dejavu-core``) and then Droid Sans Fallback (Chinese, Japanese, Korean; ``fonts-droid-fallback``),
looked up in the usual font folders. The setting ``report_fonts`` (``CERTMGR_REPORT_FONTS``) replaces that
list. A character that no font of the chain has is drawn as U+FFFD (the replacement character) and counted,
and the report says how many there were: never a silent ``?``.

Right-to-left text (Hebrew, Arabic) is put into visual order (Unicode bidi algorithm, ``python-bidi``, in a
left-to-right paragraph: ``טלפון.example.net`` keeps the domain on the right) and Arabic letters into their
joined presentation forms (``arabic-reshaper``) before it is drawn.

Glyphs are addressed by their glyph id in the original font (``Identity-H`` encoding, ``CIDToGIDMap
/Identity``), so a page can be written as soon as it is full; when the document ends, each font that was used is
embedded as a subset holding only the glyphs drawn (``fontTools.subset`` with the glyph ids retained), plus a
``ToUnicode`` map so that text can be searched and copied.
"""

from __future__ import annotations

import functools
import hashlib
import io
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from certmgr.errors import ConfigError

FONT_DIRS = (Path("/usr/share/fonts"), Path("/usr/local/share/fonts"))
# Candidates per role, relative to a font folder, as Debian / Fedora / Arch install them: the condensed face first
# (tables of 14 columns fit an A4 page at 8 pt), the normal width if it is missing.
REGULAR_CANDIDATES = (
    "truetype/dejavu/DejaVuSansCondensed.ttf",
    "dejavu-sans-fonts/DejaVuSansCondensed.ttf",
    "TTF/DejaVuSansCondensed.ttf",
    "truetype/dejavu/DejaVuSans.ttf",
    "dejavu-sans-fonts/DejaVuSans.ttf",
    "TTF/DejaVuSans.ttf",
)
BOLD_CANDIDATES = (
    "truetype/dejavu/DejaVuSansCondensed-Bold.ttf",
    "dejavu-sans-fonts/DejaVuSansCondensed-Bold.ttf",
    "TTF/DejaVuSansCondensed-Bold.ttf",
    "truetype/dejavu/DejaVuSans-Bold.ttf",
    "dejavu-sans-fonts/DejaVuSans-Bold.ttf",
    "TTF/DejaVuSans-Bold.ttf",
)
FALLBACK_CANDIDATES = (
    "truetype/droid/DroidSansFallbackFull.ttf",
    "google-droid-sans-fonts/DroidSansFallbackFull.ttf",
    "TTF/DroidSansFallbackFull.ttf",
    "truetype/droid/DroidSansFallback.ttf",
)
REPLACEMENT = "\ufffd"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_RTL = re.compile(r"[\u0590-\u08ff\ufb1d-\ufdff\ufe70-\ufefc]")

__all__ = [
    "FontChain",
    "FontFace",
    "FontSet",
    "Run",
    "default_font_set",
    "font_set",
    "load_face",
    "visual_order",
]


def visual_order(text: str) -> str:
    """``text`` as it is drawn left to right: control characters as spaces, right-to-left runs reordered and
    Arabic letters joined (text without right-to-left characters is returned as it is)."""
    if text.isascii() and text.isprintable():
        return text
    text = _CONTROL.sub(" ", text)
    if not _RTL.search(text):
        return text
    import arabic_reshaper
    from bidi import get_display

    return str(get_display(arabic_reshaper.reshape(text), base_dir="L"))  # the report is a left-to-right document


@dataclass(frozen=True)
class FontFace:
    """What the writer needs of one TrueType file: character -> glyph id, advance widths (1/1000 em) and the
    numbers of its font descriptor. Shared by every document (read once per file and modification time)."""

    path: Path
    postscript_name: str
    glyph_of: dict[str, int] = field(repr=False)
    widths: tuple[float, ...] = field(repr=False)
    ascent: float
    descent: float
    cap_height: float
    bbox: tuple[float, float, float, float]
    italic_angle: float

    def width(self, gid: int) -> float:
        return self.widths[gid] if gid < len(self.widths) else 0.0


@functools.lru_cache(maxsize=16)
def _load(path: Path, _mtime_ns: int) -> FontFace:
    from fontTools.ttLib import TTFont, TTLibError

    try:
        font = TTFont(str(path), lazy=True)
    except (OSError, TTLibError) as exc:
        raise ConfigError(f"report font {path} cannot be read: {exc}") from exc
    if "glyf" not in font:
        raise ConfigError(f"report font {path} has no TrueType outlines (glyf table): use a .ttf font")
    scale = 1000.0 / font["head"].unitsPerEm
    order = font.getGlyphOrder()
    ids = {name: i for i, name in enumerate(order)}
    cmap = font.getBestCmap() or {}
    glyph_of = {chr(code): ids[name] for code, name in cmap.items() if name in ids and code > 0x1F}
    hmtx = font["hmtx"].metrics
    widths = tuple(round(hmtx[name][0] * scale, 1) for name in order)
    head, hhea = font["head"], font["hhea"]
    os2 = font.get("OS/2")
    cap = getattr(os2, "sCapHeight", 0) or hhea.ascent
    name = re.sub(r"[^A-Za-z0-9-]", "", font["name"].getDebugName(6) or path.stem) or "Font"
    return FontFace(
        path=path,
        postscript_name=name,
        glyph_of=glyph_of,
        widths=widths,
        ascent=round(hhea.ascent * scale),
        descent=round(hhea.descent * scale),
        cap_height=round(cap * scale),
        bbox=(head.xMin * scale, head.yMin * scale, head.xMax * scale, head.yMax * scale),
        italic_angle=float(font["post"].italicAngle),
    )


def load_face(path: Path) -> FontFace:
    """The :class:`FontFace` of the TrueType file ``path`` (cached per file and modification time).

    Raises:
        ConfigError: if the file is missing, unreadable or not a TrueType-outline font.
    """
    try:
        mtime = path.stat().st_mtime_ns
    except OSError as exc:
        raise ConfigError(f"report font {path} cannot be read: {exc.strerror or exc}") from exc
    return _load(path, mtime)


def _first_existing(candidates: Iterable[str], dirs: Sequence[Path]) -> Path | None:
    for relative in candidates:
        for folder in dirs:
            path = folder / relative
            if path.is_file():
                return path
    return None


@dataclass(frozen=True)
class FontSet:
    """The font files of a report: the body chain (first = primary) and the bold face of headings."""

    chain: tuple[Path, ...]
    bold: Path | None


def default_font_set(dirs: Sequence[Path] = FONT_DIRS) -> FontSet:
    """DejaVu Sans Condensed or DejaVu Sans (+ Bold) and Droid Sans Fallback from ``dirs``.

    Raises:
        ConfigError: if DejaVu Sans is not installed (the message says which package to install).
    """
    regular = _first_existing(REGULAR_CANDIDATES, dirs)
    if regular is None:
        raise ConfigError(
            "no font for PDF reports: install DejaVu Sans (Debian: apt-get install fonts-dejavu-core "
            "fonts-dejavu-extra fonts-droid-fallback; `make install` does it as root) or set CERTMGR_REPORT_FONTS"
        )
    fallback = _first_existing(FALLBACK_CANDIDATES, dirs)
    chain = (regular,) if fallback is None else (regular, fallback)
    return FontSet(chain, _first_existing(BOLD_CANDIDATES, dirs))


def font_set(configured: Sequence[Path]) -> FontSet:
    """The fonts of the setting ``report_fonts`` (tried in that order, no separate bold face), or the default
    set when it is empty.

    Raises:
        ConfigError: if a configured file does not exist, or no default font is installed.
    """
    if not configured:
        return default_font_set()
    for path in configured:
        if not path.is_file():
            raise ConfigError(f"report_fonts: {path} is not a file")
    return FontSet(tuple(configured), None)


_ESCAPE = {0x28: b"\\(", 0x29: b"\\)", 0x5C: b"\\\\", 0x0D: b"\\r", 0x0A: b"\\n"}


def glyph_code(gid: int) -> str:
    """Glyph id ``gid`` as the two bytes of a PDF literal string (escaped where needed), as latin-1 text."""
    raw = gid.to_bytes(2, "big")
    return b"".join(_ESCAPE.get(b, bytes((b,))) for b in raw).decode("latin-1")


@dataclass(frozen=True)
class Run:
    """A piece of text drawn with one font: its font's index in the chain, the glyph ids as the bytes of a PDF
    literal string (two per glyph, escaped) and its width in 1/1000 of the font size."""

    font: int
    codes: bytes
    width: float


class FontChain:
    """The fonts one document draws with, in fallback order, and what it has drawn with each (for the subsets).

    Fonts after the first are read only when a character needs them.
    """

    def __init__(self, paths: Sequence[Path]) -> None:
        """
        Raises:
            ConfigError: if ``paths`` is empty or its first font cannot be read.
        """
        if not paths:
            raise ConfigError("no report font configured")
        self.paths = tuple(paths)
        self._faces: list[FontFace | None] = [load_face(self.paths[0])] + [None] * (len(self.paths) - 1)
        self.used: list[dict[int, str]] = [{} for _ in self.paths]  # glyph id -> the character it shows
        self.missing = 0  # characters no font has (drawn as U+FFFD)
        primary = self.face(0)
        self._chars = frozenset(primary.glyph_of)
        self._codes = {ord(c): glyph_code(g) for c, g in primary.glyph_of.items()}
        self._width = {c: primary.width(g) for c, g in primary.glyph_of.items()}
        self._placed: dict[str, tuple[int, int]] = {}  # characters outside the primary font: (font, glyph id)
        self._recorded: set[str] = set()  # characters of the primary font already in ``used[0]``

    def face(self, index: int) -> FontFace:
        """The face of font ``index`` (read on first use).

        Raises:
            ConfigError: if the font cannot be read.
        """
        face = self._faces[index]
        if face is None:
            face = self._faces[index] = load_face(self.paths[index])
        return face

    def _place(self, char: str) -> tuple[int, int]:
        placed = self._placed.get(char)
        if placed is None:
            for index in range(len(self.paths)):
                gid = self.face(index).glyph_of.get(char)
                if gid is not None:
                    placed = (index, gid)
                    break
            else:
                placed = (-1, 0)
            self._placed[char] = placed
        return placed

    def _replacement(self) -> tuple[int, int]:
        for index in range(len(self.paths)):
            gid = self.face(index).glyph_of.get(REPLACEMENT)
            if gid is not None:
                return index, gid
        gid = self.face(0).glyph_of.get("?", 0)
        return 0, gid

    def width(self, text: str) -> float:
        """Width of ``text`` (already in visual order) in 1/1000 of the font size."""
        if self._chars.issuperset(text):
            return sum(map(self._width.__getitem__, text))
        return sum(r.width for r in self.runs(text, record=False))

    def primary(self, text: str) -> tuple[bytes, float] | None:
        """Glyph codes and width of ``text`` (already in visual order) if the first font has every character
        (recorded as drawn), else None: the common case, without building runs."""
        if not self._chars.issuperset(text):
            return None
        if not self._recorded.issuperset(text):
            glyph_of = self.face(0).glyph_of
            for char in set(text) - self._recorded:
                self.used[0].setdefault(glyph_of[char], char)
                self._recorded.add(char)
        return text.translate(self._codes).encode("latin-1"), sum(map(self._width.__getitem__, text))

    def char_widths(self, text: str) -> list[float]:
        """The advance of each character of ``text`` (1/1000 of the font size)."""
        if self._chars.issuperset(text):
            return list(map(self._width.__getitem__, text))
        return [self.width(c) for c in text]

    def runs(self, text: str, *, record: bool = True) -> list[Run]:
        """``text`` (already in visual order) cut into runs of one font each; with ``record``, the glyphs count
        as drawn (they go into the subsets, and characters no font has are counted in :attr:`missing`)."""
        if self._chars.issuperset(text):
            if record and not self._recorded.issuperset(text):
                glyph_of = self.face(0).glyph_of
                for char in set(text) - self._recorded:
                    self.used[0].setdefault(glyph_of[char], char)
                    self._recorded.add(char)
            codes = text.translate(self._codes).encode("latin-1")
            return [Run(0, codes, sum(map(self._width.__getitem__, text)))]
        runs: list[Run] = []
        current, width = -2, 0.0
        digits: list[str] = []
        for char in text:
            font, gid = self._place(char)
            shown = char
            if font < 0:
                font, gid = self._replacement()
                shown = REPLACEMENT
                if record:
                    self.missing += 1
            if font != current and digits:
                runs.append(Run(current, "".join(digits).encode("latin-1"), width))
                digits, width = [], 0.0
            current = font
            digits.append(glyph_code(gid))
            width += self.face(font).width(gid)
            if record and gid not in self.used[font]:
                self.used[font][gid] = shown
        if digits:
            runs.append(Run(current, "".join(digits).encode("latin-1"), width))
        return runs

    def subset(self, index: int) -> bytes:
        """The TrueType subset of font ``index`` with the glyphs drawn so far (glyph ids unchanged)."""
        from fontTools import subset

        options = subset.Options()
        options.retain_gids = True
        options.notdef_outline = True
        options.name_IDs = []
        options.layout_features = []
        options.hinting = False
        options.drop_tables += ["GSUB", "GPOS", "GDEF", "kern", "DSIG", "FFTM", "morx", "feat", "BASE", "JSTF"]
        font = subset.load_font(str(self.paths[index]), options, lazy=True)
        subsetter = subset.Subsetter(options)
        subsetter.populate(gids=sorted(self.used[index]))
        subsetter.subset(font)
        out = io.BytesIO()
        font.save(out)
        return out.getvalue()

    def subset_tag(self, index: int) -> str:
        """Six capital letters naming the subset (PDF 32000-1, 9.6.4), derived from the glyphs it holds."""
        digest = hashlib.sha256(",".join(map(str, sorted(self.used[index]))).encode()).digest()
        return "".join(chr(ord("A") + b % 26) for b in digest[:6])
