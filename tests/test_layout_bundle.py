"""A layout model in the bundle: convert --layout, convert --add-layout, inspect, the manifest
and the bundle id (convert/layout_model.py), with tiny PP-DocLayoutV2/V3 checkpoints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import tiny_layout
from click.testing import CliRunner

from ppvl_batch.bundle import Bundle
from ppvl_batch.cli import main
from ppvl_batch.convert.layout_model import layout_hint
from ppvl_batch.errors import ExitCode
from ppvl_batch.layout.detector import LayoutDetector


def run(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.fixture(scope="module")
def layout_v2_dir(tmp_path_factory) -> Path:
    return tiny_layout.build_layout_checkpoint(tmp_path_factory.mktemp("layout") / "v2", version="v2", seed=1)


def copy_bundle(bundle: Path, to: Path) -> Path:
    shutil.copytree(bundle, to)
    return to


def test_convert_with_layout_puts_it_in_the_bundle_and_the_id(tiny_checkpoint, layout_v3_dir, tmp_path):
    plain = run("convert", str(tiny_checkpoint), "-o", str(tmp_path / "plain"), "--quant", "F32")
    assert plain.exit_code == 0, plain.output
    assert "PP-DocLayoutV3" in plain.stderr and "--add-layout" in plain.stderr
    result = run("convert", str(tiny_checkpoint), "-o", str(tmp_path / "b"), "--quant", "F32", "--layout", str(layout_v3_dir))
    assert result.exit_code == 0, result.output
    bundle = Bundle.open(tmp_path / "b")
    assert bundle.layout.version == "v3" and bundle.layout.model_type == "pp_doclayout_v3"
    assert {n for n in bundle.manifest.files if n.startswith("layout/")} == {
        "layout/config.json", "layout/model.safetensors", "layout/preprocessor_config.json"}
    assert bundle.verify() == []
    assert bundle.layout_dir == tmp_path / "b" / "layout"
    assert LayoutDetector.load(bundle.layout_dir).version == "v3"
    assert Bundle.open(tmp_path / "plain").layout is None and Bundle.open(tmp_path / "plain").layout_dir is None
    assert bundle.id != Bundle.open(tmp_path / "plain").id

    shown = run("inspect", str(tmp_path / "b"), "--json")
    assert json.loads(shown.stdout)["layout"]["id"] == bundle.layout.id
    assert "PP-DocLayoutV3 in layout/" in run("inspect", str(tmp_path / "b")).stdout
    assert "layout          none" in run("inspect", str(tmp_path / "plain")).stdout


def test_add_layout_to_an_existing_bundle(tiny_bundle, layout_v3_dir, layout_v2_dir, tmp_path):
    target = copy_bundle(tiny_bundle, tmp_path / "b")
    before = Bundle.open(target).id
    result = run("convert", "--add-layout", str(layout_v3_dir), str(target))
    assert result.exit_code == 0, result.output
    bundle = Bundle.open(target)
    assert bundle.layout.version == "v3" and bundle.id != before and bundle.verify() == []
    assert [p.name for p in target.iterdir() if p.name.startswith(".")] == []  # no staging left

    again = run("convert", "--add-layout", str(layout_v2_dir), str(target))
    assert again.exit_code == ExitCode.OUTPUT and "already has a layout model" in again.stderr
    assert Bundle.open(target).manifest == bundle.manifest

    # a 1.5 bundle with PP-DocLayoutV2: allowed, with a warning; the new files replace the old
    replaced = run("convert", "--add-layout", str(layout_v2_dir), str(target), "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert "published with PP-DocLayoutV3, not V2" in replaced.stderr
    bundle2 = Bundle.open(target)
    assert bundle2.layout.version == "v2" and bundle2.verify() == [] and bundle2.id not in (before, bundle.id)


def test_bad_layout_sources_change_nothing(tiny_bundle, tiny_checkpoint, tmp_path):
    target = copy_bundle(tiny_bundle, tmp_path / "b")
    manifest = Bundle.open(target).manifest
    for source, message in ((tiny_checkpoint, "is not a PP-DocLayoutV2/V3/V4 model"), (tmp_path / "nowhere", "not a layout model folder")):
        result = run("convert", "--add-layout", str(source), str(target))
        assert result.exit_code == ExitCode.MODEL and message in result.stderr, result.output
        assert Bundle.open(target).manifest == manifest and not (target / "layout").exists()
    # at convert: refused before any work, nothing at OUTPUT
    result = run("convert", str(tiny_checkpoint), "-o", str(tmp_path / "out"), "--layout", str(tiny_checkpoint))
    assert result.exit_code == ExitCode.MODEL and not (tmp_path / "out").exists()


def test_cli_shapes(tiny_bundle, layout_v3_dir, tmp_path):
    assert run("convert", str(tiny_bundle)).exit_code == ExitCode.USAGE  # no -o
    mixed = run("convert", "--add-layout", str(layout_v3_dir), str(tiny_bundle), "-o", str(tmp_path / "x"))
    assert mixed.exit_code == ExitCode.USAGE and "takes no -o" in mixed.stderr


def test_the_hint_names_the_paired_layout_model():
    assert "PP-DocLayoutV2" in layout_hint("1", "b") and "PP-DocLayoutV2_safetensors" in layout_hint("1", "b")
    assert "PP-DocLayoutV3" in layout_hint("1.5", "b") and "PP-DocLayoutV3" in layout_hint("1.6", "b")
    assert "ppvl-ocr convert --add-layout LAYOUT b" in layout_hint("1", "b")


def test_pp_doclayout_v4_in_a_18_bundle(layout_v4_bundle, bundle_dirs, tiny_bundle, tmp_path):
    bundle = Bundle.open(layout_v4_bundle)
    assert (bundle.model_version, bundle.layout.version, bundle.layout.model_type) == ("1.8", "v4", "pp_doclayout_v4")
    assert bundle.verify() == [] and bundle.id != Bundle.open(bundle_dirs["v18-original"]).id
    assert LayoutDetector.load(bundle.layout_dir).version == "v4"
    assert "PP-DocLayoutV4 in layout/" in run("inspect", str(layout_v4_bundle)).stdout
    # a 1.5 bundle takes V4 too, with a warning naming its pair
    target = copy_bundle(tiny_bundle, tmp_path / "b15")
    added = run("convert", "--add-layout", str(layout_v4_bundle / "layout"), str(target))
    assert added.exit_code == 0, added.output
    assert "published with PP-DocLayoutV3, not V4" in added.stderr
    assert Bundle.open(target).layout.version == "v4" and Bundle.open(target).verify() == []
