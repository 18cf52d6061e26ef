"""Choosing a tf.distribute strategy from a flag value, and what a multi-worker run needs.

* `parse_tf_config`: the cluster and this process's task from ``TF_CONFIG``, checked before
  any heavy work, with an error (`FlagError`) that says what is wrong and what is accepted.
* `make_strategy`: one strategy per process. `MultiWorkerMirroredStrategy` must be created
  before any other TensorFlow op (it configures the process's collective ops), so the tools
  create it right after validating their flags and the library asks for the same instance.
* `agree_all`, `agree_any`, `same_on_every_worker`: small collectives that keep the workers'
  decisions (stop on SIGTERM, refuse a flag) identical, so that no worker is left waiting in
  a collective op that the others never run.
* `weights_digest`: a checksum of a model's weights, equal on every worker of a run.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json

import numpy as np
import tensorflow as tf

from ubnas_tf.errors import FlagError

__all__ = ["ClusterRole", "agree_all", "agree_any", "in_multi_worker_mode", "make_strategy",
           "parse_tf_config", "same_on_every_worker", "split_cpu", "weights_digest"]

# What TF_CONFIG must look like (two machines; the second one says "index": 1).
TF_CONFIG_EXAMPLE = ('{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                     '"task": {"type": "worker", "index": 0}}')


def split_cpu(n: int) -> None:
    """Splits the (first) CPU into `n` logical devices (must run before TF initialises)."""
    if n <= 1:
        return
    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(n)]
    )


# -- TF_CONFIG ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ClusterRole:
    """This process's place in a multi-worker cluster (from TF_CONFIG)."""

    task_type: str  # "worker" or "chief"
    task_index: int
    num_processes: int  # chief (if any) + workers
    is_chief: bool  # writes the run directory: the "chief" task, else worker 0

    def describe(self) -> str:
        return (f"{self.task_type} {self.task_index} of a cluster of {self.num_processes} "
                f"processes ({'the chief' if self.is_chief else 'not the chief'})")


def _tf_config_error(what: str) -> FlagError:
    return FlagError(f"TF_CONFIG {what}. --distribute=multi_worker reads the cluster and this "
                     f"process's task from it, e.g. TF_CONFIG='{TF_CONFIG_EXAMPLE}' on the first "
                     'machine and "index": 1 on the second (see the README, "More than one '
                     'machine").')


def _check_addresses(job: str, addresses) -> None:
    if not isinstance(addresses, list) or not addresses:
        raise _tf_config_error(f'has cluster.{job} = {json.dumps(addresses)}: it must be a '
                               'non-empty list of "host:port" strings')
    for address in addresses:
        host, _, port = address.rpartition(":") if isinstance(address, str) else ("", "", "")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise _tf_config_error(f"has {json.dumps(address)} in cluster.{job}: every address "
                                   'must be "host:port" with a port from 1 to 65535')


def parse_tf_config(text: str | None) -> ClusterRole:
    """This process's role in the cluster that `text` (the value of TF_CONFIG) describes.

    Accepted: a JSON object with ``cluster`` (``worker``: a non-empty list of ``"host:port"``;
    optionally ``chief``: a list of one address) and ``task`` (``type`` ``"worker"`` or
    ``"chief"``, ``index`` an integer position in that list); other keys (``rpc_layer``,
    ``environment``) are left to TensorFlow. Raises `FlagError` naming what is wrong.
    """
    if text is None or not text.strip():
        raise _tf_config_error("is not set (or empty)")
    try:
        config = json.loads(text)
    except json.JSONDecodeError as err:
        raise _tf_config_error(f"is not valid JSON ({err.msg} at character {err.pos}: "
                               f"{text[:80]!r})") from err
    if not isinstance(config, dict):
        raise _tf_config_error(f"is a JSON {type(config).__name__}, not an object with "
                               '"cluster" and "task"')
    cluster = config.get("cluster")
    if not isinstance(cluster, dict):
        raise _tf_config_error('has no "cluster" object' if cluster is None else
                               f'has "cluster": {json.dumps(cluster)}, not an object')
    others = sorted(set(cluster) - {"worker", "chief"})
    if others:
        raise _tf_config_error(f"has cluster job type(s) {others}: MultiWorkerMirroredStrategy "
                               'runs "worker" tasks and at most one "chief" (parameter servers '
                               "and evaluators are not supported)")
    if "worker" not in cluster:
        raise _tf_config_error('has no cluster.worker list (the "host:port" of every worker)')
    _check_addresses("worker", cluster["worker"])
    if "chief" in cluster:
        _check_addresses("chief", cluster["chief"])
        if len(cluster["chief"]) != 1:
            raise _tf_config_error(f"lists {len(cluster['chief'])} addresses in cluster.chief; "
                                   "a cluster has at most one chief")
    addresses = [a for job in ("chief", "worker") for a in cluster.get(job, [])]
    repeated = sorted({a for a in addresses if addresses.count(a) > 1})
    if repeated:
        raise _tf_config_error(f"lists {repeated} more than once in the cluster; every process "
                               "needs its own port")
    task = config.get("task")
    if not isinstance(task, dict):
        raise _tf_config_error('has no "task" object' if task is None else
                               f'has "task": {json.dumps(task)}, not an object')
    task_type = task.get("type")
    if task_type not in cluster:
        accepted = " or ".join(f'"{job}"' for job in ("worker", "chief") if job in cluster)
        raise _tf_config_error(f"has task type {json.dumps(task_type)}; this cluster accepts "
                               f"{accepted}")
    index = task.get("index")
    n = len(cluster[task_type])
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n:
        raise _tf_config_error(f"has task index {json.dumps(index)}: cluster.{task_type} lists "
                               f"{n} address{'es' * (n != 1)}, so the index must be an integer "
                               f"from 0 to {n - 1}")
    is_chief = task_type == "chief" or ("chief" not in cluster and index == 0)
    return ClusterRole(task_type, index, len(addresses), is_chief)


# -- strategies ---------------------------------------------------------------------------------

_STRATEGIES: dict[str, tf.distribute.Strategy] = {}


def make_strategy(name: str) -> tf.distribute.Strategy:
    """``none`` -> default strategy; ``mirrored`` -> all local GPUs (or logical CPUs);
    ``multi_worker`` -> MultiWorkerMirroredStrategy from TF_CONFIG.

    One instance per name and process: the first call creates it, later calls return it.
    For ``multi_worker`` the first call must come before any other TensorFlow op (the tools
    make it right after validating their flags; see `ubnas_tf.cli._run.prepare_run`).
    """
    if name in _STRATEGIES:
        return _STRATEGIES[name]
    if name == "none":
        strategy = tf.distribute.get_strategy()
    elif name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        strategy = tf.distribute.MirroredStrategy(devices)
    elif name == "multi_worker":
        try:
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
        except RuntimeError as err:
            raise RuntimeError(
                "MultiWorkerMirroredStrategy must be created before any other TensorFlow op of "
                "the process: call ubnas_tf.distribute.make_strategy('multi_worker') first "
                f"({err})") from err
    else:
        raise ValueError(f"Unknown strategy {name!r}; use none, mirrored or multi_worker.")
    _STRATEGIES[name] = strategy
    return strategy


def in_multi_worker_mode(strategy: tf.distribute.Strategy) -> bool:
    """True for a strategy whose replicas span more than this process."""
    check = getattr(strategy.extended, "_in_multi_worker_mode", None)
    return bool(check()) if check is not None else False


@functools.cache
def _replica_sum(strategy: tf.distribute.Strategy):
    @tf.function
    def replica_sum(value):
        # tf.identity: a tensor of the replica's own device (not a cached constant).
        return tf.distribute.get_replica_context().all_reduce("SUM", tf.identity(value))

    def total(value: float) -> float:
        per_replica = strategy.run(replica_sum, args=(tf.constant(value, tf.float64),))
        return float(strategy.experimental_local_results(per_replica)[0])

    return total


def agree_all(strategy: tf.distribute.Strategy, ok: bool) -> bool:
    """Whether `ok` holds on every worker (a collective: every worker must call it at the
    same point). Without multi-worker, `ok` itself."""
    if not in_multi_worker_mode(strategy):
        return bool(ok)
    return _replica_sum(strategy)(float(bool(ok))) == strategy.num_replicas_in_sync


def agree_any(strategy: tf.distribute.Strategy, flag: bool) -> bool:
    """Whether `flag` holds on any worker (a collective, like `agree_all`)."""
    if not in_multi_worker_mode(strategy):
        return bool(flag)
    return _replica_sum(strategy)(float(bool(flag))) > 0


def same_on_every_worker(strategy: tf.distribute.Strategy, text: str) -> bool:
    """Whether every worker passed the same `text` (compared by a 40-bit hash; a collective)."""
    if not in_multi_worker_mode(strategy):
        return True
    # Exact in float64: the sum of n values below 2**40 stays far below 2**53. If every
    # worker finds the sum equal to n times its own value, all the values are equal.
    mine = float(int(hashlib.sha256(text.encode()).hexdigest()[:10], 16))
    same = _replica_sum(strategy)(mine) == strategy.num_replicas_in_sync * mine
    return agree_all(strategy, same)


def weights_digest(weights) -> str:
    """SHA-256 (first 16 hex digits) of weights' names, shapes and values, in order.

    `weights`: variables, or (name, value) pairs of values already read. Reading a variable
    that is synchronised on read (BatchNorm statistics, under a strategy) is a collective:
    under multi-worker every worker must read at the same point. The workers of a run end
    with the same digest.
    """
    digest = hashlib.sha256()
    for item in weights:
        name, value = item if isinstance(item, tuple) else (item.name, item.numpy())
        value = np.ascontiguousarray(value)
        digest.update(f"{name}{value.shape}{value.dtype}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()[:16]
