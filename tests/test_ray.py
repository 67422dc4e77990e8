"""`ppvl-ocr scan --ray` on a real local Ray with 2 workers and the tiny bundle: the records of a
local run, a worker killed mid-run, the driver killed and run again, a page that kills its
worker every time, a worker with another bundle, Ray missing or unreachable, Ctrl-C; layout mode
(records, Markdown and image files of a local run, a page that kills its worker). Then the
executor's own mechanics (ppvl_batch.batch.ray_executor) with the toy page work of ray_toy.py:
setup errors and a page work that raises.

One local Ray serves the module (starting one takes seconds); drivers are real `ppvl-ocr`
processes joined to it by its address, so that they can be killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import orjson
import psutil
import pytest
import ray
from click.testing import CliRunner
from makedocs import make_pdf
from ray_toy import JsonlSink, ToyWork, crashed_record, make_units

from ppvl_batch.batch.ray_cluster import INSTALL_HINT, RayOptions, connect, limit_threads, parse_workers
from ppvl_batch.batch.ray_executor import CRASHED, SharedPathMissing, WorkerLoadError, run_on_ray
from ppvl_batch.batch.ray_scan import TEST_HOOK_EXIT_ON, TEST_HOOK_MODEL
from ppvl_batch.cli import main
from ppvl_batch.errors import ExitCode, UsageError

ROOT = Path(__file__).resolve().parents[1]
PPVL = str(Path(sys.executable).with_name("ppvl-ocr"))
# Workers import ppvl_batch and ray_toy from this checkout, not from wherever the venv points.
PYTHONPATH = os.pathsep.join([str(ROOT), str(ROOT / "tests")])
TWO = RayOptions(workers=2, cpus_per_worker=1, pages_per_task=2, task_retries=1)
SMALL = ["--min-pixels", "784", "--max-pixels", "3136"]
PAGES = {"a.pdf": 4, "b.pdf": 3, "c.pdf": 5}  # 12 pages, 6 tasks of 2


@pytest.fixture(scope="module")
def cluster() -> str:
    """A local Ray for the module; yields its address for driver processes to join."""
    with connect("local", runtime_env={"env_vars": {"PYTHONPATH": PYTHONPATH}}):
        yield ray.get_runtime_context().gcs_address


@pytest.fixture(scope="module")
def docs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ray-docs")
    for name, pages in PAGES.items():
        make_pdf(root / "docs" / name, pages=pages, label=name)
    return root / "docs"


@pytest.fixture(scope="module")
def local_records(docs: Path, tiny_bundle: Path, tmp_path_factory) -> set[tuple[str, str]]:
    """(key, text) of a local scan of `docs` (in process), with the answer length the Ray runs use."""
    out = tmp_path_factory.mktemp("local") / "out.jsonl"
    result = CliRunner().invoke(main, ["scan", str(docs), "-o", str(out), "--model", str(tiny_bundle), *SMALL,
                                       "--max-new-tokens", "24", "-q"], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    return {(r["key"], r["text"]) for r in records(out)}


def records(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def scan_on_ray(tmp: Path, docs: Path, bundle: Path, address: str, *extra: str, env: dict | None = None,
                **popen) -> subprocess.Popen:
    """`ppvl-ocr scan docs -o tmp/out.jsonl --ray address` with 2 workers, as a real process."""
    command = [PPVL, "scan", str(docs), "-o", str(tmp / "out.jsonl"), "--model", str(bundle), *SMALL,
               "--max-new-tokens", "24", "--ray", address, "--ray-workers", "2", "--ray-task-retries", "1",
               "--summary-json", str(tmp / "summary.json"), *extra]
    environment = {**os.environ, "PYTHONPATH": PYTHONPATH, "RAY_USAGE_STATS_ENABLED": "0", **(env or {})}
    return subprocess.Popen(command, env=environment, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **popen)


def wait_for_lines(path: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_bytes().count(b"\n") >= n):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the driver wrote too few records"
        time.sleep(0.05)


def ray_workers() -> list[psutil.Process]:
    """The page workers (Ray Data's map actors) of the module's Ray: processes this test started."""
    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.cmdline() and p.cmdline()[0].startswith("ray::MapWorker"):
                found.append(p)
        except psutil.Error:
            continue
    return found


def no_workers_left(timeout: float = 30) -> None:
    """Wait for the workers of earlier jobs to end (a job's actors go with its driver, in seconds),
    so that the workers a test then finds are its own run's."""
    _, alive = psutil.wait_procs(ray_workers(), timeout=timeout)
    assert not alive, f"workers of an earlier job are still running: {alive}"


def all_keys() -> int:
    return sum(PAGES.values())


# ------------------------------------------------------------------------------------ scan --ray


def test_ray_records_equal_a_local_run(cluster: str, docs: Path, tiny_bundle: Path, local_records, tmp_path: Path,
                                      monkeypatch) -> None:
    # The driver runs in this process, so this holds for it only (not for its workers): the
    # driver plans with the lazy recognizer and never loads weights.
    from ppvl_batch.engine.recognizer import Recognizer

    def no_weights(self) -> None:
        raise AssertionError("the driver loaded the model's weights")

    monkeypatch.setattr(Recognizer, "warm", no_weights)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["scan", str(docs), "-o", "out.jsonl", "--model", str(tiny_bundle), *SMALL,
                                       "--max-new-tokens", "24", "--ray", cluster, "--ray-workers", "2",
                                       "--markdown", "md", "--summary-json", "summary.json"], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    got = records(tmp_path / "out.jsonl")
    assert {(r["key"], r["text"]) for r in got} == local_records and len(got) == all_keys()
    assert result.stdout == "" and "3 files: 12 pages ok, 0 failed" in result.stderr
    for name, pages in PAGES.items():  # each document's Markdown, written once its last page was in
        md = next((tmp_path / "md").rglob(f"{name}.md")).read_text()
        assert md.count("<!-- page") == pages
    summary = orjson.loads((tmp_path / "summary.json").read_bytes())
    assert (summary["pages_ok"], summary["exit_code"]) == (12, 0)
    workers = summary["ray"]["workers"]
    # Two workers were asked for; one that starts late (a busy machine) may find the pages all taken.
    assert 1 <= len(workers) <= 2 and sum(w["pages"] for w in workers) == 12 and all(w["pages_per_minute"] > 0 for w in workers)
    assert all(w["threads"] == 1 for w in workers)  # the one CPU Ray gave each worker, not the machine's 2


def test_ray_auto_joins_the_cluster_that_ray_address_names(cluster: str, docs: Path, tiny_bundle: Path, local_records,
                                                           tmp_path: Path) -> None:
    """`--ray auto` as `ray job submit` runs it: the cluster comes from RAY_ADDRESS (a real process)."""
    proc = scan_on_ray(tmp_path, docs, tiny_bundle, "auto", env={"RAY_ADDRESS": cluster})
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    got = records(tmp_path / "out.jsonl")
    assert {(r["key"], r["text"]) for r in got} == local_records and len(got) == all_keys()
    assert orjson.loads((tmp_path / "summary.json").read_bytes())["ray"]["address"] == "auto"


def test_a_worker_killed_mid_run_is_replaced_and_every_page_recorded_once(
    cluster: str, docs: Path, tiny_bundle: Path, local_records, tmp_path: Path
) -> None:
    no_workers_left()
    proc = scan_on_ray(tmp_path, docs, tiny_bundle, cluster, "--ray-pages-per-task", "1")
    wait_for_lines(tmp_path / "out.jsonl", 1, proc)
    workers = ray_workers()
    assert len(workers) == 2
    workers[0].send_signal(signal.SIGKILL)  # one of this job's workers, while pages are still to come
    before = len(records(tmp_path / "out.jsonl"))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert before < all_keys()  # the kill came mid-run
    got = records(tmp_path / "out.jsonl")
    assert Counter(r["key"] for r in got) == Counter(k for k, _ in local_records)  # every page, exactly once
    assert {(r["key"], r["text"]) for r in got} == local_records


def test_driver_killed_then_rerun_records_every_page_once_and_redoes_nothing(
    cluster: str, docs: Path, tiny_bundle: Path, local_records, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    no_workers_left()
    proc = scan_on_ray(tmp_path, docs, tiny_bundle, cluster, "--ray-pages-per-task", "1")
    wait_for_lines(out, 3, proc)
    workers = ray_workers()
    proc.kill()  # kill -9 of our own driver process
    proc.communicate()
    first = out.read_bytes()
    first = first[: first.rfind(b"\n") + 1]  # a line cut in half is redone
    done = len(first.splitlines())
    assert 3 <= done < all_keys()
    # Its workers die with it (they belong to the driver's job): nothing is left computing.
    _, alive = psutil.wait_procs(workers, timeout=30)
    assert not alive, "the killed driver's workers are still running"

    proc = scan_on_ray(tmp_path, docs, tiny_bundle, cluster)
    stdout, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    data = out.read_bytes()
    assert data.startswith(first) and stdout == ""
    got = records(out)
    assert Counter(r["key"] for r in got) == Counter(k for k, _ in local_records)
    assert {(r["key"], r["text"]) for r in got} == local_records
    # The second run sent only the pages the first had not recorded.
    summary = orjson.loads((tmp_path / "summary.json").read_bytes())
    assert summary["pages_done_before"] == done and summary["pages_ok"] == all_keys() - done
    assert sum(w["pages"] for w in summary["ray"]["workers"]) == all_keys() - done


def test_a_page_that_kills_its_worker_every_time_becomes_one_error_record(
    cluster: str, docs: Path, tiny_bundle: Path, tmp_path: Path
) -> None:
    proc = scan_on_ray(tmp_path, docs, tiny_bundle, cluster, env={TEST_HOOK_EXIT_ON: "b.pdf:2"})
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == ExitCode.PAGES_FAILED, err
    got = records(tmp_path / "out.jsonl")
    assert len(got) == len({r["key"] for r in got}) == all_keys()
    (bad,) = [r for r in got if r["status"] != "ok"]
    assert (Path(bad["source"]).name, bad["page"], bad["error"]["type"]) == ("b.pdf", 2, CRASHED)
    assert "2 tries" in bad["error"]["message"] and bad["sha256"] and bad["page_count"] == 3  # --ray-task-retries 1
    assert f"b.pdf page 2: {CRASHED}" in err and "11 pages ok, 1 failed" in err
    summary = orjson.loads((tmp_path / "summary.json").read_bytes())
    assert summary["ray"]["crashed"] == 1 and summary["exit_code"] == 1


@pytest.mark.parametrize("case", ["another bundle", "no layout model"])
def test_a_worker_with_another_bundle_stops_the_job(
    cluster: str, docs: Path, tiny_bundle: Path, layout_bundle: Path, bundle_dirs, tmp_path: Path, case: str
) -> None:
    # The hook makes the workers load another bundle at "the same path": a node whose copy differs
    # (in layout mode: a node whose copy lacks the layout model, which --layout asks for).
    driver, worker, extra = {"another bundle": (tiny_bundle, bundle_dirs["v1-original"], []),
                             "no layout model": (layout_bundle, tiny_bundle, ["--layout"])}[case]
    proc = scan_on_ray(tmp_path, docs, driver, cluster, *extra, env={TEST_HOOK_MODEL: str(worker)})
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == ExitCode.MODEL, err
    (line,) = [line for line in err.splitlines() if line.startswith("ppvl-ocr: error:")]  # ours: one line
    assert "has bundle/settings" in line and "the driver has" in line and "same bundle at the same path" in line
    assert records(tmp_path / "out.jsonl") == []


@pytest.mark.parametrize("case", ["no ray", "unreachable", "auto, RAY_ADDRESS unreachable"])
def test_ray_missing_or_unreachable_is_exit_2_before_anything_is_written(
    docs: Path, tiny_bundle: Path, tmp_path: Path, case: str
) -> None:
    env, address, message = {}, "127.0.0.1:9", "cannot reach a Ray cluster at 127.0.0.1:9"  # the discard port
    if case.startswith("auto"):  # auto follows RAY_ADDRESS, even with the module's Ray running here
        env, address = {"RAY_ADDRESS": "127.0.0.1:9"}, "auto"
    if case == "no ray":  # a `ray` package that fails to import, as where the extra is not installed
        (tmp_path / "shadow" / "ray").mkdir(parents=True)
        (tmp_path / "shadow" / "ray" / "__init__.py").write_text("raise ImportError('No module named ray')\n")
        env, address, message = {"PYTHONPATH": f"{tmp_path / 'shadow'}{os.pathsep}{PYTHONPATH}"}, "local", INSTALL_HINT
    proc = scan_on_ray(tmp_path, docs, tiny_bundle, address, env=env)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == ExitCode.USAGE, err
    assert err.strip().splitlines()[-1].startswith(f"ppvl-ocr: error: {message}") and out == ""
    assert not (tmp_path / "out.jsonl").exists()


def test_ctrl_c_stops_a_local_ray_run_with_130_and_leaves_no_ray_behind(docs: Path, tiny_bundle: Path,
                                                                        tmp_path: Path) -> None:
    # Its own local Ray, in its own session: a terminal's Ctrl-C reaches the whole group.
    proc = scan_on_ray(tmp_path, docs, tiny_bundle, "local", "--ray-pages-per-task", "1", "--max-new-tokens", "64",
                       start_new_session=True)
    wait_for_lines(tmp_path / "out.jsonl", 1, proc, timeout=180)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == ExitCode.INTERRUPTED, err
    assert "re-run the same command to resume" in err
    summary = orjson.loads((tmp_path / "summary.json").read_bytes())
    got = records(tmp_path / "out.jsonl")  # whole lines only, each page once
    assert summary["interrupted"] and len(got) == summary["pages_ok"] == len({r["key"] for r in got}) < all_keys()
    deadline = time.monotonic() + 20
    while left := [p for p in psutil.process_iter() if _group(p.pid) == proc.pid]:
        assert time.monotonic() < deadline, f"local Ray processes left behind: {left}"
        time.sleep(0.2)


def _group(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


@pytest.mark.parametrize("label", ["text", "image"])
def test_layout_mode_on_ray_gives_a_local_runs_records_markdown_and_images(
    cluster: str, layout_bundle: Path, image_layout_bundle: Path, tmp_path: Path, monkeypatch, label: str
) -> None:
    # Each tiny layout model finds one block a page, all of one label (the same box for every
    # query): text blocks are read by the worker's decoder, image blocks saved by the worker.
    bundle = {"text": layout_bundle, "image": image_layout_bundle}[label]
    # The documents lie under the driver's working directory and the output folder is relative
    # to it: a worker, which runs in another one, must mirror and save as the driver would.
    monkeypatch.chdir(tmp_path)
    make_pdf(tmp_path / "docs" / "a.pdf", pages=2, size=(300, 400), label="a")
    make_pdf(tmp_path / "docs" / "b.pdf", pages=1, size=(300, 400), label="b")
    scan = ["scan", "docs", "--model", str(bundle), "--max-new-tokens", "4", "--dpi", "72", "-q"]
    # One thread, as each worker has: the detector's float sums, hence the blocks' scores, alike.
    local = CliRunner().invoke(main, [*scan, "-o", "local.jsonl", "--markdown", "md-local", "--threads", "1"],
                               catch_exceptions=False)
    assert local.exit_code == 0, local.stderr
    # b.pdf's page, alone in the second task, kills its worker: with no retries, one restart.
    monkeypatch.setenv(TEST_HOOK_EXIT_ON, "b.pdf:1")  # read by the driver (this process), carried to the workers
    on_ray = CliRunner().invoke(main, [*scan, "-o", "ray.jsonl", "--markdown", "md-ray", "--ray", cluster,
                                       "--ray-workers", "1", "--ray-task-retries", "0"], catch_exceptions=False)
    assert on_ray.exit_code == ExitCode.PAGES_FAILED, on_ray.stderr

    def by_key(path: Path) -> dict[str, dict]:
        return {r["key"]: {k: v for k, v in r.items() if k != "seconds"} for r in records(path)}

    want, got = by_key(tmp_path / "local.jsonl"), by_key(tmp_path / "ray.jsonl")
    (crashed,) = [r for r in got.values() if r["status"] == "error"]
    read = want.pop(crashed["key"])
    assert (crashed["source"], crashed["error"]["type"], crashed["blocks"]) == ("docs/b.pdf", CRASHED, None)
    # a crashed page's record is one of this run's: layout mode's task and layout model
    same = ("task", "layout_model", "model", "sha256")
    assert {k: crashed[k] for k in same} == {k: read[k] for k in same} and read["task"] == "layout"
    del got[crashed["key"]]
    assert got == want and len(got) == 2
    blocks = [b for r in got.values() for b in r["blocks"]]
    assert {b["label"] for b in blocks} == {label}

    def files(root: Path) -> dict[Path, bytes]:
        return {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    made, expected = files(tmp_path / "md-ray"), files(tmp_path / "md-local")
    assert Path("docs/b.pdf.md") in made  # saying that its page failed
    assert {p: data for p, data in made.items() if "b.pdf" not in str(p)} == \
        {p: data for p, data in expected.items() if "b.pdf" not in str(p)}
    images = {Path("docs") / b["image"] for b in blocks if b["image"]}  # links are relative to the Markdown
    assert images == {p for p in made if p.suffix == ".png"} and bool(images) == (label == "image")


def test_an_image_folder_a_worker_cannot_write_stops_the_job_with_exit_4(cluster: str, image_layout_bundle: Path,
                                                                       tmp_path: Path, monkeypatch) -> None:
    """As in a local run (test_layout_scan.py): the worker's OutputError reaches the driver as
    exit 4 naming the file and the node; what was recorded stays; the same command then resumes."""
    monkeypatch.chdir(tmp_path)
    make_pdf(tmp_path / "docs" / "a.pdf", pages=2, size=(300, 400), label="a")
    make_pdf(tmp_path / "docs" / "b.pdf", pages=1, size=(300, 400), label="b")
    blocker = tmp_path / "md" / "docs" / "b.pdf_images"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("a file where b.pdf's image folder goes")
    scan = ["scan", "docs", "-o", "out.jsonl", "--model", str(image_layout_bundle), "--max-new-tokens", "4", "--dpi", "72",
            "--markdown", "md", "--ray", cluster, "--ray-workers", "1", "--ray-pages-per-task", "1"]
    result = CliRunner().invoke(main, scan, catch_exceptions=False)
    assert result.exit_code == ExitCode.OUTPUT, result.stderr
    [line] = [ln for ln in result.stderr.splitlines() if "cannot write" in ln]
    assert "md/docs/b.pdf_images/p0001_000_image.png" in line and "on node" in line
    before = records(tmp_path / "out.jsonl")
    assert all(r["source"] == "docs/a.pdf" and r["status"] == "ok" for r in before)

    blocker.unlink()
    again = CliRunner().invoke(main, scan, catch_exceptions=False)
    assert again.exit_code == 0, again.stderr
    got = records(tmp_path / "out.jsonl")
    assert got[: len(before)] == before
    assert Counter((r["source"], r["page"]) for r in got) == Counter([("docs/a.pdf", 1), ("docs/a.pdf", 2), ("docs/b.pdf", 1)])
    assert (tmp_path / "md" / "docs" / "b.pdf_images" / "p0001_000_image.png").is_file()


# ------------------------------------------------------------------- executor mechanics (toy work)


@pytest.mark.parametrize("case", ["shared_path", "load"])
def test_a_worker_that_cannot_start_stops_the_job_with_one_clear_line(cluster: str, tmp_path: Path, case: str) -> None:
    units = make_units(tmp_path / "docs", docs=1, pages=2)
    bundle = str(tmp_path / "not-on-this-node")
    settings, probes, error, code, text = {
        "shared_path": ({"fingerprint": "toy"}, {bundle: None}, SharedPathMissing, ExitCode.USAGE,
                        f"does not see {bundle} as the driver does; the bundle and the inputs must be at the same path on every node"),
        "load": ({"fail_load": "bundle.gguf: truncated"}, None, WorkerLoadError, ExitCode.MODEL,
                 "cannot load the model: bundle.gguf: truncated"),
    }[case]
    sink = JsonlSink(tmp_path / "out.jsonl")
    with pytest.raises(error) as e:
        run_on_ray(units, ToyWork, settings, "toy", sink, crashed_record, TWO, probes=probes)
    assert text in str(e.value) and "\n" not in str(e.value) and e.value.exit_code == code
    assert (tmp_path / "out.jsonl").read_bytes() == b""


def test_an_exception_from_the_page_work_fails_the_job(cluster: str, tmp_path: Path) -> None:
    units = make_units(tmp_path / "docs", docs=1, pages=2)
    sink = JsonlSink(tmp_path / "out.jsonl")
    with pytest.raises(Exception, match="toy bug on doc0.bin page 2"):  # a bug is not a page error: not hidden
        run_on_ray(units, ToyWork, {"fingerprint": "toy", "raise_on": units[1].key}, "toy", sink, crashed_record, TWO)


def test_workers_option_and_thread_limits() -> None:
    assert parse_workers("3") == 3 and parse_workers("1:4") == (1, 4)
    for bad in ("0", "4:2", "x", "1:"):
        with pytest.raises(UsageError):
            parse_workers(bad)
    for bad in ({"cpus_per_worker": 0}, {"pages_per_task": 0}, {"task_retries": -1}):
        with pytest.raises(UsageError):
            RayOptions(**bad)
    import torch

    before = torch.get_num_threads()
    try:
        limit_threads(1)
        assert torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1"
    finally:
        torch.set_num_threads(before)
