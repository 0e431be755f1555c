"""One rule for every seeded component: an explicit generator wins, else a fresh one seeded from ``seed``, else
from the operating system's entropy (``seed=None``: a different draw every run). No global RNG is touched."""

from __future__ import annotations

import hashlib

import torch

__all__ = ["derive_seed", "make_generator"]


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


def derive_seed(seed: int, *parts: object, bits: int = 64) -> int:
    """A seed of ``bits`` bits derived from ``seed`` and ``parts`` (sha256 of their text): independent streams for
    the pieces of one seeded run (a shard, an input's noise) that do not depend on the order they are drawn in."""
    digest = hashlib.sha256(":".join(["bastion", str(int(seed)), *map(str, parts)]).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> (64 - bits)
