"""llama.cpp's own vision path (libmtmd) over a bundle's mmproj GGUF (`convert --mmproj`).

Pages are not recognized this way: it is the reference our PyTorch vision is checked against
(tests/test_mmproj.py) and the vision half of the "llama.cpp alone" system in
bench/bench_engine.py. llama.cpp preprocesses the image itself (its own smart_resize and bicubic
resize), wraps the image tokens in <|IMAGE_START|> ... <|IMAGE_END|> and gives merged token
(row, col) the M-RoPE position (p0, p0 + row, p0 + col), as our decoder does.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from ..engine.llama import default_threads, init_llama, llama_log, model_embedding_width, mtmd_library
from ..errors import ModelError

mtmd_cpp = mtmd_library()

# No torch here (nor through engine.llama): bench_mtmd measures llama.cpp alone, memory included.
IMAGE = mtmd_cpp.MTMD_INPUT_CHUNK_TYPE_IMAGE


class MtmdChunks:
    """A tokenized prompt: text chunks and one chunk per image, owned until close()."""

    def __init__(self, handle: int):
        self.handle: int | None = handle

    def __iter__(self) -> Iterator[tuple[int, int]]:
        """(chunk type, chunk pointer) in prompt order."""
        for i in range(mtmd_cpp.mtmd_input_chunks_size(self.handle)):
            chunk = mtmd_cpp.mtmd_input_chunks_get(self.handle, i)
            yield mtmd_cpp.mtmd_input_chunk_get_type(chunk), chunk

    @staticmethod
    def text_tokens(chunk: int) -> list[int]:
        n = ctypes.c_size_t()
        ptr = mtmd_cpp.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
        return list(ptr[: n.value])

    def close(self) -> None:
        if self.handle:
            mtmd_cpp.mtmd_input_chunks_free(self.handle)
            self.handle = None

    def __del__(self) -> None:
        self.close()


class MtmdVision:
    """An mmproj GGUF loaded by libmtmd next to a llama.cpp text model (`TextDecoder.model`)."""

    def __init__(self, mmproj: Path, model: int, threads: int | None = None):
        init_llama()
        mtmd_cpp.mtmd_log_set(llama_log, ctypes.c_void_p(0))
        mtmd_cpp.mtmd_helper_log_set(llama_log, ctypes.c_void_p(0))
        params = mtmd_cpp.mtmd_context_params_default()
        params.use_gpu = False
        params.print_timings = False
        # Same thread count as our decoder and PyTorch vision (physical cores by default).
        params.n_threads = threads or default_threads()
        self.ctx = mtmd_cpp.mtmd_init_from_file(str(mmproj).encode(), model, params)
        if not self.ctx:
            raise ModelError(f"{mmproj}: libmtmd could not load this mmproj "
                             "(llama-cpp-python too old for projector paddleocr?)")
        self.n_embd = model_embedding_width(model)
        self.marker = mtmd_cpp.mtmd_default_marker().decode()

    def tokenize(self, text: str, image: Image.Image) -> MtmdChunks:
        """Prompt text with `self.marker` where the image goes (llama.cpp adds <|IMAGE_START|>
        and <|IMAGE_END|> around it); special tokens parsed, no BOS added. The image is resized
        and normalized here, by llama.cpp."""
        rgb = image.convert("RGB")
        pixels = rgb.tobytes()
        buffer = (ctypes.c_uint8 * len(pixels)).from_buffer_copy(pixels)
        bitmap = mtmd_cpp.mtmd_bitmap_init(rgb.width, rgb.height, buffer)
        chunks = MtmdChunks(mtmd_cpp.mtmd_input_chunks_init())
        data = text.encode("utf-8")
        prompt = mtmd_cpp.mtmd_input_text(text=data, text_len=len(data), add_special=False, parse_special=True)
        try:
            rc = mtmd_cpp.mtmd_tokenize(self.ctx, chunks.handle, ctypes.byref(prompt), (ctypes.c_void_p * 1)(bitmap), 1)
        finally:
            mtmd_cpp.mtmd_bitmap_free(bitmap)
        if rc != 0:
            chunks.close()
            raise ModelError(f"libmtmd could not tokenize the prompt ({rc})")
        return chunks

    def encode(self, chunk: int) -> tuple[np.ndarray, int, int]:
        """Embeddings of an image chunk [rows * cols, n_embd], row-major over the merged grid,
        with rows and cols."""
        if mtmd_cpp.mtmd_encode_chunk(self.ctx, chunk) != 0:
            raise ModelError("libmtmd could not encode the image")
        image = mtmd_cpp.mtmd_input_chunk_get_tokens_image(chunk)
        n = mtmd_cpp.mtmd_image_tokens_get_n_tokens(image)
        out = np.ctypeslib.as_array(mtmd_cpp.mtmd_get_output_embd(self.ctx), shape=(n, self.n_embd)).copy()
        last = mtmd_cpp.mtmd_image_tokens_get_decoder_pos(image, 0, n - 1)  # (row, col) of the last token
        return out, last.y + 1, last.x + 1

    def close(self) -> None:
        if getattr(self, "ctx", None):
            mtmd_cpp.mtmd_free(self.ctx)
            self.ctx = None

    def __del__(self) -> None:
        self.close()
