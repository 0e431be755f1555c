"""Scale-out: the same audit, attack, certification and privacy work over shards, in this process or on Ray.

Without ``--workers`` / ``--ray`` everything runs here (:class:`SerialExecutor`) and Ray is never imported; with
them, a :class:`~.ray_backend.RayExecutor` runs the shards on an embedded local Ray or an existing cluster. The
shards and their seeds do not depend on the executor, so the numbers are the same (see docs/scaling.md).
"""

from __future__ import annotations

from .attacks import merge_results, shard_attack
from .certify import CERTIFY_SHARD, certify_sharded
from .executor import (
    SHARD_SIZE,
    Executor,
    MapRecord,
    SerialExecutor,
    ShardStore,
    make_executor,
    shard_ranges,
    shard_seed,
)

__all__ = [
    "CERTIFY_SHARD",
    "SHARD_SIZE",
    "Executor",
    "MapRecord",
    "SerialExecutor",
    "ShardStore",
    "certify_sharded",
    "make_executor",
    "merge_results",
    "shard_attack",
    "shard_ranges",
    "shard_seed",
]
