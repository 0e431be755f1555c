"""Black-box evasion: what an attacker with query access only can do, with query counts.

- Square attack (Andriushchenko et al. 2020; scores only) at every eps of the audit, on the first
  ``n_square`` audited inputs, at most ``square_queries`` queries each: robust accuracy and the
  query-success curve (fraction of inputs fooled against queries spent).
- HopSkipJump (Chen et al. 2020; labels only) minimum-norm in the audit's norm on ``n_hsj`` inputs.

No black-box attack should beat the white-box ones (Carlini et al. 2019; Athalye et al. 2018): an input that
Square fools at some eps while every white-box attack failed on it at that eps means the gradients mislead.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ...attacks import HopSkipJump, Square
from ...attacks.base import AttackResult
from ..probe import (
    AuditContext,
    Probe,
    eps_curve,
    eps_key,
    norm_histogram,
    pick_examples,
    register_probe,
    risk_from_ratio,
)
from ..result import Check, Plot, ProbeResult, Series


@register_probe
class BlackBoxProbe(
    Probe, name="blackbox", title="Black-box evasion (queries only)", threat="evasion / black-box (scores, labels)"
):
    """Square at every eps of the audit and HopSkipJump's minimal perturbations, with their query counts.

    Needs an audit in linf or l2. Metrics per eps: ``robust_accuracy[square]@eps=E`` and the mean and median
    queries Square spent on the inputs it fooled; for HopSkipJump ``median_perturbation[hopskipjump]``,
    ``success_rate[hopskipjump]`` and ``mean_queries[hopskipjump]``.

    Check ``gradient-masking`` (against the white-box probe's per-input results at the same eps; skipped without
    them): fails when Square's robust accuracy is more than ``tolerance`` below the white-box worst case at some
    eps, warns when more than ``tolerance`` of the inputs fell to Square only, passes otherwise.

    Risk: Square's robust accuracy at the largest eps relative to the clean accuracy of the same inputs (< 50%
    high, < 90% medium, else low).

    Parameters:
        n_square: audited inputs Square attacks (the first ``n_square``).
        square_queries: Square's query budget per input.
        n_hsj: audited inputs HopSkipJump attacks (0: it does not run).
        hsj_queries: HopSkipJump's query budget per input.
        examples: Square's successful examples at the largest eps shown in the gallery.
        tolerance: the gradient-masking check's margin (a share of the inputs).
        batch_size: inputs Square attacks at once.
    """

    defaults: ClassVar[dict[str, Any]] = {
        "n_square": 500,
        "square_queries": 1000,
        "n_hsj": 50,
        "hsj_queries": 2500,
        "examples": 2,
        "tolerance": 0.01,
        "batch_size": 1000,
    }

    needs_lp_norm = "Square and HopSkipJump support linf and l2, not {norm}"

    def _square(
        self,
        ctx: AuditContext,
        eps: float,
        x: torch.Tensor,
        y: torch.Tensor,
        clean_correct: torch.Tensor,
        metrics: dict[str, float | None],
        per_sample: dict[str, dict[str, list[Any]]],
        attacks: dict[str, str],
    ) -> tuple[AttackResult, Series]:
        """Square at ``eps``: its result (metrics, per-input results and repr recorded) and its queries curve."""
        p = self.params
        sq = ctx.attack_at(Square, eps, max_queries=p["square_queries"], batch_size=p["batch_size"])
        r = ctx.run_attack(sq, ctx.model, x, y, probe=self.name)
        attacks[f"square@{eps_key(eps)}"] = repr(sq)
        key = eps_key(eps)
        q = r.extra["queries"]
        fooled = r.success & r.clean_correct
        metrics[f"robust_accuracy[square]@{key}"] = r.robust_accuracy
        metrics[f"mean_queries[square]@{key}"] = float(q[fooled].float().mean()) if bool(fooled.any()) else None
        metrics[f"median_queries[square]@{key}"] = float(q[fooled].float().median()) if bool(fooled.any()) else None
        per_sample[f"square@{key}"] = {"robust": (r.pred_adv == y).tolist(), "queries": q.tolist()}
        budget = p["square_queries"]
        grid = sorted({1, *[max(1, round(budget * j / 50)) for j in range(1, 51)]})
        n_ok = max(int(clean_correct.sum()), 1)
        return r, Series(
            f"eps={eps:g}", [float(g) for g in grid], [float((fooled & (q <= g)).sum()) / n_ok for g in grid]
        )

    def _hopskipjump(
        self,
        ctx: AuditContext,
        fraction: float,
        metrics: dict[str, float | None],
        per_sample: dict[str, dict[str, list[Any]]],
        attacks: dict[str, str],
        plots: list[Plot],
    ) -> str:
        """HopSkipJump (labels only) on the first ``n_hsj`` inputs, recorded; returns its part of the summary."""
        p = self.params
        k = min(p["n_hsj"], ctx.x.shape[0])
        if k <= 0:
            return ""
        ctx.report(self.name, fraction, "HopSkipJump")
        hsj = HopSkipJump(norm=ctx.norm, max_queries=p["hsj_queries"], seed=ctx.seed_for("hopskipjump"))
        rh = ctx.run_attack(hsj, ctx.model, ctx.x[:k], ctx.y[:k], probe=self.name)
        attacks["hopskipjump"] = repr(hsj)
        ok = rh.success & rh.clean_correct
        med = float(rh.norms[ok].median()) if bool(ok.any()) else None
        metrics["median_perturbation[hopskipjump]"] = med
        metrics["success_rate[hopskipjump]"] = rh.success_rate
        metrics["mean_queries[hopskipjump]"] = float(rh.extra["queries"].float().mean())
        per_sample["hopskipjump"] = {
            "success": ok.tolist(),
            "norm": rh.norms.tolist(),
            "queries": rh.extra["queries"].tolist(),
        }
        hist = [Series("HopSkipJump", rh.norms[ok].tolist())]
        plots.append(norm_histogram("hsj-hist", "HopSkipJump (labels only): perturbation per input", ctx.norm, hist))
        if med is None:
            return ""
        return f"; HopSkipJump (labels only) median {ctx.norm} {med:.3g} with {p['hsj_queries']} queries"

    def run(self, ctx: AuditContext) -> ProbeResult:
        p = self.params
        m = min(p["n_square"], ctx.x.shape[0])
        x, y = ctx.x[:m], ctx.y[:m]
        model = ctx.model
        metrics: dict[str, float | None] = {}
        per_sample: dict[str, dict[str, list[Any]]] = {}
        curve, qcurves = [], []
        attacks: dict[str, str] = {}
        results = {}
        steps = len(ctx.eps) + (1 if p["n_hsj"] else 0)
        with torch.no_grad():
            clean_correct = model.predict(x) == y
        clean_acc = float(clean_correct.float().mean())
        for i, eps in enumerate(ctx.eps):
            ctx.report(self.name, i / steps, f"Square eps={eps:g}")
            r, qcurve = self._square(ctx, eps, x, y, clean_correct, metrics, per_sample, attacks)
            results[eps] = r
            curve.append(r.robust_accuracy)
            qcurves.append(qcurve)
        checks = [self._masking(ctx, results, m)]
        plots = [
            eps_curve(
                ctx,
                "square-curve",
                "Square: robust accuracy against eps",
                clean_acc,
                {"Square": curve},
                "robust accuracy",
            ),
            Plot(
                id="square-queries",
                title="Square: inputs fooled against queries spent",
                kind="line",
                x_label="queries per input",
                y_label="fraction of correct inputs fooled",
                series=qcurves,
                x_log=True,
            ),
        ]
        hsj_summary = self._hopskipjump(ctx, len(ctx.eps) / steps, metrics, per_sample, attacks, plots)
        ref = ctx.reference_eps
        rr = results[ref]
        with torch.no_grad():
            pred_clean = model.predict(x)
        examples = pick_examples(rr, x, pred_clean, attack="square", k=p["examples"])
        mq = metrics.get(f"mean_queries[square]@{eps_key(ref)}")
        ctx.report(self.name, 1.0, "done")
        return self.result(
            ctx,
            risk=risk_from_ratio(rr.robust_accuracy, clean_acc),
            summary=(
                f"Square leaves robust accuracy {rr.robust_accuracy:.3f} at {ctx.norm} eps={ref:g} with at most "
                f"{p['square_queries']} queries" + (f" (mean {mq:.0f} per fooled input)" if mq else "") + hsj_summary
            ),
            params={**p, "eps": ctx.eps, "norm": ctx.norm, "attacks": attacks},
            metrics=metrics,
            plots=plots,
            checks=checks,
            examples=examples,
            per_sample=per_sample,
        )

    def _masking(self, ctx: AuditContext, results: dict, m: int) -> Check:
        title = "No black-box attack beats the white-box ones (gradient masking)"
        wb = ctx.results.get("whitebox")
        if wb is None or wb.status != "ok":
            return Check(
                "gradient-masking",
                title,
                "skipped",
                "No white-box results to compare with (black-box model, or the white-box probe did not run).",
            )
        tol = self.params["tolerance"]
        rows: list[dict[str, Any]] = []
        worst: tuple[float, float] | None = None
        for eps, r in results.items():
            w = wb.per_sample.get(f"whitebox@{eps_key(eps)}")
            if w is None:
                continue
            w_robust = torch.tensor(w["robust"][:m])
            b_robust = r.pred_adv == ctx.y[:m]
            only_bb = int((w_robust & ~b_robust).sum())
            gap = float(w_robust.float().mean()) - float(b_robust.float().mean())
            rows.append(
                {
                    "eps": eps,
                    "whitebox": float(w_robust.float().mean()),
                    "square": float(b_robust.float().mean()),
                    "only_black_box": only_bb,
                }
            )
            if worst is None or gap > worst[1]:
                worst = (eps, gap)
        if not rows or worst is None:
            return Check("gradient-masking", title, "skipped", "The white-box probe ran at other eps values.")
        ev = {"inputs": m, "by_eps": rows}
        eps, gap = worst
        n_only = max(row["only_black_box"] for row in rows)
        if gap > tol:
            return Check(
                "gradient-masking",
                title,
                "fail",
                f"At eps={eps:g} Square, which never sees a gradient, leaves robust accuracy {gap:.3f} lower "
                f"than the best white-box attack on the same {m} inputs: the gradients are masked "
                "(obfuscated), "
                "and the white-box numbers over-state robustness. Trust the black-box numbers.",
                ev,
            )
        if n_only > tol * m:
            return Check(
                "gradient-masking",
                title,
                "warn",
                f"{n_only} of {m} inputs were fooled by Square but by no white-box attack at the same eps "
                f"(more than {tol:.0%}): the gradient attacks miss part of the vulnerability.",
                ev,
            )
        return Check(
            "gradient-masking",
            title,
            "pass",
            "Square (no gradients) does no better than the white-box attacks on the same inputs"
            + (f"; at most {n_only} input(s) fell only to Square, within the {tol:.0%} tolerance." if n_only else "."),
            ev,
        )
