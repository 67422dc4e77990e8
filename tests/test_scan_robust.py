"""`scan` over damaged archives (issue 11): every file fails alone with a typed record, repaired
PDFs and blank pages are visible, torn journals are repaired, identical files are read once, and
a re-run over an unchanged archive reads no file contents.

Runs use the tiny random-weight bundle through `fast_model` (see test_scan.py) or, where the
test counts model calls, a stand-in recognizer.
"""

from __future__ import annotations

import io
import os
import random
import time
from pathlib import Path

import orjson
import pytest
from makedocs import empty_scan, make_pdf, text_image
from PIL import Image, ImageDraw, ImageFont
from scanning import SlowModel, records, scan

import ppvl_batch.batch.hashcache as hashcache_module
import ppvl_batch.batch.plan as plan_module
from ppvl_batch.batch.local import Scan
from ppvl_batch.batch.options import ScanOptions, Summary
from ppvl_batch.batch.recorder import Recorder
from ppvl_batch.documents.blank import is_blank

ERROR_TYPES = {"missing", "unreadable", "empty", "unsupported", "corrupt", "truncated", "encrypted", "too_large",
               "recognition", "internal"}

pytestmark = pytest.mark.usefixtures("in_tmp")


# ---------------------------------------------------------------------------- damaged inputs


def _valid_files(tmp: Path) -> dict[str, bytes]:
    """One small valid file per format (a 2-page PDF, a 3-frame TIFF, PNG, JPEG, WebP)."""
    pdf = make_pdf(tmp / "base.pdf", pages=2).read_bytes()
    frames = [text_image((48, 32), f"f{i}") for i in range(3)]
    tiff = io.BytesIO()
    frames[0].save(tiff, "TIFF", save_all=True, append_images=frames[1:], compression="tiff_lzw")
    out = {".pdf": pdf, ".tiff": tiff.getvalue()}
    for ext, fmt in ((".png", "PNG"), (".jpg", "JPEG"), (".webp", "WEBP")):
        buf = io.BytesIO()
        text_image((64, 40), "Hi").save(buf, fmt)
        out[ext] = buf.getvalue()
    return out


def _damage(rng: random.Random, data: bytes, other: bytes) -> bytes:
    """Flip bytes, cut the file, or splice it with another file; sometimes two of them."""
    out = bytearray(data)
    for _ in range(rng.choice((1, 1, 2))):
        kind = rng.choice(("flip", "cut", "splice"))
        if kind == "flip":
            for _ in range(rng.randint(1, 12)):
                out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        elif kind == "cut":
            out = out[: rng.randrange(1, len(out))]
        else:
            out = out[: rng.randrange(1, len(out))] + other[rng.randrange(len(other)):]
        if not out:
            out = bytearray(b"\0")
    return bytes(out)


def test_fuzz_over_damaged_files_every_file_gets_records_and_the_run_goes_on(in_tmp: Path, fast_model: Path) -> None:
    valid = _valid_files(in_tmp)
    rng = random.Random(11)
    folder = in_tmp / "damaged"
    folder.mkdir()
    names = []
    for i in range(300):
        ext = list(valid)[i % len(valid)]
        other = valid[rng.choice(list(valid))]
        name = f"f{i:03d}{ext}"
        (folder / name).write_bytes(_damage(rng, valid[ext], other))
        names.append(name)

    result = scan("damaged", "-o", "out.jsonl", "--summary-json", "sum.json", model=fast_model)
    assert result.exit_code == 1
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    recs = records("out.jsonl")
    by_file: dict[str, list[dict]] = {}
    for r in recs:
        by_file.setdefault(Path(r["source"]).name, []).append(r)
    assert sorted(by_file) == names  # every file has records
    for name, rs in by_file.items():
        assert all(r["status"] in ("ok", "error") for r in rs), name
        assert all(r["error"]["type"] in ERROR_TYPES and r["error"]["message"] for r in rs if r["status"] == "error")
        pages = [r["page"] for r in rs]
        assert pages == [None] or pages == list(range(1, rs[0]["page_count"] + 1)), (name, pages)
    types = [r["error"]["type"] for r in recs if r["status"] == "error"]
    # The damage is recognised for what it is, not reported as our own failure.
    assert not {"internal", "unreadable"} & set(types) and {"corrupt", "truncated"} <= set(types)
    assert any(r["status"] == "ok" for r in recs)  # and some damaged files still read
    summary = orjson.loads(Path("sum.json").read_bytes())
    assert summary["pages_ok"] + summary["pages_failed"] == len(recs)


def test_decoder_errors_of_any_type_fail_only_their_file(in_tmp: Path, fast_model: Path, monkeypatch) -> None:
    """What PIL's decoders raise besides OSError (struct.error, IndexError, TypeError ...) and a
    damaged TIFF's n_frames end in that file's record; an exception of ours is `internal`."""
    import struct

    from PIL import TiffImagePlugin

    make_pdf(in_tmp / "a.pdf")
    text_image((64, 40)).save(in_tmp / "b.png")
    frames = [text_image((48, 32), f"f{i}") for i in range(2)]
    frames[0].save(in_tmp / "c.tiff", save_all=True, append_images=frames[1:])

    def bad_frames(self):
        raise struct.error("unpack requires a buffer of 12 bytes")

    monkeypatch.setattr(TiffImagePlugin.TiffImageFile, "n_frames", property(bad_frames))
    png_load = Image.Image.load

    def broken_load(self):
        if self.format == "PNG":
            raise IndexError("list index out of range")
        return png_load(self)

    monkeypatch.setattr(Image.Image, "load", broken_load)
    result = scan("a.pdf", "b.png", "c.tiff", "-o", "out.jsonl", model=fast_model)
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    got = {r["source"]: (r["status"], r["error"] and r["error"]["type"]) for r in records("out.jsonl")}
    # raised in our monkeypatches (not inside PIL): we cannot tell, so `internal`, with the message
    assert got == {"a.pdf": ("ok", None), "b.png": ("error", "internal"), "c.tiff": ("error", "internal")}
    messages = [r["error"]["message"] for r in records("out.jsonl") if r["status"] == "error"]
    assert "IndexError: list index out of range" in messages[0] and "struct.error" not in messages[0]
    assert "unpack requires" in messages[1]


def test_pil_errors_raised_inside_pil_are_corrupt(tmp_path: Path) -> None:
    from ppvl_batch.documents.pages import classify_error

    try:
        Image.open(io.BytesIO(b"\x89PNG\r\n\x1a\n" + b"\0" * 4)).load()
    except Exception as e:  # noqa: BLE001 (whatever PIL raises here)
        assert classify_error(e, "image").type in ("corrupt", "truncated")
    else:
        pytest.fail("PIL read a broken PNG")
    assert classify_error(KeyError("x"), "image").type == "internal"  # not raised by a decoder


def test_a_bug_outside_per_file_work_is_one_line_and_exit_1(in_tmp: Path, fast_model: Path, monkeypatch) -> None:
    make_pdf(in_tmp / "a.pdf", pages=2)

    def bug(self, start):
        raise KeyError("oops")

    monkeypatch.setattr(Recorder, "finish_document", bug)
    result = scan("a.pdf", "-o", "out.jsonl", model=fast_model)
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()[-1:]
    assert line.startswith("ppvl-ocr: error: internal error") and "KeyError" in line and "re-running resumes" in line
    assert len(records("out.jsonl")) == 2  # what was written stays


# ---------------------------------------------------------------------------- repaired PDFs


def test_repaired_pdf_records_carry_a_warning_and_the_summary_counts_it(in_tmp: Path, fast_model: Path) -> None:
    data = make_pdf(in_tmp / "whole.pdf", pages=3).read_bytes()
    (in_tmp / "cut.pdf").write_bytes(data[: len(data) - 80])  # loses its xref: MuPDF rebuilds it
    result = scan("whole.pdf", "cut.pdf", "-o", "out.jsonl", "--summary-json", "sum.json", model=fast_model)
    recs = records("out.jsonl")
    whole = [r for r in recs if r["source"] == "whole.pdf"]
    cut = [r for r in recs if r["source"] == "cut.pdf"]
    assert whole and all("warnings" not in r for r in whole)
    assert cut and all(r["warnings"][0].startswith("repaired: ") for r in cut)
    assert "xref" in cut[0]["warnings"][0]
    assert orjson.loads(Path("sum.json").read_bytes())["files_repaired"] == 1
    assert "1 repaired PDFs" in result.stderr


# ---------------------------------------------------------------------------- blank pages


@pytest.mark.parametrize("seed", range(12))
def test_empty_scans_with_noise_are_blank_and_one_faint_line_is_not(seed: int) -> None:
    size = [(850, 1100), (1240, 1754), (600, 800)][seed % 3]  # 100 and 150 dpi letter, a small scan
    assert is_blank(empty_scan(seed, size))
    assert not is_blank(empty_scan(seed, size, faint_line=True))


def test_pages_with_content_are_not_blank() -> None:
    assert not is_blank(text_image((60, 40), "f0"))  # tiny
    page = empty_scan(3)
    # a lone grey page number, 10 pt at 100 dpi
    ImageDraw.Draw(page).text((400, 1000), "- 7 -", fill=(120, 120, 120), font=ImageFont.load_default(size=14))
    assert not is_blank(page)
    speck = empty_scan(3)
    ImageDraw.Draw(speck).text((400, 500), ".", fill=(90, 90, 90))  # smaller than MIN_MARK: a speck
    assert is_blank(speck)
    assert is_blank(Image.new("RGB", (300, 400), "white"))


class CountingModel(SlowModel):
    def __init__(self, **recognizer_options) -> None:
        self.decoded = 0

    def prepare(self, image, task):
        return image.size

    def decode(self, encoded, task, prompt, max_new_tokens):
        self.decoded += 1
        return super().decode(encoded, task, prompt, max_new_tokens)


def test_blank_pages_get_ok_records_without_the_model(in_tmp: Path) -> None:
    empty_scan(1, (600, 800)).save(in_tmp / "back.jpg")
    text = empty_scan(2, (600, 800))
    ImageDraw.Draw(text).text((50, 50), "Invoice 2026-11", fill="black")
    text.save(in_tmp / "front.jpg")
    model = CountingModel()
    options = ScanOptions(inputs=["front.jpg", "back.jpg"], output="o.jsonl", quiet=True)
    summary = Scan(options, lambda **_: model).run()
    assert model.decoded == 1 and (summary.pages_ok, summary.pages_blank) == (2, 1)
    front, back = records("o.jsonl")
    assert "blank" not in front and front["text"] == "x"
    assert (back["status"], back["text"], back["blank"], back["image_tokens"]) == ("ok", "", True, 0)
    assert (back["width"], back["height"]) == (600, 800)

    # --no-skip-blank: pages recorded blank before are read now, the others stay done
    summary = Scan(ScanOptions(inputs=["front.jpg", "back.jpg"], output="o.jsonl", quiet=True, skip_blank=False),
                   lambda **_: model).run()
    assert model.decoded == 2 and summary.pages_done_before == 1
    assert [("blank" in r, r["text"]) for r in records("o.jsonl")] == [(False, "x"), (True, ""), (False, "x")]


# ---------------------------------------------------------------------------- duplicates


def test_identical_files_one_model_run_two_records_and_later_copies(in_tmp: Path) -> None:
    make_pdf(in_tmp / "a/report.pdf", pages=2)
    (in_tmp / "b").mkdir()
    (in_tmp / "b/copy.pdf").write_bytes((in_tmp / "a/report.pdf").read_bytes())
    model = CountingModel()
    summary = Scan(ScanOptions(inputs=["a", "b"], output="o.jsonl", dpi=20, quiet=True, markdown=Path("md")),
                   lambda **_: model).run()
    assert model.decoded == 2 and summary.pages_copied == 2 and summary.exit_code == 0
    recs = records("o.jsonl")
    assert [(r["source"], r["page"], r.get("same_as")) for r in recs] == [
        ("a/report.pdf", 1, None), ("a/report.pdf", 2, None), ("b/copy.pdf", 1, "a/report.pdf"),
        ("b/copy.pdf", 2, "a/report.pdf"),
    ]
    assert recs[2]["text"] == recs[0]["text"] and recs[2]["key"] == recs[0]["key"]
    assert Path("md/b/copy.pdf.md").read_text(encoding="utf-8") == Path("md/a/report.pdf.md").read_text(encoding="utf-8")

    # an identical file added later: copied, not read; the others are simply done
    (in_tmp / "c").mkdir()
    (in_tmp / "c/late.pdf").write_bytes((in_tmp / "a/report.pdf").read_bytes())
    summary = Scan(ScanOptions(inputs=["a", "b", "c"], output="o.jsonl", dpi=20, quiet=True), lambda **_: model).run()
    assert model.decoded == 2 and summary.pages_copied == 2 and summary.pages_done_before == 4
    assert [(r["source"], r["same_as"]) for r in records("o.jsonl")[4:]] == [("c/late.pdf", "a/report.pdf")] * 2


def test_identical_broken_files_copy_the_error(in_tmp: Path) -> None:
    for name in ("x.pdf", "y.pdf"):
        (in_tmp / name).write_bytes(b"%PDF-1.7\n" + b"\x00garbage" * 64)
    summary = Scan(ScanOptions(inputs=["x.pdf", "y.pdf"], output="o.jsonl", quiet=True), CountingModel).run()
    x, y = records("o.jsonl")
    assert (x["error"]["type"], y["error"]["type"], y["same_as"]) == ("corrupt", "corrupt", "x.pdf")
    assert (summary.files_failed, summary.exit_code) == (2, 1)


# ---------------------------------------------------------------------------- hash cache


def _count_reads(monkeypatch) -> dict[str, int]:
    counts = {"hashed": 0, "opened": 0}
    sha, open_document = hashcache_module.file_sha256, plan_module.open_document

    def counting_sha(path):
        counts["hashed"] += 1
        return sha(path)

    def counting_open(*args, **kwargs):
        counts["opened"] += 1
        return open_document(*args, **kwargs)

    monkeypatch.setattr(hashcache_module, "file_sha256", counting_sha)
    monkeypatch.setattr(plan_module, "open_document", counting_open)
    return counts


def test_rerun_over_unchanged_files_reads_no_contents_and_sees_changes(in_tmp: Path, monkeypatch) -> None:
    for i in range(4):
        make_pdf(in_tmp / f"docs/{i}.pdf", pages=2, label=f"doc{i}")
    monkeypatch.setattr(hashcache_module, "_RACY_NS", 0)  # the files were just written (see the racy test)
    counts = _count_reads(monkeypatch)
    model = CountingModel()

    def run(**options) -> Summary:
        for k in counts:
            counts[k] = 0
        return Scan(ScanOptions(inputs=["docs"], output="o.jsonl", dpi=20, quiet=True, **options), lambda **_: model).run()

    assert run().files_hashed == 4 and counts == {"hashed": 4, "opened": 4}
    assert Path("o.jsonl.hashes").is_file()
    summary = run()
    assert counts == {"hashed": 0, "opened": 0} and summary.pages_done_before == 8

    # rewritten with the same bytes and its mtime set back: the ctime still tells; a new content
    make_pdf(in_tmp / "docs/2.pdf", pages=3, label="changed")
    st = os.stat("docs/1.pdf")
    Path("docs/1.pdf").write_bytes(Path("docs/1.pdf").read_bytes())
    os.utime("docs/1.pdf", ns=(st.st_atime_ns, st.st_mtime_ns))
    summary = run()
    assert counts["hashed"] == 2 and summary.pages_ok == 3  # 1.pdf hashed again (same content), 2.pdf read
    assert counts["opened"] == 1

    assert run(rehash=True).files_hashed == 4 and counts["opened"] == 0


def test_a_file_changed_just_before_hashing_is_hashed_again(tmp_path: Path) -> None:
    from ppvl_batch.batch.hashcache import HashCache

    old, new = tmp_path / "old.png", tmp_path / "new.png"
    text_image().save(old)
    text_image().save(new)
    past = os.stat(old).st_mtime_ns - 10**10
    os.utime(old, ns=(past, past))
    time.sleep(1.1)  # the ctime, which utime sets to now, must leave the racy window too
    text_image((50, 50)).save(new)
    cache = HashCache(tmp_path / "h", rehash=False)
    cache.sha256(old), cache.sha256(new)
    cache.save()
    again = HashCache(tmp_path / "h")
    again.load(overwrite=False)
    again.sha256(old), again.sha256(new)
    assert again.hashed == 1  # only the file changed within the second before it was hashed


def test_foreign_hash_cache_file_is_refused(in_tmp: Path, fast_model: Path) -> None:
    make_pdf(in_tmp / "a.pdf")
    Path("out.jsonl.hashes").write_text("my notes\n", encoding="utf-8")
    result = scan("a.pdf", "-o", "out.jsonl", model=fast_model)
    assert result.exit_code == 4 and "not a ppvl-ocr hash cache" in result.stderr
    assert Path("out.jsonl.hashes").read_text(encoding="utf-8") == "my notes\n"


# ---------------------------------------------------------------------------- torn journals


@pytest.mark.parametrize("tail", ["cut-3", "cut-half", "cut-utf8", "nul-1", "nul-700", "nul-4096", "cut+nul"])
def test_cli_repairs_a_torn_journal_and_reads_each_page_once(in_tmp: Path, fast_model: Path, tail: str) -> None:
    make_pdf(in_tmp / "é-doc.pdf", pages=3)  # a non-ASCII source, so records hold multi-byte characters
    assert scan("é-doc.pdf", "-o", "out.jsonl", model=fast_model).exit_code == 0
    data = Path("out.jsonl").read_bytes()
    lines = data.splitlines(keepends=True)
    head, last = b"".join(lines[:-1]), lines[-1]
    kind, _, arg = tail.partition("-")
    if kind == "cut":
        at = {"3": 3, "half": len(last) // 2, "utf8": last.index("é".encode()) + 1}[arg]
        torn = head + last[:at]
    elif kind == "nul":
        torn = head + b"\0" * int(arg)
    else:
        torn = head + last[:10] + b"\0" * 300
    Path("out.jsonl").write_bytes(torn)
    result = scan("é-doc.pdf", "-o", "out.jsonl", model=fast_model)
    assert result.exit_code == 0, result.stderr
    recs = records("out.jsonl")
    assert [r["page"] for r in recs] == [1, 2, 3]
    assert "2 already done" in result.stderr and "1 pages ok" in result.stderr
