"""STRIP (Gao, Xu, Wang, Chen, Ranasinghe & Nepal 2019, "STRIP: A Defence Against Trojan Attacks on Deep
Neural Networks", ACSAC): catch backdoor-triggered inputs at run time.

Threat model: the served model may carry a backdoor (BadNets, blended triggers: an input-agnostic trigger
that makes the model answer the attacker's target whatever else the input shows). The defender holds a few
clean images of the task and queries the model; only its scores are read, so black-box models work too.

Idea: superimpose the input on ``n_perturb`` clean images drawn at random from the ones given to
:meth:`~.base.Detector.fit`. A clean input's content is mixed with another digit, so the predictions on the
copies vary and are uncertain; a triggered input keeps its trigger in every copy, and the trigger dominates,
so the model answers the target on all of them with confidence. With ``p_j`` the softmax of copy ``j``,

    H(x) = 1/n * sum_j  - sum_c p_j[c] * log2 p_j[c]          (bits; the paper's normalised entropy)
    score(x) = -H(x)                                           (higher = more suspicious),

and an input is flagged when its score is above the threshold that :meth:`~.base.Detector.calibrate` set on
held-out clean inputs (Gao et al. preset the false rejection rate at 1%: ``calibrate(x_clean, fpr=0.01)``;
the authors fit a normal distribution to the clean entropies, this takes the empirical quantile).

Superimposition (``superimpose``): ``"add"`` (default) is the authors' code, ``cv2.addWeighted(x, 1, x', 1, 0)``
— the pixel-wise sum — clipped to the model's bounds (their float images left [0, 1]; here every input
sent to a Classifier stays inside its bounds, which also keeps a remote guard answering). ``"blend"`` is the
common variant ``(x + x') / 2``: it halves the trigger too, and on the BadNets mnist-cnn at 1% FRR it flags
about 0.6 of triggered inputs where the sum flags 0.92 (``benchmarks/strip_eval.py``).

Draws: the ``n_perturb`` distinct clean images of an input are drawn by a ``torch.Generator`` seeded with a
keyed hash (BLAKE2b) of the input's float32 bytes, the key drawn at :meth:`fit` from ``generator`` or
``seed``. So an input's score depends on the input and the key only — not on the batch it came in, nor on
how often it was scored — and an attacker who does not know the key cannot predict the draws (``seed=None``:
a key from the operating system's entropy).

Cost: ``n_perturb`` forward passes per input (the paper uses N = 100). Fewer draws make the clean entropies
noisier, so at a low FRR the entropy threshold drops and fewer triggered inputs fall under it: on the BadNets
mnist-cnn at 1% FRR, 8 copies flag 81% of triggered inputs, 16 flag 90%, 32 (the default) 92%, 64 and 100
94% (``benchmarks/strip_eval.py``) — 32 keeps a CPU service usable at about 33 forward passes per input
(measured 28-46 times a plain forward pass, on a shared machine).
Copies of a batch go through the model together, in forward passes of ``batch_size * (n_perturb + 1)`` images.

Images only: inputs (N, C, H, W), fit images the same; scores (N,). Feature vectors are refused — the sum or
average of two tabular records is not a perturbation that keeps the records' meaning, and STRIP was not
designed or evaluated for it.

Adaptive evaluation: ``differentiable = False`` (the draws are a discrete function of the input). The
attacker's view (:meth:`~.base.Detector.attack_forward`) is the exact score with the draws of the current
iterate held fixed — each step a fresh sample of overlays, i.e. EOT with ``n_perturb`` samples (Athalye et
al. 2018) — and the clipping of the sum passed straight through (BPDA), so saturated pixels still carry a
gradient. For backdoors the adaptive attacker is the poisoner: one who adds covers to the poison — triggered
images superimposed on clean ones, labelled as the clean one — teaches the model that a superimposed trigger
means nothing, and STRIP then flags 0.5% of its triggered inputs at 1% FRR (``benchmarks/strip_eval.py``).
"""

from __future__ import annotations

import hashlib
import math
from typing import Literal

import torch
from torch import Tensor

from ...errors import UsageError
from ...models.base import Classifier
from ...seeding import make_generator
from ..sanitization.base import check_seed
from .base import Detector, register_detector

__all__ = ["STRIP", "mean_entropy", "overlay_indices", "superimpose"]

Superimpose = Literal["add", "blend"]
_MODES = ("add", "blend")


def overlay_indices(x: Tensor, key: bytes, n_pool: int, n_perturb: int) -> Tensor:
    """(N, n_perturb) int64: for each input of ``x`` (N, ...), ``n_perturb`` distinct indices in ``[0, n_pool)``
    drawn by a ``torch.Generator`` seeded with the BLAKE2b hash of the input's float32 bytes keyed by ``key``.

    >>> x = torch.zeros(2, 3)
    >>> idx = overlay_indices(x, b"k", 10, 4)
    >>> idx.shape, bool((idx[0] == idx[1]).all()), len(set(idx[0].tolist()))
    (torch.Size([2, 4]), True, 4)
    """
    rows = x.detach().to("cpu", torch.float32).contiguous().reshape(x.shape[0], -1).numpy()
    out = torch.empty(x.shape[0], n_perturb, dtype=torch.long)
    g = torch.Generator()
    for i, row in enumerate(rows):
        digest = hashlib.blake2b(row.tobytes(), digest_size=8, key=key).digest()
        g.manual_seed(int.from_bytes(digest, "little"))
        out[i] = torch.randperm(n_pool, generator=g)[:n_perturb]
    return out


def superimpose(
    x: Tensor, overlays: Tensor, bounds: tuple[float, float], mode: str = "add", *, straight_through: bool = False
) -> Tensor:
    """Each input of ``x`` (N, *S) superimposed on its overlays (N, P, *S): (N, P, *S), inside ``bounds``.

    ``"add"``: ``lo + (x - lo) + (x' - lo)`` clipped to ``bounds`` (the pixel-wise sum of Gao et al.'s code);
    ``"blend"``: ``(x + x') / 2``. ``straight_through``: the clipping's backward pass is the identity (BPDA).

    >>> superimpose(torch.tensor([[0.75, 0.25]]), torch.tensor([[[0.5, 0.5]]]), (0.0, 1.0)).tolist()
    [[[1.0, 0.75]]]
    >>> superimpose(torch.tensor([[0.75, 0.25]]), torch.tensor([[[0.5, 0.5]]]), (0.0, 1.0), "blend").tolist()
    [[[0.625, 0.375]]]
    """
    lo, hi = bounds
    base = x.unsqueeze(1)
    if mode == "blend":
        return 0.5 * (base + overlays)
    summed = base + overlays - lo
    clipped = summed.clamp(lo, hi)
    return summed + (clipped - summed).detach() if straight_through else clipped


def mean_entropy(probs: Tensor) -> Tensor:
    """Mean Shannon entropy in bits over the copies: ``probs`` (N, P, C) softmax rows -> (N,).

    >>> mean_entropy(torch.tensor([[[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0]]])).tolist()
    [1.0]
    """
    return torch.special.entr(probs).sum(dim=-1).mean(dim=-1) / math.log(2.0)


@register_detector("strip")
class STRIP(Detector):
    """Gao et al. 2019: minus the mean entropy of the model's softmax over ``n_perturb`` superimposed copies.

    Args:
        n_perturb: clean images each input is superimposed on (the paper: N = 100); at least 1, at most the
            number of images given to :meth:`fit`.
        superimpose: ``"add"`` (the authors' pixel-wise sum, clipped to the bounds) or ``"blend"`` (the
            average).
        batch_size: inputs per forward pass (each brings ``n_perturb`` copies).
        seed: seeds the key of the draws when ``generator`` is not given (``None``: a key nobody can predict).
        generator: a ``torch.Generator`` the key is drawn from at :meth:`fit` instead.

    ``fit(model, x, y)`` keeps ``x`` (N, C, H, W) — held-out clean images, never the ones calibrated on — as
    ``background_`` and draws ``key_``; the labels are not used. After :meth:`calibrate`: ``threshold_``,
    ``fpr_``, ``scale_``.
    """

    differentiable = False

    def __init__(
        self,
        *,
        n_perturb: int = 32,
        superimpose: Superimpose = "add",
        batch_size: int = 64,
        seed: int | None = 0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(batch_size=batch_size)
        if isinstance(n_perturb, bool) or not isinstance(n_perturb, int) or n_perturb < 1:
            raise UsageError(f"n_perturb must be an integer >= 1 (the paper uses 100), got {n_perturb!r}")
        if superimpose not in _MODES:
            raise UsageError(f"superimpose must be one of {', '.join(_MODES)}, got {superimpose!r}")
        check_seed(seed, generator)
        self.n_perturb = n_perturb
        self.superimpose = superimpose
        self.seed = seed
        self.generator = generator

    def _fit(self, model: Classifier, x: Tensor, y: Tensor) -> None:
        if x.dim() != 4:
            raise UsageError(
                f"STRIP superimposes images (N, C, H, W), but the inputs have shape {tuple(x.shape)}: it is not "
                "defined for feature vectors (the sum of two records is not a meaningful perturbation)"
            )
        if x.shape[0] < self.n_perturb:
            raise UsageError(
                f"STRIP draws n_perturb={self.n_perturb} distinct clean images per input, but fit got "
                f"{x.shape[0]}: pass at least {self.n_perturb} held-out clean images or a smaller n_perturb"
            )
        g = make_generator(self.seed, self.generator)
        self.key_ = bytes(torch.randint(0, 256, (16,), generator=g, dtype=torch.uint8, device=g.device).tolist())
        self.background_ = x.clone()

    def _forward(self, x: Tensor, straight_through: bool) -> tuple[Tensor, Tensor]:
        model = self.model_
        n, p = x.shape[0], self.n_perturb
        idx = overlay_indices(x, self.key_, self.background_.shape[0], p)
        overlays = self.background_.to(x.device)[idx.to(x.device)]  # (n, p, C, H, W)
        copies = superimpose(x, overlays, model.bounds, self.superimpose, straight_through=straight_through)
        z_all = model.logits(torch.cat([x, copies.reshape(n * p, *x.shape[1:])]))  # the input and its copies
        z, zc = z_all[:n], z_all[n:]
        probs = zc if model.output == "probabilities" else torch.softmax(zc, dim=1)
        return z, -mean_entropy(probs.reshape(n, p, -1)).to(x.dtype)

    def _logits_and_score(self, x: Tensor, *, bpda: bool) -> tuple[Tensor, Tensor]:
        return self._forward(x, straight_through=bpda)
