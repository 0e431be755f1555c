"""Model extraction: how many queries does someone who can query the model need to steal a faithful copy?

The attacker runs Knockoff Nets (Orekondy, Schiele & Fritz 2019, "Knockoff Nets: Stealing Functionality of
Black-Box Models", CVPR; random strategy, :class:`~bastion.attacks.extraction.KnockoffNets`): it queries inputs
drawn without replacement from an unlabelled pool — the audited data's training split — and trains a copy on the
answers. One run measures the copy at every query budget in ``budgets`` (those above the pool's size are replaced
by the pool's size): its **fidelity** (agreement with the model's predictions) and accuracy on the audited test
inputs, which are never part of the pool. The copy is trained on the model's probabilities, or on its labels when
the model answers only labels (``label_only``); with probabilities available, ``labels_only_too`` repeats the run
on the labels alone (same queries, same initialisation), the attacker of a label-only API. The copy's
architecture is ``copy`` if given, else the model's registered architecture, else the zoo's network for the data,
else a two-hidden-layer MLP (:func:`~bastion.attacks.extraction.default_copy_arch`).

A logistic model (a :class:`~bastion.models.linear.LogisticModel`, e.g. ``zoo:digits-logreg``) answering
probabilities is also attacked by equation solving (Tramèr, Zhang, Juels, Reiter & Ristenpart 2016, "Stealing
Machine Learning Models via Prediction APIs", USENIX Security): d + 1 queries recover it exactly.

What a copy is worth to an attacker beyond the stolen functionality: with the audit's norm linf, PGD on the final
copy at each eps of the audit, replayed on the model (:func:`~bastion.attacks.extraction.transferability`, on the
first ``n_transfer`` audited inputs) — ``extraction_transfer_rate@eps=E``, next to ``extraction_noise_rate@eps=E``,
uniform noise of the same size.

Metrics: ``extraction_fidelity@queries=Q`` and ``extraction_accuracy@queries=Q`` per budget Q (the copy trained on
probabilities, or on labels for a label-only model), ``extraction_fidelity`` at the largest budget,
``extraction_budget_for_90pct`` (the first budget whose copy reaches 90 % fidelity; ``None`` when none does); the
same with ``[labels]`` for the label-only run; ``extraction_equation_queries`` and ``extraction_equation_fidelity``
(logistic models); ``extraction_victim_accuracy`` (the model on the audited inputs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ...attacks.extraction import (
    EquationSolving,
    ExtractionResult,
    KnockoffNets,
    default_copy_arch,
    is_label_only,
    transferability,
)
from ...errors import UsageError
from ...models.architectures import ARCHITECTURES
from ...models.linear import LogisticModel
from ...models.torch import TorchClassifier
from ...models.wrapped import unwrap
from ..probe import AuditContext, Probe, eps_key, register_probe
from ..result import Check, Plot, ProbeResult, Series

TARGET = 0.9
"""The fidelity a copy must reach to count as stolen (``extraction_budget_for_90pct``)."""


def queries_key(queries: int) -> str:
    """The budget part of a metric name: ``extraction_fidelity@queries=500``."""
    return f"queries={queries}"


def budget_for(result: ExtractionResult, target: float = TARGET) -> int | None:
    """The queries of the first curve point whose fidelity reaches ``target``, or ``None``."""
    return next((p.queries for p in result.curve if p.fidelity >= target), None)


def is_logistic(model: Any) -> bool:
    """True when the torch model under any wrappers is a :class:`LogisticModel` (or its architecture builds one)."""
    inner = unwrap(model)
    if not isinstance(inner, TorchClassifier):
        return False
    if isinstance(inner.module, LogisticModel):
        return True
    return (
        inner.arch is not None
        and inner.arch in ARCHITECTURES
        and isinstance(ARCHITECTURES.get(inner.arch).build(), LogisticModel)
    )


@dataclass
class Outcome:
    """What the probe's attacks returned: the knockoff ``runs`` by mode (the first is the main one), the equation
    solving result (logistic models), transferability by eps, the copy's architecture, the budgets measured, the
    share of the audited inputs in the model's most frequent answer (a constant copy's fidelity), notes."""

    runs: dict[str, ExtractionResult]
    equation: ExtractionResult | None
    transfer: dict[float, dict[str, float]]
    copy: str | None
    points: list[int]
    majority: float
    notes: list[str] = field(default_factory=list)

    @property
    def main(self) -> ExtractionResult:
        return next(iter(self.runs.values()))

    @property
    def best(self) -> ExtractionResult:
        """The main knockoff copy, or the equation-solving one when it is more faithful."""
        eq = self.equation
        return eq if eq is not None and eq.fidelity > self.main.fidelity else self.main


@register_probe
class ExtractionProbe(Probe, name="extraction", title="Model extraction", threat="confidentiality / model extraction"):
    """Knockoff Nets (and equation solving on logistic models): the queries a faithful copy of the model costs.

    Needs a training split (the attacker's pool) and a test split.

    Check ``copy-beats-chance``: warns unless the best copy's fidelity (the main knockoff copy at the largest
    budget, or the equation-solving copy when it is more faithful) closes at least ``min_gap_closed`` of the gap
    between the majority-class rate (a copy answering the model's most frequent prediction) and 1 — otherwise
    nothing was stolen, and the low risk comes from a failed attack or answers with no information in them.

    Risk, by the fewest queries any of the attacks needed for 90 % fidelity: at most ``high_budget`` high, more
    medium; no copy reaching 90 % within the largest budget, low.

    Parameters:
        budgets: the query budgets the copy is measured at (whole numbers >= 1; those above the pool's size are
            replaced by that size).
        labels_only_too: with probabilities available, also train a copy on the labels alone.
        copy: the copy's registered architecture (``None``: :func:`~bastion.attacks.extraction.default_copy_arch`).
        epochs: the copy's training epochs at each budget (``None``: Knockoff Nets' default).
        equation_solving: attack a logistic model answering probabilities by equation solving too.
        n_transfer: audited inputs of the transferability measurement (the first ``n_transfer``).
        transfer_steps: PGD iterations on the copy for the transferability measurement.
        high_budget: the most queries for 90 % fidelity that still make the risk high.
        min_gap_closed: the share of the gap to a perfect copy the check requires.
    """

    defaults: ClassVar[dict[str, Any]] = {
        "budgets": [100, 250, 500, 1000, 2000],
        "labels_only_too": True,
        "copy": None,
        "epochs": None,
        "equation_solving": True,
        "n_transfer": 300,
        "transfer_steps": 40,
        "high_budget": 1000,
        "min_gap_closed": 0.5,
    }

    def check_params(self, p: dict[str, Any]) -> None:
        b = p["budgets"]
        ok = isinstance(b, (list, tuple)) and b and all(isinstance(v, int) and not isinstance(v, bool) for v in b)
        if not ok or min(b) < 1:
            raise UsageError(f"probe 'extraction': budgets must be a list of whole numbers >= 1, got {b!r}")
        if p["copy"] is not None:
            ARCHITECTURES.get(p["copy"])  # an unknown name fails before any probe runs
        if p["epochs"] is not None and (not isinstance(p["epochs"], int) or p["epochs"] < 1):
            raise UsageError(f"probe 'extraction': epochs must be a whole number >= 1 or None, got {p['epochs']!r}")

    def skip_reason(self, ctx: AuditContext) -> str | None:
        if ctx.data.x_train.shape[0] == 0:
            return "extraction needs a training split: the attacker's pool of unlabelled inputs"
        if ctx.data.x_test.shape[0] == 0:
            return "extraction needs a test split: held-out inputs to measure the copy on"
        return None

    def checkpoints(self, pool: int) -> list[int]:
        """The budgets measured with a pool of ``pool`` inputs: those above it replaced by ``pool`` itself."""
        budgets = sorted({int(b) for b in self.params["budgets"]})
        points = [b for b in budgets if b <= pool]
        return [*points, pool] if budgets[-1] > pool else points

    def run(self, ctx: AuditContext) -> ProbeResult:
        p = self.params
        pool = ctx.data.x_train
        points = self.checkpoints(int(pool.shape[0]))
        copy = p["copy"] or default_copy_arch(ctx.model, ctx.data.name)
        with torch.no_grad():  # before the label-only test: a remote API says what it sends with its first answer
            pred = ctx.model.predict(ctx.x)
        majority = float(torch.bincount(pred, minlength=ctx.model.n_classes).max()) / max(int(pred.numel()), 1)
        label_only = is_label_only(ctx.model)
        modes = ["labels"] if label_only else ["probabilities", "labels"] if p["labels_only_too"] else ["probabilities"]
        extra: dict[str, Any] = {} if p["epochs"] is None else {"epochs": int(p["epochs"])}
        runs: dict[str, ExtractionResult] = {}
        for i, mode in enumerate(modes):
            ctx.report(self.name, 0.8 * i / len(modes), f"knockoff ({mode})")
            attack = KnockoffNets(
                pool=pool, copy=copy, labels_only=mode == "labels", seed=ctx.seed_for(self.name), **extra
            )
            runs[mode] = attack.extract(ctx.model, points[-1], eval_x=ctx.x, eval_y=ctx.y, checkpoints=points)
        notes = [] if not label_only else ["the model answers labels only: the copy is trained on labels"]
        equation = self._equation_solving(ctx, notes)
        ctx.report(self.name, 0.85, "transferability")
        transfer = self._transfer(ctx, runs[modes[0]], notes)
        ctx.report(self.name, 1.0, "done")
        return self._result(ctx, Outcome(runs, equation, transfer, copy, points, majority, notes))

    def _equation_solving(self, ctx: AuditContext, notes: list[str]) -> ExtractionResult | None:
        if not self.params["equation_solving"] or not is_logistic(ctx.model):
            return None
        if is_label_only(ctx.model):
            notes.append("equation solving skipped: it needs probabilities and the model answers labels only")
            return None
        attack = EquationSolving(seed=ctx.seed_for(f"{self.name}:equation-solving"))
        try:
            return attack.extract(ctx.model, attack.min_budget(ctx.model), eval_x=ctx.x, eval_y=ctx.y)
        except UsageError as e:  # probabilities that underflow give no equations: say so, keep the rest
            notes.append(f"equation solving failed: {e}")
            return None

    def _transfer(self, ctx: AuditContext, run: ExtractionResult, notes: list[str]) -> dict[float, dict[str, float]]:
        if ctx.norm != "linf":
            notes.append(f"transferability not measured: it runs Linf PGD and the audit's norm is {ctx.norm}")
            return {}
        n = self.params["n_transfer"]
        x, y = ctx.x[:n], ctx.y[:n]
        return {
            eps: transferability(
                ctx.model,
                run.stolen,
                x,
                y,
                eps,
                steps=self.params["transfer_steps"],
                seed=ctx.seed_for(f"{self.name}:transfer:{eps_key(eps)}"),
            )
            for eps in ctx.eps
        }

    def _result(self, ctx: AuditContext, out: Outcome) -> ProbeResult:
        runs, equation, transfer = out.runs, out.equation, out.transfer
        metrics: dict[str, float | None] = {"extraction_victim_accuracy": out.main.extra.get("victim_accuracy")}
        for i, (mode, run) in enumerate(runs.items()):
            q = "" if i == 0 else f"[{mode}]"
            for pt in run.curve:
                metrics[f"extraction_fidelity{q}@{queries_key(pt.queries)}"] = pt.fidelity
                metrics[f"extraction_accuracy{q}@{queries_key(pt.queries)}"] = pt.accuracy
            metrics[f"extraction_fidelity{q}"] = run.fidelity
            metrics[f"extraction_budget_for_90pct{q}"] = budget_for(run)
        if equation is not None:
            metrics["extraction_equation_queries"] = equation.queries
            metrics["extraction_equation_fidelity"] = equation.fidelity
        for eps, t in transfer.items():
            metrics[f"extraction_transfer_rate@{eps_key(eps)}"] = t["transfer_rate"]
            metrics[f"extraction_noise_rate@{eps_key(eps)}"] = t["noise_rate"]
        risk, summary = self._verdict(ctx, out)
        return self.result(
            ctx,
            risk=risk,
            summary=summary,
            params={**self.params, "budgets": out.points, "copy": out.copy},
            metrics=metrics,
            plots=[self._plot(out)],
            checks=[self._beats_chance(out)],
            artifacts={
                "notes": out.notes,
                "copy_arch": out.copy,
                "curves": {mode: [pt._asdict() for pt in run.curve] for mode, run in runs.items()},
                "checkpoint_seconds": {mode: run.extra.get("checkpoint_seconds") for mode, run in runs.items()},
                "equation_solving": equation.summary() if equation is not None else None,
                "transfer": {eps_key(eps): t for eps, t in transfer.items()},
            },
        )

    def _verdict(self, ctx: AuditContext, out: Outcome) -> tuple[str, str]:
        runs, equation = out.runs, out.equation
        needed = {f"knockoff ({mode})": budget_for(run) for mode, run in runs.items()}
        if equation is not None:
            needed["equation solving"] = equation.queries if equation.fidelity >= TARGET else None
        reached = {name: q for name, q in needed.items() if q is not None}
        parts = [
            f"knockoff ({mode}) copy agrees with the model on {run.fidelity:.1%} of {ctx.x.shape[0]} held-out inputs "
            f"after {run.queries} queries"
            for mode, run in runs.items()
        ]
        if equation is not None:
            parts.append(f"equation solving: fidelity {equation.fidelity:.1%} from {equation.queries} queries")
        if reached:
            best = min(reached, key=lambda name: reached[name])
            q = reached[best]
            risk = "high" if q <= self.params["high_budget"] else "medium"
            parts.insert(0, f"{best} reaches {TARGET:.0%} fidelity with {q} queries")
        else:
            risk = "low"
            parts.insert(0, f"no copy reaches {TARGET:.0%} fidelity within {out.points[-1]} queries")
        if out.transfer:
            eps = ctx.reference_eps
            t = out.transfer[eps]
            parts.append(
                f"PGD on the copy at eps {eps:g} fools the model on {t['transfer_rate']:.1%} "
                f"(noise {t['noise_rate']:.1%})"
            )
        return risk, "; ".join(parts)

    @staticmethod
    def _plot(out: Outcome) -> Plot:
        runs, equation = out.runs, out.equation
        series = [
            Series(f"fidelity ({mode})", [pt.queries for pt in r.curve], [pt.fidelity for pt in r.curve])
            for mode, r in runs.items()
        ]
        mode, r = next(iter(runs.items()))
        series.append(Series(f"accuracy ({mode})", [pt.queries for pt in r.curve], [pt.accuracy for pt in r.curve]))
        if equation is not None:
            series.append(Series("fidelity (equation solving)", [equation.queries], [equation.fidelity]))
        return Plot(
            "extraction-fidelity",
            "Stolen copy's fidelity against the queries spent",
            "line",
            "queries to the model",
            "share of held-out inputs (fidelity: agrees with the model)",
            series,
            x_log=True,
        )

    def _beats_chance(self, out: Outcome) -> Check:
        title = "The copy beats a constant answer"
        run, chance = out.best, out.majority
        share = self.params["min_gap_closed"]
        floor = chance + share * (1.0 - chance)
        fid = run.fidelity
        ev = {"fidelity": fid, "majority_rate": chance, "floor": floor, "queries": run.queries}
        if not math.isfinite(fid) or fid < floor:
            return Check(
                "copy-beats-chance",
                title,
                "warn",
                f"After {run.queries} queries the copy agrees with the model on {fid:.1%} of the inputs, little above "
                f"the {chance:.1%} of always answering its most frequent class (floor {floor:.1%}): nothing was "
                "stolen, so the low risk is either a failed attack (too few epochs, a copy architecture unfit for "
                "the data) or answers that carry no information about the inputs.",
                ev,
            )
        return Check(
            "copy-beats-chance",
            title,
            "pass",
            f"The copy agrees with the model on {fid:.1%} of the inputs, far above the {chance:.1%} of always "
            "answering its most frequent class: the attack worked, the risk is measured.",
            ev,
        )
