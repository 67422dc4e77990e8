"""The layout model inside a bundle (document parsing, docs/layout-text.md).

A bundle may hold a PP-DocLayoutV2, V3 or V4 checkpoint in `layout/`, as published in transformers
format (config.json, model.safetensors, preprocessor_config.json). Its files are listed in the
manifest under `layout/NAME`, so the bundle id covers them, and the manifest's `layout` entry
says which model it is:

    "layout": {"dir": "layout", "version": "v3", "model_type": "pp_doclayout_v3",
               "id": "<name>-<sha8>", "source": {"path": ..., "name": ...}}

`id` is the layout model's own id (its files' sha256): records and checkpoint keys of layout
mode carry it. Only the files are checked here; loading them is layout/detector.py's work.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

from ..bundle import Bundle, Log, no_log
from ..bundle.manifest import FileEntry, LayoutEntry, Source, write_manifest
from ..errors import ModelError, OutputError
from ..files import fsync_dir, fsync_tree
from .checkpoint import resolve_source

LAYOUT_DIR = "layout"
# What a published PP-DocLayout folder holds that the detector reads; the first two are required.
LAYOUT_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")
# config.json model_type -> our name for the model
LAYOUT_MODEL_TYPES = {"pp_doclayout_v2": "v2", "pp_doclayout_v3": "v3", "pp_doclayout_v4": "v4"}
# The layout model each PaddleOCR-VL version was published with (1.8: PaddleOCR 3.8.0's release
# notes), and where to get it.
PAIRED_LAYOUT = {"1": "v2", "1.5": "v3", "1.6": "v3", "1.8": "v4"}
LAYOUT_REPOS = {
    "v2": "PaddlePaddle/PP-DocLayoutV2_safetensors",
    "v3": "PaddlePaddle/PP-DocLayoutV3_safetensors",
    "v4": "PaddlePaddle/PP-DocLayoutV4_safetensors",
}


def _number(version: str) -> tuple[int, ...]:
    """"1.8" -> (1, 8); () for anything else."""
    parts = version.split(".")
    return tuple(int(p) for p in parts) if all(p.isdigit() for p in parts) else ()


def paired_version(model_version: str) -> str:
    """The layout model version ("v2" / "v3" / "v4") that pairs with a PaddleOCR-VL version; a
    version not in PAIRED_LAYOUT takes the pair of the latest listed version before it (a 1.7
    or a 2.0 is assumed to keep the layout model of the release before it)."""
    if model_version in PAIRED_LAYOUT:
        return PAIRED_LAYOUT[model_version]
    number = _number(model_version)
    earlier = [v for v in PAIRED_LAYOUT if number and _number(v) <= number]
    return PAIRED_LAYOUT[max(earlier, key=_number)] if earlier else "v3"


def layout_hint(model_version: str, bundle: str | Path) -> str:
    """What convert says when no layout model was given."""
    repo = LAYOUT_REPOS[paired_version(model_version)]
    return (f"no layout model: scan reads whole pages. PaddleOCR-VL {model_version} pairs with "
            f"PP-DocLayout{paired_version(model_version).upper()}; for document parsing run "
            f"`hf download {repo} --local-dir LAYOUT` and `ppvl-ocr convert --add-layout LAYOUT {bundle}`")


def read_layout_source(source: str) -> tuple[Path, str, str]:
    """(folder, version, model_type) of a layout checkpoint given as a folder or cached hub id;
    a folder that is not a PP-DocLayoutV2/V3/V4 checkpoint is a ModelError naming what is wrong."""
    folder = resolve_source(source)
    config_file = folder / "config.json"
    if not folder.is_dir() or not config_file.is_file():
        raise ModelError(f"{source}: not a layout model folder (no config.json)")
    try:
        model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError) as exc:
        raise ModelError(f"{config_file}: unreadable ({exc})") from exc
    if model_type not in LAYOUT_MODEL_TYPES:
        raise ModelError(f"{source}: model_type {model_type!r} is not a PP-DocLayoutV2/V3/V4 model "
                         f"(expected one of {', '.join(LAYOUT_MODEL_TYPES)})")
    if not (folder / "model.safetensors").is_file():
        raise ModelError(f"{source}: no model.safetensors (the transformers-format checkpoint, e.g. "
                         f"{LAYOUT_REPOS[LAYOUT_MODEL_TYPES[model_type]]})")
    return folder, LAYOUT_MODEL_TYPES[model_type], model_type


def write_layout(source: str, root: Path, model_version: str,
                 log: Log = no_log) -> tuple[LayoutEntry, dict[str, FileEntry]]:
    """Copy the layout checkpoint into root/layout; returns the manifest's `layout` entry and the
    files' entries (`layout/NAME` -> sha256, bytes)."""
    folder, version, model_type = read_layout_source(source)
    if version != paired_version(model_version):
        log(f"warning: PaddleOCR-VL {model_version} was published with "
            f"PP-DocLayout{paired_version(model_version).upper()}, "
            f"not {version.upper()}; adding it anyway")
    target = root / LAYOUT_DIR
    target.mkdir()
    for name in LAYOUT_FILES:
        if (folder / name).is_file():
            shutil.copyfile(folder / name, target / name)
    fsync_tree(target)
    files = {f"{LAYOUT_DIR}/{f.name}": FileEntry.of(f) for f in sorted(target.iterdir())}
    digest = hashlib.sha256(json.dumps({n: files[n].sha256 for n in sorted(files)}).encode()).hexdigest()[:8]
    entry = LayoutEntry(dir=LAYOUT_DIR, version=version, model_type=model_type,
                        id=f"{folder.resolve().name or 'layout'}-{digest}",
                        source=Source(path=str(folder.resolve()), name=str(source)))
    log(f"added layout model PP-DocLayout{version.upper()} ({entry.id})")
    return entry, files


def add_layout(bundle_path: str | Path, source: str, *, overwrite: bool = False, log: Log = no_log) -> Bundle:
    """Put a layout model into an existing bundle: its folder is staged beside the bundle's
    files and renamed into place, then the manifest (with the new id) replaces the old one in
    one rename; until then the bundle is the old one."""
    bundle = Bundle.open(bundle_path)
    manifest = bundle.manifest
    if manifest.layout is not None and not overwrite:
        raise OutputError(f"{bundle.path}: already has a layout model ({manifest.layout.id}); "
                          "pass --overwrite to replace it")
    stage = bundle.path / f".{LAYOUT_DIR}.partial-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        entry, files = write_layout(source, stage, bundle.model_version, log)
        old = bundle.path / f".{LAYOUT_DIR}.old-{os.getpid()}"
        if (bundle.path / LAYOUT_DIR).exists():  # listed, or left unlisted by an interrupted add
            os.rename(bundle.path / LAYOUT_DIR, old)
        os.rename(stage / LAYOUT_DIR, bundle.path / LAYOUT_DIR)
        fsync_dir(bundle.path)
    except OSError as exc:
        raise OutputError(f"{bundle.path}: cannot add the layout model ({exc.strerror or exc})") from exc
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    kept = {n: f for n, f in manifest.files.items() if not n.startswith(f"{LAYOUT_DIR}/")}
    manifest = dataclasses.replace(manifest, files=dict(sorted({**kept, **files}.items())), layout=entry)
    manifest = manifest.with_new_id(bundle.path.name)
    write_manifest(bundle.path, manifest)
    shutil.rmtree(old, ignore_errors=True)
    log(f"bundle id is now {manifest.id}")
    return Bundle.open(bundle.path)
