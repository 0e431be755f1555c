"""Physical evasion: a universal adversarial patch (Brown et al. 2017) under random placement.

One patch covering at most ``area`` of the image, trained with expectation over transformation
(random placement, rotation, scale, brightness/contrast, noise) on up to ``fit_images`` training
images, then pasted on the audited (held-out) images under fresh random transformations.
Untargeted: the share of correctly classified images the patch makes wrong; targeted (``targets``):
the share of images not of the target class it makes that class. A random patch of the same size is
the baseline. The patch's side is ``floor(sqrt(area * H * W))``, so it covers at most ``area`` (on 28x28
images ``area=0.1`` gives 8x8 = 8.2%); the summary and ``params["patch_area"]`` state the real share.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch

from ...attacks.evasion.patch import apply, evaluate, fit, patch_side
from ...errors import UsageError
from ..probe import AuditContext, Probe, examples_of, register_probe
from ..result import Check, Example, Plot, ProbeResult, Series


@register_probe
class PatchProbe(
    Probe, name="patch", title="Adversarial patch (physical)", threat="evasion / physical (universal patch)"
):
    """A universal patch, untargeted and per target class, against a random patch under the same placements.

    Needs image inputs (C, H, W), a white-box model, a training split and a patch side of at least one pixel.
    Metrics: ``patch_success[untargeted]``, ``patch_success[target=T]`` and ``patch_success[random,...]`` for the
    random patch of each.

    Check ``patch-beats-random`` (:func:`patch_beats_random`): a trained patch that does worse than the random
    one is an optimiser failure, so the check warns; passes otherwise.

    Risk: untargeted success >= 50% high, >= 20% medium, else low.

    Parameters:
        area: the largest share of the image the patch covers.
        steps: the patch's optimisation steps.
        fit_images: training images the patch is fitted on (the first ``fit_images``).
        batch_size: images per optimisation step.
        lr: the optimiser's learning rate.
        targets: target classes, one targeted patch each (``[]``: the untargeted patch only).
        examples: audited inputs the untargeted patch fools shown in the gallery.
    """

    defaults: ClassVar[dict[str, Any]] = {
        "area": 0.1,
        "steps": 500,
        "fit_images": 2000,
        "batch_size": 64,
        "lr": 0.05,
        "targets": [],
        "examples": 4,
    }

    needs_images = "the inputs are not images (C, H, W): a patch has nowhere to go"
    needs_gradients = "the model is a black box: training a patch needs gradients"

    def skip_reason(self, ctx: AuditContext) -> str | None:
        reason = super().skip_reason(ctx)
        if reason is not None:
            return reason
        try:
            patch_side(tuple(ctx.model.input_shape), self.params["area"])
        except UsageError as exc:
            return str(exc)
        if ctx.data.x_train.shape[0] == 0:
            return "the dataset has no training split to fit the patch on"
        return None

    def run(self, ctx: AuditContext) -> ProbeResult:
        p = self.params
        model = ctx.model
        k = min(p["fit_images"], ctx.data.x_train.shape[0])
        goals = [None, *[int(t) for t in p["targets"]]]
        metrics: dict[str, float | None] = {}
        examples: list[Example] = []
        patches = {}
        un = random_un = math.nan
        for i, t in enumerate(goals):
            label = "untargeted" if t is None else f"target={t}"
            ctx.report(self.name, i / len(goals), f"fitting the {label} patch")
            patch = self._fit(ctx, k, t, label)
            patches[label] = patch
            rows = torch.nonzero(model.predict(ctx.x) == ctx.y).flatten() if t is None else torch.arange(len(ctx.y))
            trained, random = self._success(ctx, patch, rows, t, label)
            metrics[f"patch_success[{label}]"] = trained
            metrics[f"patch_success[random,{label}]"] = random
            if t is None:
                un, random_un = trained, random
                examples = self._examples(ctx, patch, rows)
        side = patches["untargeted"].shape[-1]
        h, w = model.input_shape[1:]
        area = side * side / (h * w)
        ctx.report(self.name, 1.0, "done")
        return self.result(
            ctx,
            risk="high" if un >= 0.5 else "medium" if un >= 0.2 else "low",
            summary=(
                f"a {side}x{side} patch ({area:.1%} of the image; at most {p['area']:.0%} asked, the side is "
                f"rounded down) at a random place makes {un:.1%} of correctly classified held-out images wrong "
                f"(random patch: {random_un:.1%})"
            ),
            params={**p, "patch_side": side, "patch_area": area, "fit_images": k},
            metrics=metrics,
            examples=examples,
            checks=[patch_beats_random(metrics, goals)],
            plots=[self._plot(metrics, goals)],
            artifacts={"patches": {label: v.tolist() for label, v in patches.items()}},
        )

    def _fit(self, ctx: AuditContext, k: int, target: int | None, label: str) -> torch.Tensor:
        p = self.params
        return fit(
            ctx.model,
            ctx.data.x_train[:k],
            ctx.data.y_train[:k],
            target,
            area=p["area"],
            steps=p["steps"],
            batch_size=p["batch_size"],
            lr=p["lr"],
            generator=ctx.generator(f"patch:{label}"),
        )

    def _success(
        self, ctx: AuditContext, patch: torch.Tensor, rows: torch.Tensor, target: int | None, label: str
    ) -> tuple[float, float]:
        """Held-out success of the trained patch and of a random patch of the same size, under the same
        placements (the same generator seed)."""
        model = ctx.model
        xe, ye = ctx.x[rows], ctx.y[rows]
        trained = evaluate(model, xe, ye, patch, target, generator=ctx.generator(f"patch-eval:{label}"))
        lo, hi = model.bounds
        rnd = lo + (hi - lo) * torch.rand(patch.shape, generator=ctx.generator(f"patch-random:{label}"))
        random = evaluate(model, xe, ye, rnd, target, generator=ctx.generator(f"patch-eval:{label}"))
        return trained, random

    def _examples(self, ctx: AuditContext, patch: torch.Tensor, rows: torch.Tensor) -> list[Example]:
        """Up to ``examples`` correctly classified audited inputs the untargeted patch fools, with their index
        among the audited inputs."""
        model, k = ctx.model, self.params["examples"]
        idx = rows[: 4 * k]
        if idx.numel() == 0:
            return []
        xe, ye = ctx.x[idx], ctx.y[idx]
        with torch.no_grad():
            xa = apply(xe, patch, ctx.generator("patch-examples"), bounds=model.bounds)
            pa, pc = model.predict(xa), model.predict(xe)
        side = patch.shape[-1]
        area = side * side / (xe.shape[-2] * xe.shape[-1])
        fooled = torch.nonzero(pa != ye).flatten()[:k]
        covered = [float((xa[j] != xe[j]).float().mean()) for j in fooled.tolist()]
        return examples_of(
            idx[fooled].tolist(),
            ye[fooled],
            pc[fooled],
            pa[fooled],
            xe[fooled],
            xa[fooled],
            covered,
            attack="patch",
            norm="patch",
            eps=area,
            bounds=model.bounds,
        )

    @staticmethod
    def _plot(metrics: dict[str, float | None], goals: list[int | None]) -> Plot:
        bars: list[float] = []
        names: list[str] = []
        for t in goals:
            label = "untargeted" if t is None else f"target={t}"
            bars += [
                float(metrics[f"patch_success[{label}]"] or 0.0),
                float(metrics[f"patch_success[random,{label}]"] or 0.0),
            ]
            names += [label, f"random patch ({label})"]
        return Plot(
            id="patch-success",
            title="Patch success on held-out images (random placement)",
            kind="bar",
            x_label="patch",
            y_label="success rate",
            series=[Series("success", list(range(len(bars))), bars)],
            categories=names,
        )


def patch_beats_random(metrics: Mapping[str, float | None], goals: Sequence[int | None]) -> Check:
    """Validity check ``patch-beats-random``: a trained patch that fools fewer held-out images than a random
    patch of the same size, under the same placements, is an optimiser failure (too few steps, a learning
    rate off the input scale, vanishing gradients) — its low success says nothing about the model. Warns
    naming every such patch; passes when each trained patch does at least as well as its random one."""
    title = "Trained patches beat a random patch"
    worse, evidence = [], {}
    for t in goals:
        label = "untargeted" if t is None else f"target={t}"
        trained, random = metrics.get(f"patch_success[{label}]"), metrics.get(f"patch_success[random,{label}]")
        evidence[label] = {"trained": trained, "random": random}
        if trained is not None and random is not None and math.isfinite(trained) and math.isfinite(random):
            if trained < random:
                worse.append(f"{label}: {trained:.1%} < random {random:.1%}")
    if worse:
        return Check(
            "patch-beats-random",
            title,
            "warn",
            f"The trained patch fools fewer held-out images than a random patch ({'; '.join(worse)}): the patch "
            "optimisation failed, so the patch risk is not measured — raise steps or lr, or check the gradients.",
            evidence,
        )
    return Check(
        "patch-beats-random",
        title,
        "pass",
        "Every trained patch fools at least as many held-out images as a random patch of the same size.",
        evidence,
    )
