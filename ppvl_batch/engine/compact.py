"""Linear layers whose weights are kept compactly (int8 or bf16) and widened for each call: the
vision tower's memory saver (engine/vision.py, `--vision-dtype`, docs/vision-precision.md)."""

from __future__ import annotations

import threading

import torch
from torch import nn
from torch.nn import functional as F

from ..bundle.safetensors_io import SafetensorsReader


class CompactLinear(nn.Module):
    """A Linear layer whose weight is kept compactly and widened to the compute dtype for each
    call, into a buffer all layers of a tower share. Weight-only: activations keep the compute
    dtype, so the matmul runs at bf16/fp32 speed. Two forms:

    - int8 with one scale per output channel: half of bf16's memory; the only error is the weight
      rounding (at most half a step of each row's max/127).
    - bf16 for fp32 compute: half of fp32's memory; exact when the file's weights are bf16 (the
      published checkpoints), else the weights' rounding to bf16 is the only error.

    bf16 weights are held as their int16 bit pattern: Module.to(dtype) converts every floating
    buffer and would widen them back to fp32 for good."""

    ROWS_PER_READ = 64  # small temporaries: large ones fragment the heap into hundreds of MB
    stored: torch.Tensor  # buffers, typed here: nn.Module types its attributes as Tensor | Module
    scale: torch.Tensor | None

    def __init__(self, stored: torch.Tensor, scale: torch.Tensor | None, bias: torch.Tensor | None,
                 scratch: DequantScratch):
        super().__init__()
        self.register_buffer("stored", stored)  # [out, in] int8, or int16 holding bf16 bits
        self.register_buffer("scale", scale)  # [out, 1] for int8, else None
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.scratch = scratch

    @classmethod
    def from_file(cls, f: SafetensorsReader, name: str, weights: torch.dtype, dtype: torch.dtype,
                  scratch: DequantScratch) -> CompactLinear:
        """Read `name`.weight from `f` a few rows at a time (never the whole float matrix) into
        `weights` (int8 or bf16); `dtype`: the compute dtype."""
        out_features, in_features = f.header[f"{name}.weight"]["shape"]
        int8 = weights == torch.int8
        stored = torch.empty(out_features, in_features, dtype=torch.int8 if int8 else torch.bfloat16)
        scale = torch.empty(out_features, 1, dtype=torch.float32) if int8 else None
        if stored.dtype == f.dtype(f"{name}.weight"):
            f.read_into(f"{name}.weight", stored)  # bf16 kept as the file has it: no temporaries at all
        else:
            for start in range(0, out_features, cls.ROWS_PER_READ):
                stop = min(start + cls.ROWS_PER_READ, out_features)
                rows = f.get_rows(f"{name}.weight", start, stop)
                if scale is None:
                    stored[start:stop] = rows  # fp32 rounded to the nearest bf16
                else:
                    rows = rows.float()
                    peak = rows.abs().amax(dim=1, keepdim=True).clamp(min=torch.finfo(torch.float32).tiny)
                    scale[start:stop] = peak / 127
                    stored[start:stop] = torch.round(rows / scale[start:stop]).to(torch.int8)
        bias = f.get_tensor(f"{name}.bias").to(dtype) if f"{name}.bias" in f.header else None
        return cls(stored if int8 else stored.view(torch.int16), None if scale is None else scale.to(dtype),
                   bias, scratch)

    @property
    def weight_dtype(self) -> torch.dtype:
        """The dtype the weight is kept in: int8 or bf16."""
        return torch.int8 if self.scale is not None else torch.bfloat16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.scratch.take(self.stored.shape, x.dtype, x.device)
        if self.scale is None:
            weight.copy_(self.stored.view(torch.bfloat16))
        else:
            torch.mul(self.stored, self.scale, out=weight)
        return F.linear(x, weight, self.bias)


class DequantScratch(threading.local):
    """One buffer, per thread, that every CompactLinear of a tower widens its weight into: a fresh
    float weight per call would add hundreds of MB of heap fragmentation over a page."""

    def __init__(self):
        self.buffer: torch.Tensor | None = None

    def take(self, shape: torch.Size, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        numel = shape[0] * shape[1]
        if (self.buffer is None or self.buffer.numel() < numel or self.buffer.dtype != dtype
                or self.buffer.device != device):
            self.buffer = torch.empty(numel, dtype=dtype, device=device)
        return self.buffer[:numel].view(shape)
