"""DeepFool (Moosavi-Dezfooli, Fawzi & Frossard 2016, "DeepFool: a simple and accurate method to fool
deep neural networks", CVPR), L2 and Linf, batched.

Threat model: minimum-norm, untargeted (``eps=None`` by default; a given ``eps`` makes the library
project the result onto that ball). Inputs (N, *input_shape), labels (N,).

At each step, for every sample not yet misclassified, the model is linearised around the current point
x_i: for each candidate class k (the ``candidates`` classes with the highest clean scores, the true
class excluded) f_k = Z_k - Z_y and w_k = grad_x f_k. The closest linearised boundary is
k* = argmin_k |f_k| / ||w_k||_q (q = 2 for L2, q = 1 for Linf, the dual norm) and the step is

    L2:   r_i = (|f_k*| / ||w_k*||_2 + 1e-4) * w_k* / ||w_k*||_2
    Linf: r_i = (|f_k*| / ||w_k*||_1 + 1e-4) * sign(w_k*)

accumulated into r_total; the iterate is clip(x + (1 + overshoot) * r_total) as in the reference code
(the 1e-4 is the reference's numerical margin). A sample stops as soon as the model misclassifies it.
For an affine classifier the first step lands exactly at distance (1 + overshoot) * (d + 1e-4) from x,
where d = min_k |f_k| / ||w_k||_q is the distance to the decision boundary.

Gradients: one backward pass per candidate class over the active batch (faster on CPU than a vmapped
batched backward); ``gradients`` counts one per sample per candidate class.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ...errors import UsageError
from ..base import AttackBatch, MinimumNormAttack, positive, register
from .losses import as_logits

__all__ = ["DeepFool"]


def _view(v: Tensor, like: Tensor) -> Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


@register("deepfool")
@dataclass(kw_only=True, eq=False, repr=False)
class DeepFool(MinimumNormAttack):
    """DeepFool minimum-norm attack, L2 or Linf; untargeted only.

    Args:
        eps: optional budget the result is projected onto (``None``: unbounded). norm: 'l2' or 'linf'.
        steps: maximum number of linearisation steps.
        candidates: number of classes considered (the true class and the top others by clean score);
            ``None`` considers all classes.
        overshoot: the accumulated perturbation is scaled by (1 + overshoot).
    """

    norms = ("l2", "linf")
    supports_targets = False

    steps: int = positive(50, integer=True)
    candidates: int | None = 10
    overshoot: float = positive(0.02, allow_zero=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        candidates = self.candidates
        if candidates is not None and (not float(candidates).is_integer() or candidates < 2):
            raise UsageError(
                f"candidates must be an integer >= 2 (the true class and at least one other), got {candidates!r}"
            )

    def _attack(self, batch: AttackBatch) -> Tensor:
        model, x, y, threat = batch.model, batch.x, batch.y, batch.threat
        n_classes = model.n_classes
        k = n_classes if self.candidates is None else min(int(self.candidates), n_classes)
        lo, hi = threat.bounds
        scale = 1.0 + float(self.overshoot)
        with torch.no_grad():
            z0 = as_logits(model.logits(x), model.output)
        # the other candidate classes, highest clean score first: (N, k - 1)
        others = z0.masked_fill(F.one_hot(y, n_classes).bool(), float("-inf")).topk(k - 1, dim=1).indices
        x_adv = x.clone()
        r_tot = torch.zeros_like(x)
        idx = torch.arange(x.shape[0], device=x.device)
        for _ in range(self.steps):
            xa = x_adv[idx].requires_grad_(True)
            z = as_logits(model.logits(xa), model.output)
            ya = y[idx]
            live = z.detach().argmax(dim=1) == ya
            if not bool(live.any()):
                break
            f = z.gather(1, others[idx]) - z.gather(1, ya[:, None])  # (n, k - 1), negative while live
            grads = []
            for j in range(k - 1):
                (g,) = torch.autograd.grad(f[:, j].sum(), xa, retain_graph=j < k - 2)
                grads.append(g.detach().flatten(1))
            batch.budget.backward += int(idx.numel()) * (k - 1)
            w = torch.stack(grads, dim=1)[live]  # (m, k - 1, D)
            f = f.detach()[live]
            idx = idx[live]
            dual = w.norm(p=2 if threat.norm == "l2" else 1, dim=2)
            dist = f.abs() / (dual + 1e-8) + 1e-4
            best = dist.argmin(dim=1)
            rows = torch.arange(idx.numel(), device=x.device)
            w_best, d_best = w[rows, best], dist[rows, best]
            if threat.norm == "l2":
                step = w_best * (d_best / (dual[rows, best] + 1e-8))[:, None]
            else:
                step = w_best.sign() * d_best[:, None]
            r_tot[idx] += step.view(-1, *x.shape[1:])
            x_adv[idx] = (x[idx] + scale * r_tot[idx]).clamp(lo, hi)
        return x_adv
