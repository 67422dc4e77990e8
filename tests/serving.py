"""Helpers for the tests that talk to `ppvl-ocr serve` (test_server, test_tokenizers): a server
in a thread of the test process, and the request and stream shapes of the OpenAI API."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import SimpleNamespace

import httpx
import uvicorn
from PIL import Image

from ppvl_batch.serve.app import bind_socket, create_app
from ppvl_batch.serve.requests import ServeOptions


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def user(*parts: dict) -> list[dict]:
    return [{"role": "user", "content": list(parts)}]


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def text_part(text: str) -> dict:
    return {"type": "text", "text": text}


@contextmanager
def running_server(loader: Callable[[], object], wait_ready: bool = True, **options) -> Iterator[SimpleNamespace]:
    """uvicorn with our app in a thread, on a free port; stopped as SIGTERM would stop it."""
    app = create_app(ServeOptions(**options), loader)
    sock = bind_socket("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    handle = SimpleNamespace(url=base, server=server, thread=thread, engine=app.state.engine)
    try:
        if wait_ready:
            wait_until(lambda: httpx.get(f"{base}/health").status_code == 200)
        yield handle
    finally:
        server.should_exit = True
        thread.join(60)
        assert not thread.is_alive()


def wait_until(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def post(base: str, body: object = None, *, content: bytes | None = None, headers: dict | None = None) -> httpx.Response:
    return httpx.post(f"{base}/v1/chat/completions", json=body if content is None else None, content=content,
                      headers=headers, timeout=60)


def sse_events(body: str) -> list[dict]:
    """The JSON events of a server-sent event stream, which must end with [DONE]."""
    lines = [line for line in body.splitlines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line[6:]) for line in lines[:-1]]


def sse_text(events: list[dict]) -> str:
    return "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
