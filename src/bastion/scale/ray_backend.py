"""Shards on Ray (the ``ray`` extra): an embedded local Ray for one run, or an existing cluster.

``RayExecutor(workers=N)`` starts a local Ray with N CPUs for the run and stops it at :meth:`close`;
``RayExecutor(address="HOST:PORT")`` joins a cluster started with ``ray start --head`` (and workers joined with
``ray start --address``), and leaves it running. At most ``workers`` tasks are in flight. A local Ray gets all the
machine's cores and shares them out: each task holds ``cores // workers`` CPUs and runs torch on as many threads
(``--workers 1`` on 2 cores: one task on 2 threads, what torch does without Ray); on a cluster each task holds one
CPU and one thread. Shards give the same numbers on any thread count: a shard's result never depends on it.

What Ray does and bastion does not redo: scheduling, moving objects (``shared`` is ``ray.put`` once per object,
so a model used by many runs travels once), and retrying a task whose worker process died (``max_retries``: a
killed worker's shard runs again elsewhere; a finished shard's result is already here and, with a
:class:`~.executor.ShardStore`, on disk). An exception raised by the task itself is not retried: it is raised
here as the original exception (a :class:`~bastion.errors.UsageError` stays one).

Refused with one line, never a hang: ``workers`` < 1, an address nobody listens on (a TCP connection is tried
for ``connect_timeout`` seconds before Ray is asked), a cluster whose workers cannot import bastion or run
another version of it (one probe task, ``probe_timeout`` seconds).
"""

from __future__ import annotations

import ctypes
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

from .._version import __version__
from ..errors import BastionError, UsageError, require
from .executor import Executor, Task

__all__ = ["RayExecutor"]

MAX_RETRIES = 3


def _call(fn: Task, threads: int, item: Any, *shared: Any) -> tuple[Any, float, int]:
    """One task on a worker: ``fn(shared, item)`` with torch on ``threads`` threads (the CPUs the task holds), its
    time and the worker's pid."""
    import torch

    _tune_malloc()
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    value = fn(shared[0] if len(shared) == 1 else shared, item)
    return value, time.perf_counter() - t0, os.getpid()


_MALLOC_TUNED = False


def _tune_malloc() -> None:
    """Keep a worker's large blocks on the heap. glibc serves a block above its mmap threshold with a fresh mmap and
    raises the threshold once such a block is freed; in a Ray worker process that adjustment does not happen, so
    every activation tensor of a forward pass was mapped, faulted in page by page and unmapped again: 513,000 page
    faults certifying 6 mnist images against 1,400 in a plain process, 2.4x the time (measured). Setting the
    thresholds (64 MB mmap, 256 MB trim) gives the worker a plain process's speed; glibc only, once per process."""
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return
    _MALLOC_TUNED = True
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 * 1024 * 1024)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 256 * 1024 * 1024)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to tune
        pass


def _worker_facts() -> dict[str, Any]:
    import torch

    from .. import __version__ as version

    return {"bastion": version, "torch": torch.__version__, "threads": torch.get_num_threads()}


def _split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"ray address must be HOST:PORT (what `ray start --head` prints), got {address!r}")
    return host, int(port)


def _check_reachable(address: str, timeout: float) -> None:
    host, port = _split_address(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        raise UsageError(
            f"cannot reach a Ray cluster at {address} ({exc.strerror or exc}): start one with "
            "`ray start --head --port PORT` or check the address"
        ) from None


def _errors_to_stderr() -> None:
    """Ray's driver prints the cluster's error messages ("a worker died ...", a retried task) to *stdout* from a
    background thread; a command's stdout carries its ``--json`` object, so they go to stderr instead."""
    from ray._private import worker

    original = getattr(worker, "print_to_stdstream", None)
    if original is None or getattr(original, "_bastion_stderr", False):
        return

    def to_stderr(data: dict[str, Any], ignore_prefix: bool) -> None:
        original({**data, "is_err": True}, ignore_prefix)

    to_stderr._bastion_stderr = True  # type: ignore[attr-defined]
    worker.print_to_stdstream = to_stderr


class RayExecutor(Executor):
    """Shards on Ray: ``workers`` workers on an embedded local Ray, or on the cluster at ``address`` (``workers`` then
    caps the tasks in flight; default: the cluster's CPUs). ``threads``: CPUs (and torch threads) each task holds
    (default: the local cores shared out between the workers; 1 on a cluster)."""

    backend = "ray"
    remote = True

    def __init__(
        self,
        workers: int | None = None,
        address: str | None = None,
        *,
        threads: int | None = None,
        connect_timeout: float = 5.0,
        probe_timeout: float = 120.0,
    ) -> None:
        super().__init__()
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise UsageError(f"workers must be a whole number >= 1, got {workers!r}")
        os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # no GPUs asked: leave their env alone
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray = require("ray", "ray")
        self._ray = ray
        self.address = address
        self._owned = False
        self._refs: dict[int, tuple[Any, Any]] = {}
        if ray.is_initialized():
            pass  # a Ray the caller started: use it, leave it running
        elif address is not None:
            _check_reachable(address, connect_timeout)
            try:
                ray.init(address=address, log_to_driver=False, configure_logging=False)
            except Exception as exc:  # noqa: BLE001 - version mismatch, auth, a dead head: one line
                raise UsageError(
                    f"cannot join the Ray cluster at {address}: {str(exc).strip().splitlines()[0]}"
                ) from None
            self._owned = True
        else:
            cores = max(os.cpu_count() or 1, workers or 1)
            ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False, configure_logging=False)
            self._owned = True
        _errors_to_stderr()
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.workers = workers if workers is not None else max(1, cpus)
        # a local Ray's cores are shared out between the workers (--workers 1 on 2 cores: one task, 2 threads, as
        # torch runs without Ray); on a cluster every task holds one CPU
        self.threads = threads if threads is not None else max(1, cpus // self.workers) if address is None else 1
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1:
            self.close()
            raise UsageError(f"threads must be a whole number >= 1, got {threads!r}")
        self._task = ray.remote(max_retries=MAX_RETRIES)(_call).options(num_cpus=self.threads)
        self._check_workers(probe_timeout)

    def _check_workers(self, timeout: float) -> None:
        ray = self._ray
        where = f"the Ray cluster at {self.address}" if self.address else "the local Ray"
        try:
            facts = ray.get(ray.remote(num_cpus=1)(_worker_facts).remote(), timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            self.close()
            raise UsageError(f"{where} ran no task in {timeout:g} s: does it have a free CPU?") from None
        except Exception as exc:  # noqa: BLE001 - a worker that cannot import bastion, torch, ...
            self.close()
            cause = getattr(exc, "cause", None) or exc
            raise UsageError(
                f"{where} cannot run bastion tasks ({type(cause).__name__}: {str(cause).strip().splitlines()[-1]}): "
                f"install bastion[ray] {__version__} on every node"
            ) from None
        if facts["bastion"] != __version__:
            self.close()
            raise UsageError(
                f"{where} runs bastion {facts['bastion']} but this process runs {__version__}: install the same "
                "version on every node"
            )

    def put(self, obj: Any) -> Any:
        """``ray.put(obj)``, once per object for the executor's life (kept alive here so its id stays its own)."""
        hit = self._refs.get(id(obj))
        if hit is None:
            hit = self._refs[id(obj)] = (obj, self._ray.put(obj))
        return hit[1]

    def _run(self, fn: Task, shared: Any, todo: list[tuple[int, Any]]) -> Iterator[tuple[int, Any, float]]:
        ray = self._ray
        parts = shared if isinstance(shared, tuple) else (shared,)
        # the first part (the model, the population) is what runs reuse: it travels once for the executor's life;
        # the rest (this run's inputs and settings) once for this run
        refs = [self.put(parts[0]), *(ray.put(p) for p in parts[1:])]
        queue = list(todo)
        pending: dict[Any, int] = {}
        while queue or pending:
            while queue and len(pending) < self.workers:
                i, item = queue.pop(0)
                pending[self._task.remote(fn, self.threads, item, *refs)] = i
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                i = pending.pop(ref)
                try:
                    value, seconds, _pid = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:
                    for other in pending:
                        ray.cancel(other, force=True)
                    cause = getattr(exc, "cause", None)
                    if isinstance(cause, BaseException):
                        raise cause from None
                    raise
                except ray.exceptions.RayError as exc:
                    for other in pending:
                        ray.cancel(other, force=True)
                    raise BastionError(
                        f"shard {i} failed on Ray after {MAX_RETRIES} retries: {type(exc).__name__}: "
                        f"{str(exc).strip().splitlines()[0]}"
                    ) from None
                yield i, value, seconds

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["address"] = self.address
        out["threads_per_worker"] = self.threads
        return out

    def close(self) -> None:
        self._refs.clear()
        if self._owned and self._ray.is_initialized():
            self._ray.shutdown()
        self._owned = False
