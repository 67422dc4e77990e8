"""Page images -> image embeddings, in PyTorch (docs/design.md sections 1 and 3).

Preprocessing is transformers' `PaddleOCRVLImageProcessorPil`, built from the bundle's
preprocessor_config (mean = std = 0.5, smart_resize to multiples of 28). The encoder and the
projector are transformers' own PaddleOCR-VL modules, so the numbers are the reference's.
Several pages of any sizes go through one forward pass: the encoder packs them and each page
attends only to itself.
"""

from __future__ import annotations

import math
import threading
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
from torch.nn import functional as F

from ..bundle.safetensors_io import SafetensorsReader

# Patch budget of one vision forward pass: bounds activation memory whatever the batch size.
MAX_PATCHES_PER_FORWARD = 16384
# smart_resize refuses images whose sides differ by more than this factor (docs/design.md section 3).
MAX_ASPECT_RATIO = 200
# A padded image larger than this many times the model's max_pixels is shrunk before padding: the
# preprocessor scales it down to max_pixels anyway, and a 1 x 10^6 strip padded at full size
# would need 5 x 10^9 pixels.
PAD_BUDGET_FACTOR = 4


@dataclass
class PreparedImage:
    """One page after smart_resize and patchify."""

    pixel_values: np.ndarray  # [grid_h * grid_w, 3, 14, 14] float32, row-major over patches
    grid_h: int  # patches per column (resized height / 14)
    grid_w: int  # patches per row (resized width / 14)
    merge: int  # spatial merge (2): image tokens = (grid_h / merge) * (grid_w / merge)

    @property
    def width(self) -> int:
        return self.grid_w * 14

    @property
    def height(self) -> int:
        return self.grid_h * 14

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
        from transformers.models.paddleocr_vl.image_processing_pil_paddleocr_vl import PaddleOCRVLImageProcessorPil

        config = self.config
        return PaddleOCRVLImageProcessorPil(
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

    def __call__(self, image: Image.Image, min_pixels: int | None = None, max_pixels: int | None = None) -> PreparedImage:
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
    from transformers.models.paddleocr_vl.image_processing_pil_paddleocr_vl import smart_resize

    def accepted(w: int, h: int) -> bool:
        try:
            smart_resize(h, w, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
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


def contiguous_sdpa(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask, **kwargs):
    """transformers' SDPA attention, with query/key/value made contiguous first. The vision
    encoder hands them over as transposed views ([1, heads, patches, head_dim] strided over
    [patches, heads, head_dim]), on which PyTorch's CPU flash kernel is about 12% slower: 0.99 s
    against 0.87 s, copies included, per layer of a 4960-patch page. Same kernel, same numbers."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query.contiguous(), key.contiguous(), value.contiguous(), attention_mask, **kwargs)


class VisionTower(nn.Module):
    """Vision encoder + projector of PaddleOCR-VL: patches -> text-width embeddings."""

    def __init__(self, config):
        from transformers import AttentionInterface
        from transformers.models.paddleocr_vl.modeling_paddleocr_vl import PaddleOCRProjector, PaddleOCRVisionModel

        super().__init__()
        AttentionInterface.register("ppvl_contiguous_sdpa", contiguous_sdpa)
        self.visual = PaddleOCRVisionModel._from_config(config.vision_config, attn_implementation="ppvl_contiguous_sdpa")
        self.projector = PaddleOCRProjector(config)

    @torch.inference_mode()
    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        # pixel_values: [total patches, 3, 14, 14]; grid_thw: [n images, 3]
        hidden = self.visual(pixel_values=pixel_values.unsqueeze(0), grid_thw=grid_thw).last_hidden_state
        return self.projector(hidden, grid_thw)  # [total merged tokens, text hidden]


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls run at about twice the fp32 rate there; elsewhere
    PyTorch emulates bf16 and it is slower than fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


VISION_DTYPES = ("auto", "fp32", "bf16", "int8")


@dataclass(frozen=True)
class VisionPrecision:
    """How the vision tower computes (`compute`) and whether its linear layers keep int8 weights."""

    compute: torch.dtype
    int8_weights: bool = False

    @property
    def name(self) -> str:
        """What model ids record, e.g. `bfloat16` or `int8-bfloat16`."""
        compute = str(self.compute).removeprefix("torch.")
        return f"int8-{compute}" if self.int8_weights else compute


def resolve_precision(dtype: str | None, device: str) -> VisionPrecision:
    """`auto`: bf16 where the hardware computes it natively (CUDA with bf16, CPUs with AVX512-BF16
    or AMX), fp32 elsewhere. fp32 is the reference's numerics (the parity tests use it). `int8`:
    auto's compute dtype with int8 weights in the linear layers (half of bf16's memory)."""
    names = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    if dtype in (None, "auto", "int8"):
        if device.startswith("cuda"):
            native = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        else:
            native = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
        return VisionPrecision(native, int8_weights=dtype == "int8")
    if dtype not in names:
        raise ValueError(f"unknown vision dtype {dtype!r}; use one of {', '.join(VISION_DTYPES)}")
    return VisionPrecision(names[dtype])


class Int8Linear(nn.Module):
    """A Linear layer whose weight is kept as int8 with one scale per output channel and
    expanded to the compute dtype for each call. Weight-only: activations keep the compute dtype,
    so the matmul runs at bf16/fp32 speed, the weights take half of bf16's memory, and the only
    error is the weight rounding (at most half a step of each row's max/127)."""

    ROWS_PER_READ = 64  # small temporaries: large ones fragment the heap into hundreds of MB

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, scratch: DequantScratch):
        super().__init__()
        self.register_buffer("qweight", qweight)  # [out, in] int8
        self.register_buffer("scale", scale)  # [out, 1]
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.scratch = scratch

    @classmethod
    def from_file(cls, f: SafetensorsReader, name: str, dtype: torch.dtype, scratch: DequantScratch) -> Int8Linear:
        """Quantize `name`.weight from `f` a few rows at a time (never the whole float matrix)."""
        out_features, in_features = f.header[f"{name}.weight"]["shape"]
        qweight = torch.empty(out_features, in_features, dtype=torch.int8)
        scale = torch.empty(out_features, 1, dtype=torch.float32)
        for start in range(0, out_features, cls.ROWS_PER_READ):
            stop = min(start + cls.ROWS_PER_READ, out_features)
            rows = f.get_rows(f"{name}.weight", start, stop).float()
            scale[start:stop] = rows.abs().amax(dim=1, keepdim=True).clamp(min=torch.finfo(torch.float32).tiny) / 127
            qweight[start:stop] = torch.round(rows / scale[start:stop]).to(torch.int8)
        bias = f.get_tensor(f"{name}.bias").to(dtype) if f"{name}.bias" in f.header else None
        return cls(qweight, scale.to(dtype), bias, scratch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.scratch.take(self.qweight.shape, x.dtype, x.device)
        torch.mul(self.qweight, self.scale, out=weight)
        return F.linear(x, weight, self.bias)


class DequantScratch(threading.local):
    """One buffer, per thread, that every Int8Linear of a tower expands its weight into: a fresh
    float weight per call would add hundreds of MB of heap fragmentation over a page."""

    def __init__(self):
        self.buffer: torch.Tensor | None = None

    def take(self, shape: torch.Size, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        numel = shape[0] * shape[1]
        if self.buffer is None or self.buffer.numel() < numel or self.buffer.dtype != dtype or self.buffer.device != device:
            self.buffer = torch.empty(numel, dtype=dtype, device=device)
        return self.buffer[:numel].view(shape)


def load_vision_tower(config: dict[str, Any], weights: Path, device: str = "cpu", dtype: str | None = None) -> VisionTower:
    """Build the tower from the bundle's config.json and load vision.safetensors into it."""
    from safetensors import safe_open
    from transformers import PaddleOCRVLConfig
    from transformers.initialization import no_init_weights

    from ..errors import ModelError

    cfg = PaddleOCRVLConfig(**config)
    precision = resolve_precision(dtype, device)
    with no_init_weights():  # the weights come from the file; random init would only cost time
        tower = VisionTower(cfg)
    quantized: set[str] = set()
    if precision.int8_weights:
        with SafetensorsReader(weights) as f:
            quantized = _quantize_linears(tower, f, precision.compute)
            done = {f"{name}.{part}" for name in quantized for part in ("weight", "bias")}
            state = {name: f.get_tensor(name).to(precision.compute) for name in f.keys() if name not in done}
    else:
        # Tensors are converted to the compute dtype as they are read and then adopted by the
        # module (assign=True), so the weights are never held twice.
        with safe_open(str(weights), framework="pt") as f:
            state = {name: f.get_tensor(name).to(precision.compute) for name in f.keys()}
    missing, unexpected = tower.load_state_dict(state, strict=False, assign=True)
    missing = [name for name in missing if name.rpartition(".")[0] not in quantized]
    if missing or unexpected:
        raise ModelError(f"{weights}: vision weights do not match the config (missing {missing[:2]}, unexpected {unexpected[:2]})")
    del state
    return tower.to(device=device, dtype=precision.compute).eval()


def _quantize_linears(tower: VisionTower, f: SafetensorsReader, dtype: torch.dtype) -> set[str]:
    """Replace every nn.Linear (attention and MLP of each encoder layer, the projector: nearly
    all of the tower's weights) by an Int8Linear read from `f`; returns their module names."""
    names = [name for name, module in tower.named_modules() if isinstance(module, nn.Linear)]
    scratch = DequantScratch()
    for name in names:
        parent, _, child = name.rpartition(".")
        tower.get_submodule(parent).register_module(child, Int8Linear.from_file(f, name, dtype, scratch))
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
        results: list[ImageEmbedding] = []
        group: list[PreparedImage] = []
        for item in prepared:
            if group and sum(p.grid_h * p.grid_w for p in group) + item.grid_h * item.grid_w > MAX_PATCHES_PER_FORWARD:
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
