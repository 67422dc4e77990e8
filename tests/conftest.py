"""Shared fixtures: small random-weight PaddleOCR-VL checkpoints of the real architecture, built
with transformers in both published layouts, and bundles converted from them by our converter."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import tiny_model  # noqa: E402  (tools/ is not part of the installed package)

# (layout, version) of the checkpoints the tests use. "v18-original": 1.8-shaped (1.5's files,
# which 1.8's are expected to be; its model card names 1.8, its folder name does not).
LAYOUTS = {"v1-original": ("original", "1"), "v15-transformers": ("transformers", "1.5"), "v18-original": ("original", "1.8")}
TEST_QUANTS = ["F32", "F16", "Q8_0", "Q4_K_M"]


@pytest.fixture(scope="session")
def checkpoint_dirs(tmp_path_factory) -> dict[str, Path]:
    """name -> checkpoint folder, built once per test session."""
    root = tmp_path_factory.mktemp("checkpoints")
    return {
        name: tiny_model.build_checkpoint(root / name, layout=layout, version=version, seed=7)
        for name, (layout, version) in LAYOUTS.items()
    }


@pytest.fixture(scope="session")
def bundle_dirs(checkpoint_dirs, tmp_path_factory) -> dict[str, Path]:
    """name -> bundle with F32 (default), F16, Q8_0 and Q4_K_M decoders."""
    from ppvl_batch.convert import convert

    root = tmp_path_factory.mktemp("bundles")
    return {name: convert(str(ckpt), root / name, TEST_QUANTS) for name, ckpt in checkpoint_dirs.items()}


@pytest.fixture(scope="session")
def tiny_checkpoint(checkpoint_dirs) -> Path:
    return checkpoint_dirs["v15-transformers"]


@pytest.fixture(scope="session")
def tiny_bundle(bundle_dirs) -> Path:
    """A small random-weight 1.5 bundle; its default decoder is F32."""
    return bundle_dirs["v15-transformers"]


@pytest.fixture(scope="session")
def variant_dirs(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """tokenizer variant -> (checkpoint, F32 bundle): 1.5 checkpoints whose tokenizers differ from
    the published one as fine-tuned checkpoints' do (tiny_model.TOKENIZER_VARIANTS)."""
    from ppvl_batch.convert import convert

    root = tmp_path_factory.mktemp("variants")
    out = {}
    for variant in tiny_model.TOKENIZER_VARIANTS:
        ckpt = tiny_model.build_checkpoint(root / f"{variant}-ckpt", seed=11, tokenizer_variant=variant)
        out[variant] = (ckpt, convert(str(ckpt), root / variant, ["F32"]))
    return out


@pytest.fixture(scope="session")
def layout_v3_dir(tmp_path_factory) -> Path:
    """A tiny PP-DocLayoutV3 checkpoint of the real class that finds `text` blocks (random
    weights alone find nothing above the threshold)."""
    import tiny_layout

    return tiny_layout.build_layout_checkpoint(tmp_path_factory.mktemp("layout") / "v3", version="v3", seed=0, confident="text")


def bundle_with_layout(bundle: Path, layout: Path, out: Path) -> Path:
    """A copy of `bundle` at `out` with its F32 decoder only and the layout model `layout` added."""
    import shutil

    from ppvl_batch.convert.layout_model import add_layout

    shutil.copytree(bundle, out, ignore=shutil.ignore_patterns("text-F16.gguf", "text-Q*.gguf"))
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"] = {n: f for n, f in manifest["files"].items() if (out / n).exists()}
    manifest["text"]["quants"] = {"F32": "text-F32.gguf"}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    add_layout(out, str(layout))
    return out


@pytest.fixture(scope="session")
def layout_bundle(tiny_bundle, layout_v3_dir, tmp_path_factory) -> Path:
    """The tiny 1.5 bundle (F32 decoder only) with the tiny V3 layout model added."""
    return bundle_with_layout(tiny_bundle, layout_v3_dir, tmp_path_factory.mktemp("layout-bundle") / "bundle")


@pytest.fixture(scope="session")
def image_layout_bundle(tiny_bundle, tmp_path_factory) -> Path:
    """As layout_bundle, with a tiny V3 that finds `image` blocks instead: image files saved by the
    real parser wherever it runs (a Ray worker too, which no monkeypatch reaches)."""
    import tiny_layout

    root = tmp_path_factory.mktemp("image-layout")
    layout = tiny_layout.build_layout_checkpoint(root / "v3", version="v3", seed=0, confident="image")
    return bundle_with_layout(tiny_bundle, layout, root / "bundle")


@pytest.fixture(scope="session")
def layout_v2_bundle(bundle_dirs, tmp_path_factory) -> Path:
    """The tiny v1 bundle (F32 decoder only) with a tiny PP-DocLayoutV2, the pair PaddleOCR-VL v1
    was published with. Its model finds display formulas, which go to the formula prompt."""
    import tiny_layout

    root = tmp_path_factory.mktemp("layout-v2")
    layout = tiny_layout.build_layout_checkpoint(root / "PP-DocLayoutV2", version="v2", seed=0, confident="display_formula")
    return bundle_with_layout(bundle_dirs["v1-original"], layout, root / "bundle")


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch) -> Path:
    """The test works in its own folder (relative paths, ./ppvl-ocr.toml lookup), without PPVL_
    settings from the environment."""
    monkeypatch.chdir(tmp_path)
    for name in [k for k in os.environ if k.startswith("PPVL_")]:
        monkeypatch.delenv(name)
    return tmp_path


class _Shared:
    """A recognizer reused by several in-process runs: close() leaves it open."""

    def __init__(self, rec) -> None:
        self._rec = rec

    def __getattr__(self, name: str):
        return getattr(self._rec, name)

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def loaded_recognizers():
    """The recognizers fast_model loaded in this test module, closed when the module is done."""
    loaded: dict = {}
    yield loaded
    while loaded:
        loaded.popitem()[1].close()


@pytest.fixture
def fast_model(monkeypatch, tiny_bundle, loaded_recognizers):
    """Recognizer.load returns one recognizer per distinct settings for the whole test module."""
    from ppvl_batch.recognizer import Recognizer

    load = Recognizer.load.__func__

    def cached(cls, model=None, **options):
        key = (str(model), tuple(sorted(options.items())))
        if key not in loaded_recognizers:
            loaded_recognizers[key] = load(cls, model, **options)
        return _Shared(loaded_recognizers[key])

    monkeypatch.setattr(Recognizer, "load", classmethod(cached))
    return tiny_bundle

@pytest.fixture(scope="session")
def layout_v4_bundle(bundle_dirs, tmp_path_factory) -> Path:
    """The tiny 1.8-shaped bundle (F32 decoder only) with a tiny PP-DocLayoutV4, the pair 1.8 was
    published with, its page-geometry head included. Its model finds `text` blocks."""
    import tiny_layout

    root = tmp_path_factory.mktemp("layout-v4")
    layout = tiny_layout.build_layout_checkpoint(root / "PP-DocLayoutV4", version="v4", seed=0, confident="text", warp=True)
    return bundle_with_layout(bundle_dirs["v18-original"], layout, root / "bundle")
