"""Tests of tf_sogclr.distribute: cross-replica helpers and strategy resolution."""

import json

import numpy as np
import pytest
import tensorflow as tf

from tf_sogclr import distribute


def test_one_replica_helpers_are_identities():
    x = tf.reshape(tf.range(6.0), (3, 2))
    assert distribute.num_replicas_in_sync() == 1
    np.testing.assert_array_equal(distribute.cross_replica_concat(x), x)
    assert int(distribute.replica_row_offset(3)) == 0


def test_mirrored_concat_orders_rows_by_replica_and_offsets_match(mirrored_strategy):
    @tf.function
    def gather():
        def replica_fn():
            ctx = tf.distribute.get_replica_context()
            local = tf.fill((2, 1), tf.cast(ctx.replica_id_in_sync_group, tf.float32))
            return (distribute.cross_replica_concat(local), distribute.replica_row_offset(2),
                    distribute.num_replicas_in_sync())
        return mirrored_strategy.run(replica_fn)

    concat, offsets, replicas = gather()
    for value in mirrored_strategy.experimental_local_results(concat):
        np.testing.assert_array_equal(value[:, 0], [0, 0, 1, 1])
    assert [int(o) for o in mirrored_strategy.experimental_local_results(offsets)] == [0, 2]
    assert set(int(r) for r in mirrored_strategy.experimental_local_results(replicas)) == {2}


def test_cross_replica_concat_refuses_cross_replica_context(mirrored_strategy):
    with mirrored_strategy.scope():
        with pytest.raises(RuntimeError, match="replica context"):
            distribute.cross_replica_concat(tf.zeros((1, 1)))


def test_resolve_strategy_without_accelerators_or_cluster_is_the_default(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert distribute.resolve_strategy() is tf.distribute.get_strategy()


class _Strategy:
    """Stands in for a multi-worker strategy: only `cluster_resolver` is read."""

    def __init__(self, tf_config, monkeypatch):
        monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config))
        self.cluster_resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()


@pytest.mark.parametrize("cluster, task, chief", [
    ({"worker": ["a:1", "b:2"]}, {"type": "worker", "index": 0}, True),
    ({"worker": ["a:1", "b:2"]}, {"type": "worker", "index": 1}, False),
    ({"chief": ["c:0"], "worker": ["a:1"]}, {"type": "chief", "index": 0}, True),
    ({"chief": ["c:0"], "worker": ["a:1"]}, {"type": "worker", "index": 0}, False),
])
def test_is_chief_follows_tf_config(monkeypatch, cluster, task, chief):
    strategy = _Strategy({"cluster": cluster, "task": task}, monkeypatch)
    assert distribute.is_chief(strategy) is chief
    assert distribute.is_chief(tf.distribute.get_strategy())


def test_describe_run_names_strategy_workers_replicas_and_batches(mirrored_strategy):
    described = distribute.describe_run(mirrored_strategy, 64, False, "mixed_bfloat16")
    assert described == {"strategy": "MirroredStrategy", "workers": 1, "replicas": 2,
                         "global_batch_size": 64, "per_replica_batch_size": 32, "xla": False,
                         "mixed_precision": "mixed_bfloat16"}
    assert distribute.format_run(described) == (
        "Run: MirroredStrategy, 1 worker, 2 replicas, global batch 64 (32 per replica), "
        "XLA off, precision mixed_bfloat16")
    one = distribute.describe_run(tf.distribute.get_strategy(), 8, True, "none")
    assert (one["strategy"], one["replicas"], one["xla"], one["mixed_precision"]) == (
        "DefaultStrategy", 1, True, "float32")
