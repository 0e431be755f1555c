"""Backdoor scan: is the audited model itself backdoored? Neural Cleanse (Wang et al. 2019) on the model alone.

For every class the scan reverse-engineers the smallest trigger (a mask and a pattern) that makes clean inputs
of the other classes land in that class (:class:`bastion.defenses.sanitization.NeuralCleanse`). A backdoor is a
shortcut to its target class, so that class's trigger is abnormally small: the anomaly index (the distance of
the trigger's L1 norm below the median, in units of 1.4826 x the median absolute deviation) above
``threshold`` (2, the paper's) flags the class. The reversed triggers are shown on audited inputs in the report.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ...defenses.sanitization import NeuralCleanse
from ..probe import AuditContext, Probe, register_probe, trigger_examples
from ..result import Check, Example, Plot, ProbeResult, Series


@register_probe
class BackdoorProbe(
    Probe, name="backdoor", title="Backdoor scan (Neural Cleanse)", threat="poisoning / backdoored model"
):
    """Neural Cleanse on the audited model: per class, the smallest reversed trigger and its anomaly index.

    Needs a white-box model and image inputs. Metrics: ``backdoor_flagged`` (the number of flagged classes),
    ``anomaly_index[C]`` and ``trigger_asr[C]`` per scanned class, ``max_anomaly_index`` (the largest among the
    classes whose trigger is no larger than the median). The gallery stamps the reversed trigger of each flagged
    class (none flagged: the class with the smallest trigger) on audited inputs of other classes.

    Check ``reversed-triggers-work``: warns when some class's reversed trigger sends fewer than
    ``min_trigger_asr`` of the clean inputs to that class (its optimisation did not converge, so its norm is not
    comparable with the others); passes otherwise.

    Risk: a flagged class is high; a ``max_anomaly_index`` above 75% of ``threshold`` medium; else low.

    Parameters:
        n: audited inputs the triggers are reversed on (the first ``n``).
        steps: optimisation steps per class (``None``: Neural Cleanse's default, 80).
        threshold: the anomaly index above which a class whose trigger is below the median is flagged.
        classes: the classes to scan (``None``: all); the anomaly index is computed among them.
        min_trigger_asr: the share of clean inputs every reversed trigger must send to its class (the check).
        examples: audited inputs shown per trigger in the gallery.
    """

    defaults: ClassVar[dict[str, Any]] = {
        "n": 500,
        "steps": None,
        "threshold": 2.0,
        "classes": None,
        "min_trigger_asr": 0.9,
        "examples": 4,
    }

    needs_images = "the inputs are not images (C, H, W): Neural Cleanse reverse-engineers image triggers"
    needs_gradients = "the model is a black box: reverse-engineering a trigger needs gradients"

    def _scanner(self, ctx: AuditContext) -> NeuralCleanse:
        p = self.params
        kwargs: dict[str, Any] = {"threshold": p["threshold"], "seed": ctx.seed_for(self.name)}
        if p["steps"] is not None:
            kwargs["steps"] = int(p["steps"])
        if p["classes"] is not None:
            kwargs["classes"] = [int(c) for c in p["classes"]]
        return NeuralCleanse(**kwargs)

    def run(self, ctx: AuditContext) -> ProbeResult:
        p = self.params
        m = min(p["n"], ctx.x.shape[0])
        x, y = ctx.x[:m], ctx.y[:m]

        def progress(done: int, total: int, message: str = "") -> None:
            ctx.report(self.name, done / max(total, 1), f"class {message}")

        scan = self._scanner(ctx).scan(ctx.model, x, y, progress=progress)
        rep = scan.to_dict()
        classes = rep.get("classes") or list(range(len(rep["norms"])))
        thr = p["threshold"]
        metrics: dict[str, float | None] = {"backdoor_flagged": float(len(rep["flagged"]))}
        for c, idx, asr in zip(classes, rep["anomaly_index"], rep["trigger_asr"]):
            metrics[f"anomaly_index[{c}]"] = idx
            metrics[f"trigger_asr[{c}]"] = asr
        low_side = [idx for idx, norm in zip(rep["anomaly_index"], rep["norms"]) if norm <= _median(rep["norms"])]
        metrics["max_anomaly_index"] = max(low_side, default=0.0)
        flagged = rep["flagged"]
        top = max(metrics["max_anomaly_index"] or 0.0, 0.0)
        risk = "high" if flagged else "medium" if top > 0.75 * thr else "low"
        summary = (
            f"class {', '.join(map(str, flagged))} flagged as a backdoor target (anomaly index "
            f"{max(rep['anomaly_index'][classes.index(c)] for c in flagged):.2f} > {thr:g})"
            if flagged
            else f"no class flagged: the largest anomaly index is {top:.2f} (threshold {thr:g})"
        )
        return self.result(
            ctx,
            risk=risk,
            summary=summary + f"; {m} clean inputs, {scan.seconds:.0f} s",
            params={**p, "n": m},
            metrics=metrics,
            plots=self._plots(classes, rep),
            checks=[self._triggers_work(classes, rep)],
            examples=self._examples(ctx, scan, flagged or [_most_anomalous(classes, rep)], x, y),
            artifacts={"scan": rep},
        )

    @staticmethod
    def _plots(classes: list[int], rep: dict[str, Any]) -> list[Plot]:
        cats = [str(c) for c in classes]
        pos = [float(i) for i in range(len(classes))]
        panels = [
            ("backdoor-norms", "Reversed trigger size per class (L1 of the mask)", "trigger L1", "norms"),
            (
                "backdoor-anomaly",
                "Anomaly index per class (flagged above the threshold)",
                "anomaly index",
                "anomaly_index",
            ),
        ]
        return [
            Plot(pid, title, "bar", "class", axis, [Series(axis, pos, [float(v) for v in rep[key]])], categories=cats)
            for pid, title, axis, key in panels
        ]

    def _triggers_work(self, classes: list[int], rep: dict[str, Any]) -> Check:
        title = "Every reversed trigger works"
        need = self.params["min_trigger_asr"]
        weak = [(c, a) for c, a in zip(classes, rep["trigger_asr"]) if a < need]
        ev = {"trigger_asr": dict(zip(map(str, classes), rep["trigger_asr"])), "required": need}
        if weak:
            c, a = weak[0]
            return Check(
                "reversed-triggers-work",
                title,
                "warn",
                f"The reversed trigger of class {c} reaches only {a:.1%} (< {need:.0%}) on clean inputs: its "
                "optimisation did not converge, so its size is not comparable (give the probe more steps).",
                ev,
            )
        return Check(
            "reversed-triggers-work",
            title,
            "pass",
            f"Every class's reversed trigger flips at least {need:.0%} of the clean inputs, so the sizes compare.",
            ev,
        )

    def _examples(
        self, ctx: AuditContext, scan: Any, shown: list[int], x: torch.Tensor, y: torch.Tensor
    ) -> list[Example]:
        out: list[Example] = []
        k = self.params["examples"]
        for c in shown:
            rows = torch.nonzero(y != c).flatten()[:k]
            xs = x[rows]
            out += trigger_examples(
                ctx.model,
                rows.tolist(),
                y[rows],
                xs,
                scan.as_trigger(c).apply(xs),
                lambda d: d.abs().sum(),
                attack=f"reversed trigger of class {c}",
                norm="l1 mask",
                bounds=ctx.model.bounds,
            )
        return out


def _median(values: list[float]) -> float:
    return float(torch.tensor(values, dtype=torch.float64).median()) if values else 0.0


def _most_anomalous(classes: list[int], rep: dict[str, Any]) -> int:
    return classes[min(range(len(classes)), key=lambda i: rep["norms"][i])]
