"""Certified robustness of a randomized-smoothing model (Cohen, Rosenfeld & Kolter 2019), with an
empirical check that the certificates hold against an adaptive attack.

Applies when the audited model is a :class:`~bastion.defenses.certification.SmoothedClassifier`. On
the first ``n_certify`` audited inputs it runs Cohen's CERTIFY (``n0`` selection and ``n`` estimation
samples, failure probability ``alpha``; ``None`` takes the model's own settings), input i drawing its noise from
(the model's seed, i) so that the inputs can be shared out over workers (:func:`bastion.scale.certify_sharded`),
and reports:

- certified accuracy against radius: the fraction of inputs whose certified class is the true label
  with a certified L2 radius >= r (a curve, and the metrics ``certified_accuracy@r=R`` for ``radii``
  and, for an L2 audit, the audit's eps values);
- the abstention rate, and a histogram of the certified radii.

The certificates are then put to an adaptive attack: PGD-L2 inside each certified radius against the soft
smoothed classifier (the model's differentiable ``logits``: a Monte-Carlo average over noise, i.e. EOT).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from ...attacks import PGD
from ...defenses.certification import ABSTAIN, SmoothedClassifier
from ...errors import UsageError
from ...models.wrapped import WrappedClassifier
from ...scale import certify_sharded
from ...threat import canonical_norm
from ..probe import AuditContext, Probe, register_probe, risk_from_ratio
from ..result import Check, Plot, ProbeResult, Series


def radius_key(r: float) -> str:
    """The radius part of a metric name: ``certified_accuracy@r=0.5``."""
    return f"r={r:g}"


def certified_accuracy(labels: Tensor, radii: Tensor, y: Tensor, r: float) -> float:
    """Fraction of inputs certified as their true label with radius >= r (abstentions count as wrong)."""
    return float(((labels == y) & (radii >= r)).float().mean()) if y.numel() else float("nan")


class _SoftView(WrappedClassifier):
    """The smoothed model's soft scores, with predict = their argmax: PGD's own bookkeeping then needs no
    Monte-Carlo vote (the probe runs PREDICT itself on the result)."""

    scores_are_expectation = True

    def __init__(self, model: SmoothedClassifier) -> None:
        super().__init__(model, output="logits")
        self.n_logits = model.n_logits

    @property
    def queries_per_input(self) -> int:
        return self.n_logits


def _plots(
    sigma: float, labels: Tensor, radii: Tensor, yc: Tensor, grid_r: list[float], n: int, alpha: float
) -> list[Plot]:
    """Certified accuracy against the radius, and the certified radii of the correct / wrong inputs."""
    correct, certified = labels == yc, labels != ABSTAIN
    ok_radii = radii[correct]
    top = max([float(radii.max()) if radii.numel() else 0.0, *grid_r]) or 1.0
    curve_x = [top * i / 40 for i in range(41)]
    return [
        Plot(
            id="certified-accuracy",
            title=f"Certified accuracy against L2 radius (sigma={sigma:g})",
            kind="line",
            x_label="radius (l2)",
            y_label="certified accuracy",
            series=[
                Series(
                    f"certified (n={n}, alpha={alpha:g})",
                    curve_x,
                    [certified_accuracy(labels, radii, yc, r) for r in curve_x],
                )
            ],
        ),
        Plot(
            id="certified-radius-hist",
            title="Certified radius per input (abstentions left out)",
            kind="hist",
            x_label="certified radius (l2)",
            y_label="inputs",
            series=[
                s
                for s in (
                    Series("certified, correct", ok_radii.tolist()),
                    Series("certified, wrong class", radii[certified & ~correct].tolist()),
                )
                if s.x
            ],
        ),
    ]


@register_probe
class CertificationProbe(
    Probe, name="certification", title="Certified robustness (randomized smoothing)", threat="evasion / certified L2"
):
    """Cohen's CERTIFY on a :class:`SmoothedClassifier`: certified accuracy against L2 radius, checked by attack.

    Metrics: ``certified_accuracy@r=R``, ``abstention_rate``, ``median_certified_radius`` and
    ``mean_certified_radius`` (over the inputs certified as their label), ``certificate_violations``.

    Check ``certificate-holds``: on up to ``pgd_inputs`` inputs certified with a positive radius, PGD-L2 with eps
    equal to that input's certified radius attacks the soft smoothed classifier towards leaving the certified
    class; the smoothed prediction (Cohen's PREDICT, ``n_predict`` samples) at the result must be the certified
    class or an abstention. A *different* class contradicts the certificate: fail (each certificate and each
    prediction may fail with probability alpha, so a violation points at an implementation or noise-source
    problem rather than a statistical fluke). Skipped when the base model is a black box or no input has a
    positive radius.

    Risk (L2 audits only; 'n/a' otherwise): certified accuracy at the audit's largest eps relative to certified
    accuracy at radius 0 (< 50% high, < 90% medium, else low).

    Parameters:
        n_certify: audited inputs certified (the first ``n_certify``; at least 1).
        n0: CERTIFY's noise samples that select the top class (``None``: the model's).
        n: CERTIFY's noise samples that estimate its probability (``None``: the model's).
        alpha: the failure probability of a certificate (``None``: the model's).
        radii: the L2 radii of the ``certified_accuracy@r=R`` metrics (with 0 and, in an L2 audit, the eps values).
        pgd_inputs: certified inputs the check attacks.
        pgd_steps, pgd_restarts: the check's PGD-L2 iterations and random restarts.
        n_predict: noise samples of the PREDICT run on each attacked input.
    """

    defaults: ClassVar[dict[str, Any]] = {
        "n_certify": 200,
        "n0": None,
        "n": None,
        "alpha": None,
        "radii": [0.0, 0.25, 0.5, 0.75, 1.0],
        "pgd_inputs": 20,
        "pgd_steps": 20,
        "pgd_restarts": 1,
        "n_predict": 1000,
    }

    needs_model = (
        SmoothedClassifier,
        "not a smoothed classifier: wrap the model with bastion.defenses.certification.SmoothedClassifier",
    )

    def run(self, ctx: AuditContext) -> ProbeResult:
        p = self.params
        model = self.audited(ctx, SmoothedClassifier)
        n0 = int(p["n0"]) if p["n0"] is not None else model.n0
        n = int(p["n"]) if p["n"] is not None else model.n
        alpha = float(p["alpha"]) if p["alpha"] is not None else model.alpha
        if p["n_certify"] < 1:
            raise UsageError(f"probe 'certification': n_certify must be >= 1, got {p['n_certify']!r}")
        m = min(p["n_certify"], ctx.x.shape[0])
        x, y = ctx.x[:m], ctx.y[:m]
        ctx.report(self.name, 0.0, f"CERTIFY on {m} inputs, n={n}")
        with_counts = certify_sharded(
            model, x, n0=n0, n=n, alpha=alpha, executor=ctx.executor, store=ctx.store, label=self.name
        )  # input i's noise from (the model's seed, i): the same certificates on one process or many
        labels, radii, counts = (t.cpu() for t in with_counts)
        yc = y.cpu()
        correct = labels == yc
        certified = labels != ABSTAIN
        l2 = canonical_norm(ctx.norm) == "l2"
        grid_r = sorted({0.0} | {float(r) for r in p["radii"]} | ({float(e) for e in ctx.eps} if l2 else set()))
        metrics: dict[str, float | None] = {
            f"certified_accuracy@{radius_key(r)}": certified_accuracy(labels, radii, yc, r) for r in grid_r
        }
        ok_radii = radii[correct]
        metrics["abstention_rate"] = float((~certified).float().mean()) if m else None
        metrics["median_certified_radius"] = float(ok_radii.median()) if ok_radii.numel() else None
        metrics["mean_certified_radius"] = float(ok_radii.mean()) if ok_radii.numel() else None
        plots = _plots(model.sigma, labels, radii, yc, grid_r, n, alpha)
        ctx.report(self.name, 0.6, "PGD-L2 inside the certified radii")
        check = self._certificate_holds(ctx, model, x, labels, radii, alpha)
        metrics["certificate_violations"] = check.evidence.get("violations")
        ref = ctx.reference_eps
        risk = (
            risk_from_ratio(certified_accuracy(labels, radii, yc, ref), metrics["certified_accuracy@r=0"] or 0.0)
            if l2
            else "n/a"
        )
        a0 = metrics["certified_accuracy@r=0"]
        at_r = "".join(f", {metrics[f'certified_accuracy@{radius_key(r)}']:.3f} at {r:g}" for r in grid_r if r > 0)
        summary = (
            f"certified accuracy {a0:.3f} at radius 0{at_r}"
            + f" (L2, sigma={model.sigma:g}, n={n}, alpha={alpha:g}, {m} inputs); "
            f"{metrics['abstention_rate']:.0%} abstained; certificate check: {check.status}"
        )
        ctx.report(self.name, 1.0, "done")
        return self.result(
            ctx,
            risk=risk,
            summary=summary,
            params={**p, "n0": n0, "n": n, "alpha": alpha, "sigma": model.sigma, "model": repr(model)},
            metrics=metrics,
            plots=plots,
            checks=[check],
            per_sample={
                "certification": {
                    "label": labels.tolist(),
                    "radius": radii.tolist(),
                    "correct": correct.tolist(),
                    "count": counts.tolist(),
                }
            },
        )

    def _certificate_holds(
        self, ctx: AuditContext, model: SmoothedClassifier, x: Tensor, labels: Tensor, radii: Tensor, alpha: float
    ) -> Check:
        p = self.params
        title = "No attack inside a certified radius changes the smoothed prediction"
        if not model.white_box:
            return Check(
                "certificate-holds",
                title,
                "skipped",
                "The base model is a black box: the soft smoothed classifier has no gradients to attack.",
            )
        idx = torch.nonzero((labels != ABSTAIN) & (radii > 0)).flatten()[: p["pgd_inputs"]]
        if idx.numel() == 0:
            return Check("certificate-holds", title, "skipped", "No input was certified with a positive radius.")
        soft = _SoftView(model)
        x_adv = torch.empty_like(x[idx])
        soft_moved = 0
        for j, i in enumerate(idx.tolist()):
            pgd = PGD(
                eps=float(radii[i]),
                norm="l2",
                steps=p["pgd_steps"],
                restarts=p["pgd_restarts"],
                early_stop=False,
                seed=ctx.seed_for(f"{self.name}:pgd:{i}"),
            )
            target = labels[i : i + 1].to(x.device)
            r = pgd(soft, x[i : i + 1], target)
            x_adv[j] = r.x_adv[0]
            soft_moved += int(r.pred_adv[0] != target[0])
            ctx.report(self.name, 0.6 + 0.3 * (j + 1) / idx.numel(), f"PGD-L2 {j + 1}/{idx.numel()}")
        pred = model.predict(x_adv, n=p["n_predict"], alpha=alpha).cpu()
        cert = labels[idx]
        flipped = (pred != cert) & (pred != ABSTAIN)
        norms = (x_adv - x[idx]).flatten(1).norm(dim=1).cpu()
        evidence = {
            "inputs": int(idx.numel()),
            "violations": int(flipped.sum()),
            "violating_inputs": idx[flipped].tolist(),
            "abstained_after_attack": int((pred == ABSTAIN).sum()),
            "soft_classifier_moved": soft_moved,
            "eps_min": float(radii[idx].min()),
            "eps_max": float(radii[idx].max()),
            "max_norm_over_radius": float((norms / radii[idx]).max()),
            "pgd": {
                "norm": "l2",
                "steps": p["pgd_steps"],
                "restarts": p["pgd_restarts"],
                "eot_samples": model.n_logits,
                "early_stop": False,
            },
            "predict": {"n": p["n_predict"], "alpha": alpha},
        }
        if bool(flipped.any()):
            return Check(
                "certificate-holds",
                title,
                "fail",
                f"PGD-L2 within the certified radius made the smoothed classifier predict another class on "
                f"{int(flipped.sum())} of {idx.numel()} certified inputs. With a sound implementation this "
                f"happens with probability about {2 * alpha:g} per input: suspect the noise source (seeded, "
                "reused or predictable noise) or a base model that is not deterministic.",
                evidence,
            )
        return Check(
            "certificate-holds",
            title,
            "pass",
            f"PGD-L2 ({p['pgd_steps']} steps through the Monte-Carlo soft classifier, i.e. EOT over "
            f"{model.n_logits} noise draws) with eps equal to each input's certified radius never made the "
            f"smoothed prediction a different class on {idx.numel()} certified inputs "
            f"({int((pred == ABSTAIN).sum())} abstained, which a certificate allows).",
            evidence,
        )
