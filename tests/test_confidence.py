"""Token probabilities, confidence and the needs_review rules: the decode loop's probabilities
against transformers' (softmax of each step's raw logits) on the exact path of the tiny
checkpoints, the confidence arithmetic, each review rule alone, and the record fields."""

from __future__ import annotations

import math

import numpy as np
import pytest
import reference
from PIL import Image, ImageDraw

from ppvl_batch.batch.options import PageOptions
from ppvl_batch.batch.records import Blank, Copied, RunFields, build_record
from ppvl_batch.batch.review import ReviewRules, needs_review
from ppvl_batch.batch.strategy import ModelPage, PageInput, WholePage
from ppvl_batch.batch.task import PageTask
from ppvl_batch.documents.pages import PageError
from ppvl_batch.engine.confidence import (
    TextConfidence,
    text_confidence,
    text_token_probs,
)
from ppvl_batch.engine.generate import Sampling, logsumexp, top_logprobs
from ppvl_batch.engine.prompt import TASKS
from ppvl_batch.engine.recognizer import PageResult, Recognizer
from ppvl_batch.engine.spotting import SpottingTokens

MAX_NEW = 24
TOLERANCE = 1e-4


def page(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(150, 255, (height, width, 3), dtype=np.uint8))
    draw = ImageDraw.Draw(img)
    for y in range(4, height - 10, 24):
        draw.text((4, y), f"Total {y * seed} due", fill=(0, 0, 0))
    return img


@pytest.fixture(scope="module")
def recognizers(bundle_dirs):
    recs = {name: Recognizer.load(path, quant="F32", dtype="fp32", kv_type="f32") for name, path in bundle_dirs.items()}
    yield recs
    for rec in recs.values():
        rec.close()


# ------------------------------------------------------------------ the decode loop's probabilities


# v1 in PaddlePaddle's layout, 1.5 in transformers' (1.6 has 1.5's architecture, prompt and limits).
@pytest.mark.parametrize("name", ["v1-original", "v15-transformers"])
@pytest.mark.parametrize("task,shape", [("ocr", (333, 517)), ("table", (560, 420))])
def test_token_probs_equal_transformers_softmax_of_raw_logits(name, task, shape, recognizers, checkpoint_dirs):
    image = page(*shape, seed=len(task))
    rec = recognizers[name]
    [encoded] = rec.encode([image], task)
    [ours] = [rec.decode(encoded, task, max_new_tokens=MAX_NEW, repetition_guard=False, top_logprobs=5)]
    tokens, probs, tops, eos = reference.generate_probs(checkpoint_dirs[name], image, TASKS[task], MAX_NEW, top=5)
    ended = bool(tokens) and tokens[-1] == eos
    assert ours.token_ids == (tokens[:-1] if ended else tokens)
    assert len(ours.token_probs) == len(ours.token_ids) == len(ours.top_logprobs)
    assert ours.token_probs == pytest.approx(probs[: len(ours.token_ids)], abs=TOLERANCE)
    assert min(ours.token_probs) < 0.99  # a random model is unsure somewhere: the test can tell
    for got, want in zip(ours.top_logprobs, tops):
        assert [t for t, _ in got] == [t for t, _ in want]
        assert [lp for _, lp in got] == pytest.approx([lp for _, lp in want], abs=TOLERANCE)
    # confidence and min_token_prob follow: transformers' list still holds the </s> that ended it
    want_conf = text_confidence(tokens, probs, stop_ids={eos})
    got_conf = ours.text_confidence()
    assert got_conf.tokens == len(ours.token_ids)
    assert got_conf.confidence == pytest.approx(want_conf.confidence, abs=TOLERANCE)
    assert got_conf.min_token_prob == pytest.approx(want_conf.min_token_prob, abs=TOLERANCE)
    assert got_conf.confidence == pytest.approx(math.exp(np.mean(np.log(probs[: len(ours.token_ids)]))), abs=TOLERANCE)


def test_sampled_tokens_get_the_raw_softmax_not_the_sampling_distribution(recognizers, checkpoint_dirs):
    """At temperature 1.5 and top_p 0.8 the sampling distribution differs from the model's; the
    probabilities recorded are the model's (a teacher-forced transformers forward pass)."""
    rec = recognizers["v15-transformers"]
    image = page(420, 336, seed=5)
    [encoded] = rec.encode([image])
    ours = rec.decode(encoded, "ocr", max_new_tokens=12, repetition_guard=False,
                      sampling=Sampling(temperature=1.5, top_p=0.8, seed=3))
    want = reference.forced_probs(checkpoint_dirs["v15-transformers"], image, TASKS["ocr"], ours.token_ids)
    assert ours.token_ids and ours.token_probs == pytest.approx(want, abs=TOLERANCE)


def test_logsumexp_and_top_logprobs_on_float32_rows():
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal(103424) * 4).astype(np.float32)
    want = float(np.log(np.exp(logits.astype(np.float64)).sum()))
    assert logsumexp(logits) == pytest.approx(want, abs=1e-5)
    assert logsumexp(logits, float(logits.max())) == pytest.approx(want, abs=1e-5)
    top = top_logprobs(logits, 3, want)
    order = np.argsort(-logits.astype(np.float64))[:3]
    assert [t for t, _ in top] == order.tolist()
    assert [lp for _, lp in top] == pytest.approx((logits[order].astype(np.float64) - want).tolist(), abs=1e-5)
    assert top_logprobs(logits, 0, want) == []


# --------------------------------------------------------------------------- the arithmetic


def test_text_probs_leave_out_a_final_stop_token_and_excluded_ids():
    ids, probs = [5, 9, 7, 9, 2], [0.9, 0.1, 0.8, 0.2, 0.99]
    assert text_token_probs(ids, probs) == probs
    assert text_token_probs(ids, probs, stop_ids={2}) == [0.9, 0.1, 0.8, 0.2]
    assert text_token_probs(ids, probs, exclude={9}, stop_ids={2}) == [0.9, 0.8]
    assert text_token_probs([2, 5], [0.5, 0.6], stop_ids={2}) == [0.5, 0.6]  # only a final one
    with pytest.raises(ValueError):
        text_token_probs([1, 2], [0.5])


def test_confidence_is_the_geometric_mean_and_parts_combine():
    c = TextConfidence.of([0.9, 0.5, 0.8])
    assert c.confidence == pytest.approx((0.9 * 0.5 * 0.8) ** (1 / 3))
    assert c.min_token_prob == 0.5 and c.tokens == 3
    a, b = TextConfidence.of([0.9, 0.5]), TextConfidence.of([0.8, 0.25, 0.7])
    whole = TextConfidence.combine([a, TextConfidence(), b])
    assert whole.confidence == pytest.approx(TextConfidence.of([0.9, 0.5, 0.8, 0.25, 0.7]).confidence)
    assert whole.min_token_prob == 0.25 and whole.tokens == 5
    empty = TextConfidence.of([])
    assert empty.confidence is None and empty.min_token_prob is None
    assert TextConfidence.combine([]).fields() == {"confidence": None, "min_token_prob": None}
    assert TextConfidence.of([0.5, 0.0]).confidence == 0.0  # an underflowed probability
    assert TextConfidence.of([0.123456789]).fields() == {"confidence": 0.123457, "min_token_prob": 0.123457}


# --------------------------------------------------------------------------- needs_review


def review(text: str = "Total 12.50", finish: str = "stop", confidence: float | None = 0.97,
           least: float | None = 0.5, rules: ReviewRules | None = None, **kw) -> tuple[bool, list[str]]:
    rules = rules or ReviewRules(0.9, 0.1)
    return needs_review(text=text, finish_reason=finish, confidence=confidence, min_token_prob=least, rules=rules, **kw)


TABLE = "<fcel>a<fcel>b<nl><fcel>1<fcel>2<nl>"


@pytest.mark.parametrize("case,kwargs,reasons", [
    ("clean", {}, []),
    ("repetition cut", {"finish": "repetition"}, ["repetition"]),
    ("token limit", {"finish": "length"}, ["length"]),
    ("empty", {"text": " \n"}, ["empty"]),
    ("table that parses", {"text": TABLE, "task": "table"}, []),
    ("table that does not", {"text": "a | b\n1 | 2", "task": "table"}, ["unparsed_table"]),
    ("OTSL-less text under another task", {"text": "a | b", "task": "ocr"}, []),
    ("layout table block left as text", {"unparsed": ["table"]}, ["unparsed_table"]),
    ("malformed spotting", {"unparsed": ["spotting"], "task": "spotting"}, ["unparsed_spotting"]),
    ("low confidence", {"confidence": 0.89}, ["low_confidence"]),
    ("confidence at the threshold", {"confidence": 0.9}, []),
    ("low least token", {"least": 0.05}, ["low_min_token_prob"]),
    ("no tokens to judge", {"confidence": None, "least": None}, []),
    ("thresholds off", {"confidence": 0.01, "least": 0.0, "rules": ReviewRules(0.0, 0.0)}, []),
    ("several", {"finish": "length", "text": "", "confidence": 0.2, "least": 0.01},
     ["length", "empty", "low_confidence", "low_min_token_prob"]),
])
def test_each_review_rule(case, kwargs, reasons):
    assert review(**kwargs) == (bool(reasons), reasons), case


def test_review_rules_refuse_what_they_cannot_judge():
    with pytest.raises(ValueError):
        ReviewRules(1.5, 0.0)
    with pytest.raises(ValueError):
        review(unparsed=["chart"])


# --------------------------------------------------------------------------- record fields


def result(text: str, ids: list[int], probs: list[float], finish: str = "stop") -> PageResult:
    return PageResult(text=text, finish_reason=finish, image_tokens=4, prompt_tokens=10, output_tokens=len(ids),
                      width=56, height=56, vision_seconds=0, prefill_seconds=0, decode_seconds=0,
                      token_ids=ids, token_probs=probs)


RUN, STRICT = RunFields("ocr", None, "m", review=ReviewRules(0.5, 0.0)), RunFields("ocr", None, "m", review=ReviewRules(0.7, 0.5))
TASK = PageTask("k", "/abs/a.pdf", "a.pdf", 1, 1, "0" * 64)


class SpottingRecognizer:
    """What WholePage.answer asks of a recognizer for spotting: its location ids, its text, and
    the recognizer's own spotting parse."""

    spotting_tokens = SpottingTokens({900 + i: v for i, v in enumerate((100, 100, 500, 100, 500, 200, 100, 200))}, {})
    spotting = Recognizer.spotting

    def detokenize(self, ids):
        return "".join(chr(i) for i in ids)


def whole_page(result: PageResult, task: str = "ocr") -> ModelPage:
    page = WholePage(SpottingRecognizer(), PageOptions(task=task))
    return page.answer(result, PageInput(None, (200, 100), None))


def test_record_fields_for_read_blank_and_failed_pages():
    read = build_record(RUN, TASK, whole_page(result("ab", [4, 5], [0.9, 0.4])))
    assert read["confidence"] == pytest.approx(0.6) and read["min_token_prob"] == 0.4
    assert (read["needs_review"], read["review_reasons"], read["text_source"]) == (False, [], "model")
    strict = build_record(STRICT, TASK, whole_page(result("ab", [4, 5], [0.9, 0.4])))
    assert (strict["needs_review"], strict["review_reasons"]) == (True, ["low_confidence", "low_min_token_prob"])
    blank = build_record(RUN, TASK, Blank(10, 10))
    assert (blank["confidence"], blank["min_token_prob"], blank["needs_review"], blank["review_reasons"]) == \
        (None, None, False, [])
    failed = build_record(RUN, TASK, PageError("corrupt", "bad"))
    assert (failed["confidence"], failed["needs_review"], failed["review_reasons"]) == (None, None, None)
    copied = build_record(RUN, TASK, Copied(read))
    assert (copied["confidence"], copied["min_token_prob"], copied["needs_review"]) == (None, None, False)


def test_spotting_leaves_location_tokens_out_of_the_confidence():
    """A line's 8 location tokens (probability 0.01 here) are not part of the text's confidence; a
    location run cut short keeps its text and asks for review."""
    ids = [ord("a"), ord("b"), *range(900, 908)]
    spotted = build_record(RUN, TASK, whole_page(result("", ids, [0.9, 0.4] + [0.01] * 8), "spotting"))
    assert spotted["text"] == "ab" and spotted["positions"] == "spotting"
    assert spotted["confidence"] == pytest.approx(0.6) and spotted["min_token_prob"] == 0.4
    assert spotted["lines"][0]["bbox"] == [20.0, 10.0, 100.0, 20.0] and spotted["needs_review"] is False
    cut = build_record(RUN, TASK, whole_page(result("", ids[:-3], [0.9, 0.4] + [0.01] * 5), "spotting"))
    assert cut["text"] == "ab" and cut["lines"] == [] and cut["min_token_prob"] == 0.4
    assert cut["review_reasons"] == ["unparsed_spotting"] and cut["warnings"]


def test_layout_record_flags_a_table_block_left_as_text():
    from ppvl_batch.layout.labels import Block
    from ppvl_batch.layout.parser import ParsedPage

    blocks = [Block(0, "table", (0, 0, 10, 10), 0.9, text="not a table", format="text", confidence=0.95),
              Block(1, "text", (0, 10, 10, 20), 0.9, text="words", confidence=0.99)]
    parsed = ParsedPage(blocks=blocks, markdown="not a table\n\nwords", width=10, height=20, image_tokens=2,
                        prompt_tokens=4, output_tokens=5, layout_seconds=0, vision_seconds=0, decode_seconds=0,
                        tokens=TextConfidence.of([0.95, 0.99, 0.97]))
    run = RunFields("layout", None, "m", "L", ReviewRules(0.5, 0.0))
    record = build_record(run, TASK, parsed)
    assert record["review_reasons"] == ["unparsed_table"]
    assert record["confidence"] == pytest.approx((0.95 * 0.99 * 0.97) ** (1 / 3), abs=1e-6)
    assert record["blocks"][0]["confidence"] == 0.95


# --------------------------------------------------------------------------- calibration tool


def test_calibrate_review_reports_the_threshold_that_catches_the_bad_pages(tmp_path, monkeypatch, capsys):
    import json

    import calibrate_review

    monkeypatch.chdir(tmp_path)
    truth = ["alpha beta", "gamma delta", "epsilon zeta", "eta theta"]
    (tmp_path / "doc.gt.json").write_text(json.dumps({"pages": truth}))
    read = ["alpha beta", "gamma delta", "epsilon zzzz", "xx"]  # pages 3 and 4 are bad
    confidence = [0.99, 0.95, 0.80, 0.60]
    records = [{"source": "doc.pdf", "page": i + 1, "status": "ok", "text": t, "confidence": c, "min_token_prob": c / 2,
                "review_reasons": []} for i, (t, c) in enumerate(zip(read, confidence))]
    records.append({"source": "doc.pdf", "page": 5, "status": "ok", "text": "", "confidence": None})  # blank
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert calibrate_review.main(["r.jsonl", "--json", "--catch", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["pages"] == 4 and result["left_out"]["no confidence (blank, copied, failed)"] == 1
    below = result["review_below"]
    assert 0.80 < below["threshold"] < 0.95 and (below["bad_caught"], below["bad"]) == (2, 2)
    assert below["good_flagged"] == 0
    half = calibrate_review.report(*calibrate_review.score(records, None), bad_cer=0.05, catch=0.5)
    assert 0.60 < half["review_below"]["threshold"] < 0.80 and half["review_below"]["bad_caught"] == 1
    # the same truth as JSONL of {source, page, text}
    (tmp_path / "t.jsonl").write_text("".join(json.dumps({"source": "doc.pdf", "page": i + 1, "text": t}) + "\n"
                                              for i, t in enumerate(truth)))
    assert calibrate_review.main(["r.jsonl", "--truth", "t.jsonl", "--json", "--catch", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["review_below"] == below
