"""Build ppvl_batch/outputs/data/glyphless.ttf, the font of the searchable PDF's invisible text layer.

Four empty glyphs (no outlines): .notdef, and one each of advance 0, 500 and 1000 units (a combining mark,
an ordinary character, an East Asian wide character). The PDF writer never reaches a glyph through this
font's cmap: it gives every distinct character of a document a code of its own, maps the codes to these
glyphs (CIDToGIDMap) and back to the characters (ToUnicode), so any Unicode text goes into the layer.
Ascent 800 and descent -200 make a line's text box span the font size, baseline at 80%.

    python tools/glyphless_font.py     # rewrites the file; tests/test_outputs_pdf.py checks it is current
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

from fontTools.fontBuilder import FontBuilder
from fontTools.pens.ttGlyphPen import TTGlyphPen

TARGET = Path(__file__).resolve().parents[1] / "ppvl_batch" / "outputs" / "data" / "glyphless.ttf"
GLYPHS = {".notdef": 500, "zero": 0, "half": 500, "full": 1000}  # name -> advance width (1000 per em)
FIXED_TIME = 3_786_825_600  # 2020-01-01 in the font epoch (1904): the file is the same on every build


def build() -> bytes:
    fb = FontBuilder(1000, isTTF=True)
    fb.setupGlyphOrder(list(GLYPHS))
    fb.setupCharacterMap({0x20: "half"})
    fb.setupGlyf({name: TTGlyphPen(None).glyph() for name in GLYPHS})
    fb.setupHorizontalMetrics({name: (width, 0) for name, width in GLYPHS.items()})
    fb.setupHorizontalHeader(ascent=800, descent=-200)
    fb.setupNameTable({"familyName": "PPVLGlyphless", "styleName": "Regular", "psName": "PPVLGlyphless-Regular",
                       "version": "Version 1.0", "copyright": "ppvl-ocr, Apache-2.0"})
    fb.setupOS2(sTypoAscender=800, sTypoDescender=-200, usWinAscent=800, usWinDescent=200, fsType=0)
    fb.setupPost()
    fb.setupHead(created=FIXED_TIME, modified=FIXED_TIME)
    out = io.BytesIO()
    fb.save(out)
    return out.getvalue()


if __name__ == "__main__":
    TARGET.write_bytes(build())
    print(f"wrote {TARGET} ({TARGET.stat().st_size} bytes)", file=sys.stderr)
