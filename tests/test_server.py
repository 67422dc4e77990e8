"""`ppvl-ocr serve` and `ppvl-ocr ask` over real HTTP on 127.0.0.1, on the tiny random-weight bundle.

The servers run uvicorn in a thread of this process; their answers are compared with the
recognizer's own output for the same image (greedy, so deterministic), driven both by the official
`openai` client and by raw httpx. Random weights give gibberish, which is fine: equal gibberish is
the point. Requests ask for a few tokens only, so the file runs in about 50 s on two cores (the
fuzz test of 240 requests about 15-20 s of it).
"""

from __future__ import annotations

import asyncio
import functools
import http.server
import io
import json
import os
import random
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import openai
import pymupdf
import pytest
from click.testing import CliRunner
from PIL import Image
from serving import (
    data_url,
    image_part,
    png_bytes,
    post,
    running_server,
    sse_events,
    sse_text,
    text_part,
    user,
    wait_until,
)

from ppvl_batch.cli import main
from ppvl_batch.engine.answers import PAGE_SEPARATOR, Answer, Question, answer_images, answer_many, task_and_prompt
from ppvl_batch.engine.prompt import V1_TASKS
from ppvl_batch.errors import ModelError
from ppvl_batch.recognizer import DecoderError, PageResult, Recognizer, Sampling
from ppvl_batch.serve.app import bind_socket, run_server
from ppvl_batch.serve.client import load_page
from ppvl_batch.serve.requests import ServeOptions

PPVL = str(Path(sys.executable).with_name("ppvl-ocr"))
LIMITS = dict(max_images=3, max_image_pixels=4_000_000, max_body_bytes=8 * 1024 * 1024, max_tokens_limit=64,
              default_max_tokens=6, queue_size=64)


# ---------------------------------------------------------------------------------------------
# helpers


def noise_image(seed: int, size: tuple[int, int] = (64, 48)) -> Image.Image:
    """A small RGB image; different seeds give different answers from the random model."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def ocr_messages(image: Image.Image, text: str = "OCR:") -> list[dict]:
    return user(image_part(data_url(png_bytes(image))), text_part(text))


def reference(rec: Recognizer, image: Image.Image, max_tokens: int, task: str = "ocr", prompt: str | None = None) -> PageResult:
    [page] = rec.encode([image], task)
    return rec.decode(page, task, prompt, max_new_tokens=max_tokens)


def openai_finish(result: PageResult) -> str:
    return "stop" if result.finish_reason == "stop" else "length"


def metric(base: str, name: str) -> float:
    text = httpx.get(f"{base}/metrics").text
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


def assert_api_error(response: httpx.Response, status: int, code: str, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code and error["message"]
    if param is not None:
        assert error["param"] == param
    return error


class Gated:
    """A recognizer whose decoding waits at `gate` (to keep the worker busy on purpose) and
    sleeps `delay` seconds before each piece of text (so an answer takes a while)."""

    def __init__(self, rec: Recognizer) -> None:
        self.rec = rec
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.delay = 0.0

    def __getattr__(self, name: str):
        return getattr(self.rec, name)

    def decode_many(self, pages: list):
        self.entered.set()
        assert self.gate.wait(60)
        for _, request in pages:
            request.on_text = functools.partial(self._slow, request.on_text)
        return self.rec.decode_many(pages)

    def _slow(self, on_text, delta: str):
        time.sleep(self.delay)
        return None if on_text is None else on_text(delta)


# ---------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def rec(tiny_bundle) -> Iterator[Recognizer]:
    with Recognizer.load(tiny_bundle, threads=1) as r:
        yield r


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("allowed")
    (root / "page.png").write_bytes(png_bytes(noise_image(1)))
    outside = tmp_path_factory.mktemp("outside") / "secret.png"
    outside.write_bytes(png_bytes(noise_image(2)))
    (root / "link.png").symlink_to(outside)
    return root


@pytest.fixture(scope="module")
def srv(tiny_bundle, files) -> Iterator[SimpleNamespace]:
    """The main server: file:// allowed below `files`, http(s) images allowed, small limits."""
    with running_server(lambda: Recognizer.load(tiny_bundle, threads=1), allow_files=files, allow_remote_images=True,
                        **LIMITS) as handle:
        yield handle


@pytest.fixture(scope="module")
def client(srv) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0)


# ---------------------------------------------------------------------------------------------
# answers equal the recognizer's


def test_openai_client_answer_equals_recognizer(client, rec):
    image = noise_image(3)
    want = reference(rec, image, 8)
    got = client.chat.completions.create(model="anything", messages=ocr_messages(image), max_tokens=8)
    assert got.choices[0].message.content == want.text
    assert got.choices[0].finish_reason == openai_finish(want)
    assert got.usage.prompt_tokens == want.prompt_tokens > want.image_tokens  # image tokens counted
    assert got.usage.completion_tokens == want.output_tokens
    assert got.usage.total_tokens == want.prompt_tokens + want.output_tokens
    assert got.model == rec.model_id


def test_openai_client_stream_equals_recognizer(client, rec):
    image = noise_image(4)
    want = reference(rec, image, 8)
    chunks = list(client.chat.completions.create(model="x", messages=ocr_messages(image), max_tokens=8, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == want.text
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1  # really streamed
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [openai_finish(want)]
    assert chunks[-1].usage.prompt_tokens == want.prompt_tokens
    assert chunks[-1].usage.completion_tokens == want.output_tokens


def test_raw_http_answer_and_stream(srv, rec):
    image = noise_image(5)
    want = reference(rec, image, 6)
    body = {"model": "m", "messages": ocr_messages(image)}  # no max_tokens: the server default (6)
    data = post(srv.url, body).json()
    assert data["object"] == "chat.completion"
    assert data["choices"][0]["message"] == {"role": "assistant", "content": want.text}
    assert data["usage"] == {"prompt_tokens": want.prompt_tokens, "completion_tokens": want.output_tokens,
                             "total_tokens": want.prompt_tokens + want.output_tokens}
    assert data["ppvl"]["pages"][0]["finish_reason"] == want.finish_reason

    with httpx.stream("POST", f"{srv.url}/v1/chat/completions", json={**body, "stream": True}, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response.read().decode())
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert sse_text(events) == want.text
    assert {e["id"] for e in events} == {events[0]["id"]}
    assert events[-1]["choices"][0]["finish_reason"] == openai_finish(want)


def test_task_prompt_and_content_order(client, rec):
    image = noise_image(6)
    url = data_url(png_bytes(image))

    def ask(messages: list[dict]) -> tuple[str, int]:
        got = client.chat.completions.create(model="x", messages=messages, max_tokens=6)
        return got.choices[0].message.content, got.usage.prompt_tokens

    def want(**kwargs) -> tuple[str, int]:
        result = reference(rec, image, 6, **kwargs)
        return result.text, result.prompt_tokens

    table = want(task="table")
    assert ask(user(text_part("Table Recognition:"), image_part(url))) == table  # text first: image still first
    assert ask([{"role": "system", "content": "You are an OCR engine."},
                *user(image_part(url), text_part("Table Recognition:"))]) == table
    assert ask(user(image_part(url), text_part("Describe the page"))) == want(prompt="Describe the page")
    assert ask(user(image_part(url))) == want()  # no text: OCR
    assert table[1] != want()[1]  # the task really changed the prompt


def test_several_images_one_answer(client, rec):
    images = [noise_image(7), noise_image(8, (80, 40))]
    want = answer_images(rec, Question(images, "ocr", None, 12))
    got = client.chat.completions.create(
        model="x", messages=user(*(image_part(data_url(png_bytes(im))) for im in images), text_part("OCR:")), max_tokens=12)
    assert got.choices[0].message.content == want.text
    assert got.usage.prompt_tokens == want.prompt_tokens and got.usage.completion_tokens == want.completion_tokens
    assert got.choices[0].finish_reason == want.finish_reason


def test_file_urls_inside_the_allowed_folder_only(srv, rec, files):
    want = reference(rec, noise_image(1), 4).text

    def ask(url: str) -> httpx.Response:
        return post(srv.url, {"messages": user(image_part(url)), "max_tokens": 4})

    outside = (files / "link.png").resolve()
    assert ask((files / "page.png").as_uri()).json()["choices"][0]["message"]["content"] == want
    assert_api_error(ask((files / "link.png").as_uri()), 403, "file_not_allowed")  # a symlink leading out
    assert_api_error(ask(outside.as_uri()), 403, "file_not_allowed")
    assert_api_error(ask(f"{files.as_uri()}/../{outside.parent.name}/secret.png"), 403, "file_not_allowed")
    assert_api_error(ask((files / "nothing.png").as_uri()), 400, "file_not_found")
    assert_api_error(ask(files.as_uri()), 400, "file_not_found")  # a folder


def test_remote_images_when_allowed(srv, rec, files):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(files))
    images = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=images.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{images.server_address[1]}"
    try:
        answer = post(srv.url, {"messages": user(image_part(f"{base}/page.png")), "max_tokens": 4}).json()
        assert answer["choices"][0]["message"]["content"] == reference(rec, noise_image(1), 4).text
        assert_api_error(post(srv.url, {"messages": user(image_part(f"{base}/missing.png"))}), 400, "image_fetch_failed")
    finally:
        images.shutdown()


def test_sampling_and_stop(client, rec):
    image = noise_image(12)
    [page] = rec.encode([image])
    sampled = rec.decode(page, max_new_tokens=8, sampling=Sampling(temperature=1.5, top_p=0.9, seed=3)).text

    def ask(**params) -> openai.types.chat.ChatCompletion:
        return client.chat.completions.create(model="x", messages=ocr_messages(image), max_tokens=8, **params)

    assert ask(temperature=1.5, top_p=0.9, seed=3).choices[0].message.content == sampled
    assert sampled != reference(rec, image, 8).text  # really sampled, not greedy

    greedy = reference(rec, image, 8).text
    stop = greedy[len(greedy) // 2:][:3]
    got = ask(stop=[stop, "never"])
    assert got.choices[0].message.content == greedy[: greedy.index(stop)]
    assert got.choices[0].finish_reason == "stop"


# ---------------------------------------------------------------------------------------------
# bad input: 4xx with OpenAI's error body, and the server goes on


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims a huge size: only its header is valid (a decompression bomb's shape)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _bad_requests() -> list[tuple[str, object, int, str, str | None]]:
    good = image_part(data_url(png_bytes(noise_image(9))))
    truncated = png_bytes(noise_image(10, (200, 200)))
    return [
        ("not json", b"{", 400, "invalid_json", None),
        ("not an object", [], 400, "invalid_json", None),
        ("no messages", {"model": "x"}, 400, "invalid_messages", "messages"),
        ("unknown role", {"messages": [{"role": "robot", "content": "hi"}]}, 400, "unsupported_role", "messages[0].role"),
        ("unknown content type", {"messages": user(good, {"type": "input_audio", "input_audio": {}})}, 400,
         "unsupported_content_type", "messages[0].content[1].type"),
        ("content not a list", {"messages": [{"role": "user", "content": 5}]}, 400, "invalid_content", "messages[0].content"),
        ("no image", {"messages": user(text_part("OCR:"))}, 400, "no_image", "messages[0].content"),
        ("history", {"messages": [*user(good), {"role": "assistant", "content": "x"}, *user(good)]}, 400,
         "unsupported_conversation", "messages[0]"),
        ("last not user", {"messages": [{"role": "system", "content": "x"}]}, 400, "invalid_messages", "messages[0]"),
        ("invalid base64", {"messages": user(image_part("data:image/png;base64,@@@@"))}, 400, "invalid_base64",
         "messages[0].content[0].image_url"),
        ("not base64 encoded", {"messages": user(image_part("data:image/png,rawbytes"))}, 400, "invalid_image_url", None),
        ("not an image", {"messages": user(image_part(data_url(b"hello, I am text", "text/plain")))}, 400,
         "invalid_image", "messages[0].content[0].image_url"),
        ("truncated png", {"messages": user(image_part(data_url(truncated[: len(truncated) // 2])))}, 400,
         "invalid_image", None),
        ("too many pixels", {"messages": user(image_part(data_url(png_bytes(Image.new("RGB", (2500, 2000))))))},
         400, "image_too_large", None),
        ("decompression bomb", {"messages": user(image_part(data_url(_png_header(100_000, 100_000))))}, 400,
         "image_too_large", None),
        ("too many images", {"messages": user(good, good, good, good)}, 400, "too_many_images", None),
        ("max_tokens over the ceiling", {"messages": user(good), "max_tokens": 65}, 400, "max_tokens_too_large", "max_tokens"),
        ("max_completion_tokens zero", {"messages": user(good), "max_completion_tokens": 0}, 400, "invalid_value",
         "max_completion_tokens"),
        ("n", {"messages": user(good), "n": 2}, 400, "invalid_value", "n"),
        ("temperature", {"messages": user(good), "temperature": "hot"}, 400, "invalid_value", "temperature"),
        ("stop", {"messages": user(good), "stop": ["a", "b", "c", "d", "e"]}, 400, "invalid_value", "stop"),
        ("other scheme", {"messages": user(image_part("ftp://example.com/a.png"))}, 400, "invalid_image_url", None),
        ("body too large", {"messages": user(image_part(data_url(b"\0" * 8 * 1024 * 1024)))}, 413, "request_too_large", None),
    ]


@pytest.mark.parametrize("body,status,code,param", [case[1:] for case in _bad_requests()],
                         ids=[case[0] for case in _bad_requests()])
def test_bad_input_gets_its_error(srv, body, status, code, param):
    response = post(srv.url, content=body) if isinstance(body, bytes) else post(srv.url, body)
    assert_api_error(response, status, code, param)


def test_server_alive_after_bad_input_and_metrics(srv, client, rec):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="x", messages=user(image_part("data:image/png;base64,!!")))
    assert caught.value.code == "invalid_base64"
    image = noise_image(11)
    assert client.chat.completions.create(model="x", messages=ocr_messages(image), max_tokens=4).choices[0].message.content \
        == reference(rec, image, 4).text
    assert_api_error(httpx.get(f"{srv.url}/v2/nothing"), 404, "not_found")
    text = httpx.get(f"{srv.url}/metrics").text
    assert metric(srv.url, 'ppvl_requests_total{status="400"}') >= 1
    assert metric(srv.url, 'ppvl_requests_total{status="200"}') >= 1
    assert metric(srv.url, "ppvl_pages_total") >= 1
    assert metric(srv.url, "ppvl_completion_tokens_total") >= 4
    assert metric(srv.url, 'ppvl_request_seconds_bucket{le="+Inf"}') == metric(srv.url, "ppvl_request_seconds_count") >= 2
    assert "# TYPE ppvl_queue_depth gauge" in text and "ppvl_model_loaded 1" in text


def test_models_and_health(srv, rec):
    assert httpx.get(f"{srv.url}/health").json() == {"status": "ok", "model": rec.model_id}
    data = httpx.get(f"{srv.url}/v1/models").json()
    assert [m["id"] for m in data["data"]] == [rec.model_id]


def test_task_not_in_model():
    assert task_and_prompt("Spotting:", ("ocr", "spotting")) == ("spotting", None)
    with pytest.raises(ValueError, match="not available"):
        task_and_prompt("Spotting:", V1_TASKS)


# ---------------------------------------------------------------------------------------------
# concurrency, queue, disconnects, timeouts, loading, shutdown


@pytest.fixture(scope="module")
def srv_parallel(tiny_bundle) -> Iterator[SimpleNamespace]:
    """A server that decodes up to 4 waiting requests together."""
    with running_server(lambda: Recognizer.load(tiny_bundle, threads=1, parallel=4), **LIMITS) as handle:
        yield handle


@pytest.mark.parametrize("server", ["srv", "srv_parallel"])
def test_50_concurrent_requests_all_answered_correctly(server, rec, request):
    """Each request has its own prompt, image size and length, so a mixed-up answer shows."""
    srv = request.getfixturevalue(server)
    cases = [(noise_image(i, (40 + 9 * i, 40)), f"Read line {i}", 2 + i % 5, i % 2 == 1) for i in range(50)]
    wanted = []
    for image, text, max_tokens, _ in cases:
        result = reference(rec, image, max_tokens, prompt=text)
        wanted.append((result.text, result.prompt_tokens, result.output_tokens))
    assert len(set(wanted)) > 25

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=60)) as http:
            return await asyncio.gather(*(
                http.post(f"{srv.url}/v1/chat/completions", json={
                    "messages": ocr_messages(image, text), "max_tokens": max_tokens, "stream": stream,
                    "stream_options": {"include_usage": True}})
                for image, text, max_tokens, stream in cases))

    for (_, _, _, stream), want, response in zip(cases, wanted, asyncio.run(run())):
        assert response.status_code == 200
        if stream:
            events = sse_events(response.text)
            got = (sse_text(events), events[-1]["usage"]["prompt_tokens"], events[-1]["usage"]["completion_tokens"])
        else:
            data = response.json()
            got = (data["choices"][0]["message"]["content"], data["usage"]["prompt_tokens"],
                   data["usage"]["completion_tokens"])
        assert got == want
    if server == "srv_parallel":  # requests really were decoded together
        assert metric(srv.url, 'ppvl_batch_size_bucket{le="1"}') < metric(srv.url, "ppvl_batch_size_count")


def _fuzz_requests(rng: random.Random, count: int) -> list[tuple[str, object, set[int]]]:
    """`count` malformed requests, seeded: (kind, body or raw bytes, statuses it may get). Kinds
    the server must answer (tiny images, extreme aspect ratios, a near-zero temperature) may
    only get 200; kinds that can never be answered only 400 or 413; damaged images that may still
    decode, and prompts with special-token strings, either."""
    png = png_bytes(noise_image(90, (60, 40)))
    jpeg = io.BytesIO()
    noise_image(91, (60, 40)).save(jpeg, format="JPEG")
    tiff = io.BytesIO()
    noise_image(92, (30, 20)).save(tiff, format="TIFF", save_all=True, append_images=[noise_image(93, (30, 20))])
    gif = io.BytesIO()
    noise_image(94, (30, 20)).convert("P").save(gif, format="GIF")
    valid = [png, jpeg.getvalue(), tiff.getvalue(), gif.getvalue()]

    def body(url: str, text: str = "OCR:", **extra) -> dict:
        return {"messages": user(image_part(url), text_part(text)), "max_tokens": 2, **extra}

    def image(data: bytes) -> dict:
        return body(data_url(data))

    def flipped() -> bytes:
        data = bytearray(rng.choice(valid))
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return bytes(data)

    def spliced() -> bytes:
        a, b = rng.choice(valid), rng.choice(valid)
        return a[: rng.randrange(1, len(a))] + b[rng.randrange(len(b)):]

    def strip() -> bytes:
        long_side, short_side = rng.randint(450, 3000), rng.randint(1, 2)
        size = (long_side, short_side) if rng.random() < 0.5 else (short_side, long_side)
        return png_bytes(noise_image(rng.randrange(1000), size))

    good = image_part(data_url(png))
    special = ["<|IMAGE_START|>", "<|IMAGE_END|>", "</s>", "<|begin_of_sentence|>", "<|LOC_7|>", "<s>"]
    makers: list[tuple[str, set[int], Callable[[], object]]] = [
        ("not json", {400}, lambda: json.dumps({"messages": []})[: rng.randrange(1, 14)].encode() + b"\xff"),
        ("json not an object", {400}, lambda: rng.choice([[], "OCR", 7, None, [{"messages": []}]])),
        ("messages wrong", {400}, lambda: {"messages": rng.choice([None, {}, "hi", [], [3], [[]], [{"role": 5}]])}),
        ("content wrong", {400}, lambda: {"messages": [{"role": "user", "content": rng.choice(
            [5, None, {"type": "text"}, [5], [{"type": "image_url"}], [{"type": "image_url", "image_url": 5}],
             [{"type": "image_url", "image_url": {"url": ["x"]}}], [{"type": "text", "text": 3}, good]])}]}),
        ("random bytes", {400}, lambda: image(rng.randbytes(rng.randint(0, 300)))),
        ("cut png", {400}, lambda: image(png[: rng.randrange(len(png) // 2)])),  # pixels missing
        ("cut image", {200, 400}, lambda: image((d := rng.choice(valid))[: rng.randrange(len(d))])),  # TIFF frame 1 may be whole
        ("flipped image", {200, 400}, lambda: image(flipped())),
        ("spliced image", {200, 400}, lambda: image(spliced())),
        ("bad data url", {400}, lambda: body(rng.choice(["data:image/png;base64,@@", "data:,", "data:image/png,abc",
                                                         "ftp://x/a.png", "file:///etc/passwd", "http://127.0.0.1:1/a",
                                                         "nothing"]))),
        ("placeholder in prompt", {400}, lambda: body(data_url(png), f"Read {rng.randint(0, 9)} <|IMAGE_PLACEHOLDER|>")),
        ("special token in prompt", {200, 400}, lambda: body(data_url(png), f"Read {rng.choice(special)} this")),
        ("prompt too long", {400}, lambda: body(data_url(png), "word " * rng.randint(8000, 12000))),
        ("decompression bomb", {400}, lambda: image(_png_header(rng.randint(3000, 90000), rng.randint(3000, 90000)))),
        ("too many images", {400}, lambda: {"messages": user(*[good] * rng.randint(4, 9))}),
        ("large plain image", {200}, lambda: image(png_bytes(Image.new("RGB", (rng.randint(1500, 2000),) * 2, "white")))),
        ("tiny image", {200}, lambda: image(png_bytes(noise_image(rng.randrange(1000), (rng.randint(1, 3), rng.randint(1, 3)))))),
        ("extreme aspect ratio", {200}, lambda: image(strip())),
        ("wrong type", {400}, lambda: body(data_url(png), **rng.choice([
            {"max_tokens": "5"}, {"max_tokens": 2.5}, {"max_tokens": -1}, {"max_tokens": True}, {"max_tokens": 10**6},
            {"temperature": "hot"}, {"temperature": -1}, {"temperature": 3}, {"top_p": 0}, {"top_p": [1]},
            {"stop": 5}, {"stop": [1]}, {"stop": [""]}, {"stop": ["a"] * 5}, {"n": 2}, {"n": "1"}, {"stream": "yes"},
            {"seed": -1}, {"seed": "x"}, {"seed": 1.5}, {"messages": [{"role": "user", "content": [good]},
                                                                      {"role": "user", "content": [good]}]}]))),
        ("near-zero temperature", {200}, lambda: body(data_url(png), temperature=rng.choice([5e-324, 1e-300, 1e-9]))),
        ("huge seed", {200}, lambda: body(data_url(png), temperature=1.0, seed=2**64 - rng.randint(1, 9))),
    ]
    out = []
    for _ in range(count):
        kind, statuses, make = rng.choice(makers)
        out.append((kind, make(), statuses))
    return out


def test_fuzz_malformed_requests_fail_alone(srv_parallel, rec):
    """200 seeded malformed requests interleaved with 40 well-formed ones, sent 16 at a time to a
    server that decodes 4 together: no 5xx, every error in OpenAI's shape, and every well-formed
    request gets the answer it gets alone."""
    rng = random.Random(20261201)
    bad = _fuzz_requests(rng, 200)
    assert {kind for kind, _, _ in bad} >= {"extreme aspect ratio", "tiny image", "placeholder in prompt", "wrong type"}
    good = []
    for i in range(40):
        image, max_tokens = noise_image(200 + i, (40 + 7 * (i % 9), 36)), 2 + i % 3
        prompt = None if i % 2 else f"Read part {i}"
        result = reference(rec, image, max_tokens, prompt=prompt)
        good.append(({"messages": ocr_messages(image, prompt or "OCR:"), "max_tokens": max_tokens, "stream": i % 4 == 1},
                     result.text))
    mixed = [("bad", i) for i in range(len(bad))] + [("good", i) for i in range(len(good))]
    rng.shuffle(mixed)

    async def run() -> list[httpx.Response]:
        gate = asyncio.Semaphore(16)  # under queue_size: a full queue's 503 is not what is tested here
        async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=20)) as http:
            async def send(which: str, i: int) -> httpx.Response:
                payload = bad[i][1] if which == "bad" else good[i][0]
                raw = payload if isinstance(payload, bytes) else None
                async with gate:
                    return await http.post(f"{srv_parallel.url}/v1/chat/completions", content=raw,
                                           json=None if raw is not None else payload)
            return await asyncio.gather(*(send(which, i) for which, i in mixed))

    statuses: Counter = Counter()
    for (which, i), response in zip(mixed, asyncio.run(run())):
        statuses[response.status_code] += 1
        if which == "good":
            assert response.status_code == 200, response.text
            body = good[i][0]
            text = sse_text(sse_events(response.text)) if body["stream"] else response.json()["choices"][0]["message"]["content"]
            assert text == good[i][1], i
            continue
        kind, _, allowed = bad[i]
        assert response.status_code in allowed, (kind, response.status_code, response.text[:300])
        if response.status_code != 200:
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"} and error["message"], (kind, error)
    assert statuses[200] > 40 and statuses[400] > 100  # both kinds really were sent
    assert not any(line.startswith('ppvl_requests_total{status="5') for line in httpx.get(f"{srv_parallel.url}/metrics").text.splitlines())


@pytest.fixture
def gated(tiny_bundle) -> Gated:
    return Gated(Recognizer.load(tiny_bundle, threads=1))


def test_queue_full_gets_503_with_retry_after(gated):
    body = {"messages": ocr_messages(noise_image(30)), "max_tokens": 4}
    with running_server(lambda: gated, queue_size=1) as handle:
        results: list[httpx.Response] = []
        first = threading.Thread(target=lambda: results.append(post(handle.url, body)))
        first.start()
        assert gated.entered.wait(30)  # the worker is busy with the first request
        second = threading.Thread(target=lambda: results.append(post(handle.url, body)))
        second.start()
        wait_until(lambda: metric(handle.url, "ppvl_queue_depth") == 1)
        refused = post(handle.url, body)
        assert_api_error(refused, 503, "queue_full")
        assert int(refused.headers["retry-after"]) >= 1
        gated.gate.set()
        first.join(30)
        second.join(30)
        assert [r.status_code for r in results] == [200, 200]
        assert post(handle.url, body).status_code == 200  # room again


class BreaksStep(Gated):
    """A recognizer whose shared decoding step fails whenever a page with a budget of 7 tokens is
    in it: a failure inside llama.cpp caused by one request of a batch."""

    def decode_many(self, pages: list):
        self.entered.set()
        assert self.gate.wait(60)
        if any(request.max_new_tokens == 7 for _, request in pages):
            raise RuntimeError("llama_decode failed")
        return self.rec.decode_many(pages)


def test_a_step_that_fails_in_a_batch_fails_only_its_request(tiny_bundle, rec):
    breaks = BreaksStep(Recognizer.load(tiny_bundle, threads=1, parallel=4))
    images = [noise_image(60 + i) for i in range(4)]
    wanted = [reference(rec, image, 3).text for image in images]
    with running_server(lambda: breaks, **LIMITS) as handle:
        results: dict[int, httpx.Response] = {}

        def ask(i: int, max_tokens: int) -> None:
            results[i] = post(handle.url, {"messages": ocr_messages(images[i % 4]), "max_tokens": max_tokens})

        first = threading.Thread(target=ask, args=(-1, 3))  # keeps the worker busy while the others line up
        first.start()
        assert breaks.entered.wait(30)
        others = [threading.Thread(target=ask, args=(i, 7 if i == 2 else 3)) for i in range(4)]
        for thread in others:
            thread.start()
        wait_until(lambda: metric(handle.url, "ppvl_queue_depth") == 4)
        breaks.gate.set()
        for thread in [first, *others]:
            thread.join(60)
        assert metric(handle.url, 'ppvl_batch_size_bucket{le="2"}') < metric(handle.url, "ppvl_batch_size_count")
    assert_api_error(results[2], 500, "recognition_failed")
    for i in (-1, 0, 1, 3):
        assert results[i].status_code == 200, results[i].text
        assert results[i].json()["choices"][0]["message"]["content"] == wanted[i % 4]


def test_client_disconnect_mid_stream_frees_the_model(gated, rec):
    gated.gate.set()
    gated.delay = 0.2  # 40 tokens: about 8 s unless aborted
    image = noise_image(31)
    assert reference(rec, image, 40).output_tokens == 40
    with running_server(lambda: gated) as handle:
        with httpx.Client(timeout=30) as http, http.stream("POST", f"{handle.url}/v1/chat/completions",
                         json={"messages": ocr_messages(image), "max_tokens": 40, "stream": True}) as response:
            for line in response.iter_lines():
                if '"content":"' in line and '"content":""' not in line:
                    break  # one piece of text arrived: now hang up
        gated.delay = 0.0
        started = time.monotonic()
        answer = post(handle.url, {"messages": ocr_messages(noise_image(32)), "max_tokens": 4})
        assert answer.status_code == 200
        assert time.monotonic() - started < 4  # not stuck behind the abandoned answer
        assert metric(handle.url, "ppvl_aborted_total") == 1
        assert metric(handle.url, "ppvl_completion_tokens_total") < 40 + 4
        assert metric(handle.url, "ppvl_requests_in_progress") == 0


def test_client_gone_while_waiting_is_skipped(gated):
    body = {"messages": ocr_messages(noise_image(35)), "max_tokens": 4}
    with running_server(lambda: gated) as handle:
        busy = threading.Thread(target=lambda: post(handle.url, body))
        busy.start()
        assert gated.entered.wait(30)
        for stream in (False, True):  # both wait behind the busy one, then hang up
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(f"{handle.url}/v1/chat/completions", json={**body, "stream": stream}, timeout=0.5)
        wait_until(lambda: metric(handle.url, 'ppvl_requests_total{status="499"}') == 2)
        gated.gate.set()
        busy.join(30)
        wait_until(lambda: metric(handle.url, "ppvl_requests_in_progress") == 0)
        assert metric(handle.url, "ppvl_pages_total") == 1  # the abandoned ones never reached the model


def test_request_timeout_408(gated):
    gated.gate.set()
    gated.delay = 0.2
    body = {"messages": ocr_messages(noise_image(31)), "max_tokens": 40}
    with running_server(lambda: gated, request_timeout=2.0) as handle:
        assert_api_error(post(handle.url, body), 408, "timeout")
        with httpx.stream("POST", f"{handle.url}/v1/chat/completions", json={**body, "stream": True}, timeout=30) as response:
            assert response.status_code == 200  # the stream had started: the error comes as an event
            events = sse_events(response.read().decode())
        assert events[-1]["error"]["code"] == "timeout"
        assert metric(handle.url, "ppvl_requests_in_progress") == 0


def test_health_503_while_loading_then_ready(tiny_bundle):
    release = threading.Event()

    def slow_loader() -> Recognizer:
        assert release.wait(30)
        return Recognizer.load(tiny_bundle, threads=1)

    with running_server(slow_loader, wait_ready=False) as handle:
        wait_until(lambda: httpx.get(f"{handle.url}/health").status_code == 503)
        assert httpx.get(f"{handle.url}/health").json() == {"status": "loading"}
        assert_api_error(post(handle.url, {"messages": ocr_messages(noise_image(1))}), 503, "model_loading")
        release.set()
        wait_until(lambda: httpx.get(f"{handle.url}/health").status_code == 200)


def test_shutdown_lets_in_flight_requests_finish(gated):
    body = {"messages": ocr_messages(noise_image(33)), "max_tokens": 4}
    with running_server(lambda: gated) as handle:
        results: list[httpx.Response] = []
        worker = threading.Thread(target=lambda: results.append(post(handle.url, body)))
        worker.start()
        assert gated.entered.wait(30)
        handle.server.should_exit = True  # what uvicorn's SIGTERM handler does
        time.sleep(0.3)
        gated.gate.set()
        worker.join(30)
        handle.thread.join(30)
        assert [r.status_code for r in results] == [200]
        assert not handle.thread.is_alive()


def test_api_key(tiny_bundle, rec):
    image = noise_image(34)
    with running_server(lambda: Recognizer.load(tiny_bundle, threads=1), api_key="s3cret") as handle:
        body = {"messages": ocr_messages(image), "max_tokens": 4}
        assert_api_error(post(handle.url, body), 401, "invalid_api_key")
        assert_api_error(post(handle.url, body, headers={"Authorization": "Bearer wrong"}), 401, "invalid_api_key")
        assert_api_error(httpx.get(f"{handle.url}/v1/models"), 401, "invalid_api_key")
        assert httpx.get(f"{handle.url}/health").status_code == 200
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{handle.url}/v1", api_key="wrong", max_retries=0).models.list()
        good = openai.OpenAI(base_url=f"{handle.url}/v1", api_key="s3cret", max_retries=0)
        assert good.chat.completions.create(model="x", messages=ocr_messages(image), max_tokens=4).choices[0].message.content \
            == reference(rec, image, 4).text
        # neither --allow-files nor --allow-remote-images on this server
        for url, code in (("file:///etc/hostname", "file_urls_disabled"), (f"{handle.url}/health", "remote_images_disabled")):
            response = post(handle.url, {"messages": user(image_part(url))}, headers={"Authorization": "Bearer s3cret"})
            assert_api_error(response, 400, code)


def test_model_that_fails_to_load_stops_the_server():
    def broken() -> Recognizer:
        raise ModelError("no such model bundle")

    with pytest.raises(ModelError, match="no such model bundle"):
        run_server(ServeOptions(), broken, "127.0.0.1", 0)


def test_serve_cli_errors(tmp_path):
    result = CliRunner().invoke(main, ["serve", "--model", str(tmp_path / "nothing"), "--port", "0"])
    assert result.exit_code == 3 and "no such model bundle" in result.stderr
    result = CliRunner().invoke(main, ["serve", "--max-tokens", "10", "--max-tokens-limit", "5"])
    assert result.exit_code == 2 and "--max-tokens-limit" in result.stderr
    with bind_socket("127.0.0.1", 0) as busy:
        result = CliRunner().invoke(main, ["serve", "--model", str(tmp_path), "--port", str(busy.getsockname()[1])])
    assert result.exit_code == 1 and "cannot listen" in result.stderr


# ---------------------------------------------------------------------------------------------
# answer_images: how several pages become one answer (a fake recognizer scripts the pages)


class FakeRec:
    """Scripted pages: an image is a page number, each page gives (text, finish_reason, tokens)
    or a DecoderError. Records the order pages were decoded in and their token budgets."""

    def __init__(self, pages: list) -> None:
        self.pages = pages
        self.rounds: list[list[tuple[int, int]]] = []  # per decode_many call: (page, budget)
        self.detokenize = lambda ids: "".join(chr(i) for i in ids)

    def prepare(self, image, task):
        return image

    def encode(self, images):
        return list(images)

    def request(self, page, task, prompt, *, max_new_tokens, sampling, stop, on_text, top_logprobs, on_token):
        return SimpleNamespace(page=page, budget=max_new_tokens, stop=stop, on_text=on_text)

    def decode_many(self, pages):
        self.rounds.append([(request.page, request.budget) for _, request in pages])
        for index, (_, request) in enumerate(pages):
            outcome = self.pages[request.page]
            if isinstance(outcome, DecoderError):
                yield index, outcome
                continue
            text, finish, tokens = outcome
            if request.on_text:
                request.on_text(text)
            raw = text + ("|" if finish == "stop" and request.stop else "")
            yield index, PageResult(text, finish, 10, 20, tokens, 1, 1, 0, 0, 0, token_ids=[ord(c) for c in raw])


def ask_fake(pages: list, images: list[int], max_tokens: int = 10, **options) -> tuple[Answer, FakeRec]:
    fake = FakeRec(pages)
    return answer_images(fake, Question(images, "ocr", None, max_tokens, **options)), fake


def test_answer_images_composes_pages():
    seen: list[str] = []
    answer, fake = ask_fake([("ab", "stop", 2), ("cde", "stop", 3), ("f", "stop", 1)], [0, 1, 2], on_text=seen.append)
    assert answer.text == PAGE_SEPARATOR.join(["ab", "cde", "f"]) == "".join(seen)
    assert fake.rounds == [[(0, 10)], [(1, 8)], [(2, 5)]]  # one page after the other; max_tokens bounds the whole
    assert (answer.finish_reason, answer.prompt_tokens, answer.completion_tokens) == ("stop", 60, 6)

    for finish in ("length", "repetition"):  # a cut page ends the answer, as OpenAI "length"
        answer, _ = ask_fake([("ab", finish, 2), ("c", "stop", 1)], [0, 1])
        assert (answer.text, answer.finish_reason) == ("ab", "length")
    answer, _ = ask_fake([("ab", "stop", 4), ("c", "stop", 1)], [0, 1], max_tokens=4)
    assert (answer.text, answer.finish_reason) == ("ab", "length")  # no budget left for page 2
    answer, _ = ask_fake([("ab", "stop", 2), ("c", "stop", 1)], [0, 1], stop=["|"])
    assert (answer.text, answer.finish_reason) == ("ab", "stop")  # a stop string ends the whole answer
    answer, _ = ask_fake([("ab", "stop", 2), ("c", "stop", 1)], [0, 1], on_text=lambda d: d != PAGE_SEPARATOR)
    assert answer.finish_reason == "abort"
    with pytest.raises(DecoderError):
        ask_fake([("ab", "stop", 2), DecoderError("too long")], [0, 1])


def test_answer_many_decodes_questions_together_round_by_round():
    fake = FakeRec([("ab", "stop", 2), ("cd", "stop", 2), ("e", "stop", 1), DecoderError("too long")])
    questions = [Question([0, 1], "ocr", None, 10), Question([2], "ocr", None, 5), Question([3], "ocr", None, 5)]
    first, second, third = answer_many(fake, questions)
    assert fake.rounds == [[(0, 10), (2, 5), (3, 5)], [(1, 8)]]  # first pages together, then what is left
    assert first.text == "ab" + PAGE_SEPARATOR + "cd" and second.text == "e"
    assert isinstance(third, DecoderError)  # only its own question fails


def test_answer_many_keeps_a_failure_to_its_question():
    class Picky(FakeRec):
        def encode(self, images):
            if 9 in images:
                raise ValueError("cannot encode page 9")
            return super().encode(images)

        def request(self, page, task, prompt, **options):
            if prompt == "refused":
                raise ValueError("prompt refused")
            return super().request(page, task, prompt, **options)

    fake = Picky([("ab", "stop", 2), ("cd", "stop", 2)])
    ok, bad_image, bad_prompt = answer_many(fake, [Question([0], "ocr", None, 5), Question([9], "ocr", None, 5),
                                                   Question([1], "ocr", "refused", 5)])
    assert ok.text == "ab"  # answered as alone, after the shared vision pass failed
    assert isinstance(bad_image, ValueError) and "page 9" in str(bad_image)
    assert isinstance(bad_prompt, ValueError) and "refused" in str(bad_prompt)
    assert fake.rounds == [[(0, 5)]]


# ---------------------------------------------------------------------------------------------
# ppvl-ocr ask


def _pdf(path: Path, images: list[Image.Image]) -> Path:
    doc = pymupdf.open()
    for image in images:
        page = doc.new_page(width=200, height=150)
        page.insert_image(page.rect, stream=png_bytes(image))
    doc.save(path)
    return path


def test_ask_against_the_server(srv, rec, tmp_path):
    image = noise_image(40)
    (tmp_path / "a.png").write_bytes(png_bytes(image))
    want = reference(rec, image, 5).text
    for stream in ([], ["--stream"]):
        result = CliRunner().invoke(main, ["ask", "--image", str(tmp_path / "a.png"), "--server", srv.url,
                                           "--max-tokens", "5", *stream])
        assert result.exit_code == 0, result.output
        assert result.stdout == want + "\n"
        assert "cut short" in result.stderr  # 5 tokens of gibberish never end on their own

    pdf = _pdf(tmp_path / "d.pdf", [noise_image(41), noise_image(42)])
    result = CliRunner().invoke(main, ["ask", "-i", str(pdf), "--page", "2", "-s", f"{srv.url}/v1", "--max-tokens", "5",
                                       "--text", "Chart Recognition:"])
    assert result.exit_code == 0, result.output
    assert result.stdout == reference(rec, load_page(pdf, 2), 5, task="chart").text + "\n"


def test_ask_locally_equals_the_server(srv, tiny_bundle, tmp_path):
    images = [tmp_path / "a.png", tmp_path / "b.png"]
    for i, path in enumerate(images):
        path.write_bytes(png_bytes(noise_image(43 + i)))
    args = ["ask", "-i", str(images[0]), "-i", str(images[1]), "--max-tokens", "9"]
    local = CliRunner().invoke(main, [*args, "--model", str(tiny_bundle), "--threads", "1"])
    streamed = CliRunner().invoke(main, [*args, "--model", str(tiny_bundle), "--threads", "1", "--stream"])
    remote = CliRunner().invoke(main, [*args, "--server", srv.url])
    assert local.exit_code == streamed.exit_code == remote.exit_code == 0, local.output + remote.output
    assert local.stdout == streamed.stdout == remote.stdout and local.stdout.strip()


def test_ask_errors(srv, bundle_dirs, tmp_path):
    (tmp_path / "a.png").write_bytes(png_bytes(noise_image(1)))
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    pdf = _pdf(tmp_path / "d.pdf", [noise_image(1)])
    with bind_socket("127.0.0.1", 0) as closed:
        nobody = f"http://127.0.0.1:{closed.getsockname()[1]}"
    cases = [
        (["-i", str(tmp_path / "missing.png"), "-s", srv.url], 1, "missing"),
        (["-i", str(tmp_path / "bad.png"), "-s", srv.url], 1, "corrupt"),
        (["-i", str(pdf), "--page", "2", "-s", srv.url], 2, "has 1 page"),
        (["-i", str(tmp_path / "a.png"), "-s", nobody], 1, "cannot reach"),
        (["-i", str(tmp_path / "a.png"), "-s", srv.url, "--max-tokens", "100"], 1, "at most 64"),
        (["-i", str(tmp_path / "a.png"), "--model", str(tmp_path / "no-bundle")], 3, "no such model bundle"),
        (["-i", str(tmp_path / "a.png"), "--model", str(bundle_dirs["v1-original"]), "--text", "Spotting:"], 2,
         "not available with this model"),
    ]
    for args, code, message in cases:
        result = CliRunner().invoke(main, ["ask", *args])
        assert result.exit_code == code, (args, result.output)
        assert result.stdout == ""
        where, error = result.stderr.strip().splitlines()  # what ask does, then one line of error
        assert where.startswith(("ppvl-ocr: asking the server", "ppvl-ocr: running")) and message in error


def test_ask_uses_a_server_only_when_given_one_and_says_which(srv, tiny_bundle, tmp_path):
    """An exported PPVL_MODEL (as for scan) never turns a question meant for a server into a
    silent local run: with PPVL_SERVER the server answers, without it ask says it runs locally."""
    (tmp_path / "a.png").write_bytes(png_bytes(noise_image(44)))
    args = ["ask", "-i", str(tmp_path / "a.png"), "--max-tokens", "3", "--threads", "1"]
    model_only = {"PPVL_MODEL": str(tiny_bundle), "PPVL_SERVER": None}
    local = CliRunner().invoke(main, args, env=model_only)
    assert local.exit_code == 0, local.output
    assert local.stderr.splitlines()[0] == \
        f"ppvl-ocr: running {tiny_bundle} in this process (no --server or PPVL_SERVER given)"

    with_server = CliRunner().invoke(main, args, env={**model_only, "PPVL_SERVER": srv.url})
    assert with_server.exit_code == 0, with_server.output
    assert with_server.stderr.splitlines()[0] == \
        f"ppvl-ocr: asking the server at {srv.url} (the model {tiny_bundle} is not used: a server was given)"
    assert with_server.stdout == local.stdout and local.stdout.strip()
    served = metric(srv.url, "ppvl_pages_total")
    assert CliRunner().invoke(main, args, env={**model_only, "PPVL_SERVER": srv.url}).exit_code == 0
    assert metric(srv.url, "ppvl_pages_total") == served + 1  # the server really answered it

    demo = CliRunner().invoke(main, ["ask", "-i", str(tmp_path / "missing.png")], env={"PPVL_MODEL": None, "PPVL_SERVER": None})
    assert demo.exit_code == 1
    assert demo.stderr.splitlines()[0].startswith("ppvl-ocr: running the demo model in this process")


def test_ask_api_key_refused_is_a_usage_error(tiny_bundle, tmp_path):
    (tmp_path / "a.png").write_bytes(png_bytes(noise_image(1)))
    with running_server(lambda: Recognizer.load(tiny_bundle, threads=1), api_key="k") as handle:
        result = CliRunner().invoke(main, ["ask", "-i", str(tmp_path / "a.png"), "-s", handle.url, "--api-key", "no"])
        assert result.exit_code == 2 and "refused the API key" in result.stderr
        result = CliRunner().invoke(main, ["ask", "-i", str(tmp_path / "a.png"), "-s", handle.url, "--max-tokens", "3"],
                                    env={"PPVL_API_KEY": "k"})
        assert result.exit_code == 0 and result.stdout.strip()


# ---------------------------------------------------------------------------------------------
# the real command in its own process: logs, SIGTERM


def test_serve_process_logs_and_stops_on_sigterm(tiny_bundle, tmp_path):
    (tmp_path / "a.png").write_bytes(png_bytes(noise_image(50)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PPVL_")}
    proc = subprocess.Popen([PPVL, "serve", "--model", str(tiny_bundle), "--port", "0", "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if "loaded" in line:
                break
        port = re.search(r"listening on http://127.0.0.1:(\d+)", "".join(lines)).group(1)
        result = CliRunner().invoke(main, ["ask", "-i", str(tmp_path / "a.png"), "-s", f"http://127.0.0.1:{port}",
                                           "--max-tokens", "3"])
        assert result.exit_code == 0 and result.stdout.strip()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGTERM  # uvicorn ends by the signal once in-flight work is done
    assert out == ""  # stdout carries no logs
    request_lines = [line for line in err.splitlines() if "chatcmpl-" in line]
    assert len(request_lines) == 1
    assert re.search(r"chatcmpl-\w+ 200 images=1 prompt_tokens=\d+ completion_tokens=3 finish=length [\d.]+s", request_lines[0])


# ---------------------------------------------------------------------------------------------
# logprobs


def test_logprobs_equal_the_recognizers_streamed_and_not(client, rec):
    image = noise_image(31)
    [page] = rec.encode([image])
    want = rec.decode(page, "ocr", max_new_tokens=8, top_logprobs=3)
    want_logprobs = [float(np.log(p)) for p in want.token_probs]

    got = client.chat.completions.create(model="x", messages=ocr_messages(image), max_tokens=8, logprobs=True,
                                         top_logprobs=3)
    content = got.choices[0].logprobs.content
    assert [c.logprob for c in content] == pytest.approx(want_logprobs, abs=1e-9)
    assert [t.logprob for c in content for t in c.top_logprobs] == \
        pytest.approx([lp for top in want.top_logprobs for _, lp in top], abs=1e-9)
    assert [[rec.detokenizer.token_bytes(t) for t, _ in top] for top in want.top_logprobs] == \
        [[bytes(t.bytes) for t in c.top_logprobs] for c in content]
    assert [c.top_logprobs[0].token for c in content] == [c.token for c in content]  # greedy: the most likely
    assert b"".join(bytes(c.bytes) for c in content).decode("utf-8", "replace").strip() == \
        got.choices[0].message.content.strip()  # the tokens' bytes make the text
    for c in content:  # the bytes as text, or spelled out when they are part of a character
        try:
            assert c.token == bytes(c.bytes).decode("utf-8")
        except UnicodeDecodeError:
            assert c.token == "bytes:" + "".join(f"\\x{b:02x}" for b in c.bytes)

    chunks = list(client.chat.completions.create(model="x", messages=ocr_messages(image), max_tokens=8, stream=True,
                                                 logprobs=True, top_logprobs=3))
    streamed = [c for chunk in chunks if chunk.choices and chunk.choices[0].logprobs
                for c in chunk.choices[0].logprobs.content or []]
    assert [c.logprob for c in streamed] == pytest.approx(want_logprobs, abs=1e-9)
    assert [[t.token for t in c.top_logprobs] for c in streamed] == [[t.token for t in c.top_logprobs] for c in content]
    assert sum(1 for chunk in chunks if chunk.choices and chunk.choices[0].logprobs
               and chunk.choices[0].logprobs.content) > 1  # sent with the text, not all at the end


def test_logprobs_off_and_without_alternatives(srv, rec):
    image = noise_image(32)
    plain = post(srv.url, {"messages": ocr_messages(image), "max_tokens": 5}).json()
    assert plain["choices"][0]["logprobs"] is None
    bare = post(srv.url, {"messages": ocr_messages(image), "max_tokens": 5, "logprobs": True}).json()
    content = bare["choices"][0]["logprobs"]["content"]
    assert len(content) == bare["usage"]["completion_tokens"] > 0
    assert all(set(c) == {"token", "logprob", "bytes", "top_logprobs"} and c["top_logprobs"] == [] for c in content)
    assert all(c["logprob"] <= 0 for c in content)


@pytest.mark.parametrize("body,param", [
    ({"logprobs": "yes"}, "logprobs"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": -1}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 2.5}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": True}, "top_logprobs"),
    ({"top_logprobs": 2}, "top_logprobs"),  # needs logprobs: true
    ({"logprobs": False, "top_logprobs": 2}, "top_logprobs"),
])
def test_bad_logprobs_values_are_400(srv, body, param):
    response = post(srv.url, {"messages": ocr_messages(noise_image(33)), "max_tokens": 2, **body})
    assert_api_error(response, 400, "invalid_value", param)
