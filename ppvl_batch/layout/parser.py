"""Pages -> parsed pages: layout blocks in reading order, each read with its own prompt, and the
page's Markdown (docs/layout-text.md, "The parser").

    parser = DocumentParser(recognizer, detector, ParserOptions(images_dir=Path("doc_images")))
    # or, with the bundle's own layout model: DocumentParser.for_recognizer(recognizer, options)
    [page] = parser.parse([Image.open("scan.png")])
    page.markdown, [b.to_record() for b in page.blocks], page.output_tokens

One `parse` call is one batch: the detector sees all its pages at once, every block of every page
goes through the vision encoder together, and the blocks are decoded through `decode_many`
(`parallel` of them in flight, as the recognizer was loaded). A block that cannot be cut,
encoded or decoded gets its own `error`; the page and the other blocks go on. The parser never
changes its recognizer: load it with `context_pixels` set to the blocks' max_pixels (as scan
and ask --layout do) so that a block above the pages' own pixel limit fits the context.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from PIL import Image

from ..engine.confidence import TextConfidence
from ..engine.llama import DecoderError
from ..errors import OutputError
from .blocks import BLOCK_MAX_PIXELS, BLOCK_MIN_PIXELS, CropError, block_input, crop_block, finish_text
from .labels import MARKDOWN_IGNORE_LABELS, Block, block_format, block_task, prompt_table, reading_orders, saves_image
from .markdown import MarkdownOptions, PageText, document_markdown, image_filename, image_link, page_markdown
from .positions import page_block_lines

if TYPE_CHECKING:
    from ..engine.recognizer import EncodedPage, Recognizer
    from ..engine.vision import PreparedImage


class DetectedBox(Protocol):
    """What the parser needs of one detected block (the detector's LayoutBlock has it):
    a label of labels.LABELS, a score, x0 y0 x1 y1 in pixels of the page given to `detect`.
    A box may also carry `polygon` (PP-DocLayoutV3), a list of (x, y) points outside which its
    crop is painted white, or `quad` (PP-DocLayoutV4), four corners that are recorded as the
    block's `polygon` while its crop is the bbox (docs/layout-text.md, "Crops")."""

    @property
    def label(self) -> str: ...

    @property
    def score(self) -> float: ...

    @property
    def bbox(self) -> Sequence[float]: ...


class Detector(Protocol):
    """Layout detection with the pipeline's box rules applied: per page, its kept boxes in
    reading order."""

    def detect(self, images: list[Image.Image]) -> Sequence[list[DetectedBox]]: ...


def _warp_params(boxes: object) -> list[float] | None:
    """A page's warp_params, when its detections carry them (postprocess.PageLayout)."""
    warp = getattr(boxes, "warp_params", None)
    return None if warp is None else [float(v) for v in warp]


@dataclass(frozen=True)
class ParserOptions:
    charts: bool = False  # read charts with `Chart Recognition:` (otherwise saved as images)
    seals: bool = False  # read seals with `Seal Recognition:` (1.5+ bundles; saved as images either way)
    min_pixels: int = BLOCK_MIN_PIXELS  # pixel limits of every block crop
    max_pixels: int = BLOCK_MAX_PIXELS
    max_new_tokens: int | None = None  # per block; None: the recognizer's
    merge_tables: bool = True  # join tables that run over a page break (document Markdown)
    ignore_labels: frozenset[str] = MARKDOWN_IGNORE_LABELS  # kept in the blocks, left out of Markdown
    formula_numbers: bool = False  # put formula numbers on their formula as \tag*{n}
    images_dir: Path | None = None  # where image blocks are saved; None: not saved (no link)
    links_from: Path | None = None  # folder the Markdown file is in; None: images_dir's parent

    def markdown_options(self) -> MarkdownOptions:
        return MarkdownOptions(self.merge_tables, self.ignore_labels, self.formula_numbers)

    def prompt_choices(self) -> dict[str, object]:
        """What of these options a block's text depends on (for a checkpoint key)."""
        return {
            "prompts": prompt_table(charts=self.charts, seals=self.seals),
            "min_pixels": self.min_pixels,
            "max_pixels": self.max_pixels,
            "max_new_tokens": self.max_new_tokens,
        }


@dataclass
class ParsedPage:
    """One page's result. `text`, `width`, `height`, `finish_reason`, `image_tokens`,
    `output_tokens` and `seconds` mean what they mean on a recognizer PageResult, for the page
    as a whole: a record can be made from either."""

    blocks: list[Block]
    markdown: str  # this page alone (tables merged across pages: DocumentParser.markdown)
    width: int  # the page as given to parse()
    height: int
    image_tokens: int  # image tokens of all the page's blocks (what went into the decoder)
    prompt_tokens: int  # image and text tokens of all its blocks' prompts
    output_tokens: int
    layout_seconds: float  # this page's share of the detection call
    vision_seconds: float  # its blocks' preprocessing and share of the vision passes
    decode_seconds: float  # its share of the decoding, by its blocks' prefill + decode time
    finish_reason: str = "stop"  # the first block's that did not stop: length or repetition
    errors: int = 0  # blocks with an error entry
    # PP-DocLayoutV4's page geometry (roll, quadrant confidence, shear, kx, ky) when the layout
    # model has that head: recorded, not applied
    warp_params: list[float] | None = None
    lines: list[dict] | None = None  # every block's lines, in block order (estimated from the ink)
    tokens: TextConfidence = field(default_factory=TextConfidence)  # all its blocks' token probabilities
    text_source: str = "model"

    @property
    def text(self) -> str:
        return self.markdown

    @property
    def confidence(self) -> float | None:
        """Over all the page's blocks' tokens (records.build_record reads it and the below)."""
        return self.tokens.fields()["confidence"]

    @property
    def min_token_prob(self) -> float | None:
        return self.tokens.fields()["min_token_prob"]

    @property
    def positions(self) -> str | None:
        return "estimated" if self.lines is not None else None

    @property
    def unparsed(self) -> tuple[str, ...]:
        """A table block left as text (not OTSL) is an unparsed table (review.py)."""
        tables = any(b.label == "table" and b.format != "html" and b.text.strip() for b in self.blocks)
        return ("table",) if tables else ()

    @property
    def seconds(self) -> float:
        return self.layout_seconds + self.vision_seconds + self.decode_seconds


@dataclass
class _Job:
    """A block on its way through vision and decoding."""

    page: int  # index in the parse() call
    block: Block
    prepared: PreparedImage | None  # dropped once encoded, and the embedding once decoded:
    vision_seconds: float  # a batch of many pages holds only what is still to come
    encoded: EncodedPage | None = None
    image_tokens: int = 0  # once decoded
    prompt_tokens: int = 0
    busy_seconds: float = 0.0  # its prefill + decode time
    confidence: TextConfidence = field(default_factory=TextConfidence)


def _prepared(job: _Job) -> PreparedImage:
    assert job.prepared is not None  # set when the job is made, dropped only once it is encoded
    return job.prepared


class DocumentParser:
    """Document parsing over a Recognizer: each page's layout is detected (a Detector, the bundle's
    layout model by default), its blocks put in reading order and read one by one with their
    label's prompt (tables as OTSL, formulas as LaTeX, charts and seals when asked), and the page
    becomes blocks and Markdown (layout/markdown.py). `for_recognizer` builds one from the
    recognizer's own bundle; `parse(images)` gives one ParsedPage per image."""

    @classmethod
    def for_recognizer(cls, recognizer: Recognizer, options: ParserOptions | None = None, *,
                       threshold: float | None = None, batch_size: int | None = None) -> DocumentParser:
        """A parser with the recognizer's bundle's layout model (ModelError when it has none),
        run on the recognizer's device: the same set-up as `scan` in layout mode."""
        from .detector import bundle_detector

        return cls(recognizer, bundle_detector(recognizer.bundle, recognizer.device, threshold, batch_size), options)

    def __init__(self, recognizer: Recognizer, detector: Detector, options: ParserOptions | None = None):
        self.rec = recognizer
        self.detector = detector
        self.o = options or ParserOptions()
        if self.o.seals and "seal" not in recognizer.tasks:
            raise ValueError("seal recognition needs a PaddleOCR-VL 1.5 or later bundle")
        if self.o.min_pixels > self.o.max_pixels:
            raise ValueError(f"block min_pixels {self.o.min_pixels} is above max_pixels {self.o.max_pixels}")

    # -- the batch ----------------------------------------------------------------------------

    def parse(self, pages: Sequence[Image.Image], first_page: int = 0,
              layers: Sequence[Any] | None = None) -> list[ParsedPage]:
        """Parse a batch of pages. `first_page`: the document's number of pages[0], for the
        saved images' names (p{number:04d}_{block:03d}_{label}.png). `layers`: each page's PDF
        text layer or None (documents/text_layer.TextLayer): a plain-text block whose region of
        it is trusted takes its text from there instead of the model."""
        pages = list(pages)
        if not pages:
            return []
        started = time.perf_counter()
        detected = self.detector.detect(pages)
        layout_seconds = (time.perf_counter() - started) / len(pages)
        if len(detected) != len(pages):
            raise ValueError(f"the detector returned {len(detected)} pages for {len(pages)}")

        page_blocks: list[list[Block]] = []
        jobs: list[_Job] = []
        for p, (page, boxes) in enumerate(zip(pages, detected)):
            blocks = self._blocks(boxes)
            for block, box in zip(blocks, boxes):
                polygon = getattr(box, "polygon", None)
                if saves_image(block.label, charts=self.o.charts, seals=self.o.seals):
                    self._save_image(page, block, polygon, first_page + p)
                if block.task is not None and block.error is None and not self._from_layer(block, layers, p):
                    job = self._prepare(p, page, block, polygon)
                    if job is not None:
                        jobs.append(job)
            page_blocks.append(blocks)

        self._encode(jobs)
        decode_wall = self._decode([j for j in jobs if j.encoded is not None])
        # each page's share of the decoding wall time, by its blocks' own prefill + decode time
        busy = sum(j.busy_seconds for j in jobs)
        return [
            self._page(page, blocks, [j for j in jobs if j.page == p], layout_seconds,
                       decode_wall / busy if busy else 0.0, _warp_params(boxes))
            for p, (page, blocks, boxes) in enumerate(zip(pages, page_blocks, detected))
        ]

    def markdown(self, pages: Iterable[ParsedPage | Sequence[Block]]) -> str:
        """One document's Markdown from its consecutive pages (parsed pages, or the blocks of
        records read back): tables merged across pages unless merge_tables is off."""
        blocks = [p.blocks if isinstance(p, ParsedPage) else list(p) for p in pages]
        return document_markdown([PageText(blocks=b) for b in blocks], self.o.markdown_options())

    # -- steps --------------------------------------------------------------------------------

    def _blocks(self, boxes: Sequence[DetectedBox]) -> list[Block]:
        orders = reading_orders([box.label for box in boxes], self.o.ignore_labels)
        return [
            Block(
                id=i,
                label=box.label,
                bbox=tuple(box.bbox),  # type: ignore[arg-type]
                score=float(box.score),
                order=order,
                task=block_task(box.label, charts=self.o.charts, seals=self.o.seals),
                format=block_format(box.label, charts=self.o.charts, seals=self.o.seals),
                polygon=getattr(box, "quad", None),
            )
            for i, (box, order) in enumerate(zip(boxes, orders))
        ]

    def _from_layer(self, block: Block, layers: Sequence[Any] | None, p: int) -> bool:
        """A plain-text block (task ocr) takes its text and lines from the page's text layer when
        the layer's text inside its box is trusted; tables, formulas, charts and seals never do."""
        layer = layers[p] if layers is not None else None
        if layer is None or block.task != "ocr":
            return False
        region = layer.region(block.bbox)
        if not region.trust.trusted:
            return False
        block.text, block.format = finish_text(block.label, region.text, charts=self.o.charts)
        block.text_source, block.lines = "pdf", [line.record() for line in region.lines]
        block.output_tokens = 0  # nothing generated (finish_reason stays None)
        return True

    def _save_image(self, page: Image.Image, block: Block, polygon, number: int) -> None:
        """Write the block's crop (as cut, no trim or padding) and link it, when there is an
        images folder. A box with no pixels becomes the block's error."""
        if self.o.images_dir is None:
            return
        try:
            crop = crop_block(page, block.bbox, polygon)
        except CropError as e:
            block.fail("crop", str(e))
            return
        path = self.o.images_dir / image_filename(number, block)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            crop.save(path, format="PNG")
        except OSError as e:  # the folder, not this block, is wrong: every later image would fail too
            raise OutputError(f"cannot write {path}: {e.strerror or e}") from e
        block.image = image_link(self._markdown_anchor(), path)

    def _markdown_anchor(self) -> Path:
        """A path in the Markdown file's folder, for image_link."""
        folder = self.o.links_from if self.o.links_from is not None else self.o.images_dir.parent  # type: ignore[union-attr]
        return folder / "page.md"

    def _prepare(self, p: int, page: Image.Image, block: Block, polygon) -> _Job | None:
        started = time.perf_counter()
        try:
            image = block_input(page, block.label, block.bbox, polygon)
        except CropError as e:
            block.fail("crop", str(e))
            return None
        try:
            prepared = self.rec.preprocessor(image, min_pixels=self.o.min_pixels, max_pixels=self.o.max_pixels)
        except (ValueError, RuntimeError) as e:
            block.fail("recognition", f"preprocessing failed: {e}")
            return None
        return _Job(p, block, prepared, time.perf_counter() - started)

    def _encode(self, jobs: list[_Job]) -> None:
        """Vision for all the blocks at once; if that fails, block by block, so that a bad
        block fails alone."""
        if not jobs:
            return
        encoded: list[EncodedPage | None]
        try:
            encoded = [*self.rec.encode([_prepared(j) for j in jobs])]
        except (RuntimeError, ValueError):
            encoded = []
            for job in jobs:
                try:
                    encoded += self.rec.encode([_prepared(job)])
                except (RuntimeError, ValueError) as e:
                    job.block.fail("recognition", f"vision encoder failed: {e}")
                    encoded.append(None)
        for job, page in zip(jobs, encoded):
            job.encoded, job.prepared = page, None
            if page is not None:
                job.vision_seconds += page.embedding.seconds

    def _decode(self, jobs: list[_Job]) -> float:
        """Decode every encoded block, `parallel` at a time; returns the wall time."""
        started = time.perf_counter()
        # every job here is encoded (the caller keeps only those): the filter drops none, so that
        # decode_many's indices stay the jobs' own, and tells the type checker so
        requests = ((j.encoded, self.rec.request(j.encoded, j.block.task, max_new_tokens=self.o.max_new_tokens))
                    for j in jobs if j.encoded is not None)
        for index, outcome in self.rec.decode_many(requests):
            job = jobs[index]
            job.encoded = None
            if isinstance(outcome, DecoderError):
                job.block.fail("recognition", f"decoder failed: {outcome}")
                continue
            job.block.text, job.block.format = finish_text(job.block.label, outcome.text, charts=self.o.charts)
            job.block.finish_reason = outcome.finish_reason
            job.block.text_source = "model"
            job.block.output_tokens = outcome.output_tokens
            job.confidence = outcome.text_confidence()
            fields = job.confidence.fields()
            job.block.confidence, job.block.min_token_prob = fields["confidence"], fields["min_token_prob"]
            job.image_tokens, job.prompt_tokens = outcome.image_tokens, outcome.prompt_tokens
            job.busy_seconds = outcome.prefill_seconds + outcome.decode_seconds
        return time.perf_counter() - started

    def _page(self, page: Image.Image, blocks: list[Block], own: list[_Job], layout_seconds: float, decode_scale: float,
              warp_params: list[float] | None) -> ParsedPage:
        reasons = [b.finish_reason for b in blocks if b.finish_reason not in (None, "stop")]
        lines = page_block_lines(np.asarray(page.convert("L")), blocks)
        return ParsedPage(
            blocks=blocks,
            markdown=page_markdown(blocks, ignore=self.o.ignore_labels, formula_numbers=self.o.formula_numbers),
            width=page.width,
            height=page.height,
            image_tokens=sum(j.image_tokens for j in own),
            prompt_tokens=sum(j.prompt_tokens for j in own),
            output_tokens=sum(b.output_tokens or 0 for b in blocks),
            layout_seconds=layout_seconds,
            vision_seconds=sum(j.vision_seconds for j in own),
            decode_seconds=decode_scale * sum(j.busy_seconds for j in own),
            finish_reason=reasons[0] if reasons else "stop",
            errors=sum(b.error is not None for b in blocks),
            warp_params=warp_params,
            lines=lines,
            tokens=TextConfidence.combine(j.confidence for j in own),
        )
