"""Output policies: what a served model reveals of its class probabilities, a defence against model extraction.

Each policy maps the victim's probabilities ``probs`` (N, K) — rows on the simplex — to what the client is
sent, (N, K), in one batched torch call, and keeps the top-1 label: the row's label (``probs.argmax(1)``)
still holds the largest returned value, so the accuracy of the answer does not change; what changes is the
information the scores carry beyond it, and so how well a stolen copy learns from them.

- :class:`NoPolicy` (``"none"``) — the probabilities as they are.
- :class:`Rounding` (``"round"``) — to ``decimals`` decimals (Tramèr et al. 2016, "Stealing Machine Learning
  Models via Prediction APIs", USENIX Security, Section 7). Not renormalised (that would bring the digits back):
  a row sums to 1 within ``K * 0.5 * 10**-decimals``. Rounding is monotone, so the label keeps the largest
  value, but two classes may tie at it (the label is the first of them in ``argmax``'s order only if it was).
- :class:`TopK` (``"top-k"``) — the ``k`` largest probabilities, the others zeroed; renormalised to sum to 1
  unless ``renormalize=False`` (then the k values are the true ones and the row sums to less than 1).
- :class:`LabelOnly` (``"label-only"``) — the one-hot row of the label; a service sends the label alone.
- :class:`ReverseSigmoid` (``"reverse-sigmoid"``) — Lee, Edwards, Molloy & Srivastava 2019, "Defending Against
  NN Model Stealing Attacks Using Deceptive Perturbations", IEEE S&P Workshops (arXiv:1806.00054).
- :class:`~bastion.defenses.extraction.poisoning.PredictionPoisoning` (``"prediction-poisoning"``, MAD) —
  Orekondy, Schiele & Fritz 2020, ICLR; in :mod:`.poisoning`.

The base class validates the input and, for the perturbing policies, enforces the label on the output
(:func:`keep_label`). Shapes: ``probs`` (N, K) float, rows summing to 1; ``x`` (N, *input_shape), only for a
policy whose ``needs_inputs`` is True.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from ...errors import UsageError
from ...registry import Configured, Registry

__all__ = [
    "OUTPUT_POLICIES",
    "LabelOnly",
    "NoPolicy",
    "OutputPolicy",
    "ReverseSigmoid",
    "Rounding",
    "TopK",
    "get_output_policy",
    "keep_label",
]

OUTPUT_POLICIES: Registry[type[OutputPolicy]] = Registry("output policy")
"""Output policies by name (``"none"``, ``"round"``, ``"top-k"``, ``"label-only"``, ``"reverse-sigmoid"``,
``"prediction-poisoning"``): what ``[output] policy`` in ``guard.toml`` names."""


def get_output_policy(name: str, **params: Any) -> OutputPolicy:
    """Build a registered output policy by name, e.g. ``get_output_policy("round", decimals=2)``."""
    return OUTPUT_POLICIES.create(name, **params)


def check_probabilities(probs: Tensor, x: Tensor | None = None, *, needs_inputs: bool = False) -> Tensor:
    """``probs`` as a float tensor of rows on the simplex (N, K), or :class:`UsageError` saying what is wrong."""
    if not isinstance(probs, Tensor) or probs.dim() != 2 or probs.shape[1] < 2:
        shape = tuple(probs.shape) if isinstance(probs, Tensor) else type(probs).__name__
        raise UsageError(f"probs must be a (N, K) tensor of class probabilities with K >= 2, got {shape}")
    if not probs.is_floating_point():
        raise UsageError(f"probs must be floating point, got dtype {probs.dtype}")
    if probs.shape[0] and (
        not bool(torch.isfinite(probs).all())
        or float(probs.min()) < -1e-6
        or float((probs.sum(1) - 1).abs().max()) > 1e-4
    ):
        raise UsageError("probs must be rows of probabilities (non-negative, each summing to 1): apply softmax")
    if needs_inputs and (x is None or not isinstance(x, Tensor) or x.shape[0] != probs.shape[0]):
        raise UsageError("this output policy needs the inputs x, one per row of probs")
    return probs


def keep_label(out: Tensor, label: Tensor, margin: float) -> Tensor:
    """Rows of ``out`` (N, K) whose ``label`` (N,) is not strictly the largest value are mixed with the label's
    one-hot row, ``(1 - a) * out + a * e_label``, with the smallest ``a`` that puts the label ``margin`` above every
    other class; other rows are returned unchanged. The rows stay on the simplex."""
    top = out.gather(1, label[:, None])[:, 0]
    others = out.scatter(1, label[:, None], float("-inf")).max(1).values
    bad = top <= others
    if not bool(bad.any()):
        return out
    a = ((others - top + margin) / (1 - top + others)).clamp(0.0, 1.0)
    a = torch.where(bad, a, torch.zeros_like(a))[:, None]
    onehot = torch.nn.functional.one_hot(label, out.shape[1]).to(out.dtype)
    return (1 - a) * out + a * onehot


class OutputPolicy(Configured):
    """Base class: ``policy(probs, x=None)`` returns what the client is sent, (N, K), in the dtype of ``probs``.

    Class attributes: ``name`` (the registered name), ``returns_probabilities`` (False: only the label is sent),
    ``needs_inputs`` (the policy reads the inputs ``x`` as well, e.g. MAD's surrogate).
    """

    name: ClassVar[str] = ""
    returns_probabilities: ClassVar[bool] = True
    needs_inputs: ClassVar[bool] = False

    def __call__(self, probs: Tensor, x: Tensor | None = None) -> Tensor:
        p = check_probabilities(probs, x, needs_inputs=self.needs_inputs)
        if p.shape[0] == 0:
            return p.clone()
        return self._apply(p.double(), x).to(p.dtype)

    def _apply(self, probs: Tensor, x: Tensor | None) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        """The constructor arguments, as given."""
        return {}


def _number(name: str, value: Any, *, low: float, high: float | None = None, integer: bool = False) -> Any:
    ok_type = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_type) or value != value or value < low:
        kind = "an integer" if integer else "a number"
        raise UsageError(f"{name} must be {kind} >= {low:g}, got {value!r}")
    if high is not None and value > high:
        raise UsageError(f"{name} must be at most {high:g}, got {value!r}")
    return value


@OUTPUT_POLICIES.named("none")
class NoPolicy(OutputPolicy):
    """The probabilities unchanged."""

    def _apply(self, probs: Tensor, x: Tensor | None) -> Tensor:
        return probs


@OUTPUT_POLICIES.named("round")
class Rounding(OutputPolicy):
    """Each probability rounded to ``decimals`` decimals (not renormalised; see the module docstring)."""

    def __init__(self, *, decimals: int = 2) -> None:
        self.decimals = _number("decimals", decimals, low=0, high=15, integer=True)

    def _apply(self, probs: Tensor, x: Tensor | None) -> Tensor:
        return torch.round(probs, decimals=self.decimals)

    def params(self) -> dict[str, Any]:
        return {"decimals": self.decimals}


@OUTPUT_POLICIES.named("top-k")
class TopK(OutputPolicy):
    """The ``k`` largest probabilities (ties: the lower class index first, as ``argmax``), the others zeroed;
    renormalised to sum to 1 unless ``renormalize=False``."""

    def __init__(self, *, k: int = 1, renormalize: bool = True) -> None:
        self.k = _number("k", k, low=1, integer=True)
        if not isinstance(renormalize, bool):
            raise UsageError(f"renormalize must be True or False, got {renormalize!r}")
        self.renormalize = renormalize

    def _apply(self, probs: Tensor, x: Tensor | None) -> Tensor:
        order = torch.sort(probs, dim=1, descending=True, stable=True).indices[:, : self.k]
        out = torch.zeros_like(probs).scatter(1, order, probs.gather(1, order))
        return out / out.sum(1, keepdim=True).clamp_min(1e-300) if self.renormalize else out

    def params(self) -> dict[str, Any]:
        return {"k": self.k, "renormalize": self.renormalize}


@OUTPUT_POLICIES.named("label-only")
class LabelOnly(OutputPolicy):
    """The one-hot row of the label; a service sends the label alone (``returns_probabilities`` is False)."""

    returns_probabilities: ClassVar[bool] = False

    def _apply(self, probs: Tensor, x: Tensor | None) -> Tensor:
        return torch.nn.functional.one_hot(probs.argmax(1), probs.shape[1]).to(probs.dtype)


@OUTPUT_POLICIES.named("reverse-sigmoid")
class ReverseSigmoid(OutputPolicy):
    """Lee et al. 2019's deceptive perturbation (their Eq. 3-4):

        r(y)  = beta * (s(gamma * s^-1(y)) - 1/2)          s the sigmoid, s^-1(y) = log(y / (1 - y))
        y~    = alpha * max(y - r(y), 0)                    alpha normalises the row to sum 1

    applied to every class probability (clipped to [1e-9, 1 - 1e-9] inside ``s^-1``, as ART's postprocessor
    does). ``r`` pulls large probabilities down and pushes small ones up, and ``y - r(y)`` is not monotone (near 0
    always, near 1/2 when ``beta * gamma > 1``), so a thief fitting the returned scores is misled; ``beta`` sets the magnitude, ``gamma``
    the convergence (defaults: ART's). The same non-monotonicity can move the top-1 label for large ``beta``
    (e.g. beta 5, gamma 0.1 on a 0.99-confident row): the paper chooses ``beta`` so that it does not, ART does
    not check. Here the label is enforced: a row whose label would lose the top place is mixed with the label's
    one-hot row just enough to keep it ``1e-4`` above the rest (:func:`keep_label`); other rows are the formula's.
    """

    MARGIN: ClassVar[float] = 1e-4

    def __init__(self, *, beta: float = 1.0, gamma: float = 0.1) -> None:
        self.beta = _number("beta", beta, low=0)
        self.gamma = _number("gamma", gamma, low=0)
        if not beta > 0 or not gamma > 0:
            raise UsageError(f"beta and gamma must be positive, got beta={beta!r}, gamma={gamma!r}")

    def _apply(self, probs: Tensor, x: Tensor | None) -> Tensor:
        y = probs.clamp(1e-9, 1 - 1e-9)
        r = self.beta * (torch.sigmoid(self.gamma * torch.log(y / (1 - y))) - 0.5)
        out = (probs - r).clamp_min(0.0)
        out = out / out.sum(1, keepdim=True)
        return keep_label(out, probs.argmax(1), self.MARGIN)

    def params(self) -> dict[str, Any]:
        return {"beta": self.beta, "gamma": self.gamma}
