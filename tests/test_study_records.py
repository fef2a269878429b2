"""bench/study_records.py: the plan's makespan and run_pending in worker processes."""

import dataclasses
import os

import pytest

from bench import study_records


@dataclasses.dataclass(frozen=True)
class FakeRun:
    name: str


def report_process(run):
    """A picklable `execute`: where and with how many threads the run ran."""
    return {"run": run.name, "pid": os.getpid(), "wall_s": 0.01,
            "intra_op_threads": os.environ.get("TF_NUM_INTRAOP_THREADS"),
            "inter_op_threads": os.environ.get("TF_NUM_INTEROP_THREADS")}


def fail_on_b(run):
    if run.name == "b":
        raise ValueError("run b failed")
    return report_process(run)


def test_makespan_hands_each_run_to_the_first_free_worker():
    assert study_records.makespan([10, 1, 1, 1], 2) == 10
    assert study_records.makespan([3, 3, 3], 2) == 6
    assert study_records.makespan([1, 1, 10], 2) == 11  # in order: the long run starts last
    assert study_records.makespan([3, 3, 3], 1) == 9
    assert study_records.makespan([], 2) == 0


def _run(tmp_path, execute, workers, done=()):
    runs = [FakeRun(name) for name in "abcd"]
    records, outputs = [], []
    jsonl = str(tmp_path / "runs.jsonl")
    study_records.run_pending(runs, {FakeRun(n) for n in done}, execute, records, jsonl,
                              lambda rs: outputs.append(len(rs)), lambda r: r["run"],
                              workers=workers)
    return records, outputs, study_records.read_records(jsonl)


def test_workers_run_each_run_in_a_fresh_process_with_its_share_of_threads(tmp_path):
    records, outputs, written = _run(tmp_path, report_process, workers=2, done="c")
    assert sorted(r["run"] for r in records) == ["a", "b", "d"]
    assert written == records and all(r["workers"] == 2 for r in records)
    pids = {r["pid"] for r in records}
    assert len(pids) == 3 and os.getpid() not in pids  # max_tasks_per_child=1
    threads = str(max(1, os.cpu_count() // 2))
    assert {(r["intra_op_threads"], r["inter_op_threads"]) for r in records} == {
        (threads, threads)}
    assert outputs == [1, 2, 3, 3]  # after each run, then once at the end


def test_one_worker_runs_in_this_process(tmp_path):
    records, _, written = _run(tmp_path, report_process, workers=1)
    assert [r["run"] for r in records] == ["a", "b", "c", "d"] and written == records
    assert {r["pid"] for r in records} == {os.getpid()}
    assert {r["workers"] for r in records} == {1}


def test_a_failed_run_stops_the_study_and_keeps_finished_records(tmp_path):
    with pytest.raises(ValueError, match="run b failed"):
        _run(tmp_path, fail_on_b, workers=2)
    written = study_records.read_records(str(tmp_path / "runs.jsonl"))
    assert "b" not in {r["run"] for r in written}
    assert {r["run"] for r in written} <= {"a", "c", "d"}


def test_side_by_side_rates_and_one_workers_threads(monkeypatch):
    assert study_records.side_by_side({16: 100.0, 64: 200.0}, 1) == {16: 100.0, 64: 200.0}
    assert study_records.side_by_side({16: 100.0}, 2) == {16: 100.0 * study_records.SIDE_BY_SIDE}
    for name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        monkeypatch.setenv(name, "")  # so that monkeypatch restores it after the test
        monkeypatch.delenv(name)
    study_records.hold_to_one_worker(1)
    assert "TF_NUM_INTRAOP_THREADS" not in os.environ
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    study_records.hold_to_one_worker(2)
    assert os.environ["TF_NUM_INTRAOP_THREADS"] == os.environ["TF_NUM_INTEROP_THREADS"] == "4"
    assert study_records.worker_threads(16) == 1
