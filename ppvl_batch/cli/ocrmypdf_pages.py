"""The OCRmyPDF engine's model side: one recognizer per process, shared by OCRmyPDF's page
threads, and a page image -> a record-shaped dict (the shared record schema: `text`, `width`,
`height`, `lines`, `positions`, `blocks` ...), made by the library API as `scan` makes it.

OCRmyPDF calls the engine once per page, from several threads at once (`--jobs`). The pages
that wait while one batch is being read are taken together as the next batch: one vision pass
and one llama.cpp context decoding up to `parallel` of them together (`PageQueue`).

`read_pages` runs the model through scan's own page work (batch/work.PageWork over the page
strategy, records from records.build_record), so a page's record is scan's: confidence, review,
`lines` from spotting or estimated from the ink (layout/positions.py). A text layer must hold all
the text, so a whole page whose ink could not be matched to its lines gets them stacked over its
ink (positions.stacked_lines; `positions: "estimated"`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ..batch.options import ScanOptions
from ..batch.records import Record
from ..batch.strategy import StrategyPlan, choose_strategy
from ..batch.task import PageTask, Rendered
from ..batch.work import PageWork
from ..bundle import Bundle, resolve_model
from ..documents.blank import is_blank
from ..documents.images import to_rgb
from ..documents.pages import PageError
from ..engine.recognizer import Recognizer
from ..errors import UsageError
from ..layout.lines import ink_mask
from ..layout.positions import stacked_lines
from .ocrmypdf_tree import plain_text


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


def load_recognizer(s: ModelSettings, bundle: Bundle, **recognizer_options: Any) -> Recognizer:
    """A lazy recognizer (weights at the first page) with a checked task, built as the page
    strategy asks (`recognizer_options`: parallel, context_pixels): UsageError for a task the
    bundle cannot do."""
    rec = Recognizer(
        bundle, quant=s.quant, device=s.device, dtype=s.vision_dtype,
        threads=s.threads, n_gpu_layers=s.n_gpu_layers, kv_type=s.kv_type, n_ctx=s.ctx_size,
        min_pixels=s.min_pixels, max_pixels=s.max_pixels, max_new_tokens=s.max_new_tokens,
        **{"parallel": s.parallel or 1, **recognizer_options}, lazy=True,
    )
    if s.task not in rec.tasks:
        rec.close()
        raise UsageError(f"--ppvl-task {s.task} is not available with this model (it has: {', '.join(rec.tasks)})")
    return rec


def choose_plan(options: ScanOptions, bundle: Bundle) -> StrategyPlan:
    """scan's page strategy (whole pages or layout mode), its errors in the plugin's words."""
    try:
        return choose_strategy(options, bundle)
    except UsageError as e:
        raise UsageError(str(e).replace("--layout", "--ppvl-layout").replace("--task", "--ppvl-task")) from e


class PageReader:
    """One model and its page strategy (whole pages, or layout blocks), pages in, records out."""

    def __init__(self, settings: ModelSettings, log: Callable[[str], None]) -> None:
        self.settings = settings
        options = settings.scan_options()
        bundle = Bundle.open(resolve_model(None if settings.model == "demo" else settings.model))
        plan = choose_plan(options, bundle)
        self.rec = load_recognizer(settings, bundle, **plan.recognizer_options())
        self.work = PageWork(plan.start(self.rec, Path.cwd()), options.page, self.rec.model_id)
        self.queue = PageQueue(self.read_pages, settings.batch_size)
        self._log = log
        self._loaded = False

    def read(self, image: Image.Image, page: int) -> Record:
        """The record of one page (this thread waits while the batch it joined is read)."""
        return self.queue.submit(image, page)

    def read_pages(self, images: Sequence[Image.Image], pages: Sequence[int]) -> list[Record | Exception]:
        """Records of a batch of pages (or the error of a page that could not be read)."""
        if not self._loaded:
            self._log(f"loading PaddleOCR-VL {self.rec.bundle.path} ({self.rec.model_id})")
            self.rec.warm()
            self._loaded = True
        images = [to_rgb(im) for im in images]
        rendered = [self._prepare(image, page) for image, page in zip(images, pages)]
        by_page = {id(page): record for page, record in self.work.read(rendered)}
        out: list[Record | Exception] = []
        for image, page in zip(images, rendered):
            record = by_page[id(page)]
            if record["status"] == "error":
                out.append(RuntimeError(f"{record['error']['type']}: {record['error']['message']}"))
            else:
                out.append(place_all_lines(record, image))
        return out

    def _prepare(self, image: Image.Image, number: int) -> Rendered:
        """A page image as scan's page work takes it (blank, prepared, or the error it met)."""
        page = Rendered(PageTask("", "", "", number, None, None))
        try:
            if self.settings.skip_blank and is_blank(image):
                page.blank_size = image.size
            else:
                page.input = self.work.strategy.prepare(image)
        except (ValueError, OSError) as e:  # the model's preprocessing refused the image
            page.error = PageError("unsupported", f"page cannot be prepared for the model: {e}")
        return page


def place_all_lines(record: Record, image: Image.Image) -> Record:
    """A whole page's record whose text could not be matched to its ink gets every line stacked
    over the ink (a text layer holds all the text); layout blocks always have their lines."""
    if record.get("lines") is None and record.get("blocks") is None and record.get("text"):
        record["lines"] = stacked_lines(ink_mask(image), plain_text(record["text"]))
        record["positions"] = "estimated"
    return record


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

