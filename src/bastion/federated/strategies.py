"""Server side on Flower: the aggregators by name, bastion's FLTrust and norm-clipping strategies, and the
adversary that crafts the malicious clients' updates.

Flower's own strategies are used wherever Flower has them (``FedAvg``, ``Krum``, ``MultiKrum``, ``Bulyan``,
``FedMedian``, ``FedTrimmedAvg``); bastion adds two that Flower lacks, as ``FedAvg`` subclasses over the
pure functions of :mod:`bastion.federated.aggregators`:

- ``fltrust`` (Cao et al., NDSS 2021): the server holds a small clean *root dataset* (``root_size`` records
  of the training split, 100 as in the paper), computes its own update each round with the clients' recipe,
  and weighs each client by the ReLU of its cosine to that update, after rescaling it to the server
  update's norm;
- ``norm-clip`` (Sun et al. 2019): every update clipped to norm ``bound`` (default: the round's median
  update norm) before the weighted mean, plus optional Gaussian noise ``sigma`` ("weak DP").

**The adversary** (:class:`Adversary`) wraps any of them. Update attacks in the papers are *omniscient*:
the colluding malicious clients know the benign updates of the round. Flower gives clients no channel to
each other, so the adversary is emulated on the server side of the measurement: before the aggregator
sees the round's replies, the replies of the malicious clients are replaced by the attack's crafted
updates, computed from the benign replies. The aggregator itself sees only what it would see in a real
attack. (Data attacks — label flipping, model replacement — run inside the malicious clients.)

Every strategy records, per round, the weight the aggregate gave to malicious clients (``malicious``: the
share of the selected / averaged records from malicious clients; for Krum, 1 when the chosen update is
malicious) — Flower's metric aggregation averages the clients' ``malicious`` flag over what was selected.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, cast

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Bulyan, FedAvg, FedMedian, FedTrimmedAvg, Krum, MultiKrum, Strategy

from ..errors import UsageError
from ..registry import Registry
from .aggregators import fltrust, norm_clip
from .attacks import UpdateAttack
from .local import _dataset, initial_module, train_local
from .spec import FLSpec

__all__ = ["AGGREGATORS", "Adversary", "FLTrustStrategy", "NormClipStrategy", "build_strategy", "flatten", "unflatten"]


def flatten(record: ArrayRecord) -> np.ndarray:
    """All arrays of a record as one float64 vector (in the record's key order)."""
    return np.concatenate([a.ravel() for a in record.to_numpy_ndarrays()]).astype(np.float64)


def unflatten(vector: np.ndarray, like: ArrayRecord) -> ArrayRecord:
    """A record with ``like``'s keys, shapes and dtypes holding the values of ``vector``."""
    out, start = ArrayRecord(), 0
    for key, arr in zip(like.keys(), like.to_numpy_ndarrays(), strict=True):
        out[key] = Array(np.ascontiguousarray(vector[start : start + arr.size].reshape(arr.shape).astype(arr.dtype)))
        start += arr.size
    return out


def _base(spec: FLSpec) -> dict[str, Any]:
    """Every client trains every round; no federated evaluation (the server evaluates the global model)."""
    return {
        "fraction_train": 1.0,
        "fraction_evaluate": 0.0,
        "min_train_nodes": spec.clients,
        "min_available_nodes": spec.clients,
    }


class _UpdateAggregator(FedAvg):
    """A FedAvg whose aggregate is ``global + f(updates)``; remembers the global arrays of the round."""

    def __init__(self, spec: FLSpec, **kwargs: Any) -> None:
        super().__init__(**_base(spec), **kwargs)
        self.spec = spec
        self._global: ArrayRecord | None = None
        self.rounds_: list[dict[str, Any]] = []

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._global = arrays
        return super().configure_train(server_round, arrays, config, grid)

    def _combine(self, server_round: int, updates: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid or self._global is None:
            return None, None
        contents = [m.content for m in valid]
        g = flatten(self._global)
        updates = np.stack([flatten(cast(ArrayRecord, c["arrays"])) - g for c in contents])
        metrics = [cast(MetricRecord, c["metrics"]) for c in contents]
        weights = np.array([float(cast(float, m["num-examples"])) for m in metrics])
        finite = np.isfinite(updates).all(axis=1)  # a NaN/inf update (diverged or Byzantine) gets weight 0
        per_client = np.zeros(len(contents))
        if not finite.any():
            return None, None
        agg, per_client[finite] = self._combine(server_round, updates[finite], weights[finite])
        malicious = np.array([float(cast(float, m.get("malicious", 0.0))) for m in metrics])
        self.rounds_.append({"round": server_round, "per_client": per_client.tolist(), "malicious": malicious.tolist()})
        share = float((per_client * malicious).sum() / per_client.sum()) if per_client.sum() > 0 else 0.0
        return unflatten(g + agg, self._global), MetricRecord({"malicious": share})


class FLTrustStrategy(_UpdateAggregator):
    """FLTrust (Cao et al. 2021) over Flower's FedAvg: the server's update on its root dataset is the
    reference; per-client trust = ReLU(cosine) recorded each round."""

    def __init__(self, spec: FLSpec, *, root_size: int = 100) -> None:
        super().__init__(spec)
        if isinstance(root_size, bool) or not isinstance(root_size, int) or root_size < 1:
            raise UsageError(f"root_size must be a whole number >= 1, got {root_size!r}")
        d = _dataset(spec.data)
        gen = torch.Generator().manual_seed(spec.seed + 7919)
        idx = torch.randperm(d.x_train.shape[0], generator=gen)[:root_size]
        self.root = (d.x_train[idx], d.y_train[idx])
        self.root_size = root_size

    def _combine(self, server_round: int, updates: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._global is None:  # aggregate_train only calls this after configure_train set it
            raise RuntimeError("FLTrust aggregated before the round was configured")
        module = initial_module(self.spec)
        module.load_state_dict(self._global.to_torch_state_dict())
        train_local(module, *self.root, self.spec.recipe, seed=self.spec.seed * 31 + server_round)
        server = flatten(ArrayRecord(module.state_dict())) - flatten(self._global)
        return fltrust(updates, server)


class NormClipStrategy(_UpdateAggregator):
    """Norm clipping with optional weak DP (Sun et al. 2019) over Flower's FedAvg; ``bound=None`` clips to
    the round's median update norm. The per-client scale factors are recorded each round."""

    def __init__(self, spec: FLSpec, *, bound: float | None = None, sigma: float = 0.0) -> None:
        super().__init__(spec)
        if bound is not None and not float(bound) > 0:
            raise UsageError(f"bound must be a positive norm (or none for the round's median), got {bound!r}")
        self.bound, self.sigma = bound, float(sigma)
        self.rng = np.random.default_rng(spec.seed + 104729)

    def _combine(self, server_round: int, updates: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        bound = self.bound if self.bound is not None else float(np.median(np.linalg.norm(updates, axis=1)))
        agg, scales = norm_clip(updates, weights, bound=max(bound, 1e-12), sigma=self.sigma, rng=self.rng)
        return agg, scales * weights / weights.sum()


class Adversary(Strategy):
    """Wraps an aggregator: replaces the malicious clients' replies by an update attack's crafted updates,
    computed from the benign replies of the round (the papers' omniscient adversary), then aggregates."""

    def __init__(self, inner: Strategy, attack: UpdateAttack, seed: int) -> None:
        self.inner, self.attack = inner, attack
        self.rng = np.random.default_rng(seed + 15485863)
        self._global: ArrayRecord | None = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._global = arrays
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        ok = [m for m in replies if not m.has_error()]
        bad = [m for m in ok if cast(MetricRecord, m.content["metrics"]).get("malicious", 0)]
        good = [m for m in ok if m not in bad]
        if bad and good and self._global is not None:
            g = flatten(self._global)
            benign = np.stack([flatten(cast(ArrayRecord, m.content["arrays"])) - g for m in good])
            benign = benign[np.isfinite(benign).all(axis=1)]  # a diverged client's NaN is no guide to anyone
            if benign.shape[0] == 0:
                return self.inner.aggregate_train(server_round, replies)
            crafted = self.attack.craft(benign, len(bad), self.rng)
            for m, u in zip(bad, crafted, strict=True):
                m.content["arrays"] = unflatten(g + u, self._global)
        return self.inner.aggregate_train(server_round, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.inner.summary()


def _flower(cls: type[FedAvg], **fixed: Callable[[FLSpec], Any]) -> Callable[..., Strategy]:
    def build(spec: FLSpec, **params: Any) -> Strategy:
        kwargs = {k: f(spec) for k, f in fixed.items()}
        kwargs.update(params)
        try:
            return cls(**_base(spec), **kwargs)
        except TypeError as e:
            raise UsageError(f"{cls.__name__} does not take {sorted(params)}: {e}") from None
        except ValueError as e:  # Flower's own checks (Bulyan's n >= 4f + 3, trimmed mean's beta)
            raise UsageError(f"{spec.aggregator}: {e}") from None

    return build


def _f(spec: FLSpec) -> int:
    """The number of Byzantine clients the robust rules are told to tolerate: the configured malicious count
    (at least 1 so that an attack-free baseline runs the same rule)."""
    return max(round(spec.malicious * spec.clients), 1)


AGGREGATORS: Registry[Callable[..., Strategy]] = Registry("aggregator")
"""Aggregation rules by name: ``build(spec, **params) -> flwr Strategy``."""
AGGREGATORS.register("fedavg", _flower(FedAvg))
AGGREGATORS.register("krum", _flower(Krum, num_malicious_nodes=_f))
AGGREGATORS.register(
    "multi-krum", _flower(MultiKrum, num_malicious_nodes=_f, num_nodes_to_select=lambda s: s.clients - _f(s))
)
_bulyan = _flower(Bulyan, num_malicious_nodes=_f)


def _checked_bulyan(spec: FLSpec, **params: Any) -> Strategy:
    f = int(params.get("num_malicious_nodes", _f(spec)))
    if spec.clients < 4 * f + 3:  # El Mhamdi et al. 2018; Flower would only fail at the first aggregation
        raise UsageError(f"bulyan tolerates f Byzantine clients only with n >= 4f + 3: {spec.clients} < {4 * f + 3}")
    return _bulyan(spec, **params)


AGGREGATORS.register("bulyan", _checked_bulyan)
AGGREGATORS.register("median", _flower(FedMedian))
AGGREGATORS.register("trimmed-mean", _flower(FedTrimmedAvg, beta=lambda s: min(_f(s) / s.clients, 0.45)))
AGGREGATORS.register("fltrust", FLTrustStrategy)
AGGREGATORS.register("norm-clip", NormClipStrategy)


def build_strategy(spec: FLSpec) -> Strategy:
    """The run's aggregator, wrapped in the :class:`Adversary` when the attack acts on updates."""
    from .attacks import UPDATE_ATTACKS, craft_update_attack

    strategy = AGGREGATORS.get(spec.aggregator)(spec, **spec.aggregator_params)
    if spec.attack in UPDATE_ATTACKS:
        return Adversary(strategy, craft_update_attack(spec.attack, **spec.attack_params), spec.seed)
    return strategy
