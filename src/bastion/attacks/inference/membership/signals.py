"""Per-record membership signals from a model's scores: pure functions, no model, no state.

Every function takes the scores a :class:`~bastion.models.Classifier` returned for a batch — logits (N, K),
or probabilities when ``output="probabilities"`` — and the true labels (N,), and returns one float64 value per
record. Higher means "more likely a training member" for :func:`confidence`, :func:`logit_confidence` and
the negated losses; :mod:`.threshold` turns each into an attack.

- :func:`log_probabilities` — log-softmax of logits, or the log of given probabilities (clipped at 1e-30);
- :func:`cross_entropy` — the per-record loss (Yeom et al. 2018 threshold it);
- :func:`confidence` — the true class's probability;
- :func:`logit_confidence` — LiRA's statistic (Carlini et al. 2022, Sec. IV-B): the logit-scaled confidence
  ``phi = log(p_y / (1 - p_y))``, computed stably as ``log p_y - log sum_{j != y} p_j`` (for logits:
  ``z_y - logsumexp_{j != y} z_j``), which makes the in/out distributions close to Gaussian;
- :func:`entropy`, :func:`modified_entropy` — Song & Mittal 2021 ("Systematic Evaluation of Privacy Risks of
  Machine Learning Models"): Mentr(p, y) = -(1 - p_y) log p_y - sum_{j != y} p_j log(1 - p_j), which, unlike
  the entropy, is low only when the model is confident *and right*.

    >>> import torch
    >>> z = torch.tensor([[2.0, 0.0, 0.0]])
    >>> round(float(logit_confidence(z, torch.tensor([0]))), 4)   # log(e^2 / (1 + 1))
    1.3069
"""

from __future__ import annotations

import torch
from torch import Tensor

from ....errors import UsageError

__all__ = ["confidence", "cross_entropy", "entropy", "log_probabilities", "logit_confidence", "modified_entropy"]

_TINY = 1e-30


def _check(scores: Tensor, y: Tensor | None) -> Tensor:
    if scores.dim() != 2:
        raise UsageError(f"scores must be (N, n_classes), got shape {tuple(scores.shape)}")
    if y is not None:
        if y.shape != scores.shape[:1]:
            raise UsageError(f"labels must be (N,) = ({scores.shape[0]},), got shape {tuple(y.shape)}")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= scores.shape[1]):
            raise UsageError(f"labels must lie in [0, {scores.shape[1] - 1}], got values up to {int(y.max())}")
    return scores.detach().double()


def log_probabilities(scores: Tensor, output: str = "logits") -> Tensor:
    """(N, K) log-probabilities: log-softmax of logits, or the clipped log of probabilities."""
    s = _check(scores, None)
    if output == "logits":
        return torch.log_softmax(s, dim=1)
    if output == "probabilities":
        return s.clamp_min(_TINY).log()
    raise UsageError(f"output must be 'logits' or 'probabilities', got {output!r}")


def cross_entropy(scores: Tensor, y: Tensor, output: str = "logits") -> Tensor:
    """(N,) the cross-entropy loss of each record."""
    _check(scores, y)
    return -log_probabilities(scores, output).gather(1, y.view(-1, 1)).squeeze(1)


def confidence(scores: Tensor, y: Tensor, output: str = "logits") -> Tensor:
    """(N,) the probability of the true class."""
    return (-cross_entropy(scores, y, output)).exp()


def logit_confidence(scores: Tensor, y: Tensor, output: str = "logits") -> Tensor:
    """(N,) ``log(p_y / (1 - p_y))`` computed without cancellation (LiRA's phi)."""
    _check(scores, y)
    logp = log_probabilities(scores, output)
    others = logp.scatter(1, y.view(-1, 1), float("-inf"))
    return logp.gather(1, y.view(-1, 1)).squeeze(1) - torch.logsumexp(others, dim=1)


def entropy(scores: Tensor, output: str = "logits") -> Tensor:
    """(N,) the Shannon entropy (nats) of each prediction."""
    logp = log_probabilities(scores, output)
    return -(logp.exp() * logp).sum(dim=1)


def modified_entropy(scores: Tensor, y: Tensor, output: str = "logits") -> Tensor:
    """(N,) Song & Mittal's modified entropy; low for a confident, correct prediction."""
    _check(scores, y)
    logp = log_probabilities(scores, output)
    p = logp.exp()
    log1mp = torch.log1p(-p.clamp(max=1 - 1e-16)).clamp_min(torch.log(torch.tensor(_TINY, dtype=p.dtype)))
    onehot = torch.zeros_like(p).scatter(1, y.view(-1, 1), 1.0).bool()
    own = -(1 - p) * logp  # -(1 - p_y) log p_y at the true class
    other = -p * log1mp  # -p_j log(1 - p_j) elsewhere
    return torch.where(onehot, own, other).sum(dim=1)
