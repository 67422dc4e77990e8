"""`ppvl-ocr convert` and the bundle it writes: GGUF layout, manifest, bad input, atomicity."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
from click.testing import CliRunner
from safetensors import safe_open

from ppvl_batch.bundle import DEMO_BUNDLE, Bundle
from ppvl_batch.bundle.manifest import MANIFEST, write_manifest
from ppvl_batch.cli import main


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def field(reader: gguf.GGUFReader, key: str):
    return reader.get_field(key).contents()


@pytest.mark.parametrize("name", ["v15-transformers", "v1-original", "v18-original"])
def test_gguf_metadata_is_what_llama_cpp_expects(name, bundle_dirs, checkpoint_dirs):
    config = json.loads((checkpoint_dirs[name] / "config.json").read_text())
    text = config.get("text_config", config)
    reader = gguf.GGUFReader(str(Bundle.open(bundle_dirs[name]).text_gguf("F32")))
    assert field(reader, "general.architecture") == "paddleocr"
    assert field(reader, "paddleocr.block_count") == text["num_hidden_layers"]
    assert field(reader, "paddleocr.embedding_length") == text["hidden_size"]
    assert field(reader, "paddleocr.feed_forward_length") == text["intermediate_size"]
    assert field(reader, "paddleocr.attention.head_count") == text["num_attention_heads"]
    assert field(reader, "paddleocr.attention.head_count_kv") == text["num_key_value_heads"]
    assert field(reader, "paddleocr.attention.key_length") == text["head_dim"]
    assert field(reader, "paddleocr.attention.value_length") == text["head_dim"]
    assert field(reader, "paddleocr.rope.freq_base") == 500000.0
    assert field(reader, "paddleocr.rope.dimension_sections") == [8, 12, 12, 0]
    assert field(reader, "paddleocr.attention.layer_norm_rms_epsilon") == pytest.approx(1e-5)
    assert field(reader, "paddleocr.context_length") == 131072
    assert field(reader, "tokenizer.ggml.model") == "llama"
    assert field(reader, "tokenizer.ggml.bos_token_id") == 1
    assert field(reader, "tokenizer.ggml.eos_token_id") == 2
    assert field(reader, "tokenizer.ggml.add_bos_token") is False
    assert len(field(reader, "tokenizer.ggml.tokens")) == text["vocab_size"]
    names = {t.name for t in reader.tensors}
    for n in ["token_embd.weight", "output_norm.weight", "output.weight"] + [
        f"blk.1.{t}.weight" for t in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")
    ]:
        assert n in names


def test_lm_head_becomes_output_weight_not_the_embeddings(bundle_dirs, checkpoint_dirs):
    ckpt = checkpoint_dirs["v1-original"]
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())["weight_map"]
    with safe_open(str(ckpt / index["lm_head.weight"]), framework="pt") as st:
        lm_head = st.get_tensor("lm_head.weight").float().numpy()
    reader = gguf.GGUFReader(str(Bundle.open(bundle_dirs["v1-original"]).text_gguf("F32")))
    tensors = {t.name: t for t in reader.tensors}
    output = np.asarray(tensors["output.weight"].data).reshape(lm_head.shape)
    embd = np.asarray(tensors["token_embd.weight"].data).reshape(lm_head.shape)
    assert np.array_equal(output, lm_head)
    assert not np.array_equal(output, embd)


def test_bundle_manifest_lists_every_file_with_its_hash(tiny_bundle):
    bundle = Bundle.open(tiny_bundle)
    files = {p.name for p in tiny_bundle.iterdir()}
    assert set(bundle.manifest.files) | {"manifest.json"} == files
    assert bundle.verify() == []
    assert bundle.quants == {q: f"text-{q}.gguf" for q in ("F32", "F16", "Q8_0", "Q4_K_M")}
    assert bundle.prompt_style == "v1.5" and bundle.model_version == "1.5"
    assert bundle.manifest.vision.dtype == "float32"
    sizes = {q: (tiny_bundle / f).stat().st_size for q, f in bundle.quants.items()}
    assert sizes["F32"] > sizes["F16"] > sizes["Q8_0"] > sizes["Q4_K_M"]


def test_manifest_reads_and_writes_back_as_it_is_on_disk(tiny_bundle, tmp_path):
    """The typed manifest is the file's exact content: parsing and writing it again gives the
    same bytes, for a bundle converted now and for the demo bundle shipped with the package."""
    for folder in (tiny_bundle, DEMO_BUNDLE):
        on_disk = (folder / MANIFEST).read_text(encoding="utf-8")
        write_manifest(tmp_path, Bundle.open(folder).manifest)
        assert (tmp_path / MANIFEST).read_text(encoding="utf-8") == on_disk, folder


def test_manifest_keys_of_a_later_version_survive_a_rewrite_and_a_bad_one_is_one_line(tiny_bundle, tmp_path):
    bundle_dir = shutil.copytree(tiny_bundle, tmp_path / "b")
    data = json.loads((bundle_dir / MANIFEST).read_text(encoding="utf-8"))
    (bundle_dir / MANIFEST).write_text(json.dumps({**data, "later": {"kept": [1, 2]}}), encoding="utf-8")
    from ppvl_batch.convert.mmproj import add_mmproj

    add_mmproj(bundle_dir)
    rewritten = json.loads((bundle_dir / MANIFEST).read_text(encoding="utf-8"))
    assert rewritten["later"] == {"kept": [1, 2]} and rewritten["vision"]["mmproj"] == "mmproj-F16.gguf"
    assert rewritten["id"] == data["id"]  # the mmproj is not part of the id
    del rewritten["text"]["quants"]
    (bundle_dir / MANIFEST).write_text(json.dumps(rewritten), encoding="utf-8")
    result = run("inspect", str(bundle_dir))
    assert result.exit_code == 3 and "malformed manifest" in result.stderr and len(result.stderr.splitlines()) == 1


def test_v1_bundle_keeps_bf16_vision_and_v1_prompt(bundle_dirs):
    bundle = Bundle.open(bundle_dirs["v1-original"])
    assert bundle.manifest.vision.dtype == "bfloat16"
    assert bundle.prompt_style == "v1" and bundle.model_version == "1"


def test_a_18_checkpoint_is_named_18_by_its_metadata_and_pairs_with_v4(checkpoint_dirs, bundle_dirs, tmp_path):
    """1.8-shaped (1.5's files; its model card names 1.8): 1.8 in the manifest, the log, inspect
    and the layout hint, even from a folder whose name says 1.5."""
    bundle = Bundle.open(bundle_dirs["v18-original"])
    assert (bundle.model_version, bundle.prompt_style, bundle.manifest.model_version_source) == ("1.8", "v1.5", "README.md title")
    src = shutil.copytree(checkpoint_dirs["v18-original"], tmp_path / "PaddleOCR-VL-1.5")
    result = run("convert", str(src), "-o", str(tmp_path / "b"), "--quant", "F32")
    assert result.exit_code == 0, result.output
    assert "(PaddleOCR-VL 1.8, from the README.md title; prompt style v1.5)" in result.stderr
    assert "PaddleOCR-VL 1.8 pairs with PP-DocLayoutV4" in result.stderr
    assert "hf download PaddlePaddle/PP-DocLayoutV4_safetensors" in result.stderr
    assert Bundle.open(tmp_path / "b").model_version == "1.8"
    shown = run("inspect", str(tmp_path / "b"))
    assert "PaddleOCR-VL 1.8 (prompt style v1.5; version from the README.md title)" in shown.stdout
    assert json.loads(run("inspect", str(tmp_path / "b"), "--json").stdout)["model_version"] == "1.8"


def test_convert_cli_writes_a_bundle_and_reports_on_stderr(tiny_checkpoint, tmp_path):
    out = tmp_path / "b"
    result = run("convert", str(tiny_checkpoint), "-o", str(out), "--quant", "q8_0", "--quant", "F16")
    assert result.exit_code == 0, result.output
    assert "bundle ready" in result.stderr and result.stdout == ""
    assert Bundle.open(out).quants == {"Q8_0": "text-Q8_0.gguf", "F16": "text-F16.gguf"}
    assert not (out / "text-F32.gguf").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["b"]  # no staging folder left behind


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    result = run("convert", str(tmp_path / "src"), "-o", str(tmp_path / "out"))
    assert result.exit_code == 3
    assert "not a PaddleOCR-VL checkpoint" in result.stderr
    assert not (tmp_path / "out").exists()


def test_missing_folder_says_how_to_get_the_model(tmp_path):
    result = run("convert", str(tmp_path / "nowhere"), "-o", str(tmp_path / "out"))
    assert result.exit_code == 3 and "no such checkpoint folder" in result.stderr


def test_missing_tokenizer(tiny_checkpoint, tmp_path):
    src = shutil.copytree(tiny_checkpoint, tmp_path / "src")
    (src / "tokenizer.model").unlink()
    result = run("convert", str(src), "-o", str(tmp_path / "out"))
    assert result.exit_code == 3 and "tokenizer.model is missing" in result.stderr
    assert not (tmp_path / "out").exists()


def test_incomplete_vision_weights(tiny_checkpoint, tmp_path):
    """A checkpoint without one of the vision tower's tensors fails at convert, not at the first
    page: one line, exit 3, nothing left behind."""
    from safetensors.torch import load_file, save_file

    src = shutil.copytree(tiny_checkpoint, tmp_path / "src")
    [shard] = src.glob("*.safetensors")
    weights = load_file(shard)
    [patch] = [name for name in weights if name.endswith("patch_embedding.weight")]
    del weights[patch]
    save_file(weights, shard, metadata={"format": "pt"})
    result = run("convert", str(src), "-o", str(tmp_path / "out"), "--quiet")
    assert result.exit_code == 3
    assert result.stderr == (
        f"ppvl-ocr: error: {src}: vision weights incomplete (1 missing, e.g. visual.vision_model.embeddings.patch_embedding.weight)\n"
    )
    assert not (tmp_path / "out").exists()


def test_truncated_safetensors(checkpoint_dirs, tmp_path):
    src = shutil.copytree(checkpoint_dirs["v1-original"], tmp_path / "src")
    shard = src / "model-00001-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    result = run("convert", str(src), "-o", str(tmp_path / "out"))
    assert result.exit_code == 3
    assert "safetensors" in result.stderr and "model-00001-of-00002" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_unknown_quant(tiny_checkpoint, tmp_path):
    result = run("convert", str(tiny_checkpoint), "-o", str(tmp_path / "out"), "--quant", "Q3_XYZ")
    assert result.exit_code == 2 and "unknown quant 'Q3_XYZ'" in result.stderr


def test_existing_folder_that_is_not_a_bundle_is_left_alone(tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.txt").write_text("precious")
    result = run("convert", str(tiny_checkpoint), "-o", str(out), "--quant", "F16", "--overwrite")
    assert result.exit_code == 4 and "not a bundle; refusing to overwrite" in result.stderr
    assert [p.name for p in out.iterdir()] == ["thesis.txt"] and (out / "thesis.txt").read_text() == "precious"


def test_existing_file_is_left_alone(tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    out.write_text("keep me")
    result = run("convert", str(tiny_checkpoint), "-o", str(out))
    assert result.exit_code == 4 and out.read_text() == "keep me"


def test_existing_bundle_needs_overwrite(tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    assert run("convert", str(tiny_checkpoint), "-o", str(out), "--quant", "F16").exit_code == 0
    result = run("convert", str(tiny_checkpoint), "-o", str(out), "--quant", "Q8_0")
    assert result.exit_code == 4 and "--overwrite" in result.stderr
    assert Bundle.open(out).quants == {"F16": "text-F16.gguf"}
    assert run("convert", str(tiny_checkpoint), "-o", str(out), "--quant", "Q8_0", "--overwrite").exit_code == 0
    assert Bundle.open(out).quants == {"Q8_0": "text-Q8_0.gguf"}


def test_interrupted_convert_leaves_nothing_that_looks_like_a_bundle(tiny_checkpoint, tmp_path, monkeypatch):
    import ppvl_batch.convert as convert_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(convert_module, "quantize", interrupted)
    result = run("convert", str(tiny_checkpoint), "-o", str(tmp_path / "out"), "--quant", "Q8_0")
    assert result.exit_code == 130
    assert list(tmp_path.iterdir()) == []


def test_a_failed_rename_into_place_keeps_the_old_bundle(tiny_checkpoint, tmp_path, monkeypatch):
    """--overwrite renames the old bundle aside, then the new one in: when the second rename fails
    the old bundle is put back, whole, and nothing hidden is left beside it."""
    import errno
    import os

    out = tmp_path / "out"
    assert run("convert", str(tiny_checkpoint), "-o", str(out), "--quant", "F16").exit_code == 0
    before = Bundle.open(out).manifest
    rename = os.rename

    def failing(src, dst, *args, **kwargs):
        if Path(src).name.startswith(".out.partial-"):
            raise OSError(errno.EACCES, "Permission denied")
        return rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "rename", failing)
    result = run("convert", str(tiny_checkpoint), "-o", str(out), "--quant", "Q8_0", "--overwrite")
    assert result.exit_code == 4 and "cannot write the bundle" in result.stderr
    assert Bundle.open(out).manifest == before and Bundle.open(out).verify() == []
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_bundle_errors_are_one_line_with_exit_3(tiny_checkpoint, tiny_bundle, tmp_path):
    assert "not a bundle; run `ppvl-ocr convert" in run("inspect", str(tiny_checkpoint)).stderr
    broken = shutil.copytree(tiny_bundle, tmp_path / "broken")
    (broken / "vision.safetensors").write_bytes(b"x")
    result = run("inspect", str(broken))
    assert result.exit_code == 3 and "wrong size" in result.stderr
    assert run("inspect", str(tmp_path / "none")).exit_code == 3


def test_inspect_reports_components(tiny_bundle):
    result = run("inspect", str(tiny_bundle), "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    p = info["parameters"]
    assert set(p) == {"vision encoder", "projector", "decoder layers", "embeddings", "lm_head"}
    vocab, hidden = info["text"]["vocab"], info["text"]["hidden"]
    assert p["embeddings"] == p["lm_head"] == vocab * hidden
    assert p["projector"] == 2 * 64 + 2 * (256 * 256 + 256)  # LayerNorm(64), Linear(256, 256), Linear(256, 256)
    assert info["text"]["layers"] == 2 and info["text"]["context_length"] == 131072
    assert info["prompt_style"] == "v1.5" and info["quants"][0] == "F32"
    human = run("inspect", str(tiny_bundle), "--verify")
    assert human.exit_code == 0 and "vision encoder" in human.stdout and "text-Q4_K_M.gguf" in human.stdout


def run_cli_process(*args: str, env_extra: dict[str, str]):
    """The real command in a fresh process: huggingface_hub reads its settings at import."""
    import os
    import subprocess
    import sys

    env = {**os.environ, **env_extra}
    exe = Path(sys.executable).with_name("ppvl-ocr")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, env=env, timeout=300)


def test_hub_id_from_the_local_cache(tiny_checkpoint, tmp_path):
    repo = tmp_path / "hf" / "hub" / "models--PaddlePaddle--PaddleOCR-VL-1.5"
    shutil.copytree(tiny_checkpoint, repo / "snapshots" / "abc123")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    result = run_cli_process("convert", "PaddlePaddle/PaddleOCR-VL-1.5", "-o", str(tmp_path / "out"), "--quant", "F16",
                             env_extra={"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    assert Bundle.open(tmp_path / "out").model_version == "1.5"


def test_hub_id_not_cached_and_offline_says_how_to_get_it(tmp_path):
    result = run_cli_process("convert", "PaddlePaddle/PaddleOCR-VL", "-o", str(tmp_path / "out"),
                             env_extra={"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 3
    assert "hf download PaddlePaddle/PaddleOCR-VL --local-dir DIR" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
