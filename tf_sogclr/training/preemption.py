"""Preemption and several workers: SIGTERM becomes a save at the next execution boundary, the
workers of a MultiWorkerMirroredStrategy agree on when to stop and what they restored, and a
worker lost mid-run stops the others with an error that names it.

A lost worker is detected by TensorFlow, not here: the coordination service that
MultiWorkerMirroredStrategy starts (its leader is the chief, or worker 0) receives a heartbeat
from every task and, when one is silent for its heartbeat timeout (10 s, TensorFlow's default;
no public API changes it), aborts the collectives of every survivor, whether the peer died
(`kill -9`, a crash) or froze (`SIGSTOP`, a partition). A collective timeout
(`tf.distribute.experimental.CommunicationOptions(timeout_seconds=...)`) is not set: TensorFlow
documents it as a debugging aid that starts a thread per collective, and a timeout short
enough to matter would also fire on a slow first step (tracing, XLA). A peer that stays alive
but stops stepping (e.g. stuck on storage) keeps its heartbeats and is not detected.
"""

import contextlib
import os
import re
import signal
import threading

import tensorflow as tf

from tf_sogclr import distribute
from tf_sogclr.training import checkpoints

# What a survivor's collective raises once the coordination service has aborted it.
PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
               tf.errors.AbortedError, tf.errors.CancelledError)
_UNHEALTHY_TASKS = re.compile(r"unhealthy[^\n]*\n((?:\s*/job:\w+/replica:\d+/task:\d+)+)")
_TASK = re.compile(r"/job:(\w+)/replica:\d+/task:(\d+)")
_ADDRESS = re.compile(r"(?:ipv4:)?(\d+\.\d+\.\d+\.\d+:\d+)")


class WorkerLostError(RuntimeError):
    """Another worker of the cluster died or froze mid-run; this worker stopped too."""


class SigtermWatch:
    """While active, SIGTERM only sets `requested` (main thread only; else inactive).

    The previous handler comes back on exit. Python runs the handler between bytecodes of
    the main thread, i.e. once the running execution returns: the latency of a stop is one
    execution (`steps_per_execution` steps) plus a checkpoint.
    """

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        del signum, frame
        self.requested = True

    def __exit__(self, *exc_info):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


def mean_over_replicas(strategy):
    """With several workers: a function averaging a float64 vector over all replicas (a
    collective every worker must call); None for single-process strategies."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return None

    @tf.function
    def mean(vector):
        per_replica = strategy.run(tf.identity, args=(vector,))
        return strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica, axis=None)

    return lambda values: mean(tf.constant(values, tf.float64)).numpy()


def worker_dir(model_dir, strategy):
    """model_dir on the chief; a scratch directory on other workers (removed afterwards)."""
    if distribute.is_chief(strategy):
        return model_dir
    return os.path.join(model_dir, ".workers", f"worker_{strategy.cluster_resolver.task_id}")


def lost_peer(message, cluster, this_task):
    """The peers a survivor's collective error `message` names, as "worker 1 (host:port)".

    `cluster` is the cluster spec as a dict ({"worker": ["host:port", ...], ...}) and
    `this_task` this process's (task_type, task_id). Recognises the coordination service's
    "tasks are unhealthy" list, a failed heartbeat to its leader (the chief, else worker 0)
    and a peer's address or task name; None when the message names none.
    """
    found = _UNHEALTHY_TASKS.search(message)
    tasks = [(job, int(index)) for job, index in _TASK.findall(found.group(1) if found else "")]
    if not tasks and "CoordinationService/Heartbeat" in message:
        tasks = [("chief", 0) if "chief" in cluster else ("worker", 0)]
    if not tasks:
        addresses = {address: (job, index) for job, members in cluster.items()
                     for index, address in enumerate(members)}
        tasks = [addresses[a] for a in _ADDRESS.findall(message) if a in addresses]
        tasks += [(job, int(index)) for job, index in _TASK.findall(message)]
    peers = [f"{job} {index} ({cluster[job][index]})" for job, index in dict.fromkeys(tasks)
             if (job, index) != tuple(this_task) and index < len(cluster.get(job, ()))]
    return " and ".join(peers) or None


def worker_lost_error(error, strategy, step, model_dir):
    """A `WorkerLostError` for `error` (one of PEER_ERRORS) raised on a worker of `strategy`
    after `step` steps: one line naming the lost peer, the step and the newest complete
    checkpoint of `model_dir` (the chief's)."""
    resolver = strategy.cluster_resolver
    message = getattr(error, "message", str(error))
    peer = lost_peer(message, resolver.cluster_spec().as_dict(),
                     (resolver.task_type, resolver.task_id))
    newest = checkpoints.latest_checkpoint(model_dir)
    cause = next((line.strip() for line in message.splitlines()
                  if "aborted by" in line), checkpoints.first_line(error)).rstrip(":")
    return WorkerLostError(
        f"{peer or 'another worker (TensorFlow named none)'} was lost after step {step} "
        f"({type(error).__name__}: {cause}). This worker ({resolver.task_type} "
        f"{resolver.task_id}) stopped too. The newest complete checkpoint is "
        f"{newest or 'none (none written yet)'}; restart every worker with the same command "
        "to resume from it.")


@contextlib.contextmanager
def peers_watched(strategy, model_dir, current_step):
    """Within: with several workers, PEER_ERRORS become a `WorkerLostError`
    (`worker_lost_error`, at step `current_step()`); other strategies are left alone."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        yield
        return
    try:
        yield
    except PEER_ERRORS as error:
        raise worker_lost_error(error, strategy, current_step(), model_dir) from error
