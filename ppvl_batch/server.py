"""`ppvl-ocr serve`: an OpenAI Chat Completions compatible OCR server.

    POST /v1/chat/completions   one user message: images (data:, file://, http(s) URLs) + a task text
    GET  /v1/models             the loaded model
    GET  /health                200 once the model is loaded, 503 while loading
    GET  /metrics               Prometheus text format

The recognizer holds one llama.cpp context and is not thread-safe, so all model work runs on one
worker thread fed by a FIFO queue. The request handlers (asyncio) parse, fetch and decode images
and preprocess them (smart_resize) in the thread pool, then hand a job to the worker; the worker
sends text deltas back to the handler's asyncio queue with `loop.call_soon_threadsafe`. A job whose
client went away or whose deadline passed is aborted at its next token, so the worker moves on.
With a recognizer loaded with `parallel=N`, the worker takes up to N waiting jobs at once and
decodes them together (`answer_many`); otherwise one at a time.

Admission is bounded: at most `queue_size` requests wait behind the running one (503 with
Retry-After beyond that), which also bounds the memory held by decoded images.

Finish reasons: the engine's `stop` (end of text or a stop string) is OpenAI `stop`; `length`
(max_tokens) and `repetition` (the loop guard cut a repeating tail) are both OpenAI `length`,
because in both cases the answer is incomplete. The exact reason of each image is in the
response's extra `ppvl.pages` field.

This module imports FastAPI and uvicorn only inside the functions that need them, so that
`ppvl-ocr ask` can run a model locally through `answer_images` without the `serve` extra. (No
`from __future__ import annotations` here: FastAPI must see the real `Request` class of the
handlers defined inside `create_app`.)
"""

import asyncio
import base64
import binascii
import hmac
import io
import logging
import math
import queue
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

import orjson
from PIL import Image, UnidentifiedImageError

from .errors import PPVLError
from .pages import IMAGE_FORMATS, to_rgb
from .prompt import TASKS, task_from_text
from .recognizer import DecoderError, EncodedPage, PageResult, Recognizer, Sampling
from .vision import PreparedImage

if TYPE_CHECKING:
    from fastapi import FastAPI, Request

log = logging.getLogger("ppvl_batch.server")
request_log = logging.getLogger("ppvl_batch.server.requests")  # one line per request (serve --quiet: off)

PAGE_SEPARATOR = "\n\n"  # between the texts of several images in one answer
ROLES = ("system", "developer", "user", "assistant")
MAX_STOP_STRINGS = 4  # as OpenAI
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


@dataclass
class ServeOptions:
    """Limits and switches of one server (the CLI options of `ppvl-ocr serve`)."""

    api_key: str | None = None
    allow_files: Path | None = None  # file:// URLs only below this folder
    allow_remote_images: bool = False
    max_body_bytes: int = 32 * 1024 * 1024
    max_image_pixels: int = 50_000_000  # checked from the header, before the pixels are decoded
    max_images: int = 8
    default_max_tokens: int = 1024
    max_tokens_limit: int = 4096
    queue_size: int = 32  # requests that may wait behind the running one
    request_timeout: float = 600.0  # seconds from arrival to the last token
    remote_timeout: float = 30.0  # seconds to fetch one http(s) image


class ApiError(Exception):
    """An error answered with OpenAI's error JSON: {"error": {message, type, param, code}}."""

    def __init__(self, status: int, message: str, *, code: str, param: str | None = None,
                 type: str = "invalid_request_error", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, code: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, code=code, param=param)


# ---------------------------------------------------------------------------------------------
# Answering: several images -> one text (shared with `ppvl-ocr ask` run locally)
# ---------------------------------------------------------------------------------------------


@dataclass
class Answer:
    text: str
    finish_reason: str  # OpenAI: stop | length; abort when on_text asked to stop
    pages: list[PageResult]

    @property
    def prompt_tokens(self) -> int:
        return sum(p.prompt_tokens for p in self.pages)

    @property
    def completion_tokens(self) -> int:
        return sum(p.output_tokens for p in self.pages)


def task_and_prompt(text: str, tasks: Sequence[str]) -> tuple[str, str | None]:
    """(task, free prompt) for the text of a user message: a task's own text ("OCR:",
    "Table Recognition:") picks the task, empty text means OCR, anything else is a free prompt.
    ValueError for a task this model does not have."""
    text = text.strip()
    task = task_from_text(text) if text else "ocr"
    if task is None:
        return "ocr", text
    if task not in tasks:
        raise ValueError(f"task {TASKS[task]!r} is not available with this model (it has: "
                         f"{', '.join(TASKS[t] for t in tasks)})")
    return task, None


@dataclass
class Question:
    """Images and how to answer them: one answer for all the images."""

    images: Sequence[Image.Image | PreparedImage]
    task: str
    prompt: str | None
    max_tokens: int  # for the whole answer
    sampling: Sampling | None = None
    stop: Sequence[str] = ()
    on_text: Callable[[str], bool | None] | None = None  # each new piece of text; False aborts


class _Progress:
    """One answer being built page by page: budget, texts, and why it ended."""

    def __init__(self, question: Question, pages: list[EncodedPage]) -> None:
        self.question = question
        self.pages = pages
        self.results: list[PageResult] = []
        self.texts: list[str] = []
        self.budget = question.max_tokens
        self.finish = "stop"
        self.error: DecoderError | None = None
        self.done = False

    def next_page(self) -> EncodedPage | None:
        """The next page to decode, or None when the answer is complete."""
        i = len(self.results)
        if self.done or i == len(self.pages):
            self.done = True
            return None
        if i:
            if self.budget <= 0:
                self.finish, self.done = "length", True
                return None
            self.texts.append(PAGE_SEPARATOR)
            on_text = self.question.on_text
            if on_text is not None and on_text(PAGE_SEPARATOR) is False:
                self.finish, self.done = "abort", True
                return None
        return self.pages[i]

    def add(self, result: PageResult | DecoderError, rec: Recognizer) -> None:
        if isinstance(result, DecoderError):
            self.error, self.done = result, True
            return
        self.results.append(result)
        self.texts.append(result.text)
        self.budget -= result.output_tokens
        if result.finish_reason != "stop":
            self.finish = "abort" if result.finish_reason == "abort" else "length"
            self.done = True
        # The engine reports end-of-text and a stop string alike; a stop string ends the answer.
        elif self.question.stop and any(s in rec.detokenize(result.token_ids) for s in self.question.stop):
            self.done = True

    def answer(self) -> Answer | DecoderError:
        return self.error or Answer("".join(self.texts), self.finish, self.results)


def answer_many(rec: Recognizer, questions: Sequence[Question]) -> list[Answer | DecoderError]:
    """Answer several questions together: one vision pass for all their images, then rounds in
    which the next page of every answer still going is decoded together (up to the recognizer's
    `parallel` at a time). Each answer is what it would be alone: the images one after the other,
    `max_tokens` bounding the whole answer, a stop string ending it. A page the decoder cannot
    take gives its question a DecoderError and leaves the others alone."""
    prepared = [im if isinstance(im, PreparedImage) else rec.prepare(im, q.task) for q in questions for im in q.images]
    encoded = iter(rec.encode(prepared))
    progress = [_Progress(q, [next(encoded) for _ in q.images]) for q in questions]
    while True:
        round_ = [(p, page) for p in progress if (page := p.next_page()) is not None]
        if not round_:
            return [p.answer() for p in progress]
        requests = [(page, rec.request(page, p.question.task, p.question.prompt, max_new_tokens=p.budget,
                                       sampling=p.question.sampling, stop=p.question.stop, on_text=p.question.on_text))
                    for p, page in round_]
        for index, result in rec.decode_many(requests):
            round_[index][0].add(result, rec)


def answer_images(rec: Recognizer, question: Question) -> Answer:
    """One question's answer (`ppvl-ocr ask` run locally); DecoderError if a page cannot be decoded."""
    [answer] = answer_many(rec, [question])
    if isinstance(answer, DecoderError):
        raise answer
    return answer


# ---------------------------------------------------------------------------------------------
# Request parsing
# ---------------------------------------------------------------------------------------------


@dataclass
class ChatRequest:
    image_urls: list[tuple[str, str]]  # (param path for errors, url)
    text: str
    max_tokens: int
    sampling: Sampling
    stop: list[str]
    stream: bool
    include_usage: bool


def _number(body: dict[str, Any], name: str, low: float, high: float, default: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise bad_request(f"{name} must be a number from {low:g} to {high:g}", "invalid_value", name)
    return float(value)


def _max_tokens(body: dict[str, Any], options: ServeOptions) -> int:
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    value = body.get(name)
    if value is None:
        return options.default_max_tokens
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise bad_request(f"{name} must be a positive integer", "invalid_value", name)
    if value > options.max_tokens_limit:
        raise bad_request(f"{name} is {value}; this server allows at most {options.max_tokens_limit}",
                          "max_tokens_too_large", name)
    return value


def _stop(body: dict[str, Any]) -> list[str]:
    value = body.get("stop")
    if value is None:
        return []
    values = [value] if isinstance(value, str) else value
    if (not isinstance(values, list) or len(values) > MAX_STOP_STRINGS
            or not all(isinstance(s, str) and s for s in values)):
        raise bad_request(f"stop must be a non-empty string or a list of up to {MAX_STOP_STRINGS} of them",
                          "invalid_value", "stop")
    return values


def _user_content(content: Any, where: str) -> tuple[list[tuple[str, str]], list[str]]:
    """(image urls, texts) of a user message's content."""
    if isinstance(content, str):
        return [], [content]
    if not isinstance(content, list):
        raise bad_request("content must be a string or a list of content parts", "invalid_content", f"{where}.content")
    urls: list[tuple[str, str]] = []
    texts: list[str] = []
    for j, part in enumerate(content):
        param = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise bad_request("a text part needs a string `text`", "invalid_content", f"{param}.text")
            texts.append(part["text"])
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str) or not url:
                raise bad_request("an image_url part needs image_url.url", "invalid_content", f"{param}.image_url")
            urls.append((f"{param}.image_url", url))
        else:
            raise bad_request(f"unsupported content part type {kind!r}; use text and image_url",
                              "unsupported_content_type", f"{param}.type")
    return urls, texts


def parse_chat_request(body: Any, options: ServeOptions) -> ChatRequest:
    """Validate a Chat Completions body. One user message is answered (the last message);
    system and developer messages are allowed and ignored (PaddleOCR-VL has no system prompt);
    earlier user or assistant turns are refused, since the model answers single pages."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object", "invalid_json")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty list", "invalid_messages", "messages")
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ROLES:
            raise bad_request(f"unsupported role {role!r}; use one of {', '.join(ROLES)}", "unsupported_role",
                              f"messages[{i}].role")
        if role in ("user", "assistant") and i != len(messages) - 1:
            raise bad_request("only one user message is answered; send each page request on its own "
                              "(no conversation history)", "unsupported_conversation", f"messages[{i}]")
    if messages[-1]["role"] != "user":
        raise bad_request("the last message must be the user's", "invalid_messages", f"messages[{len(messages) - 1}]")
    where = f"messages[{len(messages) - 1}]"
    urls, texts = _user_content(messages[-1].get("content"), where)
    if not urls:
        raise bad_request("the user message has no image; add an image_url part", "no_image", f"{where}.content")
    if len(urls) > options.max_images:
        raise bad_request(f"{len(urls)} images in one request; this server allows at most {options.max_images}",
                          "too_many_images", f"{where}.content")
    if body.get("n") not in (None, 1):
        raise bad_request("n must be 1", "invalid_value", "n")
    if not isinstance(body.get("stream", False), bool):
        raise bad_request("stream must be true or false", "invalid_value", "stream")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise bad_request("seed must be an integer", "invalid_value", "seed")
    stream_options = body.get("stream_options") or {}
    return ChatRequest(
        image_urls=urls,
        text="\n".join(t.strip() for t in texts if t.strip()),
        max_tokens=_max_tokens(body, options),
        sampling=Sampling(_number(body, "temperature", 0, 2, 0.0), _number(body, "top_p", 1e-9, 1, 1.0), seed),
        stop=_stop(body),
        stream=bool(body.get("stream", False)),
        include_usage=isinstance(stream_options, dict) and bool(stream_options.get("include_usage")),
    )


# ---------------------------------------------------------------------------------------------
# Images: URL -> bytes -> checked RGB image
# ---------------------------------------------------------------------------------------------


def decode_data_url(url: str, param: str) -> bytes:
    header, comma, payload = url.partition(",")
    if not comma or not header.endswith(";base64"):
        raise bad_request("only base64 data URLs are accepted (data:image/png;base64,...)", "invalid_image_url", param)
    try:
        return base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise bad_request(f"invalid base64 in the data URL: {exc}", "invalid_base64", param) from exc


def read_allowed_file(url: str, root: Path | None, limit: int, param: str) -> bytes:
    """Bytes of a file:// URL below `root` (symlinks resolved first, so a link cannot lead out)."""
    if root is None:
        raise bad_request("file:// URLs are disabled on this server (start it with --allow-files DIR)",
                          "file_urls_disabled", param)
    parsed = urlparse(url)
    shown = unquote(parsed.path)
    if parsed.netloc not in ("", "localhost"):
        raise bad_request("file:// URLs must name a local path", "invalid_image_url", param)
    try:
        path = Path(shown).resolve(strict=True)
    except (OSError, RuntimeError):
        raise bad_request(f"no such file: {shown}", "file_not_found", param) from None
    if not path.is_relative_to(root.resolve()):
        raise ApiError(403, f"{shown} is outside the folder this server may read", code="file_not_allowed", param=param)
    if not path.is_file():  # a folder, or a device or pipe that could be read forever
        raise bad_request(f"{shown} is not a regular file", "file_not_found", param)
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise bad_request(f"cannot read {shown}: {exc.strerror or exc}", "file_unreadable", param) from exc
    if len(data) > limit:
        raise ApiError(413, f"the file is larger than {limit} bytes", code="image_too_large", param=param)
    return data


async def fetch_remote(url: str, options: ServeOptions, param: str) -> bytes:
    import httpx

    if not options.allow_remote_images:
        raise bad_request("http(s) image URLs are disabled on this server (start it with --allow-remote-images), "
                          "send the image as a data: URL", "remote_images_disabled", param)
    try:
        async with httpx.AsyncClient(follow_redirects=True, timeout=options.remote_timeout) as client:
            async with client.stream("GET", url) as response:
                if response.status_code != 200:
                    raise bad_request(f"fetching the image gave HTTP {response.status_code}", "image_fetch_failed", param)
                data = bytearray()
                async for chunk in response.aiter_bytes():
                    data += chunk
                    if len(data) > options.max_body_bytes:
                        raise ApiError(413, f"the image is larger than {options.max_body_bytes} bytes",
                                       code="image_too_large", param=param)
                return bytes(data)
    except httpx.HTTPError as exc:
        raise bad_request(f"cannot fetch the image: {exc}", "image_fetch_failed", param) from exc


def decode_image(data: bytes, max_pixels: int, param: str) -> Image.Image:
    """RGB image from encoded bytes. The pixel count is checked from the header before any pixel
    is decoded (decompression bombs); only the formats `scan` reads are tried (PIL's others
    include some that run external programs)."""
    Image.init()
    try:
        image = Image.open(io.BytesIO(data), formats=[f for f in sorted(IMAGE_FORMATS) if f in Image.OPEN])
    except Image.DecompressionBombError as exc:
        raise bad_request(f"image too large: {exc}", "image_too_large", param) from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise bad_request("the data is not a PNG, JPEG, TIFF, WebP, BMP or GIF image", "invalid_image", param) from exc
    if image.width * image.height > max_pixels:
        raise bad_request(f"image is {image.width}x{image.height} pixels; this server accepts at most {max_pixels}",
                          "image_too_large", param)
    try:
        image.load()
        return to_rgb(image)
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise bad_request(f"the image data is truncated or corrupt: {exc}", "invalid_image", param) from exc


async def load_image(url: str, param: str, options: ServeOptions) -> Image.Image:
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        data = decode_data_url(url, param)
    elif scheme == "file":
        data = await asyncio.to_thread(read_allowed_file, url, options.allow_files, options.max_body_bytes, param)
    elif scheme in ("http", "https"):
        data = await fetch_remote(url, options, param)
    else:
        raise bad_request("image URLs must be data:, file:// or http(s) URLs", "invalid_image_url", param)
    return await asyncio.to_thread(decode_image, data, options.max_image_pixels, param)


# ---------------------------------------------------------------------------------------------
# Metrics (Prometheus text format)
# ---------------------------------------------------------------------------------------------


class Histogram:
    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * len(self.buckets)
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.total += 1
        self.sum += value

    def lines(self, name: str) -> list[str]:
        out = [f'{name}_bucket{{le="{bound:g}"}} {count}' for bound, count in zip(self.buckets, self.counts)]
        return out + [f'{name}_bucket{{le="+Inf"}} {self.total}', f"{name}_sum {self.sum:.6f}", f"{name}_count {self.total}"]


class Metrics:
    """Counters and histograms, updated from the event loop and the worker thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[str, int] = {}  # by HTTP status
        self.pages = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.aborted = 0
        self.request_seconds = Histogram(LATENCY_BUCKETS)
        self.queue_seconds = Histogram(LATENCY_BUCKETS)
        self.page_seconds = Histogram(LATENCY_BUCKETS)
        self.batch_sizes = Histogram((1, 2, 4, 8, 16, 32, 64))

    def request_done(self, status: int, seconds: float) -> None:
        with self.lock:
            self.requests[str(status)] = self.requests.get(str(status), 0) + 1
            self.request_seconds.observe(seconds)

    def batch_started(self, size: int) -> None:
        with self.lock:
            self.batch_sizes.observe(size)

    def job_done(self, answer: Answer, queued: float) -> None:
        with self.lock:
            self.pages += len(answer.pages)
            self.prompt_tokens += answer.prompt_tokens
            self.completion_tokens += answer.completion_tokens
            self.aborted += answer.finish_reason == "abort"
            self.queue_seconds.observe(queued)
            for page in answer.pages:
                self.page_seconds.observe(page.seconds)

    def render(self, engine: "Engine") -> str:
        def block(name: str, kind: str, help: str, lines: list[str]) -> list[str]:
            return [f"# HELP {name} {help}", f"# TYPE {name} {kind}", *lines]

        with self.lock:
            out = [
                *block("ppvl_requests_total", "counter", "Chat completion requests by HTTP status.",
                       [f'ppvl_requests_total{{status="{s}"}} {n}' for s, n in sorted(self.requests.items())]),
                *block("ppvl_pages_total", "counter", "Images recognized.", [f"ppvl_pages_total {self.pages}"]),
                *block("ppvl_prompt_tokens_total", "counter", "Prompt tokens, image tokens included.",
                       [f"ppvl_prompt_tokens_total {self.prompt_tokens}"]),
                *block("ppvl_completion_tokens_total", "counter", "Generated tokens.",
                       [f"ppvl_completion_tokens_total {self.completion_tokens}"]),
                *block("ppvl_aborted_total", "counter", "Requests stopped early (client gone or timeout).",
                       [f"ppvl_aborted_total {self.aborted}"]),
                *block("ppvl_request_seconds", "histogram", "Time from arrival to the last byte.",
                       self.request_seconds.lines("ppvl_request_seconds")),
                *block("ppvl_queue_seconds", "histogram", "Time a request waited for the model.",
                       self.queue_seconds.lines("ppvl_queue_seconds")),
                *block("ppvl_page_seconds", "histogram", "Model time per image (vision, prefill, decoding).",
                       self.page_seconds.lines("ppvl_page_seconds")),
                *block("ppvl_batch_size", "histogram", "Requests the worker answered together (serve --parallel).",
                       self.batch_sizes.lines("ppvl_batch_size")),
            ]
        out += block("ppvl_queue_depth", "gauge", "Requests waiting for the model.", [f"ppvl_queue_depth {engine.waiting}"])
        out += block("ppvl_requests_in_progress", "gauge", "Requests admitted and not finished.",
                     [f"ppvl_requests_in_progress {engine.admitted}"])
        out += block("ppvl_model_loaded", "gauge", "1 once the model is loaded.",
                     [f"ppvl_model_loaded {int(engine.state == 'ready')}"])
        return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# The model worker
# ---------------------------------------------------------------------------------------------


@dataclass
class Job:
    request: ChatRequest
    images: list[PreparedImage]
    task: str
    prompt: str | None
    loop: asyncio.AbstractEventLoop
    deadline: float  # time.monotonic()
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    enqueued: float = field(default_factory=time.monotonic)
    started: float | None = None

    @property
    def question(self) -> Question:
        r = self.request
        return Question(self.images, self.task, self.prompt, r.max_tokens, r.sampling, r.stop, self.on_text)

    def emit(self, kind: str, value: Any = None) -> None:
        """From the worker thread: hand an event to the request's event loop."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.cancelled.set()

    def keep_going(self) -> bool:
        return not self.cancelled.is_set() and time.monotonic() < self.deadline

    def on_text(self, delta: str) -> bool:
        """From the worker, each new piece of text: streamed out; False stops a job whose client
        went away or whose deadline passed."""
        if not self.keep_going():
            return False
        if self.request.stream:
            self.emit("delta", delta)
        return True


class Engine:
    """Loads the recognizer and runs every job on one thread, first come first served. With a
    recognizer that decodes several pages together (`parallel`), the jobs waiting when the
    worker becomes free are answered together."""

    def __init__(self, loader: Callable[[], Recognizer], options: ServeOptions, metrics: Metrics) -> None:
        self.loader = loader
        self.options = options
        self.metrics = metrics
        self.rec: Recognizer | None = None
        self.state = "loading"  # loading | ready | failed
        self.load_error: Exception | None = None
        self.loaded_at = 0
        self.on_fatal: Callable[[], None] = lambda: None
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self.admitted = 0  # requests between admission and their end, the running one included
        self._mean_seconds = 1.0  # moving average of a job's model time, for Retry-After
        self._thread = threading.Thread(target=self._run, name="ppvl-model", daemon=True)

    @property
    def waiting(self) -> int:
        return self._jobs.qsize()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._jobs.put(None)
        self._thread.join()

    def admit(self) -> None:
        """Take a place in line or refuse with 503; each admit is paired with one release."""
        with self._lock:
            if self.admitted > self.options.queue_size:
                wait = max(1, math.ceil(self._mean_seconds * self.admitted))
                raise ApiError(503, f"the server is busy ({self.admitted} requests in line); retry later",
                               code="queue_full", type="server_error", headers={"Retry-After": str(wait)})
            self.admitted += 1

    def release(self) -> None:
        with self._lock:
            self.admitted -= 1

    def submit(self, job: Job) -> None:
        self._jobs.put(job)

    def _run(self) -> None:
        try:
            self.rec = self.loader()
            self.loaded_at = int(time.time())
            self.state = "ready"
            log.info("model %s loaded", self.rec.model_id)
        except Exception as exc:  # reported by run_server, which exits with its code
            self.state, self.load_error = "failed", exc
            self.on_fatal()
            return
        while (job := self._jobs.get()) is not None:
            self._work(self._take_more(job))
        self.rec.close()

    def _take_more(self, first: Job) -> list[Job]:
        """`first` and the jobs waiting behind it, up to as many as the recognizer decodes together."""
        jobs = [first]
        while len(jobs) < self.rec.decoder.n_seq:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:  # shutting down: leave the mark for the loop
                self._jobs.put(None)
                break
            jobs.append(job)
        return jobs

    def _work(self, jobs: list[Job]) -> None:
        live = []
        for job in jobs:
            if job.keep_going():
                job.started = time.monotonic()
                job.emit("start")
                live.append(job)
            else:  # gone or timed out while waiting
                job.emit("skipped")
        if not live:
            return
        self.metrics.batch_started(len(live))
        try:
            answers = answer_many(self.rec, [job.question for job in live])
        except Exception as exc:  # one bad batch must not stop the worker
            log.exception("recognition failed")
            for job in live:
                job.emit("error", exc)
            return
        now = time.monotonic()
        self._mean_seconds = 0.8 * self._mean_seconds + 0.2 * (now - live[0].started) / len(live)
        for job, answer in zip(live, answers):
            if isinstance(answer, DecoderError):
                job.emit("error", answer)
                continue
            self.metrics.job_done(answer, job.started - job.enqueued)
            job.emit("done", answer)


# ---------------------------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------------------------


def _chunk(rid: str, created: int, model: str, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}


def _sse(data: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


def _usage(answer: Answer) -> dict[str, int]:
    return {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens,
            "total_tokens": answer.prompt_tokens + answer.completion_tokens}


def _pages(answer: Answer) -> list[dict[str, Any]]:
    return [{"finish_reason": p.finish_reason, "prompt_tokens": p.prompt_tokens, "completion_tokens": p.output_tokens,
             "width": p.width, "height": p.height} for p in answer.pages]


def stopped_error(job: Job) -> ApiError:
    """Why a job ended early: its deadline passed, or else its client went away."""
    if time.monotonic() >= job.deadline:
        return ApiError(408, "the request took longer than this server's --timeout", code="timeout")
    return ApiError(499, "client closed the request", code="client_closed")


class RequestLog:
    """The one log line and the metrics of a request, written when it ends."""

    def __init__(self, metrics: Metrics) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self.started = time.monotonic()
        self.metrics = metrics
        self.images = 0
        self.outcome: tuple[int, Answer | None, str | None] = (0, None, None)  # of a stream, for done()

    def done(self, status: int, answer: Answer | None = None, error: str | None = None) -> None:
        seconds = time.monotonic() - self.started
        self.metrics.request_done(status, seconds)
        if answer is not None:
            request_log.info("%s %d images=%d prompt_tokens=%d completion_tokens=%d finish=%s %.2fs", self.id, status,
                             self.images, answer.prompt_tokens, answer.completion_tokens, answer.finish_reason, seconds)
        else:
            request_log.info("%s %d images=%d %.2fs %s", self.id, status, self.images, seconds, error or "")


def create_app(options: ServeOptions, loader: Callable[[], Recognizer]) -> "FastAPI":
    """The ASGI app; the model loads on a worker thread at startup (GET /health says when)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
    from starlette.exceptions import HTTPException

    metrics = Metrics()
    engine = Engine(loader, options, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        yield
        engine.stop()  # uvicorn has let the in-flight requests finish by now

    app = FastAPI(title="ppvl-ocr", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine

    def error_response(exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error_response(ApiError(exc.status_code, str(exc.detail), code="not_found" if exc.status_code == 404
                                       else "invalid_request", headers=dict(exc.headers or {})))

    def check_auth(request: Request) -> None:
        if options.api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), options.api_key.encode()):
            raise ApiError(401, "missing or wrong API key (send Authorization: Bearer KEY)", code="invalid_api_key",
                           type="authentication_error", headers={"WWW-Authenticate": "Bearer"})

    def check_ready() -> Recognizer:
        if engine.state != "ready" or engine.rec is None:
            raise ApiError(503, "the model is still loading", code="model_loading", type="server_error",
                           headers={"Retry-After": "5"})
        return engine.rec

    async def read_json(request: Request) -> Any:
        limit = options.max_body_bytes
        too_large = ApiError(413, f"request body larger than {limit} bytes", code="request_too_large")
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise too_large
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise too_large
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise bad_request(f"the request body is not valid JSON: {exc}", "invalid_json") from exc

    @app.get("/health")
    async def health() -> JSONResponse:
        if engine.state == "ready":
            return JSONResponse({"status": "ok", "model": engine.rec.model_id})
        return JSONResponse({"status": engine.state}, status_code=503)

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(engine), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        check_auth(request)
        rec = check_ready()
        return JSONResponse({"object": "list", "data": [
            {"id": rec.model_id, "object": "model", "created": engine.loaded_at, "owned_by": "ppvl-ocr"},
        ]})

    async def next_event(job: Job) -> tuple[str, Any]:
        """The job's next event: ("start", None), ("delta", text) or ("done", Answer). Raises
        ApiError when the job failed or stopped early; past its deadline the job is cancelled."""
        try:
            kind, value = await asyncio.wait_for(job.events.get(), max(0.0, job.deadline - time.monotonic()))
        except asyncio.TimeoutError:
            job.cancelled.set()
            raise stopped_error(job) from None
        if kind in ("skipped", "gone") or (kind == "done" and value.finish_reason == "abort"):
            raise stopped_error(job)
        if kind == "error":
            raise ApiError(500, f"recognition failed: {value}", code="recognition_failed", type="server_error")
        return kind, value

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        entry = RequestLog(metrics)
        admitted = handed_over = False
        try:
            check_auth(request)
            chat = parse_chat_request(await read_json(request), options)
            rec = check_ready()
            try:
                task, prompt = task_and_prompt(chat.text, rec.tasks)
            except ValueError as exc:
                raise bad_request(str(exc), "unsupported_task", "messages") from exc
            try:
                rec.check_prompt(prompt)
            except ValueError as exc:  # a special token's text in the prompt
                raise bad_request(str(exc), "invalid_content", "messages") from exc
            entry.images = len(chat.image_urls)
            engine.admit()
            admitted = True
            images = await asyncio.gather(*(load_image(url, param, options) for param, url in chat.image_urls))
            prepared = await asyncio.to_thread(lambda batch=images: [rec.prepare(im, task) for im in batch])
            del images  # the prepared pixels are all the worker needs
            job = Job(chat, prepared, task, prompt, asyncio.get_running_loop(), entry.started + options.request_timeout)
            engine.submit(job)
            disconnect = asyncio.create_task(_cancel_on_disconnect(request, job))
            try:
                kind, answer = await next_event(job)  # "start": from here on, errors come as SSE events
                if chat.stream:
                    handed_over = True
                    return EventStream(job, rec.model_id, entry)
                while kind != "done":
                    kind, answer = await next_event(job)
            finally:
                disconnect.cancel()
            entry.done(200, answer)
            return JSONResponse({
                "id": entry.id, "object": "chat.completion", "created": int(time.time()), "model": rec.model_id,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text}, "logprobs": None,
                             "finish_reason": answer.finish_reason}],
                "usage": _usage(answer),
                "ppvl": {"pages": _pages(answer)},
            })
        except ApiError as exc:
            entry.done(exc.status, error=f"{exc.code}: {exc.message}")
            return error_response(exc)
        except Exception as exc:  # a bug: answer 500 in the API's shape, keep serving
            log.exception("%s failed", entry.id)
            entry.done(500, error=str(exc))
            return error_response(ApiError(500, f"internal error: {exc}", code="internal_error", type="server_error"))
        finally:
            if admitted and not handed_over:
                engine.release()

    class EventStream(StreamingResponse):
        """The SSE response of a started job. However the response ends (answered, timed out,
        client gone, even before the first byte) the job is stopped, its place in line freed and
        the request logged."""

        def __init__(self, job: Job, model: str, entry: RequestLog) -> None:
            super().__init__(self.events(job, model, entry), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
            self.job, self.entry = job, entry
            entry.outcome = (499, None, "client closed the request")  # until the stream says otherwise

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            try:
                await super().__call__(scope, receive, send)
            finally:
                self.job.cancelled.set()  # no effect on a finished job; stops one whose client left
                engine.release()
                self.entry.done(*self.entry.outcome)

        @staticmethod
        async def events(job: Job, model: str, entry: RequestLog) -> AsyncIterator[bytes]:
            created = int(time.time())
            yield _sse(_chunk(entry.id, created, model, {"role": "assistant", "content": ""}, None))
            try:
                while (event := await next_event(job))[0] != "done":
                    yield _sse(_chunk(entry.id, created, model, {"content": event[1]}, None))
            except ApiError as exc:
                entry.outcome = (exc.status, None, f"{exc.code}: {exc.message}")
                yield _sse(exc.body())
            else:
                answer = event[1]
                entry.outcome = (200, answer, None)
                yield _sse({**_chunk(entry.id, created, model, {}, answer.finish_reason), "ppvl": {"pages": _pages(answer)}})
                if job.request.include_usage:
                    yield _sse({**_chunk(entry.id, created, model, {}, None), "choices": [], "usage": _usage(answer)})
            yield b"data: [DONE]\n\n"

    return app


async def _cancel_on_disconnect(request: "Request", job: Job) -> None:
    """When the client of a waiting request disconnects (the body is read, so the next ASGI
    message can only be that), cancel the job and wake its handler."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    job.cancelled.set()
    job.events.put_nowait(("gone", None))


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket, bound before the server starts so that a busy port is one clear error
    and port 0 picks a free one."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        raise PPVLError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    sock.set_inheritable(True)
    return sock


def run_server(options: ServeOptions, loader: Callable[[], Recognizer], host: str, port: int) -> None:
    """Serve until SIGINT/SIGTERM; in-flight requests finish first. A model that fails to load
    stops the server and its error is raised here."""
    try:
        import fastapi  # noqa: F401  (create_app imports it; checked here for the message)
        import uvicorn
    except ImportError as exc:
        raise PPVLError(f"ppvl-ocr serve needs {exc.name}: pip install 'ppvl-batch[serve]'") from exc

    sock = bind_socket(host, port)
    app = create_app(options, loader)
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on"))
    engine: Engine = app.state.engine
    engine.on_fatal = lambda: setattr(server, "should_exit", True)
    bound = sock.getsockname()
    log.info("listening on http://%s:%d (model loading)", host if ":" not in host else f"[{host}]", bound[1])
    server.run(sockets=[sock])
    if engine.load_error is not None:
        raise engine.load_error
