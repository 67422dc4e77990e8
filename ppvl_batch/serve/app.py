"""`ppvl-ocr serve`: the HTTP side of the OpenAI Chat Completions compatible OCR server.

    POST /v1/chat/completions   one user message: images (data:, file://, http(s) URLs) + a task text
    GET  /v1/models             the loaded model
    GET  /health                200 once the model is loaded, 503 while loading
    GET  /metrics               Prometheus text format

A handler parses the request, fetches and decodes its images, and does in the thread pool all that
can fail for the client's reasons (`requests.validate_request`); then it hands a job to the one
model worker (`worker.Engine`) and answers with JSON or, for `stream`, server-sent events.

Finish reasons: the engine's `stop` (end of text or a stop string) is OpenAI `stop`; `length`
(max_tokens) and `repetition` (the loop guard cut a repeating tail) are both OpenAI `length`,
because in both cases the answer is incomplete. The exact reason of each image is in the
response's extra `ppvl.pages` field. With `logprobs: true` the answer carries each token's log
probability (and `top_logprobs` alternatives) in OpenAI's shape (responses.py).

This module imports FastAPI and uvicorn only inside the functions that need them: the routes are
plain Starlette routes (a handler takes the request), so no handler's annotations need FastAPI's
classes at import time.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import orjson

from ..engine.recognizer import Recognizer
from ..errors import PPVLError
from .images import load_image
from .metrics import Metrics, RequestLog
from .requests import (
    ApiError,
    ChatRequest,
    ServeOptions,
    bad_request,
    parse_chat_request,
    request_task,
    validate_request,
)
from .responses import answer_tokens, completion, logprobs_content
from .worker import Engine, Job

if TYPE_CHECKING:
    from fastapi import FastAPI, Request
    from starlette.responses import JSONResponse, Response

log = logging.getLogger("ppvl_batch.serve")


def create_app(options: ServeOptions, loader: Callable[[], Recognizer]) -> FastAPI:
    """The ASGI app; the model loads on a worker thread at startup (GET /health says when)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from starlette.exceptions import HTTPException

    api = Api(options, Engine(loader, options, Metrics()))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        api.engine.start()
        yield
        api.engine.stop()  # uvicorn has let the in-flight requests finish by now

    app = FastAPI(title="ppvl-ocr", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = api.engine
    app.add_exception_handler(ApiError, api.api_error)
    app.add_exception_handler(HTTPException, api.http_error)
    # Plain Starlette routes: each handler takes the request and returns a response.
    app.add_route("/health", api.health, methods=["GET"])
    app.add_route("/metrics", api.prometheus, methods=["GET"])
    app.add_route("/v1/models", api.models, methods=["GET"])
    app.add_route("/v1/chat/completions", api.chat_completions, methods=["POST"])
    return app


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    from fastapi.responses import JSONResponse

    return JSONResponse(body, status_code=status, headers=headers)


def error_response(exc: ApiError) -> JSONResponse:
    return json_response(exc.body(), exc.status, exc.headers)


class Api:
    """The routes over one model worker: checks (API key, model loaded, body size), then the
    answer, as JSON or as an event stream."""

    def __init__(self, options: ServeOptions, engine: Engine) -> None:
        self.options = options
        self.engine = engine
        self.metrics = engine.metrics

    async def api_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(exc)

    async def http_error(self, request: Request, exc: Exception) -> Response:
        status, detail = getattr(exc, "status_code", 500), getattr(exc, "detail", "")
        headers = getattr(exc, "headers", None)
        return error_response(ApiError(status, str(detail), code="not_found" if status == 404 else "invalid_request",
                                       headers=dict(headers or {})))

    def check_auth(self, request: Request) -> None:
        key = self.options.api_key
        if key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise ApiError(401, "missing or wrong API key (send Authorization: Bearer KEY)", code="invalid_api_key",
                           type="authentication_error", headers={"WWW-Authenticate": "Bearer"})

    def check_ready(self) -> Recognizer:
        if self.engine.state != "ready" or self.engine.rec is None:
            raise ApiError(503, "the model is still loading", code="model_loading", type="server_error",
                           headers={"Retry-After": "5"})
        return self.engine.rec

    async def read_json(self, request: Request) -> Any:
        limit = self.options.max_body_bytes
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

    async def health(self, request: Request) -> Response:
        if self.engine.state == "ready" and self.engine.rec is not None:
            return json_response({"status": "ok", "model": self.engine.rec.model_id})
        return json_response({"status": self.engine.state}, 503)

    async def prometheus(self, request: Request) -> Response:
        from fastapi.responses import PlainTextResponse

        return PlainTextResponse(self.metrics.render(self.engine), media_type="text/plain; version=0.0.4")

    async def models(self, request: Request) -> Response:
        self.check_auth(request)
        rec = self.check_ready()
        return json_response({"object": "list", "data": [
            {"id": rec.model_id, "object": "model", "created": self.engine.loaded_at, "owned_by": "ppvl-ocr"},
        ]})

    async def chat_completions(self, request: Request) -> Response:
        """Checks, then the answer; the request's place in line is freed when it ends (by the
        event stream, for a stream)."""
        entry = RequestLog(self.metrics)
        admitted = handed_over = False
        try:
            self.check_auth(request)
            chat = parse_chat_request(await self.read_json(request), self.options)
            rec = self.check_ready()
            task, prompt = request_task(rec, chat.text)
            entry.images = len(chat.image_urls)
            self.engine.admit()
            admitted = True
            job = await self.submit(chat, task, prompt, rec, entry)
            response = await self.answer(request, job, rec, entry)
            handed_over = chat.stream
            return response
        except ApiError as exc:
            entry.done(exc.status, error=f"{exc.code}: {exc.message}")
            return error_response(exc)
        except Exception as exc:  # a bug: answer 500 in the API's shape, keep serving
            log.exception("%s failed", entry.id)
            entry.done(500, error=str(exc))
            return error_response(ApiError(500, f"internal error: {exc}", code="internal_error", type="server_error"))
        finally:
            if admitted and not handed_over:
                self.engine.release()

    async def submit(self, chat: ChatRequest, task: str, prompt: str | None, rec: Recognizer, entry: RequestLog) -> Job:
        """The request's images fetched and decoded, all that can fail for the client's reasons
        checked (in a thread), and its job handed to the worker."""
        images = await asyncio.gather(*(load_image(url, param, self.options) for param, url in chat.image_urls))
        params = [param for param, _ in chat.image_urls]
        prepared = await asyncio.to_thread(validate_request, rec, images, task, prompt, params)
        del images  # the prepared pixels are all the worker needs
        job = Job(chat, prepared, task, prompt, asyncio.get_running_loop(),
                  entry.started + self.options.request_timeout)
        self.engine.submit(job)
        return job

    async def answer(self, request: Request, job: Job, rec: Recognizer, entry: RequestLog) -> Response:
        """Once the job has started, an event stream (from here on errors come as events), or
        the whole answer as JSON."""
        disconnect = asyncio.create_task(_cancel_on_disconnect(request, job))
        try:
            kind, answer = await job.next_event()
            if job.request.stream:
                from .stream import EventStream

                return EventStream(job, rec.model_id, entry, self.engine, rec.detokenizer)
            while kind != "done":
                kind, answer = await job.next_event()
        finally:
            disconnect.cancel()
        entry.done(200, answer)
        logprobs = logprobs_content(rec.detokenizer, answer_tokens(answer)) if job.request.logprobs else None
        return json_response(completion(entry.id, rec.model_id, answer, logprobs, int(time.time())))


async def _cancel_on_disconnect(request: Request, job: Job) -> None:
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
