"""Searchable PDF: the input's pages with an invisible text layer (docs/archival-outputs.md).

A PDF input keeps its pages as they are: nothing is rendered or recompressed; each page that was read
gets two small content streams, `q` before its own content and `Q` plus the text after it (so whatever
graphics state the page leaves cannot move the text), and the layer font in its resources. An image
input becomes one page per frame at the frame's physical size (its DPI, or 300 when it has none):
JPEG passed through as it is, other formats embedded losslessly (PNG, or TIFF for CMYK), EXIF
orientation applied as the scan saw it.

The text: each line in render mode 3 (invisible), its text matrix mapping the line's box (or rotated
quad) from the record's pixels onto the page, filled exactly to the box's width; see pdffont.py for
how every character stays copyable. Pages whose text came from the PDF itself (`text_source: "pdf"`)
already carry it and get no second layer; failed and blank pages get none.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from ..documents.pages import PDF_EXTENSIONS, pymupdf
from ..errors import OutputError
from ..files import fsync_dir, output_error
from .pagetext import InkBoxes, Record, TextBlock, TextLine, ink_fraction_box, page_blocks
from .pdfa import make_pdfa
from .pdffont import ASCENT, RESOURCE_NAME, LayerFont
from .words import Box

DEFAULT_DPI = 300.0  # an image without a resolution is taken to be a 300 dpi scan
# EXIF orientation -> the counterclockwise rotation (degrees) that shows the image upright; the
# mirrored orientations (2, 4, 5, 7) are decoded, transposed and embedded losslessly instead.
_EXIF_ROTATION = {1: 0, 3: 180, 6: 270, 8: 90}


class PdfWriter:
    """The searchable PDF of one document (a DocumentWriter): `pdfa` for PDF/A-2b, `password` for an
    encrypted input (the output keeps its encryption)."""

    suffix = ".pdf"

    def __init__(self, *, pdfa: bool = False, password: str | None = None) -> None:
        self.pdfa, self.password = pdfa, password

    def write(self, records: list[Record], source: Path, target: Path) -> None:
        write_pdf(records, source, target, pdfa=self.pdfa, password=self.password)


def write_pdf(records: list[Record], source: Path, target: Path, *, pdfa: bool = False,
              password: str | None = None) -> None:
    """Write `target`, the searchable PDF of the pages `records` name (one record per page, any order),
    atomically. Raises OutputError when the input cannot be written back or the target not written;
    with `pdfa`, PdfaError (an OutputError) when the PDF cannot be PDF/A-2b: the plain PDF is then
    written all the same."""
    records = sorted((r for r in records if r.get("page")), key=lambda r: r["page"])
    if not records:
        raise OutputError(f"no page of {source} was recorded: no PDF to write")
    with _temporary(target) as plain:
        if _is_pdf(source):
            _layer_pdf(records, source, plain, password)
        else:
            _layer_images(records, source, plain)
        if not pdfa:
            _replace(plain, target)
            return
        archival = plain.with_name(plain.name + ".pdfa")
        try:
            make_pdfa(plain, archival, encrypted=password is not None)
        except OutputError:
            _replace(plain, target)  # the plain PDF is still worth having
            raise
        _replace(archival, target)


def _is_pdf(source: Path) -> bool:
    try:
        with open(source, "rb") as f:
            return b"%PDF-" in f.read(1024) or source.suffix.lower() in PDF_EXTENSIONS
    except OSError as e:
        raise OutputError(f"cannot read {source}: {e.strerror or e}") from e


@contextmanager
def _temporary(target: Path) -> Iterator[Path]:
    """A temporary path beside `target`, removed whatever happens unless it was moved into place."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
    except OSError as e:
        raise output_error("write", target, e) from e
    finally:
        for leftover in (tmp, tmp.with_name(tmp.name + ".pdfa")):
            with suppress(OSError):  # e.g. the folder could not be made: nothing to remove
                leftover.unlink(missing_ok=True)


def _replace(tmp: Path, target: Path) -> None:
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, target)
    fsync_dir(target.parent)


# -- PDF inputs --------------------------------------------------------------------------------------


def _open_pdf(source: Path, password: str | None) -> Any:
    try:
        doc = pymupdf.open(source, filetype="pdf")
    except Exception as e:  # MuPDF says "damaged beyond repair" with several error types
        raise OutputError(f"cannot write a PDF for {source}: it cannot be opened ({e})") from e
    if doc.needs_pass and (password is None or not doc.authenticate(password)):
        doc.close()
        said = "give its password with --password" if password is None else "the password is wrong"
        raise OutputError(f"cannot write a PDF for {source}: it is encrypted ({said})")
    return doc


def _layer_pdf(records: list[Record], source: Path, out: Path, password: str | None) -> None:
    doc = _open_pdf(source, password)
    inks = InkBoxes(source, password)
    try:
        if records[-1]["page"] > doc.page_count:
            raise OutputError(f"cannot write a PDF for {source}: it has {doc.page_count} pages, "
                              f"its records name page {records[-1]['page']}")
        font = LayerFont(doc)
        for record in records:
            blocks = [b for b in page_blocks(record, inks.for_record(record)) if not b.from_pdf]
            if blocks:
                add_text_layer(doc, doc.load_page(record["page"] - 1), record, blocks, font)
        font.finish()
        numbers = [r["page"] - 1 for r in records]
        if numbers != list(range(doc.page_count)):
            doc.select(numbers)  # a part of the document: the pages that were recorded
        encryption = pymupdf.PDF_ENCRYPT_KEEP if doc.is_encrypted or password else pymupdf.PDF_ENCRYPT_NONE
        doc.save(out, encryption=encryption)
    finally:
        inks.close()
        doc.close()


# -- image inputs ------------------------------------------------------------------------------------


def _layer_images(records: list[Record], source: Path, out: Path) -> None:
    try:
        image = Image.open(source)
    except Exception as e:
        raise OutputError(f"cannot write a PDF for {source}: the image cannot be opened ({e})") from e
    doc = pymupdf.open()
    try:
        font = LayerFont(doc)
        for record in records:
            try:
                image.seek(record["page"] - 1)
                data, rotate, (width, height), dpi = frame_stream(image, source)
            except Exception as e:
                raise OutputError(f"cannot write a PDF for {source}: frame {record['page']}: {e}") from e
            page = doc.new_page(width=width * 72 / dpi[0], height=height * 72 / dpi[1])
            page.insert_image(page.rect, stream=data, rotate=rotate, keep_proportion=False)
            blocks = page_blocks(record, _image_ink(image, record))
            if blocks:
                add_text_layer(doc, page, record, blocks, font)
        font.finish()
        doc.save(out, garbage=1, deflate=True)
    finally:
        image.close()
        doc.close()


def frame_stream(image: Image.Image, source: Path) -> tuple[bytes, int, tuple[int, int], tuple[float, float]]:
    """The current frame as an image file PyMuPDF embeds without loss: (bytes, counterclockwise
    rotation, upright size in pixels, dpi). JPEG keeps its own bytes when its orientation is a rotation."""
    orientation = image.getexif().get(0x0112, 1)
    dpi = _dpi(image)
    if image.format == "JPEG" and orientation in _EXIF_ROTATION:
        rotate = _EXIF_ROTATION[orientation]
        size = image.size if rotate in (0, 180) else image.size[::-1]
        dpi = dpi if rotate in (0, 180) else (dpi[1], dpi[0])
        return source.read_bytes(), rotate, size, dpi
    upright = ImageOps.exif_transpose(image)
    if orientation in (5, 6, 7, 8):
        dpi = (dpi[1], dpi[0])
    if upright.mode not in ("1", "L", "LA", "P", "RGB", "RGBA", "I;16", "CMYK"):
        upright = upright.convert("RGBA" if "A" in upright.mode else "RGB")
    buffer = io.BytesIO()
    upright.save(buffer, "TIFF" if upright.mode == "CMYK" else "PNG")
    return buffer.getvalue(), 0, upright.size, dpi


def _dpi(image: Image.Image) -> tuple[float, float]:
    dpi = image.info.get("dpi")
    try:
        x, y = float(dpi[0]), float(dpi[1])  # type: ignore[index]
    except (TypeError, ValueError, IndexError):
        return DEFAULT_DPI, DEFAULT_DPI
    return (x, y) if x >= 1 and y >= 1 else (DEFAULT_DPI, DEFAULT_DPI)


def _image_ink(image: Image.Image, record: Record) -> Callable[[], Box | None]:
    def box() -> Box | None:
        found = ink_fraction_box(ImageOps.exif_transpose(image).convert("L"))
        if found is None:
            return None
        width, height = record["width"], record["height"]
        return found[0] * width, found[1] * height, found[2] * width, found[3] * height

    return box


# -- the text layer ----------------------------------------------------------------------------------


def page_matrix(page: Any) -> Any:
    """The matrix from the page as shown (page.rect: rotation and crop box applied, y down) to PDF user
    space. PyMuPDF's own transformation_matrix drops the crop box offset on rotated pages; MuPDF's
    page transform is the one its renderer uses."""
    mupdf = pymupdf.mupdf
    box, ctm = mupdf.FzRect(), mupdf.FzMatrix()
    mupdf.pdf_page_transform(mupdf.pdf_page_from_fz_page(page.this), box, ctm)
    return ~pymupdf.Matrix(ctm.a, ctm.b, ctm.c, ctm.d, ctm.e, ctm.f)


def add_text_layer(doc: Any, page: Any, record: Record, blocks: list[TextBlock], font: LayerFont) -> None:
    """Put the blocks' lines on the page as invisible text, after the page's own content."""
    to_pdf = page_matrix(page)
    sx, sy = page.rect.width / record["width"], page.rect.height / record["height"]
    ops = [f"BT 3 Tr /{RESOURCE_NAME} 1 Tf"]
    for block in blocks:
        for line in block.lines:
            drawn = _line_ops(line, sx, sy, to_pdf, font)
            if drawn:
                ops.append(drawn)
    ops.append("ET")
    _append_content(doc, page, "\n".join(ops).encode())
    _add_font_resource(doc, page, font.xref)


def _line_ops(line: TextLine, sx: float, sy: float, to_pdf: Any, font: LayerFont) -> str | None:
    x0, y0, x1, y1 = line.bbox
    corners = line.quad or ((x0, y0), (x1, y0), (x1, y1), (x0, y1))
    tl, tr, _, bl = (pymupdf.Point(x * sx, y * sy) for x, y in corners)
    codes, natural = font.encode(line.text)
    along, up = tr - tl, tl - bl
    if natural <= 0 or abs(along) < 1e-6 or abs(up) < 1e-6:
        return None
    origin = tl + (bl - tl) * ASCENT  # the baseline's start
    along = along / natural
    m = pymupdf.Matrix(along.x, along.y, up.x, up.y, origin.x, origin.y) * to_pdf
    return f"{m.a:.5g} {m.b:.5g} {m.c:.5g} {m.d:.5g} {m.e:.3f} {m.f:.3f} Tm <{codes}> Tj"


def _new_stream(doc: Any, data: bytes) -> int:
    xref = doc.get_new_xref()
    doc.update_object(xref, "<<>>")
    doc.update_stream(xref, data, new=True)
    return xref


def _append_content(doc: Any, page: Any, text: bytes) -> None:
    """Wrap the page's own content in q/Q and add `text` after it; the page's streams are not touched."""
    kind, value = doc.xref_get_key(page.xref, "Contents")
    own = value.strip()[1:-1] if kind == "array" else ("" if kind == "null" else value)
    before, after = _new_stream(doc, b"q\n"), _new_stream(doc, b"\nQ\n" + text + b"\n")
    doc.xref_set_key(page.xref, "Contents", f"[{before} 0 R {own} {after} 0 R]")


def _add_font_resource(doc: Any, page: Any, font_xref: int) -> None:
    """Name the layer font in the page's resources (its own, shared or inherited dictionary)."""
    ref = f"{font_xref} 0 R"
    kind, value = doc.xref_get_key(page.xref, "Resources")
    if kind == "null":  # inherited from the page tree: give the page its own reference or copy
        value = _inherited(doc, page.xref, "Resources") or "<<>>"
        doc.xref_set_key(page.xref, "Resources", value)
        kind = "xref" if value.endswith(" R") else "dict"
    holder, path = (int(value.split()[0]), "") if kind == "xref" else (page.xref, "Resources/")
    fonts_kind, fonts = doc.xref_get_key(holder, path + "Font")
    if fonts_kind == "xref":
        doc.xref_set_key(int(fonts.split()[0]), RESOURCE_NAME, ref)
    elif fonts_kind == "dict":
        doc.xref_set_key(holder, path + "Font/" + RESOURCE_NAME, ref)
    else:
        doc.xref_set_key(holder, path + "Font", f"<</{RESOURCE_NAME} {ref}>>")


def _inherited(doc: Any, xref: int, key: str) -> str | None:
    seen = set()
    while xref and xref not in seen:
        seen.add(xref)
        kind, parent = doc.xref_get_key(xref, "Parent")
        if kind != "xref":
            return None
        xref = int(parent.split()[0])
        kind, value = doc.xref_get_key(xref, key)
        if kind != "null":
            return value
    return None
