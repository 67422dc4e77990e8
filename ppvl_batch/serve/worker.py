"""The model worker: one thread runs all model work, fed by a bounded first-come queue.

The recognizer holds one llama.cpp context and is not thread-safe, so the request handlers
(asyncio) hand each validated request to this worker as a `Job`; the worker sends text deltas back
to the handler's asyncio queue with `loop.call_soon_threadsafe`. A job whose client went away or
whose deadline passed is aborted at its next token, so the worker moves on. With a recognizer
loaded with `parallel=N`, the worker takes up to N waiting jobs at once and decodes them together
(`answers.answer_many`); otherwise one at a time.

Admission is bounded: at most `queue_size` requests wait behind the running one (503 with
Retry-After beyond that), which also bounds the memory held by decoded images.
"""

import asyncio
import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..engine.answers import Answer, Question, answer_many
from ..engine.generate import TokenChoice
from ..engine.recognizer import Recognizer
from ..engine.vision import PreparedImage
from .metrics import Metrics
from .requests import ApiError, ChatRequest, ServeOptions

log = logging.getLogger("ppvl_batch.serve")


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
    streamed: bool = False  # some text has gone to the client
    # Streamed with logprobs: the tokens generated since the last delta, sent with the next one.
    tokens: list[TokenChoice] = field(default_factory=list)

    @property
    def question(self) -> Question:
        r = self.request
        on_token = self.tokens.append if r.stream and r.logprobs else None
        return Question(self.images, self.task, self.prompt, r.max_tokens, r.sampling, r.stop, self.on_text,
                        top_logprobs=r.top_logprobs, on_token=on_token)

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
            self.streamed = True
            tokens, self.tokens = self.tokens, []
            self.emit("delta", (delta, tokens))
        return True

    async def next_event(self) -> tuple[str, Any]:
        """On the handler's loop: the next event, ("start", None), ("delta", (text, tokens)) or
        ("done", Answer). Raises ApiError when the job failed or stopped early; past its deadline
        the job is cancelled."""
        try:
            kind, value = await asyncio.wait_for(self.events.get(), max(0.0, self.deadline - time.monotonic()))
        except TimeoutError:
            self.cancelled.set()
            raise self.stopped_error() from None
        if kind in ("skipped", "gone") or (kind == "done" and value.finish_reason == "abort"):
            raise self.stopped_error()
        if kind == "error":
            raise ApiError(500, f"recognition failed: {value}", code="recognition_failed", type="server_error")
        return kind, value

    def stopped_error(self) -> ApiError:
        """Why the job ended early: its deadline passed, or else its client went away."""
        if time.monotonic() >= self.deadline:
            return ApiError(408, "the request took longer than this server's --timeout", code="timeout")
        return ApiError(499, "client closed the request", code="client_closed")


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

    @property
    def _rec(self) -> Recognizer:
        assert self.rec is not None  # _run loads it before it takes a job
        return self.rec

    def _take_more(self, first: Job) -> list[Job]:
        """`first` and the jobs waiting behind it, up to as many as the recognizer decodes together."""
        jobs = [first]
        while len(jobs) < self._rec.decoder.n_seq:
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
        live: list[Job] = []
        starts: list[float] = []  # the live jobs' `started`, known to be set
        for job in jobs:
            if job.keep_going():
                job.started = start = time.monotonic()
                job.emit("start")
                live.append(job)
                starts.append(start)
            else:  # gone or timed out while waiting
                job.emit("skipped")
        if not live:
            return
        self.metrics.batch_started(len(live))
        answers = self._answer(live)
        now = time.monotonic()
        self._mean_seconds = 0.8 * self._mean_seconds + 0.2 * (now - starts[0]) / len(live)
        for job, start, answer in zip(live, starts, answers):
            if isinstance(answer, Exception):
                log.error("recognition failed: %s", answer)
                job.emit("error", answer)
                continue
            self.metrics.job_done(answer, start - job.enqueued)
            job.emit("done", answer)

    def _answer(self, jobs: list[Job]) -> list[Answer | Exception]:
        """Answers (or errors) of jobs decoded together. answer_many keeps what fails for one job
        to that job; what it raises came from a decoding step they all shared. Then each job that
        has sent no text yet is answered again alone, so that only the one that breaks a step
        fails; a streamed job that has already sent text cannot start over and fails too."""
        for job in jobs:
            job.tokens.clear()  # a job answered again alone starts over
        try:
            return answer_many(self._rec, [job.question for job in jobs])
        except Exception as exc:  # must not stop the worker
            log.exception("recognition of %d requests together failed", len(jobs))
            if len(jobs) == 1:
                return [exc]
            return [exc if job.streamed else self._answer([job])[0] for job in jobs]
