"""The model probe: clean accuracy with a confidence interval, and the sanity checks every later
number depends on — is the model deterministic, does it output logits, are its gradients usable (the checks of
AutoAttack's ``checks.py``; Carlini et al. 2019, section 4).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ...attacks.evasion.losses import as_logits, margin_loss
from ...models.wrapped import averages_randomness
from ..probe import AuditContext, Probe, register_probe, wilson_interval
from ..result import Check, Plot, ProbeResult, Series


@register_probe
class ModelProbe(Probe, name="model", title="Model and clean accuracy", threat="baseline"):
    """Clean accuracy on the whole test split (with a 95% Wilson interval) and per class, and three sanity checks.

    Metrics: ``clean_accuracy`` (with ``_ci_low`` / ``_ci_high``), ``clean_accuracy_audited`` (on the audited
    inputs), ``n_test``, ``deterministic`` (1 when the determinism check passed). Risk is ``n/a``.

    Checks, on the first ``check_inputs`` audited inputs:

    - ``deterministic``: two forward passes on the same inputs agree exactly, else a warning. A randomised model
      gets attacked through :class:`~bastion.attacks.EOT` by the white-box probes, and the report says so.
    - ``logits``: the scores are logits. Probabilities (declared, or rows that sum to one) let cross-entropy
      saturate and hide gradients; the attacks work on log-probabilities and the ensemble adds the
      scale-invariant DLR loss, but the check warns. Skipped for a black box.
    - ``gradients``: input gradients of the margin loss (which, unlike cross-entropy, does not underflow on
      confident inputs) are finite and non-zero. Zero gradients are the signature of non-differentiable
      preprocessing (quantisation, JPEG, thresholds) or saturation: no gradient, a non-finite one or a zero one on
      more than half the inputs fails, zero ones on fewer warn. Skipped for a black box.

    Parameters:
        check_inputs: audited inputs the sanity checks run on.
    """

    defaults: ClassVar[dict[str, Any]] = {"check_inputs": 64}

    def run(self, ctx: AuditContext) -> ProbeResult:
        model, data = ctx.model, ctx.data
        ctx.report(self.name, 0.0, "clean accuracy")
        with torch.no_grad():
            pred_all = model.predict(data.x_test)
        correct_all = pred_all == data.y_test
        k, n = int(correct_all.sum()), int(correct_all.numel())
        acc = k / n
        lo, hi = wilson_interval(k, n)
        pred = pred_all[: ctx.x.shape[0]]
        correct = pred == ctx.y
        per_class = [
            float(correct_all[data.y_test == c].float().mean()) if bool((data.y_test == c).any()) else 0.0
            for c in range(model.n_classes)
        ]
        ctx.report(self.name, 0.5, "sanity checks")
        m = min(self.params["check_inputs"], ctx.x.shape[0])
        xs, ys = ctx.x[:m], ctx.y[:m]
        checks = [self._determinism(ctx, xs), self._logits(ctx, xs), self._gradients(ctx, xs, ys)]
        deterministic = checks[0].status == "pass"
        res = self.result(
            ctx,
            risk="n/a",
            summary=f"clean accuracy {acc:.3f} (95% CI {lo:.3f}-{hi:.3f}) on {n} test inputs; "
            f"{float(correct.float().mean()):.3f} on the {ctx.x.shape[0]} audited ones",
            metrics={
                "clean_accuracy": acc,
                "clean_accuracy_ci_low": lo,
                "clean_accuracy_ci_high": hi,
                "clean_accuracy_audited": float(correct.float().mean()),
                "n_test": n,
                "deterministic": float(deterministic),
            },
            plots=[
                Plot(
                    id="per-class",
                    title="Clean accuracy per class",
                    kind="bar",
                    x_label="class",
                    y_label="accuracy",
                    series=[Series("accuracy", list(range(model.n_classes)), per_class)],
                    categories=[str(c) for c in range(model.n_classes)],
                )
            ],
            checks=checks,
            per_sample={"clean": {"correct": correct.tolist(), "pred": pred.tolist()}},
        )
        ctx.report(self.name, 1.0, "done")
        return res

    def _determinism(self, ctx: AuditContext, xs: torch.Tensor) -> Check:
        with torch.no_grad(), ctx.model.attack_mode():
            a, b = ctx.model.logits(xs), ctx.model.logits(xs)
        diff = float((a - b).abs().max()) if a.numel() else 0.0
        if diff == 0.0:
            return Check(
                "deterministic",
                "The model is deterministic",
                "pass",
                "Two forward passes on the same inputs gave identical scores.",
                {"max_difference": diff},
            )
        if averages_randomness(ctx.model):
            return Check(
                "deterministic",
                "The model is deterministic",
                "warn",
                "The model is randomised by design (e.g. randomized smoothing) and its scores are already an "
                "average over its noise draws (expectation over transformation built in): white-box attacks "
                "use those scores directly.",
                {"max_difference": diff},
            )
        return Check(
            "deterministic",
            "The model is deterministic",
            "warn",
            "The scores differ between two passes on the same inputs: the model is randomised. White-box "
            "attacks are run through expectation over transformation (EOT), averaging the scores over "
            "several draws, so that randomness cannot hide the gradient.",
            {"max_difference": diff},
        )

    def _logits(self, ctx: AuditContext, xs: torch.Tensor) -> Check:
        title = "The model outputs logits, not probabilities"
        if not ctx.model.white_box:
            return Check(
                "logits",
                title,
                "skipped",
                "The model is a black box: its scores only feed score-based "
                f"attacks, which work on their logarithm ({ctx.model.output} declared); saturation only "
                "matters for gradients.",
                {"declared": ctx.model.output},
            )
        if ctx.model.output == "probabilities":
            return Check(
                "logits",
                title,
                "warn",
                "The model outputs probabilities. Attacks work on their logarithm, but a softmax that "
                "saturates (probability exactly 0 or 1 in float32) flattens the loss; the ensemble's "
                "DLR-loss member is scale-invariant and is the one to trust.",
                {"declared": "probabilities"},
            )
        with torch.no_grad(), ctx.model.attack_mode():
            s = ctx.model.logits(xs)
        looks = bool(((s >= 0).all() & ((s.sum(dim=1) - 1).abs() < 1e-4).all()).item()) if s.numel() else False
        if looks:
            return Check(
                "logits",
                title,
                "warn",
                "The model declares logits but every row of scores is non-negative and sums to 1: there "
                "is probably a softmax at the end of the network, which can saturate and mask gradients. "
                "Remove it (attacks need the pre-softmax scores) or declare output='probabilities'.",
                {"declared": "logits", "rows_sum_to_one": True},
            )
        return Check("logits", title, "pass", "The scores are unnormalised logits.", {"declared": "logits"})

    def _gradients(self, ctx: AuditContext, xs: torch.Tensor, ys: torch.Tensor) -> Check:
        title = "Input gradients are finite and non-zero"
        if not ctx.model.white_box:
            return Check("gradients", title, "skipped", "The model is a black box: there are no gradients to check.")
        model = ctx.model
        with model.attack_mode(), torch.enable_grad():
            xg = xs.clone().requires_grad_(True)
            z = as_logits(model.logits(xg), model.output)
            (g_margin,) = torch.autograd.grad(margin_loss(z, ys).sum(), xg, allow_unused=True)
            xg2 = xs.clone().requires_grad_(True)
            z2 = as_logits(model.logits(xg2), model.output)
            (g_ce,) = torch.autograd.grad(
                torch.nn.functional.cross_entropy(z2, ys, reduction="sum"), xg2, allow_unused=True
            )
        if g_margin is None:
            return Check(
                "gradients",
                title,
                "fail",
                "The scores do not depend on the input through autograd: the "
                "model detaches its input, so every gradient attack is blind.",
                {"connected": False},
            )
        flat = g_margin.flatten(1)
        finite = bool(torch.isfinite(flat).all())
        zero = float((flat.abs().amax(dim=1) == 0).float().mean())
        ce_zero = float((g_ce.flatten(1).abs().amax(dim=1) == 0).float().mean()) if g_ce is not None else 1.0
        evidence = {
            "inputs": int(xs.shape[0]),
            "finite": finite,
            "zero_margin_gradient_fraction": zero,
            "zero_cross_entropy_gradient_fraction": ce_zero,
        }
        if not finite:
            return Check(
                "gradients",
                title,
                "fail",
                "Some input gradients are NaN or infinite: gradient attacks "
                "cannot be trusted on this model (a numerically unstable layer or a saturated softmax).",
                evidence,
            )
        if zero > 0.5:
            return Check(
                "gradients",
                title,
                "fail",
                f"{zero:.0%} of the inputs have an exactly zero gradient: the model is not differentiable "
                "where it matters (quantisation, thresholds, non-differentiable preprocessing). Gradient "
                "attacks will under-report the risk; trust the black-box probes.",
                evidence,
            )
        if zero > 0:
            return Check(
                "gradients", title, "warn", f"{zero:.0%} of the inputs have an exactly zero gradient.", evidence
            )
        return Check(
            "gradients",
            title,
            "pass",
            "Margin-loss gradients are finite and non-zero on every checked "
            f"input ({ce_zero:.0%} have a cross-entropy gradient that underflows to zero: confident "
            "predictions, which margin-based attacks handle).",
            evidence,
        )
