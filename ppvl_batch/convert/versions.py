"""Which PaddleOCR-VL release a checkpoint is (docs/design.md section 1, "Versions").

v1, 1.5, 1.6 and 1.8 share one architecture; v1's chat template ends its prompts differently
from the later ones' (the prompt style), and nothing in the weights or hyper-parameters tells
1.5, 1.6 and 1.8 apart. So the version is read from what names the model, in this order:

    1. the checkpoint's own metadata: a `_name_or_path` / `name_or_path` in config.json,
       generation_config.json, tokenizer_config.json, preprocessor_config.json or
       processor_config.json, then the title of its model card (README.md's first heading)
    2. the folder's path, innermost folder first (a hub cache's `models--Org--Name` included)
    3. the prompt style: v1's template -> "1", the later one -> "1.5" (the first release with it)

A name counts when it says `PaddleOCR-VL-<number>` (`PaddleOCR-VL-0.9B` is a parameter count, not
a version) and agrees with the prompt style: a name saying "1" on a checkpoint with the later
template, or a later version on v1's template, is passed over (and said so).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

# A release number after the model's name; not a parameter count such as "0.9B".
_VERSION_IN_NAME = re.compile(r"PaddleOCR[-_ ]?VL[-_ ]v?(\d+(?:\.\d+)?)(?![\d.]|[bB]\b)", re.IGNORECASE)
_NAME_KEYS = ("_name_or_path", "name_or_path")
METADATA_FILES = ("config.json", "generation_config.json", "tokenizer_config.json", "preprocessor_config.json",
                  "processor_config.json")
_TITLE = re.compile(r"^\s*#\s+(.+)$|<h1[^>]*>(.*?)</h1>", re.MULTILINE | re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True)
class ModelVersion:
    """A checkpoint's release ("1", "1.5", "1.6", "1.8", ...) and where it was read."""

    version: str
    source: str  # e.g. "config.json _name_or_path", "folder name", "prompt style"
    passed_over: list[str] = field(default_factory=list)  # names that contradicted the prompt style


def version_in(name: str) -> str | None:
    """The release a name such as "PaddlePaddle/PaddleOCR-VL-1.5" says, or None."""
    match = _VERSION_IN_NAME.search(name)
    if match is None:
        return None
    number = match.group(1)
    return number.removesuffix(".0")


def fits_prompt_style(version: str, prompt_style: str) -> bool:
    """v1's template ends 'Assistant: '; every later release's 'Assistant:\\n'."""
    return (version == "1") == (prompt_style == "v1")


def _metadata_names(folder: Path) -> list[tuple[str, str]]:
    """(where, text) of everything in the folder's metadata that may name the model, in order."""
    names = []
    for filename in METADATA_FILES:
        try:
            data = json.loads((folder / filename).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        for key in _NAME_KEYS:
            if isinstance(data, dict) and isinstance(data.get(key), str):
                names.append((f"{filename} {key}", data[key]))
    try:
        card = (folder / "README.md").read_text(encoding="utf-8", errors="replace")
    except OSError:
        card = ""
    # the YAML front matter names other models (base_model), so only the title counts
    body = re.sub(r"\A---\n.*?\n---\n", "", card, flags=re.DOTALL)
    title = _TITLE.search(body)
    if title:
        names.append(("README.md title", re.sub(r"<[^>]+>", "", title.group(1) or title.group(2))))
    return names


def detect_version(folder: Path, prompt_style: str) -> ModelVersion:
    """The release of the checkpoint in `folder` whose template has `prompt_style`."""
    passed_over: list[str] = []
    candidates = _metadata_names(folder)
    candidates += [("folder name" if i == 0 else "path", part)
                   for i, part in enumerate(reversed(folder.resolve().parts))]
    for where, name in candidates:
        version = version_in(name)
        if version is None:
            continue
        if fits_prompt_style(version, prompt_style):
            return ModelVersion(version, where, passed_over)
        passed_over.append(f"{where} says {version}, but the chat template is the {prompt_style} one")
    return ModelVersion("1" if prompt_style == "v1" else "1.5", "prompt style", passed_over)
