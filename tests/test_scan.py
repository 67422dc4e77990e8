"""`ppvl-ocr scan` end to end on the tiny random-weight bundle: inputs, records, Markdown, resume,
crashes, signals, the lock, errors and exit codes, config/env, memory over a long PDF.

Random weights give gibberish text but real records. Pages are tiny (a few image tokens) and
answers short, so the whole file runs in about a minute on two cores. In-process runs share one
loaded recognizer per setting (see `fast_model`); runs that must be real processes (kill -9,
SIGTERM, RSS) start the installed `ppvl-ocr`.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from makedocs import make_pdf, make_zero_page_pdf, shapes_image, text_image
from scanning import BOOK, PPVL, SMALL, SlowModel, records, scan, wait_for_lines

from ppvl_batch.batch.journal import Lock
from ppvl_batch.batch.local import Scan
from ppvl_batch.batch.options import ScanOptions
from ppvl_batch.cli import main

# Every test works in its own folder (relative paths, ./ppvl-ocr.toml lookup): conftest.in_tmp.
pytestmark = pytest.mark.usefixtures("in_tmp")


def pages_of(recs: list[dict]) -> list[tuple[str, int | None]]:
    return [(r["source"], r["page"]) for r in recs]


def docs_tree(root: Path) -> Path:
    """docs/ with two same-named PDFs in different folders, a multi-page TIFF and a PNG."""
    make_pdf(root / "docs/a/report.pdf", pages=2, label="alpha")
    make_pdf(root / "docs/b/report.pdf", pages=3, label="beta")
    frames = [text_image((60, 40), f"f{i}") for i in range(2)]
    frames[0].save(root / "docs/scan.tiff", save_all=True, append_images=frames[1:])
    text_image((80, 50), "png").save(root / "docs/z.png")
    (root / "docs/readme.txt").write_text("not walked")
    return root / "docs"


# ---------------------------------------------------------------------------- records and Markdown


def test_folder_scan_records_and_markdown_mirror(in_tmp: Path, fast_model: Path) -> None:
    docs_tree(in_tmp)
    result = scan("docs", "-o", "out/ocr.jsonl", "--markdown", "md", "--summary-json", "sum.json", model=fast_model)
    assert result.exit_code == 0, result.stderr
    recs = records("out/ocr.jsonl")
    assert pages_of(recs) == [
        ("docs/a/report.pdf", 1), ("docs/a/report.pdf", 2),
        ("docs/b/report.pdf", 1), ("docs/b/report.pdf", 2), ("docs/b/report.pdf", 3),
        ("docs/scan.tiff", 1), ("docs/scan.tiff", 2), ("docs/z.png", 1),
    ]
    first = recs[0]
    assert first["status"] == "ok" and first["error"] is None and first["task"] == "ocr"
    assert first["page_count"] == 2 and recs[2]["page_count"] == 3
    # width x height: the rendered page (the frame of `lines`); the model saw it within --max-pixels
    assert first["page_size_pt"] == [144, 108] and first["width"] / first["height"] == pytest.approx(144 / 108, rel=0.02)
    assert 1 <= first["image_tokens"] <= 3136 // 784
    assert 1 <= first["output_tokens"] <= 4 and first["finish_reason"] in ("stop", "length", "repetition")
    assert first["model"].split(":")[1] == "F32" and {r["model"] for r in recs} == {first["model"]}
    import hashlib

    assert first["sha256"] == hashlib.sha256(Path("docs/a/report.pdf").read_bytes()).hexdigest()
    assert len({r["key"] for r in recs}) == len(recs)

    # Markdown mirrors the tree: same-named files do not collide; pages in order.
    md_a = Path("md/docs/a/report.pdf.md").read_text(encoding="utf-8")
    md_b = Path("md/docs/b/report.pdf.md").read_text(encoding="utf-8")
    assert md_a.count("<!-- page") == 2 and md_b.count("<!-- page") == 3
    assert md_b.index("<!-- page 1 -->") < md_b.index("<!-- page 2 -->") < md_b.index("<!-- page 3 -->")
    assert recs[2]["text"].strip() in md_b
    assert sorted(str(p) for p in Path("md").rglob("*.md")) == [
        "md/docs/a/report.pdf.md", "md/docs/b/report.pdf.md", "md/docs/scan.tiff.md", "md/docs/z.png.md",
    ]
    summary = orjson.loads(Path("sum.json").read_bytes())
    assert (summary["files"], summary["pages_ok"], summary["pages_failed"], summary["exit_code"]) == (4, 8, 0, 0)
    assert "4 files: 8 pages ok, 0 failed" in result.stderr
    assert not Path("out/ocr.jsonl.lock").exists()


def test_stdout_output_and_page_selection(in_tmp: Path, fast_model: Path) -> None:
    make_pdf(in_tmp / "long.pdf", pages=12)
    result = scan("long.pdf", "--pages", "2-3,7,11-", "-o", "-", model=fast_model)
    assert result.exit_code == 0, result.stderr
    recs = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert [r["page"] for r in recs] == [2, 3, 7, 11, 12]
    assert all(r["page_count"] == 12 for r in recs)


def test_stdin_lists_with_and_without_nul(in_tmp: Path, fast_model: Path) -> None:
    a = make_pdf(in_tmp / "in/with space.pdf")
    b = make_pdf(in_tmp / "in/new\nline.pdf")
    text_image().save(in_tmp / "in/c.png")
    result = scan("-", "-o", "lines.jsonl", model=fast_model, input=f"{a}\n{in_tmp / 'in/c.png'}\n{a}\n".encode())
    assert result.exit_code == 0, result.stderr
    assert pages_of(records("lines.jsonl")) == [(str(a), 1), (str(in_tmp / "in/c.png"), 1)]
    nul = b"\0".join(os.fsencode(p) for p in [b, a]) + b"\0"
    result = scan("-0", "-", "-o", "nul.jsonl", model=fast_model, input=nul)
    assert result.exit_code == 0, result.stderr
    assert pages_of(records("nul.jsonl")) == [(str(b), 1), (str(a), 1)]


def test_globs_hidden_files_and_outside_cwd_markdown(in_tmp: Path, fast_model: Path, tmp_path_factory) -> None:
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    make_pdf(elsewhere / "x.pdf")
    make_pdf(elsewhere / ".hidden/y.pdf")
    result = scan(str(elsewhere), "-o", "o.jsonl", "--markdown", "md", model=fast_model)
    assert result.exit_code == 0, result.stderr
    assert [Path(r["source"]).name for r in records("o.jsonl")] == ["x.pdf"]
    assert Path("md/_abs", *(elsewhere / "x.pdf.md").parts[1:]).is_file()
    result = scan(str(elsewhere / "**/*.pdf"), "--include-hidden", "-o", "o.jsonl", model=fast_model)
    assert [Path(r["source"]).name for r in records("o.jsonl")] == ["x.pdf", "y.pdf"]  # x already done


# ---------------------------------------------------------------------------- resume


REVIEW_FIELDS = ("confidence", "min_token_prob", "needs_review", "review_reasons")
NEW_FIELDS = (*REVIEW_FIELDS, "lines", "positions", "text_source", "page_size_pt")  # issue 20's


def test_review_fields_counts_and_an_old_journal_without_them(in_tmp: Path, fast_model: Path) -> None:
    make_pdf(in_tmp / "a.pdf", pages=3, label="review")
    shutil.copy(in_tmp / "a.pdf", in_tmp / "b.pdf")  # identical: its records are copies
    # every page the model reads is below a confidence of 1 (the threshold from the environment)
    first = scan("a.pdf", "b.pdf", "-o", "o.jsonl", "--summary-json", "s.json", model=fast_model,
                 env={"PPVL_REVIEW_BELOW": "1"})
    assert first.exit_code == 0, first.stderr
    recs = records("o.jsonl")
    read, copies = recs[:3], recs[3:]
    for r in read:
        assert 0 < r["min_token_prob"] <= r["confidence"] < 1  # a geometric mean is at least the least
        assert r["needs_review"] is True and "low_confidence" in r["review_reasons"]
        assert ("length" in r["review_reasons"]) == (r["finish_reason"] == "length")  # SMALL: 4 tokens at most
    for r, original in zip(copies, read):  # not read by the model, but the same text to check
        assert r["same_as"] == "a.pdf" and r["confidence"] is None and r["min_token_prob"] is None
        assert (r["needs_review"], r["review_reasons"]) == (original["needs_review"], original["review_reasons"])
    assert "6 need review" in first.stderr
    assert orjson.loads(Path("s.json").read_bytes())["pages_review"] == 6

    # a journal written before these fields (and lines, positions) existed still resumes; the thresholds are no part of
    # the checkpoint key (another --review-below reads nothing again)
    assert all(r["text_source"] == "model" and r["page_size_pt"] for r in read)
    old = [{k: v for k, v in r.items() if k not in NEW_FIELDS} for r in recs]
    Path("o.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in old))
    again = scan("a.pdf", "b.pdf", "-o", "o.jsonl", "--review-below", "0.5", "--summary-json", "s.json", model=fast_model)
    assert again.exit_code == 0, again.stderr
    assert "0 pages ok, 0 failed, 6 already done" in again.stderr and "need review" not in again.stderr
    assert records("o.jsonl") == old
    assert orjson.loads(Path("s.json").read_bytes())["pages_review"] == 0

    bad = scan("a.pdf", "-o", "o.jsonl", "--review-below", "1.5", model=fast_model)
    assert bad.exit_code == 2 and "--review-below" in bad.stderr


def test_resume_changed_and_moved_files_and_settings(in_tmp: Path, fast_model: Path) -> None:
    docs = docs_tree(in_tmp)
    args = ["docs", "-o", "out.jsonl", "--markdown", "md"]
    assert scan(*args, model=fast_model).exit_code == 0
    first = records("out.jsonl")

    again = scan(*args, model=fast_model)
    assert again.exit_code == 0 and records("out.jsonl") == first
    assert "0 pages ok, 0 failed, 8 already done" in again.stderr

    # changed content: read again; moved file: not read again, but it gets a record of its own,
    # copied from the old path's, and its Markdown appears
    make_pdf(docs / "a/report.pdf", pages=1, label="changed")
    (docs / "z.png").rename(docs / "moved.png")
    shutil.rmtree("md/docs/b")
    result = scan(*args, model=fast_model)
    assert result.exit_code == 0
    new = records("out.jsonl")[len(first):]
    assert pages_of(new) == [("docs/a/report.pdf", 1), ("docs/moved.png", 1)]
    assert new[0]["sha256"] != first[0]["sha256"] and new[0]["page_count"] == 1
    old_png = next(r for r in first if r["source"] == "docs/z.png")
    assert new[1] == {**old_png, "source": "docs/moved.png", "same_as": "docs/z.png", "seconds": 0.0,
                      "confidence": None, "min_token_prob": None}  # a copy was not read by the model
    assert "1 copied from identical files" in result.stderr
    assert Path("md/docs/a/report.pdf.md").read_text(encoding="utf-8").count("<!-- page") == 1
    assert Path("md/docs/moved.png.md").is_file()
    assert Path("md/docs/b/report.pdf.md").read_text(encoding="utf-8").count("<!-- page") == 3  # rebuilt from the checkpoint

    # anything that changes the answer changes the key
    before = len(records("out.jsonl"))
    assert scan("docs/scan.tiff", "-o", "out.jsonl", "--task", "table", model=fast_model).exit_code == 0
    assert scan("docs/scan.tiff", "-o", "out.jsonl", "--prompt", "Read it:", model=fast_model).exit_code == 0
    assert scan("docs/scan.tiff", "-o", "out.jsonl", "--task", "table", model=fast_model).exit_code == 0
    added = records("out.jsonl")[before:]
    assert [(r["task"], r["prompt"], r["page"]) for r in added] == [
        ("table", None, 1), ("table", None, 2), ("ocr", "Read it:", 1), ("ocr", "Read it:", 2),
    ]




# Mode -> the bundle fixture that reads that way, for the tests that must hold in either mode:
# whole pages, or block by block (conftest `layout_bundle`, a layout model that finds a block a page).
MODES = {"whole-page": "tiny_bundle", "layout": "layout_bundle"}


def untimed(record: dict) -> dict:
    """A record without its time, the one field that differs between equal runs."""
    return {k: v for k, v in record.items() if k != "seconds"}



CONFIDENCE_FIELDS = ("confidence", "min_token_prob")


def unbatched(record: dict) -> dict:
    """A record without what differs between pages decoded alone and together: its time, and
    its token probabilities in the last float bits (a batched llama.cpp step sums in another
    order; the tokens are the same)."""
    out = {k: v for k, v in untimed(record).items() if k not in CONFIDENCE_FIELDS}
    if out.get("blocks"):
        out["blocks"] = [{k: v for k, v in b.items() if k not in CONFIDENCE_FIELDS} for b in out["blocks"]]
    return out


def confidences(recs: list[dict]) -> list[float]:
    """Every confidence and least token probability of the records and their blocks, in order."""
    parts = [r for rec in recs for r in [rec, *(rec.get("blocks") or [])]]
    return [p[k] for p in parts for k in CONFIDENCE_FIELDS if p.get(k) is not None]


@pytest.mark.parametrize("mode", MODES)
def test_sigterm_then_kill_9_then_resume_gives_every_page_once(in_tmp: Path, fast_model: Path, mode: str, request) -> None:
    model = request.getfixturevalue(MODES[mode])
    # Enough pages that neither stop can reach the end: a page takes ~10 ms here, and the test
    # polls the output every 50 ms on a machine the run keeps busy.
    make_pdf(in_tmp / "docs/book.pdf", pages=BOOK)
    make_pdf(in_tmp / "docs/note.pdf", pages=2)
    out = in_tmp / "out.jsonl"
    args = ["docs", "-o", str(out), "--markdown", "md", "--batch-size", "1"]
    command = [PPVL, "scan", *args, "--model", str(model), *SMALL]

    # SIGTERM: the page in flight is finished, exit 130 with a resume hint
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_lines(out, 2, proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "re-run the same command to resume" in stderr
    after_term = records(out)  # every line whole
    assert 2 <= len(after_term) < BOOK // 2

    # kill -9 at an arbitrary moment, then a torn last line as a crash mid-write would leave
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_lines(out, len(after_term) + 2, proc)
    proc.kill()
    proc.wait()
    done = out.read_bytes().count(b"\n")  # whole records; the kill may have torn one more
    with open(out, "ab") as f:
        f.write(b'{"source":"docs/book.pdf","sha256":"12')
    assert Path(str(out) + ".lock").exists()  # left behind by the killed run

    result = scan(*args, "--summary-json", "sum.json", model=model)
    assert result.exit_code == 0, result.stderr
    final = records(out)
    counts = Counter(pages_of(final))
    assert counts == Counter({**{("docs/book.pdf", p): 1 for p in range(1, BOOK + 1)}, ("docs/note.pdf", 1): 1, ("docs/note.pdf", 2): 1})
    assert final[: len(after_term)] == after_term
    # the pages recorded before the kill were skipped, not read again
    summary = orjson.loads(Path("sum.json").read_bytes())
    assert (summary["pages_done_before"], summary["pages_ok"]) == (done, BOOK + 2 - done)

    # the same records (but their time) and Markdown as one run that nothing interrupted
    assert scan("docs", "-o", "calm.jsonl", "--markdown", "calm", "--batch-size", "1", model=model).exit_code == 0
    assert [untimed(r) for r in final] == [untimed(r) for r in records("calm.jsonl")]
    for name in ("book.pdf.md", "note.pdf.md"):
        assert Path("md/docs", name).read_text(encoding="utf-8") == Path("calm/docs", name).read_text(encoding="utf-8")
    assert Path("md/docs/book.pdf.md").read_text(encoding="utf-8").count("<!-- page ") == BOOK


def test_lock_held_by_another_run(in_tmp: Path, fast_model: Path) -> None:
    make_pdf(in_tmp / "a.pdf")
    holder = Lock(in_tmp / "out.jsonl.lock", "output out.jsonl")
    holder.acquire()
    try:
        result = scan("a.pdf", "-o", "out.jsonl", model=fast_model)
    finally:
        holder.release()
    assert result.exit_code == 4
    assert f"another ppvl-ocr run (pid {os.getpid()})" in result.stderr
    assert not Path("out.jsonl").exists()  # refused before touching the output
    assert scan("a.pdf", "-o", "out.jsonl", model=fast_model).exit_code == 0


def test_stdout_runs_resume_with_state(in_tmp: Path, fast_model: Path) -> None:
    make_pdf(in_tmp / "a.pdf", pages=2)
    first = scan("a.pdf", "-o", "-", "--state", "st", model=fast_model)
    assert len(first.stdout.splitlines()) == 2
    second = scan("a.pdf", "-o", "-", "--state", "st", model=fast_model)
    assert second.exit_code == 0 and second.stdout == ""
    assert len(records("st/journal.jsonl")) == 2


# ---------------------------------------------------------------------------- errors


def test_every_bad_document_gets_one_record_and_exit_1(in_tmp: Path, fast_model: Path) -> None:
    bad = in_tmp / "bad"
    make_pdf(bad / "1-good.pdf", pages=2)
    (bad / "2-corrupt.pdf").write_bytes(b"%PDF-1.7\n" + b"\x00garbage" * 64)
    make_pdf(bad / "3-locked.pdf", pages=2, password="pw")
    make_zero_page_pdf(bad / "4-zero.pdf")
    png = io.BytesIO()
    text_image((200, 200)).save(png, "PNG")
    (bad / "5-truncated.png").write_bytes(png.getvalue()[:-200])
    (bad / "6-empty.jpg").write_bytes(b"")
    (bad / "7-notes.txt").write_text("hello")
    inputs = [str(bad / "1-good.pdf"), str(bad), str(bad / "7-notes.txt"), str(bad / "8-vanished.pdf")]

    result = scan(*inputs, "-o", "out.jsonl", "--markdown", "md", model=fast_model)
    assert result.exit_code == 1
    recs = records("out.jsonl")
    errors = {Path(r["source"]).name: (r["page"], r["error"]["type"]) for r in recs if r["status"] == "error"}
    assert errors == {
        "2-corrupt.pdf": (None, "corrupt"),
        "3-locked.pdf": (None, "encrypted"),
        "4-zero.pdf": (None, "empty"),
        "5-truncated.png": (1, "truncated"),
        "6-empty.jpg": (None, "empty"),
        "7-notes.txt": (None, "unsupported"),
        "8-vanished.pdf": (None, "missing"),
    }
    assert [r["page"] for r in recs if r["status"] == "ok"] == [1, 2]
    assert all(r["text"] is None and r["error"]["message"] for r in recs if r["status"] == "error")
    assert "3-locked.pdf: encrypted" in result.stderr and "--password" in result.stderr
    assert "<!-- page 1: truncated:" in Path(f"md/{bad.name}/5-truncated.png.md").read_text(encoding="utf-8")

    # next run: failures are skipped and reported, not retried; exit 0
    result = scan(*inputs, "-o", "out.jsonl", model=fast_model)
    assert result.exit_code == 0 and len(records("out.jsonl")) == len(recs)
    assert "7 failed before and skipped (--retry-failed" in result.stderr

    # a file that failed to open is tried again on every run: the password alone unlocks it
    result = scan(*inputs, "-o", "out.jsonl", "--password", "pw", model=fast_model)
    assert result.exit_code == 0, result.stderr
    unlocked = records("out.jsonl")[len(recs):]
    assert [(Path(r["source"]).name, r["page"], r["status"]) for r in unlocked] == [
        ("3-locked.pdf", 1, "ok"), ("3-locked.pdf", 2, "ok"),
    ]

    # --retry-failed: the remaining failures are tried again and recorded again
    result = scan(*inputs, "-o", "out.jsonl", "--retry-failed", "--password", "pw", model=fast_model)
    assert result.exit_code == 1
    retried = records("out.jsonl")[len(recs) + 2:]
    assert sorted(Path(r["source"]).name for r in retried) == sorted(set(errors) - {"3-locked.pdf"})
    assert all(r["status"] == "error" for r in retried)


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "no inputs"),
        (["a.pdf", "--pages", "3-1"], "bad page range"),
        (["a.pdf", "--min-pixels", "5000", "--max-pixels", "4000"], "--min-pixels is larger"),
        ([".", "-o", "out.jsonl"], "inside the input folder"),
        (["a.pdf", "-o", "a.pdf"], "one of the input files"),
        (["docs", "--markdown", "docs/md"], "inside the input folder"),
        (["a.pdf", "--task", "poetry"], "Invalid value for '--task'"),
        (["a.pdf", "--batch-size", "0"], "Invalid value for '--batch-size'"),
        (["a.pdf", "-o", "o.jsonl", "--state", "st"], "--state is only for -o -"),
    ],
)
def test_usage_errors_exit_2(in_tmp: Path, args: list[str], message: str) -> None:
    make_pdf(in_tmp / "a.pdf")
    make_pdf(in_tmp / "docs/b.pdf")
    result = CliRunner().invoke(main, ["scan", *args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert result.stdout == ""


def test_no_documents_found_is_usage_error(in_tmp: Path) -> None:
    (in_tmp / "empty").mkdir()
    result = CliRunner().invoke(main, ["scan", "empty", "-o", "o.jsonl"])
    assert result.exit_code == 2 and "no documents" in result.stderr


def test_missing_model_exit_3(in_tmp: Path) -> None:
    make_pdf(in_tmp / "a.pdf")
    result = CliRunner().invoke(main, ["scan", "a.pdf", "-o", "o.jsonl", "--model", str(in_tmp / "no-bundle")])
    assert result.exit_code == 3
    assert result.stderr.startswith("ppvl-ocr: error:") and "no-bundle" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_output_refusals_and_failures_exit_4(in_tmp: Path, fast_model: Path) -> None:
    make_pdf(in_tmp / "a.pdf")
    Path("notes.jsonl").write_text('{"mine": 1}\n', encoding="utf-8")
    result = scan("a.pdf", "-o", "notes.jsonl", model=fast_model)
    assert result.exit_code == 4 and "--overwrite" in result.stderr
    assert Path("notes.jsonl").read_text(encoding="utf-8") == '{"mine": 1}\n'
    assert scan("a.pdf", "-o", "notes.jsonl", "--overwrite", model=fast_model).exit_code == 0
    assert len(records("notes.jsonl")) == 1

    (in_tmp / "md").mkdir()
    (in_tmp / "md/a.pdf.md").write_text("mine")
    result = scan("a.pdf", "-o", "new.jsonl", "--markdown", "md", model=fast_model)
    assert result.exit_code == 4 and "md/a.pdf.md exists and no checkpoint" in result.stderr
    assert (in_tmp / "md/a.pdf.md").read_text() == "mine"
    (in_tmp / "md/a.pdf.md").rename(in_tmp / "md/keep.md")  # files at other paths are no obstacle
    result = scan("a.pdf", "-o", "md/out.jsonl", "--markdown", "md", model=fast_model)
    assert result.exit_code == 0, result.stderr
    assert (in_tmp / "md/keep.md").read_text() == "mine" and (in_tmp / "md/a.pdf.md").is_file()

    assert scan("a.pdf", "-o", "/dev/full", model=fast_model).exit_code == 4
    result = scan("a.pdf", "-o", "notes.jsonl/sub/out.jsonl", model=fast_model)
    assert result.exit_code == 4 and "cannot create" in result.stderr


# ---------------------------------------------------------------------------- settings, progress


def test_config_file_env_and_command_line_precedence(in_tmp: Path, fast_model: Path) -> None:
    make_pdf(in_tmp / "a.pdf")
    Path("ppvl-ocr.toml").write_text(f'model = "{fast_model}"\n[scan]\noutput = "cfg.jsonl"\nmax-new-tokens = 2\n', encoding="utf-8")
    assert CliRunner().invoke(main, ["scan", "a.pdf", "--min-pixels", "784", "--max-pixels", "3136"]).exit_code == 0
    (rec,) = records("cfg.jsonl")
    assert rec["output_tokens"] <= 2
    env = {"PPVL_OUTPUT": "env.jsonl"}
    assert CliRunner().invoke(main, ["scan", "a.pdf", "--min-pixels", "784", "--max-pixels", "3136"], env=env).exit_code == 0
    assert len(records("env.jsonl")) == 1
    result = CliRunner().invoke(main, ["scan", "a.pdf", "-o", "cli.jsonl", "--min-pixels", "784", "--max-pixels", "3136"], env=env)
    assert result.exit_code == 0 and len(records("cli.jsonl")) == 1

    Path("other.toml").write_text("[scan]\nbatch_sise = 3\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["scan", "a.pdf", "--config", "other.toml"])
    assert result.exit_code == 2 and "has no option 'batch_sise'" in result.stderr
    Path("other.toml").write_text("colour = 1\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["scan", "a.pdf", "--config", "other.toml"])
    assert result.exit_code == 2 and "unknown option 'colour'" in result.stderr
    Path("other.toml").write_text("[scan\n", encoding="utf-8")
    assert CliRunner().invoke(main, ["scan", "a.pdf", "--config", "other.toml"]).exit_code == 2


def test_progress_lines_quiet_and_bar(in_tmp: Path, fast_model: Path) -> None:
    make_pdf(in_tmp / "a.pdf", pages=3)
    result = scan("a.pdf", "-o", "o.jsonl", "--log-interval", "0", model=fast_model)
    progress = [line for line in result.stderr.splitlines() if "pages/min" in line]
    assert len(progress) == 4  # one per page, then the summary
    assert "ppvl-ocr: 3 pages (0 failed, 0 already done)" in progress[-2]
    quiet = scan("a.pdf", "-o", "q.jsonl", "--quiet", model=fast_model)
    assert quiet.exit_code == 0 and quiet.stderr == "" and len(records("q.jsonl")) == 3

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    from ppvl_batch.recognizer import Recognizer

    terminal = Terminal()
    options = ScanOptions(inputs=["a.pdf"], output="bar.jsonl", min_pixels=784, max_pixels=3136, max_new_tokens=4)
    load = lambda **decoder: Recognizer.load(fast_model, min_pixels=784, max_pixels=3136, max_new_tokens=4, **decoder)  # noqa: E731
    summary = Scan(options, load, log=terminal).run()
    assert summary.pages_ok == 3 and summary.exit_code == 0
    assert "file 1/1" in terminal.getvalue() and "3/3" in terminal.getvalue()


# ---------------------------------------------------------------------------- memory


MEASURE = """
import resource, subprocess, sys
proc = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
sys.stderr.buffer.write(proc.stderr)
lines = proc.stdout.splitlines()
records = sum(line.startswith(b'{"source":') and line.endswith(b'}') for line in lines)
blocks = min((line.count(b'"label":') for line in lines), default=0)  # the fewest on a page
print(proc.returncode, len(lines), records, blocks, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


@pytest.mark.parametrize("bundle, long_pages, blocks, extra", [
    ("tiny_bundle", 300, 0, []),
    # ~30 blocks a page (conftest `layout_v2_bundle`), each crop >= 1.3 MB as the vision encoder
    # takes it, so fewer pages hold far more. A page at a time: 120 crops of a 4-page batch at
    # once leave the allocator's high-water mark creeping up for a few dozen pages.
    ("layout_v2_bundle", 12, 20, ["--batch-size", "1"]),
], ids=["whole-page", "layout"])
def test_memory_stays_flat_over_a_long_pdf(in_tmp: Path, bundle: str, long_pages: int, blocks: int, extra: list[str],
                                           request) -> None:
    """Peak RSS scanning a long PDF is within a few MB of scanning 5 pages (each in a fresh
    process); stdout carries only records. One thread: on busy shared cores llama.cpp's threads
    wait on each other at every step."""
    model = request.getfixturevalue(bundle)
    make_pdf(in_tmp / "short.pdf", pages=5, size=(300, 300))
    make_pdf(in_tmp / "long.pdf", pages=long_pages, size=(300, 300))
    peaks = {}
    for name, pages in [("short.pdf", 5), ("long.pdf", long_pages)]:
        command = [sys.executable, "-c", MEASURE, PPVL, "scan", name, "-o", "-", "--model", str(model), "--threads", "1",
                   "--dpi", "72", "--min-pixels", "784", "--max-pixels", "3136", "--max-new-tokens", "1", *extra]
        run = subprocess.run(command, capture_output=True, text=True, timeout=300)
        rc, count, good, fewest, peak_kib = map(int, run.stdout.split())
        assert (rc, count, good) == (0, pages, pages), run.stderr
        assert fewest >= blocks, run.stdout
        peaks[name] = peak_kib / 1024
    # A 300x300 pt page at 72 dpi is 264 KB of pixels: holding 300 would add ~80 MB, holding the
    # block crops of 7 layout pages ~280 MB.
    assert peaks["long.pdf"] - peaks["short.pdf"] < 25, peaks


def test_rasterizer_stays_a_bounded_number_of_pages_ahead(in_tmp: Path) -> None:
    import tracemalloc

    make_pdf(in_tmp / "long.pdf", pages=300)
    options = ScanOptions(inputs=["long.pdf"], output="o.jsonl", dpi=10, batch_size=4, prefetch=8, quiet=True)
    tracemalloc.start()
    try:
        summary = Scan(options, SlowModel).run()
        peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    assert summary.pages_ok == 300 and len(records("o.jsonl")) == 300
    # at most prefetch + batch + the two pages in hand exist at once
    assert peak_mb < 20, peak_mb


class FlakyModel(SlowModel):
    """Vision fails for any batch holding the 2nd page prepared; decoding fails for the 4th."""

    def __init__(self, **recognizer_options) -> None:
        self.calls = 0

    def prepare(self, image, task):
        self.calls += 1
        return self.calls

    def encode(self, prepared, task):
        if 2 in prepared:
            raise RuntimeError("vision out of memory")
        return list(prepared)

    def decode(self, encoded, task, prompt, max_new_tokens):
        if encoded == 4:
            raise RuntimeError("llama_decode failed")
        return super().decode(encoded, task, prompt, max_new_tokens)


def test_model_failures_fail_only_their_page(in_tmp: Path) -> None:
    make_pdf(in_tmp / "a.pdf", pages=5)
    options = ScanOptions(inputs=["a.pdf"], output="o.jsonl", dpi=10, batch_size=4, quiet=True)
    summary = Scan(options, FlakyModel).run()
    assert (summary.pages_ok, summary.pages_failed, summary.exit_code) == (3, 2, 1)
    recs = records("o.jsonl")
    assert [(r["page"], r["status"], r["error"] and r["error"]["type"]) for r in recs] == [
        (1, "ok", None), (2, "error", "recognition"), (3, "ok", None), (4, "error", "recognition"), (5, "ok", None),
    ]
    assert "vision out of memory" in recs[1]["error"]["message"]
    assert "llama_decode failed" in recs[3]["error"]["message"]


class PacedModel(SlowModel):
    """Decoding takes 50 ms, and the test can see how many pages were decoded."""

    def __init__(self, **recognizer_options) -> None:
        self.decoded = 0

    def prepare(self, image, task):
        return 0

    def decode(self, encoded, task, prompt, max_new_tokens):
        time.sleep(0.05)
        self.decoded += 1
        return super().decode(encoded, task, prompt, max_new_tokens)


@pytest.mark.parametrize("signals", [1, 2])
def test_ctrl_c_stops_with_130_and_whole_records(in_tmp: Path, signals: int) -> None:
    """One Ctrl-C finishes the page in flight; a second one drops it. Either way the output holds
    whole records only, and the next run completes the document with every page once."""
    import threading

    make_pdf(in_tmp / "a.pdf", pages=40)
    model = PacedModel()

    def interrupt() -> None:
        while model.decoded < 3:
            time.sleep(0.005)
        for _ in range(signals):
            os.kill(os.getpid(), signal.SIGINT)

    handler_before = signal.getsignal(signal.SIGINT)  # SIG_IGN when the suite runs in the background
    threading.Thread(target=interrupt, daemon=True).start()
    options = ScanOptions(inputs=["a.pdf"], output="o.jsonl", dpi=10, batch_size=2, quiet=True)
    summary = Scan(options, lambda **_: model).run()
    assert summary.interrupted and summary.exit_code == 130
    done = records("o.jsonl")
    assert 3 <= len(done) < 40 and summary.pages_ok == len(done)
    assert signal.getsignal(signal.SIGINT) is handler_before  # handlers restored

    summary = Scan(ScanOptions(inputs=["a.pdf"], output="o.jsonl", dpi=10, quiet=True), PacedModel).run()
    assert summary.exit_code == 0 and summary.pages_done_before == len(done)
    assert [r["page"] for r in records("o.jsonl")] == list(range(1, 41))


@pytest.mark.parametrize("mode", MODES)
def test_parallel_decoding_gives_the_same_records_in_the_same_order(in_tmp: Path, fast_model: Path, mode: str, request) -> None:
    """Pages, or their blocks, decoded four at a time in one llama.cpp context read as they do
    one at a time: no sequence sees another's cache or logits. A batch holds more than four, so
    sequences are reused; the frames differ in size and colour, so their prompts differ in length
    and their answers differ (in layout mode a batch's pages of one document are decoded together)."""
    model = request.getfixturevalue(MODES[mode])
    docs = docs_tree(in_tmp)
    frames = [shapes_image((300 + 30 * i, 400 - 20 * i), seed=i) for i in range(8)]
    frames[0].save(docs / "sizes.tiff", save_all=True, append_images=frames[1:])
    one = scan(str(docs), "-o", "one.jsonl", model=model)
    four = scan(str(docs), "-o", "four.jsonl", "--parallel", "4", "--batch-size", "8", model=model)
    assert one.exit_code == four.exit_code == 0, four.stderr
    assert [unbatched(r) for r in records("four.jsonl")] == [unbatched(r) for r in records("one.jsonl")]
    assert confidences(records("four.jsonl")) == pytest.approx(confidences(records("one.jsonl")), rel=1e-4)
    assert len(records("one.jsonl")) == 16
    assert mode == "whole-page" or all(r["blocks"] for r in records("one.jsonl") if r["source"].endswith("sizes.tiff"))


def test_a_run_with_nothing_left_to_do_loads_no_weights(in_tmp: Path, tiny_bundle: Path, monkeypatch) -> None:
    import ppvl_batch.engine.recognizer as recognizer_module

    make_pdf(in_tmp / "a.pdf", pages=2)
    assert scan("a.pdf", "-o", "o.jsonl", model=tiny_bundle).exit_code == 0
    loaded = []
    monkeypatch.setattr(recognizer_module, "load_vision_tower", lambda *a, **k: loaded.append("vision"))
    monkeypatch.setattr(recognizer_module, "TextDecoder", lambda *a, **k: loaded.append("decoder"))
    again = scan("a.pdf", "-o", "o.jsonl", model=tiny_bundle)
    assert again.exit_code == 0 and loaded == []
    assert len(records("o.jsonl")) == 2
