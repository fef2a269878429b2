"""Preemption and several workers: SIGTERM becomes a save at the next execution boundary, and
the workers of a MultiWorkerMirroredStrategy agree on when to stop and what they restored.
"""

import os
import signal
import threading

import tensorflow as tf

from tf_sogclr import distribute


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
