"""Our pipeline (PyTorch vision + llama.cpp decoder from an F32 GGUF) against transformers'
PaddleOCRVLForConditionalGeneration.generate: same prompt ids, same greedy tokens, same text."""

from __future__ import annotations

import numpy as np
import pytest
import reference
from makedocs import page
from PIL import Image

from ppvl_batch.engine.prompt import TASKS, V1_TASKS
from ppvl_batch.engine.recognizer import SPOTTING_MAX_PIXELS, Recognizer

MAX_NEW = 24

# name -> (width, height); the 1.5 limits are min 112896, max 1003520 pixels.
SHAPES = {
    "small": (120, 90),  # below min_pixels: upscaled
    "strip": (23, 300),  # thinner than one merged patch
    "portrait": (560, 840),
    "landscape": (1100, 640),
    "huge": (2200, 1700),  # above max_pixels of both versions: downscaled
    "odd": (333, 517),  # not a multiple of 28
}


@pytest.fixture(scope="module")
def recognizers(bundle_dirs):
    recs = {name: Recognizer.load(path, quant="F32", dtype="fp32", kv_type="f32") for name, path in bundle_dirs.items()}
    yield recs
    for rec in recs.values():
        rec.close()


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("name", ["v15-transformers", "v1-original", "v18-original"])
def test_ocr_matches_reference_for_every_shape(name, shape, recognizers, checkpoint_dirs):
    image = page(*SHAPES[shape])
    [ours] = recognizers[name].recognize([image], "ocr", max_new_tokens=MAX_NEW, repetition_guard=False)
    ref_tokens, ref_text = reference.generate(checkpoint_dirs[name], image, TASKS["ocr"], MAX_NEW)
    assert ours.token_ids == ref_tokens
    assert ours.text == ref_text
    assert ours.output_tokens == len(ref_tokens)


@pytest.mark.parametrize("name,tasks", [("v15-transformers", list(TASKS)), ("v1-original", list(V1_TASKS)),
                                        ("v18-original", list(TASKS))])
def test_every_task_prompt_matches_reference(name, tasks, recognizers, checkpoint_dirs):
    for i, task in enumerate(tasks):
        image = page(*SHAPES["odd" if i % 2 else "landscape"], seed=i)
        [ours] = recognizers[name].recognize([image], task, max_new_tokens=MAX_NEW, repetition_guard=False)
        max_pixels = None
        if task == "spotting":
            # 1.5 spotting: small pages upscaled 2x, a larger pixel budget (model card).
            image = image.resize((image.width * 2, image.height * 2), Image.Resampling.LANCZOS)
            max_pixels = SPOTTING_MAX_PIXELS
        ref_tokens, ref_text = reference.generate(checkpoint_dirs[name], image, TASKS[task], MAX_NEW, max_pixels)
        assert ours.token_ids == ref_tokens, task
        assert ours.text == ref_text, task


def test_free_prompt_matches_reference(recognizers, checkpoint_dirs):
    image = page(*SHAPES["portrait"], seed=3)
    prompt = "Read the invoice number:"
    [ours] = recognizers["v15-transformers"].recognize([image], prompt=prompt, max_new_tokens=MAX_NEW, repetition_guard=False)
    ref_tokens, _ = reference.generate(checkpoint_dirs["v15-transformers"], image, prompt, MAX_NEW)
    assert ours.token_ids == ref_tokens


@pytest.mark.parametrize("name", ["v15-transformers", "v1-original", "v18-original"])
@pytest.mark.parametrize("text", list(TASKS.values()) + ["What is the total?\nAnswer in one line: ünïcödé 12.50 €"])
def test_prompt_ids_equal_hf_tokenizer_and_template(name, text, recognizers, checkpoint_dirs):
    rec = recognizers[name]
    before, after = rec.prompt_ids(prompt=text)
    n = 6
    expected = reference.prompt_ids(checkpoint_dirs[name], text, n)
    placeholder = expected[len(before)]
    assert expected == before + [placeholder] * n + after


def test_prompt_endings_follow_the_model_version(recognizers):
    v1 = recognizers["v1-original"].detokenize(recognizers["v1-original"].prompt_ids("ocr")[1])
    v15 = recognizers["v15-transformers"].detokenize(recognizers["v15-transformers"].prompt_ids("ocr")[1])
    v18 = recognizers["v18-original"].detokenize(recognizers["v18-original"].prompt_ids("ocr")[1])
    assert v1.endswith("Assistant: ") and v15.endswith("Assistant:\n") and v18.endswith("Assistant:\n")


def test_pages_are_independent_of_order_and_batching(recognizers):
    rec = recognizers["v15-transformers"]
    a, b, c = page(400, 300, 1), page(700, 500, 2), page(300, 900, 3)
    alone = rec.recognize([a], max_new_tokens=MAX_NEW, repetition_guard=False)[0].token_ids
    batched = rec.recognize([b, c, a], max_new_tokens=MAX_NEW, repetition_guard=False)
    again_first = rec.recognize([a, b], max_new_tokens=MAX_NEW, repetition_guard=False)[0].token_ids
    assert batched[2].token_ids == alone
    assert again_first == alone
    assert rec.recognize([c], max_new_tokens=MAX_NEW, repetition_guard=False)[0].token_ids == batched[1].token_ids


def test_pages_decoded_together_equal_pages_decoded_alone(tiny_bundle, recognizers):
    images = [page(300 + 50 * i, 500 - 40 * i, seed=10 + i) for i in range(5)]
    alone = [r.token_ids for r in recognizers["v15-transformers"].recognize(images, max_new_tokens=MAX_NEW, repetition_guard=False)]
    with Recognizer.load(tiny_bundle, quant="F32", dtype="fp32", kv_type="f32", parallel=3) as rec:
        together = rec.recognize(images, max_new_tokens=MAX_NEW, repetition_guard=False)
    assert [r.token_ids for r in together] == alone


def test_result_fields(recognizers):
    rec = recognizers["v15-transformers"]
    [r] = rec.recognize([page(560, 840)], max_new_tokens=5, repetition_guard=False)
    assert (r.width, r.height) == (560, 840)
    assert r.image_tokens == (560 // 28) * (840 // 28)
    assert r.prompt_tokens == r.image_tokens + sum(len(p) for p in rec.prompt_ids("ocr"))
    assert r.finish_reason in ("length", "stop")
    assert r.output_tokens == len(r.token_ids) <= 5
    assert r.vision_seconds > 0 and r.prefill_seconds > 0 and r.decode_seconds >= 0


@pytest.mark.parametrize("quant", ["F16", "Q8_0", "Q4_K_M"])
def test_quantized_decoders_load_and_run(quant, tiny_bundle):
    with Recognizer.load(tiny_bundle, quant=quant) as rec:
        [r] = rec.recognize([page(400, 300)], max_new_tokens=8, repetition_guard=False)
        assert r.output_tokens > 0 and f":{quant}:vision-" in rec.model_id


def test_f16_first_step_logits_close_to_f32(tiny_bundle):
    image = page(500, 400)
    logits = {}
    for quant in ("F32", "F16"):
        with Recognizer.load(tiny_bundle, quant=quant) as rec:
            [encoded] = rec.encode([image])
            before, after = rec.prompt_ids("ocr")
            logits[quant] = rec.decoder.prefill(before, encoded.embedding, after)[1].copy()
    diff = np.abs(logits["F16"] - logits["F32"]).max()
    assert diff < 0.05 * np.abs(logits["F32"]).max()
    assert np.argmax(logits["F16"]) == np.argmax(logits["F32"])


def test_memory_stays_flat_over_many_pages(recognizers):
    import gc

    import psutil

    rec = recognizers["v15-transformers"]
    images = [page(300 + 40 * (i % 5), 400 + 30 * (i % 3), seed=i) for i in range(5)]
    for _ in range(4):  # warm up allocator pools and caches
        rec.recognize(images[:2], max_new_tokens=16)
    gc.collect()
    start = psutil.Process().memory_info().rss
    for i in range(30):
        rec.recognize([images[i % 5], images[(i + 2) % 5]], max_new_tokens=16)
    gc.collect()
    growth = psutil.Process().memory_info().rss - start
    assert growth < 40 * 2**20, f"RSS grew {growth / 2**20:.1f} MB over 60 pages"
