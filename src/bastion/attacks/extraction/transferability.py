"""How dangerous a stolen copy is: adversarial examples crafted on it, replayed on the victim (Papernot et al.
2017, section 5: the substitute's adversarial examples transfer to the oracle).

:func:`transferability` runs bastion's PGD (Linf, white-box) on the copy and reports the share of inputs the
victim classified correctly that the replayed examples fool, next to the same share for uniform random noise of
the same Linf size — the floor a transfer attack must beat to show the copy carries information about the victim.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ... import metrics
from ...errors import UsageError
from ...models.base import Classifier, validate_inputs
from ...seeding import make_generator
from ...threat import ThreatModel

__all__ = ["transferability"]


@torch.no_grad()
def transferability(
    victim: Classifier,
    stolen: Classifier,
    x: Tensor,
    y: Tensor,
    eps: float,
    *,
    steps: int = 40,
    seed: int | None = 0,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """Transfer PGD from ``stolen`` to ``victim`` on ``(x, y)`` at Linf radius ``eps``.

    Returns ``transfer_rate`` (the victim misclassifies the PGD example, among the inputs it got right),
    ``noise_rate`` (the same for ``x`` plus uniform noise in ``[-eps, eps]``, clipped to the bounds),
    ``copy_success_rate`` (PGD fooled the copy itself, among those inputs), ``victim_accuracy`` and ``n`` (inputs
    the victim got right). The victim is queried 3 * N times (clean, PGD, noise); never for gradients.
    """
    from ..evasion.pgd import PGD

    if not stolen.white_box:
        raise UsageError("transferability runs PGD on the stolen copy: it must be white-box (a torch model)")
    validate_inputs(victim, x, y)
    g = make_generator(seed, generator)
    pred = victim.predict(x)
    correct = pred == y
    with torch.enable_grad():
        result = PGD(eps=eps, norm="linf", steps=steps, generator=g)(stolen, x, y)
    threat = ThreatModel("linf", eps, victim.bounds)
    noise = threat.project(x, x + eps * (2 * torch.rand(x.shape, generator=g, dtype=x.dtype) - 1))
    fooled = victim.predict(result.x_adv) != y
    fooled_by_noise = victim.predict(noise) != y
    return {
        "transfer_rate": metrics.attack_success_rate(fooled, correct),
        "noise_rate": metrics.attack_success_rate(fooled_by_noise, correct),
        "copy_success_rate": metrics.attack_success_rate(result.success, correct),
        "victim_accuracy": metrics.accuracy(pred, y),
        "n": int(correct.sum()),
    }
