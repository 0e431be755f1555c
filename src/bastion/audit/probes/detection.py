"""Adversarial-input detection: a detector in front of the model, evaluated non-adaptively *and* adaptively.

Applies when the audited model is a :class:`~bastion.defenses.detection.DetectingClassifier`. At the
audit's reference eps (the largest) and norm, on the first ``n`` audited inputs:

- ``false_positive_rate``: the share of clean inputs the detector rejects (the cost of the defence);
  ``clean_accuracy[detecting]``: the share the combination labels correctly (a rejection is not correct);
- non-adaptive: PGD (Madry et al. 2018; ``pgd_steps`` fixed iterations, no early stop — the classic
  attack detectors are usually reported against) on the bare inner model. ``success_rate[pgd]``: its
  success on the model alone; ``detection_rate[pgd]``: the share of its successful adversarial
  examples the detector flags; ``success_rate[nonadaptive]``: the share of the combination's
  clean-correct inputs it turns into inputs that are misclassified *and* not flagged;
- adaptive: :class:`~bastion.defenses.detection.DetectorAwarePGD` (Carlini & Wagner 2017; orthogonal
  PGD, Bryniarski et al. 2022; BPDA through non-differentiable detectors, Athalye et al. 2018) attacks
  model and detector together; ``success_rate[adaptive]`` on the same inputs and denominator.

A detector is worth what survives the attacker who knows about it: the verdict reads the adaptive attack.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from ...attacks import PGD
from ...attacks.base import AttackResult
from ...defenses.detection import REJECT, DetectingClassifier, DetectorAwarePGD
from ...models.base import Classifier
from ..probe import AuditContext, Probe, pick_examples, register_probe, wilson_interval
from ..result import Check, Plot, ProbeResult, Series


def _rate(mask: torch.Tensor, among: torch.Tensor) -> float:
    n = int(among.sum())
    return float((mask & among).sum()) / n if n else math.nan


def _risk(adaptive: float) -> str:
    if not math.isfinite(adaptive):
        return "n/a"
    return "high" if adaptive >= 0.5 else "medium" if adaptive >= 0.1 else "low"


def _summary(m: dict[str, float], norm: str, eps: float, detector: str) -> str:
    return (
        f"At {norm} eps={eps:g} the detector ({detector}) rejects {m['false_positive_rate']:.1%} of clean inputs and "
        f"flags {m['detection_rate[pgd]']:.1%} of PGD's adversarial examples; against model + detector "
        f"non-adaptive PGD succeeds on {m['success_rate[nonadaptive]']:.1%}, the adaptive attack on "
        f"{m['success_rate[adaptive]']:.1%}"
    )


def _bars(m: dict[str, float], norm: str, eps: float) -> Plot:
    labels = [
        "false positives (clean)",
        "PGD detected",
        "PGD success (bare model)",
        "non-adaptive success (model + detector)",
        "adaptive success (model + detector)",
    ]
    values = [
        m["false_positive_rate"],
        m["detection_rate[pgd]"],
        m["success_rate[pgd]"],
        m["success_rate[nonadaptive]"],
        m["success_rate[adaptive]"],
    ]
    return Plot(
        id="detection-bars",
        title=f"Detection at {norm} eps={eps:g}",
        kind="bar",
        x_label="",
        y_label="fraction",
        categories=labels,
        series=[Series("rate", list(range(len(labels))), values)],
    )


@register_probe
class DetectionProbe(
    Probe, name="detection", title="Adversarial-input detection", threat="evasion / detector in front of the model"
):
    """False positives, non-adaptive PGD and a detector-aware attack against a :class:`DetectingClassifier`.

    Needs gradients of the model behind the detector and an audit in linf or l2; every attack runs at the audit's
    largest eps.

    Check ``adaptive-at-least-as-strong``: an adaptive attack that does worse than the non-adaptive one against
    the combination is not a valid evaluation (its number would flatter the detector), so the check fails (then
    raise ``adaptive_steps`` / ``adaptive_restarts``, or trust neither number); it is skipped when the
    combination gets no clean input right.

    Risk: the adaptive success against the combination: >= 0.5 high, >= 0.1 medium, else low.

    Parameters:
        n: audited inputs attacked (the first ``n``).
        pgd_steps: iterations of the non-adaptive PGD on the bare model (no early stop).
        adaptive_steps, adaptive_restarts: iterations and random restarts of the detector-aware attack.
        batch_size: inputs either attack processes at once.
        examples: the adaptive attack's successful examples shown in the gallery.
    """

    defaults: ClassVar[dict[str, Any]] = {
        "n": 500,
        "pgd_steps": 40,
        "adaptive_steps": 100,
        "adaptive_restarts": 3,
        "batch_size": 500,
        "examples": 2,
    }

    needs_model = (
        DetectingClassifier,
        "the model has no detector in front (wrap it in bastion.defenses.detection.DetectingClassifier "
        "to audit a detector)",
    )
    needs_gradients = "the model behind the detector is a black box; the attacks here need its gradients"
    needs_lp_norm = "the detection attacks support linf and l2, not {norm}"

    def _bare_pgd(
        self, ctx: AuditContext, inner: Classifier, det: Any, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[PGD, AttackResult, torch.Tensor]:
        """Plain PGD on the model behind the detector (the non-adaptive attacker), and what the detector flags."""
        p = self.params
        pgd = PGD(
            eps=ctx.reference_eps,
            norm=ctx.norm,
            steps=p["pgd_steps"],
            early_stop=False,
            batch_size=p["batch_size"],
            seed=ctx.seed_for("detection:pgd"),
        )
        r = ctx.run_attack(pgd, inner, x, y, probe=self.name)
        with torch.no_grad():
            detected = det.detect(r.x_adv)
        return pgd, r, detected

    def run(self, ctx: AuditContext) -> ProbeResult:
        p = self.params
        model = self.audited(ctx, DetectingClassifier)
        inner, det = model.model, model.detector
        k = min(p["n"], ctx.x.shape[0])
        x, y = ctx.x[:k], ctx.y[:k]
        eps, norm = ctx.reference_eps, ctx.norm
        ctx.report(self.name, 0.0, "clean inputs")
        with torch.no_grad():
            pred_clean = model.predict(x)
        rejected_clean = pred_clean == REJECT
        combo_correct = pred_clean == y  # accepted and right
        fpr = float(rejected_clean.float().mean())
        ctx.report(self.name, 0.05, f"PGD on the bare model (eps={eps:g})")
        pgd, r, detected_pgd = self._bare_pgd(ctx, inner, det, x, y)
        fooled_bare = r.success & r.clean_correct
        nonadaptive = fooled_bare & ~detected_pgd  # fooled the model, let through by the detector
        ctx.report(self.name, 0.3, "adaptive attack on model + detector")
        adaptive = DetectorAwarePGD(
            eps=eps,
            norm=norm,
            steps=p["adaptive_steps"],
            restarts=p["adaptive_restarts"],
            batch_size=p["batch_size"],
            seed=ctx.seed_for("detection:adaptive"),
        )
        ra = ctx.run_attack(adaptive, model, x, y, probe=self.name)  # on model + detector together
        adaptive_ok = ra.success & combo_correct
        metrics: dict[str, float | None] = {
            "false_positive_rate": fpr,
            "clean_accuracy[detecting]": float(combo_correct.float().mean()),
            "success_rate[pgd]": r.success_rate,
            "detection_rate[pgd]": _rate(detected_pgd, fooled_bare),
            "success_rate[nonadaptive]": _rate(nonadaptive, combo_correct),
            "success_rate[adaptive]": _rate(adaptive_ok, combo_correct),
        }
        m = {key: (v if v is not None else math.nan) for key, v in metrics.items()}
        plots = [_bars(m, norm, eps)]
        counts = [
            int(t.sum()) for t in (combo_correct, nonadaptive, adaptive_ok, nonadaptive & ~ra.success & combo_correct)
        ]
        checks = [self._check(m["success_rate[nonadaptive]"], m["success_rate[adaptive]"], *counts)]
        lo, hi = wilson_interval(int(rejected_clean.sum()), k)
        examples = pick_examples(ra, x, pred_clean, attack="detector-aware-pgd", k=p["examples"])
        per_sample = {
            "clean": {"rejected": rejected_clean.tolist(), "correct": combo_correct.tolist()},
            "pgd": {"fooled": fooled_bare.tolist(), "detected": detected_pgd.tolist()},
            "adaptive": {"success": adaptive_ok.tolist(), "rejected": (ra.pred_adv == REJECT).tolist()},
        }
        per_sample["pgd"]["success"] = (nonadaptive & combo_correct).tolist()
        ctx.report(self.name, 1.0, "done")
        return self.result(
            ctx,
            risk=_risk(m["success_rate[adaptive]"]),
            summary=_summary(m, norm, eps, det.name),
            params={
                **p,
                "eps": eps,
                "norm": norm,
                "detector": repr(det),
                "threshold": det.threshold_,
                "calibrated_fpr": det.fpr_,
                "attacks": {"pgd": repr(pgd), "adaptive": repr(adaptive)},
                "false_positive_rate_ci": [lo, hi],
            },
            metrics=metrics,
            plots=plots,
            checks=checks,
            examples=examples,
            per_sample=per_sample,
        )

    @staticmethod
    def _check(nonadaptive: float, adaptive: float, n: int, k_non: int, k_ad: int, missed: int) -> Check:
        title = "The adaptive attack is at least as strong as the non-adaptive one"
        ev = {
            "inputs": n,
            "success_nonadaptive": nonadaptive,
            "success_adaptive": adaptive,
            "fooled_nonadaptive": k_non,
            "fooled_adaptive": k_ad,
            "only_nonadaptive": missed,
        }
        if not (math.isfinite(nonadaptive) and math.isfinite(adaptive)):
            return Check(
                "adaptive-at-least-as-strong",
                title,
                "skipped",
                "The combination got no clean input right, so there is nothing to attack.",
                ev,
            )
        if adaptive < nonadaptive:
            return Check(
                "adaptive-at-least-as-strong",
                title,
                "fail",
                f"The adaptive attack fooled model + detector on {adaptive:.1%} of the inputs, less than "
                f"non-adaptive PGD ({nonadaptive:.1%}): it is too weak, and its number flatters the "
                "detector. Give it more steps or restarts; until then report the larger number.",
                ev,
            )
        return Check(
            "adaptive-at-least-as-strong",
            title,
            "pass",
            f"The adaptive attack ({adaptive:.1%}) does at least as well as non-adaptive PGD "
            f"({nonadaptive:.1%}) against model + detector"
            + (f"; {missed} input(s) fell only to the non-adaptive attack." if missed else "."),
            ev,
        )
