"""The bundle id (issue 11): it changes with anything that changes an answer, so `scan` never
reuses a page read with another model; an unchanged re-convert keeps it, and so do old bundles."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from makedocs import make_pdf
from scanning import records, scan

from ppvl_batch.bundle import Bundle
from ppvl_batch.bundle.manifest import FileEntry, bundle_id
from ppvl_batch.convert import convert

pytestmark = pytest.mark.usefixtures("in_tmp")


@pytest.fixture(scope="module")
def variants(tiny_checkpoint: Path, tmp_path_factory) -> dict[str, Path]:
    """The tiny checkpoint as is, and with its chat template or its tokenizer changed."""
    root = tmp_path_factory.mktemp("variants")
    out = {"same": tiny_checkpoint}
    for name in ("template", "tokenizer"):
        copy = root / name / tiny_checkpoint.name  # same folder name: the id's readable part stays
        shutil.copytree(tiny_checkpoint, copy)
        out[name] = copy
    template = out["template"] / "chat_template.jinja"
    template.write_text(template.read_text().replace("Assistant:", "Assistant: "))
    config_file = out["tokenizer"] / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config["clean_up_tokenization_spaces"] = not config.get("clean_up_tokenization_spaces", False)
    config_file.write_text(json.dumps(config))
    return out


def test_id_changes_with_template_tokenizer_and_quant_and_not_otherwise(variants, tmp_path: Path) -> None:
    ids = {
        name: Bundle.open(convert(str(src), tmp_path / name, ["F32"])).id for name, src in variants.items()
    }
    ids["again"] = Bundle.open(convert(str(variants["same"]), tmp_path / "again", ["F32"])).id
    ids["quant"] = Bundle.open(convert(str(variants["same"]), tmp_path / "quant", ["Q8_0"])).id
    ids["mmproj"] = Bundle.open(convert(str(variants["same"]), tmp_path / "mmproj", ["F32"], mmproj=True)).id
    assert ids["again"] == ids["same"] == ids["mmproj"]  # deterministic; the mmproj is never read
    assert len({ids[k] for k in ("same", "template", "tokenizer", "quant")}) == 4, ids


def test_id_covers_every_file_but_the_mmproj() -> None:
    files = {n: FileEntry(n * 2, 1) for n in ("a.gguf", "tokenizer.model", "vision.safetensors")}
    base = bundle_id("m", files, "v1.5")
    for name in files:
        changed = {**files, name: FileEntry("other", 1)}
        assert bundle_id("m", changed, "v1.5") != base, name
    assert bundle_id("m", {**files, "new.json": FileEntry("x", 1)}, "v1.5") != base
    assert bundle_id("m", {**files, "mmproj-F16.gguf": FileEntry("x", 1)}, "v1.5") == base
    assert bundle_id("m", files, "v1") != base


def test_reconverted_bundle_reads_pages_again_unchanged_one_does_not(variants, in_tmp: Path) -> None:
    # each run loads the bundle afresh (fast_model would keep the first one loaded for the path)
    make_pdf(in_tmp / "a.pdf", pages=2)
    model = in_tmp / "model"
    convert(str(variants["same"]), model, ["F32"])
    assert scan("a.pdf", "-o", "out.jsonl", model=model).exit_code == 0
    convert(str(variants["same"]), model, ["F32"], overwrite=True)
    again = scan("a.pdf", "-o", "out.jsonl", model=model)
    assert again.exit_code == 0 and "2 already done" in again.stderr and len(records("out.jsonl")) == 2
    convert(str(variants["template"]), model, ["F32"], overwrite=True)
    changed = scan("a.pdf", "-o", "out.jsonl", model=model)
    assert changed.exit_code == 0 and "2 pages ok" in changed.stderr
    recs = records("out.jsonl")
    assert [r["page"] for r in recs] == [1, 2, 1, 2] and recs[0]["model"] != recs[2]["model"]


def test_old_bundles_keep_working_with_their_id(tiny_bundle: Path, in_tmp: Path, fast_model: Path) -> None:
    """A bundle made before the id covered every file has an id computed the old way: it is read
    from the manifest, never recomputed, so its checkpoints stay valid."""
    old = in_tmp / "old"
    shutil.copytree(tiny_bundle, old)
    data = json.loads((old / "manifest.json").read_text())
    data["id"] = "checkpoint-0123abcd"
    (old / "manifest.json").write_text(json.dumps(data))
    make_pdf(in_tmp / "a.pdf")
    assert scan("a.pdf", "-o", "out.jsonl", model=old).exit_code == 0
    assert records("out.jsonl")[0]["model"].startswith("checkpoint-0123abcd:")
    assert "1 already done" in scan("a.pdf", "-o", "out.jsonl", model=old).stderr
