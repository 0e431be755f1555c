"""Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks"), a port of the reference algorithm of ``fra31/auto-attack``.

Threat model: Linf or L2 ball of radius eps intersected with the input bounds. Inputs
(N, *input_shape), labels (N,). APGD is PGD with momentum (0.75) whose step size starts at
2 * eps and is halved at checkpoints p_j when either

1. the loss increased in at most a fraction ``rho`` of the steps since the last checkpoint, or
2. the step size was not reduced at the last checkpoint and the best loss has not improved since;

on halving, the iterate restarts from the point of best loss. The checkpoint interval starts at
0.22 * steps and shrinks by 0.03 * steps to at least 0.06 * steps. Every sample keeps its own
step size, best-loss point and the first adversarial point found (which is what is returned).
Condition 1 counts the increases f(x^(i+1)) > f(x^(i)) over the interval. At the first checkpoint
the reference code compares f(x^(1)) with 0 rather than with the loss at the random start (its loss
history has no entry for the start): this port does the same, so that with the same random start
it follows the reference's trajectory step for step (``tests/test_apgd.py`` checks it against the
vendored ``benchmarks/autoattack_apgd.py``).

- :class:`APGD` ("apgd-ce"): cross-entropy (or DLR with ``loss='dlr'``).
- :class:`APGDDLR` ("apgd-dlr"): the scale-invariant DLR loss.
- :class:`APGDT` ("apgd-t"): targeted DLR; without ``targets`` it runs once per each of the
  ``n_target_classes`` most likely wrong classes of the clean input and succeeds on any
  misclassification (AutoAttack's APGD-T); with ``targets`` it attacks those.

Only inputs the model still gets right (or, targeted, not yet on the target) are attacked;
``restarts`` re-run from new random starts on the samples not yet fooled. With
``early_stop=True`` a sample leaves the batch once adversarial, which changes nothing for the
others (each sample's trajectory is its own) and saves most of the cost on weak models.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ...errors import UsageError
from ..base import AttackBatch, positive, register
from .gradient import GradientAttack
from .steps import ascent_direction

__all__ = ["APGD", "APGDDLR", "APGDT"]


def _view(v: Tensor, like: Tensor) -> Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


def _sel(t: Tensor | None, idx: Tensor) -> Tensor | None:
    return t[idx] if t is not None else None


def _record(out: Tensor, found: Tensor, idx: Tensor, points: Tensor, fooled: Tensor) -> None:
    """Store the first adversarial point of each sample (rows ``idx`` of ``out``)."""
    new = fooled & ~found[idx]
    out[idx[new]], found[idx[new]] = points[new], True


def apgd_start(x: Tensor, norm: str, eps: float, generator: torch.Generator) -> Tensor:
    """The reference's random start: a uniform (linf) or Gaussian (l2) direction scaled to norm eps."""
    if norm == "linf":
        t = 2 * torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) - 1
        n = t.reshape(t.shape[0], -1).abs().amax(dim=1)
    else:
        t = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        n = t.reshape(t.shape[0], -1).norm(p=2, dim=1)
    return x + eps * t / _view(n + 1e-12, x)


@register("apgd-ce")
@dataclass(kw_only=True, eq=False, repr=False)
class APGD(GradientAttack):
    """Auto-PGD; Linf or L2.

    Args:
        eps: radius of the ball. norm: 'linf' or 'l2'.
        steps: iterations per run (the paper's N_iter = 100).
        restarts: runs from new random starts on the samples not yet fooled.
        loss: 'ce' (cross-entropy) or 'dlr' (difference of logits ratio); targeted variants are
            used when ``targets`` are passed.
        rho: the fraction of loss-increasing steps below which the step size is halved (0.75).
        early_stop: drop a sample from the batch once it is adversarial.
    """

    norms = ("linf", "l2")
    _losses = ("ce", "dlr")

    steps: int = positive(100, integer=True)
    restarts: int = positive(1, integer=True)
    rho: float = 0.75
    early_stop: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        rho = self.rho
        if not isinstance(rho, (int, float)) or not 0 < rho <= 1:
            raise UsageError(f"rho must be a number in (0, 1], got {rho!r}")
        self.rho = float(rho)
        self.early_stop = bool(self.early_stop)

    # -- one run -------------------------------------------------------------------------
    def _grad(self, batch: AttackBatch, xa: Tensor, loss_t: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """Per-sample loss towards ``loss_t``, its input gradient and whether each point is adversarial."""
        loss, g, z = self._loss_gradient(batch, xa, loss_t)
        return loss, g, batch.is_adversarial(z)

    def _run(self, batch: AttackBatch, loss_t: Tensor | None) -> tuple[Tensor, Tensor]:
        """One APGD run on every sample of the batch, with the loss towards ``loss_t`` and success as the batch
        defines it (its targets); returns (points, fooled): the first adversarial point where one was found,
        else the point of highest loss."""
        x, threat = batch.x, batch.threat
        n, eps, norm = x.shape[0], threat.radius, threat.norm
        k = max(int(0.22 * self.steps), 1)
        k_min, k_decr = max(int(0.06 * self.steps), 1), max(int(0.03 * self.steps), 1)
        out, found = x.clone(), torch.zeros(n, dtype=torch.bool, device=x.device)

        x_cur = threat.project(x, apgd_start(x, norm, eps, batch.generator))
        loss, grad, fooled = self._grad(batch, x_cur, loss_t)
        # per-sample state, kept compact: the rows of samples that leave the batch are dropped
        rows, lt = batch, loss_t
        st = {
            "idx": torch.arange(n, device=x.device),
            "cur": x_cur,
            "prev": x_cur.clone(),
            "grad": grad,
            "best": x_cur.clone(),
            "grad_best": grad.clone(),
            "loss_best": loss.clone(),
            "loss_best_last": loss.clone(),
            "step": torch.full((n,), 2 * eps, device=x.device, dtype=x.dtype),
            "reduced_last": torch.ones(n, dtype=torch.bool, device=x.device),
            "hist": torch.zeros(n, self.steps + 1, device=x.device, dtype=loss.dtype),
        }  # hist[:, i] = f(x^(i)) for i >= 1; hist[:, 0] = 0, as in the reference (see the module docstring)
        _record(out, found, st["idx"], x_cur, fooled)
        since_check = 0
        for i in range(self.steps):
            if self.early_stop and bool(fooled.any()):
                keep = ~fooled
                st = {key: v[keep] for key, v in st.items()}
                rows, lt = rows.rows(keep), _sel(lt, keep)
                if st["idx"].numel() == 0:
                    break
            x0, xc, sz = rows.x, st["cur"], st["step"]
            # momentum step: z = P(x + eta d), x' = P(x + a (z - x) + (1 - a) (x - x_prev))
            a = 0.75 if i > 0 else 1.0
            z = threat.project(x0, xc + _view(sz, xc) * ascent_direction(st["grad"], norm))
            xn = threat.project(x0, xc + a * (z - xc) + (1 - a) * (xc - st["prev"]))
            lo, g, fooled = self._grad(rows, xn, lt)
            _record(out, found, st["idx"], xn, fooled)
            st["prev"], st["cur"], st["grad"] = xc, xn, g
            hist, loss_best = st["hist"], st["loss_best"]
            hist[:, i + 1] = lo
            up = lo > loss_best
            st["best"][up], st["grad_best"][up], loss_best[up] = xn[up], g[up], lo[up]

            since_check += 1
            if since_check == k:  # checkpoint p_j
                h = hist[:, i + 1 - k : i + 2]
                oscillating = (h[:, 1:] > h[:, :-1]).sum(dim=1).to(x.dtype) <= self.rho * k
                stalled = ~st["reduced_last"] & (st["loss_best_last"] >= loss_best)
                reduce = oscillating | stalled
                st["reduced_last"], st["loss_best_last"] = reduce, loss_best.clone()
                sz[reduce] /= 2
                xn[reduce], g[reduce] = st["best"][reduce], st["grad_best"][reduce]
                k, since_check = max(k - k_decr, k_min), 0
        keep = ~found[st["idx"]]
        out[st["idx"][keep]] = st["best"][keep]
        return out, found

    # -- restarts and targets ------------------------------------------------------------
    def _runs(self, batch: AttackBatch, loss_t: Tensor | None, fooled: Tensor, out: Tensor) -> None:
        """``restarts`` runs on the samples not yet fooled; updates ``fooled`` and ``out`` in place."""
        for _ in range(self.restarts):
            todo = torch.nonzero(~fooled).flatten()
            if todo.numel() == 0:
                return
            cand, f = self._run(batch.rows(todo), _sel(loss_t, todo))
            out[todo] = cand  # adversarial points, and the latest best-loss points of the rest
            fooled[todo[f]] = True

    def _attack(self, batch: AttackBatch) -> Tensor:
        with torch.no_grad():
            fooled = batch.is_adversarial(batch.model.logits(batch.x))
        out = batch.x.clone()
        self._runs(batch, batch.targets, fooled, out)
        return out


@register("apgd-dlr")
@dataclass(kw_only=True, eq=False, repr=False)
class APGDDLR(APGD):
    """Auto-PGD on the DLR loss (``APGD(loss='dlr')``); same arguments as :class:`APGD` but ``loss``."""

    loss: str = field(default="dlr", init=False)


@register("apgd-t")
@dataclass(kw_only=True, eq=False, repr=False)
class APGDT(APGDDLR):
    """Targeted Auto-PGD on the targeted DLR loss -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2).

    Without ``targets``, each of the ``n_target_classes`` highest-scoring wrong classes of the
    clean input (capped at n_classes - 1) is tried in turn, with ``restarts`` runs each, on the
    samples not yet misclassified; success is misclassification. With ``targets``, those targets
    are attacked and success means predicting them. Needs at least 4 classes.
    """

    n_target_classes: int = positive(9, integer=True)

    def _attack(self, batch: AttackBatch) -> Tensor:
        model, x = batch.model, batch.x
        if model.n_classes < 4:
            raise UsageError("APGD-T's targeted DLR loss needs at least 4 classes; use APGD (apgd-ce) instead")
        if batch.targets is not None:
            return super()._attack(batch)
        with torch.no_grad():
            z0 = model.logits(x)
        fooled = batch.is_adversarial(z0)
        order = z0.argsort(dim=1, descending=True)
        out = x.clone()
        for rank in range(1, min(self.n_target_classes, model.n_classes - 1) + 1):
            self._runs(batch, order[:, rank], fooled, out)
        return out
