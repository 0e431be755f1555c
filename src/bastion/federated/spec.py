"""What one federated run is: :class:`FLSpec`, a frozen, JSON-round-trippable value.

The same value travels to every client in the round's configuration (as a JSON string in Flower's
``ConfigRecord``), so a client in a Ray actor or on a real supernode needs nothing but the message to
know the recipe, the data split and whether, and how, it misbehaves.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import UsageError

__all__ = ["FL_RECIPES", "FLSpec", "LocalRecipe"]


@dataclass(frozen=True)
class LocalRecipe:
    """A client's local training per round: SGD with momentum, ``epochs`` passes over its own records."""

    epochs: int = 2
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9


FL_RECIPES: dict[str, LocalRecipe] = {
    # FedAvg, 20 IID clients on mnist5k (200 records each), 10 rounds: 94.6 % test accuracy (measured).
    "mnist-cnn": LocalRecipe(epochs=2, batch_size=32, lr=0.05, momentum=0.9),
    "digits-mlp": LocalRecipe(epochs=2, batch_size=16, lr=0.05, momentum=0.9),
    "cancer-mlp": LocalRecipe(epochs=2, batch_size=16, lr=0.02, momentum=0.9),
}


@dataclass(frozen=True)
class FLSpec:
    """One federated run.

    Attributes:
        arch, data: a registered architecture and a dataset (built-in name or a file every client can read).
        clients: number of clients (all take part in every round, as in the robustness papers).
        malicious: share of malicious clients; the first ``round(malicious * clients)`` partitions misbehave.
        attack: ``none``, a data attack (``label-flip``, ``backdoor``) or an update attack (``sign-flip``,
            ``gaussian``, ``alie``, ``ipm``, ``min-max``, ``min-sum``); ``attack_params`` its options.
        aggregator: ``fedavg``, ``krum``, ``multi-krum``, ``bulyan``, ``median``, ``trimmed-mean``,
            ``fltrust``, ``norm-clip``; ``aggregator_params`` its options.
        rounds: federated rounds. alpha: None for an IID split, else Dirichlet(alpha) over labels.
        seed: the split, the initial model, every client's shuffling and every attack's noise derive from it.
        local: the clients' local recipe (default: the architecture's entry in :data:`FL_RECIPES`).
    """

    arch: str = "mnist-cnn"
    data: str = "mnist5k"
    clients: int = 20
    malicious: float = 0.0
    attack: str = "none"
    attack_params: dict[str, Any] = field(default_factory=dict)
    aggregator: str = "fedavg"
    aggregator_params: dict[str, Any] = field(default_factory=dict)
    rounds: int = 10
    alpha: float | None = None
    seed: int = 0
    local: LocalRecipe | None = None

    def __post_init__(self) -> None:
        for name in ("clients", "rounds"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UsageError(f"{name} must be a whole number >= 1, got {v!r}")
        if self.clients < 2:
            raise UsageError(f"a federation needs at least 2 clients, got {self.clients}")
        if not (0.0 <= float(self.malicious) < 0.5 or (self.malicious == 0.5 and self.attack == "none")):
            raise UsageError(f"malicious must be a share in [0, 0.5), got {self.malicious!r}")
        if self.alpha is not None and not (math.isfinite(self.alpha) and self.alpha > 0):
            raise UsageError(f"alpha must be a positive number (or none for IID), got {self.alpha!r}")
        if self.attack != "none" and self.n_malicious == 0:
            raise UsageError(
                f"attack {self.attack!r} needs malicious clients: {self.malicious} of {self.clients} clients is none"
            )

    @property
    def n_malicious(self) -> int:
        """How many clients misbehave (0 when there is no attack)."""
        return 0 if self.attack == "none" else round(self.malicious * self.clients)

    @property
    def recipe(self) -> LocalRecipe:
        return self.local or FL_RECIPES.get(self.arch, LocalRecipe())

    def replace(self, **changes: Any) -> FLSpec:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["local"] = dataclasses.asdict(self.recipe)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FLSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UsageError(f"unknown federated-run settings {unknown}: choose from {sorted(known)}")
        d = dict(d)
        if isinstance(d.get("local"), dict):
            d["local"] = LocalRecipe(**d["local"])
        return cls(**d)

    @classmethod
    def from_json(cls, s: str) -> FLSpec:
        return cls.from_dict(json.loads(s))

    def label(self) -> str:
        """A short name for reports: ``attack x aggregator``."""
        return f"{self.attack} x {self.aggregator}"
