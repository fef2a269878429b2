"""MultiWorkerMirroredStrategy: two worker processes on 127.0.0.1 against one process.

Two subprocesses (tests/multi_worker_worker.py) form a cluster through TF_CONFIG on free
ports found at run time and pretrain a tiny model, one CPU replica each. Their weights and
u-tables must agree with each other, and with this process pretraining the same global
batches under MirroredStrategy over two logical CPUs; a run interrupted by a killed, a frozen
and a preempted worker, restarted each time, must end where the uninterrupted run ends. Every
subprocess runs in its own process group, killed in a `finally` whatever happens; every wait
is bounded in time.
"""

import json
import os
import re
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
# A lost worker is declared by TensorFlow's coordination service after 10 s without
# heartbeats; survivors measured exiting 7-20 s after kill -9 or SIGSTOP of their peer.
LOST_WORKER_SECONDS = 60


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


def start_workers(data_dir, model_dirs, outputs, logs, options=()):
    """One worker process per output; model_dirs: one for all, or a list of one each;
    `options` for multi_worker_worker.py. Returns the processes and their ports."""
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
             str(model_dir), str(out), *options],
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


def assert_same_state(first, second, rtol, atol, what):
    """The arrays of two `worker.dump` files are equal to the tolerances."""
    assert sorted(first.files) == sorted(second.files) and len(first.files) > 100
    for name in first.files:
        np.testing.assert_allclose(first[name], second[name], rtol=rtol, atol=atol,
                                   err_msg=f"{what}: {name}")


@pytest.fixture(scope="module")
def uninterrupted(small_fashion_mnist, tmp_path_factory):
    """Two workers pretraining for worker.STEPS steps without interruption: their directory,
    outputs (worker_<i>.npz and .json), logs and ports."""
    tmp_path = tmp_path_factory.mktemp("uninterrupted")
    outputs = [tmp_path / f"worker_{i}.npz" for i in range(2)]
    logs = [open(tmp_path / f"worker_{i}.log", "w") for i in range(2)]
    processes, ports = start_workers(small_fashion_mnist, tmp_path / "multi", outputs, logs)
    finish(processes, logs)
    for i, process in enumerate(processes):
        assert process.returncode == 0, (tmp_path / f"worker_{i}.log").read_text()[-3000:]
    return tmp_path, outputs, ports


def test_two_workers_agree_with_each_other_and_with_one_process(
        small_fashion_mnist, uninterrupted, tmp_path, mirrored_strategy):
    from tf_sogclr import distribute
    from tf_sogclr.training import checkpoints
    from tf_sogclr.training import lifecycle

    # The single-process reference on the same global batches.
    cfg = worker.tiny_config(small_fashion_mnist, tmp_path / "single")
    result = lifecycle.pretrain(cfg, strategy=mirrored_strategy, verbose=0,
                                dataset_fn=worker.dataset_fn(small_fashion_mnist))
    worker.dump(result, tmp_path / "single.npz")
    run_dir, outputs, ports = uninterrupted

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
        log = (run_dir / f"worker_{i}.log").read_text()
        assert (exposed is not None) == (f"accepts connections at {exposed}" in log), log[-2000:]
    assert result.distribution["workers"] == 1 and result.distribution["replicas"] == 2
    first, second = (np.load(out) for out in outputs)
    single = np.load(tmp_path / "single.npz")
    assert int(first["step"]) == int(second["step"]) == int(single["step"]) == worker.STEPS
    # The u-table: the rows of the first STEPS global batches visited (of 8 per epoch), the
    # same values everywhere.
    visited = first["u_table"] > np.finfo(np.float32).min
    assert visited.sum() == min(worker.STEPS * worker.GLOBAL_BATCH, visited.size)
    assert_same_state(first, second, 1e-5, 1e-6, "worker 0 vs worker 1")
    assert_same_state(first, single, 1e-4, 1e-4, "two workers vs one process")
    # The chief wrote the final checkpoint into model_dir; the other worker into scratch.
    assert checkpoints.latest_checkpoint(str(run_dir / "multi")).endswith(f"ckpt-{worker.STEPS}")
    assert os.path.isdir(run_dir / "multi" / ".workers" / "worker_1")


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


class Cluster:
    """One launch of two workers on `model_dir`: their processes, ports, logs and outputs."""

    def __init__(self, data_dir, model_dir, tmp_path, name, options=()):
        self.model_dir = model_dir
        self.outputs = [tmp_path / f"{name}_{i}.npz" for i in range(2)]
        self.log_paths = [tmp_path / f"{name}_{i}.log" for i in range(2)]
        self.logs = [open(path, "w") for path in self.log_paths]
        self.processes, self.ports = start_workers(data_dir, model_dir, self.outputs, self.logs,
                                                   options)

    def log(self, i):
        return self.log_paths[i].read_text()

    def wait_for_checkpoint_after(self, step):
        """Waits (bounded) until the chief committed a checkpoint of a step after `step`."""
        from tf_sogclr.training import checkpoints

        deadline = time.monotonic() + TIMEOUT_SECONDS
        while True:
            newest = checkpoints.latest_checkpoint(str(self.model_dir))
            if newest and int(newest.rsplit("-", 1)[1]) > step:
                return int(newest.rsplit("-", 1)[1])
            for i, process in enumerate(self.processes):
                assert process.poll() is None, f"worker {i} exited:\n{self.log(i)[-3000:]}"
            assert time.monotonic() < deadline, f"no checkpoint after step {step}"
            time.sleep(0.05)

    def signal(self, i, signum):
        os.killpg(self.processes[i].pid, signum)

    def wait_for_exit(self, i, seconds):
        """Waits at most `seconds` for worker i; returns its exit status."""
        try:
            return self.processes[i].wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker {i} still running {seconds} s later:\n{self.log(i)[-3000:]}")

    def finish(self):
        """Waits for both workers to end (bounded), then closes; see `finish`."""
        finish(self.processes, self.logs)

    def close(self):
        """Kills what is left (a frozen worker too) and closes the logs."""
        stop(self.processes)
        for log in self.logs:
            log.close()


def newest_step(model_dir):
    from tf_sogclr.training import checkpoints

    newest = checkpoints.latest_checkpoint(str(model_dir))
    return newest, int(newest.rsplit("-", 1)[1])


def assert_survivor_names_lost_worker(cluster, survivor, lost, signum):
    """Signals worker `lost`; worker `survivor` must exit non-zero within LOST_WORKER_SECONDS
    with one line naming the lost worker, the step and the newest complete checkpoint.
    Returns the newest checkpoint's step."""
    cluster.signal(lost, signum)
    start = time.monotonic()
    status = cluster.wait_for_exit(survivor, LOST_WORKER_SECONDS)
    elapsed = time.monotonic() - start
    text = cluster.log(survivor)
    assert status == 1, text[-3000:]
    newest, newest_step_ = newest_step(cluster.model_dir)
    line = re.search(
        rf"^tf_sogclr\.training\.preemption\.WorkerLostError: worker {lost} "
        rf"\(127\.0\.0\.1:{cluster.ports[lost]}\) was lost after step (\d+) \(\w+Error: "
        rf"[^\n]+\)\. This worker \(worker {survivor}\) stopped too\. The newest complete "
        rf"checkpoint is (\S+); restart every worker with the same command to resume from "
        rf"it\.$", text, re.MULTILINE)
    assert line, text[-3000:]
    assert line.group(2) == newest and int(line.group(1)) >= newest_step_, line.group(0)
    print(f"worker {survivor} stopped {elapsed:.1f} s after worker {lost} got {signum!r}")
    return newest_step_


def test_lost_frozen_and_preempted_workers_resume_to_the_uninterrupted_result(
        small_fashion_mnist, uninterrupted, tmp_path):
    from tf_sogclr.training import checkpoints

    model_dir = tmp_path / "multi"
    slow = ("--checkpoint_steps=2", "--step_delay=0.3")  # A step every 0.3 s or more.

    def launch(name, options=slow):
        return Cluster(small_fashion_mnist, model_dir, tmp_path, name, options)

    # 1. kill -9 of worker 1 after the first checkpoint: worker 0 names it and stops.
    cluster = launch("killed")
    try:
        cluster.wait_for_checkpoint_after(0)
        restored = assert_survivor_names_lost_worker(cluster, 0, 1, signal.SIGKILL)
    finally:
        cluster.close()

    # 2. Both restarted: they resume from that checkpoint. The chief frozen (SIGSTOP: no
    #    connection reset reaches worker 1) after a newer checkpoint: worker 1 stops.
    cluster = launch("frozen")
    try:
        cluster.wait_for_checkpoint_after(restored)
        for i in range(2):
            assert f"Starting at step {restored}." in cluster.log(i)
        restored = assert_survivor_names_lost_worker(cluster, 1, 0, signal.SIGSTOP)
    finally:
        cluster.close()  # Kills the frozen chief.

    # 3. Both restarted, then SIGTERM to both after a newer checkpoint: both save the same
    #    step (the chief's checkpoint of it) and exit 143.
    cluster = launch("preempted")
    try:
        cluster.wait_for_checkpoint_after(restored)
        for i in range(2):
            cluster.signal(i, signal.SIGTERM)
        statuses = [cluster.wait_for_exit(i, TIMEOUT_SECONDS) for i in range(2)]
    finally:
        cluster.close()
    assert statuses == [143, 143], cluster.log(0)[-2000:] + cluster.log(1)[-2000:]
    saved = [int(np.load(out)["step"]) for out in cluster.outputs]
    newest, restored = newest_step(model_dir)
    assert saved == [restored, restored] and restored < worker.STEPS
    assert checkpoints.is_complete_checkpoint(newest)

    # 4. Both restarted: they resume from the preempted step and finish where the
    #    uninterrupted run finished.
    cluster = launch("finished", options=("--checkpoint_steps=2",))
    cluster.finish()
    for i, process in enumerate(cluster.processes):
        assert process.returncode == 0, cluster.log(i)[-3000:]
        assert f"Starting at step {restored}." in cluster.log(i)
    _, reference, _ = uninterrupted
    for out, want in zip(cluster.outputs, reference):
        got, want = np.load(out), np.load(want)
        assert int(got["step"]) == worker.STEPS
        assert_same_state(got, want, 1e-5, 1e-6, "resumed vs uninterrupted")


@pytest.mark.parametrize("message, this_task, lost", [
    # kill -9 or SIGSTOP of worker 1, seen by worker 0 (the coordination service's leader).
    ("Collective ops is aborted by: Error reported from /job:worker/task:1: The following "
     "tasks are unhealthy (stopped sending heartbeats):\n/job:worker/replica:0/task:1\nThe "
     "tasks have crashed. Check the task logs for an earlier error, or scheduler events (e.g. "
     "preemption, eviction) to debug further.", ("worker", 0), "worker 1 (127.0.0.1:1001)"),
    # SIGSTOP of worker 0 (the leader), seen by worker 1: its heartbeats time out.
    ("Collective ops is aborted by: Deadline Exceeded\nRPC: "
     "/tensorflow.CoordinationService/Heartbeat\nThe error could be from a previous "
     "operation. Restart your program to reset.", ("worker", 1), "worker 0 (127.0.0.1:1000)"),
    # kill -9 of worker 0, seen by worker 1 in a collective with it: a connection reset.
    ("Collective ops is aborted by: recvmsg:Connection reset by peer\nAdditional GRPC error "
     "information from remote target /job:worker/replica:0/task:0 while calling "
     "/tensorflow.WorkerService/CompleteInstance:\n:UNKNOWN:Error received from peer  "
     "{grpc_status:14, grpc_message:\"recvmsg:Connection reset by peer\"}",
     ("worker", 1), "worker 0 (127.0.0.1:1000)"),
    # A peer named by its address only.
    ("failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1001: Failed "
     "to connect to remote host: Connection refused", ("worker", 0), "worker 1 (127.0.0.1:1001)"),
    ("Collective ops is aborted by: something else", ("worker", 0), None),
])
def test_the_lost_peer_is_read_from_the_collective_error(message, this_task, lost):
    from tf_sogclr.training import preemption

    cluster = {"worker": ["127.0.0.1:1000", "127.0.0.1:1001"]}
    assert preemption.lost_peer(message, cluster, this_task) == lost


def test_a_lost_worker_exits_even_when_teardown_would_block(tmp_path):
    """run.py's `exit_after_lost_worker`: the error's traceback on stderr and exit status 1
    at once, though a non-daemon thread (as TensorFlow's teardown after a lost peer can)
    would keep `sys.exit` waiting for ever."""
    script = tmp_path / "lost.py"
    script.write_text(
        "import sys, threading, time\n"
        f"sys.path.insert(0, {os.path.dirname(HERE)!r})\n"
        "import run\n"
        "from tf_sogclr.training.preemption import WorkerLostError\n"
        "threading.Thread(target=time.sleep, args=(3600,)).start()\n"
        "try:\n"
        "    raise WorkerLostError('worker 1 (127.0.0.1:1) was lost after step 2')\n"
        "except WorkerLostError as error:\n"
        "    run.exit_after_lost_worker(error)\n")
    start = time.monotonic()
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120, cwd=os.path.dirname(HERE))
    assert done.returncode == 1, done.stderr[-2000:]
    assert time.monotonic() - start < 60
    assert done.stderr.rstrip().endswith("tf_sogclr.training.preemption.WorkerLostError: "
                                         "worker 1 (127.0.0.1:1) was lost after step 2")
    assert "Traceback (most recent call last)" in done.stderr
