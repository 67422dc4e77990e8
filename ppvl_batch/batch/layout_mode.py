"""Layout mode: pages read block by block through layout/parser.DocumentParser instead of whole
(README, "Document parsing"), a page strategy (strategy.py).

It is on when the bundle has a layout model, unless --no-layout. The page stays the unit of a
record and of resume; only the way a page's text is made changes, and the checkpoint key covers
everything that changes it (`key_settings`).

Image blocks are saved as PNG files: under `--images DIR` as DIR/<document path>_images/, else
beside the document's Markdown as <markdown>/<document path>_images/; with neither option they
are not saved (their blocks have `image: null`). A block's `image` is the file's path relative
to the document's Markdown file, or, without --markdown, to the working directory.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from itertools import groupby
from pathlib import Path
from typing import Any

from PIL import Image

from ppvl_batch.documents.inputs import InputFile
from ppvl_batch.documents.pages import PageError
from ppvl_batch.engine.prompt import TASKS, V1_TASKS
from ppvl_batch.errors import OutputError, UsageError
from ppvl_batch.layout.detector import RuledDetector, bundle_detector
from ppvl_batch.layout.markdown import MarkdownOptions, default_images_dir
from ppvl_batch.layout.parser import DocumentParser, ParserOptions

from .options import PageOptions, ScanOptions
from .task import Rendered

# Blocks decoded together when --parallel is not given: blocks are short answers, and on 2 cores
# four in flight read a full-size 12-block page 1.5x (Q4_K_M) to 2.0x (F16) faster than one at a
# time (bench/bench_parser.py, bench/RESULTS.md), for 3 more KV caches of a page's context.
LAYOUT_PARALLEL = 4


@dataclass(frozen=True)
class LayoutPlan:
    """Layout mode as chosen when the scan opens (picklable: Ray workers start it too)."""

    page: PageOptions
    parser: ParserOptions  # images_dir / links_from are set per document (LayoutPages.parser)
    model_id: str  # the layout model's id (bundle manifest), in records and keys
    threshold: float | None  # --layout-threshold
    images: Path | None  # --images
    markdown: Path | None  # --markdown
    parallel: int

    def recognizer_options(self) -> dict[str, Any]:
        # Blocks have pixel limits of their own, above a small --max-pixels: the context holds them.
        return {"parallel": self.parallel, "context_pixels": self.parser.max_pixels}

    def markdown_options(self) -> MarkdownOptions:
        return self.parser.markdown_options()

    def start(self, recognizer: Any, cwd: Path) -> LayoutPages:
        return LayoutPages(self, recognizer, bundle_detector(recognizer.bundle, recognizer.device, self.threshold), cwd)


class LayoutPages:
    """Pages parsed block by block; one parser call per run of consecutive pages of one document."""

    whole_batch: bool = True  # the parser reads its pages together
    task: str = "layout"
    layout_model: str | None

    def __init__(self, plan: LayoutPlan, recognizer: Any, detector: RuledDetector, cwd: Path) -> None:
        self.plan = plan
        self.rec = recognizer
        self.detector = detector
        self.cwd = cwd  # the scan's working directory: --markdown, --images and mirror paths are relative to it
        self.layout_model = plan.model_id

    def key_settings(self) -> dict[str, Any]:
        return {"layout_model": self.plan.model_id, "rules": self.detector.rules.settings(),
                **self.plan.parser.prompt_choices()}

    def prepare(self, image: Image.Image) -> Image.Image:
        return image.convert("RGB")

    def parser(self, doc: InputFile) -> DocumentParser:
        """A parser that saves this document's image blocks where the module docstring says."""
        plan, mirror = self.plan, doc.mirror_path(self.cwd)
        # Joined to cwd, not left relative: a Ray worker runs in another working directory.
        markdown_file = self.cwd / plan.markdown / f"{mirror}.md" if plan.markdown else None
        if plan.images is not None:
            images_dir: Path | None = default_images_dir(self.cwd / plan.images / f"{mirror}.md")
        else:
            images_dir = default_images_dir(markdown_file) if markdown_file else None
        links_from = markdown_file.parent if markdown_file else self.cwd
        options = replace(plan.parser, images_dir=images_dir, links_from=links_from)
        return DocumentParser(self.rec, self.detector, options)

    def read(self, pages: Sequence[Rendered]) -> Iterator[tuple[Rendered, Any]]:
        """If a parser call fails, page by page, so one bad page fails alone. A folder the images
        cannot be written to ends the run (OutputError)."""
        runs = groupby(enumerate(pages), key=lambda ip: (ip[1].task.path, _number(ip[1]) - ip[0]))
        for _, run in runs:
            group = [page for _, page in run]
            parser = self.parser(InputFile(group[0].task.source, Path(group[0].task.path)))
            try:
                results: list[Any] = parser.parse([p.input for p in group], first_page=_number(group[0]),
                                                  layers=[p.layer for p in group])
            except OutputError:
                raise
            except Exception:
                results = [self._alone(parser, page) for page in group]
            for page, result in zip(group, results):
                page.input = page.layer = None  # a long run holds only the pages still to parse
                from_layer = any(b.text_source == "pdf" for b in getattr(result, "blocks", ()))
                if from_layer and page.task.text_key is not None:
                    page.task = replace(page.task, key=page.task.text_key)  # text_pages.py: a key of its own
                yield page, result

    @staticmethod
    def _alone(parser: DocumentParser, page: Rendered) -> Any:
        try:
            (result,) = parser.parse([page.input], first_page=_number(page), layers=[page.layer])
            return result
        except OutputError:
            raise
        except Exception as e:
            return PageError("recognition", f"layout parsing failed: {type(e).__name__}: {e}")


def _number(page: Rendered) -> int:
    assert page.task.page is not None  # a rendered page, not a whole document
    return page.task.page


def layout_plan(o: ScanOptions, bundle: Any) -> LayoutPlan | None:
    """Layout mode from the options and the bundle, or None for whole pages (--no-layout, or no
    layout model and no --layout). Options that contradict the mode are a UsageError."""
    has_layout = bundle is not None and bundle.layout_dir is not None
    if o.text_layer == "only" and o.layout:
        raise UsageError("--text-layer only runs no model, no layout model either: it reads whole pages (--no-layout)")
    if not (has_layout and o.text_layer != "only" if o.layout is None else o.layout):
        given = [name for name, used in (("--charts", o.charts), ("--seals", o.seals),
                                         ("--images", o.images is not None),
                                         ("--layout-threshold", o.layout_threshold is not None)) if used]
        if given:
            why = ("--no-layout is given" if o.layout is False else "--text-layer only reads whole pages") \
                if has_layout else "the bundle has no layout model"
            raise UsageError(f"{', '.join(given)}: only for layout mode, and {why}")
        return None
    if not has_layout:
        where = getattr(bundle, "path", "the model")
        raise UsageError(f"--layout: {where} has no layout model; "
                         f"add one with `ppvl-ocr convert --add-layout LAYOUT {where}`")
    if o.prompt is not None or o.task != "ocr":
        raise UsageError("--task and --prompt are for whole pages: "
                         "in layout mode each block is read with its label's prompt (use --no-layout)")
    tasks = V1_TASKS if bundle.prompt_style == "v1" else tuple(TASKS)
    if o.seals and "seal" not in tasks:
        raise UsageError("--seals: this is a PaddleOCR-VL v1 bundle, which has no seal recognition")
    parser = ParserOptions(charts=o.charts, seals=o.seals, max_new_tokens=o.max_new_tokens, merge_tables=o.merge_tables)
    return LayoutPlan(o.page, parser, bundle.layout.id, o.layout_threshold, o.images, o.markdown,
                      o.parallel or LAYOUT_PARALLEL)
