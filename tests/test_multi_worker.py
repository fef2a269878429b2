"""MultiWorkerMirroredStrategy: two worker processes on 127.0.0.1 against one process.

Two subprocesses (tests/multi_worker_worker.py) form a cluster through TF_CONFIG on free
ports found at run time and pretrain a tiny model for a few steps, one CPU replica each. Their
weights and u-tables must agree with each other, and with this process pretraining the same
global batches under MirroredStrategy over two logical CPUs. Every subprocess runs in its own
process group, killed in a `finally` whatever happens; the whole test is bounded in time.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import multi_worker_worker as worker  # noqa: E402

TIMEOUT_SECONDS = 300


def free_ports(n):
    """n distinct ports that were free a moment ago (bound to port 0, then released)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def start_workers(data_dir, model_dirs, outputs, logs):
    """One worker process per output; model_dirs: one for all, or a list of one each.
    Returns the processes and their ports."""
    ports = free_ports(len(outputs))
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    if not isinstance(model_dirs, list):
        model_dirs = [model_dirs] * len(outputs)
    processes = []
    for index, (model_dir, out, log) in enumerate(zip(model_dirs, outputs, logs)):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_CONFIG=json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}}))
        processes.append(subprocess.Popen(
            [sys.executable, os.path.join(HERE, "multi_worker_worker.py"), data_dir,
             str(model_dir), str(out)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
    return processes, ports


def stop(processes):
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def finish(processes, logs):
    """Waits for the workers (failing the test after TIMEOUT_SECONDS), then kills whatever
    is left and closes the logs, whatever happens."""
    try:
        deadline = time.monotonic() + TIMEOUT_SECONDS
        for process in processes:
            process.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pytest.fail(f"workers still running after {TIMEOUT_SECONDS} s")
    finally:
        stop(processes)
        for log in logs:
            log.close()


def test_two_workers_agree_with_each_other_and_with_one_process(
        small_fashion_mnist, tmp_path, mirrored_strategy):
    from tf_sogclr import distribute
    from tf_sogclr.training import checkpoints
    from tf_sogclr.training import lifecycle

    outputs = [tmp_path / f"worker_{i}.npz" for i in range(2)]
    logs = [open(tmp_path / f"worker_{i}.log", "w") for i in range(2)]
    processes, ports = start_workers(small_fashion_mnist, tmp_path / "multi", outputs, logs)
    try:
        # Meanwhile, the single-process reference on the same global batches.
        cfg = worker.tiny_config(small_fashion_mnist, tmp_path / "single")
        result = lifecycle.pretrain(cfg, strategy=mirrored_strategy, verbose=0,
                                dataset_fn=worker.dataset_fn(small_fashion_mnist))
        worker.dump(result, tmp_path / "single.npz")
    finally:
        finish(processes, logs)
    for i, process in enumerate(processes):
        assert process.returncode == 0, (tmp_path / f"worker_{i}.log").read_text()[-3000:]

    # Each worker says how it ran: two workers of one replica each form the global batch,
    # and where its gRPC server listens: on every interface, whatever TF_CONFIG names, so a
    # host with a network address exposes it there (and the run warns).
    address = distribute.primary_address()
    for i, (out, port) in enumerate(zip(outputs, ports)):
        exposed = (f"{address}:{port}" if address and not address.startswith("127.")
                   else None)
        described = json.loads(open(f"{out}.json").read())
        assert described == {
            "strategy": "MultiWorkerMirroredStrategy", "workers": 2, "replicas": 2,
            "global_batch_size": worker.GLOBAL_BATCH,
            "per_replica_batch_size": worker.GLOBAL_BATCH // 2, "xla": False,
            "mixed_precision": "float32", "listening": f"0.0.0.0:{port}",
            "exposed_at": exposed}
        assert distribute.format_run(described).endswith(f", gRPC server on 0.0.0.0:{port}")
        log = (tmp_path / f"worker_{i}.log").read_text()
        assert (exposed is not None) == (f"accepts connections at {exposed}" in log), log[-2000:]
    assert result.distribution["workers"] == 1 and result.distribution["replicas"] == 2
    first, second = (np.load(out) for out in outputs)
    single = np.load(tmp_path / "single.npz")
    assert int(first["step"]) == int(second["step"]) == int(single["step"]) == worker.STEPS
    names = sorted(single.files)
    assert sorted(first.files) == sorted(second.files) == names and len(names) > 100
    # The u-table: rows of all 3 global batches visited, the same values everywhere.
    visited = first["u_table"] > np.finfo(np.float32).min
    assert visited.sum() == worker.STEPS * worker.GLOBAL_BATCH
    for name in names:
        np.testing.assert_allclose(first[name], second[name], rtol=1e-5, atol=1e-6,
                                   err_msg=f"worker 0 vs worker 1: {name}")
        np.testing.assert_allclose(first[name], single[name], rtol=1e-4, atol=1e-4,
                                   err_msg=f"two workers vs one process: {name}")
    # The chief wrote the final checkpoint into model_dir; the other worker into scratch.
    assert checkpoints.latest_checkpoint(str(tmp_path / "multi")).endswith(f"ckpt-{worker.STEPS}")
    assert os.path.isdir(tmp_path / "multi" / ".workers" / "worker_1")


def test_workers_given_different_model_dirs_stop_before_training(small_fashion_mnist, tmp_path):
    outputs = [tmp_path / f"worker_{i}.npz" for i in range(2)]
    logs = [open(tmp_path / f"worker_{i}.log", "w") for i in range(2)]
    model_dirs = [tmp_path / "dir_0", tmp_path / "dir_1"]
    processes, _ = start_workers(small_fashion_mnist, model_dirs, outputs, logs)
    finish(processes, logs)
    for i, (process, model_dir) in enumerate(zip(processes, model_dirs)):
        text = (tmp_path / f"worker_{i}.log").read_text()
        assert process.returncode == 1, text[-3000:]
        assert (f"ValueError: The workers were given different --model_dir (this one "
                f"'{model_dir}'): give every worker the same --model_dir") in text, text[-3000:]
        assert not outputs[i].exists()
        # Nothing trained and nothing written: no checkpoint, no summaries.
        assert not os.path.exists(model_dir) or not any(
            name.startswith("ckpt") or name in ("train", "checkpoint")
            for _, dirs, files in os.walk(model_dir) for name in dirs + files)
