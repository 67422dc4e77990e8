"""Image embeddings + prompt -> text, in one persistent llama.cpp context (design.md sections 4, 6).

This is where the image embeddings enter llama.cpp. We own the loop instead of using
`Llama.generate()`, whose bookkeeping assumes one position per token. Per page:

    clear the context memory
    decode the prompt text before the image     token batch, positions 0 .. p0-1
    decode the image embeddings                 embedding batch, 3-D M-RoPE positions
    decode the prompt text after the image      token batch from p0 + max(rows, cols)
    sample one token at a time until </s>, max_new_tokens, a stop string or a repetition loop
"""

from __future__ import annotations

import ctypes
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import llama_cpp
import numpy as np

from .errors import ModelError
from .vision import ImageEmbedding

log = logging.getLogger("ppvl_batch")

# ggml_type of the KV cache
KV_TYPES = {"f32": 0, "f16": 1, "q8_0": 8}

_LOG_LEVEL_ERROR = 4  # ggml_log_level: 1 debug, 2 info, 3 warn, 4 error
_initialized = False


@llama_cpp.llama_log_callback
def _llama_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    # llama.cpp talks a lot on stderr; keep errors, drop the rest unless asked for.
    if level == _LOG_LEVEL_ERROR or os.environ.get("PPVL_LLAMA_LOG"):
        log.warning("llama.cpp: %s", text.decode("utf-8", "replace").rstrip())


def init_llama() -> None:
    """Start the llama.cpp backend once per process, with its logging routed through ours."""
    global _initialized
    if not _initialized:
        llama_cpp.llama_log_set(_llama_log, ctypes.c_void_p(0))
        llama_cpp.llama_backend_init()
        _initialized = True


class DecoderError(RuntimeError):
    pass


@dataclass
class Sampling:
    """temperature 0 is greedy (the default, deterministic); above 0 samples with top_p."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None


@dataclass
class Generation:
    token_ids: list[int]
    text: str
    finish_reason: str  # stop | length | repetition | abort
    prompt_tokens: int  # including image tokens
    prefill_seconds: float
    decode_seconds: float
    timings: dict[str, float] = field(default_factory=dict)


class RepetitionGuard:
    """Detects a generated tail that repeats one short period over and over (design.md section 6:
    the model can loop on a line or a digit forever). Stops only on long, certain loops so that
    legitimate repeats (table rows, "0000") are left alone."""

    def __init__(self, max_period: int = 64, min_repeats: int = 8, min_span: int = 96):
        self.max_period = max_period
        self.min_repeats = min_repeats
        self.min_span = min_span

    def looping(self, tokens: Sequence[int]) -> bool:
        n = len(tokens)
        for period in range(1, self.max_period + 1):
            repeats = max(self.min_repeats, -(-self.min_span // period))
            span = period * repeats
            if span > n:
                break
            tail = tokens[n - span :]
            if all(tail[i] == tail[i + period] for i in range(span - period)):
                return True
        return False


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
        n_batch: int = 512,
        kv_type: str = "f16",
    ):
        init_llama()
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = n_gpu_layers
        self.model = llama_cpp.llama_model_load_from_file(str(gguf_path).encode(), mparams)
        if not self.model:
            raise ModelError(f"{gguf_path}: llama.cpp could not load this GGUF (damaged, or llama-cpp-python too old for arch paddleocr)")
        threads = threads or default_threads()
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = n_batch
        cparams.n_ubatch = n_batch
        cparams.n_seq_max = 1
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        cparams.no_perf = True
        # f16 halves the KV cache (about 18 KB per token). f32 gives the reference's numerics, and
        # then flash attention stays off: on the CPU it rounds queries to f16.
        cparams.type_k = cparams.type_v = KV_TYPES[kv_type]
        if kv_type == "f32":
            cparams.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self.ctx = llama_cpp.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            llama_cpp.llama_model_free(self.model)
            raise ModelError(f"{gguf_path}: llama.cpp could not create a context of {n_ctx} tokens")
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_ctx = llama_cpp.llama_n_ctx(self.ctx)
        self.n_batch = n_batch
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.n_embd = llama_cpp.llama_model_n_embd(self.model)
        self.eos_id = llama_cpp.llama_vocab_eos(self.vocab)
        self.threads = threads
        self._seq0 = (ctypes.c_int32 * 1)(0)

    # -- text <-> tokens ----------------------------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        """Token ids for prompt text: special tokens parsed, no BOS added (design.md section 2)."""
        data = text.encode("utf-8")
        buf = (llama_cpp.llama_token * (len(data) + 8))()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, len(buf), False, True)
        if n < 0:
            raise DecoderError("prompt too long to tokenize")
        return list(buf[:n])

    def detokenize(self, ids: Sequence[int]) -> str:
        """Text of generated tokens, special tokens such as <|LOC_12|> kept."""
        raw = self._detokenize_bytes(ids)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return self._decode_byte_runs(ids, raw)

    def _detokenize_bytes(self, ids: Sequence[int]) -> bytes:
        if not ids:
            return b""
        arr = _int_array(ids)
        size = 64 + 16 * len(ids)
        while True:
            buf = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_detokenize(self.vocab, arr, len(ids), buf, size, False, True)
            if n >= 0:
                return buf.raw[:n]
            size = -n + 16

    def _piece(self, token: int) -> bytes:
        buf = ctypes.create_string_buffer(256)
        n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, True)
        return buf.raw[: max(n, 0)]

    def _decode_byte_runs(self, ids: Sequence[int], raw: bytes) -> str:
        """Invalid UTF-8 can only come from byte-fallback tokens. Like the Hugging Face tokenizer,
        a run of byte tokens that is not valid UTF-8 becomes one U+FFFD per byte (Python's
        'replace' would group them differently)."""
        pieces = [self._piece(t) for t in ids]
        skip = len(b"".join(pieces)) - len(raw)  # leading space llama.cpp strips from the first piece
        pieces[0] = pieces[0][skip:]
        out: list[str] = []
        run: list[bytes] = []

        def flush() -> None:
            if run:
                data = b"".join(run)
                try:
                    out.append(data.decode("utf-8"))
                except UnicodeDecodeError:
                    out.append("\ufffd" * len(run))
                run.clear()

        for token, piece in zip(ids, pieces):
            if llama_cpp.llama_vocab_get_attr(self.vocab, token) & llama_cpp.LLAMA_TOKEN_ATTR_BYTE:
                run.append(piece)
            else:
                flush()
                out.append(piece.decode("utf-8", "replace"))
        flush()
        return "".join(out)

    # -- batches ------------------------------------------------------------------------------

    def _submit(self, n: int, pos, *, tokens=None, embd=None, want_logits: bool = False) -> None:
        seq_ids = (ctypes.POINTER(ctypes.c_int32) * n)(*([ctypes.cast(self._seq0, ctypes.POINTER(ctypes.c_int32))] * n))
        logits = (ctypes.c_int8 * n)()
        logits[n - 1] = 1 if want_logits else 0
        batch = llama_cpp.llama_batch(
            n_tokens=n,
            token=tokens,
            embd=embd,
            pos=pos,
            n_seq_id=_int_array([1] * n),
            seq_id=seq_ids,
            logits=logits,
        )
        rc = llama_cpp.llama_decode(self.ctx, batch)
        if rc == 1:
            raise DecoderError(f"context full ({self.n_ctx} tokens); raise --ctx-size")
        if rc != 0:
            raise DecoderError(f"llama_decode failed ({rc})")

    def _decode_tokens(self, ids: Sequence[int], start: int, want_logits: bool) -> None:
        for a in range(0, len(ids), self.n_batch):
            chunk = ids[a : a + self.n_batch]
            last = a + self.n_batch >= len(ids)
            self._submit(
                len(chunk),
                _int_array(range(start + a, start + a + len(chunk))),
                tokens=_int_array(chunk),
                want_logits=want_logits and last,
            )

    def _decode_image(self, image: ImageEmbedding, p0: int) -> None:
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
            pos = np.concatenate(
                [np.full(n, p0), p0 + rows[a:b], p0 + cols[a:b], np.zeros(n)]
            ).astype(np.int32)
            chunk = emb[a:b]
            self._submit(
                n,
                pos.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)),
                embd=chunk.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
            )

    def _logits(self) -> np.ndarray:
        ptr = llama_cpp.llama_get_logits_ith(self.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    # -- one page -----------------------------------------------------------------------------

    def prefill(self, before_image: Sequence[int], image: ImageEmbedding, after_image: Sequence[int]) -> tuple[int, np.ndarray]:
        """Clear the context and decode the whole prompt; returns its length in tokens (image
        tokens included) and the logits for the first answer token."""
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx), True)
        p0 = len(before_image)
        n_prompt = len(before_image) + image.rows * image.cols + len(after_image)
        if n_prompt + 1 > self.n_ctx:
            raise DecoderError(
                f"page needs {n_prompt} prompt tokens, the context holds {self.n_ctx}; raise --ctx-size or lower --max-pixels"
            )
        self._decode_tokens(before_image, 0, want_logits=False)
        self._decode_image(image, p0)
        # The first text token after the image sits at p0 + max(rows, cols), not p0 + N.
        self._decode_tokens(after_image, p0 + max(image.rows, image.cols), want_logits=True)
        return n_prompt, self._logits()

    def generate(
        self,
        before_image: Sequence[int],
        image: ImageEmbedding,
        after_image: Sequence[int],
        *,
        max_new_tokens: int,
        sampling: Sampling | None = None,
        stop: Sequence[str] = (),
        on_text: Callable[[str], bool | None] | None = None,
        repetition_guard: RepetitionGuard | None = None,
        ignore_eos: bool = False,
    ) -> Generation:
        """Decode one page from a clean context. `on_text` gets each new piece of text and may
        return False to stop (a client that went away). `ignore_eos` is for benchmarks that need
        a fixed number of tokens."""
        started = time.perf_counter()
        n_prompt, logits = self.prefill(before_image, image, after_image)
        prefill_seconds = time.perf_counter() - started
        text_start = len(before_image) + max(image.rows, image.cols)

        sampling = sampling or Sampling()
        rng = np.random.default_rng(sampling.seed)
        budget = min(max_new_tokens, self.n_ctx - n_prompt)
        out: list[int] = []
        shown = ""  # text already handed to on_text (or cut at a stop string)
        stopped_by_string = False
        finish = "length"
        pos = text_start + len(after_image)
        decode_started = time.perf_counter()
        while len(out) < budget:
            token = self._pick(logits, sampling, rng)
            if llama_cpp.llama_vocab_is_eog(self.vocab, token) and not ignore_eos:
                finish = "stop"
                break
            out.append(token)
            if on_text is not None or stop:
                current = self.detokenize(out).rstrip("\ufffd")  # hold back a half-decoded character
                cuts = [current.index(s) for s in stop if s in current]
                if cuts:
                    current, stopped_by_string, finish = current[: min(cuts)], True, "stop"
                delta, shown = current[len(shown) :], current
                if delta and on_text is not None and on_text(delta) is False:
                    finish = "abort"
                    break
                if stopped_by_string:
                    break
            if repetition_guard is not None and repetition_guard.looping(out):
                finish = "repetition"
                break
            if len(out) < budget:
                self._decode_tokens([token], pos, want_logits=True)
                logits = self._logits()
                pos += 1
        decode_seconds = time.perf_counter() - decode_started
        text = shown if stopped_by_string else self.detokenize(out)
        if on_text is not None and finish != "abort" and len(text) > len(shown):
            on_text(text[len(shown) :])
        return Generation(
            token_ids=out,
            text=text,
            finish_reason=finish,
            prompt_tokens=n_prompt,
            prefill_seconds=prefill_seconds,
            decode_seconds=decode_seconds,
        )

    @staticmethod
    def _pick(logits: np.ndarray, sampling: Sampling, rng: np.random.Generator) -> int:
        if sampling.temperature <= 0:
            return int(np.argmax(logits))
        scaled = logits.astype(np.float64) / sampling.temperature
        probs = np.exp(scaled - scaled.max())
        probs /= probs.sum()
        if sampling.top_p < 1.0:
            order = np.argsort(-probs)
            keep = np.cumsum(probs[order]) - probs[order] < sampling.top_p
            mask = np.zeros_like(probs, dtype=bool)
            mask[order[keep]] = True
            probs = np.where(mask, probs, 0.0)
            probs /= probs.sum()
        return int(rng.choice(len(probs), p=probs))

    def close(self) -> None:
        if getattr(self, "ctx", None):
            llama_cpp.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "model", None):
            llama_cpp.llama_model_free(self.model)
            self.model = None

    def __del__(self) -> None:
        self.close()


def default_threads() -> int:
    """Physical cores: llama.cpp and PyTorch both lose speed on hyper-threads."""
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1
