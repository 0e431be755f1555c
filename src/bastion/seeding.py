"""One rule for every seeded component: an explicit generator wins, else a fresh one seeded from ``seed``, else
from the operating system's entropy (``seed=None``: a different draw every run). No global RNG is touched."""

from __future__ import annotations

import hashlib

import torch

__all__ = ["derive_seed", "draw_seed", "make_generator"]


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


def draw_seed(generator: torch.Generator, device: torch.device | str | None = None) -> int:
    """A seed in [0, 2**31 - 1) drawn from ``generator`` (one ``randint`` draw, on ``device`` when the generator
    lives there): how a seeded component seeds one of its own (a copy's initialisation, a trainer's shuffling)."""
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=device))


def derive_seed(seed: int, *parts: object, bits: int = 64) -> int:
    """A seed of ``bits`` bits derived from ``seed`` and ``parts`` (sha256 of their text): independent streams for
    the pieces of one seeded run (a shard, an input's noise) that do not depend on the order they are drawn in."""
    digest = hashlib.sha256(":".join(["bastion", str(int(seed)), *map(str, parts)]).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> (64 - bits)
