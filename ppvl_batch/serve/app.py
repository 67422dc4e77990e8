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
response's extra `ppvl.pages` field.

This module imports FastAPI and uvicorn only inside the functions that need them. (No
`from __future__ import annotations` here: FastAPI must see the real `Request` class of the
handlers defined inside `create_app`.)
"""

import asyncio
import hmac
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import orjson

from ..engine.answers import Answer
from ..engine.recognizer import Recognizer
from ..errors import PPVLError
from .images import load_image
from .metrics import Metrics, RequestLog
from .requests import ApiError, ServeOptions, bad_request, parse_chat_request, request_task, validate_request
from .worker import Engine, Job

if TYPE_CHECKING:
    from fastapi import FastAPI, Request

log = logging.getLogger("ppvl_batch.serve")


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
        except TimeoutError:
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
            task, prompt = request_task(rec, chat.text)
            entry.images = len(chat.image_urls)
            engine.admit()
            admitted = True
            images = await asyncio.gather(*(load_image(url, param, options) for param, url in chat.image_urls))
            params = [param for param, _ in chat.image_urls]
            prepared = await asyncio.to_thread(validate_request, rec, images, task, prompt, params)
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
