"""The invisible text layer's font: one Type0 font per PDF, embedded once, shared by every page.

Why not a ready font: PyMuPDF's `insert_text` writes glyph ids as codes, so a glyphless font whose
characters share a few glyphs (OCRmyPDF's Occulta) comes back from `get_text()` as the same character
everywhere; a real font (Noto) covers one script, not all that the model writes. Here every distinct
character of the document gets a code of its own (two bytes, Identity-H): the CIDToGIDMap sends it to one
of the empty glyphs of data/glyphless.ttf (advance 0, 500 or 1000, by words.char_width) and the ToUnicode
map back to the character, so any Unicode text (CJK, Greek, math, beyond the BMP) is copied and found
as written. The widths and the ToUnicode map are written when the document is done (`finish`).
"""

from __future__ import annotations

from importlib import resources

from .words import char_width

FONT_NAME = "PPVLGlyphless-Regular"
RESOURCE_NAME = "PPVLOCRText"  # the font's name in page resources: unlikely to clash with a page's own
ASCENT = 0.8  # of the font size: the baseline sits 80% down the line box (matches the font's hhea)
_ADVANCE = {0: 0, 1: 500, 2: 1000}  # char_width -> advance in 1/1000 em
_GLYPH = {0: 1, 1: 2, 2: 3}  # char_width -> glyph id in glyphless.ttf (.notdef is 0)
MAX_CODES = 0xFFFF


def font_program() -> bytes:
    return resources.files(__package__).joinpath("data", "glyphless.ttf").read_bytes()


class LayerFont:
    """The font objects in one PyMuPDF document, and the codes handed out so far."""

    def __init__(self, doc) -> None:  # doc: pymupdf.Document
        self._doc = doc
        program = font_program()
        stream = self._new("<<>>", program)
        doc.xref_set_key(stream, "Length1", str(len(program)))
        descriptor = self._new(
            f"<</Type/FontDescriptor/FontName/{FONT_NAME}/Flags 4/FontBBox[0 -200 1000 800]/ItalicAngle 0"
            f"/Ascent 800/Descent -200/CapHeight 700/StemV 80/FontFile2 {stream} 0 R>>"
        )
        self._gidmap = self._new("<<>>", b"\0\0")
        self._tounicode = self._new("<<>>", b"")
        self._cidfont = self._new(
            f"<</Type/Font/Subtype/CIDFontType2/BaseFont/{FONT_NAME}"
            "/CIDSystemInfo<</Registry(Adobe)/Ordering(Identity)/Supplement 0>>"
            f"/FontDescriptor {descriptor} 0 R/DW 500/CIDToGIDMap {self._gidmap} 0 R>>"
        )
        self.xref = self._new(
            f"<</Type/Font/Subtype/Type0/BaseFont/{FONT_NAME}/Encoding/Identity-H"
            f"/DescendantFonts[{self._cidfont} 0 R]/ToUnicode {self._tounicode} 0 R>>"
        )
        self._codes: dict[str, int] = {}

    def _new(self, obj: str, stream: bytes | None = None) -> int:
        xref = self._doc.get_new_xref()
        self._doc.update_object(xref, obj)
        if stream is not None:
            self._doc.update_stream(xref, stream, new=True)
        return xref

    def encode(self, text: str) -> tuple[str, float]:
        """The text as a hex string of codes, and its natural width in em (at font size 1)."""
        codes = []
        width = 0
        for char in text:
            code = self._codes.get(char)
            if code is None:
                if len(self._codes) >= MAX_CODES - 1:
                    char, code = "\ufffd", self._codes.setdefault("\ufffd", len(self._codes) + 1)
                else:
                    code = self._codes[char] = len(self._codes) + 1
            codes.append(f"{code:04X}")
            width += _ADVANCE[char_width(char)]
        return "".join(codes), width / 1000

    def finish(self) -> None:
        """Write the widths, the glyph map and the ToUnicode map of every code handed out."""
        chars = list(self._codes)  # in code order: codes are 1, 2, 3, ...
        gids = b"\0\0" + b"".join(_GLYPH[char_width(c)].to_bytes(2, "big") for c in chars)
        self._doc.update_stream(self._gidmap, gids)
        if chars:
            widths = " ".join(str(_ADVANCE[char_width(c)]) for c in chars)
            self._doc.xref_set_key(self._cidfont, "W", f"[1 [{widths}]]")
        self._doc.update_stream(self._tounicode, tounicode_cmap(chars))


def tounicode_cmap(chars: list[str]) -> bytes:
    """A ToUnicode CMap sending code i+1 to chars[i] (UTF-16BE, so beyond-BMP characters too)."""
    out = [
        "/CIDInit /ProcSet findresource begin", "12 dict begin", "begincmap",
        "/CIDSystemInfo << /Registry (Adobe) /Ordering (UCS) /Supplement 0 >> def",
        "/CMapName /Adobe-Identity-UCS def", "/CMapType 2 def",
        "1 begincodespacerange", "<0000> <FFFF>", "endcodespacerange",
    ]
    for start in range(0, len(chars), 100):  # a bfchar section holds at most 100 entries
        chunk = chars[start : start + 100]
        out.append(f"{len(chunk)} beginbfchar")
        out += [f"<{start + i + 1:04X}> <{c.encode('utf-16-be').hex().upper()}>" for i, c in enumerate(chunk)]
        out.append("endbfchar")
    out += ["endcmap", "CMapName currentdict /CMap defineresource pop", "end", "end"]
    return "\n".join(out).encode()
