"""Layout mode of a scan: pages read block by block through layout/parser.DocumentParser instead
of whole (README, "Document parsing").

It is on when the bundle has a layout model, unless --no-layout. The page stays the unit of a
record and of resume; only the way a page's text is made changes, and the checkpoint key covers
everything that changes it (`key_settings`).

Image blocks are saved as PNG files: under `--images DIR` as DIR/<document path>_images/, else
beside the document's Markdown as <markdown>/<document path>_images/; with neither option they
are not saved (their blocks have `image: null`). A block's `image` is the file's path relative
to the document's Markdown file, or, without --markdown, to the working directory.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ppvl_batch.documents.inputs import InputFile
from ppvl_batch.errors import UsageError
from ppvl_batch.layout.detector import RuledDetector, bundle_detector
from ppvl_batch.layout.markdown import default_images_dir
from ppvl_batch.layout.parser import DocumentParser, ParserOptions

from .options import ScanOptions

# Blocks decoded together when --parallel is not given: blocks are short answers, and on 2 cores
# four in flight read a full-size 12-block page 1.5x (Q4_K_M) to 2.0x (F16) faster than one at a
# time (bench/bench_parser.py, bench/RESULTS.md), for 3 more KV caches of a page's context.
LAYOUT_PARALLEL = 4


@dataclass(frozen=True)
class LayoutMode:
    detector: RuledDetector
    options: ParserOptions  # images_dir / links_from are set per document (parser)
    model_id: str  # the layout model's id (bundle manifest), in records and keys
    images: Path | None  # --images
    markdown: Path | None  # --markdown
    cwd: Path  # the scan's working directory: the two folders above are relative to it, as are mirror paths

    def key_settings(self) -> dict[str, Any]:
        """What besides the recognizer changes a page's text in layout mode."""
        return {"layout_model": self.model_id, "rules": self.detector.rules.settings(), **self.options.prompt_choices()}

    def parser(self, recognizer: Any, doc: InputFile) -> DocumentParser:
        """A parser that saves this document's image blocks where the module docstring says."""
        mirror = doc.mirror_path(self.cwd)
        # Joined to cwd, not left relative: a Ray worker runs in another working directory.
        markdown_file = self.cwd / self.markdown / f"{mirror}.md" if self.markdown else None
        if self.images is not None:
            images_dir: Path | None = default_images_dir(self.cwd / self.images / f"{mirror}.md")
        else:
            images_dir = default_images_dir(markdown_file) if markdown_file else None
        links_from = markdown_file.parent if markdown_file else self.cwd
        return DocumentParser(recognizer, self.detector, replace(self.options, images_dir=images_dir, links_from=links_from))


def _has_layout(recognizer: Any) -> bool:
    bundle = getattr(recognizer, "bundle", None)  # a recognizer without one (a stand-in) reads whole pages
    return bundle is not None and bundle.layout_dir is not None


def wants_layout(recognizer: Any, o: ScanOptions) -> bool:
    """Whether the scan reads block by block: --layout/--no-layout, else when the bundle has a layout model."""
    return _has_layout(recognizer) if o.layout is None else o.layout


def layout_mode(recognizer: Any, o: ScanOptions, cwd: Path) -> LayoutMode | None:
    """The scan's layout mode from its options and the bundle, or None for whole pages. Options
    that contradict the mode are a UsageError."""
    bundle = getattr(recognizer, "bundle", None)
    has_layout = _has_layout(recognizer)
    if not wants_layout(recognizer, o):
        given = [name for name, used in (("--charts", o.charts), ("--seals", o.seals), ("--images", o.images is not None),
                                         ("--layout-threshold", o.layout_threshold is not None)) if used]
        if given:
            why = "--no-layout is given" if has_layout else "the bundle has no layout model"
            raise UsageError(f"{', '.join(given)}: only for layout mode, and {why}")
        return None
    if not has_layout:
        where = getattr(bundle, "path", "the model")
        raise UsageError(f"--layout: {where} has no layout model; add one with `ppvl-ocr convert --add-layout LAYOUT {where}`")
    if o.prompt is not None or o.task != "ocr":
        raise UsageError("--task and --prompt are for whole pages: in layout mode each block is read with its label's prompt "
                         "(use --no-layout)")
    if o.seals and "seal" not in recognizer.tasks:
        raise UsageError("--seals: this is a PaddleOCR-VL v1 bundle, which has no seal recognition")
    if o.parallel is None:
        recognizer.set_parallel(LAYOUT_PARALLEL)
    detector = bundle_detector(bundle, recognizer.device, o.layout_threshold)
    options = ParserOptions(charts=o.charts, seals=o.seals, max_new_tokens=o.max_new_tokens, merge_tables=o.merge_tables)
    return LayoutMode(detector, options, bundle.layout.id, o.images, o.markdown, cwd)
