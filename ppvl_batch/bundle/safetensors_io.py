"""The safetensors format, read and written by hand, one tensor at a time.

A file is a little-endian u64 header length, a JSON header with each tensor's dtype, shape and
byte range (and an optional `__metadata__`), then the raw bytes. The `safetensors` package needs
every tensor in memory to write a file and memory-maps it to read one; convert writes the vision
tower (0.9 GB) without holding it, and the int8 vision load reads rows without mapping the file.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}


class PendingTensor(NamedTuple):
    """A tensor to write: its safetensors dtype name and shape now, its data when `load` is called."""

    dtype: str
    shape: list[int]
    load: Callable[[], torch.Tensor]


def write_safetensors(path: Path, tensors: Mapping[str, PendingTensor]) -> None:
    """Write `tensors` in name order, loading each only when its bytes are written."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name in sorted(tensors):
        t = tensors[name]
        size = int(np.prod(t.shape)) * DTYPES[t.dtype].itemsize
        header[name] = {"dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for name in sorted(tensors):
            tensor = tensors[name].load().contiguous()
            f.write(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")


class SafetensorsReader:
    """Reads tensors (or some of their rows) of a .safetensors file with plain reads instead of a
    memory map, so tensors converted on load (int8) do not leave their source pages mapped into
    the process, where they would count towards its resident memory until the file is closed."""

    def __init__(self, path: Path):
        self.file = open(path, "rb")
        (header_len,) = struct.unpack("<Q", self.file.read(8))
        self.header = json.loads(self.file.read(header_len))
        self.header.pop("__metadata__", None)
        self.data_start = 8 + header_len

    def keys(self) -> list[str]:
        return list(self.header)

    def dtype(self, name: str) -> torch.dtype:
        return DTYPES[self.header[name]["dtype"]]

    def read_into(self, name: str, out: torch.Tensor) -> None:
        """Read the whole of `name` straight into `out`, a contiguous tensor of its dtype and shape."""
        info = self.header[name]
        if out.dtype != self.dtype(name) or list(out.shape) != info["shape"] or not out.is_contiguous():
            raise ValueError(f"{name}: {info['dtype']} {info['shape']} cannot be read into "
                             f"{out.dtype} {list(out.shape)}")
        self.file.seek(self.data_start + info["data_offsets"][0])
        # an ndarray is a writable buffer; numpy's stubs do not declare the buffer protocol
        self.file.readinto(out.view(-1).view(torch.uint8).numpy())  # type: ignore[arg-type]

    def get_tensor(self, name: str) -> torch.Tensor:
        return self.get_rows(name, 0, self.header[name]["shape"][0] if self.header[name]["shape"] else 1)

    def get_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows start..stop-1 along the first dimension."""
        info = self.header[name]
        dtype, shape = DTYPES[info["dtype"]], info["shape"]
        row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        data = bytearray((stop - start) * row_bytes)
        self.file.seek(self.data_start + info["data_offsets"][0] + start * row_bytes)
        self.file.readinto(data)
        return torch.frombuffer(data, dtype=dtype).reshape([stop - start, *shape[1:]] if shape else [])

    def __enter__(self) -> SafetensorsReader:
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()
