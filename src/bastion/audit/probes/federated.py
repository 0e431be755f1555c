"""Federated learning under attack: if the model's architecture were trained by federated learning on the audited
data, what would malicious clients do to it, and which aggregator holds?

The probe runs one Flower simulation (:func:`bastion.federated.simulate.simulate`, one Ray start) of the model's
registered architecture on the audited data split across ``clients`` clients (IID, or Dirichlet(``alpha``) over the
labels), every client training the architecture's federated recipe for ``rounds`` rounds: for each aggregator of
``aggregators`` (``fedavg``, ``median``, ``fltrust``, ``krum``, ``trimmed-mean``, ...) an attack-free run and one run
per attack of ``attacks`` with a share ``malicious`` of the clients malicious — update attacks (``sign-flip``,
``alie``, ``ipm``, ``min-max``, ...) and data attacks (``label-flip``; ``backdoor``: model replacement with a BadNets
trigger). The seed of the split, the initial model and every attack comes from the audit's seed. ``workers`` caps
the CPUs Ray uses (default all).

It needs the ``federated`` extra (Flower with its simulation engine), an architecture bastion can build (``zoo:``
and ``.safetensors`` models, or the ``arch`` parameter) and data every client process can load again by name: a
built-in dataset or a file, loaded without options.

Metrics: ``fl_clean_accuracy[AGG]`` (attack-free final test accuracy), ``fl_accuracy[ATTACK,AGG]``,
``fl_drop[ATTACK,AGG]`` (the same aggregator's attack-free accuracy minus the attacked one), ``fl_backdoor_asr[AGG]``
(with ``backdoor``: triggered test inputs of other classes sent to the target), and ``fl_worst_drop``: the smallest,
over the aggregators, of the largest drop over the attacks (what the best aggregator still loses).
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from ...data import DATASETS, Dataset, load_dataset
from ...errors import UsageError
from ...federated.spec import FLSpec
from ..probe import AuditContext, RetrainingProbe, register_probe
from ..result import Check, Plot, ProbeResult, Series

__all__ = ["FederatedProbe", "flower_missing", "reloadable_source"]

CLEAN = "none"
_LEVELS = ("low", "medium", "high")
_NEEDS = "needs the federated extra: pip install 'bastion[federated]'"


def flower_missing() -> bool:
    """Whether Flower's simulation engine (``flwr`` and ``ray``) cannot be imported."""
    return any(importlib.util.find_spec(m) is None for m in ("flwr", "ray"))


def _same(a: Dataset, b: Dataset) -> bool:
    pairs = ((a.x_train, b.x_train), (a.y_train, b.y_train), (a.x_test, b.x_test), (a.y_test, b.y_test))
    return all(x.shape == y.shape and torch.equal(x, y) for x, y in pairs)


def reloadable_source(data: Dataset) -> tuple[str | None, str | None]:
    """``(source, None)`` with the name (built-in) or absolute path that loads ``data`` again in another process,
    or ``(None, why not)``."""
    name = str(data.name)
    why = "so the federated clients, each in its own process, cannot load them: audit a built-in dataset or a file"
    if name in DATASETS:
        source = name
    elif name and Path(name).exists():
        source = str(Path(name).resolve())
    else:
        return None, f"the data ({name!r}) are neither a built-in dataset nor an existing file, {why}"
    try:
        again = load_dataset(source)
    except Exception as exc:  # noqa: BLE001 - any failure means the clients could not load it either
        return None, f"the data cannot be loaded again from {name!r} ({exc}), {why}"
    if not _same(again, data):
        return None, f"the data differ from what {name!r} loads without options, {why} that loads as it is"
    return source, None


def _level(drop: float, asr: float | None) -> str:
    a = asr if asr is not None and math.isfinite(asr) else 0.0
    d = drop if math.isfinite(drop) else math.inf
    return "high" if d >= 0.10 or a >= 0.5 else "medium" if d >= 0.05 or a >= 0.2 else "low"


@dataclass
class _Agg:
    """One aggregator's outcome: attack-free accuracy, its largest drop (and under which attack), backdoor ASR."""

    name: str
    clean: float
    worst_drop: float
    worst_attack: str
    asr: float | None

    @property
    def level(self) -> str:
        return _level(self.worst_drop, self.asr)

    def rank(self) -> tuple[int, float, float]:
        return (_LEVELS.index(self.level), self.worst_drop, self.asr or 0.0)


def _num(x: Any) -> float:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else math.nan


@register_probe
class FederatedProbe(
    RetrainingProbe, name="federated", title="Federated learning under attack", threat="poisoning / federated clients"
):
    """Every aggregator of ``aggregators``, attack-free and under every attack of ``attacks``, in one simulation.

    Checks: ``robust-aggregator-holds`` passes when some aggregator's largest drop is at most ``max_drop`` and its
    backdoor success below ``max_asr`` (a warning names the best one otherwise); ``fedavg-is-vulnerable`` passes
    when the attacks hurt plain FedAvg (a drop above ``max_drop`` or a backdoor success of at least ``max_asr``),
    warns otherwise (they are too weak for the others' hold to mean much), and is skipped without ``fedavg``;
    ``federation-trains`` warns when an aggregator's attack-free run ends more than ``max_accuracy_gap`` below the
    audited model's test accuracy (its drops are then measured on a model that never learned).

    Risk, read on the best aggregator (the lowest risk, then the smallest drop): it loses >= 10 accuracy points
    under some attack or keeps a backdoor success >= 50% high; >= 5 points or >= 20% medium; else low.

    Parameters:
        clients: the federation's clients.
        malicious: the share of the clients that are malicious.
        rounds: federated rounds per run.
        alpha: Dirichlet concentration of the label split over the clients (``None``: IID).
        attacks: the federated attacks run (names of :func:`bastion.federated.attacks.attack_names`).
        aggregators: the aggregators compared (names of ``bastion.federated.strategies.AGGREGATORS``).
        workers: the CPUs Ray uses (``None``: all).
        arch: the registered architecture to federate (``None``: the audited model's).
        max_drop, max_asr: what an aggregator may lose, and the backdoor success it must stay below, to hold.
        max_accuracy_gap: how far below the audited model an attack-free run may end.
    """

    retrains = "it cannot be trained by federated clients"
    defaults: ClassVar[dict[str, Any]] = {
        "clients": 10,
        "malicious": 0.2,
        "rounds": 5,
        "alpha": None,
        "attacks": ["sign-flip", "alie", "backdoor"],
        "aggregators": ["fedavg", "median", "fltrust"],
        "workers": None,
        "arch": None,
        "max_drop": 0.05,
        "max_asr": 0.2,
        "max_accuracy_gap": 0.2,
    }

    _source: tuple[int, str | None, str | None] | None = None  # (id of the data, its source, why not), by _data

    def check_params(self, p: dict[str, Any]) -> None:
        from ...federated.attacks import attack_names

        for key in ("attacks", "aggregators"):
            if not isinstance(p[key], (list, tuple)) or not p[key] or not all(isinstance(v, str) for v in p[key]):
                raise UsageError(f"probe 'federated': {key} must be a non-empty list of names")
        p["attacks"] = [a for a in dict.fromkeys(p["attacks"]) if a != CLEAN]
        p["aggregators"] = list(dict.fromkeys(p["aggregators"]))
        unknown = sorted(set(p["attacks"]) - set(attack_names()))
        if unknown or not p["attacks"]:
            raise UsageError(f"probe 'federated': attacks must name some of {', '.join(attack_names())}, got {unknown}")
        if not flower_missing():
            from ...federated.strategies import AGGREGATORS

            for agg in p["aggregators"]:
                AGGREGATORS.get(agg)  # an unknown name fails here, before any probe runs
        for key in ("max_drop", "max_asr", "max_accuracy_gap"):
            if not 0 < p[key] <= 1:
                raise UsageError(f"probe 'federated': {key} must lie in (0, 1], got {p[key]!r}")
        w = p["workers"]
        if w is not None and (isinstance(w, bool) or not isinstance(w, int) or w < 1):
            raise UsageError(f"probe 'federated': workers must be a whole number >= 1 or null, got {w!r}")
        FLSpec(
            clients=p["clients"], malicious=p["malicious"], rounds=p["rounds"], alpha=p["alpha"], attack=p["attacks"][0]
        )

    def _data(self, ctx: AuditContext) -> tuple[str | None, str | None]:
        if self._source is None or self._source[0] != id(ctx.data):
            self._source = (id(ctx.data), *reloadable_source(ctx.data))
        return self._source[1], self._source[2]

    def skip_reason(self, ctx: AuditContext) -> str | None:
        if flower_missing():
            return _NEEDS
        reason = super().skip_reason(ctx)
        return reason if reason is not None else self._data(ctx)[1]

    def run(self, ctx: AuditContext) -> ProbeResult:
        from ...federated.simulate import simulate

        p = self.params
        arch, (source, why) = self._arch(ctx), self._data(ctx)
        if arch is None or source is None:
            raise UsageError(f"probe 'federated' does not apply: {why or 'no architecture'}")
        base = FLSpec(
            arch=arch,
            data=source,
            clients=p["clients"],
            malicious=p["malicious"],
            rounds=p["rounds"],
            alpha=None if p["alpha"] is None else float(p["alpha"]),
            seed=ctx.seed_for(self.name),
        )
        specs = [base.replace(attack=a, aggregator=g) for g in p["aggregators"] for a in [CLEAN, *p["attacks"]]]
        done: list[str] = []

        def progress(result: dict[str, Any]) -> None:
            s = result["spec"]
            done.append(f"{s['attack']} x {s['aggregator']}")
            ctx.report(self.name, len(done) / len(specs), f"{done[-1]}: accuracy {_num(result['final_accuracy']):.3f}")

        ctx.report(self.name, 0.0, f"{len(specs)} federated runs of {arch}, {base.clients} clients")
        results = simulate(specs, workers=p["workers"], on_result=progress)
        return self._result(ctx, arch, base, results)

    def _result(self, ctx: AuditContext, arch: str, base: FLSpec, results: list[dict[str, Any]]) -> ProbeResult:
        p = self.params
        cells = {(r["spec"]["attack"], r["spec"]["aggregator"]): r for r in results}
        aggs = [self._outcome(g, cells) for g in p["aggregators"]]
        best = min(aggs, key=_Agg.rank)
        model_acc = self.model_test_accuracy(ctx)
        return self.result(
            ctx,
            risk=best.level,
            summary=self._summary(aggs, best, base),
            params={**p, "arch": arch, "data": base.data, "n_malicious": round(base.malicious * base.clients)},
            metrics=self._metrics(cells, aggs),
            plots=self._plots(cells, best),
            checks=[self._holds(aggs, best), self._fedavg(aggs), self._trains(aggs, model_acc)],
            artifacts={
                "best_aggregator": best.name,
                "rounds": {f"{a} x {g}": [x.get("accuracy") for x in r["rounds"]] for (a, g), r in cells.items()},
                "seconds": {f"{a} x {g}": r.get("seconds") for (a, g), r in cells.items()},
            },
        )

    def _outcome(self, agg: str, cells: dict[tuple[str, str], dict[str, Any]]) -> _Agg:
        clean = _num(cells[CLEAN, agg]["final_accuracy"])
        drops = {a: clean - _num(cells[a, agg]["final_accuracy"]) for a in self.params["attacks"]}
        worst = max(drops, key=lambda a: drops[a] if math.isfinite(drops[a]) else math.inf)
        asr = _num(cells["backdoor", agg].get("backdoor_asr")) if "backdoor" in drops else None
        return _Agg(agg, clean, drops[worst], worst, asr)

    def _metrics(self, cells: dict[tuple[str, str], dict[str, Any]], aggs: list[_Agg]) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for agg in aggs:
            g = agg.name
            out[f"fl_clean_accuracy[{g}]"] = agg.clean
            for a in self.params["attacks"]:
                acc = _num(cells[a, g]["final_accuracy"])
                out[f"fl_accuracy[{a},{g}]"] = acc
                out[f"fl_drop[{a},{g}]"] = agg.clean - acc
            if agg.asr is not None:
                out[f"fl_backdoor_asr[{g}]"] = agg.asr
        out["fl_worst_drop"] = min((a.worst_drop for a in aggs), key=lambda d: d if math.isfinite(d) else math.inf)
        return out

    @staticmethod
    def _summary(aggs: list[_Agg], best: _Agg, base: FLSpec) -> str:
        def one(a: _Agg) -> str:
            asr = "" if a.asr is None else f", backdoor success {a.asr:.1%}"
            return f"{a.name} loses {100 * a.worst_drop:.1f} points ({a.worst_attack}){asr}"

        rest = [one(a) for a in aggs if a is not best]
        head = f"{base.clients} clients, {round(base.malicious * base.clients)} malicious, {base.rounds} rounds: "
        return head + f"best aggregator {one(best)}" + (f"; {'; '.join(rest)}" if rest else "")

    def _plots(self, cells: dict[tuple[str, str], dict[str, Any]], best: _Agg) -> list[Plot]:
        attacks = [CLEAN, *self.params["attacks"]]
        pos = [float(i) for i in range(len(attacks))]
        bars = [
            Series(g, pos, [_num(cells[a, g]["final_accuracy"]) for a in attacks]) for g in self.params["aggregators"]
        ]
        curves = [
            Series(a, [float(x["round"]) for x in rs], [_num(x.get("accuracy")) for x in rs])
            for a in attacks
            for rs in [cells[a, best.name]["rounds"]]
        ]
        return [
            Plot(
                "federated-accuracy",
                "Final accuracy per attack and aggregator",
                "bar",
                "attack",
                "test accuracy",
                bars,
                categories=attacks,
            ),
            Plot(
                "federated-rounds",
                f"Accuracy per round under {best.name} (the best aggregator)",
                "line",
                "round",
                "test accuracy",
                curves,
            ),
        ]

    def _holds(self, aggs: list[_Agg], best: _Agg) -> Check:
        title = "A robust aggregator holds"
        max_drop, max_asr = self.params["max_drop"], self.params["max_asr"]
        ev = {
            "worst_drop": {a.name: a.worst_drop for a in aggs},
            "backdoor_asr": {a.name: a.asr for a in aggs if a.asr is not None},
            "max_drop": max_drop,
            "max_asr": max_asr,
        }
        held = [a for a in aggs if a.worst_drop <= max_drop and (a.asr is None or a.asr < max_asr)]
        if held:
            names = ", ".join(a.name for a in held)
            return Check(
                "robust-aggregator-holds",
                title,
                "pass",
                f"{names} keep(s) every attack within {max_drop:g} of the attack-free accuracy and the backdoor "
                f"below {max_asr:.0%}: a federation of this architecture on these data can be defended.",
                ev,
            )
        asr = "" if best.asr is None else f" and backdoor success {best.asr:.1%}"
        return Check(
            "robust-aggregator-holds",
            title,
            "warn",
            f"No aggregator holds: the best, {best.name}, still loses {best.worst_drop:.3f} accuracy under "
            f"{best.worst_attack}{asr}; this federation needs a stronger defence (or fewer malicious clients).",
            ev,
        )

    def _fedavg(self, aggs: list[_Agg]) -> Check:
        title = "The attacks hurt plain FedAvg"
        plain = next((a for a in aggs if a.name == "fedavg"), None)
        if plain is None:
            return Check("fedavg-is-vulnerable", title, "skipped", "FedAvg was not among the aggregators.")
        max_drop, max_asr = self.params["max_drop"], self.params["max_asr"]
        ev = {"worst_drop": plain.worst_drop, "worst_attack": plain.worst_attack, "backdoor_asr": plain.asr}
        if plain.worst_drop > max_drop or (plain.asr is not None and plain.asr >= max_asr):
            asr = "" if plain.asr is None else f", backdoor success {plain.asr:.1%}"
            return Check(
                "fedavg-is-vulnerable",
                title,
                "pass",
                f"Undefended averaging loses {plain.worst_drop:.3f} accuracy under {plain.worst_attack}{asr}: the "
                "attacks bite, so the robust aggregators' numbers measure a defence.",
                ev,
            )
        return Check(
            "fedavg-is-vulnerable",
            title,
            "warn",
            f"The attacks barely move plain FedAvg (worst drop {plain.worst_drop:.3f}): they are too weak in this "
            "setting for the other aggregators' hold to mean much (more malicious clients or rounds).",
            ev,
        )

    def _trains(self, aggs: list[_Agg], model_acc: float) -> Check:
        title = "The federation learns without attack"
        gap = self.params["max_accuracy_gap"]
        ev = {"model_accuracy": model_acc, "clean_accuracy": {a.name: a.clean for a in aggs}, "max_gap": gap}
        low = [a for a in aggs if not a.clean >= model_acc - gap]
        if low:
            names = ", ".join(f"{a.name} ({a.clean:.3f})" for a in low)
            return Check(
                "federation-trains",
                title,
                "warn",
                f"Without attack {names} end(s) more than {gap:g} below the audited model ({model_acc:.3f}): their "
                "drops are measured on a model that did not learn (more rounds, or a fitting federated recipe).",
                ev,
            )
        return Check(
            "federation-trains",
            title,
            "pass",
            f"Every attack-free federation reaches within {gap:g} of the audited model's accuracy ({model_acc:.3f}).",
            ev,
        )
