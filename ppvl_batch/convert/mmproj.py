"""Vision encoder + projector -> llama.cpp's own mmproj GGUF, to compare our PyTorch vision with
llama.cpp running the whole model (`convert --mmproj`, tests/test_mmproj.py, bench/bench_mtmd.py).
ppvl-ocr never reads this file to answer a page."""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import Bundle, Log, mmproj_filename, no_log
from ..bundle.manifest import FileEntry, write_manifest
from ..errors import ModelError, UsageError
from ..files import fsync_tree
from .checkpoint import Checkpoint, text_hparams

MMPROJ_TYPES = {"F16": "MOSTLY_F16", "F32": "ALL_F32"}  # --outtype of llama.cpp's converter -> LlamaFileType


def _mmproj_source_name(canon: str) -> str:
    """Canonical name -> the name in the original checkpoint layout after the renaming llama.cpp's
    converter (PaddleOCRVisionModel) applies: `visual.` becomes `model.`, `mlp_AR.` stays."""
    if canon.startswith("visual."):
        return "model." + canon[len("visual."):]
    return "mlp_AR." + canon[len("projector."):]


def _mmproj_is_f16(gguf_name: str, shape: tuple[int, ...], ftype: str) -> bool:
    # llama.cpp's converter rules: vectors and norms stay f32, so does the learned position
    # grid (V_ENC_EMBD_POS, it is interpolated per image); the patch conv is forced to the
    # outtype although it is 4-D; every other matrix takes the outtype.
    if ftype != "F16" or len(shape) < 2 or gguf_name.endswith("_norm.weight"):
        return False
    return gguf_name != "v.position_embd.weight"


def write_mmproj(ckpt: Checkpoint, out: Path, ftype: str = "F16") -> int:
    """Vision encoder + projector as the mmproj GGUF llama.cpp's convert_hf_to_gguf.py writes
    for PaddleOCR-VL (arch `clip`, projector type `paddleocr`), streamed tensor by tensor.
    Returns the number of tensors written."""
    sources = {n: src for n, src in ckpt.tensor_names().items() if n.startswith(("visual.", "projector."))}
    return _write_mmproj(sources, ckpt.vision_config, ckpt.preprocessor, ckpt.text.hidden_size, ckpt.path.name,
                         out, ftype)


def _write_mmproj(
    sources: dict[str, tuple[Path, str]],
    vision: dict[str, Any],
    pre: dict[str, Any],
    text_hidden: int,
    name: str,
    out: Path,
    ftype: str,
) -> int:
    """`sources`: canonical vision/projector tensor name -> (safetensors file, name in it)."""
    import gguf
    from safetensors import safe_open

    if ftype not in MMPROJ_TYPES:
        raise UsageError(f"unknown mmproj type {ftype!r}; choose from {', '.join(MMPROJ_TYPES)}")
    if int(vision.get("spatial_merge_size", 2)) != 2:
        raise ModelError(f"{name}: llama.cpp's paddleocr projector merges 2x2 patches; this model merges "
                         f"{vision['spatial_merge_size']}x{vision['spatial_merge_size']}")
    min_pixels = int(pre.get("min_pixels") or pre.get("size", {}).get("shortest_edge"))
    max_pixels = int(pre.get("max_pixels") or pre.get("size", {}).get("longest_edge"))
    layers = int(vision["num_hidden_layers"])
    # The projector's `mlp_AR.linear_{n}` is mapped like a block tensor: the map must reach mm.2
    # even when the encoder has fewer layers (the tiny test models).
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.MMPROJ, max(layers, 3))

    planned: list[tuple[str, tuple[int, ...], Path, str, bool]] = []  # gguf name, shape, file, raw name, f16
    for canon, (file, raw) in sorted(sources.items()):
        gguf_name = name_map.get_name(_mmproj_source_name(canon), try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ModelError(f"{name}: unexpected vision tensor {raw!r}")
        with safe_open(str(file), framework="pt") as st:
            shape = tuple(st.get_slice(raw).get_shape())
        planned.append((gguf_name, shape, file, raw, _mmproj_is_f16(gguf_name, shape, ftype)))

    writer = gguf.GGUFWriter(str(out), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.MMPROJ])
    writer.add_type(gguf.GGUFType.MMPROJ)
    writer.add_name(name)
    writer.add_file_type(getattr(gguf.LlamaFileType, MMPROJ_TYPES[ftype]))
    writer.add_clip_has_vision_encoder(True)
    writer.add_vision_projection_dim(text_hidden)
    # llama.cpp's converter stores sqrt(max_pixels) as the image size; the position grid size
    # comes from the tensor itself.
    writer.add_vision_image_size(int(math.sqrt(max_pixels)))
    writer.add_vision_patch_size(int(vision["patch_size"]))
    writer.add_vision_embedding_length(int(vision["hidden_size"]))
    writer.add_vision_feed_forward_length(int(vision["intermediate_size"]))
    writer.add_vision_block_count(layers)
    writer.add_vision_head_count(int(vision["num_attention_heads"]))
    writer.add_vision_image_mean([float(v) for v in pre["image_mean"]])
    writer.add_vision_image_std([float(v) for v in pre["image_std"]])
    writer.add_clip_projector_type(gguf.VisionProjectorType.PADDLEOCR)
    writer.add_vision_max_pixels(max_pixels)
    writer.add_vision_min_pixels(min_pixels)
    writer.add_vision_use_gelu(True)
    # llama.cpp's converter reads `rms_norm_eps` (absent: 1e-6); the encoder's LayerNorms use
    # `layer_norm_eps`, which is 1e-6 in every published config. Write the one the model uses.
    writer.add_vision_attention_layernorm_eps(float(vision.get("layer_norm_eps", 1e-6)))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    for gguf_name, shape, _, _, f16 in planned:
        dtype = np.dtype(np.float16 if f16 else np.float32)
        writer.add_tensor_info(gguf_name, shape, dtype, int(np.prod(shape)) * dtype.itemsize)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for _, _, file, raw, f16 in planned:
        with safe_open(str(file), framework="pt") as st:
            tensor = st.get_tensor(raw)
        data = tensor.float().numpy()
        writer.write_tensor_data(np.ascontiguousarray(data.astype(np.float16) if f16 else data))
    writer.close()
    return len(planned)


def add_mmproj(bundle: str | Path, log: Log = no_log) -> Path:
    """Add the mmproj GGUF to a bundle converted without it, from the bundle's own vision weights
    (they are the checkpoint's, at its precision)."""
    from safetensors import safe_open

    opened = Bundle.open(bundle)
    source_name = Path(opened.manifest.source.path).name if opened.manifest.source else opened.path.name
    with safe_open(str(opened.vision_file), framework="pt") as st:
        sources = {n: (opened.vision_file, n) for n in st.keys()}
    name = mmproj_filename()
    partial = opened.path / f".{name}.partial-{os.getpid()}"
    try:
        count = _write_mmproj(sources, opened.config["vision_config"], opened.preprocessor,
                              text_hparams(opened.config).hidden_size, source_name, partial, "F16")
        os.replace(partial, opened.path / name)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    manifest = opened.manifest
    # The mmproj is left out of the bundle id (ppvl-ocr never reads it): the id stays.
    manifest = dataclasses.replace(manifest, vision=dataclasses.replace(manifest.vision, mmproj=name),
                                   files={**manifest.files, name: FileEntry.of(opened.path / name)})
    fsync_tree(opened.path)  # the GGUF's data before the manifest that lists it
    write_manifest(opened.path, manifest)
    log(f"added {name} to {opened.path}: {count} tensors")
    return opened.path / name
