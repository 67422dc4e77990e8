"""The llama.cpp binding: one model and context that image embeddings enter (docs/design.md sections 4, 6).

We feed llama.cpp ourselves instead of using `Llama.generate()`, whose bookkeeping assumes one
position per token. A page's prompt goes into its own sequence of the context (several pages can
be in flight), in `TextDecoder.prefill`:

    clear the page's sequence
    decode the prompt text before the image     token batch, positions 0 .. p0-1
    decode the image embeddings                 embedding batch, 3-D M-RoPE positions
    decode the prompt text after the image      token batch from p0 + max(rows, cols)

then `decode_step` feeds one token for each page in flight. Sampling and the answering loop on
top of these are in generate.py.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import llama_cpp
import numpy as np

from ..errors import ModelError

if TYPE_CHECKING:  # vision.py imports torch; a llama.cpp-only process (bench_mtmd) must not pay for it
    from .vision import ImageEmbedding

log = logging.getLogger("ppvl_batch")

# ggml_type of the KV cache
KV_TYPES = {"f32": 0, "f16": 1, "q8_0": 8}
CPU_BATCH = 128  # tokens per llama_decode call on the CPU (see TextDecoder)
GPU_BATCH = 512

_LOG_LEVEL_ERROR = 4  # ggml_log_level: 1 debug, 2 info, 3 warn, 4 error
_initialized = False


@llama_cpp.llama_log_callback
def llama_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    # llama.cpp talks a lot on stderr; keep errors, drop the rest unless asked for. libmtmd
    # (compare/mtmd.py) logs through it too.
    if level == _LOG_LEVEL_ERROR or os.environ.get("PPVL_LLAMA_LOG"):
        log.warning("llama.cpp: %s", text.decode("utf-8", "replace").rstrip())


def init_llama() -> None:
    """Start the llama.cpp backend once per process, with its logging routed through ours."""
    global _initialized
    if not _initialized:
        llama_cpp.llama_log_set(llama_log, ctypes.c_void_p(0))
        llama_cpp.llama_backend_init()
        _initialized = True


class DecoderError(RuntimeError):
    pass


def _int_array(values: Sequence[int] | np.ndarray, ctype=ctypes.c_int32):
    return (ctype * len(values))(*values)


class TextDecoder:
    """One llama.cpp model and context, reused for every page."""

    def __init__(
        self,
        gguf_path: Path,
        *,
        n_ctx: int,
        threads: int | None = None,
        n_gpu_layers: int = 0,
        n_batch: int | None = None,
        kv_type: str = "f16",
        n_seq: int = 1,
    ):
        """n_ctx is the context of ONE page (prompt + answer); the KV cache holds n_seq of them."""
        init_llama()
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = n_gpu_layers
        if n_gpu_layers == 0:
            # Read the weights instead of mapping the file: llama.cpp repacks most CPU matrices
            # into a layout of its own, and with a mapping the file pages it read them from would
            # stay resident beside the repacked copy (about 120 MB more for Q4_K_M).
            mparams.load_mode = llama_cpp.LLAMA_LOAD_MODE_NONE
        # llama.cpp's AMX matmul for quantized weights crashes the process on some AMX CPUs
        # (segfault in ggml_backend_amx_mul_mat, llama.cpp issue 20824, unfixed): keep the
        # weights out of its extra buffer types there. Elsewhere they hold the faster repacked copy.
        mparams.use_extra_bufts = not cpu_has_llama_amx()
        self.model = llama_cpp.llama_model_load_from_file(str(gguf_path).encode(), mparams)
        if not self.model:
            raise ModelError(f"{gguf_path}: llama.cpp could not load this GGUF "
                             "(damaged, or llama-cpp-python too old for arch paddleocr)")
        threads = threads or default_threads()
        # Tokens per llama_decode call. The attention scores of one call are n_batch x n_ctx x heads
        # floats: on the CPU 128 rows keep them at 51 MB for a 6209-token context (203 MB at 512)
        # and prefill a page 9% faster (bench/bench_prefill.py). GPUs want the larger batch.
        n_batch = n_batch or (CPU_BATCH if n_gpu_layers == 0 else GPU_BATCH)
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = n_ctx * n_seq
        cparams.n_batch = n_batch
        cparams.n_ubatch = n_batch
        cparams.n_seq_max = n_seq
        # One cache stream per page in flight: with a unified cache every page would attend over
        # (and mask) the cells of all the others, so a step would cost more with each page added.
        cparams.kv_unified = False
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        cparams.no_perf = True
        # f16 halves the KV cache (about 18 KB per token). f32 gives the reference's numerics, and
        # then flash attention stays off: on the CPU it rounds queries to f16. On the CPU it is
        # off for f16 too: llama.cpp's plain attention decodes a page about 14% faster there
        # (bench/RESULTS.md). q8_0 needs it (llama.cpp quantizes V only with flash attention).
        cparams.type_k = cparams.type_v = KV_TYPES[kv_type]
        if kv_type == "f32" or (kv_type == "f16" and n_gpu_layers == 0):
            cparams.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self.ctx = llama_cpp.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            llama_cpp.llama_model_free(self.model)
            raise ModelError(f"{gguf_path}: llama.cpp could not create a context of {n_ctx} tokens")
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_ctx = llama_cpp.llama_n_ctx(self.ctx)
        # llama.cpp lowers the batch to a context asked for below it (and pads that context up to a
        # multiple of 256): prompts go in batches of what it took, or a prompt between the two
        # sizes would fail its assertion and abort the process.
        self.n_batch = llama_cpp.llama_n_batch(self.ctx)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.n_embd = llama_cpp.llama_model_n_embd(self.model)
        self.eos_id = llama_cpp.llama_vocab_eos(self.vocab)
        self.threads = threads
        self.n_seq = n_seq
        self.ctx_per_sequence = self.n_ctx // n_seq
        # seq_id arrays for llama_batch rows, one per sequence, kept alive with the decoder
        self._seq_id_values = [(ctypes.c_int32 * 1)(s) for s in range(n_seq)]
        self._seq_arrays = [ctypes.cast(a, ctypes.POINTER(ctypes.c_int32)) for a in self._seq_id_values]
        # The decode step's batch, made once: a step fills in its rows instead of building five
        # ctypes arrays and a batch per token (bench/bench_decode_loop.py).
        self._step_token = (ctypes.c_int32 * n_seq)()
        self._step_pos = (ctypes.c_int32 * n_seq)()
        self._step_seq = (ctypes.POINTER(ctypes.c_int32) * n_seq)()
        self._step_one = (ctypes.c_int32 * n_seq)(*[1] * n_seq)
        self._step_want = (ctypes.c_int8 * n_seq)(*[1] * n_seq)
        self._step_batch = llama_cpp.llama_batch(
            n_tokens=0, token=self._step_token, embd=None, pos=self._step_pos,
            n_seq_id=self._step_one, seq_id=self._step_seq, logits=self._step_want,
        )

    # -- batches ------------------------------------------------------------------------------

    def _submit(self, n: int, pos, seq_ids: Sequence[int], *, tokens=None, embd=None,
                logits: Sequence[int] = ()) -> None:
        """One llama_decode call; `logits` lists the rows whose logits are wanted."""
        seq_arrays = [self._seq_arrays[s] for s in seq_ids]
        want = (ctypes.c_int8 * n)()
        for row in logits:
            want[row] = 1
        batch = llama_cpp.llama_batch(
            n_tokens=n,
            token=tokens,
            embd=embd,
            pos=pos,
            n_seq_id=_int_array([1] * n),
            seq_id=(ctypes.POINTER(ctypes.c_int32) * n)(*seq_arrays),
            logits=want,
        )
        self._run(batch)

    def _run(self, batch: llama_cpp.llama_batch) -> None:
        rc = llama_cpp.llama_decode(self.ctx, batch)
        if rc == 1:
            raise DecoderError(f"context full ({self.n_ctx} tokens); raise --ctx-size")
        if rc != 0:
            raise DecoderError(f"llama_decode failed ({rc})")

    def _decode_tokens(self, ids: Sequence[int], start: int, seq: int, want_logits: bool) -> None:
        for a in range(0, len(ids), self.n_batch):
            chunk = ids[a : a + self.n_batch]
            last = a + self.n_batch >= len(ids)
            self._submit(
                len(chunk),
                _int_array(range(start + a, start + a + len(chunk))),
                [seq] * len(chunk),
                tokens=_int_array(chunk),
                logits=[len(chunk) - 1] if want_logits and last else (),
            )

    def _decode_image(self, image: ImageEmbedding, p0: int, seq: int) -> None:
        """Merged token (row, col) sits at (t, h, w) = (p0, p0 + row, p0 + col); the position array
        is section-major (all t, all h, all w, then zeros) for each sub-batch."""
        emb = np.ascontiguousarray(image.embeddings, dtype=np.float32)
        if emb.shape[1] != self.n_embd:
            raise DecoderError(f"image embeddings have width {emb.shape[1]}, the decoder expects {self.n_embd}")
        index = np.arange(emb.shape[0])
        rows, cols = index // image.cols, index % image.cols
        for a in range(0, emb.shape[0], self.n_batch):
            b = min(a + self.n_batch, emb.shape[0])
            n = b - a
            pos = np.concatenate([np.full(n, p0), p0 + rows[a:b], p0 + cols[a:b], np.zeros(n)]).astype(np.int32)
            chunk = emb[a:b]
            self._submit(
                n,
                pos.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)),
                [seq] * n,
                embd=chunk.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
            )

    def logits(self, row: int = -1) -> np.ndarray:
        """The logits of a row of the last llama_decode (a view into llama.cpp's buffer, valid
        until the next one)."""
        ptr = llama_cpp.llama_get_logits_ith(self.ctx, row)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    # -- pages --------------------------------------------------------------------------------

    def prefill(
        self, before_image: Sequence[int], image: ImageEmbedding, after_image: Sequence[int], seq: int = 0
    ) -> tuple[int, np.ndarray]:
        """Clear sequence `seq` and decode a whole prompt into it; returns the prompt length in
        tokens (image tokens included) and a copy of the logits for the first answer token."""
        llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(self.ctx), seq, -1, -1)
        p0 = len(before_image)
        n_prompt = len(before_image) + image.rows * image.cols + len(after_image)
        if n_prompt + 1 > self.ctx_per_sequence:
            raise DecoderError(
                f"page needs {n_prompt} prompt tokens, the context holds {self.ctx_per_sequence} per page; "
                "raise --ctx-size or lower --max-pixels"
            )
        self._decode_tokens(before_image, 0, seq, want_logits=False)
        self._decode_image(image, p0, seq)
        # The first text token after the image sits at p0 + max(rows, cols), not p0 + N.
        self._decode_tokens(after_image, p0 + max(image.rows, image.cols), seq, want_logits=True)
        return n_prompt, self.logits().copy()

    def decode_step(self, tokens: Sequence[int], positions: Sequence[int], seqs: Sequence[int]) -> None:
        """One llama_decode of one token per row (`tokens[i]` at `positions[i]` of sequence
        `seqs[i]`), with the logits of every row wanted (`logits(row)`)."""
        n = len(tokens)
        if n > self.n_seq:  # more rows than sequences (bench_decode.py: consecutive tokens of one page)
            self._submit(n, _int_array(positions), seqs, tokens=_int_array(tokens), logits=range(n))
            return
        # ctypes arrays take any sequence in a slice assignment; typeshed allows only a list
        self._step_token[:n] = tokens  # type: ignore[call-overload]
        self._step_pos[:n] = positions  # type: ignore[call-overload]
        for row, seq in enumerate(seqs):
            self._step_seq[row] = self._seq_arrays[seq]
        self._step_batch.n_tokens = n
        self._run(self._step_batch)

    def is_eog(self, token: int) -> bool:
        """Whether the token ends a generation (</s> and the vocabulary's other end tokens)."""
        return llama_cpp.llama_vocab_is_eog(self.vocab, token)

    def close(self) -> None:
        if getattr(self, "ctx", None):
            llama_cpp.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "model", None):
            llama_cpp.llama_model_free(self.model)
            self.model = None

    def __del__(self) -> None:
        self.close()


def binding_version() -> str:
    """llama-cpp-python's version (a bundle's manifest records what made it)."""
    return llama_cpp.__version__


def quantize_model(src: Path, dst: Path, ftype: int, threads: int | None = None) -> bool:
    """llama.cpp's quantizer, in process (no llama.cpp binary needed): GGUF `src` -> `dst` of
    llama_ftype `ftype`. False when llama.cpp refuses."""
    init_llama()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads or 0
    return llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), llama_cpp.byref(params)) == 0


def mtmd_library() -> ModuleType:
    """llama-cpp-python's libmtmd binding: llama.cpp's own vision path, which only compare/mtmd.py
    uses (loaded on demand: it opens a second shared library)."""
    from llama_cpp import mtmd_cpp

    return mtmd_cpp


def model_embedding_width(model: int) -> int:
    """n_embd of a loaded llama.cpp model (`TextDecoder.model`)."""
    return llama_cpp.llama_model_n_embd(model)


def cpu_has_llama_amx() -> bool:
    """Whether this llama.cpp build would put quantized weights in its AMX buffers."""
    return b"AMX_INT8 = 1" in llama_cpp.llama_print_system_info()


def default_threads() -> int:
    """Physical cores: llama.cpp and PyTorch both lose speed on hyper-threads."""
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1
