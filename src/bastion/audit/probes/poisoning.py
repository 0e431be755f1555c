"""Training-data poisoning: how susceptible is the model's training recipe to a poisoned training set.

For each configured attack and poison rate the probe poisons the training split
(:mod:`bastion.attacks.poisoning`), retrains the model's architecture on it with the zoo's recipe (the one
trainer) and measures the result next to the same recipe on clean data (:func:`~bastion.attacks.poisoning.
run_poisoning`): for a backdoor (BadNets, Gu et al. 2017; blended, Chen et al. 2017) the attack success rate —
triggered test inputs of other classes classified as the target — and the clean accuracy; for label flipping
the accuracy drop. The result is a curve against the poison rate.

It retrains, so it needs an architecture bastion can build: the audited model's registered architecture
(``zoo:`` models, ``.safetensors`` files), or the ``arch`` parameter naming one (register your own factory with
:func:`bastion.models.register_architecture`), and a dataset with a training split of that input shape.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from ...attacks.poisoning import POISONING_ATTACKS, PoisoningRun, clean_reference, run_poisoning
from ...errors import UsageError
from ..probe import AuditContext, RetrainingProbe, register_probe, trigger_examples
from ..result import Check, Example, Plot, ProbeResult, Series

_RISK = {"high": 2, "medium": 1, "low": 0}


def rate_key(rate: float) -> str:
    """The rate part of a metric name: ``attack_success_rate[badnets]@rate=0.05``."""
    return f"rate={rate:g}"


@register_probe
class PoisoningProbe(
    RetrainingProbe, name="poisoning", title="Training-data poisoning", threat="poisoning / training data"
):
    """Each attack of ``attacks`` at each of its poison rates, retrained with the recipe next to the clean recipe.

    Checks, both skipped when no backdoor ran: ``poisoned-recipe-trains`` warns when a backdoored model loses more
    than ``max_clean_drop`` clean accuracy (the rates measured are then those of a broken training, not of a
    backdoor); ``trigger-needs-poison`` warns when a trigger alone makes the clean model answer the target on
    20% or more of the inputs (it is then an evasion patch, not a backdoor).

    Risk, per attack at its largest rate, the highest over the attacks: a backdoor's success >= 50% high, >= 20%
    medium, else low; label flipping costing >= 10 accuracy points high, >= 3 medium, else low.

    Parameters:
        attacks: poisoning attack names (``bastion.attacks.poisoning.POISONING_ATTACKS``), each mapped to a list of
            poison rates in (0, 1).
        target: the backdoors' target class (label flipping has none).
        arch: the registered architecture retrained (``None``: the audited model's).
        epochs: training epochs (``None``: the architecture's recipe).
        max_clean_drop: the clean accuracy a backdoored model may lose (``poisoned-recipe-trains``).
        examples: triggered test inputs shown per backdoor, on its model at its largest rate.
    """

    retrains = "it cannot be retrained on poisoned data"
    defaults: ClassVar[dict[str, Any]] = {
        "attacks": {"badnets": [0.005, 0.01, 0.02, 0.05], "label-flip": [0.05, 0.2]},
        "target": 0,
        "arch": None,
        "epochs": None,
        "max_clean_drop": 0.05,
        "examples": 4,
    }

    def check_params(self, p: dict[str, Any]) -> None:
        attacks = p["attacks"]
        if not isinstance(attacks, dict) or not attacks:
            raise UsageError("probe 'poisoning': attacks must map attack names to lists of poison rates")
        for name, rates in attacks.items():
            POISONING_ATTACKS.get(name)  # an unknown name fails here, before any probe runs
            if not isinstance(rates, (list, tuple)) or not rates or not all(0 < float(r) < 1 for r in rates):
                raise UsageError(f"probe 'poisoning': the rates of {name!r} must be a list of numbers in (0, 1)")

    def _attack(self, name: str, rate: float, ctx: AuditContext) -> Any:
        cls = POISONING_ATTACKS.get(name)
        kwargs: dict[str, Any] = {"rate": rate, "seed": ctx.seed_for(f"poisoning:{name}:{rate_key(rate)}")}
        if name != "label-flip":
            kwargs["target"] = self.params["target"]
        return cls(**kwargs)

    def run(self, ctx: AuditContext) -> ProbeResult:
        p = self.params
        arch = self._arch(ctx)
        assert arch is not None  # skip_reason said so
        epochs = p["epochs"]
        plan = [(name, float(r)) for name, rates in p["attacks"].items() for r in sorted(rates)]
        ctx.report(self.name, 0.0, f"clean {arch}")
        clean = clean_reference(ctx.data, arch, epochs=epochs)
        runs: dict[str, list[tuple[float, PoisoningRun]]] = {}
        for i, (name, rate) in enumerate(plan):
            ctx.report(self.name, (i + 0.5) / (len(plan) + 1), f"{name} at {rate:.1%}")
            run = run_poisoning(self._attack(name, rate, ctx), ctx.data, arch, clean_model=clean, epochs=epochs)
            runs.setdefault(name, []).append((rate, run))
        ctx.report(self.name, 1.0, "done")
        metrics = self._metrics(runs)
        risk, summary = self._verdict(runs)
        return self.result(
            ctx,
            risk=risk,
            summary=summary,
            params={**p, "arch": arch},
            metrics=metrics,
            plots=self._plots(runs),
            checks=[self._trains(runs), self._needs_poison(runs)],
            examples=self._examples(runs, p["examples"]),
        )

    @staticmethod
    def _metrics(runs: dict[str, list[tuple[float, PoisoningRun]]]) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for name, series in runs.items():
            for rate, run in series:
                for key, value in run.metrics.items():
                    if key in ("n_triggered", "clean_model_accuracy"):
                        continue
                    out[f"{key}[{name}]@{rate_key(rate)}"] = value
                out["clean_model_accuracy"] = run.metrics["clean_model_accuracy"]
        return out

    @staticmethod
    def _verdict(runs: dict[str, list[tuple[float, PoisoningRun]]]) -> tuple[str, str]:
        risk, parts = "low", []
        for name, series in runs.items():
            rate, run = series[-1]
            m = run.metrics
            if "attack_success_rate" in m:
                asr = m["attack_success_rate"]
                level = "high" if asr >= 0.5 else "medium" if asr >= 0.2 else "low"
                parts.append(f"{name} at {rate:.1%} poison: attack success {asr:.1%}")
            else:
                drop = m["accuracy_drop"]
                level = "high" if drop >= 0.1 else "medium" if drop >= 0.03 else "low"
                parts.append(
                    f"{name} at {rate:.1%}: accuracy {m['clean_accuracy']:.3f} (clean recipe {m['clean_model_accuracy']:.3f})"
                )
            risk = level if _RISK[level] > _RISK[risk] else risk
        return risk, "; ".join(parts)

    @staticmethod
    def _plots(runs: dict[str, list[tuple[float, PoisoningRun]]]) -> list[Plot]:
        asr = [
            Series(name, [100 * r for r, _ in s], [run.metrics["attack_success_rate"] for _, run in s])
            for name, s in runs.items()
            if "attack_success_rate" in s[0][1].metrics
        ]
        acc = [
            Series(name, [100 * r for r, _ in s], [run.metrics["clean_accuracy"] for _, run in s])
            for name, s in runs.items()
        ]
        plots = []
        if asr:
            plots.append(
                Plot(
                    "poisoning-asr",
                    "Backdoor success against the poison rate",
                    "line",
                    "poisoned records (%)",
                    "attack success rate",
                    asr,
                )
            )
        plots.append(
            Plot(
                "poisoning-accuracy",
                "Clean accuracy of the poisoned model",
                "line",
                "poisoned records (%)",
                "clean accuracy",
                acc,
            )
        )
        return plots

    def _trains(self, runs: dict[str, list[tuple[float, PoisoningRun]]]) -> Check:
        title = "The poisoned recipe still trains"
        limit = self.params["max_clean_drop"]
        worst = max(
            (
                (name, r, run.metrics["accuracy_drop"])
                for name, s in runs.items()
                for r, run in s
                if "attack_success_rate" in run.metrics
            ),
            key=lambda t: t[2],
            default=None,
        )
        if worst is None:
            return Check("poisoned-recipe-trains", title, "skipped", "No backdoor attack ran.")
        name, rate, drop = worst
        ev = {"attack": name, "rate": rate, "accuracy_drop": drop, "limit": limit}
        if drop > limit:
            return Check(
                "poisoned-recipe-trains",
                title,
                "warn",
                f"{name} at {rate:.1%} cost {drop:.3f} clean accuracy (more than {limit:g}): the backdoor's numbers come from a degraded training, not only from the trigger.",
                ev,
            )
        return Check(
            "poisoned-recipe-trains",
            title,
            "pass",
            f"Every backdoored model keeps its clean accuracy within {limit:g} of the clean recipe (worst: {drop:+.3f}).",
            ev,
        )

    @staticmethod
    def _needs_poison(runs: dict[str, list[tuple[float, PoisoningRun]]]) -> Check:
        title = "The trigger needs the poison"
        seen = [
            (name, run.metrics["clean_model_attack_success_rate"])
            for name, s in runs.items()
            for _, run in s[-1:]
            if "clean_model_attack_success_rate" in run.metrics
        ]
        if not seen:
            return Check("trigger-needs-poison", title, "skipped", "No backdoor attack ran.")
        name, base = max(seen, key=lambda t: t[1])
        ev = {"clean_model_attack_success_rate": dict(seen)}
        if base >= 0.2 or math.isnan(base):
            return Check(
                "trigger-needs-poison",
                title,
                "warn",
                f"The {name} trigger alone makes the clean model answer the target on {base:.1%} of inputs: it works as an evasion patch, so its success is not the poison's.",
                ev,
            )
        return Check(
            "trigger-needs-poison",
            title,
            "pass",
            f"On the clean model the triggers reach at most {base:.1%}: the success measured is the backdoor's.",
            ev,
        )

    @staticmethod
    def _examples(runs: dict[str, list[tuple[float, PoisoningRun]]], k: int) -> list[Example]:
        out: list[Example] = []
        for name, series in runs.items():
            rate, run = series[-1]
            trig = run.poisoned.trigger
            if trig is None or k <= 0:
                continue
            d = run.poisoned.data
            keep = torch.nonzero(
                d.y_test != (run.poisoned.target if run.poisoned.target is not None else -1)
            ).flatten()[:k]
            x = d.x_test[keep]
            out += trigger_examples(
                run.model,
                keep.tolist(),
                d.y_test[keep],
                x,
                trig.apply(x, torch.Generator().manual_seed(0)),
                lambda diff: diff.abs().max(),
                attack=f"{name} @ {rate:.1%}",
                norm="trigger",
                bounds=d.bounds,
            )
        return out
