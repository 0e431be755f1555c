"""Model inversion and attribute inference: what the model reveals about what its training data look like.

- **Images** (white-box models): MI-FACE (Fredrikson et al. 2015, :class:`~bastion.attacks.inference.MIFace`)
  reconstructs one input per class from the model alone. An *independent* evaluator — an RBF support-vector
  machine trained on the test split, which the model did not see (the audit's assumption) — tries to recognise
  each reconstruction's class; the gallery shows each reconstruction next to its nearest training image.
- **Tabular data**: attribute inference (Fredrikson et al. 2014, :class:`~bastion.attacks.inference.
  AttributeInference`) for each sensitive feature asked for (default: every feature): the attacker knows a
  training record but one feature, and its label; reported as the advantage over a baseline that guesses the
  feature from the others (half the test split is the attacker's auxiliary data, the other half the unseen
  records the same advantage is measured on), with a 95 % interval.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ...attacks.inference.attribute import AttributeInference
from ...attacks.inference.inversion import MIFace, nearest_distances, recognition_rate
from ..probe import AuditContext, Probe, register_probe
from ..result import Example, Plot, ProbeResult, Series


@register_probe
class InversionProbe(
    Probe, name="inversion", title="Model inversion and attribute inference", threat="privacy / inversion"
):
    """MI-FACE on image models, attribute inference on tabular ones.

    Applies to images with a white-box model and to tabular records, with at least 20 records in the test split.
    Metrics: images — ``inversion_recognition_rate`` and ``inversion_nearest_distance[C]`` per class; tabular —
    per feature ``attribute_advantage[F]``, ``attribute_advantage_ci_low[F]`` (on training records) and
    ``attribute_advantage_unseen[F]``. No checks.

    Risk: images — the evaluator recognises >= 80 % of the reconstructions high, >= 50 % medium, else low;
    tabular — on the feature whose interval starts highest, an advantage whose interval lies above 5 points (on
    training records) high, above 0 medium, else low.

    Parameters:
        steps: MI-FACE's most iterations per class.
        step_size: MI-FACE's gradient step.
        features: the tabular features attacked, by index or name (``None``: every feature).
        n_bins: quantile bins a continuous feature is discretised into for attribute inference.
    """

    defaults: ClassVar[dict[str, Any]] = {"steps": 1000, "step_size": 0.3, "features": None, "n_bins": 4}

    def skip_reason(self, ctx: AuditContext) -> str | None:
        if ctx.data.x_test.shape[0] < 20:
            return "the independent evaluator and the attacker's auxiliary data come from the test split: it has too few records"
        if ctx.kind == "image" and not ctx.model.white_box:
            return "the model is a black box: MI-FACE here reconstructs with gradients"
        if ctx.kind not in ("image", "tabular"):
            return "inversion covers images (MI-FACE) and tabular records (attribute inference)"
        return None

    def run(self, ctx: AuditContext) -> ProbeResult:
        return self._images(ctx) if ctx.kind == "image" else self._tabular(ctx)

    def _images(self, ctx: AuditContext) -> ProbeResult:
        from sklearn.svm import SVC

        d = ctx.data
        ctx.report(self.name, 0.0, "evaluator")
        svm = SVC(gamma="scale").fit(d.x_test.flatten(1).numpy(), d.y_test.numpy())

        def evaluator(x: torch.Tensor) -> torch.Tensor:
            return torch.as_tensor(svm.predict(x.flatten(1).numpy()))

        ctx.report(self.name, 0.1, "reconstructing")
        result = MIFace(steps=self.params["steps"], step_size=self.params["step_size"]).invert(ctx.model)
        rate, labels = recognition_rate(evaluator, result)
        dist = nearest_distances(result, d.x_train, d.y_train)
        ctx.report(self.name, 1.0, "done")
        risk = "high" if rate >= 0.8 else "medium" if rate >= 0.5 else "low"
        metrics: dict[str, float | None] = {"inversion_recognition_rate": rate}
        metrics.update({f"inversion_nearest_distance[{c}]": v for c, v in zip(result.classes, dist)})
        examples = []
        for img, c, lab, conf in zip(result.images, result.classes, labels, result.confidence):
            pool = d.x_train[d.y_train == c]
            near = pool[(pool.flatten(1) - img.flatten()).norm(dim=1).argmin()] if pool.numel() else img
            examples.append(
                Example(
                    index=-1,
                    label=c,
                    pred_clean=c,
                    pred_adv=lab,
                    attack="mi-face",
                    norm="inversion",
                    eps=None,
                    perturbation=float(conf),
                    clean=near.tolist(),
                    adversarial=img.tolist(),
                    bounds=ctx.model.bounds,
                )
            )
        return self.result(
            ctx,
            risk=risk,
            summary=f"the independent evaluator recognises {rate:.0%} of {len(result.classes)} MI-FACE reconstructions "
            f"as their class ({result.queries} queries); each is shown beside its nearest training image",
            metrics=metrics,
            examples=examples,
            artifacts={"evaluator_labels": labels, "target_cost": result.confidence},
        )

    def _tabular(self, ctx: AuditContext) -> ProbeResult:
        d = ctx.data
        half = d.x_test.shape[0] // 2
        x_aux, y_aux, x_out, y_out = d.x_test[:half], d.y_test[:half], d.x_test[half:], d.y_test[half:]
        feats = self.params["features"] or list(range(d.x_train.shape[1]))
        names = d.feature_names or [str(i) for i in range(d.x_train.shape[1])]
        metrics: dict[str, float | None] = {}
        rows = []
        for i, f in enumerate(feats):
            f = names.index(f) if isinstance(f, str) else int(f)
            ctx.report(self.name, i / len(feats), names[f])
            ai = AttributeInference(feature=f, n_bins=self.params["n_bins"]).fit(x_aux, y_aux)
            mem, non = ai.evaluate(ctx.model, d.x_train, d.y_train), ai.evaluate(ctx.model, x_out, y_out)
            metrics[f"attribute_advantage[{names[f]}]"] = mem["advantage"]
            metrics[f"attribute_advantage_ci_low[{names[f]}]"] = mem["ci_low"]
            metrics[f"attribute_advantage_unseen[{names[f]}]"] = non["advantage"]
            rows.append((names[f], mem, non))
        name, mem, non = max(rows, key=lambda r: r[1]["ci_low"])
        risk = "high" if mem["ci_low"] > 0.05 else "medium" if mem["ci_low"] > 0 else "low"
        pos = [float(i) for i in range(len(rows))]
        plot = Plot(
            "attribute-advantage",
            "Attribute inference: advantage over the baseline",
            "bar",
            "feature",
            "advantage (accuracy points)",
            [
                Series("training records", pos, [r[1]["advantage"] for r in rows]),
                Series("unseen records", pos, [r[2]["advantage"] for r in rows]),
            ],
            categories=[r[0] for r in rows],
        )
        return self.result(
            ctx,
            risk=risk,
            summary=f"largest advantage over the correlation baseline: {name!r} {mem['advantage']:+.3f} "
            f"(95% CI {mem['ci_low']:+.3f} to {mem['ci_high']:+.3f}) on training records, {non['advantage']:+.3f} on unseen ones",
            metrics=metrics,
            plots=[plot],
        )
