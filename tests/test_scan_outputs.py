"""scan --pdf/--hocr/--alto and `export`: the document outputs written from the journal are the same
files however the records came in (--pages, a kill -9 and resume, --retry-failed, a later run adding
the option, export without the model), and writing them keeps memory flat. The writers themselves
are tested in test_outputs_{pdf,hocr,alto}.py; here a stand-in recognizer (scanning.SlowModel) keeps
it fast."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from makedocs import make_pdf, text_image
from scanning import SlowModel, records, wait_for_lines

from ppvl_batch.batch.local import Scan
from ppvl_batch.batch.options import ScanOptions
from ppvl_batch.cli import main
from ppvl_batch.documents.pages import PageRanges, pymupdf

FOLDERS = {"pdf": ".pdf", "hocr": ".hocr", "alto": ".alto.xml"}
TESTS = Path(__file__).resolve().parent


class FailingModel(SlowModel):
    """Every page fails at decoding (a recognition error record)."""

    def decode(self, encoded, task, prompt, max_new_tokens):
        raise RuntimeError("decoder fell over")


def make_inputs(root: Path, kind: str) -> list[str]:
    """Two documents of 3 pages: PDFs, or multi-frame TIFFs (an image input)."""
    names = []
    for i in (1, 2):
        if kind == "pdf":
            make_pdf(root / "in" / f"doc{i}.pdf", pages=3, label=f"doc{i}")
            names.append(f"in/doc{i}.pdf")
        else:
            (root / "in").mkdir(exist_ok=True)
            frames = [text_image((96, 64), f"d{i}p{p}") for p in (1, 2, 3)]
            frames[0].save(root / "in" / f"doc{i}.tif", save_all=True, append_images=frames[1:], dpi=(150, 150))
            names.append(f"in/doc{i}.tif")
    return names


def run(root: Path, inputs: list[str], out: str, model=SlowModel, outputs: bool = True, **options):
    folders = {name: root / f"{out}-{name}" for name in FOLDERS} if outputs else {}
    scan_options = ScanOptions(inputs=inputs, output=str(root / f"{out}.jsonl"), dpi=20, quiet=True, **folders,
                               **options)
    return Scan(scan_options, model).run()


def files(root: Path, out: str) -> dict[str, object]:
    """Every output file under `out`-pdf/-hocr/-alto: a PDF as its page count and text per page,
    hOCR and ALTO as their bytes (they carry no timestamps)."""
    found: dict[str, object] = {}
    for name in FOLDERS:
        folder = root / f"{out}-{name}"
        for path in sorted(folder.rglob("*")) if folder.exists() else []:
            if not path.is_file():
                continue
            key = f"{name}/{path.relative_to(folder)}"
            if path.suffix == ".pdf":
                with pymupdf.open(path) as doc:
                    found[key] = (doc.page_count, [page.get_text().split() for page in doc])
            else:
                found[key] = path.read_bytes()
    return found


@pytest.fixture(params=["pdf", "image"])
def reference(request, in_tmp: Path) -> tuple[list[str], dict[str, object]]:
    """The inputs, and the files one uninterrupted run writes."""
    inputs = make_inputs(in_tmp, request.param)
    summary = run(in_tmp, inputs, "ref")
    assert summary.exit_code == 0 and summary.outputs_written == 6, summary
    ref = files(in_tmp, "ref")
    assert len(ref) == 6
    pdf = next(v for k, v in ref.items() if k.endswith("doc1" + (".pdf.pdf" if request.param == "pdf" else ".tif.pdf")))
    assert pdf[0] == 3 and all(words[-1] == "x" for words in pdf[1])  # every page gets the stand-in's text
    return inputs, ref


def test_pages_run_by_run_give_the_files_of_one_run(in_tmp: Path, reference) -> None:
    inputs, ref = reference
    first = run(in_tmp, inputs, "pages", pages=PageRanges.parse("1,3"))
    assert first.outputs_written == 0 and not files(in_tmp, "pages")  # no document is complete yet
    second = run(in_tmp, inputs, "pages", pages=PageRanges.parse("2"))
    assert second.pages_read == 2 and second.outputs_written == 6
    assert files(in_tmp, "pages") == ref


def test_a_later_run_adding_the_options_writes_them_without_reading_a_page(in_tmp: Path, reference) -> None:
    inputs, ref = reference
    run(in_tmp, inputs, "later", outputs=False)
    summary = run(in_tmp, inputs, "later")
    assert (summary.pages_read, summary.pages_done_before, summary.outputs_written) == (0, 6, 6)
    assert files(in_tmp, "later") == ref


def test_retry_failed_rewrites_the_outputs(in_tmp: Path, reference) -> None:
    inputs, ref = reference
    failed = run(in_tmp, inputs, "retry", model=FailingModel)
    assert failed.pages_failed == 6 and failed.outputs_written == 6  # failed pages stay, without text
    with pymupdf.open(next((in_tmp / "retry-pdf").rglob("*.pdf"))) as doc:
        assert doc.page_count == 3 and not any("x" in page.get_text().split() for page in doc)
    summary = run(in_tmp, inputs, "retry", retry_failed=True)
    assert summary.pages_ok == 6 and summary.outputs_written == 6
    assert files(in_tmp, "retry") == ref


KILLABLE = """
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from scanning import SlowModel
from ppvl_batch.batch.local import Scan
from ppvl_batch.batch.options import ScanOptions

class Slower(SlowModel):
    def decode(self, *args):
        time.sleep(0.2)
        return super().decode(*args)

folders = {name: Path(f"kill-{name}") for name in ("pdf", "hocr", "alto")}
Scan(ScanOptions(inputs=sys.argv[2:], output="kill.jsonl", dpi=20, quiet=True, batch_size=1, **folders), Slower).run()
"""


def test_resume_after_kill_9_gives_the_files_of_one_run(in_tmp: Path, reference) -> None:
    inputs, ref = reference
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS.parent), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-c", KILLABLE, str(TESTS), *inputs], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_lines(in_tmp / "kill.jsonl", 2, proc)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    done = len(records(in_tmp / "kill.jsonl"))
    assert done < 6, "the run finished before it was killed"
    summary = run(in_tmp, inputs, "kill")
    assert summary.pages_done_before == done and summary.pages_read == 6 - done
    assert files(in_tmp, "kill") == ref


def export(*args: str):
    return CliRunner().invoke(main, ["export", *args], catch_exceptions=False)


def test_export_writes_the_files_scan_writes(in_tmp: Path, reference) -> None:
    inputs, ref = reference
    result = export("ref.jsonl", "--pdf", "exp-pdf", "--hocr", "exp-hocr", "--alto", "exp-alto")
    assert result.exit_code == 0, result.output
    assert "6 outputs written" in result.stderr
    assert files(in_tmp, "exp") == ref
    again = export("ref.jsonl", "--pdf", "exp-pdf")
    assert again.exit_code == 4 and "exists" in again.stderr and "--overwrite" in again.stderr
    assert export("ref.jsonl", "--pdf", "exp-pdf", "--overwrite").exit_code == 0


def test_export_refuses_a_changed_input_and_writes_the_others(in_tmp: Path, reference) -> None:
    inputs, ref = reference
    changed = in_tmp / inputs[0]
    changed.write_bytes(changed.read_bytes() + b"\n")
    result = export("ref.jsonl", "--hocr", "exp-hocr")
    assert result.exit_code == 1, result.output
    [line] = [line for line in result.stderr.splitlines() if "changed since it was read" in line]
    assert line.startswith(f"ppvl-ocr: {inputs[0]}: ") and "scan it again" in line
    written = files(in_tmp, "exp")
    assert list(written) == [k for k in ref if k.startswith("hocr/") and Path(inputs[1]).name in k]


def test_export_needs_an_output_and_pdfa_needs_pdf(in_tmp: Path) -> None:
    make_pdf(in_tmp / "a.pdf")
    run(in_tmp, ["a.pdf"], "o", outputs=False)
    nothing = export("o.jsonl")
    assert nothing.exit_code == 2 and "nothing to export" in nothing.stderr
    pdfa = export("o.jsonl", "--pdfa", "--hocr", "h")
    assert pdfa.exit_code == 2 and "--pdf DIR" in pdfa.stderr


def test_a_pdf_that_cannot_be_written_back_keeps_its_records_and_the_others_go_on(in_tmp: Path) -> None:
    make_pdf(in_tmp / "in" / "locked.pdf", pages=2, password="secret")
    make_pdf(in_tmp / "in" / "open.pdf", pages=2)
    summary = run(in_tmp, ["in/locked.pdf", "in/open.pdf"], "enc", password="secret")
    assert summary.pages_ok == 4 and summary.exit_code == 0
    # without the password the records are there but the PDF cannot be written back
    result = export("enc.jsonl", "--pdf", "exp-pdf")
    assert result.exit_code == 4, result.output
    assert "in/locked.pdf: --pdf" in result.stderr and "encrypted" in result.stderr
    assert sorted(p.name for p in (in_tmp / "exp-pdf").rglob("*.pdf")) == ["open.pdf.pdf"]
    assert "1 outputs not written" in result.stderr


def test_scan_options_reach_the_writers(in_tmp: Path) -> None:
    """--pdf/--hocr/--alto from the command line, the environment and the config file; an output
    folder inside the input tree is refused as --markdown's is."""
    from scanning import scan

    make_pdf(in_tmp / "in" / "a.pdf", pages=1)
    inside = scan("in", "-o", "o.jsonl", "--hocr", "in/hocr", model=None)
    assert inside.exit_code == 2 and "--hocr in/hocr/in/a.pdf.hocr is inside the input folder" in inside.stderr
    from_env = scan("in", "-o", "o.jsonl", model=None, env={"PPVL_ALTO": "in/alto"})
    assert from_env.exit_code == 2 and "--alto in/alto/in/a.pdf.alto.xml is inside" in from_env.stderr
    (in_tmp / "ppvl-ocr.toml").write_text('[scan]\npdf = "in/pdf"\n')
    from_config = scan("in", "-o", "o.jsonl", model=None)
    assert from_config.exit_code == 2 and "--pdf in/pdf/in/a.pdf.pdf is inside" in from_config.stderr
    (in_tmp / "ppvl-ocr.toml").unlink()
    pdfa = scan("in", "-o", "o.jsonl", "--pdfa", "--hocr", "h", model=None)
    assert pdfa.exit_code == 2 and "give --pdf DIR too" in pdfa.stderr


MEASURE = """
import resource, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from scanning import SlowModel
from ppvl_batch.batch.local import Scan
from ppvl_batch.batch.options import ScanOptions

summary = Scan(ScanOptions(inputs=[sys.argv[2]], output=sys.argv[2] + ".jsonl", dpi=10, quiet=True,
                           pdf=Path("pdf"), hocr=Path("hocr"), alto=Path("alto")), SlowModel).run()
print(summary.pages_ok, summary.outputs_written, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def test_memory_stays_flat_writing_the_outputs_of_a_long_pdf(in_tmp: Path) -> None:
    """Peak RSS of a scan writing the PDF, hOCR and ALTO of a 300-page PDF is within a few MB of
    one of 5 pages (each in a fresh process)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS.parent), os.environ.get("PYTHONPATH")]))}
    peaks = {}
    for name, pages in [("short.pdf", 5), ("long.pdf", 300)]:
        make_pdf(in_tmp / name, pages=pages, size=(300, 300))
        run_ = subprocess.run([sys.executable, "-c", MEASURE, str(TESTS), name], capture_output=True, text=True,
                              env=env, timeout=600)
        ok, written, peak_kib = map(int, run_.stdout.split())
        assert (ok, written) == (pages, 3), run_.stderr
        peaks[name] = peak_kib / 1024
    with pymupdf.open(in_tmp / "pdf" / "long.pdf.pdf") as doc:
        assert doc.page_count == 300 and doc[299].get_text().split()[-1] == "x"
    # Each prepared page of the stand-in holds 1 MB: holding the pages would add 300 MB.
    assert peaks["long.pdf"] - peaks["short.pdf"] < 25, peaks
