"""Cross-replica helpers for the losses (global batches built from per-replica shards), the
strategy of a run and how it is described.

Every function works in three places: eagerly or in a `tf.function` with no strategy (one
replica), inside `strategy.run` of any `tf.distribute` strategy (Mirrored, TPU,
MultiWorkerMirrored), and under `jit_compile=True` on one device.
"""

import socket

import tensorflow as tf


def num_replicas_in_sync():
    """Number of replicas whose local batches form the global batch (1 outside a strategy)."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None:  # Cross-replica context: the strategy's own count.
        return tf.distribute.get_strategy().num_replicas_in_sync
    return ctx.num_replicas_in_sync


def cross_replica_concat(tensor):
    """Concatenates the replicas' `[b, ...]` tensors along axis 0 into `[R * b, ...]`.

    Differentiable: the gradient that reaches each replica's input is the sum over all
    replicas of the gradients of their losses with respect to its rows (SimCLR's
    `tpu_cross_replica_concat`), so summing gradients over replicas gives the gradient of
    the global-batch loss. Rows are ordered by replica id, which `replica_row_offset`
    locates. Identity with one replica.
    """
    ctx = tf.distribute.get_replica_context()
    if ctx is None:
        raise RuntimeError(
            "cross_replica_concat must be called in a replica context (inside strategy.run "
            "or outside any strategy), not in a cross-replica context."
        )
    if ctx.num_replicas_in_sync == 1:
        return tensor
    return ctx.all_gather(tensor, axis=0)


def collective_op_counts(graph):
    """{op type: count} of the collective ops (all-gathers, all-reduces) in `graph` and the
    function bodies it calls, e.g. a step's `get_concrete_function(...).graph`: what one
    execution sends between replicas, forward and backward."""
    counts = {}

    def visit(g):
        for op in g.get_operations():
            if "Collective" in op.type or "AllGather" in op.type or "AllReduce" in op.type:
                counts[op.type] = counts.get(op.type, 0) + 1
        for function in g._functions.values():  # noqa: SLF001 (no public nested-graph API)
            visit(function.graph)

    visit(graph)
    return counts


def replica_row_offset(local_batch_size):
    """Row of this replica's first example in the concatenated global batch (int32 scalar)."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return tf.constant(0, tf.int32)
    replica_id = tf.cast(ctx.replica_id_in_sync_group, tf.int32)
    return replica_id * tf.cast(local_batch_size, tf.int32)


def resolve_strategy(use_tpu=False, tpu_name=None, tpu_zone=None, gcp_project=None):
    """The strategy for this process, SimCLR-style, from explicit arguments.

    TPU (`use_tpu`, resolved by name, zone and project) > several workers in TF_CONFIG
    (MultiWorkerMirroredStrategy) > several visible GPUs (MirroredStrategy) > the default
    strategy (one device).
    """
    if use_tpu:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
            tpu=tpu_name, zone=tpu_zone, project=gcp_project)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    cluster = tf.distribute.cluster_resolver.TFConfigClusterResolver().cluster_spec().as_dict()
    if sum(len(tasks) for name, tasks in cluster.items() if name in ("chief", "worker")) > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief(strategy):
    """True on the process that owns the outputs (checkpoints, exports, summaries)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or isinstance(strategy, tf.distribute.TPUStrategy):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type is None or task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and not has_chief


def num_workers(strategy):
    """Worker processes (hosts) taking part in `strategy`'s steps: the chief and worker
    tasks of its cluster (TPU hosts for a TPUStrategy), 1 without a cluster."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return 1
    cluster = resolver.cluster_spec().as_dict()
    return max(1, sum(len(cluster.get(job, ())) for job in ("chief", "worker")))


_PUBLIC_STRATEGIES = ((tf.distribute.TPUStrategy, "TPUStrategy"),
                      (tf.distribute.MultiWorkerMirroredStrategy, "MultiWorkerMirroredStrategy"),
                      (tf.distribute.MirroredStrategy, "MirroredStrategy"),
                      (tf.distribute.OneDeviceStrategy, "OneDeviceStrategy"))


def primary_address():
    """This host's IPv4 address on its default route (no packet is sent), or None."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.255", 9))  # Any routable address: connect() only routes.
        return probe.getsockname()[0]
    except OSError:
        return None
    finally:
        probe.close()


def server_exposure(strategy):
    """Where this worker's gRPC server listens, for strategies that start one.

    TensorFlow's distributed runtime binds `0.0.0.0:<port>` of the TF_CONFIG task address
    (hard-coded in its gRPC server; no option binds one address) and has no authentication.
    Returns {} for single-process strategies, else {"listening": "0.0.0.0:<port>",
    "exposed_at": "<address>:<port>" when the server accepts a TCP connection at this host's
    non-loopback address (`primary_address`), else None}.
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return {}
    resolver = strategy.cluster_resolver
    try:
        port = int(resolver.cluster_spec().task_address(
            resolver.task_type, resolver.task_id).rsplit(":", 1)[1])
    except (ValueError, KeyError, IndexError):
        return {}
    address = primary_address()
    exposed = None
    if address and not address.startswith("127."):
        try:
            with socket.create_connection((address, port), timeout=2.0):
                exposed = f"{address}:{port}"
        except OSError:
            pass
    return {"listening": f"0.0.0.0:{port}", "exposed_at": exposed}


def exposure_warning(description):
    """A warning line when `describe_run`'s server is reachable beyond loopback, else None."""
    if not description.get("exposed_at"):
        return None
    return (f"Warning: this worker's TensorFlow gRPC server listens on "
            f"{description['listening']} without authentication and accepts connections at "
            f"{description['exposed_at']}: whoever reaches that port can run operations in "
            "this process. Run the cluster only on a trusted, firewalled network.")


def describe_run(strategy, global_batch_size, jit_compile, mixed_precision):
    """How a run is distributed, as the start-up line and the run summary report it.

    Returns {"strategy": its public name ("DefaultStrategy": one device, no strategy),
    "workers", "replicas", "global_batch_size", "per_replica_batch_size", "xla": bool (always
    on TPU), "mixed_precision": policy name}, plus `server_exposure`'s "listening" and
    "exposed_at" with several workers.
    """
    replicas = strategy.num_replicas_in_sync
    tpu = isinstance(strategy, tf.distribute.TPUStrategy)
    # The public name a user passes (MultiWorkerMirroredStrategy's class is
    # CollectiveAllReduceStrategy; the no-strategy default is a private class).
    name = next((public for cls, public in _PUBLIC_STRATEGIES if isinstance(strategy, cls)),
                "DefaultStrategy")
    return {"strategy": name, "workers": num_workers(strategy),
            "replicas": replicas, "global_batch_size": int(global_batch_size),
            "per_replica_batch_size": int(global_batch_size) // replicas,
            "xla": bool(jit_compile or tpu),
            "mixed_precision": "float32" if mixed_precision == "none" else mixed_precision,
            **server_exposure(strategy)}


def format_run(description):
    """One line of `describe_run`'s dict: "Run: MirroredStrategy, 1 worker, 2 replicas, ..."."""
    d = description
    plural = lambda n, word: f"{n} {word}" + ("" if n == 1 else "s")
    return (f"Run: {d['strategy']}, {plural(d['workers'], 'worker')}, "
            f"{plural(d['replicas'], 'replica')}, global batch {d['global_batch_size']} "
            f"({d['per_replica_batch_size']} per replica), XLA {'on' if d['xla'] else 'off'}, "
            f"precision {d['mixed_precision']}"
            + (f", gRPC server on {d['listening']}" if d.get("listening") else ""))
