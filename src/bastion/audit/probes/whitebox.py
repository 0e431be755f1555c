"""White-box evasion: robust accuracy against eps for FGSM, PGD and the worst case over an
AutoAttack-style ensemble, with the convergence checks that make the numbers trustworthy.

Per eps, on the audited inputs: FGSM and PGD run on every input (their own curves, and the
iterative-vs-single-step check need that); APGD-CE then APGD-T (Croce & Hein 2020) run on the
inputs still robust after both. An input counts as robust only if every attack failed on it, so
``robust_accuracy[whitebox]@eps`` is the per-input worst case. Randomised models are attacked
through EOT (see the model probe's ``deterministic`` check). The checks are those of Carlini et al. 2019,
"On Evaluating Adversarial Robustness", section 5.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from ...attacks import APGD, APGDT, EOT, FGSM, PGD, Ensemble
from ...attacks.base import AttackResult
from ...models.base import Classifier
from ...models.wrapped import averages_randomness
from ..probe import AuditContext, Probe, eps_curve, eps_key, pick_examples, register_probe, risk_from_ratio
from ..result import Check, CheckStatus, Example, ProbeResult


def attack_model(ctx: AuditContext, eot_samples: int) -> tuple[Classifier, bool]:
    """The model white-box attacks use: the model itself, or an EOT wrapper when it is randomised."""
    model_probe = ctx.results.get("model")
    deterministic = model_probe is None or model_probe.metrics.get("deterministic", 1.0) == 1.0
    if deterministic or averages_randomness(ctx.model):
        return ctx.model, False  # (a smoothed classifier's scores already average over its noise)
    return EOT(ctx.model, n_samples=int(eot_samples), seed=ctx.seed_for("eot")), True


@register_probe
class WhiteBoxProbe(Probe, name="whitebox", title="White-box evasion", threat="evasion / white-box (gradients)"):
    """FGSM, PGD and the APGD ensemble at every eps of the audit: robust accuracy per attack and per-input worst case.

    Needs a white-box model and an audit in linf or l2. Metrics per eps: ``robust_accuracy[fgsm]@eps=E``,
    ``robust_accuracy[pgd]@eps=E`` and ``robust_accuracy[whitebox]@eps=E`` (the worst case).

    Checks:

    - ``iterative-beats-single-step``: PGD is at least as strong as FGSM at every eps (FGSM lower by more than
      ``tolerance`` warns, by more than 5 x ``tolerance`` fails);
    - ``monotone-in-eps``: worst-case robust accuracy does not rise by more than ``tolerance`` / 2 as eps grows
      (else fails);
    - ``unbounded-attack``: PGD with an eps of half the input range (every input can then reach the same
      mid-range point), on up to 200 inputs, drives accuracy to chance (else fails);
    - ``convergence``: PGD with ``convergence_factor`` times the iterations newly breaks less than ``tolerance``
      of the inputs, so robust accuracy changes by less than that (else warns);
    - ``restarts``: PGD with ``extra_restarts`` more random restarts does the same (else warns).

    The last two run the stronger PGD on the inputs the worst case left robust, at the eps where the worst case
    is nearest half the clean accuracy (where a weak evaluation would show most): they ask whether the reported
    number has converged, not whether PGD alone has.

    Risk: worst-case robust accuracy at the largest eps, relative to clean accuracy (< 50%: high, < 90%:
    medium, else low).

    Parameters:
        pgd_steps, pgd_restarts: PGD's iterations and random restarts.
        apgd_steps: the iterations of APGD-CE and APGD-T.
        apgd_t_targets: the target classes APGD-T tries (at most the number of classes - 1).
        ensemble: run the APGD ensemble on the inputs FGSM and PGD left robust.
        convergence_factor: the iteration multiple of the ``convergence`` check's PGD.
        extra_restarts: the restarts the ``restarts`` check's PGD adds.
        examples: PGD's successful examples shown, at the smallest eps at which it fooled an input.
        eot_samples: draws per expectation (EOT) when the model is randomised.
        batch_size: inputs each attack processes at once.
        tolerance: the checks' margin, a share of the inputs.
    """

    defaults: ClassVar[dict[str, Any]] = {
        "pgd_steps": 40,
        "pgd_restarts": 1,
        "apgd_steps": 100,
        "apgd_t_targets": 9,
        "ensemble": True,
        "convergence_factor": 2,
        "extra_restarts": 2,
        "examples": 4,
        "eot_samples": 10,
        "batch_size": 1000,
        "tolerance": 0.01,
    }

    needs_gradients = "the model is a black box (no gradients): see the black-box probe"
    needs_lp_norm = "white-box attacks here support linf and l2, not {norm}"

    def _common(self, ctx: AuditContext, name: str, eps: float) -> dict[str, Any]:
        return {
            "eps": eps,
            "norm": ctx.norm,
            "batch_size": self.params["batch_size"],
            "seed": ctx.seed_for(f"{self.name}:{name}:{eps_key(eps)}"),
        }

    def _at_eps(
        self, ctx: AuditContext, model: Classifier, eps: float, attacks_used: dict[str, str]
    ) -> tuple[AttackResult, AttackResult, Tensor, Tensor]:
        """FGSM and PGD on every audited input, then the APGD ensemble on those both left robust: the two
        results, the per-input worst case (robust) and which attack broke each input (0 none, 1 fgsm, 2 pgd,
        3 ensemble)."""
        p = self.params
        x, y = ctx.x, ctx.y
        fgsm = FGSM(**self._common(ctx, "fgsm", eps))
        pgd = PGD(steps=p["pgd_steps"], restarts=p["pgd_restarts"], **self._common(ctx, "pgd", eps))
        rf = ctx.run_attack(fgsm, model, x, y, probe=self.name)
        rp = ctx.run_attack(pgd, model, x, y, probe=self.name)
        robust = (rf.pred_adv == y) & (rp.pred_adv == y)
        broken_by = torch.zeros(x.shape[0], dtype=torch.int8)  # 0 none, 1 fgsm, 2 pgd, 3 ensemble
        broken_by[rf.pred_adv != y] = 1
        broken_by[(rf.pred_adv == y) & (rp.pred_adv != y)] = 2
        attacks_used.update(fgsm=repr(fgsm), pgd=repr(pgd))
        if p["ensemble"] and bool(robust.any()):
            members = [
                APGD(steps=p["apgd_steps"], loss="ce", **self._common(ctx, "apgd-ce", eps)),
                APGDT(
                    steps=p["apgd_steps"],
                    n_target_classes=min(p["apgd_t_targets"], ctx.model.n_classes - 1),
                    **self._common(ctx, "apgd-t", eps),
                ),
            ]
            if ctx.model.n_classes < 4:  # targeted DLR needs 4 classes: CE then margin-free DLR
                members = members[:1]
            ens = Ensemble(members=members, **self._common(ctx, "ensemble", eps))
            attacks_used["ensemble"] = repr(ens)
            idx = torch.nonzero(robust).flatten()
            re = ctx.run_attack(ens, model, x[idx], y[idx], probe=self.name)
            fell = re.pred_adv != y[idx]
            broken_by[idx[fell]] = 3
            robust[idx[fell]] = False
        return rf, rp, robust, broken_by

    def _gallery(self, ctx: AuditContext, pgd_results: dict[float, AttackResult], pred_clean: Tensor) -> list[Example]:
        """PGD's examples at the smallest eps at which it fooled something: the least visible perturbations."""
        shown = next(
            (e for e in ctx.eps if bool((pgd_results[e].success & pgd_results[e].clean_correct).any())),
            ctx.reference_eps,
        )
        rp = pgd_results[shown]
        return pick_examples(rp, ctx.x, pred_clean, attack="pgd", k=self.params["examples"])

    def run(self, ctx: AuditContext) -> ProbeResult:
        p = self.params
        model, eot = attack_model(ctx, p["eot_samples"])
        x, y = ctx.x, ctx.y
        n = x.shape[0]
        with torch.no_grad():
            pred_clean = ctx.model.predict(x)
        clean_acc = float((pred_clean == y).float().mean())
        metrics: dict[str, float | None] = {"clean_accuracy_audited": clean_acc}
        per_sample: dict[str, dict[str, list[Any]]] = {}
        curves: dict[str, list[float]] = {"FGSM": [], "PGD": [], "worst case": []}
        attacks_used: dict[str, str] = {}
        pgd_results: dict[float, AttackResult] = {}
        worst_masks: dict[float, Tensor] = {}
        total = len(ctx.eps) + 3
        for i, eps in enumerate(ctx.eps):
            ctx.report(self.name, i / total, f"eps={eps:g}")
            rf, rp, robust, broken_by = self._at_eps(ctx, model, eps, attacks_used)
            pgd_results[eps] = rp
            key = eps_key(eps)
            fa, pa, wa = (
                float((rf.pred_adv == y).float().mean()),
                float((rp.pred_adv == y).float().mean()),
                float(robust.float().mean()),
            )
            metrics[f"robust_accuracy[fgsm]@{key}"] = fa
            metrics[f"robust_accuracy[pgd]@{key}"] = pa
            metrics[f"robust_accuracy[whitebox]@{key}"] = wa
            curves["FGSM"].append(fa)
            curves["PGD"].append(pa)
            curves["worst case"].append(wa)
            worst_masks[eps] = robust
            per_sample[f"whitebox@{key}"] = {
                "robust": robust.tolist(),
                "broken_by": broken_by.tolist(),
                "pgd_norm": rp.norms.tolist(),
            }
        ctx.report(self.name, len(ctx.eps) / total, "validity checks")
        checks = [self._single_step(ctx, curves), self._monotone(ctx, curves)]
        checks.append(self._unbounded(ctx, model))
        ctx.report(self.name, (len(ctx.eps) + 1) / total, "convergence")
        checks += self._convergence(ctx, model, worst_masks, clean_acc)
        ref = ctx.reference_eps
        examples = self._gallery(ctx, pgd_results, pred_clean)
        worst_ref = curves["worst case"][-1]
        risk = risk_from_ratio(worst_ref, clean_acc)
        plots = [
            eps_curve(ctx, "robustness-curve", "Robust accuracy against eps", clean_acc, curves, "robust accuracy")
        ]
        ctx.report(self.name, 1.0, "done")
        return self.result(
            ctx,
            risk=risk,
            summary=(
                f"worst-case robust accuracy {worst_ref:.3f} at {ctx.norm} eps={ref:g} (clean {clean_acc:.3f})"
                + (", attacked through EOT (randomised model)" if eot else "")
            ),
            params={**self.params, "eps": ctx.eps, "norm": ctx.norm, "n": n, "eot": eot, "attacks": attacks_used},
            metrics=metrics,
            plots=plots,
            checks=checks,
            examples=examples,
            per_sample=per_sample,
        )

    # -- checks ------------------------------------------------------------------------------------
    def _single_step(self, ctx: AuditContext, curves: dict[str, list[float]]) -> Check:
        tol = self.params["tolerance"]
        gaps = [f - q for f, q in zip(curves["FGSM"], curves["PGD"])]  # > 0: PGD stronger
        worst = min(gaps)
        ev = {"eps": ctx.eps, "fgsm": curves["FGSM"], "pgd": curves["PGD"]}
        title = "Iterative attacks beat single-step ones"
        if worst >= -tol:
            return Check(
                "iterative-beats-single-step",
                title,
                "pass",
                "PGD leaves no higher robust accuracy than FGSM at any eps.",
                ev,
            )
        status: CheckStatus = "fail" if worst < -5 * tol else "warn"
        i = gaps.index(worst)
        return Check(
            "iterative-beats-single-step",
            title,
            status,
            f"At eps={ctx.eps[i]:g} FGSM (one step) leaves robust accuracy {curves['FGSM'][i]:.3f}, lower "
            f"than PGD's {curves['PGD'][i]:.3f}: the loss surface misleads iterative attacks, a classic sign "
            "of gradient masking (or a too-small PGD step).",
            ev,
        )

    def _monotone(self, ctx: AuditContext, curves: dict[str, list[float]]) -> Check:
        tol = self.params["tolerance"] / 2
        w = curves["worst case"]
        rises = [(ctx.eps[i + 1], w[i + 1] - w[i]) for i in range(len(w) - 1) if w[i + 1] - w[i] > tol]
        title = "Robust accuracy does not rise as eps grows"
        ev = {"eps": ctx.eps, "worst_case": w}
        if not rises:
            return Check(
                "monotone-in-eps", title, "pass", "Worst-case robust accuracy falls (or stays) as eps grows.", ev
            )
        e, d = rises[0]
        return Check(
            "monotone-in-eps",
            title,
            "fail",
            f"Robust accuracy rises by {d:.3f} at eps={e:g}: a larger budget can always reproduce a smaller "
            "one, so the attack is not finding the worst case (masking or a broken attack).",
            ev,
        )

    def _unbounded(self, ctx: AuditContext, model: Classifier) -> Check:
        lo, hi = ctx.model.bounds
        d = ctx.x[0].numel()
        big = 0.5 * (hi - lo) * (1.0 if ctx.norm == "linf" else math.sqrt(d))
        m = min(ctx.x.shape[0], 200)
        atk = PGD(steps=self.params["pgd_steps"], **self._common(ctx, "pgd-unbounded", big))
        r = ctx.run_attack(atk, model, ctx.x[:m], ctx.y[:m], probe=self.name)
        chance = 1.0 / ctx.model.n_classes
        ev = {"eps": big, "robust_accuracy": r.robust_accuracy, "chance": chance, "inputs": m}
        title = "An unbounded attack reaches chance accuracy"
        if r.robust_accuracy <= chance:
            return Check(
                "unbounded-attack",
                title,
                "pass",
                f"With eps={big:.3g} (half the input range: every input can reach the same point) PGD "
                f"leaves {r.robust_accuracy:.3f}, at most chance ({chance:.3f}).",
                ev,
            )
        return Check(
            "unbounded-attack",
            title,
            "fail",
            f"With eps={big:.3g} PGD still leaves robust accuracy {r.robust_accuracy:.3f} > chance "
            f"({chance:.3f}), though any input could be moved to the same point: gradients are masked or "
            "the attack is broken, so the other numbers over-state robustness.",
            ev,
        )

    def _convergence(
        self, ctx: AuditContext, model: Classifier, worst: dict[float, Tensor], clean_acc: float
    ) -> list[Check]:
        """Is the reported number converged? Stronger PGD (twice the steps; more restarts) on the inputs the
        worst case left robust, at the eps where it is nearest half the clean accuracy: the share of all
        inputs it newly breaks must stay under the tolerance."""
        p, tol = self.params, self.params["tolerance"]
        n = ctx.x.shape[0]
        eps = min(ctx.eps, key=lambda e: abs(float(worst[e].float().mean()) - clean_acc / 2))
        robust = worst[eps]
        base = float(robust.float().mean())
        idx = torch.nonzero(robust).flatten()
        longer = PGD(
            steps=p["pgd_steps"] * p["convergence_factor"],
            restarts=p["pgd_restarts"],
            **self._common(ctx, "pgd-longer", eps),
        )
        more = PGD(
            steps=p["pgd_steps"],
            restarts=p["pgd_restarts"] + p["extra_restarts"],
            **self._common(ctx, "pgd-restarts", eps),
        )
        out = []
        for i, (cid, title, atk, what) in enumerate(
            (
                (
                    "convergence",
                    f"Doubling the iterations changes robust accuracy by < {tol:.0%}",
                    longer,
                    f"PGD with {longer.steps} instead of {p['pgd_steps']} steps",
                ),
                (
                    "restarts",
                    f"More random restarts change robust accuracy by < {tol:.0%}",
                    more,
                    f"PGD with {more.restarts} instead of {p['pgd_restarts']} restart(s)",
                ),
            )
        ):
            ctx.report(self.name, (len(ctx.eps) + 1 + i) / (len(ctx.eps) + 3), cid)
            r = ctx.run_attack(atk, model, ctx.x[idx], ctx.y[idx], probe=self.name) if idx.numel() else None
            broken = int((r.pred_adv != ctx.y[idx]).sum()) if r is not None else 0
            other = (int(robust.sum()) - broken) / n
            delta = base - other
            ev = {
                "eps": eps,
                "base": base,
                "with_stronger_attack": other,
                "difference": delta,
                "newly_broken": broken,
                "inputs": n,
                "attack": repr(atk),
            }
            if delta < tol:
                out.append(
                    Check(
                        cid,
                        title,
                        "pass",
                        f"At eps={eps:g}, adding {what} to the worst case breaks {broken} more of {n} inputs "
                        f"({base:.3f} -> {other:.3f}).",
                        ev,
                    )
                )
            else:
                out.append(
                    Check(
                        cid,
                        title,
                        "warn",
                        f"At eps={eps:g}, adding {what} to the worst case breaks {broken} more of {n} inputs "
                        f"({base:.3f} -> {other:.3f}): the evaluation has not converged, so robust accuracy "
                        "is over-stated; use a stronger profile.",
                        ev,
                    )
                )
        return out
