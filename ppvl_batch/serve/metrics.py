"""The server's metrics (Prometheus text format, GET /metrics) and its one log line per request."""

import logging
import threading
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..engine.answers import Answer

if TYPE_CHECKING:
    from .worker import Engine

request_log = logging.getLogger("ppvl_batch.serve.requests")  # one line per request (serve --quiet: off)

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


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
        return out + [f'{name}_bucket{{le="+Inf"}} {self.total}', f"{name}_sum {self.sum:.6f}",
                      f"{name}_count {self.total}"]


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
        out += block("ppvl_queue_depth", "gauge", "Requests waiting for the model.",
                     [f"ppvl_queue_depth {engine.waiting}"])
        out += block("ppvl_requests_in_progress", "gauge", "Requests admitted and not finished.",
                     [f"ppvl_requests_in_progress {engine.admitted}"])
        out += block("ppvl_model_loaded", "gauge", "1 once the model is loaded.",
                     [f"ppvl_model_loaded {int(engine.state == 'ready')}"])
        return "\n".join(out) + "\n"


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
