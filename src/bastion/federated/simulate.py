"""Run federated experiments in Flower's simulation engine (Ray actors as the clients).

:func:`simulate` runs a list of :class:`~bastion.federated.spec.FLSpec` — one run, or every cell of a
matrix — in as few Flower simulations as possible: runs with the same number of clients share one
simulation (one Ray start; the ``ServerApp`` runs them one after another on the same virtual supernodes),
which is what makes a 60-cell matrix affordable on a laptop.

On a Ray cluster (``address``: what ``ray start --head`` printed), Flower's Ray backend joins the cluster instead
of starting a local Ray, and the clients' actors run on its nodes: a round's clients train in parallel across the
machines, and the numbers are the local run's (every client seeds its training from the run's seed, its
partition and the round). Cells stay one after another:
Flower sizes a simulation's actor pool from every CPU of the cluster (``pool_size_from_resources`` over
``ray.nodes()``) and gives clients to actors Ray has not scheduled yet, so two simulations in flight each claim the
whole cluster and can wait on each other's actors (docs/federated.md).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import UsageError
from .spec import FLSpec

__all__ = ["simulate"]


def _check(specs: Sequence[FLSpec]) -> None:
    from .attacks import attack_names
    from .local import check_attack_params, initial_module
    from .strategies import AGGREGATORS, build_strategy

    names = set(attack_names()) | {"none"}
    for s in specs:
        if s.attack not in names:
            raise UsageError(f"unknown attack {s.attack!r}: choose one of {', '.join(sorted(names))}")
        AGGREGATORS.get(s.aggregator)
        initial_module(s)  # the architecture fits the data
        build_strategy(s)  # the aggregator's and the update attack's options, checked before Ray starts
        check_attack_params(s)


def simulate(
    specs: FLSpec | Sequence[FLSpec],
    *,
    workers: int | None = None,
    address: str | None = None,
    on_result: Callable[[dict[str, Any]], None] | None = None,
    verbose: bool = False,
) -> list[dict[str, Any]]:
    """Run ``specs`` in Flower's simulation engine; one result dict per spec, in order.

    Args:
        workers: CPUs a local Ray may use (one client at a time per CPU); default all.
        address: a Ray cluster's HOST:PORT: the clients run on it (checked first: reachable, bastion importable
            in the same version on its workers); ``workers`` does not apply then.
        on_result: called with each result as soon as its run ends (progress, incremental reports).
        verbose: keep Flower's and Ray's logs (quiet by default).
    """
    from flwr.simulation import run_simulation

    from .app import client_app, make_server_app

    specs = [specs] if isinstance(specs, FLSpec) else list(specs)
    if not specs:
        return []
    with _quiet(verbose):
        _check(specs)
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise UsageError(f"workers must be a whole number >= 1, got {workers!r}")
    if address is not None:
        if workers is not None:
            raise UsageError("workers caps a local simulation's CPUs; on a Ray cluster the clients use its CPUs")
        _check_cluster(address)
    results: dict[int, dict[str, Any]] = {}
    by_clients: dict[int, list[int]] = {}
    for i, s in enumerate(specs):
        by_clients.setdefault(s.clients, []).append(i)
    for clients, idx in by_clients.items():
        got: list[dict[str, Any]] = []

        def keep(result: dict[str, Any], got: list[dict[str, Any]] = got) -> None:
            got.append(result)
            if on_result is not None:
                on_result(result)

        init: dict[str, Any] = {"num_cpus": workers or os.cpu_count() or 1} if address is None else {"address": address}
        backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": init}
        with _quiet(verbose):
            run_simulation(
                server_app=make_server_app([specs[i] for i in idx], keep),
                client_app=client_app,
                num_supernodes=clients,
                backend_config=backend,
                verbose_logging=verbose,
            )
        if len(got) != len(idx):
            raise RuntimeError(
                f"the Flower simulation ended after {len(got)} of {len(idx)} runs: see its log (verbose=True)"
            )
        results.update(zip(idx, got, strict=True))
    return [results[i] for i in range(len(specs))]


def _check_cluster(address: str) -> None:
    """Refuse, in one line and before Flower starts, a cluster that is not there or cannot run bastion's clients
    (the scale executor's checks); Flower then joins it itself (and leaves it, not stops it, at the end)."""
    from ..scale.ray_backend import RayExecutor

    RayExecutor(address=address).close()


class _quiet:
    """Flower logs every round at INFO and Ray warns of future changes; keep errors only unless verbose."""

    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose
        self.logger = logging.getLogger("flwr")
        self.level = self.logger.level

    def __enter__(self) -> None:
        if not self.verbose:
            self.logger.setLevel(logging.ERROR)  # (its deprecation notice for run_simulation, its sampling notes)
            warnings.filterwarnings("ignore", category=FutureWarning, module="ray")
            os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")

    def __exit__(self, *exc: object) -> None:
        self.logger.setLevel(self.level)
