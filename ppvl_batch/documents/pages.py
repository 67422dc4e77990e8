"""Pages: documents (PDF, images) -> page images (PIL, RGB), one page at a time.

Every way a document or a page can fail maps to a PageError with a short `type` that goes into the
record (`error.type`):

    missing      the path does not exist (or vanished after it was listed)
    unreadable   no permission, or an I/O error while reading
    empty        0-byte file, or a PDF without pages
    unsupported  not a PDF or an image format we read
    corrupt      a PDF or image whose data cannot be decoded
    truncated    an image whose data ends early
    encrypted    a PDF that needs a password (`--password`), or the password is wrong
    too_large    an image over PIL's decompression-bomb limit, or too big to decode in memory
    internal     anything else that went wrong with this file (the message names the exception);
                 the file fails alone, the run goes on

A document PyMuPDF had to repair (a truncated or damaged PDF it rebuilt) opens, but carries a
`repaired: ...` warning that goes into each of its records.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import struct
import traceback
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, UnidentifiedImageError

from .images import IMAGE_FORMATS, to_rgb
from .inputs import DOCUMENT_EXTENSIONS
from .mupdf import pymupdf

if TYPE_CHECKING:
    from .text_layer import TextLayer

# Formats whose files may hold several pages; the others (GIF, WebP, APNG animations) give their
# first frame only.
MULTI_PAGE_FORMATS = frozenset({"TIFF"})
PDF_EXTENSIONS = frozenset({".pdf"})
# A page rendered at an explicit --dpi is capped at this many pixels, so one poster-sized page
# cannot exhaust memory; the model would scale it down to max_pixels anyway.
MAX_RENDER_PIXELS = 40_000_000

pymupdf.TOOLS.mupdf_display_errors(False)  # MuPDF's own warnings would clutter stderr


class PageError(Exception):
    """A document or page that cannot be turned into an image; `type` goes into the record."""

    def __init__(self, type: str, message: str) -> None:
        super().__init__(message)
        self.type = type
        self.message = message


# --------------------------------------------------------------------------------------------
# --pages


@dataclass(frozen=True)
class PageRanges:
    """A `--pages` selection such as `1-3,7,10-` (1-based, inclusive; `N-` runs to the end)."""

    ranges: tuple[tuple[int, int | None], ...]

    @classmethod
    def parse(cls, text: str) -> PageRanges:
        ranges: list[tuple[int, int | None]] = []
        for part in text.replace(" ", "").split(","):
            m = re.fullmatch(r"(\d+)(?:(-)(\d*))?", part)
            if not m:
                raise ValueError(f"bad page range {part!r} (use e.g. 1-3,7,10-)")
            first = int(m.group(1))
            last = first if not m.group(2) else (int(m.group(3)) if m.group(3) else None)
            if first < 1 or (last is not None and last < first):
                raise ValueError(f"bad page range {part!r} (pages count from 1, low to high)")
            ranges.append((first, last))
        return cls(tuple(ranges))

    def select(self, page_count: int) -> list[int]:
        """Selected page numbers that exist in a document of `page_count` pages, ascending."""
        chosen: set[int] = set()
        for first, last in self.ranges:
            chosen.update(range(first, min(page_count, last or page_count) + 1))
        return sorted(chosen)


# --------------------------------------------------------------------------------------------
# reading


def file_sha256(path: Path) -> str:
    """sha256 of the file's bytes; raises PageError (missing, unreadable)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    except OSError as e:
        raise _os_error(e) from e
    return digest.hexdigest()


def _os_error(e: OSError) -> PageError:
    if isinstance(e, FileNotFoundError):
        return PageError("missing", "no such file")
    if isinstance(e, IsADirectoryError):
        return PageError("unsupported", "is a directory")
    return PageError("unreadable", e.strerror or str(e))


# Exception types that PIL's and MuPDF's decoders raise on damaged data (besides their own): when
# raised inside those libraries they mean a corrupt file, elsewhere a bug of ours (`internal`).
_DECODER_ERRORS = (
    struct.error, IndexError, TypeError, KeyError, ValueError, ZeroDivisionError, EOFError, SyntaxError,
    AttributeError, OverflowError, RuntimeError, AssertionError, UnicodeDecodeError,
)
_DECODER_MODULES = (f"{os.sep}PIL{os.sep}", f"{os.sep}pymupdf{os.sep}", f"{os.sep}fitz{os.sep}")
_TRUNCATION_WORDS = ("truncated", "broken data stream", "not enough data", "premature end", "unexpected end", "eof")


def _raised_in_decoder(e: BaseException) -> bool:
    frames = traceback.extract_tb(e.__traceback__)
    return bool(frames) and any(m in frames[-1].filename for m in _DECODER_MODULES)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def classify_error(e: Exception, doing: str) -> PageError:
    """The PageError a failure while `doing` something with one file stands for. Every exception
    maps to one, so one file can never end a run."""
    if isinstance(e, PageError):
        return e
    if isinstance(e, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return PageError("too_large", str(e))
    if isinstance(e, MemoryError):
        return PageError("too_large", f"{doing}: out of memory while decoding")
    if isinstance(e, OSError) and e.errno is not None:  # a real I/O error, not a decoder's complaint
        return _os_error(e)
    text = _first_line(e)
    if isinstance(e, (OSError, pymupdf.FileDataError, pymupdf.mupdf.FzErrorBase)) or (
        isinstance(e, _DECODER_ERRORS) and _raised_in_decoder(e)
    ):
        if any(word in text.lower() for word in _TRUNCATION_WORDS):
            return PageError("truncated", f"{doing}: data ends early: {text}")
        return PageError("corrupt", f"{doing}: data cannot be decoded: {text}")
    return PageError("internal", f"{doing}: {type(e).__name__}: {text}")


def auto_zoom(width_pt: float, height_pt: float, max_pixels: int) -> float:
    """Zoom (1.0 = 72 dpi) at which a page of this size renders to about `max_pixels`, so the
    model sees as much detail as it can use and no pixels are rendered only to be thrown away."""
    return math.sqrt(max_pixels / max(width_pt * height_pt, 1.0))


class OpenDocument(ABC):
    """An open document. `page_count` pages, rendered one at a time by `render(n)` (1-based)."""

    page_count: int
    warnings: tuple[str, ...] = ()  # go into every record of the document

    @abstractmethod
    def render(self, number: int) -> Image.Image: ...

    @abstractmethod
    def close(self) -> None: ...

    def size_pt(self, number: int) -> tuple[float, float] | None:
        """A PDF page's size in points, as shown (rotation applied); None for an image."""
        return None

    def text_layer(self, number: int) -> TextLayer | None:
        """The page's own text layer, or None for a document without one (images)."""
        return None

    def __enter__(self) -> OpenDocument:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PdfDocument(OpenDocument):
    def __init__(self, path: Path, password: str | None, dpi: float | None, max_pixels: int) -> None:
        pymupdf.TOOLS.reset_mupdf_warnings()
        try:
            self._doc = pymupdf.open(path, filetype="pdf")
        except (pymupdf.FileDataError, RuntimeError, ValueError) as e:
            raise PageError("corrupt", f"cannot open PDF: {e}") from e
        except OSError as e:
            raise classify_error(e, "cannot open PDF") from e
        if self._doc.is_repaired:
            # MuPDF rebuilt a damaged or truncated file: its pages open, but some may be missing.
            said = [line for line in pymupdf.TOOLS.mupdf_warnings().splitlines() if line.strip()]
            self.warnings = (f"repaired: {'; '.join(said[:3]) or 'the file was damaged and rebuilt'}"[:300],)
        if self._doc.needs_pass:
            if password is None:
                self._doc.close()
                raise PageError("encrypted", "PDF is encrypted; give its password with --password")
            if not self._doc.authenticate(password):
                self._doc.close()
                raise PageError("encrypted", "PDF is encrypted and the password is wrong")
        self.page_count = self._doc.page_count
        if self.page_count == 0:
            self._doc.close()
            raise PageError("empty", "PDF has no pages")
        self._dpi = dpi
        self._max_pixels = max_pixels

    def _zoom(self, page: Any) -> float:  # a pymupdf.Page
        rect = page.rect
        zoom = self._dpi / 72 if self._dpi else auto_zoom(rect.width, rect.height, self._max_pixels)
        area = rect.width * rect.height * zoom * zoom
        if area > MAX_RENDER_PIXELS:
            zoom *= math.sqrt(MAX_RENDER_PIXELS / area)
        return zoom

    def render(self, number: int) -> Image.Image:
        try:
            page = self._doc.load_page(number - 1)
            zoom = self._zoom(page)
            pix = page.get_pixmap(matrix=pymupdf.Matrix(zoom, zoom), colorspace=pymupdf.csRGB, alpha=False)
        except Exception as e:  # MuPDF reports damaged page content with several error types
            raise classify_error(e, f"cannot render page {number}") from e
        if pix.width == 0 or pix.height == 0:
            raise PageError("empty", f"page {number} has zero size")
        return Image.frombytes("RGB", (pix.width, pix.height), pix.samples)

    def text_layer(self, number: int) -> TextLayer:
        """Page `number`'s own text layer (documents/text_layer.py), its boxes in pixels of the image
        `render(number)` returns. Raises TextLayerError when it cannot be read."""
        from ppvl_batch.documents.text_layer import TextLayerError, read_text_layer

        try:
            page = self._doc.load_page(number - 1)
            zoom = self._zoom(page)
        except Exception as e:  # the page cannot even be loaded: render() will say why
            raise TextLayerError(f"text layer unreadable: {classify_error(e, f'page {number}').message}") from e
        size = (page.rect * pymupdf.Matrix(zoom, zoom)).irect  # the pixmap render() makes (tested)
        return read_text_layer(page, (size.width, size.height))

    def size_pt(self, number: int) -> tuple[float, float] | None:
        rect = self._doc.load_page(number - 1).rect
        return (rect.width, rect.height)

    def close(self) -> None:
        self._doc.close()


class ImageDocument(OpenDocument):
    def __init__(self, path: Path, known_extension: bool) -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                self._image = Image.open(path)
        except UnidentifiedImageError as e:
            if known_extension:
                raise PageError("corrupt", "image data cannot be decoded") from e
            raise PageError("unsupported", "not a PDF or a supported image") from e
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise PageError("too_large", str(e)) from e
        except OSError as e:  # an I/O error (errno set) or a decoder's complaint (none)
            raise classify_error(e, "cannot open") from e
        if self._image.format not in IMAGE_FORMATS:
            fmt = self._image.format
            self._image.close()
            raise PageError("unsupported", f"{fmt} images are not supported")
        multi = self._image.format in MULTI_PAGE_FORMATS
        try:
            # n_frames walks the TIFF's directory chain: a damaged one fails here
            # (Pillow declares n_frames only on its multi-frame plugins' classes, not on ImageFile)
            self.page_count = self._image.n_frames if multi else 1  # type: ignore[attr-defined]
        except Exception as e:
            self._image.close()
            raise classify_error(e, "cannot count the frames") from e

    def render(self, number: int) -> Image.Image:
        try:
            self._image.seek(number - 1)
            self._image.load()
            return to_rgb(self._image)
        except Exception as e:  # PIL's decoders raise many types on damaged data
            raise classify_error(e, "image") from e

    def close(self) -> None:
        self._image.close()


def open_document(
    path: Path, *, password: str | None = None, dpi: float | None = None, max_pixels: int
) -> OpenDocument:
    """Open a PDF or image for rendering. PDFs render at `dpi`, or when None at the dpi that
    brings each page near `max_pixels`. Raises PageError for a document that cannot be used."""
    try:
        size = os.stat(path).st_size
        with open(path, "rb") as f:
            head = f.read(1024)
    except OSError as e:
        raise _os_error(e) from e
    if size == 0:
        raise PageError("empty", "file is empty (0 bytes)")
    extension = path.suffix.lower()
    # MuPDF accepts a PDF header anywhere in the first 1 KB; so do we.
    try:
        if b"%PDF-" in head or extension in PDF_EXTENSIONS:
            return PdfDocument(path, password, dpi, max_pixels)
        return ImageDocument(path, extension in DOCUMENT_EXTENSIONS)
    except Exception as e:
        raise classify_error(e, "cannot open") from e
