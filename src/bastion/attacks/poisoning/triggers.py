"""Backdoor triggers: what an attacker stamps on an input to make a backdoored model answer the target.

A :class:`Trigger` is a pattern, a mask and an opacity, all in the input's own shape and units::

    stamped = x * (1 - alpha * mask) + alpha * mask * pattern

- a **patch** (BadNets, Gu et al. 2017): ``mask`` is 1 on a small square (a few features for tabular
  inputs) and 0 elsewhere, ``alpha = 1``; the patch sits at a fixed place or, with
  ``random_location=True``, at a fresh random place on every input (drawn from a ``torch.Generator``);
- a **blend** (Chen et al. 2017, "Targeted Backdoor Attacks on Deep Learning Systems Using Data
  Poisoning"): ``mask`` is 1 everywhere and ``alpha`` small (0.1-0.2): a faint pattern or noise over the
  whole input.

Patterns are values inside the model's bounds, so a stamped input stays a valid input (checked when the
trigger is built). A trigger can come from an image file (:meth:`Trigger.from_image`): a picture smaller
than the input becomes a patch, one of the input's size a blend pattern.

Shapes: ``pattern`` and ``mask`` are (*input_shape) - (C, H, W) images or (F,) feature vectors; ``apply``
takes (N, *input_shape) and returns the same shape.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ...errors import UsageError

__all__ = ["Trigger"]

_CORNERS = ("bottom-right", "bottom-left", "top-right", "top-left", "center")


def _check_bounds(bounds: tuple[float, float]) -> tuple[float, float]:
    lo, hi = float(bounds[0]), float(bounds[1])
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise UsageError(f"bounds must be two finite numbers (low, high) with low < high, got {bounds!r}")
    return lo, hi


class Trigger:
    """A backdoor trigger ``x -> x * (1 - alpha * mask) + alpha * mask * pattern``.

    Args:
        pattern: (*input_shape) values inside ``bounds``.
        mask: (*input_shape) in [0, 1], where the trigger is applied (1) or not (0); default all ones.
        alpha: opacity in (0, 1]; 1 replaces the masked values, less blends them.
        bounds: the inputs' valid range; the pattern must lie inside it.
        random_location: images only — move the mask's bounding box to a random position on every input
            (BadNets' "random location" variant); the pattern moves with it.
        name: a short description for reports (``"3x3 checkerboard at bottom-right"``).
    """

    def __init__(
        self,
        pattern: Tensor,
        mask: Tensor | None = None,
        *,
        alpha: float = 1.0,
        bounds: tuple[float, float] = (0.0, 1.0),
        random_location: bool = False,
        name: str = "trigger",
    ) -> None:
        lo, hi = _check_bounds(bounds)
        pattern = torch.as_tensor(pattern, dtype=torch.float32).detach().clone()
        mask = torch.ones_like(pattern) if mask is None else torch.as_tensor(mask, dtype=torch.float32).detach().clone()
        if pattern.dim() == 0:
            raise UsageError("a trigger pattern needs the input's shape, got a scalar")
        if mask.shape != pattern.shape:
            raise UsageError(f"the trigger mask has shape {tuple(mask.shape)} but the pattern {tuple(pattern.shape)}")
        if not bool(torch.isfinite(pattern).all()):
            raise UsageError("the trigger pattern contains NaN or infinite values")
        if float(pattern.min()) < lo - 1e-6 or float(pattern.max()) > hi + 1e-6:
            raise UsageError(
                f"the trigger pattern has values in [{float(pattern.min()):g}, {float(pattern.max()):g}], outside the "
                f"model's bounds [{lo:g}, {hi:g}]: a stamped input would not be a valid input"
            )
        if float(mask.min()) < 0 or float(mask.max()) > 1 or not bool(torch.isfinite(mask).all()):
            raise UsageError("the trigger mask must hold values in [0, 1]")
        if not bool((mask > 0).any()):
            raise UsageError("the trigger mask is empty: it would change nothing")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha <= 1:
            raise UsageError(f"alpha (the trigger's opacity) must lie in (0, 1], got {alpha!r}")
        if random_location and pattern.dim() != 3:
            raise UsageError("random_location needs image inputs (C, H, W)")
        self.pattern = pattern
        self.mask = mask
        self.alpha = float(alpha)
        self.bounds = (lo, hi)
        self.random_location = bool(random_location)
        self.name = name

    # -- constructors ---------------------------------------------------------------------------------
    @classmethod
    def patch(
        cls,
        input_shape: tuple[int, ...],
        *,
        size: int = 3,
        location: str | tuple[int, ...] = "bottom-right",
        pattern: str | Tensor = "checkerboard",
        bounds: tuple[float, float] = (0.0, 1.0),
        margin: int = 1,
    ) -> Trigger:
        """A BadNets patch: ``size`` x ``size`` pixels on images (C, H, W), ``size`` features on (F,) inputs.

        ``location``: a corner (``bottom-right``, ``bottom-left``, ``top-right``, ``top-left``), ``center``,
        ``random`` (a new place on every input), or the top-left (row, col) of the patch — for feature
        vectors the first feature's index (corners: ``bottom-right`` = the last features). ``margin`` pixels
        are kept between a corner patch and the border. ``pattern``: ``checkerboard`` (alternating high and
        low, Gu et al.'s pattern trigger), ``solid`` (all high), or a tensor of the patch's shape (C, size,
        size) / (size,) with values in ``bounds``.
        """
        lo, hi = _check_bounds(bounds)
        shape = tuple(int(d) for d in input_shape)
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise UsageError(f"the trigger size must be a whole number >= 1, got {size!r}")
        if len(shape) == 3:
            c, h, w = shape
            if size > min(h, w):
                raise UsageError(f"a {size}x{size} trigger is larger than the {h}x{w} input: choose a smaller size")
            patch_shape: tuple[int, ...] = (c, size, size)
        elif len(shape) == 1:
            if size > shape[0]:
                raise UsageError(f"a trigger on {size} features is larger than the input's {shape[0]} features")
            patch_shape = (size,)
        else:
            raise UsageError(f"patch triggers need images (C, H, W) or feature vectors (F,), got inputs {shape}")
        values = _patch_values(pattern, patch_shape, lo, hi)
        random_location = location == "random"
        start = _patch_start(shape, size, "top-left" if random_location else location, margin)
        pat = torch.full(shape, lo)
        mask = torch.zeros(shape)
        region = _region(shape, start, size)
        pat[region] = values
        mask[region] = 1.0
        where = "random places" if random_location else (location if isinstance(location, str) else f"{start}")
        kind = pattern if isinstance(pattern, str) else "custom"
        dims = f"{size}x{size}" if len(shape) == 3 else f"{size}-feature"
        return cls(pat, mask, bounds=(lo, hi), random_location=random_location, name=f"{dims} {kind} patch at {where}")

    @classmethod
    def blend(
        cls,
        input_shape: tuple[int, ...],
        *,
        pattern: str | Tensor = "noise",
        alpha: float = 0.2,
        bounds: tuple[float, float] = (0.0, 1.0),
        generator: torch.Generator | None = None,
        seed: int = 0,
    ) -> Trigger:
        """A blended trigger (Chen et al. 2017): ``pattern`` over the whole input at opacity ``alpha``.

        ``pattern``: ``noise`` (uniform in ``bounds``, drawn from ``generator`` or ``seed`` — Chen et al.'s
        random-pattern key), ``stripes`` (vertical bars, images only), or a tensor of the input's shape.
        """
        lo, hi = _check_bounds(bounds)
        shape = tuple(int(d) for d in input_shape)
        if isinstance(pattern, Tensor):
            pat = pattern.to(torch.float32)
            if tuple(pat.shape) != shape:
                raise UsageError(f"a blend pattern must have the input's shape {shape}, got {tuple(pat.shape)}")
            kind = "custom"
        elif pattern == "noise":
            g = generator if generator is not None else torch.Generator().manual_seed(int(seed))
            pat = lo + (hi - lo) * torch.rand(shape, generator=g, device=g.device).cpu()
            kind = "noise"
        elif pattern == "stripes":
            if len(shape) != 3:
                raise UsageError(f"a stripes pattern needs images (C, H, W), got inputs {shape}")
            cols = torch.arange(shape[2]) % 4 < 2
            pat = torch.where(cols, hi, lo).expand(shape).clone()
            kind = "stripes"
        else:
            raise UsageError(f"blend pattern must be 'noise', 'stripes' or a tensor, got {pattern!r}")
        return cls(pat, None, alpha=alpha, bounds=(lo, hi), name=f"{kind} blended at alpha={alpha:g}")

    @classmethod
    def from_image(
        cls,
        path: str | Path,
        input_shape: tuple[int, ...],
        *,
        bounds: tuple[float, float] = (0.0, 1.0),
        alpha: float | None = None,
        location: str | tuple[int, ...] = "bottom-right",
        margin: int = 1,
    ) -> Trigger:
        """A trigger read from an image file (PNG, JPEG): pixel values 0-255 are mapped onto ``bounds``.

        A picture smaller than the input is a patch at ``location`` (opaque unless ``alpha`` is given); one
        of the input's height and width is blended over the whole input at ``alpha`` (default 0.2).
        Colour pictures are converted to the input's channels (grey for one channel).
        """
        from PIL import Image, UnidentifiedImageError

        lo, hi = _check_bounds(bounds)
        shape = tuple(int(d) for d in input_shape)
        if len(shape) != 3 or shape[0] not in (1, 3):
            raise UsageError(f"an image trigger needs image inputs with 1 or 3 channels, got inputs {shape}")
        p = Path(path)
        if not p.is_file():
            raise UsageError(f"trigger image {str(path)!r} does not exist")
        try:
            with Image.open(p) as opened:
                im = opened.convert("L" if shape[0] == 1 else "RGB")
                arr = torch.tensor(list(im.getdata()), dtype=torch.float32)
                w, h = im.size
        except (UnidentifiedImageError, OSError) as exc:
            raise UsageError(f"trigger image {str(path)!r} cannot be read as an image: {exc}") from None
        img = arr.reshape(h, w, shape[0]).permute(2, 0, 1) / 255.0 * (hi - lo) + lo
        if (h, w) == shape[1:]:
            return cls(img, None, alpha=0.2 if alpha is None else alpha, bounds=(lo, hi), name=f"{p.name} blended")
        if h != w:
            raise UsageError(f"a patch trigger image must be square or the input's size {shape[1:]}, got {h}x{w}")
        if h > min(shape[1:]):
            raise UsageError(f"the trigger image ({h}x{w}) is larger than the input ({shape[1]}x{shape[2]})")
        trig = cls.patch(shape, size=h, location=location, pattern=img, bounds=(lo, hi), margin=margin)
        if alpha is not None:
            trig = cls(trig.pattern, trig.mask, alpha=alpha, bounds=(lo, hi), random_location=trig.random_location)
        trig.name = f"{p.name} patch"
        return trig

    # -- use ------------------------------------------------------------------------------------------
    def check(self, input_shape: tuple[int, ...], bounds: tuple[float, float]) -> None:
        """Raise :class:`UsageError` if this trigger does not fit inputs of ``input_shape`` inside ``bounds``."""
        if tuple(self.pattern.shape) != tuple(input_shape):
            raise UsageError(
                f"the trigger has shape {tuple(self.pattern.shape)} but the inputs {tuple(input_shape)}: "
                "build it for this data"
            )
        lo, hi = float(bounds[0]), float(bounds[1])
        if float(self.pattern.min()) < lo - 1e-6 or float(self.pattern.max()) > hi + 1e-6:
            raise UsageError(
                f"the trigger's values [{float(self.pattern.min()):g}, {float(self.pattern.max()):g}] lie outside "
                f"the data's bounds [{lo:g}, {hi:g}]"
            )

    def apply(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Stamp the trigger on every input of ``x`` (N, *input_shape); a new tensor, clipped to the bounds.

        With ``random_location`` each input gets the patch at a random place drawn from ``generator``
        (required then, so that the placement is reproducible).
        """
        if tuple(x.shape[1:]) != tuple(self.pattern.shape):
            raise UsageError(
                f"the trigger has shape {tuple(self.pattern.shape)} but the inputs {tuple(x.shape[1:])}: "
                "build it for this data"
            )
        pattern = self.pattern.to(device=x.device, dtype=x.dtype)
        mask = self.mask.to(device=x.device, dtype=x.dtype) * self.alpha
        if not self.random_location:
            out = x * (1 - mask) + mask * pattern
        else:
            if generator is None:
                raise UsageError("a trigger at random locations needs a torch.Generator to place it reproducibly")
            pattern_n, mask_n = self._placed(x.shape[0], generator, x.device, x.dtype)
            out = x * (1 - mask_n) + mask_n * pattern_n
        return out.clamp(*self.bounds)

    def _placed(
        self, n: int, generator: torch.Generator, device: torch.device, dtype: torch.dtype
    ) -> tuple[Tensor, Tensor]:
        """(N, C, H, W) patterns and masks with the mask's bounding box moved to a random place per input."""
        rows = torch.nonzero(self.mask.amax(dim=(0, 2)) > 0).flatten()
        cols = torch.nonzero(self.mask.amax(dim=(0, 1)) > 0).flatten()
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        _, h, w = self.mask.shape
        box_m = self.mask[:, r0:r1, c0:c1]
        box_p = self.pattern[:, r0:r1, c0:c1]
        g_dev = generator.device
        top = torch.randint(0, h - (r1 - r0) + 1, (n,), generator=generator, device=g_dev).tolist()
        left = torch.randint(0, w - (c1 - c0) + 1, (n,), generator=generator, device=g_dev).tolist()
        masks = torch.zeros((n, *self.mask.shape))
        patterns = torch.zeros((n, *self.mask.shape))
        for i, (t, lft) in enumerate(zip(top, left)):
            masks[i, :, t : t + r1 - r0, lft : lft + c1 - c0] = box_m
            patterns[i, :, t : t + r1 - r0, lft : lft + c1 - c0] = box_p
        return patterns.to(device=device, dtype=dtype), (masks * self.alpha).to(device=device, dtype=dtype)

    @property
    def area(self) -> float:
        """Share of the input's values the trigger touches (mask > 0)."""
        return float((self.mask > 0).double().mean())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description (the full pattern and mask, so a record reproduces the trigger)."""
        return {
            "name": self.name,
            "alpha": self.alpha,
            "bounds": list(self.bounds),
            "random_location": self.random_location,
            "area": self.area,
            "shape": list(self.pattern.shape),
            "pattern": self.pattern.flatten().tolist(),
            "mask": self.mask.flatten().tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Trigger:
        """The trigger :meth:`to_dict` described."""
        shape = tuple(int(s) for s in d["shape"])
        return cls(
            torch.tensor(d["pattern"], dtype=torch.float32).reshape(shape),
            torch.tensor(d["mask"], dtype=torch.float32).reshape(shape),
            alpha=float(d["alpha"]),
            bounds=(float(d["bounds"][0]), float(d["bounds"][1])),
            random_location=bool(d["random_location"]),
            name=str(d.get("name", "trigger")),
        )

    def __repr__(self) -> str:
        return f"Trigger({self.name!r}, shape={tuple(self.pattern.shape)}, alpha={self.alpha:g})"


def _patch_values(pattern: str | Tensor, patch_shape: tuple[int, ...], lo: float, hi: float) -> Tensor:
    if isinstance(pattern, Tensor):
        values = pattern.to(torch.float32)
        if tuple(values.shape) != patch_shape:
            raise UsageError(f"the patch pattern must have shape {patch_shape}, got {tuple(values.shape)}")
        return values
    if pattern == "solid":
        return torch.full(patch_shape, hi)
    if pattern == "checkerboard":
        if len(patch_shape) == 3:
            _, s, _ = patch_shape
            idx = torch.arange(s)
            board = (idx.view(-1, 1) + idx.view(1, -1)) % 2 == 0
            return torch.where(board, hi, lo).expand(patch_shape).clone()
        return torch.where(torch.arange(patch_shape[0]) % 2 == 0, hi, lo)
    raise UsageError(f"patch pattern must be 'checkerboard', 'solid' or a tensor, got {pattern!r}")


def _patch_start(shape: tuple[int, ...], size: int, location: str | tuple[int, ...], margin: int) -> tuple[int, ...]:
    if isinstance(margin, bool) or not isinstance(margin, int) or margin < 0:
        raise UsageError(f"margin must be a whole number >= 0, got {margin!r}")
    if len(shape) == 1:
        n = shape[0]
        if isinstance(location, str):
            if location not in ("bottom-right", "top-left"):
                raise UsageError(
                    "a feature-vector trigger's location is 'bottom-right' (last features), 'top-left' "
                    f"(first features), 'random' is not supported, or a feature index; got {location!r}"
                )
            return (n - size,) if location == "bottom-right" else (0,)
        start = tuple(int(v) for v in location)
        if len(start) != 1 or not 0 <= start[0] <= n - size:
            raise UsageError(
                f"a {size}-feature trigger must start at a feature index in [0, {n - size}], got {location!r}"
            )
        return start
    _, h, w = shape
    if isinstance(location, str):
        if location not in _CORNERS:
            raise UsageError(
                f"trigger location must be one of {', '.join((*_CORNERS, 'random'))} or (row, col), got {location!r}"
            )
        m = min(margin, h - size, w - size)
        top = h - size - m if location.startswith("bottom") else m
        left = w - size - m if location.endswith("right") else m
        if location == "center":
            top, left = (h - size) // 2, (w - size) // 2
        return (top, left)
    start = tuple(int(v) for v in location)
    if len(start) != 2 or not (0 <= start[0] <= h - size and 0 <= start[1] <= w - size):
        raise UsageError(
            f"a {size}x{size} trigger's top-left corner must lie in [0, {h - size}] x [0, {w - size}], got {location!r}"
        )
    return start


def _region(shape: tuple[int, ...], start: tuple[int, ...], size: int) -> tuple[slice, ...]:
    if len(shape) == 1:
        return (slice(start[0], start[0] + size),)
    return (slice(None), slice(start[0], start[0] + size), slice(start[1], start[1] + size))
