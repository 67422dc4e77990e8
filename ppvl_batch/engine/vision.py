"""Page images -> image embeddings, in PyTorch (docs/design.md sections 1 and 3).

Preprocessing is transformers' `PaddleOCRVLImageProcessorPil`, built from the bundle's
preprocessor_config (mean = std = 0.5, smart_resize to multiples of 28). The encoder and the
projector are transformers' own PaddleOCR-VL modules, so the numbers are the reference's.
Several pages of any sizes go through one forward pass: the encoder packs them and each page
attends only to itself.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..bundle.safetensors_io import SafetensorsReader
from ..errors import ModelError, UsageError
from .compact import CompactLinear, DequantScratch

# Patch budget of one vision forward pass (an image above it goes alone): bounds activation
# memory whatever the batch size. On the CPU packing pays only for small images: at 1024 the 12
# crops of a layout page (7056 patches) took 6.4 s against 7.8 s in one pass and 0.35 GB less peak
# RSS, 3 whole pages 7% less time and 0.48 GB less; under AVX2 3-5% less time and 0.39-0.46 GB
# less (bench/bench_vision_budget.py). GPUs want the big passes.
PATCHES_PER_FORWARD = {"cpu": 1024, "gpu": 16384}
# smart_resize refuses images whose sides differ by more than this factor (docs/design.md section 3).
MAX_ASPECT_RATIO = 200
# A padded image larger than this many times the model's max_pixels is shrunk before padding: the
# preprocessor scales it down to max_pixels anyway, and a 1 x 10^6 strip padded at full size
# would need 5 x 10^9 pixels.
PAD_BUDGET_FACTOR = 4


@dataclass
class PreparedImage:
    """One page after smart_resize and patchify."""

    pixel_values: np.ndarray  # [grid_h * grid_w, 3, patch, patch] float32, row-major over patches
    grid_h: int  # patches per column (resized height / patch)
    grid_w: int  # patches per row (resized width / patch)
    merge: int  # spatial merge (2): image tokens = (grid_h / merge) * (grid_w / merge)

    @property
    def patch(self) -> int:
        """Patch side in pixels (the preprocessor config's patch_size: 14 for PaddleOCR-VL)."""
        return self.pixel_values.shape[-1]

    @property
    def width(self) -> int:
        return self.grid_w * self.patch

    @property
    def height(self) -> int:
        return self.grid_h * self.patch

    @property
    def token_rows(self) -> int:
        return self.grid_h // self.merge

    @property
    def token_cols(self) -> int:
        return self.grid_w // self.merge

    @property
    def num_tokens(self) -> int:
        return self.token_rows * self.token_cols


@dataclass
class ImageEmbedding:
    """What the decoder needs about one page: its merged-token embeddings and their grid."""

    embeddings: np.ndarray  # [rows * cols, text hidden] float32, row-major over the merged grid
    rows: int
    cols: int
    width: int  # size of the image the model saw
    height: int
    seconds: float  # this page's share of the vision forward pass


class ImagePreprocessor:
    """smart_resize + rescale + normalize + patchify, exactly as the checkpoint's processor."""

    def __init__(self, config: dict[str, Any]):
        self.config = config
        self.min_pixels = int(config.get("min_pixels") or config.get("size", {}).get("shortest_edge"))
        self.max_pixels = int(config.get("max_pixels") or config.get("size", {}).get("longest_edge"))
        self.merge = int(config.get("merge_size", 2))
        self.factor = int(config.get("patch_size", 14)) * self.merge  # smart_resize's multiple

    @cached_property
    def processor(self) -> Any:
        """transformers' processor, made at the first page: importing it takes seconds, which a
        scan that finds nothing to do (a lazy recognizer) need not spend."""
        from ..hf import paddleocr_vl_image_processor

        config = self.config
        return paddleocr_vl_image_processor(
            do_resize=True,
            resample=int(config.get("resample", 3)),
            do_rescale=True,
            rescale_factor=float(config.get("rescale_factor", 1 / 255)),
            do_normalize=True,
            image_mean=config.get("image_mean", [0.5, 0.5, 0.5]),
            image_std=config.get("image_std", [0.5, 0.5, 0.5]),
            do_convert_rgb=True,
            patch_size=int(config.get("patch_size", 14)),
            temporal_patch_size=int(config.get("temporal_patch_size", 1)),
            merge_size=self.merge,
            min_pixels=self.min_pixels,
            max_pixels=self.max_pixels,
        )

    def __call__(self, image: Image.Image, min_pixels: int | None = None,
                 max_pixels: int | None = None) -> PreparedImage:
        min_pixels, max_pixels = min_pixels or self.min_pixels, max_pixels or self.max_pixels
        image = pad_aspect_ratio(image.convert("RGB"), self.factor, min_pixels, max_pixels)
        size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
        out = self.processor(images=[image], size=size, return_tensors="np")
        _, grid_h, grid_w = (int(v) for v in out["image_grid_thw"][0])
        return PreparedImage(np.asarray(out["pixel_values"], dtype=np.float32), grid_h, grid_w, self.merge)


def padded_size(width: int, height: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """The smallest (width, height), with the image's own sides as minimums, that smart_resize
    accepts: the short side grows until the ratio is within MAX_ASPECT_RATIO as smart_resize
    measures it (after its own rounding), so the answer comes from its code, not a copy of it."""
    from ..hf import smart_resize

    def accepted(w: int, h: int) -> bool:
        try:
            smart_resize(h, w, factor, min_pixels, max_pixels)
        except ValueError:
            return False
        return True

    if accepted(width, height):
        return width, height
    long_side, short_side = max(width, height), math.ceil(max(width, height) / MAX_ASPECT_RATIO)
    while not accepted(*((long_side, short_side) if width >= height else (short_side, long_side))):
        short_side += 1
    return (long_side, short_side) if width >= height else (short_side, long_side)


def pad_aspect_ratio(image: Image.Image, factor: int, min_pixels: int, max_pixels: int) -> Image.Image:
    """An RGB image the preprocessor accepts: one whose aspect ratio is over 200:1 (a strip of
    one text line, a thin rule) is centred on white paper of the smallest size within the ratio,
    as if it had been scanned with a margin. Every pixel of it is kept at its own scale, so the
    model sees what the reference processor would see for that page. Images within the ratio are
    returned as they are."""
    width, height = image.size
    padded = padded_size(width, height, factor, min_pixels, max_pixels)
    if padded == (width, height):
        return image
    budget = PAD_BUDGET_FACTOR * max_pixels
    if padded[0] * padded[1] > budget:
        scale = math.sqrt(budget / (padded[0] * padded[1]))
        image = image.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.LANCZOS)
        width, height = image.size
        padded = padded_size(width, height, factor, min_pixels, max_pixels)
    paper = Image.new("RGB", padded, (255, 255, 255))
    paper.paste(image, ((padded[0] - width) // 2, (padded[1] - height) // 2))
    return paper


def contiguous_sdpa(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask,
                    **kwargs):
    """transformers' SDPA attention, with query/key/value made contiguous first. The vision
    encoder hands them over as transposed views ([1, heads, patches, head_dim] strided over
    [patches, heads, head_dim]), on which PyTorch's CPU flash kernel is about 12% slower: 0.99 s
    against 0.87 s, copies included, per layer of a 4960-patch page. Same kernel, same numbers."""
    from ..hf import sdpa_attention

    return sdpa_attention(module, query.contiguous(), key.contiguous(), value.contiguous(), attention_mask, **kwargs)


class VisionTower(nn.Module):
    """Vision encoder + projector of PaddleOCR-VL: patches -> text-width embeddings."""

    def __init__(self, config):
        from ..hf import paddleocr_vl_vision

        super().__init__()
        self.visual, self.projector = paddleocr_vl_vision(config, contiguous_sdpa)

    @torch.inference_mode()
    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        # pixel_values: [total patches, 3, patch, patch]; grid_thw: [n images, 3]
        hidden = self.visual(pixel_values=pixel_values.unsqueeze(0), grid_thw=grid_thw).last_hidden_state
        return self.projector(hidden, grid_thw)  # [total merged tokens, text hidden]


# 0 or 1: decide the vision precision as on a CPU without (with) native bf16, whatever this one
# has. For benchmarks and tests that reproduce an AVX2-only machine on a newer one, together with
# ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2 and MKL_ENABLE_INSTRUCTIONS=AVX2 (fp32 matmuls
# are MKL's), which limit the kernels PyTorch calls (bench/bench_vision_cpu.py sets them all).
NATIVE_BF16_ENV = "PPVL_CPU_NATIVE_BF16"


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls run at about twice the fp32 rate there; elsewhere
    PyTorch emulates bf16 and it is slower than fp32."""
    override = os.environ.get(NATIVE_BF16_ENV)
    if override is not None:
        if override not in ("0", "1"):
            raise UsageError(f"{NATIVE_BF16_ENV} must be 0 or 1, not {override!r}")
        return override == "1"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


VISION_DTYPES = ("auto", "fp32", "bf16", "int8")
_SHORT_NAMES = {torch.int8: "int8", torch.bfloat16: "bf16"}


@dataclass(frozen=True)
class VisionPrecision:
    """How the vision tower computes (`compute`) and, when it differs, the dtype its linear
    layers keep their weights in (`weights`: int8 or bf16, widened for each call)."""

    compute: torch.dtype
    weights: torch.dtype | None = None

    @property
    def name(self) -> str:
        """What model ids record, e.g. `bfloat16`, `int8-bfloat16` or `bf16-float32`."""
        compute = str(self.compute).removeprefix("torch.")
        return f"{_SHORT_NAMES[self.weights]}-{compute}" if self.weights is not None else compute


def resolve_precision(dtype: str | None, device: str) -> VisionPrecision:
    """`auto`: bf16 where the hardware computes it natively (CUDA with bf16, CPUs with AVX512-BF16
    or AMX); elsewhere on the CPU fp32 compute with the linear weights kept in bf16 (the published
    checkpoints' own precision, so the numbers are fp32's with half its weight memory). `fp32`
    (weights in fp32 too) is the reference's numerics (the parity tests use it). `int8`: auto's
    compute dtype with int8 weights in the linear layers (half of bf16's memory)."""
    names = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    if dtype in (None, "auto", "int8"):
        if device.startswith("cuda"):
            native = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        else:
            native = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
        if dtype == "int8":
            return VisionPrecision(native, torch.int8)
        # bf16-held weights are measured on the CPU only (bench/bench_vision_cpu.py).
        lean = native == torch.float32 and device == "cpu"
        return VisionPrecision(native, torch.bfloat16 if lean else None)
    if dtype not in names:
        raise ValueError(f"unknown vision dtype {dtype!r}; use one of {', '.join(VISION_DTYPES)}")
    return VisionPrecision(names[dtype])


def load_vision_tower(config: dict[str, Any], weights: Path, device: str = "cpu",
                      dtype: str | None = None) -> VisionTower:
    """Build the tower from the bundle's config.json and load vision.safetensors into it."""
    from safetensors import safe_open

    from ..hf import no_init_weights, paddleocr_vl_config

    cfg = paddleocr_vl_config(config)
    precision = resolve_precision(dtype, device)
    with no_init_weights():  # the weights come from the file; random init would only cost time
        tower = VisionTower(cfg)
    compact: set[str] = set()
    if precision.weights is not None:
        with SafetensorsReader(weights) as f:
            compact = _compact_linears(tower, f, precision.weights, precision.compute)
            done = {f"{name}.{part}" for name in compact for part in ("weight", "bias")}
            state = {name: f.get_tensor(name).to(precision.compute) for name in f.keys() if name not in done}
    else:
        # Tensors are converted to the compute dtype as they are read and then adopted by the
        # module (assign=True), so the weights are never held twice.
        with safe_open(str(weights), framework="pt") as f:
            state = {name: f.get_tensor(name).to(precision.compute) for name in f.keys()}
    missing, unexpected = tower.load_state_dict(state, strict=False, assign=True)
    missing = [name for name in missing if name.rpartition(".")[0] not in compact]
    if missing or unexpected:
        raise ModelError(f"{weights}: vision weights do not match the config "
                         f"(missing {missing[:2]}, unexpected {unexpected[:2]})")
    del state
    return tower.to(device=device, dtype=precision.compute).eval()


def _compact_linears(tower: VisionTower, f: SafetensorsReader, weights: torch.dtype, compute: torch.dtype) -> set[str]:
    """Replace every nn.Linear (attention and MLP of each encoder layer, the projector: nearly
    all of the tower's weights) by a CompactLinear read from `f`; returns their module names."""
    names = [name for name, module in tower.named_modules() if isinstance(module, nn.Linear)]
    scratch = DequantScratch()
    for name in names:
        parent, _, child = name.rpartition(".")
        layer = CompactLinear.from_file(f, name, weights, compute, scratch)
        tower.get_submodule(parent).register_module(child, layer)
    return set(names)


class VisionEncoder:
    """Preprocess and encode batches of pages."""

    def __init__(self, tower: VisionTower, preprocessor: ImagePreprocessor, device: str = "cpu"):
        self.tower = tower
        self.preprocessor = preprocessor
        self.device = device
        self.dtype = next(tower.parameters()).dtype

    def encode(self, prepared: Sequence[PreparedImage]) -> list[ImageEmbedding]:
        """Embeddings for each page, in order; pages are packed into as few forward passes as the
        patch budget allows."""
        budget = PATCHES_PER_FORWARD["cpu" if self.device == "cpu" else "gpu"]
        results: list[ImageEmbedding] = []
        group: list[PreparedImage] = []
        for item in prepared:
            if group and sum(p.grid_h * p.grid_w for p in group) + item.grid_h * item.grid_w > budget:
                results.extend(self._forward(group))
                group = []
            group.append(item)
        if group:
            results.extend(self._forward(group))
        return results

    def _forward(self, group: list[PreparedImage]) -> list[ImageEmbedding]:
        started = time.perf_counter()
        pixels = torch.from_numpy(np.concatenate([p.pixel_values for p in group])).to(self.device, self.dtype)
        grid = torch.tensor([[1, p.grid_h, p.grid_w] for p in group], dtype=torch.long, device=self.device)
        embeddings = self.tower(pixels, grid).float().cpu().numpy()
        seconds = time.perf_counter() - started
        total = sum(p.num_tokens for p in group)
        out, offset = [], 0
        for p in group:
            out.append(
                ImageEmbedding(
                    embeddings=np.ascontiguousarray(embeddings[offset : offset + p.num_tokens]),
                    rows=p.token_rows,
                    cols=p.token_cols,
                    width=p.width,
                    height=p.height,
                    seconds=seconds * p.num_tokens / total,
                )
            )
            offset += p.num_tokens
        return out
