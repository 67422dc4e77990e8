"""The OCRmyPDF engine's model side: one recognizer per process, shared by OCRmyPDF's page
threads, and a page image -> a record-shaped dict (the shared record schema: `text`, `width`,
`height`, `lines`, `positions`, `blocks` ...), made by the library API as `scan` makes it.

OCRmyPDF calls the engine once per page, from several threads at once (`--jobs`). The pages
that wait while one batch is being read are taken together as the next batch: one vision pass
and one llama.cpp context decoding up to `parallel` of them together (`PageQueue`).

`read_pages` is the one place that runs the model; the lead will swap it for the shared page
task once that exists (positions from `Spotting:`, confidence); until then a record that has no
`lines` gets them estimated from the ink (`ink_lines`), and says so (`positions: "estimated"`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..batch.layout_mode import LayoutMode, layout_mode
from ..batch.options import ScanOptions
from ..batch.records import Record, make_record
from ..documents.blank import is_blank
from ..documents.images import to_rgb
from ..engine.recognizer import Recognizer
from ..errors import UsageError
from ..layout.parser import DocumentParser
from .ocrmypdf_tree import plain_text

# A pixel is ink when it is this much darker than white (grey levels of 255), for the ink box.
INK_LEVEL = 160


@dataclass(frozen=True)
class ModelSettings:
    """What loads a recognizer and how pages are read: the plugin's --ppvl-* options, resolved."""

    model: str
    quant: str | None = None
    device: str = "cpu"
    vision_dtype: str = "auto"
    threads: int | None = None
    n_gpu_layers: int = 0
    kv_type: str = "f16"
    ctx_size: int | None = None
    task: str = "ocr"
    layout: bool | None = None  # None: when the bundle has a layout model
    max_new_tokens: int = 1024
    min_pixels: int | None = None
    max_pixels: int | None = None
    parallel: int | None = None
    batch_size: int = 4
    skip_blank: bool = True

    def scan_options(self) -> ScanOptions:
        """The same settings as `scan` takes them (layout mode is built from these)."""
        return ScanOptions(inputs=[], task=self.task, layout=self.layout, max_new_tokens=self.max_new_tokens,
                           min_pixels=self.min_pixels, max_pixels=self.max_pixels, parallel=self.parallel,
                           batch_size=self.batch_size, skip_blank=self.skip_blank)


def load_recognizer(s: ModelSettings) -> Recognizer:
    """A lazy recognizer (weights at the first page) with a checked task: ModelError for a bundle
    that is missing or broken, UsageError for a task or layout choice the bundle cannot do."""
    rec = Recognizer.load(
        None if s.model == "demo" else s.model, quant=s.quant, device=s.device, dtype=s.vision_dtype,
        threads=s.threads, n_gpu_layers=s.n_gpu_layers, kv_type=s.kv_type, n_ctx=s.ctx_size,
        min_pixels=s.min_pixels, max_pixels=s.max_pixels, max_new_tokens=s.max_new_tokens,
        parallel=s.parallel or 1, lazy=True,
    )
    if s.task not in rec.tasks:
        rec.close()
        raise UsageError(f"--ppvl-task {s.task} is not available with this model (it has: {', '.join(rec.tasks)})")
    return rec


class PageReader:
    """One model and its reading mode (whole pages, or layout blocks), pages in, records out."""

    def __init__(self, settings: ModelSettings, log: Callable[[str], None]) -> None:
        self.settings = settings
        self.rec = load_recognizer(settings)
        try:
            self.layout: LayoutMode | None = layout_mode(self.rec, settings.scan_options(), Path.cwd())
        except UsageError as e:
            self.rec.close()
            raise UsageError(str(e).replace("--layout", "--ppvl-layout").replace("--task", "--ppvl-task")) from e
        # RuledDetector returns LayoutBlocks, which are DetectedBoxes (list invariance hides it from mypy)
        self.parser = DocumentParser(self.rec, self.layout.detector, self.layout.options) if self.layout else None  # type: ignore[arg-type]
        self.queue = PageQueue(self.read_pages, settings.batch_size)
        self._log = log
        self._loaded = False

    def read(self, image: Image.Image, page: int) -> Record:
        """The record of one page (this thread waits while the batch it joined is read)."""
        return self.queue.submit(image, page)

    def read_pages(self, images: Sequence[Image.Image], pages: Sequence[int]) -> list[Record | Exception]:
        """Records of a batch of pages (or the exception of a page that could not be read)."""
        if not self._loaded:
            self._log(f"loading PaddleOCR-VL {self.rec.bundle.path} ({self.rec.model_id})")
            self.rec.warm()
            self._loaded = True
        images = [to_rgb(im) for im in images]
        blank = [self.settings.skip_blank and is_blank(im) for im in images]
        todo = [i for i, b in enumerate(blank) if not b]
        outcomes: dict[int, Any] = dict(zip(todo, self._recognize([images[i] for i in todo])))
        records: list[Record | Exception] = []
        for i, (image, page) in enumerate(zip(images, pages)):
            outcome = outcomes.get(i)
            if isinstance(outcome, Exception):
                records.append(outcome)
            else:
                records.append(self._record(image, page, outcome))
        return records

    def _recognize(self, images: list[Image.Image]) -> list[Any]:
        """PageResults (or ParsedPages in layout mode), or a DecoderError per failed page."""
        if not images:
            return []
        if self.parser is not None:
            return list(self.parser.parse(images))
        s = self.settings
        encoded = self.rec.encode(images, s.task)
        jobs = [(e, self.rec.request(e, s.task, max_new_tokens=s.max_new_tokens)) for e in encoded]
        done = dict(self.rec.decode_many(jobs))
        return [done[i] for i in range(len(encoded))]

    def _record(self, image: Image.Image, page: int, result: Any) -> Record:
        """The page's record as `scan` writes it, with `lines` estimated where it has none."""
        blank = result is None
        record = make_record(
            source="", sha256=None, page=page, page_count=None, task="layout" if self.layout else self.settings.task,
            prompt=None, model=self.rec.model_id, key="", seconds=0.0 if blank else result.seconds,
            result=result, blank=blank, size=image.size,
            blocks=[b.to_record() for b in result.blocks] if self.layout and not blank else None,
            layout_model=self.layout.model_id if self.layout else None,
        )
        add_estimated_lines(record, image)
        return record


def add_estimated_lines(record: Record, image: Image.Image) -> None:
    """Give a record without `lines` (and each layout block without them) lines estimated from
    the ink of its region, in the record's pixels (its `width` x `height`)."""
    if record.get("lines") is not None or not record.get("width"):
        return
    sx, sy = record["width"] / image.width, record["height"] / image.height
    grey = np.asarray(image.convert("L"))
    if record.get("blocks") is not None:
        for block in record["blocks"]:
            if block.get("lines") is None and block.get("text") and block.get("format") != "image":
                x0, y0, x1, y1 = block["bbox"]  # pixels of the page as rendered: the image itself
                block["lines"] = ink_lines(plain_text(block["text"]), grey[y0:y1, x0:x1], (x0, y0), (1.0, 1.0))
        record["lines"] = [line for b in record["blocks"] for line in b.get("lines") or ()]
    else:
        record["lines"] = ink_lines(plain_text(record["text"] or ""), grey, (0, 0), (sx, sy))
    record["positions"] = "estimated"


def ink_lines(text: str, grey: np.ndarray, offset: tuple[int, int], scale: tuple[float, float]) -> list[dict[str, Any]]:
    """The text's lines stacked in the ink box of `grey` (a region at `offset` in the page), one
    band of equal height per line, coordinates times `scale`. A band is at most half as tall as it
    is wide: OCRmyPDF's renderer drops a line whose box is taller than wide and far narrower than
    its text would be (a whole page's ink given to one short line)."""
    rows = [row.strip() for row in text.splitlines() if row.strip()]
    if not rows:
        return []
    ys, xs = np.nonzero(grey < INK_LEVEL) if grey.size else (np.array([]), np.array([]))
    if len(xs):
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    else:  # no ink (a faint page): the whole region
        x0, y0, x1, y1 = 0, 0, grey.shape[1], grey.shape[0]
    band = min((y1 - y0) / len(rows), (x1 - x0) / 2)
    lines = []
    for n, row in enumerate(rows):
        box = [(x0 + offset[0]) * scale[0], (y0 + offset[1] + n * band) * scale[1],
               (x1 + offset[0]) * scale[0], (y0 + offset[1] + (n + 1) * band) * scale[1]]
        quad = [[box[0], box[1]], [box[2], box[1]], [box[2], box[3]], [box[0], box[3]]]
        lines.append({"text": row, "bbox": box, "quad": quad, "confidence": None})
    return lines


@dataclass
class _Item:
    image: Image.Image
    page: int
    outcome: Any = None
    done: bool = False


@dataclass
class PageQueue:
    """Pages submitted from many threads, read in batches by whichever waiting thread is free:
    the first page is read at once, the pages that arrive meanwhile go together in the next batch."""

    run: Callable[[Sequence[Image.Image], Sequence[int]], list[Any]]
    batch_size: int
    _pending: list[_Item] = field(default_factory=list)
    _busy: bool = False
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def submit(self, image: Image.Image, page: int) -> Any:
        item = _Item(image, page)
        with self._cond:
            self._pending.append(item)
            while not item.done:
                if self._busy:
                    self._cond.wait()
                    continue
                self._busy = True
                batch, self._pending = self._pending[: self.batch_size], self._pending[self.batch_size:]
                self._cond.release()
                try:
                    outcomes: list[Any] = self.run([i.image for i in batch], [i.page for i in batch])
                except BaseException as e:  # noqa: BLE001 - every page of the batch gets it (Ctrl-C too), raised in its thread
                    outcomes = [e] * len(batch)
                finally:
                    self._cond.acquire()
                for waiting, outcome in zip(batch, outcomes):
                    waiting.outcome, waiting.done = outcome, True
                self._busy = False
                self._cond.notify_all()
        if isinstance(item.outcome, BaseException):
            raise item.outcome
        return item.outcome


_readers: dict[ModelSettings, PageReader] = {}
_readers_lock = threading.Lock()


def shared_reader(settings: ModelSettings, log: Callable[[str], None]) -> PageReader:
    """The process's reader for these settings, made at first use (one model per process)."""
    with _readers_lock:
        reader = _readers.get(settings)
        if reader is None:
            for old in _readers.values():  # another job of this process with other settings
                old.rec.close()
            _readers.clear()
            reader = _readers[settings] = PageReader(settings, log)
        return reader

