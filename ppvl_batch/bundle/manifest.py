"""manifest.json, typed: what a bundle holds, read by Bundle.open and written by `write_manifest` only.

    {"format": "ppvl-bundle", "format_version": 2, "id": "<name>-<sha8>",
     "model_version": "1.5", "prompt_style": "v1.5",
     "source": {"path": ..., "name": ...}, "created": "2025-...Z",
     "converter": {"ppvl_batch": ..., "gguf": ..., "llama_cpp_python": ..., "seconds": ...},
     "text": {"quants": {"Q4_K_M": "text-Q4_K_M.gguf"}, "default_quant": "Q4_K_M",
              "context_length": ..., "vocab_size": ..., "tied_output": true},
     "vision": {"file": "vision.safetensors", "dtype": "bfloat16", "parameters": ..., "mmproj": ...},
     "layout": {"dir": "layout", "version": "v3", "model_type": ..., "id": ..., "source": {...}},
     "files": {"NAME": {"sha256": ..., "bytes": ...}, ...}}

`layout` and `vision.mmproj` are optional; so are the keys that bundles of earlier versions lack
(`prompt_style`, `created`, `converter`, ...), which read as their defaults. Keys this version
does not know are kept as they are (`extra`), so rewriting a manifest never loses them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ModelError
from ..files import atomic_write

BUNDLE_FORMAT = "ppvl-bundle"
# 2: the checkpoint's tokenizer files are in the bundle (prompts are tokenized by transformers)
BUNDLE_FORMAT_VERSION = 2
MANIFEST = "manifest.json"
# llama.cpp's own vision tower (convert --mmproj, convert/mmproj.py); left out of the bundle id
MMPROJ_PREFIX = "mmproj-"


@dataclass(frozen=True)
class FileEntry:
    """One file of the bundle: what `Bundle.open` checks (size) and `--verify` checks (sha256)."""

    sha256: str
    bytes: int

    @classmethod
    def of(cls, path: Path) -> FileEntry:
        return cls(sha256_file(path), path.stat().st_size)


@dataclass(frozen=True)
class Source:
    """Where a model was converted from: the folder read, and the name the user gave."""

    path: str
    name: str


@dataclass(frozen=True)
class TextEntry:
    """The decoder GGUFs: quant name -> file name."""

    quants: dict[str, str]
    default_quant: str
    context_length: int | None = None
    vocab_size: int | None = None
    tied_output: bool = False


@dataclass(frozen=True)
class VisionEntry:
    """The vision tower's safetensors, and llama.cpp's mmproj GGUF when there is one."""

    file: str
    dtype: str | None = None
    parameters: int | None = None
    mmproj: str | None = None


@dataclass(frozen=True)
class LayoutEntry:
    """The layout model in `dir` (convert/layout_model.py); `id` is its files' own id."""

    dir: str
    version: str
    model_type: str
    id: str
    source: Source


@dataclass(frozen=True)
class Manifest:
    """A bundle's manifest.json as typed data; `to_json` / `from_json` are its only encoding."""

    id: str
    model_version: str
    prompt_style: str
    text: TextEntry
    vision: VisionEntry
    files: dict[str, FileEntry]
    source: Source | None = None
    created: str | None = None
    converter: dict[str, Any] = field(default_factory=dict)
    layout: LayoutEntry | None = None
    model_version_source: str | None = None  # where convert read the version (convert/versions.py)
    format_version: int = BUNDLE_FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)  # keys a later version wrote, kept as they are

    @classmethod
    def from_json(cls, data: Any, where: str = MANIFEST) -> Manifest:
        """Parse a manifest; a missing or mistyped entry is one ModelError line naming it."""
        if not isinstance(data, dict):
            raise ModelError(f"{where}: unreadable manifest (not a JSON object)")
        try:
            layout = data.get("layout")
            source = data.get("source")
            return cls(
                id=str(data["id"]),
                model_version=str(data.get("model_version", "?")),
                model_version_source=data.get("model_version_source"),
                prompt_style=str(data.get("prompt_style", "?")),
                text=TextEntry(**data["text"]),
                vision=VisionEntry(**data["vision"]),
                files={name: FileEntry(str(f["sha256"]), int(f["bytes"])) for name, f in data["files"].items()},
                source=Source(**source) if source else None,
                created=data.get("created"),
                converter=dict(data.get("converter") or {}),
                layout=LayoutEntry(**{**layout, "source": Source(**layout["source"])}) if layout else None,
                format_version=int(data.get("format_version", 0)),
                extra={k: v for k, v in data.items() if k not in _KNOWN},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ModelError(f"{where}: malformed manifest ({type(exc).__name__}: {exc})") from exc

    def to_json(self) -> dict[str, Any]:
        """The manifest as written to manifest.json (key order as convert has always written it)."""
        data: dict[str, Any] = {
            "format": BUNDLE_FORMAT,
            "format_version": self.format_version,
            "id": self.id,
            "model_version": self.model_version,
        }
        if self.model_version_source is not None:
            data["model_version_source"] = self.model_version_source
        data["prompt_style"] = self.prompt_style
        if self.source is not None:
            data["source"] = dataclasses.asdict(self.source)
        if self.created is not None:
            data["created"] = self.created
        if self.converter:
            data["converter"] = dict(self.converter)
        data["text"] = dataclasses.asdict(self.text)
        vision = dataclasses.asdict(self.vision)
        data["vision"] = {k: v for k, v in vision.items() if v is not None or k == "file"}
        if self.layout is not None:
            data["layout"] = dataclasses.asdict(self.layout)
        data.update(self.extra)
        data["files"] = {name: dataclasses.asdict(f) for name, f in sorted(self.files.items())}
        return data

    def with_new_id(self, fallback_name: str) -> Manifest:
        """This manifest with the id its files and prompt style give now (a file was added); the
        id's name part is the source folder's name (`fallback_name` when none is recorded)."""
        name = Path(self.source.path).name if self.source else fallback_name
        return dataclasses.replace(self, id=bundle_id(name, self.files, self.prompt_style))


_KNOWN = {f.name for f in dataclasses.fields(Manifest)} - {"extra"} | {"format"}


def write_manifest(folder: Path, manifest: Manifest) -> None:
    """The one way a manifest is written: in one rename (files.atomic_write), so a reader sees the
    old manifest or the whole new one. Written after the files it lists: a folder without a
    manifest is never taken for a bundle."""
    atomic_write(folder / MANIFEST, json.dumps(manifest.to_json(), indent=2).encode("utf-8"))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def bundle_id(name: str, files: dict[str, FileEntry], prompt_style: str) -> str:
    """The bundle's id, which goes into every checkpoint key: it changes with anything that can
    change an answer, i.e. the content of every file the model is loaded from (decoders,
    tokenizer files, chat template, preprocessor config, config, vision weights), sorted by name,
    and the prompt style. The mmproj GGUF is left out: ppvl-ocr never reads it. Bundles made
    before this scheme keep the id in their manifest (it is read, never recomputed)."""
    slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in name) or "model"
    covered = {n: files[n].sha256 for n in sorted(files) if not n.startswith(MMPROJ_PREFIX)}
    digest = hashlib.sha256(json.dumps({"files": covered, "prompt_style": prompt_style}, sort_keys=True).encode())
    return f"{slug}-{digest.hexdigest()[:8]}"
