"""Generated text for pages whose prompts go into a TextDecoder's context (llama.py): one page's
request and result, sampling, the repetition guard, and the loop that decodes up to `n_seq` pages
together. Per page, after its prefill: sample one token at a time until </s>, max_new_tokens, a
stop string or a repetition loop, streaming only the text no later token can change. Each chosen
token's probability under the model (the softmax of that step's raw logits, before temperature or
top_p) is kept beside it, at the cost of one logsumexp over the vocabulary per token
(bench/bench_confidence.py).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .llama import DecoderError, TextDecoder

if TYPE_CHECKING:  # vision.py imports torch; a llama.cpp-only process (bench_mtmd) must not pay for it
    from .detokenize import Detokenizer
    from .vision import ImageEmbedding


@dataclass
class Sampling:
    """temperature 0 is greedy (the default, deterministic); above 0 samples with top_p."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None


# One generated token as `on_token` gets it: id, its log probability, and the `top_logprobs`
# most likely tokens of that step as (id, log probability), most likely first ([] when not asked).
TokenChoice = tuple[int, float, list[tuple[int, float]]]


@dataclass
class Generation:
    token_ids: list[int]
    text: str
    finish_reason: str  # stop | length | repetition | abort
    prompt_tokens: int  # including image tokens
    prefill_seconds: float
    decode_seconds: float
    warnings: list[str] = field(default_factory=list)  # e.g. an answer the context cut short
    token_logprobs: list[float] = field(default_factory=list)  # natural log, one per token id
    top_logprobs: list[list[tuple[int, float]]] | None = None  # per token, when the request asked


class RepetitionGuard:
    """Detects a generated tail that repeats one short period over and over (docs/design.md section 6:
    the model can loop on a line or a digit forever). Stops only on long, certain loops so that
    legitimate repeats (table rows, "0000") are left alone: a period p counts once the last
    max(min_repeats, min_span / p) periods are all alike."""

    def __init__(self, max_period: int = 64, min_repeats: int = 8, min_span: int = 96):
        self.max_period = max_period
        self.min_repeats = min_repeats
        self.min_span = min_span

    def watch(self) -> LoopWatch:
        """A watch over one answer's tokens."""
        return LoopWatch(self)


class LoopWatch:
    """One answer's repetition check, fed a token at a time at a cost per token that does not
    grow with the answer: for each period p it keeps how many tokens in a row, up to the newest,
    equal the token p before them. The tail repeats period p as the guard asks once that run
    covers the span but its first period."""

    def __init__(self, guard: RepetitionGuard):
        periods = range(1, guard.max_period + 1)
        self.need = [max(guard.min_repeats, -(-guard.min_span // p)) * p - p for p in periods]
        self.runs = [0] * guard.max_period
        self.recent: deque[int] = deque(maxlen=guard.max_period)  # recent[p - 1]: the token p back

    def push(self, token: int) -> bool:
        """Adds the newest token; whether the answer now ends in a loop."""
        looping = False
        runs, need = self.runs, self.need
        for k, previous in enumerate(self.recent):
            run = runs[k] + 1 if previous == token else 0
            runs[k] = run
            looping = looping or run >= need[k]
        self.recent.appendleft(token)
        return looping


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
    detokenizer: Detokenizer | None = None  # the checkpoint tokenizer's decoding; None: no text
    top_logprobs: int = 0  # also keep this many most likely tokens of each step (OpenAI top_logprobs)
    on_token: Callable[[TokenChoice], None] | None = None  # each generated token, before its text


class _Sequence:
    """A page in flight: its tokens so far and the logits for its next token."""

    def __init__(self, index: int, request: DecodeRequest, n_prompt: int, logits: np.ndarray, prefill_seconds: float,
                 capacity: int):
        self.index = index
        self.request = request
        self.n_prompt = n_prompt
        self.prefill_seconds = prefill_seconds
        self.capacity = capacity
        self.budget = min(request.max_new_tokens, capacity - n_prompt)
        image = request.image
        self.next_pos = len(request.before_image) + max(image.rows, image.cols) + len(request.after_image)
        self.rng = np.random.default_rng(request.sampling.seed)
        self.out: list[int] = []
        self.logprobs: list[float] = []
        self.tops: list[list[tuple[int, float]]] = []
        self.loops = request.repetition_guard.watch() if request.repetition_guard is not None else None
        # The answer's text, streamed: only text no later token can change is handed out.
        self.text = request.detokenizer.stream(request.stop) if request.detokenizer is not None else None
        self.finish = "length"
        self.started: float | None = None  # first decode step: other pages' prefills do not count
        self.pick(logits)

    def pick(self, logits: np.ndarray) -> None:
        """Chooses the next token from `logits` at once, while they are valid: they may be a view
        into llama.cpp's buffer, which the next llama_decode (another page's prefill) overwrites.
        Reading them in place saves a copy of the whole vocabulary per token. The token's log
        probability and the step's top alternatives are read from the same raw logits."""
        self.chosen = pick_token(logits, self.request.sampling, self.rng)
        greedy = self.request.sampling.temperature <= 0  # the chosen token is the maximum: one pass fewer
        lse = logsumexp(logits, logits[self.chosen] if greedy else None)
        self.chosen_logprob = float(logits[self.chosen]) - lse
        self.chosen_top = top_logprobs(logits, self.request.top_logprobs, lse)

    def next_token(self, decoder: TextDecoder) -> int | None:
        """The token to feed next, or None when the page is finished."""
        request = self.request
        if self.started is None:
            self.started = time.perf_counter()
        if len(self.out) >= self.budget:
            return None
        token = self.chosen
        if decoder.is_eog(token) and not request.ignore_eos:
            self.finish = "stop"
            return None
        self.out.append(token)
        self.logprobs.append(self.chosen_logprob)
        if request.top_logprobs:
            self.tops.append(self.chosen_top)
        if request.on_token is not None:
            request.on_token((token, self.chosen_logprob, self.chosen_top))
        if self.text is not None:
            delta = self.text.push(token)
            if self.text.stopped:
                self.finish = "stop"
            if delta and request.on_text is not None and request.on_text(delta) is False:
                self.finish = "abort"
                return None
            if self.text.stopped:
                return None
        if self.loops is not None and self.loops.push(token):
            self.finish = "repetition"
            return None
        if len(self.out) >= self.budget:
            return None
        return token

    def result(self) -> Generation:
        text = ""
        if self.text is not None:
            tail = self.text.finish()  # what was held back (a byte run, a possible stop string)
            on_text = self.request.on_text
            if on_text is not None and self.finish != "abort" and tail:
                on_text(tail)
            text = self.text.text
        warnings = []
        if self.finish == "length" and len(self.out) < self.request.max_new_tokens:
            # The context, not max_new_tokens, ended the answer: say so rather than cut it silently.
            warnings.append(
                f"answer cut at {len(self.out)} of {self.request.max_new_tokens} new tokens: the prompt "
                f"({self.n_prompt} tokens) left no more room in the context ({self.capacity} per page); "
                "raise --ctx-size"
            )
        return Generation(
            token_ids=self.out,
            text=text,
            finish_reason=self.finish,
            prompt_tokens=self.n_prompt,
            prefill_seconds=self.prefill_seconds,
            decode_seconds=time.perf_counter() - (self.started or time.perf_counter()),
            warnings=warnings,
            token_logprobs=self.logprobs,
            top_logprobs=self.tops if self.request.top_logprobs else None,
        )


def generate(decoder: TextDecoder, request: DecodeRequest) -> Generation:
    """One page from a clean sequence."""
    [(_, generation)] = list(generate_many(decoder, [request]))
    if isinstance(generation, DecoderError):
        raise generation
    return generation


def generate_many(
    decoder: TextDecoder, requests: Iterable[DecodeRequest]
) -> Iterator[tuple[int, Generation | DecoderError]]:
    """Decode pages with up to `decoder.n_seq` of them in flight in the one context: each step is one
    llama_decode over every active page's next token, which reads the weights once for all
    of them (single-sequence decoding on a CPU is bound by reading the weights). Yields
    (index of the request, Generation) as pages finish, not necessarily in order; a page
    that cannot be decoded yields its DecoderError instead and the others go on (a failed
    step fails the pages in it, and the pages after them are decoded)."""
    pending = iter(enumerate(requests))
    active: dict[int, _Sequence] = {}  # seq id -> page in flight
    exhausted = False
    while True:
        for seq in range(decoder.n_seq):
            # A free sequence takes the next page; one whose prefill fails hands the sequence on
            # (a bare `continue` here once dropped every page after a failed one when nothing
            # else was in flight).
            while seq not in active and not exhausted:
                item = next(pending, None)
                if item is None:
                    exhausted = True
                    break
                index, request = item
                started = time.perf_counter()
                try:
                    n_prompt, logits = decoder.prefill(request.before_image, request.image, request.after_image, seq)
                except DecoderError as exc:  # this page alone fails (e.g. too long for the context)
                    yield index, exc
                    continue
                active[seq] = _Sequence(index, request, n_prompt, logits, time.perf_counter() - started,
                                        decoder.ctx_per_sequence)
        if not active:
            return
        step_tokens, step_seqs, step_pos = [], [], []
        for seq, state in list(active.items()):
            token = state.next_token(decoder)
            if token is None:
                del active[seq]
                yield state.index, state.result()
                continue
            step_tokens.append(token)
            step_seqs.append(seq)
            step_pos.append(state.next_pos)
            state.next_pos += 1
        if step_tokens:
            try:
                decoder.decode_step(step_tokens, step_pos, step_seqs)
            except DecoderError as exc:  # the step's pages fail; their sequences are free again
                for seq in step_seqs:
                    yield active.pop(seq).index, DecoderError(f"decoding step failed: {exc}")
                continue
            for row, seq in enumerate(step_seqs):
                active[seq].pick(decoder.logits(row))


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


def logsumexp(logits: np.ndarray, peak: float | None = None) -> float:
    """log(sum(exp(logits))) in the logits' own float32, as transformers' softmax computes it
    (numpy's pairwise sum keeps the relative error near 1e-8 over the vocabulary; a float64 sum
    costs a third more). `peak`: the maximum of the logits when the caller knows it (greedy
    picked it)."""
    if peak is None:
        peak = logits.max()
    return float(peak) + math.log(float(np.exp(logits - peak).sum()))


def top_logprobs(logits: np.ndarray, n: int, lse: float) -> list[tuple[int, float]]:
    """The n most likely tokens of a step as (id, log probability), most likely first; ties by id."""
    if n <= 0:
        return []
    top = np.argpartition(-logits, n - 1)[:n]
    order = sorted(top.tolist(), key=lambda t: (-float(logits[t]), t))
    return [(t, float(logits[t]) - lse) for t in order]
