"""Which PaddleOCR-VL release a checkpoint folder is (convert/versions.py): metadata first, then
the folder's path, then the prompt style; names that contradict the template are passed over."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ppvl_batch.convert.layout_model import layout_hint, paired_version
from ppvl_batch.convert.versions import detect_version, version_in


@pytest.mark.parametrize("name, version", [
    ("PaddlePaddle/PaddleOCR-VL-1.8", "1.8"), ("PaddleOCR-VL-1.5-0.9B", "1.5"), ("paddleocr_vl_1.6", "1.6"),
    ("PaddleOCR-VL-0.9B", None), ("PaddleOCR-VL", None), ("PaddleOCR-VL-2.0", "2"), ("models--PaddlePaddle--PaddleOCR-VL-1.6", "1.6"),
    ("PaddleOCR-VL-1.5B", None), ("my-model", None),
])  # fmt: skip
def test_version_in_a_name(name, version):
    assert version_in(name) == version


def folder(root: Path, name: str, **files: object) -> Path:
    path = root / name
    path.mkdir(parents=True)
    for filename, content in files.items():
        target = path / filename.replace("_json", ".json").replace("README", "README.md")
        target.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_metadata_wins_over_the_folder_name(tmp_path):
    plain = folder(tmp_path, "PaddleOCR-VL-1.5")
    assert (detect_version(plain, "v1.5").version, detect_version(plain, "v1.5").source) == ("1.5", "folder name")
    named = folder(tmp_path / "a", "PaddleOCR-VL-1.5", config_json={"_name_or_path": "PaddlePaddle/PaddleOCR-VL-1.8"})
    assert (detect_version(named, "v1.5").version, detect_version(named, "v1.5").source) == ("1.8", "config.json _name_or_path")
    card = folder(tmp_path / "b", "PaddleOCR-VL-1.5",
                  README="---\nbase_model: PaddlePaddle/PaddleOCR-VL-1.5\n---\n<h1 align='center'>PaddleOCR-VL-1.8 report</h1>\n")
    assert (detect_version(card, "v1.5").version, detect_version(card, "v1.5").source) == ("1.8", "README.md title")
    tokenizer = folder(tmp_path / "c", "ckpt", tokenizer_config_json={"name_or_path": "PaddleOCR-VL-1.6"},
                       README="# My fine-tune\n\nBased on PaddleOCR-VL-1.5.\n")
    assert detect_version(tokenizer, "v1.5").version == "1.6"  # the card's body is not its title


def test_the_path_then_the_prompt_style(tmp_path):
    hub = folder(tmp_path, "models--PaddlePaddle--PaddleOCR-VL-1.6/snapshots/abc123")
    assert (detect_version(hub, "v1.5").version, detect_version(hub, "v1.5").source) == ("1.6", "path")
    nothing = folder(tmp_path, "ckpt", README="# PaddleOCR-VL\n")
    assert (detect_version(nothing, "v1").version, detect_version(nothing, "v1").source) == ("1", "prompt style")
    assert detect_version(nothing, "v1.5").version == "1.5"
    inner_first = folder(tmp_path, "PaddleOCR-VL-1.5-runs/PaddleOCR-VL-1.6")
    assert detect_version(inner_first, "v1.5").version == "1.6"


def test_names_that_contradict_the_template_are_passed_over(tmp_path):
    wrong = folder(tmp_path, "PaddleOCR-VL-1.8", config_json={"_name_or_path": "PaddleOCR-VL-1.0"})
    found = detect_version(wrong, "v1.5")
    assert found.version == "1.8" and found.source == "folder name"
    assert found.passed_over == ["config.json _name_or_path says 1, but the chat template is the v1.5 one"]
    v1 = detect_version(folder(tmp_path / "x", "PaddleOCR-VL-1.6"), "v1")
    assert v1.version == "1" and v1.source == "prompt style" and v1.passed_over


def test_pairs():
    assert [paired_version(v) for v in ("1", "1.5", "1.6", "1.8", "1.7", "1.9", "2", "x")] == [
        "v2", "v3", "v3", "v4", "v3", "v4", "v4", "v3"]
    hint = layout_hint("1.8", "b18")
    assert "PaddleOCR-VL 1.8 pairs with PP-DocLayoutV4" in hint and "PaddlePaddle/PP-DocLayoutV4_safetensors" in hint
