"""Physical evasion: a universal adversarial patch (Brown et al. 2017) under random placement.

One patch covering at most ``area`` of the image, trained with expectation over transformation
(random placement, rotation, scale, brightness/contrast, noise) on up to ``fit_images`` training
images, then pasted on the audited (held-out) images under fresh random transformations.
Untargeted: the share of correctly classified images the patch makes wrong; targeted (``targets``):
the share of images not of the target class it makes that class. A random patch of the same size is
the baseline. Needs image inputs (C, H, W) and a white-box model.

Risk: untargeted success >= 50% high, >= 20% medium, else low.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ...attacks.evasion.patch import apply, evaluate, fit, patch_side
from ...errors import UsageError
from ..probe import AuditContext, Probe, register_probe
from ..result import Example, Plot, ProbeResult, Series


@register_probe
class PatchProbe(Probe):
    name = "patch"
    title = "Adversarial patch (physical)"
    threat = "evasion / physical (universal patch)"
    defaults: ClassVar[dict[str, Any]] = {
        "area": 0.1,
        "steps": 500,
        "fit_images": 2000,
        "batch_size": 64,
        "lr": 0.05,
        "targets": [],
        "examples": 4,
    }

    def skip_reason(self, ctx: AuditContext) -> str | None:
        if ctx.kind != "image":
            return "the inputs are not images (C, H, W): a patch has nowhere to go"
        if not ctx.model.white_box:
            return "the model is a black box: training a patch needs gradients"
        try:
            patch_side(tuple(ctx.model.input_shape), float(self.params["area"]))
        except UsageError as exc:
            return str(exc)
        if ctx.data.x_train.shape[0] == 0:
            return "the dataset has no training split to fit the patch on"
        return None

    def run(self, ctx: AuditContext) -> ProbeResult:
        p = self.params
        model, x, y = ctx.model, ctx.x, ctx.y
        k = min(int(p["fit_images"]), ctx.data.x_train.shape[0])
        xf, yf = ctx.data.x_train[:k], ctx.data.y_train[:k]
        goals = [None, *[int(t) for t in p["targets"]]]
        metrics: dict[str, float | None] = {}
        bars, names = [], []
        examples: list[Example] = []
        patches = {}
        for i, t in enumerate(goals):
            label = "untargeted" if t is None else f"target={t}"
            ctx.report(self.name, i / len(goals), f"fitting the {label} patch")
            g = ctx.generator(f"patch:{label}")
            patch = fit(
                model,
                xf,
                yf,
                t,
                area=float(p["area"]),
                steps=int(p["steps"]),
                batch_size=int(p["batch_size"]),
                lr=float(p["lr"]),
                generator=g,
            )
            patches[label] = patch
            if t is None:
                keep = model.predict(x) == y
                xe, ye = x[keep], y[keep]
            else:
                xe, ye = x, y
            s = evaluate(model, xe, ye, patch, t, generator=ctx.generator(f"patch-eval:{label}"))
            rnd = torch.rand(patch.shape, generator=ctx.generator(f"patch-random:{label}"))
            lo, hi = model.bounds
            base = evaluate(model, xe, ye, lo + (hi - lo) * rnd, t, generator=ctx.generator(f"patch-eval:{label}"))
            metrics[f"patch_success[{label}]"] = s
            metrics[f"patch_success[random,{label}]"] = base
            bars += [s, base]
            names += [f"{label}", f"random patch ({label})"]
            if t is None and xe.shape[0]:
                with torch.no_grad():
                    xa = apply(
                        xe[: 4 * int(p["examples"])], patch, ctx.generator("patch-examples"), bounds=model.bounds
                    )
                    pa, pc = model.predict(xa), model.predict(xe[: xa.shape[0]])
                for j in torch.nonzero(pa != ye[: xa.shape[0]]).flatten()[: int(p["examples"])].tolist():
                    examples.append(
                        Example(
                            index=-1,
                            label=int(ye[j]),
                            pred_clean=int(pc[j]),
                            pred_adv=int(pa[j]),
                            attack="patch",
                            norm="patch",
                            eps=float(p["area"]),
                            perturbation=float((xa[j] != xe[j]).float().mean()),
                            clean=xe[j].tolist(),
                            adversarial=xa[j].tolist(),
                            bounds=model.bounds,
                        )
                    )
        un = metrics["patch_success[untargeted]"]
        risk = "high" if un >= 0.5 else "medium" if un >= 0.2 else "low"
        side = patches["untargeted"].shape[-1]
        h, w = model.input_shape[1:]
        ctx.report(self.name, 1.0, "done")
        return self.result(
            ctx,
            risk=risk,
            summary=(
                f"a {side}x{side} patch ({side * side / (h * w):.1%} of the image) at a random place makes "
                f"{un:.1%} of correctly classified held-out images wrong (random patch: "
                f"{metrics['patch_success[random,untargeted]']:.1%})"
            ),
            params={**p, "patch_side": side, "fit_images": k},
            metrics=metrics,
            examples=examples,
            plots=[
                Plot(
                    id="patch-success",
                    title="Patch success on held-out images (random placement)",
                    kind="bar",
                    x_label="patch",
                    y_label="success rate",
                    series=[Series("success", list(range(len(bars))), bars)],
                    categories=names,
                )
            ],
            artifacts={"patches": {label: v.tolist() for label, v in patches.items()}},
        )
