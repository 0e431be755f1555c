"""One rule for every seeded component: an explicit generator wins, else a fresh one seeded from ``seed``, else
from the operating system's entropy (``seed=None``: a different draw every run). No global RNG is touched."""

from __future__ import annotations

import torch

__all__ = ["make_generator"]


def make_generator(
    seed: int | None, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
) -> torch.Generator:
    """``generator`` if given, else a new generator on ``device`` seeded with ``seed`` (``None``: nondeterministic)."""
    if generator is not None:
        return generator
    g = torch.Generator(device=device)
    if seed is None:
        g.seed()
    else:
        g.manual_seed(int(seed))
    return g
