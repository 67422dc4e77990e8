"""Image embeddings + prompt -> text, in one persistent llama.cpp context (design.md sections 4, 6).

This is where the image embeddings enter llama.cpp. We own the loop instead of using
`Llama.generate()`, whose bookkeeping assumes one position per token. Per page, in its own
sequence of the context (several pages can be in flight):

    clear the page's sequence
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
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import llama_cpp
import numpy as np

from .errors import ModelError

if TYPE_CHECKING:  # vision.py imports torch; a llama.cpp-only process (bench_mtmd) must not pay for it
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


@dataclass
class DecodeRequest:
    """One page for the decoder: prompt ids around the image, and how to answer."""

    before_image: Sequence[int]
    image: ImageEmbedding
    after_image: Sequence[int]
    max_new_tokens: int
    sampling: Sampling = field(default_factory=Sampling)
    stop: Sequence[str] = ()
    on_text: Callable[[str], bool | None] | None = None  # gets each new piece; False stops (client gone)
    repetition_guard: RepetitionGuard | None = None
    ignore_eos: bool = False  # benchmarks that need a fixed number of tokens


class _Sequence:
    """A page in flight: its tokens so far and the logits for its next token."""

    def __init__(self, index: int, request: DecodeRequest, n_prompt: int, logits: np.ndarray, prefill_seconds: float, capacity: int):
        self.index = index
        self.request = request
        self.n_prompt = n_prompt
        self.logits = logits
        self.prefill_seconds = prefill_seconds
        self.budget = min(request.max_new_tokens, capacity - n_prompt)
        image = request.image
        self.next_pos = len(request.before_image) + max(image.rows, image.cols) + len(request.after_image)
        self.rng = np.random.default_rng(request.sampling.seed)
        self.out: list[int] = []
        self.shown = ""  # text handed to on_text so far (or cut at a stop string)
        self.stopped_by_string = False
        self.finish = "length"
        self.started: float | None = None  # first decode step: other pages' prefills do not count

    def next_token(self, decoder: TextDecoder) -> int | None:
        """The token to feed next, or None when the page is finished."""
        request = self.request
        if self.started is None:
            self.started = time.perf_counter()
        if len(self.out) >= self.budget:
            return None
        token = pick_token(self.logits, request.sampling, self.rng)
        if llama_cpp.llama_vocab_is_eog(decoder.vocab, token) and not request.ignore_eos:
            self.finish = "stop"
            return None
        self.out.append(token)
        if request.on_text is not None or request.stop:
            current = decoder.detokenize(self.out).rstrip("\ufffd")  # hold back a half-decoded character
            cuts = [current.index(s) for s in request.stop if s in current]
            if cuts:
                current, self.stopped_by_string, self.finish = current[: min(cuts)], True, "stop"
            delta, self.shown = current[len(self.shown) :], current
            if delta and request.on_text is not None and request.on_text(delta) is False:
                self.finish = "abort"
                return None
            if self.stopped_by_string:
                return None
        if request.repetition_guard is not None and request.repetition_guard.looping(self.out):
            self.finish = "repetition"
            return None
        if len(self.out) >= self.budget:
            return None
        return token

    def result(self, decoder: TextDecoder) -> Generation:
        text = self.shown if self.stopped_by_string else decoder.detokenize(self.out)
        on_text = self.request.on_text
        if on_text is not None and self.finish != "abort" and len(text) > len(self.shown):
            on_text(text[len(self.shown) :])  # the tail held back as a possible half character
        return Generation(
            token_ids=self.out,
            text=text,
            finish_reason=self.finish,
            prompt_tokens=self.n_prompt,
            prefill_seconds=self.prefill_seconds,
            decode_seconds=time.perf_counter() - (self.started or time.perf_counter()),
        )


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
        self.model = llama_cpp.llama_model_load_from_file(str(gguf_path).encode(), mparams)
        if not self.model:
            raise ModelError(f"{gguf_path}: llama.cpp could not load this GGUF (damaged, or llama-cpp-python too old for arch paddleocr)")
        threads = threads or default_threads()
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
        self.n_batch = n_batch
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.n_embd = llama_cpp.llama_model_n_embd(self.model)
        self.eos_id = llama_cpp.llama_vocab_eos(self.vocab)
        self.threads = threads
        self.n_seq = n_seq
        self.ctx_per_sequence = self.n_ctx // n_seq
        # seq_id arrays for llama_batch rows, one per sequence, kept alive with the decoder
        self._seq_id_values = [(ctypes.c_int32 * 1)(s) for s in range(n_seq)]
        self._seq_arrays = [ctypes.cast(a, ctypes.POINTER(ctypes.c_int32)) for a in self._seq_id_values]

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

    def _submit(self, n: int, pos, seq_ids: Sequence[int], *, tokens=None, embd=None, logits: Sequence[int] = ()) -> None:
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

    def _logits(self, row: int = -1) -> np.ndarray:
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
        return n_prompt, self._logits().copy()

    def generate(self, request: DecodeRequest) -> Generation:
        """One page from a clean sequence."""
        [(_, generation)] = list(self.generate_many([request]))
        if isinstance(generation, DecoderError):
            raise generation
        return generation

    def generate_many(self, requests: Iterable[DecodeRequest]) -> Iterator[tuple[int, Generation | DecoderError]]:
        """Decode pages with up to `n_seq` of them in flight in the one context: each step is one
        llama_decode over every active page's next token, which reads the weights once for all
        of them (single-sequence decoding on a CPU is bound by reading the weights). Yields
        (index of the request, Generation) as pages finish, not necessarily in order; a page
        that cannot be decoded yields its DecoderError instead and the others go on."""
        pending = iter(enumerate(requests))
        active: dict[int, _Sequence] = {}  # seq id -> page in flight
        exhausted = False
        while True:
            for seq in range(self.n_seq):
                # a free sequence takes the next page; one whose prefill fails hands it on
                while seq not in active and not exhausted:
                    item = next(pending, None)
                    if item is None:
                        exhausted = True
                        break
                    index, request = item
                    started = time.perf_counter()
                    try:
                        n_prompt, logits = self.prefill(request.before_image, request.image, request.after_image, seq)
                    except DecoderError as exc:  # this page alone fails (e.g. too long for the context)
                        yield index, exc
                        continue
                    active[seq] = _Sequence(index, request, n_prompt, logits, time.perf_counter() - started, self.ctx_per_sequence)
            if not active:
                return
            step_tokens, step_seqs, step_pos = [], [], []
            for seq, state in list(active.items()):
                token = state.next_token(self)
                if token is None:
                    del active[seq]
                    yield state.index, state.result(self)
                    continue
                step_tokens.append(token)
                step_seqs.append(seq)
                step_pos.append(state.next_pos)
                state.next_pos += 1
            if step_tokens:
                n = len(step_tokens)
                self._submit(n, _int_array(step_pos), step_seqs, tokens=_int_array(step_tokens), logits=range(n))
                for row, seq in enumerate(step_seqs):
                    active[seq].logits = self._logits(row).copy()

    def close(self) -> None:
        if getattr(self, "ctx", None):
            llama_cpp.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "model", None):
            llama_cpp.llama_model_free(self.model)
            self.model = None

    def __del__(self) -> None:
        self.close()


def pick_token(logits: np.ndarray, sampling: Sampling, rng: np.random.Generator) -> int:
    """Greedy at temperature 0; otherwise sampling from the top_p nucleus."""
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


def default_threads() -> int:
    """Physical cores: llama.cpp and PyTorch both lose speed on hyper-threads."""
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1
