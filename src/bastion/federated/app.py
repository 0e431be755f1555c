"""The Flower apps: one ``ClientApp`` (honest and malicious clients alike) and the ``ServerApp`` that runs
one or more federated runs (the cells of a matrix) on whatever clients are connected.

The same two objects run in Flower's simulation engine (:func:`bastion.federated.simulate`) and on a real
deployment: ``flower-superlink`` plus ``flower-supernode --node-config "partition-id=I num-partitions=N"``
processes, with ``flwr run`` submitting the app of ``bastion/federated/flwr_app/`` (see ``docs/federated.md``).

A client learns everything from the message: the run's :class:`~bastion.federated.spec.FLSpec` (JSON in
the train config), the round, and the global weights; its partition comes from its node config. It answers
with its weights and a ``MetricRecord`` of ``num-examples`` and ``malicious`` (0/1, for the report).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from ..errors import UsageError
from .local import client_update, evaluate_global, initial_module
from .spec import FLSpec
from .strategies import build_strategy

__all__ = ["client_app", "make_server_app", "run_cells", "server_app"]

client_app = ClientApp()


@client_app.train()
def _train(msg: Message, context: Context) -> Message:
    config = cast(ConfigRecord, msg.content["config"])
    spec = FLSpec.from_json(str(config["spec"]))
    pid = int(cast(int, context.node_config["partition-id"]))
    n = int(cast(int, context.node_config["num-partitions"]))
    if n != spec.clients:
        raise UsageError(f"this node is one of {n} partitions but the run has {spec.clients} clients")
    state, n_examples, malicious = client_update(
        spec,
        pid,
        cast(ArrayRecord, msg.content["arrays"]).to_torch_state_dict(),
        int(cast(int, config["server-round"])),
    )
    metrics = MetricRecord({"num-examples": n_examples, "malicious": int(malicious)})
    return Message(content=RecordDict({"arrays": ArrayRecord(state), "metrics": metrics}), reply_to=msg)


def run_one(grid: Grid, spec: FLSpec) -> dict[str, Any]:
    """One federated run on the connected clients; its result (final accuracy, per-round metrics)."""
    strategy = build_strategy(spec)
    module = initial_module(spec)

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        module.load_state_dict(arrays.to_torch_state_dict())
        metrics: dict[str, Any] = dict(evaluate_global(spec, module))
        return MetricRecord(metrics)

    t0 = time.perf_counter()
    result = strategy.start(
        grid,
        ArrayRecord(module.state_dict()),
        num_rounds=spec.rounds,
        train_config=ConfigRecord({"spec": spec.to_json()}),
        evaluate_fn=evaluate,
    )
    rounds = []
    for r in range(spec.rounds + 1):
        entry: dict[str, Any] = {"round": r, **dict(result.evaluate_metrics_serverapp.get(r, {}))}
        train = result.train_metrics_clientapp.get(r)
        if train is not None and "malicious" in train:
            entry["malicious_weight"] = float(cast(float, train["malicious"]))
        rounds.append(entry)
    inner = getattr(strategy, "inner", strategy)
    out: dict[str, Any] = {
        "spec": spec.to_dict(),
        "final_accuracy": rounds[-1].get("accuracy"),
        "rounds": rounds,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if "backdoor_asr" in rounds[-1]:
        out["backdoor_asr"] = rounds[-1]["backdoor_asr"]
    per_client = getattr(inner, "rounds_", None)
    if per_client:
        out["aggregator_weights"] = per_client
    return out


def run_cells(grid: Grid, specs: Sequence[FLSpec], on_result: Callable[[dict[str, Any]], None]) -> None:
    """Each run in turn on the same clients (one Flower run, one Ray start for a whole matrix)."""
    for spec in specs:
        on_result(run_one(grid, spec))


def make_server_app(specs: Sequence[FLSpec], on_result: Callable[[dict[str, Any]], None]) -> ServerApp:
    """A ``ServerApp`` running ``specs`` and handing each result to ``on_result`` (the simulation's way)."""
    app = ServerApp()

    @app.main()
    def _main(grid: Grid, context: Context) -> None:
        run_cells(grid, specs, on_result)

    return app


server_app = ServerApp()
"""The deployment's ``ServerApp``: run config ``cells`` (a JSON list of spec dicts) and ``out`` (a JSON-lines
file the results are appended to)."""


@server_app.main()
def _deployed_main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    specs = [FLSpec.from_dict(d) for d in json.loads(str(cfg["cells"]))]
    out = Path(str(cfg["out"]))

    def write(result: dict[str, Any]) -> None:
        with out.open("a") as f:
            f.write(json.dumps(result) + "\n")

    run_cells(grid, specs, write)
