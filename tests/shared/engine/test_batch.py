"""Tests of the batch-job runner: outputs, manifest, errors, resume after a kill, prefetch, sharding."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from medvit.shared.engine.batch import (
    BatchJob,
    common_root,
    merge_manifest_parts,
    output_relpath,
    resolve_inputs,
    run_batch,
    split_ext,
)
from medvit.shared.errors import DataError

_SCRIPT = Path(__file__).with_name("_batch_torchrun_script.py")
_spec = importlib.util.spec_from_file_location("_batch_torchrun_script", _SCRIPT)
assert _spec is not None and _spec.loader is not None
_toy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_toy)
UpperJob = _toy.UpperJob


def make_inputs(root: Path, texts: dict[str, str]) -> list[Path]:
    for rel, text in texts.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return resolve_inputs(root, [".txt"])


def read_manifest(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def hidden_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*"))


TEXTS = {f"s{i // 3}/f{i:02d}.txt": f"text number {i}" for i in range(8)}


@pytest.fixture
def job_inputs(tmp_path: Path) -> tuple[Path, list[Path]]:
    return tmp_path / "in", make_inputs(tmp_path / "in", TEXTS)


def test_all_ok(job_inputs: tuple[Path, list[Path]], tmp_path: Path) -> None:
    root, inputs = job_inputs
    out = tmp_path / "out" / "nested"  # created by the runner
    summary = run_batch(UpperJob(root), inputs, out, quiet=True)
    assert (summary.ok, summary.skipped, summary.error, summary.exit_code) == (8, 0, 0, 0)
    assert summary.manifest_path == out / "manifest.csv"
    assert summary.line == f"8 ok, 0 skipped, 0 errors — see {out / 'manifest.csv'}"
    for rel, text in TEXTS.items():
        assert (out / rel.replace(".txt", ".out.txt")).read_text() == text.upper()
    rows = read_manifest(out / "manifest.csv")
    assert list(rows[0]) == ["input", "outputs", "status", "message", "seconds", "chars"]
    assert [r["input"] for r in rows] == [str(p) for p in inputs]
    assert all(r["status"] == "ok" and r["message"] == "" and float(r["seconds"]) >= 0 for r in rows)
    assert [int(r["chars"]) for r in rows] == [len(t) for t in TEXTS.values()]
    assert rows[3]["outputs"] == "s1/f03.out.txt"
    assert hidden_files(out) == []  # no temps, no journal


@pytest.mark.parametrize(
    ("fail_with", "fail_in", "message"),
    [
        (DataError, "process", "f03.txt: contains BAD"),
        (DataError, "load", "f03.txt: contains BAD"),
        (ValueError, "process", "ValueError: f03.txt: contains BAD"),
        (ZeroDivisionError, "load", "ZeroDivisionError: f03.txt: contains BAD"),
    ],
)
@pytest.mark.parametrize("batch_size", [1, 3])
def test_bad_file_in_the_middle(
    tmp_path: Path, fail_with: type[Exception], fail_in: str, message: str, batch_size: int
) -> None:
    texts = dict(TEXTS)
    texts["s1/f03.txt"] = "this one is BAD"
    inputs = make_inputs(tmp_path / "in", texts)
    out = tmp_path / "out"
    job = UpperJob(tmp_path / "in", fail_with=fail_with, fail_in=fail_in)
    summary = run_batch(job, inputs, out, quiet=True, batch_size=batch_size)
    assert (summary.ok, summary.skipped, summary.error, summary.exit_code) == (7, 0, 1, 1)
    assert summary.line.startswith("7 ok, 0 skipped, 1 error — see ")
    rows = {Path(r["input"]).name: r for r in read_manifest(out / "manifest.csv")}
    assert len(rows) == 8
    assert rows["f03.txt"]["status"] == "error"
    assert rows["f03.txt"]["message"] == message
    assert not (out / "s1" / "f03.out.txt").exists()
    for rel, text in texts.items():
        if "BAD" not in text:
            assert (out / rel.replace(".txt", ".out.txt")).read_text() == text.upper()
            assert rows[Path(rel).name]["status"] == "ok"
    assert hidden_files(out) == []


def test_missing_input_and_outputs_for_error_are_item_errors(tmp_path: Path) -> None:
    inputs = make_inputs(tmp_path / "in", {"a.txt": "a", "b.txt": "b"})

    class Job(UpperJob):
        def outputs_for(self, item: Path) -> list[Path]:
            if item.name == "b.txt":
                raise DataError("b.txt: cannot name an output")
            return super().outputs_for(item)

    gone = tmp_path / "in" / "gone.txt"
    summary = run_batch(Job(tmp_path / "in"), [*inputs, gone], tmp_path / "out", quiet=True)
    assert (summary.ok, summary.error) == (1, 2)
    rows = {Path(r["input"]).name: r for r in read_manifest(summary.manifest_path)}
    assert rows["b.txt"]["message"] == "b.txt: cannot name an output"
    assert rows["gone.txt"]["message"] == f"input not found: {gone}"


def _start_job(root: Path, out: Path, *, sleep: float) -> subprocess.Popen:
    """The toy job over ``root`` into ``out`` in a separate process (one thread, no rank environment)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RANK", None), env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, str(_SCRIPT), str(root), str(out), "--sleep", str(sleep)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_kill_and_rerun(job_inputs: tuple[Path, list[Path]], tmp_path: Path) -> None:
    root, inputs = job_inputs
    out = tmp_path / "out"
    proc = _start_job(root, out, sleep=0.2)
    try:
        deadline = time.monotonic() + 60
        while len(list(out.rglob("f*.out.txt"))) < 3:
            assert proc.poll() is None, "the job finished before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(0.07)  # most likely inside the half-written temp of the next item
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done_before = sorted(p.name for p in out.rglob("f*.out.txt"))
    assert 3 <= len(done_before) < len(inputs)
    if (out / "manifest.csv").exists():  # whatever the kill interrupted, the manifest parses
        assert all(r["status"] in ("ok", "error") for r in read_manifest(out / "manifest.csv"))

    summary = run_batch(UpperJob(root), inputs, out, quiet=True)
    assert (summary.ok, summary.skipped, summary.error) == (len(inputs) - len(done_before), len(done_before), 0)
    rows = read_manifest(out / "manifest.csv")
    assert [r["input"] for r in rows] == [str(p) for p in inputs]  # every input exactly once, in order
    for row in rows:
        name = Path(row["input"]).name.replace(".txt", ".out.txt")
        assert row["status"] == ("skipped" if name in done_before else "ok")
        # extra columns of the killed run's items survive through the journal
        assert int(row["chars"]) == len(Path(row["input"]).read_text())
    for rel, text in TEXTS.items():
        assert (out / rel.replace(".txt", ".out.txt")).read_text() == text.upper()
    assert hidden_files(out) == []
    assert len(list(out.rglob("*.out.txt"))) == len(inputs)


def _lock_of(pid: int, host: str | None = None) -> str:
    return json.dumps({"pid": pid, "host": host or socket.gethostname(), "since": time.time(), "command": "upper"})


def test_second_writer_refused_while_first_runs(job_inputs: tuple[Path, list[Path]], tmp_path: Path) -> None:
    root, inputs = job_inputs
    out = tmp_path / "out"
    proc = _start_job(root, out, sleep=0.3)
    try:
        deadline = time.monotonic() + 60
        while not (out / ".medvit.lock").exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        other = make_inputs(tmp_path / "other", {"x.txt": "x"})
        with pytest.raises(DataError, match=rf"in use by another run \(`upper` pid {proc.pid} on "):
            run_batch(UpperJob(tmp_path / "other"), other, out, quiet=True)
        assert proc.wait(timeout=120) == 0  # the first run is not disturbed
    finally:
        proc.kill()
        proc.wait()
    rows = read_manifest(out / "manifest.csv")
    assert [r["input"] for r in rows] == [str(p) for p in inputs] and {r["status"] for r in rows} == {"ok"}
    assert hidden_files(out) == []


def test_live_lock_refused_stale_lock_removed(
    job_inputs: tuple[Path, list[Path]], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root, inputs = job_inputs
    out = tmp_path / "out"
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".medvit.lock").write_text(_lock_of(sleeper.pid))
        with pytest.raises(DataError, match=f"pid {sleeper.pid}.*remove {re.escape(str(out / '.medvit.lock'))}"):
            run_batch(UpperJob(root), inputs, out, quiet=True)
        assert sorted(p.name for p in out.iterdir()) == [".medvit.lock"]  # nothing written, lock kept
        # A lock of a distributed run's rank excludes a single-process run as well.
        (out / ".medvit.lock").rename(out / ".medvit.lock.rank1")
        with pytest.raises(DataError, match="in use by another run"):
            run_batch(UpperJob(root), inputs, out, quiet=True)
    finally:
        sleeper.kill()
        sleeper.wait()
    # The same lock once its owner is gone is stale: removed with a warning, and the run goes ahead.
    with caplog.at_level("WARNING"):
        summary = run_batch(UpperJob(root), inputs, out, quiet=True)
    assert summary.ok == len(inputs)
    assert "removing a stale lock" in caplog.text
    assert hidden_files(out) == []


def test_lock_of_another_host_is_not_guessed_stale(job_inputs: tuple[Path, list[Path]], tmp_path: Path) -> None:
    root, inputs = job_inputs
    out = tmp_path / "out"
    out.mkdir()
    (out / ".medvit.lock").write_text(_lock_of(999999, host="node-17.cluster"))
    with pytest.raises(DataError, match="pid 999999 on node-17.cluster"):
        run_batch(UpperJob(root), inputs, out, quiet=True)


def test_later_run_with_other_inputs_adds_to_manifest(tmp_path: Path) -> None:
    first = make_inputs(tmp_path / "a", {f"a{i}.txt": f"a{i}" for i in range(3)})
    second = make_inputs(tmp_path / "b", {f"b{i}.txt": f"b{i}" for i in range(2)})
    out = tmp_path / "out"
    run_batch(UpperJob(tmp_path / "a"), first, out, quiet=True)
    summary = run_batch(UpperJob(tmp_path / "b"), second, out, quiet=True)
    assert (summary.ok, summary.skipped, summary.error) == (2, 0, 0)  # counts of this run's inputs only
    rows = read_manifest(out / "manifest.csv")
    assert [r["input"] for r in rows] == [str(p) for p in [*first, *second]]
    assert [r["chars"] for r in rows] == ["2"] * 5  # the first run's extra columns kept
    again = run_batch(UpperJob(tmp_path / "a"), first, out, quiet=True)  # a rerun keeps everything too
    assert again.skipped == 3 and len(read_manifest(out / "manifest.csv")) == 5


def test_merge_keeps_rows_of_earlier_runs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    header = "input,outputs,status,message,seconds\n"
    (out / "manifest.csv").write_text(header + "/old/x.txt,,ok,,0.1\n/new/a.txt,,error,boom,0.1\n")
    (out / "manifest.rank0.csv").write_text(header + "/new/a.txt,,ok,,0.2\n")
    (out / "manifest.rank1.csv").write_text(header + "/new/b.txt,,ok,,0.2\n")
    rows = read_manifest(merge_manifest_parts(out, 2))
    assert [(r["input"], r["status"]) for r in rows] == [
        ("/new/a.txt", "ok"),
        ("/new/b.txt", "ok"),
        ("/old/x.txt", "ok"),
    ]


def test_keyboard_interrupt_leaves_no_temps_and_resumes(job_inputs: tuple[Path, list[Path]], tmp_path: Path) -> None:
    root, inputs = job_inputs
    out = tmp_path / "out"

    class Interrupted(UpperJob):
        def process(self, item: Path, loaded: str, tmp_outputs: list[Path]) -> Mapping[str, Any]:
            if item.name == "f04.txt":
                tmp_outputs[0].write_text("half")
                raise KeyboardInterrupt
            return super().process(item, loaded, tmp_outputs)

    with pytest.raises(KeyboardInterrupt):
        run_batch(Interrupted(root), inputs, out, quiet=True)
    assert [p.name for p in out.rglob(".*")] == [".manifest.csv.journal"]  # kept: run unfinished
    assert len(read_manifest(out / "manifest.csv")) == 4  # snapshot written on the way out
    summary = run_batch(UpperJob(root), inputs, out, quiet=True)
    assert (summary.ok, summary.skipped, summary.error) == (4, 4, 0)
    assert hidden_files(out) == []


def test_rows_recovered_from_journal(job_inputs: tuple[Path, list[Path]], tmp_path: Path) -> None:
    root, inputs = job_inputs
    out = tmp_path / "out"
    run_batch(UpperJob(root), inputs, out, quiet=True)
    # State after a kill between snapshots: a stale CSV, journal lines, the last one cut short.
    (out / "manifest.csv").write_text("input,outputs,status,message,seconds\n")
    lines = [json.dumps({"input": str(p), "status": "ok", "chars": 100 + i}) for i, p in enumerate(inputs[:2])]
    (out / ".manifest.csv.journal").write_text("\n".join(lines) + '\n{"input": "/x", "sta')
    summary = run_batch(UpperJob(root), inputs, out, quiet=True)
    assert summary.skipped == 8
    rows = read_manifest(out / "manifest.csv")
    assert [r["chars"] for r in rows] == ["100", "101"] + [""] * 6
    assert hidden_files(out) == []


def test_stale_temps_removed_others_kept(job_inputs: tuple[Path, list[Path]], tmp_path: Path) -> None:
    root, inputs = job_inputs
    out = tmp_path / "out"
    (out / "s0").mkdir(parents=True)
    stale = [out / "s0" / ".f00.out.tmp-999999.txt", out / ".manifest.tmp-12345.csv"]
    for p in stale:
        p.write_text("partial")
    foreign = [out / ".keep", out / "s0" / ".other.tmp-1.txt"]  # not a temp of one of our outputs
    for p in foreign:
        p.write_text("x")
    run_batch(UpperJob(root), inputs, out, quiet=True)
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in foreign)


def test_overwrite(job_inputs: tuple[Path, list[Path]], tmp_path: Path) -> None:
    root, inputs = job_inputs
    out = tmp_path / "out"
    run_batch(UpperJob(root), inputs, out, quiet=True)
    target = out / "s0" / "f00.out.txt"
    target.write_text("edited")
    again = run_batch(UpperJob(root), inputs, out, quiet=True)
    assert (again.ok, again.skipped, again.exit_code) == (0, 8, 0)
    assert target.read_text() == "edited"
    rows = read_manifest(out / "manifest.csv")
    assert all(r["status"] == "skipped" for r in rows)
    assert [int(r["chars"]) for r in rows] == [len(t) for t in TEXTS.values()]  # merged from the last run
    redo = run_batch(UpperJob(root), inputs, out, quiet=True, overwrite=True)
    assert (redo.ok, redo.skipped) == (8, 0)
    assert target.read_text() == TEXTS["s0/f00.txt"].upper()


@pytest.mark.parametrize("where", ["parent", "absolute", "dotdot_nested", "folder_itself"])
def test_outputs_outside_out_dir_refused(tmp_path: Path, where: str) -> None:
    inputs = make_inputs(tmp_path / "in", {"a.txt": "a"})
    out = tmp_path / "out"
    bad = {
        "parent": Path("../escape.txt"),
        "absolute": tmp_path / "elsewhere" / "escape.txt",
        "dotdot_nested": Path("sub/../../escape.txt"),
        "folder_itself": Path("."),
    }[where]

    class Escaping(UpperJob):
        def outputs_for(self, item: Path) -> list[Path]:
            return [bad]

    with pytest.raises(DataError, match="outside the output folder"):
        run_batch(Escaping(tmp_path / "in"), inputs, out, quiet=True)
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "elsewhere").exists()
    assert list(out.iterdir()) == []


def test_colliding_outputs_refused(tmp_path: Path) -> None:
    inputs = make_inputs(tmp_path / "in", {"a/x.txt": "1", "b/x.txt": "2"})

    class Flat(UpperJob):
        def outputs_for(self, item: Path) -> list[Path]:
            return [Path(item.name)]

    with pytest.raises(DataError, match="would both write"):
        run_batch(Flat(tmp_path / "in"), inputs, tmp_path / "out", quiet=True)


def test_inputs_inside_out_dir_ignored(tmp_path: Path) -> None:
    root = tmp_path / "data"
    make_inputs(root, {"a.txt": "a"})
    run_batch(UpperJob(root), resolve_inputs(root, [".txt"]), root / "out", quiet=True)
    # The second run finds a.txt and out/a.out.txt; the latter must not become an input.
    inputs = resolve_inputs(root, [".txt"])
    assert len(inputs) == 2
    summary = run_batch(UpperJob(root), inputs, root / "out", quiet=True)
    assert (summary.ok, summary.skipped, summary.error) == (0, 1, 0)
    with pytest.raises(DataError, match="no inputs to process"):
        run_batch(UpperJob(root), [root / "out" / "a.out.txt"], root / "out", quiet=True)


def test_manifest_only_job_skips_on_rerun(tmp_path: Path) -> None:
    inputs = make_inputs(tmp_path / "in", {"a.txt": "aa", "b.txt": "BAD"})

    class Score(BatchJob):
        def outputs_for(self, item: Path) -> list[Path]:
            return []

        def process(self, item: Path, loaded: Any, tmp_outputs: list[Path]) -> Mapping[str, Any]:
            text = item.read_text()
            if text == "BAD":
                raise DataError(f"{item.name}: bad")
            return {"score": len(text) / 4}

    first = run_batch(Score(), inputs, tmp_path / "out", quiet=True)
    assert (first.ok, first.error) == (1, 1)
    second = run_batch(Score(), inputs, tmp_path / "out", quiet=True)
    assert (second.ok, second.skipped, second.error) == (0, 1, 1)  # the error is retried, the ok kept
    rows = {Path(r["input"]).name: r for r in read_manifest(second.manifest_path)}
    assert rows["a.txt"]["score"] == "0.5" and rows["a.txt"]["outputs"] == ""


def test_job_without_process_rejected(tmp_path: Path) -> None:
    class Nothing(BatchJob):
        def outputs_for(self, item: Path) -> list[Path]:
            return []

    with pytest.raises(TypeError, match="process"):
        run_batch(Nothing(), [tmp_path], tmp_path / "out", quiet=True)


def test_prefetch_overlaps_load_and_process(tmp_path: Path) -> None:
    # Told by the order of events, not by seconds: processing item i waits until the load of item i+1 has
    # started. Without prefetching, that load could only start after process(i) returned, so the wait would
    # time out and the test fails; with prefetching every wait ends at once.
    inputs = make_inputs(tmp_path / "in", {f"f{i}.txt": str(i) for i in range(6)})
    started = {p: threading.Event() for p in inputs}
    waits_timed_out: list[str] = []

    class Overlap(UpperJob):
        def load(self, item: Path) -> str:
            started[item].set()
            return super().load(item)

        def process(self, item: Path, loaded: str, tmp_outputs: list[Path]) -> Mapping[str, Any]:
            nxt = inputs.index(item) + 1
            if nxt < len(inputs) and not started[inputs[nxt]].wait(timeout=5.0):
                waits_timed_out.append(item.name)
            return super().process(item, loaded, tmp_outputs)

    summary = run_batch(Overlap(tmp_path / "in"), inputs, tmp_path / "out", quiet=True, workers=2)
    assert summary.ok == 6
    assert waits_timed_out == [], "the next input's load did not start while the current item was processed"


def test_process_batch_with_one_failing_item(tmp_path: Path) -> None:
    texts = {f"f{i}.txt": ("BAD" if i == 2 else f"t{i}") for i in range(7)}
    inputs = make_inputs(tmp_path / "in", texts)

    class Batched(BatchJob):
        def __init__(self) -> None:
            self.batch_sizes: list[int] = []

        def outputs_for(self, item: Path) -> list[Path]:
            return [Path(item.stem + ".out.txt")]

        def load(self, item: Path) -> str:
            return item.read_text()

        def process_batch(
            self, items: list[Path], loaded: list[str], tmp_outputs: list[list[Path]]
        ) -> list[Mapping[str, Any] | None]:
            self.batch_sizes.append(len(items))
            for text, tmps in zip(loaded, tmp_outputs, strict=True):
                if text == "BAD":
                    raise DataError("a BAD input")
                tmps[0].write_text(text.upper())  # earlier items of a failing batch leave temps
            return [{"n": len(items)} for _ in items]

    job = Batched()
    summary = run_batch(job, inputs, tmp_path / "out", quiet=True, batch_size=3)
    assert (summary.ok, summary.error) == (6, 1)
    # batches [0 1 2] fail -> retried as 1 + 1 + 1; then [3 4 5], then the rest [6]
    assert job.batch_sizes == [3, 1, 1, 1, 3, 1]
    rows = {Path(r["input"]).name: r for r in read_manifest(summary.manifest_path)}
    assert rows["f2.txt"]["status"] == "error" and rows["f2.txt"]["message"] == "a BAD input"
    assert [rows[f"f{i}.txt"]["n"] for i in (0, 1, 3, 6)] == ["1", "1", "3", "1"]
    for i in (0, 1, 3, 4, 5, 6):
        assert (tmp_path / "out" / f"f{i}.out.txt").read_text() == f"T{i}"
    assert hidden_files(tmp_path / "out") == []


def test_sharding_by_rank_env(job_inputs: tuple[Path, list[Path]], tmp_path: Path, monkeypatch: Any) -> None:
    root, inputs = job_inputs
    out = tmp_path / "out"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    s0 = run_batch(UpperJob(root), inputs, out, quiet=True)
    assert (s0.ok, s0.manifest_path) == (4, out / "manifest.rank0.csv")
    assert [r["input"] for r in read_manifest(s0.manifest_path)] == [str(p) for p in inputs[0::2]]
    assert not (out / "manifest.csv").exists()
    monkeypatch.setenv("RANK", "1")
    s1 = run_batch(UpperJob(root), inputs, out, quiet=True)
    # The last rank to finish merges the parts; its summary then covers every rank.
    assert (s1.ok, s1.error, s1.manifest_path) == (8, 0, out / "manifest.csv")
    rows = read_manifest(out / "manifest.csv")
    assert [r["input"] for r in rows] == sorted(str(p) for p in inputs)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.csv", "s0", "s1", "s2"]
    assert len(list(out.rglob("*.out.txt"))) == 8


def test_merge_manifest_parts_needs_every_part(tmp_path: Path) -> None:
    (tmp_path / "manifest.rank0.csv").write_text("input,outputs,status,message,seconds\n/b,,ok,,0\n/a,,ok,,0\n")
    with pytest.raises(DataError, match=r"missing manifest.rank1.csv"):
        merge_manifest_parts(tmp_path, 2)
    (tmp_path / "manifest.rank1.csv").write_text("input,outputs,status,message,seconds,q\n/c,,ok,,0,0.5\n")
    merged = merge_manifest_parts(tmp_path, 2)
    assert [(r["input"], r["q"]) for r in read_manifest(merged)] == [("/a", ""), ("/b", ""), ("/c", "0.5")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.csv"]


@pytest.mark.slow  # torchrun spawn
@pytest.mark.skipif(shutil.which("true") is None, reason="needs a POSIX system")
def test_torchrun_two_ranks(job_inputs: tuple[Path, list[Path]], tmp_path: Path) -> None:
    root, inputs = job_inputs
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    res = subprocess.run(
        [*cmd, str(_SCRIPT), str(root), str(out), "--dist"], env=env, capture_output=True, text=True, timeout=180
    )
    assert res.returncode == 0, res.stderr[-3000:]
    # the two ranks' lines may interleave on the shared stdout
    reports = [json.loads(m) for m in re.findall(r"\{[^{}]*\}", res.stdout)]
    assert sorted(r["rank"] for r in reports) == [0, 1]
    assert all(r["ok"] == 8 for r in reports)  # totals over both ranks, broadcast from rank 0
    rows = read_manifest(out / "manifest.csv")
    assert [r["input"] for r in rows] == sorted(str(p) for p in inputs)
    assert not list(out.glob("manifest.rank*")) and hidden_files(out) == []


# ---------------------------------------------------------------------------------------- resolve_inputs


def test_resolve_folder_filters_sorts_and_skips_hidden(tmp_path: Path) -> None:
    for rel in ["b/CASE2.NII.GZ", "a/case1.nii.gz", "a/case1.nii", "a/.hidden.nii.gz", ".git/x.nii.gz", "c.png"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    assert resolve_inputs(tmp_path, ["nii.gz"]) == [tmp_path / "a/case1.nii.gz", tmp_path / "b/CASE2.NII.GZ"]
    assert resolve_inputs(tmp_path, [".nii", ".png"]) == [tmp_path / "a/case1.nii", tmp_path / "c.png"]


def test_resolve_dirs_as_items(tmp_path: Path) -> None:
    for rel in ["p1/series.1.2/IM1.dcm", "p1/series.1.2/IM2.dcm", "p2/s/IM1.dcm", "p2/s/IM2.dcm", "misc/loose.dcm"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")

    def is_series(p: Path) -> bool:  # a folder with two or more slices
        return sum(c.suffix == ".dcm" for c in p.iterdir() if c.is_file()) >= 2

    got = resolve_inputs(tmp_path, [".dcm"], dirs_as_items=is_series)
    assert got == [tmp_path / "misc/loose.dcm", tmp_path / "p1/series.1.2", tmp_path / "p2/s"]
    assert resolve_inputs(tmp_path / "p2" / "s", [".dcm"], dirs_as_items=is_series) == [tmp_path / "p2/s"]
    assert output_relpath(got[1], common_root(got), ".nii.gz") == Path("p1/series.1.2.nii.gz")


@pytest.mark.parametrize("list_name", ["inputs.txt", "inputs.lst"])
def test_resolve_list_file(tmp_path: Path, list_name: str) -> None:
    for rel in ["a.png", "sub/b.png", "sub/c.png", "d.png"]:
        (tmp_path / "data" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / rel).write_bytes(b"")
    lst = tmp_path / "data" / list_name
    lst.write_text(f"# header comment\na.png\n\n  sub  \n{tmp_path / 'data' / 'd.png'}\n# a.png\nmissing.png\na.png\n")
    got = resolve_inputs(lst, [".png"])
    d = tmp_path / "data"
    assert got == [d / "a.png", d / "sub/b.png", d / "sub/c.png", d / "d.png", d / "missing.png"]


def test_resolve_single_file_and_errors(tmp_path: Path) -> None:
    (tmp_path / "one.txt").write_text("x")
    assert resolve_inputs(tmp_path / "one.txt", [".txt"]) == [tmp_path / "one.txt"]  # .txt is an item here
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.md").write_text("x")
    with pytest.raises(DataError, match=rf"no inputs with extensions \.png, \.jpg found in {tmp_path / 'empty'}"):
        resolve_inputs(tmp_path / "empty", ["png", ".JPG"])
    with pytest.raises(DataError, match="input not found"):
        resolve_inputs(tmp_path / "nope", [".png"])
    (tmp_path / "blank.lst").write_text("# nothing\n\n")
    with pytest.raises(DataError, match="names no inputs"):
        resolve_inputs(tmp_path / "blank.lst", [".png"])


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("case.nii.gz", ("case", ".nii.gz")),
        ("CASE.NII.GZ", ("CASE", ".NII.GZ")),
        ("img.v2.png", ("img.v2", ".png")),
        ("noext", ("noext", "")),
        (".nii.gz", (".nii", ".gz")),
    ],
)
def test_split_ext(name: str, expected: tuple[str, str]) -> None:
    assert split_ext(name) == expected


def test_output_relpath(tmp_path: Path) -> None:
    items = [tmp_path / "in/a/x.nii.gz", tmp_path / "in/b/x.nii.gz"]
    root = common_root(items)
    assert root == tmp_path / "in"
    assert [output_relpath(i, root, ".npy") for i in items] == [Path("a/x.npy"), Path("b/x.npy")]
    assert output_relpath(tmp_path / "other/y.png", root, "_mask.png") == Path("y_mask.png")


def test_distributed_environment_without_rendezvous(monkeypatch: pytest.MonkeyPatch) -> None:
    from medvit.shared.engine import distributed
    from medvit.shared.errors import ConfigError

    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert distributed.init_distributed("cpu", required=False) is False  # a batch job: shard 1 of 4, no group
    with pytest.raises(ConfigError, match="WORLD_SIZE=4 is set but MASTER_ADDR/MASTER_PORT are not"):
        distributed.init_distributed("cpu")  # training needs the group
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ConfigError, match="RANK=4 / WORLD_SIZE=4"):
        distributed.init_distributed("cpu", required=False)
    monkeypatch.setenv("RANK", "one")
    with pytest.raises(ConfigError, match="RANK='one' is not an integer"):
        distributed.env_rank()


def test_output_folder_keeps_the_log(job_inputs: tuple[Path, list[Path]], tmp_path: Path, caplog) -> None:
    caplog.set_level("INFO")
    root, inputs = job_inputs
    out = tmp_path / "out"
    run_batch(UpperJob(root), inputs, out, quiet=True)
    assert f"{len(inputs)} ok, 0 skipped, 0 errors" in (out / "predict.log").read_text()


def test_unwritable_output_folder_is_one_clear_error(
    job_inputs: tuple[Path, list[Path]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, inputs = job_inputs
    out = tmp_path / "out"
    out.mkdir()
    real_open = os.open

    def refusing(path: Any, flags: int, *args: Any) -> int:
        if str(path).endswith(".medvit.lock"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", refusing)  # what a read-only share does (root ignores mode bits)
    with pytest.raises(DataError, match=f"cannot write to output folder {re.escape(str(out))}: Permission denied"):
        run_batch(UpperJob(root), inputs, out, quiet=True)


def test_a_command_holding_the_folder_lock_runs_batches_inside_it(
    job_inputs: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    from medvit.shared.engine.lock import FolderLock

    root, inputs = job_inputs
    out = tmp_path / "out"
    with FolderLock(out, "score"):  # e.g. fiqa score: the batch, then files built from its manifest
        assert run_batch(UpperJob(root), inputs, out, quiet=True).ok == len(inputs)
        assert (out / ".medvit.lock").is_file()  # still the command's until it is done
    assert hidden_files(out) == []
