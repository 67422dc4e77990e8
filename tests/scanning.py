"""Helpers for the tests that run `ppvl-ocr scan` (test_scan, test_scan_robust, test_bundle_id):
the in-process command and its records, and a stand-in recognizer. Fixtures are in conftest.py."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import orjson
from click.testing import CliRunner

from ppvl_batch.cli import main

PPVL = str(Path(sys.executable).with_name("ppvl-ocr"))
BOOK = 48  # pages in the interrupted book
# --text-layer ignore: these tests are about the model's path; test_scan_text_layer.py tests the text layer
SMALL = ["--min-pixels", "784", "--max-pixels", "3136", "--max-new-tokens", "4", "--text-layer", "ignore"]


def scan(*args: str, model: Path | None = None, input: bytes | None = None, env: dict | None = None):
    """Run `ppvl-ocr scan` in process; returns click's Result (exit_code, stdout, stderr)."""
    extra = ["--model", str(model)] if model else []
    return CliRunner().invoke(main, ["scan", *args, *extra, *SMALL], input=input, env=env, catch_exceptions=False)


def records(path: Path | str) -> list[dict]:
    return [orjson.loads(line) for line in Path(path).read_bytes().splitlines()]


class SlowModel:
    """Stands in for the recognizer: each prepared page holds 1 MB, decoding takes a moment, so
    a rasterizer that is not held back would pile pages up in memory."""

    model_id = "fake:F32"
    max_pixels = 3136
    tasks = ("ocr",)

    def __init__(self, **recognizer_options) -> None:  # what the page strategy asks for (parallel)
        pass

    def prepare(self, image, task):
        return bytearray(1 << 20)

    def encode(self, prepared, task):
        return [None] * len(prepared)

    def decode(self, encoded, task, prompt, max_new_tokens):
        time.sleep(0.002)
        return SimpleNamespace(text="x", finish_reason="stop", image_tokens=4, output_tokens=1, width=56, height=56, seconds=0.002,
                               token_ids=[7], token_probs=[0.9], warnings=[])

    # The scan pipeline's interface to the recognizer: requests, then results as pages finish
    # (an exception in place of the result for a page that failed).
    def request(self, encoded, task, prompt, max_new_tokens):
        return (task, prompt, max_new_tokens)

    def decode_many(self, jobs):
        for index, (encoded, (task, prompt, max_new_tokens)) in enumerate(jobs):
            try:
                yield index, self.decode(encoded, task, prompt, max_new_tokens)
            except RuntimeError as exc:
                yield index, exc

    def close(self) -> None:
        pass

def wait_for_lines(path: Path, count: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_bytes().count(b"\n") >= count:
            return
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    raise AssertionError(f"{path} did not reach {count} lines")
