"""Messages and progress on stderr: a tqdm bar when stderr is a terminal, otherwise a line every
--log-interval seconds; nothing with --quiet. stdout is left to the records."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from .options import Summary


class Progress:
    def __init__(self, *, quiet: bool, log_interval: float, stream: TextIO | None = None) -> None:
        self.quiet = quiet
        self.log_interval = log_interval
        self.stream = stream or sys.stderr
        self._bar: Any = None  # tqdm bar when stderr is a terminal
        self._started = self._last_log = time.monotonic()
        self._files_seen = 0

    def say(self, message: str) -> None:
        if not self.quiet:
            self._write(f"ppvl-ocr: {message}")

    def _write(self, line: str) -> None:
        if self._bar is not None:
            self._bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def start(self, started: float) -> None:
        self._started = self._last_log = started
        self._files_seen = 0
        if not self.quiet and self.stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=None, unit="page", file=self.stream, dynamic_ncols=True)

    def document(self, todo: int, files: int) -> None:
        """A document starts: `todo` more records to write (of `files` in the run)."""
        self._files_seen += 1
        if self._bar is not None:
            self._bar.total = (self._bar.total or 0) + todo
            self._bar.set_description_str(f"file {self._files_seen}/{files}", refresh=False)

    def page(self, s: Summary) -> None:
        done = s.pages_ok + s.pages_failed
        now = time.monotonic()
        rate = 60 * done / max(now - self._started, 1e-9)
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix_str(f"{rate:.1f} pages/min, {s.pages_failed} failed", refresh=False)
        elif now - self._last_log >= self.log_interval:
            self._last_log = now
            self.say(f"{done} pages ({s.pages_failed} failed, {s.pages_done_before} already done), "
                     f"{rate:.1f} pages/min")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
