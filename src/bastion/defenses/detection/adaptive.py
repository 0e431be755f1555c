"""An adaptive attack on a classifier with a detector in front (Carlini & Wagner 2017, "Adversarial
Examples Are Not Easily Detected: Bypassing Ten Detection Methods"; orthogonal PGD of Bryniarski,
Hingun, Pachuca, Wang & Carlini 2022, "Evading Adversarial Example Detection Defenses with Orthogonal
Projected Gradient Descent"; BPDA of Athalye, Carlini & Wagner 2018).

Threat model: white-box access to model *and* detector (its score, threshold and calibration scale),
an Lp ball of radius ``eps`` (linf or l2) intersected with the input bounds. The attack succeeds on an
input when the model misclassifies it (or predicts the target) **and** the detector score stays at or
below the threshold. Inputs (N, *input_shape), labels (N,), targets (N,) optional.

Two objectives, both maximised. With ``d(x) = (score(x) - threshold) / scale`` the detector's excess in
standard deviations of clean scores:

- classifier ``c(x)``: the Carlini-Wagner margin towards the adversarial class, capped at ``kappa``.
  When the detector compares the model's prediction on *views* of the input (feature squeezing's
  squeezed copies, through BPDA), ``c`` is the smallest margin over the input and its views towards
  one common class — the target, or the wrong class where that smallest margin is largest — so that
  every view agrees on the adversarial label (He et al. 2017's attack on ensembles of squeezers);
- detector ``r(x) = -relu(d(x) + delta)``: get ``delta`` standard deviations under the threshold.

Each step normalises both per-sample gradients to unit L2 norm and combines them by a *mode*;
restarts cycle through ``modes`` (on the inputs not yet successful):

- ``"lagrange"`` (C&W 2017's penalty, scale-free): ``g_c + lam_i * g_d`` with a multiplier per input
  that grows by 20% each step the input is detected and shrinks while it is undetected but not yet
  misclassified — C&W's search over the penalty constant, done on the fly;
- ``"classifier"``: ``g_c`` alone with the margin uncapped — high-confidence adversarial examples that
  fool every view (what beats feature squeezing: confident inputs on which the squeezers agree); the
  detector still decides success at every step, so this mode subsumes the non-adaptive attack;
- ``"orthogonal"`` (Bryniarski et al. 2022): not yet fooled — the classifier gradient with its
  component along the detector gradient removed; fooled but detected — the detector gradient with its
  component along the classifier gradient removed.

The step is the steepest ascent of the combination for the norm (sign for linf), of size
``step_size`` decayed linearly to a tenth. An input is done at the first iterate that is fooled *and*
undetected (checked on exact forward values at every step, including the last): that iterate is
returned, and with ``early_stop`` it leaves the batch. For a non-differentiable detector the gradients
come from its BPDA view (:meth:`~.base.Detector.attack_forward`: exact forward, straight-through
backward).

Call it on a :class:`~.detecting.DetectingClassifier`; ``success`` follows that class's convention (an
input the detector rejects is a failed attack; a clean input the system rejects is not clean-correct,
so it is outside ``success_rate``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ...attacks.base import Attack, AttackBatch, AttackResult, positive
from ...attacks.evasion.losses import as_logits, margin_loss
from ...attacks.evasion.steps import ascent_direction, random_start
from ...errors import UsageError
from ...models.base import Classifier
from .detecting import REJECT, DetectingClassifier

__all__ = ["DetectorAwarePGD"]

MODES = ("lagrange", "classifier", "orthogonal")
_GROWTH = 1.2


def _unit(g: Tensor) -> Tensor:
    flat = g.reshape(g.shape[0], -1)
    return g / flat.norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (g.dim() - 1)))


def _class_margins(z: Tensor) -> Tensor:
    """(N, C): z_j - max_{i != j} z_i for every class j (positive only for the predicted class)."""
    top2 = z.topk(2, dim=1).values
    other = torch.where(z >= top2[:, :1], top2[:, 1:2], top2[:, :1])
    return z - other


def _remove_component(g: Tensor, along: Tensor) -> Tensor:
    """``g`` minus its projection on ``along`` (per sample; ``along`` of unit norm or zero)."""
    dot = (g * along).reshape(g.shape[0], -1).sum(dim=1)
    return g - dot.view(-1, *([1] * (g.dim() - 1))) * along


@dataclass(kw_only=True, eq=False, repr=False)
class DetectorAwarePGD(Attack):
    """PGD against model + detector: fool the model and stay under the detector's threshold.

    Args:
        eps: radius of the ball; norm: 'linf' or 'l2'.
        steps: iterations per restart. step_size: initial per-step move (default 5 * eps / steps),
            decayed linearly to a tenth of it over the run.
        restarts: runs on the inputs not yet successful; their modes cycle through ``modes``. The
            first starts at the clean input unless ``random_start``, later ones at random points of
            the ball. The default, 3, runs each mode once.
        modes: any of 'lagrange', 'classifier', 'orthogonal', in the order to run them (see the module
            docstring).
        lam: initial multiplier of the detector direction in the 'lagrange' mode.
        kappa: classifier margin (logits) to reach before the classifier term stops pulling (not in the
            'classifier' mode, which is uncapped).
        delta: how many clean-score standard deviations under the threshold to aim for.
        early_stop: drop an input from the batch once it is fooled and undetected.
        random_start: start the first restart at a random point of the ball too.
    """

    name = "detector-aware-pgd"
    norms = ("linf", "l2")

    steps: int = positive(100, integer=True)
    step_size: float | None = positive(None)
    restarts: int = positive(3, integer=True)
    modes: Sequence[str] = MODES
    lam: float = positive(1.0)
    kappa: float = positive(5.0, allow_zero=True)
    delta: float = positive(0.25, allow_zero=True)
    early_stop: bool = True
    random_start: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        modes = self.modes
        modes_t = (modes,) if isinstance(modes, str) else tuple(modes)
        if not modes_t or any(m not in MODES for m in modes_t):
            raise UsageError(f"modes must name one or more of {', '.join(MODES)}, got {modes!r}")
        self.modes = modes_t
        self.early_stop = bool(self.early_stop)
        self.random_start = bool(self.random_start)

    def _alpha(self, eps: float, t: int) -> float:
        base = self.step_size if self.step_size is not None else 5.0 * eps / self.steps
        return base * (1.0 - 0.9 * t / max(self.steps - 1, 1))

    @staticmethod
    def _classifier_term(
        z: Tensor, views: list[Tensor], y: Tensor, t: Tensor | None, kappa: float
    ) -> tuple[Tensor, Tensor]:
        """(m, c), both (N,): m the C&W margin of the model on the input (> 0: fooled); c the classifier
        objective — the smallest margin over the input and its views towards one common adversarial
        class (the target, or the wrong class where that smallest margin is largest), capped at ``kappa``."""
        m = margin_loss(z, y, t)
        if not views:
            return m, m.clamp(max=kappa)
        margins = torch.stack([_class_margins(v) for v in [z, *views]], dim=0).amin(dim=0)  # (N, C)
        if t is not None:
            c = margins.gather(1, t[:, None]).squeeze(1)
        else:
            c = margins.masked_fill(F.one_hot(y, z.shape[1]).bool(), float("-inf")).amax(dim=1)
        return m, c.clamp(max=kappa)

    def _run(self, model: DetectingClassifier, batch: AttackBatch, mode: str, rand: bool) -> tuple[Tensor, Tensor]:
        x, y, t, threat = batch.x, batch.y, batch.targets, batch.threat
        det = model.detector
        thr, scale = float(det.threshold_), float(det.scale_)
        tol = 1e-4 * scale  # success needs a hair of room (batching changes the last bits of logits and scores)
        eps = threat.radius
        x_cur = threat.project(x, random_start(x, threat.norm, eps, batch.generator)) if rand else x.clone()
        best, done = x.clone(), torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        lam = torch.full((x.shape[0],), self.lam, device=x.device, dtype=x.dtype)
        active = torch.arange(x.shape[0], device=x.device)
        shape = (-1, *([1] * (x.dim() - 1)))
        for step in range(self.steps + 1):
            if active.numel() == 0:
                break
            xa = x_cur[active].requires_grad_(True)
            ya, ta = y[active], (t[active] if t is not None else None)
            z, s, views = det.attack_forward(xa)
            model.n_queries += int(active.numel())
            z, views = as_logits(z, model.output), [as_logits(v, model.output) for v in views]
            m, c = self._classifier_term(z, views, ya, ta, math.inf if mode == "classifier" else self.kappa)
            d = (s - thr) / scale
            with torch.no_grad():
                ok = (m > 1e-4) & (s <= thr - tol)
                if bool(ok.any()):
                    best[active[ok]] = xa.detach()[ok]
                    done[active[ok]] = True
            if step == self.steps:
                break
            r = -torch.relu(d + self.delta)
            need_d = mode != "classifier" and r.requires_grad
            (g_c,) = torch.autograd.grad(c.sum(), xa, retain_graph=need_d)
            g_d = torch.autograd.grad(r.sum(), xa)[0] if need_d else torch.zeros_like(xa)
            batch.budget.backward += (2 if need_d else 1) * int(active.numel())
            with torch.no_grad():
                u_c, u_d = _unit(g_c), _unit(g_d)
                if mode == "classifier":
                    g = u_c
                elif mode == "orthogonal":
                    fooled = (m > 0).view(shape)
                    g = torch.where(fooled, _remove_component(u_d, u_c), _remove_component(u_c, u_d))
                else:
                    la = lam[active]
                    g = u_c + la.view(shape) * u_d
                    # a Lagrange multiplier per input: up while detected, down while undetected but not fooled
                    lam[active] = torch.where(d > 0, la * _GROWTH, torch.where(m <= 0, la / _GROWTH, la))
                keep = ~ok if self.early_stop else torch.ones_like(ok)
                idx = active[keep]
                step_dir = ascent_direction(g[keep], threat.norm)
                x_cur[idx] = threat.project(x[idx], xa.detach()[keep] + self._alpha(eps, step) * step_dir)
                if self.early_stop:
                    active = idx
        best[~done] = x_cur[~done]  # the inputs not solved: the last iterate (fooled but flagged, or not fooled)
        return best, done

    def _attack(self, batch: AttackBatch) -> Tensor:
        model, x = batch.model, batch.x
        if not isinstance(model, DetectingClassifier):  # pragma: no cover - _check_model refuses it
            raise UsageError("DetectorAwarePGD attacks a DetectingClassifier")
        best = x.clone()
        done = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for r in range(self.restarts):
            todo = torch.nonzero(~done).flatten()
            if todo.numel() == 0:
                break
            mode = self.modes[r % len(self.modes)]
            cand, ok = self._run(model, batch.rows(todo), mode, r > 0 or self.random_start)
            if r == 0:
                best[todo] = cand  # the first run's last iterates for the inputs no restart solves
            best[todo[ok]] = cand[ok]
            done[todo[ok]] = True
        return best

    def _check_model(self, model: Classifier) -> None:
        if not isinstance(model, DetectingClassifier):
            raise UsageError(
                f"DetectorAwarePGD attacks a model with a detector in front: wrap them in "
                f"DetectingClassifier(model, detector), got {type(model).__name__}"
            )
        if not model.white_box:
            raise UsageError("DetectorAwarePGD needs gradients of the inner model: it must be white-box")

    def _finish(self, result: AttackResult) -> AttackResult:
        """``success``: fooled and not rejected (for clean-correct inputs); ``pred_adv``: the combination's
        labels (``REJECT`` = -1 where the detector fires); ``extra["rejected"]``: where it fired."""
        rejected = result.pred_adv == REJECT
        result.success = torch.where(result.clean_correct, result.success & ~rejected, result.success)
        result.extra["rejected"] = rejected
        return result
