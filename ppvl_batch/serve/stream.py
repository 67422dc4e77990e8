"""The server-sent event response of a streamed chat completion (imported by app.py once a
streamed request has started, so that importing app.py needs no starlette)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from starlette.responses import StreamingResponse

from ..engine.detokenize import Detokenizer
from ..engine.generate import TokenChoice
from .metrics import RequestLog
from .requests import ApiError
from .responses import answer_tokens, chunk, logprobs_content, pages, sse, usage
from .worker import Engine, Job


class EventStream(StreamingResponse):
    """The SSE response of a started job: a first chunk with the role, one per text delta (with
    its tokens' logprobs when asked), the last with the finish reason (and any tokens not sent
    yet), usage when asked, then [DONE]. However the response ends (answered, timed out, client
    gone, even before the first byte) the job is stopped, its place in line freed and the request
    logged."""

    def __init__(self, job: Job, model: str, entry: RequestLog, engine: Engine, detokenizer: Detokenizer) -> None:
        self.job, self.entry, self.engine = job, entry, engine
        self.model, self.detokenizer = model, detokenizer
        self.created = int(time.time())
        super().__init__(self.events(), media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        entry.outcome = (499, None, "client closed the request")  # until the stream says otherwise

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.job.cancelled.set()  # no effect on a finished job; stops one whose client left
            self.engine.release()
            self.entry.done(*self.entry.outcome)

    def _chunk(
        self, delta: dict[str, Any], finish: str | None = None, tokens: Sequence[TokenChoice] = ()
    ) -> dict[str, Any]:
        logprobs = logprobs_content(self.detokenizer, tokens) if self.job.request.logprobs else None
        return chunk(self.entry.id, self.created, self.model, delta, finish, logprobs)

    async def events(self) -> AsyncIterator[bytes]:
        job, entry = self.job, self.entry
        yield sse(self._chunk({"role": "assistant", "content": ""}))
        sent = 0  # tokens whose logprobs have gone out
        try:
            while (event := await job.next_event())[0] != "done":
                text, tokens = event[1]
                sent += len(tokens)
                yield sse(self._chunk({"content": text}, tokens=tokens))
        except ApiError as exc:
            entry.outcome = (exc.status, None, f"{exc.code}: {exc.message}")
            yield sse(exc.body())
        else:
            answer = event[1]
            entry.outcome = (200, answer, None)
            last = self._chunk({}, answer.finish_reason, answer_tokens(answer)[sent:])
            yield sse({**last, "ppvl": {"pages": pages(answer)}})
            if job.request.include_usage:
                yield sse({**chunk(entry.id, self.created, self.model, {}, None), "choices": [],
                           "usage": usage(answer)})
        yield b"data: [DONE]\n\n"
