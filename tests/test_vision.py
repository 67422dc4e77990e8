"""Vision precision options: `--vision-dtype int8` (int8 weights in the linear layers) against the
fp32 reference tower, and the safetensors reader it loads with."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from safetensors import safe_open

from ppvl_batch.bundle import Bundle
from ppvl_batch.engine.vision import (
    DequantScratch,
    ImagePreprocessor,
    Int8Linear,
    SafetensorsReader,
    VisionEncoder,
    load_vision_tower,
    resolve_precision,
)
from ppvl_batch.recognizer import Recognizer


def page() -> Image.Image:
    img = Image.new("RGB", (420, 310), "white")
    draw = ImageDraw.Draw(img)
    for i, y in enumerate(range(8, 300, 16)):
        draw.text((8, y), f"{i:02d} int8 weights, 1,234.56", fill=(0, 0, i * 11))
    return img


def embeddings(bundle: Bundle, dtype: str) -> np.ndarray:
    encoder = VisionEncoder(load_vision_tower(bundle.config, bundle.vision_file, dtype=dtype), ImagePreprocessor(bundle.preprocessor))
    [emb] = encoder.encode([encoder.preprocessor(page())])
    return emb.embeddings


def test_reader_matches_safetensors(tiny_bundle):
    path = Bundle.open(tiny_bundle).vision_file
    with SafetensorsReader(path) as ours, safe_open(str(path), framework="pt") as theirs:
        assert sorted(ours.keys()) == sorted(theirs.keys())
        for name in ours.keys():
            expected = theirs.get_tensor(name)
            assert torch.equal(ours.get_tensor(name), expected), name
            if expected.ndim == 2 and expected.shape[0] > 3:
                assert torch.equal(ours.get_rows(name, 1, 3), expected[1:3]), name


def test_int8_linear_error_is_bounded_by_half_a_step():
    torch.manual_seed(0)
    weight = torch.randn(300, 70) * torch.logspace(-3, 1, 300)[:, None]  # rows of very different scale
    linear = torch.nn.Linear(70, 300)
    linear.weight.data = weight

    class Source:  # the reader interface Int8Linear.from_file uses
        header = {"l.weight": {"shape": [300, 70]}, "l.bias": {"shape": [300]}}

        def get_rows(self, name, start, stop):
            return weight[start:stop]

        def get_tensor(self, name):
            return linear.bias.data

    q = Int8Linear.from_file(Source(), "l", torch.float32, DequantScratch())
    dequantized = q.qweight.float() * q.scale
    step = weight.abs().amax(1, keepdim=True) / 127
    assert ((dequantized - weight).abs() <= step / 2 + 1e-7).all()
    assert q.qweight.dtype == torch.int8 and q.qweight.abs().max() == 127
    x = torch.randn(5, 70)
    assert torch.allclose(q(x), linear(x), atol=float(step.max()) * 70)


def test_int8_tower_close_to_fp32(tiny_bundle):
    bundle = Bundle.open(tiny_bundle)
    exact, int8 = embeddings(bundle, "fp32"), embeddings(bundle, "int8")
    cos = (exact * int8).sum(1) / np.linalg.norm(exact, axis=1) / np.linalg.norm(int8, axis=1)
    assert exact.shape == int8.shape
    assert cos.min() > 0.999, cos.min()
    assert not np.array_equal(exact, int8)  # the option does change the weights


def test_int8_keeps_only_int8_matrices(tiny_bundle):
    bundle = Bundle.open(tiny_bundle)
    tower = load_vision_tower(bundle.config, bundle.vision_file, dtype="int8")
    linears = [m for m in tower.modules() if isinstance(m, torch.nn.Linear)]
    int8 = [m for m in tower.modules() if isinstance(m, Int8Linear)]
    assert not linears and len(int8) == 6 * bundle.config["vision_config"]["num_hidden_layers"] + 2
    assert all(m.qweight.dtype == torch.int8 for m in int8)


def test_precision_names_go_into_the_model_id(tiny_bundle):
    native = resolve_precision("auto", "cpu").compute
    assert resolve_precision("int8", "cpu").compute == native
    assert resolve_precision("fp32", "cpu").name == "float32"
    with Recognizer.load(tiny_bundle, dtype="int8", lazy=True) as rec:
        assert rec.model_id.endswith(f":vision-int8-{str(native).removeprefix('torch.')}")
    with pytest.raises(ValueError, match="int8"):
        resolve_precision("fp8", "cpu")


def test_scan_with_int8_vision_records_it(tmp_path):
    """Through the CLI on the demo model: the option reaches the vision tower, the records say so,
    and switching precision redoes the page instead of reusing the bf16/fp32 result."""
    import orjson
    from click.testing import CliRunner

    from ppvl_batch.cli import main

    page().save(tmp_path / "page.png")
    out = tmp_path / "out.jsonl"
    for dtype in ("auto", "int8"):
        result = CliRunner().invoke(main, ["scan", str(tmp_path / "page.png"), "-o", str(out), "--vision-dtype", dtype, "--max-new-tokens", "8"])
        assert result.exit_code == 0, result.output
    recs = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert len(recs) == 2
    assert "vision-int8-" not in recs[0]["model"] and "vision-int8-" in recs[1]["model"]
