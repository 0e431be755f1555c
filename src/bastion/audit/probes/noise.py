"""Random-noise baseline: random perturbations of the same size and query budget as the attacks.

:class:`~bastion.attacks.RandomNoise` at every eps of the audit: the floor that any attack must beat.
Its robust accuracy is the risk from accidental corruption at that size; an attack that does no
better than noise is broken.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ...attacks import RandomNoise
from ..probe import AuditContext, Probe, eps_curve, eps_key, register_probe, risk_from_ratio
from ..result import Check, ProbeResult


@register_probe
class NoiseProbe(Probe, name="noise", title="Random-noise baseline", threat="baseline (no attacker)"):
    """Robust accuracy against random perturbations at every eps of the audit (``robust_accuracy[noise]@eps=E``).

    Needs an audit in linf or l2.

    Check ``attacks-beat-noise``, read against the white-box worst case or, when the white-box probe has no
    result, Square: fails when at some eps the attack leaves more than ``tolerance`` above noise's robust
    accuracy, passes otherwise; skipped with neither result.

    Risk: noise robust accuracy at the largest eps relative to clean (< 50% high, < 90% medium, else low).

    Parameters:
        n: audited inputs perturbed (the first ``n``).
        queries: random draws per input at most (the first that fools the model is kept).
        tolerance: how much more robust accuracy than noise the attacks may leave.
        batch_size: inputs perturbed at once.
    """

    defaults: ClassVar[dict[str, Any]] = {"n": 500, "queries": 100, "tolerance": 0.01, "batch_size": 1000}

    needs_lp_norm = "the noise baseline supports linf and l2, not {norm}"

    def run(self, ctx: AuditContext) -> ProbeResult:
        p = self.params
        m = min(p["n"], ctx.x.shape[0])
        x, y = ctx.x[:m], ctx.y[:m]
        metrics: dict[str, float | None] = {}
        per_sample: dict[str, dict[str, list[Any]]] = {}
        curve = []
        with torch.no_grad():
            clean_acc = float((ctx.model.predict(x) == y).float().mean())
        for i, eps in enumerate(ctx.eps):
            ctx.report(self.name, i / len(ctx.eps), f"eps={eps:g}")
            atk = ctx.attack_at(RandomNoise, eps, max_queries=p["queries"], batch_size=p["batch_size"])
            r = ctx.run_attack(atk, ctx.model, x, y, probe=self.name)
            metrics[f"robust_accuracy[noise]@{eps_key(eps)}"] = r.robust_accuracy
            per_sample[f"noise@{eps_key(eps)}"] = {"robust": (r.pred_adv == y).tolist()}
            curve.append(r.robust_accuracy)
        ref = ctx.reference_eps
        ctx.report(self.name, 1.0, "done")
        return self.result(
            ctx,
            risk=risk_from_ratio(curve[-1], clean_acc),
            summary=f"{p['queries']} random {ctx.norm} perturbations of size eps={ref:g} leave accuracy "
            f"{curve[-1]:.3f} (clean {clean_acc:.3f})",
            params={**p, "eps": ctx.eps, "norm": ctx.norm},
            metrics=metrics,
            per_sample=per_sample,
            checks=[self._beaten(ctx, curve, m)],
            plots=[
                eps_curve(
                    ctx,
                    "noise-curve",
                    "Random noise: accuracy against eps",
                    clean_acc,
                    {"random noise": curve},
                    "accuracy",
                )
            ],
        )

    def _beaten(self, ctx: AuditContext, noise: list[float], m: int) -> Check:
        title = "Attacks beat random noise of the same size"
        tol = self.params["tolerance"]
        for name, key in (("whitebox", "robust_accuracy[whitebox]@"), ("blackbox", "robust_accuracy[square]@")):
            res = ctx.results.get(name)
            if res is None or res.status != "ok":
                continue
            bad = []
            for eps, nz in zip(ctx.eps, noise):
                att = res.metrics.get(key + eps_key(eps))
                if att is not None and att > nz + tol:
                    bad.append({"eps": eps, "attack": att, "noise": nz})
            ev = {"compared_with": name, "noise": dict(zip(map(str, ctx.eps), noise)), "worse_than_noise": bad}
            if bad:
                b = bad[0]
                return Check(
                    "attacks-beat-noise",
                    title,
                    "fail",
                    f"At eps={b['eps']:g} the {name} attacks leave robust accuracy {b['attack']:.3f}, above "
                    f"random noise's {b['noise']:.3f}: the attacks are broken or blinded.",
                    ev,
                )
            return Check(
                "attacks-beat-noise",
                title,
                "pass",
                f"At every eps the {name} attacks leave no more accuracy than random noise.",
                ev,
            )
        return Check("attacks-beat-noise", title, "skipped", "No attack results to compare with.")
