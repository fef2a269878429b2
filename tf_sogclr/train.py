"""Training lifecycles: the multi-step pretraining loop, checkpoints, summaries.

`train_loop_function` runs `model.train_step` several times per call through
`strategy.run` inside one `tf.function` (SimCLR's `train_multiple_steps`): one host round
trip per `steps_per_execution` steps, on every strategy. What XLA can compile:

* one device (no strategy, OneDevice): the per-step function with `jit_compile=True`;
* TPUStrategy: always, TPUs compile every replica function;
* MirroredStrategy / MultiWorkerMirroredStrategy on CPU or GPU: not with `jit_compile`;
  a compiled replica function may not hold the collectives (synchronisation boundary) nor
  touch a variable on another replica's device, so those run as plain graphs.
"""

import tensorflow as tf


def _is_tpu_strategy(strategy):
    return isinstance(strategy, (tf.distribute.TPUStrategy,))


def check_jit_compile(strategy, jit_compile):
    """Raises if `jit_compile` cannot be honoured under `strategy` (see module docstring)."""
    if jit_compile and strategy.num_replicas_in_sync > 1 and not _is_tpu_strategy(strategy):
        raise ValueError(
            f"jit_compile=True is not available with {type(strategy).__name__} over "
            f"{strategy.num_replicas_in_sync} replicas (XLA cannot compile a replica step that "
            "holds cross-replica collectives on CPU/GPU); use jit_compile=False, one device, "
            "or a TPU.")


def train_loop_function(model, strategy, jit_compile=False):
    """A `tf.function(iterator, num_steps) -> logs` running `num_steps` train steps.

    `iterator` yields (distributed) batches for `model.train_step`; `num_steps` is an int32
    scalar tensor, so a shorter last execution reuses the same trace. Logs are read in
    cross-replica context, i.e. aggregated over replicas.
    """
    check_jit_compile(strategy, jit_compile)
    step = model.train_step
    if jit_compile and not _is_tpu_strategy(strategy):
        step = tf.function(step, jit_compile=True)

    @tf.function
    def train_loop(iterator, num_steps):
        for _ in tf.range(num_steps):
            strategy.run(step, args=(next(iterator),))
        return model.training_logs()

    return train_loop
