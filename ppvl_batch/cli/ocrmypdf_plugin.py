"""PaddleOCR-VL as an OCRmyPDF engine (docs/ocrmypdf.md): `ocrmypdf --ocr-engine ppvl in.pdf out.pdf`.

Installed with `pip install 'ppvl-batch[ocrmypdf]'` it is registered in OCRmyPDF's `ocrmypdf`
entry-point group, which OCRmyPDF loads by itself; from a source tree, `--plugin
ppvl_batch.cli.ocrmypdf_plugin`. Either way it only reads pages when `--ocr-engine ppvl` is given
(OCRmyPDF's engines are chosen by that option; Tesseract stays the default).

The hooks: `add_options` (the --ppvl-* options, and `ppvl` as an --ocr-engine choice),
`register_options` (their model, `options.ppvl`), `check_options` (the bundle opened and the task
checked before any page: a missing bundle is OCRmyPDF's missing-dependency error, exit 3; a task
the bundle has not, a bad value: its bad-arguments error, exit 1), `get_ocr_engine`. The engine
implements `generate_ocr` (the OcrElement tree) and, through the same tree, `generate_hocr` and
`generate_pdf` for `--pdf-renderer sandwich`. Every option falls back to the environment variable
`scan` reads (PPVL_MODEL, PPVL_QUANT, ...) and then to the top-level keys of ppvl-ocr.toml.
"""

from __future__ import annotations

import logging
import os
import tomllib
from argparse import ArgumentParser, BooleanOptionalAction
from pathlib import Path
from typing import Any, Literal

from ocrmypdf import hookimpl
from ocrmypdf.exceptions import BadArgsError, ExitCode, ExitCodeException, MissingDependencyError
from ocrmypdf.hocrtransform import OcrElement
from ocrmypdf.pluginspec import OcrEngine, OrientationConfidence
from PIL import Image
from pydantic import BaseModel, Field, ValidationError

from .. import __version__
from ..config import DEFAULT_CONFIG
from ..engine.prompt import TASKS
from ..errors import ModelError, UsageError
from .ocrmypdf_pages import ModelSettings, shared_reader
from .ocrmypdf_tree import record_to_tree, tree_text, write_hocr, write_text_pdf

ENGINE = "ppvl"  # the --ocr-engine value that selects this engine
log = logging.getLogger("ocrmypdf.ppvl")  # under OCRmyPDF's logger: its console, its page-number prefix


class PpvlOptions(BaseModel):
    """The --ppvl-* options (None: from the environment, the config file, or the default)."""

    model: str | None = None
    quant: str | None = None
    device: Literal["cpu", "cuda"] | None = None
    vision_dtype: Literal["auto", "fp32", "bf16", "int8"] | None = None
    threads: int | None = Field(None, ge=1)
    n_gpu_layers: int | None = Field(None, ge=0)
    kv_type: Literal["f16", "f32", "q8_0"] | None = None
    ctx_size: int | None = Field(None, ge=256)
    task: Literal["ocr", "table", "formula", "chart", "spotting", "seal"] | None = None
    layout: bool | None = None
    max_new_tokens: int | None = Field(None, ge=1)
    min_pixels: int | None = Field(None, ge=1)
    max_pixels: int | None = Field(None, ge=1)
    parallel: int | None = Field(None, ge=1, le=64)
    batch_size: int | None = Field(None, ge=1)
    skip_blank: bool | None = None


# option -> (metavar or choices, help); flags (bool) get --ppvl-X / --no-ppvl-X.
OPTIONS: dict[str, tuple[Any, str]] = {
    "model": ("BUNDLE", "PaddleOCR-VL model bundle folder (from `ppvl-ocr convert`); "
                        "`demo`: the small bundled demo model."),
    "quant": ("NAME", "Decoder quantization when the bundle has several (default: its first)."),
    "device": (["cpu", "cuda"], "Where the vision encoder runs (default cpu)."),
    "vision_dtype": (["auto", "fp32", "bf16", "int8"],
                     "Vision precision, as `ppvl-ocr scan --vision-dtype` (default auto)."),
    "threads": ("N", "CPU threads for vision and decoder (default: physical cores)."),
    "n_gpu_layers": ("N", "Decoder layers offloaded to the GPU (default 0)."),
    "kv_type": (["f16", "f32", "q8_0"], "llama.cpp KV cache precision (default f16)."),
    "ctx_size": ("TOKENS", "llama.cpp context (default: the largest page + max new tokens)."),
    "task": (list(TASKS), "What to read on each page (default ocr); spotting and seal need a 1.5+ bundle."),
    "layout": (bool, "Read pages block by block with the bundle's layout model (default: when it has one)."),
    "max_new_tokens": ("N", "Longest answer per page (per block in layout mode; default 1024)."),
    "min_pixels": ("N", "Smallest image the model sees (default: the bundle's)."),
    "max_pixels": ("N", "Largest image the model sees (default: the bundle's)."),
    "parallel": ("N", "Pages (layout mode: blocks) decoded together in one llama.cpp context."),
    "batch_size": ("N", "Most pages per vision pass: pages waiting while a batch is read go in the next one "
                        "(default 4)."),
    "skip_blank": (bool, "Leave pages with no ink without text, without running the model (default on)."),
}
DEFAULTS = ModelSettings(model="")


@hookimpl
def add_options(parser: ArgumentParser) -> None:
    for action in parser._actions:  # OCRmyPDF lists its own engines as the option's choices
        if "--ocr-engine" in action.option_strings and action.choices is not None and ENGINE not in action.choices:
            action.choices = [*action.choices, ENGINE]
            action.help = f"{action.help} '{ENGINE}': PaddleOCR-VL (ppvl-ocr; options --ppvl-*)."
    group = parser.add_argument_group(
        "PaddleOCR-VL (--ocr-engine ppvl)",
        "Each option falls back to the environment variable of `ppvl-ocr scan` (PPVL_MODEL, PPVL_TASK, ...), "
        f"then to the top-level keys of ./{DEFAULT_CONFIG} (or PPVL_CONFIG).",
    )
    for name, (kind, text) in OPTIONS.items():
        flag, dest = f"--ppvl-{name.replace('_', '-')}", f"ppvl_{name}"
        if kind is bool:
            group.add_argument(flag, dest=dest, action=BooleanOptionalAction, default=None, help=text)
        elif isinstance(kind, list):
            group.add_argument(flag, dest=dest, choices=kind, default=None, help=text)
        else:
            numeric = PpvlOptions.model_fields[name].annotation != (str | None)
            group.add_argument(flag, dest=dest, metavar=kind, type=int if numeric else str, default=None, help=text)


@hookimpl
def register_options() -> dict[str, type[BaseModel]]:
    return {"ppvl": PpvlOptions}


def settings(options: Any) -> ModelSettings:
    """The engine's settings: each option, else its environment variable, else the config
    file's top-level key, else the default. BadArgsError for a value of the wrong kind."""
    env = {name: os.environ[f"PPVL_{name.upper()}"] for name in OPTIONS if os.environ.get(f"PPVL_{name.upper()}")}
    try:
        given = options.ppvl.model_dump(exclude_none=True)  # validated here, at first access
        values = PpvlOptions(**{**_config_file(), **env, **given}).model_dump(exclude_none=True)
    except ValidationError as e:
        first = e.errors()[0]
        name = str(first["loc"][-1]) if first["loc"] else "?"
        raise BadArgsError(f"--ppvl-{name.replace('_', '-')} {first.get('input')!r}: {first['msg']}") from None
    if not values.get("model"):
        raise MissingDependencyError(
            "PaddleOCR-VL: no model bundle given: pass --ppvl-model BUNDLE (or set PPVL_MODEL); "
            "make one with `ppvl-ocr convert PaddlePaddle/PaddleOCR-VL -o BUNDLE`")
    return ModelSettings(**{k: v for k, v in values.items() if hasattr(DEFAULTS, k)})


def _config_file() -> dict[str, Any]:
    """Top-level keys of ppvl-ocr.toml (or $PPVL_CONFIG) that are engine options; others are for
    other commands, and [tables] for `ppvl-ocr` commands."""
    path = Path(os.environ.get("PPVL_CONFIG") or DEFAULT_CONFIG)
    if not path.is_file():
        if os.environ.get("PPVL_CONFIG"):
            raise BadArgsError(f"PPVL_CONFIG: no such file {path}")
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise BadArgsError(f"config {path}: {e}") from e
    keys = {key.replace("-", "_"): value for key, value in data.items() if not isinstance(value, dict)}
    return {name: value for name, value in keys.items() if name in OPTIONS}


def _reader(options: Any):
    """The process's shared reader; our errors as OCRmyPDF's (exit codes 3 and 1)."""
    try:
        return shared_reader(settings(options), log.info)
    except ModelError as e:
        raise MissingDependencyError(f"PaddleOCR-VL: {e}".replace("--model BUNDLE", "--ppvl-model BUNDLE")) from None
    except (UsageError, ValueError) as e:
        raise BadArgsError(str(e)) from None


@hookimpl
def check_options(options: Any) -> None:
    """Open the bundle and check the task before OCRmyPDF reads any page."""
    if getattr(options, "ocr_engine", None) != ENGINE:
        return
    for flag in ("rotate_pages", "deskew"):
        if getattr(options, flag, False):
            log.warning("--%s has no effect with --ocr-engine ppvl: PaddleOCR-VL does not measure page "
                        "orientation or skew", flag.replace("_", "-"))
    _reader(options)


class RecognitionError(ExitCodeException):
    """A page the model could not read (as Tesseract failing on a page: the run stops)."""

    exit_code = ExitCode.child_process_error


class PpvlEngine(OcrEngine):
    @staticmethod
    def version() -> str:
        return __version__

    @staticmethod
    def creator_tag(options: Any) -> str:
        return f"ppvl-ocr {__version__} (PaddleOCR-VL)"

    def __str__(self) -> str:
        return f"PaddleOCR-VL (ppvl-ocr {__version__})"

    @staticmethod
    def languages(options: Any) -> set[str]:
        return set()  # the model reads the scripts it knows, no language packs: OCRmyPDF skips its -l check

    @staticmethod
    def get_orientation(input_file: Path, options: Any) -> OrientationConfidence:
        return OrientationConfidence(angle=0, confidence=0.0)

    @staticmethod
    def get_deskew(input_file: Path, options: Any) -> float:
        return 0.0

    @staticmethod
    def supports_generate_ocr() -> bool:
        return True

    @staticmethod
    def generate_ocr(input_file: Path, options: Any, page_number: int = 0) -> tuple[OcrElement, str]:
        page = read_page(input_file, options, page_number)
        return page, tree_text(page)

    @staticmethod
    def generate_hocr(input_file: Path, output_hocr: Path, output_text: Path, options: Any) -> None:
        page = read_page(input_file, options)
        write_hocr(page, Path(output_hocr), Path(input_file).name)
        Path(output_text).write_text(tree_text(page), encoding="utf-8")

    @staticmethod
    def generate_pdf(input_file: Path, output_pdf: Path, output_text: Path, options: Any) -> None:
        page = read_page(input_file, options)
        write_text_pdf(page, Path(output_pdf))
        Path(output_text).write_text(tree_text(page), encoding="utf-8")


def read_page(input_file: Path, options: Any, page_number: int = 0) -> OcrElement:
    """The OcrElement page of one page image: its record from the shared reader, as a tree."""
    reader = _reader(options)
    with Image.open(input_file) as image:
        image.load()
        dpi = float(image.info.get("dpi", (72.0, 72.0))[0]) or 72.0
        try:
            record = reader.read(image, page_number + 1)
        except (KeyboardInterrupt, ExitCodeException):
            raise
        except Exception as e:
            raise RecognitionError(
                f"PaddleOCR-VL could not read page {page_number + 1}: {type(e).__name__}: {e}") from e
        return record_to_tree(record, image.size, dpi, page_number)


@hookimpl
def get_ocr_engine(options: Any) -> OcrEngine | None:
    if options is not None and getattr(options, "ocr_engine", None) == ENGINE:
        return PpvlEngine()
    return None
