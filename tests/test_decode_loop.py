"""The per-token work of the decoding loop (generate.py, llama.py): the incremental repetition
guard against the rule it implements, tokens picked in place from llama.cpp's logits buffer while
other pages are prefilled into the same context, and the reused one-token step batch."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ppvl_batch.engine.generate import RepetitionGuard, Sampling, generate_many
from ppvl_batch.engine.recognizer import Recognizer


def tail_loops(tokens: list[int], guard: RepetitionGuard) -> bool:
    """The rule, checked on the whole list: some period p whose last max(min_repeats,
    ceil(min_span / p)) repeats are identical."""
    for period in range(1, guard.max_period + 1):
        span = period * max(guard.min_repeats, -(-guard.min_span // period))
        if span <= len(tokens) and all(tokens[-span + i] == tokens[-span + i + period] for i in range(span - period)):
            return True
    return False


@pytest.mark.parametrize(
    ("guard", "alphabet", "seed"),
    [
        (RepetitionGuard(max_period=6, min_repeats=3, min_span=8), 2, 0),  # many short loops
        (RepetitionGuard(max_period=6, min_repeats=3, min_span=8), 4, 1),
        (RepetitionGuard(), 3, 2),
    ],
)
def test_loop_watch_fires_exactly_where_the_rule_does(guard, alphabet, seed):
    rng = np.random.default_rng(seed)
    tokens: list[int] = []
    while len(tokens) < 1500:  # random stretches and planted loops of random periods and lengths
        if rng.random() < 0.5:
            tokens += rng.integers(0, alphabet, int(rng.integers(1, 30))).tolist()
        else:
            period = rng.integers(0, alphabet, int(rng.integers(1, guard.max_period + 3))).tolist()
            tokens += period * int(rng.integers(1, 12))
    watch = guard.watch()
    fired = [watch.push(t) for t in tokens]
    expected = [tail_loops(tokens[: n + 1], guard) for n in range(len(tokens))]
    assert fired == expected
    assert any(fired) and not all(fired)  # both answers were exercised


def test_loop_watch_fires_at_the_first_token_that_completes_the_span():
    guard = RepetitionGuard()  # period 3 needs 32 repeats (96 tokens)
    watch = guard.watch()
    fired = [watch.push(t) for t in [7, 8, 9] * 40]
    assert fired.index(True) == 95


def page(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (300 + 40 * seed, 400 - 30 * seed, 3), dtype=np.uint8))


@pytest.mark.parametrize("sampling", [Sampling(), Sampling(temperature=1.2, top_p=0.9)], ids=["greedy", "sampled"])
def test_tokens_picked_in_place_survive_other_pages_prefills(tiny_bundle, sampling):
    """Three sequences for five pages: a page's prefill runs while others are in flight, and
    overwrites llama.cpp's logits buffer; every page must still get the tokens it gets alone."""

    def decode(rec, encoded, first: int = 0):
        requests = []  # page i: its own seed and answer length
        for i, e in enumerate(encoded, first):
            request = rec.request(e, "ocr", max_new_tokens=12 + 3 * i, repetition_guard=False)
            request.sampling = Sampling(sampling.temperature, sampling.top_p, seed=i)
            requests.append(request)
        results = dict(generate_many(rec.decoder, requests))
        return [results[i].token_ids for i in range(len(requests))]

    images = [page(i) for i in range(5)]
    with Recognizer.load(tiny_bundle, quant="F32", dtype="fp32", kv_type="f32") as rec:
        encoded = rec.encode(images)
        alone = [decode(rec, [e], i)[0] for i, e in enumerate(encoded)]
    with Recognizer.load(tiny_bundle, quant="F32", dtype="fp32", kv_type="f32", parallel=3) as rec:
        together = decode(rec, rec.encode(images))
    assert together == alone
    assert all(len(t) > 0 for t in alone)


def test_a_step_with_more_rows_than_sequences_equals_single_steps(tiny_bundle):
    """decode_step's reused batch holds one row per sequence; a longer step (consecutive tokens
    of one page, as bench_decode.py times) takes the general path and must agree with it."""
    with Recognizer.load(tiny_bundle, quant="F32", dtype="fp32", kv_type="f32") as rec:
        [encoded] = rec.encode([page(0)])
        before, after = rec.prompt_ids("ocr")
        decoder = rec.decoder
        n_prompt, _ = decoder.prefill(before, encoded.embedding, after)
        start = len(before) + max(encoded.embedding.rows, encoded.embedding.cols) + len(after)
        tokens = [11, 12, 13]
        for i, token in enumerate(tokens):
            decoder.decode_step([token], [start + i], [0])
        single = decoder.logits(0).copy()
        decoder.prefill(before, encoded.embedding, after)
        decoder.decode_step(tokens, [start, start + 1, start + 2], [0, 0, 0])
        together = decoder.logits(2).copy()
    np.testing.assert_allclose(together, single, rtol=1e-4, atol=1e-4 * np.abs(single).max())


def test_a_prompt_beyond_the_context_asked_for_goes_in_batches_llama_cpp_takes(tiny_bundle):
    """llama.cpp pads a context up to a multiple of 256 but lowers its batch to the context asked
    for: a prompt between the two sizes fits, and must go in batches of the lowered size (a
    larger batch fails an assertion in llama.cpp that aborts the process)."""
    with Recognizer.load(tiny_bundle, quant="F32", dtype="fp32", kv_type="f32", n_ctx=100) as rec:
        [encoded] = rec.encode([page(0)])
        before, after = rec.prompt_ids("ocr")
        decoder = rec.decoder
        assert decoder.n_batch == 100 < len(before) + encoded.image_tokens + len(after) < decoder.ctx_per_sequence
        assert rec.decode(encoded, "ocr", max_new_tokens=4).output_tokens >= 1
