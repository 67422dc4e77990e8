"""`convert --mmproj`: the vision tower as llama.cpp's mmproj GGUF, checked by running it in
llama.cpp (libmtmd) against our PyTorch vision tower on the same image."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw

from ppvl_batch.bundle import Bundle
from ppvl_batch.cli import main
from ppvl_batch.compare.mtmd import IMAGE, MtmdVision
from ppvl_batch.convert import convert
from ppvl_batch.convert.mmproj import add_mmproj
from ppvl_batch.engine.llama import TextDecoder
from ppvl_batch.engine.vision import ImagePreprocessor, VisionEncoder, load_vision_tower


def page(width: int, height: int) -> Image.Image:
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    for i, y in enumerate(range(10, height - 10, 18)):
        draw.text((10, y), f"{i:03d} quick brown fox 1,234.56", fill=(i * 37 % 255, 0, 90))
    return img


@pytest.fixture(scope="module")
def mmproj_bundles(checkpoint_dirs, tmp_path_factory):
    root = tmp_path_factory.mktemp("mmproj")
    return {name: convert(str(ckpt), root / name, ["F32"], mmproj=True) for name, ckpt in checkpoint_dirs.items()}


@pytest.fixture(scope="module")
def both_visions(mmproj_bundles):
    """name -> (our VisionEncoder at fp32, llama.cpp's vision over the mmproj)."""
    out = {}
    for name, path in mmproj_bundles.items():
        bundle = Bundle.open(path)
        ours = VisionEncoder(load_vision_tower(bundle.config, bundle.vision_file, dtype="fp32"), ImagePreprocessor(bundle.preprocessor))
        decoder = TextDecoder(bundle.text_gguf("F32"), n_ctx=64)
        out[name] = (ours, MtmdVision(bundle.mmproj_file, decoder.model), decoder)
    yield out
    for _, mtmd, decoder in out.values():
        mtmd.close()
        decoder.close()


def llama_cpp_embedding(mtmd: MtmdVision, image: Image.Image):
    chunks = mtmd.tokenize(mtmd.marker, image)
    [chunk] = [c for kind, c in chunks if kind == IMAGE]
    return mtmd.encode(chunk)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def field(reader: gguf.GGUFReader, key: str):
    return reader.get_field(key).contents()


def test_mmproj_gguf_is_what_llama_cpp_converter_writes(mmproj_bundles, checkpoint_dirs):
    # Checked once by hand against llama.cpp's convert_hf_to_gguf.py --mmproj --outtype f16 on a
    # 3-layer tiny checkpoint: same keys, tensor names, order, types and bytes.
    config = json.loads((checkpoint_dirs["v1-original"] / "config.json").read_text())
    reader = gguf.GGUFReader(str(Bundle.open(mmproj_bundles["v1-original"]).mmproj_file))
    assert field(reader, "general.architecture") == "clip" and field(reader, "general.type") == "mmproj"
    assert field(reader, "clip.projector_type") == "paddleocr"
    assert field(reader, "clip.has_vision_encoder") is True and field(reader, "clip.use_gelu") is True
    assert field(reader, "clip.vision.projection_dim") == config["hidden_size"]
    assert field(reader, "clip.vision.embedding_length") == config["vision_config"]["hidden_size"]
    assert field(reader, "clip.vision.block_count") == config["vision_config"]["num_hidden_layers"]
    assert field(reader, "clip.vision.patch_size") == 14
    assert field(reader, "clip.vision.image_min_pixels") == 147384 and field(reader, "clip.vision.image_max_pixels") == 2822400
    assert field(reader, "clip.vision.image_size") == 1680  # int(sqrt(max_pixels)), as llama.cpp writes it
    assert field(reader, "clip.vision.image_mean") == field(reader, "clip.vision.image_std") == [0.5, 0.5, 0.5]
    assert field(reader, "clip.vision.attention.layer_norm_epsilon") == pytest.approx(1e-6)
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["v.patch_embd.weight"] == types["v.blk.1.attn_q.weight"] == types["mm.1.weight"] == types["mm.2.weight"] == "F16"
    assert types["v.position_embd.weight"] == types["v.blk.0.ln1.weight"] == types["mm.input_norm.weight"] == "F32"
    assert types["v.blk.0.attn_q.bias"] == types["v.post_ln.weight"] == "F32"
    shapes = {t.name: [int(d) for d in t.shape] for t in reader.tensors}  # GGUF lists dims innermost first
    assert shapes["v.patch_embd.weight"] == [14, 14, 3, 64] and shapes["v.position_embd.weight"] == [64, 729]
    assert shapes["mm.1.weight"] == [256, 256] and shapes["mm.2.weight"] == [256, config["hidden_size"]]


@pytest.mark.parametrize("name", ["v15-transformers", "v1-original"])
def test_llama_cpp_vision_matches_ours(name, both_visions):
    ours, mtmd, _ = both_visions[name]
    # A multiple of 28 inside the pixel limits (no resize on either side) and at least 27 patches
    # per side (the learned 27x27 position grid is upsampled, where ggml's antialiased bilinear
    # equals torch's bilinear).
    image = page(392, 448)
    [mine] = ours.encode([ours.preprocessor(image)])
    theirs, rows, cols = llama_cpp_embedding(mtmd, image)
    assert (rows, cols) == (mine.rows, mine.cols) == (16, 14)
    # Measured: cosine >= 0.99999 per token, max abs diff 3.4e-4 on values up to 0.6 (f16 weights).
    assert cosines(mine.embeddings, theirs).min() > 0.9999
    assert np.abs(mine.embeddings - theirs).max() < 0.01 * np.abs(mine.embeddings).max()


def test_llama_cpp_pads_where_transformers_stretches(both_visions):
    # For a size that is not a multiple of 28 both pick the same grid, but llama.cpp resizes
    # keeping the aspect ratio and pads with black (centered) instead of stretching to it.
    ours, mtmd, _ = both_visions["v15-transformers"]
    image = page(500, 700)  # smart_resize -> 504 x 700
    theirs, rows, cols = llama_cpp_embedding(mtmd, image)
    [stretched] = ours.encode([ours.preprocessor(image)])
    padded = Image.new("RGB", (504, 700), "black")
    padded.paste(image, (2, 0))
    [as_llama_cpp] = ours.encode([ours.preprocessor(padded)])
    assert (rows, cols) == (stretched.rows, stretched.cols) == (25, 18)
    assert cosines(as_llama_cpp.embeddings, theirs).min() > 0.9999
    assert cosines(stretched.embeddings, theirs).min() < 0.9


def test_convert_mmproj_flag_lists_it_in_the_manifest(tiny_checkpoint, tmp_path):
    out = tmp_path / "b"
    result = CliRunner().invoke(main, ["convert", str(tiny_checkpoint), "-o", str(out), "--quant", "F16", "--mmproj"])
    assert result.exit_code == 0, result.output
    bundle = Bundle.open(out)
    assert bundle.mmproj_file == out / "mmproj-F16.gguf"
    assert "mmproj-F16.gguf" in bundle.manifest.files and bundle.verify() == []
    info = json.loads(CliRunner().invoke(main, ["inspect", str(out), "--json"]).stdout)
    assert info["mmproj"] == "mmproj-F16.gguf"
    assert "llama.cpp mmproj mmproj-F16.gguf" in CliRunner().invoke(main, ["inspect", str(out)]).stdout


def test_add_mmproj_to_an_existing_bundle_gives_the_same_file(mmproj_bundles, checkpoint_dirs, tmp_path):
    out = convert(str(checkpoint_dirs["v1-original"]), tmp_path / "b", ["F32"])
    assert Bundle.open(out).mmproj_file is None  # only when asked
    add_mmproj(out)
    bundle = Bundle.open(out)
    assert bundle.mmproj_file == out / "mmproj-F16.gguf" and bundle.verify() == []
    assert sorted(p.name for p in out.iterdir()) == sorted([*bundle.manifest.files, "manifest.json"])
    converted = Bundle.open(mmproj_bundles["v1-original"])
    assert bundle.manifest.files["mmproj-F16.gguf"] == converted.manifest.files["mmproj-F16.gguf"]


def test_mmproj_of_a_model_llama_cpp_cannot_run_is_refused(tiny_checkpoint, tmp_path):
    """llama.cpp's paddleocr projector merges 2x2 patches: another merge is a one-line model error
    (exit 3), and the interrupted convert leaves no bundle behind."""
    import shutil

    src = shutil.copytree(tiny_checkpoint, tmp_path / "src")
    config = json.loads((src / "config.json").read_text())
    config["vision_config"]["spatial_merge_size"] = 3
    (src / "config.json").write_text(json.dumps(config))
    result = CliRunner().invoke(main, ["convert", str(src), "-o", str(tmp_path / "b"), "--quant", "F16", "--mmproj", "--quiet"])
    assert result.exit_code == 3
    assert result.stderr == "ppvl-ocr: error: src: llama.cpp's paddleocr projector merges 2x2 patches; this model merges 3x3\n"
    assert not (tmp_path / "b").exists()

