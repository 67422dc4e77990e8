"""`ppvl-ocr ask`: send page images to an OCR server (`ppvl-ocr serve`, or any OpenAI Chat
Completions server with a vision model) and get the answer; or run a bundle locally, through
the same answering code as the server (`answers`), which this module imports without the server.

Every input is opened as `scan` opens it (any image format, EXIF rotation, one page of a PDF or
multi-page TIFF) and sent as a lossless PNG data URL, so the server sees exactly the pixels a local
run would.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from ..documents.pages import PageError, open_document
from ..errors import PPVLError, UsageError

if TYPE_CHECKING:
    from ..engine.recognizer import Recognizer

# PDF pages are rendered to about this many pixels: the most any PaddleOCR-VL version uses (v1), so
# the server's model only ever scales down. A fixed size (not the model's) keeps a page's pixels
# the same whether it is read locally or sent to a server.
RENDER_MAX_PIXELS = 2822400


@dataclass
class Reply:
    text: str
    finish_reason: str  # stop | length
    prompt_tokens: int
    completion_tokens: int


def load_page(path: Path, page: int = 1, max_pixels: int = RENDER_MAX_PIXELS) -> Image.Image:
    """Page `page` (1-based) of an image, PDF or TIFF file, as RGB, a PDF page rendered to about
    `max_pixels` (ask --layout: the recognizer's, as scan renders). Errors as `scan` words them."""
    try:
        with open_document(path, max_pixels=max_pixels) as document:
            if page > document.page_count:
                raise UsageError(f"{path}: --page {page}, but it has {document.page_count} page(s)")
            return document.render(page)
    except PageError as exc:
        raise PPVLError(f"{path}: {exc.type}: {exc.message}") from exc


def png_data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def chat_body(images: Sequence[Image.Image], text: str, max_tokens: int, stream: bool) -> dict[str, Any]:
    """A Chat Completions request: the images, then the task text (PaddleOCR-VL's order)."""
    content: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": png_data_url(im)}} for im in images]
    content.append({"type": "text", "text": text})
    body: dict[str, Any] = {"model": "ppvl-ocr", "messages": [{"role": "user", "content": content}],
                            "max_tokens": max_tokens, "temperature": 0, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


def completions_url(server: str) -> str:
    """The endpoint for a server given as http://host:port or http://host:port/v1."""
    base = server.rstrip("/")
    return f"{base}/chat/completions" if base.endswith("/v1") else f"{base}/v1/chat/completions"


def _server_error(server: str, status: int, payload: Any) -> PPVLError:
    error = payload.get("error") if isinstance(payload, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    message = message or (json.dumps(payload)[:200] if payload is not None else "no details")
    if status == 401:
        return UsageError(f"{server} refused the API key: {message} (give --api-key or PPVL_API_KEY)")
    return PPVLError(f"{server} answered HTTP {status}: {message}")


def ask_server(
    server: str,
    images: Sequence[Image.Image],
    text: str,
    *,
    api_key: str | None = None,
    max_tokens: int = 1024,
    stream: bool = False,
    timeout: float = 600.0,
    on_text: Callable[[str], None] | None = None,
) -> Reply:
    """The server's answer; with `stream`, `on_text` gets each piece of text as it arrives."""
    try:
        import httpx
    except ImportError as exc:
        raise PPVLError("asking a server needs httpx: pip install 'ppvl-batch[serve]' "
                        "(or leave out --server to run locally)") from exc

    url = completions_url(server)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    body = chat_body(images, text, max_tokens, stream)
    try:
        with httpx.Client(timeout=httpx.Timeout(timeout, connect=10.0)) as client:
            if not stream:
                response = client.post(url, json=body, headers=headers)
                if response.status_code != 200:
                    raise _server_error(server, response.status_code, _json_or_none(response.text))
                data = response.json()
                choice, usage = data["choices"][0], data.get("usage") or {}
                return Reply(choice["message"]["content"] or "", choice["finish_reason"],
                             usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))
            with client.stream("POST", url, json=body, headers=headers) as response:
                if response.status_code != 200:
                    raise _server_error(server, response.status_code, _json_or_none(response.read().decode()))
                return _read_stream(server, response.iter_lines(), on_text)
    except httpx.ConnectError as exc:
        raise PPVLError(f"cannot reach the server at {server} ({exc}); start one with `ppvl-ocr serve --model "
                        f"BUNDLE`, or leave out --server (and PPVL_SERVER) to run the model locally") from exc
    except httpx.TimeoutException as exc:
        raise PPVLError(f"{server} did not answer within --timeout {timeout:g} s") from exc
    except httpx.HTTPError as exc:
        raise PPVLError(f"{server}: {exc}") from exc
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise PPVLError(f"{server} sent an answer that is not a chat completion ({exc})") from exc


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _read_stream(server: str, lines: Any, on_text: Callable[[str], None] | None) -> Reply:
    """Server-sent events of a streamed completion -> Reply."""
    parts: list[str] = []
    finish = None
    usage: dict[str, Any] = {}
    for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            break
        event = json.loads(data)
        if "error" in event:
            raise _server_error(server, 200, event)
        usage = event.get("usage") or usage
        for choice in event.get("choices") or []:
            delta = (choice.get("delta") or {}).get("content")
            if delta:
                parts.append(delta)
                if on_text is not None:
                    on_text(delta)
            finish = choice.get("finish_reason") or finish
    if finish is None:
        raise PPVLError(f"{server} ended the stream before the answer was complete")
    return Reply("".join(parts), finish, usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))


def ask_local(
    rec: Recognizer,
    images: Sequence[Image.Image],
    text: str,
    *,
    max_tokens: int = 1024,
    on_text: Callable[[str], None] | None = None,
) -> Reply:
    """The same answer as the server gives, from a Recognizer in this process."""
    from ..engine.answers import Question, answer_images, task_and_prompt

    try:
        task, prompt = task_and_prompt(text, rec.tasks)
        rec.check_prompt(prompt)
    except ValueError as exc:
        raise UsageError(f"--text: {exc}") from exc
    answer = answer_images(rec, Question(images, task, prompt, max_tokens, on_text=on_text))
    return Reply(answer.text, answer.finish_reason, answer.prompt_tokens, answer.completion_tokens)
