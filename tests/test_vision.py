"""Vision precision options against the fp32 reference tower: `--vision-dtype int8` (int8 weights in
the linear layers), `auto` on a CPU without native bf16 (bf16 weights, fp32 compute), and the
safetensors reader they load with."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from safetensors import safe_open

from ppvl_batch.bundle import Bundle
from ppvl_batch.bundle.safetensors_io import SafetensorsReader
from ppvl_batch.engine.compact import CompactLinear, DequantScratch
from ppvl_batch.engine.vision import (
    NATIVE_BF16_ENV,
    ImagePreprocessor,
    VisionEncoder,
    load_vision_tower,
    resolve_precision,
)
from ppvl_batch.errors import UsageError
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
                into = torch.empty_like(expected)
                ours.read_into(name, into)
                assert torch.equal(into, expected), name
                with pytest.raises(ValueError, match="cannot be read into"):
                    ours.read_into(name, into.t())


def linear_source(weight: torch.Tensor, bias: torch.Tensor):
    """The reader interface CompactLinear.from_file uses, over one layer `l`."""

    class Source:
        header = {"l.weight": {"shape": list(weight.shape)}, "l.bias": {"shape": [weight.shape[0]]}}

        def dtype(self, name):
            return weight.dtype

        def get_rows(self, name, start, stop):
            return weight[start:stop]

        def get_tensor(self, name):
            return bias

    return Source()


def test_int8_linear_error_is_bounded_by_half_a_step():
    torch.manual_seed(0)
    weight = torch.randn(300, 70) * torch.logspace(-3, 1, 300)[:, None]  # rows of very different scale
    linear = torch.nn.Linear(70, 300)
    linear.weight.data = weight

    q = CompactLinear.from_file(linear_source(weight, linear.bias.data), "l", torch.int8, torch.float32, DequantScratch())
    dequantized = q.stored.float() * q.scale
    step = weight.abs().amax(1, keepdim=True) / 127
    assert ((dequantized - weight).abs() <= step / 2 + 1e-7).all()
    assert q.weight_dtype == torch.int8 and q.stored.abs().max() == 127
    x = torch.randn(5, 70)
    assert torch.allclose(q(x), linear(x), atol=float(step.max()) * 70)


def test_bf16_linear_is_fp32_compute_on_bf16_weights():
    """bf16 weights (read in 64-row pieces, 300 rows: a partial last piece) widened into a shared
    scratch give exactly fp32's F.linear on the bf16-rounded weights, in both layers sharing it,
    and survive Module.to(float32), which would widen a bf16 buffer for good."""
    torch.manual_seed(0)
    scratch = DequantScratch()
    weights = [torch.randn(300, 70), torch.randn(70, 300)]
    biases = [torch.randn(300), torch.randn(70)]
    layers = [CompactLinear.from_file(linear_source(w, b), "l", torch.bfloat16, torch.float32, scratch).to(torch.float32)
              for w, b in zip(weights, biases)]
    x = torch.randn(5, 70)
    y = layers[1](layers[0](x))
    rounded = [w.bfloat16().float() for w in weights]
    assert torch.equal(y, torch.nn.functional.linear(torch.nn.functional.linear(x, rounded[0], biases[0]), rounded[1], biases[1]))
    assert all(layer.weight_dtype == torch.bfloat16 and layer.stored.element_size() == 2 for layer in layers)
    assert torch.equal(layers[0].stored.view(torch.bfloat16).float(), rounded[0])
    assert not torch.equal(rounded[0], weights[0])  # the rounding is real, so the equality above is not vacuous


def test_int8_tower_close_to_fp32(tiny_bundle):
    bundle = Bundle.open(tiny_bundle)
    exact, int8 = embeddings(bundle, "fp32"), embeddings(bundle, "int8")
    cos = (exact * int8).sum(1) / np.linalg.norm(exact, axis=1) / np.linalg.norm(int8, axis=1)
    assert exact.shape == int8.shape
    assert cos.min() > 0.999, cos.min()
    assert not np.array_equal(exact, int8)  # the option does change the weights


@pytest.mark.parametrize("dtype, weights", [("int8", torch.int8), ("auto", torch.bfloat16)])
def test_compact_towers_keep_only_compact_matrices(tiny_bundle, monkeypatch, dtype, weights):
    monkeypatch.setenv(NATIVE_BF16_ENV, "0")  # auto: bf16 weights, fp32 compute
    bundle = Bundle.open(tiny_bundle)
    tower = load_vision_tower(bundle.config, bundle.vision_file, dtype=dtype)
    linears = [m for m in tower.modules() if isinstance(m, torch.nn.Linear)]
    compact = [m for m in tower.modules() if isinstance(m, CompactLinear)]
    assert not linears and len(compact) == 6 * bundle.config["vision_config"]["num_hidden_layers"] + 2
    assert all(m.weight_dtype == weights and m.stored.element_size() == weights.itemsize for m in compact)
    assert {p.dtype for p in tower.parameters()} == {torch.float32}  # everything else computes in fp32


def test_auto_without_native_bf16_is_fp32_on_bf16_weights(bundle_dirs, monkeypatch):
    """On a CPU without native bf16, `auto` keeps the linear weights in bf16 and computes in fp32:
    on a bundle whose vision weights are bf16 (the original layout, as published) the embeddings
    are fp32's exactly; on an fp32 bundle only the weights' rounding to bf16 differs."""
    monkeypatch.setenv(NATIVE_BF16_ENV, "0")
    bf16_file, fp32_file = Bundle.open(bundle_dirs["v1-original"]), Bundle.open(bundle_dirs["v15-transformers"])
    assert {bf16_file.manifest.vision.dtype, fp32_file.manifest.vision.dtype} == {"bfloat16", "float32"}
    assert np.array_equal(embeddings(bf16_file, "auto"), embeddings(bf16_file, "fp32"))
    exact, lean = embeddings(fp32_file, "fp32"), embeddings(fp32_file, "auto")
    cos = (exact * lean).sum(1) / np.linalg.norm(exact, axis=1) / np.linalg.norm(lean, axis=1)
    assert cos.min() > 0.9999 and not np.array_equal(exact, lean), cos.min()


@pytest.mark.parametrize("native, auto, int8", [("0", "bf16-float32", "int8-float32"), ("1", "bfloat16", "int8-bfloat16")])
def test_precision_names_go_into_the_model_id(tiny_bundle, monkeypatch, native, auto, int8):
    monkeypatch.setenv(NATIVE_BF16_ENV, native)
    assert resolve_precision("fp32", "cpu").name == "float32"
    assert resolve_precision("bf16", "cpu").name == "bfloat16"
    for dtype, name in (("auto", auto), ("int8", int8), ("fp32", "float32")):
        with Recognizer.load(tiny_bundle, dtype=dtype, lazy=True) as rec:
            assert rec.model_id.endswith(f":vision-{name}"), rec.model_id
    with pytest.raises(ValueError, match="int8"):
        resolve_precision("fp8", "cpu")


def test_native_bf16_override_rejects_other_values(monkeypatch):
    monkeypatch.setenv(NATIVE_BF16_ENV, "no")
    with pytest.raises(UsageError, match=f"{NATIVE_BF16_ENV} must be 0 or 1"):
        resolve_precision("auto", "cpu")


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


def test_encode_packs_images_up_to_the_devices_patch_budget(tiny_bundle, monkeypatch):
    """Images go into forward passes of up to PATCHES_PER_FORWARD patches (one bigger than that
    alone), in order; each image's embedding is what it gets in a pass of its own."""
    import ppvl_batch.engine.vision as vision

    bundle = Bundle.open(tiny_bundle)
    encoder = VisionEncoder(load_vision_tower(bundle.config, bundle.vision_file, dtype="fp32"), ImagePreprocessor(bundle.preprocessor))
    prepared = [encoder.preprocessor(page().resize(size), min_pixels=784, max_pixels=40000)
                for size in [(60, 60), (200, 150), (40, 90), (90, 40), (300, 300), (50, 50)]]
    patches = [p.grid_h * p.grid_w for p in prepared]
    budget = patches[1] + 10  # the 200 x 150 image fits in a pass, the 300 x 300 one does not
    assert patches[4] > budget
    monkeypatch.setitem(vision.PATCHES_PER_FORWARD, "cpu", budget)
    passes = []
    forward = encoder._forward
    monkeypatch.setattr(encoder, "_forward", lambda group: passes.append(len(group)) or forward(group))

    packed = encoder.encode(prepared)

    sizes, start = [], 0
    for n in passes:
        sizes.append(sum(patches[start:start + n]))
        start += n
    assert start == len(prepared) and len(passes) < len(prepared)  # some images shared a pass
    assert all(s <= budget or n == 1 for s, n in zip(sizes, passes))
    # a pass ends only where the next image would have gone over the budget
    ends = np.cumsum(passes)[:-1]
    assert all(sizes[i] + patches[end] > budget for i, end in enumerate(ends))
    for item, got in zip(prepared, packed):
        [alone] = encoder.encode([item])
        assert got.embeddings.shape == alone.embeddings.shape
        np.testing.assert_allclose(got.embeddings, alone.embeddings, rtol=1e-4, atol=1e-5)
