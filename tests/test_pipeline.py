"""Issue 19's one page pipeline: document outputs written from the journal (every recorded page,
newest record per page, whatever runs recorded them), one record builder, and the defects the
review found in the decoding loop and the summary."""

from __future__ import annotations

import ast
import signal
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import orjson
from makedocs import make_pdf
from scanning import BOOK, PPVL, SMALL, SlowModel, records, scan, wait_for_lines

from ppvl_batch.batch.local import Scan
from ppvl_batch.batch.options import ScanOptions
from ppvl_batch.batch.outputs import DocumentOutputs, Output
from ppvl_batch.batch.records import RunFields, build_record
from ppvl_batch.batch.task import PageTask
from ppvl_batch.engine.generate import DecodeRequest, Generation, generate_many
from ppvl_batch.engine.llama import DecoderError

PACKAGE = Path(__file__).resolve().parents[1] / "ppvl_batch"


class CountingModel(SlowModel):
    """A stand-in recognizer that counts the pages it decodes."""

    def __init__(self, **recognizer_options) -> None:
        self.decoded = 0

    def prepare(self, image, task):
        return image.size

    def decode(self, encoded, task, prompt, max_new_tokens):
        self.decoded += 1
        return super().decode(encoded, task, prompt, max_new_tokens)


# ---------------------------------------------------------------------------- document outputs


def test_pages_over_several_runs_and_a_kill_give_one_runs_markdown(in_tmp: Path, fast_model: Path) -> None:
    """--pages 1, then --pages 2-3, then a run killed with -9 and resumed: the Markdown of every
    document equals that of one uninterrupted run (before, a run's Markdown held only its own pages)."""
    make_pdf(in_tmp / "docs/a.pdf", pages=3)
    make_pdf(in_tmp / "docs/book.pdf", pages=BOOK)
    args = ["-o", "out.jsonl", "--markdown", "md", "--batch-size", "1"]
    assert scan("docs/a.pdf", "--pages", "1", *args, model=fast_model).exit_code == 0
    assert Path("md/docs/a.pdf.md").read_text(encoding="utf-8").count("<!-- page ") == 1  # what is recorded so far
    assert scan("docs/a.pdf", "--pages", "2-3", *args, model=fast_model).exit_code == 0
    assert Path("md/docs/a.pdf.md").read_text(encoding="utf-8").count("<!-- page ") == 3

    proc = subprocess.Popen([PPVL, "scan", "docs", *args, "--model", str(fast_model), *SMALL],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_lines(in_tmp / "out.jsonl", 5, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not Path("md/docs/book.pdf.md").exists()  # killed before its last page
    assert scan("docs", *args, model=fast_model).exit_code == 0

    assert scan("docs", "-o", "calm.jsonl", "--markdown", "calm", "--batch-size", "1", model=fast_model).exit_code == 0
    for name in ("a.pdf.md", "book.pdf.md"):
        assert Path("md/docs", name).read_text(encoding="utf-8") == Path("calm/docs", name).read_text(encoding="utf-8")
    assert Path("md/docs/book.pdf.md").read_text(encoding="utf-8").count("<!-- page ") == BOOK


def test_markdown_added_to_a_finished_run_reads_no_page(in_tmp: Path) -> None:
    make_pdf(in_tmp / "a.pdf", pages=3)
    make_pdf(in_tmp / "b.pdf", pages=2, label="b")
    model = CountingModel()
    first = Scan(ScanOptions(inputs=["a.pdf", "b.pdf"], output="o.jsonl", dpi=20, quiet=True), lambda **_: model).run()
    assert first.exit_code == 0 and model.decoded == 5 and not Path("md").exists()

    later = Scan(ScanOptions(inputs=["a.pdf", "b.pdf"], output="o.jsonl", dpi=20, quiet=True, markdown=Path("md")),
                 lambda **_: model).run()
    assert later.exit_code == 0 and model.decoded == 5  # no page read again
    assert (later.pages_done_before, later.outputs_written) == (5, 2)
    calm = Scan(ScanOptions(inputs=["a.pdf", "b.pdf"], output="c.jsonl", dpi=20, quiet=True, markdown=Path("cm")),
                lambda **_: CountingModel()).run()
    assert calm.exit_code == 0
    for name in ("a.pdf.md", "b.pdf.md"):
        assert Path("md", name).read_text(encoding="utf-8") == Path("cm", name).read_text(encoding="utf-8")


def test_a_page_read_again_rewrites_its_documents_markdown_with_the_newest_record(in_tmp: Path) -> None:
    make_pdf(in_tmp / "a.pdf", pages=2)
    model = CountingModel()
    options = ScanOptions(inputs=["a.pdf"], output="o.jsonl", dpi=20, quiet=True, markdown=Path("md"),
                          retry_failed=True)
    assert Scan(options, lambda **_: model).run().exit_code == 0
    # Page 2 failed in an "earlier run" (its record is replaced by an error), then is read again.
    recs = records("o.jsonl")
    failed = {**recs[1], "status": "error", "text": None, "error": {"type": "recognition", "message": "oops"}}
    with open("o.jsonl", "ab") as f:
        f.write(orjson.dumps(failed) + b"\n")
    plain = ScanOptions(inputs=["a.pdf"], output="o.jsonl", dpi=20, quiet=True)
    assert Scan(plain, lambda **_: model).run().exit_code == 0
    assert "recognition: oops" not in Path("md/a.pdf.md").read_text(encoding="utf-8")  # no new record: the file stays
    summary = Scan(options, lambda **_: model).run()
    assert summary.exit_code == 0 and model.decoded == 3
    text = Path("md/a.pdf.md").read_text(encoding="utf-8")
    assert "oops" not in text and text.count("<!-- page ") == 2


class FailingWriter:
    suffix = ".txt"
    partial = True

    def __init__(self) -> None:
        self.written: list[str] = []

    def write(self, records: list[dict], source: Path, target: Path) -> None:
        if source.name == "a.pdf":
            raise ValueError("cannot write this one back")
        self.written.append(source.name)


def test_a_writer_that_fails_for_one_document_leaves_the_others(in_tmp: Path) -> None:
    from ppvl_batch.batch.options import Summary
    from ppvl_batch.batch.plan import DocStart
    from ppvl_batch.batch.progress import Progress
    from ppvl_batch.documents.inputs import InputFile

    writer, summary = FailingWriter(), Summary()
    outputs = DocumentOutputs([Output(writer, Path("out"), "--text")], in_tmp, None, summary,  # no journal: stdout
                              Progress(quiet=True, log_interval=60))
    for name in ("a.pdf", "b.pdf"):
        start = DocStart(InputFile(name, in_tmp / name), "sha", 1, [1], {1: f"key-{name}"}, 1)
        outputs.finish(start, {1: {"page": 1, "status": "ok", "text": "t"}})
    assert writer.written == ["b.pdf"] and summary.outputs_written == 1
    [line] = summary.output_errors
    assert line.startswith("a.pdf: --text ") and line.endswith("not written: cannot write this one back")


# ---------------------------------------------------------------------------- one record builder


def test_one_function_builds_records() -> None:
    """Every dict literal with a record's `status` and `key` is in records.build_record."""
    builders = []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    keys = {k.value for k in getattr(node, "keys", []) if isinstance(k, ast.Constant)}
                    if isinstance(node, ast.Dict) and {"status", "key"} <= keys:
                        builders.append(f"{path.relative_to(PACKAGE)}:{fn.name}")
    assert sorted(set(builders)) == ["batch/records.py:build_record"]


def test_records_carry_the_results_warnings_and_optional_fields() -> None:
    task = PageTask("k", "/abs/a.pdf", "a.pdf", 2, 3, "ab")
    result = SimpleNamespace(text="t", width=56, height=28, finish_reason="length", image_tokens=2, output_tokens=3,
                             seconds=0.5, warnings=["answer cut at 3 of 8 new tokens"], confidence=0.9, lines=None)
    record = build_record(RunFields("ocr", None, "m"), task, result, seconds=0.25, warnings=("repaired: x",),
                          size_pt=(595.2756, 841.8898))
    assert record["warnings"] == ["repaired: x", "answer cut at 3 of 8 new tokens"]
    assert record["confidence"] == 0.9 and "lines" not in record
    assert record["page_size_pt"] == [595.276, 841.89] and record["seconds"] == 0.75


def test_pdf_records_have_their_page_size_in_points(in_tmp: Path) -> None:
    make_pdf(in_tmp / "a.pdf", pages=1)
    options = ScanOptions(inputs=["a.pdf"], output="o.jsonl", dpi=20, quiet=True)
    assert Scan(options, lambda **_: CountingModel()).run().exit_code == 0
    [record] = records("o.jsonl")
    assert record["page_size_pt"] == [144.0, 108.0]  # makedocs: a 2 x 1.5 inch page


# ---------------------------------------------------------------------------- decoding loop


class StepDecoder:
    """A stand-in TextDecoder: prompts of 3 tokens, token 0 forever, step number `fail` fails."""

    def __init__(self, n_seq: int = 2, ctx: int = 100, fail: int | None = None) -> None:
        self.n_seq, self.ctx_per_sequence, self.fail, self.steps = n_seq, ctx, fail, 0

    def prefill(self, before, image, after, seq):
        return 3, np.zeros(4, dtype=np.float32)

    def decode_step(self, tokens, positions, seqs):
        self.steps += 1
        if self.steps == self.fail:
            raise DecoderError("llama_decode failed (-3)")

    def logits(self, row: int = -1):
        return np.zeros(4, dtype=np.float32)

    def is_eog(self, token: int) -> bool:
        return False


def _request(max_new_tokens: int = 4) -> DecodeRequest:
    return DecodeRequest([1], SimpleNamespace(rows=1, cols=1), [2], max_new_tokens)


def test_a_failed_decode_step_fails_only_its_pages() -> None:
    results = dict(generate_many(StepDecoder(n_seq=2, fail=2), [_request() for _ in range(4)]))
    assert [type(results[i]).__name__ for i in range(4)] == ["DecoderError", "DecoderError", "Generation", "Generation"]
    assert "llama_decode failed" in str(results[0])
    assert all(len(results[i].token_ids) == 4 for i in (2, 3))


def test_an_answer_the_context_cuts_short_says_so() -> None:
    [(_, cut)] = generate_many(StepDecoder(n_seq=1, ctx=6), [_request(8)])  # 3 prompt tokens, room for 3
    assert isinstance(cut, Generation) and (len(cut.token_ids), cut.finish_reason) == (3, "length")
    assert cut.warnings and "answer cut at 3 of 8 new tokens" in cut.warnings[0]
    [(_, whole)] = generate_many(StepDecoder(n_seq=1, ctx=100), [_request(8)])
    assert (len(whole.token_ids), whole.warnings) == (8, [])


# ---------------------------------------------------------------------------- summary


def test_the_summary_gives_no_rate_when_no_page_was_read(in_tmp: Path) -> None:
    for name in ("x.pdf", "y.pdf"):
        (in_tmp / name).write_bytes(b"%PDF-1.7\n" + b"\x00garbage" * 64)
    summary = Scan(ScanOptions(inputs=["x.pdf", "y.pdf"], output="o.jsonl", quiet=True), CountingModel).run()
    assert summary.files_failed == 2 and summary.pages_per_minute == 0
    assert "pages/min" not in summary.line() and summary.line().endswith("; no page read by the model, 0s")
