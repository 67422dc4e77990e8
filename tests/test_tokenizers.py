"""Issue 10: prompts and text exactly as the checkpoint's own tokenizer makes them, for tokenizers
that differ from the published one (tiny_model.TOKENIZER_VARIANTS), and a streamed answer that
always joins to the final text."""

from __future__ import annotations

import httpx
import pytest
import reference
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from makedocs import page
from serving import data_url, image_part, png_bytes, post, running_server, sse_events, sse_text, text_part, user

from ppvl_batch.cli import main
from ppvl_batch.engine.detokenize import Detokenizer
from ppvl_batch.engine.prompt import TASKS
from ppvl_batch.engine.tokenizer import PromptError, load_tokenizer
from ppvl_batch.recognizer import Recognizer

MAX_NEW = 24  # tokens per answer (as test_parity)
VARIANTS = ["no-byte-fallback", "nfkc", "no-prefix-space-key", "cls-template"]
FREE_PROMPT = "  Read the\ttotal,  then the date:\n\n ünïcödé 12,50 € 中文 "
SHAPES = [(333, 517), (1100, 640)]


@pytest.fixture(scope="module")
def variant_recognizers(variant_dirs):
    recs = {v: Recognizer.load(b, quant="F32", dtype="fp32", kv_type="f32") for v, (_, b) in variant_dirs.items()}
    yield recs
    for rec in recs.values():
        rec.close()


@pytest.mark.parametrize("variant", VARIANTS)
def test_prompt_ids_equal_transformers_for_every_task(variant, variant_dirs, variant_recognizers):
    ckpt, _ = variant_dirs[variant]
    rec = variant_recognizers[variant]
    for text in [*TASKS.values(), FREE_PROMPT]:
        before, after = rec.prompt_ids(prompt=text)
        expected = reference.prompt_ids(ckpt, text, 4)
        assert before + [rec.prompts.placeholder_id] * 4 + after == expected, text


def test_variants_really_differ_from_the_plain_tokenizer(variant_dirs, tiny_checkpoint):
    """Each variant changes what transformers makes of the free prompt or the template (else the
    fixtures would prove nothing)."""
    plain = reference.prompt_ids(tiny_checkpoint, FREE_PROMPT, 1)
    tokenizer = load_tokenizer(variant_dirs["no-byte-fallback"][0])
    assert tokenizer.unk_token_id in reference.prompt_ids(variant_dirs["no-byte-fallback"][0], FREE_PROMPT, 1)
    nfkc = load_tokenizer(variant_dirs["nfkc"][0])
    assert "  " not in nfkc.decode(nfkc(FREE_PROMPT, add_special_tokens=False)["input_ids"])
    cls = reference.prompt_ids(variant_dirs["cls-template"][0], "OCR:", 1)
    assert cls[0] == tokenizer.convert_tokens_to_ids("<|begin_of_sentence|>")  # not an empty cls_token
    assert plain != reference.prompt_ids(variant_dirs["no-prefix-space-key"][0], FREE_PROMPT, 1)


@pytest.mark.parametrize("variant", VARIANTS)
def test_greedy_tokens_and_text_equal_transformers(variant, variant_dirs, variant_recognizers):
    ckpt, _ = variant_dirs[variant]
    rec = variant_recognizers[variant]
    for i, task in enumerate(["ocr", "table", "formula", "chart", "seal", None]):
        image = page(*SHAPES[i % 2], seed=i)
        [ours] = rec.recognize([image], task or "ocr", prompt=None if task else FREE_PROMPT,
                               max_new_tokens=MAX_NEW, repetition_guard=False)
        ref_tokens, ref_text = reference.generate(ckpt, image, TASKS[task] if task else FREE_PROMPT, MAX_NEW)
        assert ours.token_ids == ref_tokens, task
        assert ours.text == ref_text, task


def test_special_token_in_a_prompt_is_a_usage_error(variant_dirs, tmp_path):
    _, bundle = variant_dirs["nfkc"]
    (tmp_path / "p.png").write_bytes(png_bytes(page(120, 90)))
    result = CliRunner().invoke(main, ["ask", "--model", str(bundle), "--image", str(tmp_path / "p.png"),
                                       "--text", "Read <|IMAGE_PLACEHOLDER|> now"])
    assert result.exit_code == 2, result.output
    assert "special token '<|IMAGE_PLACEHOLDER|>'" in result.output
    result = CliRunner().invoke(main, ["scan", "--model", str(bundle), str(tmp_path / "p.png"), "-o",
                                       str(tmp_path / "out" / "o.jsonl"), "--prompt", "x </s> y"])
    assert result.exit_code == 2, result.output
    assert "special token '</s>'" in result.output


def test_old_bundle_without_tokenizer_says_to_reconvert(variant_dirs, tmp_path):
    import json
    import shutil

    _, bundle = variant_dirs["cls-template"]
    old = tmp_path / "old"
    shutil.copytree(bundle, old)
    manifest = json.loads((old / "manifest.json").read_text())
    for name in ("tokenizer.model", "added_tokens.json", "special_tokens_map.json"):
        del manifest["files"][name]
        (old / name).unlink()
    manifest["format_version"] = 1
    (old / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "p.png").write_bytes(png_bytes(page(120, 90)))
    result = CliRunner().invoke(main, ["ask", "--model", str(old), "--image", str(tmp_path / "p.png")])
    assert result.exit_code == 3
    assert "convert the model again" in result.output


@pytest.mark.parametrize("variant", VARIANTS)
def test_server_stream_equals_answer(variant, variant_dirs):
    _, bundle = variant_dirs[variant]
    body = {"messages": user(image_part(data_url(png_bytes(page(300, 200, seed=5)))), text_part(FREE_PROMPT)),
            "max_tokens": MAX_NEW, "stop": ["e", "中"]}
    with running_server(lambda: Recognizer.load(bundle, threads=1)) as srv:
        plain = post(srv.url, body).json()["choices"][0]["message"]["content"]
        streamed = httpx.post(f"{srv.url}/v1/chat/completions", json={**body, "stream": True}, timeout=60)
        assert sse_text(sse_events(streamed.text)) == plain
        bad = post(srv.url, {**body, "messages": user(image_part(data_url(png_bytes(page(64, 48)))),
                                                      text_part("a <|IMAGE_START|> b"))})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_content"


# -- the detokenizer against tokenizer.decode ---------------------------------------------------


@pytest.fixture(scope="module")
def plain_tokenizer(tiny_checkpoint):
    return load_tokenizer(tiny_checkpoint)


def _favoured_ids(tokenizer) -> list[int]:
    """Byte tokens, special and added tokens, the pieces with spaces: where decoding is subtle."""
    ids = [i for i in range(len(tokenizer)) if (tokenizer.convert_ids_to_tokens(i) or "").startswith(("<0x", "▁", "<|", "<"))]
    return ids[:400] + ids[-20:]


@pytest.fixture(scope="module")
def decoding_tokenizers(plain_tokenizer, variant_dirs):
    """The three decoder chains of the test tokenizers: Replace, ByteFallback, Fuse (published);
    Replace alone (no byte tokens); Replace, ByteFallback, Fuse, Strip of the first space (dummy
    prefix)."""
    return {"plain": plain_tokenizer, "no-byte-fallback": load_tokenizer(variant_dirs["no-byte-fallback"][0]),
            "nfkc": load_tokenizer(variant_dirs["nfkc"][0])}


@pytest.mark.parametrize("name", ["plain", "no-byte-fallback", "nfkc"])
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_stream_joins_to_decode_with_stop_strings(decoding_tokenizers, name, data):
    tok = decoding_tokenizers[name]
    detok = Detokenizer(tok)
    favoured = _favoured_ids(tok)
    ids = data.draw(st.lists(st.one_of(st.sampled_from(favoured), st.integers(0, len(tok) + 30)), max_size=40))
    alphabet = st.sampled_from(["a", "e", " ", "\ufffd", "中", "<", "|", "\n", "1"])
    stops = data.draw(st.lists(st.text(alphabet, min_size=1, max_size=4), max_size=3))
    cut = data.draw(st.integers(0, len(ids)))  # generation ended here (length, repetition guard)
    ids = ids[:cut]

    assert detok.decode(ids) == tok.decode(ids, skip_special_tokens=False)

    stream = detok.stream(stops)
    deltas, n = [], 0
    for n, token in enumerate(ids, 1):  # noqa: B007  (n, the tokens pushed, is checked after the loop)
        deltas.append(stream.push(token))
        if stream.stopped:
            break
    deltas.append(stream.finish())
    assert "".join(deltas) == stream.text
    # The rule: stop after the first token whose decoded text holds a stop string; cut there.
    expected, used = tok.decode(ids, skip_special_tokens=False), len(ids)
    for k in range(1, len(ids) + 1):
        text = tok.decode(ids[:k], skip_special_tokens=False)
        hits = [text.find(s) for s in stops if s in text]
        if hits:
            expected, used = text[: min(hits)], k
            break
    assert stream.text == expected
    assert n == used or not ids


def test_byte_run_that_turns_invalid_is_not_streamed(plain_tokenizer):
    tok = plain_tokenizer
    zhong = [tok.convert_tokens_to_ids(f"<0x{b:02X}>") for b in "中".encode()]
    ids = tok("ab", add_special_tokens=False)["input_ids"] + zhong * 2 + zhong[:1] + tok("x", add_special_tokens=False)["input_ids"]
    stream = Detokenizer(tok).stream()
    deltas = [stream.push(t) for t in ids] + [stream.finish()]
    assert "".join(deltas) == stream.text == tok.decode(ids) == "ab" + "\ufffd" * 7 + "x"
    assert "中" not in "".join(deltas)


def test_prompt_ids_cache_is_bounded(variant_recognizers):
    prompts = variant_recognizers["nfkc"].prompts
    for i in range(prompts.cache_size + 10):
        prompts.prompt_ids(f"prompt {i}")
    assert len(prompts._cache) == prompts.cache_size
    with pytest.raises(PromptError):
        prompts.prompt_ids("<|IMAGE_END|>")


def test_stop_string_spanning_tokens_does_not_leak(plain_tokenizer):
    tok = plain_tokenizer
    ids = [tok.convert_tokens_to_ids(c) for c in "xyabcdz"]
    stream = Detokenizer(tok).stream(["yabcd", "zz"])
    deltas, n = [], 0
    for n, token in enumerate(ids, 1):  # noqa: B007  (n, the tokens pushed, is checked after the loop)
        deltas.append(stream.push(token))
        if stream.stopped:
            break
    deltas.append(stream.finish())
    assert deltas[:6] == ["x", "", "", "", "", ""] and "".join(deltas) == stream.text == "x"
    assert stream.stopped and len(deltas) == 7


def test_convert_stops_at_the_first_differing_prompt_id(tiny_checkpoint, tmp_path, monkeypatch):
    from ppvl_batch.engine.tokenizer import PromptTokenizer

    real = PromptTokenizer.encode
    # A tokenizer that drops the last id of every prompt: what a bundle with the wrong files would do.
    monkeypatch.setattr(PromptTokenizer, "encode", lambda self, rendered: real(self, rendered)[:-1])
    result = CliRunner().invoke(main, ["convert", str(tiny_checkpoint), "-o", str(tmp_path / "b"), "--quant", "F32"])
    assert result.exit_code == 3, result.output
    assert "prompt ids for 'OCR:' differ from transformers' at position" in result.output
    assert not (tmp_path / "b").exists()


def test_a_decoder_we_cannot_stream_is_refused():
    from types import SimpleNamespace

    from tokenizers import Tokenizer, decoders
    from tokenizers.models import BPE

    from ppvl_batch.engine.detokenize import UnsupportedDecoder

    backend = Tokenizer(BPE(vocab={"a": 0}, merges=[]))
    backend.decoder = decoders.ByteLevel()
    with pytest.raises(UnsupportedDecoder, match="ByteLevel"):
        Detokenizer(SimpleNamespace(backend_tokenizer=backend))
