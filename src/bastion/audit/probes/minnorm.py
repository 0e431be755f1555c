"""Minimum-norm perturbations: how far each input is from a wrong decision.

DeepFool (Moosavi-Dezfooli et al. 2016) in the audit's norm on every audited input it is given,
and Carlini-Wagner L2 (2017) on a smaller subset: the distribution of the smallest perturbation that
fools the model, per input, as a histogram and as the curve "fraction of inputs still correct
against perturbation size" (robust accuracy as a function of eps, read off the minimal norms — an
upper bound, since a minimal-norm attack only finds a perturbation, not the smallest one).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ...attacks import CarliniWagnerL2, DeepFool
from ...attacks.base import AttackResult
from ...models.base import Classifier
from ..probe import AuditContext, Probe, norm_histogram, pick_examples, register_probe
from ..result import Plot, ProbeResult, Series


def _curve(norms: torch.Tensor, ok: torch.Tensor, correct: torch.Tensor, grid: list[float]) -> list[float]:
    """Fraction of all inputs still correct at each size: clean-correct and (not fooled or norm > size)."""
    n = norms.numel()
    return [float((correct & (~ok | (norms > s))).sum()) / n for s in grid]


@register_probe
class MinimumNormProbe(
    Probe, name="minimum-norm", title="Minimum-norm perturbations", threat="evasion / white-box (minimal perturbation)"
):
    """DeepFool and Carlini-Wagner L2: the median smallest fooling perturbation and the accuracy curve it implies.

    Needs a white-box model and an audit in linf or l2; a randomised model is attacked through EOT (10 draws).
    Metrics: ``median_min_perturbation[deepfool]`` / ``[cw]`` (over the clean-correct inputs fooled) and
    ``success_rate[deepfool]`` / ``[cw]``. No checks.

    Risk: the median DeepFool norm against the audit's largest eps: at most eps high, at most 2 eps medium, else
    low; ``n/a`` when DeepFool fooled nothing.

    Parameters:
        n_deepfool: audited inputs DeepFool attacks (the first ``n_deepfool``).
        deepfool_steps: DeepFool's most iterations.
        n_cw: audited inputs C&W-L2 attacks (the first ``n_cw``; 0: it does not run).
        cw_search_steps: C&W's binary-search steps over its constant.
        cw_iterations: C&W's optimisation iterations per search step.
        examples: DeepFool's successful examples shown in the gallery.
        batch_size: inputs either attack processes at once.
    """

    defaults: ClassVar[dict[str, Any]] = {
        "n_deepfool": 1000,
        "deepfool_steps": 50,
        "n_cw": 100,
        "cw_search_steps": 5,
        "cw_iterations": 100,
        "examples": 2,
        "batch_size": 500,
    }

    needs_gradients = (
        "the model is a black box (no gradients): the black-box probe measures HopSkipJump's minimal norms"
    )
    needs_lp_norm = "DeepFool supports linf and l2, not {norm}"

    def _runs(
        self, ctx: AuditContext, model: Classifier, m: int
    ) -> tuple[dict[str, AttackResult], dict[str, str], int]:
        """DeepFool on the first ``m`` inputs, C&W-L2 on the first ``n_cw``: the results and the attacks' reprs."""
        p = self.params
        ctx.report(self.name, 0.0, "DeepFool")
        df = DeepFool(
            norm=ctx.norm,
            steps=p["deepfool_steps"],
            batch_size=p["batch_size"],
            seed=ctx.seed_for("deepfool"),
        )
        runs: dict[str, AttackResult] = {
            f"deepfool-{ctx.norm}": ctx.run_attack(df, model, ctx.x[:m], ctx.y[:m], probe=self.name)
        }
        attacks = {f"deepfool-{ctx.norm}": repr(df)}
        k = min(p["n_cw"], ctx.x.shape[0])
        if k > 0:
            ctx.report(self.name, 0.5, "Carlini-Wagner L2")
            cw = CarliniWagnerL2(
                binary_search_steps=p["cw_search_steps"],
                max_iterations=p["cw_iterations"],
                batch_size=p["batch_size"],
                seed=ctx.seed_for("cw"),
            )
            runs["cw-l2"] = ctx.run_attack(cw, model, ctx.x[:k], ctx.y[:k], probe=self.name)
            attacks["cw-l2"] = repr(cw)
        return runs, attacks, k

    @staticmethod
    def _measure(
        ctx: AuditContext, runs: dict[str, AttackResult], rd: AttackResult
    ) -> tuple[dict[str, float | None], list[Plot], dict[str, dict[str, list[Any]]]]:
        """Median smallest norms and success rates, the norm histograms and DeepFool's accuracy curve."""
        metrics: dict[str, float | None] = {}
        plots, per_sample = [], {}
        hist: dict[str, list[Series]] = {"l2": [], "linf": []}
        for name, r in runs.items():
            ok = r.success & r.clean_correct
            vals = r.norms[ok]
            short = name.split("-")[0]
            metrics[f"median_min_perturbation[{short}]"] = float(vals.median()) if vals.numel() else None
            metrics[f"success_rate[{short}]"] = r.success_rate
            hist[r.threat.norm].append(Series(name, vals.tolist()))
            per_sample[name] = {"success": (r.success & r.clean_correct).tolist(), "norm": r.norms.tolist()}
        for nm, series in hist.items():
            if series:
                plots.append(
                    norm_histogram(f"min-norm-hist-{nm}", "Smallest fooling perturbation per input", nm, series)
                )
        ok = rd.success & rd.clean_correct
        top = float(rd.norms[ok].max()) if bool(ok.any()) else ctx.reference_eps
        grid = [top * i / 40 for i in range(41)]
        plots.append(
            Plot(
                id="min-norm-curve",
                title=f"Accuracy against perturbation size, from DeepFool ({ctx.norm})",
                kind="line",
                x_label=f"eps ({ctx.norm})",
                y_label="accuracy",
                series=[Series("DeepFool", grid, _curve(rd.norms, rd.success, rd.clean_correct, grid))],
            )
        )
        return metrics, plots, per_sample

    def run(self, ctx: AuditContext) -> ProbeResult:
        p = self.params
        from .whitebox import attack_model

        model, eot = attack_model(ctx, 10)
        m = min(p["n_deepfool"], ctx.x.shape[0])
        x = ctx.x[:m]
        runs, attacks, k = self._runs(ctx, model, m)
        rd = runs[f"deepfool-{ctx.norm}"]
        metrics, plots, per_sample = self._measure(ctx, runs, rd)
        med = metrics["median_min_perturbation[deepfool]"]
        ref = ctx.reference_eps
        risk = "n/a" if med is None else "high" if med <= ref else "medium" if med <= 2 * ref else "low"
        pred_clean = torch.where(rd.clean_correct, rd.y, -1)
        examples = pick_examples(rd, x, pred_clean, attack="deepfool", k=p["examples"])
        cw_med = metrics.get("median_min_perturbation[cw]")
        summary = (
            f"median smallest {ctx.norm} perturbation {med:.3g} (DeepFool, {m} inputs)"
            if med is not None
            else "DeepFool found no adversarial example"
        )
        if cw_med is not None:
            summary += f"; C&W-L2 median {cw_med:.3g} on {k}"
        ctx.report(self.name, 1.0, "done")
        return self.result(
            ctx,
            risk=risk,
            summary=summary,
            params={**p, "norm": ctx.norm, "attacks": attacks, "eot": eot},
            metrics=metrics,
            plots=plots,
            examples=examples,
            per_sample=per_sample,
        )
