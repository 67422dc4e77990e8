"""Page images -> image embeddings, in PyTorch (design.md sections 1 and 3).

Preprocessing is transformers' `PaddleOCRVLImageProcessorPil`, built from the bundle's
preprocessor_config (mean = std = 0.5, smart_resize to multiples of 28). The encoder and the
projector are transformers' own PaddleOCR-VL modules, so the numbers are the reference's.
Several pages of any sizes go through one forward pass: the encoder packs them and each page
attends only to itself.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

# Patch budget of one vision forward pass: bounds activation memory whatever the batch size.
MAX_PATCHES_PER_FORWARD = 16384


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
        from transformers.models.paddleocr_vl.image_processing_pil_paddleocr_vl import PaddleOCRVLImageProcessorPil

        self.config = config
        self.min_pixels = int(config.get("min_pixels") or config.get("size", {}).get("shortest_edge"))
        self.max_pixels = int(config.get("max_pixels") or config.get("size", {}).get("longest_edge"))
        self.merge = int(config.get("merge_size", 2))
        self.processor = PaddleOCRVLImageProcessorPil(
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
        size = {"shortest_edge": min_pixels or self.min_pixels, "longest_edge": max_pixels or self.max_pixels}
        out = self.processor(images=[image.convert("RGB")], size=size, return_tensors="np")
        _, grid_h, grid_w = (int(v) for v in out["image_grid_thw"][0])
        return PreparedImage(np.asarray(out["pixel_values"], dtype=np.float32), grid_h, grid_w, self.merge)


class VisionTower(nn.Module):
    """Vision encoder + projector of PaddleOCR-VL: patches -> text-width embeddings."""

    def __init__(self, config):
        from transformers.models.paddleocr_vl.modeling_paddleocr_vl import PaddleOCRProjector, PaddleOCRVisionModel

        super().__init__()
        self.visual = PaddleOCRVisionModel._from_config(config.vision_config, attn_implementation="sdpa")
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


def resolve_dtype(dtype: str | None, device: str) -> torch.dtype:
    """`auto`: bf16 where the hardware computes it natively (CUDA with bf16, CPUs with AVX512-BF16
    or AMX), fp32 elsewhere. fp32 is the reference's numerics (the parity tests use it)."""
    names = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    if dtype in (None, "auto"):
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    if dtype not in names:
        raise ValueError(f"unknown vision dtype {dtype!r}; use auto, fp32 or bf16")
    return names[dtype]


def load_vision_tower(config: dict[str, Any], weights: Path, device: str = "cpu", dtype: str | None = None) -> VisionTower:
    """Build the tower from the bundle's config.json and load vision.safetensors into it."""
    from safetensors import safe_open
    from transformers import PaddleOCRVLConfig
    from transformers.initialization import no_init_weights

    cfg = PaddleOCRVLConfig(**config)
    torch_dtype = resolve_dtype(dtype, device)
    with no_init_weights():  # the weights come from the file; random init would only cost time
        tower = VisionTower(cfg)
    # Tensors are converted to the compute dtype as they are read and then adopted by the module
    # (assign=True), so the weights are never held twice.
    with safe_open(str(weights), framework="pt") as f:
        state = {name: f.get_tensor(name).to(torch_dtype) for name in f.keys()}
    missing, unexpected = tower.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        from .errors import ModelError

        raise ModelError(f"{weights}: vision weights do not match the config (missing {missing[:2]}, unexpected {unexpected[:2]})")
    del state
    return tower.to(device=device, dtype=torch_dtype).eval()


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
