"""Membership inference: how often can an attacker tell the model's training records from unseen ones?

The audited data's training split is taken as the members and its test split as the non-members — an
assumption only the model's owner can confirm, stated in the report. Attacks without reference models (``loss``,
Yeom et al. 2018; ``modified-entropy``, Song & Mittal 2021) need only the model's scores; ``lira`` (Carlini et
al. 2022) and ``rmia`` (Zarifzadeh et al. 2024) train ``references`` reference models with the model's recipe (its
registered architecture and the zoo's training settings) on random halves of train + test, cached under
``$BASTION_HOME/references`` (a model whose architecture is unknown gets only the reference-free attacks, and the
report says so). Every attack reports ROC AUC, balanced accuracy and the true-positive rate at 0.1 % and 1 % false
positives — the low-FPR regime, where an attacker is right about some records with near certainty, is the
breach that the AUC hides.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ...attacks.inference.membership import (
    MEMBERSHIP_ATTACKS,
    Recipe,
    get_membership_attack,
    membership_audit,
    run_membership_attacks,
)
from ...errors import UsageError
from ...models.architectures import ARCHITECTURES
from ...models.torch import TorchClassifier
from ..probe import AuditContext, Probe, register_probe
from ..result import Check, Plot, ProbeResult, Series

_LOW_FPR = 0.001


@register_probe
class MembershipProbe(Probe, name="membership", title="Membership inference", threat="privacy / membership inference"):
    """The membership attacks of ``attacks`` on the training split (members) against the test split.

    Check ``references-match-target``: warns when the reference models' accuracy on their non-members is more than
    ``max_reference_gap`` from the target's on its non-members (the likelihood ratio assumes they were trained the
    same way; a mismatch makes LiRA and RMIA miscalibrated), passes otherwise; skipped without reference models.

    Risk: the best attack's TPR at 0.1 % FPR >= 10x what a random guess gets there is high, >= 3x medium, else
    low; a random guess gets the FPR, or 1 / (N + 1) with N non-members when 0.1 % is below 1 / N (then no
    non-member may be flagged).

    Parameters:
        attacks: the membership attacks run, by name (``bastion.attacks.inference.membership.MEMBERSHIP_ATTACKS``).
        references: the reference models trained when an attack needs them (``lira``, ``rmia``).
        arch: the registered architecture of the reference models (``None``: the audited model's).
        max_reference_gap: the accuracy gap on non-members the check allows.
    """

    defaults: ClassVar[dict[str, Any]] = {
        "attacks": ["loss", "modified-entropy", "lira", "rmia"],
        "references": 8,
        "arch": None,
        "max_reference_gap": 0.05,
    }

    def check_params(self, p: dict[str, Any]) -> None:
        for name in p["attacks"]:
            MEMBERSHIP_ATTACKS.get(name)  # an unknown name fails before any probe runs

    def skip_reason(self, ctx: AuditContext) -> str | None:
        if ctx.data.x_train.shape[0] == 0 or ctx.data.x_test.shape[0] == 0:
            return "membership needs a training split (members) and a test split (non-members)"
        return None

    def _recipe(self, ctx: AuditContext) -> Recipe | None:
        arch = self.params["arch"] or (ctx.model.arch if isinstance(ctx.model, TorchClassifier) else None)
        if arch is None or arch not in ARCHITECTURES:
            return None
        spec = ARCHITECTURES.get(arch)
        return Recipe(arch=arch) if tuple(ctx.data.input_shape) == spec.input_shape else None

    def run(self, ctx: AuditContext) -> ProbeResult:
        p = self.params
        recipe = self._recipe(ctx)
        attacks = [get_membership_attack(n) for n in p["attacks"]]
        notes = []
        if recipe is None:
            dropped = [a.name for a in attacks if a.needs_references]
            attacks = [a for a in attacks if not a.needs_references]
            if dropped:
                notes.append(
                    f"{', '.join(dropped)} skipped: the model's training recipe (a registered architecture) is unknown"
                )
        k = p["references"] if any(a.needs_references for a in attacks) else 0
        if not attacks:
            raise UsageError("no membership attack can run on this model: give reference-free attacks such as 'loss'")

        def progress(done: int, total: int) -> None:
            ctx.report(self.name, 0.9 * done / total, f"reference model {done}/{total}")

        setup = membership_audit(
            ctx.model,
            ctx.data,
            recipe=recipe,
            references=k,
            seed=ctx.seed_for(self.name),
            progress=progress,
            executor=ctx.executor,  # one task per reference model
        )
        results = run_membership_attacks(setup, attacks)
        ctx.report(self.name, 1.0, "done")
        return self._result(ctx, setup, results, notes)

    def _result(self, ctx: AuditContext, setup: Any, results: dict[str, Any], notes: list[str]) -> ProbeResult:
        metrics: dict[str, float | None] = {
            "membership_train_accuracy": setup.train_accuracy,
            "membership_test_accuracy": setup.test_accuracy,
        }
        for name, r in results.items():
            metrics[f"membership_auc[{name}]"] = r["auc"]
            metrics[f"membership_balanced_accuracy[{name}]"] = r["balanced_accuracy"]
            for f, v in r["tpr_at_fpr"].items():
                metrics[f"membership_tpr[{name}]@fpr={f}"] = v
        best_name, best = max(((n, r["tpr_at_fpr"][f"{_LOW_FPR:g}"]) for n, r in results.items()), key=lambda t: t[1])
        metrics["max_membership_tpr@fpr=0.001"] = best
        n_out = int((~setup.is_member).sum())
        chance = max(_LOW_FPR, 1.0 / (n_out + 1))  # below 1/N no non-member may be flagged: chance is then 1/(N+1)
        ratio = best / chance
        risk = "high" if ratio >= 10 else "medium" if ratio >= 3 else "low"
        summary = (
            f"{best_name} identifies {best:.2%} of the members at 0.1% false positives ({ratio:.0f}x a random "
            f"guess's {chance:.2%} with {n_out} non-members); "
            f"AUC {results[best_name]['auc']:.3f}; accuracy {setup.train_accuracy:.3f} on members vs "
            f"{setup.test_accuracy:.3f} on non-members"
        )
        roc = [Series(n, r["roc"]["fpr"], r["roc"]["tpr"]) for n, r in results.items()]
        roc.append(Series("chance", [1e-4, 1.0], [1e-4, 1.0]))
        return self.result(
            ctx,
            risk=risk,
            summary=summary,
            params={**self.params, "references": setup.references.k if setup.references is not None else 0},
            metrics=metrics,
            plots=[
                Plot(
                    "membership-roc",
                    "Membership ROC (log FPR)",
                    "line",
                    "false-positive rate",
                    "true-positive rate",
                    roc,
                    x_log=True,
                )
            ],
            checks=[self._references_match(setup)],
            artifacts={
                "assumptions": setup.assumptions + notes,
                "most_exposed": {n: r["most_exposed"] for n, r in results.items()},
            },
        )

    def _references_match(self, setup: Any) -> Check:
        title = "Reference models behave like the target"
        refs = setup.references
        if refs is None:
            return Check("references-match-target", title, "skipped", "No reference model was trained.")
        y = refs.labels
        correct = refs.logits.argmax(dim=2) == y.unsqueeze(0)  # (k, N)
        ref_acc = float(correct[~refs.keep].double().mean())
        gap = abs(ref_acc - setup.test_accuracy)
        limit = self.params["max_reference_gap"]
        ev = {"reference_nonmember_accuracy": ref_acc, "target_nonmember_accuracy": setup.test_accuracy, "limit": limit}
        if gap > limit:
            return Check(
                "references-match-target",
                title,
                "warn",
                f"The reference models reach {ref_acc:.3f} on their non-members, the target {setup.test_accuracy:.3f}: they were not trained like the target, so LiRA and RMIA are miscalibrated (give the probe the model's arch).",
                ev,
            )
        return Check(
            "references-match-target",
            title,
            "pass",
            f"Reference models and target generalise alike ({ref_acc:.3f} vs {setup.test_accuracy:.3f} on non-members).",
            ev,
        )
