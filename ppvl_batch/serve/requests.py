"""A chat completion request: the server's options and error type, parsing and validating the
JSON body, and the checks done in the handler before a request joins a batch.

Everything that can fail for the client's reasons (the JSON, the task, the prompt, each image's
size and aspect ratio, the context) is checked here, so a bad request gets its 400 alone and never
fails inside the worker beside other requests (docs/design.md section 7).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from ..engine.answers import task_and_prompt
from ..engine.recognizer import DecoderError, Recognizer, Sampling
from ..engine.vision import PreparedImage

ROLES = ("system", "developer", "user", "assistant")
MAX_STOP_STRINGS = 4  # as OpenAI
MAX_TOP_LOGPROBS = 20  # as OpenAI
GREEDY_BELOW = 1e-6  # temperatures below this decode greedily


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
    logprobs: bool = False  # answer each token's log probability (OpenAI `logprobs`)
    top_logprobs: int = 0  # and this many most likely tokens of each step


def _number(body: dict[str, Any], name: str, low: float, high: float, default: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise bad_request(f"{name} must be a number from {low:g} to {high:g}", "invalid_value", name)
    return float(value)


def _temperature(body: dict[str, Any]) -> float:
    """Below GREEDY_BELOW, sampling is greedy decoding in all but name, and dividing the logits by
    such a temperature would overflow to inf (and NaN probabilities): it is decoded greedily."""
    temperature = _number(body, "temperature", 0, 2, 0.0)
    return 0.0 if temperature < GREEDY_BELOW else temperature


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


def _logprobs(body: dict[str, Any]) -> tuple[bool, int]:
    """(logprobs, top_logprobs): OpenAI's rules, top_logprobs an integer from 0 to 20 that needs
    logprobs true."""
    logprobs = body.get("logprobs")
    if logprobs is not None and not isinstance(logprobs, bool):
        raise bad_request("logprobs must be true or false", "invalid_value", "logprobs")
    top = body.get("top_logprobs")
    if top is None:
        return bool(logprobs), 0
    if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= MAX_TOP_LOGPROBS:
        raise bad_request(f"top_logprobs must be an integer from 0 to {MAX_TOP_LOGPROBS}", "invalid_value",
                          "top_logprobs")
    if not logprobs:
        raise bad_request("top_logprobs needs logprobs: true", "invalid_value", "top_logprobs")
    return True, top


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
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise bad_request("seed must be a non-negative integer", "invalid_value", "seed")
    stream_options = body.get("stream_options") or {}
    logprobs, top_logprobs = _logprobs(body)
    return ChatRequest(
        image_urls=urls,
        text="\n".join(t.strip() for t in texts if t.strip()),
        max_tokens=_max_tokens(body, options),
        sampling=Sampling(_temperature(body), _number(body, "top_p", 1e-9, 1, 1.0), seed),
        stop=_stop(body),
        stream=bool(body.get("stream", False)),
        include_usage=isinstance(stream_options, dict) and bool(stream_options.get("include_usage")),
        logprobs=logprobs,
        top_logprobs=top_logprobs,
    )


# ---------------------------------------------------------------------------------------------
# Validation: what can fail for the client's reasons, checked before a request joins a batch
# ---------------------------------------------------------------------------------------------


def request_task(rec: Recognizer, text: str) -> tuple[str, str | None]:
    """(task, free prompt) of a request's text, or 400 for a task this model does not have."""
    try:
        return task_and_prompt(text, rec.tasks)
    except ValueError as exc:
        raise bad_request(str(exc), "unsupported_task", "messages") from exc


def check_prompt(rec: Recognizer, task: str, prompt: str | None) -> int:
    """Tokens of the prompt text around the image, or 400 when the model cannot take this prompt.
    Runs in a handler thread beside the worker: the checkpoint's tokenizer is safe to share, and the ids
    are cached for the worker."""
    try:
        rec.check_prompt(prompt)
    except ValueError as exc:  # a special token's text in the prompt
        raise bad_request(str(exc), "invalid_content", "messages") from exc
    try:
        before, after = rec.prompt_ids(task, prompt)
    except (ValueError, DecoderError) as exc:
        raise bad_request(f"the prompt cannot be used: {exc}", "invalid_prompt", "messages") from exc
    return len(before) + len(after)


def prepare_images(
    rec: Recognizer, images: Sequence[Image.Image], task: str, params: Sequence[str]
) -> list[PreparedImage]:
    """smart_resize + patchify of each image (extreme aspect ratios are padded by the
    preprocessor), or 400 naming the image the preprocessor refuses."""
    prepared = []
    for image, param in zip(images, params):
        try:
            prepared.append(rec.prepare(image, task))
        except (ValueError, OSError) as exc:
            raise bad_request(f"the image cannot be prepared for the model: {exc}", "invalid_image", param) from exc
    return prepared


def check_context(
    rec: Recognizer, prepared: Sequence[PreparedImage], prompt_tokens: int, params: Sequence[str]
) -> None:
    """400 when an image and the prompt do not fit one request's share of the llama.cpp context
    (a long free prompt): the decoder would refuse the page only once it is in a batch."""
    capacity = rec.decoder.ctx_per_sequence
    for image, param in zip(prepared, params):
        needed = prompt_tokens + image.num_tokens + 1  # + at least one answer token
        if needed > capacity:
            raise bad_request(f"the image ({image.num_tokens} tokens) and the prompt ({prompt_tokens} tokens) need "
                              f"{needed} tokens of context; this server holds {capacity} per request (shorten the "
                              f"prompt or send a smaller image)", "context_length_exceeded", param)


def validate_request(rec: Recognizer, images: Sequence[Image.Image], task: str, prompt: str | None,
                     params: Sequence[str]) -> list[PreparedImage]:
    """All the preparation of one request that can fail for the client's reasons (prompt, image
    sizes and aspect ratios, context), done before it joins a batch: a bad request fails alone,
    with 400, and never inside the worker beside other requests."""
    prompt_tokens = check_prompt(rec, task, prompt)
    prepared = prepare_images(rec, images, task, params)
    check_context(rec, prepared, prompt_tokens, params)
    return prepared
