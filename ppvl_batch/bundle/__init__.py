"""The model on disk: a bundle (the folder `ppvl-ocr convert` writes; its layout is in
ppvl_batch/convert/__init__.py).

This module reads one; ppvl_batch.convert writes one from a checkpoint:

    manifest.py        manifest.json as typed data, and its one writer
    safetensors_io.py  safetensors read and written one tensor at a time
    inspection.py      what a bundle holds (`ppvl-ocr inspect`)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from ..errors import ModelError
from .manifest import BUNDLE_FORMAT, BUNDLE_FORMAT_VERSION, MANIFEST, MMPROJ_PREFIX, LayoutEntry, Manifest, sha256_file

# Where convert and its parts say what they did (a line each)
Log = Callable[[str], None]

# The demo model shipped inside the package (issue 5): used when no model is configured.
DEMO_BUNDLE = Path(__file__).parent.parent / "demo"

GET_A_MODEL = (
    "convert the real model with `ppvl-ocr convert PaddlePaddle/PaddleOCR-VL -o BUNDLE` "
    "(download it first if this machine is offline) and pass --model BUNDLE"
)


def no_log(message: str) -> None:
    pass


def mmproj_filename(ftype: str = "F16") -> str:
    return f"{MMPROJ_PREFIX}{ftype}.gguf"


def is_bundle(path: Path) -> bool:
    try:
        return json.loads((path / MANIFEST).read_text(encoding="utf-8")).get("format") == BUNDLE_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def resolve_model(model: str | Path | None) -> Path:
    """The bundle folder for --model: a path, or `demo` / nothing for the bundled demo model."""
    if model is None or str(model) == "demo":
        if not (DEMO_BUNDLE / MANIFEST).is_file():
            raise ModelError(f"the demo model is not installed with this package; {GET_A_MODEL}")
        return DEMO_BUNDLE
    return Path(model).expanduser()


@dataclass
class Bundle:
    """An opened, validated bundle: its folder and its manifest (bundle/manifest.py)."""

    path: Path
    manifest: Manifest

    @classmethod
    def open(cls, path: str | Path) -> Bundle:
        """Open and validate a bundle; every problem is one ModelError line."""
        path = Path(path)
        if not path.exists():
            raise ModelError(f"{path}: no such model bundle; {GET_A_MODEL}")
        if not path.is_dir():
            raise ModelError(f"{path}: not a model bundle (a bundle is a folder); {GET_A_MODEL}")
        manifest_file = path / MANIFEST
        if not manifest_file.is_file():
            if (path / "config.json").is_file():
                raise ModelError(
                    f"{path}: this is a Hugging Face checkpoint, not a bundle; "
                    f"run `ppvl-ocr convert {path} -o BUNDLE` first"
                )
            raise ModelError(f"{path}: not a model bundle (no {MANIFEST}); {GET_A_MODEL}")
        try:
            data = json.loads(manifest_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelError(f"{manifest_file}: unreadable manifest ({exc})") from exc
        if not isinstance(data, dict) or data.get("format") != BUNDLE_FORMAT:
            raise ModelError(f"{path}: not a ppvl-ocr model bundle")
        if data.get("format_version", 0) > BUNDLE_FORMAT_VERSION:
            raise ModelError(
                f"{path}: bundle format {data.get('format_version')} is newer than this ppvl-ocr understands; "
                "upgrade ppvl-ocr"
            )
        manifest = Manifest.from_json(data, str(manifest_file))
        for name, info in manifest.files.items():
            f = path / name
            if not f.is_file():
                raise ModelError(f"{path}: bundle file {name} is missing; convert the model again")
            if f.stat().st_size != info.bytes:
                raise ModelError(f"{path}: bundle file {name} has the wrong size (truncated copy?); "
                                 "convert the model again")
        return cls(path, manifest)

    @property
    def id(self) -> str:
        return self.manifest.id

    @property
    def model_version(self) -> str:
        return self.manifest.model_version

    @property
    def prompt_style(self) -> str:
        return self.manifest.prompt_style

    @property
    def quants(self) -> dict[str, str]:
        return self.manifest.text.quants

    @property
    def default_quant(self) -> str:
        return self.manifest.text.default_quant

    def text_gguf(self, quant: str | None = None) -> Path:
        quant = (quant or self.default_quant).upper()
        if quant not in self.quants:
            raise ModelError(f"{self.path}: has no {quant} decoder (it has {', '.join(self.quants)})")
        return self.path / self.quants[quant]

    @property
    def vision_file(self) -> Path:
        return self.path / self.manifest.vision.file

    @property
    def mmproj_file(self) -> Path | None:
        """The vision tower as llama.cpp's mmproj GGUF, when converted with --mmproj."""
        name = self.manifest.vision.mmproj
        return self.path / name if name else None

    @property
    def layout(self) -> LayoutEntry | None:
        """The manifest's layout entry (convert/layout_model.py), or None without a layout model."""
        return self.manifest.layout

    @property
    def layout_dir(self) -> Path | None:
        """The layout model's folder (LayoutDetector.load reads it), or None."""
        return self.path / self.manifest.layout.dir if self.manifest.layout else None

    @cached_property
    def config(self) -> dict[str, Any]:
        return json.loads((self.path / "config.json").read_text(encoding="utf-8"))

    @cached_property
    def preprocessor(self) -> dict[str, Any]:
        return json.loads((self.path / "preprocessor_config.json").read_text(encoding="utf-8"))

    @property
    def tokenizer_dir(self) -> Path:
        """The folder transformers loads the tokenizer from; bundles of format 1 have no tokenizer."""
        if not any(name in self.manifest.files for name in ("tokenizer.model", "tokenizer.json")):
            raise ModelError(f"{self.path}: made by an older ppvl-ocr, without the checkpoint's tokenizer files; "
                             "convert the model again")
        return self.path

    @cached_property
    def chat_template(self) -> str:
        return (self.path / "chat_template.jinja").read_text(encoding="utf-8")

    def verify(self) -> list[str]:
        """Names of files whose sha256 differs from the manifest."""
        return [name for name, info in self.manifest.files.items() if sha256_file(self.path / name) != info.sha256]
