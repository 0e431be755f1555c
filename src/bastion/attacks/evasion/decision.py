"""Decision-based attacks: what HopSkipJump and the Boundary attack share (labels only, never scores).

- :class:`DecisionOracle`: label-only access to the model for one batch, with exact per-image query counts
  and a hard per-image budget;
- :func:`noise_init`: an adversarial start of uniform noise per image; :func:`boundary_search`: the batched
  binary search to the decision boundary (on the blend for L2, on the Linf box radius for Linf);
- :class:`DecisionAttack`: the base class — a minimum-norm attack with a per-image query budget that starts
  from noise blended to the boundary (:meth:`DecisionAttack._start`) and reports each image's queries.

Inputs (N, *input_shape) inside the model's bounds, labels (N,), optional targets (N,).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ...models.base import Classifier
from ...threat import perturbation_norm
from ..base import AttackBatch, MinimumNormAttack, positive

__all__ = ["DecisionAttack", "DecisionOracle", "boundary_search", "noise_init"]


def broadcast(v: Tensor, like: Tensor) -> Tensor:
    """Reshape a per-sample vector (m,) to broadcast against ``like`` (m, ...)."""
    return v.view(-1, *([1] * (like.dim() - 1))).to(like.dtype)


class DecisionOracle:
    """Label-only access to a model for one batch of images: ``oracle(inputs, owners)`` says which of
    ``inputs`` are adversarial for the images ``owners`` (indices into the batch), counts each query
    against its owner in ``used`` and passes at most ``chunk`` inputs to the model per call."""

    def __init__(self, model: Classifier, y: Tensor, targets: Tensor | None, max_queries: int, chunk: int) -> None:
        self.model, self.y, self.targets = model, y, targets
        self.max_queries, self.chunk = max_queries, chunk
        self.used = torch.zeros(y.shape[0], dtype=torch.long, device=y.device)
        self.lo, self.hi = model.bounds

    def left(self) -> Tensor:
        """Queries each image may still make, shape (N,)."""
        return self.max_queries - self.used

    @torch.no_grad()
    def __call__(self, inputs: Tensor, owners: Tensor) -> Tensor:
        if inputs.shape[0] == 0:
            return torch.zeros(0, dtype=torch.bool, device=owners.device)
        inputs = inputs.clamp(self.lo, self.hi)
        preds = [
            self.model.logits(inputs[s : s + self.chunk]).argmax(dim=1) for s in range(0, inputs.shape[0], self.chunk)
        ]
        pred = torch.cat(preds).to(owners.device)
        self.used += torch.bincount(owners, minlength=self.used.shape[0])
        return pred == self.targets[owners] if self.targets is not None else pred != self.y[owners]


def noise_init(oracle: DecisionOracle, x: Tensor, trials: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Uniform noise in the bounds, redrawn per image until adversarial (at most ``trials`` draws, one
    query each). Returns (noise (N, ...), found (N,) bool); rows not found hold ``x``."""
    lo, hi = oracle.lo, oracle.hi
    noise, found = x.clone(), torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    todo = torch.arange(x.shape[0], device=x.device)
    for _ in range(trials):
        todo = todo[oracle.left()[todo] > 0]
        if todo.numel() == 0:
            break
        cand = lo + (hi - lo) * torch.rand(
            (todo.numel(), *x.shape[1:]), generator=generator, device=x.device, dtype=x.dtype
        )
        ok = oracle(cand, todo)
        noise[todo[ok]] = cand[ok]
        found[todo[ok]] = True
        todo = todo[~ok]
    return noise, found


def _toward(x0: Tensor, p: Tensor, a: Tensor, norm: str) -> Tensor:
    """The point at 'distance' a between x0 (a = 0) and p: blend weight for L2, box radius for Linf."""
    if norm == "l2":
        w = broadcast(a, x0)
        return (1 - w) * x0 + w * p
    r = broadcast(a, x0)
    return torch.clamp(p, x0 - r, x0 + r)


def boundary_search(
    oracle: DecisionOracle, x0: Tensor, p: Tensor, owners: Tensor, norm: str, theta: float, span: float
) -> tuple[Tensor, Tensor]:
    """Binary search between the clean ``x0`` and the adversarial ``p`` (rows of the images ``owners``),
    batched, to the reference's threshold. Returns (boundary points — adversarial, as every kept upper end
    was — and the distances of ``p`` to ``x0``, the reference's ``dist_post_update``). An image that runs
    out of queries stops where it is."""
    dist_p = perturbation_norm(p - x0, norm).double()
    if norm == "l2":
        high = torch.ones_like(dist_p)
        thr = torch.full_like(dist_p, theta)
    else:
        high = dist_p.clone()
        thr = torch.minimum(dist_p * theta, torch.full_like(dist_p, theta * span))
    low = torch.zeros_like(dist_p)
    while True:
        act = torch.nonzero(((high - low) > thr) & (oracle.left()[owners] > 0)).flatten()
        if act.numel() == 0:
            break
        mid = (high[act] + low[act]) / 2
        adv = oracle(_toward(x0[act], p[act], mid.to(x0.dtype), norm), owners[act])
        high[act] = torch.where(adv, mid, high[act])
        low[act] = torch.where(adv, low[act], mid)
    return _toward(x0, p, high.to(x0.dtype), norm), dist_p.to(x0.dtype)


@dataclass(kw_only=True, eq=False, repr=False)
class DecisionAttack(MinimumNormAttack):
    """Base of the decision-based minimum-norm attacks (HopSkipJump, Boundary).

    Args (besides :class:`~bastion.attacks.base.MinimumNormAttack`'s):
        max_queries: model queries per image, everything included (exact upper bound).
        init_trials: uniform-noise draws per image to find an adversarial starting point.
        query_batch_size: largest number of inputs passed to the model in one call (bounds memory; 128 is
            fastest for small CNNs on a CPU — raise it on a GPU).
    """

    needs_gradients = False

    max_queries: int = positive(5000, integer=True)
    init_trials: int = positive(100, integer=True)
    query_batch_size: int = positive(128, integer=True)

    def _start(self, batch: AttackBatch, theta: float) -> tuple[DecisionOracle, Tensor, Tensor]:
        """The batch's label oracle and each image's start: uniform noise redrawn until adversarial, then
        blended towards the input by binary search to the threshold ``theta``. Returns (oracle, start,
        found): rows of images without an adversarial draw hold the input, ``found`` (N,) says which have one."""
        x = batch.x
        oracle = DecisionOracle(batch.model, batch.y, batch.targets, self.max_queries, self.query_batch_size)
        noise, found = noise_init(oracle, x, self.init_trials, batch.generator)
        start = x.clone()
        idx = torch.nonzero(found).flatten()
        if idx.numel():
            start[idx], _ = boundary_search(oracle, x[idx], noise[idx], idx, "l2", theta, oracle.hi - oracle.lo)
        return oracle, start, found
