"""Where embarrassingly parallel work runs: in this process, shard after shard, or on a Ray cluster.

The unit of work is a *shard*: a fixed slice of the inputs (an evaluation or attack), one input of a
certification, one reference model of LiRA. How the work is cut never depends on the number of workers, and a
shard's randomness comes from the seed and the shard's index (:func:`shard_seed`), never from the worker, the
process or the order shards finish in: so the same seed gives the same numbers in this process
(:class:`SerialExecutor`, the default) and on any number of Ray workers (:class:`~.ray_backend.RayExecutor`).

``Executor.map(fn, items, shared=...)`` calls ``fn(shared, item)`` for each item and returns the results in the
items' order. ``shared`` (the model, the data) is sent once per run, not once per task. With a
:class:`ShardStore`, every finished shard is written to disk as it arrives and read back instead of recomputed on
the next run: an interrupted run (a killed driver, a lost cluster) keeps its finished shards, like the audit's
probe-level resume state.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from ..errors import UsageError
from ..models.base import Closing
from ..seeding import derive_seed

__all__ = [
    "SHARD_SIZE",
    "Executor",
    "MapRecord",
    "SerialExecutor",
    "ShardStore",
    "Store",
    "make_executor",
    "shard_ranges",
    "shard_seed",
]

SHARD_SIZE = 100
"""Inputs per shard of an attack or evaluation: small enough that 2 to 16 workers stay busy on an audit's
1,000 inputs, large enough that a shard's batch keeps a CPU's vector units fed."""

Task = Callable[[Any, Any], Any]
Progress = Callable[[int, int], None]


def shard_ranges(n: int, size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of each shard of ``n`` inputs cut into runs of ``size`` (the last may be shorter)."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise UsageError(f"shard_size must be a whole number >= 1, got {size!r}")
    return [(a, min(a + size, n)) for a in range(0, n, size)]


def shard_seed(seed: int | None, index: int) -> int | None:
    """The seed of shard ``index`` of a run seeded with ``seed``: shard 0 keeps ``seed`` itself (a run that fits
    in one shard draws exactly what an unsharded run draws), the others a hash of (seed, index). ``None`` (a
    nondeterministic run) stays ``None``."""
    if seed is None:
        return None
    return int(seed) if index == 0 else derive_seed(int(seed), "shard", int(index), bits=32)


class Store(Protocol):
    """Where :meth:`Executor.map` reads finished shards back from (``None``: not there) and writes new ones."""

    def get(self, key: str) -> Any | None: ...

    def put(self, key: str, value: Any) -> None: ...


class ShardStore:
    """Finished shards on disk, one file each under ``folder``, keyed by a string that names the work (the task,
    its parameters, the shard's range). Values are plain structures (tensors, numbers, strings, lists, dicts),
    written atomically and read back with ``torch.load(weights_only=True)``: a state folder never runs code."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)

    def _path(self, key: str) -> Path:
        return self.folder / f"shard-{hashlib.sha256(key.encode()).hexdigest()[:32]}.pt"

    def get(self, key: str) -> Any | None:
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            stored = torch.load(path, weights_only=True)
        except Exception:  # noqa: BLE001 - a damaged or foreign file: that shard runs again
            return None
        return stored["value"] if isinstance(stored, dict) and stored.get("key") == key else None

    def put(self, key: str, value: Any) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
        os.close(fd)
        try:
            torch.save({"key": key, "value": value}, tmp)
            os.replace(tmp, self._path(key))
        finally:
            Path(tmp).unlink(missing_ok=True)


@dataclass
class MapRecord:
    """One ``map``: what ran, on how many workers, and how long each shard took (0.0 for a shard read back from
    the store; ``wall`` is the whole map's time as the caller waited for it)."""

    label: str
    shards: int
    workers: int
    wall: float = 0.0
    shard_seconds: list[float] = field(default_factory=list)
    resumed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "shards": self.shards,
            "workers": self.workers,
            "seconds": round(self.wall, 3),
            "shard_seconds": [round(s, 3) for s in self.shard_seconds],
            "resumed": self.resumed,
        }


class Executor(Closing):
    """Runs ``fn(shared, item)`` over items. This base runs them here, one after another (:class:`SerialExecutor`);
    :class:`~.ray_backend.RayExecutor` runs them on Ray. ``remote`` says whether tasks run on copies of ``shared``
    (so a model's query counter in this process does not see them)."""

    backend = "serial"
    remote = False

    def __init__(self) -> None:
        self.workers = 1
        self.records: list[MapRecord] = []

    def map(
        self,
        fn: Task,
        items: Sequence[Any],
        *,
        shared: Any = None,
        label: str = "",
        store: Store | None = None,
        keys: Sequence[str] | None = None,
        progress: Progress | None = None,
    ) -> list[Any]:
        """``[fn(shared, item) for item in items]``, run by this executor; with ``store`` and one key per item,
        finished shards are read back from the store and new ones written to it as they finish. ``progress(done,
        total)`` after each shard. An exception raised by ``fn`` is raised here (the original exception)."""
        if keys is not None and len(keys) != len(items):
            raise ValueError("keys must name every item")
        results: list[Any] = [None] * len(items)
        record = MapRecord(label, len(items), self.workers, shard_seconds=[0.0] * len(items))
        todo = []
        for i in range(len(items)):
            hit = store.get(keys[i]) if store is not None and keys is not None else None
            if hit is None:
                todo.append(i)
            else:
                results[i] = hit
                record.resumed += 1
        start = time.perf_counter()
        done = record.resumed
        if progress is not None and done:
            progress(done, len(items))
        for i, value, seconds in self._run(fn, shared, [(i, items[i]) for i in todo]):
            results[i] = value
            record.shard_seconds[i] = seconds
            if store is not None and keys is not None:
                store.put(keys[i], value)
            done += 1
            if progress is not None:
                progress(done, len(items))
        record.wall = time.perf_counter() - start
        self.records.append(record)
        return results

    def _run(self, fn: Task, shared: Any, todo: list[tuple[int, Any]]) -> Iterator[tuple[int, Any, float]]:
        for i, item in todo:
            t0 = time.perf_counter()
            value = fn(shared, item)
            yield i, value, time.perf_counter() - t0

    def describe(self) -> dict[str, Any]:
        """What the report records: the backend, workers and every map's shards and times."""
        return {"backend": self.backend, "workers": self.workers, "maps": [r.to_dict() for r in self.records]}

    def close(self) -> None:
        """Release what the executor started (nothing here)."""


class SerialExecutor(Executor):
    """Every shard in this process, in order: what a run without ``--workers`` does (Ray is never imported)."""


def make_executor(workers: int | None = None, address: str | None = None) -> Executor:
    """The executor the CLI's ``--workers N`` / ``--ray ADDRESS`` ask for: neither, a :class:`SerialExecutor`;
    otherwise a :class:`~.ray_backend.RayExecutor` (an embedded local Ray of ``workers`` CPUs, or the cluster at
    ``address``). ``workers`` must be >= 1."""
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise UsageError(f"workers must be a whole number >= 1, got {workers!r}")
    if workers is None and address is None:
        return SerialExecutor()
    from .ray_backend import RayExecutor

    return RayExecutor(workers=workers, address=address)
