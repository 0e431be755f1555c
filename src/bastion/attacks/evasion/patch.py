"""Universal adversarial patch (Brown et al. 2017, "Adversarial Patch"), optimised with expectation
over transformation (Athalye et al. 2018).

One square patch (C, s, s) is pasted onto any image under random placement, rotation, scale,
brightness/contrast and noise, and trained with Adam so that the pasted images are classified as
``target`` (targeted) or as anything but their label (untargeted), optionally with a
total-variation penalty (smoother, more printable patches). Transforms are plain torch
(``affine_grid``/``grid_sample``); inputs (N, C, H, W).

Threat model: NOT an eps-ball. Pixels inside the pasted patch change arbitrarily (within the
bounds); the patch covers at most ``area`` of the image (side ``floor(sqrt(area * H * W))`` at
scale 1, scales <= 1). As an :class:`Attack` it is a minimum-norm attack: ``eps=None`` (default)
projects onto the bounds only; an eps additionally bounds the change.

Use :func:`fit` / :func:`apply` / :func:`evaluate` for the universal setting (train on some images,
paste on others). Called as an attack, ``AdversarialPatch(...)(model, x, y, targets)`` trains one
patch per target class present (or one untargeted patch) on ``fit_data`` when given, else on the
attacked batch itself (transductive), and pastes it under fresh random transforms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ...errors import UsageError
from ...models.base import Classifier, validate_inputs
from ..base import AttackBatch, Budget, MinimumNormAttack, positive, register
from .losses import as_logits, margin_loss

__all__ = ["AdversarialPatch", "apply", "evaluate", "fit", "patch_side", "save_png"]


def patch_side(input_shape: tuple[int, ...], area: float) -> int:
    """Side of the square patch covering at most ``area`` of an (C, H, W) image."""
    if len(input_shape) != 3:
        raise UsageError(f"patches need image inputs (C, H, W), got input shape {tuple(input_shape)}")
    if not 0 < area <= 1:
        raise UsageError(f"area must lie in (0, 1], got {area!r}")
    _, h, w = input_shape
    side = min(h, w, math.isqrt(int(area * h * w)))
    if side < 1:
        raise UsageError(f"area={area} is smaller than one pixel of a {h}x{w} image")
    return side


def apply(
    x: Tensor,
    patch: Tensor,
    generator: torch.Generator,
    *,
    bounds: tuple[float, float] = (0.0, 1.0),
    rotation: float = 20.0,
    scale: tuple[float, float] = (0.8, 1.0),
    brightness: float = 0.1,
    contrast: tuple[float, float] = (0.9, 1.1),
    noise: float = 0.02,
    position: tuple[float, float] | None = None,
    jitter: float = 0.0,
) -> Tensor:
    """Paste ``patch`` (C, s, s) on every image of ``x`` (N, C, H, W) under fresh random transforms.

    Per image: rotation uniform in +-``rotation`` degrees, scale uniform in ``scale`` (<= 1), a
    uniform position keeping the patch inside the image, the patch's pixels mapped by
    ``contrast * p + brightness`` (relative to the bounds) plus Gaussian ``noise``, then clamped to
    ``bounds``. Nearest-neighbour sampling: only pixels under the (transformed) patch change, and
    the output is differentiable with respect to ``patch``.
    """
    n, c, h, w = x.shape
    s = patch.shape[-1]
    if patch.dim() != 3 or patch.shape[0] != c or patch.shape[1] != s or s > min(h, w):
        raise UsageError(f"patch has shape {tuple(patch.shape)}; expected ({c}, s, s) with s <= {min(h, w)}")
    if not 0 < scale[0] <= scale[1] <= 1:
        raise UsageError(f"scale must be (low, high) with 0 < low <= high <= 1, got {scale!r}")
    lo, hi = bounds
    dev, dt = x.device, x.dtype

    def u(a: float, b: float) -> Tensor:
        return a + (b - a) * torch.rand(n, generator=generator, device=dev, dtype=dt)

    theta = u(-rotation, rotation) * math.pi / 180
    sc = u(*scale)
    half = 0.5 * s * sc * (theta.cos().abs() + theta.sin().abs())  # half extent of the rotated patch, pixels
    if position is None:
        cx = (u(0, 1) * 2 - 1) * (w / 2 - half).clamp_min(0)
        cy = (u(0, 1) * 2 - 1) * (h / 2 - half).clamp_min(0)
    else:
        cx = (position[1] + u(-jitter, jitter)).clamp(-w / 2, w / 2)
        cy = (position[0] + u(-jitter, jitter)).clamp(-h / 2, h / 2)
    # output pixel o (pixels, centred) -> canvas pixel R(-theta) (o - c) / sc; then to normalised coords
    cos, sin = theta.cos() / sc, theta.sin() / sc
    a_pix = torch.stack([torch.stack([cos, sin], 1), torch.stack([-sin, cos], 1)], 1)  # (n, 2, 2)
    t_pix = -(a_pix @ torch.stack([cx, cy], 1)[:, :, None])[:, :, 0]
    to_norm = torch.tensor([2.0 / w, 2.0 / h], device=dev, dtype=dt)
    a_norm = a_pix * to_norm[None, :, None] / to_norm[None, None, :]
    mat = torch.cat([a_norm, (t_pix * to_norm)[:, :, None]], 2)
    grid = F.affine_grid(mat, [n, c, h, w], align_corners=False)
    top, left = (h - s) // 2, (w - s) // 2
    canvas = torch.zeros(1, c + 1, h, w, device=dev, dtype=dt)
    canvas[0, :c, top : top + s, left : left + s] = patch.to(dt)
    canvas[0, c, top : top + s, left : left + s] = 1.0
    warped = F.grid_sample(
        canvas.expand(n, -1, -1, -1), grid, mode="nearest", padding_mode="zeros", align_corners=False
    )
    p, mask = warped[:, :c], warped[:, c:]
    k = u(*contrast).view(n, 1, 1, 1)
    b = (u(-brightness, brightness) * (hi - lo)).view(n, 1, 1, 1)
    p = k * (p - lo) + lo + b
    if noise > 0:
        p = p + noise * (hi - lo) * torch.randn(p.shape, generator=generator, device=dev, dtype=dt)
    return torch.where(mask > 0.5, p.clamp(lo, hi), x)


def _tv(p: Tensor) -> Tensor:
    return (p[:, 1:, :] - p[:, :-1, :]).abs().mean() + (p[:, :, 1:] - p[:, :, :-1]).abs().mean()


def fit(
    model: Classifier,
    x_train: Tensor,
    y_train: Tensor,
    target: int | None = None,
    *,
    area: float = 0.1,
    steps: int = 300,
    batch_size: int = 64,
    lr: float = 0.05,
    tv_weight: float = 0.0,
    generator: torch.Generator | None = None,
    budget: Budget | None = None,
    **transforms: Any,
) -> Tensor:
    """Train a universal patch on ``x_train`` (N, C, H, W) for a white-box ``model``; returns (C, s, s).

    Targeted (``target`` a class): minimise the cross-entropy of ``target`` on the patched images
    (images already of class ``target`` are left out). Untargeted: minimise the margin of the true
    label, clipped at -1. ``transforms`` are passed to :func:`apply` (rotation, scale, ...).
    """
    validate_inputs(model, x_train, y_train, name="x_train")
    if not model.white_box:
        raise UsageError(f"{type(model).__name__} is black-box: training a patch needs gradients")
    if target is not None and not 0 <= int(target) < model.n_classes:
        raise UsageError(f"target must be a class in [0, {model.n_classes - 1}], got {target!r}")
    for name, v in (("steps", steps), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise UsageError(f"{name} must be an integer >= 1, got {v!r}")
    if not (lr > 0 and tv_weight >= 0):
        raise UsageError(f"lr must be > 0 and tv_weight >= 0, got lr={lr!r}, tv_weight={tv_weight!r}")
    side = patch_side(tuple(model.input_shape), area)
    g = generator if generator is not None else torch.Generator(device=x_train.device).manual_seed(0)
    if target is not None:
        keep = y_train != int(target)
        x_train, y_train = x_train[keep], y_train[keep]
    if x_train.shape[0] == 0:
        raise UsageError("no training image left to fit the patch on (all are of the target class)")
    lo, hi = model.bounds
    c = model.input_shape[0]
    patch = (lo + (hi - lo) * torch.rand(c, side, side, generator=g, device=x_train.device)).requires_grad_(True)
    opt = torch.optim.Adam([patch], lr=lr * (hi - lo))
    with model.attack_mode(), torch.enable_grad():
        for _ in range(steps):
            idx = torch.randint(
                0, x_train.shape[0], (min(batch_size, x_train.shape[0]),), generator=g, device=x_train.device
            )
            xb, yb = x_train[idx], y_train[idx]
            z = as_logits(model.logits(apply(xb, patch, g, bounds=model.bounds, **transforms)), model.output)
            if target is not None:
                loss = F.cross_entropy(z, torch.full_like(yb, int(target)))
            else:
                loss = (-margin_loss(z, yb)).clamp_min(-1.0).mean()
            if tv_weight:
                loss = loss + tv_weight * _tv(patch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                patch.clamp_(lo, hi)
            if budget is not None:
                budget.backward += int(idx.numel())
    return patch.detach()


@torch.no_grad()
def evaluate(
    model: Classifier,
    x: Tensor,
    y: Tensor,
    patch: Tensor,
    target: int | None = None,
    generator: torch.Generator | None = None,
    **transforms: Any,
) -> float:
    """Success rate of ``patch`` on held-out images under fresh random transforms: the fraction
    classified as ``target`` among the images not of that class (targeted), or misclassified."""
    g = generator if generator is not None else torch.Generator(device=x.device).manual_seed(1)
    if target is not None:
        x, y = x[y != int(target)], y[y != int(target)]
    if x.shape[0] == 0:
        return float("nan")
    with model.attack_mode():
        pred = model.predict(apply(x, patch, g, bounds=model.bounds, **transforms))
    return float((pred == int(target)).float().mean() if target is not None else (pred != y).float().mean())


def save_png(patch: Tensor, path: str | Path, bounds: tuple[float, float] = (0.0, 1.0)) -> Path:
    """Write a (1 or 3, s, s) patch as an 8-bit grayscale / RGB PNG with Pillow."""
    from PIL import Image

    if patch.dim() != 3 or patch.shape[0] not in (1, 3):
        raise UsageError(f"save_png takes a (1, s, s) or (3, s, s) patch, got shape {tuple(patch.shape)}")
    lo, hi = bounds
    arr = ((patch.detach().cpu().float() - lo) / (hi - lo)).clamp(0, 1).mul(255).round().to(torch.uint8)
    img = (
        Image.fromarray(arr[0].numpy(), mode="L")
        if arr.shape[0] == 1
        else Image.fromarray(arr.permute(1, 2, 0).numpy(), mode="RGB")
    )
    path = Path(path)
    img.save(path, format="PNG")
    return path


@register("patch")
@dataclass(kw_only=True, eq=False, repr=False)
class AdversarialPatch(MinimumNormAttack):
    """Universal adversarial patch as an attack (see the module docstring for the threat model).

    Args:
        area: the most of the image the patch covers (default 0.1). steps, batch_size, lr,
            tv_weight: training (:func:`fit`). fit_data: (x, y) to train on; ``None``: the attacked batch.
        eps, norm: optional extra bound on the change (``eps=None``: bounds only).
    """

    norms = ("linf", "l2", "l1")

    norm: str = "linf"
    area: float = 0.1
    steps: int = positive(300, integer=True)
    batch_size_fit: int = positive(64, integer=True)
    lr: float = positive(0.05)
    tv_weight: float = positive(0.0, allow_zero=True)
    fit_data: tuple[Tensor, Tensor] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (isinstance(self.area, (int, float)) and 0 < self.area <= 1):
            raise UsageError(f"area must lie in (0, 1], got {self.area!r}")
        fit_data = self.fit_data
        if fit_data is not None and (not isinstance(fit_data, (tuple, list)) or len(fit_data) != 2):
            raise UsageError("fit_data must be a pair (x, y) of tensors")
        self.area = float(self.area)

    def _attack(self, batch: AttackBatch) -> Tensor:
        model, x, y, targets, generator = batch.model, batch.x, batch.y, batch.targets, batch.generator
        xf, yf = self.fit_data if self.fit_data is not None else (x, y)
        kw: dict[str, Any] = dict(
            area=self.area,
            steps=self.steps,
            batch_size=self.batch_size_fit,
            lr=self.lr,
            tv_weight=self.tv_weight,
            generator=generator,
            budget=batch.budget,
        )
        out = x.clone()
        patches: dict[int | None, Tensor] = {}
        groups = [None] if targets is None else [int(t) for t in targets.unique()]
        for t in groups:
            rows = (
                torch.arange(x.shape[0], device=x.device)
                if targets is None or t is None
                else targets.eq(t).nonzero().flatten()
            )
            if t is not None and bool((yf != t).sum() == 0):  # nothing to learn from: use the rows themselves
                patches[t] = fit(model, x[rows], y[rows], t, **kw)
            else:
                patches[t] = fit(model, xf, yf, t, **kw)
            with torch.no_grad():
                out[rows] = apply(x[rows], patches[t], generator, bounds=batch.threat.bounds)
        batch.budget.extra["patches"] = patches
        return out
