"""The Ray executor (ppvl_batch.batch.ray_executor) on a real local Ray with 2 workers and the toy page work
of ray_toy.py: records, worker and driver deaths, a page that kills its worker, setup errors.

One local Ray serves the whole module (starting one takes seconds); tests that must kill or
interrupt a driver run ray_toy.py as a real process, joined to that Ray (or to its own local one).
"""

from __future__ import annotations

import json
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
from ray_toy import JsonlSink, ToyWork, crashed_record, make_units

from ppvl_batch.batch.ray_executor import (
    CRASHED, INSTALL_HINT, RayOptions, RayUnavailable, SharedPathMissing, WorkerLoadError, WorkerMismatch, connect,
    import_ray, limit_threads, parse_workers, run_on_ray,
)
from ppvl_batch.errors import ExitCode, UsageError

ROOT = Path(__file__).resolve().parents[1]
TOY = str(ROOT / "tests" / "ray_toy.py")
# Workers import ppvl_batch and ray_toy from this checkout, not from wherever the venv points.
PYTHONPATH = os.pathsep.join([str(ROOT), str(ROOT / "tests")])
TWO = RayOptions(workers=2, cpus_per_worker=1, pages_per_task=2, task_retries=1)


@pytest.fixture(scope="module")
def cluster() -> str:
    """A local Ray for the module; yields its address for driver processes to join."""
    with connect("local", runtime_env={"env_vars": {"PYTHONPATH": PYTHONPATH}}):
        yield ray.get_runtime_context().gcs_address


def records(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def toy_run(tmp: Path, progress=None, **settings) -> tuple[list, JsonlSink, object]:
    """20 pages (4 documents of 5) through 2 workers, 2 pages per task, 1 retry."""
    units = make_units(tmp / "docs", docs=4, pages=5)
    settings = {"fingerprint": "toy", "pids": str(pids_dir(tmp)), **settings}
    sink = JsonlSink(tmp / "out.jsonl")
    try:
        run = run_on_ray(units, ToyWork, settings, "toy", sink, crashed_record, TWO, progress=progress)
    finally:
        sink.close()
    return units, sink, run


def pids_dir(tmp: Path) -> Path:
    (tmp / "pids").mkdir(exist_ok=True)
    return tmp / "pids"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def toy_driver(tmp: Path, address: str, *extra: str, **popen) -> subprocess.Popen:
    # cwd: a driver joining the module's Ray gives its workers its working directory as import path.
    env = {**os.environ, "PYTHONPATH": PYTHONPATH, "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.Popen([sys.executable, TOY, str(tmp / "docs"), str(tmp / "out.jsonl"), "--address", address,
                             *extra], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def wait_for_lines(path: Path, n: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_bytes().count(b"\n") >= n):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the driver wrote too few records"
        time.sleep(0.05)


# ---------------------------------------------------------------------------------------- records


def test_records_equal_a_sequential_run(cluster: str, tmp_path: Path) -> None:
    units, sink, run = toy_run(tmp_path, sleep=0.02)
    expected = ToyWork({"fingerprint": "toy"}, 1).run(units)
    got = records(tmp_path / "out.jsonl")
    assert len(got) == len(units) == 20
    assert {orjson.dumps(r) for r in got} == {orjson.dumps(r) for r in expected}
    assert run.pages_ok == 20 and run.pages_failed == 0 and run.repeats == 0 and not run.interrupted
    # Each document was done once, when its 5 pages were all written.
    assert sorted(sink.documents) == [(f"doc{d}.bin", 5) for d in range(4)]
    # Two workers shared the pages; each used exactly the one CPU Ray gave it.
    workers = run.workers_summary()
    assert len(workers) == 2 and sum(w["pages"] for w in workers) == 20 and all(w["pages_per_minute"] > 0 for w in workers)
    infos = [json.loads(p.read_text()) for p in pids_dir(tmp_path).iterdir()]
    assert infos and all(i == {"threads": 1, "omp": "1"} for i in infos)


def test_a_worker_killed_mid_run_is_replaced_and_every_page_recorded_once(cluster: str, tmp_path: Path) -> None:
    killed: list[int] = []

    def kill_one(record: dict) -> None:
        if not killed:
            pid = int(next(p for p in pids_dir(tmp_path).iterdir() if alive(int(p.name))).name)
            os.kill(pid, signal.SIGKILL)  # a worker this run started, found by the pid it wrote
            killed.append(pid)

    units, _, run = toy_run(tmp_path, kill_one, sleep=0.1)
    keys = Counter(r["key"] for r in records(tmp_path / "out.jsonl"))
    assert keys == Counter(u.key for u in units)  # every page, exactly once
    assert all(r["status"] == "ok" for r in records(tmp_path / "out.jsonl"))
    assert killed and not alive(killed[0])
    assert len(list(pids_dir(tmp_path).iterdir())) == 3  # the killed worker was started again
    assert run.pages_ok == 20


def test_a_page_that_kills_its_worker_every_time_becomes_one_error_record(cluster: str, tmp_path: Path) -> None:
    units = make_units(tmp_path / "docs", docs=4, pages=5)
    poison = units[7]
    log = tmp_path / "computed.log"
    proc = toy_driver(tmp_path, cluster, "--settings", json.dumps({"crash_on": poison.key, "log": str(log)}))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == ExitCode.PAGES_FAILED, err
    got = records(tmp_path / "out.jsonl")
    assert Counter(r["key"] for r in got) == Counter(u.key for u in units)
    (bad,) = [r for r in got if r["status"] != "ok"]
    assert bad["key"] == poison.key and bad["error"]["type"] == CRASHED and "2 tries" in bad["error"]["message"]
    assert f"{poison.source} page {poison.page}: {CRASHED}".encode() in err
    assert log.read_text().splitlines().count(poison.key) == 2  # --task-retries 1: two tries, then its record
    assert out == b""  # Ray's reports of the deaths went to stderr, not among the records
    summary = json.loads(err.decode().strip().splitlines()[-1])
    assert [poison.source, 5] in summary["documents"]  # its error record completed its document


# ------------------------------------------------------------------------------------ setup errors


@pytest.mark.parametrize("case", ["fingerprint", "shared_path", "load"])
def test_a_worker_that_cannot_start_stops_the_job_with_one_clear_line(cluster: str, tmp_path: Path, case: str) -> None:
    units = make_units(tmp_path / "docs", docs=1, pages=2)
    bundle = str(tmp_path / "not-on-this-node")
    settings, probes, error, code, text = {
        "fingerprint": ({"fingerprint": "bundle-b"}, None, WorkerMismatch, ExitCode.MODEL,
                        "has bundle/settings bundle-b, the driver has toy"),
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


def test_without_ray_the_option_says_how_to_install_it(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets where it is not installed
    with pytest.raises(RayUnavailable) as e:
        import_ray()
    assert str(e.value) == INSTALL_HINT and e.value.exit_code == ExitCode.USAGE


def test_an_unreachable_address_is_a_clear_error(tmp_path: Path) -> None:
    proc = toy_driver(tmp_path, "127.0.0.1:9")  # nothing listens on the discard port here
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == ExitCode.USAGE, err
    assert b"cannot reach a Ray cluster at 127.0.0.1:9" in err and out == b""


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


# ---------------------------------------------------------------------------------- driver deaths


def test_driver_killed_then_rerun_records_every_page_once_and_redoes_nothing(cluster: str, tmp_path: Path) -> None:
    out, log = tmp_path / "out.jsonl", tmp_path / "computed.log"
    settings = json.dumps({"sleep": 0.15, "log": str(log), "pids": str(pids_dir(tmp_path))})
    proc = toy_driver(tmp_path, cluster, "--settings", settings)
    wait_for_lines(out, 6, proc)
    proc.kill()  # kill -9 of our own driver process
    proc.communicate()
    first = out.read_bytes()
    first = first[: first.rfind(b"\n") + 1]  # a line cut in half is redone
    done_before = {orjson.loads(line)["key"] for line in first.splitlines()}
    # Its workers die with it (they are owned by the driver's job).
    deadline = time.monotonic() + 30
    while any(alive(int(p.name)) for p in pids_dir(tmp_path).iterdir()):
        assert time.monotonic() < deadline, "the killed driver's workers are still running"
        time.sleep(0.2)
    computed_before = len(log.read_text().splitlines())

    proc = toy_driver(tmp_path, cluster, "--settings", settings)
    stdout, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert stdout == b""  # Ray's own messages never reach stdout
    data = out.read_bytes()
    assert data.startswith(first)
    keys = Counter(orjson.loads(line)["key"] for line in data.splitlines())
    assert keys == Counter(u.key for u in make_units(tmp_path / "docs", 4, 5))
    redone = set(log.read_text().splitlines()[computed_before:])
    assert redone and not redone & done_before


def test_ctrl_c_stops_a_local_ray_run_with_130_and_leaves_no_ray_behind(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    # Its own local Ray, in its own session: a terminal's Ctrl-C reaches the whole group.
    proc = toy_driver(tmp_path, "local", "--settings", json.dumps({"sleep": 0.15}), start_new_session=True)
    wait_for_lines(out, 4, proc, timeout=90)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == ExitCode.INTERRUPTED, err
    summary = json.loads(err.decode().strip().splitlines()[-1])
    assert summary["interrupted"] and 4 <= summary["ok"] < 20
    got = records(out)  # whole lines only, each page once (the kill -9 test covers the resume)
    assert len(got) == summary["ok"] == len({r["key"] for r in got})
    deadline = time.monotonic() + 20
    while left := [p for p in psutil.process_iter() if _group(p.pid) == proc.pid]:
        assert time.monotonic() < deadline, f"local Ray processes left behind: {left}"
        time.sleep(0.2)


def _group(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None
